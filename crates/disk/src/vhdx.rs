//! Hyper-V VHDX → raw, streamed in file order.
//!
//! ```text
//!   0      file type identifier "vhdxfile"
//!   64K    header 1 ("head", CRC-32C)     128K  header 2 (the valid one with the
//!                                               higher sequence number is current)
//!   192K   region table ("regi", CRC-32C) 256K  its copy
//!   …      log, metadata region, BAT region, payload blocks (1 MiB aligned, any order)
//! ```
//!
//! Everything but the payload is read and checked before the target is opened: the
//! current header, the region table (unknown *required* regions are unsupported), the
//! metadata (block size, virtual size, logical sector size; a parent → refused), and the
//! BAT. In the BAT, every `chunk ratio` payload entries are followed by one sector-bitmap
//! entry, which only differencing disks use. Fully present blocks are copied in file
//! order; not present, undefined, zero and unmapped blocks stay holes.
//!
//! **The log**: a VHDX not closed cleanly has log entries to replay before its BAT and
//! data can be trusted. The log is searched as qemu searches it (`block/vhdx-log.c`): the
//! entries that carry the header's log GUID, are well-formed, pass their CRC-32C and follow
//! each other in sequence. If there are any, the image is refused, as `qemu-img convert`
//! refuses it ("opened read-only, but contains a log that needs to be replayed"):
//! replaying means writing to the image (qemu replays only when it opens it read-write,
//! with `qemu-img check -r all`; Hyper-V when it mounts it). Entries that fail those
//! checks are stale or torn and, as in qemu, ignored. A log is read only when the header
//! names a log GUID (a zero GUID means an empty log), and only up to 32 MiB.

use std::io::Read;

use crate::seq::{Extent, MAX_TABLE_BYTES, SeqFile, copy_extents, le16, le32, le64};
use crate::target::Target;
use crate::{Error, Result};

const FORMAT: &str = "vhdx";
const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
/// Largest virtual size (the specification's 64 TiB).
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Largest metadata region read.
const MAX_METADATA: u64 = 16 * MIB;
/// Largest log searched for entries to replay (read whole into memory; qemu and Hyper-V
/// make 1 MiB logs).
const MAX_LOG: u64 = 32 * MIB;

const BAT_REGION: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const METADATA_REGION: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const FILE_PARAMETERS: &str = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
const VIRTUAL_DISK_SIZE: &str = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
const LOGICAL_SECTOR_SIZE: &str = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
const PARENT_LOCATOR: &str = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C";
/// Known metadata items that conversion does not need.
const IGNORED_ITEMS: [&str; 2] = [
    "BECA12AB-B2E6-4523-93EF-C309E000C746", // virtual disk ID
    "CDA348C7-445D-4471-9CC9-E9885251C556", // physical sector size
];

/// BAT payload block states.
const PAYLOAD_FULLY_PRESENT: u64 = 6;
const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;

/// A GUID as stored on disk (the first three fields little-endian).
fn guid(s: &str) -> [u8; 16] {
    let hex: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'-')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect();
    let mut g = [0u8; 16];
    g.copy_from_slice(&hex);
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

/// CRC-32C (Castagnoli), as the VHDX headers, region tables and log entries use.
fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// The CRC-32C register after `data` (no final inversion).
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

/// Whether `b`'s CRC-32C, with the 4-byte checksum field at 4 taken as zero, matches it.
fn crc_ok(b: &[u8]) -> bool {
    let mut copy = b.to_vec();
    copy[4..8].fill(0);
    crc32c(&copy) == le32(b, 4)
}

fn bad(what: impl Into<String>) -> Error {
    Error::invalid(FORMAT, what)
}

/// The current header's fields.
struct Header {
    log_guid: [u8; 16],
    log_version: u16,
    log_offset: u64,
    log_length: u64,
}

