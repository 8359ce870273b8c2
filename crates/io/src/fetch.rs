//! The resumable HTTP(S) reader every download goes through (disk imports, node-image
//! pushes from S3): one GET streamed to the end; after a cut, the next request asks for
//! `Range: bytes=<offset>-` (guarded by `If-Range`), so a download continues where the
//! bytes stopped instead of at 0. 408/429/5xx and transport errors are retried with the
//! engine's [`RetryPolicy`] (honouring `Retry-After`); the failure count resets whenever
//! bytes arrive. A server that ignores Range is handled by skipping the bytes already
//! delivered.
//!
//! Large objects (a known length, `Accept-Ranges: bytes`, at least
//! [`FetchOptions::parallel_min`]) are fetched over [`FetchOptions::connections`] ranged
//! GETs at once, in chunks delivered in order (memory: connections + 1 chunks); each chunk
//! resumes from its own cut. Every response after the first is checked against the first
//! one's validator (strong ETag, else Last-Modified, sent as `If-Range`) and length: a
//! changed object fails with [`FetchError::SourceChanged`] instead of mixing two versions.
//!
//! ```text
//!   open(url) ──first GET──▶ Fetched { body, total, validator }
//!                 │ small, or no ranges: one stream ─┐
//!                 │ large: chunk tasks (ranged GETs) ─┴─▶ byte-bounded queue ─▶ Body
//!                 │                                        (blocking Read, or a Stream)
//!                 └ each request: retry, resume at the cut, check the validator
//! ```

mod body;
mod parallel;
mod request;

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

pub use body::Body;
use body::queue;
use parallel::{Plan, fetch_parallel};
use request::{Conn, Fetch, Response, Sink};

use crate::redact;
use crate::retry::RetryPolicy;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// 404 or 410.
    #[error("{url}: not found (HTTP {status})")]
    NotFound { url: String, status: u16 },
    /// 401 or 403.
    #[error("{url}: access denied (HTTP {status})")]
    Denied { url: String, status: u16 },
    /// Any other status that is not retried.
    #[error("{url}: HTTP {status}")]
    Http { url: String, status: u16 },
    /// Failures in a row, without a byte in between, up to the policy's attempts.
    #[error("{url}: gave up after {attempts} attempts without progress: {last}")]
    RetriesExhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    /// Before any byte: nothing listens there, or TLS cannot be spoken with it.
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The object changed between two requests (validator or length).
    #[error("{url}: the object changed during the download ({reason})")]
    SourceChanged { url: String, reason: String },
    /// A chunk's task ended abnormally.
    #[error("{url}: a download task failed: {reason}")]
    Task { url: String, reason: String },
}

impl FetchError {
    /// As an I/O error, for the reader; [`FetchError::from_io`] gets it back.
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The fetch error inside `e`, if it holds one.
    pub fn from_io(e: io::Error) -> Result<Self, io::Error> {
        match e.get_ref().is_some_and(|inner| inner.is::<FetchError>()) {
            true => Ok(*e
                .into_inner()
                .expect("checked")
                .downcast::<FetchError>()
                .expect("checked")),
            false => Err(e),
        }
    }
}

/// Basic-auth credentials. `Debug` shows the user name only.
#[derive(Clone)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a download needs: the client (built once, by [`crate::http::client`]), the URL,
/// extra headers (marked sensitive), credentials and how to retry and split.
#[derive(Clone)]
pub struct FetchOptions {
    pub client: reqwest::Client,
    /// Credentials in it are never printed (see [`redact::url`]).
    pub url: Url,
    pub headers: HeaderMap,
    pub basic_auth: Option<BasicAuth>,
    /// Per request stream: each chunk of a parallel download has its own count.
    pub retry: RetryPolicy,
    /// Connections of a parallel download (1: one stream).
    pub connections: usize,
    /// Bytes per ranged GET of a parallel download.
    pub chunk_size: u64,
    /// Objects smaller than this (or than two chunks) are fetched as one stream.
    pub parallel_min: u64,
}

/// Default connections of a parallel download.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Default chunk of a parallel download.
pub const DEFAULT_CHUNK: u64 = 2 << 20;
/// Default size from which a download is parallel.
pub const DEFAULT_PARALLEL_MIN: u64 = 32 << 20;

impl FetchOptions {
    /// Defaults for `url` through `client`: no extra headers, no auth, default retries,
    /// [`DEFAULT_CONNECTIONS`] of [`DEFAULT_CHUNK`] from [`DEFAULT_PARALLEL_MIN`].
    pub fn new(client: reqwest::Client, url: Url) -> Self {
        Self {
            client,
            url,
            headers: HeaderMap::new(),
            basic_auth: None,
            retry: RetryPolicy::default(),
            connections: DEFAULT_CONNECTIONS,
            chunk_size: DEFAULT_CHUNK,
            parallel_min: DEFAULT_PARALLEL_MIN,
        }
    }
}

impl fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchOptions")
            .field("url", &redact::url(&self.url))
            .field(
                "headers",
                &self.headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            )
            .field("basic_auth", &self.basic_auth)
            .field("retry", &self.retry)
            .field("connections", &self.connections)
            .field("chunk_size", &self.chunk_size)
            .field("parallel_min", &self.parallel_min)
            .finish()
    }
}

/// Where an earlier download stopped: continue at `offset` if the object still has this
/// validator and length.
#[derive(Clone, Debug)]
pub struct ResumeAt {
    pub offset: u64,
    pub validator: String,
    pub total: u64,
}

