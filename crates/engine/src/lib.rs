//! The streaming engine: where image bytes come from and how they are read on the way.
//!
//! - [`http`]: one place that builds HTTP clients (TLS on by default, CA bundles, timeouts).
//! - [`s3`]: S3 and S3-compatible object stores as an image source (anonymous or signed).
//! - [`ova`]: reading an OVA (a tar) member by member from a byte stream, never to disk.
//! - [`redact`]: credentials hidden in URLs and in text holding URLs, for every message.

pub mod http;
pub mod ova;
pub mod redact;
pub mod s3;

/// Errors of the engine's sources and readers.
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