/// Picks the valid header with the higher sequence number.
fn current_header(file: &mut SeqFile<'_>) -> Result<Header> {
    let mut best: Option<(u64, Header)> = None;
    for off in [64 * KIB, 128 * KIB] {
        let h = file.read_at(off, 4096, false)?;
        if &h[..4] != b"head" || !crc_ok(h) {
            continue;
        }
        let seq = le64(h, 8);
        if best.as_ref().is_some_and(|(s, _)| *s >= seq) {
            continue;
        }
        let version = le16(h, 66);
        if version != 1 {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: format!("header version {version}"),
            });
        }
        let mut log_guid = [0u8; 16];
        log_guid.copy_from_slice(&h[48..64]);
        best = Some((
            seq,
            Header {
                log_guid,
                log_version: le16(h, 64),
                log_offset: le64(h, 72),
                log_length: u64::from(le32(h, 68)),
            },
        ));
    }
    best.map(|(_, h)| h)
        .ok_or_else(|| bad("neither header is valid (signature or checksum)"))
}

/// The BAT and metadata regions: (offset, length) each.
fn regions(file: &mut SeqFile<'_>) -> Result<((u64, u64), (u64, u64))> {
    for off in [192 * KIB, 256 * KIB] {
        let t = file.read_at(off, 64 * KIB as usize, false)?;
        if &t[..4] != b"regi" || !crc_ok(t) {
            continue;
        }
        let count = le32(t, 8) as usize;
        if count > 2047 {
            return Err(bad(format!("{count} region table entries")));
        }
        let (mut bat, mut meta) = (None, None);
        for i in 0..count {
            let e = &t[16 + i * 32..16 + (i + 1) * 32];
            let (offset, length, required) = (le64(e, 16), u64::from(le32(e, 24)), le32(e, 28) & 1 != 0);
            if offset < MIB || !offset.is_multiple_of(MIB) || length == 0 {
                return Err(bad(format!("region {i} at {offset:#x} (+{length:#x}) misplaced")));
            }
            if e[..16] == guid(BAT_REGION) {
                bat = Some((offset, length));
            } else if e[..16] == guid(METADATA_REGION) {
                meta = Some((offset, length));
            } else if required {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    reason: format!("unknown required region {i}"),
                });
            }
        }
        return match (bat, meta) {
            (Some(b), Some(m)) => Ok((b, m)),
            _ => Err(bad("the region table lacks the BAT or the metadata region")),
        };
    }
    Err(bad("neither region table is valid (signature or checksum)"))
}

/// Refuses an image whose log holds entries to replay (see the module documentation).
fn check_log(file: &mut SeqFile<'_>, h: &Header) -> Result<()> {
    // As qemu's `vhdx_parse_log`: the placement and version are checked first.
    if h.log_offset < MIB || !h.log_offset.is_multiple_of(MIB) {
        return Err(bad(format!(
            "log offset {:#x} is not a multiple of 1 MiB past the headers",
            h.log_offset
        )));
    }
    if h.log_version != 0 {
        return Err(Error::Unsupported {
            format: FORMAT,
            reason: format!("log version {}", h.log_version),
        });
    }
    if h.log_guid == [0; 16] || h.log_length == 0 {
        return Ok(());
    }
    if !h.log_length.is_multiple_of(MIB) || h.log_offset.checked_add(h.log_length).is_none() {
        return Err(bad(format!(
            "log at {:#x} (+{:#x}) misplaced",
            h.log_offset, h.log_length
        )));
    }
    if h.log_length > MAX_LOG {
        return Err(Error::Unsupported {
            format: FORMAT,
            reason: format!(
                "a log of {} MiB with GUID {} (at most {} MiB is searched for entries to replay)",
                h.log_length >> 20,
                guid_str(&h.log_guid),
                MAX_LOG >> 20
            ),
        });
    }
    let log = file.read_at(h.log_offset, h.log_length as usize, false)?;
    if let Some(seq) = active_sequence(log, &h.log_guid)? {
        let entries = if seq.count == 1 {
            "1 entry".to_string()
        } else {
            format!("{} entries", seq.count)
        };
        return Err(Error::refused(
            FORMAT,
            format!(
                "its log (GUID {}, at {:#x}) holds {entries} to replay, the first at log offset \
                 {:#x} with sequence number {}: it was not closed cleanly, and replaying the log \
                 writes to the image (`qemu-img convert` refuses it too). Replay it on a writable \
                 copy with `qemu-img check -r all COPY` (or mount it once in Hyper-V), then import \
                 that",
                guid_str(&h.log_guid),
                h.log_offset,
                seq.start,
                seq.sequence,
            ),
        ));
    }
    Ok(())
}

