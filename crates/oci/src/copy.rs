//! Byte-exact copies between registries.
//!
//! The manifest (or index) is pulled as raw bytes and pushed as the same bytes, so digests
//! are preserved. The blobs of every selected image are collected, de-duplicated and copied
//! concurrently (bounded per registry): a blob the destination has is skipped (HEAD), one
//! in another repository of the same registry is mounted, any other streams from the source
//! into a monolithic upload (chunked if the registry refuses), its digest verified on the
//! way. Transient failures (5xx, 429, connection resets) are retried with backoff. A copy
//! whose destination tag already has the source digest does nothing.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use oci_client::{Reference, errors::OciDistributionError};
use reqwest::header::HeaderValue;

use crate::{
    Error, Result,
    media::{self, ACCEPTED, Descriptor, Manifest, Platform},
    registry::Registry,
};

/// Which images of an index to copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Platforms {
    /// The platform of this machine (skopeo's default); an image manifest is copied as is.
    #[default]
    Host,
    /// Every image, and the index itself (skopeo's `--all`).
    All,
    /// The given platforms: one is copied as a plain image, several as a new index.
    Only(Vec<Platform>),
}

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Digest of the manifest now at the destination.
    pub digest: String,
    /// The destination already had it: nothing was copied.
    pub skipped: bool,
    pub manifests: usize,
    pub blobs_copied: usize,
    pub blobs_present: usize,
    pub blobs_mounted: usize,
    /// Blob bytes streamed from source to destination.
    pub bytes: u64,
}

/// How often a transient failure is retried.
const RETRIES: u32 = 5;

/// Copies `src_ref` on `src` to `dst_ref` on `dst`.
pub async fn copy(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    platforms: &Platforms,
) -> Result<CopyReport> {
    let name = src_ref.whole();
    src.client
        .store_auth_if_needed(src_ref.resolve_registry(), &src.auth())
        .await;
    dst.client
        .store_auth_if_needed(dst_ref.resolve_registry(), &dst.auth())
        .await;
    dst.chunked
        .store_auth_if_needed(dst_ref.resolve_registry(), &dst.auth())
        .await;

    let (top, top_digest) = pull_manifest(src, src_ref).await?;
    // What goes to the destination tag, and the images (digest, bytes, parsed) under it.
    let (push_bytes, push_type, images) = match media::parse(&top, &name)? {
        m @ Manifest::Image { .. } => (top.clone(), media_type(&m), vec![(top_digest.clone(), top, m)]),
        Manifest::Index {
            media_type,
            manifests,
        } => {
            let selected = select(&manifests, platforms, &name)?;
            let mut images = vec![];
            for d in &selected {
                let r = Reference::with_digest(
                    src_ref.registry().into(),
                    src_ref.repository().into(),
                    d.digest.clone(),
                );
                let (bytes, digest) = pull_manifest(src, &r).await?;
                let m = media::parse(&bytes, &r.whole())?;
                if matches!(m, Manifest::Index { .. }) {
                    return Err(Error::Unsupported {
                        reference: r.whole(),
                        message: "nested indexes are not supported".into(),
                    });
                }
                images.push((digest, bytes, m));
            }
            if selected.len() == manifests.len() {
                (top.clone(), media_type, images)
            } else if let [(_, bytes, m)] = images.as_slice() {
                (bytes.clone(), self::media_type(m), images.clone())
            } else {
                let index = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": media_type,
                    "manifests": selected.iter().map(|d| serde_json::json!({
                        "mediaType": d.media_type, "digest": d.digest, "size": d.size,
                        "platform": d.platform.as_ref().map(|p| serde_json::json!({
                            "os": p.os, "architecture": p.architecture, "variant": p.variant,
                        })),
                    })).collect::<Vec<_>>(),
                });
                (
                    Bytes::from(serde_json::to_vec(&index).expect("json")),
                    media_type,
                    images,
                )
            }
        }
    };
    let digest = media::sha256(&push_bytes);
    let mut report = CopyReport {
        digest: digest.clone(),
        ..CopyReport::default()
    };
    if let Ok(existing) = dst.client.fetch_manifest_digest(dst_ref, &dst.auth()).await
        && existing == digest
    {
        report.skipped = true;
        return Ok(report);
    }

    // Every blob of every image, once.
    let mut blobs: BTreeMap<String, Descriptor> = BTreeMap::new();
    for (_, _, m) in &images {
        if let Manifest::Image { config, layers, .. } = m {
            for d in std::iter::once(config).chain(layers) {
                if d.urls.is_empty() {
                    blobs.entry(d.digest.clone()).or_insert_with(|| d.clone());
                }
            }
        }
    }
    let bytes = Arc::new(AtomicU64::new(0));
    let outcomes: Vec<BlobOutcome> = stream::iter(blobs.into_values())
        .map(|d| copy_blob(src, src_ref, dst, dst_ref, d, bytes.clone()))
        .buffer_unordered(dst.limit.available_permits().max(1) * 2)
        .try_collect()
        .await?;
    for o in outcomes {
        match o {
            BlobOutcome::Copied => report.blobs_copied += 1,
            BlobOutcome::Present => report.blobs_present += 1,
            BlobOutcome::Mounted => report.blobs_mounted += 1,
        }
    }
    report.bytes = bytes.load(Ordering::Relaxed);

    // Children first (by digest), then the tag.
    let whole_index = images.len() > 1 || push_bytes != images[0].1;
    if whole_index {
        for (digest, bytes, m) in &images {
            let r = Reference::with_digest(
                dst_ref.registry().into(),
                dst_ref.repository().into(),
                digest.clone(),
            );
            push_manifest(dst, &r, bytes.clone(), &self::media_type(m)).await?;
            report.manifests += 1;
        }
    }
    push_manifest(dst, dst_ref, push_bytes, &push_type).await?;
    report.manifests += 1;
    Ok(report)
}

