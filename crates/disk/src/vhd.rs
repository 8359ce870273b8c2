//! Virtual PC / Hyper-V VHD (qemu's `vpc`) → raw, streamed in file order.
//!
//! ```text
//!  dynamic:  footer copy ("conectix") │ dynamic header ("cxsparse") │ BAT │
//!            blocks: [sector bitmap │ data] … │ footer
//!  fixed:    data │ footer ("conectix", disk type 2)
//! ```
//!
//! **Dynamic**: the footer copy at 0 and the dynamic header are read and checked, then the
//! BAT (one big-endian sector number per block, `0xffffffff` unallocated), all before the
//! target is opened; the allocated blocks are then copied in file order. As qemu, the sector
//! bitmaps are not consulted (a non-differencing disk's unmarked sectors hold zeros).
//! **Differencing** disks (type 4) are refused, naming their parent.
//!
//! **Fixed**: there is no magic at the start, so a fixed VHD is detected as raw (qemu
//! probes it as raw too). The raw copy ([`copy_raw`]) always holds the last 512 bytes
//! back; if they are a valid fixed-disk footer (cookie, checksum, type 2, size within the
//! data), they are dropped and the image is reported as `vhd` with the footer's size.
//! This works without knowing the total size (a compressed or piped fixed VHD too).
//!
//! **Size**, as qemu: the CHS geometry's size, except for creators that use the footer's
//! `current_size` (Hyper-V `win `, `qem2`, `d2v `, `CTXS`, `tap`) and for the maximum
//! geometry; at most 2040 GiB.

use std::io::Read;

use crate::seq::{Extent, MAX_TABLE_BYTES, SeqFile, be16, be32, be64, copy_extents};
use crate::source::read_full;
use crate::target::Target;
use crate::{Error, Result};

const FORMAT: &str = "vhd";
const FOOTER: usize = 512;
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
const UNALLOCATED: u32 = 0xffff_ffff;
/// The largest CHS geometry (65535 × 16 × 255 sectors).
const MAX_GEOMETRY: u64 = 65535 * 16 * 255;
/// qemu's limit: 2040 GiB.
const MAX_SECTORS: u64 = 0xff00_0000;
/// Size of one read in [`copy_raw`].
const CHUNK: usize = 1 << 20;

/// The footer fields conversion needs.
#[derive(Clone, Debug)]
struct Footer {
    disk_type: u32,
    data_offset: u64,
    virtual_size: u64,
}

/// VHD's checksum: the one's complement of the byte sum, the checksum field counted as 0.
fn checksum(b: &[u8], field: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |s, (_, x)| s.wrapping_add(u32::from(*x)));
    !sum
}

impl Footer {
    /// Parses and checks a 512-byte footer.
    fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < FOOTER || &b[..8] != b"conectix" {
            return Err(Error::invalid(FORMAT, "no footer (\"conectix\")"));
        }
        if checksum(&b[..FOOTER], 64) != be32(b, 64) {
            return Err(Error::invalid(FORMAT, "footer checksum mismatch"));
        }
        let creator = &b[28..32];
        let chs = u64::from(be16(b, 56)) * u64::from(b[58]) * u64::from(b[59]);
        let current_size = be64(b, 48);
        let use_chs = ![&b"win "[..], b"qem2", b"d2v ", b"CTXS", b"tap\0"].contains(&creator);
        let sectors = if !use_chs || chs == MAX_GEOMETRY {
            current_size / 512
        } else {
            chs
        };
        if sectors > MAX_SECTORS {
            return Err(Error::invalid(
                FORMAT,
                format!("virtual size of {sectors} sectors is over 2040 GiB"),
            ));
        }
        Ok(Self {
            disk_type: be32(b, 60),
            data_offset: be64(b, 16),
            virtual_size: sectors * 512,
        })
    }
}

/// A dynamic VHD being read from a stream.
pub(crate) struct VhdStream<'a> {
    file: SeqFile<'a>,
    virtual_size: u64,
    extents: Vec<Extent>,
}

