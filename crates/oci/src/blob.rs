//! One blob of a copy: present at the destination (HEAD), mounted from another repository
//! of the same registry, or streamed from the source into an upload. The source is a
//! registry, or a local file ([`push_file_blob`], for images built here).
//!
//! The stream is oci-client's verifying stream (a file's is this module's): it hashes the
//! bytes as they pass and fails at the end on a mismatch, so the upload's final commit
//! never happens for bad bytes. The
//! chunks that arrive together are joined (fewer, larger writes: the destination registry
//! spends less CPU per byte). The upload is monolithic (POST, then one PUT of the stream
//! with its length and digest);
//! a registry refusing that gets a chunked upload. A failed transfer starts again from the
//! first byte after a backoff (transient failures), or once at once (digest mismatch; a
//! file's mismatch fails at once).

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{StreamExt, stream::BoxStream};
use oci_client::{
    Reference,
    errors::{DigestError, OciDistributionError},
};
use sha2::Digest as _;
use tokio::io::AsyncReadExt;

use crate::{
    Error, Result,
    copy::Progress,
    media::Descriptor,
    registry::Registry,
    retry::{Attempt, RETRIES, digest_mismatch, transient, wait, with_retries},
};

/// What happened to one blob.
pub(crate) enum BlobOutcome {
    Copied,
    Present,
    Mounted,
}

/// Where a blob's bytes come from.
#[derive(Clone, Copy)]
enum BlobSource<'a> {
    /// A repository of a registry.
    Registry(&'a Registry, &'a Reference),
    /// A local file, named by the blob's digest.
    File(&'a Path),
}

impl BlobSource<'_> {
    /// `reading blob DIGEST from …`, for messages.
    fn reading(&self, digest: &str) -> String {
        match self {
            Self::Registry(src, r) => {
                format!("reading blob {digest} from {}/{}", src.host, r.repository())
            }
            Self::File(path) => format!("reading blob {digest} from {}", path.display()),
        }
    }
}

/// Why a transfer failed.
enum Failure {
    /// Reading from the source (request or stream).
    Source(OciDistributionError),
    /// Reading the source file (opening it, or a read on the way).
    File(std::path::PathBuf, std::io::Error),
    /// The source's bytes do not have the digest.
    Digest { expected: String, actual: String },
    /// Uploading to the destination.
    Dest(OciDistributionError),
    /// Building the chunked-upload client.
    Setup(Error),
}

/// Copies blob `d` unless the destination has it; adds the bytes streamed to `bytes`.
/// `progress` counts bytes live (a failed attempt's bytes are taken back) and the size of
/// a blob that needs no transfer.
pub(crate) async fn copy_blob(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    d: Descriptor,
    bytes: Arc<AtomicU64>,
    progress: &Progress,
) -> Result<BlobOutcome> {
    if let Some(outcome) = without_transfer(src, src_ref, dst, dst_ref, &d).await? {
        progress.add(d.size);
        return Ok(outcome);
    }
    let _dst_permit = dst.limit.acquire().await.expect("semaphore never closed");
    let _src_permit = if src.host == dst.host {
        None
    } else {
        Some(src.limit.acquire().await.expect("semaphore never closed"))
    };
    let n = transfer_retrying(BlobSource::Registry(src, src_ref), dst, dst_ref, &d, progress).await?;
    bytes.fetch_add(n, Ordering::Relaxed);
    Ok(BlobOutcome::Copied)
}

/// Pushes blob `d` from the file `path` unless the destination has it (HEAD): streamed,
/// its sha256 checked on the way (a mismatch fails the upload before its commit and is an
/// error naming the file and the digest). `progress` as [`copy_blob`]'s.
pub(crate) async fn push_file_blob(
    path: &Path,
    dst: &Registry,
    dst_ref: &Reference,
    d: &Descriptor,
    progress: &Progress,
) -> Result<BlobOutcome> {
    if present(dst, dst_ref, d).await? {
        progress.add(d.size);
        return Ok(BlobOutcome::Present);
    }
    let _dst_permit = dst.limit.acquire().await.expect("semaphore never closed");
    transfer_retrying(BlobSource::File(path), dst, dst_ref, d, progress).await?;
    Ok(BlobOutcome::Copied)
}

