//! The OCI copy engine.
//!
//! ```text
//!  source registry ──manifest (raw bytes)──▶ [copy] ──same bytes──▶ destination registry
//!                  ──blob stream (verified)─▶        ──monolithic or chunked upload──▶
//! ```
//!
//! - [`auth`]: credentials from docker config files and `kubernetes.io/dockerconfigjson`
//!   Secrets, per registry; never printed.
//! - [`aws`]: ECR credentials from the pod's web identity (EKS IRSA): STS, then a SigV4
//!   signed `GetAuthorizationToken`, cached until shortly before they expire.
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
//! - [`push`]: images built here (containers/image's `dir:` layout) pushed by digest, and
//!   the tag that names them (the image, or an index of several) published.
//! - [`tags`]: tag listing and patterns.

pub mod auth;
pub mod aws;
mod blob;
pub mod copy;
pub mod media;
pub mod push;
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
    #[error("{what}: {}{}", ido_io::error_chain(error), retry::hint(error))]
    Registry {
        what: String,
        error: oci_client::errors::OciDistributionError,
    },
    /// A registry that cannot be reached in a way another try does not change: nothing
    /// listens, or it speaks another protocol (TLS to a plain-HTTP registry).
    #[error("registry {host}: {reason}")]
    Unreachable { host: String, reason: String },
    /// A local file that cannot be used (read, or what it holds): an image directory's
    /// manifest or blob.
    #[error("{}: {message}", path.display())]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    /// An environment variable [`aws`] needs is missing or unusable (or the file it names).
    #[error("{var}: {reason}")]
    AwsEnv { var: &'static str, reason: String },
    /// An AWS call of [`aws`] failed: `step` names it (`STS AssumeRoleWithWebIdentity`,
    /// `ECR GetAuthorizationToken`), `code` is AWS's error code when it gave one; the
    /// message holds no secret.
    #[error("{step} at {endpoint}: {}{message}", code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Aws {
        step: &'static str,
        endpoint: String,
        code: Option<String>,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
