//! Every supported format and compression, made from one fixed raw image by the real
//! tools, imported from a local file: the result must equal the raw image byte for byte
//! (and `qemu-img convert -O raw` of the same input), and keep its holes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::*;
use ido_disk::{DiskFormat, ImportOptions, Report, SourceSpec, TargetSpec, import};

/// Makes a variant with `make(dir, raw) -> path`, imports it, and checks the output.
async fn case(
    make: impl FnOnce(&Path, &Path) -> PathBuf,
    format: DiskFormat,
    layers: &[&str],
) -> ido_disk::ImportReport {
    case_with(make, format, layers, None).await
}

/// As [`case`]; with `oracle: Some(f)` the output must equal `qemu-img convert -f f -O raw`
/// of the image instead of the fixture (VHD sizes are rounded to a CHS geometry).
async fn case_with(
    make: impl FnOnce(&Path, &Path) -> PathBuf,
    format: DiskFormat,
    layers: &[&str],
    oracle: Option<&str>,
) -> ido_disk::ImportReport {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let image = make(dir.path(), &raw);
    let out = dir.path().join("out.img");
    let mut opts = ImportOptions::new(
        SourceSpec::File(image.clone()),
        TargetSpec {
            path: out.clone(),
            capacity: None,
        },
    );
    opts.checksum = Some(sha256(&image).parse().unwrap());
    let seen: Arc<Mutex<Vec<Report>>> = Arc::default();
    let s2 = seen.clone();
    opts.progress = Some(Arc::new(move |p: &Report| s2.lock().unwrap().push(p.clone())));
    let report = import(opts)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()));

    let what = image.file_name().unwrap().to_string_lossy().to_string();
    let got = std::fs::read(&out).unwrap();
    let size = match oracle {
        Some(f) => {
            let want = qemu_raw_as(&image, f, dir.path());
            assert_same(&got, &want, &format!("{what} vs qemu-img -f {f}"));
            assert_same(&got[..RAW_SIZE as usize], &raw_image(), &what);
            want.len() as u64
        }
        None => {
            assert_same(&got, &raw_image(), &what);
            if format != DiskFormat::Raw && layers.is_empty() {
                assert_same(
                    &got,
                    &qemu_raw(&image, dir.path()),
                    &format!("{what} vs qemu-img"),
                );
            }
            RAW_SIZE
        }
    };
    assert_sparse(&out);
    assert_eq!(report.format, format, "{what}");
    assert_eq!(report.layers, layers, "{what}");
    assert_eq!(report.virtual_size, size);
    let size = std::fs::metadata(&image).unwrap().len();
    assert_eq!(report.source_bytes, size, "{what}: every source byte read once");
    let last = seen
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a final progress report");
    assert!(last.done && last.source_done == size && last.source_total == Some(size));
    assert_eq!(last.written, report.virtual_size);
    report
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn raw_plain() {
    case(|_, raw| raw.to_path_buf(), DiskFormat::Raw, &[]).await;
}

#[tokio::test]
async fn raw_gzip() {
    let make = |d: &Path, raw: &Path| {
        sh(&format!("gzip -1 -c {} > {}/disk.raw.gz", s(raw), s(d)));
        d.join("disk.raw.gz")
    };
    case(make, DiskFormat::Raw, &["gzip"]).await;
}

#[tokio::test]
async fn raw_pigz() {
    let make = |d: &Path, raw: &Path| {
        sh(&format!("pigz -p 2 -b 128 -c {} > {}/disk.raw.gz", s(raw), s(d)));
        d.join("disk.raw.gz")
    };
    case(make, DiskFormat::Raw, &["gzip"]).await;
}

#[tokio::test]
async fn raw_xz_multi_block() {
    let make = |d: &Path, raw: &Path| {
        sh(&format!(
            "xz -T2 --block-size=4MiB -1 -c {} > {}/disk.raw.xz",
            s(raw),
            s(d)
        ));
        // The stream really has several blocks (what the parallel decoder needs).
        let out = std::process::Command::new("xz")
            .args(["--robot", "--list", s(&d.join("disk.raw.xz"))])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let blocks: u64 = text
            .lines()
            .find(|l| l.starts_with("file"))
            .and_then(|l| l.split('\t').nth(2))
            .and_then(|b| b.parse().ok())
            .unwrap();
        assert!(blocks > 4, "{text}");
        d.join("disk.raw.xz")
    };
    case(make, DiskFormat::Raw, &["xz"]).await;
}

