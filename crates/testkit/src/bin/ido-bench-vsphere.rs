//! The vSphere push benchmark: ido's path against the original operator's, on one OVA and
//! one vCenter simulator.
//!
//! - `ido`: `ido run --once` of a Release whose node image (the OVA) is in SeaweedFS: S3 GET
//!   → streaming OVA reader → NFC lease → template.
//! - `govc`: `govc import.ova` (govmomi's `importx`, what the original operator runs) of the
//!   same OVA, given by its S3 URL in the public bucket (govc reads a URL as well as a file),
//!   into the same datacenter, datastore, resource pool and folder, marked as a template.
//!
//! Each run imports afresh (the previous run's template is destroyed first, not timed); the
//! tools' order alternates. Every import is checked with pyvmomi (a template of that name).
//!
//! ```text
//! ido-bench-vsphere --ido target/release/ido [--govc target/peers/govc] [--disk-mib 1024]
//!     [--runs 3] [--dir target/bench-vsphere] [--svg docs/bench-vsphere.svg]
//! ```
//! The last line is JSON: every sample, the medians and the median per-run ratio ido/govc.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, bail};
use ido_testkit::{
    bench::{Case, Sample, order, timed},
    oracle::oracle_find,
    ova::OvaFixture,
    plot,
    seaweed::{PUBLIC_BUCKET, SeaweedFs},
    vcsim::{Vcsim, VcsimOptions},
};
use serde_json::json;

const IMAGE: &str = "flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs";
const KEY: &str =
    "capv/flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs/flatcar-stable-3975.2.0-kube-v1.30.4.ova";
const POOL: &str = "/DC0/host/DC0_C0/Resources";

struct Args {
    ido: PathBuf,
    govc: PathBuf,
    disk_mib: u64,
    runs: usize,
    dir: PathBuf,
    svg: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let root = ido_testkit::workspace_root();
    let mut a = Args {
        ido: root.join("target/release/ido"),
        govc: root.join("target/peers/govc"),
        disk_mib: 1024,
        runs: 3,
        dir: root.join("target/bench-vsphere"),
        svg: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ido" => a.ido = val()?.into(),
            "--govc" => a.govc = val()?.into(),
            "--disk-mib" => a.disk_mib = val()?.parse().context("--disk-mib: a number of MiB")?,
            "--runs" => a.runs = val()?.parse().context("--runs: a number")?,
            "--dir" => a.dir = val()?.into(),
            "--svg" => a.svg = Some(val()?.into()),
            other => bail!("unknown argument {other:?} (see the source's doc comment)"),
        }
    }
    Ok(a)
}

/// govc's connection flags for the simulator (the credentials go in its environment).
fn govc_flags(vc: &Vcsim, ca: &Path) -> Vec<String> {
    vec![
        format!("-u=https://{}/sdk", vc.host_port()),
        format!("-tls-ca-certs={}", ca.display()),
        "-persist-session=false".into(),
    ]
}

