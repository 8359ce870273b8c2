//! The disk-import benchmark, in one run: `ido import` of every disk format it reads against
//! `qemu-img convert -O raw`, from a local file; a clone (a raw volume copied byte for byte)
//! against `cp --sparse=always`; and over loopback HTTP (nginx) against CDI's path, nbdkit's
//! curl plugin feeding `qemu-img convert`, `xz -dc -T1` and the limit.
//!
//! ```text
//! ido-bench-disk --ido target/release/ido [--runs 3] [--cases qcow2,vhdx,clone,...|all]
//!                [--size MIB] [--virtual-gib 4] [--xz-mib 1024] [--large-gib 16]
//!                [--large-data-mib 2048] [--dir target/bench-disk]
//!                [--svg docs/bench-disk.svg] [--fixtures-only]
//! ```
//!
//! Fixtures (made once, kept in `--dir/fixtures` and reused while their parameters match;
//! `--fixtures-only` makes them and stops, so that a later run starts on a quiet machine):
//! - `image.raw`: a sparse raw of `--virtual-gib` GiB (default: 4 × `--size`) holding `--size`
//!   MiB (`--data-mib`; default 1024) of incompressible data in 4 MiB runs between holes;
//! - from it, by `qemu-img convert -f raw -O FMT -o OPTS`: `image.qcow2`, `image-stream.vmdk`
//!   (streamOptimized, as in OVAs), `image-sparse.vmdk` (monolithicSparse), `image.vhdx`
//!   (dynamic), `image.vhd` (dynamic, `force_size=on`), `image.vdi` (dynamic);
//! - `image-large.raw` (clone case only): a sparse raw of `--large-gib` GiB (default 16)
//!   holding `--large-data-mib` MiB (default 2 × `--size`), laid out as `image.raw`;
//! - `image.raw.xz`: a `--xz-mib` MiB raw of compressible, text-like data with holes,
//!   compressed by `xz -T2 -3 --block-size=16MiB` (multi-block, as `xz -T` writes), about
//!   3:1.
//!
//! Cases (`--cases`, default all):
//! - `qcow2`, `vmdk-stream`, `vmdk-sparse`, `vhdx`, `vhd`, `vdi`, `raw`: from the local file,
//!   `ido`: `ido import FILE OUT --progress none` (fsyncs its target) vs `qemu-img`:
//!   `qemu-img convert -O raw FILE OUT && sync OUT` (convert's default cache mode is
//!   `unsafe`, which skips flushes, hence the `sync`);
//! - `clone`: what a DiskImport clone's importer does, on `image.raw` and then on
//!   `image-large.raw`: `ido`: `ido import FILE OUT --format raw --progress none` vs `cp`:
//!   `cp --sparse=always FILE OUT && sync OUT`. Both outputs are compared with the volume
//!   itself (`cmp`) and their allocated blocks (`stat`) held to the volume's (the holes stay
//!   holes); ido's peak RSS on the two sizes is compared (memory flat in the volume's size);
//! - `upload`: `image.qcow2` sent by `curl -X POST -T` to `ido upload-server` (the upload
//!   pod's command: the qcow2 converted to raw as it arrives, fsynced, then the sync answer)
//!   on loopback, the server's start included, against `limit`: the same curl into a sink
//!   that discards the body (in this process). The server's output is compared with
//!   `qemu-img convert`'s;
//! - `http-qcow2` (`image.qcow2`) and `http-xz` (`image.raw.xz`) over HTTP:
//!   - `ido`: `ido import URL OUT --progress none`;
//!   - `cdi`: CDI's path: download to a scratch file (xz decoded on the way, one thread, as
//!     CDI's importer does), then `qemu-img convert -t writeback -O raw SCRATCH OUT`;
//!   - `nbdkit` (qcow2 only): `nbdkit curl` serving the URL, `qemu-img convert -f qcow2` from it;
//!   - `ido-256Mi` (xz only): `ido import URL OUT --xz-memory 256Mi`, liblzma given the memory
//!     to decode a block per core (its RSS is reported, not held to the goal);
//!   - `xz-T1` (xz only): `curl URL | xz -dc -T1 > OUT`, the single-threaded xz anchor;
//!   - `limit`: `curl -o OUT URL` of the same bytes.
//!
//! Every target is a fresh raw file, fsynced at the end (`sync FILE` for the shell
//! pipelines); before each timed run the tool's previous output is removed and `sync`
//! writes back whatever is dirty, untimed. The data of each case's input (its holes
//! skipped) is read before every run (not timed), so every tool starts from the page cache;
//! the tools' order alternates between runs. Every output is compared (`cmp`) after the
//! first run with qemu-img's (CDI's path over HTTP; the volume itself for the clone). Wall,
//! CPU (user + system) and peak RSS of each process tree from [`ido_testkit::bench::timed`]
//! (`/usr/bin/time`: wait4's rusage; for pipelines, CPU of the whole tree and RSS of its
//! largest process). Ratios are the median of the per-run ratios. The last line is JSON
//! with every figure.