/// A GUID as text (the first three fields little-endian on disk).
fn guid_str(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        le32(g, 0),
        le16(g, 4),
        le16(g, 6),
        hex::encode(&g[8..10]),
        hex::encode(&g[10..16])
    )
}

/// Log sectors are 4 KiB.
const LOG_SECTOR: u64 = 4096;

/// The first valid sequence of log entries found: where, its first sequence number, and
/// its length in entries.
#[derive(Debug, PartialEq, Eq)]
struct Sequence {
    start: u64,
    sequence: u64,
    count: u64,
}

/// Searches the log (a circular buffer of 4 KiB sectors) for a valid sequence of entries
/// exactly as qemu's `vhdx_log_search` does, with its quirks (the second entry of a
/// sequence is not checked against the first's number; an entry that fails its CRC is
/// skipped whole). A descriptor that is neither a data nor a zero descriptor makes qemu
/// fail to open the image: an error here too.
fn active_sequence(log: &[u8], guid: &[u8; 16]) -> Result<Option<Sequence>> {
    let scan = LogScan { log, guid };
    let sectors = scan.len() / LOG_SECTOR;
    let mut found: Option<Sequence> = None;
    let mut read = 0u64;
    // qemu stops once the scan wraps; an entry as long as the log that fails its CRC would
    // bring it back to where it started forever: bounded here.
    for _ in 0..=sectors {
        let tail = read;
        if let Some((start, number)) = scan.validate(&mut read, 0)? {
            let mut seq = Sequence {
                start,
                sequence: number,
                count: 1,
            };
            let mut last = 0;
            for _ in 0..sectors {
                match scan.validate(&mut read, last)? {
                    Some((_, n)) => {
                        seq.count += 1;
                        last = n;
                    }
                    None => break,
                }
            }
            if found.as_ref().is_none_or(|f| seq.sequence > f.sequence) {
                found = Some(seq);
            }
        }
        if read <= tail {
            break;
        }
    }
    Ok(found)
}

/// The log being searched, and the GUID its entries must carry.
struct LogScan<'a> {
    log: &'a [u8],
    guid: &'a [u8; 16],
}

