//! The disk-import benchmark: `ido import` against CDI's path, nbdkit's curl
//! plugin feeding `qemu-img convert`, and the limit, in one run, over loopback HTTP (nginx).
//!
//! ```text
//! ido-bench-disk --ido target/release/ido [--runs 3] [--cases qcow2,xz] [--virtual-gib 4]
//!                [--data-mib 1536] [--xz-mib 1024] [--dir target/bench-disk]
//! ```
//!
//! Fixtures (made once, kept in `--dir/fixtures` and reused while the parameters match):
//! - `image.qcow2`: `--virtual-gib` GiB virtual holding `--data-mib` MiB of incompressible
//!   data in 4 MiB runs between holes (`qemu-img convert -O qcow2` of a sparse raw);
//! - `image.raw.xz`: a `--xz-mib` MiB raw of compressible, text-like data with holes,
//!   compressed by `xz -T2 -3 --block-size=16MiB` (multi-block, as `xz -T` writes), about
//!   3:1.
//!
//! Tools, each writing a fresh raw file, every target fsynced at the end (`sync FILE`):
//! - `ido`: `ido import URL OUT --progress none`;
//! - `cdi`: CDI's path: download to a scratch file (xz decoded on the way, one thread, as
//!   CDI's importer does), then `qemu-img convert -t writeback -O raw SCRATCH OUT`;
//! - `nbdkit` (qcow2 only): `nbdkit curl` serving the URL, `qemu-img convert -f qcow2` from it;
//! - `xz-T1` (xz only): `curl URL | xz -dc -T1 > OUT`, the issue's xz anchor;
//! - `limit`: `curl -o OUT URL` of the same bytes.
//!
//! Every output is compared with qemu-img's (`cmp`) after the first run. Peak RSS from
//! `/usr/bin/time -f %M` (for pipelines, of the shell's largest child). The last line is
//! JSON with every figure.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail, ensure};
use ido_testkit::{
    bench::{Case, median, order, strings, timed},
    nginx::Nginx,
};
use serde_json::{Value, json};

struct Args {
    ido: PathBuf,
    runs: usize,
    cases: Vec<String>,
    virtual_gib: u64,
    data_mib: u64,
    xz_mib: u64,
    dir: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let root = ido_testkit::workspace_root();
    let mut a = Args {
        ido: root.join("target/release/ido"),
        runs: 3,
        cases: vec!["qcow2".into(), "xz".into()],
        virtual_gib: 4,
        data_mib: 1536,
        xz_mib: 1024,
        dir: root.join("target/bench-disk"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ido" => a.ido = val()?.into(),
            "--runs" => a.runs = val()?.parse().context("--runs")?,
            "--cases" => a.cases = val()?.split(',').map(str::to_string).collect(),
            "--virtual-gib" => a.virtual_gib = val()?.parse().context("--virtual-gib")?,
            "--data-mib" => a.data_mib = val()?.parse().context("--data-mib")?,
            "--xz-mib" => a.xz_mib = val()?.parse().context("--xz-mib")?,
            "--dir" => a.dir = val()?.into(),
            other => bail!("unknown argument {other:?} (see the source's doc comment)"),
        }
    }
    ensure!(a.runs > 0, "--runs must be at least 1");
    ensure!(
        a.data_mib <= a.virtual_gib * 1024,
        "--data-mib {} does not fit --virtual-gib {}",
        a.data_mib,
        a.virtual_gib
    );
    Ok(a)
}

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
    use std::os::unix::fs::FileExt;
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

