//! Where the raw image goes: a regular file (truncated, written sparsely, length set at
//! the end) or a block device (capacity from the device, every byte of the image written).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::PathBuf;

use crate::resume::{self, Hashed, Record};
use crate::source::Stats;
use crate::{Error, Result};

/// Granularity of hole detection (a file system block).
pub const ZERO_BLOCK: usize = 4096;

/// The target of an import.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// A file (created or truncated) or a block device.
    pub path: PathBuf,
    /// Capacity limit (`--size`). For a block device the smaller of this and its size.
    pub capacity: Option<u64>,
}

/// What the target is, found before it is opened for writing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe {
    pub(crate) block: bool,
    pub(crate) capacity: Option<u64>,
}

/// Looks at the target without changing it.
pub(crate) fn probe(spec: &TargetSpec) -> Result<Probe> {
    let path = &spec.path;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            let mut f = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let size = f
                .seek(SeekFrom::End(0))
                .map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
            Ok(Probe {
                block: true,
                capacity: Some(spec.capacity.map_or(size, |c| c.min(size))),
            })
        }
        Ok(m) if m.is_file() => Ok(Probe {
            block: false,
            capacity: spec.capacity,
        }),
        Ok(_) => Err(Error::InvalidArgument {
            field: "target",
            value: path.display().to_string(),
            reason: "must be a regular file or a block device".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Probe {
            block: false,
            capacity: spec.capacity,
        }),
        Err(e) => Err(Error::io(format!("inspecting {}", path.display()), e)),
    }
}

impl Probe {
    /// Fails if an image of `needed` bytes cannot fit.
    pub(crate) fn check(&self, needed: u64) -> Result<()> {
        match self.capacity {
            Some(capacity) if needed > capacity => Err(Error::TooLarge { needed, capacity }),
            _ => Ok(()),
        }
    }
}

/// An open target.
pub(crate) struct Target {
    file: File,
    path: PathBuf,
    probe: Probe,
    /// Written ranges (start → end), kept for block devices and preallocated files: gaps
    /// are zeroed at the end.
    extents: Option<BTreeMap<u64, u64>>,
    /// Bytes a previous run left written (a resumed raw import), from 0.
    base: u64,
    /// The highest end written (with `base`: everything below it, for sequential writers).
    high: u64,
    /// The source offset a later run could continue from now (see [`Checkpoint`]).
    safe: u64,
    /// Checkpoints for a later run, when the import can resume.
    checkpoint: Option<Checkpoint>,
    stats: Stats,
}

/// Periodic checkpoints for a later run ([`crate::resume`]).
pub(crate) struct Checkpoint {
    /// The record file.
    pub(crate) path: PathBuf,
    /// The record, its offset updated at each checkpoint.
    pub(crate) record: Record,
    /// Source bytes between two checkpoints.
    pub(crate) every: u64,
    /// Where a later run may continue: a raw image's written prefix (source and target
    /// offsets are the same), or the points the converter declares with
    /// [`Target::safe_point`] (qcow2: where everything before is written).
    pub(crate) by_safe_points: bool,
    /// A compressed image's decoder restart points: the record's `offset` then counts the
    /// image bytes written, and a checkpoint records the last point at or below it.
    pub(crate) points: Option<resume::Points>,
}

impl Target {
    /// Opens the target for writing: a file is created or truncated, a device opened.
    pub(crate) fn open(spec: &TargetSpec, probe: Probe, stats: Stats) -> Result<Self> {
        Self::open_with(spec, probe, stats, None)
    }

    /// Opens a file target that a previous run wrote, keeping its bytes; `base` is the
    /// prefix a raw import wrote (0 for other formats).
    pub(crate) fn reopen(spec: &TargetSpec, probe: Probe, stats: Stats, base: u64) -> Result<Self> {
        Self::open_with(spec, probe, stats, Some(base))
    }

    fn open_with(spec: &TargetSpec, probe: Probe, stats: Stats, kept: Option<u64>) -> Result<Self> {
        let path = spec.path.clone();
        let base = kept.unwrap_or(0);
        let mut o = OpenOptions::new();
        o.write(true);
        if !probe.block {
            o.create(true).truncate(kept.is_none());
        }
        let file = o
            .open(&path)
            .map_err(|e| Error::io(format!("opening target {}", path.display()), e))?;
        stats.written(base);
        let mut t = Self {
            file,
            path,
            probe,
            extents: None,
            base,
            high: base,
            safe: base,
            checkpoint: None,
            stats,
        };
        if probe.block {
            t.track_extents();
        }
        Ok(t)
    }

