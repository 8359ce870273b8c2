//! VirtualBox VDI → raw, streamed in file order.
//!
//! ```text
//!   0       header: "<<< Oracle VM VirtualBox Disk Image >>>", signature 0xbeda107f (LE)
//!   bmap    block map: one u32 per block: block number in the data area,
//!           0xffffffff unallocated, 0xfffffffe zero
//!   data    blocks (1 MiB), in allocation order
//! ```
//!
//! Dynamic (`normal`) and static images are read alike: the header and the block map are
//! read and checked before the target is opened, then the allocated blocks are copied in
//! file order. As qemu: version 1.1 only, 512-byte sectors, 1 MiB blocks, no extra block
//! data; undo and differencing images (and any linked or parent UUID) are refused.

use std::io::Read;

use crate::qcow2::header::MAX_VIRTUAL_SIZE;
use crate::seq::{Extent, MAX_TABLE_BYTES, SeqFile, copy_extents, le32, le64};
use crate::target::Target;
use crate::{Error, Result};

const FORMAT: &str = "vdi";
const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;
const TYPE_DYNAMIC: u32 = 1;
const TYPE_STATIC: u32 = 2;
const UNALLOCATED: u32 = 0xffff_ffff;
const ZERO: u32 = 0xffff_fffe;
const BLOCK_SIZE: u32 = 1 << 20;

/// A VDI image being read from a stream.
pub(crate) struct VdiStream<'a> {
    file: SeqFile<'a>,
    virtual_size: u64,
    extents: Vec<Extent>,
}

/// Where the header places the block map and the data, and the disk's size, checked.
struct Layout {
    offset_bmap: u64,
    offset_data: u64,
    block_size: u32,
    blocks_in_image: u32,
    virtual_size: u64,
    /// Blocks the virtual size needs (entries of the block map read).
    blocks: u64,
}

impl Layout {
    /// Checks the header `h` (its first 512 bytes): a self-contained VDI 1.1 of 1 MiB
    /// blocks and 512-byte sectors.
    fn parse(h: &[u8]) -> Result<Self> {
        check_kind(h)?;
        let bad = |what: String| Error::invalid(FORMAT, what);
        let unsupported = |what: String| Error::Unsupported {
            format: FORMAT,
            reason: what,
        };
        let offset_bmap = u64::from(le32(h, 0x154));
        let offset_data = u64::from(le32(h, 0x158));
        let sector_size = le32(h, 0x168);
        let disk_size = le64(h, 0x170);
        let block_size = le32(h, 0x178);
        let block_extra = le32(h, 0x17c);
        let blocks_in_image = le32(h, 0x180);
        if sector_size != 512 {
            return Err(unsupported(format!("sector size {sector_size}")));
        }
        if block_size != BLOCK_SIZE {
            return Err(unsupported(format!("block size {block_size} (only 1 MiB)")));
        }
        if block_extra != 0 {
            return Err(unsupported(format!("{block_extra} extra bytes per block")));
        }
        if offset_bmap < 512 || !offset_bmap.is_multiple_of(512) || !offset_data.is_multiple_of(512) {
            return Err(bad(format!(
                "block map at {offset_bmap:#x} or data at {offset_data:#x} misplaced"
            )));
        }
        if disk_size > MAX_VIRTUAL_SIZE {
            return Err(bad(format!("disk size {disk_size} is out of range")));
        }
        // As qemu: odd sizes (VBoxManage convertfromraw) are rounded up to a sector.
        let virtual_size = disk_size.div_ceil(512) * 512;
        let blocks = virtual_size.div_ceil(u64::from(block_size));
        if blocks > u64::from(blocks_in_image) {
            return Err(bad(format!(
                "disk size {disk_size} needs {blocks} blocks, the image has {blocks_in_image}"
            )));
        }
        if blocks * 4 > MAX_TABLE_BYTES {
            return Err(bad(format!(
                "block map of {blocks} entries is too large (disk size {disk_size})"
            )));
        }
        Ok(Self {
            offset_bmap,
            offset_data,
            block_size,
            blocks_in_image,
            virtual_size,
            blocks,
        })
    }
}

