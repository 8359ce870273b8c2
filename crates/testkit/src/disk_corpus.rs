//! A differential corpus of disk images made by the real tools — `qemu-img`, `qemu-io`,
//! `qemu-system-x86_64` (for a VM state), gzip, pigz, xz, bzip2, zstd, pzstd and GNU tar —
//! each with its oracle: the raw image `qemu-img convert -O raw` makes of the disk inside
//! its layers. An importer's output must equal it byte for byte and in length. Images an
//! importer must refuse (they would read other files) carry the reason instead.
//!
//! Images stay small on disk: a few MiB of pseudo-random and compressible data spread
//! over sparse virtual sizes (for qcow2, over several L2 tables' spans, up to 1.75 TiB of
//! virtual size for 2 MiB clusters). Every case has its own directory below the corpus
//! directory, so the directory can be served over HTTP as it is ([`Case::rel`]).
//!
//! [`generate`] makes the whole corpus on a few threads (about 15 s on two cores). A
//! recipe that cannot be made is reported in [`Corpus::failed`], one that needs a tool
//! that is not installed in [`Corpus::skipped`]; neither stops the others.
//!
//! A corpus directory takes about 550 MiB of disk (the oracles are sparse files, up to
//! 1.75 TiB long).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use anyhow::{Context, bail, ensure};

use crate::XorShift64;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// The programs the corpus runs (`qemu-system-x86_64` only for the VM-state case).
pub const TOOLS: &[&str] = &[
    "qemu-img",
    "qemu-io",
    "qemu-system-x86_64",
    "gzip",
    "pigz",
    "xz",
    "bzip2",
    "zstd",
    "pzstd",
    "tar",
    "split",
];

/// What an importer must do with a case.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Import it: the output equals `oracle` byte for byte and in length.
    Same {
        /// `qemu-img convert -f FMT -O raw` of the disk inside the layers.
        oracle: PathBuf,
        /// The disk format an importer reports (`qcow2`, `vmdk`, `vhd`, `vhdx`, `vdi`, `raw`).
        format: &'static str,
        /// The layers it peels, outermost first (`gzip`, `xz`, `zstd`, `bzip2`, `tar`, `ova`).
        layers: Vec<&'static str>,
    },
    /// Refuse it before anything is written, with a message containing `reason`.
    Refused {
        /// A phrase the refusal must contain (`backing file`, `differencing`, …).
        reason: &'static str,
    },
    /// A VMDK descriptor whose data is in files beside it: from a local file, imported
    /// (the extents read beside it) as [`Expect::Same`] says; from a stream (stdin, HTTP),
    /// refused with a message containing `reason`.
    LocalOnly {
        /// `qemu-img convert -f vmdk -O raw` of the descriptor.
        oracle: PathBuf,
        /// The disk format reported (`vmdk`).
        format: &'static str,
        /// What a streamed import's refusal must contain.
        reason: &'static str,
    },
}

/// One image of the corpus.
#[derive(Clone, Debug)]
pub struct Case {
    /// What it is, for messages: `qcow2 v3 cluster=512 zstd-compressed`.
    pub name: String,
    /// The file to import (named with the extensions its content has).
    pub image: PathBuf,
    /// `image` relative to the corpus directory, with `/` separators (for a URL).
    pub rel: String,
    /// What an importer must do with it.
    pub expect: Expect,
}

/// A generated corpus.
#[derive(Debug)]
pub struct Corpus {
    /// The directory holding one subdirectory per case.
    pub dir: PathBuf,
    /// The cases, in recipe order.
    pub cases: Vec<Case>,
    /// Recipes that failed, with their error (a tool misbehaved).
    pub failed: Vec<String>,
    /// Recipes skipped, with why (a tool is missing).
    pub skipped: Vec<String>,
}

