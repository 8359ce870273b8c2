//! HTTP(S) source: one GET streamed to the end; after a cut, the next request asks for
//! `Range: bytes=<offset>-` (guarded by `If-Range`), so a resumed download continues where
//! the bytes stopped instead of at 0. 408/429/5xx and transport errors are retried with
//! exponential backoff (honouring `Retry-After`); the failure count resets whenever bytes
//! arrive. A server that ignores Range is handled by skipping the bytes already delivered.
//!
//! Large objects (a known length, `Accept-Ranges: bytes`, at least
//! [`HttpOptions::parallel_min`]) are fetched over [`HttpOptions::connections`] ranged GETs
//! at once, in chunks delivered in order (memory: connections + 1 chunks); each chunk
//! resumes from its own cut. Every response after the first is checked against the first
//! one's validator (strong ETag, else Last-Modified, sent as `If-Range`) and length: a
//! changed object fails with `source_changed` instead of mixing two versions.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_RANGES, CONTENT_RANGE, ETAG, HeaderMap, HeaderName, HeaderValue, IF_RANGE, LAST_MODIFIED, RANGE,
};
use tokio::sync::{Semaphore, mpsc};
use url::Url;

use super::{Opened, ResumeFrom};
use crate::{Error, Result};

/// Options of an HTTP(S) source.
#[derive(Clone)]
pub struct HttpOptions {
    /// The URL. Credentials in it are used for basic auth and never printed.
    pub url: Url,
    /// Extra request headers (`Name`, `value`), e.g. from CDI-style `extraHeaders`.
    pub headers: Vec<(String, String)>,
    /// Basic auth (takes precedence over credentials in the URL).
    pub basic_auth: Option<BasicAuth>,
    /// TLS verification and extra CA certificates.
    pub tls: ido_engine::http::TlsOptions,
    /// Retry behaviour (per request stream: each chunk of a parallel download has its own
    /// count).
    pub retry: RetryPolicy,
    /// Connections of a parallel download (1: one stream). Default: 4.
    pub connections: usize,
    /// Bytes per ranged GET of a parallel download. Default: 4 MiB.
    pub chunk_size: u64,
    /// Objects smaller than this (or than two chunks) are fetched as one stream.
    /// Default: 32 MiB.
    pub parallel_min: u64,
}

/// Default connections of a parallel download.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Default chunk of a parallel download.
pub const DEFAULT_CHUNK: u64 = 2 << 20;

impl HttpOptions {
    /// Defaults for `url`: no extra headers, no auth, platform roots, default retries.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            headers: Vec::new(),
            basic_auth: None,
            tls: Default::default(),
            retry: RetryPolicy::default(),
            connections: DEFAULT_CONNECTIONS,
            chunk_size: DEFAULT_CHUNK,
            parallel_min: 32 << 20,
        }
    }

    /// Adds a header given as `Name: value`.
    pub fn add_header_line(&mut self, line: &str) -> Result<()> {
        let (name, value) = line.split_once(':').ok_or_else(|| Error::InvalidArgument {
            field: "header",
            value: line.split(':').next().unwrap_or_default().to_string(),
            reason: "expected `Name: value`".into(),
        })?;
        self.headers
            .push((name.trim().to_string(), value.trim().to_string()));
        Ok(())
    }
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpOptions")
            .field("url", &redacted(&self.url))
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            )
            .field("basic_auth", &self.basic_auth)
            .field("tls", &self.tls)
            .field("retry", &self.retry)
            .field("connections", &self.connections)
            .field("chunk_size", &self.chunk_size)
            .field("parallel_min", &self.parallel_min)
            .finish()
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

/// How failed requests and cut transfers are retried: the engine's one policy.
pub use ido_engine::retry::RetryPolicy;

/// The URL without user info, query or fragment, for messages.
pub use ido_engine::redact::url as redacted;