/// Checks what kind of image the header `h` describes: VDI 1.1, normal (dynamic) or
/// static, without a linked or parent image.
fn check_kind(h: &[u8]) -> Result<()> {
    if le32(h, 0x40) != SIGNATURE {
        return Err(Error::invalid(FORMAT, "bad signature"));
    }
    let version = le32(h, 0x44);
    if version != VERSION_1_1 {
        return Err(Error::Unsupported {
            format: FORMAT,
            reason: format!(
                "version {}.{} (only 1.1 is read)",
                version >> 16,
                version & 0xffff
            ),
        });
    }
    let image_type = le32(h, 0x4c);
    if image_type != TYPE_DYNAMIC && image_type != TYPE_STATIC {
        return Err(Error::refused(
            FORMAT,
            format!(
                "image type {image_type} ({}): only normal (dynamic) and static images are \
                     self-contained",
                match image_type {
                    3 => "undo",
                    4 => "differencing",
                    _ => "unknown",
                }
            ),
        ));
    }
    if h[0x1a8..0x1c8].iter().any(|b| *b != 0) {
        return Err(Error::refused(
            FORMAT,
            "it has a linked or parent image (non-null link/parent UUID)",
        ));
    }
    Ok(())
}

impl<'a> VdiStream<'a> {
    /// Reads and checks the header and the block map (before the target is opened).
    pub(crate) fn open(r: &'a mut dyn Read, budget: u64) -> Result<Self> {
        let mut file = SeqFile::new(r, FORMAT, 512, budget);
        let h = file.read_at(0, 512, false)?.to_vec();
        let Layout {
            offset_bmap,
            offset_data,
            block_size,
            blocks_in_image,
            virtual_size,
            blocks,
        } = Layout::parse(&h)?;
        let bad = |what: String| Error::invalid(FORMAT, what);
        let bmap = file.read_at(offset_bmap, (blocks * 4) as usize, false)?;
        let mut extents = Vec::new();
        for (i, e) in bmap.chunks_exact(4).enumerate() {
            let e = le32(e, 0);
            if e == UNALLOCATED || e == ZERO {
                continue;
            }
            if e >= blocks_in_image {
                return Err(bad(format!(
                    "block map entry {i} ({e}) is out of range (the image has {blocks_in_image} blocks)"
                )));
            }
            let guest = i as u64 * u64::from(block_size);
            extents.push(Extent {
                host: offset_data + u64::from(e) * u64::from(block_size),
                guest,
                len: (virtual_size - guest).min(u64::from(block_size)),
            });
        }
        Ok(Self {
            file,
            virtual_size,
            extents,
        })
    }

    /// The guest-visible size.
    pub(crate) fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Writes the allocated blocks to `target` (unallocated and zero blocks stay holes).
    pub(crate) fn convert(mut self, target: &mut Target) -> Result<()> {
        let extents = std::mem::take(&mut self.extents);
        copy_extents(&mut self.file, extents, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dynamic VDI header for `disk_size` bytes in `blocks` blocks.
    fn header(disk_size: u64, blocks: u32) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[0x40..0x44].copy_from_slice(&SIGNATURE.to_le_bytes());
        h[0x44..0x48].copy_from_slice(&VERSION_1_1.to_le_bytes());
        h[0x4c..0x50].copy_from_slice(&TYPE_DYNAMIC.to_le_bytes());
        h[0x154..0x158].copy_from_slice(&512u32.to_le_bytes());
        h[0x158..0x15c].copy_from_slice(&(1u32 << 20).to_le_bytes());
        h[0x168..0x16c].copy_from_slice(&512u32.to_le_bytes());
        h[0x170..0x178].copy_from_slice(&disk_size.to_le_bytes());
        h[0x178..0x17c].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        h[0x180..0x184].copy_from_slice(&blocks.to_le_bytes());
        h
    }

    #[test]
    fn reads_a_header_and_block_map() {
        let mut f = header(3 << 20, 3);
        for e in [0u32, UNALLOCATED, ZERO] {
            f.extend(e.to_le_bytes());
        }
        let mut r = &f[..];
        let v = VdiStream::open(&mut r, 1 << 20).unwrap();
        assert_eq!(v.virtual_size(), 3 << 20);
        assert_eq!(v.extents.len(), 1);
    }

    #[test]
    fn an_absurd_disk_size_is_invalid() {
        // Mutation test: a disk size near u64::MAX used to overflow rounding up to a sector.
        for size in [u64::MAX, u64::MAX - 511, MAX_VIRTUAL_SIZE + 1] {
            let f = header(size, u32::MAX);
            let mut r = &f[..];
            let e = VdiStream::open(&mut r, 1 << 20).err().unwrap();
            assert_eq!(e.label(), "invalid_image", "{e}");
            assert!(e.to_string().contains("out of range"), "{e}");
        }
    }
}
