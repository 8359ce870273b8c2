//! The disk benchmark's fixtures (see `ido-bench-disk.rs`): a sparse raw of incompressible
//! data in 4 MiB runs between holes, the same disk in every format `qemu-img` writes and
//! `ido import` reads, a larger sparse raw for the clone case, and a compressible raw in
//! multi-block xz.

use std::{os::unix::fs::FileExt, path::Path, time::Instant};

use anyhow::{Context, ensure};

/// The fixtures' sizes, MiB.
pub struct Params {
    /// Virtual size of `image.raw` and the disk images made from it.
    pub virtual_mib: u64,
    /// Incompressible data in them.
    pub data_mib: u64,
    /// Size of the raw inside `image.raw.xz`.
    pub xz_mib: u64,
    /// Virtual size of [`LARGE_RAW`], the clone case's larger volume.
    pub large_virtual_mib: u64,
    /// Incompressible data in it.
    pub large_data_mib: u64,
}

/// The clone case: `image.raw` copied byte for byte (`ido import --format raw` against
/// `cp --sparse=always`), then [`LARGE_RAW`].
pub const CLONE_CASE: &str = "clone";

/// The upload case: `image.qcow2` sent with curl to `ido upload-server` over loopback (the
/// upload pod's work: converted as it arrives), against curl to a sink (the limit).
pub const UPLOAD_CASE: &str = "upload";

/// The clone case's larger sparse raw (same layout as `image.raw`, more of everything).
pub const LARGE_RAW: &str = "image-large.raw";

/// A disk format read from a local file: (case, fixture file, qemu-img format, -o options,
/// label).
pub const FILE_CASES: [(&str, &str, &str, &str, &str); 7] = [
    ("qcow2", "image.qcow2", "qcow2", "", "qcow2"),
    (
        "vmdk-stream",
        "image-stream.vmdk",
        "vmdk",
        "subformat=streamOptimized",
        "vmdk streamOptimized",
    ),
    (
        "vmdk-sparse",
        "image-sparse.vmdk",
        "vmdk",
        "subformat=monolithicSparse",
        "vmdk monolithicSparse",
    ),
    ("vhdx", "image.vhdx", "vhdx", "subformat=dynamic", "vhdx dynamic"),
    (
        "vhd",
        "image.vhd",
        "vpc",
        "subformat=dynamic,force_size=on",
        "vhd dynamic",
    ),
    ("vdi", "image.vdi", "vdi", "static=off", "vdi dynamic"),
    ("raw", "image.raw", "raw", "", "raw (sparse file)"),
];

/// Cases over HTTP: (case, fixture file, label).
pub const HTTP_CASES: [(&str, &str, &str); 2] = [
    ("http-qcow2", "image.qcow2", "qcow2 over HTTP"),
    ("http-xz", "image.raw.xz", "xz raw over HTTP"),
];

/// Marsaglia's xorshift64 (deterministic fixture bytes).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const SLOT: u64 = 4 << 20;

/// A sparse raw file of `size` bytes whose `data` bytes sit in 4 MiB runs spread over it;
/// `text` makes them compressible (words from a small vocabulary) instead of random.
fn write_raw(path: &Path, size: u64, data: u64, text: bool, seed: u64) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)?;
    let slots = size / SLOT;
    let want = data.div_ceil(SLOT).min(slots);
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; SLOT as usize];
    const WORDS: [&str; 16] = [
        "kernel ",
        "module ",
        "systemd ",
        "unit ",
        "flatcar ",
        "usr/lib/",
        "0x7f3a ",
        "=true\n",
        "etc/",
        "libc.so.6 ",
        "ELF ",
        "container ",
        "bin/",
        "\0\0\0\0",
        "ssh-ed25519 ",
        "release ",
    ];
    for i in 0..want {
        // Spread the runs evenly: slot i·slots/want.
        let slot = i * slots / want;
        if text {
            let mut n = 0;
            // Words, and now and then a few random bytes (addresses, hashes): about 3:1
            // with xz -3, like an OS image's data.
            while n < buf.len() {
                let r = rng.next();
                let random = r.to_le_bytes();
                let w = if r.is_multiple_of(3) {
                    &random[..5]
                } else {
                    WORDS[((r >> 8) % 16) as usize].as_bytes()
                };
                let k = w.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&w[..k]);
                n += k;
            }
        } else {
            rng.fill(&mut buf);
        }
        f.write_all_at(&buf, slot * SLOT)?;
    }
    f.sync_all()?;
    Ok(())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let st = std::process::Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    ensure!(st.success(), "{program} {} failed: {st}", args.join(" "));
    Ok(())
}