/// The programs of [`TOOLS`] not found on `PATH`.
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS.iter().copied().filter(|t| !on_path(t)).collect()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Makes every case below `dir` (which must exist) on `jobs` threads.
///
/// Fails only when `qemu-img` or `qemu-io` is missing; a recipe that fails is listed in
/// [`Corpus::failed`].
pub fn generate(dir: &Path, jobs: usize) -> anyhow::Result<Corpus> {
    for t in ["qemu-img", "qemu-io"] {
        ensure!(
            on_path(t),
            "{t} is not installed (apt: qemu-utils; scripts/setup.sh)"
        );
    }
    let queue = Mutex::new(recipes().into_iter().enumerate().collect::<VecDeque<_>>());
    let done: Mutex<Vec<Done>> = Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some((i, r)) = next else { break };
                    let slug = format!("{i:03}-{}", slug(&r.name));
                    let d = dir.join(&slug);
                    let made = fs::create_dir_all(&d)
                        .context("creating the case directory")
                        .and_then(|()| (r.make)(&d));
                    done.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, r.name, slug, made));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, ..)| *i);
    let mut corpus = Corpus {
        dir: dir.to_path_buf(),
        cases: vec![],
        failed: vec![],
        skipped: vec![],
    };
    for (_, name, slug, made) in done {
        match made {
            Ok(Made::Image(image, expect)) => {
                let file = image
                    .strip_prefix(dir.join(&slug))
                    .with_context(|| format!("{name}: {} is outside its directory", image.display()))?;
                corpus.cases.push(Case {
                    rel: format!("{slug}/{}", file.display()),
                    name,
                    image,
                    expect,
                });
            }
            Ok(Made::Skipped(why)) => corpus.skipped.push(format!("{name}: {why}")),
            Err(e) => corpus.failed.push(format!("{name}: {e:#}")),
        }
    }
    Ok(corpus)
}

// --- recipes ---------------------------------------------------------------------------

/// A recipe run: its index, name, directory name, and what it made.
type Done = (usize, String, String, anyhow::Result<Made>);

enum Made {
    Image(PathBuf, Expect),
    Skipped(String),
}

type Make = Box<dyn FnOnce(&Path) -> anyhow::Result<Made> + Send>;

struct Recipe {
    name: String,
    make: Make,
}

fn recipe(
    v: &mut Vec<Recipe>,
    name: impl Into<String>,
    make: impl FnOnce(&Path) -> anyhow::Result<Made> + Send + 'static,
) {
    v.push(Recipe {
        name: name.into(),
        make: Box::new(make),
    });
}

fn recipes() -> Vec<Recipe> {
    let mut v = vec![];
    qcow2_recipes(&mut v);
    vmdk_recipes(&mut v);
    vhd_recipes(&mut v);
    vhdx_recipes(&mut v);
    vdi_recipes(&mut v);
    compression_recipes(&mut v);
    tar_recipes(&mut v);
    ova_recipes(&mut v);
    refusal_recipes(&mut v);
    v
}

fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').chars().take(72).collect()
}

fn size_name(n: u64) -> String {
    match n {
        n if n >= MIB && n % MIB == 0 => format!("{}M", n / MIB),
        n if n >= KIB && n % KIB == 0 => format!("{}k", n / KIB),
        n => n.to_string(),
    }
}

// --- data ------------------------------------------------------------------------------

/// Deterministic bytes: the first half pseudo-random (incompressible), the rest text
/// (compressible), with a 64 KiB zero run at a quarter when there is room.
fn mixed_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    let mut rng = XorShift64::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    while v.len() < len / 2 {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len / 2);
    let mut i = 0u64;
    while v.len() < len {
        v.extend_from_slice(format!("seed {seed} line {i:08} of the ido disk corpus\n").as_bytes());
        i += 1;
    }
    v.truncate(len);
    if len >= 256 * KIB as usize {
        v[len / 4..len / 4 + 64 * KIB as usize].fill(0);
    }
    v
}

/// Pseudo-random bytes only.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut rng = XorShift64::new(seed.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A region of data in a raw image.
#[derive(Clone, Copy, Debug)]
struct Region {
    off: u64,
    len: u64,
    seed: u64,
}

/// A sparse raw image: its size and where its data is.
#[derive(Clone, Debug)]
struct Layout {
    size: u64,
    regions: Vec<Region>,
}

impl Layout {
    /// Four regions of `len` bytes about `step` apart — at 0, across the boundary at
    /// `step`, just after `2 * step` (off any cluster) and at `3.5 * step` — and 1000 bytes
    /// ending at the last byte of an image `tail` bytes longer than a multiple of 512.
    fn spread(step: u64, len: u64, tail: u64) -> Self {
        assert!(len <= step, "regions would overlap");
        let offs = [0, step - len / 2, 2 * step + 4608, 3 * step + step / 2];
        let mut regions: Vec<Region> = offs
            .iter()
            .zip(1..)
            .map(|(&off, seed)| Region { off, len, seed })
            .collect();
        let size = 3 * step + step / 2 + len + 64 * KIB + tail;
        regions.push(Region {
            off: size - 1000,
            len: 1000,
            seed: 99,
        });
        Layout { size, regions }
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        f.set_len(self.size)?;
        for r in &self.regions {
            f.write_all_at(&mixed_bytes(r.seed, r.len as usize), r.off)?;
        }
        Ok(())
    }
}

