//! VMware VMDK (hosted sparse extent, "KDMV") → raw, streamed in file order.
//!
//! ```text
//!  monolithicSparse:  header │ descriptor │ rGD │ rGTs │ GD │ GTs │ grains …
//!  streamOptimized:   header │ descriptor │ [marker lba size │ deflate] … │ (GT, GD,
//!                     footer markers) │ end-of-stream marker
//! ```
//!
//! The header and the embedded descriptor are read and checked first, before the target
//! is opened. The descriptor must describe exactly this file: `createType`
//! `monolithicSparse` or `streamOptimized`, one `SPARSE` extent, no parent; delta disks (a
//! `parentCID`) are refused.
//!
//! **Descriptor files** (`monolithicFlat`, `twoGbMaxExtentFlat`, `twoGbMaxExtentSparse`,
//! `vmfs`) are read where their extents are at hand ([`ExtentFiles`]): beside a local
//! descriptor file (regular files in its directory or below, never through `..`, an
//! absolute path or a link leading out of it), or as the members after the descriptor in
//! the same tar or OVA (in any order). Each extent file is read once, front to back: `FLAT`
//! and `VMFS` extents are copied from their offset, `SPARSE` ones converted as below; every
//! extent is written where the descriptor places it. Only `RW` extents are read (qemu skips
//! the others, which would shift the disk); anywhere else (stdin, HTTP, a compressed
//! descriptor) a descriptor file is **refused**, naming its extents.
//!
//! - **Grain markers** (streamOptimized, flag bit 17): every grain carries its guest LBA,
//!   so the file is walked from the first grain to the end-of-stream marker and each grain
//!   is inflated (zlib) and written where it says; grain tables, the grain directory and
//!   the footer are skipped. Where the grain directory lies (at the front as qemu writes
//!   it, or at the end, `gdOffset = GD_AT_END`, as VMware does) does not matter. qemu-img
//!   writes no end-of-stream marker when its last grain fills the file to its end (an
//!   incompressible last grain, a blank disk): the file may then end at a marker boundary
//!   if the grain tables at its front (read before the walk) map no grain beyond it;
//!   otherwise it is truncated. Each marker is a safe point for a later run
//!   ([`crate::resume`]): every grain before it is written and the walk never looks back,
//!   so that run reads the front again by ranges ([`Resume`]) and walks on from there.
//! - **Tables** (monolithicSparse): as qcow2, pending structures are handled in file
//!   order — grain directory, grain tables, grains — and data found behind the stream goes
//!   through the reorder buffer. The directory read is the earlier of the two copies (the
//!   redundant one, in qemu's and VMware's layout, so the other copy is skipped). Pending
//!   grains cost 8 bytes each (a 32-bit sector and a 32-bit grain number), at most
//!   `reorder_budget / 8` of them (qemu puts every grain table before the first grain).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Read;

use crate::qcow2::header::MAX_VIRTUAL_SIZE;
use crate::seq::{MAX_TABLE_BYTES, SeqFile, le32, le64};
use crate::target::Target;
use crate::{Error, Result};

mod descriptor;
mod extents;
mod header;

use descriptor::{Descriptor, ExtentKind};
pub(crate) use extents::{ExtentFile, ExtentFiles, LocalExtents};
use extents::{Split, short_extent};
use header::Header;

const FORMAT: &str = "vmdk";
const SECTOR: u64 = 512;
/// `gdOffset` of a stream whose grain directory is found through the footer.
const GD_AT_END: u64 = u64::MAX;
const FLAG_REDUNDANT_GT: u32 = 1 << 1;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESSION_DEFLATE: u16 = 1;
/// Largest grain accepted (VMware always uses 64 KiB).
const MAX_GRAIN_SECTORS: u64 = 32768;
/// Largest descriptor read (sectors).
const MAX_DESCRIPTOR_SECTORS: u64 = 2048;
/// A grain-table entry meaning "zeros" when [`FLAG_ZERO_GRAIN`] is set.
const GTE_ZEROED: u32 = 1;
/// Metadata marker types.
const MARKER_EOS: u32 = 0;
const MARKER_FOOTER: u32 = 3;

fn bad(what: impl Into<String>) -> Error {
    Error::invalid(FORMAT, what)
}

