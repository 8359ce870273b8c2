//! xz restart points: the container is walked beside liblzma's decoder, as the decoder
//! consumes it, to learn where blocks start and how much they hold.
//!
//! ```text
//!   stream header │ block │ block │ … │ index │ footer │ padding │ next stream …
//!                         ▲ a block's header records its compressed and uncompressed
//!                           sizes when xz wrote it multi-threaded (xz -T, the default of
//!                           xz 5.6): the next block starts that many bytes on, that much
//!                           image on. A block without them ends what is known of its stream.
//! ```
//!
//! A run that continues at a block hands liblzma a stream header with the recorded flags,
//! the blocks from there, and, in place of the stored index (which lists every block of the
//! stream), an index of the blocks it decoded and a footer for it. The stored index and
//! footer are still checked (CRC-32, padding, sizes, flags), and liblzma checks that the
//! index given matches the blocks decoded, so the last records of the stored index are the
//! blocks this run decoded. Each block's own check (CRC-32, CRC-64, SHA-256) is liblzma's.

use std::io::{self, BufRead, Read};

use crate::Error;
use crate::resume::{Decoded, Point, Points};

mod index;

use index::{IndexEvent, IndexParse, Rewrite, put_varint, varint};

const MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
const FOOTER_MAGIC: [u8; 2] = *b"YZ";

fn crc32(data: &[u8]) -> u32 {
    zlib_rs::crc32::crc32(0, data)
}

fn bad(what: impl Into<String>) -> io::Error {
    Error::invalid("xz", what).into_io()
}

/// The size of a block's check for a check type.
fn check_size(check: u8) -> u64 {
    match check {
        0 => 0,
        1..=3 => 4,
        4..=6 => 8,
        7..=9 => 16,
        10..=12 => 32,
        _ => 64,
    }
}

/// The stream header for `check`.
fn stream_header(check: u8) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..6].copy_from_slice(&MAGIC);
    h[7] = check;
    let c = crc32(&h[6..8]);
    h[8..].copy_from_slice(&c.to_le_bytes());
    h
}

/// Where the walk is.
enum St {
    /// Between streams (stream padding), until [`Walker::next_stream`].
    Between,
    StreamHeader {
        buf: [u8; 12],
        n: usize,
    },
    /// The next byte starts a block header, or is the index indicator.
    BlockStart,
    BlockHeader {
        buf: Vec<u8>,
        need: usize,
    },
    /// The rest of a block: compressed data, padding and check.
    BlockData {
        left: u64,
    },
    /// The index (observed): parsed only to find its end.
    Index(IndexParse),
    Footer {
        n: usize,
    },
    /// Nothing more is known of this stream (a block without sizes, or something liblzma
    /// will refuse).
    Lost,
}

/// The walk of an xz input, fed the bytes liblzma consumes.
pub(crate) struct Walker {
    state: St,
    /// Source offset of the next byte.
    pos: u64,
    /// The current stream's check type.
    check: u8,
    /// Image offset where the next block's data starts (`None`: not known).
    block_out: Option<u64>,
    /// Blocks started in this stream (in this run).
    blocks: u64,
    points: Points,
    /// The stream was entered at a block: its index is rewritten (see the module).
    continued: bool,
    rewrite: Option<Rewrite>,
    error: Option<io::Error>,
}

impl Walker {
    /// A walk from source offset `pos`: at a stream's start, or inside the stream of check
    /// type `check`, at a block whose data is image byte `output` on.
    pub(crate) fn new(pos: u64, output: u64, check: Option<u8>, points: Points) -> Self {
        let mut w = Self {
            state: St::StreamHeader { buf: [0; 12], n: 0 },
            pos,
            check: 0,
            block_out: Some(output),
            blocks: 0,
            points,
            continued: false,
            rewrite: None,
            error: None,
        };
        if let Some(check) = check {
            w.check = check;
            w.state = St::BlockStart;
            w.continued = true;
        }
        w
    }

    /// Bytes for liblzma before the walk reads on: the stream header of a stream entered
    /// at a block.
    pub(crate) fn prelude(&self) -> Vec<u8> {
        if self.continued {
            stream_header(self.check).to_vec()
        } else {
            Vec::new()
        }
    }

    /// A stream starts here (after the padding of the previous one), its data at image
    /// byte `output`: a restart point.
    pub(crate) fn next_stream(&mut self, output: u64) {
        self.state = St::StreamHeader { buf: [0; 12], n: 0 };
        self.block_out = Some(output);
        self.blocks = 0;
        self.continued = false;
        if self.pos > 0 {
            self.points.push(Point {
                input: self.pos,
                decoded: Decoded {
                    compression: "xz".into(),
                    output,
                    inflate: None,
                    xz_check: None,
                },
            });
        }
    }

