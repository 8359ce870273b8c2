//! What the fuzz targets share: the import harness (a real `ido_disk::import` from a file
//! into a small file target), a runtime, a scratch directory, and tar framing.
//!
//! Every target asserts only that the code under test returns: no panic (libfuzzer-sys
//! aborts on a panic in any thread, the import's conversion thread included), no
//! allocation beyond `-malloc_limit_mb`/`-rss_limit_mb`, no input running past `-timeout`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ido_disk::decompress::DecompressOptions;
use ido_disk::{DiskFormat, ImportOptions, SourceSpec, TargetSpec};

/// Capacity of the import target (`ido import --size`): an image with a larger virtual
/// size fails before the target is opened, and the conversion writes at most this much.
pub const CAPACITY: u64 = 8 << 20;
/// Reorder buffer of the format readers (`ImportOptions::reorder_budget`).
pub const REORDER_BUDGET: u64 = 4 << 20;

/// One runtime for the whole process (a current-thread runtime; `import` runs the
/// conversion on its blocking pool).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// This process's scratch directory: `$IDO_FUZZ_SCRATCH` (the script puts it on tmpfs),
/// else `/dev/shm` or the temporary directory; one subdirectory per process, since
/// libFuzzer's `-fork`/`-jobs` run several.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("IDO_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("ido-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        dir
    })
}

/// Runs the real streaming import of `data` (as a file source, every layer and format
/// detected as `ido import` does; `format` as `--format` forces it) into a file target of
/// [`CAPACITY`] bytes, then removes both files. The result is not looked at.
pub fn import(data: &[u8], format: Option<DiskFormat>) {
    let dir = scratch();
    // A name without extension: `ido import` checks content against a name's extension.
    let src = dir.join("image");
    let out = dir.join("disk.img");
    std::fs::write(&src, data).expect("writing the fuzz input");
    let mut opts = ImportOptions::new(
        SourceSpec::File(src),
        TargetSpec {
            path: out.clone(),
            capacity: Some(CAPACITY),
        },
    );
    opts.format = format;
    opts.overwrite = true;
    opts.reorder_budget = REORDER_BUDGET;
    opts.decompress = DecompressOptions {
        xz_threads: 1,
        xz_memlimit_threading: 64 << 20,
    };
    let _ = runtime().block_on(ido_disk::import(opts));
    // Nothing is left behind when libFuzzer exits (it runs no destructors).
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(dir.join("image"));
}

/// A ustar header of a regular file.
pub fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar of `members` (name, data), with the end-of-archive marker.
pub fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend_from_slice(&tar_header(name, data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The input as lines (UTF-8 only: the parsers fuzzed with it take `&str`).
pub fn lines(data: &[u8]) -> Option<Vec<&str>> {
    std::str::from_utf8(data).ok().map(|s| s.split('\n').collect())
}
