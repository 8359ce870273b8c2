//! nginx serving a directory on loopback: a real, fast HTTP file server (Range → 206,
//! `Accept-Ranges`, ETag, sendfile) for the disk-import benchmark. Debian's `nginx-light`
//! (`scripts/setup.sh --bench` installs it); the package's own service is never used.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::proc::{Cleanup, kill_and_wait, log_tail, spawn_watchdog};

/// A running nginx; killed when dropped.
pub struct Nginx {
    child: Child,
    watchdog: Child,
    port: u16,
    root: PathBuf,
    _dir: TempDir,
}

impl Nginx {
    /// Serves `root` (read-only, no access log, sendfile on) on `127.0.0.1:<free port>`.
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ido-nginx-").tempdir()?;
        let port = crate::free_port()?;
        let d = dir.path().display();
        let root = root
            .canonicalize()
            .with_context(|| format!("nginx root {}", root.display()))?;
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  default_type application/octet-stream;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log_path = dir.path().join("error.log");
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .context("spawning nginx (apt: nginx-light; scripts/setup.sh --bench)")?;
        let watchdog = match spawn_watchdog(child.id(), &Cleanup::after_kill("", &[])) {
            Ok(w) => w,
            Err(e) => {
                kill_and_wait(&mut child);
                return Err(e.into());
            }
        };
        let n = Self {
            child,
            watchdog,
            port,
            root,
            _dir: dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        bail!("nginx did not start: {}", log_tail(&log_path, 20))
    }

    /// `http://127.0.0.1:PORT/<path>` for a file under the root.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
        kill_and_wait(&mut self.watchdog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_ranges() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.img"), b"0123456789").unwrap();
        let n = Nginx::start(dir.path()).await.unwrap();
        crate::install_crypto_provider();
        let c = reqwest::Client::new();
        let r = c
            .get(n.url("f.img"))
            .header("Range", "bytes=2-4")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"234");
        let r = c.get(n.url("absent")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
    }
}