#[tokio::test]
async fn raw_zstd() {
    let make = |d: &Path, raw: &Path| {
        sh(&format!("zstd -q -3 -c {} > {}/disk.raw.zst", s(raw), s(d)));
        d.join("disk.raw.zst")
    };
    case(make, DiskFormat::Raw, &["zstd"]).await;
}

#[tokio::test]
async fn raw_zstd_multi_frame() {
    // Each frame announces only its own size: the first is a lower bound, not the size.
    let make = |d: &Path, raw: &Path| {
        sh(&format!(
            "cd {0} && head -c 10485760 {1} > a && tail -c +10485761 {1} > b && zstd -q a b && cat a.zst b.zst > d.zst",
            s(d),
            s(raw)
        ));
        let head = std::fs::read(d.join("d.zst")).unwrap();
        assert_eq!(
            ido_disk::detect::zstd_content_size(&head),
            Some(10 << 20),
            "the first frame announces its size"
        );
        d.join("d.zst")
    };
    case(make, DiskFormat::Raw, &["zstd"]).await;
}

#[tokio::test]
async fn raw_bzip2() {
    let make = |d: &Path, raw: &Path| {
        sh(&format!("bzip2 -1 -c {} > {}/disk.raw.bz2", s(raw), s(d)));
        d.join("disk.raw.bz2")
    };
    case(make, DiskFormat::Raw, &["bzip2"]).await;
}

#[tokio::test]
async fn raw_in_tar_gz() {
    let make = |d: &Path, _raw: &Path| {
        sh(&format!(
            "cd {} && mkdir -p images && cp --sparse=always disk.raw images/ && tar -czf disk.tar.gz images",
            s(d)
        ));
        d.join("disk.tar.gz")
    };
    case(make, DiskFormat::Raw, &["gzip", "tar"]).await;
}

#[tokio::test]
async fn qcow2_plain() {
    let make = |d: &Path, raw: &Path| {
        run(
            "qemu-img",
            &["convert", "-O", "qcow2", s(raw), s(&d.join("d.qcow2"))],
        );
        d.join("d.qcow2")
    };
    case(make, DiskFormat::Qcow2, &[]).await;
}

#[tokio::test]
async fn qcow2_v2_small_clusters() {
    let make = |d: &Path, raw: &Path| {
        let o = d.join("d.qcow2");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "qcow2",
                "-o",
                "compat=0.10,cluster_size=4096",
                s(raw),
                s(&o),
            ],
        );
        o
    };
    case(make, DiskFormat::Qcow2, &[]).await;
}

#[tokio::test]
async fn qcow2_compressed_zlib() {
    let make = |d: &Path, raw: &Path| {
        run(
            "qemu-img",
            &["convert", "-c", "-O", "qcow2", s(raw), s(&d.join("d.qcow2"))],
        );
        d.join("d.qcow2")
    };
    case(make, DiskFormat::Qcow2, &[]).await;
}

#[tokio::test]
async fn qcow2_compressed_zstd() {
    let make = |d: &Path, raw: &Path| {
        let o = d.join("d.qcow2");
        run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "compression_type=zstd",
                s(raw),
                s(&o),
            ],
        );
        o
    };
    case(make, DiskFormat::Qcow2, &[]).await;
}

#[tokio::test]
async fn qcow2_extended_l2() {
    let make = |d: &Path, raw: &Path| {
        let o = d.join("d.qcow2");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "qcow2",
                "-o",
                "extended_l2=on,cluster_size=128k",
                s(raw),
                s(&o),
            ],
        );
        // Make some subclusters "zero" rather than unallocated/allocated.
        run("qemu-io", &["-f", "qcow2", "-c", "write -z 8192 4096", s(&o)]);
        o
    };
    // Byte 8192.. was random data: the oracle now differs from the fixture there.
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let image = make(dir.path(), &raw);
    let out = dir.path().join("out.img");
    let opts = ImportOptions::new(
        SourceSpec::File(image.clone()),
        TargetSpec {
            path: out.clone(),
            capacity: None,
        },
    );
    let report = import(opts).await.unwrap();
    assert_eq!(report.format, DiskFormat::Qcow2);
    let want = qemu_raw(&image, dir.path());
    assert!(want[8192..12288].iter().all(|b| *b == 0));
    assert_same(&std::fs::read(&out).unwrap(), &want, "extended L2 vs qemu-img");
    assert_sparse(&out);
}