/// Makes the fixtures unless the ones in `dir` were made with the same parameters.
fn fixtures(a: &Args, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = dir.join("params");
    let params = format!("v2 {} {} {}", a.virtual_gib, a.data_mib, a.xz_mib);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(params.as_str()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&stamp);
    println!("making fixtures in {} (once)", dir.display());
    let raw = dir.join("image.raw");
    write_raw(&raw, a.virtual_gib << 30, a.data_mib << 20, false, 7)?;
    let qcow2 = dir.join("image.qcow2");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", path(&raw)?, path(&qcow2)?],
    )?;
    std::fs::remove_file(&raw)?;
    let xz_raw = dir.join("xz.raw");
    write_raw(&xz_raw, a.xz_mib << 20, (a.xz_mib << 20) * 3 / 4, true, 11)?;
    let out = std::fs::File::create(dir.join("image.raw.xz"))?;
    let st = std::process::Command::new("xz")
        .args(["-T2", "-3", "--block-size=16MiB", "-c"])
        .arg(&xz_raw)
        .stdout(out)
        .status()
        .context("running xz")?;
    ensure!(st.success(), "xz failed: {st}");
    std::fs::remove_file(&xz_raw)?;
    std::fs::write(&stamp, params)?;
    Ok(())
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// The tools of one case: (name, program, args). `OUT` and `SCRATCH` are placeholders.
fn tools(case: &str, ido: &Path, url: &str) -> Vec<(&'static str, String, Vec<String>)> {
    let sh = |script: &str| {
        (
            "sh".to_string(),
            strings(&["-c", script, "sh", url, "OUT", "SCRATCH"]),
        )
    };
    let ido = (
        ido.display().to_string(),
        strings(&["import", url, "OUT", "--progress", "none"]),
    );
    let mut v = vec![("ido", ido.0, ido.1)];
    let mut add = |name: &'static str, script: &str| {
        let (p, a) = sh(script);
        v.push((name, p, a));
    };
    match case {
        "qcow2" => {
            add(
                "cdi",
                r#"curl -sSf -o "$3" "$1" && qemu-img convert -t writeback -O raw "$3" "$2" && sync "$2""#,
            );
            add(
                "nbdkit",
                r#"OUT="$2" nbdkit -U - curl url="$1" --run 'qemu-img convert -f qcow2 -O raw "$uri" "$OUT"' && sync "$2""#,
            );
        }
        _ => {
            add(
                "cdi",
                r#"curl -sSf "$1" | xz -dc -T1 > "$3" && qemu-img convert -t writeback -f raw -O raw "$3" "$2" && sync "$2""#,
            );
            add("xz-T1", r#"curl -sSf "$1" | xz -dc -T1 > "$2" && sync "$2""#);
        }
    }
    add("limit", r#"curl -sSf -o "$2" "$1" && sync "$2""#);
    v
}

/// Disk blocks actually used by a file (to show sparseness), MiB.
fn used_mib(p: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .map(|m| m.blocks() as f64 * 512.0 / 1048576.0)
        .unwrap_or(0.0)
}

async fn bench_case(a: &Args, case: &str, nginx: &Nginx, work: &Path) -> anyhow::Result<Value> {
    let file = if case == "qcow2" {
        "image.qcow2"
    } else {
        "image.raw.xz"
    };
    let url = nginx.url(file);
    let tools = tools(case, &a.ido, &url);
    let names: Vec<usize> = (0..tools.len()).collect();
    let mut c = Case::default();
    let mut scratch_mib = 0.0;
    let mut out_mib = 0.0;
    println!("case {case}: {url}");
    for run in 0..a.runs {
        println!("  run {}", run + 1);
        for &i in &order(&names, run) {
            let (name, program, args) = &tools[i];
            let out = work.join(format!("{name}.raw"));
            let scratch = work.join(format!("{name}.scratch"));
            let args: Vec<String> = args
                .iter()
                .map(|s| match s.as_str() {
                    "OUT" => out.display().to_string(),
                    "SCRATCH" => scratch.display().to_string(),
                    _ => s.clone(),
                })
                .collect();
            let (s, _) = timed(Path::new(program), &args).await?;
            c.push(name, s);
            if scratch.exists() {
                scratch_mib = used_mib(&scratch);
                std::fs::remove_file(&scratch)?;
            }
            if *name == "ido" {
                out_mib = used_mib(&out);
            }
        }
        if run == 0 {
            // Every converted output equals qemu-img's (the limit's output is the input).
            let reference = work.join("cdi.raw");
            for (name, ..) in &tools {
                if matches!(*name, "ido" | "nbdkit" | "xz-T1") {
                    let st = std::process::Command::new("cmp")
                        .arg(&reference)
                        .arg(work.join(format!("{name}.raw")))
                        .status()?;
                    ensure!(st.success(), "{name}'s output differs from qemu-img's");
                }
            }
            println!("  outputs equal qemu-img's (cmp)");
        }
        for (name, ..) in &tools {
            let _ = std::fs::remove_file(work.join(format!("{name}.raw")));
        }
    }
    let mut j = json!({"url_file": file, "tools": c.json(), "cdi_scratch_mib": scratch_mib, "ido_output_used_mib": out_mib});
    let mut ratios = serde_json::Map::new();
    for (name, ..) in &tools {
        if *name != "ido" {
            let r = c.ratio("ido", name);
            println!("  ido / {name:<7} {r:.2}");
            ratios.insert(name.to_string(), json!(r));
        }
    }
    let rss: Vec<f64> = c
        .tools
        .iter()
        .find(|(t, _)| *t == "ido")
        .map(|(_, v)| v.iter().map(|s| s.rss_kib as f64 / 1024.0).collect())
        .unwrap_or_default();
    println!("  ido peak RSS median {:.1} MiB", median(&rss));
    j["ido_over"] = Value::Object(ratios);
    Ok(j)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    ensure!(
        a.ido.is_file(),
        "{} not found (cargo build --release -p ido)",
        a.ido.display()
    );
    let fixtures_dir = a.dir.join("fixtures");
    fixtures(&a, &fixtures_dir)?;
    let work = a.dir.join("out");
    std::fs::create_dir_all(&work)?;
    let nginx = Nginx::start(&fixtures_dir).await?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    let mut all = serde_json::Map::new();
    for case in &a.cases {
        ensure!(
            matches!(case.as_str(), "qcow2" | "xz"),
            "--cases: unknown case {case:?} (qcow2, xz)"
        );
        all.insert(case.clone(), bench_case(&a, case, &nginx, &work).await?);
    }
    all.insert("runs".into(), json!(a.runs));
    all.insert("load_at_start".into(), json!(load.trim()));
    let line = Value::Object(all).to_string();
    std::io::stdout().write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}
