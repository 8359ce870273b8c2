//! Resuming an import in a later process (a restarted importer pod, a second `ido import
//! --resume`): a checkpoint file beside the target records how far the target is durable.
//!
//! ```text
//!   target  /data/disk.img              [0 ───── offset) synced ── … still being written
//!   record  /data/disk.img.ido-resume   {source, validator, total, format, offset, hashed, …}
//! ```
//!
//! Every [`ImportOptions::checkpoint_every`](crate::ImportOptions::checkpoint_every) bytes
//! the target is synced, then the record is replaced atomically (written to a temporary
//! file, synced, renamed), so a record never claims bytes that a crash could lose. A
//! transport failure writes a last record at the exact position; success and permanent
//! failures remove the record (and, for failures, the target).
//!
//! A later run resumes only when the record matches: the same source (URL without its
//! query, so a presigned S3 URL may be signed again), the same options, and the server
//! still has the same object (`Range` with `If-Range: <validator>`; a changed object gets
//! the whole body back and the import starts from 0).
//!
//! What resumes, from HTTP(S) or S3 whose server sends a validator (ETag or Last-Modified):
//! - an uncompressed raw or ISO image (or a fixed VHD): a source byte is a target byte;
//! - an uncompressed qcow2 without preallocation: `offset` is where the next cluster to
//!   convert is stored, and the next run rebuilds the mapping from the image's tables with
//!   ranged reads ([`crate::qcow2`]); its compressed clusters too (each is inflated alone);
//! - a streamOptimized VMDK without preallocation: `offset` is a grain marker (each grain
//!   is compressed alone and says where it goes); the next run reads the file's front
//!   again (header, descriptor, the grain tables qemu puts there) and walks on;
//! - a raw or ISO image in one layer of gzip, xz, zstd or bzip2, from a point where its
//!   decoder can start again ([`Decoded`]): `offset` is the compressed byte to fetch from,
//!   [`Decoded::output`] how much of the image the target holds. The decoder reports such
//!   points as it passes them ([`Points`]); a checkpoint takes the last one the synced
//!   target covers:
//!   - gzip: any deflate block boundary (zlib's `zran.c` idea): the record keeps the bit
//!     within the byte, the CRC-32 and length of the member so far; the 32 KiB window the
//!     next block may refer to is the target's own last 32 KiB before `output` (synced
//!     before the record; its CRC-32 is recorded and checked). Member boundaries too;
//!   - xz: stream boundaries, and block boundaries of a stream whose block headers record
//!     their sizes (xz -T, the default of xz 5.6); the next run hands liblzma a stream
//!     header and the blocks from there, and an index of those blocks in place of the
//!     stored one (which is checked);
//!   - zstd: frame boundaries (pzstd, `zstd -B`/`--rsyncable` do not split frames, but
//!     concatenated files and pzstd's output have several);
//!   - bzip2: stream boundaries (pbzip2 writes one stream per 900 kB block; concatenated
//!     files).
//!
//!   A stream with no such point before the failure (one zstd frame, one xz block, one
//!   bzip2 stream) cannot resume: its decoder state cannot be rebuilt from the middle.
//!
//! With a checksum, the record also holds the hash's state over the source's first
//! `hashed.upTo` bytes (at or past `offset`: the reader runs ahead of the writer); the next
//! run continues that hash and feeds it only the bytes past `upTo`.
//!
//! The other formats (and a compressed qcow2, tar, …) start from 0.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::detect::DiskFormat;
use crate::{Error, Result};

/// Version of the record's layout (3: [`Record::decoded`]; a record of version 2 is one
/// without it, and still read; a binary that knows only version 2 ignores version 3).
pub(crate) const VERSION: u32 = 3;

/// The default distance between two checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 256 << 20;

/// What a checkpoint file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Layout version ([`VERSION`]).
    pub version: u32,
    /// The source as shown (a URL without its query).
    pub source: String,
    /// The object's validator when it was first fetched (strong ETag, else Last-Modified).
    pub validator: String,
    /// The object's length.
    pub total: u64,
    /// The format being imported (`raw`, `iso`, `qcow2` or `vmdk`; inside the compression
    /// of [`Record::decoded`] when there is one).
    pub format: String,
    /// The checksum asked for, as given.
    pub checksum: Option<String>,
    /// Whether zeros are written too.
    pub preallocate: bool,
    /// The source offset to continue from: a raw image's target is on stable storage up to
    /// it; a qcow2's every cluster stored before it is; a compressed image's decoder starts
    /// again at this byte ([`Record::decoded`]).
    pub offset: u64,
    /// The checksum's state, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed: Option<Hashed>,
    /// A compressed image: where its decoder starts again, and how much of the image the
    /// target holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<Decoded>,
}

