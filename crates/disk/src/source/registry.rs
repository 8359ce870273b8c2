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

use std::fmt;
use std::io::{self};
use std::sync::Arc;

use bytes::Bytes;
use ido_oci::auth::AuthStore;
use ido_oci::media::{self, Descriptor, Manifest, Platform};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::sync::{mpsc, oneshot};

use super::http::RetryPolicy;
use super::{Opened, read_full};
use crate::decompress::{DecompressOptions, decoder};
use crate::detect::Compression;
use crate::{Error, Result};

mod blob;
mod walk;

use blob::{BlobReader, fetch_blob};
use walk::{AbortOnDrop, DiskReader, Found, Hidden, Walker};

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
    let (reference, platform) = target(opts)?;
    let host = reference.resolve_registry().to_string();
    let client = Arc::new(client(opts, &host).await?);
    let auth = opts.auth.auth_for(&host);
    let ctx = Ctx {
        client,
        retry: opts.retry.clone(),
        shown: opts.to_string(),
    };
    let (image_ref, layers) = image(&ctx, &reference, platform.as_ref(), &auth).await?;
    find_disk(&ctx, &image_ref, &layers, decompress).await
}

/// The image reference and the platform asked for, parsed.
fn target(opts: &RegistryOptions) -> Result<(Reference, Option<Platform>)> {
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
    Ok((reference, platform))
}

/// The image to read and its layers: the manifest, through an index if need be (the
/// platform's image, by default this machine's). A single image is checked against an
/// explicit platform (an index was selected by it).
async fn image(
    ctx: &Ctx,
    reference: &Reference,
    platform: Option<&Platform>,
    auth: &RegistryAuth,
) -> Result<(Reference, Vec<Descriptor>)> {
    let shown = &ctx.shown;
    let top = ctx
        .retrying("pulling the manifest", || {
            ctx.client.pull_manifest_raw(reference, auth, media::ACCEPTED)
        })
        .await?;
    let manifests = match parse_manifest(&top.0, shown)? {
        Manifest::Index { manifests, .. } => manifests,
        Manifest::Image { layers, config, .. } => {
            if let Some(want) = platform {
                check_platform(ctx, reference, &config, want).await?;
            }
            return Ok((reference.clone(), layers));
        }
    };
    let want = platform.cloned().unwrap_or_else(Platform::host);
    let d = select(&manifests, &want, shown)?;
    let child = Reference::with_digest(
        reference.registry().to_string(),
        reference.repository().to_string(),
        d.digest.clone(),
    );
    let (bytes, _) = ctx
        .retrying("pulling the platform's manifest", || {
            ctx.client.pull_manifest_raw(&child, auth, media::ACCEPTED)
        })
        .await?;
    if media::sha256(&bytes) != d.digest {
        return Err(Error::invalid(
            "oci",
            format!("{shown}: manifest {} does not match its digest", d.digest),
        ));
    }
    match parse_manifest(&bytes, shown)? {
        Manifest::Image { layers, .. } => Ok((child, layers)),
        Manifest::Index { .. } => Err(Error::Unsupported {
            format: "oci",
            reason: format!("{shown}: an index inside an index"),
        }),
    }
}

/// The entry of an index for `want`; else an error listing the platforms it has.
fn select<'m>(manifests: &'m [Descriptor], want: &Platform, shown: &str) -> Result<&'m Descriptor> {
    manifests
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
        })
}

/// Layers from the top down; the first holding a disk/ file gives the disk.
async fn find_disk(
    ctx: &Ctx,
    image: &Reference,
    layers: &[Descriptor],
    decompress: &DecompressOptions,
) -> Result<Opened> {
    let mut hidden = Hidden::default();
    for (i, layer) in layers.iter().enumerate().rev() {
        if !layer.urls.is_empty() {
            tracing::debug!(digest = %layer.digest, "skipping a foreign layer");
            continue;
        }
        match read_layer(ctx, image, i, layer, &hidden, decompress).await? {
            LayerRead::Disk(opened) => return Ok(opened),
            LayerRead::Nothing(h) => {
                hidden = h;
                if hidden.opaque {
                    break;
                }
            }
        }
    }
    Err(Error::InvalidImage {
        format: "containerDisk",
        reason: format!("{}: no regular file under /disk/ in any layer", ctx.shown),
    })
}

/// What one layer gave.
enum LayerRead {
    /// Its disk file, opened as the source (the rest of the layer is read on as it streams).
    Disk(Opened),
    /// No disk; what this layer and the ones above hide of the layers below.
    Nothing(Hidden),
}

/// Reads layer `i` (0: the bottom one) until its disk file shows, or to its end: the blob
/// fetched in a task, its tar walked in a thread.
async fn read_layer(
    ctx: &Ctx,
    image: &Reference,
    i: usize,
    layer: &Descriptor,
    hidden: &Hidden,
    decompress: &DecompressOptions,
) -> Result<LayerRead> {
    let shown = &ctx.shown;
    let (found_tx, found_rx) = oneshot::channel();
    let (data_tx, data_rx) = std::sync::mpsc::sync_channel(QUEUE);
    let (blob_tx, blob_rx) = mpsc::channel(BLOB_QUEUE);
    let fetch = tokio::spawn(fetch_blob(ctx.clone(), image.clone(), layer.clone(), blob_tx));
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
            Ok(LayerRead::Disk(Opened::whole(Box::new(reader), Some(size))))
        }
        Ok(Ok(Found::Nothing(h))) => {
            fetch.await.ok();
            Ok(LayerRead::Nothing(h))
        }
        Ok(Err(e)) => {
            fetch.abort();
            Err(e)
        }
        Err(_) => {
            fetch.abort();
            Err(Error::io(
                "reading a layer",
                io::Error::other("the layer reader stopped"),
            ))
        }
    }
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

/// Checks that the config of a single image names `want`.
async fn check_platform(ctx: &Ctx, image: &Reference, config: &Descriptor, want: &Platform) -> Result<()> {
    let got = config_platform(ctx, image, config).await?;
    if got.as_ref().is_some_and(|p| want.selects(p)) {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        field: "platform",
        value: want.to_string(),
        reason: format!(
            "{} is a single image for {}",
            ctx.shown,
            got.map_or("an unknown platform".into(), |p| p.to_string())
        ),
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
        assert_eq!(walk::normalize("./disk/a.qcow2"), "disk/a.qcow2");
        assert_eq!(walk::normalize("/disk/"), "disk");
        let s = ido_io::redact::text("error at https://s3.example/b/k?X-Amz-Signature=abc, code 500");
        assert!(!s.contains("abc") && s.contains("https://s3.example/b/k"), "{s}");
    }
}