/// Whether the destination has blob `d` (HEAD).
async fn present(dst: &Registry, dst_ref: &Reference, d: &Descriptor) -> Result<bool> {
    let checking = format!(
        "checking blob {} in {}/{}",
        d.digest,
        dst.host,
        dst_ref.repository()
    );
    with_retries(&checking, || dst.client.blob_exists(dst_ref, &d.digest)).await
}

/// The destination has blob `d` already (HEAD), or gets it by a mount from the source's
/// repository (same registry); `None` when it must be transferred.
async fn without_transfer(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    d: &Descriptor,
) -> Result<Option<BlobOutcome>> {
    if present(dst, dst_ref, d).await? {
        return Ok(Some(BlobOutcome::Present));
    }
    // A 201 means mounted; anything else (202 opens an upload instead) means copy it.
    if src.host == dst.host
        && src_ref.repository() != dst_ref.repository()
        && dst.mount(dst_ref, src_ref, &d.digest).await
    {
        return Ok(Some(BlobOutcome::Mounted));
    }
    Ok(None)
}

/// Transfers blob `d` until an attempt succeeds: again after a backoff on a transient
/// failure, at once after a first digest mismatch, in chunks when the destination refuses
/// a monolithic upload. The bytes sent.
async fn transfer_retrying(
    src: BlobSource<'_>,
    dst: &Registry,
    dst_ref: &Reference,
    d: &Descriptor,
    progress: &Progress,
) -> Result<u64> {
    let reading = || src.reading(&d.digest);
    let pushing = || {
        format!(
            "pushing blob {} to {}/{}",
            d.digest,
            dst.host,
            dst_ref.repository()
        )
    };
    let mut monolithic = true;
    let (mut attempt, mut mismatches) = (0, 0);
    loop {
        let e = match transfer(src, dst, dst_ref, d, monolithic, progress).await {
            Ok(n) => return Ok(n),
            // A registry's bytes may have been damaged on the way; a file's are what they are.
            Err(Failure::Digest { actual, .. })
                if mismatches == 0 && matches!(src, BlobSource::Registry(..)) =>
            {
                mismatches += 1;
                tracing::warn!(digest = %d.digest, %actual, "{}: the bytes read do not match; reading again", reading());
                continue;
            }
            Err(Failure::Digest { expected, actual }) => {
                return Err(Error::Digest {
                    what: reading(),
                    expected,
                    actual,
                });
            }
            Err(Failure::Source(e) | Failure::Dest(e)) if attempt < RETRIES && transient(&e) => e,
            Err(Failure::Dest(e)) if monolithic => {
                tracing::debug!(digest = %d.digest, error = %e, "monolithic upload refused; uploading in chunks");
                monolithic = false;
                continue;
            }
            Err(Failure::Source(error)) => {
                return Err(Error::Registry {
                    what: reading(),
                    error,
                });
            }
            Err(Failure::Dest(error)) => {
                return Err(Error::Registry {
                    what: pushing(),
                    error,
                });
            }
            Err(Failure::File(path, e)) => {
                return Err(Error::File {
                    path,
                    message: format!("reading blob {}: {e}", d.digest),
                });
            }
            Err(Failure::Setup(e)) => return Err(e),
        };
        attempt += 1;
        let failed = Attempt::from(e);
        let pause = wait(attempt, &failed);
        tracing::warn!(error = %failed.error, attempt, "copying blob {} failed; retrying in {pause:?}", d.digest);
        tokio::time::sleep(pause).await;
    }
}

/// One attempt: the source's verified stream into an upload. The bytes sent, on success.
async fn transfer(
    src: BlobSource<'_>,
    dst: &Registry,
    dst_ref: &Reference,
    d: &Descriptor,
    monolithic: bool,
    progress: &Progress,
) -> Result<u64, Failure> {
    let sent = Arc::new(AtomicU64::new(0));
    let r = transfer_once(src, dst, dst_ref, d, monolithic, progress, &sent).await;
    if r.is_err() {
        progress.take_back(sent.load(Ordering::Relaxed));
    }
    r
}