#[path = "ido-bench-disk/fixtures.rs"]
mod fixtures;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail, ensure};
use ido_testkit::{
    bench::{Case, Sample, median, order, strings, timed},
    nginx::Nginx,
    plot,
};
use serde_json::{Value, json};

use fixtures::{CLONE_CASE, FILE_CASES, HTTP_CASES, LARGE_RAW, UPLOAD_CASE, file_mib, path, used_mib, warm};

/// The peak-RSS goal for `ido import`, on every format, MiB.
const RSS_GOAL_MIB: f64 = 64.0;

/// How far apart ido's peak RSS may be on the clone's two volume sizes (memory flat), MiB.
const FLAT_RSS_MIB: f64 = 4.0;

/// How much more than the volume a clone may allocate (file-system metadata), MiB.
const SPARSE_SLACK_MIB: f64 = 1.0;

struct Args {
    ido: PathBuf,
    runs: usize,
    cases: Vec<String>,
    virtual_mib: Option<u64>,
    data_mib: u64,
    xz_mib: u64,
    large_virtual_mib: u64,
    large_data_mib: Option<u64>,
    dir: PathBuf,
    svg: Option<PathBuf>,
    fixtures_only: bool,
    /// The upload case's server and sink, once started.
    upload: Option<UploadSetup>,
}

/// Where the upload case sends: `ido upload-server`'s port, its key file, a header file with
/// its token (curl's `-H @FILE`: no token in a command line), and the sink's port.
struct UploadSetup {
    port: u16,
    key: PathBuf,
    header: PathBuf,
    sink: u16,
}

impl Args {
    fn virtual_mib(&self) -> u64 {
        // By default the data's 4 MiB runs sit between holes three times their size.
        self.virtual_mib.unwrap_or(4 * self.data_mib)
    }

    fn large_data_mib(&self) -> u64 {
        self.large_data_mib.unwrap_or(2 * self.data_mib)
    }
}

fn all_cases() -> Vec<String> {
    FILE_CASES
        .iter()
        .map(|c| c.0)
        .chain([CLONE_CASE])
        .chain(HTTP_CASES.iter().map(|c| c.0))
        .chain([UPLOAD_CASE])
        .map(str::to_string)
        .collect()
}

fn args() -> anyhow::Result<Args> {
    let root = ido_testkit::workspace_root();
    let mut a = Args {
        ido: root.join("target/release/ido"),
        runs: 3,
        cases: all_cases(),
        virtual_mib: None,
        data_mib: 1024,
        xz_mib: 1024,
        large_virtual_mib: 16 * 1024,
        large_data_mib: None,
        dir: root.join("target/bench-disk"),
        svg: None,
        fixtures_only: false,
        upload: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ido" => a.ido = val()?.into(),
            "--runs" => a.runs = val()?.parse().context("--runs")?,
            "--cases" => {
                let v = val()?;
                a.cases = if v == "all" {
                    all_cases()
                } else {
                    v.split(',').map(str::to_string).collect()
                }
            }
            "--virtual-gib" => a.virtual_mib = Some(val()?.parse::<u64>().context("--virtual-gib")? * 1024),
            "--size" | "--data-mib" => a.data_mib = val()?.parse().context("--size")?,
            "--xz-mib" => a.xz_mib = val()?.parse().context("--xz-mib")?,
            "--large-gib" => a.large_virtual_mib = val()?.parse::<u64>().context("--large-gib")? * 1024,
            "--large-data-mib" => a.large_data_mib = Some(val()?.parse().context("--large-data-mib")?),
            "--dir" => a.dir = val()?.into(),
            "--svg" => a.svg = Some(val()?.into()),
            "--fixtures-only" => a.fixtures_only = true,
            other => bail!("unknown argument {other:?} (see the source's doc comment)"),
        }
    }
    ensure!(a.runs > 0, "--runs must be at least 1");
    ensure!(a.data_mib > 0, "--size must be at least 1 (MiB)");
    ensure!(
        a.data_mib <= a.virtual_mib(),
        "--size {} MiB does not fit --virtual-gib {}",
        a.data_mib,
        a.virtual_mib() / 1024
    );
    ensure!(
        a.large_data_mib() <= a.large_virtual_mib,
        "--large-data-mib {} does not fit --large-gib {}",
        a.large_data_mib(),
        a.large_virtual_mib / 1024
    );
    let known = all_cases();
    for c in &a.cases {
        ensure!(
            known.contains(c),
            "--cases: unknown case {c:?} ({}, or all)",
            known.join(", ")
        );
    }
    Ok(a)
}

