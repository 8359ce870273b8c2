//! Compressions (gzip, pigz, xz, bzip2, zstd, pzstd; multi-member and multi-stream), tar
//! archives (every format, sparse members, long names, compressed) and OVAs.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};

use super::qcow2::qcow2_layout;
use super::refusals::refused;
use super::tools::{compress_file, convert, same, sh};
use super::{Expect, KIB, Layout, MIB, Made, Recipe, payload, random_bytes, recipe};

/// Writes the payload as `d/disk.raw` and its oracle (the same bytes, through qemu-img).
fn payload_raw(d: &Path, layers: &[&'static str]) -> anyhow::Result<(PathBuf, Expect)> {
    let raw = d.join("disk.raw");
    payload().write(&raw)?;
    let e = same(d, &raw, "raw", "raw", layers)?;
    Ok((raw, e))
}

/// The compressed raw images: (name, layer, script making disk.raw.* from disk.raw, a check
/// of the result).
const COMPRESSIONS: [(&str, &str, &str, &str); 11] = [
    ("raw in gzip", "gzip", "gzip -1 -k disk.raw", ""),
    (
        "raw in multi-member gzip (3 members)",
        "gzip",
        "split -n 3 -d disk.raw part. && for p in part.0*; do gzip -1 -c $p; done > disk.raw.gz && rm part.0*",
        "",
    ),
    (
        "raw in pigz (independent 128k blocks)",
        "gzip",
        "pigz -p 2 -i -b 128 -k disk.raw",
        "",
    ),
    ("raw in xz", "xz", "xz -1 -k disk.raw", ""),
    (
        "raw in multi-stream xz (3 streams, stream padding)",
        "xz",
        "split -n 3 -d disk.raw part. && for p in part.0*; do xz -1 -c $p; printf '\\0\\0\\0\\0'; done > disk.raw.xz && rm part.0*",
        "test $(xz --robot -l disk.raw.xz | awk '/^totals/ {print $2}') -eq 3",
    ),
    (
        "raw in multi-block xz (-T2, 1 MiB blocks)",
        "xz",
        "xz -T2 --block-size=1MiB -1 -k disk.raw",
        "test $(xz --robot -l disk.raw.xz | awk '/^totals/ {print $3}') -gt 4",
    ),
    ("raw in bzip2", "bzip2", "bzip2 -1 -k disk.raw", ""),
    (
        "raw in multi-stream bzip2 (3 streams)",
        "bzip2",
        "split -n 3 -d disk.raw part. && for p in part.0*; do bzip2 -1 -c $p; done > disk.raw.bz2 && rm part.0*",
        "",
    ),
    ("raw in zstd", "zstd", "zstd -q -3 -k disk.raw", ""),
    (
        "raw in zstd, several frames",
        "zstd",
        "split -n 3 -d disk.raw part. && for p in part.0*; do zstd -q -c $p; done > disk.raw.zst && rm part.0*",
        "",
    ),
    (
        "raw in pzstd (skippable frames)",
        "zstd",
        "pzstd -q -p 2 -3 disk.raw -o disk.raw.zst",
        "test \"$(head -c 4 disk.raw.zst | od -An -tx1 | tr -d ' ')\" = 502a4d18",
    ),
];

pub(super) fn compression_recipes(v: &mut Vec<Recipe>) {
    recipe(v, "raw size=11M+64k+777 (not a multiple of 512)", |d| {
        let (raw, e) = payload_raw(d, &[])?;
        Ok(Made::Image(raw, e))
    });
    for (name, layer, script, check) in COMPRESSIONS {
        recipe(v, name, move |d| {
            let (_, e) = payload_raw(d, &[layer])?;
            sh(d, script)?;
            if !check.is_empty() {
                sh(d, check).context("the file is not what the case says")?;
            }
            let ext = match layer {
                "gzip" => "gz",
                "xz" => "xz",
                "bzip2" => "bz2",
                _ => "zst",
            };
            fs::remove_file(d.join("disk.raw"))?;
            Ok(Made::Image(d.join(format!("disk.raw.{ext}")), e))
        });
    }
    // The same 4 MiB of random bytes twice, 120 MiB apart: only a 128 MiB window sees it.
    recipe(
        v,
        "raw in zstd --long=27 (128 MiB window, matches 120 MiB back)",
        |d| {
            let raw = d.join("disk.raw");
            let f = File::create(&raw)?;
            f.set_len(130 * MIB + 333)?;
            let block = random_bytes(30, 4 * MIB as usize);
            f.write_all_at(&block, MIB)?;
            f.write_all_at(&block, 121 * MIB)?;
            drop(f);
            let e = same(d, &raw, "raw", "raw", &["zstd"])?;
            sh(d, "zstd -q --long=27 -3 --rm disk.raw")?;
            sh(d, "zstd -lv disk.raw.zst | grep -q 'Window Size: 128 MiB'")
                .context("not a 128 MiB window")?;
            let len = fs::metadata(d.join("disk.raw.zst"))?.len();
            ensure!(len < 6 * MIB, "{len} bytes: the long matches were not found");
            Ok(Made::Image(d.join("disk.raw.zst"), e))
        },
    );
}

pub(super) fn tar_recipes(v: &mut Vec<Recipe>) {
    tar_formats(v);
    sparse_tars(v);
    long_member_names(v);
    compressed_tars(v);
}

/// Plain formats; the disk in a directory (its entry comes first).
fn tar_formats(v: &mut Vec<Recipe>) {
    for fmt in ["v7", "ustar", "gnu", "oldgnu", "pax"] {
        recipe(v, format!("raw in {fmt} tar"), move |d| {
            let (_, e) = payload_raw(d, &["tar"])?;
            sh(
                d,
                &format!("mkdir t && mv disk.raw t/ && tar --format={fmt} -cf disk.tar -C t ."),
            )?;
            fs::remove_dir_all(d.join("t"))?;
            Ok(Made::Image(d.join("disk.tar"), e))
        });
    }
}

/// Sparse members: GNU 'S' headers, pax GNU.sparse 0.0, 0.1 and 1.0.
fn sparse_tars(v: &mut Vec<Recipe>) {
    for (fmt, version, check) in [
        ("gnu", "", "S"),
        ("oldgnu", "", "S"),
        ("pax", "0.0", ""),
        ("pax", "0.1", ""),
        ("pax", "1.0", ""),
    ] {
        let name = if version.is_empty() {
            format!("raw in {fmt} sparse tar (--sparse)")
        } else {
            format!("raw in {fmt} sparse tar (--sparse-version={version})")
        };
        recipe(v, name, move |d| {
            let (raw, e) = payload_raw(d, &["tar"])?;
            let size = fs::metadata(&raw)?.len();
            let sv = if version.is_empty() {
                String::new()
            } else {
                format!("--sparse-version={version}")
            };
            sh(
                d,
                &format!("tar --format={fmt} --sparse {sv} -cf disk.tar disk.raw"),
            )?;
            fs::remove_file(&raw)?;
            let tar = d.join("disk.tar");
            let len = fs::metadata(&tar)?.len();
            ensure!(len < size / 2, "the tar ({len} bytes) is not sparse");
            if !check.is_empty() {
                let mut h = [0u8; 512];
                File::open(&tar)?.read_exact_at(&mut h, 0)?;
                ensure!(h[156] == check.as_bytes()[0], "typeflag {:?}", h[156] as char);
            }
            Ok(Made::Image(tar, e))
        });
    }
}

/// Long member names, with a qcow2 inside.
fn long_member_names(v: &mut Vec<Recipe>) {
    let long = "disk-with-a-member-name-longer-than-the-hundred-bytes-of-a-tar-header-name-field-so-it-needs-another-header-first.qcow2";
    for (fmt, how, member) in [
        ("gnu", "GNU long name", long.to_string()),
        ("pax", "pax path record", long.to_string()),
        (
            "ustar",
            "prefix field",
            format!("{}/{}/disk.qcow2", "d".repeat(70), "e".repeat(60)),
        ),
    ] {
        recipe(
            v,
            format!("qcow2 in {fmt} tar, long member name ({how})"),
            move |d| {
                let q = convert(
                    d,
                    &qcow2_layout(64 * KIB, false),
                    "qcow2",
                    "",
                    false,
                    "disk.qcow2",
                )?;
                let e = same(d, &q, "qcow2", "qcow2", &["tar"])?;
                let path = d.join("t").join(&member);
                fs::create_dir_all(path.parent().expect("a parent"))?;
                fs::rename(&q, &path)?;
                sh(d, &format!("tar --format={fmt} -cf disk.tar -C t '{member}'"))?;
                fs::remove_dir_all(d.join("t"))?;
                Ok(Made::Image(d.join("disk.tar"), e))
            },
        );
    }
}

/// Tar archives in compressions.
fn compressed_tars(v: &mut Vec<Recipe>) {
    recipe(v, "raw in gnu tar in gzip", |d| {
        let (_, e) = payload_raw(d, &["gzip", "tar"])?;
        sh(
            d,
            "mkdir t && mv disk.raw t/ && tar --format=gnu -czf disk.tar.gz -C t . && rm -r t",
        )?;
        Ok(Made::Image(d.join("disk.tar.gz"), e))
    });
    recipe(v, "raw in gnu sparse tar in xz", |d| {
        let (_, e) = payload_raw(d, &["xz", "tar"])?;
        sh(
            d,
            "tar --format=gnu --sparse -cf disk.tar disk.raw && rm disk.raw && xz -1 disk.tar",
        )?;
        Ok(Made::Image(d.join("disk.tar.xz"), e))
    });
    recipe(v, "qcow2 zstd-compressed in pax tar in zstd", |d| {
        let q = convert(
            d,
            &qcow2_layout(64 * KIB, false),
            "qcow2",
            "compression_type=zstd",
            true,
            "disk.qcow2",
        )?;
        let e = same(d, &q, "qcow2", "qcow2", &["zstd", "tar"])?;
        sh(
            d,
            "tar --format=pax -cf - disk.qcow2 | zstd -q -c > disk.tar.zst && rm disk.qcow2",
        )?;
        Ok(Made::Image(d.join("disk.tar.zst"), e))
    });
}

/// An OVF descriptor: `files` in References, a Disk for each of `disks` (file, capacity).
pub(super) fn ovf(files: &[&str], disks: &[(&str, u64)]) -> String {
    let id = |f: &str| files.iter().position(|x| *x == f).unwrap_or(0);
    let refs: String = files
        .iter()
        .enumerate()
        .map(|(i, f)| format!("    <File ovf:href=\"{f}\" ovf:id=\"file{i}\"/>\n"))
        .collect();
    let disk_items: String = disks
        .iter()
        .enumerate()
        .map(|(i, (f, cap))| {
            format!(
                "    <Disk ovf:capacity=\"{cap}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk{i}\" \
                 ovf:fileRef=\"file{}\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>\n",
                id(f)
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\">\n\
         \x20 <References>\n{refs}  </References>\n\
         \x20 <DiskSection>\n    <Info>Virtual disk information</Info>\n{disk_items}  </DiskSection>\n\
         </Envelope>\n"
    )
}

/// Writes `d/vm.ovf` and `d/vm.mf` (SHA-256 of the ovf and `files`), then
/// `tar --format=FMT -cf vm.ova vm.ovf vm.mf MEMBERS…`.
pub(super) fn ova(
    d: &Path,
    fmt: &str,
    files: &[&str],
    disks: &[(&str, u64)],
    members: &[&str],
) -> anyhow::Result<PathBuf> {
    fs::write(d.join("vm.ovf"), ovf(files, disks))?;
    sh(
        d,
        &format!(
            "sha256sum --tag vm.ovf {} | sed 's/ (/(/' > vm.mf && tar --format={fmt} -cf vm.ova vm.ovf vm.mf {}",
            files.join(" "),
            members.join(" ")
        ),
    )?;
    Ok(d.join("vm.ova"))
}

pub(super) fn ova_recipes(v: &mut Vec<Recipe>) {
    let layout = || Layout::spread(8 * MIB, 256 * KIB, 0);
    recipe(v, "ova (ustar): ovf, manifest, streamOptimized vmdk", move |d| {
        let l = layout();
        let disk = convert(d, &l, "vmdk", "subformat=streamOptimized", false, "disk-1.vmdk")?;
        let e = same(d, &disk, "vmdk", "vmdk", &["ova"])?;
        let f = ["disk-1.vmdk"];
        Ok(Made::Image(ova(d, "ustar", &f, &[(f[0], l.size)], &f)?, e))
    });
    recipe(
        v,
        "ova (ustar): ovf then two disks, none chosen (refused)",
        move |d| {
            // Which disk is wanted is the user's choice (`--disk`); without one, a refusal.
            let l = layout();
            convert(d, &l, "vmdk", "subformat=streamOptimized", false, "disk-1.vmdk")?;
            let two = Layout::spread(4 * MIB, 128 * KIB, 0);
            convert(d, &two, "vmdk", "subformat=streamOptimized", false, "disk-2.vmdk")?;
            let f = ["disk-1.vmdk", "disk-2.vmdk"];
            let image = ova(d, "ustar", &f, &[(f[0], l.size), (f[1], two.size)], &f)?;
            refused(image, "2 disks")
        },
    );
    recipe(v, "ova (pax): long disk name, monolithicSparse vmdk", move |d| {
        let l = layout();
        let name = format!(
            "{}.vmdk",
            "a-disk-of-a-virtual-machine-with-a-long-name-".repeat(3)
        );
        let disk = convert(d, &l, "vmdk", "", false, &name)?;
        let e = same(d, &disk, "vmdk", "vmdk", &["ova"])?;
        let f = [name.as_str()];
        Ok(Made::Image(ova(d, "pax", &f, &[(f[0], l.size)], &f)?, e))
    });
    recipe(
        v,
        "ova (gnu) in gzip: an unreferenced file before the disk",
        move |d| {
            let l = layout();
            let disk = convert(d, &l, "vmdk", "subformat=streamOptimized", false, "disk-1.vmdk")?;
            let e = same(d, &disk, "vmdk", "vmdk", &["gzip", "ova"])?;
            fs::write(d.join("notes.txt"), "not the disk\n".repeat(100))?;
            let f = ["notes.txt", "disk-1.vmdk"];
            ova(d, "gnu", &f, &[(f[1], l.size)], &f)?;
            Ok(Made::Image(compress_file(d, "vm.ova", "gzip")?, e))
        },
    );
    // A descriptor first, its extents after it in the archive.
    for (sub, step) in [("monolithicFlat", 8 * MIB), ("twoGbMaxExtentSparse", 700 * MIB)] {
        recipe(
            v,
            format!("ova (ustar): vmdk {sub} descriptor, then its extents"),
            move |d| {
                let l = Layout::spread(step, 256 * KIB, 0);
                let opts = format!("subformat={sub}");
                let disk = convert(d, &l, "vmdk", &opts, false, "disk.vmdk")?;
                let e = same(d, &disk, "vmdk", "vmdk", &["ova"])?;
                let mut extents: Vec<String> = fs::read_dir(d)?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("disk-") && n.ends_with(".vmdk"))
                    .collect();
                extents.sort();
                ensure!(!extents.is_empty(), "no extent files");
                let mut members = vec!["disk.vmdk"];
                members.extend(extents.iter().map(String::as_str));
                Ok(Made::Image(
                    ova(d, "ustar", &members, &[("disk.vmdk", l.size)], &members)?,
                    e,
                ))
            },
        );
    }
    recipe(v, "ova (ustar) with a qcow2 disk", move |d| {
        let l = layout();
        let disk = convert(d, &l, "qcow2", "", false, "disk-1.qcow2")?;
        let e = same(d, &disk, "qcow2", "qcow2", &["ova"])?;
        let f = ["disk-1.qcow2"];
        Ok(Made::Image(ova(d, "ustar", &f, &[(f[0], l.size)], &f)?, e))
    });
}
