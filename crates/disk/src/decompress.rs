//! Decompressing readers: gzip (zlib-rs), xz (liblzma's multi-threaded decoder: blocks of
//! a multi-block stream are decoded in parallel), zstd, bzip2 and legacy lzma
//! (LZMA_Alone, `.lzma`). Concatenated members, frames and streams are all decoded, as the
//! command-line tools do, and so are zstd's skippable frames (pzstd writes one before each
//! frame). gzip and bzip2 may be followed by zeros up to the end of the input: the padding
//! a tape's blocking adds (`tar -z` to a device pads the compressed stream to its record).
//!
//! An import that keeps checkpoints ([`crate::resume`]) uses [`resumable`] decoders instead:
//! they tell where decoding can start again (gzip's deflate blocks and members, xz's
//! streams and blocks, zstd's frames, bzip2's streams), and start there in a later run.

mod inflate;
mod xz;

use std::io::{self, BufRead, BufReader, Read};

use crate::detect::Compression;
use crate::resume::{Decoded, InflatePoint, Point, Points};

/// Decoder settings.
#[derive(Clone, Debug)]
pub struct DecompressOptions {
    /// Threads for xz (default: the available parallelism).
    pub xz_threads: u32,
    /// Memory the xz decoder may use before it falls back to fewer threads
    /// (default [`XZ_MEMORY_DEFAULT`]).
    pub xz_memlimit_threading: u64,
    /// Largest zstd window, as a power of two (default 27: 128 MiB, the zstd CLI's own
    /// limit). A frame that asks for more (`zstd --long=31` makes 2 GiB ones) is refused
    /// with an error naming this limit, so a small file cannot make the decoder hold
    /// gigabytes.
    pub zstd_window_log_max: u32,
}

/// The xz decoder's default memory (32 MiB): with it a whole import, HTTP buffers included,
/// stays within 64 MiB. liblzma decodes blocks in parallel only while their buffers fit (each
/// thread holds a whole block in and out), so streams of small blocks decode on every core
/// and the 12–24 MiB blocks of `xz -T0 -3`…`-6` on one (about 1.6× faster per core than
/// xz 5.4's CLI all the same). More memory decodes such blocks in parallel.
pub const XZ_MEMORY_DEFAULT: u64 = 32 << 20;

/// zstd's default window limit for decoding (128 MiB).
pub const ZSTD_WINDOW_LOG_DEFAULT: u32 = 27;
/// The largest window zstd can decode (2 GiB).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 31;

impl Default for DecompressOptions {
    fn default() -> Self {
        Self {
            xz_threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            xz_memlimit_threading: XZ_MEMORY_DEFAULT,
            zstd_window_log_max: ZSTD_WINDOW_LOG_DEFAULT,
        }
    }
}

/// Wraps `inner` in a decoder for `c`.
pub fn decoder(
    c: Compression,
    inner: Box<dyn Read + Send>,
    opts: &DecompressOptions,
) -> io::Result<Box<dyn Read + Send>> {
    const BUF: usize = 256 << 10;
    Ok(match c {
        Compression::Gzip => Box::new(Members {
            dec: Some(flate2::bufread::GzDecoder::new(BufReader::with_capacity(
                BUF, inner,
            ))),
            start: flate2::bufread::GzDecoder::new,
            end: flate2::bufread::GzDecoder::into_inner,
            name: "gzip",
            magic: &[0x1f, 0x8b],
            points: None,
            out: 0,
        }),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(BUF, inner))?;
            let log = opts.zstd_window_log_max.clamp(10, ZSTD_WINDOW_LOG_MAX);
            d.window_log_max(log)?;
            Box::new(ZstdWindow { inner: d, log })
        }
        Compression::Bzip2 => Box::new(Members {
            dec: Some(bzip2::bufread::BzDecoder::new(BufReader::with_capacity(
                BUF, inner,
            ))),
            start: bzip2::bufread::BzDecoder::new,
            end: bzip2::bufread::BzDecoder::into_inner,
            name: "bzip2",
            magic: b"BZh",
            points: None,
            out: 0,
        }),
        Compression::Lzma => Box::new(LzmaAlone::new(BufReader::with_capacity(BUF, inner))?),
        Compression::Xz => Box::new(XzMulti::new(
            BufReader::with_capacity(BUF, inner),
            opts.xz_threads.max(1),
            opts.xz_memlimit_threading,
            0,
        )?),
    })
}

/// Where the decoder of a resumed import starts: a checkpoint's [`Decoded`], with the
/// window read back from the target.
pub(crate) struct Restart {
    /// Image bytes before the point.
    pub(crate) output: u64,
    /// Inside a gzip member: its state, and the window (the last `min(member, 32 KiB)`
    /// image bytes).
    pub(crate) inflate: Option<(InflatePoint, Vec<u8>)>,
    /// Inside an xz stream, at a block: the stream's check type.
    pub(crate) xz_check: Option<u8>,
}

/// Whether [`resumable`] decodes `c` (legacy lzma is one stream without boundaries).
pub(crate) fn resumes(c: Compression) -> bool {
    !matches!(c, Compression::Lzma)
}

