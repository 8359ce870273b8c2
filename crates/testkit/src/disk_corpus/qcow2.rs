//! qcow2: every version and cluster size, compressed (zlib, zstd), extended L2, zero and
//! discarded clusters, snapshots (and a VM state), bitmaps, dirty images, grown images,
//! refcount widths, odd sizes, preallocation, and qcow2s in compression layers.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, ensure};

use super::tools::{
    be64, compress_file, convert, create, info, output, plain, qemu_img, qemu_io, qemu_io_args, s, same, sh,
};
use super::{GIB, KIB, Layout, MIB, Made, Recipe, TIB, align_up, data_file, on_path, recipe, size_name};

/// The virtual span one L2 table maps.
fn l2_span(cs: u64, extended: bool) -> u64 {
    cs * (cs / if extended { 16 } else { 8 })
}

/// Data in regions that fall in four L2 tables' spans (one straddles two).
pub(super) fn qcow2_layout(cs: u64, extended: bool) -> Layout {
    let len = if cs >= MIB {
        cs + 64 * KIB
    } else {
        (2 * cs).max(256 * KIB)
    };
    Layout::spread(l2_span(cs, extended).max(2 * len), len, 0)
}

pub(super) fn qcow2_opts(v2: bool, cs: u64, extra: &str) -> String {
    let mut o = format!("compat={},cluster_size={cs}", if v2 { "0.10" } else { "1.1" });
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    o
}

pub(super) fn version(v2: bool) -> &'static str {
    if v2 { "v2" } else { "v3" }
}

fn compressed_clusters(q: &Path) -> anyhow::Result<u64> {
    let text = qemu_img(&["check", "-U", "--output=json", s(q)])?;
    let j: serde_json::Value = serde_json::from_str(&text)?;
    Ok(j["compressed-clusters"].as_u64().unwrap_or(0))
}

const K64: u64 = 64 * KIB;

pub(super) fn qcow2_recipes(v: &mut Vec<Recipe>) {
    cluster_sizes(v);
    compressed(v);
    extended_l2(v);
    zero_clusters(v);
    snapshots(v);
    bitmaps_and_dirty(v);
    grown(v);
    refcount_widths(v);
    odd_sizes(v);
    preallocated(v);
    in_compressions(v);
}

/// Every cluster size, versions 2 and 3.
fn cluster_sizes(v: &mut Vec<Recipe>) {
    for (v2, cs) in [
        (true, 512),
        (true, K64),
        (true, 2 * MIB),
        (false, 512),
        (false, 4 * KIB),
        (false, K64),
        (false, 2 * MIB),
    ] {
        recipe(
            v,
            format!("qcow2 {} cluster={}", version(v2), size_name(cs)),
            move |d| {
                let q = convert(
                    d,
                    &qcow2_layout(cs, false),
                    "qcow2",
                    &qcow2_opts(v2, cs, ""),
                    false,
                    "disk.qcow2",
                )?;
                plain(d, q, "qcow2", "qcow2")
            },
        );
    }
}

/// Compressed clusters: zlib in versions 2 and 3, zstd in version 3.
fn compressed(v: &mut Vec<Recipe>) {
    for (v2, cs, kind) in [
        (true, 4 * KIB, "zlib"),
        (true, K64, "zlib"),
        (false, 512, "zlib"),
        (false, K64, "zlib"),
        (false, 2 * MIB, "zlib"),
        (false, 512, "zstd"),
        (false, 4 * KIB, "zstd"),
        (false, K64, "zstd"),
        (false, 2 * MIB, "zstd"),
    ] {
        let name = format!(
            "qcow2 {} cluster={} {kind}-compressed",
            version(v2),
            size_name(cs)
        );
        recipe(v, name, move |d| {
            let extra = if v2 {
                String::new()
            } else {
                format!("compression_type={kind}")
            };
            let q = convert(
                d,
                &qcow2_layout(cs, false),
                "qcow2",
                &qcow2_opts(v2, cs, &extra),
                true,
                "disk.qcow2",
            )?;
            ensure!(compressed_clusters(&q)? > 0, "no compressed cluster");
            plain(d, q, "qcow2", "qcow2")
        });
    }
}

