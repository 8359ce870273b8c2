//! `docker-registry` (Debian's CNCF distribution 2.8) on loopback: plain, htpasswd, or TLS with
//! a [`TestCa`] certificate, each with a fresh data directory; token-authenticated (as Docker
//! Hub, GHCR, Quay and Harbor are) with a [`TokenServer`] of this kit
//! ([`DockerRegistry::start_with_token`]); and [`skopeo`] as the independent oracle for what
//! a registry holds.

use std::{path::Path, process::Child, time::Duration};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::{
    proc::{Cleanup, kill_and_wait, log_tail, spawn_watchdog},
    tls::TestCa,
    token_server::{TokenPolicy, TokenRequest, TokenServer},
};

/// The `service` of token-authenticated registries (the audience of their tokens).
pub const TOKEN_SERVICE: &str = "ido-test-registry";

/// How a registry is started.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a fresh [`TestCa`] certificate.
    pub tls: bool,
    /// Require these basic-auth credentials (htpasswd, bcrypt).
    pub auth: Option<(String, String)>,
}

/// A running registry, killed (and its data removed) when dropped.
pub struct DockerRegistry {
    child: Child,
    watchdog: Child,
    host: String,
    ca: Option<TestCa>,
    auth: Option<(String, String)>,
    token: Option<TokenServer>,
    dir: TempDir,
}

impl DockerRegistry {
    /// Starts a registry and waits until `/v2/` answers.
    pub async fn start(opts: RegistryOptions) -> anyhow::Result<Self> {
        Self::start_inner(opts, None).await
    }

    /// Starts a token-authenticated registry: `docker-registry` with `auth: token`, trusting
    /// a [`TokenServer`] (started here, on plain HTTP or, with `opts.tls`, HTTPS with the
    /// same certificate) that enforces `policy`. `opts.auth`, when set, is added to the
    /// policy's users and is what [`Self::credentials`] returns; otherwise that is the
    /// policy's first user (none if it has none).
    pub async fn start_with_token(
        mut opts: RegistryOptions,
        mut policy: TokenPolicy,
    ) -> anyhow::Result<Self> {
        match &opts.auth {
            Some((u, p)) => policy = policy.user(u, p),
            None => opts.auth = policy.users.first().cloned(),
        }
        Self::start_inner(opts, Some(policy)).await
    }