    /// Starts keeping written ranges (the resumed prefix counts as written).
    fn track_extents(&mut self) {
        let mut map = BTreeMap::new();
        if self.base > 0 {
            map.insert(0, self.base);
        }
        self.extents = Some(map);
    }

    /// Makes a file target fully allocated: every byte written, zeros included.
    pub(crate) fn preallocated(mut self, yes: bool) -> Self {
        if yes && self.extents.is_none() {
            self.track_extents();
        }
        self
    }

    /// Keeps checkpoints from now on (without safe points, the writer must write in order,
    /// from `base`).
    pub(crate) fn with_checkpoints(mut self, checkpoint: Checkpoint) -> Self {
        self.safe = checkpoint.record.offset;
        self.checkpoint = Some(checkpoint);
        self
    }

    /// The converter's word that everything stored before source offset `off` is written
    /// and nothing before it is needed again: a later run may continue from there.
    pub(crate) fn safe_point(&mut self, off: u64) -> Result<()> {
        let Some(c) = &self.checkpoint else {
            return Ok(());
        };
        if !c.by_safe_points || off <= self.safe {
            return Ok(());
        }
        self.safe = off;
        if off >= c.record.offset.saturating_add(c.every) {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    /// Syncs the target, then records the last safe offset.
    fn save_checkpoint(&mut self) -> Result<()> {
        let Some(c) = &mut self.checkpoint else {
            return Ok(());
        };
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))?;
        c.record.offset = self.safe;
        if c.record.checksum.is_some() {
            // The hash as far as the reader got, which is at or past `safe`.
            let s = self.stats.lock();
            c.record.hashed = s.hasher.as_ref().map(|h| Hashed {
                up_to: s.reporter.state.source_done.max(s.hash_from),
                state: h.state(),
            });
        }
        let record = match &c.points {
            None => c.record.clone(),
            Some(points) => match resume::at_last_point(&c.record, points) {
                Some(r) => r,
                None => {
                    tracing::debug!(
                        written = c.record.offset,
                        "no restart point of the decoder yet; no checkpoint"
                    );
                    return Ok(());
                }
            },
        };
        resume::save(&c.path, &record)?;
        tracing::debug!(offset = self.safe, "checkpoint");
        Ok(())
    }

    /// After a failure that a later run may get past: records how far the target got and
    /// keeps it. Without checkpoints (or when the record cannot be written) the target is
    /// removed, as [`Target::abort`] does. Returns whether the target was kept.
    pub(crate) fn suspend(mut self) -> bool {
        if self.checkpoint.is_none() {
            self.abort();
            return false;
        }
        match self.save_checkpoint() {
            Ok(()) => {
                tracing::info!(offset = self.safe, path = %self.path.display(), "kept the target to resume from");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot checkpoint; removing the target");
                self.abort();
                false
            }
        }
    }

    /// Writes `data` at `off`. On a file (not preallocated), all-zero blocks become holes.
    pub(crate) fn write_at(&mut self, off: u64, data: &[u8]) -> Result<()> {
        let end = off + data.len() as u64;
        self.probe.check(end)?;
        if let Some(extents) = self.extents.as_mut() {
            self.file
                .write_all_at(data, off)
                .map_err(|e| Error::io(format!("writing {} at {off}", self.path.display()), e))?;
            add_extent(extents, off, end);
        } else {
            // Non-zero runs, aligned on absolute ZERO_BLOCK boundaries.
            let mut i = 0usize;
            let mut run: Option<usize> = None;
            while i < data.len() {
                let abs = off + i as u64;
                let next = ((abs / ZERO_BLOCK as u64 + 1) * ZERO_BLOCK as u64 - abs) as usize;
                let j = (i + next).min(data.len());
                if is_zero(&data[i..j]) {
                    if let Some(s) = run.take() {
                        self.pwrite(off + s as u64, &data[s..i])?;
                    }
                } else if run.is_none() {
                    run = Some(i);
                }
                i = j;
            }
            if let Some(s) = run {
                self.pwrite(off + s as u64, &data[s..])?;
            }
        }
        self.stats.written(end);
        self.high = self.high.max(end);
        if let Some(c) = &self.checkpoint
            && !c.by_safe_points
        {
            self.safe = self.high;
            if self.safe >= c.record.offset.saturating_add(c.every) {
                self.save_checkpoint()?;
            }
        }
        Ok(())
    }

