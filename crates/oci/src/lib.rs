//! The OCI copy engine.
//!
//! ```text
//!  source registry ──manifest (raw bytes)──▶ [copy] ──same bytes──▶ destination registry
//!                  ──blob stream (verified)─▶        ──monolithic or chunked upload──▶
//! ```
//!
//! - [`auth`]: credentials from docker config files and `kubernetes.io/dockerconfigjson`
//!   Secrets, per registry; never printed.
//! - [`registry`]: one `oci-client` client per side with its TLS settings (verification on
//!   by default, CA bundles, plain HTTP only when asked).
//! - [`copy`]: byte-exact copies of an image or an index: manifests are pushed as the exact
//!   bytes pulled (digests preserved), blobs stream through without being held in memory,
//!   existing blobs are skipped and blobs of the same registry mounted.

pub mod auth;
mod blob;
pub mod copy;
pub mod media;
pub mod reference;
pub mod registry;
mod retry;
pub mod tags;

pub use oci_client::Reference;

/// Copy engine errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{reference}: {message}")]
    Unsupported { reference: String, message: String },
    #[error("{reference}: no manifest for platform {platform} (has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{what}: {}", copy::error_chain(source))]
    Registry {
        what: String,
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