impl<'a> VhdStream<'a> {
    /// Reads and checks the footer copy, the dynamic header and the BAT (before the target
    /// is opened).
    pub(crate) fn open(r: &'a mut dyn Read, budget: u64) -> Result<Self> {
        let mut file = SeqFile::new(r, FORMAT, 512, budget);
        let footer = Footer::parse(file.read_at(0, FOOTER, false)?)?;
        match footer.disk_type {
            TYPE_DYNAMIC | TYPE_DIFFERENCING => {}
            TYPE_FIXED => {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    reason: "a fixed disk whose data starts with a VHD footer".into(),
                });
            }
            t => return Err(Error::invalid(FORMAT, format!("unknown disk type {t}"))),
        }
        let bad = |what: String| Error::invalid(FORMAT, what);
        if footer.data_offset < FOOTER as u64 || footer.data_offset > MAX_TABLE_BYTES {
            return Err(bad(format!(
                "dynamic header offset {:#x} out of range",
                footer.data_offset
            )));
        }
        let d = file.read_at(footer.data_offset, 1024, false)?;
        if &d[..8] != b"cxsparse" {
            return Err(bad("no dynamic header (\"cxsparse\")".into()));
        }
        if checksum(d, 36) != be32(d, 36) {
            return Err(bad("dynamic header checksum mismatch".into()));
        }
        if footer.disk_type == TYPE_DIFFERENCING {
            let name: Vec<u16> = d[64..576]
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .take_while(|c| *c != 0)
                .collect();
            return Err(Error::refused(
                FORMAT,
                format!(
                    "it is a differencing disk of parent {:?}",
                    String::from_utf16_lossy(&name)
                ),
            ));
        }
        let table_offset = be64(d, 16);
        let max_entries = u64::from(be32(d, 28));
        let block_size = u64::from(be32(d, 32));
        if !block_size.is_power_of_two() || block_size < 512 {
            return Err(bad(format!("block size {block_size}")));
        }
        let vs = footer.virtual_size;
        let blocks = vs.div_ceil(block_size);
        if blocks > max_entries {
            return Err(bad(format!(
                "the BAT has {max_entries} entries, the virtual size {vs} needs {blocks}"
            )));
        }
        if blocks * 4 > MAX_TABLE_BYTES {
            return Err(bad(format!("a BAT of {blocks} entries is too large")));
        }
        let bitmap = (block_size / 512).div_ceil(8).div_ceil(512) * 512;
        let bat = file.read_at(table_offset, (blocks * 4) as usize, false)?;
        let mut extents = Vec::new();
        for (i, e) in bat.chunks_exact(4).enumerate() {
            let sector = be32(e, 0);
            if sector == UNALLOCATED {
                continue;
            }
            let guest = i as u64 * block_size;
            extents.push(Extent {
                host: u64::from(sector) * 512 + bitmap,
                guest,
                len: (vs - guest).min(block_size),
            });
        }
        Ok(Self {
            file,
            virtual_size: vs,
            extents,
        })
    }

    /// The guest-visible size.
    pub(crate) fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Writes the allocated blocks to `target` (unallocated blocks stay holes).
    pub(crate) fn convert(mut self, target: &mut Target) -> Result<()> {
        let extents = std::mem::take(&mut self.extents);
        copy_extents(&mut self.file, extents, target)
    }
}

/// What [`copy_raw`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawKind {
    /// Plain raw bytes.
    Raw,
    /// A fixed VHD: the footer was dropped.
    FixedVhd,
}

/// Copies a raw stream to the target from offset `base` (0, or where a resumed import
/// continues), holding the last 512 bytes back: when they are a fixed VHD's footer they
/// are not written. Returns the image size and what it was. `expected` (when the source
/// size was announced) must match the bytes read.
pub(crate) fn copy_raw(
    r: &mut dyn Read,
    target: &mut Target,
    expected: Option<u64>,
    base: u64,
) -> Result<(u64, RawKind)> {
    let mut buf = vec![0u8; CHUNK + FOOTER];
    let mut held = 0usize;
    let mut off = base;
    loop {
        let n = read_full(r, &mut buf[held..]).map_err(|e| Error::io("reading the image", e))?;
        let have = held + n;
        if have < buf.len() {
            // The end: `buf[..have]` is the rest, its last 512 bytes maybe a footer.
            let total = off + have as u64;
            if let Some(e) = expected
                && e != total
            {
                return Err(Error::invalid(
                    "raw",
                    format!("expected {e} bytes, got {total} (truncated source?)"),
                ));
            }
            if have >= FOOTER
                && let Some(vs) = fixed_footer(&buf[have - FOOTER..have], total - FOOTER as u64)
            {
                let data = vs.saturating_sub(off).min((have - FOOTER) as u64) as usize;
                target.write_at(off, &buf[..data])?;
                tracing::debug!(virtual_size = vs, "the raw image is a fixed VHD");
                return Ok((vs, RawKind::FixedVhd));
            }
            target.write_at(off, &buf[..have])?;
            return Ok((total, RawKind::Raw));
        }
        let data = have - FOOTER;
        target.write_at(off, &buf[..data])?;
        off += data as u64;
        buf.copy_within(data..have, 0);
        held = FOOTER;
    }
}

/// The virtual size if `b` is a valid fixed-disk footer for `data_len` bytes of data
/// (sector-aligned, the size within the data).
fn fixed_footer(b: &[u8], data_len: u64) -> Option<u64> {
    if &b[..8] != b"conectix" || !data_len.is_multiple_of(512) {
        return None;
    }
    let f = Footer::parse(b).ok()?;
    (f.disk_type == TYPE_FIXED && f.data_offset == u64::MAX && f.virtual_size <= data_len)
        .then_some(f.virtual_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A footer as qemu writes it for `size` bytes (creator `qem2`, so the size is used).
    pub(crate) fn footer(disk_type: u32, size: u64) -> Vec<u8> {
        let mut f = vec![0u8; FOOTER];
        f[..8].copy_from_slice(b"conectix");
        f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        f[28..32].copy_from_slice(b"qem2");
        f[48..56].copy_from_slice(&size.to_be_bytes());
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let c = checksum(&f, 64);
        f[64..68].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn fixed_footers() {
        assert_eq!(fixed_footer(&footer(2, 4096), 4096), Some(4096));
        assert_eq!(fixed_footer(&footer(2, 4096), 8192), Some(4096));
        assert_eq!(fixed_footer(&footer(2, 8192), 4096), None, "size beyond the data");
        assert_eq!(fixed_footer(&footer(3, 4096), 4096), None, "not fixed");
        assert_eq!(fixed_footer(&footer(2, 4096), 4000), None, "not sector aligned");
        let mut f = footer(2, 4096);
        f[100] ^= 1;
        assert_eq!(fixed_footer(&f, 4096), None, "checksum");
    }
}
