//! A registry with the OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`), which
//! docker-registry 2.8 lacks: go-containerregistry's in-memory `pkg/registry` behind
//! `tools/ociregistry` (`target/peers/ociregistry`), on loopback, plain HTTP, anonymous.
//!
//! [`OciRegistry::start`] builds the binary first if needed (`scripts/build-ociregistry.sh`,
//! once per process, under a file lock) and reads the address from the registry's first
//! stdout line (printed once it accepts connections). It starts in a few milliseconds and
//! holds everything in memory: one per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::sync::OnceCell;

use crate::oci_image::Layout;
use crate::proc::{Cleanup, first_stdout_line, kill_and_wait, log_tail, spawn_watchdog};

/// How long to wait for the registry's first stdout line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry, killed (and its log removed) when dropped.
pub struct OciRegistry {
    child: Child,
    watchdog: Child,
    host: String,
    dir: TempDir,
}

impl OciRegistry {
    /// Starts a registry and waits until it listens.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    /// Starts a registry whose manifest pushes answer 201 without a `Location` (as
    /// go-containerregistry's registry does, and ECR), and waits until it listens.
    pub async fn start_without_manifest_location() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    async fn start_with(manifest_location: bool) -> anyhow::Result<Self> {
        let bin = ensure_built().await?;
        let dir = tempfile::Builder::new().prefix("ido-ociregistry-").tempdir()?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(&bin);
        cmd.args(["-addr", "127.0.0.1:0"])
            .arg(format!("-manifest-location={manifest_location}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let dirs = [dir.path().display().to_string()];
        let mut watchdog = match spawn_watchdog(child.id(), &Cleanup::after_kill("rm -rf -- \"$@\"", &dirs)) {
            Ok(w) => w,
            Err(e) => {
                kill_and_wait(&mut child);
                return Err(e).context("spawning the ociregistry watchdog");
            }
        };
        // First stdout line → the address; the rest goes to the log.
        let first = first_stdout_line(&mut child, log, START_TIMEOUT, "ociregistry's address").await;
        match first {
            Ok(host) if host.starts_with("127.0.0.1:") => Ok(Self {
                child,
                watchdog,
                host,
                dir,
            }),
            other => {
                kill_and_wait(&mut watchdog);
                kill_and_wait(&mut child);
                let why = other.map_or_else(|e| e.to_string(), |l| format!("unexpected first line {l:?}"));
                bail!("starting {}: {why}\n{}", bin.display(), log_tail(&log_path, 20))
            }
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// The last lines of its log (stderr), for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("registry.log"), 40)
    }

    /// Pushes `layout` as `repo:tag` with skopeo, as [`crate::oci_image::push_layout`] does
    /// to a docker-registry.
    pub async fn push_layout(&self, layout: &Layout, repo_tag: &str) -> anyhow::Result<()> {
        let src = if layout.dir.join("manifest.json").exists() {
            format!("dir:{}", layout.dir.display())
        } else {
            format!("oci:{}:{}", layout.dir.display(), layout.tag)
        };
        let args = [
            "copy",
            "--all",
            "--preserve-digests",
            "-q",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{}/{repo_tag}", self.host),
        ];
        crate::registry::skopeo(&args.map(String::from)).await.map(drop)
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
        kill_and_wait(&mut self.watchdog);
    }
}

/// Runs `scripts/build-ociregistry.sh` once per process under `flock` (it does nothing when
/// the cached build is up to date) and returns `target/peers/ociregistry`. A failed rebuild
/// (no module proxy, say) falls back to an existing binary.
pub async fn ensure_built() -> anyhow::Result<PathBuf> {
    static BUILT: OnceCell<PathBuf> = OnceCell::const_new();
    let path = BUILT
        .get_or_try_init(|| crate::proc::build_go_peer("build-ociregistry.sh", "ociregistry"))
        .await?;
    Ok(path.clone())
}
