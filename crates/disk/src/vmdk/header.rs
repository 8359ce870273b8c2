//! The sparse extent header ("KDMV").

use super::{COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FORMAT, MAX_GRAIN_SECTORS, SECTOR, bad};
use crate::qcow2::header::MAX_VIRTUAL_SIZE;
use crate::seq::{MAX_TABLE_BYTES, le16, le32, le64};
use crate::{Error, Result};

/// The sparse extent header fields conversion needs (little-endian on disk).
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub(super) flags: u32,
    /// Virtual size in sectors.
    pub(super) capacity: u64,
    /// Grain size in sectors.
    pub(super) grain: u64,
    pub(super) gtes_per_gt: u64,
    pub(super) rgd_offset: u64,
    pub(super) gd_offset: u64,
    /// Sectors before the first grain.
    pub(super) overhead: u64,
}

impl Header {
    pub(super) fn parse(h: &[u8]) -> Result<Self> {
        let version = le32(h, 4);
        let flags = le32(h, 8);
        let hdr = Self {
            flags,
            capacity: le64(h, 12),
            grain: le64(h, 20),
            gtes_per_gt: u64::from(le32(h, 44)),
            rgd_offset: le64(h, 48),
            gd_offset: le64(h, 56),
            overhead: le64(h, 64),
        };
        if !(1..=3).contains(&version) {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: format!("sparse extent version {version}"),
            });
        }
        if !hdr.grain.is_power_of_two() || hdr.grain > MAX_GRAIN_SECTORS {
            return Err(bad(format!("grain size of {} sectors", hdr.grain)));
        }
        if !(1..=512).contains(&hdr.gtes_per_gt) {
            return Err(bad(format!("{} entries per grain table", hdr.gtes_per_gt)));
        }
        if hdr.capacity > MAX_VIRTUAL_SIZE / SECTOR || hdr.grains() > u64::from(u32::MAX) {
            return Err(bad(format!("capacity of {} sectors", hdr.capacity)));
        }
        if hdr.gd_entries() * 4 > MAX_TABLE_BYTES {
            return Err(bad(format!(
                "a grain directory of {} entries is too large",
                hdr.gd_entries()
            )));
        }
        if flags & FLAG_COMPRESSED != 0 {
            let algorithm = le16(h, 77);
            if algorithm != COMPRESSION_DEFLATE {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    reason: format!("compression algorithm {algorithm}"),
                });
            }
            if flags & FLAG_MARKERS == 0 {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    reason: "compressed grains without grain markers".into(),
                });
            }
        }
        Ok(hdr)
    }

    pub(super) fn virtual_size(&self) -> u64 {
        self.capacity * SECTOR
    }

    pub(super) fn grain_bytes(&self) -> u64 {
        self.grain * SECTOR
    }

    pub(super) fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain)
    }

    pub(super) fn gd_entries(&self) -> u64 {
        self.grains().div_ceil(self.gtes_per_gt)
    }
}
