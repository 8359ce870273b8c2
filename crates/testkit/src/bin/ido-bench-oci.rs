//! The container-image benchmark: ido against skopeo 1.9.3 on loopback
//! `docker-registry` instances, in one run, with a fresh destination registry (fresh data
//! directory) for every timed copy.
//!
//! ```text
//! ido-bench-oci --ido target/release/ido --copy-many target/release/examples/copy_many \
//!               [--runs 3] [--cases a,b,c] [--layers 8] [--layer-mib 64] [--images 50] \
//!               [--changed 0] [--limit-parallel 4,6] [--dir target/bench-oci] \
//!               [--svg docs/bench-oci.svg]
//! ```
//!
//! skopeo always runs with `--preserve-digests` (as the anchor's Jobs do): without it, it
//! compresses uncompressed layers on the way, which is slower and changes the digests.
//!
//! - (a) cold copy of a 2-platform index, `--layers` × `--layer-mib` MiB of incompressible
//!   bytes per platform: `ido copy --all` vs `skopeo copy --all` vs the limit, the
//!   destination registry's own ingest rate for the same blobs (`curl` monolithic uploads,
//!   `POST …/blobs/uploads/` then `PUT <location>&digest=…` with `--data-binary @file`,
//!   N at a time, for each N of `--limit-parallel`, each into a fresh registry; the limit
//!   is the fastest).
//! - (b) re-sync of a repository of `--images` small tags of which `--changed` changed at the
//!   source since the last sync: `ido sync` of a Recurrent ImageSync with its state
//!   directory (the product's re-sync: lists the tags, checks each, copies what changed) vs
//!   `skopeo sync --all`. Not timed: the source and the destination are brought to the
//!   previous state with `skopeo sync`, ido's state by an `ido sync` of that state, then the
//!   changed tags are pushed to the source.
//! - (c) `--images` small images in separate repositories: `copy_many pairs` (one process)
//!   vs one `skopeo copy --all` per image, one after another.
//!
//! Every timed process runs under `/usr/bin/time -f %M` (peak RSS). The tools' order
//! alternates between runs. Each copy is checked afterwards with `skopeo inspect --raw`.
//! The last line is JSON with every figure.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use ido_testkit::{
    bench::{Case, Sample, cpu_seconds, median, order, strings, timed},
    oci_image::{Layout, build_layout, push_layout},
    plot,
    registry::{DockerRegistry, skopeo, skopeo_raw},
};
use serde_json::{Value, json};

struct Args {
    ido: PathBuf,
    copy_many: PathBuf,
    runs: usize,
    cases: Vec<char>,
    layers: usize,
    layer_mib: u64,
    images: usize,
    changed: usize,
    limit_parallel: Vec<usize>,
    dir: PathBuf,
    svg: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let root = ido_testkit::workspace_root();
    let mut a = Args {
        ido: root.join("target/release/ido"),
        copy_many: root.join("target/release/examples/copy_many"),
        runs: 3,
        cases: vec!['a', 'b', 'c'],
        layers: 8,
        layer_mib: 64,
        images: 50,
        changed: 0,
        limit_parallel: vec![4, 6],
        dir: root.join("target/bench-oci"),
        svg: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ido" => a.ido = val()?.into(),
            "--copy-many" => a.copy_many = val()?.into(),
            "--runs" => a.runs = val()?.parse().context("--runs")?,
            "--cases" => a.cases = val()?.split(',').filter_map(|c| c.chars().next()).collect(),
            "--layers" => a.layers = val()?.parse().context("--layers")?,
            "--layer-mib" => a.layer_mib = val()?.parse().context("--layer-mib")?,
            "--images" => a.images = val()?.parse().context("--images")?,
            "--changed" => a.changed = val()?.parse().context("--changed")?,
            "--limit-parallel" => {
                a.limit_parallel = val()?
                    .split(',')
                    .map(|n| n.parse().context("--limit-parallel: numbers, e.g. 4,6"))
                    .collect::<anyhow::Result<_>>()?
            }
            "--dir" => a.dir = val()?.into(),
            "--svg" => a.svg = Some(val()?.into()),
            other => bail!("unknown argument {other:?} (see the source's doc comment)"),
        }
    }
    ensure!(a.runs > 0 && a.changed <= a.images, "bad --runs/--changed");
    Ok(a)
}

