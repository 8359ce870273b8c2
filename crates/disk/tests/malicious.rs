//! Malicious and broken images: a clear error, and no target left behind. Images refused
//! on their header must not even touch a target that already exists.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ido_disk::{ImportOptions, SourceSpec, TargetSpec, import};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Imports with `--force` (an existing target may be replaced), so that a refusal shows it
/// comes before anything is written, not from the existing-target check.
async fn import_file(image: &Path, out: &Path, capacity: Option<u64>) -> ido_disk::Error {
    let mut opts = ImportOptions::new(
        SourceSpec::File(image.to_path_buf()),
        TargetSpec {
            path: out.to_path_buf(),
            capacity,
        },
    );
    opts.overwrite = true;
    import(opts).await.expect_err("the import must fail")
}

/// Imports onto an existing target (allowed to replace it) and checks it was not touched.
async fn refused_untouched(image: &Path, dir: &Path) -> ido_disk::Error {
    let out = dir.join("existing.img");
    std::fs::write(&out, b"keep me").unwrap();
    let e = import_file(image, &out, None).await;
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me", "{e}");
    e
}

fn qcow2(dir: &Path) -> PathBuf {
    let raw = write_raw(dir);
    let q = dir.join("d.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", s(&raw), s(&q)]);
    q
}

#[tokio::test]
async fn qcow2_with_a_backing_file_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let child = dir.path().join("child.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "64M"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&child),
        ],
    );
    let e = refused_untouched(&child, dir.path()).await;
    assert_eq!(e.label(), "refused");
    assert!(e.to_string().contains("backing file"), "{e}");
    assert!(e.to_string().contains("base.qcow2"), "{e}");
    let out = dir.path().join("new.img");
    import_file(&child, &out, None).await;
    assert!(!out.exists());
}

#[tokio::test]
async fn qcow2_with_an_external_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("x.qcow2");
    let data = dir.path().join("x.data");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", s(&data)),
            s(&q),
            "1M",
        ],
    );
    let e = refused_untouched(&q, dir.path()).await;
    assert_eq!(e.label(), "refused");
    assert!(e.to_string().contains("external data file"), "{e}");
}

#[tokio::test]
async fn an_l1_table_too_large_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = qcow2(dir.path());
    let mut bytes = std::fs::read(&q).unwrap();
    bytes[36..40].copy_from_slice(&0x0100_0000u32.to_be_bytes()); // 16 Mi entries = 128 MiB
    std::fs::write(&q, bytes).unwrap();
    let e = refused_untouched(&q, dir.path()).await;
    assert_eq!(e.label(), "invalid_image");
    assert!(e.to_string().contains("L1 table too large"), "{e}");
}

#[tokio::test]
async fn a_virtual_size_over_the_capacity_fails_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let q = qcow2(dir.path());
    let out = dir.path().join("out.img");
    let e = import_file(&q, &out, Some(32 << 20)).await;
    assert!(
        matches!(e, ido_disk::Error::TooLarge { needed, capacity } if needed == RAW_SIZE && capacity == 32 << 20),
        "{e}"
    );
    assert!(!out.exists(), "the target was created");

    // Compressed raw with the size in its zstd frame header: also before writing.
    let raw = dir.path().join("disk.raw");
    sh(&format!("zstd -q -1 -c {} > {}/d.zst", s(&raw), s(dir.path())));
    let e = import_file(&dir.path().join("d.zst"), &out, Some(32 << 20)).await;
    assert_eq!(e.label(), "too_large", "{e}");
    assert!(!out.exists());

    // xz does not say: the capacity is enforced while writing, and the file removed.
    sh(&format!("xz -1 -T1 -c {} > {}/d.xz", s(&raw), s(dir.path())));
    let e = import_file(&dir.path().join("d.xz"), &out, Some(32 << 20)).await;
    assert_eq!(e.label(), "too_large", "{e}");
    assert!(!out.exists());
}

