//! qcow2 → raw, streamed in file order (no seeking, no scratch file).
//!
//! The header is read and validated first ([`header`]); backing files, external data files
//! and encryption are refused there, before the target is opened. Then the file is read
//! front to back, and every structure is handled when the stream reaches it:
//!
//! ```text
//!   pending (by file offset):  L1 ─► L2 tables ─► data / compressed clusters
//!   stream position ─────────────────────────────────────────────────────────►
//! ```
//!
//! Processing the smallest pending offset next means the stream only moves forward. A
//! structure found *behind* the stream position (data written before its L2 table, as a
//! VM may leave it) is served from the reorder buffer (`crate::seq`, shared with the
//! other formats), which retains skipped chunks until every L2 table is known and then
//! empties; images written by `qemu-img convert` need next to none of it. Read from a
//! local file (or an HTTP(S)/S3 object with ranges, once the buffer is full), such data is
//! read again by position instead ([`Qcow2Stream::set_positional`]): no buffer, no limit.
//! A compressed cluster's last sector may hold the start of the next one, whose L2 table
//! may come later (`qemu-img convert -c` puts the first cluster of an L2 table's range
//! in the host cluster it is filling when it allocates that table): that sector is kept.
//! Refcounts, snapshots and bitmaps are ignored: only the active L1 table defines the
//! guest view.
//!
//! `imago` (the Rust qcow2 library) was considered: its `Storage` trait is random access
//! (`pure_readv(offset)` plus `size()`), so it cannot read a pipe or a decompressing stream.

pub mod header;

use std::collections::BTreeMap;
use std::io::Read;

pub use header::{CompressionType, Header};

use crate::seq::{Pipe, ReadAt, SeqFile, with_pipe};
use crate::target::Target;
use crate::{Error, Result};

/// Bits 9..=55 of an L1 or standard L2 entry: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry flag: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// Standard L2 entry flag (v3): the cluster reads as zeros.
const ZERO: u64 = 1;

/// Default reorder budget (non-zero bytes retained while metadata is incomplete).
pub const DEFAULT_REORDER_BUDGET: u64 = 64 << 20;

/// One structure waiting for the stream to reach it.
#[derive(Clone, Copy, Debug)]
enum Item {
    L1,
    L2 {
        index: u64,
    },
    Data {
        guest: u64,
        /// Extended L2: subclusters that hold data (others read as zeros).
        mask: Option<u32>,
    },
    Compressed {
        guest: u64,
        len: u64,
    },
}

/// A qcow2 image being read from a stream.
pub(crate) struct Qcow2Stream<'a> {
    file: SeqFile<'a>,
    header: Header,
    budget: u64,
}

impl<'a> Qcow2Stream<'a> {
    /// Reads and validates the header. `budget` bounds the reorder buffer.
    pub(crate) fn open(r: &'a mut dyn Read, budget: u64) -> Result<Self> {
        let mut file = SeqFile::new(r, "qcow2", 512, budget);
        let first = file.read_at(0, 512, true)?;
        if first.len() < 104 {
            return Err(Error::invalid("qcow2", "truncated header"));
        }
        let bits = u32::from_be_bytes(first[20..24].try_into().expect("4 bytes"));
        let cluster = if (9..=21).contains(&bits) {
            1u64 << bits
        } else {
            512
        };
        let head = file.read_at(0, cluster as usize, true)?;
        let header = Header::parse(head)?;
        file.set_chunk(header.cluster_size());
        Ok(Self { file, header, budget })
    }

    /// Lets ranges the stream has passed be read again from `at` (the same image by
    /// position): data before its L2 table then needs no reorder buffer.
    pub(crate) fn set_positional(&mut self, at: Box<dyn ReadAt + 'a>) {
        self.file.set_positional(at);
    }

    /// The validated header.
    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// Writes the guest view to `target` (zero and unallocated clusters are skipped).
    pub(crate) fn convert(mut self, target: &mut Target) -> Result<()> {
        let h = self.header.clone();
        let mut pending = Pending::default();
        let l1_done = h.l1_needed() == 0;
        if !l1_done {
            pending.push(h.l1_offset, Item::L1);
        } else {
            self.file.stop_retaining();
        }
        self.drive(target, pending, l1_done, 0)
    }

