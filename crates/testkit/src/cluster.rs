//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager built from the upstream Go modules (`tools/cluster`, the binary
//! `target/peers/ido-k8s`), with the real `kubectl` and `helm` beside it.
//!
//! No scheduler or kubelet runs: Pods stay Pending. A test that needs a Pod to run plays the
//! kubelet itself (runs the Pod's command, writes the Pod's status).
//!
//! [`Cluster::shared`] is one control plane per test run, shared across the test processes
//! of that run (nextest starts one process per test): the first process to ask starts it
//! under a file lock, the others reuse it, and a watchdog stops it once the test runner (the
//! parent of the test processes) exits. Tests isolate themselves with
//! [`Cluster::namespace`]. [`Cluster::start`] gives a private control plane, stopped on drop,
//! for tests that restart or break it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{process::Command, sync::OnceCell};

use crate::proc::{Cleanup, kill_and_wait, spawn_watchdog_for};

/// The binaries of the control plane, built by `scripts/build-k8s.sh`.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The multi-call binary: `etcd`, `kube-apiserver`, `kube-controller-manager`, `kubectl`,
    /// `up`, `down`, `restart`.
    pub ido_k8s: PathBuf,
    /// `kubectl` (the same binary under that name).
    pub kubectl: PathBuf,
    /// The real `helm` (v4).
    pub helm: PathBuf,
}

/// Runs `scripts/build-k8s.sh` once per process under `flock` (it skips up-to-date
/// binaries; the first build takes many minutes) and returns the binaries.
pub async fn ensure_built() -> anyhow::Result<Binaries> {
    static BUILT: OnceCell<Binaries> = OnceCell::const_new();
    let bins = BUILT
        .get_or_try_init(|| async {
            let root = crate::workspace_root();
            let peers = root.join("target/peers");
            std::fs::create_dir_all(&peers).with_context(|| format!("creating {}", peers.display()))?;
            let out = Command::new("flock")
                .arg(peers.join(".build-k8s.lock"))
                .arg(root.join("scripts/build-k8s.sh"))
                .stdin(Stdio::null())
                .output()
                .await
                .context("running scripts/build-k8s.sh")?;
            let bins = Binaries {
                ido_k8s: peers.join("ido-k8s"),
                kubectl: peers.join("kubectl"),
                helm: peers.join("helm"),
            };
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if !(bins.ido_k8s.is_file() && bins.helm.is_file()) {
                    bail!("scripts/build-k8s.sh failed ({}): {stderr}", out.status);
                }
                tracing::warn!(%stderr, "rebuilding the control plane failed; using the existing binaries");
            }
            anyhow::Ok(bins)
        })
        .await?;
    Ok(bins.clone())
}

/// One running control plane.
pub struct Cluster {
    dir: PathBuf,
    bins: Binaries,
    /// Private clusters own their directory and stop on drop; the shared one has neither.
    private: Option<(tempfile::TempDir, Child)>,
}

impl Cluster {
    /// A private control plane (ready in ~10 s once built), stopped and removed on drop and
    /// by a watchdog if the test process dies first.
    pub async fn start() -> anyhow::Result<Self> {
        let bins = ensure_built().await?;
        let dir = tempfile::Builder::new()
            .prefix("ido-cluster-")
            .tempdir()
            .context("creating the cluster directory")?;
        up(&bins, dir.path()).await?;
        let watchdog = watchdog(&bins, dir.path(), std::process::id())?;
        Ok(Self {
            dir: dir.path().to_path_buf(),
            bins,
            private: Some((dir, watchdog)),
        })
    }