impl LogScan<'_> {
    fn len(&self) -> u64 {
        self.log.len() as u64
    }

    /// The sector after the one at `i`, wrapping around.
    fn inc(&self, i: u64) -> u64 {
        if i + LOG_SECTOR >= self.len() {
            0
        } else {
            i + LOG_SECTOR
        }
    }

    fn sector(&self, i: u64) -> &[u8] {
        &self.log[i as usize..(i + LOG_SECTOR) as usize]
    }

    /// One entry at `*read` (advanced as qemu advances it); `seq > 0`: it must follow
    /// `seq`. Its start and sequence number when it is valid.
    fn validate(&self, read: &mut u64, seq: u64) -> Result<Option<(u64, u64)>> {
        let h = self.sector(*read);
        let (entry_len, number, count) = (u64::from(le32(h, 8)), le64(h, 16), u64::from(le32(h, 24)));
        let valid = &h[..4] == b"loge"
            && entry_len <= self.len()
            && entry_len.is_multiple_of(LOG_SECTOR)
            && number != 0
            && h[32..48] == self.guid[..]
            && count * 32 <= entry_len
            && (seq == 0 || number == seq + 1);
        if !valid {
            *read = self.inc(*read);
            return Ok(None);
        }
        let start = *read;
        let desc_sectors = (count + 2).div_ceil(128);
        let mut crc = !0u32;
        let mut descs = Vec::with_capacity((desc_sectors * LOG_SECTOR) as usize);
        for _ in 0..desc_sectors {
            descs.extend_from_slice(self.sector(*read));
            *read = self.inc(*read);
        }
        for i in 0..count as usize {
            let d = &descs[64 + 32 * i..96 + 32 * i];
            let ok = le64(d, 24) == number
                && le64(d, 16).is_multiple_of(LOG_SECTOR)
                && match &d[..4] {
                    b"zero" => le64(d, 8).is_multiple_of(LOG_SECTOR),
                    b"desc" => true,
                    _ => false,
                };
            if !ok {
                return Err(bad(format!(
                    "log entry at log offset {start:#x} (sequence number {number}): descriptor {i} \
                 is invalid (signature {:?}, file offset {:#x})",
                    String::from_utf8_lossy(&d[..4]),
                    le64(d, 16)
                )));
            }
        }
        descs[4..8].fill(0);
        crc = crc32c_update(crc, &descs);
        for _ in desc_sectors..entry_len / LOG_SECTOR {
            crc = crc32c_update(crc, self.sector(*read));
            *read = self.inc(*read);
        }
        Ok((!crc == le32(h, 4)).then_some((start, number)))
    }
}

/// What the metadata region says.
struct Metadata {
    block_size: u64,
    virtual_size: u64,
    logical_sector: u64,
}

fn metadata(file: &mut SeqFile<'_>, (offset, length): (u64, u64)) -> Result<Metadata> {
    if !(64 * KIB..=MAX_METADATA).contains(&length) {
        return Err(bad(format!("metadata region of {length} bytes")));
    }
    let m = file.read_at(offset, length as usize, false)?;
    if &m[..8] != b"metadata" {
        return Err(bad("no metadata table (\"metadata\")"));
    }
    let count = usize::from(le16(m, 10));
    if count > 2047 {
        return Err(bad(format!("{count} metadata entries")));
    }
    let (mut params, mut size, mut sector) = (None, None, None);
    for i in 0..count {
        let e = &m[32 + i * 32..32 + (i + 1) * 32];
        let (off, len, flags) = (le32(e, 16) as usize, le32(e, 20) as usize, le32(e, 24));
        let item = |want: usize| -> Result<&[u8]> {
            if len < want || off < 64 * KIB as usize || off + want > m.len() {
                return Err(bad(format!(
                    "metadata item {i} at {off:#x} (+{len}) out of range"
                )));
            }
            Ok(&m[off..off + want])
        };
        let id = &e[..16];
        if id == guid(FILE_PARAMETERS) {
            params = Some((u64::from(le32(item(8)?, 0)), le32(item(8)?, 4)));
        } else if id == guid(VIRTUAL_DISK_SIZE) {
            size = Some(le64(item(8)?, 0));
        } else if id == guid(LOGICAL_SECTOR_SIZE) {
            sector = Some(u64::from(le32(item(4)?, 0)));
        } else if id == guid(PARENT_LOCATOR) {
            return Err(Error::refused(
                FORMAT,
                "it is a differencing disk (it has a parent locator)",
            ));
        } else if flags & 4 != 0 && !IGNORED_ITEMS.iter().any(|g| id == guid(g)) {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: format!("unknown required metadata item {i}"),
            });
        }
    }
    let (Some((block_size, pflags)), Some(virtual_size), Some(logical_sector)) = (params, size, sector)
    else {
        return Err(bad(
            "the metadata lacks the file parameters, virtual disk size or logical sector size",
        ));
    };
    if pflags & 2 != 0 {
        return Err(Error::refused(
            FORMAT,
            "it is a differencing disk (it has a parent)",
        ));
    }
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
        return Err(bad(format!("block size {block_size}")));
    }
    if logical_sector != 512 && logical_sector != 4096 {
        return Err(bad(format!("logical sector size {logical_sector}")));
    }
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(bad(format!("virtual size {virtual_size} is over 64 TiB")));
    }
    Ok(Metadata {
        block_size,
        virtual_size,
        logical_sector,
    })
}

