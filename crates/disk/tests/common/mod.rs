//! Fixtures for import tests: one fixed pseudo-random raw image with holes, and every
//! other format made from it by the real tools (qemu-img, gzip, pigz, xz, zstd, bzip2, tar).

#![allow(dead_code)]

pub mod http_server;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Virtual size of the fixture: 64 MiB plus five sectors (not a multiple of any cluster).
pub const RAW_SIZE: u64 = (64 << 20) + 5 * 512;

/// Deterministic bytes (xorshift64).
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Compressible bytes (text with a counter).
pub fn text_bytes(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while v.len() < n {
        v.extend_from_slice(format!("line {i:08} of the ido import fixture\n").as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

/// The fixture: random and compressible regions, a zero cluster inside data, big holes,
/// a region ending off any boundary, and a partial last cluster.
pub fn raw_image() -> Vec<u8> {
    let mut img = vec![0u8; RAW_SIZE as usize];
    let mut put = |off: usize, data: Vec<u8>| img[off..off + data.len()].copy_from_slice(&data);
    put(0, random_bytes(1, 1 << 20));
    put(4 << 20, text_bytes(2 << 20));
    put(6 << 20, random_bytes(2, 2 << 20));
    put(20 << 20, random_bytes(3, 300_001));
    put(40 << 20, text_bytes(1 << 20));
    put((64 << 20) - 1000, random_bytes(4, 1000 + 5 * 512));
    // A zero 64 KiB cluster inside a data region.
    img[(7 << 20)..(7 << 20) + 65536].fill(0);
    img
}

/// Writes the fixture to `dir/disk.raw` (sparse) and returns its path.
pub fn write_raw(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    std::fs::write(&p, raw_image()).unwrap();
    // Punch the holes back: copy through `cp --sparse=always`.
    let sparse = dir.join("disk.sparse.raw");
    run(
        "cp",
        &["--sparse=always", p.to_str().unwrap(), sparse.to_str().unwrap()],
    );
    std::fs::rename(&sparse, &p).unwrap();
    p
}

/// Runs a command and asserts success.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a shell pipeline and asserts success.
pub fn sh(script: &str) {
    run("bash", &["-euo", "pipefail", "-c", script]);
}

/// `qemu-img convert -O raw` of `image`: the oracle.
pub fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.oracle.raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    v
}

/// The fixture as a qcow2 in `dir` (qemu-img's), and qemu-img's raw conversion of it.
pub fn write_qcow2(dir: &Path) -> (PathBuf, Vec<u8>) {
    let raw = write_raw(dir);
    let q = dir.join("image.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    let oracle = qemu_raw(&q, dir);
    (q, oracle)
}

/// `qemu-img convert -f <format> -O raw` of `image` (for formats qemu does not probe, as a
/// fixed VHD).
pub fn qemu_raw_as(image: &Path, format: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("oracle-as.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            format,
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    v
}

/// CRC-32C (VHDX header and region table checksums).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Asserts two images are equal, reporting the first difference.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        panic!("{what}: first difference at byte {i:#x}");
    }
}

/// Asserts the file uses far fewer blocks than its length (holes were kept).
pub fn assert_sparse(path: &Path) {
    let m = std::fs::metadata(path).unwrap();
    let used = m.blocks() * 512;
    assert!(
        used < m.len() / 4,
        "{} is not sparse: {used} bytes used for {}",
        path.display(),
        m.len()
    );
}

/// `sha256sum` of a file, as `sha256:HEX`.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", s.split_whitespace().next().unwrap())
}

/// Asserts two files are equal in length and bytes, read in pieces (for images too large
/// to hold twice in memory), reporting the first difference.
pub fn assert_same_file(got: &Path, want: &Path, what: &str) {
    use std::io::Read;
    let (lg, lw) = (
        std::fs::metadata(got).unwrap().len(),
        std::fs::metadata(want).unwrap().len(),
    );
    assert_eq!(lg, lw, "{what}: length");
    let (mut a, mut b) = (
        std::fs::File::open(got).unwrap(),
        std::fs::File::open(want).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut off = 0usize;
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return;
        }
        b.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            let i = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q).unwrap();
            panic!("{what}: first difference at byte {:#x}", off + i);
        }
        off += n;
    }
}

