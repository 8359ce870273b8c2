//! Disk-image import: fetch an image, peel its compressions, convert it to raw while it
//! streams, and write it sparsely to a file or block device. No scratch file, ever.
//!
//! ```text
//!  source (file | stdin | HTTP with Range resume)
//!    │  every byte counted (progress) and hashed (checksum)      [source::Counted]
//!    ▼
//!  detect magic ──► gzip | xz (multi-threaded) | zstd | bzip2 | lzma  [detect, decompress]
//!    │                 └──────── loop: detect again ─────────┘
//!    ├──► tar: the one regular file inside (sparse members too),  [tar]
//!    │    names checked
//!    │    OVA: the disk the .ovf names
//!    ▼
//!  disk format: raw / ISO ──► zero runs become holes           [raw]
//!                             (a fixed VHD's footer is dropped)  [vhd]
//!               qcow2     ──► streamed in file order; metadata  [qcow2]
//!                             first, bounded reorder buffer     [seq]
//!               vmdk      ──► grain markers, or GD → GTs →      [vmdk]
//!                             grains in file order
//!               vhd, vhdx,──► header and block table checked,   [vhd, vhdx, vdi]
//!               vdi           then blocks copied in file order
//!    ▼
//!  target (file: truncated, sparse, length set at the end;      [target]
//!          block device: capacity checked, zeros written)
//! ```
//!
//! The virtual size is known before the target is opened whenever the format says it
//! (qcow2, vmdk, vhd, vhdx and vdi headers, a plain raw file's length, a tar member's
//! size, a zstd frame's content size) and is checked against the target's capacity first,
//! and the import fails unless it is the final size; otherwise the capacity is
//! enforced while writing. Images that would read other files (qcow2 backing files,
//! external data files, VMDK descriptors with a parent or with extents outside their
//! directory or archive, differencing
//! VHD/VHDX/VDI) are refused before anything is written. On any failure, including
//! a checksum mismatch, a target file created by the import is removed.
//!
//! Entry point: [`import()`] with [`ImportOptions`]. An archive (`contentType: archive`:
//! a tar, maybe compressed) is unpacked into a directory by [`unpack()`] with
//! [`ArchiveOptions`], on the same sources and decoders.

pub mod archive;
mod blank;
pub mod checksum;
pub mod decompress;
pub mod detect;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod progress;
pub mod qcow2;
mod raw;
pub mod resume;
mod seq;
pub mod source;
pub mod tar;
pub mod target;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk;
mod worker;

pub use archive::{ArchiveOptions, SpecialFiles, UnpackReport, unpack};
pub use blank::blank;
pub use checksum::{Algorithm, Checksum};
pub use detect::{Compression, DiskFormat};
pub use ido_io::progress::{Report, ReportFn};
pub use import::{ImportOptions, ImportReport, import};
pub use source::{BasicAuth, HttpOptions, RetryPolicy, SourceSpec, StreamSource};
pub use target::TargetSpec;

