//! Resuming: the checkpoint a run continues (checked against this import), where it
//! continues, and the checkpoints it keeps for a later run.

use std::io;
use std::path::Path;

use super::ImportOptions;
use crate::checksum::{Checksum, Hasher};
use crate::detect::{Compression, DiskFormat};
use crate::resume::{self, Decoded, Points, Record, WINDOW};
use crate::source::Stats;
use crate::target::{Checkpoint, Probe};
use crate::{Error, Result};

/// The checkpoint to continue, if there is one that this import matches (with, for a
/// checkpoint inside a gzip member, the window read back from the target).
pub(super) fn resume_record(opts: &ImportOptions, probe: Probe) -> Result<Option<(Record, Option<Vec<u8>>)>> {
    let path = &opts.target.path;
    if probe.block {
        return Err(Error::InvalidArgument {
            field: "resume",
            value: path.display().to_string(),
            reason: "needs a file target: the checkpoint is a file beside it".into(),
        });
    }
    let record_path = resume::record_path(path);
    let Some(r) = resume::load(&record_path) else {
        return Ok(None);
    };
    if !record_matches(opts, &r, path) {
        tracing::info!(checkpoint = %record_path.display(), "the checkpoint is of another import; starting from 0");
        resume::remove(&record_path);
        return Ok(None);
    }
    // A deflate block may refer to the 32 KiB before it: the target's own bytes, synced
    // before the record was written (its holes read as the zeros they stand for).
    let window = match r
        .decoded
        .as_ref()
        .and_then(|d| Some((d.output, d.inflate.as_ref()?)))
    {
        None => None,
        Some((output, f)) => {
            let len = f.member.min(WINDOW as u64) as usize;
            let w = read_window(path, output - len as u64, len).map_err(|e| {
                Error::io(
                    format!("reading the window of the checkpoint from {}", path.display()),
                    e,
                )
            })?;
            if zlib_rs::crc32::crc32(0, &w) != f.window {
                tracing::info!(checkpoint = %record_path.display(), "the target's bytes before the checkpoint are not the ones recorded; starting from 0");
                resume::remove(&record_path);
                return Ok(None);
            }
            Some(w)
        }
    };
    Ok(Some((r, window)))
}

/// Whether the checkpoint `r` is of this import: the same source, checksum, format and
/// preallocation, a saved hash and decoder state it can continue from, and the target
/// still a file.
fn record_matches(opts: &ImportOptions, r: &Record, path: &Path) -> bool {
    let checksum = opts.checksum.as_ref().map(ToString::to_string);
    let format_ok = match (opts.format, r.disk_format()) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(f), Some(g)) => f == g || (f == DiskFormat::Vhd && g == DiskFormat::Raw),
    };
    // A checksum continues from its saved state, which covers at least the kept bytes.
    let hash_ok = match (&opts.checksum, &r.hashed) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(c), Some(h)) => {
            h.up_to >= r.offset && h.up_to <= r.total && Hasher::restore(c.algorithm, &h.state).is_ok()
        }
    };
    // A compressed image: a raw or ISO image in a compression that resumes; the bytes to
    // read again are the decoder's (a fixed VHD's footer is held back by the writer).
    let decoded_ok = match &r.decoded {
        None => r.offset.saturating_add(512) <= r.total,
        Some(d) => {
            compression(&d.compression).is_some()
                && matches!(r.disk_format(), Some(DiskFormat::Raw | DiskFormat::Iso))
                && r.offset < r.total
                && d.inflate
                    .as_ref()
                    .is_none_or(|f| f.bit <= 7 && f.member <= d.output)
                && d.xz_check.is_none_or(|c| c <= 15)
                && (d.inflate.is_none() || d.xz_check.is_none())
        }
    };
    r.source == opts.source.to_string()
        && r.checksum == checksum
        && hash_ok
        && r.preallocate == opts.preallocate
        && format_ok
        && r.offset > 0
        && decoded_ok
        && path.is_file()
}