/// Opens the URL: the first response is awaited here, the body streams from a task. An
/// object that is large enough, with `Accept-Ranges: bytes` and a known length, is fetched
/// over `connections` ranged GETs at once (see [`fetch_parallel`]).
///
/// With `from`, the first request is `Range: bytes=<offset>-` with `If-Range`: an unchanged
/// object continues there, a changed one (or a validator the server does not honour) is
/// fetched again from 0.
pub(super) async fn open(opts: &HttpOptions, from: Option<&ResumeFrom>) -> Result<Opened> {
    let conn = Arc::new(Conn::new(opts)?);
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
    tracing::debug!(url = %conn.shown, ?total, start, ranges = fetch.ranges, parallel, "HTTP source opened");
    let validator = fetch
        .validator
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (tx, reader) = queue(QUEUE_BYTES);
    if parallel {
        let plan = Plan {
            start,
            total: total.expect("checked"),
            chunk,
            connections: opts.connections,
            validator: fetch.validator.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = fetch_parallel(conn, plan, first.expect("checked"), &tx).await {
                tx.fail(e.into_io()).await;
            }
        });
    } else {
        tokio::spawn(async move {
            let mut sink = Sink::Channel(&tx);
            if let Err(e) = fetch.run(first, &mut sink).await {
                tx.fail(e.into_io()).await;
            }
        });
    }
    Ok(Opened {
        reader: Box::new(reader),
        total,
        offset: start,
        validator,
    })
}

/// Ranged reads of one object that must still have a given validator and length (the
/// tables of a qcow2 whose import resumes).
pub(crate) struct Ranges {
    conn: Arc<Conn>,
    from: ResumeFrom,
}

impl Ranges {
    pub(super) fn new(opts: &HttpOptions, from: &ResumeFrom) -> Result<Self> {
        Ok(Self {
            conn: Arc::new(Conn::new(opts)?),
            from: from.clone(),
        })
    }