/// Errors of an import. Each variant has a stable label ([`Error::label`]) for metrics and
/// status reasons.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A user-supplied value is malformed (checksum, header, size, …).
    #[error("invalid {field} \"{}\": {reason}", ido_io::redact::url_str(value))]
    InvalidArgument {
        /// Which argument.
        field: &'static str,
        /// The value as given; shown with credentials and URL queries hidden.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered 404 or 410.
    #[error("{url}: not found (HTTP {status})")]
    NotFound {
        /// The URL without credentials.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The server answered 401 or 403.
    #[error("{url}: access denied (HTTP {status})")]
    Denied {
        /// The URL without credentials.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// Any other HTTP status that is not retried.
    #[error("{url}: HTTP {status}")]
    Http {
        /// The URL without credentials.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// Retries were exhausted without progress.
    #[error("{url}: giving up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// The URL without credentials.
        url: String,
        /// Attempts made in a row without receiving a byte.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The server cannot be reached in a way another try does not change: nothing listens
    /// on the port, or its TLS is refused (plain HTTP spoken back, a certificate that does
    /// not verify).
    #[error("{url}: {reason}")]
    Unreachable {
        /// The URL without credentials.
        url: String,
        /// What happened, with its causes.
        reason: String,
    },
    /// The object changed between a cut and its resumption (validator mismatch).
    #[error("{url}: the object changed while it was being downloaded ({reason})")]
    SourceChanged {
        /// The URL without credentials.
        url: String,
        /// What differed.
        reason: String,
    },
    /// The image's format or layout is recognised but not supported (yet).
    #[error("unsupported {format} image: {reason}")]
    Unsupported {
        /// The detected format.
        format: &'static str,
        /// What is missing.
        reason: String,
    },
    /// The image is malformed or truncated.
    #[error("invalid {format} image: {reason}")]
    InvalidImage {
        /// The format being read.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The image is well-formed but refused on principle (backing file, external data file,
    /// encryption, an unsafe tar member name).
    #[error("refusing {format} image: {reason}")]
    Refused {
        /// The format being read.
        format: &'static str,
        /// Why.
        reason: String,
    },
    /// An archive member that is not unpacked (`contentType: archive`, [`archive`]): its
    /// path or link leaves the target directory or passes through a symbolic link, it is a
    /// device, its name is taken in the target, ….
    #[error("refusing archive {archive}: member {member:?}: {reason}")]
    ArchiveMember {
        /// The archive (the source, shown without credentials or URL query).
        archive: String,
        /// The member's path as stored.
        member: String,
        /// Why.
        reason: String,
    },
    /// The image does not fit the target.
    #[error("image needs {needed} bytes but the target holds {capacity}")]
    TooLarge {
        /// Virtual size (or bytes written so far) of the image.
        needed: u64,
        /// Capacity of the target.
        capacity: u64,
    },
    /// The source bytes do not match the expected checksum.
    #[error("checksum mismatch: expected {algorithm}:{expected}, got {algorithm}:{actual}")]
    ChecksumMismatch {
        /// Algorithm name (`sha256`, …).
        algorithm: &'static str,
        /// Expected hex digest.
        expected: String,
        /// Computed hex digest.
        actual: String,
    },
    /// The import was stopped before it ended (its future dropped: Ctrl-C, a shutdown).
    #[error("the import was stopped before it ended")]
    Stopped,
    /// Local I/O (source file, target, decompressor input). The cause is part of the
    /// message (not a separate `source()`, so chains do not print it twice).
    #[error("{context}: {}", describe_io(source))]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// A stable, low-cardinality label for metrics and status reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::NotFound { .. } => "not_found",
            Error::Denied { .. } => "denied",
            Error::Http { .. } => "http",
            Error::RetriesExhausted { .. } => "retries_exhausted",
            Error::Unreachable { .. } => "unreachable",
            Error::SourceChanged { .. } => "source_changed",
            Error::Unsupported { .. } => "unsupported",
            Error::InvalidImage { .. } => "invalid_image",
            Error::Refused { .. } | Error::ArchiveMember { .. } => "refused",
            Error::TooLarge { .. } => "too_large",
            Error::ChecksumMismatch { .. } => "checksum_mismatch",
            Error::Stopped => "stopped",
            Error::Io { .. } => "io",
        }
    }

    /// Whether retrying the whole import could help (transport trouble, not bad input).
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind as K;
        match self {
            // A later run with --resume continues a stopped one.
            Error::RetriesExhausted { .. } | Error::Stopped => true,
            // What another try cannot change: a name too long, no permission, no such
            // directory, a read-only or full file system.
            Error::Io { source, .. } => !matches!(
                source.kind(),
                K::PermissionDenied
                    | K::NotFound
                    | K::InvalidFilename
                    | K::InvalidInput
                    | K::ReadOnlyFilesystem
                    | K::IsADirectory
                    | K::NotADirectory
                    | K::StorageFull
                    | K::Unsupported
            ),
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        // Errors raised by our own readers (and ido-io's tar reader) travel through
        // `std::io` as `Other` payloads: unwrap them so the caller sees the real variant.
        match source.downcast::<Error>() {
            Ok(inner) => inner,
            Err(source) => match source.downcast::<ido_io::tar::TarError>() {
                Ok(tar) => tar.into(),
                Err(source) => match ido_io::fetch::FetchError::from_io(source) {
                    Ok(fetch) => fetch.into(),
                    Err(source) => Error::Io {
                        context: context.into(),
                        source,
                    },
                },
            },
        }
    }

    pub(crate) fn invalid(format: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidImage {
            format,
            reason: reason.into(),
        }
    }

    pub(crate) fn refused(format: &'static str, reason: impl Into<String>) -> Self {
        Error::Refused {
            format,
            reason: reason.into(),
        }
    }

    /// Wraps this error into an `io::Error` so it can cross a `Read` boundary intact.
    pub(crate) fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}

/// An I/O error in words; a premature end of data says what it most likely means.
fn describe_io(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        format!("the data ends early, the source is truncated ({e})")
    } else {
        e.to_string()
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