/// Where a compressed layer's decoder can start again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decoded {
    /// The compression (`gzip`, `xz`, `zstd` or `bzip2`).
    pub compression: String,
    /// Image bytes before this point: the target is on stable storage up to here.
    pub output: u64,
    /// Inside a gzip member, at a deflate block boundary: the inflater's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflate: Option<InflatePoint>,
    /// Inside an xz stream, at a block: the stream's check type (its header's second flag
    /// byte), for the stream header the next run puts before the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xz_check: Option<u8>,
}

/// A deflate block boundary inside a gzip member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InflatePoint {
    /// Bits of the byte at [`Record::offset`] that belong to the previous block (0–7).
    pub bit: u8,
    /// CRC-32 of the member's output so far (for its trailer).
    pub crc: u32,
    /// The member's output so far (its trailer's ISIZE, and how much window there is).
    pub member: u64,
    /// CRC-32 of the window: the last `min(member, 32 KiB)` image bytes before
    /// [`Decoded::output`], read back from the target by the next run.
    pub window: u32,
}

/// The size of a deflate window.
pub(crate) const WINDOW: usize = 32 << 10;

/// A point where decoding can start again: the compressed byte to fetch from, and the
/// decoder's state there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Point {
    pub(crate) input: u64,
    pub(crate) decoded: Decoded,
}

/// The restart points a decoder passed, shared with the target's checkpoints. Kept at least
/// 64 KiB of image apart (the newest one moves forward), so their number stays small while
/// the decoder runs ahead of the writer.
#[derive(Clone)]
pub(crate) struct Points(Arc<Mutex<Queue>>);

struct Queue {
    points: VecDeque<Point>,
    /// Least distance in image bytes between two points kept (but the newest).
    gap: u64,
}

impl Points {
    /// Most points kept.
    const MAX: usize = 4096;

    pub(crate) fn new() -> Self {
        Self::with_gap(64 << 10)
    }

    pub(crate) fn with_gap(gap: u64) -> Self {
        Points(Arc::new(Mutex::new(Queue {
            points: VecDeque::new(),
            gap,
        })))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a point the decoder has reached (points come in image order).
    pub(crate) fn push(&self, p: Point) {
        let mut guard = self.queue();
        let Queue { points: q, gap } = &mut *guard;
        let n = q.len();
        let close = match (n.checked_sub(2).map(|i| &q[i]), q.back()) {
            (_, Some(last)) if last.decoded.output == p.decoded.output => true,
            (Some(before), Some(_)) => p.decoded.output < before.decoded.output.saturating_add(*gap),
            _ => false,
        };
        if close {
            q.pop_back();
        } else if n >= Self::MAX {
            q.pop_front();
        }
        q.push_back(p);
    }

    /// The last point at or below `written` image bytes (the points before it are
    /// dropped; it stays, for the next checkpoint if no later one comes).
    pub(crate) fn take(&self, written: u64) -> Option<Point> {
        let q = &mut self.queue().points;
        let i = q.iter().rposition(|p| p.decoded.output <= written)?;
        q.drain(..i);
        q.front().cloned()
    }

    /// The points kept.
    #[cfg(test)]
    pub(crate) fn all(&self) -> Vec<Point> {
        self.queue().points.iter().cloned().collect()
    }
}

impl std::fmt::Debug for Points {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Points")
    }
}

impl PartialEq for Points {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Points {}

/// A checksum's running state over a prefix of the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hashed {
    /// How many source bytes the state covers (at least [`Record::offset`]).
    pub up_to: u64,
    /// The state ([`crate::checksum::Hasher::state`]).
    pub state: String,
}

impl Record {
    /// The format recorded, if it is one that resumes.
    pub(crate) fn disk_format(&self) -> Option<DiskFormat> {
        match self.format.as_str() {
            "raw" => Some(DiskFormat::Raw),
            "iso" => Some(DiskFormat::Iso),
            "qcow2" => Some(DiskFormat::Qcow2),
            "vmdk" => Some(DiskFormat::Vmdk),
            _ => None,
        }
    }
}

/// Where the record of a target lives: `<target>.ido-resume`.
pub fn record_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".ido-resume");
    PathBuf::from(name)
}