#[tokio::test]
async fn truncated_images_fail_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = qcow2(dir.path());
    let len = std::fs::metadata(&q).unwrap().len();
    let cut = dir.path().join("cut.qcow2");
    std::fs::write(&cut, &std::fs::read(&q).unwrap()[..(len * 6 / 10) as usize]).unwrap();
    let out = dir.path().join("out.img");
    let e = import_file(&cut, &out, None).await;
    assert_eq!(e.label(), "invalid_image");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(!out.exists());

    let raw = dir.path().join("disk.raw");
    sh(&format!(
        "xz -1 -T1 -c {0} > {1}/full.xz && head -c 300000 {1}/full.xz > {1}/cut.xz",
        s(&raw),
        s(dir.path())
    ));
    let e = import_file(&dir.path().join("cut.xz"), &out, None).await;
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(!out.exists());
}

#[tokio::test]
async fn tar_path_traversal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    sh(&format!("cd {} && tar -cPf ../evil.tar ../disk.raw", s(&sub)));
    let e = refused_untouched(&dir.path().join("evil.tar"), dir.path()).await;
    assert_eq!(e.label(), "refused");
    assert!(e.to_string().contains("../disk.raw"), "{e}");

    sh(&format!("tar -cPf {0}/abs.tar {0}/disk.raw", s(dir.path())));
    let e = refused_untouched(&dir.path().join("abs.tar"), dir.path()).await;
    assert_eq!(e.label(), "refused", "{e}");
}

#[tokio::test]
async fn a_checksum_mismatch_removes_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let q = qcow2(dir.path());
    let out = dir.path().join("out.img");
    let mut opts = ImportOptions::new(
        SourceSpec::File(q),
        TargetSpec {
            path: out.clone(),
            capacity: None,
        },
    );
    opts.checksum = Some(format!("sha256:{}", "0".repeat(64)).parse().unwrap());
    let e = import(opts).await.unwrap_err();
    assert_eq!(e.label(), "checksum_mismatch", "{e}");
    assert!(!out.exists());
}

#[tokio::test]
async fn qcow_version_1_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let q = dir.path().join("d.qcow");
    run("qemu-img", &["convert", "-O", "qcow", s(&raw), s(&q)]);
    let e = refused_untouched(&q, dir.path()).await;
    assert_eq!(e.label(), "unsupported", "{e}");
    assert!(e.to_string().contains("qcow version 1"), "{e}");
}

/// `qemu-img convert -O <format> [-o <options>]` of the fixture.
fn make(dir: &Path, format: &str, options: &str, name: &str) -> PathBuf {
    let raw = write_raw(dir);
    let o = dir.join(name);
    let mut args = vec!["convert", "-O", format];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend([s(&raw), s(&o)]);
    run("qemu-img", &args);
    o
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Rewrites a file in place.
fn patch(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

#[tokio::test]
async fn vmdk_grain_table_beyond_the_file_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let v = make(dir.path(), "vmdk", "", "d.vmdk");
    patch(&v, |b| {
        // Both directories (redundant and primary): the first grain table far away.
        for gd in [le64(b, 48), le64(b, 56)] {
            let at = (gd * 512) as usize;
            b[at..at + 4].copy_from_slice(&0x7000_0000u32.to_le_bytes());
        }
    });
    let out = dir.path().join("out.img");
    let e = import_file(&v, &out, None).await;
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(!out.exists());
}

#[tokio::test]
async fn vmdk_absurd_capacity_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let v = make(dir.path(), "vmdk", "subformat=streamOptimized", "d.vmdk");
    // 32 TiB against a 1 GiB target.
    patch(&v, |b| b[12..20].copy_from_slice(&(1u64 << 36).to_le_bytes()));
    let out = dir.path().join("existing.img");
    std::fs::write(&out, b"keep me").unwrap();
    let e = import_file(&v, &out, Some(1 << 30)).await;
    assert!(
        matches!(e, ido_disk::Error::TooLarge { needed, .. } if needed == 1 << 45),
        "{e}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // Beyond any sane size: invalid, whatever the target.
    patch(&v, |b| b[12..20].copy_from_slice(&(u64::MAX / 512).to_le_bytes()));
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("capacity"), "{e}");
}