async fn govc(a: &Args, vc: &Vcsim, ca: &Path, cmd: &str, rest: &[String]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(&a.govc)
        .arg(cmd)
        .args(govc_flags(vc, ca))
        .args(rest)
        .env("GOVC_USERNAME", vc.username())
        .env("GOVC_PASSWORD", vc.password())
        .output()
        .await
        .with_context(|| format!("running {} (scripts/build-govc.sh builds it)", a.govc.display()))?;
    if !out.status.success() {
        bail!("govc {cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asserts (with pyvmomi) that `/DC0/vm/NAME` is a template.
async fn check_template(vc: &Vcsim, name: &str) -> anyhow::Result<()> {
    let vm = oracle_find(vc, &format!("/DC0/vm/{name}")).await?;
    match vm {
        Some(vm) if vm["template"] == true => Ok(()),
        other => bail!("/DC0/vm/{name} is not a template: {other:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("cleaning {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let (s3, vc) = tokio::try_join!(SeaweedFs::start(), Vcsim::start(VcsimOptions::default()))?;
    let ca = a.dir.join("vcsim-ca.pem");
    std::fs::write(&ca, vc.ca_pem().context("simulator CA")?)?;

    let ova = a.dir.join("flatcar.ova");
    let fixture = OvaFixture::write(&ova, "flatcar", &[("disk-0.vmdk", a.disk_mib << 20)], "nic0").await?;
    let ova_bytes = std::fs::metadata(&ova)?.len();
    s3.put_object(PUBLIC_BUCKET, KEY, ova.as_path()).await?;
    std::fs::remove_file(&ova)?;
    let url = s3.object_url(PUBLIC_BUCKET, KEY)?.to_string();
    println!(
        "OVA: {ova_bytes} B ({} MiB disk) at {url}",
        fixture.total_disk_bytes() >> 20
    );

    let config = a.dir.join("config.yaml");
    let text = vc.values_yaml(
        &s3.endpoint(),
        "namespace: giantswarm\nimageRetentionPeriod: \"0\"\n",
    )?;
    ido_testkit::write_private(&config, text.as_bytes())?;
    let release = a.dir.join("release.yaml");
    std::fs::write(
        &release,
        "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata:\n  name: vsphere-30.0.0\nspec:\n  state: active\n  components:\n  - {name: flatcar, version: 3975.2.0}\n  - {name: kubernetes, version: 1.30.4}\n  - {name: os-tooling, version: 1.18.1}\n",
    )?;
    let options = a.dir.join("govc-options.json");
    std::fs::write(&options, r#"{"MarkAsTemplate": true}"#)?;

    let mut case = Case::default();
    for run in 0..a.runs {
        println!("run {}/{}", run + 1, a.runs);
        for tool in order(&["ido", "govc"], run) {
            let (name, sample) = if tool == "ido" {
                let state = a.dir.join(format!("state-{run}"));
                let args: Vec<String> = vec![
                    "run".into(),
                    "--once".into(),
                    "-f".into(),
                    release.display().to_string(),
                    "--config".into(),
                    config.display().to_string(),
                    "--state".into(),
                    state.display().to_string(),
                ];
                (IMAGE.to_string(), timed(&a.ido, &args).await?.0)
            } else {
                let name = format!("govc-{run}");
                let mut args = vec!["import.ova".to_string()];
                args.extend(govc_flags(&vc, &ca));
                args.extend([
                    "-dc=DC0".into(),
                    "-ds=LocalDS_0".into(),
                    format!("-pool={POOL}"),
                    "-folder=/DC0/vm".into(),
                    format!("-name={name}"),
                    format!("-options={}", options.display()),
                    url.clone(),
                ]);
                let s = timed_govc(&a, &vc, &args).await?;
                (name, s)
            };
            check_template(&vc, &name).await?;
            case.push(tool, sample);
            // Afresh next run: the template goes (not timed).
            govc(&a, &vc, &ca, "vm.destroy", &[format!("/DC0/vm/{name}")]).await?;
        }
    }
    let ratio = case.ratio("ido", "govc");
    println!("ido / govc (median of per-run ratios): {ratio:.2}");
    if let Some(svg) = &a.svg {
        let med = |t: &str| ido_testkit::bench::median(&case.walls(t));
        let rss = |t: &str| {
            let v: Vec<f64> = case
                .tools
                .iter()
                .find(|(n, _)| *n == t)
                .map(|(_, s)| s.iter().map(|s| s.rss_kib as f64 / 1024.0).collect())
                .unwrap_or_default();
            ido_testkit::bench::median(&v)
        };
        let chart = plot::bars_svg(
            &format!(
                "vSphere push of a {} MiB OVA into the vCenter simulator (median of {} runs)",
                a.disk_mib, a.runs
            ),
            "",
            &[
                plot::group(
                    "wall (s)",
                    &[("ido run --once", med("ido")), ("govc import.ova", med("govc"))],
                ),
                plot::group(
                    "peak RSS (MiB)",
                    &[("ido run --once", rss("ido")), ("govc import.ova", rss("govc"))],
                ),
            ],
        );
        std::fs::write(svg, chart).with_context(|| format!("writing {}", svg.display()))?;
        println!("plot: {}", svg.display());
    }
    println!(
        "{}",
        json!({"ova_bytes": ova_bytes, "disk_bytes": fixture.total_disk_bytes(), "runs": a.runs,
               "ido_over_govc": ratio, "samples": case.json()})
    );
    Ok(())
}

/// `govc ARGS` under `/usr/bin/time` (as [`ido_testkit::bench::timed`]), with the
/// simulator's credentials in its environment rather than on its command line.
async fn timed_govc(a: &Args, vc: &Vcsim, args: &[String]) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let out = tokio::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("BENCH_PEAK_RSS_KIB=%M")
        .arg(&a.govc)
        .args(args)
        .env("GOVC_USERNAME", vc.username())
        .env("GOVC_PASSWORD", vc.password())
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", a.govc.display()))?;
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("govc import.ova failed ({}): {stderr}", out.status);
    }
    let rss_kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_PEAK_RSS_KIB="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(Sample {
        wall,
        rss_kib,
        ..Sample::default()
    })
}