    /// Continues an import that a previous run left at `map.from`: `r` yields the image's
    /// bytes from there on, and the mapping is the one rebuilt from its tables.
    pub(crate) fn resume(r: &'a mut dyn Read, map: ResumeMap, target: &mut Target) -> Result<()> {
        let mut file = SeqFile::new(r, "qcow2", map.header.cluster_size(), 0);
        file.start_at(map.from);
        file.stop_retaining();
        let budget = DEFAULT_REORDER_BUDGET;
        let mut pending = Pending::default();
        for (host, item) in map.items {
            pending.push(host, item);
        }
        Self {
            file,
            header: map.header,
            budget,
        }
        .drive(target, pending, true, 0)
    }

    /// Processes the pending structures in file order until none is left. Data is written
    /// on a second thread while the stream is read on ([`with_pipe`]).
    fn drive(self, target: &mut Target, pending: Pending, l1_done: bool, l2_left: usize) -> Result<()> {
        let cs = self.header.cluster_size();
        with_pipe(target, cs, |pipe| {
            self.drive_into(pipe, pending, l1_done, l2_left)
        })
    }

    fn drive_into(
        mut self,
        pipe: &Pipe,
        mut pending: Pending,
        mut l1_done: bool,
        mut l2_left: usize,
    ) -> Result<()> {
        let max_pending = (self.budget / 16).max(1 << 16) as usize;
        let mut inflate = flate2::Decompress::new(false);

        while let Some(((off, _), item)) = pending.0.pop_first() {
            // Every structure before `off` is done and nothing behind the stream is
            // needed any more: a later run may continue from `off`.
            if !self.file.retaining() && !pipe.safe_point(off) {
                return Ok(());
            }
            let written = match item {
                Item::L1 => {
                    l2_left += self.l1_table(off, &mut pending)?;
                    l1_done = true;
                    true
                }
                Item::L2 { index } => {
                    self.l2_table(off, index, &mut pending, max_pending)?;
                    l2_left -= 1;
                    true
                }
                Item::Data { guest, mask } => self.data(pipe, off, guest, mask)?,
                Item::Compressed { guest, len } => {
                    self.compressed(pipe, off, len, guest, &mut inflate, &pending)?
                }
            };
            if !written {
                return Ok(());
            }
            // All metadata is known and nothing pending lies behind the stream: what is
            // skipped from now on can never be needed.
            if l1_done
                && l2_left == 0
                && pending
                    .0
                    .first_key_value()
                    .is_none_or(|((o, _), _)| *o >= self.file.pos())
            {
                self.file.stop_retaining();
            }
        }
        Ok(())
    }

    /// The L1 table at `off`: its L2 tables become pending; returns how many.
    fn l1_table(&mut self, off: u64, pending: &mut Pending) -> Result<usize> {
        let n = self.header.l1_needed();
        let l1 = self.file.read_at(off, (n * 8) as usize, false)?;
        let tables = l1_tables(&self.header, l1)?;
        for &(l2, index) in &tables {
            pending.push(l2, Item::L2 { index });
        }
        Ok(tables.len())
    }

    /// The L2 table of L1 entry `index` at `off`: its clusters become pending, as long as
    /// no more than `max_pending` wait.
    fn l2_table(&mut self, off: u64, index: u64, pending: &mut Pending, max_pending: usize) -> Result<()> {
        let cs = self.header.cluster_size();
        let table = self.file.read_at(off, cs as usize, false)?;
        for (host, item) in l2_items(&self.header, table, index)? {
            pending.push(host, item);
        }
        if pending.0.len() > max_pending {
            return Err(Error::Unsupported {
                format: "qcow2",
                reason: format!(
                    "more than {max_pending} clusters are mapped ahead of the stream \
                     (one per 16 bytes of the reorder buffer, {}); raise it with \
                     `ido import --reorder-buffer SIZE` (ImportOptions::reorder_budget)",
                    crate::seq::human_size(self.budget)
                ),
            });
        }
        Ok(())
    }