    fn lost(&mut self, why: &str) {
        if self.continued {
            self.error
                .get_or_insert_with(|| bad(format!("{why}, in the stream continued from a checkpoint")));
        } else {
            tracing::debug!(
                offset = self.pos,
                "xz: {why}: no more restart points in this stream"
            );
        }
        self.state = St::Lost;
    }

    /// How many of the bytes `avail` may go to liblzma before the walk must see them: all
    /// of them, but in a stream entered at a block, up to the next block boundary (where
    /// the index may start). Starts the index's rewrite when it does.
    fn passable(&mut self, avail: &[u8]) -> usize {
        if !self.continued {
            return avail.len();
        }
        match &self.state {
            St::BlockStart => match avail.first() {
                None => 0,
                Some(0) => {
                    self.rewrite = Some(Rewrite {
                        parse: IndexParse::new(),
                        skip: 0,
                        seen: 0,
                        size: 1,
                        crc: crc32(&[0]),
                        footer: None,
                        started: false,
                    });
                    self.pos += 1;
                    0
                }
                Some(&b) => avail.len().min((usize::from(b) + 1) * 4),
            },
            St::BlockHeader { buf, need } => avail.len().min(need - buf.len()),
            St::BlockData { left } => avail.len().min(usize::try_from(*left).unwrap_or(usize::MAX)),
            _ => avail.len(),
        }
    }

    /// Follows the bytes liblzma consumed.
    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            let n = self.step(b);
            self.pos += n as u64;
            b = &b[n..];
        }
    }

    /// Walks over the start of `b`; returns how many bytes were used (at least one).
    fn step(&mut self, b: &[u8]) -> usize {
        match &mut self.state {
            St::Between | St::Lost => b.len(),
            St::StreamHeader { buf, n } => {
                let k = b.len().min(12 - *n);
                buf[*n..*n + k].copy_from_slice(&b[..k]);
                *n += k;
                if *n == 12 {
                    let h = *buf;
                    self.stream_header(&h);
                }
                k
            }
            St::BlockStart => {
                self.block_start(b[0]);
                1
            }
            St::BlockHeader { buf, need } => {
                let k = b.len().min(*need - buf.len());
                buf.extend_from_slice(&b[..k]);
                if buf.len() == *need {
                    let h = std::mem::take(buf);
                    self.block_header(&h);
                }
                k
            }
            St::BlockData { left } => {
                let k = b.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= k as u64;
                if *left == 0 {
                    self.state = St::BlockStart;
                }
                k
            }
            St::Index(p) => {
                match p.byte(b[0]) {
                    Ok(IndexEvent::Done) => self.state = St::Footer { n: 0 },
                    Ok(_) => {}
                    Err(_) => self.lost("a bad index"),
                }
                1
            }
            St::Footer { n } => {
                let k = b.len().min(12 - *n);
                *n += k;
                if *n == 12 {
                    self.state = St::Between;
                }
                k
            }
        }
    }

    /// A stream header read whole: blocks follow, or the walk is lost.
    fn stream_header(&mut self, h: &[u8; 12]) {
        if h[..6] != MAGIC || h[6] != 0 || h[7] > 15 || crc32(&h[6..8]).to_le_bytes() != h[8..] {
            self.lost("not a valid stream header");
        } else {
            self.check = h[7];
            self.state = St::BlockStart;
        }
    }

    /// The first byte of a block (its header's size), or of the index (0). Where a block
    /// starts after another, the decoder can restart.
    fn block_start(&mut self, first: u8) {
        if first == 0 {
            self.state = St::Index(IndexParse::new());
            return;
        }
        if self.blocks > 0
            && let Some(output) = self.block_out
        {
            self.points.push(Point {
                input: self.pos,
                decoded: Decoded {
                    compression: "xz".into(),
                    output,
                    inflate: None,
                    xz_check: Some(self.check),
                },
            });
        }
        self.blocks += 1;
        self.state = St::BlockHeader {
            buf: vec![first],
            need: (usize::from(first) + 1) * 4,
        };
    }

    /// A block header read whole: the block's data (and padding and check) follow, or the
    /// walk is lost.
    fn block_header(&mut self, h: &[u8]) {
        match self.block_sizes(h) {
            Ok((compressed, uncompressed)) => {
                let hsize = h.len() as u64;
                let pad = (4 - (hsize + compressed) % 4) % 4;
                self.block_out = self.block_out.and_then(|o| o.checked_add(uncompressed));
                self.state = St::BlockData {
                    left: compressed + pad + check_size(self.check),
                };
            }
            Err(why) => self.lost(why),
        }
    }

    /// A block header's compressed and uncompressed sizes (both must be there).
    fn block_sizes(&self, h: &[u8]) -> Result<(u64, u64), &'static str> {
        let n = h.len();
        if crc32(&h[..n - 4]).to_le_bytes() != h[n - 4..] {
            return Err("a block header's CRC-32 does not match");
        }
        let flags = h[1];
        if flags & 0x3c != 0 {
            return Err("a block header with reserved flags set");
        }
        if flags & 0xc0 != 0xc0 {
            return Err("a block header without its sizes (xz writes them when multi-threaded)");
        }
        let (compressed, k) = varint(&h[2..n - 4]).ok_or("a bad block header")?;
        let (uncompressed, _) = varint(&h[2 + k..n - 4]).ok_or("a bad block header")?;
        if compressed == 0 {
            return Err("a block of 0 compressed bytes");
        }
        Ok((compressed, uncompressed))
    }

    /// Rewrites the stored index (and footer) at the start of `b` into `out`; returns how
    /// many bytes of `b` were used.
    fn rewrite(&mut self, b: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        let blocks = self.blocks;
        let check = self.check;
        let Some(r) = &mut self.rewrite else {
            return Ok(0);
        };
        if !r.started {
            // The indicator (counted in `size` and `crc` from the start).
            out.push(0);
            r.started = true;
        }
        let mut used = 0;
        for &x in b {
            used += 1;
            if let Some((f, n)) = &mut r.footer {
                f[*n] = x;
                *n += 1;
                if *n < 12 {
                    continue;
                }
                let f = *f;
                r.end(&f, check, out)?;
                self.rewrite = None;
                self.state = St::Between;
                self.continued = false;
                self.pos += used as u64;
                return Ok(used);
            }
            match r.parse.byte(x).map_err(bad)? {
                IndexEvent::None => {}
                IndexEvent::Count(count) => {
                    if count < blocks {
                        return Err(bad(format!(
                            "the index lists {count} blocks, {blocks} were decoded after the checkpoint"
                        )));
                    }
                    r.skip = count - blocks;
                    let mut v = Vec::new();
                    put_varint(&mut v, blocks);
                    r.emit(out, &v);
                }
                IndexEvent::Record(unpadded, uncompressed) => {
                    r.seen += 1;
                    if r.seen > r.skip {
                        let mut v = Vec::new();
                        put_varint(&mut v, unpadded);
                        put_varint(&mut v, uncompressed);
                        r.emit(out, &v);
                    }
                }
                IndexEvent::Done => r.footer = Some(([0; 12], 0)),
            }
        }
        self.pos += used as u64;
        Ok(used)
    }
}

