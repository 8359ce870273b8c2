//! HTTP(S) source: ido-io's resumable reader ([`ido_io::fetch`]: Range resume,
//! parallel ranged GETs, retries, validators) behind the import's options, its errors as
//! the import's.

use std::fmt;

use ido_io::fetch::{self, FetchError, FetchOptions, ResumeAt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
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
    pub tls: ido_io::http::TlsOptions,
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

pub use ido_io::fetch::{DEFAULT_CHUNK, DEFAULT_CONNECTIONS};

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
            parallel_min: fetch::DEFAULT_PARALLEL_MIN,
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
pub use ido_io::fetch::BasicAuth;

/// How failed requests and cut transfers are retried: ido-io's one policy.
pub use ido_io::retry::RetryPolicy;

/// The URL without user info, query or fragment, for messages.
pub use ido_io::redact::url as redacted;

/// Opens the URL (see [`ido_io::fetch::open`]): the first response is awaited here, the
/// body streams from a task. With `from`, an unchanged object continues at its offset.
pub(super) async fn open(opts: &HttpOptions, from: Option<&ResumeFrom>) -> Result<Opened> {
    let f = fetch::open(&fetch_options(opts)?, from.map(resume_at).as_ref()).await?;
    Ok(Opened {
        reader: Box::new(f.body),
        total: f.total,
        offset: f.offset,
        validator: f.validator,
    })
}

/// Ranged reads of one object that must still have a given validator and length (the
/// tables of a qcow2 whose import resumes).
pub(crate) struct Ranges(fetch::Ranges);

impl Ranges {
    pub(super) fn new(opts: &HttpOptions, from: &ResumeFrom) -> Result<Self> {
        Ok(Self(fetch::Ranges::new(&fetch_options(opts)?, &resume_at(from))))
    }

    /// Bytes `[off, off + len)` (cut at the object's end); `source_changed` if the object
    /// is not the one the previous run read.
    pub(crate) async fn read(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        Ok(self.0.read(off, len).await?)
    }
}

fn resume_at(r: &ResumeFrom) -> ResumeAt {
    ResumeAt {
        offset: r.offset,
        validator: r.validator.clone(),
        total: r.total,
    }
}

/// ido-io's options for `opts`: the client built once, the headers checked.
fn fetch_options(opts: &HttpOptions) -> Result<FetchOptions> {
    let client = ido_io::http::client(&opts.tls, "caBundle").map_err(|e| Error::InvalidArgument {
        field: "tls",
        value: "<tls settings>".into(),
        reason: e.to_string(),
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in &opts.headers {
        let bad = |e: &dyn std::error::Error| Error::InvalidArgument {
            field: "header",
            value: name.clone(),
            reason: e.to_string(),
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(&e))?;
        let mut v = HeaderValue::from_str(value).map_err(|e| bad(&e))?;
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
    Ok(FetchOptions {
        client,
        url: opts.url.clone(),
        headers,
        basic_auth: opts.basic_auth.clone(),
        retry: opts.retry.clone(),
        connections: opts.connections,
        chunk_size: opts.chunk_size,
        parallel_min: opts.parallel_min,
    })
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::NotFound { url, status } => Error::NotFound { url, status },
            FetchError::Denied { url, status } => Error::Denied { url, status },
            FetchError::Http { url, status } => Error::Http { url, status },
            FetchError::RetriesExhausted { url, attempts, last } => {
                Error::RetriesExhausted { url, attempts, last }
            }
            FetchError::Unreachable { url, reason } => Error::Unreachable { url, reason },
            FetchError::SourceChanged { url, reason } => Error::SourceChanged { url, reason },
            e @ FetchError::Task { .. } => Error::Io {
                context: "downloading".into(),
                source: std::io::Error::other(e.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
