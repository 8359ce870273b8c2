//! The project's vCenter simulator (`target/peers/ido-vcsim`, govmomi's simulator library
//! behind `testkit/vcsim/main.go`), one per test: it starts in ~90 ms.
//!
//! [`Vcsim::start`] builds the binary first if needed (`scripts/build-vcsim.sh`, once per
//! process, under a file lock), serves HTTPS with a fresh [`TestCa`] server certificate by
//! default, and reads the SDK URL from the simulator's first stdout line.
//!
//! Pull mode: the simulator main serves `HttpNfcLeasePullFromUrls_Task` (unless
//! [`VcsimOptions::no_pull`]) and reports every pulled file at `GET /pull-stats`
//! ([`Vcsim::pull_stats`]). With [`VcsimOptions::files`] it also serves [`Vcsim::files_dir`] at
//! `/files/` over its own listener: an https source for pull mode.
//!
//! Credentials: without [`VcsimOptions::username`]/[`VcsimOptions::password`] the simulator
//! accepts any non-empty pair and [`Vcsim::username`]/[`Vcsim::password`] report
//! [`DEFAULT_USERNAME`]/[`DEFAULT_PASSWORD`]. With them, they are passed to the simulator
//! as `-username`/`-password` flags (its only interface): this test fixture is the one
//! place where a (fake) secret appears on a command line.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::sync::OnceCell;

use crate::proc::{Cleanup, first_stdout_line, kill_and_wait, log_tail, spawn_watchdog, terminate};
use crate::tls::TestCa;

/// Default datacenter.
pub const DATACENTER: &str = "DC0";
/// Default cluster (hosts `DC0_C0_H0..`).
pub const CLUSTER: &str = "DC0_C0";
/// Default datastore.
pub const DATASTORE: &str = "LocalDS_0";
/// Inventory path of the default datastore.
pub const DATASTORE_PATH: &str = "/DC0/datastore/LocalDS_0";
/// Inventory path of the datacenter's VM folder.
pub const VM_FOLDER: &str = "/DC0/vm";
/// Name of the cluster's root resource pool.
pub const RESOURCE_POOL: &str = "Resources";
/// Inventory path of the cluster's root resource pool.
pub const RESOURCE_POOL_PATH: &str = "/DC0/host/DC0_C0/Resources";
/// Default VM network.
pub const NETWORK: &str = "VM Network";
/// Inventory path of the default VM network.
pub const NETWORK_PATH: &str = "/DC0/network/VM Network";
/// The VMs of the default inventory, all in [`VM_FOLDER`] and powered on.
pub const DEFAULT_VMS: [&str; 4] = ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"];
/// User name reported when none was configured (the simulator then accepts any).
pub const DEFAULT_USERNAME: &str = "ido-test-user";
/// Password reported when none was configured (the simulator then accepts any non-empty).
pub const DEFAULT_PASSWORD: &str = "ido-test-password";

/// How long to wait for the simulator's first stdout line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a [`Vcsim`]. `Default` is HTTPS with a [`TestCa`] certificate, any credentials.
#[derive(Clone)]
pub struct VcsimOptions {
    /// Serve HTTPS with a fresh [`TestCa`] server certificate (default `true`). When `false`
    /// (and not [`plain`](Self::plain)), the simulator's built-in self-signed certificate.
    pub tls: bool,
    /// Serve plain HTTP (`-plain`); overrides [`tls`](Self::tls). Default `false`.
    pub plain: bool,
    /// The only accepted user name (`-username`). Default: any.
    pub username: Option<String>,
    /// The only accepted password (`-password`; [`DEFAULT_PASSWORD`] if only a user is set).
    pub password: Option<String>,
    /// Expire sessions idle this long (`-idle-timeout`). Default: never.
    pub idle_timeout: Option<Duration>,
    /// Hosts per cluster (`-cluster-hosts`). Default: the simulator's 3.
    pub cluster_hosts: Option<u32>,
    /// No pull mode (`-no-pull`): `HttpNfcLeasePullFromUrls_Task` faults with `MethodNotFound`,
    /// as in stock vcsim. Default `false`.
    pub no_pull: bool,
    /// Serve [`Vcsim::files_dir`] at `/files/` (`-files`). Default `false`.
    pub files: bool,
}

impl Default for VcsimOptions {
    fn default() -> Self {
        Self {
            tls: true,
            plain: false,
            username: None,
            password: None,
            idle_timeout: None,
            cluster_hosts: None,
            no_pull: false,
            files: false,
        }
    }
}

