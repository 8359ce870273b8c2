//! Where image bytes come from: a local file, stdin, HTTP(S) with Range resume and parallel
//! ranged GETs ([`http`]), an S3 object (presigned, then HTTP: [`s3`]), or the disk of a
//! KubeVirt containerDisk image in a registry ([`registry`]).
//!
//! Every source ends up as one blocking [`Read`] of the object's bytes in order; the
//! conversion runs on a blocking thread and never sees retries or reconnects. The bytes
//! pass through [`Counted`], which counts them for progress and hashes them for the
//! checksum, so both cover exactly the bytes as fetched.

mod file;
mod http;
pub mod registry;
pub mod s3;

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};
use std::time::Duration;

pub use http::{BasicAuth, DEFAULT_CHUNK, DEFAULT_CONNECTIONS, HttpOptions, RetryPolicy, redacted};
pub use registry::RegistryOptions;
pub use s3::S3Options;

use crate::checksum::Hasher;
use crate::progress::Reporter;
use crate::{Error, Result};

/// Which source to read.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    /// A local file (or anything `open` can read, such as a FIFO).
    File(PathBuf),
    /// Standard input.
    Stdin,
    /// An HTTP(S) URL.
    Http(Box<HttpOptions>),
    /// An S3 object (`s3://BUCKET/KEY`).
    S3(Box<S3Options>),
    /// The disk of a containerDisk image (`docker://REGISTRY/REPO:TAG`).
    Registry(Box<RegistryOptions>),
    /// Bytes the caller hands over (an upload's request body), read once.
    Stream(StreamSource),
}

/// A source whose bytes come from a reader the caller made (an upload's request body). It
/// is read once: a second import of the same value fails. Nothing of it is random access,
/// so a qcow2's out-of-order data is held in the reorder budget.
#[derive(Clone)]
pub struct StreamSource {
    name: String,
    total: Option<u64>,
    reader: Arc<Mutex<Option<Box<dyn Read + Send>>>>,
}

impl StreamSource {
    /// `name` is how the source is shown (`upload`), `total` its length when known.
    pub fn new(name: impl Into<String>, total: Option<u64>, reader: Box<dyn Read + Send>) -> Self {
        Self {
            name: name.into(),
            total,
            reader: Arc::new(Mutex::new(Some(reader))),
        }
    }

    fn take(&self) -> Result<Box<dyn Read + Send>> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| Error::InvalidArgument {
                field: "source",
                value: self.name.clone(),
                reason: "this stream was read already".into(),
            })
    }
}

impl fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("name", &self.name)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl SourceSpec {
    /// Interprets a command-line source: `-` is stdin, `http(s)://…` a URL, `s3://BUCKET/KEY`
    /// an S3 object, `docker://REFERENCE` a containerDisk image (default options each),
    /// `file://…` or anything else a path.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "-" {
            return Ok(SourceSpec::Stdin);
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url = url::Url::parse(s).map_err(|e| Error::InvalidArgument {
                field: "source",
                value: s.to_string(),
                reason: e.to_string(),
            })?;
            return Ok(SourceSpec::Http(Box::new(HttpOptions::new(url))));
        }
        if lower.starts_with("s3://") {
            return Ok(SourceSpec::S3(Box::new(S3Options::parse(s)?)));
        }
        if lower.starts_with("docker://") {
            return Ok(SourceSpec::Registry(Box::new(RegistryOptions::parse(s)?)));
        }
        if lower.starts_with("file://") {
            let url = url::Url::parse(s).map_err(|e| Error::InvalidArgument {
                field: "source",
                value: s.to_string(),
                reason: e.to_string(),
            })?;
            let path = url.to_file_path().map_err(|()| Error::InvalidArgument {
                field: "source",
                value: s.to_string(),
                reason: "not a local file URL".into(),
            })?;
            return Ok(SourceSpec::File(path));
        }
        if lower.contains("://") {
            return Err(Error::InvalidArgument {
                field: "source",
                value: s.to_string(),
                reason: "supported sources are a path, -, file://, http://, https://, s3:// and docker://"
                    .into(),
            });
        }
        Ok(SourceSpec::File(PathBuf::from(s)))
    }
}

