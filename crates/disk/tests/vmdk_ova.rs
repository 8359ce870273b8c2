//! VMDKs as qemu-img writes them (streamOptimized without an end-of-stream marker; split
//! and flat descriptors with their extents), alone, in a tar and in an OVA; OVAs with
//! several disks. `qemu-img convert -O raw` is the oracle: the output must equal it byte for
//! byte and in length.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ido_disk::{DiskFormat, ImportOptions, ImportReport, SourceSpec, TargetSpec, import};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A raw disk of `mib` MiB with a 1 MiB pseudo-random run every 4 MiB (the ordinary shape
/// that used to fail), written sparsely to `dir/name`.
fn runs_raw(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, off) in (0..mib << 20).step_by(4 << 20).enumerate() {
        f.write_all_at(&random_bytes(100 + i as u64, 1 << 20), off)
            .unwrap();
    }
    p
}

/// `qemu-img convert -O vmdk -o subformat=<sub> raw dir/name`.
fn to_vmdk(raw: &Path, dir: &Path, name: &str, sub: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let o = dir.join(name);
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            s(raw),
            s(&o),
        ],
    );
    o
}

fn options(source: &Path, out: &Path) -> ImportOptions {
    ImportOptions::new(
        SourceSpec::File(source.to_path_buf()),
        TargetSpec {
            path: out.to_path_buf(),
            capacity: None,
        },
    )
}

async fn try_import(source: &Path, out: &Path) -> ido_disk::Result<ImportReport> {
    import(options(source, out)).await
}

/// Imports `source` and checks the output against qemu-img's conversion of `oracle` (the
/// image itself, or the descriptor when the source wraps it).
async fn check(source: &Path, oracle: &Path, layers: &[&str]) -> ImportReport {
    let dir = source.parent().unwrap();
    let out = dir.join("out.img");
    let _ = std::fs::remove_file(&out);
    let report = try_import(source, &out)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let want = dir.join("want.raw");
    run("qemu-img", &["convert", "-O", "raw", s(oracle), s(&want)]);
    assert_same_file(&out, &want, &source.display().to_string());
    assert_eq!(report.format, DiskFormat::Vmdk);
    assert_eq!(report.layers, layers);
    assert_eq!(report.virtual_size, std::fs::metadata(&want).unwrap().len());
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&want).unwrap();
    report
}

/// An OVF naming `disks` as (file name, ovf:id, size).
fn ovf(disks: &[(&str, &str, u64)]) -> String {
    let mut refs = String::new();
    let mut section = String::new();
    for (i, (href, id, size)) in disks.iter().enumerate() {
        refs += &format!("    <File ovf:href=\"{href}\" ovf:id=\"{id}\" ovf:size=\"{size}\"/>\n");
        section += &format!(
            "    <Disk ovf:capacity=\"1\" ovf:capacityAllocationUnits=\"byte * 2^30\" ovf:diskId=\"vmdisk{}\" ovf:fileRef=\"{id}\"/>\n",
            i + 1
        );
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
{refs}  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{section}  </DiskSection>
</Envelope>
"#
    )
}

/// `dir/vm.ova`: `vm.ovf` naming `disks` (files in `dir`), then `members` in that order.
fn make_ova(dir: &Path, disks: &[&str], members: &[&str]) -> PathBuf {
    let named: Vec<(String, String, u64)> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let size = std::fs::metadata(dir.join(d)).unwrap().len();
            (d.to_string(), format!("file{}", i + 1), size)
        })
        .collect();
    let named: Vec<(&str, &str, u64)> = named
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), *c))
        .collect();
    std::fs::write(dir.join("vm.ovf"), ovf(&named)).unwrap();
    sh(&format!(
        "cd {} && rm -f vm.ova && tar --format=ustar -cf vm.ova vm.ovf {}",
        s(dir),
        members.join(" ")
    ));
    dir.join("vm.ova")
}

// ---- 1. streamOptimized as qemu-img writes it ----------------------------------------

#[tokio::test]
async fn stream_optimized_with_random_runs_and_its_ova() {
    // 96 MiB, 1 MiB of random data every 4 MiB: every grain is stored, the last one is
    // incompressible, and qemu-img writes no end-of-stream marker.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = runs_raw(d, "d.raw", 96);
    let v = to_vmdk(&raw, d, "disk-1.vmdk", "streamOptimized");
    check(&v, &v, &[]).await;
    // The node images' case: an OVA wrapping it.
    let ova = make_ova(d, &["disk-1.vmdk"], &["disk-1.vmdk"]);
    check(&ova, &v, &["ova"]).await;
    // And gzip over the OVA.
    sh(&format!("cd {} && gzip -1 -k vm.ova", s(d)));
    check(&d.join("vm.ova.gz"), &v, &["gzip", "ova"]).await;
}