/// Extended L2: subclusters zeroed (allocated and not), a cluster discarded, and single
/// subclusters written where nothing was.
fn extended_l2(v: &mut Vec<Recipe>) {
    for (cs, compress) in [(16 * KIB, false), (K64, false), (2 * MIB, false), (K64, true)] {
        let name = format!(
            "qcow2 v3 extended-l2 cluster={}{} subcluster zeros, discard and partial writes",
            size_name(cs),
            if compress { " zstd-compressed" } else { "" }
        );
        recipe(v, name, move |d| {
            let layout = qcow2_layout(cs, true);
            let extra = if compress {
                "extended_l2=on,compression_type=zstd"
            } else {
                "extended_l2=on"
            };
            let q = convert(
                d,
                &layout,
                "qcow2",
                &qcow2_opts(false, cs, extra),
                compress,
                "disk.qcow2",
            )?;
            let sc = cs / 32;
            // Between the third and fourth regions: nothing allocated there yet.
            let r2 = layout.regions[2];
            let far = align_up(r2.off + r2.len, cs) + 2 * cs;
            let w = data_file(d, 7, cs)?;
            let w = s(&w);
            qemu_io(
                "qcow2",
                &q,
                &[
                    format!("write -z {sc} {sc}"),
                    format!("write -z -u {} {}", 3 * sc, 2 * sc),
                    format!("discard {cs} {cs}"),
                    format!("write -s {w} {} {sc}", far + 5 * sc),
                    format!("write -s {w} {} {}", far + 7 * sc, (sc / 2).max(512)),
                    format!("write -z {} {sc}", far + 20 * sc),
                ],
            )?;
            plain(d, q, "qcow2", "qcow2")
        });
    }
}

/// Zero clusters with and without their allocation, discarded clusters, zeros over
/// nothing, and a partial overwrite.
fn zero_clusters(v: &mut Vec<Recipe>) {
    for (v2, cs) in [(false, K64), (false, 512), (true, K64)] {
        let name = format!(
            "qcow2 {} cluster={} zero, zero-allocated and discarded clusters",
            version(v2),
            size_name(cs)
        );
        recipe(v, name, move |d| {
            let layout = Layout::spread(l2_span(cs, false).max(4 * MIB), (16 * cs).max(256 * KIB), 0);
            let q = convert(d, &layout, "qcow2", &qcow2_opts(v2, cs, ""), false, "disk.qcow2")?;
            let r1 = layout.regions[1];
            let hole = align_up(r1.off + r1.len, cs) + cs;
            let w = data_file(d, 8, 512)?;
            qemu_io(
                "qcow2",
                &q,
                &[
                    format!("write -z {cs} {}", 2 * cs),
                    format!("write -z -u {} {}", 4 * cs, 2 * cs),
                    format!("discard {} {}", 8 * cs, 2 * cs),
                    format!("write -z {hole} {}", 4 * cs),
                    format!("write -s {} {} 512", s(&w), 12 * cs + 512),
                    format!("discard {} {}", align_up(r1.off, cs), 2 * cs),
                ],
            )?;
            plain(d, q, "qcow2", "qcow2")
        });
    }
}

/// Internal snapshots: clusters shared, copied on write, freed by a deleted snapshot; and a
/// snapshot with a VM state.
fn snapshots(v: &mut Vec<Recipe>) {
    for (v2, cs, compress) in [(false, K64, false), (true, K64, false), (false, 4 * KIB, true)] {
        let name = format!(
            "qcow2 {} cluster={}{} internal snapshots",
            version(v2),
            size_name(cs),
            if compress { " zlib-compressed" } else { "" }
        );
        recipe(v, name, move |d| {
            let layout = qcow2_layout(cs, false);
            let q = convert(
                d,
                &layout,
                "qcow2",
                &qcow2_opts(v2, cs, ""),
                compress,
                "disk.qcow2",
            )?;
            let [r0, r1, r2, r3, ..] = layout.regions[..] else {
                bail!("layout")
            };
            let w = data_file(d, 9, 2 * cs)?;
            let w = s(&w);
            qemu_img(&["snapshot", "-c", "s1", s(&q)])?;
            qemu_io(
                "qcow2",
                &q,
                &[
                    format!("write -s {w} {} {}", r0.off + cs, 2 * cs),
                    format!("discard {} {cs}", align_up(r1.off, cs)),
                    format!("write -z {} {cs}", align_up(r2.off, cs)),
                ],
            )?;
            qemu_img(&["snapshot", "-c", "s2", s(&q)])?;
            qemu_io(
                "qcow2",
                &q,
                &[format!("write -s {w} {} {cs}", align_up(r3.off, cs))],
            )?;
            qemu_img(&["snapshot", "-c", "s3", s(&q)])?;
            qemu_img(&["snapshot", "-d", "s2", s(&q)])?;
            plain(d, q, "qcow2", "qcow2")
        });
    }

    recipe(v, "qcow2 v3 cluster=64k snapshot with a VM state (savevm)", |d| {
        if !on_path("qemu-system-x86_64") {
            return Ok(Made::Skipped(
                "qemu-system-x86_64 is not installed (apt: qemu-system-x86)".into(),
            ));
        }
        let layout = qcow2_layout(K64, false);
        let q = convert(
            d,
            &layout,
            "qcow2",
            &qcow2_opts(false, K64, ""),
            false,
            "disk.qcow2",
        )?;
        let drive = format!("if=none,id=d0,format=qcow2,file={}", s(&q));
        sh(
            d,
            &format!(
                "printf 'savevm vm1\\nquit\\n' | timeout 60 qemu-system-x86_64 -machine pc -m 16 -S \
                 -nodefaults -display none -monitor stdio -drive {drive} >/dev/null"
            ),
        )?;
        let j = info(&q, "qcow2")?;
        let vm = j["snapshots"][0]["vm-state-size"].as_u64().unwrap_or(0);
        ensure!(vm > 0, "savevm stored no VM state: {j}");
        let w = data_file(d, 10, K64)?;
        qemu_io(
            "qcow2",
            &q,
            &[format!("write -s {} {} {K64}", s(&w), layout.regions[2].off)],
        )?;
        plain(d, q, "qcow2", "qcow2")
    });
}

