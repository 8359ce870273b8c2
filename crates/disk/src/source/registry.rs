//! Registry source: a KubeVirt "containerDisk" image, `docker://REGISTRY/REPO[:TAG|@DIGEST]`
//! (skopeo's transport name, as `ido copy`). The disk is the one regular file under
//! `/disk/` of the image's filesystem.
//!
//! ```text
//!  manifest (index → the selected platform's image; default: this machine's)
//!    └─ layers, from the top (last) one down:
//!         blob GET (oci-client: token/basic auth, TLS) ─► sha256 checked at the end
//!           ─► gzip | zstd | plain ─► tar walked in a thread
//!              └─ the layer's regular file under disk/ streams out as the source
//! ```
//!
//! Rules (KubeVirt's convention, files of later layers hide earlier ones):
//! - the **topmost layer holding a regular file under `disk/`** gives the disk; lower
//!   layers are never downloaded (a containerDisk's disk is normally its last layer);
//! - that layer must hold **exactly one** such file: a second one is refused as ambiguous
//!   (checked while the rest of the layer is read, so the import fails and leaves nothing);
//! - whiteouts in higher layers (`disk/.wh.NAME`, `disk/.wh..wh..opq`, `.wh.disk`) hide
//!   lower files; links and devices under `disk/` are refused; names with `..` too;
//! - no disk in any layer is an error naming the image.
//!
//! A cut blob transfer resumes at the byte where it stopped (`Range`, via oci-client's
//! partial pulls), with backoff; the layer digest is verified over all its bytes. The
//! source's size is the disk file's size (from its tar header), and the checksum option
//! covers the disk file's bytes.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use ido_oci::auth::AuthStore;
use ido_oci::media::{self, Descriptor, Manifest, Platform};
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference};
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot};

use super::http::RetryPolicy;
use super::{Opened, read_full};
use crate::decompress::{DecompressOptions, decoder};
use crate::detect::Compression;
use crate::{Error, Result};

/// A containerDisk image and how to reach its registry.
#[derive(Clone)]
pub struct RegistryOptions {
    /// The image reference without transport (`127.0.0.1:5000/disks/fedora:40`).
    pub reference: String,
    /// The platform to select from an index (`OS/ARCH[/VARIANT]`); `None`: this
    /// machine's. Given for a single-platform image, its config must match.
    pub platform: Option<String>,
    /// Credentials per registry (docker config, `--authfile`).
    pub auth: AuthStore,
    /// Verify TLS (default). `false` allows plain HTTP or unverified TLS (skopeo's
    /// `--src-tls-verify=false`).
    pub tls_verify: bool,
    /// Extra trusted CA certificates (PEM).
    pub ca_bundle: Option<String>,
    /// Retries of manifest pulls and cut blob transfers.
    pub retry: RetryPolicy,
}

impl RegistryOptions {
    /// Parses `docker://REFERENCE` (defaults: host platform, no credentials, TLS verified).
    pub fn parse(s: &str) -> Result<Self> {
        let bare = s
            .get(..9)
            .filter(|p| p.eq_ignore_ascii_case("docker://"))
            .map(|_| &s[9..])
            .ok_or_else(|| Error::InvalidArgument {
                field: "source",
                value: s.to_string(),
                reason: "expected docker://REGISTRY/REPOSITORY[:TAG|@DIGEST]".into(),
            })?;
        ido_oci::reference::parse(bare).map_err(|e| Error::InvalidArgument {
            field: "source",
            value: s.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            reference: bare.to_string(),
            platform: None,
            auth: AuthStore::default(),
            tls_verify: true,
            ca_bundle: None,
            retry: RetryPolicy::default(),
        })
    }
}

impl fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("reference", &self.reference)
            .field("platform", &self.platform)
            .field("auth", &self.auth)
            .field("tls_verify", &self.tls_verify)
            .field("ca_bundle", &self.ca_bundle.as_ref().map(|_| "<PEM>"))
            .field("retry", &self.retry)
            .finish()
    }
}

