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

use crate::Error;
use crate::resume::{Decoded, InflatePoint, Point, Points, WINDOW};

mod huffman;
mod input;

use huffman::{
    CLEN_ORDER, DIST_BITS, END, Huffman, LENGTH, LIT_BITS, LITERAL, clen_entry, dist_entry, lit_entry,
};
use input::Input;

/// Input buffer.
const IN_BUF: usize = 256 << 10;
/// Output decoded in one go, beyond the window kept.
const OUT_ROOM: usize = 256 << 10;
/// The longest match.
const MAX_MATCH: usize = 258;
/// Zero bytes that may be read past the end of the input (looked at, never used by a
/// well-formed stream: a longer read is a truncated stream).
const MAX_PAD: usize = 32;
fn data_error(what: impl Into<String>) -> io::Error {
    Error::invalid("gzip", what).into_io()
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "gzip: the compressed data ends early",
    )
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
            // Each state's step says whether to go on (false: return, for now or for good;
            // the state is `Done` unless it set another).
            let go_on = match std::mem::replace(&mut self.state, State::Done) {
                State::Done => false,
                State::Header { optional } => self.member_header(optional)?,
                State::Block => self.block_header()?,
                State::Stored { left } => self.stored(left)?,
                State::Codes(codes) => self.coded(codes)?,
                State::Trailer => self.trailer()?,
            };
            if !go_on {
                return Ok(());
            }
        }
    }

    /// A member's header; with `optional` (after a member) the input may end there, or
    /// zeros pad it to its end (false then).
    fn member_header(&mut self, optional: bool) -> io::Result<bool> {
        if optional {
            match self.inp.fill_buf()?.first() {
                None => return Ok(false),
                Some(0) => {
                    super::zero_padding(&mut self.inp, "gzip")?;
                    return Ok(false);
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
        Ok(true)
    }

    /// A block's header: stored, fixed or dynamic codes.
    fn block_header(&mut self) -> io::Result<bool> {
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
        Ok(true)
    }

    /// Copies a stored block's `left` bytes, as far as the output has room (false then).
    fn stored(&mut self, mut left: usize) -> io::Result<bool> {
        while left > 0 {
            let room = self.buf.len() - self.end;
            if room == 0 {
                self.state = State::Stored { left };
                return Ok(false);
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
        Ok(true)
    }

    /// Decodes a compressed block (`codes`: dynamic, else the fixed ones) until its end,
    /// or until the output is full (false then).
    fn coded(&mut self, codes: Option<Box<(Huffman, Huffman)>>) -> io::Result<bool> {
        let done = match &codes {
            Some(c) => self.codes(&c.0, &c.1)?,
            None => {
                let fixed = self.fixed.clone();
                self.codes(&fixed.0, &fixed.1)?
            }
        };
        if !done {
            self.state = State::Codes(codes);
            return Ok(false);
        }
        self.block_end();
        Ok(true)
    }

    /// The member's trailer, checked against its CRC-32 and length; a restart point.
    fn trailer(&mut self) -> io::Result<bool> {
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
        Ok(true)
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
    // Kept whole: the hot loop of the decoder, its bit reader in locals; split, the state
    // would go back and forth through `self` for every symbol.
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
mod tests;
