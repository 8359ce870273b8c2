//! Deterministic mutation tests ("poor man's fuzzing"): for every format, a small image made
//! by the real tools is mutated a few hundred times — bits flipped, bytes and 32/64-bit
//! fields overwritten with boundary values, the file cut short — mostly where the headers
//! and tables live, with checksums recomputed most of the time so that the mutations get
//! past them. Every mutated copy is imported, and each import must:
//!
//! - return (within [`TIMEOUT`]: no hang),
//! - not panic (a panic on the conversion thread shows as an I/O error naming it),
//! - stay within [`MAX_RSS`] of resident memory (no huge allocation),
//! - on failure, leave no target file behind; on success, leave one of the virtual size.
//!
//! The mutations come from a fixed-seed xorshift generator, so a failure repeats (the
//! images themselves may differ in UUIDs and timestamps from run to run). A failing image
//! is kept in the temporary directory, named in the failure. For a longer run by hand,
//! `IDO_MUTATIONS=<n>` sets the number of copies per format and `IDO_MUTATION_SEED=<n>`
//! varies the seeds.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{crc32c, random_bytes, run, sh, text_bytes};
use ido_disk::{ImportOptions, SourceSpec, TargetSpec, import};

/// Longest time one import may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Target capacity: absurd virtual sizes fail before anything is written.
const CAPACITY: u64 = 64 << 20;
/// Reorder buffer for the imports (smaller than the default, as the images are).
const REORDER_BUDGET: u64 = 8 << 20;
/// Highest resident set size allowed during an import.
const MAX_RSS: u64 = 512 << 20;
/// Virtual size of the fixtures.
const VIRTUAL: usize = 4 << 20;

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The raw disk behind every fixture: 4 MiB with random and text data, and holes.
fn raw_disk() -> Vec<u8> {
    let mut img = vec![0u8; VIRTUAL];
    let mut put = |off: usize, data: Vec<u8>| img[off..off + data.len()].copy_from_slice(&data);
    put(0, random_bytes(11, 96 << 10));
    put(1 << 20, text_bytes(160 << 10));
    put((3 << 20) + 4096, random_bytes(12, 40_000));
    put(VIRTUAL - 1000, random_bytes(13, 1000));
    img
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qemu-img convert -O <format> [-o <options>] [-c]` of the raw disk; returns the bytes.
fn qemu(dir: &Path, format: &str, options: &str, compress: bool) -> Vec<u8> {
    let raw = dir.join("disk.raw");
    if !raw.exists() {
        std::fs::write(&raw, raw_disk()).unwrap();
    }
    let out = dir.join(format!("disk.{format}"));
    let mut args = vec!["convert", "-O", format];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    if compress {
        args.push("-c");
    }
    args.extend([s(&raw), s(&out)]);
    run("qemu-img", &args);
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    b
}

/// A range of the image where mutations land, with a weight.
#[derive(Clone, Copy, Debug)]
struct Hot {
    start: usize,
    end: usize,
    weight: u64,
}

fn hot(start: usize, end: usize, weight: u64) -> Hot {
    Hot { start, end, weight }
}

/// Recomputes the checksums of a (mutated) image.
type Fixup = Box<dyn Fn(&mut [u8]) + Send + Sync>;

/// A layer around the image (gzip).
type Wrap = fn(&[u8]) -> Vec<u8>;

/// One format's base image and how to mutate it.
struct Fixture {
    name: &'static str,
    /// The bytes the mutations apply to.
    bytes: Vec<u8>,
    /// Where mutations land (anywhere in the file gets a share too).
    hot: Vec<Hot>,
    /// Byte order of the format's fields.
    big_endian: bool,
    /// Recomputes checksums (applied to most mutated copies).
    fixup: Option<Fixup>,
    /// A layer applied after the mutation (gzip): then some copies have the wrapped bytes
    /// mutated instead.
    wrap: Option<Wrap>,
    /// Header fields (offset, width 4 or 8) that get boundary values more often.
    fields: Vec<(usize, usize)>,
    /// Mutated copies imported (fewer for the large images, to keep the test fast in a
    /// debug build).
    count: usize,
}

impl Fixture {
    fn new(name: &'static str, bytes: Vec<u8>, big_endian: bool) -> Self {
        let hot = vec![hot(0, 512, 4), hot(0, 64 << 10, 4)];
        Fixture {
            name,
            bytes,
            hot,
            big_endian,
            fixup: None,
            wrap: None,
            count: 300,
            fields: Vec::new(),
        }
    }
}

/// Boundary values for 32-bit fields.
fn value32(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => 0x7fff_ffff,
        3 => 0x8000_0000,
        4 => 0xffff_ffff,
        5 => 0xffff_fffe,
        6 => 1 << rng.below(32),
        7 => (1u32 << rng.below(32)).wrapping_sub(1),
        8 => 512,
        _ => rng.next() as u32,
    }
}

/// Boundary values for 64-bit fields.
fn value64(rng: &mut Rng) -> u64 {
    match rng.below(11) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => i64::MAX as u64,
        4 => 1 << 63,
        5 => 1 << rng.below(64),
        6 => (1u64 << rng.below(64)).wrapping_sub(1),
        7 => u64::MAX - rng.below(1024),
        8 => 0xffff_ffff,
        9 => (1 << rng.below(64)) + rng.below(1 << 20),
        _ => rng.next(),
    }
}

/// Picks an offset: mostly in a hot range, sometimes anywhere.
fn offset(rng: &mut Rng, f: &Fixture, len: usize) -> usize {
    let total: u64 = f.hot.iter().map(|h| h.weight).sum::<u64>() + 1;
    let mut w = rng.below(total);
    for h in &f.hot {
        if w < h.weight {
            let end = h.end.min(len);
            if end > h.start {
                return h.start + rng.below((end - h.start) as u64) as usize;
            }
            break;
        }
        w -= h.weight;
    }
    rng.below(len as u64) as usize
}

/// Mutates `b` in place, logging what was done to it (for messages).
fn mutate(rng: &mut Rng, f: &Fixture, b: &mut [u8], log: &mut Vec<String>) {
    let n = 1 + rng.below(4);
    for _ in 0..n {
        let len = b.len();
        if len < 8 {
            break;
        }
        let be = if rng.chance(80) {
            f.big_endian
        } else {
            !f.big_endian
        };
        if !f.fields.is_empty() && rng.chance(30) {
            let (at, width) = rng.pick(&f.fields);
            if at + width <= len {
                let bytes = match (width, be) {
                    (4, true) => value32(rng).to_be_bytes().to_vec(),
                    (4, false) => value32(rng).to_le_bytes().to_vec(),
                    (_, true) => value64(rng).to_be_bytes().to_vec(),
                    (_, false) => value64(rng).to_le_bytes().to_vec(),
                };
                b[at..at + width].copy_from_slice(&bytes);
                log.push(format!("field {at:#x} = {}", hex(&bytes)));
                continue;
            }
        }
        let off = offset(rng, f, len);
        match rng.below(10) {
            0..=1 => {
                let bit = rng.below(8);
                b[off] ^= 1 << bit;
                log.push(format!("flip {off:#x} bit {bit}"));
            }
            2 => {
                let v = rng.next() as u8;
                b[off] = v;
                log.push(format!("byte {off:#x} = {v:#04x}"));
            }
            3..=5 => {
                let at = if rng.chance(80) { off & !3 } else { off }.min(len - 4);
                let v = value32(rng);
                let bytes = if be { v.to_be_bytes() } else { v.to_le_bytes() };
                b[at..at + 4].copy_from_slice(&bytes);
                log.push(format!("u32 {at:#x} = {v:#x} ({})", if be { "BE" } else { "LE" }));
            }
            6..=8 => {
                let at = if rng.chance(80) { off & !7 } else { off }.min(len - 8);
                let v = value64(rng);
                let bytes = if be { v.to_be_bytes() } else { v.to_le_bytes() };
                b[at..at + 8].copy_from_slice(&bytes);
                log.push(format!("u64 {at:#x} = {v:#x} ({})", if be { "BE" } else { "LE" }));
            }
            _ => {
                // A run of bytes: zeros, 0xff or random.
                let run = (1 + rng.below(64) as usize).min(len - off);
                let random = rng.next() as u8;
                let fill = rng.pick(&[0u8, 0xff, random]);
                b[off..off + run].fill(fill);
                log.push(format!("fill {off:#x}+{run} with {fill:#04x}"));
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `b` to `path`, all-zero 4 KiB blocks as holes (the VHDX fixture is mostly holes).
fn write_sparse(path: &Path, b: &[u8]) {
    static ZEROS: [u8; 4096] = [0; 4096];
    let f = std::fs::File::create(path).unwrap();
    f.set_len(b.len() as u64).unwrap();
    for (i, c) in b.chunks(4096).enumerate() {
        if c != &ZEROS[..c.len()] {
            f.write_all_at(c, (i * 4096) as u64).unwrap();
        }
    }
}

/// A directory for the mutated copies and targets: in memory where possible (every
/// successful import syncs its target).
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// The resident set's high-water mark, reset first when `reset`.
fn peak_rss(reset: bool) -> Option<u64> {
    if reset {
        // "5" resets VmHWM (Linux 4.0+); when not allowed, the mark is the process's.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Runs the mutated copies of `f` through the import and checks each outcome.
async fn fuzz(f: Fixture, seed: u64) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let count = env("IDO_MUTATIONS").map_or(f.count, |n| n as usize);
    let seed = seed ^ env("IDO_MUTATION_SEED").unwrap_or(0);
    let dir = scratch_dir();
    let image = dir.path().join(format!("{}.img", f.name));
    let out = dir.path().join("out.raw");
    let wrapped_base = f.wrap.map(|w| w(&f.bytes));

    // The unmutated image imports (the fixture is right, and the checks below mean something).
    write_sparse(&image, wrapped_base.as_deref().unwrap_or(&f.bytes));
    let report = import(options(&image, &out))
        .await
        .unwrap_or_else(|e| panic!("{}: the unmutated image fails: {e}", f.name));
    // (VHD rounds the size up to its CHS geometry.)
    assert!(report.virtual_size >= VIRTUAL as u64, "{}", f.name);
    std::fs::remove_file(&out).unwrap();

    let mut rng = Rng::new(seed);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut max_rss = 0u64;
    let start = Instant::now();
    for i in 0..count {
        let mut log = Vec::new();
        let bytes = match (&wrapped_base, f.wrap) {
            (Some(base), Some(_)) if rng.chance(40) => {
                // Mutate the compressed stream itself (header, then anywhere).
                let mut b = base.clone();
                let g = Fixture {
                    hot: vec![hot(0, 64, 2), hot(0, 4096, 2)],
                    ..Fixture::new(f.name, Vec::new(), false)
                };
                mutate(&mut rng, &g, &mut b, &mut log);
                log.push("(in the gzip stream)".into());
                b
            }
            _ => {
                let mut b = f.bytes.clone();
                mutate(&mut rng, &f, &mut b, &mut log);
                if let Some(fix) = &f.fixup
                    && rng.chance(60)
                {
                    fix(&mut b);
                    log.push("checksums fixed".into());
                }
                if rng.chance(12) {
                    let at = if rng.chance(50) {
                        rng.below((64 << 10).min(b.len() as u64)) as usize
                    } else {
                        rng.below(b.len() as u64) as usize
                    };
                    b.truncate(at);
                    log.push(format!("cut at {at:#x}"));
                }
                match f.wrap {
                    Some(w) => w(&b),
                    None => b,
                }
            }
        };
        write_sparse(&image, &bytes);
        let what = || {
            let keep = std::env::temp_dir().join(format!("ido-mutation-{}-{seed}-{i}.img", f.name));
            let _ = std::fs::copy(&image, &keep);
            format!(
                "{} copy {i} [{}] (kept as {})",
                f.name,
                log.join(", "),
                keep.display()
            )
        };

        peak_rss(true);
        let result = match tokio::time::timeout(TIMEOUT, import(options(&image, &out))).await {
            Ok(r) => r,
            Err(_) => {
                // The conversion thread cannot be stopped, and the runtime would wait for it.
                eprintln!("HANG: {} did not return within {TIMEOUT:?}", what());
                std::process::exit(1);
            }
        };
        if let Some(rss) = peak_rss(false) {
            max_rss = max_rss.max(rss);
            assert!(rss <= MAX_RSS, "{}: resident memory reached {rss} bytes", what());
        }
        match result {
            Ok(r) => {
                let len = std::fs::metadata(&out)
                    .unwrap_or_else(|e| panic!("{}: succeeded without a target: {e}", what()))
                    .len();
                assert_eq!(len, r.virtual_size, "{}: target length", what());
                std::fs::remove_file(&out).unwrap();
                *outcomes.entry("ok".into()).or_default() += 1;
            }
            Err(e) => {
                let text = e.to_string();
                assert!(!text.contains("panic"), "{}: PANIC: {text}", what());
                assert!(!out.exists(), "{}: a target is left behind after: {text}", what());
                // Bad bytes are named as such; only a decoder's complaint is an I/O error.
                assert!(
                    e.label() != "io" || f.wrap.is_some(),
                    "{}: an I/O error for bad image bytes: {text}",
                    what()
                );
                if e.label() == "io" && !outcomes.contains_key("io") {
                    eprintln!("{}: e.g. {text}", f.name);
                }
                *outcomes.entry(e.label().into()).or_default() += 1;
            }
        }
    }
    eprintln!(
        "{}: {count} mutated copies in {:.1?}, peak RSS {} MiB: {outcomes:?}",
        f.name,
        start.elapsed(),
        max_rss >> 20
    );
}

fn options(image: &Path, out: &Path) -> ImportOptions {
    let mut o = ImportOptions::new(
        SourceSpec::File(image.to_path_buf()),
        TargetSpec {
            path: out.to_path_buf(),
            capacity: Some(CAPACITY),
        },
    );
    o.reorder_budget = REORDER_BUDGET;
    o
}

// --- checksums -------------------------------------------------------------------------

/// VHD's checksum (one's complement of the byte sum) of `b`, stored at `field`.
fn vhd_checksum(b: &mut [u8], field: usize) {
    b[field..field + 4].fill(0);
    let sum = b.iter().fold(0u32, |s, x| s.wrapping_add(u32::from(*x)));
    b[field..field + 4].copy_from_slice(&(!sum).to_be_bytes());
}

/// The footer copy, the dynamic header (where the unmutated image has it) and the footer.
fn vhd_fixup(dyn_header: Option<usize>) -> Fixup {
    Box::new(move |b: &mut [u8]| {
        let len = b.len();
        if len >= 512 && b.starts_with(b"conectix") {
            vhd_checksum(&mut b[..512], 64);
        }
        if let Some(d) = dyn_header
            && len >= d + 1024
        {
            vhd_checksum(&mut b[d..d + 1024], 36);
        }
        if len >= 1024 && b[len - 512..].starts_with(b"conectix") {
            vhd_checksum(&mut b[len - 512..], 64);
        }
    })
}

/// CRC-32C of `b` stored at 4 (VHDX headers and region tables).
fn crc_fix(b: &mut [u8]) {
    b[4..8].fill(0);
    let c = crc32c(b);
    b[4..8].copy_from_slice(&c.to_le_bytes());
}

fn vhdx_fixup(b: &mut [u8]) {
    for (off, len) in [
        (64 << 10, 4096),
        (128 << 10, 4096),
        (192 << 10, 64 << 10),
        (256 << 10, 64 << 10),
    ] {
        if b.len() >= off + len {
            crc_fix(&mut b[off..off + len]);
        }
    }
}

/// Tar header checksums at the offsets where the unmutated archive has headers.
fn tar_fixup(headers: Vec<usize>) -> Fixup {
    Box::new(move |b: &mut [u8]| {
        for &h in &headers {
            if b.len() < h + 512 {
                continue;
            }
            let hdr = &mut b[h..h + 512];
            hdr[148..156].fill(b' ');
            let sum: u64 = hdr.iter().map(|x| u64::from(*x)).sum();
            hdr[148..156].copy_from_slice(format!("{:06o}\0 ", sum & 0o777_777).as_bytes());
        }
    })
}

/// Offsets of the member headers of a tar (ustar sizes only).
fn tar_headers(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= b.len() && b[at..at + 512].iter().any(|x| *x != 0) {
        out.push(at);
        let size = std::str::from_utf8(&b[at + 124..at + 135]).unwrap();
        let size = usize::from_str_radix(size.trim_matches(['\0', ' ']), 8).unwrap();
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(b).unwrap();
    z.finish().unwrap()
}

// --- the formats -------------------------------------------------------------------------

/// qcow2 header: backing file, cluster bits, size, encryption, L1, refcounts, snapshots,
/// features, refcount order, header length.
const QCOW2_FIELDS: [(usize, usize); 14] = [
    (8, 8),
    (16, 4),
    (20, 4),
    (24, 8),
    (32, 4),
    (36, 4),
    (40, 8),
    (48, 8),
    (56, 4),
    (60, 4),
    (64, 8),
    (72, 8),
    (96, 4),
    (100, 4),
];
/// VMDK sparse extent header: version, flags, capacity, grain, descriptor, GTEs per GT,
/// directories, overhead.
const VMDK_FIELDS: [(usize, usize); 10] = [
    (4, 4),
    (8, 4),
    (12, 8),
    (20, 8),
    (28, 8),
    (36, 8),
    (44, 4),
    (48, 8),
    (56, 8),
    (64, 8),
];
/// VDI header: type, offsets, sector size, disk size, block size, extra, blocks.
const VDI_FIELDS: [(usize, usize); 9] = [
    (0x4c, 4),
    (0x154, 4),
    (0x158, 4),
    (0x168, 4),
    (0x170, 8),
    (0x178, 4),
    (0x17c, 4),
    (0x180, 4),
    (0x184, 4),
];

#[tokio::test]
async fn qcow2_small_clusters() {
    let dir = tempfile::tempdir().unwrap();
    // 4 KiB clusters: header, refcounts, L1 and L2 tables all in the first 64 KiB.
    let b = qemu(dir.path(), "qcow2", "cluster_size=4096", false);
    let mut f = Fixture::new("qcow2", b, true);
    f.fields = QCOW2_FIELDS.to_vec();
    fuzz(f, 1).await;
}

#[tokio::test]
async fn qcow2_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let b = qemu(dir.path(), "qcow2", "", true);
    let mut f = Fixture::new("qcow2-compressed", b, true);
    f.fields = QCOW2_FIELDS.to_vec();
    // 64 KiB clusters: refcounts, L1 and L2 at 64, 128, 192 and 256 KiB; then the
    // compressed clusters.
    f.hot.push(hot(64 << 10, 320 << 10, 4));
    fuzz(f, 2).await;
}

#[tokio::test]
async fn vmdk_monolithic_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let b = qemu(dir.path(), "vmdk", "", false);
    let mut f = Fixture::new("vmdk-sparse", b, false);
    f.fields = VMDK_FIELDS.to_vec();
    fuzz(f, 3).await;
}

#[tokio::test]
async fn vmdk_stream_optimized() {
    let dir = tempfile::tempdir().unwrap();
    let b = qemu(dir.path(), "vmdk", "subformat=streamOptimized", false);
    let mut f = Fixture::new("vmdk-stream", b, false);
    f.fields = VMDK_FIELDS.to_vec();
    // The grain markers after the descriptor.
    f.hot.push(hot(64 << 10, 96 << 10, 3));
    fuzz(f, 4).await;
}

#[tokio::test]
async fn vpc_dynamic() {
    let dir = tempfile::tempdir().unwrap();
    let b = qemu(dir.path(), "vpc", "", false);
    let len = b.len();
    let dyn_header = u64::from_be_bytes(b[16..24].try_into().unwrap()) as usize;
    let mut f = Fixture::new("vpc-dynamic", b, true);
    let d = dyn_header;
    f.fields = vec![
        (16, 8),
        (48, 8),
        (56, 4),
        (60, 4),
        (d + 8, 8),
        (d + 16, 8),
        (d + 28, 4),
        (d + 32, 4),
    ];
    f.hot.push(hot(len - 512, len, 2));
    f.fixup = Some(vhd_fixup(Some(dyn_header)));
    f.count = 150;
    fuzz(f, 5).await;
}

#[tokio::test]
async fn vpc_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let b = qemu(dir.path(), "vpc", "subformat=fixed", false);
    let len = b.len();
    let mut f = Fixture::new("vpc-fixed", b, true);
    let t = len - 512;
    f.fields = vec![(t + 16, 8), (t + 40, 8), (t + 48, 8), (t + 56, 4), (t + 60, 4)];
    // The footer is all there is to mutate.
    f.hot = vec![hot(len - 512, len - 512 + 100, 6), hot(len - 512, len, 4)];
    f.fixup = Some(vhd_fixup(None));
    f.count = 100;
    fuzz(f, 6).await;
}

#[tokio::test]
async fn vhdx() {
    let dir = tempfile::tempdir().unwrap();
    let b = qemu(dir.path(), "vhdx", "block_size=1M", false);
    let mut f = Fixture::new("vhdx", b, false);
    // Headers and region tables; the metadata region and the BAT (from the region table).
    f.hot = vec![
        hot(64 << 10, (64 << 10) + 128, 2),
        hot(128 << 10, (128 << 10) + 128, 2),
    ];
    f.hot.push(hot(192 << 10, (192 << 10) + 16 + 2 * 32, 3));
    let t = 192 << 10;
    for i in 0..le32(&f.bytes, t + 8) as usize {
        let e = t + 16 + i * 32;
        let off = le64(&f.bytes, e + 16) as usize;
        f.hot.push(hot(off, off + 512, 4));
    }
    f.fixup = Some(Box::new(vhdx_fixup));
    // 11 MiB (mostly holes) read per copy: the slowest fixture.
    f.count = 120;
    fuzz(f, 7).await;
}

#[tokio::test]
async fn vdi() {
    let dir = tempfile::tempdir().unwrap();
    let b = qemu(dir.path(), "vdi", "", false);
    let mut f = Fixture::new("vdi", b, false);
    f.fields = VDI_FIELDS.to_vec();
    f.hot.push(hot(0x140, 0x190, 6));
    f.count = 150;
    fuzz(f, 8).await;
}

#[tokio::test]
async fn ova() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("disk-1.vmdk"),
        qemu(d, "vmdk", "subformat=streamOptimized", false),
    )
    .unwrap();
    let ovf = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="disk-1.vmdk" ovf:id="file1"/></References>
  <DiskSection><Disk ovf:capacity="{VIRTUAL}" ovf:diskId="vmdisk1" ovf:fileRef="file1"/></DiskSection>
</Envelope>
"#
    );
    std::fs::write(d.join("vm.ovf"), ovf).unwrap();
    sh(&format!(
        "cd {} && sha256sum --tag vm.ovf disk-1.vmdk > vm.mf && \
         tar --format=ustar -cf vm.ova vm.ovf vm.mf disk-1.vmdk",
        s(d)
    ));
    let b = std::fs::read(d.join("vm.ova")).unwrap();
    let headers = tar_headers(&b);
    let mut f = Fixture::new("ova", b, false);
    f.hot = headers.iter().map(|h| hot(*h, h + 512, 2)).collect();
    f.hot.push(hot(512, 1024, 3)); // the OVF
    let disk = headers[2] + 512;
    f.hot.push(hot(disk, disk + 512, 3)); // the VMDK header
    f.fixup = Some(tar_fixup(headers));
    fuzz(f, 9).await;
}

#[tokio::test]
async fn gzip_wrapped_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let b = qemu(dir.path(), "qcow2", "cluster_size=4096", false);
    let mut f = Fixture::new("qcow2.gz", b, true);
    f.fields = QCOW2_FIELDS.to_vec();
    f.wrap = Some(gzip);
    f.count = 200;
    fuzz(f, 10).await;
}

#[tokio::test]
async fn tar_wrapped_vdi() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("disk.vdi"), qemu(d, "vdi", "", false)).unwrap();
    sh(&format!("cd {} && tar --format=gnu -cf d.tar disk.vdi", s(d)));
    let b = std::fs::read(d.join("d.tar")).unwrap();
    let headers = tar_headers(&b);
    let mut f = Fixture::new("vdi.tar", b, false);
    f.fields = VDI_FIELDS.iter().map(|(o, w)| (512 + o, *w)).collect();
    f.hot = vec![
        hot(0, 512, 4),
        hot(512, 1024, 3),
        hot(512 + 0x140, 512 + 0x190, 3),
    ];
    f.fixup = Some(tar_fixup(headers));
    f.count = 150;
    fuzz(f, 11).await;
}