/// A decoder for `c` that tells `points` where decoding can start again, for an import that
/// keeps checkpoints ([`crate::resume`]). `inner`'s first byte is at source offset
/// `offset`: the start of the stream (`at` is `None`), or a restart point an earlier run
/// recorded. gzip is decoded by [`inflate`] (in safe Rust; flate2 cannot tell where a
/// deflate block ends), the others by the same libraries as [`decoder`].
pub(crate) fn resumable(
    c: Compression,
    inner: Box<dyn Read + Send>,
    offset: u64,
    at: Option<Restart>,
    points: Points,
    opts: &DecompressOptions,
) -> io::Result<Box<dyn Read + Send>> {
    const BUF: usize = 256 << 10;
    let output = at.as_ref().map_or(0, |a| a.output);
    let tally = |inner| Tally {
        inner: BufReader::with_capacity(BUF, inner),
        pos: offset,
    };
    Ok(match c {
        Compression::Gzip => {
            let at = at.map(|a| inflate::Restart {
                output: a.output,
                inside: a.inflate,
            });
            Box::new(inflate::GzResumable::new(inner, offset, at, Some(points))?)
        }
        Compression::Zstd => {
            let mut dec = zstd::stream::raw::Decoder::new()?;
            let log = opts.zstd_window_log_max.clamp(10, ZSTD_WINDOW_LOG_MAX);
            dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(log))?;
            Box::new(ZstdWindow {
                inner: ZstdFrames {
                    inner: tally(inner),
                    dec,
                    open: false,
                    out: output,
                    points,
                },
                log,
            })
        }
        Compression::Bzip2 => Box::new(Members {
            dec: Some(bzip2::bufread::BzDecoder::new(tally(inner))),
            start: bzip2::bufread::BzDecoder::new,
            end: bzip2::bufread::BzDecoder::into_inner,
            name: "bzip2",
            magic: b"BZh",
            points: Some((points, |t: &Tally<_>| t.pos)),
            out: output,
        }),
        Compression::Xz => {
            let walker = xz::Walker::new(offset, output, at.and_then(|a| a.xz_check), points);
            Box::new(XzMulti::new(
                xz::Tap::new(BufReader::with_capacity(BUF, inner), walker),
                opts.xz_threads.max(1),
                opts.xz_memlimit_threading,
                output,
            )?)
        }
        Compression::Lzma => return Err(io::Error::other("legacy lzma cannot resume")),
    })
}

/// A buffered reader that knows the source offset of its next byte.
struct Tally<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Read for Tally<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Tally<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.pos += n as u64;
        self.inner.consume(n);
    }
}

/// zstd frames one after another, with a restart point after each (the decoder keeps
/// nothing from one frame to the next).
struct ZstdFrames<R> {
    inner: Tally<R>,
    dec: zstd::stream::raw::Decoder<'static>,
    /// Inside a frame.
    open: bool,
    /// Image bytes so far.
    out: u64,
    points: Points,
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.inner.fill_buf()?;
            if input.is_empty() {
                if self.open {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "zstd: the input ends inside a frame",
                    ));
                }
                return Ok(0);
            }
            let mut src = InBuffer::around(input);
            let mut dst = OutBuffer::around(&mut *buf);
            let hint = self.dec.run(&mut src, &mut dst)?;
            let (used, n) = (src.pos(), dst.pos());
            self.inner.consume(used);
            self.out += n as u64;
            if used > 0 || n > 0 {
                self.open = true;
            }
            if hint == 0 {
                // The frame ended (and all of its output is in `buf`): the next one starts
                // from nothing.
                self.open = false;
                self.points.push(Point {
                    input: self.inner.pos,
                    decoded: Decoded {
                        compression: "zstd".into(),
                        output: self.out,
                        inflate: None,
                        xz_check: None,
                    },
                });
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

/// Where a reader is in its source.
type Tell<R> = fn(&R) -> u64;

/// Concatenated gzip members or bzip2 streams, each decoded by a fresh decoder on the same
/// buffered input; after one, the input ends, another member starts, or zeros run to the
/// end (padding). Anything else is an error.
struct Members<R: BufRead, D: Read> {
    dec: Option<D>,
    start: fn(R) -> D,
    end: fn(D) -> R,
    name: &'static str,
    /// How a member starts.
    magic: &'static [u8],
    /// Restart points at member boundaries, with where the input is.
    points: Option<(Points, Tell<R>)>,
    /// Image bytes so far.
    out: u64,
}

impl<R: BufRead, D: Read> Read for Members<R, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(dec) = &mut self.dec else {
                return Ok(0);
            };
            let n = dec.read(buf)?;
            if n > 0 {
                self.out += n as u64;
                return Ok(n);
            }
            let mut inner = (self.end)(self.dec.take().expect("decoder present"));
            let next = inner.fill_buf()?;
            let n = next.len().min(self.magic.len());
            match next.first() {
                None => return Ok(0),
                Some(0) => {
                    zero_padding(&mut inner, self.name)?;
                    return Ok(0);
                }
                Some(_) if next[..n] == self.magic[..n] => {
                    if let Some((points, tell)) = &self.points {
                        points.push(Point {
                            input: tell(&inner),
                            decoded: Decoded {
                                compression: self.name.into(),
                                output: self.out,
                                inflate: None,
                                xz_check: None,
                            },
                        });
                    }
                    self.dec = Some((self.start)(inner));
                }
                Some(b) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: data after the end of the compressed stream (byte {b:#04x}, not another {} member or zero padding)",
                            self.name, self.name
                        ),
                    ));
                }
            }
        }
    }
}

