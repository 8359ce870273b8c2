//! `ido upload NAME --image-path FILE`: uploads a local disk into a DiskImport whose source
//! is `upload`, as `virtctl image-upload` does for CDI.
//!
//! ```text
//!   DiskImport NS/NAME ── missing and --size ─▶ created (source.upload)
//!        └─ wait for phase UploadReady
//!   UploadTokenRequest (dry run) ─▶ token          (again when one expires)
//!   HEAD  URL/v1beta1/upload ─▶ Upload-Offset      (an upload cut earlier goes on there)
//!   POST  URL/v1beta1/upload[-async]  Upload-Offset, Upload-Length, Upload-Id, the file from
//!         the offset, with a progress bar
//!        cut ─▶ retried from the server's offset (up to --retries times in a row)
//!   ─▶ the DiskImport Succeeded
//! ```
//!
//! The token travels only in the `Authorization` header; it is never printed.

use std::{
    io::SeekFrom,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt;
use ido_api::{
    DiskImport, DiskImportPhase, DiskImportSource, DiskImportSpec, StorageSpec, UploadSource, VolumeMode,
    diskimport::ContentType,
    upload::{UploadTokenRequest, UploadTokenRequestSpec},
};
use ido_io::progress::{Progress, Report, display::Display, human};
use kube::api::{Api, PostParams};
use reqwest::StatusCode;
use tokio::io::AsyncSeekExt;

use super::server::{ID, LENGTH, OFFSET};
use crate::progress::ProgressMode;

#[derive(Args, Debug)]
pub(crate) struct UploadArgs {
    /// The DiskImport to upload into (its claim has its name). Made with --size when it
    /// does not exist.
    name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The local disk image: qcow2, raw, ISO, vmdk, vhd(x), vdi, maybe gzip/xz/zstd/bzip2
    /// compressed (a tar with --archive). Converted by the upload pod as it arrives.
    #[arg(long, value_name = "FILE")]
    image_path: PathBuf,
    /// The upload endpoint of the operator (the chart's `diskImport.upload`), e.g.
    /// https://ido-upload.example:8444. Default: $IDO_UPLOAD_URL.
    #[arg(
        long,
        visible_alias = "uploadproxy-url",
        env = "IDO_UPLOAD_URL",
        value_name = "URL"
    )]
    url: String,
    /// Extra trusted CA certificates (PEM) for the endpoint.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Do not verify the endpoint's TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// Create the DiskImport with this disk size (e.g. 10Gi) when it does not exist.
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// Storage class of a created DiskImport's claim.
    #[arg(long, value_name = "CLASS")]
    storage_class: Option<String>,
    /// Access mode of a created DiskImport's claim (repeatable; default ReadWriteOnce).
    #[arg(long = "access-mode", value_name = "MODE")]
    access_modes: Vec<String>,
    /// Make a created DiskImport's claim a Block volume.
    #[arg(long)]
    block_volume: bool,
    /// The file is a tar to unpack into the claim (contentType archive), not a disk.
    #[arg(long)]
    archive: bool,
    /// Write every block of a created DiskImport's disk.
    #[arg(long)]
    preallocation: bool,
    /// Expected checksum of the file, set on a created DiskImport (ALG:HEX); the upload pod
    /// checks it.
    #[arg(long, value_name = "ALG:HEX")]
    checksum: Option<String>,
    /// Return once the bytes are sent (the pod finishes the conversion), instead of once
    /// the disk is in.
    #[arg(long = "async")]
    async_: bool,
    /// How long to wait for the upload pod to be ready, and for the DiskImport to succeed.
    #[arg(long, default_value = "5m", value_parser = crate::cli::parse_duration)]
    wait: Duration,
    /// Failed attempts in a row (cuts, 503s) before giving up.
    #[arg(long, default_value_t = 10)]
    retries: u32,
    /// Progress display: auto, bar, plain, none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
}

