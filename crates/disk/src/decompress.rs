//! Decompressing readers: gzip (zlib-rs), xz (liblzma's multi-threaded decoder: blocks of
//! a multi-block stream are decoded in parallel), zstd, bzip2 and legacy lzma
//! (LZMA_Alone, `.lzma`). Concatenated members, frames and streams are all decoded, as the
//! command-line tools do, and so are zstd's skippable frames (pzstd writes one before each
//! frame). gzip and bzip2 may be followed by zeros up to the end of the input: the padding
//! a tape's blocking adds (`tar -z` to a device pads the compressed stream to its record).

use std::io::{self, BufRead, BufReader, Read};

use crate::detect::Compression;

/// Decoder settings.
#[derive(Clone, Debug)]
pub struct DecompressOptions {
    /// Threads for xz (default: the available parallelism).
    pub xz_threads: u32,
    /// Memory the xz decoder may use before it falls back to fewer threads
    /// (default 256 MiB).
    pub xz_memlimit_threading: u64,
    /// Largest zstd window, as a power of two (default 27: 128 MiB, the zstd CLI's own
    /// limit). A frame that asks for more (`zstd --long=31` makes 2 GiB ones) is refused
    /// with an error naming this limit, so a small file cannot make the decoder hold
    /// gigabytes.
    pub zstd_window_log_max: u32,
}

/// zstd's default window limit for decoding (128 MiB).
pub const ZSTD_WINDOW_LOG_DEFAULT: u32 = 27;
/// The largest window zstd can decode (2 GiB).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 31;

impl Default for DecompressOptions {
    fn default() -> Self {
        Self {
            xz_threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            xz_memlimit_threading: 256 << 20,
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
        }),
        Compression::Lzma => Box::new(LzmaAlone::new(BufReader::with_capacity(BUF, inner))?),
        Compression::Xz => Box::new(XzMulti::new(
            BufReader::with_capacity(BUF, inner),
            opts.xz_threads.max(1),
            opts.xz_memlimit_threading,
        )?),
    })
}

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
                Some(_) if next[..n] == self.magic[..n] => self.dec = Some((self.start)(inner)),
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

/// Concatenated xz streams (with stream padding between them), each decoded by liblzma's
/// multi-threaded decoder.
struct XzMulti<R: BufRead> {
    dec: Option<liblzma::bufread::XzDecoder<R>>,
    threads: u32,
    memlimit: u64,
}

impl<R: BufRead> XzMulti<R> {
    fn new(inner: R, threads: u32, memlimit: u64) -> io::Result<Self> {
        let stream = Self::stream(threads, memlimit)?;
        Ok(Self {
            dec: Some(liblzma::bufread::XzDecoder::new_stream(inner, stream)),
            threads,
            memlimit,
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

impl<R: BufRead> Read for XzMulti<R> {
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
            self.dec = Some(liblzma::bufread::XzDecoder::new_stream(inner, stream));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(c: Compression, compressed: Vec<u8>, expect: &[u8]) {
        let mut out = Vec::new();
        decoder(c, Box::new(io::Cursor::new(compressed)), &Default::default())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, expect, "{c:?}");
    }

    #[test]
    fn concatenated_members_and_streams() {
        let data = b"hello world ".repeat(1000);
        let gz = |d: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let xz = |d: &[u8]| {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let both = [data.as_slice(), data.as_slice()].concat();
        roundtrip(Compression::Gzip, [gz(&data), gz(&data)].concat(), &both);
        roundtrip(
            Compression::Xz,
            [xz(&data), vec![0; 4], xz(&data)].concat(),
            &both,
        );
        let z = zstd::encode_all(&data[..], 1).unwrap();
        roundtrip(Compression::Zstd, [z.clone(), z].concat(), &both);
    }

    #[test]
    fn zero_padding_and_legacy_lzma() {
        let data = b"padded ".repeat(1000);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let gz = e.finish().unwrap();
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(&data).unwrap();
        let bz = e.finish().unwrap();
        let opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
        let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
        let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        e.write_all(&data).unwrap();
        let lzma = e.finish().unwrap();
        let both = [data.as_slice(), data.as_slice()].concat();
        roundtrip(Compression::Gzip, [gz.clone(), vec![0; 10_000]].concat(), &data);
        roundtrip(
            Compression::Gzip,
            [gz.clone(), gz.clone(), vec![0; 1]].concat(),
            &both,
        );
        roundtrip(
            Compression::Bzip2,
            [bz.clone(), bz.clone(), vec![0; 512]].concat(),
            &both,
        );
        roundtrip(Compression::Lzma, lzma.clone(), &data);
        let fails = |c: Compression, input: Vec<u8>| {
            let mut out = Vec::new();
            decoder(c, Box::new(io::Cursor::new(input)), &Default::default())
                .unwrap()
                .read_to_end(&mut out)
                .unwrap_err()
                .to_string()
        };
        for (c, z) in [(Compression::Gzip, &gz), (Compression::Bzip2, &bz)] {
            let msg = fails(c, [z.clone(), vec![0; 10], b"x".to_vec()].concat());
            assert!(msg.contains("after 10 zero bytes"), "{msg}");
            let msg = fails(c, [z.clone(), b"garbage".to_vec()].concat());
            assert!(msg.contains("data after the end"), "{msg}");
        }
        // Nothing may follow a legacy lzma stream (it has no padding).
        let msg = fails(Compression::Lzma, [lzma, vec![0; 4]].concat());
        assert!(msg.contains("data after the end"), "{msg}");
    }

    fn decode(compressed: Vec<u8>, opts: &DecompressOptions) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(Compression::Zstd, Box::new(io::Cursor::new(compressed)), opts)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn zstd_windows_above_the_limit_are_refused_by_name() {
        // A frame made with a 256 MiB window (as `zstd --long=28` makes), no content size.
        let data = b"long window ".repeat(10_000);
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        e.window_log(28).unwrap();
        e.long_distance_matching(true).unwrap();
        e.include_contentsize(false).unwrap();
        e.write_all(&data).unwrap();
        let z = e.finish().unwrap();
        let err = decode(z.clone(), &DecompressOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let msg = err.to_string();
        assert!(
            msg.contains("128 MiB") && msg.contains("--zstd-window-log"),
            "{msg}"
        );
        let opts = DecompressOptions {
            zstd_window_log_max: 28,
            ..Default::default()
        };
        assert_eq!(decode(z, &opts).unwrap(), data);
        // The fuzzer's 10 bytes: a frame header declaring a 2 GiB window.
        let header = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa8, 0x5a, 0x68, 0x00, 0x27];
        let msg = decode(header, &DecompressOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--zstd-window-log"), "{msg}");
    }
}
