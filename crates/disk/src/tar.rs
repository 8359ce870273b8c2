//! A tar holding one disk: the first regular file is streamed out; every member name is
//! checked (no absolute paths, no `..`), and a second non-empty regular file is an error.
//!
//! An **OVA** (a tar whose first file is an `.ovf` descriptor) is recognised: the OVF is
//! read (up to 4 MiB) and the disk it names — the file of its first `<Disk>`, else its
//! first `<File>` — is streamed; the manifest (`.mf`), certificate (`.cert`) and other
//! members are skipped, before and after it. A named file missing from the archive, a
//! reference outside it (a URL, an absolute path, `..`) or a disk split into chunks is an
//! error. Only that one disk is imported (others are reported in the log). Without a
//! usable reference, the first member that is not `.ovf`, `.mf` or `.cert` is the disk.
//!
//! ustar, pre-POSIX, GNU (long names and link names, base-256 sizes for members over
//! 8 GiB) and pax (`path`, `linkpath`, `size`, `mtime`) headers are understood. Nothing is
//! extracted to the file system here: [`TarEntries`] walks every member (type, mode, link
//! target, data) for [`crate::archive`], which unpacks them.
//!
//! **Sparse members** are expanded as they stream: GNU and old GNU (`S` members, their map
//! in the header and the extended sparse headers after it: what `tar -S` writes, as in a
//! GCE image's `disk.raw`) and PAX 0.0 (`GNU.sparse.offset`/`numbytes` records), 0.1
//! (`GNU.sparse.map`) and 1.0 (the map at the start of the member's data). Holes read as
//! zeros (they become holes in the target) and the member reads as its real size. The map
//! is kept (16 bytes an entry, at most [`MAX_SPARSE_ENTRIES`]), never the data; entries
//! out of order, overlapping or past the real size, or data that does not add up to what
//! the member stores, are refused naming the member and the entry.

use std::io::{self, Read};

use crate::source::read_full;
use crate::{Error, Result};

mod entries;
mod header;
mod ovf;
mod pax;
mod shared;
mod sparse;

pub use entries::{Entry, EntryKind, TarEntries};
pub(crate) use header::checksum_holds;
use header::{is_regular, next_member, padded, read_meta_limited, skip};
use ovf::{is_ova_metadata, ovf_choose};
pub(crate) use shared::SharedTar;
use sparse::{Expand, Sparse};

const BLOCK: usize = 512;
/// Longest GNU long name or pax header accepted.
const MAX_META: u64 = 1 << 20;
/// Longest OVF descriptor accepted.
const MAX_OVF: u64 = 4 << 20;
/// Largest member size accepted (64 PiB, as the largest virtual size of any format).
const MAX_MEMBER: u64 = 1 << 56;
/// Most entries of one sparse member's map (16 bytes each in memory: 32 MiB).
pub const MAX_SPARSE_ENTRIES: usize = 1 << 21;

/// The disk member of a tar, readable as a stream.
pub struct TarDisk<R> {
    inner: R,
    name: String,
    size: u64,
    remaining: u64,
    /// Set for an OVA: other members are allowed after the disk.
    ova: bool,
    /// A sparse member's map and read position (`size` and `remaining` count the bytes
    /// stored in the archive).
    sparse: Option<Expand>,
}

/// One parsed header (after long-name and pax records were applied).
struct Member {
    name: String,
    kind: u8,
    /// Bytes stored in the archive (a sparse member's data, condensed).
    size: u64,
    sparse: Option<Sparse>,
    /// Permission bits of the header (`mode`).
    mode: u32,
    /// Modification time in seconds since the epoch (pax `mtime`, else the header's).
    mtime: Option<i64>,
    /// A link's target (GNU long link name, pax `linkpath`, else the header's).
    link: String,
}

impl<R: Read> TarDisk<R> {
    /// Reads headers up to the first regular file (for an OVA: up to its disk; an OVA
    /// with several disks is refused, naming them: see [`TarDisk::open_with`]).
    pub fn open(inner: R) -> Result<Self> {
        Self::open_with(inner, None)
    }

    /// As [`TarDisk::open`]; `disk` chooses the disk of an OVA that holds several: its
    /// file name, its `ovf:id`, its `ovf:diskId`, or its position in the OVF from 1.
    pub fn open_with(mut inner: R, disk: Option<&str>) -> Result<Self> {
        let mut ova: Option<Option<String>> = None;
        let mut first = true;
        loop {
            let Some(m) = next_member(&mut inner)? else {
                return Err(match (ova, disk) {
                    (Some(None), Some(d)) => Error::InvalidArgument {
                        field: "disk",
                        value: d.to_string(),
                        reason: "the OVF names no disk file and the OVA holds no member of that name".into(),
                    },
                    (Some(Some(href)), _) => {
                        Error::invalid("ova", format!("the disk {href:?} named in the OVF is missing"))
                    }
                    (Some(None), None) => Error::invalid("ova", "the archive holds no disk"),
                    (None, _) => Error::invalid("tar", "the archive holds no file"),
                });
            };
            if is_regular(m.kind) {
                let lower = m.name.to_ascii_lowercase();
                if first && lower.ends_with(".ovf") {
                    first = false;
                    let ovf = read_meta_limited(&mut inner, m.size, MAX_OVF, "OVF descriptor")?;
                    ova = Some(ovf_choose(&String::from_utf8_lossy(&ovf), disk)?);
                    continue;
                }
                first = false;
                let wanted = match &ova {
                    None => true,
                    Some(Some(href)) => m.name == *href || m.name.rsplit('/').next() == Some(href.as_str()),
                    Some(None) => match disk {
                        Some(d) => m.name == d || m.name.rsplit('/').next() == Some(d),
                        None => !is_ova_metadata(&lower),
                    },
                };
                if wanted {
                    return Self::with_member(inner, m, ova.is_some());
                }
                skip(&mut inner, padded(m.size))?;
                continue;
            }
            skip(&mut inner, padded(m.size))?;
        }
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's size (a sparse member's real size).
    pub fn size(&self) -> u64 {
        self.sparse.as_ref().map_or(self.size, |e| e.real_size)
    }