/// Reads a record; `None` when there is none or it cannot be used (logged).
pub(crate) fn load(path: &Path) -> Option<Record> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the checkpoint; starting from 0");
            return None;
        }
    };
    match serde_json::from_slice::<Record>(&text) {
        Ok(r) if r.version == VERSION || (r.version == 2 && r.decoded.is_none()) => Some(r),
        Ok(r) => {
            tracing::info!(path = %path.display(), version = r.version, "checkpoint of another version; starting from 0");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable checkpoint; starting from 0");
            None
        }
    }
}

/// The record of a compressed image whose target holds `written.offset` image bytes (synced):
/// at the decoder's last restart point at or below them; `None` before the first.
pub(crate) fn at_last_point(written: &Record, points: &Points) -> Option<Record> {
    let p = points.take(written.offset)?;
    Some(Record {
        offset: p.input,
        decoded: Some(p.decoded),
        ..written.clone()
    })
}

/// Replaces the record atomically: a crash leaves the old one or the new one.
pub(crate) fn save(path: &Path, record: &Record) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("writing the checkpoint {}", path.display()), e)
    })
}

/// Removes the record (and a temporary one a crash may have left).
pub(crate) fn remove(path: &Path) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    for p in [path, Path::new(&tmp)] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "could not remove the checkpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> Record {
        Record {
            version: VERSION,
            source: "https://example.org/disk.img".into(),
            validator: "\"v1\"".into(),
            total: 10 << 20,
            format: "raw".into(),
            checksum: None,
            preallocate: false,
            offset,
            hashed: None,
            decoded: None,
        }
    }

    fn point(input: u64, output: u64) -> Point {
        Point {
            input,
            decoded: Decoded {
                compression: "zstd".into(),
                output,
                inflate: None,
                xz_check: None,
            },
        }
    }

    #[test]
    fn points_stay_few_and_a_checkpoint_takes_the_last_one_written() {
        let p = Points::with_gap(100);
        for (i, out) in [0u64, 10, 50, 120, 130, 130, 400, 401].into_iter().enumerate() {
            p.push(point(i as u64 * 7, out));
        }
        // 50 replaced 10 (within 100 of 0), 130 replaced 120 (within 100 of 50), and its
        // twin (the same output, further input) replaced it.
        let outs: Vec<(u64, u64)> = p.all().iter().map(|p| (p.input, p.decoded.output)).collect();
        assert_eq!(outs, [(0, 0), (14, 50), (35, 130), (42, 400), (49, 401)]);
        assert_eq!(p.take(129).map(|p| p.input), Some(14));
        assert_eq!(p.take(300).map(|p| p.input), Some(35));
        // Earlier points are dropped; the one taken stays for the next checkpoint.
        assert_eq!(p.take(300).map(|p| p.input), Some(35));
        assert_eq!(p.take(100), None);
        assert_eq!(p.take(u64::MAX).map(|p| p.input), Some(49));
    }

    #[test]
    fn a_compressed_image_s_record_is_its_last_point_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(&dir.path().join("disk.img"));
        let points = Points::new();
        let written = record(5 << 20);
        // No point yet: nothing to write.
        assert_eq!(at_last_point(&written, &points), None);
        points.push(point(1000, 4 << 20));
        points.push(point(2000, 6 << 20));
        save(&path, &at_last_point(&written, &points).unwrap()).unwrap();
        let saved = load(&path).unwrap();
        assert_eq!(saved.offset, 1000);
        assert_eq!(saved.decoded.unwrap().output, 4 << 20);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#""decoded":{"compression":"zstd","output":4194304}"#),
            "{text}"
        );
        // A record of version 2 (nothing compressed) is still read; one of version 2 that
        // claims a compressed point is not.
        let mut v2 = record(1 << 20);
        v2.version = 2;
        std::fs::write(&path, serde_json::to_vec(&v2).unwrap()).unwrap();
        assert_eq!(load(&path), Some(v2.clone()));
        v2.decoded = Some(point(1, 1).decoded);
        std::fs::write(&path, serde_json::to_vec(&v2).unwrap()).unwrap();
        assert_eq!(load(&path), None);
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(&dir.path().join("disk.img"));
        assert!(path.ends_with("disk.img.ido-resume"));
        assert_eq!(load(&path), None);
        save(&path, &record(1 << 20)).unwrap();
        let mut hashed = record(2 << 20);
        hashed.hashed = Some(Hashed {
            up_to: 3 << 20,
            state: "00ab".into(),
        });
        save(&path, &hashed).unwrap();
        assert_eq!(load(&path), Some(hashed));
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path), None);
        let mut other = record(1);
        other.version = VERSION + 1;
        std::fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(load(&path), None);
        remove(&path);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary file left"
        );
    }
}