/// Persistent dirty bitmaps (also left in use), and a dirty image with lazy refcounts.
fn bitmaps_and_dirty(v: &mut Vec<Recipe>) {
    for killed in [false, true] {
        let name = if killed {
            "qcow2 v3 cluster=64k persistent dirty bitmaps left in use (qemu-io killed)"
        } else {
            "qcow2 v3 cluster=64k persistent dirty bitmaps"
        };
        recipe(v, name, move |d| {
            let layout = qcow2_layout(K64, false);
            let q = convert(
                d,
                &layout,
                "qcow2",
                &qcow2_opts(false, K64, ""),
                false,
                "disk.qcow2",
            )?;
            qemu_img(&["bitmap", "--add", s(&q), "bm0"])?;
            qemu_img(&["bitmap", "--add", "-g", "512k", s(&q), "bm1"])?;
            qemu_img(&["bitmap", "--add", s(&q), "bm2"])?;
            qemu_img(&["bitmap", "--disable", s(&q), "bm2"])?;
            let w = data_file(d, 11, 256 * KIB)?;
            let mut cmds = vec![
                format!("write -s {} {} {}", s(&w), layout.regions[1].off, 256 * KIB),
                format!(
                    "write -s {} {} {}",
                    s(&w),
                    layout.regions[2].off + 8 * MIB,
                    128 * KIB
                ),
            ];
            if killed {
                cmds.push("sigraise 9".into());
                output("qemu-io", &qemu_io_args("qcow2", &q, &cmds), None)?;
            } else {
                qemu_io("qcow2", &q, &cmds)?;
            }
            let j = info(&q, "qcow2")?;
            let n = j["format-specific"]["data"]["bitmaps"]
                .as_array()
                .map_or(0, Vec::len);
            ensure!(n == 3, "{n} bitmaps: {j}");
            plain(d, q, "qcow2", "qcow2")
        });
    }

    recipe(
        v,
        "qcow2 v3 cluster=64k lazy refcounts, dirty (qemu-io killed mid-write)",
        |d| {
            let layout = qcow2_layout(K64, false);
            let q = convert(
                d,
                &layout,
                "qcow2",
                &qcow2_opts(false, K64, "lazy_refcounts=on"),
                false,
                "disk.qcow2",
            )?;
            let w = data_file(d, 12, 512 * KIB)?;
            let r1 = layout.regions[1];
            let cmds = [
                format!("write -s {} {} {}", s(&w), r1.off + 4096, 300 * KIB),
                format!("write -s {} {} {}", s(&w), r1.off + 8 * MIB, 512 * KIB),
                "sigraise 9".into(),
            ];
            output("qemu-io", &qemu_io_args("qcow2", &q, &cmds), None)?;
            let j = info(&q, "qcow2")?;
            ensure!(j["dirty-flag"] == serde_json::Value::Bool(true), "not dirty: {j}");
            plain(d, q, "qcow2", "qcow2")
        },
    );
}

