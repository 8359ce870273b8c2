//! Format detection by magic bytes, on a stream: the head is read once, inspected, and
//! replayed in front of the rest ([`Prefixed`]).

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use crate::source::read_full;
use crate::{Error, Result};

/// How many bytes are inspected (covers the ISO 9660 descriptor at 0x8001).
pub const HEAD_LEN: usize = 0x8800;

/// A compression layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (one or more members).
    Gzip,
    /// xz (multi-block streams decoded on several threads).
    Xz,
    /// zstd (one or more frames, skippable frames among them).
    Zstd,
    /// bzip2.
    Bzip2,
    /// Legacy lzma (LZMA_Alone, `.lzma`: `xz --format=lzma`, `lzma`).
    Lzma,
}

impl Compression {
    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
        }
    }
}

/// The disk format after compressions and archives are peeled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw bytes.
    Raw,
    /// ISO 9660 (imported as raw).
    Iso,
    /// qcow2 (v2 or v3).
    Qcow2,
    /// VMware VMDK (monolithicSparse, streamOptimized).
    Vmdk,
    /// Virtual PC / Hyper-V VHD (qemu's `vpc`). Detected by the footer copy at 0 of a
    /// dynamic disk; a fixed VHD shows as raw and is recognised by its footer at the end.
    Vhd,
    /// Hyper-V VHDX.
    Vhdx,
    /// VirtualBox VDI.
    Vdi,
    /// qcow version 1 (recognised only).
    Qcow1,
}

impl DiskFormat {
    /// The name used in messages and for `--format`.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Iso => "iso",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Vhdx => "vhdx",
            DiskFormat::Vdi => "vdi",
            DiskFormat::Qcow1 => "qcow",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DiskFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "raw" | "img" => DiskFormat::Raw,
            "iso" => DiskFormat::Iso,
            "qcow2" => DiskFormat::Qcow2,
            "vmdk" => DiskFormat::Vmdk,
            "vhd" | "vpc" => DiskFormat::Vhd,
            "vhdx" => DiskFormat::Vhdx,
            "vdi" => DiskFormat::Vdi,
            other => {
                return Err(Error::InvalidArgument {
                    field: "format",
                    value: other.to_string(),
                    reason: "supported formats are raw, iso, qcow2, vmdk, vhd (vpc), vhdx and vdi".into(),
                });
            }
        })
    }
}

/// What the head of a stream looks like. A recognised magic is never taken back: a head
/// that starts like a container but does not parse is that container, and its reader
/// reports what is wrong (importing it as raw would silently give a useless disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// A compression layer to peel.
    Compressed(Compression),
    /// A tar archive (ustar, GNU, pax, or pre-POSIX recognised by its header checksum).
    Tar,
    /// A disk format.
    Disk(DiskFormat),
}

/// Classifies a stream by its first bytes (`head` may be shorter than [`HEAD_LEN`]).
pub fn detect(head: &[u8]) -> Detected {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, &[0x1f, 0x8b]) {
        Detected::Compressed(Compression::Gzip)
    } else if at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Detected::Compressed(Compression::Xz)
    } else if is_zstd(head) {
        Detected::Compressed(Compression::Zstd)
    } else if at(0, b"BZh") {
        // The level digit is checked by the decoder: a bad one is a broken bzip2 stream.
        Detected::Compressed(Compression::Bzip2)
    } else if at(0, b"QFI\xfb") {
        match head
            .get(4..8)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        {
            Some(1) => Detected::Disk(DiskFormat::Qcow1),
            _ => Detected::Disk(DiskFormat::Qcow2),
        }
    } else if at(257, b"ustar") {
        Detected::Tar
    } else if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") || at(0, b"COWD") {
        Detected::Disk(DiskFormat::Vmdk)
    } else if at(0, b"conectix") {
        Detected::Disk(DiskFormat::Vhd)
    } else if at(0, b"vhdxfile") {
        Detected::Disk(DiskFormat::Vhdx)
    } else if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        Detected::Disk(DiskFormat::Vdi)
    } else if is_v7_tar(head) {
        Detected::Tar
    } else if is_lzma_alone(head) {
        Detected::Compressed(Compression::Lzma)
    } else if at(0x8001, b"CD001") {
        Detected::Disk(DiskFormat::Iso)
    } else {
        Detected::Disk(DiskFormat::Raw)
    }
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    let v = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
}