#[tokio::test]
async fn qcow2_xz() {
    let make = |d: &Path, raw: &Path| {
        let q = d.join("d.qcow2");
        run("qemu-img", &["convert", "-O", "qcow2", s(raw), s(&q)]);
        sh(&format!("xz -T2 --block-size=2MiB -1 {}", s(&q)));
        d.join("d.qcow2.xz")
    };
    case(make, DiskFormat::Qcow2, &["xz"]).await;
}

#[tokio::test]
async fn compressed_qcow2_zstd_in_tar() {
    let make = |d: &Path, raw: &Path| {
        let q = d.join("disk.qcow2");
        run("qemu-img", &["convert", "-c", "-O", "qcow2", s(raw), s(&q)]);
        sh(&format!(
            "cd {} && tar -cf - disk.qcow2 | zstd -q -c > d.tar.zst",
            s(d)
        ));
        d.join("d.tar.zst")
    };
    case(make, DiskFormat::Qcow2, &["zstd", "tar"]).await;
}

#[tokio::test]
async fn forced_raw_keeps_a_qcow2_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let q = dir.path().join("d.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", s(&raw), s(&q)]);
    let out = dir.path().join("out.img");
    let mut opts = ImportOptions::new(
        SourceSpec::File(q.clone()),
        TargetSpec {
            path: out.clone(),
            capacity: None,
        },
    );
    opts.format = Some(DiskFormat::Raw);
    import(opts).await.unwrap();
    assert_same(
        &std::fs::read(&out).unwrap(),
        &std::fs::read(&q).unwrap(),
        "forced raw",
    );
}

/// `qemu-img convert -O <format> [-o <options>] raw d/<name>`.
fn qemu_make(d: &Path, raw: &Path, format: &str, options: &str, name: &str) -> PathBuf {
    let o = d.join(name);
    let mut args = vec!["convert", "-O", format];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend([s(raw), s(&o)]);
    run("qemu-img", &args);
    o
}

#[tokio::test]
async fn vmdk_monolithic_sparse() {
    let make = |d: &Path, raw: &Path| qemu_make(d, raw, "vmdk", "", "d.vmdk");
    case(make, DiskFormat::Vmdk, &[]).await;
}

#[tokio::test]
async fn vmdk_stream_optimized() {
    let make = |d: &Path, raw: &Path| qemu_make(d, raw, "vmdk", "subformat=streamOptimized", "d.vmdk");
    case(make, DiskFormat::Vmdk, &[]).await;
}

#[tokio::test]
async fn vmdk_monolithic_sparse_xz() {
    let make = |d: &Path, raw: &Path| {
        let v = qemu_make(d, raw, "vmdk", "", "d.vmdk");
        sh(&format!("xz -T2 -1 {}", s(&v)));
        d.join("d.vmdk.xz")
    };
    case(make, DiskFormat::Vmdk, &["xz"]).await;
}

#[tokio::test]
async fn vmdk_zeroed_grain_table_entries() {
    // qemu's zeroed-grain flag: `write -z` leaves grain-table entries of 1.
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let v = dir.path().join("d.vmdk");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            s(&v),
            &RAW_SIZE.to_string(),
        ],
    );
    run("qemu-img", &["convert", "-n", "-O", "vmdk", s(&raw), s(&v)]);
    run("qemu-io", &["-f", "vmdk", "-c", "write -z 0 65536", s(&v)]);
    let out = dir.path().join("out.img");
    let report = import(ImportOptions::new(
        SourceSpec::File(v.clone()),
        TargetSpec {
            path: out.clone(),
            capacity: None,
        },
    ))
    .await
    .unwrap();
    assert_eq!(report.format, DiskFormat::Vmdk);
    let want = qemu_raw(&v, dir.path());
    assert!(want[..65536].iter().all(|b| *b == 0));
    assert_same(&std::fs::read(&out).unwrap(), &want, "zeroed grains vs qemu-img");
}

#[tokio::test]
async fn vpc_dynamic() {
    let make = |d: &Path, raw: &Path| qemu_make(d, raw, "vpc", "", "d.vhd");
    let r = case_with(make, DiskFormat::Vhd, &[], Some("vpc")).await;
    // qemu rounds the size up to a CHS geometry.
    assert!(r.virtual_size > RAW_SIZE);
}