#[tokio::test]
async fn stream_optimized_last_grain_incompressible() {
    // Compressible text, then one random grain at the very end.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut img = text_bytes(3 << 20);
    img.extend(random_bytes(7, 65536));
    std::fs::write(d.join("t.raw"), &img).unwrap();
    let v = to_vmdk(&d.join("t.raw"), d, "t.vmdk", "streamOptimized");
    check(&v, &v, &[]).await;
    // Odd sizes: the last grain is partial and random.
    let mut img = random_bytes(8, (5 << 20) + 3 * 512);
    img[..1 << 20].fill(0);
    std::fs::write(d.join("o.raw"), &img).unwrap();
    let v = to_vmdk(&d.join("o.raw"), d, "o.vmdk", "streamOptimized");
    check(&v, &v, &[]).await;
}

#[tokio::test]
async fn stream_optimized_blank() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("blank.raw");
    std::fs::File::create(&raw).unwrap().set_len(10 << 20).unwrap();
    let v = to_vmdk(&raw, d, "blank.vmdk", "streamOptimized");
    check(&v, &v, &[]).await;
    let c = d.join("created.vmdk");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            s(&c),
            "1G",
        ],
    );
    check(&c, &c, &[]).await;
}

#[tokio::test]
async fn stream_optimized_truncated_is_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = runs_raw(d, "d.raw", 16);
    let v = to_vmdk(&raw, d, "d.vmdk", "streamOptimized");
    let bytes = std::fs::read(&v).unwrap();
    // The offset of the last grain marker: cut there (a clean grain boundary), and inside it.
    let last = last_grain_marker(&bytes);
    for cut in [last, last + 700, 0x10000 + 512] {
        let t = d.join(format!("cut-{cut}.vmdk"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let out = d.join("out.img");
        let e = try_import(&t, &out).await.unwrap_err();
        assert!(e.to_string().contains("truncated"), "cut at {cut:#x}: {e}");
        assert!(!out.exists(), "a failed import leaves no target");
    }
}

/// The file offset of the last grain marker of a qemu-made streamOptimized VMDK.
fn last_grain_marker(f: &[u8]) -> usize {
    let le = |o: usize, n: usize| {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(f[o + i]) << (8 * i);
        }
        v
    };
    let mut pos = le(64, 8) as usize * 512;
    let mut last = pos;
    while pos + 512 <= f.len() {
        let size = le(pos + 8, 4) as usize;
        if size == 0 {
            break;
        }
        last = pos;
        pos += (12 + size).next_multiple_of(512);
    }
    last
}

// ---- 2. descriptors with extents -------------------------------------------------------

const SPLIT: [&str; 3] = ["monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"];

#[tokio::test]
async fn split_and_flat_from_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let raw = runs_raw(dir.path(), "d.raw", 96);
    for sub in SPLIT {
        let d = dir.path().join(sub);
        let v = to_vmdk(&raw, &d, "d.vmdk", sub);
        check(&v, &v, &[]).await;
    }
}