    fn pwrite(&self, off: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, off)
            .map_err(|e| Error::io(format!("writing {} at {off}", self.path.display()), e))
    }

    /// Zeroes what was not written (devices, preallocated files), sets a file's final
    /// size, then syncs.
    pub(crate) fn finish(mut self, size: u64) -> Result<()> {
        self.probe.check(size)?;
        if let Some(extents) = self.extents.take() {
            let zeros = vec![0u8; 1 << 20];
            let mut pos = 0u64;
            let gaps = extents
                .iter()
                .map(|(s, e)| (*s, *e))
                .chain(std::iter::once((size, size)));
            for (s, e) in gaps {
                while pos < s.min(size) {
                    let n = (s.min(size) - pos).min(zeros.len() as u64) as usize;
                    self.pwrite(pos, &zeros[..n])?;
                    pos += n as u64;
                }
                pos = pos.max(e);
            }
        }
        if !self.probe.block {
            self.file
                .set_len(size)
                .map_err(|e| Error::io(format!("setting the length of {}", self.path.display()), e))?;
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))?;
        if let Some(c) = &self.checkpoint {
            resume::remove(&c.path);
        }
        Ok(())
    }

    /// [`Self::finish`]; on failure the target is removed as [`Self::abort`] does.
    pub(crate) fn finish_or_abort(self, size: u64) -> Result<()> {
        let (path, block) = (self.path.clone(), self.probe.block);
        self.finish(size).inspect_err(|_| {
            if !block {
                let _ = std::fs::remove_file(&path);
            }
        })
    }

    /// Removes a file target after a failure (a device is left as it is), and its
    /// checkpoint.
    pub(crate) fn abort(self) {
        if let Some(c) = &self.checkpoint {
            resume::remove(&c.path);
        }
        if !self.probe.block {
            drop(self.file);
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove the target");
            }
        }
    }
}

fn add_extent(map: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    if let Some((&s, &e)) = map.range(..=start).next_back()
        && e >= start
    {
        start = s;
        end = end.max(e);
    }
    let overlapping: Vec<u64> = map.range(start..=end).map(|(s, _)| *s).collect();
    for s in overlapping {
        if let Some(e) = map.remove(&s) {
            end = end.max(e);
        }
    }
    map.insert(start, end);
}

/// Whether every byte is zero. Blocks of 256 bytes are OR-folded a word at a time (a fold
/// the compiler vectorises) with one branch per block: twice as fast as a branch per 16
/// bytes on what most of a sparse volume is, holes read as zeros (a clone of a 16 GiB
/// volume holding 2 GiB scans 14 GiB of them).
pub(crate) fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(256);
    for block in &mut blocks {
        let or = block.chunks_exact(8).fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
        });
        if or != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|x| *x == 0)
}

/// A file target at `out` with quiet counters, for the format readers' unit tests.
#[cfg(test)]
pub(crate) fn scratch(out: &std::path::Path) -> Result<Target> {
    let spec = TargetSpec {
        path: out.to_path_buf(),
        capacity: None,
    };
    Target::open(&spec, probe(&spec)?, Stats::quiet())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn stats() -> Stats {
        Stats::quiet()
    }

    #[test]
    fn extents_merge() {
        let mut m = BTreeMap::new();
        add_extent(&mut m, 10, 20);
        add_extent(&mut m, 30, 40);
        add_extent(&mut m, 20, 30);
        assert_eq!(m.into_iter().collect::<Vec<_>>(), vec![(10, 40)]);
    }

    #[test]
    fn is_zero_finds_any_nonzero_byte() {
        // Lengths around the 256-byte blocks and the 8-byte words, a byte set anywhere.
        for len in [0, 1, 7, 8, 255, 256, 257, 511, 4096, 4096 + 13] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b), "len {len}");
            for at in 0..len {
                b[at] = 0x80;
                assert!(!is_zero(&b), "len {len}, byte {at}");
                b[at] = 0;
            }
        }
    }

    #[test]
    fn zero_blocks_become_holes_and_capacity_holds() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TargetSpec {
            path: dir.path().join("t.img"),
            capacity: Some(8 << 20),
        };
        let p = probe(&spec).unwrap();
        let mut t = Target::open(&spec, p, stats()).unwrap();
        let mut data = vec![0u8; 4 << 20];
        data[100] = 1;
        data[(4 << 20) - 1] = 2;
        t.write_at(1000, &data).unwrap();
        assert_eq!(
            t.write_at((8 << 20) - 10, &[1; 20]).unwrap_err().label(),
            "too_large"
        );
        t.finish(8 << 20).unwrap();
        let m = std::fs::metadata(&spec.path).unwrap();
        assert_eq!(m.len(), 8 << 20);
        assert!(m.blocks() * 512 <= 64 << 10, "{} blocks", m.blocks());
        let back = std::fs::read(&spec.path).unwrap();
        assert_eq!(&back[1000..1000 + data.len()], &data[..]);
        assert!(is_zero(&back[..1000]));
    }
}
