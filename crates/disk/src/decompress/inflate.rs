//! gzip for imports that can resume: a raw-deflate decoder in safe Rust that knows, to the
//! bit, where each deflate block starts, so a later run can start decoding there (zlib's
//! `examples/zran.c` idea, without its index).
//!
//! zlib-rs (the backend of `flate2` here) stops at block boundaries with `Z_BLOCK`, but its
//! safe API reports neither how many bits of the last byte it used (`data_type`) nor lets a
//! stream start in the middle of a byte (`inflatePrime`), and this workspace forbids
//! `unsafe`. So this decoder is used only when checkpoints are wanted (`--resume` from a
//! source that can be asked for a range); every other import keeps `flate2`.
//!
//! ```text
//!   member: header │ block │ block │ … │ final block │ CRC-32 ISIZE │ next member …
//!                  ▲       ▲ restart points: (byte, bit), output offset, CRC-32 and length
//!                          of the member so far; the 32 KiB before the point are the window
//! ```
//!
//! It accepts what zlib accepts (over-subscribed or incomplete codes are refused as zlib
//! does, an incomplete code only when it has one symbol of length 1), checks each member's
//! CRC-32 and length, and reads members one after another, then zeros to the end of the
//! input (tape padding), as [`super::Members`] does.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use crate::resume::{Decoded, InflatePoint, Point, Points, WINDOW};
use crate::{Error, Result};

/// Input buffer.
const IN_BUF: usize = 256 << 10;
/// Output decoded in one go, beyond the window kept.
const OUT_ROOM: usize = 256 << 10;
/// The longest match.
const MAX_MATCH: usize = 258;
/// Zero bytes that may be read past the end of the input (looked at, never used by a
/// well-formed stream: a longer read is a truncated stream).
const MAX_PAD: usize = 32;
/// Bits of the first-level table for literals/lengths and for distances; longer codes
/// are decoded bit by bit.
const LIT_BITS: u32 = 10;
const DIST_BITS: u32 = 8;

/// Entry kinds, bits 4..8 of a table entry.
const LITERAL: u32 = 0;
const LENGTH: u32 = 1;
const END: u32 = 2;
const INVALID: u32 = 3;
/// The code is longer than the table's bits: decode it bit by bit.
const LONG: u32 = 4;

const fn entry(kind: u32, value: u32, extra: u32) -> u32 {
    (value << 16) | (extra << 8) | (kind << 4)
}

const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195,
    227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
    4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
];
/// The order in which code length code lengths are stored.
const CLEN_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

fn lit_entry(sym: usize) -> u32 {
    match sym {
        0..=255 => entry(LITERAL, sym as u32, 0),
        256 => entry(END, 0, 0),
        257..=285 => entry(
            LENGTH,
            u32::from(LENGTH_BASE[sym - 257]),
            u32::from(LENGTH_EXTRA[sym - 257]),
        ),
        _ => entry(INVALID, 0, 0),
    }
}

fn dist_entry(sym: usize) -> u32 {
    match sym {
        0..=29 => entry(LITERAL, u32::from(DIST_BASE[sym]), u32::from(DIST_EXTRA[sym])),
        _ => entry(INVALID, 0, 0),
    }
}

/// Code-length codes: the symbol is the value.
fn clen_entry(sym: usize) -> u32 {
    entry(LITERAL, sym as u32, 0)
}

fn data_error(what: impl Into<String>) -> io::Error {
    Error::invalid("gzip", what).into_io()
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "gzip: the compressed data ends early",
    )
}

/// A canonical Huffman code: a first-level table indexed by the next `bits` input bits,
/// and the symbols by code for the longer codes.
struct Huffman {
    bits: u32,
    fast: Vec<u32>,
    /// Codes per length.
    count: [u16; 16],
    /// Symbols ordered by code.
    symbols: Vec<u16>,
    /// The entry of each symbol (without its length).
    entries: Vec<u32>,
}