/// An opened download.
pub struct Fetched {
    /// The bytes from `offset` on.
    pub body: Body,
    /// The object's length, when the server said.
    pub total: Option<u64>,
    /// Where the body starts: 0, or a resumed download's offset.
    pub offset: u64,
    /// The object's validator (strong ETag, else Last-Modified), when it has one.
    pub validator: Option<String>,
}

/// Smallest chunk of a parallel download.
const MIN_CHUNK: u64 = 64 << 10;
/// Slices of a finished chunk handed to the reader at once.
pub(crate) const SLICE: usize = 1 << 20;
/// Bytes queued for the reader (network chunks may be large: the queue is bounded in
/// bytes, not in chunks).
const QUEUE_BYTES: usize = 4 << 20;

/// Opens the URL: the first response is awaited here (so a 404 fails before anything
/// else happens), the body streams from a task on the current runtime. An object that is
/// large enough, with `Accept-Ranges: bytes` and a known length, is fetched over
/// `connections` ranged GETs at once (see [`fetch_parallel`]).
///
/// With `from`, the first request is `Range: bytes=<offset>-` with `If-Range`: an unchanged
/// object continues there, a changed one (or a validator the server does not honour) is
/// fetched again from 0.
pub async fn open(opts: &FetchOptions, from: Option<&ResumeAt>) -> Result<Fetched, FetchError> {
    let conn = Arc::new(Conn::new(opts));
    let (mut fetch, first) = match from {
        Some(r) => match resume(&conn, r).await? {
            Some(resumed) => resumed,
            None => first_request(&conn).await?,
        },
        None => first_request(&conn).await?,
    };
    let start = fetch.offset;
    let total = fetch.total;
    let chunk = opts.chunk_size.max(MIN_CHUNK);
    let parallel = match (total, &first) {
        (Some(t), Some(_)) => {
            opts.connections > 1 && fetch.ranges && t - start >= opts.parallel_min.max(2 * chunk)
        }
        _ => false,
    };
    tracing::debug!(url = %conn.shown, ?total, start, ranges = fetch.ranges, parallel, "download opened");
    let validator = fetch
        .validator
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (tx, body) = queue(QUEUE_BYTES);
    match (parallel, total, first) {
        (true, Some(total), Some(first)) => {
            let plan = Plan {
                start,
                total,
                chunk,
                connections: opts.connections,
                validator: fetch.validator.clone(),
            };
            tokio::spawn(async move {
                if let Err(e) = fetch_parallel(conn, plan, first, &tx).await {
                    tx.fail(e.into_io()).await;
                }
            });
        }
        (_, _, first) => {
            tokio::spawn(async move {
                let mut sink = Sink::Channel(&tx);
                if let Err(e) = fetch.run(first, &mut sink).await {
                    tx.fail(e.into_io()).await;
                }
            });
        }
    }
    Ok(Fetched {
        body,
        total,
        offset: start,
        validator,
    })
}

/// Ranged reads of one object that must still have a given validator and length (the
/// tables of a qcow2 whose import resumes).
pub struct Ranges {
    conn: Arc<Conn>,
    from: ResumeAt,
}

impl Ranges {
    pub fn new(opts: &FetchOptions, from: &ResumeAt) -> Self {
        Self {
            conn: Arc::new(Conn::new(opts)),
            from: from.clone(),
        }
    }

    /// Bytes `[off, off + len)` (cut at the object's end); `SourceChanged` if the object
    /// is not the one the earlier download read.
    pub async fn read(&self, off: u64, len: u64) -> Result<Vec<u8>, FetchError> {
        let end = off.saturating_add(len).min(self.from.total);
        if off >= end {
            return Ok(Vec::new());
        }
        let mut f = Fetch::new(self.conn.clone(), off, Some(end));
        f.total = Some(self.from.total);
        f.validator = HeaderValue::from_str(&self.from.validator).ok();
        f.ranges = true;
        let body = f.request().await?;
        let mut buf = BytesMut::with_capacity((end - off) as usize);
        f.run(body, &mut Sink::Buffer(&mut buf)).await?;
        Ok(buf.to_vec())
    }
}

/// The first request of a download from 0.
async fn first_request(conn: &Arc<Conn>) -> Result<(Fetch, Option<Response>), FetchError> {
    let mut fetch = Fetch::new(conn.clone(), 0, None);
    let first = fetch.request().await?;
    Ok((fetch, first))
}

/// Asks for the rest of an object from `r.offset`; `None` when the object changed.
async fn resume(conn: &Arc<Conn>, r: &ResumeAt) -> Result<Option<(Fetch, Option<Response>)>, FetchError> {
    let Ok(validator) = HeaderValue::from_str(&r.validator) else {
        return Ok(None);
    };
    let mut fetch = Fetch::new(conn.clone(), r.offset, None);
    fetch.total = Some(r.total);
    fetch.validator = Some(validator);
    fetch.ranges = true;
    match fetch.request().await {
        Ok(first) => {
            tracing::info!(url = %conn.shown, offset = r.offset, total = r.total, "resuming an earlier download");
            Ok(Some((fetch, first)))
        }
        Err(FetchError::SourceChanged { reason, .. }) => {
            tracing::info!(url = %conn.shown, %reason, "the object changed since the checkpoint; starting from 0");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_errors_come_back_out_of_io_errors() {
        let e = FetchError::Http {
            url: "http://x/".into(),
            status: 418,
        };
        match FetchError::from_io(e.into_io()) {
            Ok(FetchError::Http { status: 418, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(FetchError::from_io(io::Error::other("plain")).is_err());
    }
}
