use super::header::parse_size;
use super::pax::Pax;
use super::*;
pub(crate) use ido_testkit::tar_bytes::{archive, header, set_checksum};

#[test]
fn entries_walk_every_member() {
    let mut link = header("l", b'2', 0);
    link[157..166].copy_from_slice(b"../target");
    link[100..107].copy_from_slice(b"0000777");
    link[136..147].copy_from_slice(b"13200000000");
    set_checksum(&mut link);
    let pax = "20 linkpath=a/b/c/d\n22 mtime=1700000000.5\n";
    let mut a = archive(&[
        ("d/", b'5', b""),
        ("d/f", b'0', b"data"),
        ("v7dir/", b'0', b""),
        ("pax", b'x', pax.as_bytes()),
        ("s", b'2', b""),
        ("h", b'1', b""),
        ("dev", b'3', b""),
    ]);
    // The symbolic link with its own header fields, before the end marker.
    let end = a.len() - 1024;
    a.splice(end..end, link);
    let mut t = TarEntries::new(&a[..]);
    let mut seen = Vec::new();
    while let Some(e) = t.next_entry().unwrap() {
        if e.path == "d/f" {
            let mut s = String::new();
            t.read_to_string(&mut s).unwrap();
            assert_eq!((s.as_str(), e.size, e.mode), ("data", 4, 0o644));
        }
        seen.push((e.path, e.kind, e.link, e.mtime));
    }
    assert_eq!(
        seen,
        [
            ("d/".into(), EntryKind::Directory, None, Some(0)),
            ("d/f".into(), EntryKind::File, None, Some(0)),
            ("v7dir/".into(), EntryKind::Directory, None, Some(0)),
            (
                "s".into(),
                EntryKind::Symlink,
                Some("a/b/c/d".into()),
                Some(1_700_000_000)
            ),
            ("h".into(), EntryKind::HardLink, Some(String::new()), Some(0)),
            ("dev".into(), EntryKind::CharDevice, None, Some(0)),
            (
                "l".into(),
                EntryKind::Symlink,
                Some("../target".into()),
                Some(0o13200000000)
            ),
        ]
    );
    assert!(t.next_entry().unwrap().is_none(), "ended");
    // Names are given as stored: the caller checks them.
    let a = archive(&[("../x", b'0', b"x")]);
    assert_eq!(
        TarEntries::new(&a[..]).next_entry().unwrap().unwrap().path,
        "../x"
    );
    // No end-of-archive marker: truncated.
    let a = archive(&[("f", b'0', b"x")]);
    let mut t = TarEntries::new(&a[..a.len() - 1024]);
    assert!(t.next_entry().unwrap().is_some());
    let e = t.next_entry().unwrap_err();
    assert!(e.to_string().contains("end-of-archive marker"), "{e}");
}

#[test]
fn base256_size() {
    let mut f = [0u8; 12];
    f[0] = 0x80;
    f[4..12].copy_from_slice(&(10u64 << 30).to_be_bytes());
    assert_eq!(parse_size(&f).unwrap(), 10 << 30);
}