impl Huffman {
    /// Builds the code of `lens` (a length per symbol, 0: unused). As zlib: an
    /// over-subscribed set is refused, and an incomplete one unless it is a single code of
    /// length 1 (not for code-length codes); no code at all is accepted (any use fails).
    fn new(lens: &[u8], bits: u32, entry_of: fn(usize) -> u32, codes: bool) -> Result<Self, &'static str> {
        let mut count = [0u16; 16];
        for &l in lens {
            count[usize::from(l)] += 1;
        }
        count[0] = 0;
        let max = (1..16).rev().find(|&l| count[l] != 0).unwrap_or(0);
        let mut left: i32 = 1;
        for c in &count[1..] {
            left = (left << 1) - i32::from(*c);
            if left < 0 {
                return Err("over-subscribed");
            }
        }
        if max != 0 && left > 0 && (codes || max != 1) {
            return Err("incomplete");
        }
        // start[l]: index of the first symbol of length l among the ordered symbols.
        let mut start = [0usize; 16];
        for l in 2..16 {
            start[l] = start[l - 1] + usize::from(count[l - 1]);
        }
        let mut symbols = vec![0u16; count.iter().map(|c| usize::from(*c)).sum()];
        let mut next = start;
        for (sym, &l) in lens.iter().enumerate() {
            if l != 0 {
                symbols[next[usize::from(l)]] = sym as u16;
                next[usize::from(l)] += 1;
            }
        }
        let entries: Vec<u32> = (0..lens.len()).map(entry_of).collect();
        let size = 1usize << bits;
        let mut fast = vec![entry(INVALID, 0, 0); size];
        // Canonical codes, in order of length then symbol.
        let mut code: u32 = 0;
        let mut i = 0usize;
        for l in 1..16u32 {
            for _ in 0..count[l as usize] {
                let sym = usize::from(symbols[i]);
                i += 1;
                let rev = code.reverse_bits() >> (32 - l);
                if l <= bits {
                    let e = entries[sym] | l;
                    let mut j = rev as usize;
                    while j < size {
                        fast[j] = e;
                        j += 1 << l;
                    }
                } else {
                    fast[(rev & ((1 << bits) - 1)) as usize] = entry(LONG, 0, 0);
                }
                code += 1;
            }
            code <<= 1;
        }
        Ok(Self {
            bits,
            fast,
            count,
            symbols,
            entries,
        })
    }

    /// The entry (with its length) of the code at the bottom of `bitbuf`, which holds at
    /// least 15 bits; `None` for a code that is not in the table.
    #[inline(always)]
    fn decode(&self, bitbuf: u64) -> Option<u32> {
        let e = self.fast[(bitbuf & ((1 << self.bits) - 1)) as usize];
        if (e >> 4) & 15 != LONG {
            return Some(e);
        }
        self.decode_long(bitbuf)
    }

    #[cold]
    fn decode_long(&self, bitbuf: u64) -> Option<u32> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16u32 {
            code |= ((bitbuf >> (len - 1)) & 1) as i32;
            let count = i32::from(self.count[len as usize]);
            if code - first < count {
                let sym = usize::from(self.symbols[(index + code - first) as usize]);
                return Some(self.entries[sym] | len);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        None
    }
}

/// The compressed input: a buffer over the source, and a bit reader over the buffer.
struct Input<R> {
    src: R,
    buf: Vec<u8>,
    /// Next byte to go into `bitbuf`.
    pos: usize,
    /// Bytes in `buf`, zeros added past the end of the input included.
    len: usize,
    /// Source offset of `buf[0]`.
    base: u64,
    /// The source offset where the input ends, once it has.
    end: Option<u64>,
    /// Zeros added past the end.
    pad: usize,
    bitbuf: u64,
    /// Bits in `bitbuf` (those above are 0).
    bitcnt: u32,
}

impl<R: Read> Input<R> {
    fn new(src: R, base: u64) -> Self {
        Self {
            src,
            buf: vec![0u8; IN_BUF + MAX_PAD],
            pos: 0,
            len: 0,
            base,
            end: None,
            pad: 0,
            bitbuf: 0,
            bitcnt: 0,
        }
    }

    /// The source offset of the next bit, in bits.
    fn bit_pos(&self) -> u64 {
        (self.base + self.pos as u64) * 8 - u64::from(self.bitcnt)
    }

    /// Whether everything consumed is real input (not zeros past its end).
    fn within(&self) -> bool {
        self.end.is_none_or(|e| self.bit_pos() <= e * 8)
    }

