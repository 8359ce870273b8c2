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
//!
//! The recipes, by kind, in modules `qcow2`, `vmdk`, `vhd` (with VHDX), `vdi`, `archives`
//! (compressions, tar archives, OVAs) and `refusals`; the data they write is made here, the
//! programs they run are in `tools`.

mod archives;
mod qcow2;
mod refusals;
mod tools;
mod vdi;
mod vhd;
mod vmdk;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, ensure};

use crate::XorShift64;

use archives::{compression_recipes, ova_recipes, tar_recipes};
use qcow2::qcow2_recipes;
use refusals::refusal_recipes;
use vdi::vdi_recipes;
use vhd::{vhd_recipes, vhdx_recipes};
use vmdk::vmdk_recipes;

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

#[cfg(test)]
mod tests {
    use super::archives::ovf;
    use super::qcow2::qcow2_layout;
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