/// A VHDX image being read from a stream.
pub(crate) struct VhdxStream<'a> {
    file: SeqFile<'a>,
    virtual_size: u64,
    extents: Vec<Extent>,
}

impl<'a> VhdxStream<'a> {
    /// Reads and checks everything but the payload (before the target is opened).
    pub(crate) fn open(r: &'a mut dyn Read, budget: u64) -> Result<Self> {
        let mut file = SeqFile::new(r, FORMAT, 64 * KIB, budget);
        if file.read_at(0, 8, false)? != b"vhdxfile" {
            return Err(bad("no file type identifier (\"vhdxfile\")"));
        }
        let header = current_header(&mut file)?;
        let (bat_region, meta_region) = regions(&mut file)?;
        // Read in file order where the layout allows (qemu and Hyper-V: log, metadata, BAT).
        let meta = if header.log_offset <= meta_region.0 {
            check_log(&mut file, &header)?;
            metadata(&mut file, meta_region)?
        } else {
            let m = metadata(&mut file, meta_region)?;
            check_log(&mut file, &header)?;
            m
        };
        let Metadata {
            block_size,
            virtual_size,
            logical_sector,
        } = meta;
        let chunk_ratio = (1u64 << 23) * logical_sector / block_size;
        let blocks = virtual_size.div_ceil(block_size);
        let entries = if blocks == 0 {
            0
        } else {
            blocks + (blocks - 1) / chunk_ratio
        };
        if entries * 8 > bat_region.1 {
            return Err(bad(format!(
                "the BAT region ({} bytes) is too small for {blocks} blocks",
                bat_region.1
            )));
        }
        if entries * 8 > MAX_TABLE_BYTES {
            return Err(bad(format!("a BAT of {entries} entries is too large")));
        }
        let bat = file.read_at(bat_region.0, (entries * 8) as usize, false)?;
        let mut extents = Vec::new();
        for i in 0..blocks {
            let e = le64(bat, ((i + i / chunk_ratio) * 8) as usize);
            let guest = i * block_size;
            match e & 7 {
                0..=3 => {} // not present, undefined, zero, unmapped: zeros
                PAYLOAD_FULLY_PRESENT => {
                    let host = (e >> 20) * MIB;
                    if host < MIB {
                        return Err(bad(format!("BAT entry for block {i} points into the header")));
                    }
                    extents.push(Extent {
                        host,
                        guest,
                        len: (virtual_size - guest).min(block_size),
                    });
                }
                PAYLOAD_PARTIALLY_PRESENT => {
                    return Err(bad(format!(
                        "block {i} is partially present, which only a differencing disk may be"
                    )));
                }
                s => return Err(bad(format!("BAT entry for block {i} has state {s}"))),
            }
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

    /// Writes the present blocks to `target` (other blocks stay holes).
    pub(crate) fn convert(mut self, target: &mut Target) -> Result<()> {
        let extents = std::mem::take(&mut self.extents);
        copy_extents(&mut self.file, extents, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_and_crc() {
        assert_eq!(
            guid(BAT_REGION),
            [
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a,
                0x08
            ]
        );
        // The CRC-32C check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_log_at_the_end_of_the_offset_space_is_misplaced() {
        // Mutation test: `log_offset + log_length` used to overflow.
        let h = Header {
            log_guid: [1; 16],
            log_version: 0,
            log_offset: !(MIB - 1),
            log_length: MIB,
        };
        let data = [0u8; 512];
        let mut r = &data[..];
        let mut file = SeqFile::new(&mut r, FORMAT, 512, 1 << 20);
        let e = check_log(&mut file, &h).unwrap_err();
        assert_eq!(e.label(), "invalid_image", "{e}");
        assert!(e.to_string().contains("misplaced"), "{e}");
    }
}