    /// Whether the archive is an OVA (its disk was found through the OVF).
    pub fn is_ova(&self) -> bool {
        self.ova
    }

    /// Skips the rest of the disk and checks the rest of the archive.
    pub fn finish(mut self) -> Result<()> {
        let rest = self.remaining + (padded(self.size) - self.size);
        skip(&mut self.inner, rest)?;
        while let Some(m) = next_member(&mut self.inner)? {
            if self.ova {
                if is_regular(m.kind) && !is_ova_metadata(&m.name.to_ascii_lowercase()) {
                    tracing::info!(disk = %self.name, other = %m.name, "the OVA holds another file; it is not imported");
                }
            } else if is_regular(m.kind) && m.size > 0 {
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "it holds more than one file ({:?} and {:?}); expected exactly one disk",
                        self.name, m.name
                    ),
                ));
            }
            skip(&mut self.inner, padded(m.size))?;
        }
        Ok(())
    }
}

impl<R: Read> Read for TarDisk<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.sparse.is_some() {
            return self.read_sparse(buf);
        }
        self.read_stored(buf)
    }
}

impl<R: Read> TarDisk<R> {
    /// Positioned on member `m` (its header read): a sparse member's map is checked, and
    /// read first when it opens the data (PAX 1.0).
    fn with_member(inner: R, m: Member, ova: bool) -> Result<Self> {
        let mut t = Self {
            inner,
            name: String::new(),
            size: 0,
            remaining: 0,
            ova,
            sparse: None,
        };
        t.enter(m)?;
        Ok(t)
    }

    /// Makes `m` (its header just read) the current member; returns its (real) size.
    fn enter(&mut self, m: Member) -> Result<u64> {
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

    /// Whether the current member has been read to its end (a sparse member: its holes
    /// too).
    pub(crate) fn at_end(&self) -> bool {
        match &self.sparse {
            Some(e) => e.pos >= e.real_size,
            None => self.remaining == 0,
        }
    }

    /// PAX 1.0: the map that opens the member's data, decimal numbers a line each (the
    /// count, then offset and length of each entry), padded to a block.
    fn read_data_map(&mut self) -> Result<Vec<(u64, u64)>> {
        let name = self.name.clone();
        let bad = |why: String| Error::invalid("tar", format!("the sparse map of tar member {name:?} {why}"));
        let mut entries: Vec<(u64, u64)> = Vec::new();
        let mut count: Option<u64> = None;
        let mut offset: Option<u64> = None;
        let mut cur: Option<u64> = None;
        let mut block = [0u8; BLOCK];
        loop {
            let n = read_full(self, &mut block).map_err(|e| Error::io("reading tar", e))?;
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
                    return Err(Error::invalid(
                        "tar",
                        format!("truncated: the data of sparse member {:?} ends early", self.name),
                    )
                    .into_io());
                }
                self.sparse.as_mut().expect("a sparse member").pos += n as u64;
                return Ok(n);
            }
            e.next += 1;
        }
    }

    /// The member's stored bytes.
    fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(Error::invalid(
                "tar",
                format!("truncated: {:?} ends {} bytes early", self.name, self.remaining),
            )
            .into_io());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl<R: Read> TarDisk<R> {
    /// Moves to the next regular member named `dir` + one of `wanted` (the extents of the
    /// VMDK descriptor file `descriptor`, the current member, in any order): skips the
    /// rest of the current member and returns the index of the name found and the
    /// member's size. In a plain tar any other non-empty file is an error; an OVA's other
    /// members are skipped.
    fn next_named(&mut self, dir: &str, wanted: &[&str], descriptor: &str) -> Result<(usize, u64)> {
        let rest = self.remaining + (padded(self.size) - self.size);
        skip(&mut self.inner, rest)?;
        (self.remaining, self.size) = (0, 0);
        let format = if self.ova { "ova" } else { "tar" };
        loop {
            let Some(m) = next_member(&mut self.inner)? else {
                let names: Vec<String> = wanted.iter().map(|w| format!("{w:?}")).collect();
                return Err(Error::invalid(
                    format,
                    format!(
                        "the extent(s) {} of the VMDK descriptor {descriptor:?} are not in the archive after it",
                        names.join(", ")
                    ),
                ));
            };
            let name = strip_dot(&m.name);
            let index = name
                .strip_prefix(dir)
                .and_then(|rel| wanted.iter().position(|w| strip_dot(w) == rel));
            if let Some(i) = index {
                if !is_regular(m.kind) {
                    return Err(Error::refused(
                        format,
                        format!(
                            "the extent {:?} of the VMDK descriptor {descriptor:?} is not a regular file in the \
                             archive (member type {:?})",
                            wanted[i],
                            char::from(m.kind)
                        ),
                    ));
                }
                // A sparse extent reads expanded, as its real size.
                let len = self.enter(m)?;
                return Ok((i, len));
            }
            if is_regular(m.kind) && m.size > 0 && !self.ova {
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "it holds {:?}, which the VMDK descriptor {descriptor:?} does not name; expected the \
                         descriptor and its extents only",
                        m.name
                    ),
                ));
            }
            skip(&mut self.inner, padded(m.size))?;
        }
    }
}

/// A member name without leading `./`.
fn strip_dot(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n
}

#[cfg(test)]
mod tests;
