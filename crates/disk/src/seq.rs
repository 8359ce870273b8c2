//! A forward-only view of an image file that can still serve some ranges it has passed:
//! the reorder buffer shared by every format reader (qcow2, vmdk, vhd, vhdx, vdi).
//!
//! While an image's metadata is incomplete (a qcow2 L2 table, a VMDK grain table, a BAT
//! not read yet), every chunk the stream skips over might turn out to be data, so it is
//! retained: all-zero chunks as a length only, others as bytes, up to a budget. Once all
//! metadata is known, retention stops and the retained chunks are dropped. The last range
//! read is also kept, because compressed clusters may share bytes with their neighbour, and
//! a reader may keep the tail of a range it read ([`SeqFile::retain_tail`]) for a
//! neighbour it does not know yet.
//!
//! When the image can also be read by position ([`ReadAt`]: a local file, an HTTP object
//! with ranges), a range the stream has passed and that is not at hand is read from there
//! instead of failing: a local file retains nothing at all, a remote object retains up to
//! the budget and reads the rest again. Memory stays bounded by the budget either way.

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::source::read_full;
use crate::target::{Target, is_zero};
use crate::{Error, Result};

mod pipe;
pub(crate) use pipe::{Pipe, copy_extents, with_pipe};

/// A retained chunk.
enum Chunk {
    Data(Vec<u8>),
    Zero(u64),
}

impl Chunk {
    fn len(&self) -> u64 {
        match self {
            Chunk::Data(d) => d.len() as u64,
            Chunk::Zero(n) => *n,
        }
    }
}

/// Largest piece [`SeqFile::copy_to`] reads at once.
const COPY_PIECE: u64 = 1 << 20;

/// The image read by position, beside its stream (the same bytes).
pub(crate) trait ReadAt: Send {
    /// Reads `buf.len()` bytes at `off`; fewer only where the image ends.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Whether reading again costs next to nothing (a local file): then nothing is
    /// retained. Otherwise retention comes first and reading again is the fallback.
    fn cheap(&self) -> bool;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut n = 0;
        while n < buf.len() {
            match FileExt::read_at(self, &mut buf[n..], off + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn cheap(&self) -> bool {
        true
    }
}

/// An object read by ranges: `read(offset, length)` gives its bytes (fewer at its end).
pub(crate) struct Ranged<F>(pub(crate) F);

impl<F: Fn(u64, u64) -> Result<Vec<u8>> + Send> ReadAt for Ranged<F> {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let data = (self.0)(off, buf.len() as u64).map_err(Error::into_io)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    fn cheap(&self) -> bool {
        false
    }
}

/// The forward-only file.
pub(crate) struct SeqFile<'a> {
    inner: &'a mut dyn Read,
    /// The format being read (for messages).
    format: &'static str,
    pos: u64,
    eof: bool,
    chunk: u64,
    retaining: bool,
    retained: BTreeMap<u64, Chunk>,
    retained_bytes: u64,
    budget: u64,
    /// The last range read: (offset, bytes).
    last: (u64, Vec<u8>),
    scratch: Vec<u8>,
    skip_buf: Vec<u8>,
    /// The image by position, if it can be read so.
    at: Option<Box<dyn ReadAt + 'a>>,
    /// The budget ran out with `at` to fall back on: nothing more is retained.
    overflowed: bool,
}

impl<'a> SeqFile<'a> {
    /// Starts at offset 0, retaining (in `chunk`-sized pieces) up to `budget` bytes.
    /// `format` names the image format in errors.
    pub(crate) fn new(inner: &'a mut dyn Read, format: &'static str, chunk: u64, budget: u64) -> Self {
        Self {
            inner,
            format,
            pos: 0,
            eof: false,
            chunk: chunk.max(512),
            retaining: true,
            retained: BTreeMap::new(),
            retained_bytes: 0,
            budget,
            last: (0, Vec::new()),
            scratch: Vec::new(),
            skip_buf: Vec::new(),
            at: None,
            overflowed: false,
        }
    }

    /// Lets ranges the stream has passed be read again by position from `at` (which must
    /// hold the same bytes as the stream, from offset 0).
    pub(crate) fn set_positional(&mut self, at: Box<dyn ReadAt + 'a>) {
        self.at = Some(at);
    }

    /// Retains the last `n` bytes of the last range read (what is not retained already),
    /// while retaining: a qcow2 compressed cluster's last sector may hold the start of a
    /// cluster whose L2 table comes later in the file.
    pub(crate) fn retain_tail(&mut self, n: u64) -> Result<()> {
        let (lo, len) = (self.last.0, self.last.1.len() as u64);
        let (end, mut cur) = (lo + len, (lo + len).saturating_sub(n).max(lo));
        while cur < end && self.retaining {
            if let Some((s, c)) = self.retained.range(..=cur).next_back()
                && cur < s + c.len()
            {
                cur = s + c.len();
                continue;
            }
            let next = self
                .retained
                .range(cur + 1..)
                .next()
                .map_or(end, |(s, _)| (*s).min(end));
            let piece = self.last.1[(cur - lo) as usize..(next - lo) as usize].to_vec();
            self.retain(cur, piece)?;
            cur = next;
        }
        Ok(())
    }