pub(crate) async fn upload_cmd(a: UploadArgs) -> anyhow::Result<ExitCode> {
    let file = tokio::fs::File::open(&a.image_path)
        .await
        .with_context(|| format!("--image-path {}", a.image_path.display()))?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        bail!("--image-path {}: not a regular file", a.image_path.display());
    }
    let total = meta.len();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (kubeconfig or in-cluster configuration)")?;
    let ns = a
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<DiskImport> = Api::namespaced(client.clone(), &ns);
    let key = format!("{ns}/{}", a.name);

    let di = match api
        .get_opt(&a.name)
        .await
        .with_context(|| format!("reading DiskImport {key}"))?
    {
        Some(di) => di,
        None => {
            let Some(size) = &a.size else {
                bail!("DiskImport {key} does not exist; give --size to create it");
            };
            let di = api
                .create(&PostParams::default(), &new_disk_import(&a, &ns, size))
                .await
                .with_context(|| format!("creating DiskImport {key}"))?;
            eprintln!("created DiskImport {key} ({size})");
            di
        }
    };
    if di.spec.source.upload.is_none() {
        bail!("DiskImport {key} has no spec.source.upload: it imports from elsewhere");
    }
    wait_phase(&api, &a.name, a.wait, |p| p == DiskImportPhase::UploadReady)
        .await
        .with_context(|| format!("waiting for DiskImport {key} to be ready for the upload"))?;

    let tokens: Api<UploadTokenRequest> = Api::namespaced(client.clone(), &ns);
    let http = ido_io::http::client(
        &ido_io::http::TlsOptions {
            insecure: a.insecure,
            ca_bundle: a
                .ca_file
                .as_ref()
                .map(|p| std::fs::read_to_string(p).with_context(|| format!("--ca-file {}", p.display())))
                .transpose()?,
        },
        "--url",
    )?;
    let base = a.url.trim_end_matches('/').to_string();
    let path = if a.async_ {
        "/v1beta1/upload-async"
    } else {
        "/v1beta1/upload"
    };
    // The same file (path, length, modification time) continues an upload cut earlier.
    let id = upload_id(&a.image_path, &meta);

    let (progress, display, started, ticker) = shown(total, a.progress, Duration::from_millis(200));

    let mut token = token(&tokens, &a.name).await?;
    let mut failures = 0u32;
    let result = loop {
        let attempt = attempt(&http, &base, path, &token, &a.image_path, total, &id, &progress).await;
        match attempt {
            Ok(Sent::Done) => break Ok(()),
            Ok(Sent::Complete) => break Ok(()),
            Ok(Sent::Expired) => token = self::token(&tokens, &a.name).await?,
            Ok(Sent::Fatal(m)) => break Err(anyhow::anyhow!(m)),
            Ok(Sent::Retry(m)) | Err(Attempt(m)) => {
                failures += 1;
                if failures > a.retries {
                    break Err(anyhow::anyhow!("{m} (after {} attempts)", failures));
                }
                let pause = Duration::from_secs(1 << failures.min(3));
                tracing::warn!("upload attempt {failures}: {m}; again in {pause:?}");
                tokio::time::sleep(pause).await;
                // The token may have expired meanwhile.
                token = self::token(&tokens, &a.name).await?;
                continue;
            }
        }
        failures = 0;
    };
    ticker.abort();
    let mut last = progress.report(started.elapsed());
    last.timed(started.elapsed(), true);
    display.show(&last);
    display.finish();
    if let Err(e) = result {
        // The pod's own account of a failure (its termination message) is the DiskImport's.
        let status = api
            .get(&a.name)
            .await
            .ok()
            .and_then(|d| d.status)
            .unwrap_or_default();
        let said = [
            ido_api::diskimport::conditions::READY,
            ido_api::diskimport::conditions::RUNNING,
        ]
        .into_iter()
        .filter_map(|t| ido_api::condition::find(&status.conditions, t))
        .map(|c| c.message.trim().to_string())
        .find(|m| !m.is_empty());
        let e = match said {
            Some(m) => e.context(format!("DiskImport {key} ({}): {m}", status.phase)),
            None => e,
        };
        return Err(e.context(format!(
            "uploading {} into DiskImport {key}",
            a.image_path.display()
        )));
    }
    eprintln!(
        "uploaded {} ({}) in {:.1?}",
        a.image_path.display(),
        human(total),
        started.elapsed()
    );
    if a.async_ {
        eprintln!(
            "the upload pod converts the rest; see `kubectl get diskimport -n {ns} {}`",
            a.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let phase = wait_phase(&api, &a.name, a.wait, |p| {
        matches!(p, DiskImportPhase::Succeeded | DiskImportPhase::Failed)
    })
    .await?;
    if phase == DiskImportPhase::Failed {
        bail!(
            "DiskImport {key} failed (kubectl describe diskimport -n {ns} {})",
            a.name
        );
    }
    eprintln!("DiskImport {key} Succeeded: the disk is in claim {key}");
    Ok(ExitCode::SUCCESS)
}

/// `ido clone-send`: the source half of a clone across namespaces. It runs beside the
/// source claim and sends its disk, as it is, to the upload pod of the DiskImport that
/// clones it; a replacement pod goes on from the offset that pod reports.
#[derive(Args, Debug)]
pub(crate) struct SendArgs {
    /// The disk to send: a file, or a block device.
    source: PathBuf,
    /// The upload pod's upload URL (http://POD-IP:8443/v1beta1/upload).
    #[arg(long, value_name = "URL")]
    url: String,
    /// File holding the upload token (a mounted Secret; never an argument).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Failed attempts in a row before giving up.
    #[arg(long, default_value_t = 10)]
    retries: u32,
    /// Progress display: auto, bar, plain, none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Plain)]
    progress: ProgressMode,
}

pub(crate) async fn send_cmd(a: SendArgs) -> anyhow::Result<ExitCode> {
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("--token-file {}", a.token_file.display()))?
        .trim()
        .to_string();
    let mut file = tokio::fs::File::open(&a.source)
        .await
        .with_context(|| format!("opening {}", a.source.display()))?;
    let meta = file.metadata().await?;
    // A block device's length is where its end is.
    let total = file
        .seek(SeekFrom::End(0))
        .await
        .with_context(|| format!("reading {}", a.source.display()))?;
    drop(file);
    let http = ido_io::http::client(&Default::default(), "--url")?;
    let url = reqwest::Url::parse(&a.url).with_context(|| format!("--url {:?}", a.url))?;
    let base = url.origin().ascii_serialization();
    let id = upload_id(&a.source, &meta);
    let (progress, display, started, ticker) = shown(total, a.progress, Duration::from_secs(5));
    let mut failures = 0u32;
    let result = loop {
        match attempt(&http, &base, url.path(), &token, &a.source, total, &id, &progress).await {
            Ok(Sent::Done | Sent::Complete) => break Ok(()),
            Ok(Sent::Expired) => break Err(anyhow::anyhow!("the upload pod refused the clone's token")),
            Ok(Sent::Fatal(m)) => break Err(anyhow::anyhow!(m)),
            Ok(Sent::Retry(m)) | Err(Attempt(m)) => {
                failures += 1;
                if failures > a.retries {
                    break Err(anyhow::anyhow!("{m} (after {failures} attempts)"));
                }
                let pause = Duration::from_secs(1 << failures.min(3));
                tracing::warn!("send attempt {failures}: {m}; again in {pause:?}");
                tokio::time::sleep(pause).await;
            }
        }
    };
    ticker.abort();
    display.finish();
    result.with_context(|| format!("sending {} to {}", a.source.display(), base))?;
    eprintln!(
        "sent {} ({}) in {:.1?}",
        a.source.display(),
        human(total),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

/// The bytes sent so far of `total`, shown in `mode` every `every` until the ticker is
/// aborted: the counter, the display, the start, the ticker.
fn shown(
    total: u64,
    mode: ProgressMode,
    every: Duration,
) -> (Progress, Arc<Display>, Instant, tokio::task::JoinHandle<()>) {
    let progress = Progress::default();
    progress.add_total(total);
    let display = Arc::new(Display::new(mode.resolve(), line));
    let started = Instant::now();
    let ticker = {
        let (d, p) = (display.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                d.show(&p.report(started.elapsed()));
                tokio::time::sleep(every).await;
            }
        })
    };
    (progress, display, started, ticker)
}