/// A VMDK from the stream: a sparse extent, or a descriptor file whose extents are read
/// beside it.
pub(crate) enum Vmdk<'a> {
    /// monolithicSparse, streamOptimized.
    Sparse(Box<VmdkStream<'a>>),
    /// A descriptor file and its extents.
    Split(Split),
}

impl<'a> Vmdk<'a> {
    /// Reads and checks the header and the embedded descriptor, or the descriptor file and
    /// (where `extents` knows them before anything is written) its extent files. Without
    /// `extents`, a descriptor file is refused.
    pub(crate) fn open(
        r: &'a mut dyn Read,
        budget: u64,
        extents: Option<Box<dyn ExtentFiles>>,
    ) -> Result<Self> {
        let mut file = SeqFile::new(r, FORMAT, 512, budget);
        let head = file.read_at(0, SECTOR as usize, true)?;
        if !head.starts_with(b"# Disk DescriptorFile") {
            return VmdkStream::from_file(file, budget, true).map(|s| Vmdk::Sparse(Box::new(s)));
        }
        let max = (MAX_DESCRIPTOR_SECTORS * SECTOR) as usize;
        let text = file.read_at(0, max, true)?;
        let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
        let too_large = end == max;
        let d = Descriptor::parse(&String::from_utf8_lossy(&text[..end]));
        let Some(mut extents) = extents else {
            return Err(Error::refused(
                FORMAT,
                format!(
                    "a descriptor file (createType {:?}): its data is in other files ({}), which are \
                     read only beside a local descriptor file or in the same tar or OVA",
                    d.create_type.as_deref().unwrap_or("unknown"),
                    d.files()
                ),
            ));
        };
        if too_large {
            return Err(bad(format!("a descriptor file of more than {max} bytes")));
        }
        let plan = d.plan()?;
        for p in &plan {
            if let Some(len) = extents.probe(&p.file)?
                && let ExtentKind::Flat(off) = p.kind
                && off + p.len > len
            {
                return Err(short_extent(&p.file, len, off, p.len));
            }
        }
        Ok(Vmdk::Split(Split {
            plan,
            extents,
            budget,
        }))
    }

    /// The guest-visible size.
    pub(crate) fn virtual_size(&self) -> u64 {
        match self {
            Vmdk::Sparse(s) => s.virtual_size(),
            Vmdk::Split(s) => s.virtual_size(),
        }
    }

    /// Writes the disk to `target` (unallocated and zero grains stay holes).
    pub(crate) fn convert(self, target: &mut Target) -> Result<()> {
        match self {
            Vmdk::Sparse(s) => s.convert(target),
            Vmdk::Split(s) => s.convert(target),
        }
    }
}

/// A streamOptimized VMDK that a previous run left at the grain marker at `from`: the front
/// of the file (header, embedded descriptor, the grain tables qemu writes before the
/// grains), read again by ranges.
pub(crate) struct Resume {
    front: Vec<u8>,
    from: u64,
    pub(crate) virtual_size: u64,
}

/// The most of a VMDK's front a resumed run reads again (qemu's grain tables for a 2 TiB
/// disk with 64 KiB grains: 128 MiB).
const MAX_FRONT: u64 = 256 << 20;

/// Reads the front of a streamOptimized VMDK for a run that continues at `from` with
/// `read(offset, length)`: its header sector, then everything before the first grain.
pub(crate) async fn resume_front<F, Fut>(from: u64, read: F) -> Result<Resume>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    let head = read(0, SECTOR).await?;
    if head.len() < SECTOR as usize || !head.starts_with(b"KDMV") {
        return Err(bad("no sparse extent header (\"KDMV\") to continue"));
    }
    let h = Header::parse(&head)?;
    let overhead = h.overhead.saturating_mul(SECTOR);
    if h.flags & FLAG_MARKERS == 0 || overhead > from || overhead > MAX_FRONT {
        return Err(bad(format!(
            "cannot continue at {from:#x} (flags {:#x}, {overhead} bytes before the grains)",
            h.flags
        )));
    }
    let front = if overhead > SECTOR {
        read(0, overhead).await?
    } else {
        head
    };
    Ok(Resume {
        front,
        from,
        virtual_size: h.virtual_size(),
    })
}

