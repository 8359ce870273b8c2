//! The programs the recipes run, and the oracle they make.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail, ensure};

use super::{Expect, KIB, Layout, Made};

pub(super) fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 paths")
}

pub(super) fn output(program: &str, args: &[&str], cwd: Option<&Path>) -> anyhow::Result<Output> {
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
pub(super) fn sh(d: &Path, script: &str) -> anyhow::Result<()> {
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

pub(super) fn qemu_img(args: &[&str]) -> anyhow::Result<String> {
    run("qemu-img", args)
}

/// `qemu-io -f FMT -c CMD… image`; every command must succeed.
pub(super) fn qemu_io(fmt: &str, image: &Path, cmds: &[String]) -> anyhow::Result<()> {
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

pub(super) fn qemu_io_args<'a>(fmt: &'a str, image: &'a Path, cmds: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.extend(["-c", c.as_str()]);
    }
    args.push(s(image));
    args
}

/// `qemu-img info --output=json`.
pub(super) fn info(image: &Path, fmt: &str) -> anyhow::Result<serde_json::Value> {
    let text = qemu_img(&["info", "-U", "--output=json", "-f", fmt, s(image)])?;
    Ok(serde_json::from_str(&text)?)
}

/// `qemu-img convert -f FMT -O raw image d/oracle.raw`: the expected output.
pub(super) fn same(
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
pub(super) fn plain(d: &Path, image: PathBuf, fmt: &str, format: &'static str) -> anyhow::Result<Made> {
    let e = same(d, &image, fmt, format, &[])?;
    Ok(Made::Image(image, e))
}

/// Writes `layout` as `d/src.raw` and converts it: `qemu-img convert [-c] -O FMT [-o OPTS]`.
pub(super) fn convert(
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

pub(super) fn create(path: &Path, fmt: &str, opts: &str, size: u64) -> anyhow::Result<()> {
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([s(path), size.as_str()]);
    qemu_img(&args).map(drop)
}

pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `qemu-io write -s w OFF 256k` at each offset, in that order.
pub(super) fn out_of_order(fmt: &str, image: &Path, w: &Path, offsets: &[u64]) -> anyhow::Result<()> {
    let cmds: Vec<String> = offsets
        .iter()
        .map(|o| format!("write -s {} {o} {}", s(w), 256 * KIB))
        .collect();
    qemu_io(fmt, image, &cmds)
}

/// Compresses `d/name` with `layer`'s tool (the original removed); the new path.
pub(super) fn compress_file(d: &Path, name: &str, layer: &str) -> anyhow::Result<PathBuf> {
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
