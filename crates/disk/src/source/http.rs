//! HTTP(S) source: one GET streamed to the end; after a cut, the next request asks for
//! `Range: bytes=<offset>-` (guarded by `If-Range`), so a resumed download continues where
//! the bytes stopped instead of at 0. 408/429/5xx and transport errors are retried with
//! exponential backoff (honouring `Retry-After`); the failure count resets whenever bytes
//! arrive. A server that ignores Range is handled by skipping the bytes already delivered.

use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

use bytes::{Buf, Bytes};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_RANGES, CONTENT_RANGE, ETAG, HeaderMap, HeaderName, HeaderValue, IF_RANGE, LAST_MODIFIED, RANGE,
    RETRY_AFTER,
};
use tokio::sync::mpsc;
use url::Url;

use super::Opened;
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
    /// Retry behaviour.
    pub retry: RetryPolicy,
}

impl HttpOptions {
    /// Defaults for `url`: no extra headers, no auth, platform roots, default retries.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            headers: Vec::new(),
            basic_auth: None,
            tls: Default::default(),
            retry: RetryPolicy::default(),
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

/// How failed requests and cut transfers are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failures in a row (without a byte received in between) before giving up.
    /// Default: 8.
    pub attempts: u32,
    /// First backoff; doubled after each failure. Default: 500 ms.
    pub initial_backoff: Duration,
    /// Longest backoff (also caps `Retry-After`). Default: 30 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The URL without user info, for messages.
pub(crate) fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Opens the URL: the first response is awaited here, the body streams from a task.
pub(super) async fn open(opts: &HttpOptions) -> Result<Opened> {
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
    let mut fetch = Fetch {
        client,
        url: opts.url.clone(),
        shown: redacted(&opts.url),
        headers,
        auth: opts.basic_auth.clone(),
        retry: opts.retry.clone(),
        offset: 0,
        total: None,
        validator: None,
        failures: 0,
    };
    let first = fetch.request().await?;
    let total = fetch.total;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(e) = fetch.run(first, &tx).await {
            let _ = tx.send(Err(e.into_io())).await;
        }
    });
    Ok(Opened {
        reader: Box::new(ChannelReader {
            rx,
            cur: Bytes::new(),
        }),
        total,
    })
}

/// The state of one download across its requests.
struct Fetch {
    client: reqwest::Client,
    url: Url,
    shown: String,
    headers: HeaderMap,
    auth: Option<BasicAuth>,
    retry: RetryPolicy,
    /// Bytes delivered to the reader so far.
    offset: u64,
    /// The object's size, from the first response.
    total: Option<u64>,
    /// `If-Range` validator: a strong ETag, else Last-Modified.
    validator: Option<HeaderValue>,
    /// Failures since bytes last arrived.
    failures: u32,
}

/// A response to stream, with how many leading bytes to drop (a server that ignored Range).
struct Body {
    resp: reqwest::Response,
    skip: u64,
}

impl Fetch {
    /// Sends requests until one gives a body to stream (`None`: nothing is left).
    async fn request(&mut self) -> Result<Option<Body>> {
        loop {
            let mut req = self.client.get(self.url.clone()).headers(self.headers.clone());
            if let Some(a) = &self.auth {
                req = req.basic_auth(&a.username, Some(&a.password));
            }
            if self.offset > 0 {
                req = req.header(RANGE, format!("bytes={}-", self.offset));
                if let Some(v) = &self.validator {
                    req = req.header(IF_RANGE, v.clone());
                }
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
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
                        url: self.shown.clone(),
                        status: status.as_u16(),
                    });
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(Error::Denied {
                        url: self.shown.clone(),
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
                    return Err(Error::Http {
                        url: self.shown.clone(),
                        status: s.as_u16(),
                    });
                }
            }
        }
    }

    fn full_body(&mut self, resp: reqwest::Response) -> Result<Body> {
        let len = resp.content_length();
        let validator = validator_of(resp.headers());
        if self.offset == 0 {
            self.total = len;
            self.validator = validator;
            let ranges = resp
                .headers()
                .get(ACCEPT_RANGES)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
            tracing::debug!(url = %self.shown, total = ?len, ranges, "HTTP source opened");
            return Ok(Body { resp, skip: 0 });
        }
        // Resuming, but the whole object came back: either Range is not supported or the
        // object changed (If-Range failed). Only the former may continue.
        if let (Some(old), Some(new)) = (&self.validator, &validator)
            && old != new
        {
            return Err(Error::SourceChanged {
                url: self.shown.clone(),
                reason: "validator (ETag/Last-Modified) differs".into(),
            });
        }
        if let (Some(old), Some(new)) = (self.total, len)
            && old != new
        {
            return Err(Error::SourceChanged {
                url: self.shown.clone(),
                reason: format!("length was {old}, is {new}"),
            });
        }
        tracing::info!(url = %self.shown, offset = self.offset, "server ignored Range: skipping what was received");
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
                    return Err(Error::SourceChanged {
                        url: self.shown.clone(),
                        reason: format!("length was {old}, is {new}"),
                    });
                }
                tracing::info!(url = %self.shown, offset = self.offset, "resumed download");
                Ok(Body { resp, skip: 0 })
            }
            _ => Err(Error::SourceChanged {
                url: self.shown.clone(),
                reason: format!(
                    "asked for bytes from {}, got Content-Range {:?}",
                    self.offset,
                    resp.headers().get(CONTENT_RANGE)
                ),
            }),
        }
    }

    /// Counts a failure; sleeps before the next attempt or gives up.
    async fn failed(&mut self, what: String, retry_after: Option<Duration>) -> Result<()> {
        self.failures += 1;
        if self.failures >= self.retry.attempts {
            return Err(Error::RetriesExhausted {
                url: self.shown.clone(),
                attempts: self.failures,
                last: what,
            });
        }
        let exp = self
            .retry
            .initial_backoff
            .saturating_mul(1u32 << (self.failures - 1).min(16));
        let wait = retry_after.unwrap_or(exp).min(self.retry.max_backoff);
        tracing::warn!(url = %self.shown, offset = self.offset, attempt = self.failures, ?wait, "{what}; retrying");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Streams bodies to the reader, re-requesting after cuts, until the object ends.
    async fn run(&mut self, first: Option<Body>, tx: &mpsc::Sender<io::Result<Bytes>>) -> Result<()> {
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
                        self.offset += chunk.len() as u64;
                        self.failures = 0;
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(()); // the reader is gone (import failed or done)
                        }
                    }
                    Ok(None) => match self.total {
                        Some(t) if self.offset < t => {
                            break format!("body ended at {} of {t} bytes", self.offset);
                        }
                        _ => return Ok(()),
                    },
                    Err(e) => break format!("transfer cut at byte {}: {}", self.offset, error_chain(&e)),
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
}

impl Read for ChannelReader {
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

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