#[test]
fn members_in_order_names_checked() {
    let a = archive(&[
        ("dir/", b'5', b""),
        ("dir/a", b'0', b"hello"),
        ("b", b'0', b"bye"),
    ]);
    let mut t = TarReader::new(&a[..]);
    let m = t.next_member().unwrap().unwrap();
    assert_eq!((m.name.as_str(), m.entry_kind()), ("dir/", EntryKind::Directory));
    let m = t.next_member().unwrap().unwrap();
    assert!(m.is_regular());
    assert_eq!(t.enter(m).unwrap(), 5);
    let mut s = String::new();
    t.read_to_string(&mut s).unwrap();
    assert_eq!((s.as_str(), t.name(), t.at_end()), ("hello", "dir/a", true));
    // Not entered: skipped by the next header.
    assert_eq!(t.next_member().unwrap().unwrap().name, "b");
    assert!(t.next_member().unwrap().is_none());

    for (name, kind) in [("../../etc/passwd", b'0'), ("/abs", b'0')] {
        let a = archive(&[(name, kind, b"x")]);
        let e = TarReader::new(&a[..]).next_member().unwrap_err();
        assert!(matches!(e, TarError::Refused(_)), "{e}");
        assert!(e.to_string().contains("escapes the archive"), "{e}");
    }
    let mut link = header("l", b'2', 0);
    link[157..166].copy_from_slice(b"/etc/x\0\0\0");
    link[148..156].fill(b' ');
    let sum: u64 = link.iter().map(|b| u64::from(*b)).sum();
    link[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let e = TarReader::new(&link[..]).next_member().unwrap_err();
    assert!(matches!(e, TarError::Refused(_)), "{e}");
    // Unchecked, the end of the input is told from the end-of-archive marker.
    let a = archive(&[("../x", b'0', b"x")]);
    let mut t = TarReader::new(&a[..]);
    assert!(matches!(t.read_header().unwrap(), Next::Member(m) if m.name == "../x"));
    assert!(matches!(t.read_header().unwrap(), Next::End));
    let mut t = TarReader::new(&a[..a.len() - 1024]);
    assert!(matches!(t.read_header().unwrap(), Next::Member(_)));
    assert!(matches!(t.read_header().unwrap(), Next::Eof));
}

#[test]
fn truncation_and_small_members() {
    let a = archive(&[("d.ovf", b'0', b"<Envelope/>"), ("disk", b'0', &[7; 1000])]);
    let mut t = TarReader::new(&a[..]);
    t.next_member().unwrap().unwrap();
    assert_eq!(t.read_whole(1 << 20, "OVF descriptor").unwrap(), b"<Envelope/>");
    let m = t.next_member().unwrap().unwrap();
    assert_eq!(m.name, "disk");
    let e = t.read_whole(100, "OVF descriptor").unwrap_err();
    assert_eq!(e.to_string(), "invalid tar archive: OVF descriptor of 1000 bytes");
    // The data cut short: the error names the member, and crosses `Read` intact.
    let mut t = TarReader::new(&a[..BLOCK * 3 + 100]);
    t.next_member().unwrap().unwrap();
    let m = t.next_member().unwrap().unwrap();
    t.enter(m).unwrap();
    let e = io::copy(&mut t, &mut io::sink()).unwrap_err();
    let e = TarError::from_io(e);
    assert!(
        matches!(&e, TarError::Invalid(r) if r == "truncated: \"disk\" ends 900 bytes early"),
        "{e}"
    );
    // An input error comes back as itself.
    let e = TarError::from_io(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
    assert_eq!(e.into_io().kind(), io::ErrorKind::ConnectionReset);
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
    let e = TarReader::new(&h[..]).next_member().unwrap_err();
    assert!(matches!(e, TarError::Invalid(_)), "{e}");
    assert!(e.to_string().contains("member size"), "{e}");

    let pax = format!("29 size={}\n", u64::MAX);
    let a = archive(&[("pax", b'x', pax.as_bytes()), ("disk.img", b'0', b"x")]);
    let e = TarReader::new(&a[..]).next_member().unwrap_err();
    assert!(e.to_string().contains("member size"), "{e}");
}

#[test]
fn pax_records() {
    let data = b"19 path=a/disk.img\n15 size=123456\n";
    let mut block = data.to_vec();
    block.resize(BLOCK, 0);
    let mut pax = Pax::default();
    pax.read(&mut &block[..], data.len() as u64).unwrap();
    assert_eq!(pax.path.as_deref(), Some("a/disk.img"));
    assert_eq!(pax.size, Some(123456));
    // Records that do not add up to the header's size, or lack their newline.
    for bad in [
        &b"20 path=a/disk.img\n"[..],
        b"19 path=a/disk.img ",
        b"x path=a\n",
    ] {
        let mut block = bad.to_vec();
        block.resize(BLOCK, 0);
        let e = Pax::default()
            .read(&mut &block[..], bad.len() as u64)
            .unwrap_err();
        assert!(e.to_string().contains("pax"), "{e}");
    }
}