/// `skopeo sync` of a docker repository, digests preserved (no layer recompression).
const SYNC: [&str; 7] = [
    "sync",
    "--all",
    "--preserve-digests",
    "--src",
    "docker",
    "--dest",
    "docker",
];

const PLAIN: [&str; 2] = ["--src-tls-verify=false", "--dest-tls-verify=false"];

async fn fresh_registry() -> anyhow::Result<DockerRegistry> {
    DockerRegistry::start(Default::default()).await
}

/// Layer and config blobs of every image in `layout` (what a copy uploads), as files.
fn layout_blobs(layout: &Layout) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let path = |d: &str| {
        layout
            .dir
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let mut out = vec![];
    for (_, m) in &layout.images {
        let manifest: Value = serde_json::from_slice(&std::fs::read(path(m))?)?;
        let config = manifest["config"]["digest"].as_str().context("config digest")?;
        out.push((config.to_string(), path(config)));
        for l in manifest["layers"].as_array().context("layers")? {
            let d = l["digest"].as_str().context("layer digest")?;
            out.push((d.to_string(), path(d)));
        }
    }
    Ok(out)
}

/// The limit: `curl` uploads of `blobs` into `repo` on `reg`, `parallel` at a time, each a
/// monolithic upload (POST, then PUT of the whole file with the digest).
async fn curl_ingest(
    reg: &DockerRegistry,
    repo: &str,
    blobs: &[(String, PathBuf)],
    parallel: usize,
) -> anyhow::Result<Sample> {
    const SCRIPT: &str = r#"set -e
loc=$(curl -sSf -o /dev/null -D - -X POST "$1/v2/$2/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
case $loc in /*) loc="$1$loc";; esac
curl -sSf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$3" "$loc&digest=$4""#;
    let base = reg.base_url();
    let started = Instant::now();
    stream::iter(blobs)
        .map(|(digest, file)| {
            let base = base.clone();
            async move {
                let out = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(SCRIPT)
                    .arg("sh")
                    .arg(&base)
                    .arg(repo)
                    .arg(file)
                    .arg(digest)
                    .output()
                    .await?;
                ensure!(
                    out.status.success(),
                    "curl upload of {digest}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(())
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let wall = started.elapsed().as_secs_f64();
    // Every blob is really there.
    let client = reqwest::Client::new();
    for (digest, _) in blobs {
        let r = client
            .head(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await?;
        ensure!(
            r.status().is_success(),
            "blob {digest} missing after the curl upload"
        );
    }
    Ok(Sample {
        wall,
        ..Sample::default()
    })
}

async fn digest_at(reg: &DockerRegistry, reference: &str, scratch: &Path) -> anyhow::Result<String> {
    Ok(skopeo_raw(reg, reference, scratch).await?.1)
}

async fn case_a(a: &Args, scratch: &Path) -> anyhow::Result<Case> {
    println!(
        "\n(a) cold copy: 2 platforms × {} layers × {} MiB (incompressible), `--all`",
        a.layers, a.layer_mib
    );
    let t = Instant::now();
    let layout = build_layout(
        &a.dir.join("a-layout"),
        "1.0",
        &["linux/amd64", "linux/arm64"],
        a.layers,
        a.layer_mib << 20,
        42,
    )
    .await?;
    let src = fresh_registry().await?;
    push_layout(&layout, &src, "big:1.0").await?;
    let want = digest_at(&src, "big:1.0", scratch).await?;
    let blobs = layout_blobs(&layout)?;
    println!(
        "  set-up: {} bytes of layers, {} blobs, pushed in {:.1} s; source {}",
        layout.layer_bytes,
        blobs.len(),
        t.elapsed().as_secs_f64(),
        src.host()
    );
    let src_ref = format!("docker://{}/big:1.0", src.host());
    let mut case = Case::default();
    for run in 0..a.runs {
        println!("  run {}", run + 1);
        for tool in order(&["ido", "skopeo", "limit"], run) {
            if tool == "limit" {
                // The registry's best: the fastest of the parallelisms, each into a fresh
                // registry.
                let mut best: Option<Sample> = None;
                for &p in &a.limit_parallel {
                    let fresh = fresh_registry().await?;
                    let c0 = cpu_seconds(fresh.pid())?;
                    let mut s = curl_ingest(&fresh, "big", &blobs, p).await?;
                    s.cpu = vec![("destination registry", cpu_seconds(fresh.pid())? - c0)];
                    println!("    (curl, {p} in parallel: {:.2} s)", s.wall);
                    if best.as_ref().is_none_or(|b| s.wall < b.wall) {
                        best = Some(s);
                    }
                }
                case.push(tool, best.context("--limit-parallel is empty")?);
                continue;
            }
            let dst = fresh_registry().await?;
            let mut args = if tool == "ido" {
                strings(&["copy", "--all"])
            } else {
                strings(&["copy", "--all", "--preserve-digests", "-q"])
            };
            args.extend(strings(&PLAIN));
            args.extend([src_ref.clone(), format!("docker://{}/big:1.0", dst.host())]);
            let program = if tool == "ido" {
                a.ido.as_path()
            } else {
                Path::new("skopeo")
            };
            let (d0, s0) = (cpu_seconds(dst.pid())?, cpu_seconds(src.pid())?);
            let mut sample = timed(program, &args).await?.0;
            let copier = sample.cpu.first().map(|c| c.1).unwrap_or_default();
            sample.cpu = vec![
                ("destination registry", cpu_seconds(dst.pid())? - d0),
                ("source registry", cpu_seconds(src.pid())? - s0),
                (if tool == "ido" { "ido" } else { "skopeo" }, copier),
            ];
            let got = digest_at(&dst, "big:1.0", scratch).await?;
            ensure!(got == want, "{tool}: destination has {got}, source {want}");
            case.push(tool, sample);
        }
    }
    std::fs::remove_dir_all(&layout.dir).ok();
    Ok(case)
}

/// Small single-platform layouts: `(tag, layout)` for `n` images from `seed`.
async fn small_layouts(dir: &Path, n: usize, seed: u64) -> anyhow::Result<Vec<Layout>> {
    stream::iter(0..n)
        .map(|i| {
            let d = dir.join(format!("{seed}-{i}"));
            async move {
                build_layout(
                    &d,
                    &format!("t{i:02}"),
                    &["linux/amd64"],
                    2,
                    256 << 10,
                    seed + i as u64,
                )
                .await
            }
        })
        .buffered(4)
        .try_collect()
        .await
}

/// Pushes `(layout, repo:tag)` pairs with skopeo, 4 at a time.
async fn push_all(reg: &DockerRegistry, items: Vec<(&Layout, String)>) -> anyhow::Result<()> {
    stream::iter(items)
        .map(|(l, r)| async move { push_layout(l, reg, &r).await })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn changed_index(i: usize, a: &Args) -> bool {
    // Spread the changed tags over the repository.
    let step = (a.images / a.changed.max(1)).max(1);
    a.changed > 0 && i.is_multiple_of(step) && i / step < a.changed
}

/// The ImageSync `ido sync` re-syncs in (b): every `t<N>` tag of `src/app` to `dst/mirror/app`,
/// checked again at each pass (Recurrent), 8 tags at once.
fn resync_manifest(src: &DockerRegistry, dst: &DockerRegistry) -> String {
    format!(
        "apiVersion: ido.dev/v1alpha1\nkind: ImageSync\nmetadata: {{name: app}}\nspec:\n  mode: Recurrent\n  frequency: 1h\n  maxTags: 1000\n  concurrency: 8\n  source: {{name: {}/app, version: 'regex:^t[0-9]+$', tlsVerify: false}}\n  destination: {{name: {}/mirror/app, tlsVerify: false}}\n",
        src.host(),
        dst.host()
    )
}

async fn case_b(a: &Args, scratch: &Path, prev: &DockerRegistry) -> anyhow::Result<Case> {
    println!(
        "\n(b) re-sync of {} small tags, {} changed at the source",
        a.images, a.changed
    );
    let newer = small_layouts(&a.dir.join("b-new"), a.images, 7000).await?;
    let mut case = Case::default();
    for run in 0..a.runs {
        println!("  run {}", run + 1);
        for tool in order(&["ido", "skopeo"], run) {
            // The previous state (not timed): the source and the destination as the last
            // sync left them, and for ido the ImageSync's status from that sync.
            let (src, dst) = (fresh_registry().await?, fresh_registry().await?);
            // (skopeo sync puts REPO under the destination given: src/app, dst/mirror/app.)
            for to in [src.host().to_string(), format!("{}/mirror", dst.host())] {
                let mut pre = strings(&SYNC);
                pre.extend(strings(&PLAIN));
                pre.extend([format!("{}/app", prev.host()), to]);
                skopeo(&pre).await?;
            }
            let state = a.dir.join(format!("b-state-{run}"));
            let manifest = a.dir.join("b-imagesync.yaml");
            std::fs::write(&manifest, resync_manifest(&src, &dst))?;
            let ido_args: Vec<String> = vec![
                "sync".into(),
                "-f".into(),
                manifest.display().to_string(),
                "--state".into(),
                state.display().to_string(),
            ];
            if tool == "ido" {
                timed(&a.ido, &ido_args).await?;
            }
            // What changed at the source since.
            let changed = (0..a.images)
                .filter(|&i| changed_index(i, a))
                .map(|i| (&newer[i], format!("app:t{i:02}")))
                .collect();
            push_all(&src, changed).await?;
            let sample = if tool == "ido" {
                let (s, out) = timed(&a.ido, &ido_args).await?;
                let copied = out.lines().filter(|l| l.contains(" Copied ")).count();
                let unchanged = out.lines().filter(|l| l.contains(" Unchanged ")).count();
                ensure!(
                    (copied, unchanged) == (a.changed, a.images - a.changed),
                    "ido sync: expected {} copied and {} unchanged:\n{out}",
                    a.changed,
                    a.images - a.changed
                );
                s
            } else {
                let mut args = strings(&SYNC);
                args.extend(strings(&PLAIN));
                args.extend([format!("{}/app", src.host()), format!("{}/mirror", dst.host())]);
                timed(Path::new("skopeo"), &args).await?.0
            };
            for i in [0, 1, a.images - 1] {
                let (s, d) = (format!("app:t{i:02}"), format!("mirror/app:t{i:02}"));
                let (want, got) = (
                    digest_at(&src, &s, scratch).await?,
                    digest_at(&dst, &d, scratch).await?,
                );
                ensure!(want == got, "{tool}: {d} is {got}, source {want}");
            }
            case.push(tool, sample);
        }
    }
    Ok(case)
}

async fn case_c(a: &Args, scratch: &Path, prev: &DockerRegistry) -> anyhow::Result<Case> {
    println!("\n(c) {} small images in separate repositories", a.images);
    let mut case = Case::default();
    let src = |i: usize| format!("docker://{}/img{i:02}:1.0", prev.host());
    for run in 0..a.runs {
        println!("  run {}", run + 1);
        for tool in order(&["ido", "skopeo"], run) {
            let dst = fresh_registry().await?;
            let dst_of = |i: usize| format!("docker://{}/img{i:02}:1.0", dst.host());
            let sample = if tool == "ido" {
                let mut args = strings(&["--all"]);
                args.extend(strings(&PLAIN));
                args.push("pairs".into());
                for i in 0..a.images {
                    args.extend([src(i), dst_of(i)]);
                }
                timed(&a.copy_many, &args).await?.0
            } else {
                let started = Instant::now();
                let mut rss = 0;
                for i in 0..a.images {
                    let mut args = strings(&["copy", "--all", "--preserve-digests", "-q"]);
                    args.extend(strings(&PLAIN));
                    args.extend([src(i), dst_of(i)]);
                    rss = rss.max(timed(Path::new("skopeo"), &args).await?.0.rss_kib);
                }
                Sample {
                    wall: started.elapsed().as_secs_f64(),
                    rss_kib: rss,
                    ..Sample::default()
                }
            };
            for i in [0, a.images - 1] {
                let r = format!("img{i:02}:1.0");
                let (want, got) = (
                    digest_at(prev, &r, scratch).await?,
                    digest_at(&dst, &r, scratch).await?,
                );
                ensure!(want == got, "{tool}: {r} is {got}, source {want}");
            }
            case.push(tool, sample);
        }
    }
    Ok(case)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    for p in [&a.ido, &a.copy_many] {
        ensure!(
            p.is_file(),
            "{} is missing: run scripts/bench-oci.sh (it builds it)",
            p.display()
        );
    }
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("cleaning {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let scratch = a.dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let version = String::from_utf8_lossy(&skopeo(&strings(&["--version"])).await?)
        .trim()
        .to_string();
    println!(
        "ido-bench-oci: {version}; {} run(s); {} cores; loadavg {}",
        a.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut report = serde_json::Map::new();
    let mut groups: Vec<plot::Group> = vec![];
    report.insert("skopeo".into(), json!(version));
    report.insert("runs".into(), json!(a.runs));

    if a.cases.contains(&'a') {
        let c = case_a(&a, &scratch).await?;
        let (ido, sk, lim) = (
            median(&c.walls("ido")),
            median(&c.walls("skopeo")),
            median(&c.walls("limit")),
        );
        println!(
            "  medians: ido {ido:.2} s, skopeo {sk:.2} s, limit {lim:.2} s; ido/skopeo {:.2}, ido/limit {:.2}",
            c.ratio("ido", "skopeo"),
            c.ratio("ido", "limit")
        );
        let mut j = c.json();
        j["ido_over_skopeo"] = json!(c.ratio("ido", "skopeo"));
        j["ido_over_limit"] = json!(c.ratio("ido", "limit"));
        j["skopeo_over_limit"] = json!(c.ratio("skopeo", "limit"));
        report.insert("a".into(), j);
        groups.push(plot::group(
            &format!(
                "(a) cold copy, {} MiB, 2 platforms: wall (s)",
                2 * a.layers as u64 * a.layer_mib
            ),
            &[
                ("ido copy", ido),
                ("skopeo copy", sk),
                ("limit (curl ingest)", lim),
            ],
        ));
        let cpu = |tool: &str, name: &str| {
            let v: Vec<f64> = c
                .tools
                .iter()
                .filter(|(t, _)| *t == tool)
                .flat_map(|(_, s)| {
                    s.iter()
                        .filter_map(|s| s.cpu.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
                })
                .collect();
            median(&v)
        };
        groups.push(plot::group(
            "(a) CPU (s): destination registry / source registry / copier",
            &[
                ("ido: dst registry", cpu("ido", "destination registry")),
                ("ido: src registry", cpu("ido", "source registry")),
                ("ido: ido", cpu("ido", "ido")),
                ("skopeo: dst registry", cpu("skopeo", "destination registry")),
                ("skopeo: src registry", cpu("skopeo", "source registry")),
                ("skopeo: skopeo", cpu("skopeo", "skopeo")),
                ("limit: dst registry", cpu("limit", "destination registry")),
            ],
        ));
    }
    if a.cases.contains(&'b') || a.cases.contains(&'c') {
        let t = Instant::now();
        let old = small_layouts(&a.dir.join("small-old"), a.images, 5000).await?;
        let prev = fresh_registry().await?;
        let mut items: Vec<(&Layout, String)> = vec![];
        for (i, l) in old.iter().enumerate() {
            if a.cases.contains(&'b') {
                items.push((l, format!("app:t{i:02}")));
            }
            if a.cases.contains(&'c') {
                items.push((l, format!("img{i:02}:1.0")));
            }
        }
        push_all(&prev, items).await?;
        println!(
            "\nsmall images: {} × (2 layers × 256 KiB + config), pushed in {:.1} s",
            a.images,
            t.elapsed().as_secs_f64()
        );
        for (name, case) in [('b', "b"), ('c', "c")] {
            if !a.cases.contains(&name) {
                continue;
            }
            let c = if name == 'b' {
                case_b(&a, &scratch, &prev).await?
            } else {
                case_c(&a, &scratch, &prev).await?
            };
            println!(
                "  medians: ido {:.2} s, skopeo {:.2} s; ido/skopeo {:.3}",
                median(&c.walls("ido")),
                median(&c.walls("skopeo")),
                c.ratio("ido", "skopeo")
            );
            let mut j = c.json();
            j["ido_over_skopeo"] = json!(c.ratio("ido", "skopeo"));
            report.insert(case.into(), j);
            let title = if name == 'b' {
                format!("(b) re-sync, {} tags, {} changed: wall (s)", a.images, a.changed)
            } else {
                format!("(c) {} images, {} repositories: wall (s)", a.images, a.images)
            };
            let ido_label = if name == 'b' {
                "ido sync"
            } else {
                "ido (copy_many)"
            };
            let sk_label = if name == 'b' {
                "skopeo sync"
            } else {
                "skopeo copy, each"
            };
            groups.push(plot::group(
                &title,
                &[
                    (ido_label, median(&c.walls("ido"))),
                    (sk_label, median(&c.walls("skopeo"))),
                ],
            ));
        }
    }
    if let Some(svg) = &a.svg {
        let title = format!(
            "Container image copies, ido vs skopeo 1.9.3 (median of {} runs)",
            a.runs
        );
        std::fs::write(svg, plot::bars_svg(&title, "", &groups))
            .with_context(|| format!("writing {}", svg.display()))?;
        println!("plot: {}", svg.display());
    }
    println!("{}", Value::Object(report));
    Ok(())
}
