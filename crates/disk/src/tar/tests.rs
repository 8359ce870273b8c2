use super::ovf::{ovf_choose, ovf_disk};
use super::*;
use ido_testkit::tar_bytes::{archive, header, set_checksum};

#[test]
fn reads_the_one_disk() {
    let a = archive(&[("dir/", b'5', b""), ("dir/disk.img", b'0', b"hello")]);
    let mut t = TarDisk::open(&a[..]).unwrap();
    assert_eq!((t.name(), t.size()), ("dir/disk.img", 5));
    let mut s = String::new();
    t.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    t.finish().unwrap();
}

#[test]
fn refuses_traversal_and_second_files() {
    let a = archive(&[("../../etc/passwd", b'0', b"x")]);
    assert_eq!(TarDisk::open(&a[..]).err().unwrap().label(), "refused");
    let a = archive(&[("link", b'2', b"")]);
    assert!(TarDisk::open(&a[..]).is_err()); // no regular file
    let a = archive(&[("a.img", b'0', b"a"), ("b.img", b'0', b"b")]);
    let mut t = TarDisk::open(&a[..]).unwrap();
    io::copy(&mut t, &mut io::sink()).unwrap();
    assert_eq!(t.finish().unwrap_err().label(), "invalid_image");
}

const OVF: &str = r#"<?xml version="1.0"?>
<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <!-- <File ovf:href="commented.vmdk" ovf:id="c"/> -->
    <ovf:File ovf:href="other.iso" ovf:id="file0"/>
    <File ovf:href="disk-1.vmdk" ovf:id="file1" ovf:size="100"/>
  </References>
  <DiskSection><Disk ovf:capacity="8" ovf:diskId="vmdisk1" ovf:fileRef="file1"/></DiskSection>
</Envelope>"#;

#[test]
fn ova_disk_named_in_the_ovf() {
    assert_eq!(ovf_disk(OVF).unwrap().as_deref(), Some("disk-1.vmdk"));
    let a = archive(&[
        ("x.ovf", b'0', OVF.as_bytes()),
        ("x.mf", b'0', b"SHA256(disk-1.vmdk)= 00\n"),
        ("other.iso", b'0', b"iso"),
        ("disk-1.vmdk", b'0', b"disk"),
        ("x.cert", b'0', b"cert"),
    ]);
    let mut t = TarDisk::open(&a[..]).unwrap();
    assert!(t.is_ova());
    assert_eq!(t.name(), "disk-1.vmdk");
    let mut s = String::new();
    t.read_to_string(&mut s).unwrap();
    assert_eq!(s, "disk");
    t.finish().unwrap();
    // Without references: the first member that is not OVA metadata.
    let a = archive(&[
        ("x.ovf", b'0', b"<Envelope/>"),
        ("x.mf", b'0', b"m"),
        ("d.img", b'0', b"d"),
    ]);
    assert_eq!(TarDisk::open(&a[..]).unwrap().name(), "d.img");
    // A missing disk, a reference outside the archive.
    let a = archive(&[("x.ovf", b'0', OVF.as_bytes()), ("x.mf", b'0', b"m")]);
    let e = TarDisk::open(&a[..]).err().unwrap();
    assert!(e.to_string().contains("disk-1.vmdk"), "{e}");
    let evil = OVF.replace("disk-1.vmdk", "../../etc/shadow");
    assert_eq!(ovf_disk(&evil).unwrap_err().label(), "refused");
    let url = OVF.replace("disk-1.vmdk", "http://example.com/d.vmdk");
    assert_eq!(ovf_disk(&url).unwrap_err().label(), "refused");
}

#[test]
fn ova_disk_chosen_among_several() {
    let two = OVF.replace(
        "</DiskSection>",
        "<Disk ovf:diskId=\"vmdisk2\" ovf:fileRef=\"file0\"/></DiskSection>",
    );
    let e = ovf_choose(&two, None).unwrap_err();
    assert_eq!(e.label(), "refused");
    for want in [
        "disk-1.vmdk",
        "file1",
        "100 bytes",
        "other.iso",
        "file0",
        "--disk",
    ] {
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    for (choice, href) in [
        ("other.iso", "other.iso"),
        ("file1", "disk-1.vmdk"),
        ("vmdisk2", "other.iso"),
        ("1", "disk-1.vmdk"),
        ("2", "other.iso"),
    ] {
        assert_eq!(ovf_choose(&two, Some(choice)).unwrap().as_deref(), Some(href));
    }
    let e = ovf_choose(&two, Some("3")).unwrap_err();
    assert_eq!(e.label(), "invalid_argument");
    assert!(
        e.to_string().contains("disk-1.vmdk") && e.to_string().contains("\"3\""),
        "{e}"
    );
    // The same disk named twice is one disk; a choice of the only disk is fine.
    assert_eq!(
        ovf_choose(OVF, Some("1")).unwrap().as_deref(),
        Some("disk-1.vmdk")
    );
    // Without a DiskSection, the files are the candidates.
    let files = "<Envelope xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\">\
                 <References><File ovf:href=\"a.vmdk\" ovf:id=\"a\"/>\
                 <File ovf:href=\"b.vmdk\" ovf:id=\"b\"/></References></Envelope>";
    let e = ovf_choose(files, None).unwrap_err();
    assert!(e.to_string().contains("--disk"), "{e}");
    assert_eq!(ovf_choose(files, Some("b")).unwrap().as_deref(), Some("b.vmdk"));
}

#[test]
fn absurd_member_sizes_are_invalid() {
    // Mutation test: a base-256 or pax size near u64::MAX used to overflow padding it
    // to a block.
    let mut h = header("disk.img", b'0', 0);
    h[124..136].fill(0);
    h[124] = 0x80;
    h[128..136].copy_from_slice(&u64::MAX.to_be_bytes());
    set_checksum(&mut h);
    let e = TarDisk::open(&h[..]).err().unwrap();
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("member size"), "{e}");

    let pax = format!("29 size={}\n", u64::MAX);
    let a = archive(&[("pax", b'x', pax.as_bytes()), ("disk.img", b'0', b"x")]);
    let e = TarDisk::open(&a[..]).err().unwrap();
    assert!(e.to_string().contains("member size"), "{e}");
}