    /// The data cluster at `off` (of guest offset `guest`) to the pipe; `false` when the
    /// pipe takes no more.
    fn data(&mut self, pipe: &Pipe, off: u64, guest: u64, mask: Option<u32>) -> Result<bool> {
        let cs = self.header.cluster_size();
        let len = (self.header.virtual_size - guest).min(cs) as usize;
        match mask {
            None => {
                let mut piece = pipe.buffer();
                self.file.read_into(off, cs as usize, &mut piece)?;
                piece.truncate(len);
                Ok(pipe.write(guest, piece))
            }
            Some(mask) => self.subclusters(pipe, off, guest, len, mask),
        }
    }

    /// The compressed cluster stored at `off` (`len` bytes), inflated, to the pipe; `false`
    /// when the pipe takes no more.
    fn compressed(
        &mut self,
        pipe: &Pipe,
        off: u64,
        len: u64,
        guest: u64,
        inflate: &mut flate2::Decompress,
        pending: &Pending,
    ) -> Result<bool> {
        let h = &self.header;
        let cs = h.cluster_size();
        let data = self.file.read_at(off, len as usize, true)?;
        let end = off + data.len() as u64;
        let mut piece = pipe.buffer();
        piece.resize(cs as usize, 0);
        decompress(h, inflate, data, &mut piece, guest)?;
        // Its last sector may hold the start of the next compressed cluster. If that one is
        // not known yet (its L2 table comes later in the file, as `qemu-img convert -c` lays
        // out a cluster that fits in the host cluster being filled when its L2 table is
        // allocated), keep the sector.
        if self.file.retaining() && pending.0.first_key_value().is_none_or(|((o, _), _)| *o >= end) {
            self.file.retain_tail(512)?;
        }
        piece.truncate((self.header.virtual_size - guest).min(cs) as usize);
        Ok(pipe.write(guest, piece))
    }