#[tokio::test]
async fn vmdk_external_extents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // An embedded descriptor rewritten to point at another file.
    let v = make(dir.path(), "vmdk", "", "d.vmdk");
    patch(&v, |b| {
        let text = String::from_utf8_lossy(&b[512..512 * 21]).to_string();
        let line = text.lines().find(|l| l.starts_with("RW ")).unwrap().to_string();
        let evil = format!("RW {} FLAT \"/etc/passwd\" 0", line.split(' ').nth(1).unwrap());
        assert!(evil.len() <= line.len() + 40);
        let patched = text.replacen(&line, &evil, 1);
        b[512..512 + patched.len()].copy_from_slice(patched.as_bytes());
    });
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("/etc/passwd"), "{e}");

    // Descriptor files are read with their extents, but only extents inside the
    // descriptor's directory: one pointing out of it (it exists there) is refused by name.
    for (sub, extent) in [
        ("monolithicFlat", "f-flat.vmdk"),
        ("twoGbMaxExtentSparse", "f-s001.vmdk"),
    ] {
        let inner = dir.path().join(sub);
        std::fs::create_dir_all(&inner).unwrap();
        let f = inner.join("f.vmdk");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                s(&f),
                "8M",
            ],
        );
        std::fs::rename(inner.join(extent), dir.path().join(extent)).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        let escaped = format!("\"../{extent}\"");
        std::fs::write(&f, text.replace(&format!("\"{extent}\""), &escaped)).unwrap();
        let e = refused_untouched(&f, &inner).await;
        assert!(e.to_string().contains(&format!("../{extent}")), "{sub}: {e}");
    }
}

#[tokio::test]
async fn vmdk_delta_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vmdk");
    let child = dir.path().join("child.vmdk");
    run("qemu-img", &["create", "-q", "-f", "vmdk", s(&base), "8M"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            s(&base),
            "-F",
            "vmdk",
            s(&child),
        ],
    );
    let e = refused_untouched(&child, dir.path()).await;
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("base.vmdk"), "{e}");
}

/// VHD's checksum over `b` with the field at `at` zeroed, stored there.
fn vhd_checksum(b: &mut [u8], at: usize) {
    b[at..at + 4].fill(0);
    let sum = b.iter().fold(0u32, |s, x| s.wrapping_add(u32::from(*x)));
    b[at..at + 4].copy_from_slice(&(!sum).to_be_bytes());
}

#[tokio::test]
async fn vhd_differencing_is_refused_naming_its_parent() {
    // qemu cannot create one: turn a dynamic disk into a differencing one.
    let dir = tempfile::tempdir().unwrap();
    let v = make(dir.path(), "vpc", "", "d.vhd");
    patch(&v, |b| {
        let len = b.len();
        for at in [0, len - 512] {
            b[at + 60..at + 64].copy_from_slice(&4u32.to_be_bytes());
            vhd_checksum(&mut b[at..at + 512], 64);
        }
        let name: Vec<u8> = "parent.vhd".encode_utf16().flat_map(u16::to_be_bytes).collect();
        b[512 + 64..512 + 64 + name.len()].copy_from_slice(&name);
        vhd_checksum(&mut b[512..1536], 36);
    });
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("parent.vhd"), "{e}");
}

#[tokio::test]
async fn vhd_bad_checksum_and_bat_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let v = make(dir.path(), "vpc", "", "d.vhd");
    patch(&v, |b| b[40] ^= 1);
    let e = refused_untouched(&v, dir.path()).await;
    assert!(e.to_string().contains("checksum"), "{e}");
    let v = make(dir.path(), "vpc", "", "e.vhd");
    patch(&v, |b| {
        b[512 + 28..512 + 32].copy_from_slice(&1u32.to_be_bytes());
        vhd_checksum(&mut b[512..1536], 36);
    });
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("BAT has 1 entries"), "{e}");
}