    /// Declares that `inner` starts at image offset `pos` (a resumed import).
    pub(crate) fn start_at(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// Sets the retention chunk size (once the cluster size is known).
    pub(crate) fn set_chunk(&mut self, chunk: u64) {
        self.chunk = chunk.max(512);
    }

    /// Stops retaining and frees what was retained.
    pub(crate) fn stop_retaining(&mut self) {
        if self.retaining {
            tracing::debug!(
                retained = self.retained_bytes,
                pos = self.pos,
                format = self.format,
                "metadata complete; reorder buffer released"
            );
        }
        self.retaining = false;
        self.retained.clear();
        self.retained_bytes = 0;
    }

    /// Bytes consumed from the stream.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Whether skipped chunks are still retained.
    pub(crate) fn retaining(&self) -> bool {
        self.retaining
    }

    /// Copies `[off, off + len)` of the image to `guest` on the target, in pieces of at
    /// most 1 MiB (a large block never becomes one large allocation).
    pub(crate) fn copy_to(&mut self, off: u64, len: u64, target: &mut Target, guest: u64) -> Result<()> {
        self.end_of(off, len)?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_PIECE);
            let data = self.read_at(off + done, n as usize, false)?;
            target.write_at(guest + done, data)?;
            done += n;
        }
        Ok(())
    }

    /// Reads `[off, off + len)` into `buf` (replacing what it held): as [`SeqFile::read_at`],
    /// but a range ahead of the stream goes straight into `buf`, with no copy.
    pub(crate) fn read_into(&mut self, off: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        let end = self.end_of(off, len as u64)?;
        if off < self.pos || end <= off {
            let data = self.read_at(off, len, false)?;
            buf.clear();
            buf.extend_from_slice(data);
            return Ok(());
        }
        self.skip_to(off)?;
        if self.pos < off {
            return Err(self.truncated(off));
        }
        buf.resize(len, 0);
        let n = read_full(self.inner, buf).map_err(|e| Error::io("reading the image", e))?;
        self.pos += n as u64;
        if n < len {
            self.eof = true;
            return Err(self.truncated(off + n as u64));
        }
        Ok(())
    }

    /// Reads `[off, off + len)`. With `allow_short`, a range running past the end of the
    /// file is cut there (qcow2 compressed-cluster sizes are rounded up).
    pub(crate) fn read_at(&mut self, off: u64, len: usize, allow_short: bool) -> Result<&[u8]> {
        let end = self.end_of(off, len as u64)?;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.reserve(len);
        if off < self.pos {
            let past = self.copy_past(off, end.min(self.pos), &mut out);
            if let Err(e) = past {
                self.scratch = out;
                return Err(e);
            }
        }
        if end > self.pos {
            let start = off.max(self.pos);
            self.skip_to(start)?;
            if self.pos < start {
                // The file ended before the range starts.
                self.scratch = out;
                return Err(self.truncated(start));
            }
            let have = out.len();
            let want = (end - start) as usize;
            out.resize(have + want, 0);
            let n = read_full(self.inner, &mut out[have..]).map_err(|e| Error::io("reading the image", e))?;
            self.pos += n as u64;
            if n < want {
                self.eof = true;
                out.truncate(have + n);
                if !allow_short {
                    self.scratch = out;
                    return Err(self.truncated(off + (have + n) as u64));
                }
            }
        }
        self.scratch = std::mem::replace(&mut self.last.1, out);
        self.last.0 = off;
        Ok(&self.last.1)
    }

    /// The end of `[off, off + len)`; an offset from a corrupt table may make it overflow.
    fn end_of(&self, off: u64, len: u64) -> Result<u64> {
        off.checked_add(len).ok_or_else(|| {
            Error::invalid(
                self.format,
                format!("offset {off:#x} (+{len:#x} bytes) is out of range"),
            )
        })
    }

    fn truncated(&self, at: u64) -> Error {
        Error::invalid(
            self.format,
            format!(
                "truncated: data needed at offset {at:#x}, the file ends at {:#x}",
                self.pos
            ),
        )
    }

