//! The one tar reader: a synchronous stream (`std::io::Read`) walked member by member,
//! nothing extracted and nothing held but the current header.
//!
//! ustar, pre-POSIX, GNU (long names and link names, base-256 sizes for members over
//! 8 GiB) and pax (`path`, `linkpath`, `size`, `mtime`) headers are understood. Every
//! header's checksum is checked; a long name or pax header over 1 MiB, a member size over
//! 64 PiB, a malformed pax record or an archive cut short is an error ([`TarError`]).
//!
//! [`TarReader`] is the walker: [`TarReader::next_member`] gives the next header (its name
//! and a link's target checked: no absolute paths, no `..`), [`TarReader::read_header`] the
//! same unchecked with the end-of-archive marker told from the end of the input;
//! [`TarReader::enter`] opens the member's data, which reads through [`Read`]. What is not
//! read of a member is skipped when the next header is asked for. [`TarEntries`] walks
//! every member (type, mode, link target, data) for an unpacker.
//!
//! **Sparse members** are expanded as they stream: GNU and old GNU (`S` members, their map
//! in the header and the extended sparse headers after it: what `tar -S` writes, as in a
//! GCE image's `disk.raw`) and PAX 0.0 (`GNU.sparse.offset`/`numbytes` records), 0.1
//! (`GNU.sparse.map`) and 1.0 (the map at the start of the member's data). Holes read as
//! zeros and the member reads as its real size; [`TarEntries`] also gives the map and the
//! stored regions, to write a file sparse. The map is kept (16 bytes an entry, at most
//! [`MAX_SPARSE_ENTRIES`]), never the data; entries out of order, overlapping or past the
//! real size, or data that does not add up to what the member stores, are refused naming
//! the member and the entry.
//!
//! Users: ido-disk (the disk member of a tar or OVA, its VMDK extents, archive unpacking)
//! and [`crate::ova::OvaReader`] (an OVA's members from a byte stream, for the providers).

use std::io::{self, Read};

use crate::read_full;

mod entries;
mod header;
mod pax;
mod sparse;

pub use entries::{Entry, EntryKind, TarEntries};
pub use header::checksum_holds;
use header::{padded, read_meta_limited, skip};
use sparse::{Expand, Sparse};

const BLOCK: usize = 512;
/// Longest GNU long name or pax header accepted.
const MAX_META: u64 = 1 << 20;
/// Largest member size accepted (64 PiB, as the largest virtual size of any disk format).
const MAX_MEMBER: u64 = 1 << 56;
/// Most entries of one sparse member's map (16 bytes each in memory: 32 MiB).
pub const MAX_SPARSE_ENTRIES: usize = 1 << 21;

/// Errors of the tar reader. The texts name the member (and the sparse map entry) where
/// there is one.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The archive is malformed or truncated.
    #[error("invalid tar archive: {0}")]
    Invalid(String),
    /// A member name or link target leaves the archive (absolute path or `..`).
    #[error("refusing tar archive: {0}")]
    Refused(String),
    /// Understood but not supported (a PAX sparse format other than GNU tar's).
    #[error("unsupported tar archive: {0}")]
    Unsupported(String),
    /// Reading the input failed (the input's own error, unchanged).
    #[error("reading tar: {0}")]
    Io(#[source] io::Error),
}

