//! The quick start (and the vSphere benchmark): starts SeaweedFS and the vCenter simulator on
//! loopback, publishes an OVA node image, runs `ido run --once` on an example Release, and
//! shows the result as pyvmomi sees it.
//!
//! With `--cluster`, the same through Kubernetes: a local control plane (the test kit's
//! `Cluster`), the chart installed with helm, the operator run as the chart's Deployment says
//! (this machine playing the kubelet), the Release applied with kubectl; it ends printing
//! `kubectl get nodeimages` and the template as pyvmomi sees it.
//!
//! ```text
//! ido-quickstart --ido target/release/ido [--disk-mib 16] [--dir target/quickstart] [--bench] [--cluster]
//! ```
//! With `--bench`, the last line is JSON: OVA bytes, wall seconds, ido's peak RSS and the
//! bytes ido left in its (empty, private) TMPDIR.

use std::{path::PathBuf, process::Stdio, time::Instant};

use anyhow::{Context, bail};
use ido_testkit::{
    oracle::oracle_list_vms,
    ova::OvaFixture,
    seaweed::{PUBLIC_BUCKET, SeaweedFs},
    vcsim::{Vcsim, VcsimOptions},
};

const IMAGE: &str = "flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs";
const KEY: &str =
    "capv/flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs/flatcar-stable-3975.2.0-kube-v1.30.4.ova";

struct Args {
    ido: PathBuf,
    disk_mib: u64,
    dir: PathBuf,
    bench: bool,
    cluster: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        ido: ido_testkit::workspace_root().join("target/release/ido"),
        disk_mib: 16,
        dir: ido_testkit::workspace_root().join("target/quickstart"),
        bench: false,
        cluster: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ido" => a.ido = val()?.into(),
            "--disk-mib" => a.disk_mib = val()?.parse().context("--disk-mib: a number of MiB")?,
            "--dir" => a.dir = val()?.into(),
            "--bench" => a.bench = true,
            "--cluster" => a.cluster = true,
            other => bail!("unknown argument {other:?} (see the source's doc comment)"),
        }
    }
    Ok(a)
}