    async fn start_inner(opts: RegistryOptions, policy: Option<TokenPolicy>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ido-registry-").tempdir()?;
        let port = crate::free_port()?;
        let host = format!("127.0.0.1:{port}");
        let ca = if opts.tls { Some(TestCa::new()?) } else { None };
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nvalidation:\n  manifests:\n    urls:\n      allow: ['^https?://']\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some(ca) = &ca {
            config += &format!(
                "  tls: {{certificate: {}, key: {}}}\n",
                ca.server_cert.display(),
                ca.server_key.display()
            );
        }
        let token = match policy {
            Some(policy) => {
                let server = TokenServer::start(policy, TOKEN_SERVICE, ca.as_ref())?;
                config += &format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    server.realm(),
                    server.service(),
                    server.issuer(),
                    server.root_cert_bundle().display()
                );
                Some(server)
            }
            None => None,
        };
        if let Some((user, pass)) = opts.auth.as_ref().filter(|_| token.is_none()) {
            let out = std::process::Command::new("htpasswd")
                .args(["-niB", user])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().expect("stdin").write_all(pass.as_bytes())?;
                    c.wait_with_output()
                })
                .context("running htpasswd (apt: apache2-utils)")?;
            std::fs::write(dir.path().join("htpasswd"), &out.stdout)?;
            config += &format!(
                "auth: {{htpasswd: {{realm: basic-realm, path: {}}}}}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config)?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = std::process::Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .context("spawning docker-registry (apt: docker-registry)")?;
        let mut dirs = vec![dir.path().display().to_string()];
        dirs.extend(token.iter().map(|t| t.dir().display().to_string()));
        let watchdog = match spawn_watchdog(child.id(), &Cleanup::after_kill("rm -rf -- \"$@\"", &dirs)) {
            Ok(w) => w,
            Err(e) => {
                kill_and_wait(&mut child);
                return Err(e.into());
            }
        };
        let reg = Self {
            child,
            watchdog,
            host,
            ca,
            auth: opts.auth,
            token,
            dir,
        };
        let client = reg.http_client()?;
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{}/v2/", reg.base_url())).send().await
                && (r.status().is_success() || r.status().as_u16() == 401)
            {
                return Ok(reg);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("docker-registry did not start: {}", log_tail(&log_path, 20))
    }

    /// The registry process's id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` it listens on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.ca.is_some() { "https" } else { "http" },
            self.host
        )
    }

    /// The CA of its certificate (TLS registries).
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// Its credentials, if it requires some (a token registry: the user clients log in as).
    pub fn credentials(&self) -> Option<&(String, String)> {
        self.auth.as_ref()
    }

    /// Its token server (token-authenticated registries).
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// The requests its token server answered so far (empty without one).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token.as_ref().map(TokenServer::requests).unwrap_or_default()
    }

    /// A docker config file (`auths`) with its credentials, for `--authfile` and skopeo.
    pub fn write_authfile(&self, path: &Path) -> anyhow::Result<()> {
        let (u, p) = self.auth.as_ref().context("registry has no credentials")?;
        let auth = base64_encode(format!("{u}:{p}").as_bytes());
        std::fs::write(
            path,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.host),
        )?;
        Ok(())
    }

    /// Bytes stored under the data directory (blobs and metadata).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Its log: warnings and errors, and the access log (one combined-format line per
    /// request, e.g. `"PUT /v2/app/manifests/1.0 HTTP/1.1" 201`).
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("registry.log")
    }

    fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        crate::install_crypto_provider();
        match &self.ca {
            Some(ca) => ca.reqwest_client(),
            None => Ok(reqwest::Client::new()),
        }
    }

    /// skopeo's TLS/auth flags for this registry as a `--src-*` or `--dest-*` side (`""`
    /// for commands without a side prefix, like `inspect`). `dir` holds the cert dir and
    /// authfile it writes.
    pub fn skopeo_flags(&self, side: &str, dir: &Path) -> anyhow::Result<Vec<String>> {
        let p = |f: &str| {
            if side.is_empty() {
                format!("--{f}")
            } else {
                format!("--{side}-{f}")
            }
        };
        let mut flags = vec![];
        match &self.ca {
            Some(ca) => {
                let certs = dir.join(format!("certs-{}", self.host.replace(':', "_")));
                std::fs::create_dir_all(&certs)?;
                std::fs::copy(&ca.ca_cert, certs.join("ca.crt"))?;
                flags.push(format!("{}={}", p("cert-dir"), certs.display()));
            }
            None => flags.push(format!("{}=false", p("tls-verify"))),
        }
        if self.auth.is_some() {
            let f = dir.join(format!("auth-{}.json", self.host.replace(':', "_")));
            self.write_authfile(&f)?;
            flags.push(format!("{}={}", p("authfile"), f.display()));
        }
        Ok(flags)
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
        kill_and_wait(&mut self.watchdog);
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs skopeo with `args`; its stdout, or an error with its stderr.
pub async fn skopeo(args: &[String]) -> anyhow::Result<Vec<u8>> {
    let out = tokio::process::Command::new("skopeo")
        .args(args)
        .output()
        .await
        .context("running skopeo (apt: skopeo)")?;
    if !out.status.success() {
        bail!(
            "skopeo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The raw manifest at `reference` (e.g. `repo:tag`) as skopeo sees it, and its sha256.
pub async fn skopeo_raw(
    reg: &DockerRegistry,
    reference: &str,
    dir: &Path,
) -> anyhow::Result<(Vec<u8>, String)> {
    let mut args = vec!["inspect".to_string(), "--raw".to_string()];
    args.extend(reg.skopeo_flags("", dir)?);
    args.push(format!("docker://{}/{reference}", reg.host()));
    let raw = skopeo(&args).await?;
    let digest = sha256_hex(&raw);
    Ok((raw, format!("sha256:{digest}")))
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