impl TarError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        TarError::Invalid(reason.into())
    }

    /// An error of the input; a [`TarError`] that crossed a [`Read`] boundary is unwrapped.
    pub fn from_io(e: io::Error) -> Self {
        match e.downcast::<TarError>() {
            Ok(t) => t,
            Err(e) => TarError::Io(e),
        }
    }

    /// Wraps this error into an `io::Error` (to cross a [`Read`] boundary intact:
    /// [`TarError::from_io`] takes it out again).
    pub fn into_io(self) -> io::Error {
        match self {
            TarError::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}

type Result<T, E = TarError> = std::result::Result<T, E>;

/// One parsed header (after long-name and pax records were applied).
#[derive(Debug)]
pub struct Member {
    /// The name as stored (GNU long name or pax `path` applied).
    pub name: String,
    /// The type byte (`0`, NUL, `5`, `S`, …).
    pub kind: u8,
    /// Bytes stored in the archive (a sparse member's data, condensed; 0 for links and
    /// directories).
    pub size: u64,
    /// Permission bits of the header (`mode`, at most `0o7777`).
    pub mode: u32,
    /// Modification time in seconds since the epoch (pax `mtime`, else the header's).
    pub mtime: Option<i64>,
    /// A link's target (GNU long link name, pax `linkpath`, else the header's).
    pub link: String,
    sparse: Option<Sparse>,
}

impl Member {
    /// Whether the type is a regular file's (`0`, NUL, `7` contiguous, GNU sparse `S`).
    pub fn is_regular(&self) -> bool {
        header::is_regular(self.kind)
    }

    /// What the member is.
    pub fn entry_kind(&self) -> EntryKind {
        EntryKind::of(self.kind, &self.name)
    }
}

/// What follows in an archive.
#[derive(Debug)]
pub enum Next {
    /// A member's header.
    Member(Member),
    /// The end-of-archive marker (a zero block).
    End,
    /// The end of the input, at a header's place.
    Eof,
}

/// A tar being read front to back: headers, then the data of the member entered.
pub struct TarReader<R> {
    inner: R,
    /// The current member's name.
    name: String,
    /// Bytes the current member stores in the archive.
    size: u64,
    /// Of those, the bytes not read yet.
    remaining: u64,
    /// A sparse member's map and read position (`size` and `remaining` count the bytes
    /// stored in the archive).
    sparse: Option<Expand>,
}

impl<R: Read> TarReader<R> {
    /// Reads `inner` from its first header.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            name: String::new(),
            size: 0,
            remaining: 0,
            sparse: None,
        }
    }

    /// The next header, after skipping what is left of the current member; names as stored
    /// (unchecked). Its data is read after [`TarReader::enter`], or skipped by the next
    /// call.
    pub fn read_header(&mut self) -> Result<Next> {
        let rest = self.remaining + (padded(self.size) - self.size);
        skip(&mut self.inner, rest)?;
        (self.remaining, self.size, self.sparse) = (0, 0, None);
        let next = header::read_member(&mut self.inner)?;
        if let Next::Member(m) = &next {
            self.name.clone_from(&m.name);
            (self.size, self.remaining) = (m.size, m.size);
        }
        Ok(next)
    }

    /// The next member (`None` at the end-of-archive marker or at the end of the input),
    /// its name checked (and a link's target: no absolute paths, no `..`).
    pub fn next_member(&mut self) -> Result<Option<Member>> {
        let Next::Member(m) = self.read_header()? else {
            return Ok(None);
        };
        header::check_name(&m.name)?;
        if matches!(m.kind, b'1' | b'2') {
            header::check_name(&m.link)?;
        }
        Ok(Some(m))
    }

    /// Opens the data of `m`, the member whose header was read last: a sparse member's map
    /// is checked (and read first when it opens the data: PAX 1.0). Returns the member's
    /// size as it reads (a sparse member's real size).
    pub fn enter(&mut self, m: Member) -> Result<u64> {
        self.name = m.name;
        self.size = m.size;
        self.remaining = m.size;
        self.sparse = None;
        let (real_size, entries) = match m.sparse {
            None => return Ok(m.size),
            Some(Sparse::Map { real_size, entries }) => (real_size, entries),
            Some(Sparse::InData { real_size }) => (real_size, self.read_data_map()?),
        };
        self.sparse = Some(Expand::new(&self.name, real_size, self.remaining, entries)?);
        Ok(real_size)
    }

    /// The stored bytes of the member whose header was read last (not entered), whole:
    /// for a small member such as a descriptor. More than `max` bytes is an error that
    /// says `what` it was.
    pub fn read_whole(&mut self, max: u64, what: &str) -> Result<Vec<u8>> {
        let v = read_meta_limited(&mut self.inner, self.remaining, max, what)?;
        (self.size, self.remaining) = (0, 0);
        Ok(v)
    }

    /// The current member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current member's size (a sparse member's real size).
    pub fn size(&self) -> u64 {
        self.sparse.as_ref().map_or(self.size, |e| e.real_size)
    }

    /// Whether the current member has been read to its end (a sparse member: its holes
    /// too).
    pub fn at_end(&self) -> bool {
        match &self.sparse {
            Some(e) => e.pos >= e.real_size,
            None => self.remaining == 0,
        }
    }

    /// The current member's data regions (offset, length), in order, when it is sparse.
    pub fn sparse_map(&self) -> Option<&[(u64, u64)]> {
        self.sparse.as_ref().map(|e| e.entries.as_slice())
    }

    /// The current member's bytes as stored (a sparse member's regions one after the other).
    pub fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(TarError::invalid(format!(
                "truncated: {:?} ends {} bytes early",
                self.name, self.remaining
            ))
            .into_io());
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// The reader after the archive (what follows the last header read).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// PAX 1.0: the map that opens the member's data, decimal numbers a line each (the
    /// count, then offset and length of each entry), padded to a block.
    fn read_data_map(&mut self) -> Result<Vec<(u64, u64)>> {
        let name = self.name.clone();
        let bad = |why: String| TarError::invalid(format!("the sparse map of tar member {name:?} {why}"));
        let mut entries: Vec<(u64, u64)> = Vec::new();
        let mut count: Option<u64> = None;
        let mut offset: Option<u64> = None;
        let mut cur: Option<u64> = None;
        let mut block = [0u8; BLOCK];
        loop {
            let n = read_full(self, &mut block).map_err(TarError::from_io)?;
            if n < BLOCK {
                return Err(bad("runs past the end of the member (truncated?)".into()));
            }
            for c in block {
                match c {
                    b'0'..=b'9' => {
                        let v = cur
                            .unwrap_or(0)
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(c - b'0')));
                        cur = Some(v.ok_or_else(|| bad("holds a number out of range".into()))?);
                    }
                    b'\n' => {
                        let v = cur.take().ok_or_else(|| bad("holds an empty line".into()))?;
                        match (count, offset.take()) {
                            (None, _) if v > MAX_SPARSE_ENTRIES as u64 => {
                                return Err(bad(format!(
                                    "has {v} entries; at most {MAX_SPARSE_ENTRIES} are accepted"
                                )));
                            }
                            (None, _) => count = Some(v),
                            (Some(_), None) => offset = Some(v),
                            (Some(_), Some(off)) => entries.push((off, v)),
                        }
                    }
                    _ => {
                        return Err(bad(format!("holds the byte {c:#04x}, not a digit or a newline")));
                    }
                }
                if count == Some(entries.len() as u64) && offset.is_none() && cur.is_none() {
                    // The rest of the block is padding.
                    return Ok(entries);
                }
            }
        }
    }

    /// The next bytes of a sparse member: zeros in holes, stored data in the map's regions.
    fn read_sparse(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let e = self.sparse.as_mut().expect("a sparse member");
            if e.pos >= e.real_size || buf.is_empty() {
                return Ok(0);
            }
            let (off, len) = e.entries.get(e.next).copied().unwrap_or((e.real_size, 0));
            if e.pos < off {
                let n = (off - e.pos).min(buf.len() as u64) as usize;
                buf[..n].fill(0);
                e.pos += n as u64;
                return Ok(n);
            }
            if e.pos < off + len {
                let want = (off + len - e.pos).min(buf.len() as u64) as usize;
                let n = self.read_stored(&mut buf[..want])?;
                if n == 0 {
                    return Err(TarError::invalid(format!(
                        "truncated: the data of sparse member {:?} ends early",
                        self.name
                    ))
                    .into_io());
                }
                self.sparse.as_mut().expect("a sparse member").pos += n as u64;
                return Ok(n);
            }
            e.next += 1;
        }
    }
}

/// The current member's data (a sparse member expanded: holes read as zeros).
impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.sparse.is_some() {
            return self.read_sparse(buf);
        }
        self.read_stored(buf)
    }
}

#[cfg(test)]
pub(crate) mod tests;