impl SourceSpec {
    /// The last segment of the source's path or key (`disk.qcow2.xz`), when it has one: the
    /// name a user expects the content to match.
    pub fn file_name(&self) -> Option<String> {
        let last = |p: &str| p.rsplit('/').next().filter(|s| !s.is_empty()).map(String::from);
        match self {
            SourceSpec::File(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
            SourceSpec::Http(h) => last(h.url.path()),
            SourceSpec::S3(o) => last(&o.key),
            SourceSpec::Stdin | SourceSpec::Registry(_) | SourceSpec::Stream(_) => None,
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::File(p) => write!(f, "{}", p.display()),
            SourceSpec::Stdin => f.write_str("<stdin>"),
            SourceSpec::Http(h) => write!(f, "{}", http::redacted(&h.url)),
            SourceSpec::S3(o) => write!(f, "{o}"),
            SourceSpec::Registry(o) => write!(f, "{o}"),
            SourceSpec::Stream(s) => f.write_str(&s.name),
        }
    }
}

/// An opened source: its bytes and, when known, their count.
pub(crate) struct Opened {
    /// The bytes from `offset` on.
    pub(crate) reader: Box<dyn Read + Send>,
    /// The object's whole length.
    pub(crate) total: Option<u64>,
    /// Where the bytes start: 0, or where a resumed import continues.
    pub(crate) offset: u64,
    /// The object's validator (HTTP: strong ETag, else Last-Modified), when it has one.
    pub(crate) validator: Option<String>,
}

impl Opened {
    fn whole(reader: Box<dyn Read + Send>, total: Option<u64>) -> Self {
        Self {
            reader,
            total,
            offset: 0,
            validator: None,
        }
    }
}

/// Where a previous run stopped: the source is read from `offset` if the object still has
/// this validator and length.
#[derive(Clone, Debug)]
pub(crate) struct ResumeFrom {
    pub(crate) offset: u64,
    pub(crate) validator: String,
    pub(crate) total: u64,
}

/// Opens a source. HTTP sources make their first request here (so a 404 fails before any
/// target is touched) and stream the body from a task on the current runtime.
///
/// With `from`, HTTP and S3 sources continue there when the object is unchanged
/// ([`Opened::offset`] says whether they did); other sources always start from 0.
pub(crate) async fn open(spec: &SourceSpec, from: Option<&ResumeFrom>) -> Result<Opened> {
    match spec {
        SourceSpec::File(path) => {
            let file =
                std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let meta = file
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let total = meta.is_file().then_some(meta.len());
            let reader: Box<dyn Read + Send> = match total {
                Some(len) => Box::new(file::SparseFile::new(file, len)),
                None => Box::new(file),
            };
            Ok(Opened::whole(reader, total))
        }
        SourceSpec::Stdin => Ok(Opened::whole(Box::new(io::stdin()), None)),
        SourceSpec::Http(opts) => http::open(opts, from).await,
        SourceSpec::S3(opts) => s3::open(opts, from).await,
        SourceSpec::Registry(opts) => registry::open(opts, &Default::default()).await,
        SourceSpec::Stream(s) => Ok(Opened::whole(s.take()?, s.total)),
    }
}

/// Ranged reads of an HTTP(S) or S3 source that must still be the object `from`
/// describes; `None` for other sources.
pub(crate) fn ranges(spec: &SourceSpec, from: &ResumeFrom) -> Result<Option<http::Ranges>> {
    match spec {
        SourceSpec::Http(opts) => http::Ranges::new(opts, from).map(Some),
        SourceSpec::S3(opts) => s3::ranges(opts, from).map(Some),
        _ => Ok(None),
    }
}

/// State shared between the source reader, the target and the orchestrator.
pub(crate) struct Shared {
    pub(crate) hasher: Option<Hasher>,
    /// The source offset from which bytes go to the hasher (a resumed hash covers those
    /// before it already).
    pub(crate) hash_from: u64,
    pub(crate) reporter: Reporter,
}

/// A handle on the progress/hash state, cheap to clone.
#[derive(Clone)]
pub(crate) struct Stats(Arc<Mutex<Shared>>);

impl Stats {
    pub(crate) fn new(shared: Shared) -> Self {
        Stats(Arc::new(Mutex::new(shared)))
    }

    /// Counters with no checksum and no one listening to progress (unit tests, fuzzing).
    pub(crate) fn quiet() -> Self {
        Self::new(Shared {
            hasher: None,
            hash_from: 0,
            reporter: crate::progress::Reporter::new(None, REPORT_INTERVAL),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the highest output offset written.
    pub(crate) fn written(&self, end: u64) {
        let mut s = self.lock();
        if end > s.reporter.state.written {
            s.reporter.state.written = end;
        }
    }
}

/// The source's bytes, counted and hashed. Clones share the same underlying reader, so
/// the orchestrator can drain what the decoders left unread.
#[derive(Clone)]
pub(crate) struct Counted {
    inner: Arc<Mutex<Box<dyn Read + Send>>>,
    stats: Stats,
    stop: Arc<AtomicBool>,
}

impl Counted {
    /// Once `stop` is set, reads fail with [`crate::Error::Stopped`], so the conversion ends
    /// (and cleans up its target) even from a local file that would never fail.
    pub(crate) fn new(reader: Box<dyn Read + Send>, stats: Stats, stop: Arc<AtomicBool>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(reader)),
            stats,
            stop,
        }
    }

    /// Reads the source to its end (trailing bytes still count for the checksum).
    pub(crate) fn drain(&mut self) -> io::Result<u64> {
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(n),
                Ok(k) => n += k as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other(crate::Error::Stopped));
        }
        let n = self.inner.lock().unwrap_or_else(|e| e.into_inner()).read(buf)?;
        let mut guard = self.stats.lock();
        let s = &mut *guard;
        if let Some(h) = &mut s.hasher {
            let skip = s
                .hash_from
                .saturating_sub(s.reporter.state.source_done)
                .min(n as u64);
            h.update(&buf[skip as usize..n]);
        }
        s.reporter.state.source_done += n as u64;
        s.reporter.tick();
        Ok(n)
    }
}

pub(crate) use ido_io::read_full;

/// Default interval between progress reports.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert!(matches!(SourceSpec::parse("-").unwrap(), SourceSpec::Stdin));
        assert!(matches!(
            SourceSpec::parse("https://example.org/a.qcow2").unwrap(),
            SourceSpec::Http(_)
        ));
        match SourceSpec::parse("file:///tmp/x.img").unwrap() {
            SourceSpec::File(p) => assert_eq!(p, PathBuf::from("/tmp/x.img")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(SourceSpec::parse("x.img").unwrap(), SourceSpec::File(_)));
        assert!(matches!(
            SourceSpec::parse("s3://bucket/key").unwrap(),
            SourceSpec::S3(_)
        ));
        assert!(matches!(
            SourceSpec::parse("docker://quay.io/containerdisks/fedora:40").unwrap(),
            SourceSpec::Registry(_)
        ));
        assert!(SourceSpec::parse("ftp://x/y").is_err());
    }
}
