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