/// The DiskImport `--size` and the other creation flags describe.
fn new_disk_import(a: &UploadArgs, ns: &str, size: &str) -> DiskImport {
    let mut di = DiskImport::new(
        &a.name,
        DiskImportSpec {
            source: DiskImportSource {
                upload: Some(UploadSource {
                    checksum: a.checksum.clone(),
                }),
                ..Default::default()
            },
            content_type: a.archive.then_some(ContentType::Archive),
            storage: StorageSpec {
                storage_class_name: a.storage_class.clone(),
                access_modes: a.access_modes.clone(),
                volume_mode: a.block_volume.then_some(VolumeMode::Block),
                size: Some(size.to_string()),
            },
            preallocation: a.preallocation.then_some(true),
        },
    );
    di.metadata.namespace = Some(ns.into());
    di
}

/// Waits until the DiskImport's phase passes `done` (a Failed one ends the wait with its
/// message, unless `done` takes it).
async fn wait_phase(
    api: &Api<DiskImport>,
    name: &str,
    limit: Duration,
    done: impl Fn(DiskImportPhase) -> bool,
) -> anyhow::Result<DiskImportPhase> {
    let deadline = Instant::now() + limit;
    let mut said = String::new();
    loop {
        let di = api
            .get(name)
            .await
            .with_context(|| format!("reading DiskImport {name}"))?;
        let st = di.status.unwrap_or_default();
        if done(st.phase) {
            return Ok(st.phase);
        }
        let ready = ido_api::condition::find(&st.conditions, ido_api::diskimport::conditions::READY);
        let why = ready
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        if st.phase == DiskImportPhase::Failed {
            bail!("the DiskImport failed: {why}");
        }
        let now = format!("phase {} {why}", st.phase);
        if now != said && st.phase != DiskImportPhase::New {
            eprintln!("DiskImport {name}: {}", now.trim_end_matches([' ', ':']));
            said = now;
        }
        if Instant::now() >= deadline {
            bail!("still {said} after {limit:?} (--wait)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A token from a dry-run UploadTokenRequest (never stored; ido's webhook answers it).
async fn token(api: &Api<UploadTokenRequest>, name: &str) -> anyhow::Result<String> {
    let req = UploadTokenRequest::new(
        name,
        UploadTokenRequestSpec {
            disk_import: Some(name.into()),
            pvc_name: None,
        },
    );
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let answer = api
        .create(&pp, &req)
        .await
        .context("asking for an upload token (UploadTokenRequest)")?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("the UploadTokenRequest came back without a token: is the operator's upload webhook installed (diskImport.upload.enabled)?")
}

/// What one attempt ended with.
enum Sent {
    /// 200: the disk (or, async, the bytes) is in.
    Done,
    /// 409 without an offset: the upload completed (an earlier attempt's last bytes got
    /// through before its answer was lost).
    Complete,
    /// 401: a new token is needed.
    Expired,
    /// Try again (a cut, 503, 409 with the offset to go on from).
    Retry(String),
    /// Stop (400: the upload failed; anything else unexpected).
    Fatal(String),
}

/// A transport failure of an attempt.
struct Attempt(String);

/// One request: HEAD for where to go on, then the file from there.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
    file: &std::path::Path,
    total: u64,
    id: &str,
    progress: &Progress,
) -> Result<Sent, Attempt> {
    let url = format!("{base}{path}");
    let head = http
        .head(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| Attempt(format!("HEAD {url}: {}", ido_io::error_chain(&e))))?;
    match head.status() {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED => return Ok(Sent::Expired),
        StatusCode::CONFLICT => return Ok(Sent::Complete),
        s if s.is_server_error() => {
            return Ok(Sent::Retry(format!("HEAD {url}: {s}: {}", body_of(head).await)));
        }
        s => return Ok(Sent::Fatal(format!("HEAD {url}: {s}: {}", body_of(head).await))),
    }
    let offset: u64 = head
        .headers()
        .get(OFFSET)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
        .min(total);
    // What the bar shows: the bytes the server has.
    progress.take_back(progress.get());
    progress.add(offset);
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(|e| Attempt(format!("opening {}: {e}", file.display())))?;
    f.seek(SeekFrom::Start(offset))
        .await
        .map_err(|e| Attempt(format!("reading {}: {e}", file.display())))?;
    let counter = progress.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).inspect(move |chunk| {
        if let Ok(c) = chunk {
            counter.add(c.len() as u64);
        }
    });
    let resp = http
        .post(&url)
        .bearer_auth(token)
        .header(OFFSET, offset)
        .header(LENGTH, total)
        .header(ID, id)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, total - offset)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .map_err(|e| Attempt(format!("POST {url}: {}", ido_io::error_chain(&e))))?;
    let status = resp.status();
    let has_offset = resp.headers().contains_key(OFFSET);
    let text = body_of(resp).await;
    Ok(match status {
        StatusCode::OK => Sent::Done,
        StatusCode::UNAUTHORIZED => Sent::Expired,
        StatusCode::CONFLICT if has_offset => Sent::Retry(text),
        StatusCode::CONFLICT => Sent::Complete,
        // A cut the server saw first, or a pod not ready (yet, or again).
        StatusCode::BAD_REQUEST if has_offset => Sent::Retry(text),
        s if s.is_server_error() => Sent::Retry(format!("{s}: {text}")),
        s => Sent::Fatal(format!("{s}: {text}")),
    })
}

async fn body_of(r: reqwest::Response) -> String {
    r.text().await.unwrap_or_default().trim().to_string()
}

/// The upload's id: a hash of the file's path, length and modification time.
fn upload_id(path: &std::path::Path, meta: &std::fs::Metadata) -> String {
    use sha2::Digest;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let h = sha2::Sha256::digest(format!("{}\n{}\n{mtime}", abs.display(), meta.len()));
    hex::encode(&h[..16])
}

/// A plain progress line.
fn line(r: &Report) -> String {
    let pct = r.percent().map(|x| format!("{x:.1}% ")).unwrap_or_default();
    let total = r
        .source_total
        .map(|t| format!(" of {}", human(t)))
        .unwrap_or_default();
    format!(
        "upload: {pct}{}{total} sent, {}/s",
        human(r.source_done),
        human(r.rate as u64)
    )
}