    /// Copies `[a, b)` (all before `pos`) from the last range or the retained chunks.
    fn copy_past(&self, a: u64, b: u64, out: &mut Vec<u8>) -> Result<()> {
        let mut cur = a;
        while cur < b {
            let (lo, bytes) = (&self.last.0, &self.last.1);
            if *lo <= cur && cur < lo + bytes.len() as u64 {
                let n = (b.min(lo + bytes.len() as u64) - cur) as usize;
                let s = (cur - lo) as usize;
                out.extend_from_slice(&bytes[s..s + n]);
                cur += n as u64;
                continue;
            }
            match self.retained.range(..=cur).next_back() {
                Some((start, c)) if cur < start + c.len() => {
                    let n = (b.min(start + c.len()) - cur) as usize;
                    match c {
                        Chunk::Data(d) => {
                            let s = (cur - start) as usize;
                            out.extend_from_slice(&d[s..s + n]);
                        }
                        Chunk::Zero(_) => out.resize(out.len() + n, 0),
                    }
                    cur += n as u64;
                }
                _ => {
                    let Some(at) = &self.at else {
                        return Err(Error::invalid(
                            self.format,
                            format!(
                                "offset {cur:#x} is needed after the stream passed it (it was read as \
                                 metadata, or the layout puts data before its tables beyond the reorder \
                                 buffer)"
                            ),
                        ));
                    };
                    // Up to what is at hand again (a retained chunk, the last range).
                    let mut next = self
                        .retained
                        .range(cur + 1..)
                        .next()
                        .map_or(b, |(s, _)| (*s).min(b));
                    if *lo > cur {
                        next = next.min(*lo);
                    }
                    let have = out.len();
                    out.resize(have + (next - cur) as usize, 0);
                    let n = at
                        .read_at(cur, &mut out[have..])
                        .map_err(|e| Error::io("reading the image again by position", e))?;
                    if n < (next - cur) as usize {
                        return Err(Error::invalid(
                            self.format,
                            format!(
                                "reading {:#x} bytes at {cur:#x} again by position: the image ends at {:#x}",
                                next - cur,
                                cur + n as u64
                            ),
                        ));
                    }
                    cur = next;
                }
            }
        }
        Ok(())
    }

    /// Advances to `target` (or the end of the file), retaining what is skipped if asked.
    fn skip_to(&mut self, target: u64) -> Result<()> {
        while self.pos < target && !self.eof {
            let n = (target - self.pos).min(self.chunk - self.pos % self.chunk) as usize;
            self.skip_buf.resize(n, 0);
            let got = read_full(self.inner, &mut self.skip_buf[..n])
                .map_err(|e| Error::io("reading the image", e))?;
            if got < n {
                self.eof = true;
            }
            if got > 0 && self.retaining {
                if is_zero(&self.skip_buf[..got]) {
                    self.retain_zeros(self.pos, got as u64);
                } else {
                    let piece = self.skip_buf[..got].to_vec();
                    self.retain(self.pos, piece)?;
                }
            }
            self.pos += got as u64;
        }
        Ok(())
    }

    /// Retains `n` zeros at `at` as a length, merged with zeros just before.
    fn retain_zeros(&mut self, at: u64, n: u64) {
        if self.at.as_ref().is_some_and(|a| a.cheap()) {
            return;
        }
        if let Some((s, Chunk::Zero(len))) = self.retained.range_mut(..at).next_back()
            && s + *len == at
        {
            *len += n;
            return;
        }
        self.retained.insert(at, Chunk::Zero(n));
    }

    /// Retains `piece` (bytes at `at`, not retained yet) within the budget. Past the
    /// budget, a file that can be read again by position retains nothing more; any other
    /// is refused.
    fn retain(&mut self, at: u64, piece: Vec<u8>) -> Result<()> {
        if self.at.as_ref().is_some_and(|a| a.cheap()) || self.overflowed {
            return Ok(());
        }
        if is_zero(&piece) {
            self.retain_zeros(at, piece.len() as u64);
            return Ok(());
        }
        if self.retained_bytes + piece.len() as u64 > self.budget {
            if self.at.is_some() {
                tracing::debug!(
                    budget = self.budget,
                    pos = self.pos,
                    format = self.format,
                    "reorder buffer full; reading passed ranges again by position"
                );
                self.overflowed = true;
                return Ok(());
            }
            return Err(Error::Unsupported {
                format: self.format,
                reason: format!(
                    "its data comes before its metadata by more than the reorder buffer \
                     ({}); raise the buffer with `ido import --reorder-buffer SIZE` \
                     (ImportOptions::reorder_budget; it is held in memory){}, or rewrite it with \
                     `qemu-img convert -O {}`",
                    human_size(self.budget),
                    if self.format == "qcow2" {
                        ", import it from a local file or an HTTP(S)/S3 server with ranges (read \
                         again by position: no buffer needed)"
                    } else {
                        ""
                    },
                    if self.format == "vhd" { "vpc" } else { self.format }
                ),
            });
        }
        self.retained_bytes += piece.len() as u64;
        self.retained.insert(at, Chunk::Data(piece));
        Ok(())
    }
}

/// `n` bytes in words: `64 MiB`, `1536 KiB`, `100 bytes`.
pub(crate) fn human_size(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Largest table (BAT, block map, grain directory) read into memory: 32 MiB, as qemu's
/// qcow2 L1 limit. Tables are also never read beyond what the virtual size needs.
pub(crate) const MAX_TABLE_BYTES: u64 = 32 << 20;

/// A run of image bytes holding guest data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    /// Offset in the image file.
    pub(crate) host: u64,
    /// Offset in the guest (the target).
    pub(crate) guest: u64,
    /// Length in bytes.
    pub(crate) len: u64,
}

/// Little- and big-endian fields of on-disk structures (`b` must be long enough).
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

/// See [`le16`].
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// See [`le16`].
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// See [`le16`].
pub(crate) fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

/// See [`le16`].
pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// See [`le16`].
pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests;