/// One tool of a case: its name, program and arguments (`OUT` and `SCRATCH` are
/// placeholders).
struct Tool {
    name: &'static str,
    program: String,
    args: Vec<String>,
}

fn sh(name: &'static str, script: &str, input: &str) -> Tool {
    Tool {
        name,
        program: "sh".into(),
        args: strings(&["-c", script, "sh", input, "OUT", "SCRATCH"]),
    }
}

/// The tools of a case; `input` is the fixture's path (file cases) or URL (HTTP cases).
fn tools(case: &str, a: &Args, input: &str) -> Vec<Tool> {
    let ido = a.ido.as_path();
    if case == UPLOAD_CASE
        && let Some(u) = &a.upload
    {
        // The upload pod's command, then curl (CDI's and virtctl's way to send) into it; the
        // sync path answers once the disk is in (fsynced). The server is stopped after.
        let server = format!(
            r#""{ido}" upload-server "$2" --listen 127.0.0.1:{port} --key-file "{key}" --disk-import bench/disk --force --progress none & s=$!
until curl -s -o /dev/null http://127.0.0.1:{port}/healthz; do sleep 0.01; done
curl -sSf -X POST -T "$1" -H @"{header}" -H 'Content-Type: application/octet-stream' http://127.0.0.1:{port}/v1beta1/upload > /dev/null; r=$?
kill $s 2>/dev/null; wait $s 2>/dev/null; exit $r"#,
            ido = ido.display(),
            port = u.port,
            key = u.key.display(),
            header = u.header.display(),
        );
        let sink = format!(
            r#"curl -sSf -X POST -T "$1" -H 'Content-Type: application/octet-stream' http://127.0.0.1:{}/ > /dev/null"#,
            u.sink
        );
        return vec![sh("ido", &server, input), sh("limit", &sink, input)];
    }
    if case == CLONE_CASE {
        // The importer's copy of a clone's source claim (crates/controllers' diskimport job).
        return vec![
            Tool {
                name: "ido",
                program: ido.display().to_string(),
                args: strings(&["import", input, "OUT", "--format", "raw", "--progress", "none"]),
            },
            sh("cp", r#"cp --sparse=always "$1" "$2" && sync "$2""#, input),
        ];
    }
    let mut v = vec![Tool {
        name: "ido",
        program: ido.display().to_string(),
        args: strings(&["import", input, "OUT", "--progress", "none"]),
    }];
    match case {
        "http-qcow2" => {
            v.push(sh(
                "cdi",
                r#"curl -sSf -o "$3" "$1" && qemu-img convert -t writeback -O raw "$3" "$2" && sync "$2""#,
                input,
            ));
            v.push(sh(
                "nbdkit",
                r#"OUT="$2" nbdkit -U - curl url="$1" --run 'qemu-img convert -f qcow2 -O raw "$uri" "$OUT"' && sync "$2""#,
                input,
            ));
        }
        "http-xz" => {
            v.push(Tool {
                name: "ido-256Mi",
                program: ido.display().to_string(),
                args: strings(&[
                    "import",
                    input,
                    "OUT",
                    "--progress",
                    "none",
                    "--xz-memory",
                    "256Mi",
                ]),
            });
            v.push(sh(
                "cdi",
                r#"curl -sSf "$1" | xz -dc -T1 > "$3" && qemu-img convert -t writeback -f raw -O raw "$3" "$2" && sync "$2""#,
                input,
            ));
            v.push(sh(
                "xz-T1",
                r#"curl -sSf "$1" | xz -dc -T1 > "$2" && sync "$2""#,
                input,
            ));
        }
        _ => v.push(sh(
            "qemu-img",
            r#"qemu-img convert -O raw "$1" "$2" && sync "$2""#,
            input,
        )),
    }
    if case.starts_with("http-") {
        v.push(sh("limit", r#"curl -sSf -o "$2" "$1" && sync "$2""#, input));
    }
    v
}

/// The median over runs of `f` of `tool`'s samples.
fn med(c: &Case, tool: &str, f: impl Fn(&Sample) -> f64) -> f64 {
    let v: Vec<f64> = c
        .tools
        .iter()
        .find(|(t, _)| *t == tool)
        .map(|(_, v)| v.iter().map(f).collect())
        .unwrap_or_default();
    median(&v)
}

fn cpu(s: &Sample) -> f64 {
    s.cpu.iter().map(|(_, c)| c).sum()
}

fn rss_mib(s: &Sample) -> f64 {
    s.rss_kib as f64 / 1024.0
}

/// `tool`'s wall time of each run, seconds (`1.02 0.98 1.10`).
fn walls(c: &Case, tool: &str) -> String {
    c.walls(tool)
        .iter()
        .map(|w| format!("{w:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The highest peak RSS of `tool` over the runs, MiB.
fn max_rss(c: &Case, tool: &str) -> f64 {
    c.tools
        .iter()
        .filter(|(t, _)| *t == tool)
        .flat_map(|(_, v)| v.iter().map(rss_mib))
        .fold(0.0, f64::max)
}

/// Runs one case: every tool `a.runs` times, alternating the order, the data of `fixture`
/// read before each run; after the first run every output is checked with `cmp` against
/// `reference` (a tool's output in `work`, or the fixture itself) and its allocated size
/// recorded.
async fn bench_case(
    a: &Args,
    case: &str,
    input: &str,
    fixture: &Path,
    reference: &Path,
    work: &Path,
) -> anyhow::Result<(Case, Value)> {
    let tools = tools(case, a, input);
    let idx: Vec<usize> = (0..tools.len()).collect();
    let mut c = Case::default();
    let mut scratch_mib = 0.0;
    let mut used = serde_json::Map::new();
    println!("case {case}: {input}");
    for run in 0..a.runs {
        println!("  run {}", run + 1);
        // From the page cache, whatever the previous run (or its `cmp`) evicted.
        warm(fixture)?;
        for &i in &order(&idx, run) {
            let t = &tools[i];
            let out = work.join(format!("{}.raw", t.name));
            let scratch = work.join(format!("{}.scratch", t.name));
            let args: Vec<String> = t
                .args
                .iter()
                .map(|s| match s.as_str() {
                    "OUT" => out.display().to_string(),
                    "SCRATCH" => scratch.display().to_string(),
                    _ => s.clone(),
                })
                .collect();
            // Each tool starts with no output of its own and nothing left to write back:
            // an earlier run's flushes are not charged to the next tool.
            let _ = std::fs::remove_file(&out);
            std::process::Command::new("sync").status()?;
            let (s, _) = timed(Path::new(&t.program), &args).await?;
            c.push(t.name, s);
            if scratch.exists() {
                scratch_mib = used_mib(&scratch);
                std::fs::remove_file(&scratch)?;
            }
        }
        if run == 0 {
            // Every converted output equals the reference (the limit's output is the input).
            for t in &tools {
                let out = work.join(format!("{}.raw", t.name));
                used.insert(t.name.to_string(), json!(used_mib(&out)));
                if out != reference && t.name != "limit" {
                    let st = std::process::Command::new("cmp")
                        .arg(reference)
                        .arg(&out)
                        .status()?;
                    ensure!(
                        st.success(),
                        "{case}: {}'s output differs from {}",
                        t.name,
                        reference.display()
                    );
                }
            }
            let alloc: Vec<String> = used
                .iter()
                .map(|(t, m)| format!("{t} {:.1} MiB", m.as_f64().unwrap_or(0.0)))
                .collect();
            println!(
                "  outputs equal {} (cmp); allocated: {}",
                reference.display(),
                alloc.join(", ")
            );
        }
        for t in &tools {
            let _ = std::fs::remove_file(work.join(format!("{}.raw", t.name)));
        }
    }
    let mut j = json!({
        "input": input,
        "tools": c.json(),
        "ido_output_used_mib": used.get("ido").cloned().unwrap_or(json!(0.0)),
        "output_used_mib": used,
    });
    if scratch_mib > 0.0 {
        j["cdi_scratch_mib"] = json!(scratch_mib);
    }
    let mut ratios = serde_json::Map::new();
    for t in &tools {
        if t.name != "ido" {
            let r = c.ratio("ido", t.name);
            println!("  ido / {:<8} {r:.2}", t.name);
            ratios.insert(t.name.to_string(), json!(r));
        }
    }
    println!(
        "  ido: CPU median {:.2} s, peak RSS median {:.1} MiB (max {:.1})",
        med(&c, "ido", cpu),
        med(&c, "ido", rss_mib),
        max_rss(&c, "ido")
    );
    j["ido_over"] = Value::Object(ratios);
    Ok((c, j))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A sink for the upload case's limit: takes each request's body (`Content-Length`, after
/// `100 Continue` when asked) and answers 200, on a thread of its own.
fn start_sink() -> anyhow::Result<u16> {
    use std::io::{BufRead, BufReader, Read};
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut w = match conn.try_clone() {
                Ok(w) => w,
                Err(_) => continue,
            };
            let mut r = BufReader::with_capacity(1 << 20, conn);
            let (mut len, mut expect) = (0u64, false);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                expect |= lower.starts_with("expect:") && lower.contains("100-continue");
            }
            if expect {
                let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            let _ = std::io::copy(&mut r.by_ref().take(len), &mut std::io::sink());
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    Ok(port)
}

/// The upload case's server key, token header and ports, under `work`.
fn upload_setup(a: &Args, work: &Path) -> anyhow::Result<UploadSetup> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let key = work.join("upload.key");
    ido_testkit::write_private(&key, hex::encode(bytes).as_bytes())?;
    let out = std::process::Command::new(&a.ido)
        .args([
            "upload-token",
            "--ttl",
            "1h",
            "--disk-import",
            "bench/disk",
            "--key-file",
        ])
        .arg(&key)
        .output()?;
    ensure!(
        out.status.success(),
        "ido upload-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = work.join("upload.header");
    let token = String::from_utf8(out.stdout)?;
    ido_testkit::write_private(
        &header,
        format!("Authorization: Bearer {}\n", token.trim()).as_bytes(),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(UploadSetup {
        port,
        key,
        header,
        sink: start_sink()?,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut a = args()?;
    ensure!(
        a.ido.is_file(),
        "{} not found (cargo build --release -p ido)",
        a.ido.display()
    );
    let load_start = loadavg();
    let qemu_version = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.lines().next().unwrap_or_default().to_string()
        })
        .unwrap_or_default();
    println!(
        "ido-bench-disk: {} run(s); {} cores; {qemu_version}; load average at start: {load_start}",
        a.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    let fixtures_dir = a.dir.join("fixtures");
    let params = fixtures::Params {
        virtual_mib: a.virtual_mib(),
        data_mib: a.data_mib,
        xz_mib: a.xz_mib,
        large_virtual_mib: a.large_virtual_mib,
        large_data_mib: a.large_data_mib(),
    };
    fixtures::make(&fixtures_dir, &params, &a.cases)?;
    if a.fixtures_only {
        return Ok(());
    }
    let work = a.dir.join("out");
    std::fs::create_dir_all(&work)?;
    let nginx = Nginx::start(&fixtures_dir).await?;
    let load_bench = loadavg();
    println!("load average after the fixtures: {load_bench}");

    let mut all = serde_json::Map::new();
    let mut groups: Vec<plot::Group> = vec![];
    let mut rss_bars: Vec<(String, f64)> = vec![];
    // Markdown rows for the summary: medians, then the per-run walls.
    let mut table: Vec<String> = vec![];
    let mut goals: Vec<String> = vec![];
    for (case, file, _, _, label) in FILE_CASES {
        if !a.cases.iter().any(|c| c == case) {
            continue;
        }
        let p = fixtures_dir.join(file);
        let reference = work.join("qemu-img.raw");
        let (c, mut j) = bench_case(&a, case, path(&p)?, &p, &reference, &work).await?;
        let (ido, qemu) = (med(&c, "ido", |s| s.wall), med(&c, "qemu-img", |s| s.wall));
        let ratio = c.ratio("ido", "qemu-img");
        let mib = file_mib(&p);
        j["file_mib"] = json!(mib);
        j["file_allocated_mib"] = json!(used_mib(&p));
        table.push(format!(
            "| {label} | {mib:.0} MiB ({:.0} MiB allocated) | {ido:.2} s | {qemu:.2} s | {ratio:.2} | {:.2} s | {:.2} s | {:.1} MiB | {:.1} MiB |",
            used_mib(&p),
            med(&c, "ido", cpu),
            med(&c, "qemu-img", cpu),
            med(&c, "ido", rss_mib),
            med(&c, "qemu-img", rss_mib),
        ));
        let walls = |t: &str| walls(&c, t);
        table.push(format!(
            "    per run: ido {}, qemu-img {}",
            walls("ido"),
            walls("qemu-img")
        ));
        match case {
            "vhdx" => goals.push(format!(
                "vhdx at least as fast as qemu-img (ido/qemu-img ≤ 1): {ratio:.2} — {}",
                if ratio <= 1.0 { "met" } else { "NOT met" }
            )),
            "qcow2" | "vmdk-stream" | "vmdk-sparse" => goals.push(format!(
                "{label} keeps its lead over qemu-img (< 1): {ratio:.2} — {}",
                if ratio < 1.0 { "met" } else { "NOT met" }
            )),
            _ => {}
        }
        groups.push(plot::group(
            &format!("{label}, {mib:.0} MiB file: wall (s); ido / qemu-img {ratio:.2}"),
            &[("ido import", ido), ("qemu-img convert", qemu)],
        ));
        rss_bars.push((label.to_string(), med(&c, "ido", rss_mib)));
        all.insert(case.to_string(), j);
        rss_goal(&mut goals, label, &c);
    }
    let mut clone_table: Vec<String> = vec![];
    let cp_version = std::process::Command::new("cp")
        .arg("--version")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.lines().next().unwrap_or_default().to_string()
        })
        .unwrap_or_default();
    if a.cases.iter().any(|c| c == CLONE_CASE) {
        println!("clone: against {cp_version}");
        let mut j = serde_json::Map::new();
        // ido's peak RSS per volume: (label, highest, median).
        let mut rss: Vec<(String, f64, f64)> = vec![];
        for file in ["image.raw", LARGE_RAW] {
            let p = fixtures_dir.join(file);
            let (c, mut cj) = bench_case(&a, CLONE_CASE, path(&p)?, &p, &p, &work).await?;
            let (gib, src) = (file_mib(&p) / 1024.0, used_mib(&p));
            let label = format!("clone {gib:.0} GiB");
            let (ido, cp) = (med(&c, "ido", |s| s.wall), med(&c, "cp", |s| s.wall));
            let ratio = c.ratio("ido", "cp");
            let out = |t: &str| cj["output_used_mib"][t].as_f64().unwrap_or(f64::NAN);
            let (ido_used, cp_used) = (out("ido"), out("cp"));
            clone_table.push(format!(
                "| {gib:.0} GiB ({src:.0} MiB allocated) | {ido:.2} s | {cp:.2} s | {ratio:.2} | {:.2} s | {:.2} s | {:.1} MiB | {:.1} MiB | {ido_used:.0} MiB | {cp_used:.0} MiB |",
                med(&c, "ido", cpu),
                med(&c, "cp", cpu),
                med(&c, "ido", rss_mib),
                med(&c, "cp", rss_mib),
            ));
            let walls = |t: &str| walls(&c, t);
            clone_table.push(format!(
                "    per run: ido {}, cp {}; ido peak RSS {}",
                walls("ido"),
                walls("cp"),
                c.tools
                    .iter()
                    .find(|(t, _)| *t == "ido")
                    .map(|(_, v)| v.iter().map(|s| format!("{:.1}", rss_mib(s))).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .join(" ")
            ));
            // The holes stay holes: neither copy allocates more than the volume.
            let sparse = |m: f64| m <= src + SPARSE_SLACK_MIB;
            goals.push(format!(
                "{label}: both copies equal the volume (cmp) and allocate no more than it ({src:.0} MiB + {SPARSE_SLACK_MIB:.0}): ido {ido_used:.0} MiB, cp {cp_used:.0} MiB — {}",
                if sparse(ido_used) && sparse(cp_used) {
                    "met"
                } else {
                    "NOT met"
                }
            ));
            groups.push(plot::group(
                &format!(
                    "clone of a {gib:.0} GiB sparse raw ({src:.0} MiB of data): wall (s); ido / cp {ratio:.2}"
                ),
                &[("ido import --format raw", ido), ("cp --sparse=always", cp)],
            ));
            rss_bars.push((label.clone(), med(&c, "ido", rss_mib)));
            rss_goal(&mut goals, &label, &c);
            rss.push((label, max_rss(&c, "ido"), med(&c, "ido", rss_mib)));
            cj["volume_mib"] = json!(file_mib(&p));
            cj["volume_allocated_mib"] = json!(src);
            j.insert(file.to_string(), cj);
        }
        // Memory flat: the larger volume's copy peaks where the smaller one's does.
        let highs: Vec<f64> = rss.iter().map(|r| r.1).collect();
        let spread =
            highs.iter().cloned().fold(f64::MIN, f64::max) - highs.iter().cloned().fold(f64::MAX, f64::min);
        let each: Vec<String> = rss
            .iter()
            .map(|(l, max, med)| format!("{l} {max:.1} (median {med:.1})"))
            .collect();
        goals.push(format!(
            "clone: ido peak RSS flat in the volume's size (within {FLAT_RSS_MIB:.0} MiB): {}; spread {spread:.1} MiB — {}",
            each.join(", "),
            if spread <= FLAT_RSS_MIB { "met" } else { "NOT met" }
        ));
        j.insert("cp".into(), json!(cp_version));
        all.insert(CLONE_CASE.into(), Value::Object(j));
    }
    for (case, file, label) in HTTP_CASES {
        if !a.cases.iter().any(|c| c == case) {
            continue;
        }
        let (c, j) = bench_case(
            &a,
            case,
            &nginx.url(file),
            &fixtures_dir.join(file),
            &work.join("cdi.raw"),
            &work,
        )
        .await?;
        let names: Vec<&str> = c.tools.iter().map(|(t, _)| *t).collect();
        let bars: Vec<(&str, f64)> = names
            .iter()
            .map(|t| {
                let l = match *t {
                    "ido" => "ido import URL",
                    "ido-256Mi" => "ido import URL --xz-memory 256Mi",
                    "cdi" => "CDI's path",
                    "nbdkit" => "nbdkit + qemu-img",
                    "xz-T1" => "xz -dc -T1",
                    _ => "limit (curl)",
                };
                (l, med(&c, t, |s| s.wall))
            })
            .collect();
        groups.push(plot::group(
            &format!("{label}, {:.0} MiB: wall (s)", file_mib(&fixtures_dir.join(file))),
            &bars,
        ));
        rss_bars.push((label.to_string(), med(&c, "ido", rss_mib)));
        let tools: Vec<String> = names
            .iter()
            .map(|t| {
                let w: Vec<String> = c.walls(t).iter().map(|w| format!("{w:.2}")).collect();
                format!("{t} {:.2} s ({})", med(&c, t, |s| s.wall), w.join(" "))
            })
            .collect();
        let ratios: Vec<String> = names
            .iter()
            .filter(|t| **t != "ido")
            .map(|t| format!("ido / {t} {:.2}", c.ratio("ido", t)))
            .collect();
        let mut line = format!(
            "{label}: {}; {}; ido CPU {:.2} s, peak RSS {:.1} MiB",
            tools.join(", "),
            ratios.join(", "),
            med(&c, "ido", cpu),
            med(&c, "ido", rss_mib)
        );
        if names.contains(&"ido-256Mi") {
            line += &format!(
                "; ido-256Mi / cdi {:.2}, ido-256Mi CPU {:.2} s, peak RSS {:.1} MiB",
                c.ratio("ido-256Mi", "cdi"),
                med(&c, "ido-256Mi", cpu),
                med(&c, "ido-256Mi", rss_mib)
            );
        }
        table.push(line);
        all.insert(case.to_string(), j);
        rss_goal(&mut goals, label, &c);
    }

    if a.cases.iter().any(|c| c == UPLOAD_CASE) {
        a.upload = Some(upload_setup(&a, &work)?);
        let p = fixtures_dir.join("image.qcow2");
        // qemu-img's conversion of the same qcow2, for cmp (untimed).
        let reference = work.join("upload-reference.raw");
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&p)
            .arg(&reference)
            .status()?;
        ensure!(st.success(), "qemu-img convert of {}", p.display());
        let (c, j) = bench_case(&a, UPLOAD_CASE, path(&p)?, &p, &reference, &work).await?;
        let _ = std::fs::remove_file(&reference);
        let mib = file_mib(&p);
        let (ido, limit) = (med(&c, "ido", |s| s.wall), med(&c, "limit", |s| s.wall));
        let ratio = c.ratio("ido", "limit");
        let label = "upload of a qcow2";
        groups.push(plot::group(
            &format!("{label} ({mib:.0} MiB) over loopback: wall (s); ido / limit {ratio:.2}"),
            &[("curl → ido upload-server", ido), ("limit: curl → sink", limit)],
        ));
        rss_bars.push((label.to_string(), med(&c, "ido", rss_mib)));
        let walls = |t: &str| walls(&c, t);
        table.push(format!(
            "{label} ({mib:.0} MiB, converted to raw): ido {ido:.2} s ({}), limit {limit:.2} s ({}); ido / limit {ratio:.2}; ido CPU {:.2} s (curl + upload-server), peak RSS {:.1} MiB",
            walls("ido"),
            walls("limit"),
            med(&c, "ido", cpu),
            med(&c, "ido", rss_mib)
        ));
        all.insert(UPLOAD_CASE.to_string(), j);
        rss_goal(&mut goals, label, &c);
    }

    println!("\nsummary (medians of {} runs)", a.runs);
    if !table.is_empty() {
        println!(
            "| format | image | ido | qemu-img | ido / qemu-img | ido CPU | qemu-img CPU | ido peak RSS | qemu-img peak RSS |"
        );
        for l in &table {
            println!("{l}");
        }
    }
    if !clone_table.is_empty() {
        println!(
            "| clone of | ido | cp | ido / cp | ido CPU | cp CPU | ido peak RSS | cp peak RSS | ido's copy allocated | cp's copy allocated |"
        );
        for l in &clone_table {
            println!("{l}");
        }
    }
    println!("goals:");
    for g in &goals {
        println!("  {g}");
    }
    if let Some(svg) = &a.svg {
        let mut bars: Vec<(&str, f64)> = rss_bars.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        let goal = format!("goal: {RSS_GOAL_MIB:.0} MiB");
        bars.push((&goal, RSS_GOAL_MIB));
        groups.push(plot::group(
            &format!("ido import: peak RSS (MiB), against the {RSS_GOAL_MIB:.0} MiB goal"),
            &bars,
        ));
        let title = if a.cases.iter().all(|c| c == UPLOAD_CASE) {
            format!(
                "Upload: curl into ido upload-server vs curl into a sink (median of {} runs)",
                a.runs
            )
        } else if a.cases.iter().all(|c| c == CLONE_CASE) {
            format!(
                "Clone: ido import --format raw vs cp --sparse=always (coreutils {}), median of {} runs",
                cp_version.split_whitespace().last().unwrap_or_default(),
                a.runs
            )
        } else {
            format!(
                "Disk images: ido import vs qemu-img {} (median of {} runs)",
                qemu_version.split_whitespace().nth(2).unwrap_or_default(),
                a.runs
            )
        };
        std::fs::write(svg, plot::bars_svg(&title, "", &groups))
            .with_context(|| format!("writing {}", svg.display()))?;
        println!("plot: {}", svg.display());
    }
    all.insert("runs".into(), json!(a.runs));
    all.insert("qemu_img".into(), json!(qemu_version));
    all.insert("data_mib".into(), json!(a.data_mib));
    all.insert("virtual_mib".into(), json!(a.virtual_mib()));
    all.insert("large_virtual_mib".into(), json!(a.large_virtual_mib));
    all.insert("large_data_mib".into(), json!(a.large_data_mib()));
    all.insert("load_at_start".into(), json!(load_start));
    all.insert("load_after_fixtures".into(), json!(load_bench));
    all.insert("goals".into(), json!(goals));
    let line = Value::Object(all).to_string();
    std::io::stdout().write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}

/// Records whether `ido`'s peak RSS stayed within the goal in every run of `c`.
fn rss_goal(goals: &mut Vec<String>, label: &str, c: &Case) {
    let max = max_rss(c, "ido");
    goals.push(format!(
        "{label}: ido peak RSS ≤ {RSS_GOAL_MIB:.0} MiB in every run: max {max:.1} MiB — {}",
        if max <= RSS_GOAL_MIB { "met" } else { "NOT met" }
    ));
}
