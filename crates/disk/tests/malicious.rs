//! Malicious and broken images: a clear error, and no target left behind. Images refused
//! on their header must not even touch a target that already exists.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ido_disk::{ImportOptions, SourceSpec, TargetSpec, import};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn import_file(image: &Path, out: &Path, capacity: Option<u64>) -> ido_disk::Error {
    let opts = ImportOptions::new(
        SourceSpec::File(image.to_path_buf()),
        TargetSpec {
            path: out.to_path_buf(),
            capacity,
        },
    );
    import(opts).await.expect_err("the import must fail")
}

/// Imports onto an existing target and checks it was not touched.
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
async fn formats_not_converted_yet_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let v = dir.path().join("d.vmdk");
    run("qemu-img", &["convert", "-O", "vmdk", s(&raw), s(&v)]);
    let e = refused_untouched(&v, dir.path()).await;
    assert_eq!(e.label(), "unsupported", "{e}");
    assert!(e.to_string().contains("vmdk"), "{e}");
}