    /// The control plane shared by every test process of this test run (see the module docs).
    pub async fn shared() -> anyhow::Result<&'static Cluster> {
        static SHARED: OnceCell<Cluster> = OnceCell::const_new();
        SHARED
            .get_or_try_init(|| async {
                let bins = ensure_built().await?;
                let runner = std::os::unix::process::parent_id();
                let dir = std::env::temp_dir().join(format!("ido-cluster-run-{runner}"));
                let lock_path = std::env::temp_dir().join(format!("ido-cluster-run-{runner}.lock"));
                let lock = std::fs::File::create(&lock_path)
                    .with_context(|| format!("creating {}", lock_path.display()))?;
                let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
                    .await
                    .context("waiting for the cluster lock")?
                    .with_context(|| format!("locking {}", lock_path.display()))?;
                let ready = dir.join("ready");
                if !ready.is_file() {
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                    up(&bins, &dir).await?;
                    // Stops the cluster once the test runner is gone. Never waited for: it
                    // outlives this process on purpose.
                    let _watchdog = watchdog(&bins, &dir, runner)?;
                    std::fs::write(&ready, runner.to_string()).context("marking the cluster ready")?;
                } else {
                    // Started by an earlier test process of this run: `up` on a running
                    // cluster only checks that it is ready.
                    up(&bins, &dir).await?;
                }
                drop(lock);
                anyhow::Ok(Cluster {
                    dir,
                    bins,
                    private: None,
                })
            })
            .await
            .context("starting the shared Kubernetes control plane")
    }

    /// The cluster's directory (`kubeconfig`, `env`, `logs/`, `pki/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster-admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The binaries (`kubectl`, `helm`, `ido-k8s`).
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// The API server's URL (`https://127.0.0.1:PORT`), from the kubeconfig.
    pub fn server(&self) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(self.kubeconfig()).context("reading the kubeconfig")?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server:").map(|s| s.trim().to_string()))
            .context("the kubeconfig names no server")
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let path = self.dir.join("pki/ca.crt");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// An admin [`kube::Client`].
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        crate::install_crypto_provider();
        let kubeconfig =
            kube::config::Kubeconfig::read_from(self.kubeconfig()).context("reading the kubeconfig")?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading the kubeconfig")?;
        kube::Client::try_from(config).context("building the admin client")
    }

    /// A client that authenticates with `token` (e.g. a ServiceAccount's, from [`Self::token`]),
    /// so that RBAC applies to it; `namespace` is its default namespace.
    pub async fn client_with_token(&self, token: &str, namespace: &str) -> anyhow::Result<kube::Client> {
        crate::install_crypto_provider();
        let mut config = kube::Config::new(self.server()?.parse().context("parsing the server URL")?);
        config.root_cert = Some(vec![pem_der(&self.ca_pem()?)?]);
        config.default_namespace = namespace.to_string();
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config).context("building a token client")
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = format!(
            "{prefix}-{:08x}",
            crate::XorShift64::new(crate::time_seed()).next_u64() as u32
        );
        self.kubectl(&["create", "namespace", &name]).await?;
        Ok(name)
    }

    /// Runs `kubectl` as cluster admin; fails with its stderr unless it succeeds.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        checked(self.kubectl_output(args, None).await?, "kubectl", args)
    }

    /// Runs `kubectl … -o json` and parses what it prints.
    pub async fn kubectl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.kubectl(&args).await?;
        serde_json::from_str(&out).with_context(|| format!("parsing the JSON of kubectl {}", args.join(" ")))
    }

    /// Runs `kubectl` with `stdin` as its input (e.g. `apply -f -`).
    pub async fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        checked(self.kubectl_output(args, Some(stdin)).await?, "kubectl", args)
    }

    /// Runs `kubectl` and returns its whole output, whatever its exit status.
    pub async fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        run(&self.bins.kubectl, args, &self.kubeconfig(), stdin).await
    }

    /// Runs `helm` against this cluster; fails with its stderr unless it succeeds.
    pub async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        checked(self.helm_output(args).await?, "helm", args)
    }

    /// Runs `helm` and returns its whole output, whatever its exit status.
    pub async fn helm_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(&self.bins.helm, args, &self.kubeconfig(), None).await
    }

    /// A TokenRequest token of ServiceAccount `sa` in `namespace` (valid for an hour).
    pub async fn token(&self, namespace: &str, sa: &str) -> anyhow::Result<String> {
        let out = self
            .kubectl(&["create", "token", sa, "-n", namespace, "--duration=1h"])
            .await?;
        Ok(out.trim().to_string())
    }

    /// Stops `component` (`etcd`, `kube-apiserver`, `kube-controller-manager`) and starts it
    /// again with the same flags and ports, waiting until it is ready.
    pub async fn restart(&self, component: &str) -> anyhow::Result<()> {
        let out = Command::new(&self.bins.ido_k8s)
            .args(["restart", &self.dir.display().to_string(), component])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running ido-k8s restart")?;
        checked(out, "ido-k8s restart", &[component]).map(drop)
    }

    /// The last lines of a component's log, for failure messages.
    pub fn log_tail(&self, component: &str) -> String {
        crate::proc::log_tail(&self.dir.join("logs").join(format!("{component}.log")), 40)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some((dir, watchdog)) = &mut self.private {
            kill_and_wait(watchdog);
            let _ = std::process::Command::new(&self.bins.ido_k8s)
                .arg("down")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `ido-k8s up DIR`: starts (or checks) the control plane in `dir`.
async fn up(bins: &Binaries, dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(&bins.ido_k8s)
        .arg("up")
        .arg(dir)
        .arg("--kubectl")
        .arg(&bins.kubectl)
        .arg("--helm")
        .arg(&bins.helm)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running ido-k8s up")?;
    if !out.status.success() {
        bail!(
            "ido-k8s up {} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A watchdog that runs `ido-k8s down DIR` and removes `dir` once `watched` is gone.
fn watchdog(bins: &Binaries, dir: &Path, watched: u32) -> anyhow::Result<Child> {
    let etcd_pid: u32 = std::fs::read_to_string(dir.join("pids/etcd.pid"))
        .context("reading etcd's pid")?
        .trim()
        .parse()
        .context("parsing etcd's pid")?;
    let args = [bins.ido_k8s.display().to_string(), dir.display().to_string()];
    let cleanup = Cleanup {
        before_kill: "\"$1\" down \"$2\" >/dev/null 2>&1",
        after_kill: "rm -rf -- \"$2\" \"$2.lock\"",
        args: &args,
    };
    spawn_watchdog_for(watched, etcd_pid, &cleanup).context("spawning the cluster watchdog")
}

async fn run(bin: &Path, args: &[&str], kubeconfig: &Path, stdin: Option<&str>) -> anyhow::Result<Output> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", kubeconfig.with_file_name("helm/cache"))
        .env("HELM_CONFIG_HOME", kubeconfig.with_file_name("helm/config"))
        .env("HELM_DATA_HOME", kubeconfig.with_file_name("helm/data"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.context("writing stdin")?;
    }
    tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .with_context(|| format!("{} {} did not finish in 300 s", bin.display(), args.join(" ")))?
        .context("waiting for the command")
}

fn checked(out: Output, what: &str, args: &[&str]) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DER bytes of the first certificate in `pem`.
fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .context("decoding the CA certificate")
}