#[tokio::test]
async fn vpc_dynamic_force_size() {
    let make = |d: &Path, raw: &Path| qemu_make(d, raw, "vpc", "force_size=on", "d.vhd");
    let r = case_with(make, DiskFormat::Vhd, &[], Some("vpc")).await;
    assert_eq!(r.virtual_size, RAW_SIZE);
}

#[tokio::test]
async fn vpc_fixed() {
    // qemu probes a fixed VHD as raw (footer included); `-f vpc` is the oracle.
    let make = |d: &Path, raw: &Path| qemu_make(d, raw, "vpc", "subformat=fixed", "d.vhd");
    case_with(make, DiskFormat::Vhd, &[], Some("vpc")).await;
}

#[tokio::test]
async fn vpc_fixed_gzip() {
    // The footer is recognised at the end of a stream of unknown length.
    let make = |d: &Path, raw: &Path| {
        let v = qemu_make(d, raw, "vpc", "subformat=fixed,force_size=on", "d.vhd");
        sh(&format!("gzip -1 {}", s(&v)));
        d.join("d.vhd.gz")
    };
    let r = case_with(make, DiskFormat::Vhd, &["gzip"], None).await;
    assert_eq!(r.virtual_size, RAW_SIZE);
}

#[tokio::test]
async fn vhdx_dynamic() {
    let make = |d: &Path, raw: &Path| qemu_make(d, raw, "vhdx", "", "d.vhdx");
    case(make, DiskFormat::Vhdx, &[]).await;
}

#[tokio::test]
async fn vhdx_fixed_small_blocks() {
    let make = |d: &Path, raw: &Path| qemu_make(d, raw, "vhdx", "subformat=fixed,block_size=1M", "d.vhdx");
    case(make, DiskFormat::Vhdx, &[]).await;
}

#[tokio::test]
async fn vhdx_large_blocks_gzip() {
    let make = |d: &Path, raw: &Path| {
        let v = qemu_make(d, raw, "vhdx", "log_size=2M,block_size=32M", "d.vhdx");
        sh(&format!("gzip -1 {}", s(&v)));
        d.join("d.vhdx.gz")
    };
    case(make, DiskFormat::Vhdx, &["gzip"]).await;
}

#[tokio::test]
async fn vdi_dynamic() {
    let make = |d: &Path, raw: &Path| qemu_make(d, raw, "vdi", "", "d.vdi");
    case(make, DiskFormat::Vdi, &[]).await;
}

#[tokio::test]
async fn vdi_static_zstd() {
    let make = |d: &Path, raw: &Path| {
        let v = qemu_make(d, raw, "vdi", "static=on", "d.vdi");
        sh(&format!("zstd -q --rm {}", s(&v)));
        d.join("d.vdi.zst")
    };
    case(make, DiskFormat::Vdi, &["zstd"]).await;
}

/// An OVA as VMware and ovftool lay it out: descriptor, manifest, then the disk.
fn ova(d: &Path, raw: &Path, extra: &str) -> PathBuf {
    qemu_make(d, raw, "vmdk", "subformat=streamOptimized", "disk-1.vmdk");
    std::fs::write(d.join("extra.iso"), b"not the disk").unwrap();
    let ovf = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:href="extra.iso" ovf:id="file0"/>
    <File ovf:href="disk-1.vmdk" ovf:id="file1"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{RAW_SIZE}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
</Envelope>
"#
    );
    std::fs::write(d.join("vm.ovf"), ovf).unwrap();
    sh(&format!(
        "cd {} && sha256sum --tag vm.ovf disk-1.vmdk extra.iso | sed 's/ (/(/' > vm.mf && \
         tar --format=ustar -cf vm.ova vm.ovf vm.mf {extra} disk-1.vmdk",
        s(d)
    ));
    d.join("vm.ova")
}

#[tokio::test]
async fn ova_with_a_stream_optimized_vmdk() {
    case(|d, raw| ova(d, raw, "extra.iso"), DiskFormat::Vmdk, &["ova"]).await;
}

#[tokio::test]
async fn ova_gzip_disk_last_member_first() {
    // The referenced disk before an unreferenced file, the whole OVA compressed.
    let make = |d: &Path, raw: &Path| {
        ova(d, raw, "");
        sh(&format!(
            "cd {} && tar -rf vm.ova extra.iso && gzip -1 vm.ova",
            s(d)
        ));
        d.join("vm.ova.gz")
    };
    case(make, DiskFormat::Vmdk, &["gzip", "ova"]).await;
}