    /// Reads more of the source, keeping the 8 bytes before `pos` (bits in `bitbuf` may be
    /// put back). Returns false at the end of the input.
    fn more(&mut self) -> io::Result<bool> {
        if self.end.is_some() {
            return Ok(false);
        }
        let keep = self.pos.saturating_sub(8);
        if keep > 0 {
            self.buf.copy_within(keep..self.len, 0);
            self.base += keep as u64;
            self.pos -= keep;
            self.len -= keep;
        }
        if self.len == IN_BUF {
            return Ok(true);
        }
        loop {
            match self.src.read(&mut self.buf[self.len..IN_BUF]) {
                Ok(0) => {
                    self.end = Some(self.base + self.len as u64);
                    return Ok(false);
                }
                Ok(n) => {
                    self.len += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills `bitbuf` to at least 56 bits (zeros past the end of the input, up to
    /// [`MAX_PAD`] bytes of them).
    #[inline(always)]
    fn refill(&mut self) -> io::Result<()> {
        if self.pos + 8 > self.len {
            self.refill_slow()?;
        }
        let v = u64::from_le_bytes(self.buf[self.pos..self.pos + 8].try_into().expect("8 bytes"));
        let n = (63 - self.bitcnt) >> 3;
        let cnt = self.bitcnt + n * 8;
        self.bitbuf = (self.bitbuf | (v << self.bitcnt)) & ((1u64 << cnt) - 1);
        self.pos += n as usize;
        self.bitcnt = cnt;
        Ok(())
    }

    #[cold]
    fn refill_slow(&mut self) -> io::Result<()> {
        while self.pos + 8 > self.len {
            if !self.more()? {
                let need = self.pos + 8 - self.len;
                if self.pad + need > MAX_PAD {
                    return Err(truncated());
                }
                self.buf[self.len..self.len + need].fill(0);
                self.len += need;
                self.pad += need;
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.bitbuf >>= n;
        self.bitcnt -= n;
    }

    /// The next `n` (≤ 32) bits.
    fn bits(&mut self, n: u32) -> io::Result<u32> {
        if self.bitcnt < n {
            self.refill()?;
        }
        let v = (self.bitbuf & ((1u64 << n) - 1)) as u32;
        self.consume(n);
        Ok(v)
    }

    /// Drops the bits up to the next byte boundary and puts whole bytes back: the input is
    /// read by bytes from here.
    fn align(&mut self) {
        self.pos -= (self.bitcnt / 8) as usize;
        self.bitbuf = 0;
        self.bitcnt = 0;
    }

    /// Real bytes available by bytes (none of the zeros past the end).
    fn avail(&self) -> usize {
        (self.len - self.pad).saturating_sub(self.pos)
    }

    fn byte(&mut self) -> io::Result<u8> {
        debug_assert_eq!(self.bitcnt, 0);
        if self.avail() == 0 && (!self.more()? || self.avail() == 0) {
            return Err(truncated());
        }
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }

    fn u16_le(&mut self) -> io::Result<u16> {
        Ok(u16::from(self.byte()?) | (u16::from(self.byte()?) << 8))
    }

    fn u32_le(&mut self) -> io::Result<u32> {
        Ok(u32::from(self.u16_le()?) | (u32::from(self.u16_le()?) << 16))
    }
}

/// By bytes (gzip headers, stored blocks, padding); only between deflate streams or after
/// [`Input::align`].
impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume_bytes(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Input<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.avail() == 0 {
            self.more()?;
        }
        let end = self.pos + self.avail();
        Ok(&self.buf[self.pos..end])
    }

    fn consume(&mut self, n: usize) {
        self.consume_bytes(n);
    }
}

impl<R> Input<R> {
    fn consume_bytes(&mut self, n: usize) {
        self.pos += n;
    }
}

/// What the decoder does next.
enum State {
    /// A member's header (the first member, or after a member boundary: there, the end of
    /// the input or zeros may come instead when `optional`).
    Header {
        optional: bool,
    },
    /// A block's header.
    Block,
    /// Inside a stored block.
    Stored {
        left: usize,
    },
    /// Inside a compressed block; `Some` for dynamic codes, `None` for the fixed ones.
    Codes(Option<Box<(Huffman, Huffman)>>),
    /// The member's trailer (after its final block).
    Trailer,
    Done,
}

/// Where a gzip stream is picked up by a later run.
pub(crate) struct Restart {
    /// The image bytes before the point.
    pub(crate) output: u64,
    /// Inside a member: its state and the window (the last `min(member, 32 KiB)` bytes).
    pub(crate) inside: Option<(InflatePoint, Vec<u8>)>,
}

/// gzip members (then zero padding), decoded with restart points.
pub(crate) struct GzResumable<R> {
    inp: Input<R>,
    state: State,
    /// Output: the window, then what is decoded; `buf[start..end]` is not yet read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Image offset of `buf[0]`.
    out_base: u64,
    /// Image offset where the current member's output starts.
    member_start: u64,
    /// CRC-32 of the member's output up to `buf[crc_pos]`.
    crc: u32,
    crc_pos: usize,
    /// Whether the current block is the member's last.
    last: bool,
    fixed: Arc<(Huffman, Huffman)>,
    points: Option<Points>,
}

impl<R: Read> GzResumable<R> {
    /// Decodes `src`, whose first byte is at source offset `offset`, from `at` (the start
    /// of a gzip stream when `None`: `offset` 0). Restart points go to `points`.
    pub(crate) fn new(src: R, offset: u64, at: Option<Restart>, points: Option<Points>) -> io::Result<Self> {
        let mut fixed_lens = [0u8; 288];
        fixed_lens[..144].fill(8);
        fixed_lens[144..256].fill(9);
        fixed_lens[256..280].fill(7);
        fixed_lens[280..].fill(8);
        let fixed = Arc::new((
            Huffman::new(&fixed_lens, LIT_BITS, lit_entry, false).map_err(data_error)?,
            Huffman::new(&[5u8; 32], DIST_BITS, dist_entry, false).map_err(data_error)?,
        ));
        let mut d = Self {
            inp: Input::new(src, offset),
            state: State::Header { optional: false },
            buf: vec![0u8; WINDOW + OUT_ROOM + MAX_MATCH],
            start: 0,
            end: 0,
            out_base: 0,
            member_start: 0,
            crc: 0,
            crc_pos: 0,
            last: false,
            fixed,
            points,
        };
        match at {
            None => {}
            Some(Restart { output, inside: None }) => {
                d.out_base = output;
                d.member_start = output;
                d.state = State::Header { optional: true };
            }
            Some(Restart {
                output,
                inside: Some((p, window)),
            }) => {
                let w = window.len();
                if p.bit > 7 || w as u64 != p.member.min(WINDOW as u64) || p.member > output {
                    return Err(data_error("the checkpoint's inflate state is inconsistent"));
                }
                d.buf[..w].copy_from_slice(&window);
                (d.start, d.end, d.crc_pos) = (w, w, w);
                d.out_base = output - w as u64;
                d.member_start = output - p.member;
                d.crc = p.crc;
                if p.bit > 0 {
                    let b = d.inp.byte()?;
                    d.inp.bitbuf = u64::from(b >> p.bit);
                    d.inp.bitcnt = 8 - u32::from(p.bit);
                }
                d.state = State::Block;
            }
        }
        Ok(d)
    }

    /// Brings the CRC-32 up to what is decoded.
    fn sum(&mut self) {
        self.crc = zlib_rs::crc32::crc32(self.crc, &self.buf[self.crc_pos..self.end]);
        self.crc_pos = self.end;
    }

    fn member_len(&self) -> u64 {
        self.out_base + self.end as u64 - self.member_start
    }

    /// Tells `points` that decoding can start again here: at a block boundary inside a
    /// member, or between members (`inside` false).
    fn point(&mut self, inside: bool) {
        if self.points.is_none() || !self.inp.within() {
            return;
        }
        let output = self.out_base + self.end as u64;
        let bit_pos = self.inp.bit_pos();
        let inflate = inside.then(|| {
            self.sum();
            let member = self.member_len();
            let w = member.min(WINDOW as u64) as usize;
            InflatePoint {
                bit: (bit_pos % 8) as u8,
                crc: self.crc,
                member,
                window: zlib_rs::crc32::crc32(0, &self.buf[self.end - w..self.end]),
            }
        });
        if let Some(points) = &self.points {
            points.push(Point {
                input: bit_pos / 8,
                decoded: Decoded {
                    compression: "gzip".into(),
                    output,
                    inflate,
                    xz_check: None,
                },
            });
        }
    }

    /// Makes room for at least [`OUT_ROOM`] more bytes, keeping the window (everything
    /// decoded has been read).
    fn slide(&mut self) {
        if self.end <= WINDOW + MAX_MATCH {
            return;
        }
        self.sum();
        let shift = self.end - WINDOW;
        self.buf.copy_within(shift..self.end, 0);
        self.out_base += shift as u64;
        self.end -= shift;
        self.start -= shift;
        self.crc_pos -= shift;
    }

    /// Decodes until there is output to read or the stream ends.
    fn step(&mut self) -> io::Result<()> {
        self.slide();
        loop {
            if self.start < self.end && self.end + MAX_MATCH > self.buf.len() {
                return Ok(());
            }
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return Ok(()),
                State::Header { optional } => {
                    if optional {
                        match self.inp.fill_buf()?.first() {
                            None => return Ok(()),
                            Some(0) => {
                                super::zero_padding(&mut self.inp, "gzip")?;
                                return Ok(());
                            }
                            Some(0x1f) => {}
                            Some(b) => {
                                return Err(data_error(format!(
                                    "data after the end of the compressed stream (byte {b:#04x}, not another gzip member or zero padding)"
                                )));
                            }
                        }
                    }
                    self.header()?;
                    self.member_start = self.out_base + self.end as u64;
                    self.sum();
                    self.crc = 0;
                    self.state = State::Block;
                }
                State::Block => {
                    let h = self.inp.bits(3)?;
                    self.last = h & 1 == 1;
                    self.state = match h >> 1 {
                        0 => {
                            self.inp.align();
                            let len = self.inp.u16_le()?;
                            let nlen = self.inp.u16_le()?;
                            if len != !nlen {
                                return Err(data_error("invalid stored block lengths"));
                            }
                            State::Stored { left: len.into() }
                        }
                        1 => State::Codes(None),
                        2 => State::Codes(Some(self.dynamic()?)),
                        _ => return Err(data_error("invalid block type")),
                    };
                }
                State::Stored { mut left } => {
                    while left > 0 {
                        let room = self.buf.len() - self.end;
                        if room == 0 {
                            self.state = State::Stored { left };
                            return Ok(());
                        }
                        if self.inp.avail() == 0 && !self.inp.more()? {
                            return Err(truncated());
                        }
                        let n = left.min(room).min(self.inp.avail());
                        let p = self.inp.pos;
                        self.buf[self.end..self.end + n].copy_from_slice(&self.inp.buf[p..p + n]);
                        self.inp.pos += n;
                        self.end += n;
                        left -= n;
                    }
                    self.block_end();
                }
                State::Codes(codes) => {
                    let done = match &codes {
                        Some(c) => self.codes(&c.0, &c.1)?,
                        None => {
                            let fixed = self.fixed.clone();
                            self.codes(&fixed.0, &fixed.1)?
                        }
                    };
                    if !done {
                        self.state = State::Codes(codes);
                        return Ok(());
                    }
                    self.block_end();
                }
                State::Trailer => {
                    self.inp.align();
                    self.sum();
                    let crc = self.inp.u32_le()?;
                    let size = self.inp.u32_le()?;
                    if crc != self.crc {
                        return Err(data_error(format!(
                            "CRC-32 mismatch: the trailer says {crc:08x}, the data gives {:08x}",
                            self.crc
                        )));
                    }
                    if u64::from(size) != self.member_len() & 0xffff_ffff {
                        return Err(data_error(format!(
                            "length mismatch: the trailer says {size} (mod 2^32), the member holds {}",
                            self.member_len()
                        )));
                    }
                    self.point(false);
                    self.state = State::Header { optional: true };
                }
            }
        }
    }

    /// After a block: the trailer, or a restart point and the next block.
    fn block_end(&mut self) {
        if self.last {
            self.state = State::Trailer;
        } else {
            self.point(true);
            self.state = State::Block;
        }
    }

    /// A member's header (RFC 1952): ID, CM 8, flags, and the optional fields.
    fn header(&mut self) -> io::Result<()> {
        let mut head = [0u8; 10];
        for b in &mut head {
            *b = self.inp.byte()?;
        }
        if head[..2] != [0x1f, 0x8b] {
            return Err(data_error("not a gzip member (bad magic)"));
        }
        if head[2] != 8 {
            return Err(data_error(format!("unknown compression method {}", head[2])));
        }
        let flags = head[3];
        if flags & 0xe0 != 0 {
            return Err(data_error("unknown header flags set"));
        }
        let mut crc = zlib_rs::crc32::crc32(0, &head);
        let mut take = |inp: &mut Input<R>| -> io::Result<u8> {
            let b = inp.byte()?;
            crc = zlib_rs::crc32::crc32(crc, &[b]);
            Ok(b)
        };
        if flags & 4 != 0 {
            let xlen = u16::from(take(&mut self.inp)?) | (u16::from(take(&mut self.inp)?) << 8);
            for _ in 0..xlen {
                take(&mut self.inp)?;
            }
        }
        for flag in [8, 16] {
            if flags & flag != 0 {
                while take(&mut self.inp)? != 0 {}
            }
        }
        if flags & 2 != 0 {
            let want = (crc & 0xffff) as u16;
            if self.inp.u16_le()? != want {
                return Err(data_error("header CRC mismatch"));
            }
        }
        Ok(())
    }

    /// A dynamic block's codes.
    fn dynamic(&mut self) -> io::Result<Box<(Huffman, Huffman)>> {
        let nlen = self.inp.bits(5)? as usize + 257;
        let ndist = self.inp.bits(5)? as usize + 1;
        let ncode = self.inp.bits(4)? as usize + 4;
        if nlen > 286 || ndist > 30 {
            return Err(data_error("too many length or distance symbols"));
        }
        let mut clens = [0u8; 19];
        for &i in &CLEN_ORDER[..ncode] {
            clens[i] = self.inp.bits(3)? as u8;
        }
        let clen = Huffman::new(&clens, 7, clen_entry, true)
            .map_err(|e| data_error(format!("invalid code lengths set ({e})")))?;
        let mut lens = [0u8; 286 + 30];
        let mut i = 0;
        while i < nlen + ndist {
            self.inp.refill()?;
            let e = clen.decode(self.inp.bitbuf).filter(|e| (e >> 4) & 15 == LITERAL);
            let Some(e) = e else {
                return Err(data_error("invalid code lengths set"));
            };
            self.inp.consume(e & 15);
            let sym = e >> 16;
            let (value, times) = match sym {
                0..=15 => (sym as u8, 1),
                16 => {
                    if i == 0 {
                        return Err(data_error("invalid bit length repeat"));
                    }
                    (lens[i - 1], 3 + self.inp.bits(2)? as usize)
                }
                17 => (0, 3 + self.inp.bits(3)? as usize),
                _ => (0, 11 + self.inp.bits(7)? as usize),
            };
            if i + times > nlen + ndist {
                return Err(data_error("invalid bit length repeat"));
            }
            lens[i..i + times].fill(value);
            i += times;
        }
        if lens[256] == 0 {
            return Err(data_error("invalid code -- missing end-of-block"));
        }
        let lit = Huffman::new(&lens[..nlen], LIT_BITS, lit_entry, false)
            .map_err(|e| data_error(format!("invalid literal/lengths set ({e})")))?;
        let dist = Huffman::new(&lens[nlen..nlen + ndist], DIST_BITS, dist_entry, false)
            .map_err(|e| data_error(format!("invalid distances set ({e})")))?;
        Ok(Box::new((lit, dist)))
    }

    /// Decodes a compressed block's symbols until its end (true) or until the output is
    /// full (false).
    fn codes(&mut self, lit: &Huffman, dist: &Huffman) -> io::Result<bool> {
        let limit = self.buf.len() - MAX_MATCH;
        let floor = self.member_start.saturating_sub(self.out_base);
        let mut end = self.end;
        let result = loop {
            // The bit reader in locals while 8 bytes of input can be loaded at once (the
            // refill of `Input::refill`); back to `Input` for more input.
            let inp = &mut self.inp;
            let (mut bitbuf, mut bitcnt, mut pos) = (inp.bitbuf, inp.bitcnt, inp.pos);
            let input = &inp.buf[..inp.len];
            let out = &mut self.buf[..];
            let done = loop {
                if end > limit {
                    break Some(Ok(false));
                }
                if pos + 8 > input.len() {
                    break None;
                }
                let v = u64::from_le_bytes(input[pos..pos + 8].try_into().expect("8 bytes"));
                let n = (63 - bitcnt) >> 3;
                let cnt = bitcnt + n * 8;
                bitbuf = (bitbuf | (v << bitcnt)) & ((1u64 << cnt) - 1);
                pos += n as usize;
                bitcnt = cnt;
                let Some(e) = lit.decode(bitbuf) else {
                    break Some(Err(data_error("invalid literal/length code")));
                };
                let kind = (e >> 4) & 15;
                if kind == LITERAL {
                    bitbuf >>= e & 15;
                    bitcnt -= e & 15;
                    out[end] = (e >> 16) as u8;
                    end += 1;
                    // More literals while the bits at hand hold any code (15 bits).
                    while bitcnt >= 15 && end <= limit {
                        match lit.decode(bitbuf) {
                            Some(e) if (e >> 4) & 15 == LITERAL => {
                                bitbuf >>= e & 15;
                                bitcnt -= e & 15;
                                out[end] = (e >> 16) as u8;
                                end += 1;
                            }
                            _ => break,
                        }
                    }
                    continue;
                }
                if kind == END {
                    bitbuf >>= e & 15;
                    bitcnt -= e & 15;
                    break Some(Ok(true));
                }
                if kind != LENGTH {
                    break Some(Err(data_error("invalid literal/length code")));
                }
                let mut used = e & 15;
                let extra = (e >> 8) & 15;
                let len = (e >> 16) as usize + ((bitbuf >> used) & ((1 << extra) - 1)) as usize;
                used += extra;
                let Some(d) = dist.decode(bitbuf >> used).filter(|d| (d >> 4) & 15 == LITERAL) else {
                    break Some(Err(data_error("invalid distance code")));
                };
                used += d & 15;
                let extra = (d >> 8) & 15;
                let distance = (d >> 16) as usize + ((bitbuf >> used) & ((1 << extra) - 1)) as usize;
                used += extra;
                bitbuf >>= used;
                bitcnt -= used;
                if distance as u64 > (end as u64).saturating_sub(floor) {
                    break Some(Err(data_error("invalid distance too far back")));
                }
                copy_match(out, end, distance, len);
                end += len;
            };
            (inp.bitbuf, inp.bitcnt, inp.pos) = (bitbuf, bitcnt, pos);
            match done {
                Some(r) => break r,
                None => {
                    if let Err(e) = self.inp.refill_slow() {
                        break Err(e);
                    }
                }
            }
        };
        self.end = end;
        result
    }
}

/// Copies `len` bytes from `distance` back to `at`, overlapping as LZ77 does.
#[inline(always)]
fn copy_match(buf: &mut [u8], at: usize, distance: usize, len: usize) {
    let src = at - distance;
    if distance >= len {
        buf.copy_within(src..src + len, at);
    } else if distance == 1 {
        let b = buf[src];
        buf[at..at + len].fill(b);
    } else {
        // The bytes from `src` repeat with period `distance`: copy growing prefixes of them,
        // each ending where the copy starts.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(distance + done);
            buf.copy_within(src..src + n, at + done);
            done += n;
        }
    }
}

impl<R: Read> Read for GzResumable<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.start < self.end {
                let n = out.len().min(self.end - self.start);
                out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                return Ok(n);
            }
            if matches!(self.state, State::Done) {
                return Ok(0);
            }
            if let Err(e) = self.step() {
                // Garbage read from the zeros past the end: the data was cut short.
                self.state = State::Done;
                return Err(if self.inp.within() { e } else { truncated() });
            }
            if self.start == self.end && matches!(self.state, State::Done) {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Compression;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Text-like words, random bytes, zeros and short repeats, in runs of varied length:
    /// all three block types, matches near and far, codes of every length.
    fn mixed(seed: u64, n: usize) -> Vec<u8> {
        const WORDS: [&str; 12] = [
            "disk ",
            "image ",
            "import ",
            "the ",
            "sector ",
            "qcow2 ",
            "\n",
            "0x1f8b ",
            "resume ",
            "checkpoint ",
            "window ",
            "block ",
        ];
        let mut r = Rng(seed | 1);
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let run = (r.next() % 40_000) as usize + 1;
            match r.next() % 5 {
                0 => (0..run).for_each(|_| v.push(r.next() as u8)),
                1 => v.resize(v.len() + run, 0),
                2 => {
                    let period = (r.next() % 7 + 1) as usize;
                    let pat: Vec<u8> = (0..period).map(|_| r.next() as u8).collect();
                    (0..run).for_each(|i| v.push(pat[i % period]));
                }
                _ => {
                    while v.len() < n && run > 0 {
                        v.extend_from_slice(WORDS[(r.next() % 12) as usize].as_bytes());
                        if r.next().is_multiple_of(50) {
                            break;
                        }
                    }
                }
            }
        }
        v.truncate(n);
        v
    }

    fn gzip(args: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gzip")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("gzip");
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn decode(gz: &[u8], points: Option<Points>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzResumable::new(gz, 0, None, points)?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// What the import's usual decoder (flate2, members and padding) makes of `gz`.
    fn flate2(gz: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        super::super::decoder(
            Compression::Gzip,
            Box::new(io::Cursor::new(gz.to_vec())),
            &Default::default(),
        )?
        .read_to_end(&mut out)?;
        Ok(out)
    }

    /// Continues `gz` from `p` (the window taken from `data`, as the import takes it from
    /// the target) and returns the rest of the output.
    fn rest_from(gz: &[u8], data: &[u8], p: &Point) -> Vec<u8> {
        let output = p.decoded.output as usize;
        let inside = p.decoded.inflate.clone().map(|f| {
            let w = (f.member as usize).min(WINDOW);
            let window = data[output - w..output].to_vec();
            assert_eq!(
                zlib_rs::crc32::crc32(0, &window),
                f.window,
                "window CRC at {output}"
            );
            (f, window)
        });
        let at = Restart {
            output: p.decoded.output,
            inside,
        };
        let mut d = GzResumable::new(&gz[p.input as usize..], p.input, Some(at), None).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn every_block_of_gzip_9_is_a_restart_point() {
        let data = mixed(7, 4 << 20);
        let gz = gzip(&["-9", "-c"], &data);
        let points = Points::with_gap(0);
        assert!(decode(&gz, Some(points.clone())).unwrap() == data);
        let all = points.all();
        let inside: Vec<&Point> = all.iter().filter(|p| p.decoded.inflate.is_some()).collect();
        assert!(inside.len() >= 40, "{} block boundaries", inside.len());
        let unaligned = inside
            .iter()
            .filter(|p| p.decoded.inflate.as_ref().unwrap().bit != 0)
            .count();
        assert!(
            unaligned >= inside.len() / 2,
            "{unaligned} of {} mid-byte",
            inside.len()
        );
        assert!(all.windows(2).all(|w| w[0].decoded.output < w[1].decoded.output));
        // The last point is the end of the member: nothing left.
        let last = all.last().unwrap();
        assert!(last.decoded.inflate.is_none() && last.input == gz.len() as u64);
        // Resuming from a point gives exactly the rest.
        for p in inside.iter().step_by(inside.len() / 12).chain(inside.last()) {
            let rest = rest_from(&gz, &data, p);
            assert!(
                rest == data[p.decoded.output as usize..],
                "resumed at byte {} bit {} (output {})",
                p.input,
                p.decoded.inflate.as_ref().unwrap().bit,
                p.decoded.output
            );
        }
    }

    #[test]
    fn members_padding_and_levels_match_flate2() {
        let a = mixed(1, 300_000);
        let b = mixed(2, 200_000);
        for level in ["-1", "-6", "-9"] {
            let (ga, gb) = (gzip(&[level, "-c"], &a), gzip(&[level, "-c", "-n"], &b));
            let both = [a.clone(), b.clone()].concat();
            for (gz, want) in [
                (ga.clone(), a.clone()),
                ([ga.clone(), gb.clone()].concat(), both.clone()),
                ([ga.clone(), gb.clone(), vec![0; 1000]].concat(), both.clone()),
            ] {
                let points = Points::with_gap(0);
                let got = decode(&gz, Some(points.clone())).unwrap();
                assert!(got == want && flate2(&gz).unwrap() == want, "{level}");
                // From each member boundary and from a block inside the second member.
                for p in points.all() {
                    assert!(rest_from(&gz, &want, &p) == want[p.decoded.output as usize..]);
                }
            }
        }
        // pigz: blocks ended by empty stored blocks (sync flushes), independent blocks.
        for args in [
            &["-p", "2", "-b", "128", "-c"][..],
            &["-p", "2", "-i", "-b", "64", "-c"],
        ] {
            let Ok(mut child) = Command::new("pigz")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
            else {
                eprintln!("pigz is not installed: skipped");
                break;
            };
            let mut stdin = child.stdin.take().unwrap();
            let input = [a.clone(), b.clone()].concat();
            let writer = {
                let input = input.clone();
                std::thread::spawn(move || stdin.write_all(&input).unwrap())
            };
            let gz = child.wait_with_output().unwrap().stdout;
            writer.join().unwrap();
            let points = Points::with_gap(0);
            assert!(decode(&gz, Some(points.clone())).unwrap() == input);
            let all = points.all();
            assert!(all.len() > 3, "{args:?}: {} points", all.len());
            for p in all {
                assert!(rest_from(&gz, &input, &p) == input[p.decoded.output as usize..]);
            }
        }
        // A member with a name, a comment, an extra field and a header CRC (made here).
        let mut e = flate2::GzBuilder::new()
            .filename("disk.raw")
            .comment("made by a test")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::best());
        e.write_all(&a).unwrap();
        let gz = e.finish().unwrap();
        assert!(decode(&gz, None).unwrap() == a);
        // Empty input data, and fixed codes (short data at level 1).
        for data in [&b""[..], b"hello hello hello hello"] {
            assert_eq!(decode(&gzip(&["-1", "-c"], data), None).unwrap(), data);
        }
    }

    /// Throughput against flate2 (zlib-rs): `cargo test --release -p ido-disk --lib
    /// throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement"]
    fn throughput() {
        let mixed_only = mixed(11, 96 << 20);
        let mut disk_like = mixed_only.clone();
        disk_like.resize(160 << 20, 0);
        for (what, data) in [("mixed", mixed_only), ("disk-like (zeros after)", disk_like)] {
            let gz = gzip(&["-6", "-c"], &data);
            let mut buf = vec![0u8; 1 << 20];
            let mut time = |r: &mut dyn Read| {
                let t = std::time::Instant::now();
                let mut n = 0;
                loop {
                    match r.read(&mut buf).unwrap() {
                        0 => break,
                        k => n += k,
                    }
                }
                assert_eq!(n, data.len());
                t.elapsed().as_secs_f64()
            };
            for _ in 0..3 {
                let f = time(
                    &mut super::super::decoder(
                        Compression::Gzip,
                        Box::new(io::Cursor::new(gz.clone())),
                        &Default::default(),
                    )
                    .unwrap(),
                );
                let o = time(&mut GzResumable::new(&gz[..], 0, None, Some(Points::new())).unwrap());
                let mb = data.len() as f64 / 1e6;
                println!(
                    "{what}: {} MiB from {} MiB: flate2 {:.0} MB/s, resumable {:.0} MB/s ({:.2}x the time)",
                    data.len() >> 20,
                    gz.len() >> 20,
                    mb / f,
                    mb / o,
                    o / f
                );
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_like_flate2_never_a_panic() {
        let data = mixed(3, 100_000);
        let gz = gzip(&["-6", "-c"], &data);
        // Truncated anywhere.
        for cut in [0, 5, 10, 11, 100, gz.len() / 2, gz.len() - 8, gz.len() - 1] {
            let e = decode(&gz[..cut], None).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {e}");
        }
        // Bytes changed: both decoders agree on whether it decodes, and on what.
        let mut r = Rng(99);
        for i in 0..3000 {
            let mut bad = gz.clone();
            for _ in 0..=(i % 3) {
                let at = (r.next() as usize) % bad.len();
                bad[at] ^= 1 << (r.next() % 8);
            }
            if i % 7 == 0 {
                bad.truncate((r.next() as usize) % bad.len());
            }
            let ours = decode(&bad, None);
            let theirs = flate2(&bad);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert!(a == b, "case {i}"),
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "case {i}: ours {:?}, flate2 {:?}",
                    ours.as_ref().err(),
                    theirs.as_ref().err()
                ),
            }
        }
        // Data errors are typed (an invalid gzip image), not I/O trouble.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 8] ^= 1;
        let e = decode(&bad, None).unwrap_err();
        let e = Error::io("reading", e);
        assert_eq!(e.label(), "invalid_image", "{e}");
        assert!(e.to_string().contains("CRC-32 mismatch"), "{e}");
        // A checkpoint state that does not fit its window is refused.
        let at = Restart {
            output: 10,
            inside: Some((
                InflatePoint {
                    bit: 3,
                    crc: 0,
                    member: 100,
                    window: 0,
                },
                vec![0; 10],
            )),
        };
        assert!(GzResumable::new(&gz[..], 0, Some(at), None).is_err());
    }
}
