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
    /// zstd (one or more frames).
    Zstd,
    /// bzip2.
    Bzip2,
}

impl Compression {
    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
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

/// What the head of a stream looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// A compression layer to peel.
    Compressed(Compression),
    /// A tar archive (ustar or GNU).
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
    } else if at(0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        Detected::Compressed(Compression::Zstd)
    } else if at(0, b"BZh") && head.get(3).is_some_and(|c| (b'1'..=b'9').contains(c)) {
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
    } else if at(0x8001, b"CD001") {
        Detected::Disk(DiskFormat::Iso)
    } else {
        Detected::Disk(DiskFormat::Raw)
    }
}

/// The content size announced by the first zstd frame header, if it has one.
pub fn zstd_content_size(head: &[u8]) -> Option<u64> {
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
        assert_eq!(detect(b"BZhx"), Detected::Disk(DiskFormat::Raw));
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
