//! A forward-only view of an image file that can still serve some ranges it has passed:
//! the reorder buffer shared by every format reader (qcow2, vmdk, vhd, vhdx, vdi).
//!
//! While an image's metadata is incomplete (a qcow2 L2 table, a VMDK grain table, a BAT
//! not read yet), every chunk the stream skips over might turn out to be data, so it is
//! retained: all-zero chunks as a length only, others as bytes, up to a budget. Once all
//! metadata is known, retention stops and the retained chunks are dropped. The last range
//! read is also kept, because compressed clusters may share bytes with their neighbour.

use std::collections::BTreeMap;
use std::io::Read;

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
        }
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
                    return Err(Error::invalid(
                        self.format,
                        format!(
                            "offset {cur:#x} is needed after the stream passed it (it was read as metadata, \
                             or the layout puts data before its tables beyond the reorder buffer)"
                        ),
                    ));
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
                let piece = &self.skip_buf[..got];
                let chunk = if is_zero(piece) {
                    Chunk::Zero(got as u64)
                } else {
                    self.retained_bytes += got as u64;
                    if self.retained_bytes > self.budget {
                        return Err(Error::Unsupported {
                            format: self.format,
                            reason: format!(
                                "its data comes before its metadata by more than the reorder buffer \
                                 ({} MiB); rewrite it with `qemu-img convert -O {}` or raise the buffer",
                                self.budget >> 20,
                                if self.format == "vhd" { "vpc" } else { self.format }
                            ),
                        });
                    }
                    Chunk::Data(piece.to_vec())
                };
                self.retained.insert(self.pos, chunk);
            }
            self.pos += got as u64;
        }
        Ok(())
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

/// Copies `extents` to the target in file order (the stream only moves forward). Extents
/// behind the stream are served from the reorder buffer, which is released as soon as
/// nothing left lies behind. Overlapping extents (two table entries naming the same data)
/// are invalid.
pub(crate) fn copy_extents(
    file: &mut SeqFile<'_>,
    mut extents: Vec<Extent>,
    target: &mut Target,
) -> Result<()> {
    extents.sort_unstable_by_key(|e| e.host);
    let mut end = 0u64;
    for e in extents {
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
        if file.retaining() && e.host >= file.pos() {
            file.stop_retaining();
        }
        file.copy_to(e.host, e.len, target, e.guest)?;
    }
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
