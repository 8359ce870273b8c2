//! One byte range (the whole object, or a chunk) across its requests: retries, resumption
//! at the cut, the validator and length checks.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_RANGES, CONTENT_RANGE, ETAG, HeaderMap, HeaderValue, IF_RANGE, LAST_MODIFIED, RANGE,
};
use url::Url;

use super::body::Queue;
use super::{BasicAuth, FetchError, FetchOptions};
use crate::error_chain;
use crate::redact;
use crate::retry::{RetryPolicy, retry_after};

/// What every request of one download shares.
pub(super) struct Conn {
    pub(super) client: reqwest::Client,
    pub(super) url: Url,
    pub(super) shown: String,
    pub(super) headers: HeaderMap,
    pub(super) auth: Option<BasicAuth>,
    pub(super) retry: RetryPolicy,
}

impl Conn {
    pub(super) fn new(opts: &FetchOptions) -> Self {
        Self {
            client: opts.client.clone(),
            url: opts.url.clone(),
            shown: redact::url(&opts.url),
            headers: opts.headers.clone(),
            auth: opts.basic_auth.clone(),
            retry: opts.retry.clone(),
        }
    }
}

/// The state of one byte range (the whole object, or a chunk) across its requests.
pub(super) struct Fetch {
    pub(super) conn: Arc<Conn>,
    /// Absolute offset of the next byte to deliver.
    pub(super) offset: u64,
    /// End of the range (exclusive); `None`: the object's end.
    pub(super) end: Option<u64>,
    /// The object's size, from the first response.
    pub(super) total: Option<u64>,
    /// `If-Range` validator: a strong ETag, else Last-Modified.
    pub(super) validator: Option<HeaderValue>,
    /// The first response advertised `Accept-Ranges: bytes`.
    pub(super) ranges: bool,
    /// Failures since bytes last arrived.
    pub(super) failures: u32,
}

/// A response to stream, with how many leading bytes to drop (a server that ignored Range).
pub(super) struct Response {
    pub(super) resp: reqwest::Response,
    pub(super) skip: u64,
}

/// Where the bytes of a [`Fetch`] go.
pub(super) enum Sink<'a> {
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
    pub(super) fn new(conn: Arc<Conn>, offset: u64, end: Option<u64>) -> Self {
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

    fn request_builder(&self) -> reqwest::RequestBuilder {
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
        req
    }

    /// Sends requests until one gives a body to stream (`None`: nothing is left).
    pub(super) async fn request(&mut self) -> Result<Option<Response>, FetchError> {
        loop {
            let resp = match self.request_builder().send().await {
                Ok(r) => r,
                Err(e) => {
                    let e = e.without_url();
                    // Before any byte came, a refused connection or TLS is no passing fault.
                    if self.is_first()
                        && let Some(reason) = permanent(&e)
                    {
                        return Err(FetchError::Unreachable {
                            url: self.conn.shown.clone(),
                            reason,
                        });
                    }
                    self.failed(format!("request failed: {}", error_chain(&e)), None)
                        .await?;
                    continue;
                }
            };
            let (url, status) = (self.conn.shown.clone(), resp.status());
            match status {
                StatusCode::OK => return self.full_body(resp).map(Some),
                StatusCode::PARTIAL_CONTENT => return self.partial_body(resp).map(Some),
                StatusCode::RANGE_NOT_SATISFIABLE if self.total == Some(self.offset) => {
                    return Ok(None);
                }
                StatusCode::NOT_FOUND | StatusCode::GONE => {
                    return Err(FetchError::NotFound {
                        url,
                        status: status.as_u16(),
                    });
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(FetchError::Denied {
                        url,
                        status: status.as_u16(),
                    });
                }
                s if s == StatusCode::REQUEST_TIMEOUT
                    || s == StatusCode::TOO_MANY_REQUESTS
                    || s.is_server_error() =>
                {
                    let after = retry_after(resp.headers());
                    self.failed(format!("HTTP {}", s.as_u16()), after).await?;
                }
                s => {
                    return Err(FetchError::Http {
                        url,
                        status: s.as_u16(),
                    });
                }
            }
        }
    }

    fn changed(&self, reason: String) -> FetchError {
        FetchError::SourceChanged {
            url: self.conn.shown.clone(),
            reason,
        }
    }

    fn full_body(&mut self, resp: reqwest::Response) -> Result<Response, FetchError> {
        let len = resp.content_length();
        let validator = validator_of(resp.headers());
        if self.is_first() {
            self.total = len;
            self.validator = validator;
            self.ranges = resp
                .headers()
                .get(ACCEPT_RANGES)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
            return Ok(Response { resp, skip: 0 });
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
        Ok(Response {
            resp,
            skip: self.offset,
        })
    }

    fn partial_body(&mut self, resp: reqwest::Response) -> Result<Response, FetchError> {
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
                Ok(Response { resp, skip: 0 })
            }
            _ => Err(self.changed(format!(
                "asked for bytes from {}, got Content-Range {:?}",
                self.offset,
                resp.headers().get(CONTENT_RANGE)
            ))),
        }
    }

    /// Counts a failure; sleeps before the next attempt or gives up.
    async fn failed(&mut self, what: String, retry_after: Option<Duration>) -> Result<(), FetchError> {
        self.failures += 1;
        let retry = &self.conn.retry;
        if self.failures >= retry.attempts {
            return Err(FetchError::RetriesExhausted {
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
    pub(super) async fn run(
        &mut self,
        first: Option<Response>,
        sink: &mut Sink<'_>,
    ) -> Result<(), FetchError> {
        let mut body = first;
        while let Some(Response { mut resp, mut skip }) = body.take() {
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
                            return Ok(()); // the reader is gone (it failed, or is done)
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
}