    /// Bytes `[off, off + len)` (cut at the object's end); `source_changed` if the object
    /// is not the one the previous run read.
    pub(crate) async fn read(&self, off: u64, len: u64) -> Result<Vec<u8>> {
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
async fn first_request(conn: &Arc<Conn>) -> Result<(Fetch, Option<Body>)> {
    let mut fetch = Fetch::new(conn.clone(), 0, None);
    let first = fetch.request().await?;
    Ok((fetch, first))
}

/// Asks for the rest of an object from `r.offset`; `None` when the object changed.
async fn resume(conn: &Arc<Conn>, r: &ResumeFrom) -> Result<Option<(Fetch, Option<Body>)>> {
    let Ok(validator) = HeaderValue::from_str(&r.validator) else {
        return Ok(None);
    };
    let mut fetch = Fetch::new(conn.clone(), r.offset, None);
    fetch.total = Some(r.total);
    fetch.validator = Some(validator);
    fetch.ranges = true;
    match fetch.request().await {
        Ok(first) => {
            tracing::info!(url = %conn.shown, offset = r.offset, total = r.total, "resuming a previous import");
            Ok(Some((fetch, first)))
        }
        Err(Error::SourceChanged { reason, .. }) => {
            tracing::info!(url = %conn.shown, %reason, "the object changed since the checkpoint; starting from 0");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Smallest chunk of a parallel download.
const MIN_CHUNK: u64 = 64 << 10;
/// Slices of a finished chunk handed to the reader at once.
const SLICE: usize = 1 << 20;
/// Bytes queued for the reader (network chunks may be large: the queue is bounded in
/// bytes, not in chunks).
const QUEUE_BYTES: usize = 4 << 20;

/// A byte-bounded queue from the download task(s) to the blocking reader.
fn queue(budget: usize) -> (Queue, ChannelReader) {
    let (tx, rx) = mpsc::channel(1024);
    let sem = Arc::new(Semaphore::new(budget));
    (
        Queue {
            tx,
            budget: sem.clone(),
            max: budget,
        },
        ChannelReader {
            rx,
            cur: Bytes::new(),
            budget: sem,
            held: 0,
            max: budget,
        },
    )
}

/// The sending side of [`queue`].
struct Queue {
    tx: mpsc::Sender<io::Result<Bytes>>,
    budget: Arc<Semaphore>,
    max: usize,
}

impl Queue {
    /// Queues `b` once the budget allows; false when the reader is gone.
    async fn send(&self, b: Bytes) -> bool {
        let n = b.len().min(self.max) as u32;
        match self.budget.acquire_many(n).await {
            Ok(p) => p.forget(),
            Err(_) => return false,
        }
        self.tx.send(Ok(b)).await.is_ok()
    }

    async fn fail(&self, e: io::Error) {
        let _ = self.tx.send(Err(e)).await;
    }
}

/// How a parallel download is cut.
struct Plan {
    /// Where the download starts (0, or a resumed import's offset).
    start: u64,
    total: u64,
    chunk: u64,
    connections: usize,
    validator: Option<HeaderValue>,
}

/// Parallel ranged GETs: chunk `i` is bytes `[start + i·chunk, start + (i+1)·chunk)`; up to
/// `connections` chunks are fetched at once, each into its own buffer, and handed to the
/// reader in order. The first response (a plain GET, or a resumed import's ranged one)
/// serves chunk 0. Memory stays bounded: at most
/// `connections` chunk buffers are being filled, plus the one the reader is consuming.
/// Each chunk retries and resumes on its own (`Range: bytes=<cut>-<end>` with `If-Range`),
/// and every response is checked against the first one's validator and length.
async fn fetch_parallel(conn: Arc<Conn>, plan: Plan, first: Body, tx: &Queue) -> Result<()> {
    let count = (plan.total - plan.start).div_ceil(plan.chunk);
    let mut tasks = Tasks(VecDeque::new());
    let mut first = Some(first);
    let mut next = 0u64;
    // Chunk buffers are recycled once the reader has dropped every slice of them: the
    // allocator never sees a stream of fresh multi-MiB buffers (which it would serve from
    // its heaps and fragment), so memory stays flat.
    let mut pool: Vec<BytesMut> = Vec::new();
    let mut lent: VecDeque<Bytes> = VecDeque::new();
    let spawn = |i: u64, body: Option<Body>, mut buf: BytesMut| {
        let start = plan.start + i * plan.chunk;
        let end = (start + plan.chunk).min(plan.total);
        let mut f = Fetch::new(conn.clone(), start, Some(end));
        f.total = Some(plan.total);
        f.validator = plan.validator.clone();
        f.ranges = true;
        buf.clear();
        buf.reserve((end - start) as usize);
        tokio::spawn(async move {
            let body = match body {
                Some(b) => Some(b),
                None => f.request().await?,
            };
            f.run(body, &mut Sink::Buffer(&mut buf)).await?;
            Ok(buf.freeze())
        })
    };
    while next < count || !tasks.0.is_empty() {
        while tasks.0.len() < plan.connections && next < count {
            // Take back the buffers the reader is done with.
            for _ in 0..lent.len() {
                let b = lent.pop_front().expect("counted");
                match b.try_into_mut() {
                    Ok(m) => pool.push(m),
                    Err(b) => lent.push_back(b),
                }
            }
            let buf = pool.pop().unwrap_or_default();
            tasks.0.push_back(spawn(next, first.take(), buf));
            next += 1;
        }
        let head = tasks.0.pop_front().expect("a task is pending");
        let data: Bytes = head.await.map_err(|e| Error::Io {
            context: format!("{}: a download task", conn.shown),
            source: io::Error::other(e.to_string()),
        })??;
        let mut off = 0;
        while off < data.len() {
            let n = SLICE.min(data.len() - off);
            if !tx.send(data.slice(off..off + n)).await {
                return Ok(()); // the reader is gone (import failed or done)
            }
            off += n;
        }
        lent.push_back(data);
    }
    Ok(())
}

/// Pending chunk downloads, aborted when dropped (an error or a reader gone).
struct Tasks(VecDeque<tokio::task::JoinHandle<Result<Bytes>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What every request of one download shares.
struct Conn {
    client: reqwest::Client,
    url: Url,
    shown: String,
    headers: HeaderMap,
    auth: Option<BasicAuth>,
    retry: RetryPolicy,
}

impl Conn {
    fn new(opts: &HttpOptions) -> Result<Self> {
        let client = ido_engine::http::client(&opts.tls, "caBundle").map_err(|e| Error::InvalidArgument {
            field: "tls",
            value: "<tls settings>".into(),
            reason: e.to_string(),
        })?;
        let mut headers = HeaderMap::new();
        for (name, value) in &opts.headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| Error::InvalidArgument {
                field: "header",
                value: name.clone(),
                reason: e.to_string(),
            })?;
            let mut v = HeaderValue::from_str(value).map_err(|e| Error::InvalidArgument {
                field: "header",
                value: name.clone(),
                reason: e.to_string(),
            })?;
            v.set_sensitive(true);
            headers.append(n, v);
        }
        if opts.connections == 0 {
            return Err(Error::InvalidArgument {
                field: "connections",
                value: "0".into(),
                reason: "at least 1".into(),
            });
        }
        Ok(Self {
            client,
            url: opts.url.clone(),
            shown: redacted(&opts.url),
            headers,
            auth: opts.basic_auth.clone(),
            retry: opts.retry.clone(),
        })
    }
}

/// The state of one byte range (the whole object, or a chunk) across its requests.
struct Fetch {
    conn: Arc<Conn>,
    /// Absolute offset of the next byte to deliver.
    offset: u64,
    /// End of the range (exclusive); `None`: the object's end.
    end: Option<u64>,
    /// The object's size, from the first response.
    total: Option<u64>,
    /// `If-Range` validator: a strong ETag, else Last-Modified.
    validator: Option<HeaderValue>,
    /// The first response advertised `Accept-Ranges: bytes`.
    ranges: bool,
    /// Failures since bytes last arrived.
    failures: u32,
}

/// A response to stream, with how many leading bytes to drop (a server that ignored Range).
struct Body {
    resp: reqwest::Response,
    skip: u64,
}

/// Where the bytes of a [`Fetch`] go.
enum Sink<'a> {
    /// Straight to the reader.
    Channel(&'a Queue),
    /// Into a chunk's buffer.
    Buffer(&'a mut BytesMut),
}

impl Sink<'_> {
    /// Delivers `b`; false when the reader is gone.
    async fn put(&mut self, b: Bytes) -> bool {
        match self {
            Sink::Channel(tx) => tx.send(b).await,
            Sink::Buffer(buf) => {
                buf.extend_from_slice(&b);
                true
            }
        }
    }
}

impl Fetch {
    fn new(conn: Arc<Conn>, offset: u64, end: Option<u64>) -> Self {
        Self {
            conn,
            offset,
            end,
            total: None,
            validator: None,
            ranges: false,
            failures: 0,
        }
    }

    /// Whether this is the very first request of a whole-object download.
    fn is_first(&self) -> bool {
        self.offset == 0 && self.end.is_none() && self.total.is_none()
    }

    /// Sends requests until one gives a body to stream (`None`: nothing is left).
    async fn request(&mut self) -> Result<Option<Body>> {
        loop {
            let c = &self.conn;
            let mut req = c.client.get(c.url.clone()).headers(c.headers.clone());
            if let Some(a) = &c.auth {
                req = req.basic_auth(&a.username, Some(&a.password));
            }
            if self.offset > 0 || self.end.is_some() {
                let range = match self.end {
                    Some(end) => format!("bytes={}-{}", self.offset, end - 1),
                    None => format!("bytes={}-", self.offset),
                };
                req = req.header(RANGE, range);
                if let Some(v) = &self.validator {
                    req = req.header(IF_RANGE, v.clone());
                }
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let e = e.without_url();
                    // Before any byte came, a refused connection or TLS is no passing fault.
                    if self.is_first()
                        && let Some(reason) = permanent(&e)
                    {
                        return Err(Error::Unreachable {
                            url: self.conn.shown.clone(),
                            reason,
                        });
                    }
                    self.failed(format!("request failed: {}", error_chain(&e)), None)
                        .await?;
                    continue;
                }
            };
            let status = resp.status();
            match status {
                StatusCode::OK => return self.full_body(resp).map(Some),
                StatusCode::PARTIAL_CONTENT => return self.partial_body(resp).map(Some),
                StatusCode::RANGE_NOT_SATISFIABLE if self.total == Some(self.offset) => {
                    return Ok(None);
                }
                StatusCode::NOT_FOUND | StatusCode::GONE => {
                    return Err(Error::NotFound {
                        url: self.conn.shown.clone(),
                        status: status.as_u16(),
                    });
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(Error::Denied {
                        url: self.conn.shown.clone(),
                        status: status.as_u16(),
                    });
                }
                s if s == StatusCode::REQUEST_TIMEOUT
                    || s == StatusCode::TOO_MANY_REQUESTS
                    || s.is_server_error() =>
                {
                    let after = ido_engine::retry::retry_after(resp.headers());
                    self.failed(format!("HTTP {}", s.as_u16()), after).await?;
                }
                s => {
                    return Err(Error::Http {
                        url: self.conn.shown.clone(),
                        status: s.as_u16(),
                    });
                }
            }
        }
    }

    fn changed(&self, reason: String) -> Error {
        Error::SourceChanged {
            url: self.conn.shown.clone(),
            reason,
        }
    }

    fn full_body(&mut self, resp: reqwest::Response) -> Result<Body> {
        let len = resp.content_length();
        let validator = validator_of(resp.headers());
        if self.is_first() {
            self.total = len;
            self.validator = validator;
            self.ranges = resp
                .headers()
                .get(ACCEPT_RANGES)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
            return Ok(Body { resp, skip: 0 });
        }
        // Resuming, but the whole object came back: either Range is not supported or the
        // object changed (If-Range failed). Only the former may continue.
        if let (Some(old), Some(new)) = (&self.validator, &validator)
            && old != new
        {
            return Err(self.changed("validator (ETag/Last-Modified) differs".into()));
        }
        if let (Some(old), Some(new)) = (self.total, len)
            && old != new
        {
            return Err(self.changed(format!("length was {old}, is {new}")));
        }
        tracing::info!(url = %self.conn.shown, offset = self.offset, "server ignored Range: skipping what was received");
        self.ranges = false;
        Ok(Body {
            resp,
            skip: self.offset,
        })
    }

    fn partial_body(&mut self, resp: reqwest::Response) -> Result<Body> {
        let range = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range);
        match range {
            Some((start, total)) if start == self.offset => {
                if let (Some(old), Some(new)) = (self.total, total)
                    && old != new
                {
                    return Err(self.changed(format!("length was {old}, is {new}")));
                }
                if self.total.is_none() {
                    self.total = total;
                }
                // If-Range already guards this; a validator that still differs means a
                // server (or cache) that ignores it.
                if let Some(old) = &self.validator
                    && !same_validator(old, resp.headers())
                {
                    return Err(self.changed("validator (ETag/Last-Modified) differs".into()));
                }
                if self.end.is_none() || self.failures > 0 {
                    tracing::info!(url = %self.conn.shown, offset = self.offset, "resumed download");
                }
                Ok(Body { resp, skip: 0 })
            }
            _ => Err(self.changed(format!(
                "asked for bytes from {}, got Content-Range {:?}",
                self.offset,
                resp.headers().get(CONTENT_RANGE)
            ))),
        }
    }

    /// Counts a failure; sleeps before the next attempt or gives up.
    async fn failed(&mut self, what: String, retry_after: Option<Duration>) -> Result<()> {
        self.failures += 1;
        let retry = &self.conn.retry;
        if self.failures >= retry.attempts {
            return Err(Error::RetriesExhausted {
                url: self.conn.shown.clone(),
                attempts: self.failures,
                last: what,
            });
        }
        let wait = retry.wait(self.failures, retry_after);
        tracing::warn!(url = %self.conn.shown, offset = self.offset, attempt = self.failures, ?wait, "{what}; retrying");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Streams bodies into `sink`, re-requesting after cuts, until the range ends.
    async fn run(&mut self, first: Option<Body>, sink: &mut Sink<'_>) -> Result<()> {
        let mut body = first;
        while let Some(Body { mut resp, mut skip }) = body.take() {
            let cut = loop {
                match resp.chunk().await {
                    Ok(Some(mut chunk)) => {
                        if skip > 0 {
                            let k = skip.min(chunk.len() as u64) as usize;
                            chunk.advance(k);
                            skip -= k as u64;
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        if let Some(end) = self.end {
                            let room = (end - self.offset) as usize;
                            chunk.truncate(room);
                        }
                        self.offset += chunk.len() as u64;
                        self.failures = 0;
                        if !chunk.is_empty() && !sink.put(chunk).await {
                            return Ok(()); // the reader is gone (import failed or done)
                        }
                        if self.end == Some(self.offset) {
                            return Ok(()); // the range is complete; the rest is not ours
                        }
                    }
                    Ok(None) => match self.end.or(self.total) {
                        Some(t) if self.offset < t => {
                            break format!("body ended at {} of {t} bytes", self.offset);
                        }
                        _ => return Ok(()),
                    },
                    Err(e) => {
                        break format!(
                            "transfer cut at byte {}: {}",
                            self.offset,
                            error_chain(&e.without_url())
                        );
                    }
                }
            };
            self.failed(cut, None).await?;
            body = self.request().await?;
        }
        Ok(())
    }
}

/// The chunks of the download as a blocking reader (used from the conversion thread).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
    budget: Arc<Semaphore>,
    /// Budget taken by `cur`, given back when the next chunk is taken.
    held: usize,
    max: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.held > 0 {
                self.budget.add_permits(self.held);
                self.held = 0;
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => {
                    self.held = b.len().min(self.max);
                    self.cur = b;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

fn validator_of(h: &HeaderMap) -> Option<HeaderValue> {
    h.get(ETAG)
        .filter(|v| !v.as_bytes().starts_with(b"W/"))
        .or_else(|| h.get(LAST_MODIFIED))
        .cloned()
}

/// Whether `h` carries the same kind of validator as `old` with the same value (or none).
fn same_validator(old: &HeaderValue, h: &HeaderMap) -> bool {
    let new = if old.as_bytes().starts_with(b"\"") {
        h.get(ETAG)
    } else {
        h.get(LAST_MODIFIED)
    };
    new.is_none_or(|n| n == old)
}

/// `bytes START-END/TOTAL` → (START, TOTAL if not `*`).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((start.parse().ok()?, total))
}

use ido_engine::error_chain;

/// Why a failed request will fail the same way again, if it will: nothing listens on the
/// port, or TLS cannot be spoken with the server (plain HTTP answered, a certificate that
/// does not verify).
fn permanent(e: &reqwest::Error) -> Option<String> {
    let chain = error_chain(e);
    let lower = chain.to_ascii_lowercase();
    if e.is_connect() && lower.contains("connection refused") {
        return Some(format!("connection refused (nothing listens there): {chain}"));
    }
    let tls = [
        "certificate",
        "invalidcontenttype",
        "corrupt message",
        "wrong version number",
        "handshake",
    ];
    if tls.iter().any(|t| lower.contains(t)) {
        return Some(format!(
            "TLS failed (is it an https server, with a certificate this machine trusts?): {chain}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut o = HttpOptions::new(Url::parse("https://u:pw@example.org/x").unwrap());
        o.add_header_line("Authorization: Bearer tok").unwrap();
        o.basic_auth = Some(BasicAuth {
            username: "me".into(),
            password: "hunter2".into(),
        });
        let s = format!("{o:?}");
        assert!(
            !s.contains("pw@") && !s.contains("tok") && !s.contains("hunter2"),
            "{s}"
        );
        assert!(o.add_header_line("no colon").is_err());
    }
}