/// Makes `dir/file` with `make` unless its stamp (`dir/file.params`) says it was made with
/// `params`.
fn fixture(
    dir: &Path,
    file: &str,
    params: &str,
    make: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let p = dir.join(file);
    let stamp = dir.join(format!("{file}.params"));
    if p.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(params) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&stamp);
    let t = Instant::now();
    make(&p)?;
    std::fs::write(&stamp, params)?;
    println!(
        "  made {file} in {:.1} s ({:.0} MiB)",
        t.elapsed().as_secs_f64(),
        file_mib(&p)
    );
    Ok(())
}

/// Makes the fixtures `cases` need, unless already made with the same parameters.
pub fn make(dir: &Path, sz: &Params, cases: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(dir.join("params")); // the previous version's single stamp
    let raw_params = format!("v3 raw {} {}", sz.virtual_mib, sz.data_mib);
    let raw = dir.join("image.raw");
    let wants = |file: &str| {
        FILE_CASES
            .iter()
            .map(|c| (c.0, c.1))
            .chain(HTTP_CASES.iter().map(|c| (c.0, c.1)))
            .chain([(UPLOAD_CASE, "image.qcow2")])
            .any(|(case, f)| f == file && cases.iter().any(|c| c == case))
    };
    println!("fixtures in {}", dir.display());
    // Every disk image is made from the raw.
    let clone = cases.iter().any(|c| c == CLONE_CASE);
    let disks = clone || FILE_CASES.iter().any(|c| wants(c.1));
    if disks {
        fixture(dir, "image.raw", &raw_params, |p| {
            write_raw(p, sz.virtual_mib << 20, sz.data_mib << 20, false, 7)
        })?;
    }
    if clone {
        let (v, d) = (sz.large_virtual_mib, sz.large_data_mib);
        fixture(dir, LARGE_RAW, &format!("v3 raw {v} {d}"), |p| {
            write_raw(p, v << 20, d << 20, false, 13)
        })?;
    }
    for (_, file, fmt, opts, _) in FILE_CASES {
        if fmt == "raw" || !wants(file) {
            continue;
        }
        fixture(dir, file, &format!("{raw_params} {fmt} {opts}"), |p| {
            let mut args = vec!["convert", "-f", "raw", "-O", fmt];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            args.extend([path(&raw)?, path(p)?]);
            run("qemu-img", &args)
        })?;
    }
    if wants("image.raw.xz") {
        fixture(dir, "image.raw.xz", &format!("v2 xz {}", sz.xz_mib), |p| {
            let xz_raw = dir.join("xz.raw");
            write_raw(&xz_raw, sz.xz_mib << 20, (sz.xz_mib << 20) * 3 / 4, true, 11)?;
            let out = std::fs::File::create(p)?;
            let st = std::process::Command::new("xz")
                .args(["-T2", "-3", "--block-size=16MiB", "-c"])
                .arg(&xz_raw)
                .stdout(out)
                .status()
                .context("running xz")?;
            ensure!(st.success(), "xz failed: {st}");
            std::fs::remove_file(&xz_raw)?;
            Ok(())
        })?;
    }
    Ok(())
}

pub fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// Disk blocks actually used by a file (to show sparseness), MiB.
pub fn used_mib(p: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .map(|m| m.blocks() as f64 * 512.0 / 1048576.0)
        .unwrap_or(0.0)
}

/// A file's length, MiB.
pub fn file_mib(p: &Path) -> f64 {
    std::fs::metadata(p)
        .map(|m| m.len() as f64 / 1048576.0)
        .unwrap_or(0.0)
}

/// Reads `p`'s data once (into the page cache). Holes are skipped (`SEEK_DATA`): they cost
/// no disk read, cached or not, and reading them would fill the page cache with zeros (16 GiB
/// of them for [`LARGE_RAW`]); a file system without `SEEK_DATA` has it read whole.
pub fn warm(p: &Path) -> anyhow::Result<()> {
    use rustix::fs::{SeekFrom, seek};
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let start = match seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole from here on
            Err(_) => pos,
        };
        let end = seek(&f, SeekFrom::Hole(start)).unwrap_or(len).min(len);
        let mut at = start;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            let got = f.read_at(&mut buf[..n], at)?;
            if got == 0 {
                return Ok(());
            }
            at += got as u64;
        }
        pos = end.max(start + 1);
    }
    Ok(())
}