/// `len` bytes of the file at `path` from `off`; past its end, zeros (a target's length
/// is set at the end: a run of zeros at the end of what was written is not in it yet).
fn read_window(path: &std::path::Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut w = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match FileExt::read_at(&f, &mut w[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(w)
}

/// The compression a checkpoint names, if it is one that resumes.
pub(super) fn compression(name: &str) -> Option<Compression> {
    [
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
    ]
    .into_iter()
    .find(|c| c.name() == name)
}

/// Why an import of a `c` layer that failed before its decoder passed a restart point
/// cannot resume.
fn no_restart_point(c: &str) -> &'static str {
    match c {
        "gzip" => "no deflate block ended before the failure",
        "xz" => {
            "no xz stream or block ended before the failure (a stream of one block, or whose \
             block headers do not record their sizes as multi-threaded xz writes them, resumes \
             only at the next stream)"
        }
        "zstd" => {
            "no zstd frame ended before the failure (zstd writes one frame per file, even with \
             -T0 or --rsyncable: only concatenated files and pzstd's output have several)"
        }
        _ => {
            "no bzip2 stream ended before the failure (bzip2 writes one stream per file; \
             pbzip2 one per 900 kB block)"
        }
    }
}

/// Where a run continues, once the source answered at `resumed_at` (0: from the start).
pub(super) struct Continued {
    /// The format of the kept target, when this run continues one.
    pub(super) resumed: Option<DiskFormat>,
    /// A compressed image's decoder state at its restart point.
    pub(super) decoded: Option<Decoded>,
    /// The prefix of a resumed raw import (where its bytes start; 0 otherwise).
    pub(super) base: u64,
}

/// A resumed import continues the source at `resumed_at`; a raw image's target holds the
/// source's bytes up to there (`base`), a qcow2's the clusters stored before it. A
/// compressed image continues its decoder at a restart point.
pub(super) fn continued(record: Option<&Record>, resumed_at: u64, mapped: bool) -> Result<Continued> {
    let resumed = record.and_then(Record::disk_format).filter(|_| resumed_at > 0);
    if resumed_at > 0
        && (resumed.is_none() || (matches!(resumed, Some(DiskFormat::Qcow2 | DiskFormat::Vmdk)) && !mapped))
    {
        return Err(Error::io(
            "resuming",
            io::Error::other("the source continued without a matching checkpoint"),
        ));
    }
    let decoded = record
        .filter(|_| resumed.is_some())
        .and_then(|r| r.decoded.clone());
    let base = match (resumed, &decoded) {
        (Some(DiskFormat::Raw | DiskFormat::Iso), Some(d)) => d.output,
        (Some(DiskFormat::Raw | DiskFormat::Iso), None) => resumed_at,
        _ => 0,
    };
    Ok(Continued {
        resumed,
        decoded,
        base,
    })
}

/// The hash state and progress of the run `r` continues.
pub(super) fn restore(
    stats: &Stats,
    checksum: Option<&Checksum>,
    r: &Record,
    resumed_at: u64,
    total: Option<u64>,
) -> Result<()> {
    let mut s = stats.lock();
    if let (Some(c), Some(h)) = (checksum, &r.hashed) {
        s.hasher = Some(Hasher::restore(c.algorithm, &h.state)?);
        s.hash_from = h.up_to;
    }
    s.reporter.state.source_done = resumed_at;
    s.reporter.state.resumed_from = resumed_at;
    tracing::info!(offset = resumed_at, total = ?total, "continuing the previous run's target");
    Ok(())
}

/// The checkpoints this run keeps, if it can resume in a later run: where a source byte is
/// a target byte, and the object can be asked for again from the middle (`object`: its
/// validator and length).
///
/// A qcow2's checkpoints are taken between clusters; a kept target cannot be preallocated
/// (what the previous run wrote is not known). A raw or ISO image in one compression: at
/// the decoder's restart points (`points`; the target's record counts image bytes, from
/// `offset`; see `resume::save`). A streamOptimized VMDK's, at its grain markers (a
/// monolithicSparse one has none, and starts from 0).
pub(super) fn checkpoints(
    opts: &ImportOptions,
    object: Option<(&str, u64)>,
    format: DiskFormat,
    layers: &[&'static str],
    by_safe_points: bool,
    points: Option<&Points>,
    offset: u64,
) -> Option<Checkpoint> {
    match object {
        Some((validator, total))
            if opts.resume
                && ((layers.is_empty()
                    && (matches!(format, DiskFormat::Raw | DiskFormat::Iso) || by_safe_points))
                    || points.is_some()) =>
        {
            Some(Checkpoint {
                path: resume::record_path(&opts.target.path),
                record: Record {
                    version: resume::VERSION,
                    source: opts.source.to_string(),
                    validator: validator.to_owned(),
                    total,
                    format: format.name().to_string(),
                    checksum: opts.checksum.as_ref().map(ToString::to_string),
                    preallocate: opts.preallocate,
                    offset,
                    hashed: None,
                    decoded: None,
                },
                every: opts.checkpoint_every.max(1),
                by_safe_points,
                points: points.cloned(),
            })
        }
        _ => {
            if opts.resume {
                tracing::info!(%format, ?layers, "this import cannot resume in a later run (only raw and ISO images, uncompressed or in one layer of gzip, xz, zstd or bzip2, and qcow2 and streamOptimized VMDK without preallocation, from HTTP or S3 can)");
            }
            None
        }
    }
}

/// Whether a checkpoint can be written after a failure: always, but for a compressed image
/// whose decoder passed no restart point that the target holds (logged: the next run starts
/// from 0).
pub(super) fn restartable(points: Option<&Points>, stats: &Stats, layers: &[&str]) -> bool {
    let Some(points) = points else {
        return true;
    };
    let written = stats.lock().reporter.state.written;
    if points.take(written).is_some() {
        return true;
    }
    let c = layers.first().copied().unwrap_or_default();
    tracing::info!(
        compression = c,
        "{}: this import cannot resume; a later run starts from 0",
        no_restart_point(c)
    );
    false
}