/// The metadata region's offset in a VHDX (from the first region table).
fn vhdx_metadata_offset(b: &[u8]) -> usize {
    let t = 192 * 1024;
    let meta_guid = [
        0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
    ];
    (0..le32(b, t + 8) as usize)
        .map(|i| t + 16 + i * 32)
        .find(|e| b[*e..*e + 16] == meta_guid)
        .map(|e| le64(b, e + 16) as usize)
        .unwrap()
}

#[tokio::test]
async fn vhdx_with_a_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = make(dir.path(), "vhdx", "", "d.vhdx");
    patch(&v, |b| {
        // File parameters item: flags (after the block size), bit 1 = has parent.
        let m = vhdx_metadata_offset(b);
        let params = [
            0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b,
        ];
        let entry = (0..usize::from(u16::from_le_bytes([b[m + 10], b[m + 11]])))
            .map(|i| m + 32 + i * 32)
            .find(|e| b[*e..*e + 16] == params)
            .unwrap();
        let item = m + le32(b, entry + 16) as usize;
        b[item + 4] |= 2;
    });
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("differencing"), "{e}");
}

// A VHDX with a log to replay (made by qemu itself): tests/qcow2_vhdx.rs.
#[tokio::test]
async fn vhdx_with_both_headers_corrupt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A corrupted header checksum on both copies.
    let v = make(dir.path(), "vhdx", "", "e.vhdx");
    patch(&v, |b| {
        b[64 * 1024 + 8] ^= 1;
        b[128 * 1024 + 8] ^= 1;
    });
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("neither header"), "{e}");
}

#[tokio::test]
async fn vdi_block_map_out_of_range_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let v = make(dir.path(), "vdi", "", "d.vdi");
    patch(&v, |b| {
        let bmap = le32(b, 0x154) as usize;
        b[bmap..bmap + 4].copy_from_slice(&0x0100_0000u32.to_le_bytes());
    });
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("out of range"), "{e}");

    // A differencing image (type 4).
    let v = make(dir.path(), "vdi", "", "e.vdi");
    patch(&v, |b| b[0x4c..0x50].copy_from_slice(&4u32.to_le_bytes()));
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("differencing"), "{e}");
}

#[tokio::test]
async fn truncated_disk_formats_fail_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (format, options, name) in [
        ("vmdk", "", "d.vmdk"),
        ("vmdk", "subformat=streamOptimized", "s.vmdk"),
        ("vpc", "", "d.vhd"),
        ("vhdx", "", "d.vhdx"),
        ("vdi", "", "d.vdi"),
        ("vdi", "static=on", "s.vdi"),
    ] {
        let v = make(dir.path(), format, options, name);
        let len = std::fs::metadata(&v).unwrap().len();
        // Cut inside the data (vpc, vdi: past the tables, before the last block).
        patch(&v, |b| b.truncate((len * 6 / 10) as usize & !511));
        let out = dir.path().join("out.img");
        let e = import_file(&v, &out, None).await;
        assert_eq!(e.label(), "invalid_image", "{name} {options}: {e}");
        assert!(e.to_string().contains("truncated"), "{name} {options}: {e}");
        assert!(!out.exists(), "{name} {options}");
    }
}

#[tokio::test]
async fn ova_naming_a_missing_disk_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ovf = r#"<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:href="disk.vmdk" ovf:id="f"/></References>
<DiskSection><Disk ovf:fileRef="f"/></DiskSection></Envelope>"#;
    std::fs::write(dir.path().join("a.ovf"), ovf).unwrap();
    std::fs::write(dir.path().join("other.vmdk"), b"x").unwrap();
    sh(&format!(
        "cd {} && tar --format=ustar -cf a.ova a.ovf other.vmdk",
        s(dir.path())
    ));
    let e = refused_untouched(&dir.path().join("a.ova"), dir.path()).await;
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("disk.vmdk"), "{e}");
}
