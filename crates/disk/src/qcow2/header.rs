//! The qcow2 header (v2 and v3) and its extensions, validated before anything is written.

use crate::{Error, Result};

/// Smallest and largest cluster sizes (as qemu: 512 B to 2 MiB).
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table accepted (qemu's limit: 32 MiB, i.e. 4 Mi entries).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest virtual size accepted (64 PiB; far beyond any real disk, small enough that
/// offset arithmetic cannot overflow).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 56;

/// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO: u32 = 0x0537_be77;

/// How compressed clusters are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (no zlib header), qcow2's default.
    Zlib,
    /// zstd frames.
    Zstd,
}

/// The parts of a qcow2 header that reading needs.
#[derive(Clone, Debug)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The guest-visible size in bytes.
    pub virtual_size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// File offset of the active L1 table.
    pub l1_offset: u64,
    /// Compression of compressed clusters.
    pub compression: CompressionType,
    /// Extended L2 entries (32 subclusters per cluster).
    pub extended_l2: bool,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes of one L2 entry (8, or 16 with extended L2).
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2 { 16 } else { 8 }
    }

    /// Guest bytes one L2 table maps.
    pub fn l2_span(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size() * self.cluster_size()
    }

    /// L1 entries needed to map the virtual size.
    pub fn l1_needed(&self) -> u64 {
        self.virtual_size.div_ceil(self.l2_span())
    }

    /// Parses and validates the header from the first bytes of the image (at least the
    /// first cluster when the image has one; the whole header and extensions must be
    /// there). Refuses backing files, external data files and encryption.
    pub fn parse(head: &[u8]) -> Result<Self> {
        if head.len() < 72 || &head[..4] != b"QFI\xfb" {
            return Err(bad("truncated header".into()));
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported {
                format: "qcow2",
                reason: format!("version {version} (only 2 and 3 are)"),
            });
        }
        let backing_offset = be64(head, 8);
        let backing_size = be32(head, 16);
        let cluster_bits = be32(head, 20);
        let virtual_size = be64(head, 24);
        let crypt = be32(head, 32);
        let l1_size = be32(head, 36);
        let l1_offset = be64(head, 40);

        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(format!("cluster_bits {cluster_bits} is out of range 9..=21")));
        }
        if backing_offset != 0 {
            // The name is only for the message: any offset, however absurd, is refused.
            let name = usize::try_from(backing_offset)
                .ok()
                .and_then(|s| Some(s..s.checked_add(backing_size.min(1023) as usize)?))
                .and_then(|r| head.get(r))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| "<beyond the header>".into());
            return Err(Error::refused(
                "qcow2",
                format!("it has a backing file ({name:?}); only self-contained images are imported"),
            ));
        }
        if crypt != 0 {
            return Err(Error::refused("qcow2", "it is encrypted"));
        }

        let (incompat, header_len, compression_byte) = if version == 3 {
            v3_fields(head, cluster_bits)?
        } else {
            (0u64, 72usize, 0u8)
        };
        let compression = features(incompat, compression_byte)?;
        check_extensions(head, header_len)?;

        let h = Header {
            version,
            cluster_bits,
            virtual_size,
            l1_size,
            l1_offset,
            compression,
            extended_l2: incompat & INCOMPAT_EXTL2 != 0,
        };
        h.check_l1()?;
        Ok(h)
    }

    /// The virtual size and the L1 table: not too large, large enough, cluster aligned.
    fn check_l1(&self) -> Result<()> {
        let (virtual_size, l1_size, l1_offset) = (self.virtual_size, self.l1_size, self.l1_offset);
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(bad(format!("virtual size {virtual_size} is too large")));
        }
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(bad(format!(
                "L1 table too large: {l1_size} entries ({} bytes, limit {MAX_L1_BYTES})",
                u64::from(l1_size) * 8
            )));
        }
        if u64::from(l1_size) < self.l1_needed() {
            return Err(bad(format!(
                "L1 table too small: {l1_size} entries for a virtual size of {virtual_size}"
            )));
        }
        if l1_size > 0 && (l1_offset == 0 || !l1_offset.is_multiple_of(self.cluster_size())) {
            return Err(bad(format!(
                "L1 table offset {l1_offset:#x} is not cluster aligned"
            )));
        }
        Ok(())
    }
}