async fn transfer_once(
    src: BlobSource<'_>,
    dst: &Registry,
    dst_ref: &Reference,
    d: &Descriptor,
    monolithic: bool,
    progress: &Progress,
    sent: &Arc<AtomicU64>,
) -> Result<u64, Failure> {
    let stream: BoxStream<'static, std::io::Result<bytes::Bytes>> = match src {
        BlobSource::Registry(reg, r) => {
            let s = reg
                .client
                .pull_blob_stream(r, d.digest.as_str())
                .await
                .map_err(Failure::Source)?;
            coalesce(s.stream).boxed()
        }
        BlobSource::File(path) => file_stream(path, &d.digest)
            .await
            .map_err(|e| Failure::File(path.into(), e))?,
    };
    // The source's own error, kept aside: the upload only sees that its body failed.
    let source_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let body = {
        let (sent, source_error) = (sent.clone(), source_error.clone());
        let live = progress.clone();
        stream.map(move |item| match item {
            Ok(b) => {
                sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                live.add(b.len() as u64);
                Ok(b)
            }
            Err(e) => {
                let passed = std::io::Error::new(e.kind(), e.to_string());
                *source_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(OciDistributionError::IoError(passed))
            }
        })
    };
    let client = if monolithic {
        &dst.client
    } else {
        dst.chunked(dst_ref).await.map_err(Failure::Setup)?
    };
    let pushed = client
        .push_blob_stream(dst_ref, body, &d.digest, Some(d.size))
        .await;
    let source_error = source_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (pushed, source_error) {
        (_, Some(e)) => Err(match (digest_mismatch(&e), src) {
            (Some((expected, actual)), _) => Failure::Digest { expected, actual },
            (None, BlobSource::File(path)) => Failure::File(path.into(), e),
            (None, BlobSource::Registry(..)) => Failure::Source(OciDistributionError::IoError(e)),
        }),
        (Ok(_), None) => Ok(sent.load(Ordering::Relaxed)),
        (Err(e), None) => Err(Failure::Dest(e)),
    }
}

/// The bytes of the file at `path` in chunks of [`FILE_CHUNK`], hashed as they are read:
/// after the last one, an error carrying a [`DigestError::VerificationError`] (what
/// oci-client's verifying stream gives) when their sha256 is not `digest`.
async fn file_stream(
    path: &Path,
    digest: &str,
) -> std::io::Result<BoxStream<'static, std::io::Result<bytes::Bytes>>> {
    let file = tokio::fs::File::open(path).await?;
    let state = Some((file, sha2::Sha256::new(), digest.to_string()));
    Ok(futures::stream::unfold(state, |state| async move {
        let (mut file, mut hash, expected) = state?;
        let mut buf = bytes::BytesMut::with_capacity(FILE_CHUNK);
        match file.read_buf(&mut buf).await {
            Err(e) => Some((Err(e), None)),
            Ok(0) => {
                let actual = format!("sha256:{}", hex::encode(hash.finalize()));
                if actual == expected {
                    None
                } else {
                    let e = std::io::Error::other(DigestError::VerificationError { expected, actual });
                    Some((Err(e), None))
                }
            }
            Ok(_) => {
                hash.update(&buf);
                Some((Ok(buf.freeze()), Some((file, hash, expected))))
            }
        }
    })
    .boxed())
}

/// A file blob is read this much at a time (at most).
const FILE_CHUNK: usize = 512 << 10;

/// Joins the chunks that are ready at once into one (up to [`COALESCE_MAX`] bytes): fewer,
/// larger writes to the destination, whose server then reads more per wakeup. Never waits
/// for more data than is there.
fn coalesce<S>(s: S) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static
where
    S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
{
    s.ready_chunks(COALESCE_CHUNKS).flat_map(|items| {
        let mut out: Vec<Result<bytes::Bytes, std::io::Error>> = vec![];
        let mut buf = bytes::BytesMut::new();
        for item in items {
            match item {
                Ok(b) if buf.is_empty() && b.len() >= COALESCE_MAX => out.push(Ok(b)),
                Ok(b) => {
                    buf.extend_from_slice(&b);
                    if buf.len() >= COALESCE_MAX {
                        out.push(Ok(buf.split().freeze()));
                    }
                }
                Err(e) => {
                    if !buf.is_empty() {
                        out.push(Ok(buf.split().freeze()));
                    }
                    out.push(Err(e));
                }
            }
        }
        if !buf.is_empty() {
            out.push(Ok(buf.freeze()));
        }
        futures::stream::iter(out)
    })
}

/// At most this many ready chunks are joined.
const COALESCE_CHUNKS: usize = 64;
/// Joined chunks stop growing at this size.
const COALESCE_MAX: usize = 512 << 10;