fn step(s: &str) {
    println!("\n==> {s}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("cleaning {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(a.dir.join("tmp"))?;

    step("starting SeaweedFS (S3) and the vCenter simulator on loopback");
    let (s3, vc) = tokio::try_join!(SeaweedFs::start(), Vcsim::start(VcsimOptions::default()))?;
    println!("S3:      {}", s3.endpoint());
    println!("vCenter: {}", vc.url());

    step(&format!(
        "publishing a {} MiB OVA node image to s3://{PUBLIC_BUCKET}/{KEY}",
        a.disk_mib
    ));
    let ova = a.dir.join("flatcar.ova");
    let fixture = OvaFixture::write(&ova, "flatcar", &[("disk-0.vmdk", a.disk_mib << 20)], "nic0").await?;
    let ova_bytes = std::fs::metadata(&ova)?.len();
    s3.put_object(PUBLIC_BUCKET, KEY, ova.as_path()).await?;
    std::fs::remove_file(&ova)?;

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
    println!("config:  {}\nrelease: {}", config.display(), release.display());

    if a.cluster {
        return through_the_cluster(&a, &s3, &vc, &release).await;
    }

    step("ido run --once -f release.yaml --config config.yaml");
    let started = Instant::now();
    let out = tokio::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("IDO_PEAK_RSS_KIB=%M")
        .arg(&a.ido)
        .args(["run", "--once", "-f"])
        .arg(&release)
        .arg("--config")
        .arg(&config)
        .arg("--state")
        .arg(a.dir.join("state"))
        .env("TMPDIR", a.dir.join("tmp"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running {} (build it first)", a.ido.display()))?;
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rss: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("IDO_PEAK_RSS_KIB="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{stderr}");
        bail!("ido run failed ({})", out.status);
    }

    step("templates in /DC0/vm, as pyvmomi (an independent client) sees them");
    let vms = oracle_list_vms(&vc, "/DC0/vm").await?;
    let mut found = false;
    for vm in &vms {
        println!(
            "{:<60} template={:<5} {}",
            vm["name"].as_str().unwrap_or_default(),
            vm["template"],
            vm["moref"].as_str().unwrap_or_default()
        );
        found |= vm["name"] == IMAGE && vm["template"] == true;
    }
    if !found {
        bail!("the template {IMAGE} is not in the simulator");
    }
    let tmp_bytes: u64 = dir_bytes(&a.dir.join("tmp"));
    println!("\nNodeImage Available; template {IMAGE} exists in the simulator.");
    if a.bench {
        println!(
            "{{\"ova_bytes\":{ova_bytes},\"disk_bytes\":{},\"wall_s\":{wall:.2},\"peak_rss_kib\":{rss},\"tmp_bytes\":{tmp_bytes}}}",
            fixture.total_disk_bytes()
        );
    }
    Ok(())
}

/// `--cluster`: the chart on a local control plane, the operator run as its Deployment says.
async fn through_the_cluster(
    a: &Args,
    s3: &SeaweedFs,
    vc: &Vcsim,
    release: &std::path::Path,
) -> anyhow::Result<()> {
    use ido_testkit::{Cluster, kubelet::run_deployment};
    step("starting a Kubernetes control plane on loopback (etcd, kube-apiserver, kube-controller-manager)");
    let c = Cluster::start().await?;
    println!("kubeconfig: {}", c.kubeconfig().display());
    let chart = ido_testkit::workspace_root().join("charts/image-distribution-operator");
    let values = serde_json::json!({
        "namespace": "giantswarm",
        "imageRetentionPeriod": "0",
        "s3": {"bucket": PUBLIC_BUCKET, "region": "us-east-1", "endpoint": s3.endpoint()},
        "vsphere": {
            "enabled": true,
            "caBundle": vc.ca_pem().context("simulator CA")?,
            "credentials": {"vcenter": vc.url(), "username": vc.username(), "password": vc.password()},
            "locations": {"location1": {"datacenter": "DC0", "datastore": "LocalDS_0", "cluster": "DC0_C0", "folder": "vm"}},
        },
    });
    let values_file = a.dir.join("values.json");
    ido_testkit::write_private(&values_file, values.to_string().as_bytes())?;
    step("helm install image-distribution-operator charts/image-distribution-operator -n ido-system");
    c.kubectl(&["create", "namespace", "giantswarm"]).await?;
    let dev_crd = chart.join("../dev-crds/releases.release.giantswarm.io.yaml");
    c.kubectl(&["apply", "-f", &dev_crd.display().to_string()])
        .await?;
    print!(
        "{}",
        c.helm(&[
            "install",
            "image-distribution-operator",
            &chart.display().to_string(),
            "--namespace",
            "ido-system",
            "--create-namespace",
            "--values",
            &values_file.display().to_string(),
        ])
        .await?
    );
    step("running the chart's Deployment here (no kubelet runs): ido operator as its ServiceAccount");
    let mut operator = run_deployment(
        &c,
        "ido-system",
        "app.kubernetes.io/name=image-distribution-operator",
        &a.ido,
        &a.dir.join("pod"),
    )
    .await?;
    step("kubectl apply -f release.yaml");
    print!(
        "{}",
        c.kubectl(&["apply", "-f", &release.display().to_string()])
            .await?
    );
    let ni = format!("capv-{IMAGE}");
    let mut state = String::new();
    for _ in 0..600 {
        state = c
            .kubectl(&[
                "get",
                "nodeimage",
                &ni,
                "-n",
                "giantswarm",
                "-o",
                "jsonpath={.status.state}",
            ])
            .await
            .unwrap_or_default();
        if state == "Available" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    step("kubectl get nodeimages -n giantswarm");
    print!("{}", c.kubectl(&["get", "nodeimages", "-n", "giantswarm"]).await?);
    if state != "Available" {
        bail!(
            "the NodeImage did not become Available; the operator's log:\n{}",
            operator.logs()
        );
    }
    step("templates in /DC0/vm, as pyvmomi (an independent client) sees them");
    let vms = oracle_list_vms(vc, "/DC0/vm").await?;
    for vm in &vms {
        println!(
            "{:<60} template={}",
            vm["name"].as_str().unwrap_or_default(),
            vm["template"]
        );
    }
    if !vms.iter().any(|vm| vm["name"] == IMAGE && vm["template"] == true) {
        bail!("the template {IMAGE} is not in the simulator");
    }
    operator.child.kill().await.ok();
    println!("\nNodeImage Available through the operator; template {IMAGE} exists in the simulator.");
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