/// Written, grown a lot (the L1 table outgrows its place and moves to the end), then
/// written far beyond the old size.
fn grown(v: &mut Vec<Recipe>) {
    for (cs, small, big) in [(K64, 32 * MIB, TIB), (512, 8 * MIB, 4 * GIB)] {
        let name = format!(
            "qcow2 v3 cluster={} grown {}→{} after writing (L1 moved)",
            size_name(cs),
            size_name(small),
            if big >= TIB {
                "1T".to_string()
            } else {
                size_name(big)
            }
        );
        recipe(v, name, move |d| {
            let layout = Layout::spread(small / 8, 256 * KIB, 0);
            let q = convert(
                d,
                &layout,
                "qcow2",
                &qcow2_opts(false, cs, ""),
                false,
                "disk.qcow2",
            )?;
            let l1 = |q: &Path| -> anyhow::Result<u64> {
                let mut h = [0u8; 48];
                File::open(q)?.read_exact_at(&mut h, 0)?;
                Ok(be64(&h, 40))
            };
            let before = l1(&q)?;
            qemu_img(&["resize", "-q", "-f", "qcow2", s(&q), &big.to_string()])?;
            let w = data_file(d, 13, 256 * KIB)?;
            qemu_io(
                "qcow2",
                &q,
                &[
                    format!("write -s {} {} {}", s(&w), big / 8 * 7 + 4096, 256 * KIB),
                    format!("write -s {} {} {}", s(&w), layout.size + MIB, 64 * KIB),
                    format!("write -s {} {} {}", s(&w), big - 64 * KIB, 64 * KIB),
                ],
            )?;
            let after = l1(&q)?;
            ensure!(after != before, "the L1 table stayed at {before:#x}");
            plain(d, q, "qcow2", "qcow2")
        });
    }
}

/// The narrowest and the widest refcounts.
fn refcount_widths(v: &mut Vec<Recipe>) {
    for bits in [1, 64] {
        recipe(
            v,
            format!("qcow2 v3 cluster=64k refcount_bits={bits}"),
            move |d| {
                let opts = qcow2_opts(false, K64, &format!("refcount_bits={bits}"));
                let q = convert(d, &qcow2_layout(K64, false), "qcow2", &opts, false, "disk.qcow2")?;
                plain(d, q, "qcow2", "qcow2")
            },
        );
    }
}

/// Virtual sizes off the cluster size, data up to the last byte.
fn odd_sizes(v: &mut Vec<Recipe>) {
    for (v2, cs, size) in [
        (false, K64, 100 * MIB + 1536),
        (true, 2 * MIB, 5 * MIB + 512),
        (false, 512, 3 * MIB + 512),
    ] {
        let name = format!(
            "qcow2 {} cluster={} size={}+{} (not a multiple of the cluster)",
            version(v2),
            size_name(cs),
            size_name(size / MIB * MIB),
            size % MIB
        );
        recipe(v, name, move |d| {
            let q = d.join("disk.qcow2");
            create(&q, "qcow2", &qcow2_opts(v2, cs, ""), size)?;
            let w = data_file(d, 14, 64 * KIB)?;
            qemu_io(
                "qcow2",
                &q,
                &[
                    format!("write -s {} {} 3072", s(&w), size - 3072),
                    format!("write -s {} {} {}", s(&w), size / 2, 64 * KIB),
                ],
            )?;
            plain(d, q, "qcow2", "qcow2")
        });
    }
}

/// Preallocated (metadata, falloc, full), then written.
fn preallocated(v: &mut Vec<Recipe>) {
    for (v2, mode, size) in [
        (false, "metadata", 256 * MIB),
        (false, "falloc", 16 * MIB),
        (true, "full", 8 * MIB),
    ] {
        let name = format!(
            "qcow2 {} cluster=64k preallocation={mode}, then written",
            version(v2)
        );
        recipe(v, name, move |d| {
            let q = d.join("disk.qcow2");
            create(
                &q,
                "qcow2",
                &qcow2_opts(v2, K64, &format!("preallocation={mode}")),
                size,
            )?;
            let w = data_file(d, 15, 200 * KIB)?;
            qemu_io(
                "qcow2",
                &q,
                &[
                    format!("write -s {} {} {}", s(&w), size / 3 + 512, 200 * KIB),
                    format!("write -z {} {}", size / 2, 128 * KIB),
                ],
            )?;
            plain(d, q, "qcow2", "qcow2")
        });
    }
}

/// In compression layers: the qcow2 is read from a stream of unknown length.
fn in_compressions(v: &mut Vec<Recipe>) {
    for (v2, cs, compress, layer) in [
        (false, K64, false, "xz"),
        (false, K64, true, "gzip"),
        (true, 512, false, "bzip2"),
        (false, 2 * MIB, true, "zstd"),
    ] {
        let name = format!(
            "qcow2 {} cluster={}{} in {layer}",
            version(v2),
            size_name(cs),
            if compress { " zstd-compressed" } else { "" }
        );
        recipe(v, name, move |d| {
            let extra = if compress { "compression_type=zstd" } else { "" };
            let q = convert(
                d,
                &qcow2_layout(cs, false),
                "qcow2",
                &qcow2_opts(v2, cs, extra),
                compress,
                "disk.qcow2",
            )?;
            let e = same(d, &q, "qcow2", "qcow2", &[layer])?;
            Ok(Made::Image(compress_file(d, "disk.qcow2", layer)?, e))
        });
    }
}
