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

/// Size of the pieces [`copy_extents`] passes from its reading to its writing thread:
/// small enough that a piece is still in the CPU cache when it is written (1 GiB of VHDX
/// data: 0.84 s with 256 KiB pieces, 1.11 s with 1 MiB ones, from a cold page cache).
const PIPE_PIECE: u64 = 256 << 10;
/// Bytes in flight between the reading and the writing thread: reading overlaps writing,
/// and memory stays bounded.
const PIPE_BYTES: u64 = 8 << 20;

/// What the reading thread hands the writing one.
enum Msg {
    /// Bytes for a guest offset.
    Write(u64, Vec<u8>),
    /// Every structure before this file offset is written ([`Target::safe_point`]).
    SafePoint(u64),
}

/// The reading side of [`with_pipe`]: image bytes read on this thread are written to the
/// target on another, so the source's reads and the target's writes (each a copy through
/// the page cache) overlap.
pub(crate) struct Pipe {
    full: std::sync::mpsc::SyncSender<Msg>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Pipe {
    /// A buffer to fill (one the writer is done with, when there is one).
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.empty.try_recv().unwrap_or_default()
    }

    /// Hands `piece` over for `guest`. `false` when the writer has failed: stop reading,
    /// its error is the one [`with_pipe`] returns.
    #[must_use]
    pub(crate) fn write(&self, guest: u64, piece: Vec<u8>) -> bool {
        self.full.send(Msg::Write(guest, piece)).is_ok()
    }

    /// Records a safe point once everything handed over before it is written.
    #[must_use]
    pub(crate) fn safe_point(&self, off: u64) -> bool {
        self.full.send(Msg::SafePoint(off)).is_ok()
    }
}

/// Runs `read` with a [`Pipe`] to a thread that writes to `target`, up to [`PIPE_BYTES`]
/// in flight in pieces of about `piece` bytes. A failed write ends the reading (the
/// writer's error is returned); otherwise `read`'s result is.
pub(crate) fn with_pipe<T>(
    target: &mut Target,
    piece: u64,
    read: impl FnOnce(&Pipe) -> Result<T>,
) -> Result<T> {
    let depth = (PIPE_BYTES / piece.max(1)).clamp(2, 64) as usize;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Msg>(depth);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = scope.spawn(move || -> Result<()> {
            for msg in full_rx {
                match msg {
                    Msg::Write(guest, piece) => {
                        target.write_at(guest, &piece)?;
                        // The reader may be gone (it failed): the buffer is then dropped.
                        let _ = empty_tx.send(piece);
                    }
                    Msg::SafePoint(off) => target.safe_point(off)?,
                }
            }
            Ok(())
        });
        let pipe = Pipe {
            full: full_tx,
            empty: empty_rx,
        };
        let read = read(&pipe);
        drop(pipe);
        let written = writer.join().unwrap_or_else(|_| {
            Err(Error::Io {
                context: "the writing thread".into(),
                source: io::Error::other("it panicked"),
            })
        });
        match written {
            Err(e) => Err(e),
            Ok(()) => read,
        }
    })
}