/// Writes a sparse file of `size` bytes holding `regions` (offset, bytes) and holes
/// elsewhere (the file system's holes: what `tar --sparse` finds).
pub fn write_sparse(path: &Path, size: u64, regions: &[(u64, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, data) in regions {
        f.write_all_at(data, *off).unwrap();
    }
    f.sync_all().unwrap();
}

/// The whole content of a sparse file made by [`write_sparse`].
pub fn sparse_content(size: u64, regions: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for (off, data) in regions {
        v[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    v
}

/// Checks a large sparse file without reading its holes: its length, each region's bytes,
/// and that no more than the regions (rounded to 64 KiB each) is allocated, so nothing was
/// written anywhere else.
pub fn assert_sparse_regions(path: &Path, size: u64, regions: &[(u64, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let m = f.metadata().unwrap();
    assert_eq!(m.len(), size, "{}: length", path.display());
    for (off, data) in regions {
        let mut got = vec![0u8; data.len()];
        f.read_exact_at(&mut got, *off).unwrap();
        assert!(got == *data, "{}: the region at {off} differs", path.display());
    }
    let allowed: u64 = regions.iter().map(|(_, d)| d.len() as u64 + (128 << 10)).sum();
    assert!(
        m.blocks() * 512 <= allowed,
        "{}: {} bytes allocated, the data is {allowed} at most",
        path.display(),
        m.blocks() * 512
    );
}

/// Random bytes from a four-letter alphabet (xorshift): deflate and zstd shrink them to
/// about a third, so `qemu-img convert -c` stores their clusters compressed.
pub fn compressible_bytes(seed: u64, n: usize) -> Vec<u8> {
    random_bytes(seed, n)
        .into_iter()
        .map(|b| b"ACGT"[usize::from(b & 3)])
        .collect()
}

/// `qemu-img convert [-f format] -O raw image out`: the oracle, as a (sparse) file.
pub fn qemu_raw_file(image: &Path, format: Option<&str>, out: &Path) {
    let mut args = vec!["convert"];
    if let Some(f) = format {
        args.extend(["-f", f]);
    }
    args.extend(["-O", "raw", image.to_str().unwrap(), out.to_str().unwrap()]);
    run("qemu-img", &args);
}

/// Facts about a qcow2's layout: how its clusters lie relative to the L2 tables that map
/// them (from the active L1 table).
#[derive(Debug, Default)]
pub struct Qcow2Layout {
    /// Compressed clusters stored before the L2 table that maps them.
    pub compressed_before_l2: usize,
    /// Of those, the ones whose first sector is the last sector of the cluster stored
    /// just before them.
    pub compressed_before_l2_sharing: usize,
    /// Compressed clusters in all.
    pub compressed: usize,
    /// Bytes of standard (uncompressed) clusters stored before the L2 table that maps
    /// them.
    pub data_before_l2: u64,
}

/// Reads the layout of the qcow2 at `path` (64-bit L2 entries, no extended L2).
pub fn qcow2_layout(path: &Path) -> Qcow2Layout {
    let d = std::fs::read(path).unwrap();
    let be32 = |o: usize| u32::from_be_bytes(d[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(d[o..o + 8].try_into().unwrap());
    let bits = be32(20);
    let cs = 1u64 << bits;
    let (l1_size, l1) = (be32(36) as usize, be64(40) as usize);
    let x = 62 - (bits - 8);
    // (host start, host end, L2 table offset, compressed)
    let mut clusters = Vec::new();
    for i in 0..l1_size {
        let l2 = (be64(l1 + 8 * i) & 0x00ff_ffff_ffff_fe00) as usize;
        if l2 == 0 {
            continue;
        }
        for j in 0..(cs / 8) as usize {
            let w = be64(l2 + 8 * j);
            if w & (1 << 62) != 0 {
                let host = w & ((1u64 << x) - 1);
                let sectors = ((w >> x) & ((1u64 << (bits - 8)) - 1)) + 1;
                clusters.push((host, (host & !511) + sectors * 512, l2 as u64, true));
            } else if w & 0x00ff_ffff_ffff_fe00 != 0 {
                let host = w & 0x00ff_ffff_ffff_fe00;
                clusters.push((host, host + cs, l2 as u64, false));
            }
        }
    }
    clusters.sort_unstable();
    let mut l = Qcow2Layout::default();
    let mut prev_end = 0u64;
    for (host, end, l2, compressed) in clusters {
        if compressed {
            l.compressed += 1;
            if host < l2 {
                l.compressed_before_l2 += 1;
                if host < prev_end {
                    l.compressed_before_l2_sharing += 1;
                }
            }
        } else if host < l2 {
            l.data_before_l2 += end - host;
        }
        prev_end = end;
    }
    l
}