impl std::fmt::Debug for VcsimOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcsimOptions")
            .field("tls", &self.tls)
            .field("plain", &self.plain)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("idle_timeout", &self.idle_timeout)
            .field("cluster_hosts", &self.cluster_hosts)
            .field("no_pull", &self.no_pull)
            .field("files", &self.files)
            .finish()
    }
}

impl VcsimOptions {
    /// Plain HTTP.
    pub fn plain() -> Self {
        Self {
            plain: true,
            tls: false,
            ..Self::default()
        }
    }

    /// HTTPS with the simulator's built-in self-signed certificate (clients must skip checks).
    pub fn builtin_cert() -> Self {
        Self {
            tls: false,
            ..Self::default()
        }
    }

    /// Requires exactly this user name and password.
    pub fn with_credentials(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.to_owned());
        self.password = Some(password.to_owned());
        self
    }
}

/// A running simulator, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Vcsim {
    /// The simulator process.
    child: Child,
    /// Kills the simulator if the test process dies without dropping this.
    watchdog: Child,
    /// SDK URL, e.g. `https://127.0.0.1:36171/sdk`.
    url: String,
    /// The CA whose server certificate the simulator serves, if any.
    ca: Option<TestCa>,
    /// Credentials a client should use.
    username: String,
    /// See `username`.
    password: String,
    /// Whether it serves plain HTTP.
    plain: bool,
    /// Log and `$TMPDIR` (the simulator's datastore directories); removed on drop.
    dir: TempDir,
}

impl Vcsim {
    /// Starts a simulator with `opts` and waits for its SDK URL (at most 30 s).
    pub async fn start(opts: VcsimOptions) -> anyhow::Result<Self> {
        let bin = ensure_built().await?;
        let dir = tempfile::Builder::new()
            .prefix("ido-vcsim-")
            .tempdir()
            .context("creating the vcsim directory")?;
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).context("creating the vcsim TMPDIR")?;
        let ca = if opts.tls && !opts.plain {
            Some(TestCa::new().context("creating the vcsim CA")?)
        } else {
            None
        };

        let mut cmd = Command::new(&bin);
        cmd.args(["-l", "127.0.0.1:0"]);
        if let Some(ca) = &ca {
            cmd.arg("-cert")
                .arg(&ca.server_cert)
                .arg("-key")
                .arg(&ca.server_key);
        }
        if opts.plain {
            cmd.arg("-plain");
        }
        let configured = opts.username.is_some() || opts.password.is_some();
        let username = opts.username.unwrap_or_else(|| DEFAULT_USERNAME.to_owned());
        let password = opts.password.unwrap_or_else(|| DEFAULT_PASSWORD.to_owned());
        if configured {
            cmd.arg("-username")
                .arg(&username)
                .arg("-password")
                .arg(&password);
        }
        if let Some(idle) = opts.idle_timeout {
            cmd.arg("-idle-timeout")
                .arg(format!("{}ms", idle.as_millis().max(1)));
        }
        if let Some(n) = opts.cluster_hosts {
            cmd.arg("-cluster-hosts").arg(n.to_string());
        }
        if opts.no_pull {
            cmd.arg("-no-pull");
        }
        let files = dir.path().join("files");
        if opts.files {
            std::fs::create_dir(&files).context("creating the vcsim files directory")?;
            cmd.arg("-files").arg(&files);
        }
        let log_path = dir.path().join("vcsim.log");
        let log = std::fs::File::create(&log_path).context("creating vcsim.log")?;
        cmd.env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        // If the test process dies, also remove the simulator's and the CA's directories.
        let mut dirs = vec![dir.path().display().to_string()];
        dirs.extend(ca.as_ref().map(|ca| ca.dir().display().to_string()));
        let mut watchdog = match spawn_watchdog(child.id(), &Cleanup::after_kill("rm -rf -- \"$@\"", &dirs)) {
            Ok(w) => w,
            Err(e) => {
                kill_and_wait(&mut child);
                return Err(e).context("spawning the vcsim watchdog");
            }
        };