/// Copies `extents` to the target in file order (the stream only moves forward). Extents
/// behind the stream are served from the reorder buffer, which is released as soon as
/// nothing left lies behind. Overlapping extents (two table entries naming the same data)
/// are invalid, and found before anything is written. Reading and writing overlap
/// ([`with_pipe`]).
pub(crate) fn copy_extents(
    file: &mut SeqFile<'_>,
    mut extents: Vec<Extent>,
    target: &mut Target,
) -> Result<()> {
    extents.sort_unstable_by_key(|e| e.host);
    let mut end = 0u64;
    for e in &extents {
        if e.host < end {
            return Err(Error::invalid(
                file.format,
                format!(
                    "two blocks share the file range at {:#x} (guest offset {:#x})",
                    e.host, e.guest
                ),
            ));
        }
        end = e
            .host
            .checked_add(e.len)
            .ok_or_else(|| Error::invalid(file.format, format!("block offset {:#x} out of range", e.host)))?;
    }
    with_pipe(target, PIPE_PIECE, |pipe| {
        for e in extents {
            if file.retaining() && e.host >= file.pos() {
                file.stop_retaining();
            }
            let mut done = 0;
            while done < e.len {
                let n = (e.len - done).min(PIPE_PIECE);
                let mut piece = pipe.buffer();
                file.read_into(e.host + done, n as usize, &mut piece)?;
                if !pipe.write(e.guest + done, piece) {
                    return Ok(());
                }
                done += n;
            }
        }
        Ok(())
    })?;
    file.stop_retaining();
    Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn serves_passed_ranges_from_retention_and_last() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut r = &data[..];
        let mut f = SeqFile::new(&mut r, "qcow2", 512, 1 << 20);
        assert_eq!(f.read_at(2048, 100, false).unwrap(), &data[2048..2148]);
        // Before pos: retained chunks.
        assert_eq!(f.read_at(100, 600, false).unwrap(), &data[100..700]);
        // Partly from the last range, partly retained.
        assert_eq!(f.read_at(650, 1398, false).unwrap(), &data[650..2048]);
        // A range read as an item is not retained.
        assert!(f.read_at(2040, 20, false).is_err());
        // Overlapping the last range and running past pos.
        assert_eq!(f.read_at(2148, 100, false).unwrap(), &data[2148..2248]);
        assert_eq!(f.read_at(2200, 300, false).unwrap(), &data[2200..2500]);
        f.stop_retaining();
        assert!(f.read_at(0, 10, false).is_err());
        // Past the end: short only when allowed.
        assert_eq!(f.read_at(4000, 200, true).unwrap().len(), 96);
        assert!(f.read_at(4050, 100, false).is_err());
        assert_eq!(f.pos(), 4096);
    }

    #[test]
    fn ranges_past_the_end_of_the_offset_space_are_invalid() {
        // Mutation test: a table offset near u64::MAX used to overflow `off + len`.
        let data = [1u8; 1024];
        let mut r = &data[..];
        let mut f = SeqFile::new(&mut r, "vhd", 512, 1 << 20);
        let e = f.read_at(u64::MAX - 10, 512, false).unwrap_err();
        assert_eq!(e.label(), "invalid_image", "{e}");
        assert!(e.to_string().contains("out of range"), "{e}");
        // The file is still usable.
        assert_eq!(f.read_at(0, 4, false).unwrap(), &[1; 4]);
    }

    #[test]
    fn the_tail_of_a_range_read_can_be_retained() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut r = &data[..];
        let mut f = SeqFile::new(&mut r, "qcow2", 512, 1 << 20);
        assert_eq!(f.read_at(1000, 1048, false).unwrap(), &data[1000..2048]);
        f.retain_tail(512).unwrap();
        // Another range replaces the last one; the tail of the first is still at hand,
        // the rest of it is not.
        assert_eq!(f.read_at(4096, 10, false).unwrap(), &data[4096..4106]);
        assert_eq!(f.read_at(1600, 2600, false).unwrap(), &data[1600..4200]);
        assert!(f.read_at(1500, 10, false).is_err());
        // What is retained already is not retained twice.
        f.retain_tail(4096).unwrap();
        assert_eq!(f.read_at(0, 2, false).unwrap(), &data[..2]);
        assert_eq!(f.read_at(1536, 100, false).unwrap(), &data[1536..1636]);
    }

    /// The image by position, counting the bytes read again.
    struct Again(Vec<u8>, bool, std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl ReadAt for Again {
        fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
            let s = (off as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - s);
            buf[..n].copy_from_slice(&self.0[s..s + n]);
            self.2.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }

        fn cheap(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn passed_ranges_are_read_again_by_position() {
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8 + 1).collect();
        for cheap in [true, false] {
            let count = std::sync::Arc::default();
            let mut r = &data[..];
            let mut f = SeqFile::new(&mut r, "qcow2", 4096, 8192);
            f.set_positional(Box::new(Again(
                data.clone(),
                cheap,
                std::sync::Arc::clone(&count),
            )));
            assert_eq!(
                f.read_at(60 * 1024, 10, false).unwrap(),
                &data[60 * 1024..60 * 1024 + 10]
            );
            // A cheap source retains nothing; another retains within its budget (two
            // chunks) and reads the rest again.
            assert_eq!(f.retained_bytes, if cheap { 0 } else { 8192 });
            assert_eq!(
                f.read_at(100, 30 * 1024, false).unwrap(),
                &data[100..100 + 30 * 1024]
            );
            let again = count.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(
                again,
                if cheap {
                    30 * 1024
                } else {
                    30 * 1024 - (8192 - 100)
                }
            );
            // Past the end of the image: an error, not a panic.
            assert!(f.read_at(64 * 1024 - 5, 10, false).is_err());
        }
    }

    #[test]
    fn budget_is_enforced_and_zeros_are_free() {
        let mut data = vec![0u8; 1 << 20];
        data.extend(std::iter::repeat_n(7u8, 8192));
        let mut r = &data[..];
        let mut f = SeqFile::new(&mut r, "qcow2", 4096, 4096);
        assert_eq!(f.read_at((1 << 20) - 1, 1, false).unwrap(), &[0]);
        assert_eq!(f.read_at(5, 3, false).unwrap(), &[0, 0, 0]);
        let e = f.read_at((1 << 20) + 8191, 1, false).unwrap_err();
        assert_eq!(e.label(), "unsupported");
    }
}