/// zstd: a frame (`28 b5 2f fd`), a skippable frame (`5? 2a 4d 18`, what pzstd writes
/// before each frame), or a legacy frame of zstd 0.1–0.7 (not decoded: an error, not raw).
fn is_zstd(head: &[u8]) -> bool {
    le32(head, 0).is_some_and(|m| {
        m == ZSTD_MAGIC
            || m & 0xffff_fff0 == ZSTD_SKIPPABLE
            || m == 0xfd2f_b51e
            || (0xfd2f_b522..=0xfd2f_b527).contains(&m)
    })
}

const ZSTD_MAGIC: u32 = 0xfd2f_b528;
const ZSTD_SKIPPABLE: u32 = 0x184d_2a50;

/// A pre-POSIX (v7) tar: no magic, but its first header's checksum holds.
fn is_v7_tar(head: &[u8]) -> bool {
    let Some(h) = head.get(..512) else {
        return false;
    };
    if h[0] == 0 || !(h[156] == 0 || (b'0'..=b'7').contains(&h[156])) {
        return false;
    }
    // The checksum field: octal digits (after spaces), then NUL and/or space.
    let field = &h[148..156];
    let start = field.iter().take_while(|c| **c == b' ').count();
    let digits = &field[start..];
    let n = digits.iter().take_while(|c| (b'0'..=b'7').contains(*c)).count();
    n > 0 && digits[n..].iter().all(|c| *c == 0 || *c == b' ') && crate::tar::checksum_holds(h) == Some(true)
}

/// Legacy lzma has no magic; its 13-byte header is recognised as liblzma's `.lzma`
/// detection does (properties byte lc/lp/pb in range, a dictionary size of 2^n or
/// 2^n + 2^(n-1) from 4 KiB, an uncompressed size unknown or under 256 GiB), and the range
/// coder's first byte, always 0.
fn is_lzma_alone(head: &[u8]) -> bool {
    if head.len() < 14 {
        return false;
    }
    let props = head[0];
    let (lc, lp, pb) = (props % 9, (props / 9) % 5, props / 45);
    if props > 224 || lc + lp > 4 || pb > 4 {
        return false;
    }
    let dict = le32(head, 1).unwrap_or(0);
    let dict_ok = dict == u32::MAX || {
        let n = dict.checked_ilog2().unwrap_or(0);
        dict >= 4096 && (dict == 1 << n || (n > 0 && dict == (1 << n) | (1 << (n - 1))))
    };
    let size = u64::from_le_bytes(head[5..13].try_into().expect("8 bytes"));
    dict_ok && (size == u64::MAX || size < 1 << 38) && head[13] == 0
}

/// The uncompressed size a legacy lzma header declares, if it does.
pub fn lzma_size(head: &[u8]) -> Option<u64> {
    let size = u64::from_le_bytes(head.get(5..13)?.try_into().ok()?);
    (size != u64::MAX).then_some(size)
}

/// The content size announced by the first zstd frame header (after any skippable frames
/// within `head`), if it has one.
pub fn zstd_content_size(head: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    while le32(head, at)? & 0xffff_fff0 == ZSTD_SKIPPABLE {
        let len = le32(head, at + 4)? as usize;
        at = at.checked_add(8 + len)?;
    }
    if le32(head, at)? != ZSTD_MAGIC {
        return None;
    }
    frame_content_size(&head[at..])
}

