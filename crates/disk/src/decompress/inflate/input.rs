//! The compressed input: a buffer over the source, and a bit reader over the buffer.

use std::io::{self, BufRead, Read};

use super::{IN_BUF, MAX_PAD, truncated};

/// The compressed input: a buffer over the source, and a bit reader over the buffer.
pub(super) struct Input<R> {
    pub(super) src: R,
    pub(super) buf: Vec<u8>,
    /// Next byte to go into `bitbuf`.
    pub(super) pos: usize,
    /// Bytes in `buf`, zeros added past the end of the input included.
    pub(super) len: usize,
    /// Source offset of `buf[0]`.
    pub(super) base: u64,
    /// The source offset where the input ends, once it has.
    pub(super) end: Option<u64>,
    /// Zeros added past the end.
    pub(super) pad: usize,
    pub(super) bitbuf: u64,
    /// Bits in `bitbuf` (those above are 0).
    pub(super) bitcnt: u32,
}

impl<R: Read> Input<R> {
    pub(super) fn new(src: R, base: u64) -> Self {
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
    pub(super) fn bit_pos(&self) -> u64 {
        (self.base + self.pos as u64) * 8 - u64::from(self.bitcnt)
    }

    /// Whether everything consumed is real input (not zeros past its end).
    pub(super) fn within(&self) -> bool {
        self.end.is_none_or(|e| self.bit_pos() <= e * 8)
    }

    /// Reads more of the source, keeping the 8 bytes before `pos` (bits in `bitbuf` may be
    /// put back). Returns false at the end of the input.
    pub(super) fn more(&mut self) -> io::Result<bool> {
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
    pub(super) fn refill(&mut self) -> io::Result<()> {
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
    pub(super) fn refill_slow(&mut self) -> io::Result<()> {
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
    pub(super) fn consume(&mut self, n: u32) {
        self.bitbuf >>= n;
        self.bitcnt -= n;
    }

    /// The next `n` (≤ 32) bits.
    pub(super) fn bits(&mut self, n: u32) -> io::Result<u32> {
        if self.bitcnt < n {
            self.refill()?;
        }
        let v = (self.bitbuf & ((1u64 << n) - 1)) as u32;
        self.consume(n);
        Ok(v)
    }

    /// Drops the bits up to the next byte boundary and puts whole bytes back: the input is
    /// read by bytes from here.
    pub(super) fn align(&mut self) {
        self.pos -= (self.bitcnt / 8) as usize;
        self.bitbuf = 0;
        self.bitcnt = 0;
    }

    /// Real bytes available by bytes (none of the zeros past the end).
    pub(super) fn avail(&self) -> usize {
        (self.len - self.pad).saturating_sub(self.pos)
    }

    pub(super) fn byte(&mut self) -> io::Result<u8> {
        debug_assert_eq!(self.bitcnt, 0);
        if self.avail() == 0 && (!self.more()? || self.avail() == 0) {
            return Err(truncated());
        }
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }

    pub(super) fn u16_le(&mut self) -> io::Result<u16> {
        Ok(u16::from(self.byte()?) | (u16::from(self.byte()?) << 8))
    }

    pub(super) fn u32_le(&mut self) -> io::Result<u32> {
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
    pub(super) fn consume_bytes(&mut self, n: usize) {
        self.pos += n;
    }
}