fn media_type(m: &Manifest) -> String {
    match m {
        Manifest::Index { media_type, .. } | Manifest::Image { media_type, .. } => media_type.clone(),
    }
}

/// The index entries `platforms` selects.
fn select(manifests: &[Descriptor], platforms: &Platforms, name: &str) -> Result<Vec<Descriptor>> {
    let wanted = match platforms {
        Platforms::All => return Ok(manifests.to_vec()),
        Platforms::Host => vec![Platform::host()],
        Platforms::Only(p) => p.clone(),
    };
    let mut out = vec![];
    for w in &wanted {
        let found = manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| w.selects(p)));
        match found {
            Some(d) if !out.contains(d) => out.push(d.clone()),
            Some(_) => {}
            None => {
                let available: Vec<String> = manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                    .collect();
                return Err(Error::NoPlatform {
                    reference: name.into(),
                    platform: w.to_string(),
                    available: available.join(", "),
                });
            }
        }
    }
    Ok(out)
}

enum BlobOutcome {
    Copied,
    Present,
    Mounted,
}

async fn copy_blob(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    d: Descriptor,
    bytes: Arc<AtomicU64>,
) -> Result<BlobOutcome> {
    let what = || format!("blob {} of {}", d.digest, src_ref.whole());
    let _dst_permit = dst.limit.acquire().await.expect("semaphore open");
    let _src_permit = if src.host == dst.host {
        None
    } else {
        Some(src.limit.acquire().await.expect("open"))
    };
    if retry(&what(), || dst.client.blob_exists(dst_ref, &d.digest)).await? {
        return Ok(BlobOutcome::Present);
    }
    if src.host == dst.host && src_ref.repository() != dst_ref.repository() {
        let mounted = dst.client.mount_blob(dst_ref, src_ref, &d.digest).await.is_ok()
            && dst.client.blob_exists(dst_ref, &d.digest).await.unwrap_or(false);
        if mounted {
            return Ok(BlobOutcome::Mounted);
        }
    }
    let mut monolithic = true;
    let mut attempt = 0;
    loop {
        let sent = Arc::new(AtomicU64::new(0));
        let r = stream_blob(src, src_ref, dst, dst_ref, &d, monolithic, sent.clone()).await;
        let n = sent.load(Ordering::Relaxed);
        match r {
            Ok(()) => {
                bytes.fetch_add(n, Ordering::Relaxed);
                return Ok(BlobOutcome::Copied);
            }
            Err(e) if monolithic && !retryable(&e) && !is_digest_error(&e) => {
                tracing::debug!(digest = %d.digest, error = %e, "monolithic upload refused; uploading in chunks");
                monolithic = false;
            }
            Err(e) if attempt < RETRIES && (retryable(&e) || is_digest_error(&e)) => {
                attempt += 1;
                let wait = backoff(attempt, &e);
                tracing::warn!(digest = %d.digest, error = %e, attempt, "blob copy failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(e) if is_digest_error(&e) => {
                return Err(Error::Digest {
                    what: what(),
                    expected: d.digest.clone(),
                    actual: e.to_string(),
                });
            }
            Err(source) => return Err(Error::Registry { what: what(), source }),
        }
    }
}

async fn stream_blob(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    d: &Descriptor,
    monolithic: bool,
    sent: Arc<AtomicU64>,
) -> Result<(), OciDistributionError> {
    // pull_blob_stream verifies the digest as the bytes pass and fails the stream at the end
    // on a mismatch, so the upload's final commit never happens for bad bytes.
    let s = src.client.pull_blob_stream(src_ref, d.digest.as_str()).await?;
    let body = s.stream.map_err(OciDistributionError::from).inspect_ok(move |b| {
        sent.fetch_add(b.len() as u64, Ordering::Relaxed);
    });
    let client = if monolithic { &dst.client } else { &dst.chunked };
    client
        .push_blob_stream(dst_ref, body, &d.digest, Some(d.size))
        .await?;
    Ok(())
}

async fn pull_manifest(src: &Registry, r: &Reference) -> Result<(Bytes, String)> {
    let what = format!("manifest {}", r.whole());
    let auth = src.auth();
    let (bytes, digest) = retry(&what, || src.client.pull_manifest_raw(r, &auth, ACCEPTED)).await?;
    let actual = media::sha256(&bytes);
    if let Some(want) = r.digest()
        && want != actual
    {
        return Err(Error::Digest {
            what,
            expected: want.into(),
            actual,
        });
    }
    if digest != actual && digest.starts_with("sha256:") {
        return Err(Error::Digest {
            what,
            expected: digest,
            actual,
        });
    }
    Ok((bytes, actual))
}

async fn push_manifest(dst: &Registry, r: &Reference, bytes: Bytes, media_type: &str) -> Result<()> {
    let what = format!("pushing manifest {}", r.whole());
    let ct = HeaderValue::from_str(media_type).map_err(|_| Error::Unsupported {
        reference: r.whole(),
        message: format!("bad media type {media_type:?}"),
    })?;
    retry(&what, || {
        dst.client.push_manifest_raw(r, bytes.clone(), ct.clone())
    })
    .await?;
    Ok(())
}

/// Runs `op`, retrying transient failures with backoff.
async fn retry<T, F, Fut>(what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < RETRIES && retryable(&e) => {
                attempt += 1;
                let wait = backoff(attempt, &e);
                tracing::warn!(error = %e, attempt, "{what} failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(source) => {
                return Err(Error::Registry {
                    what: what.into(),
                    source,
                });
            }
        }
    }
}

fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RequestError(r) => {
            // A certificate that does not verify will not verify on a retry either.
            let chain = error_chain(r);
            !chain.contains("certificate")
                && (r.is_connect() || r.is_timeout() || r.is_request() || r.is_body())
        }
        OciDistributionError::IoError(_) => true,
        other => {
            let s = other.to_string();
            s.contains("429") || s.contains("Too Many Requests") || s.contains("503") || s.contains("502")
        }
    }
}

/// An error with its sources, lower-case (for classification and messages).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s.to_ascii_lowercase()
}

fn is_digest_error(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::DigestError(_)) || e.to_string().to_ascii_lowercase().contains("digest")
}

fn backoff(attempt: u32, e: &OciDistributionError) -> Duration {
    let base = Duration::from_millis(250 * (1 << attempt.min(6)));
    // A 429 asks for a longer pause (oci-client does not expose Retry-After).
    if e.to_string().contains("429") {
        base.max(Duration::from_secs(1))
    } else {
        base
    }
}