/// The raw image most compression and tar cases hold: about 11 MiB, 777 bytes past a
/// multiple of 512.
fn payload() -> Layout {
    Layout::spread(3 * MIB, 512 * KIB, 777)
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Writes `len` mixed bytes to `d/w<seed>.bin` (for `qemu-io write -s`).
fn data_file(d: &Path, seed: u64, len: u64) -> anyhow::Result<PathBuf> {
    let p = d.join(format!("w{seed}.bin"));
    fs::write(&p, mixed_bytes(seed, len as usize))?;
    Ok(p)
}

// --- tools -----------------------------------------------------------------------------

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 paths")
}

fn output(program: &str, args: &[&str], cwd: Option<&Path>) -> anyhow::Result<Output> {
    let mut c = Command::new(program);
    c.args(args).stdin(Stdio::null());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output().with_context(|| format!("running {program}"))
}

/// Runs a program; its stdout, or an error with its output.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = output(program, args, None)?;
    ensure!(
        out.status.success(),
        "{program} {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a bash script (`-euo pipefail`) in `d`.
fn sh(d: &Path, script: &str) -> anyhow::Result<()> {
    let out = output("bash", &["-euo", "pipefail", "-c", script], Some(d))?;
    ensure!(
        out.status.success(),
        "{script}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn qemu_img(args: &[&str]) -> anyhow::Result<String> {
    run("qemu-img", args)
}

/// `qemu-io -f FMT -c CMD… image`; every command must succeed.
fn qemu_io(fmt: &str, image: &Path, cmds: &[String]) -> anyhow::Result<()> {
    let out = output("qemu-io", &qemu_io_args(fmt, image, cmds), None)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && !text.contains("failed") && !text.contains("rror"),
        "qemu-io {cmds:?}: {}\n{text}",
        out.status
    );
    Ok(())
}

fn qemu_io_args<'a>(fmt: &'a str, image: &'a Path, cmds: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.extend(["-c", c.as_str()]);
    }
    args.push(s(image));
    args
}

/// `qemu-img info --output=json`.
fn info(image: &Path, fmt: &str) -> anyhow::Result<serde_json::Value> {
    let text = qemu_img(&["info", "-U", "--output=json", "-f", fmt, s(image)])?;
    Ok(serde_json::from_str(&text)?)
}