/// Reads zeros to the end of the input; anything else there is an error.
fn zero_padding(r: &mut impl BufRead, name: &str) -> io::Result<()> {
    let mut zeros = 0u64;
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(());
        }
        if let Some(i) = avail.iter().position(|b| *b != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{name}: data after the end of the compressed stream (byte {:#04x} after {} zero bytes of padding)",
                    avail[i],
                    zeros + i as u64
                ),
            ));
        }
        let n = avail.len();
        zeros += n as u64;
        r.consume(n);
    }
}

/// Legacy lzma (LZMA_Alone: a 13-byte header, one stream, no concatenation, no padding).
/// The uncompressed size in the header, when there is one, is checked by liblzma; nothing
/// may follow the stream.
struct LzmaAlone<R: BufRead> {
    dec: liblzma::bufread::XzDecoder<R>,
    ended: bool,
}

impl<R: BufRead> LzmaAlone<R> {
    fn new(inner: R) -> io::Result<Self> {
        let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX).map_err(io::Error::other)?;
        Ok(Self {
            dec: liblzma::bufread::XzDecoder::new_stream(inner, stream),
            ended: false,
        })
    }
}

impl<R: BufRead> Read for LzmaAlone<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        let n = self.dec.read(buf)?;
        if n == 0 {
            self.ended = true;
            if !self.dec.get_mut().fill_buf()?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "lzma: data after the end of the compressed stream",
                ));
            }
        }
        Ok(n)
    }
}

/// A zstd decoder whose "window too large" error says what the limit is and how to raise
/// it (zstd's own message is "Frame requires too much memory for decoding").
struct ZstdWindow<R> {
    inner: R,
    log: u32,
}

impl<R: Read> Read for ZstdWindow<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.to_string().contains("too much memory") {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the zstd stream needs a window larger than {} MiB (made with zstd --long?); \
                         allow it with --zstd-window-log up to {ZSTD_WINDOW_LOG_MAX}",
                        (1u64 << self.log) >> 20
                    ),
                )
            } else {
                e
            }
        })
    }
}

/// Where a new xz stream starts: a restart point for [`xz::Tap`].
trait StreamStart {
    fn stream_start(&mut self, _output: u64) {}
}

impl<R> StreamStart for BufReader<R> {}

impl<R: BufRead> StreamStart for xz::Tap<R> {
    fn stream_start(&mut self, output: u64) {
        self.next_stream(output);
    }
}

/// Concatenated xz streams (with stream padding between them), each decoded by liblzma's
/// multi-threaded decoder.
struct XzMulti<R: BufRead> {
    dec: Option<liblzma::bufread::XzDecoder<R>>,
    threads: u32,
    memlimit: u64,
    /// Image bytes so far.
    out: u64,
}

impl<R: BufRead + StreamStart> XzMulti<R> {
    fn new(inner: R, threads: u32, memlimit: u64, out: u64) -> io::Result<Self> {
        let stream = Self::stream(threads, memlimit)?;
        Ok(Self {
            dec: Some(liblzma::bufread::XzDecoder::new_stream(inner, stream)),
            threads,
            memlimit,
            out,
        })
    }

    fn stream(threads: u32, memlimit: u64) -> io::Result<liblzma::stream::Stream> {
        liblzma::stream::MtStreamBuilder::new()
            .threads(threads)
            .memlimit_threading(memlimit)
            .memlimit_stop(u64::MAX)
            .decoder()
            .map_err(io::Error::other)
    }
}

impl<R: BufRead + StreamStart> Read for XzMulti<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(dec) = &mut self.dec else {
                return Ok(0);
            };
            let n = dec.read(buf)?;
            if n > 0 {
                self.out += n as u64;
                return Ok(n);
            }
            // End of one stream: skip stream padding (NULs), then expect another stream or
            // the end of the input.
            let mut inner = self.dec.take().map(|d| d.into_inner()).expect("decoder present");
            let mut padding = 0u64;
            loop {
                let avail = inner.fill_buf()?;
                if avail.is_empty() {
                    if !padding.is_multiple_of(4) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "xz: bad stream padding",
                        ));
                    }
                    return Ok(0);
                }
                let zeros = avail.iter().take_while(|b| **b == 0).count();
                if zeros == 0 {
                    break;
                }
                inner.consume(zeros);
                padding += zeros as u64;
            }
            let stream = Self::stream(self.threads, self.memlimit)?;
            inner.stream_start(self.out);
            self.dec = Some(liblzma::bufread::XzDecoder::new_stream(inner, stream));
        }
    }
}

#[cfg(test)]
mod tests;