#[tokio::test]
async fn split_and_flat_in_a_tar_and_an_ova() {
    let dir = tempfile::tempdir().unwrap();
    let raw = runs_raw(dir.path(), "d.raw", 96);
    for sub in SPLIT {
        let d = dir.path().join(sub);
        let v = to_vmdk(&raw, &d, "d.vmdk", sub);
        let extents: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "d.vmdk")
            .collect();
        // A tar: descriptor first, extents in a directory.
        sh(&format!(
            "cd {} && mkdir -p t/images && cp --sparse=always d.vmdk {} t/images/ && \
             tar --format=gnu -cf d.tar -C t images/d.vmdk {}",
            s(&d),
            extents.join(" "),
            extents
                .iter()
                .map(|e| format!("images/{e}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        check(&d.join("d.tar"), &v, &["tar"]).await;
        // An OVA whose OVF names the descriptor; its extents follow.
        let mut members = vec!["d.vmdk"];
        members.extend(extents.iter().map(String::as_str));
        let ova = make_ova(&d, &["d.vmdk"], &members);
        check(&ova, &v, &["ova"]).await;
    }
}

#[tokio::test]
async fn several_extents_of_every_kind() {
    // A hand-written descriptor: two flat extents in one file (out of order), a VMFS one,
    // a sparse extent (a monolithicSparse file made by qemu-img), and a streamOptimized one.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flat = random_bytes(11, 3 << 20);
    std::fs::write(d.join("a-flat.vmdk"), &flat).unwrap();
    std::fs::write(d.join("b-vmfs.vmdk"), random_bytes(12, 1 << 20)).unwrap();
    let raw = runs_raw(d, "s.raw", 12);
    to_vmdk(&raw, d, "c-sparse.vmdk", "monolithicSparse");
    to_vmdk(&raw, d, "e-stream.vmdk", "streamOptimized");
    let desc = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
                createType=\"twoGbMaxExtentFlat\"\n\n# Extent description\n\
                RW 2048 FLAT \"a-flat.vmdk\" 4096\n\
                RW 2048 FLAT \"a-flat.vmdk\" 0\n\
                RW 2048 VMFS \"b-vmfs.vmdk\"\n\
                RW 24576 SPARSE \"c-sparse.vmdk\"\n\
                RW 24576 SPARSE \"e-stream.vmdk\"\n\n\
                ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n";
    std::fs::write(d.join("multi.vmdk"), desc).unwrap();
    let v = d.join("multi.vmdk");
    check(&v, &v, &[]).await;
    // The same in a tar whose extents come in another order than the descriptor's.
    sh(&format!(
        "cd {} && tar -cf multi.tar multi.vmdk e-stream.vmdk c-sparse.vmdk b-vmfs.vmdk a-flat.vmdk",
        s(d)
    ));
    check(&d.join("multi.tar"), &v, &["tar"]).await;
}

#[tokio::test]
async fn two_gb_max_extent_sparse_with_several_extents() {
    // Over 2 GiB: qemu-img splits it into two sparse extents.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("big.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len((2 << 30) + (8 << 20)).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, off) in [0u64, (2 << 30) - (1 << 20), (2 << 30) + (4 << 20)]
        .iter()
        .enumerate()
    {
        f.write_all_at(&random_bytes(20 + i as u64, 2 << 20), *off)
            .unwrap();
    }
    drop(f);
    let v = to_vmdk(&raw, &d.join("s"), "big.vmdk", "twoGbMaxExtentSparse");
    assert!(d.join("s/big-s002.vmdk").exists());
    check(&v, &v, &[]).await;
    sh(&format!(
        "cd {}/s && tar -cf ../big.tar big.vmdk big-s002.vmdk big-s001.vmdk",
        s(d)
    ));
    check(&d.join("big.tar"), &v, &["tar"]).await;
}

fn descriptor(extent: &str) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
         RW 2048 FLAT \"{extent}\" 0\n"
    )
}

#[tokio::test]
async fn extents_outside_the_directory_or_archive_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("images");
    std::fs::create_dir(&d).unwrap();
    let outside = dir.path().join("secret.img");
    std::fs::write(&outside, vec![7u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(&outside, d.join("link-flat.vmdk")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("dev-flat.vmdk")).unwrap();
    let out = dir.path().join("out.img");
    for extent in [
        "../secret.img",
        "sub/../../secret.img",
        outside.to_str().unwrap(),
        "link-flat.vmdk",
        "dev-flat.vmdk",
    ] {
        let v = d.join("d.vmdk");
        std::fs::write(&v, descriptor(extent)).unwrap();
        let e = try_import(&v, &out).await.unwrap_err();
        assert_eq!(e.label(), "refused", "{extent}: {e}");
        assert!(e.to_string().contains(extent), "{extent}: {e}");
        assert!(!out.exists(), "{extent}: no target is left behind");
    }
    // In a tar: the member names are checked too, and a symlink member is no extent.
    let t = dir.path().join("t");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(t.join("d.vmdk"), descriptor("../x-flat.vmdk")).unwrap();
    sh(&format!("cd {} && tar -cf d.tar d.vmdk", s(&t)));
    let e = try_import(&t.join("d.tar"), &out).await.unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("../x-flat.vmdk"), "{e}");
    std::fs::write(t.join("d.vmdk"), descriptor("x-flat.vmdk")).unwrap();
    std::fs::write(t.join("data.bin"), vec![1u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink("data.bin", t.join("x-flat.vmdk")).unwrap();
    sh(&format!("cd {} && tar -cf d.tar d.vmdk x-flat.vmdk", s(&t)));
    let e = try_import(&t.join("d.tar"), &out).await.unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("x-flat.vmdk"), "{e}");
    assert!(!out.exists());
    std::fs::remove_file(t.join("x-flat.vmdk")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", t.join("x-flat.vmdk")).unwrap();
    sh(&format!("cd {} && tar -cf d.tar d.vmdk x-flat.vmdk", s(&t)));
    let e = try_import(&t.join("d.tar"), &out).await.unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
    assert!(!out.exists());
    // A file the descriptor does not name, in a plain tar. (x-flat.vmdk is still the link
    // to /etc/passwd here: it is replaced, never written through.)
    std::fs::remove_file(t.join("x-flat.vmdk")).unwrap();
    sh(&format!(
        "cd {} && rm -f x-flat.vmdk && cp data.bin x-flat.vmdk && tar -cf d.tar d.vmdk x-flat.vmdk data.bin",
        s(&t)
    ));
    let e = try_import(&t.join("d.tar"), &out).await.unwrap_err();
    assert!(e.to_string().contains("data.bin"), "{e}");
    assert!(!out.exists());
    // A missing extent, a short one.
    let v = d.join("d.vmdk");
    std::fs::write(&v, descriptor("missing-flat.vmdk")).unwrap();
    let e = try_import(&v, &out).await.unwrap_err();
    assert!(e.to_string().contains("missing-flat.vmdk"), "{e}");
    std::fs::write(d.join("short-flat.vmdk"), vec![1u8; 1000]).unwrap();
    std::fs::write(&v, descriptor("short-flat.vmdk")).unwrap();
    let e = try_import(&v, &out).await.unwrap_err();
    assert!(e.to_string().contains("short-flat.vmdk"), "{e}");
    assert!(!out.exists());
}

#[tokio::test]
async fn a_descriptor_from_stdin_or_compressed_is_refused() {
    // Its extents are not at hand: refused as before, naming them.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("x-flat.vmdk"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(d.join("d.vmdk"), descriptor("x-flat.vmdk")).unwrap();
    sh(&format!("cd {} && gzip -k d.vmdk", s(d)));
    let e = try_import(&d.join("d.vmdk.gz"), &d.join("out.img"))
        .await
        .unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("x-flat.vmdk"), "{e}");
}

// ---- 3. OVAs with several disks --------------------------------------------------------

/// `dir/vm.ova` with three streamOptimized disks of different contents.
fn three_disk_ova(d: &Path) -> PathBuf {
    for (i, mib) in [(1, 4u64), (2, 8), (3, 12)] {
        let raw = runs_raw(d, &format!("r{i}.raw"), mib);
        to_vmdk(&raw, d, &format!("disk-{i}.vmdk"), "streamOptimized");
    }
    let disks = ["disk-1.vmdk", "disk-2.vmdk", "disk-3.vmdk"];
    make_ova(d, &disks, &disks)
}

#[tokio::test]
async fn ova_with_several_disks_needs_a_choice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ova = three_disk_ova(d);
    let out = d.join("out.img");
    let e = try_import(&ova, &out).await.unwrap_err();
    let msg = e.to_string();
    for i in 1..=3 {
        let size = std::fs::metadata(d.join(format!("disk-{i}.vmdk"))).unwrap().len();
        for want in [format!("disk-{i}.vmdk"), format!("file{i}"), size.to_string()] {
            assert!(msg.contains(&want), "{want} in {msg}");
        }
    }
    assert!(msg.contains("--disk"), "{msg}");
    assert!(!out.exists());
}

#[tokio::test]
async fn ova_disk_chosen_by_name_id_or_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ova = three_disk_ova(d);
    let out = d.join("out.img");
    for (choice, i) in [
        ("disk-2.vmdk", 2),
        ("file3", 3),
        ("vmdisk1", 1),
        ("2", 2),
        ("3", 3),
    ] {
        let mut o = options(&ova, &out);
        o.disk = Some(choice.to_string());
        let r = import(o).await.unwrap_or_else(|e| panic!("{choice}: {e}"));
        assert_eq!(r.layers, ["ova"]);
        let want = d.join("want.raw");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                s(&d.join(format!("disk-{i}.vmdk"))),
                s(&want),
            ],
        );
        assert_same_file(&out, &want, choice);
        std::fs::remove_file(&out).unwrap();
    }
    // A choice that is not there: an error naming the value and listing the disks.
    for bad in ["disk-9.vmdk", "0", "4"] {
        let mut o = options(&ova, &out);
        o.disk = Some(bad.to_string());
        let e = import(o).await.unwrap_err();
        assert_eq!(e.label(), "invalid_argument", "{e}");
        let msg = e.to_string();
        for want in [bad, "disk-1.vmdk", "disk-2.vmdk", "disk-3.vmdk", "file2"] {
            assert!(msg.contains(want), "{want} in {msg}");
        }
        assert!(!out.exists());
    }
    // A source that is no OVA.
    let mut o = options(&d.join("disk-1.vmdk"), &out);
    o.disk = Some("1".into());
    let e = import(o).await.unwrap_err();
    assert_eq!(e.label(), "invalid_argument", "{e}");
    assert!(e.to_string().contains("disk"), "{e}");
}

#[tokio::test]
async fn ova_with_one_disk_among_other_files_needs_no_choice() {
    // The OVF names one disk; an ISO and the manifest beside it are not disks.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = runs_raw(d, "r.raw", 8);
    let v = to_vmdk(&raw, d, "disk-1.vmdk", "streamOptimized");
    std::fs::write(d.join("extra.iso"), b"not a disk").unwrap();
    std::fs::write(d.join("vm.mf"), b"SHA256(disk-1.vmdk)= 00\n").unwrap();
    let ova = make_ova(d, &["disk-1.vmdk"], &["vm.mf", "extra.iso", "disk-1.vmdk"]);
    check(&ova, &v, &["ova"]).await;
}