/// The qcow2 header fields of version 3: the incompatible features, the header's length
/// and the compression type byte.
fn v3_fields(head: &[u8], cluster_bits: u32) -> Result<(u64, usize, u8)> {
    if head.len() < 104 {
        return Err(bad("truncated v3 header".into()));
    }
    let incompat = be64(head, 72);
    let refcount_order = be32(head, 96);
    if refcount_order > 6 {
        return Err(bad(format!("refcount_order {refcount_order} is out of range")));
    }
    let header_len = be32(head, 100) as usize;
    if header_len < 104 || header_len > head.len() || header_len as u64 > 1 << cluster_bits {
        return Err(bad(format!("header length {header_len} is out of range")));
    }
    let compression_byte = if header_len > 104 { head[104] } else { 0 };
    Ok((incompat, header_len, compression_byte))
}

/// Refuses external data files, corrupt images and unknown incompatible features; the
/// compression type.
fn features(incompat: u64, compression_byte: u8) -> Result<CompressionType> {
    if incompat & INCOMPAT_DATA_FILE != 0 {
        return Err(Error::refused(
            "qcow2",
            "its data is in an external data file; only self-contained images are imported",
        ));
    }
    if incompat & INCOMPAT_CORRUPT != 0 {
        return Err(Error::refused(
            "qcow2",
            "it is marked corrupt (run `qemu-img check -r all`)",
        ));
    }
    let unknown = incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(Error::Unsupported {
            format: "qcow2",
            reason: format!("unknown incompatible features {unknown:#x}"),
        });
    }
    if incompat & INCOMPAT_COMPRESSION != 0 {
        match compression_byte {
            0 => Ok(CompressionType::Zlib),
            1 => Ok(CompressionType::Zstd),
            t => Err(bad(format!("unknown compression type {t}"))),
        }
    } else if compression_byte != 0 {
        Err(bad("compression type set without its feature bit".into()))
    } else {
        Ok(CompressionType::Zlib)
    }
}

/// Header extensions (they follow the header, within the first cluster): refuses an
/// external data file and encryption.
fn check_extensions(head: &[u8], header_len: usize) -> Result<()> {
    let mut off = header_len;
    loop {
        let Some(ext) = head.get(off..off + 8) else {
            return Err(bad("header extensions run past the first cluster".into()));
        };
        let (kind, len) = (be32(ext, 0), be32(ext, 4) as usize);
        match kind {
            EXT_END => return Ok(()),
            EXT_DATA_FILE => {
                return Err(Error::refused("qcow2", "it names an external data file"));
            }
            EXT_CRYPTO => return Err(Error::refused("qcow2", "it is encrypted")),
            _ => {}
        }
        off += 8 + len.div_ceil(8) * 8;
    }
}

fn bad(r: String) -> Error {
    Error::invalid("qcow2", r)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid v3 header in a 64 KiB cluster.
    pub(crate) fn v3(virtual_size: u64, l1_size: u32) -> Vec<u8> {
        let mut h = vec![0u8; 65536];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&virtual_size.to_be_bytes());
        h[36..40].copy_from_slice(&l1_size.to_be_bytes());
        h[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_plain_header() {
        let h = Header::parse(&v3(1 << 30, 2)).unwrap();
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.l2_span(), 512 << 20);
        assert_eq!(h.l1_needed(), 2);
        assert_eq!(h.compression, CompressionType::Zlib);
    }

    #[test]
    fn refuses_what_it_must() {
        let mut b = v3(1 << 30, 2);
        b[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        b[16..20].copy_from_slice(&8u32.to_be_bytes());
        b[0x200..0x208].copy_from_slice(b"base.img");
        let e = Header::parse(&b).unwrap_err();
        assert!(e.to_string().contains("backing file (\"base.img\")"), "{e}");

        let mut b = v3(1 << 30, 2);
        b[72..80].copy_from_slice(&INCOMPAT_DATA_FILE.to_be_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().label(), "refused");

        let e = Header::parse(&v3(1 << 30, 0x0100_0000)).unwrap_err();
        assert!(e.to_string().contains("L1 table too large"), "{e}");
        let e = Header::parse(&v3(1 << 40, 2)).unwrap_err();
        assert!(e.to_string().contains("L1 table too small"), "{e}");
    }

    #[test]
    fn an_absurd_backing_file_offset_is_refused_without_overflow() {
        // Mutation test: offset u64::MAX used to overflow computing the name's range.
        for offset in [u64::MAX, u64::MAX - 8, 1 << 63, 0x1_0000] {
            let mut b = v3(1 << 30, 2);
            b[8..16].copy_from_slice(&offset.to_be_bytes());
            b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
            let e = Header::parse(&b).unwrap_err();
            assert_eq!(e.label(), "refused", "{e}");
            assert!(e.to_string().contains("<beyond the header>"), "{e}");
        }
    }
}
