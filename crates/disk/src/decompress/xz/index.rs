//! xz's variable-length integers and its index: read a byte at a time, and rewritten for a
//! stream continued at a block.

use std::io;

use super::{FOOTER_MAGIC, bad, crc32};

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A multibyte integer read a byte at a time.
#[derive(Default, Clone, Copy)]
struct Varint {
    value: u64,
    shift: u32,
}

impl Varint {
    /// The value once complete; an error past 9 bytes or with a needless last 0 byte.
    fn push(&mut self, b: u8) -> Result<Option<u64>, &'static str> {
        if self.shift >= 63 || (b == 0 && self.shift > 0) {
            return Err("bad variable-length integer");
        }
        self.value |= u64::from(b & 0x7f) << self.shift;
        self.shift += 7;
        if b & 0x80 != 0 {
            return Ok(None);
        }
        let v = self.value;
        *self = Varint::default();
        Ok(Some(v))
    }
}

/// Parses a whole multibyte integer at the start of `b`: (value, length).
pub(super) fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = Varint::default();
    for (i, &x) in b.iter().enumerate() {
        if let Some(value) = v.push(x).ok()? {
            return Some((value, i + 1));
        }
    }
    None
}

/// An index read a byte at a time.
pub(super) struct IndexParse {
    /// Bytes so far (the indicator included).
    size: u64,
    crc: u32,
    count: Option<u64>,
    /// Record fields read so far (two per record).
    fields: u64,
    varint: Varint,
    /// The last record field read (an unpadded size, until its uncompressed size comes).
    unpadded: u64,
    /// Bytes of the CRC-32 read (after the padding).
    crc_bytes: Option<([u8; 4], usize)>,
}

impl IndexParse {
    pub(super) fn new() -> Self {
        Self {
            size: 1,
            crc: crc32(&[0]),
            count: None,
            fields: 0,
            varint: Varint::default(),
            unpadded: 0,
            crc_bytes: None,
        }
    }

    /// Feeds one byte; `Some(record)` when a record (unpadded, uncompressed) completes,
    /// `Done` when the index ends (CRC-32 checked).
    pub(super) fn byte(&mut self, b: u8) -> Result<IndexEvent, &'static str> {
        if let Some((crc, n)) = &mut self.crc_bytes {
            crc[*n] = b;
            *n += 1;
            if *n < 4 {
                return Ok(IndexEvent::None);
            }
            if u32::from_le_bytes(*crc) != self.crc {
                return Err("the index's CRC-32 does not match");
            }
            self.size += 4;
            return Ok(IndexEvent::Done);
        }
        let records_done = self.count.is_some_and(|c| self.fields == 2 * c);
        self.size += 1;
        self.crc = zlib_rs::crc32::crc32(self.crc, &[b]);
        if records_done {
            // Padding to a multiple of four, then the CRC-32.
            if b != 0 {
                return Err("non-zero index padding");
            }
            if self.size.is_multiple_of(4) {
                self.crc_bytes = Some(([0; 4], 0));
            }
            return Ok(IndexEvent::None);
        }
        let Some(v) = self.varint.push(b)? else {
            return Ok(IndexEvent::None);
        };
        let event = match self.count {
            None => {
                self.count = Some(v);
                IndexEvent::Count(v)
            }
            Some(_) => {
                self.fields += 1;
                if self.fields % 2 == 1 {
                    if v == 0 {
                        return Err("an index record with an unpadded size of 0");
                    }
                    self.unpadded = v;
                    IndexEvent::None
                } else {
                    IndexEvent::Record(self.unpadded, v)
                }
            }
        };
        if self.count.is_some_and(|c| self.fields == 2 * c) && self.size.is_multiple_of(4) {
            self.crc_bytes = Some(([0; 4], 0));
        }
        Ok(event)
    }
}

pub(super) enum IndexEvent {
    None,
    Count(u64),
    Record(u64, u64),
    Done,
}

/// The rewrite of a stored index into one of the blocks decoded (a stream continued at a
/// block).
pub(super) struct Rewrite {
    pub(super) parse: IndexParse,
    /// Records of the stored index before the blocks decoded.
    pub(super) skip: u64,
    /// Records seen.
    pub(super) seen: u64,
    /// The index written: its size and CRC-32 so far.
    pub(super) size: u64,
    pub(super) crc: u32,
    /// The stored footer, once the index has ended.
    pub(super) footer: Option<([u8; 12], usize)>,
    /// Whether the index indicator was written.
    pub(super) started: bool,
}

impl Rewrite {
    /// Writes `bytes` of the index, counted in its size and CRC-32.
    pub(super) fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.crc = zlib_rs::crc32::crc32(self.crc, bytes);
        out.extend_from_slice(bytes);
    }

    /// Checks the stored footer `f` against the stored index and the stream's `check`, and
    /// ends the index written: its padding and CRC-32, then its footer.
    pub(super) fn end(&mut self, f: &[u8; 12], check: u8, out: &mut Vec<u8>) -> io::Result<()> {
        let backward = u32::from_le_bytes(f[4..8].try_into().expect("4 bytes"));
        if crc32(&f[4..10]).to_le_bytes() != f[..4]
            || f[10..] != FOOTER_MAGIC
            || f[8..10] != [0, check]
            || (u64::from(backward) + 1) * 4 != self.parse.size
        {
            return Err(bad("the stream footer does not match its index or header"));
        }
        while !self.size.is_multiple_of(4) {
            self.emit(out, &[0]);
        }
        let crc = self.crc;
        out.extend_from_slice(&crc.to_le_bytes());
        let mut footer = [0u8; 12];
        footer[4..8].copy_from_slice(&((((self.size + 4) / 4) - 1) as u32).to_le_bytes());
        footer[9] = check;
        let c = crc32(&footer[4..10]);
        footer[..4].copy_from_slice(&c.to_le_bytes());
        footer[10..].copy_from_slice(&FOOTER_MAGIC);
        out.extend_from_slice(&footer);
        Ok(())
    }
}