    /// A cluster of an extended-L2 image: only its subclusters with data are written (the
    /// file may end after the last one: qemu allocates subclusters, not whole clusters).
    fn subclusters(&mut self, pipe: &Pipe, off: u64, guest: u64, len: usize, mask: u32) -> Result<bool> {
        let sub = (self.header.cluster_size() / 32) as usize;
        let used = (32 - mask.leading_zeros() as usize) * sub;
        let data = self.file.read_at(off, used, false)?;
        let len = len.min(used);
        for i in 0..32 {
            let (s, e) = (i * sub, ((i + 1) * sub).min(len));
            if s < e && mask & (1 << i) != 0 {
                let mut piece = pipe.buffer();
                piece.clear();
                piece.extend_from_slice(&data[s..e]);
                if !pipe.write(guest + s as u64, piece) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Structures waiting for the stream, by file offset (ties in discovery order).
#[derive(Default)]
struct Pending(BTreeMap<(u64, u64), Item>, u64);

impl Pending {
    fn push(&mut self, host: u64, item: Item) {
        self.1 += 1;
        self.0.insert((host, self.1), item);
    }
}

/// The L2 tables an L1 table points to: (file offset, L1 index).
fn l1_tables(h: &Header, l1: &[u8]) -> Result<Vec<(u64, u64)>> {
    let cs = h.cluster_size();
    let mut seen = std::collections::HashSet::new();
    let mut tables = Vec::new();
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let e = u64::from_be_bytes(e.try_into().expect("8 bytes"));
        let l2 = e & OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        if !l2.is_multiple_of(cs) || !seen.insert(l2) {
            return Err(Error::invalid(
                "qcow2",
                format!("L1 entry {i} points to a bad L2 table offset {l2:#x}"),
            ));
        }
        tables.push((l2, i as u64));
    }
    Ok(tables)
}

/// What the L2 table of L1 entry `index` maps: (file offset, structure) per cluster with data.
fn l2_items(h: &Header, table: &[u8], index: u64) -> Result<Vec<(u64, Item)>> {
    let cs = h.cluster_size();
    let entry = h.l2_entry_size() as usize;
    let mut items = Vec::new();
    for (j, e) in table.chunks_exact(entry).enumerate() {
        let guest = index * h.l2_span() + j as u64 * cs;
        if guest >= h.virtual_size {
            break;
        }
        let word = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
        let bitmap = if h.extended_l2 {
            Some(u64::from_be_bytes(e[8..16].try_into().expect("8 bytes")))
        } else {
            None
        };
        if let Some(found) = l2_item(h, word, bitmap, guest)? {
            items.push(found);
        }
    }
    Ok(items)
}

/// A qcow2's mapping rebuilt from its tables, for a run that continues a previous one.
pub(crate) struct ResumeMap {
    pub(crate) header: Header,
    /// The clusters stored at or after `from`.
    items: Vec<(u64, Item)>,
    /// The source offset the stream continues from.
    pub(crate) from: u64,
}

/// Rebuilds the mapping of the qcow2 whose header cluster is `head` from its L1 table and
/// L2 tables, fetched with `read(offset, length)`. Only clusters stored at or after `from`
/// are kept (a previous run wrote the others). Needs about one request per 512 MiB of
/// virtual size (64 KiB clusters).
pub(crate) async fn resume_map<F, Fut>(head: &[u8], from: u64, read: F) -> Result<ResumeMap>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    let header = Header::parse(head)?;
    let h = &header;
    let cs = h.cluster_size();
    let mut items = Vec::new();
    if h.l1_needed() > 0 {
        let l1 = read(h.l1_offset, h.l1_needed() * 8).await?;
        for (l2, index) in l1_tables(h, &l1)? {
            let table = read(l2, cs).await?;
            items.extend(
                l2_items(h, &table, index)?
                    .into_iter()
                    .filter(|(host, _)| *host >= from),
            );
        }
    }
    Ok(ResumeMap { header, items, from })
}

/// Interprets one L2 entry: what to read and where (`None`: zeros, nothing to read).
fn l2_item(h: &Header, word: u64, bitmap: Option<u64>, guest: u64) -> Result<Option<(u64, Item)>> {
    let bad = |what: &str| {
        Error::invalid(
            "qcow2",
            format!("L2 entry for guest offset {guest:#x} ({word:#018x}): {what}"),
        )
    };
    if word & COMPRESSED != 0 {
        let x = 62 - (h.cluster_bits - 8);
        let host = word & ((1u64 << x) - 1);
        let sectors = ((word >> x) & ((1u64 << (h.cluster_bits - 8)) - 1)) + 1;
        let len = sectors * 512 - (host & 511);
        if host == 0 {
            return Err(bad("compressed cluster at offset 0"));
        }
        return Ok(Some((host, Item::Compressed { guest, len })));
    }
    let host = word & OFFSET_MASK;
    if word & 0x3f00_0000_0000_01fe != 0 {
        return Err(bad("reserved bits are set"));
    }
    match bitmap {
        None => {
            if host == 0 || (h.version == 3 && word & ZERO != 0) {
                return Ok(None);
            }
            if !host.is_multiple_of(h.cluster_size()) {
                return Err(bad("data cluster is not cluster aligned"));
            }
            Ok(Some((host, Item::Data { guest, mask: None })))
        }
        Some(bitmap) => {
            let alloc = bitmap as u32;
            let zero = (bitmap >> 32) as u32;
            let mask = alloc & !zero;
            if host == 0 {
                if alloc != 0 {
                    return Err(bad("subclusters allocated without a host cluster"));
                }
                return Ok(None);
            }
            if !host.is_multiple_of(h.cluster_size()) {
                return Err(bad("data cluster is not cluster aligned"));
            }
            if mask == 0 {
                return Ok(None);
            }
            Ok(Some((
                host,
                Item::Data {
                    guest,
                    mask: Some(mask),
                },
            )))
        }
    }
}

/// Decompresses one cluster into `out` (which must be filled exactly).
fn decompress(
    h: &Header,
    inflate: &mut flate2::Decompress,
    data: &[u8],
    out: &mut [u8],
    guest: u64,
) -> Result<()> {
    let bad = |what: String| {
        Error::invalid(
            "qcow2",
            format!("compressed cluster for guest offset {guest:#x}: {what}"),
        )
    };
    match h.compression {
        CompressionType::Zlib => {
            inflate.reset(false);
            let status = inflate
                .decompress(data, out, flate2::FlushDecompress::Finish)
                .map_err(|e| bad(e.to_string()))?;
            if inflate.total_out() != out.len() as u64 {
                return Err(bad(format!(
                    "{status:?} after {} of {} bytes",
                    inflate.total_out(),
                    out.len()
                )));
            }
        }
        CompressionType::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| bad(e.to_string()))?
                .single_frame();
            d.read_exact(out).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::header::tests::v3;
    use super::*;

    /// A 64 KiB image with 512-byte clusters whose data comes before its L2 tables:
    /// header, L1, data A, data B, junk, L2#0, L2#1, data C.
    fn reordered() -> Vec<u8> {
        let mut f = vec![0u8; 8 * 512];
        f[..4].copy_from_slice(b"QFI\xfb");
        f[4..8].copy_from_slice(&3u32.to_be_bytes());
        f[20..24].copy_from_slice(&9u32.to_be_bytes());
        f[24..32].copy_from_slice(&65536u64.to_be_bytes());
        f[36..40].copy_from_slice(&2u32.to_be_bytes());
        f[40..48].copy_from_slice(&512u64.to_be_bytes());
        f[96..100].copy_from_slice(&4u32.to_be_bytes());
        f[100..104].copy_from_slice(&104u32.to_be_bytes());
        let put = |f: &mut Vec<u8>, off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_be_bytes());
        put(&mut f, 512, 0xa00 | 1 << 63);
        put(&mut f, 520, 0xc00 | 1 << 63);
        f[0x400..0x600].fill(0xaa);
        f[0x600..0x800].fill(0xbb);
        f[0x800..0xa00].fill(0x77); // unreferenced
        put(&mut f, 0xa00, 0xe00 | 1 << 63); // guest 0 → data C
        put(&mut f, 0xa08, 0x400 | 1 << 63); // guest 0x200 → data A (behind)
        put(&mut f, 0xc00 + 16, 0x600 | 1 << 63); // guest 0x8400 → data B (behind)
        f[0xe00..0x1000].fill(0xcc);
        f
    }

    fn convert_into(image: &[u8], budget: u64, out: &std::path::Path) -> Result<()> {
        let mut t = crate::target::scratch(out)?;
        let mut r = image;
        let q = Qcow2Stream::open(&mut r, budget)?;
        let vs = q.header().virtual_size;
        q.convert(&mut t)?;
        t.finish(vs)
    }

    #[test]
    fn data_before_its_l2_table_is_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        convert_into(&reordered(), 1 << 20, &out).unwrap();
        let got = std::fs::read(&out).unwrap();
        let mut want = vec![0u8; 65536];
        want[..0x200].fill(0xcc);
        want[0x200..0x400].fill(0xaa);
        want[0x8400..0x8600].fill(0xbb);
        assert!(got == want);
        // Two clusters of data and one of junk do not fit in 1 KiB.
        let e = convert_into(&reordered(), 1024, &out).unwrap_err();
        assert_eq!(e.label(), "unsupported", "{e}");
    }

    #[test]
    fn l2_entries() {
        let h = Header::parse(&v3(1 << 30, 2)).unwrap();
        assert!(l2_item(&h, 0, None, 0).unwrap().is_none());
        assert!(l2_item(&h, 0x5_0000 | ZERO, None, 0).unwrap().is_none());
        let (host, item) = l2_item(&h, 0x5_0000, None, 0x1_0000).unwrap().unwrap();
        assert_eq!(host, 0x5_0000);
        assert!(matches!(
            item,
            Item::Data {
                guest: 0x1_0000,
                mask: None
            }
        ));
        assert!(l2_item(&h, 0x5_0200, None, 0).is_err());
        // Compressed: 64 KiB clusters, x = 54; 2 sectors at offset 0x12345.
        let word = COMPRESSED | (1u64 << 54) | 0x12345;
        let (host, item) = l2_item(&h, word, None, 0).unwrap().unwrap();
        assert_eq!(host, 0x12345);
        assert!(matches!(item, Item::Compressed { len, .. } if len == 1024 - 0x145));
    }
}