impl fmt::Display for RegistryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}", self.reference)
    }
}

/// Pieces of the disk file queued for the reader (1 MiB each).
const QUEUE: usize = 4;
/// Blob chunks queued for a layer's tar walker.
const BLOB_QUEUE: usize = 32;
/// Largest manifest or config read.
const META_MAX: usize = 4 << 20;

/// Finds the disk and opens it as the source.
pub(super) async fn open(opts: &RegistryOptions, decompress: &DecompressOptions) -> Result<Opened> {
    let reference = ido_oci::reference::parse(&opts.reference).map_err(|e| Error::InvalidArgument {
        field: "source",
        value: opts.to_string(),
        reason: e.to_string(),
    })?;
    let platform = match &opts.platform {
        Some(p) => Some(Platform::parse(p).map_err(|e| Error::InvalidArgument {
            field: "platform",
            value: p.clone(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let host = reference.resolve_registry().to_string();
    let client = Arc::new(client(opts, &host).await?);
    let auth = opts.auth.auth_for(&host);
    let shown = opts.to_string();
    let ctx = Ctx {
        client,
        retry: opts.retry.clone(),
        shown: shown.clone(),
    };

    // The manifest, through an index if need be.
    let top = ctx
        .retrying("pulling the manifest", || {
            ctx.client.pull_manifest_raw(&reference, &auth, media::ACCEPTED)
        })
        .await?;
    let (image_ref, layers, config) = match parse_manifest(&top.0, &shown)? {
        Manifest::Index { manifests, .. } => {
            let want = platform.clone().unwrap_or_else(Platform::host);
            let d = manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| want.selects(p)))
                .ok_or_else(|| Error::InvalidArgument {
                    field: "platform",
                    value: want.to_string(),
                    reason: format!(
                        "{shown} has no image for it (has: {})",
                        manifests
                            .iter()
                            .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?;
            let child = Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                d.digest.clone(),
            );
            let (bytes, _) = ctx
                .retrying("pulling the platform's manifest", || {
                    ctx.client.pull_manifest_raw(&child, &auth, media::ACCEPTED)
                })
                .await?;
            if media::sha256(&bytes) != d.digest {
                return Err(Error::invalid(
                    "oci",
                    format!("{shown}: manifest {} does not match its digest", d.digest),
                ));
            }
            match parse_manifest(&bytes, &shown)? {
                Manifest::Image { layers, .. } => (child, layers, None),
                Manifest::Index { .. } => {
                    return Err(Error::Unsupported {
                        format: "oci",
                        reason: format!("{shown}: an index inside an index"),
                    });
                }
            }
        }
        Manifest::Image { layers, config, .. } => (reference.clone(), layers, Some(config)),
    };
    // A single image checked against an explicit platform (an index was selected by it).
    if let (Some(want), Some(config)) = (&platform, &config) {
        let got = config_platform(&ctx, &image_ref, config).await?;
        if !got.as_ref().is_some_and(|p| want.selects(p)) {
            return Err(Error::InvalidArgument {
                field: "platform",
                value: want.to_string(),
                reason: format!(
                    "{shown} is a single image for {}",
                    got.map_or("an unknown platform".into(), |p| p.to_string())
                ),
            });
        }
    }

    // Layers from the top down; the first holding a disk/ file gives the disk.
    let mut hidden = Hidden::default();
    for (i, layer) in layers.iter().enumerate().rev() {
        if !layer.urls.is_empty() {
            tracing::debug!(digest = %layer.digest, "skipping a foreign layer");
            continue;
        }
        let (found_tx, found_rx) = oneshot::channel();
        let (data_tx, data_rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (blob_tx, blob_rx) = mpsc::channel(BLOB_QUEUE);
        let fetch = tokio::spawn(fetch_blob(ctx.clone(), image_ref.clone(), layer.clone(), blob_tx));
        let walker = Walker {
            blob: BlobReader {
                rx: blob_rx,
                cur: Bytes::new(),
            },
            media_type: layer.media_type.clone(),
            hidden: hidden.clone(),
            shown: format!("{shown} layer {} ({})", i + 1, layer.digest),
            decompress: decompress.clone(),
        };
        std::thread::Builder::new()
            .name("ido-layer".into())
            .spawn(move || walker.run(found_tx, data_tx))
            .map_err(|e| Error::io("starting the layer reader", e))?;
        match found_rx.await {
            Ok(Ok(Found::Disk { name, size })) => {
                tracing::info!(image = %shown, layer = i + 1, file = %name, size, "containerDisk found");
                let reader = DiskReader {
                    rx: data_rx,
                    cur: Vec::new(),
                    pos: 0,
                    _fetch: AbortOnDrop(fetch),
                };
                return Ok(Opened::whole(Box::new(reader), Some(size)));
            }
            Ok(Ok(Found::Nothing(h))) => {
                fetch.await.ok();
                hidden = h;
                if hidden.opaque {
                    break;
                }
            }
            Ok(Err(e)) => {
                fetch.abort();
                return Err(e);
            }
            Err(_) => {
                fetch.abort();
                return Err(Error::io(
                    "reading a layer",
                    io::Error::other("the layer reader stopped"),
                ));
            }
        }
    }
    Err(Error::InvalidImage {
        format: "containerDisk",
        reason: format!("{shown}: no regular file under /disk/ in any layer"),
    })
}

/// The oci-client client of `host`, built by the OCI engine (`ido_oci::registry`) with the
/// same rules as `ido copy`: CA bundle checked, plain HTTP only with verification off and
/// when the registry does not speak TLS.
async fn client(opts: &RegistryOptions, host: &str) -> Result<Client> {
    let tls = ido_oci::registry::TlsSettings {
        verify: opts.tls_verify,
        ca_bundle: opts.ca_bundle.clone(),
    };
    // Credentials go with each request (`auth_for`), so ido-io's store stays empty.
    let reg = ido_oci::registry::Registry::connect(host, &tls, Arc::new(AuthStore::default()), 1)
        .await
        .map_err(|e| Error::InvalidArgument {
            field: "registry",
            value: host.to_string(),
            reason: e.to_string(),
        })?;
    Ok(reg.client().clone())
}

fn parse_manifest(bytes: &[u8], shown: &str) -> Result<Manifest> {
    if bytes.len() > META_MAX {
        return Err(Error::invalid(
            "oci",
            format!("{shown}: manifest larger than {META_MAX} bytes"),
        ));
    }
    media::parse(bytes, shown).map_err(|e| Error::Unsupported {
        format: "oci",
        reason: e.to_string(),
    })
}

/// The platform an image's config names.
async fn config_platform(ctx: &Ctx, image: &Reference, config: &Descriptor) -> Result<Option<Platform>> {
    if config.size > META_MAX as u64 {
        return Err(Error::invalid(
            "oci",
            format!("{}: config larger than {META_MAX} bytes", ctx.shown),
        ));
    }
    let buf = ctx
        .retrying("pulling the image config", || async {
            let mut b = Vec::new();
            ctx.client
                .pull_blob(image, config.digest.as_str(), &mut b)
                .await
                .map(|()| b)
        })
        .await?;
    #[derive(serde::Deserialize)]
    struct Cfg {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    let c: Cfg = serde_json::from_slice(&buf)
        .map_err(|e| Error::invalid("oci", format!("{}: image config: {e}", ctx.shown)))?;
    Ok(match (c.os, c.architecture) {
        (Some(os), Some(architecture)) => Some(Platform {
            os,
            architecture,
            variant: c.variant,
        }),
        _ => None,
    })
}

/// What the registry requests share.
#[derive(Clone)]
struct Ctx {
    client: Arc<Client>,
    retry: RetryPolicy,
    shown: String,
}

impl Ctx {
    /// Runs `op`, retrying transient failures with backoff.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut failures = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let last = match self.error(what, e) {
                        Error::RetriesExhausted { last, .. } => last,
                        fatal => return Err(fatal),
                    };
                    failures += 1;
                    if failures >= self.retry.attempts {
                        return Err(Error::RetriesExhausted {
                            url: self.shown.clone(),
                            attempts: failures,
                            last,
                        });
                    }
                    let wait = self.retry.backoff(failures);
                    tracing::warn!(image = %self.shown, attempt = failures, ?wait, "{last}; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// An oci-client error as ours (without any URL query). Transient ones come back as
    /// `RetriesExhausted` (the caller decides whether to retry).
    fn error(&self, what: &str, e: OciDistributionError) -> Error {
        let url = self.shown.clone();
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Error::Denied { url, status: 401 },
            OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound { url, status: 404 },
            OciDistributionError::ServerError { code, .. } => match code {
                404 | 410 => Error::NotFound { url, status: code },
                401 | 403 => Error::Denied { url, status: code },
                408 | 429 | 500..=599 => Error::RetriesExhausted {
                    url,
                    attempts: 1,
                    last: format!("{what}: HTTP {code}"),
                },
                _ => Error::Http { url, status: code },
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<String> = envelope.errors.iter().map(|e| format!("{:?}", e.code)).collect();
                let text = codes.join(", ");
                if text.contains("Unknown") {
                    Error::NotFound { url, status: 404 }
                } else if text.contains("Unauthorized") || text.contains("Denied") {
                    Error::Denied { url, status: 401 }
                } else if text.contains("Toomanyrequests") {
                    Error::RetriesExhausted {
                        url,
                        attempts: 1,
                        last: format!("{what}: {text}"),
                    }
                } else {
                    Error::invalid("oci", format!("{url}: {what}: registry error {text}"))
                }
            }
            OciDistributionError::RequestError(r) => {
                let text = ido_io::error_chain(&r.without_url());
                // TLS trouble does not go away by retrying: say so at once.
                let lower = text.to_ascii_lowercase();
                if [
                    "certificate",
                    "corrupt message",
                    "invalidcontenttype",
                    "handshake",
                ]
                .iter()
                .any(|k| lower.contains(k))
                {
                    return Error::InvalidArgument {
                        field: "registry TLS",
                        value: url,
                        reason: format!(
                            "{what}: {text} (a plain-HTTP registry needs --src-tls-verify=false, a private CA --src-cert-dir or --ca-file)"
                        ),
                    };
                }
                Error::RetriesExhausted {
                    url,
                    attempts: 1,
                    last: format!("{what}: {text}"),
                }
            }
            OciDistributionError::IoError(io) => Error::RetriesExhausted {
                url,
                attempts: 1,
                last: format!("{what}: {io}"),
            },
            other => Error::invalid(
                "oci",
                format!("{url}: {what}: {}", ido_io::redact::text(&other.to_string())),
            ),
        }
    }
}

/// Streams one blob into `tx`, resuming a cut transfer at its offset, and checks its
/// digest at the end (an error on `tx` if it does not match).
async fn fetch_blob(ctx: Ctx, image: Reference, layer: Descriptor, tx: mpsc::Sender<io::Result<Bytes>>) {
    if let Err(e) = fetch_blob_inner(&ctx, &image, &layer, &tx).await {
        let _ = tx.send(Err(e.into_io())).await;
    }
}

async fn fetch_blob_inner(
    ctx: &Ctx,
    image: &Reference,
    layer: &Descriptor,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<()> {
    let (alg, want) = layer.digest.split_once(':').unwrap_or_default();
    if alg != "sha256" {
        return Err(Error::Unsupported {
            format: "oci",
            reason: format!("{}: layer digest {} (only sha256)", ctx.shown, layer.digest),
        });
    }
    let what = format!("layer {}", layer.digest);
    let mut hasher = sha2::Sha256::new();
    let mut offset = 0u64;
    let mut failures = 0u32;
    loop {
        let last = match ctx
            .client
            .pull_blob_stream_partial(image, layer.digest.as_str(), offset, None)
            .await
        {
            Ok(resp) => {
                let (mut stream, mut skip) = match resp {
                    BlobResponse::Partial(s) => (s.stream, 0),
                    // The registry ignored Range: skip what was received.
                    BlobResponse::Full(s) => (s.stream, offset),
                };
                if offset > 0 {
                    tracing::info!(image = %ctx.shown, %what, offset, "resumed layer download");
                }
                loop {
                    match stream.next().await {
                        Some(Ok(mut b)) => {
                            if skip > 0 {
                                let k = skip.min(b.len() as u64) as usize;
                                b = b.slice(k..);
                                skip -= k as u64;
                            }
                            if b.is_empty() {
                                continue;
                            }
                            failures = 0;
                            offset += b.len() as u64;
                            hasher.update(&b);
                            if tx.send(Ok(b)).await.is_err() {
                                return Ok(()); // the walker is gone
                            }
                        }
                        Some(Err(e)) => break format!("{what}: transfer cut at byte {offset}: {e}"),
                        None if offset < layer.size => {
                            break format!("{what}: body ended at {offset} of {} bytes", layer.size);
                        }
                        None => {
                            let got = hex::encode(hasher.finalize());
                            if got != want {
                                return Err(Error::invalid(
                                    "oci",
                                    format!("{}: {what} has digest sha256:{got}", ctx.shown),
                                ));
                            }
                            return Ok(());
                        }
                    }
                }
            }
            Err(e) => match ctx.error(&what, e) {
                Error::RetriesExhausted { last, .. } => last,
                other => return Err(other),
            },
        };
        failures += 1;
        if failures >= ctx.retry.attempts {
            return Err(Error::RetriesExhausted {
                url: ctx.shown.clone(),
                attempts: failures,
                last,
            });
        }
        let wait = ctx.retry.backoff(failures);
        tracing::warn!(image = %ctx.shown, offset, attempt = failures, ?wait, "{last}; retrying");
        tokio::time::sleep(wait).await;
    }
}

/// The bytes of one blob as a blocking reader.
struct BlobReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// What a layer holds for the import.
enum Found {
    /// The disk file (its bytes follow on the data channel).
    Disk { name: String, size: u64 },
    /// No disk; what the layer hides of the layers below.
    Nothing(Hidden),
}

/// What higher layers hide under `disk/`.
#[derive(Clone, Debug, Default)]
struct Hidden {
    /// Names under `disk/` removed by whiteouts.
    names: HashSet<String>,
    /// The whole directory is hidden (opaque whiteout, `.wh.disk`, or `disk` replaced).
    opaque: bool,
}

/// Walks one layer's tar in its own thread.
struct Walker {
    blob: BlobReader,
    media_type: String,
    hidden: Hidden,
    shown: String,
    decompress: DecompressOptions,
}

type DataTx = std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>;

impl Walker {
    fn run(self, found: oneshot::Sender<Result<Found>>, data: DataTx) {
        let mut found = Some(found);
        let r = self.walk(&mut found, &data);
        match (r, found) {
            (Ok(h), Some(f)) => {
                let _ = f.send(Ok(Found::Nothing(h)));
            }
            (Err(e), Some(f)) => {
                let _ = f.send(Err(e));
            }
            (Ok(_), None) => {}
            (Err(e), None) => {
                let _ = data.send(Err(e.into_io()));
            }
        }
    }

    fn walk(self, found: &mut Option<oneshot::Sender<Result<Found>>>, data: &DataTx) -> Result<Hidden> {
        let shown = self.shown.clone();
        let mut raw = BufReader::with_capacity(256 << 10, self.blob);
        let head = raw
            .fill_buf()
            .map_err(|e| Error::io(format!("reading {shown}"), e))?;
        let compression = if head.starts_with(&[0x1f, 0x8b]) || self.media_type.ends_with("gzip") {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || self.media_type.ends_with("zstd") {
            Some(Compression::Zstd)
        } else {
            None
        };
        let mut r: Box<dyn Read + Send> = match compression {
            Some(c) => decoder(c, Box::new(raw), &self.decompress)
                .map_err(|e| Error::io(format!("starting the {} decoder for {shown}", c.name()), e))?,
            None => Box::new(raw),
        };
        let mut hides = Hidden::default();
        let mut disk: Option<String> = None;
        let ctx = |e| Error::io(format!("reading {shown}"), e);
        while let Some(m) = next_member(&mut r, &shown)? {
            let name = normalize(&m.name);
            if name == ".wh.disk" || (name == "disk" && m.kind != b'5') {
                hides.opaque = true;
            }
            let Some(inner) = name.strip_prefix("disk/").filter(|n| !n.is_empty()) else {
                skip(&mut r, padded(m.size)).map_err(ctx)?;
                continue;
            };
            if inner.split('/').any(|c| c == "..") {
                return Err(Error::refused(
                    "containerDisk",
                    format!("{shown}: unsafe name {:?}", m.name),
                ));
            }
            if inner == ".wh..wh..opq" {
                hides.opaque = true;
            } else if let Some(gone) = inner.strip_prefix(".wh.") {
                hides.names.insert(gone.to_string());
            } else if !self.hidden.opaque && !self.hidden.names.contains(inner) && m.kind != b'5' {
                if !matches!(m.kind, b'0' | 0 | b'7') {
                    return Err(Error::Unsupported {
                        format: "containerDisk",
                        reason: format!(
                            "{shown}: {name} is not a regular file (tar type {:?})",
                            m.kind as char
                        ),
                    });
                }
                if let Some(first) = &disk {
                    return Err(Error::refused(
                        "containerDisk",
                        format!(
                            "{shown}: more than one file under /disk/ ({first}, {name}): which one is the disk is ambiguous"
                        ),
                    ));
                }
                disk = Some(name.clone());
                if let Some(f) = found.take() {
                    let _ = f.send(Ok(Found::Disk {
                        name: name.clone(),
                        size: m.size,
                    }));
                }
                stream(&mut r, m.size, data).map_err(ctx)?;
                skip(&mut r, padded(m.size) - m.size).map_err(ctx)?;
                continue;
            }
            skip(&mut r, padded(m.size)).map_err(ctx)?;
        }
        // The rest of the layer (tar padding, decoder trailers): the digest covers it.
        io::copy(&mut r, &mut io::sink()).map_err(ctx)?;
        let mut all = self.hidden;
        all.opaque |= hides.opaque;
        all.names.extend(hides.names);
        Ok(all)
    }
}

/// Sends `n` bytes of `r` to the reader in 1 MiB pieces (stops quietly if it is gone).
fn stream(r: &mut dyn Read, mut n: u64, data: &DataTx) -> io::Result<()> {
    let mut gone = false;
    while n > 0 {
        let mut buf = vec![0u8; n.min(1 << 20) as usize];
        let k = read_full(r, &mut buf)?;
        if k < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the disk file is truncated",
            ));
        }
        n -= k as u64;
        if !gone && data.send(Ok(buf)).is_err() {
            gone = true;
        }
    }
    Ok(())
}

/// `./disk/x`, `/disk/x` → `disk/x`.
fn normalize(name: &str) -> String {
    let mut n = name;
    loop {
        if let Some(r) = n.strip_prefix("./") {
            n = r;
        } else if let Some(r) = n.strip_prefix('/') {
            n = r;
        } else {
            break;
        }
    }
    n.trim_end_matches('/').to_string()
}

/// The disk file as the source's reader. Ends when the layer has been read to its end
/// (a second disk file, a bad digest or a cut that cannot be resumed fail it instead).
struct DiskReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    _fetch: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Read for DiskReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.cur = b;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// --- a minimal streaming tar reader (ustar, GNU long names, pax path/size) ---

const BLOCK: usize = 512;

struct Member {
    name: String,
    kind: u8,
    size: u64,
}

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn skip(r: &mut dyn Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the layer's tar is truncated",
        ));
    }
    Ok(())
}

/// The next member's header (data not read), or `None` at the end of the archive.
fn next_member(r: &mut dyn Read, shown: &str) -> Result<Option<Member>> {
    let bad = |reason: String| Error::invalid("tar", format!("{shown}: {reason}"));
    let io_err = |e| Error::io(format!("reading {shown}"), e);
    let (mut long_name, mut pax_path, mut pax_size) = (None::<String>, None::<String>, None::<u64>);
    loop {
        let mut h = [0u8; BLOCK];
        let n = read_full(r, &mut h).map_err(io_err)?;
        if n == 0 || h.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        if n < BLOCK {
            return Err(bad("truncated header".into()));
        }
        if crate::tar::checksum_holds(&h) != Some(true) {
            return Err(bad("header checksum mismatch (not a tar layer?)".into()));
        }
        let size = size_field(&h[124..136]).ok_or_else(|| bad("bad size field".into()))?;
        let kind = h[156];
        match kind {
            b'L' | b'x' | b'g' => {
                if size > 1 << 20 {
                    return Err(bad(format!("metadata entry of {size} bytes")));
                }
                let mut data = vec![0u8; size as usize];
                if read_full(r, &mut data).map_err(io_err)? < data.len() {
                    return Err(bad("truncated".into()));
                }
                skip(r, padded(size) - size).map_err(io_err)?;
                if kind == b'L' {
                    long_name = Some(cstr(&data));
                } else if kind == b'x' {
                    for (k, v) in pax(&data) {
                        match k.as_str() {
                            "path" => pax_path = Some(v),
                            "size" => pax_size = v.parse().ok(),
                            _ => {}
                        }
                    }
                }
                continue;
            }
            _ => {}
        }
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        return Ok(Some(Member {
            name: pax_path.or(long_name).unwrap_or(name),
            kind,
            size: pax_size.unwrap_or(size),
        }));
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn octal(f: &[u8]) -> Option<u64> {
    let s = cstr(f);
    let t = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if t.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(t, 8).ok()
}

/// Octal, or GNU base-256 (high bit set).
fn size_field(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        Some(v)
    } else {
        octal(f)
    }
}

/// `LEN KEY=VALUE\n` records.
fn pax(mut data: &[u8]) -> Vec<(String, String)> {
    let mut out = vec![];
    while !data.is_empty() {
        let Some(sp) = data.iter().position(|c| *c == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > data.len() {
            break;
        }
        let rec = &data[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|c| *c == b'=') {
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
            ));
        }
        data = &data[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_references() {
        let o = RegistryOptions::parse("docker://127.0.0.1:5000/disks/fedora:40").unwrap();
        assert_eq!(o.reference, "127.0.0.1:5000/disks/fedora:40");
        assert_eq!(o.to_string(), "docker://127.0.0.1:5000/disks/fedora:40");
        let e = RegistryOptions::parse("docker://Bad/Ref")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source") && e.contains("Bad/Ref"), "{e}");
        assert!(RegistryOptions::parse("registry://x/y").is_err());
    }

    #[test]
    fn names_and_urls() {
        assert_eq!(normalize("./disk/a.qcow2"), "disk/a.qcow2");
        assert_eq!(normalize("/disk/"), "disk");
        let s = ido_io::redact::text("error at https://s3.example/b/k?X-Amz-Signature=abc, code 500");
        assert!(!s.contains("abc") && s.contains("https://s3.example/b/k"), "{s}");
    }
}