/// The input of liblzma, shown to a [`Walker`] as it is consumed; for a stream entered at a
/// block, with the walker's stream header before it and its index rewritten.
pub(crate) struct Tap<R> {
    inner: R,
    walker: Walker,
    /// Bytes for liblzma that are not the input's.
    made: Vec<u8>,
    at: usize,
}

impl<R: BufRead> Tap<R> {
    pub(crate) fn new(inner: R, walker: Walker) -> Self {
        let made = walker.prelude();
        Self {
            inner,
            walker,
            made,
            at: 0,
        }
    }

    /// A new stream starts at the input's position; its data at image byte `output`.
    pub(crate) fn next_stream(&mut self, output: u64) {
        self.walker.next_stream(output);
    }
}

impl<R: BufRead> Read for Tap<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Tap<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let n = loop {
            if self.at < self.made.len() {
                break None;
            }
            if let Some(e) = self.walker.error.take() {
                return Err(e);
            }
            if self.walker.rewrite.is_some() {
                self.made.clear();
                self.at = 0;
                let b = self.inner.fill_buf()?;
                if b.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "xz: the input ends in the stream's index",
                    ));
                }
                let used = self.walker.rewrite(b, &mut self.made)?;
                self.inner.consume(used);
                continue;
            }
            let b = self.inner.fill_buf()?;
            if b.is_empty() {
                break Some(0);
            }
            let n = self.walker.passable(b);
            if n > 0 {
                break Some(n);
            }
            if self.walker.rewrite.is_some() {
                // The index indicator, read by the walker.
                self.inner.consume(1);
            }
        };
        match n {
            None => Ok(&self.made[self.at..]),
            Some(n) => Ok(&self.inner.fill_buf()?[..n]),
        }
    }

    fn consume(&mut self, n: usize) {
        if self.at < self.made.len() {
            self.at += n;
            return;
        }
        if let Ok(b) = self.inner.fill_buf() {
            let n = n.min(b.len());
            self.walker.feed(&b[..n]);
        }
        self.inner.consume(n);
    }
}
