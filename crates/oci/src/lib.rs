//! The OCI copy engine.
//!
//! ```text
//!  source registry ──manifest (raw bytes)──▶ [copy] ──same bytes──▶ destination registry
//!                  ──blob stream (verified)─▶        ──monolithic or chunked upload──▶
//! ```
//!
//! - [`auth`]: credentials from docker config files and `kubernetes.io/dockerconfigjson`
//!   Secrets, per registry; never printed.
//! - [`registry`]: one side of copies: `oci-client` clients with its TLS settings
//!   (verification on by default, CA bundles, plain HTTP only when asked), a per-registry
//!   limit on blob transfers, and no credential round trips for open registries.
//! - [`copy`]: byte-exact copies of an image or an index ([`copy::copy`]), or of many at
//!   once ([`copy::copy_many`]): manifests are pushed as the exact bytes pulled (digests
//!   preserved), a destination tag that already has the digest costs two requests.
//! - `blob` (private): one blob: skipped when present, mounted within a registry, else
//!   streamed without being held in memory, its digest verified on the way.
//! - `retry` (private): which failures are transient (5xx, 429, resets) and the backoff,
//!   honouring `Retry-After` where the engine sees the response headers.
//! - [`reference`](mod@reference): image references parsed without oci-spec's regular expression
//!   (~75 ms of CPU on first use).
//! - [`tags`]: tag listing and patterns.

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
    /// The message holds the whole chain of causes; the error is kept for classification
    /// (not as `source`, so that a printed chain does not repeat it).
    #[error("{what}: {}{}", copy::error_chain(error), retry::hint(error))]
    Registry {
        what: String,
        error: oci_client::errors::OciDistributionError,
    },
    /// A registry that cannot be reached in a way another try does not change: nothing
    /// listens, or it speaks another protocol (TLS to a plain-HTTP registry).
    #[error("registry {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