/// A VMDK sparse extent being read from a stream.
pub(crate) struct VmdkStream<'a> {
    file: SeqFile<'a>,
    header: Header,
    budget: u64,
    /// Where the extent starts in the disk (an extent of a descriptor file; 0 otherwise).
    base: u64,
}

impl<'a> VmdkStream<'a> {
    /// Reads and checks the header and the embedded descriptor (a descriptor file is
    /// refused: see [`Vmdk::open`]).
    #[cfg(test)]
    pub(crate) fn open(r: &'a mut dyn Read, budget: u64) -> Result<Self> {
        match Vmdk::open(r, budget, None)? {
            Vmdk::Sparse(s) => Ok(*s),
            Vmdk::Split(_) => Err(bad("a descriptor file where a sparse extent was expected")),
        }
    }

    /// Reads and checks the header and, with `embedded`, the embedded descriptor (an
    /// extent of a descriptor file has none that counts).
    fn open_with(r: &'a mut dyn Read, budget: u64, embedded: bool) -> Result<Self> {
        Self::from_file(SeqFile::new(r, FORMAT, 512, budget), budget, embedded)
    }

    fn from_file(mut file: SeqFile<'a>, budget: u64, embedded: bool) -> Result<Self> {
        let head = file.read_at(0, SECTOR as usize, true)?;
        if head.starts_with(b"# Disk DescriptorFile") {
            return Err(bad("a descriptor file where a sparse extent was expected"));
        }
        if head.starts_with(b"COWD") {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: "ESX sparse (COWD) extents".into(),
            });
        }
        if head.len() < SECTOR as usize || !head.starts_with(b"KDMV") {
            return Err(bad("no sparse extent header (\"KDMV\")"));
        }
        let header = Header::parse(head)?;
        let (desc_off, desc_len) = (le64(head, 28), le64(head, 36));
        if embedded && desc_off != 0 && desc_len != 0 {
            if desc_len > MAX_DESCRIPTOR_SECTORS || desc_off > MAX_TABLE_BYTES / SECTOR {
                return Err(bad(format!(
                    "descriptor at sector {desc_off} of {desc_len} sectors"
                )));
            }
            let text = file.read_at(desc_off * SECTOR, (desc_len * SECTOR) as usize, false)?;
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            Descriptor::parse(&String::from_utf8_lossy(&text[..end])).check_embedded()?;
        }
        Ok(Self {
            file,
            header,
            budget,
            base: 0,
        })
    }

    /// The guest-visible size.
    pub(crate) fn virtual_size(&self) -> u64 {
        self.header.virtual_size()
    }

    /// Writes the allocated grains to `target` (unallocated and zero grains stay holes).
    pub(crate) fn convert(self, target: &mut Target) -> Result<()> {
        if self.header.flags & FLAG_MARKERS != 0 {
            self.walk_markers(target)
        } else {
            self.follow_tables(target)
        }
    }

    /// streamOptimized: grain markers, in file order, up to the end-of-stream marker.
    fn walk_markers(mut self, target: &mut Target) -> Result<()> {
        // Nothing behind the walk is ever needed.
        self.file.stop_retaining();
        let (overhead, mapped_end) = self.front()?;
        let pos = overhead.max(self.file.pos().next_multiple_of(SECTOR));
        self.walk(target, pos, mapped_end)
    }

    /// Where the grains start, and where the grains the front tables map end (see
    /// [`VmdkStream::front_tables_end`]).
    fn front(&mut self) -> Result<(u64, Option<u64>)> {
        let h = &self.header;
        let overhead = h
            .overhead
            .checked_mul(SECTOR)
            .filter(|o| *o <= MAX_VIRTUAL_SIZE)
            .ok_or_else(|| bad(format!("overhead of {} sectors", h.overhead)))?;
        Ok((overhead, self.front_tables_end(overhead)?))
    }

    /// Continues the walk of a streamOptimized extent that a previous run left at the
    /// marker at `m.from`: `r` yields the file from there on, `m.front` its start.
    pub(crate) fn resume(r: &'a mut dyn Read, m: Resume, target: &mut Target) -> Result<()> {
        let mut front = &m.front[..];
        let mut head = VmdkStream::open_with(&mut front, 0, true)?;
        if head.header.flags & FLAG_MARKERS == 0 {
            return Err(bad("a checkpoint for a VMDK without grain markers"));
        }
        head.file.stop_retaining();
        let (overhead, mapped_end) = head.front()?;
        if m.from < overhead {
            return Err(bad(format!(
                "a checkpoint at {:#x}, before the first grain",
                m.from
            )));
        }
        let mut file = SeqFile::new(r, FORMAT, 512, 0);
        file.start_at(m.from);
        file.stop_retaining();
        Self {
            file,
            header: head.header,
            budget: 0,
            base: 0,
        }
        .walk(target, m.from, mapped_end)
    }

    /// Walks the markers from `pos`.
    fn walk(mut self, target: &mut Target, mut pos: u64, mapped_end: Option<u64>) -> Result<()> {
        let h = self.header.clone();
        let vs = h.virtual_size();
        let grain = h.grain_bytes();
        let mut inflate = flate2::Decompress::new(true);
        let mut out = vec![0u8; grain as usize];
        loop {
            // Every grain before `pos` is written: a later run may continue here.
            if self.base == 0 {
                target.safe_point(pos)?;
            }
            let m = self.file.read_at(pos, SECTOR as usize, true)?;
            if m.len() < SECTOR as usize {
                // qemu-img ends the file after its last grain when that grain fills it to
                // its end: complete if the grain tables map nothing further.
                if m.is_empty() && mapped_end.is_some_and(|end| pos >= end) {
                    return Ok(());
                }
                let why = match mapped_end {
                    Some(end) if pos < end => {
                        format!("; its grain tables map a grain at {:#x}", end - 1)
                    }
                    _ => String::new(),
                };
                return Err(bad(format!(
                    "truncated: the file ends at {:#x} without an end-of-stream marker{why}",
                    pos + m.len() as u64
                )));
            }
            let (value, size) = (le64(m, 0), u64::from(le32(m, 8)));
            if size == 0 {
                let kind = le32(m, 12);
                match kind {
                    MARKER_EOS => return Ok(()),
                    1..=MARKER_FOOTER if value <= MAX_TABLE_BYTES / SECTOR => {
                        pos += SECTOR + value * SECTOR;
                    }
                    _ => {
                        return Err(bad(format!(
                            "bad marker at {pos:#x} (type {kind}, {value} sectors)"
                        )));
                    }
                }
                continue;
            }
            // A grain: LBA, compressed size, zlib data; padded to a sector.
            let guest = value.checked_mul(SECTOR).filter(|g| *g < vs);
            let Some(guest) = guest.filter(|_| value.is_multiple_of(h.grain) && size <= 2 * grain + 4096)
            else {
                return Err(bad(format!(
                    "grain marker at {pos:#x}: LBA {value}, {size} bytes (capacity {} sectors)",
                    h.capacity
                )));
            };
            let data = self.file.read_at(pos, (12 + size) as usize, false)?;
            inflate.reset(true);
            let status = inflate
                .decompress(&data[12..], &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| bad(format!("grain at {pos:#x} (LBA {value}): {e}")))?;
            if status != flate2::Status::StreamEnd {
                return Err(bad(format!(
                    "grain at {pos:#x} (LBA {value}) does not inflate to at most one grain"
                )));
            }
            let n = (inflate.total_out()).min(vs - guest) as usize;
            target.write_at(self.base + guest, &out[..n])?;
            pos += (12 + size).next_multiple_of(SECTOR);
        }
    }

    /// Where the grains mapped by a stream's grain tables end, when those tables come
    /// before the first grain (qemu-img fills them in as it writes the grains): a file
    /// that ends without an end-of-stream marker at or after this offset is complete.
    /// `None` when the tables are not there (VMware's layout: the grain directory at the
    /// end, `GD_AT_END`): the end-of-stream marker is then required.
    fn front_tables_end(&mut self, overhead: u64) -> Result<Option<u64>> {
        let h = self.header.clone();
        let (dir_len, gt_len) = (h.gd_entries() * 4, h.gtes_per_gt * 4);
        let Some(gd_at) = h
            .gd_offset
            .checked_mul(SECTOR)
            .filter(|o| *o > 0 && *o >= self.file.pos() && o.saturating_add(dir_len) <= overhead)
        else {
            return Ok(None);
        };
        let mut tables: Vec<(u64, u64)> = self
            .file
            .read_at(gd_at, dir_len as usize, false)?
            .chunks_exact(4)
            .enumerate()
            .filter_map(|(i, e)| {
                let sector = u64::from(le32(e, 0));
                (sector != 0).then_some((sector * SECTOR, i as u64))
            })
            .collect();
        tables.sort_unstable();
        let mut end = 0u64;
        for (at, index) in tables {
            if at < self.file.pos() || at + gt_len > overhead {
                return Ok(None);
            }
            let gt = self.file.read_at(at, gt_len as usize, false)?;
            for (j, e) in gt.chunks_exact(4).enumerate() {
                if index * h.gtes_per_gt + j as u64 >= h.grains() {
                    break;
                }
                let sector = u64::from(le32(e, 0));
                if sector == 0 || (sector == u64::from(GTE_ZEROED) && h.flags & FLAG_ZERO_GRAIN != 0) {
                    continue;
                }
                end = end.max(sector * SECTOR + 1);
            }
        }
        Ok(Some(end))
    }

    /// monolithicSparse: grain directory → grain tables → grains, in file order.
    fn follow_tables(mut self, target: &mut Target) -> Result<()> {
        let h = self.header.clone();
        let vs = h.virtual_size();
        let grain = h.grain_bytes();
        let gd = match (h.gd_offset, h.rgd_offset) {
            (GD_AT_END, _) => {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    reason: "a grain directory at the end without grain markers".into(),
                });
            }
            (gd, rgd) if h.flags & FLAG_REDUNDANT_GT != 0 && rgd != 0 && rgd < gd => rgd,
            (gd, _) => gd,
        };
        if gd == 0 {
            return Err(bad("no grain directory"));
        }
        let gd_at = gd
            .checked_mul(SECTOR)
            .filter(|o| *o <= MAX_VIRTUAL_SIZE)
            .ok_or_else(|| bad(format!("grain directory at sector {gd} is out of range")))?;
        let max_pending = (self.budget / 8).max(1 << 20) as usize;
        let dir = self.file.read_at(gd_at, (h.gd_entries() * 4) as usize, false)?;
        // Grain tables by file offset → their index in the directory.
        let mut tables: BTreeMap<u64, u64> = BTreeMap::new();
        for (i, e) in dir.chunks_exact(4).enumerate() {
            let sector = u64::from(le32(e, 0));
            if sector == 0 {
                continue;
            }
            if tables.insert(sector * SECTOR, i as u64).is_some() {
                return Err(bad(format!(
                    "grain directory entry {i}: grain table at sector {sector} twice"
                )));
            }
        }
        // Grains: (sector << 32 | grain number), smallest sector first.
        let mut grains: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
        loop {
            let next_grain = grains.peek().map(|Reverse(g)| (g >> 32) * SECTOR);
            let next_table = tables.first_key_value().map(|(o, _)| *o);
            if tables.is_empty() && next_grain.is_none_or(|g| g >= self.file.pos()) {
                self.file.stop_retaining();
            }
            match (next_table, next_grain) {
                (None, None) => return Ok(()),
                (Some(t), g) if g.is_none_or(|g| t <= g) => {
                    let index = tables.remove(&t).expect("the first key");
                    let gt = self.file.read_at(t, (h.gtes_per_gt * 4) as usize, false)?;
                    for (j, e) in gt.chunks_exact(4).enumerate() {
                        let number = index * h.gtes_per_gt + j as u64;
                        if number >= h.grains() {
                            break;
                        }
                        let sector = le32(e, 0);
                        if sector == 0 || (sector == GTE_ZEROED && h.flags & FLAG_ZERO_GRAIN != 0) {
                            continue;
                        }
                        grains.push(Reverse(u64::from(sector) << 32 | number));
                    }
                    if grains.len() > max_pending {
                        return Err(Error::Unsupported {
                            format: FORMAT,
                            reason: format!(
                                "more than {max_pending} grains are mapped ahead of the stream (raise the reorder buffer)"
                            ),
                        });
                    }
                }
                (_, Some(off)) => {
                    let Reverse(g) = grains.pop().expect("peeked");
                    let guest = (g & u64::from(u32::MAX)) * grain;
                    self.file
                        .copy_to(off, grain.min(vs - guest), target, self.base + guest)?;
                }
                (Some(_), None) => unreachable!("a table with no grain pending is handled above"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
