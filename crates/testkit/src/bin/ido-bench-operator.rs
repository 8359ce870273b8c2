//! The operator at scale on a real API server: 1000 Releases sharing
//! 100 node images whose templates already exist.
//!
//! Set-up (not timed): SeaweedFS, the vCenter simulator; one small OVA published for each
//! of the 100 images; `ido run --once` of one Release per image makes the 100 templates in
//! the simulator (so they exist, made and marked by ido, before the operator starts). Then
//! per run: a fresh control plane (the test kit's `Cluster`: etcd, kube-apiserver,
//! kube-controller-manager), the CRDs, and 1000 Releases (10 per image) created through the
//! API; then the release build's `ido operator` starts (admin kubeconfig, leader election on
//! a Lease, `/metrics` on plain HTTP) and the clock runs until every NodeImage exists, is
//! `Available` and lists its 10 releases (a list of NodeImages every 100 ms).
//!
//! Measured per run: seconds from the operator's start to convergence, its peak RSS
//! (`VmHWM` of `/proc/PID/status`, read at convergence) and the API requests it sent
//! (`rest_client_requests_total` from its `/metrics`, at convergence), per converged object
//! (1000 Releases + 100 NodeImages). Runs alternate between the default concurrency (4
//! NodeImage and 4 Release workers) and one worker each (`concurrency.images: 1`,
//! `concurrency.releases: 1`, as the original's `MaxConcurrentReconciles` of 1).
//!
//! ```text
//! ido-bench-operator --ido target/release/ido [--runs 2] [--images 100] [--per-image 10]
//!     [--dir target/bench-operator] [--svg docs/bench-operator.svg]
//! ```
//! The last line is JSON with every sample.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use ido_testkit::{
    Cluster,
    bench::median,
    oracle::oracle_list_vms,
    ova::OvaFixture,
    plot,
    seaweed::{PUBLIC_BUCKET, SeaweedFs},
    vcsim::{Vcsim, VcsimOptions},
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams},
};
use serde_json::{Value, json};

const NS: &str = "giantswarm";
const KUBE: &str = "1.30.4";
const TOOLING: &str = "1.18.1";
/// Longest wait for convergence.
const TIMEOUT: Duration = Duration::from_secs(300);

struct Args {
    ido: PathBuf,
    runs: usize,
    images: usize,
    per_image: usize,
    dir: PathBuf,
    svg: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let root = ido_testkit::workspace_root();
    let mut a = Args {
        ido: root.join("target/release/ido"),
        runs: 2,
        images: 100,
        per_image: 10,
        dir: root.join("target/bench-operator"),
        svg: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        let num = |v: String| v.parse::<usize>().with_context(|| format!("{arg}: a number"));
        match arg.as_str() {
            "--ido" => a.ido = val()?.into(),
            "--runs" => a.runs = num(val()?)?,
            "--images" => a.images = num(val()?)?,
            "--per-image" => a.per_image = num(val()?)?,
            "--dir" => a.dir = val()?.into(),
            "--svg" => a.svg = Some(val()?.into()),
            other => bail!("unknown argument {other:?} (see the source's doc comment)"),
        }
    }
    Ok(a)
}

/// Flatcar version of image `i` (the one component that differs between images).
fn flatcar(i: usize) -> String {
    format!("4000.0.{i}")
}

fn image_name(i: usize) -> String {
    format!("flatcar-stable-{}-kube-{KUBE}-tooling-{TOOLING}-gs", flatcar(i))
}

fn release(name: &str, i: usize) -> Value {
    json!({
        "apiVersion": "release.giantswarm.io/v1alpha1",
        "kind": "Release",
        "metadata": {"name": name},
        "spec": {"state": "active", "components": [
            {"name": "flatcar", "version": flatcar(i)},
            {"name": "kubernetes", "version": KUBE},
            {"name": "os-tooling", "version": TOOLING},
        ]},
    })
}

/// The operator's configuration: the simulator as the one vSphere location, `workers`
/// NodeImages and Releases reconciled at once, unused images deleted at once (the chart's
/// default retention).
fn config(s3: &SeaweedFs, vc: &Vcsim, workers: usize) -> anyhow::Result<String> {
    vc.values_yaml(
        &s3.endpoint(),
        &format!("namespace: {NS}\nimageRetentionPeriod: \"0\"\nconcurrency:\n  images: {workers}\n  releases: {workers}\n"),
    )
}

/// One run's figures.
struct Sample {
    setting: &'static str,
    seconds: f64,
    rss_kib: u64,
    requests: BTreeMap<String, u64>,
}