/// The content size in the frame header at the start of `head`.
fn frame_content_size(head: &[u8]) -> Option<u64> {
    let fhd = *head.get(4)?;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let dict_flag = fhd & 0x03;
    let mut pos = 5 + usize::from(!single_segment);
    pos += [0, 1, 2, 4][usize::from(dict_flag)];
    let len = match (fcs_flag, single_segment) {
        (0, false) => return None,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let b = head.get(pos..pos + len)?;
    let mut v = 0u64;
    for (i, x) in b.iter().enumerate() {
        v |= u64::from(*x) << (8 * i);
    }
    Some(if len == 2 { v + 256 } else { v })
}

/// A reader whose first bytes were read ahead for inspection and are replayed first.
pub struct Prefixed<R> {
    head: Vec<u8>,
    pos: usize,
    inner: R,
}

impl<R: Read> Prefixed<R> {
    /// Reads up to `len` bytes ahead (fewer only at the end of the input).
    pub fn new(mut inner: R, len: usize) -> io::Result<Self> {
        let mut head = vec![0u8; len];
        let n = read_full(&mut inner, &mut head)?;
        head.truncate(n);
        Ok(Self { head, pos: 0, inner })
    }

    /// The bytes read ahead.
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                self.head = Vec::new();
                self.pos = 0;
            }
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Detected::Compressed(Compression::Gzip));
        assert_eq!(detect(b"BZh9"), Detected::Compressed(Compression::Bzip2));
        // A bad level digit is a broken bzip2 stream, not raw data.
        assert_eq!(detect(b"BZhx"), Detected::Compressed(Compression::Bzip2));
        let zstd = Detected::Compressed(Compression::Zstd);
        assert_eq!(detect(&[0x5a, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]), zstd, "skippable");
        assert_eq!(detect(&[0x27, 0xb5, 0x2f, 0xfd]), zstd, "legacy v0.7");
        assert_eq!(detect(&[0x29, 0xb5, 0x2f, 0xfd]), Detected::Disk(DiskFormat::Raw));
        let lzma = [
            0x5d, 0, 0, 0x80, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
        ];
        assert_eq!(detect(&lzma), Detected::Compressed(Compression::Lzma));
        let mut not = lzma;
        not[3] = 0x70; // 7 MiB: not 2^n or 2^n + 2^(n-1)
        assert_eq!(detect(&not), Detected::Disk(DiskFormat::Raw));
        let mut not = lzma;
        not[13] = 1;
        assert_eq!(detect(&not), Detected::Disk(DiskFormat::Raw));
        let mut dict_12m = lzma;
        dict_12m[3] = 0xc0;
        assert_eq!(detect(&dict_12m), Detected::Compressed(Compression::Lzma));
        // Boot sectors and file systems do not look like lzma.
        assert_eq!(detect(&[0u8; 512]), Detected::Disk(DiskFormat::Raw));
        let mbr = [
            0x33, 0xc0, 0x8e, 0xd0, 0xbc, 0, 0x7c, 0x8e, 0xc0, 0x8e, 0xd8, 0xbe, 0, 0x7c,
        ];
        assert_eq!(detect(&mbr), Detected::Disk(DiskFormat::Raw));
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03"), Detected::Disk(DiskFormat::Qcow2));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&tar), Detected::Tar);
        let mut iso = vec![0u8; HEAD_LEN];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(detect(&iso), Detected::Disk(DiskFormat::Iso));
        assert_eq!(detect(&[]), Detected::Disk(DiskFormat::Raw));
        assert_eq!(detect(b"KDMV\x01"), Detected::Disk(DiskFormat::Vmdk));
        assert_eq!(detect(b"conectix"), Detected::Disk(DiskFormat::Vhd));
        assert_eq!(detect(b"vhdxfile"), Detected::Disk(DiskFormat::Vhdx));
        let mut vdi = vec![0u8; 0x44];
        vdi[0x40..].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert_eq!(detect(&vdi), Detected::Disk(DiskFormat::Vdi));
        assert_eq!("vpc".parse::<DiskFormat>().unwrap(), DiskFormat::Vhd);
    }

    #[test]
    fn zstd_frame_size() {
        // FHD 0x20: single segment, 1-byte FCS.
        assert_eq!(zstd_content_size(&[0x28, 0xb5, 0x2f, 0xfd, 0x20, 42]), Some(42));
        // FHD 0x60: single segment, 2-byte FCS (+256).
        assert_eq!(
            zstd_content_size(&[0x28, 0xb5, 0x2f, 0xfd, 0x60, 1, 0]),
            Some(257)
        );
        // FHD 0x80 with window byte: 4-byte FCS.
        assert_eq!(
            zstd_content_size(&[0x28, 0xb5, 0x2f, 0xfd, 0x80, 0x50, 0, 0, 1, 0]),
            Some(65536)
        );
        assert_eq!(zstd_content_size(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x50]), None);
        // Behind skippable frames.
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9];
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 42];
        assert_eq!(
            zstd_content_size(&[&skippable[..], &skippable, &frame].concat()),
            Some(42)
        );
        assert_eq!(zstd_content_size(&skippable[..9]), None);
    }

    #[test]
    fn prefixed_replays() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut p = Prefixed::new(&data[..], 10).unwrap();
        assert_eq!(p.head(), &data[..10]);
        let mut out = Vec::new();
        p.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
