//! The I/O layer every ido crate shares: where image bytes come from and how they are read
//! on the way.
//!
//! - [`fetch`]: the resumable, parallel ranged HTTP(S) reader every download goes through.
//! - [`http`]: one place that builds HTTP clients (TLS on by default, CA bundles, timeouts).
//! - [`s3`]: S3 and S3-compatible object stores as an image source (anonymous or signed).
//! - [`tar`]: the one tar reader (ustar, GNU, pax, sparse members), member by member.
//! - [`ova`]: reading an OVA (a tar) member by member from a byte stream, never to disk.
//! - [`ovf`]: the OVF descriptor an OVA carries: its files, its disks, the hardware version.
//! - [`progress`]: the byte counter every transfer reports through, its reports, and (feature
//!   `display`) the bar and plain lines that show them.
//! - [`cleanup`]: clean-up of abandoned work, tracked so a stopping process waits for it.
//! - [`redact`]: credentials hidden in URLs and in text holding URLs, for every message.
//! - [`retry`]: the one retry policy: transient failures, doubling backoff, `Retry-After`.
//! - [`xml`]: a small namespace-aware element tree for the XML APIs and documents ido reads.

pub mod cleanup;
pub mod fetch;
pub mod http;
pub mod ova;
pub mod ovf;
pub mod progress;
pub mod redact;
pub mod retry;
pub mod s3;
pub mod tar;
pub mod xml;

/// Reads until `buf` is full or `r` ends; the bytes read (short only at the end).
pub fn read_full<R: std::io::Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Errors of ido-io's sources and readers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{url}: object not found (HTTP {status})")]
    NotFound { url: String, status: u16 },
    #[error("{url}: access denied (HTTP {status}){hint}")]
    Denied {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("invalid OVA: {0}")]
    InvalidOva(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `e` and every cause below it, `: `-joined (a cause whose text the message already holds
/// is not repeated), with credentials and URL queries hidden: for messages that must keep
/// why a transfer failed (a refused connection, a TLS error) without printing a secret.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    redact::text(&s)
}