impl Sample {
    fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// `rest_client_requests_total` samples by `method code`.
fn parse_requests(metrics: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("rest_client_requests_total{"))
    {
        let label = |k: &str| {
            line.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        *m.entry(format!("{} {}", label("method"), label("code")))
            .or_default() += n;
    }
    m
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Whether all `images` NodeImages are Available with `per_image` releases each; also the
/// counts seen, for progress lines.
async fn converged(api: &Api<DynamicObject>, a: &Args) -> anyhow::Result<(bool, usize, usize)> {
    let list = api.list(&ListParams::default()).await?;
    let available = list
        .items
        .iter()
        .filter(|ni| {
            let st = &ni.data["status"];
            st["state"] == "Available" && st["releases"].as_array().map_or(0, Vec::len) == a.per_image
        })
        .count();
    Ok((
        list.items.len() == a.images && available == a.images,
        list.items.len(),
        available,
    ))
}

async fn run_once(a: &Args, setting: &'static str, config_path: &Path, run: usize) -> anyhow::Result<Sample> {
    let c = Cluster::start().await?;
    let crds = tokio::process::Command::new(&a.ido).arg("crds").output().await?;
    if !crds.status.success() {
        bail!("ido crds failed: {}", String::from_utf8_lossy(&crds.stderr));
    }
    c.kubectl_stdin(&["apply", "-f", "-"], &String::from_utf8_lossy(&crds.stdout))
        .await?;
    let dev_crd = ido_testkit::workspace_root().join("charts/dev-crds/releases.release.giantswarm.io.yaml");
    c.kubectl(&["apply", "-f", &dev_crd.display().to_string()])
        .await?;
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ])
    .await?;
    c.kubectl(&["create", "namespace", NS]).await?;
    let client = c.client().await?;
    let rel_api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("release.giantswarm.io", "v1alpha1", "Release"),
            "releases",
        ),
    );
    let ni_api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("image.giantswarm.io", "v1alpha1", "NodeImage"),
            "nodeimages",
        ),
    );
    let t = Instant::now();
    let releases: Vec<(String, usize)> = (0..a.images)
        .flat_map(|i| (0..a.per_image).map(move |j| (format!("vsphere-30.{i}.{j}"), i)))
        .collect();
    futures::stream::iter(releases)
        .map(|(name, i)| {
            let api = rel_api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(release(&name, i))?;
                api.create(&PostParams::default(), &obj)
                    .await
                    .with_context(|| format!("creating Release {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "  {} Releases created in {:.1} s",
        a.images * a.per_image,
        t.elapsed().as_secs_f64()
    );

    let metrics_port = ido_testkit::free_port()?;
    let probe_port = ido_testkit::free_port()?;
    let log = std::fs::File::create(a.dir.join(format!("operator-{run}-{setting}.log")))?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&a.ido)
        .arg("operator")
        .arg("--config")
        .arg(config_path)
        .arg(format!("--metrics-bind-address=127.0.0.1:{metrics_port}"))
        .arg("--metrics-secure=false")
        .arg(format!("--health-probe-bind-address=127.0.0.1:{probe_port}"))
        .arg("--leader-elect=true")
        .arg(format!("--leader-election-namespace={NS}"))
        .env("KUBECONFIG", c.kubeconfig())
        .env("POD_NAME", format!("ido-bench-{run}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", a.ido.display()))?;
    let pid = child.id().context("the operator's pid")?;
    let seconds = loop {
        if let Some(status) = child.try_wait()? {
            bail!("the operator exited ({status}); see {}", a.dir.display());
        }
        let (done, n, avail) = converged(&ni_api, a).await?;
        if done {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > TIMEOUT {
            bail!(
                "not converged within {TIMEOUT:?}: {} NodeImages, {} Available with {} releases",
                n,
                avail,
                a.per_image
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await?
        .text()
        .await?;
    let rss_kib = vm_hwm_kib(pid);
    child.start_kill().ok();
    child.wait().await.ok();
    let requests = parse_requests(&metrics);
    if requests.is_empty() {
        bail!("no rest_client_requests_total in the operator's metrics");
    }
    let s = Sample {
        setting,
        seconds,
        rss_kib,
        requests,
    };
    println!(
        "  {setting:<10} converged in {:>6.2} s   peak RSS {:>6.1} MiB   {} API requests ({:.2} per object) {:?}",
        s.seconds,
        s.rss_kib as f64 / 1024.0,
        s.total_requests(),
        s.total_requests() as f64 / (a.images * (a.per_image + 1)) as f64,
        s.requests
    );
    Ok(s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ido_testkit::install_crypto_provider();
    let a = args()?;
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("cleaning {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let (s3, vc) = tokio::try_join!(SeaweedFs::start(), Vcsim::start(VcsimOptions::default()))?;

    // The premise: every image's template exists, made by ido.
    let t = Instant::now();
    let ova = a.dir.join("small.ova");
    OvaFixture::write(&ova, "flatcar", &[("disk-0.vmdk", 1 << 20)], "nic0").await?;
    let mut docs = Vec::new();
    for i in 0..a.images {
        let key = format!(
            "capv/{}/flatcar-stable-{}-kube-v{KUBE}.ova",
            image_name(i),
            flatcar(i)
        );
        s3.put_object(PUBLIC_BUCKET, &key, ova.as_path()).await?;
        docs.push(serde_json::to_string(&release(&format!("vsphere-29.{i}.0"), i))?);
    }
    let prepass = a.dir.join("prepass.yaml");
    std::fs::write(&prepass, docs.join("\n---\n"))?;
    let configs = [("default", 4), ("1-worker", 1)].map(|(name, n)| {
        let p = a.dir.join(format!("config-{name}.yaml"));
        (name, n, p)
    });
    for (_, n, p) in &configs {
        ido_testkit::write_private(p, config(&s3, &vc, *n)?.as_bytes())?;
    }
    let out = tokio::process::Command::new(&a.ido)
        .args(["run", "--once", "-f"])
        .arg(&prepass)
        .arg("--config")
        .arg(&configs[0].2)
        .arg("--state")
        .arg(a.dir.join("prepass-state"))
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "the set-up pass failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let templates = oracle_list_vms(&vc, "/DC0/vm")
        .await?
        .iter()
        .filter(|vm| vm["template"] == true)
        .count();
    if templates != a.images {
        bail!(
            "{templates} templates in the simulator after the set-up pass, not {}",
            a.images
        );
    }
    println!(
        "{templates} templates made by `ido run --once` in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut samples = Vec::new();
    for run in 0..a.runs {
        for k in ido_testkit::bench::order(&[0usize, 1], run) {
            let (setting, _, path) = &configs[k];
            println!("run {}/{}: {setting}", run + 1, a.runs);
            samples.push(run_once(&a, setting, path, run).await?);
        }
    }

    let objects = (a.images * (a.per_image + 1)) as f64;
    let stat = |setting: &str, f: &dyn Fn(&Sample) -> f64| {
        median(
            &samples
                .iter()
                .filter(|s| s.setting == setting)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    println!("\nmedians over {} runs:", a.runs);
    for (setting, n, _) in &configs {
        println!(
            "  {setting:<10} (NodeImage workers {n})  {:>6.2} s   peak RSS {:>6.1} MiB   {:.2} requests per object",
            stat(setting, &|s| s.seconds),
            stat(setting, &|s| s.rss_kib as f64 / 1024.0),
            stat(setting, &|s| s.total_requests() as f64 / objects),
        );
    }
    let ratio = stat("1-worker", &|s| s.seconds) / stat("default", &|s| s.seconds);
    println!("1-worker / default: {ratio:.2}");
    if let Some(svg) = &a.svg {
        let chart = plot::bars_svg(
            &format!(
                "ido operator: {} Releases, {} NodeImages, templates existing (median of {} runs)",
                a.images * a.per_image,
                a.images,
                a.runs
            ),
            "",
            &[
                plot::group(
                    "seconds to convergence",
                    &[
                        ("default", stat("default", &|s| s.seconds)),
                        ("one worker", stat("1-worker", &|s| s.seconds)),
                    ],
                ),
                plot::group(
                    "peak RSS (MiB)",
                    &[
                        ("default", stat("default", &|s| s.rss_kib as f64 / 1024.0)),
                        ("one worker", stat("1-worker", &|s| s.rss_kib as f64 / 1024.0)),
                    ],
                ),
                plot::group(
                    "API requests per converged object",
                    &[
                        (
                            "default",
                            stat("default", &|s| s.total_requests() as f64 / objects),
                        ),
                        (
                            "one worker",
                            stat("1-worker", &|s| s.total_requests() as f64 / objects),
                        ),
                    ],
                ),
            ],
        );
        std::fs::write(svg, chart).with_context(|| format!("writing {}", svg.display()))?;
        println!("plot: {}", svg.display());
    }
    let json_samples: Vec<Value> = samples
        .iter()
        .map(|s| {
            json!({"setting": s.setting, "seconds": s.seconds, "peak_rss_kib": s.rss_kib,
                   "requests": s.total_requests(), "by_method_code": s.requests})
        })
        .collect();
    println!(
        "{}",
        json!({"releases": a.images * a.per_image, "node_images": a.images, "objects": objects,
               "one_worker_over_default": ratio, "samples": json_samples})
    );
    Ok(())
}