/// `qemu-img convert -f FMT -O raw image d/oracle.raw`: the expected output.
fn same(
    d: &Path,
    image: &Path,
    fmt: &str,
    format: &'static str,
    layers: &[&'static str],
) -> anyhow::Result<Expect> {
    let oracle = d.join("oracle.raw");
    qemu_img(&["convert", "-U", "-f", fmt, "-O", "raw", s(image), s(&oracle)])?;
    if fmt == "raw" {
        // qemu pads a raw image to whole sectors; the image's own length is the truth.
        let len = fs::metadata(image)?.len();
        let f = fs::OpenOptions::new().read(true).write(true).open(&oracle)?;
        let padded = f.metadata()?.len();
        ensure!(
            padded >= len && padded - len < 512,
            "qemu-img made {padded} bytes of {len}"
        );
        let mut tail = vec![0u8; (padded - len) as usize];
        f.read_exact_at(&mut tail, len)?;
        ensure!(
            tail.iter().all(|b| *b == 0),
            "qemu-img padded with non-zero bytes"
        );
        f.set_len(len)?;
    }
    Ok(Expect::Same {
        oracle,
        format,
        layers: layers.to_vec(),
    })
}

/// `same` for an image imported as it is.
fn plain(d: &Path, image: PathBuf, fmt: &str, format: &'static str) -> anyhow::Result<Made> {
    let e = same(d, &image, fmt, format, &[])?;
    Ok(Made::Image(image, e))
}

/// Writes `layout` as `d/src.raw` and converts it: `qemu-img convert [-c] -O FMT [-o OPTS]`.
fn convert(
    d: &Path,
    layout: &Layout,
    fmt: &str,
    opts: &str,
    compress: bool,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let raw = d.join("src.raw");
    layout.write(&raw)?;
    let out = d.join(name);
    let mut args = vec!["convert", "-f", "raw", "-O", fmt];
    if compress {
        args.push("-c");
    }
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([s(&raw), s(&out)]);
    qemu_img(&args)?;
    fs::remove_file(&raw)?;
    Ok(out)
}

fn create(path: &Path, fmt: &str, opts: &str, size: u64) -> anyhow::Result<()> {
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([s(path), size.as_str()]);
    qemu_img(&args).map(drop)
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

// --- qcow2 -----------------------------------------------------------------------------

/// The virtual span one L2 table maps.
fn l2_span(cs: u64, extended: bool) -> u64 {
    cs * (cs / if extended { 16 } else { 8 })
}

/// Data in regions that fall in four L2 tables' spans (one straddles two).
fn qcow2_layout(cs: u64, extended: bool) -> Layout {
    let len = if cs >= MIB {
        cs + 64 * KIB
    } else {
        (2 * cs).max(256 * KIB)
    };
    Layout::spread(l2_span(cs, extended).max(2 * len), len, 0)
}

fn qcow2_opts(v2: bool, cs: u64, extra: &str) -> String {
    let mut o = format!("compat={},cluster_size={cs}", if v2 { "0.10" } else { "1.1" });
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    o
}

fn version(v2: bool) -> &'static str {
    if v2 { "v2" } else { "v3" }
}

fn compressed_clusters(q: &Path) -> anyhow::Result<u64> {
    let text = qemu_img(&["check", "-U", "--output=json", s(q)])?;
    let j: serde_json::Value = serde_json::from_str(&text)?;
    Ok(j["compressed-clusters"].as_u64().unwrap_or(0))
}

fn qcow2_recipes(v: &mut Vec<Recipe>) {
    const K64: u64 = 64 * KIB;
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

    // Extended L2: subclusters zeroed (allocated and not), a cluster discarded, and
    // single subclusters written where nothing was.
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

    // Zero clusters with and without their allocation, discarded clusters, zeros over
    // nothing, and a partial overwrite.
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

    // Internal snapshots: clusters shared, copied on write, freed by a deleted snapshot.
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

    // Written, grown a lot (the L1 table outgrows its place and moves to the end), then
    // written far beyond the old size.
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

    // Virtual sizes off the cluster size, data up to the last byte.
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

    // In compression layers: the qcow2 is read from a stream of unknown length.
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

/// Compresses `d/name` with `layer`'s tool (the original removed); the new path.
fn compress_file(d: &Path, name: &str, layer: &str) -> anyhow::Result<PathBuf> {
    let (cmd, ext) = match layer {
        "gzip" => ("gzip -1", "gz"),
        "xz" => ("xz -T2 -1", "xz"),
        "bzip2" => ("bzip2 -1", "bz2"),
        "zstd" => ("zstd -q --rm -3", "zst"),
        other => bail!("no compressor {other}"),
    };
    sh(d, &format!("{cmd} {name}"))?;
    Ok(d.join(format!("{name}.{ext}")))
}

// --- vmdk, vhd, vhdx, vdi -------------------------------------------------------------

fn vmdk_recipes(v: &mut Vec<Recipe>) {
    // A grain table maps 512 grains of 64 KiB: 32 MiB. The regions fall in several.
    let layout = || Layout::spread(40 * MIB, 256 * KIB, 0);
    let odd = || Layout::spread(40 * MIB, 256 * KIB, 777);
    recipe(v, "vmdk monolithicSparse", move |d| {
        let p = convert(d, &layout(), "vmdk", "", false, "disk.vmdk")?;
        plain(d, p, "vmdk", "vmdk")
    });
    recipe(
        v,
        "vmdk monolithicSparse size not a multiple of the grain",
        move |d| {
            let p = convert(d, &odd(), "vmdk", "", false, "disk.vmdk")?;
            plain(d, p, "vmdk", "vmdk")
        },
    );
    recipe(v, "vmdk monolithicSparse compat6", move |d| {
        let p = convert(d, &layout(), "vmdk", "compat6=on", false, "disk.vmdk")?;
        plain(d, p, "vmdk", "vmdk")
    });
    recipe(
        v,
        "vmdk monolithicSparse zeroed grains (zeroed_grain=on, write -z)",
        move |d| {
            let l = layout();
            let p = d.join("disk.vmdk");
            create(&p, "vmdk", "zeroed_grain=on", l.size)?;
            let raw = d.join("src.raw");
            l.write(&raw)?;
            qemu_img(&["convert", "-n", "-f", "raw", "-O", "vmdk", s(&raw), s(&p)])?;
            fs::remove_file(&raw)?;
            qemu_io(
                "vmdk",
                &p,
                &[
                    "write -z 0 65536".into(),
                    format!("write -z {} {}", align_up(l.regions[2].off, 65536), 131072),
                    format!("write -z {} {}", 100 * MIB, 65536),
                ],
            )?;
            plain(d, p, "vmdk", "vmdk")
        },
    );
    recipe(v, "vmdk monolithicSparse grains written out of order", move |d| {
        let p = d.join("disk.vmdk");
        create(&p, "vmdk", "", 150 * MIB)?;
        let w = data_file(d, 20, 256 * KIB)?;
        out_of_order(
            "vmdk",
            &p,
            &w,
            &[140 * MIB, 70 * MIB + 4096, 3 * MIB, 100 * MIB, 0],
        )?;
        plain(d, p, "vmdk", "vmdk")
    });
    recipe(v, "vmdk streamOptimized", move |d| {
        let p = convert(
            d,
            &layout(),
            "vmdk",
            "subformat=streamOptimized",
            false,
            "disk.vmdk",
        )?;
        plain(d, p, "vmdk", "vmdk")
    });
    recipe(
        v,
        "vmdk streamOptimized size not a multiple of the grain",
        move |d| {
            let p = convert(d, &odd(), "vmdk", "subformat=streamOptimized", false, "disk.vmdk")?;
            plain(d, p, "vmdk", "vmdk")
        },
    );
}

/// `qemu-io write -s w OFF 256k` at each offset, in that order.
fn out_of_order(fmt: &str, image: &Path, w: &Path, offsets: &[u64]) -> anyhow::Result<()> {
    let cmds: Vec<String> = offsets
        .iter()
        .map(|o| format!("write -s {} {o} {}", s(w), 256 * KIB))
        .collect();
    qemu_io(fmt, image, &cmds)
}

fn vhd_recipes(v: &mut Vec<Recipe>) {
    // Blocks of 2 MiB.
    let layout = || Layout::spread(8 * MIB, 256 * KIB, 0);
    recipe(v, "vhd dynamic", move |d| {
        let p = convert(d, &layout(), "vpc", "", false, "disk.vhd")?;
        plain(d, p, "vpc", "vhd")
    });
    recipe(v, "vhd dynamic force_size", move |d| {
        let p = convert(d, &layout(), "vpc", "force_size=on", false, "disk.vhd")?;
        plain(d, p, "vpc", "vhd")
    });
    recipe(v, "vhd dynamic blocks written out of order", move |d| {
        let p = d.join("disk.vhd");
        create(&p, "vpc", "", 64 * MIB)?;
        let w = data_file(d, 21, 256 * KIB)?;
        out_of_order(
            "vpc",
            &p,
            &w,
            &[50 * MIB, 3 * MIB + 512, 30 * MIB, 0, 10 * MIB - 4096],
        )?;
        plain(d, p, "vpc", "vhd")
    });
    recipe(v, "vhd fixed", move |d| {
        let p = convert(d, &layout(), "vpc", "subformat=fixed", false, "disk.vhd")?;
        plain(d, p, "vpc", "vhd")
    });
    recipe(v, "vhd fixed force_size in gzip", move |d| {
        let p = convert(
            d,
            &layout(),
            "vpc",
            "subformat=fixed,force_size=on",
            false,
            "disk.vhd",
        )?;
        let e = same(d, &p, "vpc", "vhd", &["gzip"])?;
        Ok(Made::Image(compress_file(d, "disk.vhd", "gzip")?, e))
    });
}

fn vhdx_recipes(v: &mut Vec<Recipe>) {
    for (block, log, step) in [
        (MIB, Some(MIB), 8 * MIB),
        (8 * MIB, Some(4 * MIB), 24 * MIB),
        (32 * MIB, Some(32 * MIB), 64 * MIB),
        (256 * MIB, None, 96 * MIB),
    ] {
        let name = format!(
            "vhdx dynamic block={} log={}",
            size_name(block),
            log.map_or("default".into(), size_name)
        );
        recipe(v, name, move |d| {
            let mut opts = format!("block_size={block}");
            if let Some(l) = log {
                opts.push_str(&format!(",log_size={l}"));
            }
            let p = convert(
                d,
                &Layout::spread(step, 256 * KIB, 0),
                "vhdx",
                &opts,
                false,
                "disk.vhdx",
            )?;
            plain(d, p, "vhdx", "vhdx")
        });
    }
    recipe(v, "vhdx fixed block=1M", |d| {
        let opts = "subformat=fixed,block_size=1M";
        let p = convert(
            d,
            &Layout::spread(4 * MIB, 256 * KIB, 0),
            "vhdx",
            opts,
            false,
            "disk.vhdx",
        )?;
        plain(d, p, "vhdx", "vhdx")
    });
    recipe(v, "vhdx dynamic block=8M block_state_zero=off", |d| {
        let opts = "block_size=8M,block_state_zero=off";
        let p = convert(
            d,
            &Layout::spread(24 * MIB, 256 * KIB, 0),
            "vhdx",
            opts,
            false,
            "disk.vhdx",
        )?;
        plain(d, p, "vhdx", "vhdx")
    });
    recipe(v, "vhdx dynamic block=1M blocks written out of order", |d| {
        let p = d.join("disk.vhdx");
        create(&p, "vhdx", "block_size=1M", 64 * MIB + 3 * 512)?;
        let w = data_file(d, 22, 256 * KIB)?;
        out_of_order(
            "vhdx",
            &p,
            &w,
            &[60 * MIB, 3 * MIB - 4096, 30 * MIB, 0, 64 * MIB - 256 * KIB + 1536],
        )?;
        plain(d, p, "vhdx", "vhdx")
    });
}

fn vdi_recipes(v: &mut Vec<Recipe>) {
    // Blocks of 1 MiB.
    recipe(v, "vdi dynamic", |d| {
        let p = convert(
            d,
            &Layout::spread(6 * MIB, 256 * KIB, 0),
            "vdi",
            "",
            false,
            "disk.vdi",
        )?;
        plain(d, p, "vdi", "vdi")
    });
    recipe(v, "vdi static", |d| {
        let p = convert(
            d,
            &Layout::spread(6 * MIB, 256 * KIB, 0),
            "vdi",
            "static=on",
            false,
            "disk.vdi",
        )?;
        plain(d, p, "vdi", "vdi")
    });
    recipe(v, "vdi static size not a multiple of the block", |d| {
        let p = convert(
            d,
            &Layout::spread(3 * MIB, 256 * KIB, 777),
            "vdi",
            "static=on",
            false,
            "disk.vdi",
        )?;
        plain(d, p, "vdi", "vdi")
    });
    recipe(v, "vdi dynamic blocks written out of order", |d| {
        let p = d.join("disk.vdi");
        create(&p, "vdi", "", 48 * MIB)?;
        let w = data_file(d, 23, 256 * KIB)?;
        out_of_order(
            "vdi",
            &p,
            &w,
            &[40 * MIB, 2 * MIB + 512, 20 * MIB, 0, 48 * MIB - 256 * KIB],
        )?;
        plain(d, p, "vdi", "vdi")
    });
}

// --- compressions and archives --------------------------------------------------------

/// Writes the payload as `d/disk.raw` and its oracle (the same bytes, through qemu-img).
fn payload_raw(d: &Path, layers: &[&'static str]) -> anyhow::Result<(PathBuf, Expect)> {
    let raw = d.join("disk.raw");
    payload().write(&raw)?;
    let e = same(d, &raw, "raw", "raw", layers)?;
    Ok((raw, e))
}

fn compression_recipes(v: &mut Vec<Recipe>) {
    recipe(v, "raw size=11M+64k+777 (not a multiple of 512)", |d| {
        let (raw, e) = payload_raw(d, &[])?;
        Ok(Made::Image(raw, e))
    });
    // (name, layer, script making disk.raw.* from disk.raw, a check of the result)
    let cases: [(&str, &'static str, &str, &str); 11] = [
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
    for (name, layer, script, check) in cases {
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

fn tar_recipes(v: &mut Vec<Recipe>) {
    // Plain formats; the disk in a directory (its entry comes first).
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
    // Sparse members: GNU 'S' headers, pax GNU.sparse 0.0, 0.1 and 1.0.
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
    // Long member names, with a qcow2 inside.
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
fn ovf(files: &[&str], disks: &[(&str, u64)]) -> String {
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
fn ova(
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

fn ova_recipes(v: &mut Vec<Recipe>) {
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

// --- refusals ---------------------------------------------------------------------------

fn refused(image: PathBuf, reason: &'static str) -> anyhow::Result<Made> {
    Ok(Made::Image(image, Expect::Refused { reason }))
}

/// Sets a VHD footer's disk type (at 0 and at the end) and its checksum.
fn patch_vhd_footers(p: &Path, disk_type: u32) -> anyhow::Result<()> {
    let f = fs::OpenOptions::new().read(true).write(true).open(p)?;
    let len = f.metadata()?.len();
    for at in [0, len - 512] {
        let mut footer = [0u8; 512];
        f.read_exact_at(&mut footer, at)?;
        ensure!(&footer[..8] == b"conectix", "no footer at {at}");
        footer[60..64].copy_from_slice(&disk_type.to_be_bytes());
        footer[64..68].fill(0);
        let sum = footer.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
        footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
        f.write_all_at(&footer, at)?;
    }
    Ok(())
}

/// Sets the HasParent bit of a VHDX's file parameters (the metadata has no checksum).
fn patch_vhdx_has_parent(p: &Path) -> anyhow::Result<()> {
    const FILE_PARAMETERS: [u8; 16] = [
        0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b,
    ];
    let f = fs::OpenOptions::new().read(true).write(true).open(p)?;
    let len = f.metadata()?.len();
    let mut at = MIB;
    while at < len.min(64 * MIB) {
        let mut table = vec![0u8; 64 * KIB as usize];
        f.read_exact_at(&mut table, at)?;
        if &table[..8] == b"metadata" {
            let count = usize::from(u16::from_le_bytes([table[10], table[11]]));
            for i in 0..count {
                let e = &table[32 + i * 32..64 + i * 32];
                if e[..16] == FILE_PARAMETERS {
                    let off = u64::from(u32::from_le_bytes(e[16..20].try_into()?));
                    let mut flags = [0u8; 4];
                    f.read_exact_at(&mut flags, at + off + 4)?;
                    flags[0] |= 2;
                    f.write_all_at(&flags, at + off + 4)?;
                    return Ok(());
                }
            }
            bail!("no file parameters in the metadata table");
        }
        at += MIB;
    }
    bail!("no metadata table found")
}

fn refusal_recipes(v: &mut Vec<Recipe>) {
    for v2 in [false, true] {
        recipe(
            v,
            format!("qcow2 {} with a backing file (refused)", version(v2)),
            move |d| {
                let o = qcow2_opts(v2, 64 * KIB, "");
                sh(
                    d,
                    &format!(
                        "qemu-img create -q -f qcow2 -o {o} base.qcow2 16M && \
                     qemu-img create -q -f qcow2 -o {o} -b base.qcow2 -F qcow2 disk.qcow2"
                    ),
                )?;
                refused(d.join("disk.qcow2"), "backing file")
            },
        );
    }
    recipe(v, "qcow2 with a backing file, in gzip (refused)", |d| {
        sh(
            d,
            "qemu-img create -q -f qcow2 base.qcow2 16M && \
             qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 disk.qcow2",
        )?;
        refused(compress_file(d, "disk.qcow2", "gzip")?, "backing file")
    });
    for raw in [false, true] {
        let name = if raw {
            "qcow2 with an external raw data file (data_file_raw=on) (refused)"
        } else {
            "qcow2 with an external data file (refused)"
        };
        recipe(v, name, move |d| {
            let w = data_file(d, 40, 64 * KIB)?;
            sh(
                d,
                &format!(
                    "qemu-img create -q -f qcow2 -o data_file=disk.data,data_file_raw={} disk.qcow2 16M && \
                     qemu-io -f qcow2 -c 'write -s {} 0 65536' disk.qcow2 >/dev/null",
                    if raw { "on" } else { "off" },
                    s(&w)
                ),
            )?;
            refused(d.join("disk.qcow2"), "external data file")
        });
    }
    recipe(v, "qcow2 LUKS-encrypted (refused)", |d| {
        let q = d.join("disk.qcow2");
        // qemu times its PBKDF to pick an iteration count; on a busy machine the measure can
        // come out empty ("Unable to get accurate CPU usage"): a longer target and a retry.
        let mut tries = 0;
        loop {
            let made = qemu_img(&[
                "create",
                "-q",
                "--object",
                "secret,id=sec0,data=corpus-passphrase",
                "-f",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100",
                s(&q),
                "16M",
            ]);
            match made {
                Err(e) if tries < 3 && e.to_string().contains("Unable to get accurate CPU usage") => {
                    tries += 1
                }
                other => break other,
            }
        }?;
        refused(q, "encrypted")
    });
    recipe(
        v,
        "vmdk monolithicSparse delta disk with a parent (refused)",
        |d| {
            sh(
                d,
                "qemu-img create -q -f vmdk base.vmdk 16M && qemu-img create -q -f vmdk -b base.vmdk -F vmdk disk.vmdk",
            )?;
            refused(d.join("disk.vmdk"), "parent")
        },
    );
    // Descriptors with their extents beside them: read from a local file, refused from a
    // stream. The sparse one spans two 2 GiB extents.
    for (sub, step) in [
        ("monolithicFlat", 8 * MIB),
        ("twoGbMaxExtentSparse", 700 * MIB),
        ("twoGbMaxExtentFlat", 8 * MIB),
    ] {
        let name = format!("vmdk {sub} descriptor (extents beside it; refused from a stream)");
        recipe(v, name, move |d| {
            let opts = format!("subformat={sub}");
            let p = convert(
                d,
                &Layout::spread(step, 256 * KIB, 0),
                "vmdk",
                &opts,
                false,
                "disk.vmdk",
            )?;
            let Expect::Same { oracle, format, .. } = same(d, &p, "vmdk", "vmdk", &[])? else {
                bail!("same() makes Expect::Same")
            };
            let e = Expect::LocalOnly {
                oracle,
                format,
                reason: "other files",
            };
            Ok(Made::Image(p, e))
        });
    }
    recipe(v, "vhd differencing disk (footer type 4) (refused)", |d| {
        let p = convert(
            d,
            &Layout::spread(4 * MIB, 64 * KIB, 0),
            "vpc",
            "",
            false,
            "disk.vhd",
        )?;
        patch_vhd_footers(&p, 4)?;
        refused(p, "differencing")
    });
    recipe(v, "vhdx differencing disk (HasParent) (refused)", |d| {
        let p = d.join("disk.vhdx");
        create(&p, "vhdx", "block_size=1M", 16 * MIB)?;
        patch_vhdx_has_parent(&p)?;
        refused(p, "differencing")
    });
    for (what, at, bytes, reason) in [
        (
            "vdi differencing image (type 4) (refused)",
            0x4c,
            &[4u8, 0, 0, 0][..],
            "differencing",
        ),
        (
            "vdi with a parent UUID (refused)",
            0x1b8,
            &[0x42u8; 16][..],
            "parent",
        ),
    ] {
        recipe(v, what, move |d| {
            let p = d.join("disk.vdi");
            create(&p, "vdi", "", 16 * MIB)?;
            let f = fs::OpenOptions::new().write(true).open(&p)?;
            f.write_all_at(bytes, at)?;
            refused(p, reason)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_stay_inside_their_image() {
        for l in [payload(), qcow2_layout(512, false), qcow2_layout(2 * MIB, true)] {
            let mut end = 0;
            for r in &l.regions {
                assert!(r.off >= end, "{l:?}");
                end = r.off + r.len;
            }
            assert_eq!(end, l.size);
        }
        assert_eq!(payload().size % 512, 777 % 512, "not a multiple of 512");
    }

    #[test]
    fn slugs_and_sizes() {
        assert_eq!(
            slug("qcow2 v3 cluster=512 zstd-compressed"),
            "qcow2-v3-cluster-512-zstd-compressed"
        );
        assert_eq!(size_name(2 * MIB), "2M");
        assert_eq!(size_name(64 * KIB), "64k");
        assert_eq!(size_name(512), "512");
        assert!(ovf(&["a.vmdk"], &[("a.vmdk", 5)]).contains("ovf:fileRef=\"file0\""));
    }
}