        // First stdout line → the URL; the rest goes to the log.
        let first = first_stdout_line(&mut child, log, START_TIMEOUT, "vcsim's URL").await;
        let url = match first {
            Ok(url) if url.starts_with("http") && url.ends_with("/sdk") => url,
            other => {
                kill_and_wait(&mut watchdog);
                kill_and_wait(&mut child);
                let why = other.map_or_else(
                    |e| e.to_string(),
                    |line| format!("unexpected first line {line:?}"),
                );
                bail!("starting {}: {why}\n{}", bin.display(), log_tail(&log_path, 40));
            }
        };
        Ok(Self {
            child,
            watchdog,
            url,
            ca,
            username,
            password,
            plain: opts.plain,
            dir,
        })
    }

    /// The SDK URL, e.g. `https://127.0.0.1:36171/sdk`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT` of the simulator.
    pub fn host_port(&self) -> String {
        let rest = self.url.split_once("://").map_or(self.url.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    }

    /// `ido`'s values (the chart's shape) with this simulator as the one vSphere location
    /// (`location1`: DC0, LocalDS_0, DC0_C0, folder vm; its CA and credentials) and the node
    /// images in the public bucket of the S3 endpoint `s3`; `top` is YAML put first (e.g.
    /// `namespace: giantswarm\nimageRetentionPeriod: "0"\n`).
    pub fn values_yaml(&self, s3: &str, top: &str) -> anyhow::Result<String> {
        let ca: String = self
            .ca_pem()
            .context("the simulator's CA")?
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect();
        Ok(format!(
            "{top}s3:\n  bucket: {}\n  region: us-east-1\n  endpoint: {s3}\nvsphere:\n  enabled: true\n  caBundle: |\n{ca}  credentials:\n    vcenter: {}\n    username: {}\n    password: {}\n  locations:\n    location1:\n      datacenter: DC0\n      datastore: LocalDS_0\n      cluster: DC0_C0\n      folder: vm\n",
            crate::seaweed::PUBLIC_BUCKET,
            self.url(),
            self.username(),
            self.password()
        ))
    }

    /// The CA certificate (PEM) to trust, when started with a [`TestCa`] ([`VcsimOptions::tls`]).
    pub fn ca_pem(&self) -> Option<String> {
        self.ca.as_ref().map(TestCa::ca_pem)
    }

    /// The [`TestCa`] whose server certificate the simulator serves, if any.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// Whether the simulator serves plain HTTP.
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    /// The user name a client should log in with.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password a client should log in with.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A reqwest client for this simulator: trusts only the [`TestCa`] when there is one,
    /// skips certificate checks for the built-in certificate, plain HTTP otherwise.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        if let Some(ca) = &self.ca {
            return ca.reqwest_client();
        }
        crate::install_crypto_provider();
        reqwest::Client::builder()
            .no_proxy()
            .tls_danger_accept_invalid_certs(!self.plain)
            .build()
            .context("building a reqwest client for vcsim")
    }

    /// The directory served at `/files/` when started with [`VcsimOptions::files`].
    pub fn files_dir(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Base URL of [`Vcsim::files_dir`], e.g. `https://127.0.0.1:36171/files`.
    pub fn files_url(&self) -> String {
        format!("{}/files", self.url.trim_end_matches("/sdk"))
    }

    /// Every file pulled so far (`GET /pull-stats`), in order: objects with `lease`,
    /// `targetDeviceId`, `url`, `memberName`, `create`, `size` (declared), `sslThumbprint`,
    /// `bytes` (read), `sha256` (hex of the bytes read) and `error` (empty on success).
    pub async fn pull_stats(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let url = format!("{}/pull-stats", self.url.trim_end_matches("/sdk"));
        let resp = self
            .http_client()?
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?;
        resp.json().await.with_context(|| format!("decoding {url}"))
    }

    /// The simulator's log (stderr, and stdout after the URL line).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("vcsim.log")
    }

    /// The last lines of the simulator's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), 40)
    }

    /// The process id of the simulator.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vcsim {
    /// Stops the watchdog, then the simulator (SIGTERM lets it remove its datastore dirs).
    fn drop(&mut self) {
        kill_and_wait(&mut self.watchdog);
        terminate(&mut self.child, Duration::from_secs(2));
    }
}

/// Runs `scripts/build-vcsim.sh` once per process under `flock` (it skips an up-to-date
/// binary) and returns the binary's path. A failed rebuild falls back to an existing binary.
pub async fn ensure_built() -> anyhow::Result<PathBuf> {
    static BUILT: OnceCell<PathBuf> = OnceCell::const_new();
    let path = BUILT
        .get_or_try_init(|| crate::proc::build_go_peer("build-vcsim.sh", "ido-vcsim"))
        .await?;
    Ok(path.clone())
}
