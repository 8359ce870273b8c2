//! The import pipeline: open the source, peel layers, check the size, convert, verify.

use std::io::{self, Read};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};

use crate::checksum::{Checksum, Hasher};
use crate::decompress::{DecompressOptions, Restart, decoder, resumable, resumes};
use crate::detect::{
    Compression, Detected, DiskFormat, HEAD_LEN, Prefixed, detect, lzma_size, zstd_content_size,
};
use crate::progress::{ProgressFn, Reporter};
use crate::qcow2::{self, DEFAULT_REORDER_BUDGET, Qcow2Stream, ResumeMap};
use crate::resume::{self, DEFAULT_CHECKPOINT_EVERY, Point, Points, Record, WINDOW};
use crate::seq::{Ranged, ReadAt};
use crate::source::{self, Counted, ResumeFrom, Shared, SourceSpec, Stats};
use crate::tar::{SharedTar, TarDisk};
use crate::target::{self, Checkpoint, Probe, Target, TargetSpec};
use crate::vdi::VdiStream;
use crate::vhd::{self, RawKind, VhdStream};
use crate::vhdx::VhdxStream;
use crate::vmdk::{self, ExtentFiles, LocalExtents, Vmdk, VmdkStream};
use crate::{Error, Result, raw};

/// Most layers (compressions and archives) peeled before the disk.
const MAX_LAYERS: usize = 4;

/// What to import where, and how.
#[derive(Clone)]
pub struct ImportOptions {
    /// Where the image comes from.
    pub source: SourceSpec,
    /// Where the raw image goes.
    pub target: TargetSpec,
    /// Expected checksum of the source bytes (as fetched, before decompression).
    pub checksum: Option<Checksum>,
    /// The disk format, when it must not be detected (`raw` also imports a file that
    /// looks like something else byte for byte). Compressions and tar are still peeled.
    pub format: Option<DiskFormat>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Least time between two progress reports. Default: 500 ms.
    pub progress_interval: Duration,
    /// Decoder settings (xz threads, memory).
    pub decompress: DecompressOptions,
    /// Bytes of out-of-order data (qcow2, vmdk, vhd, vhdx, vdi) held while the image's
    /// metadata is incomplete (`ido import --reorder-buffer`). A qcow2 read from a local
    /// file holds none: it reads such data again by position; one from HTTP(S) or S3 with
    /// a validator does so once this is full.
    /// Default: [`DEFAULT_REORDER_BUDGET`].
    pub reorder_budget: u64,
    /// Write zeros too, so a file target has every block allocated (DiskImport's
    /// `preallocation`); holes otherwise. A block device is always fully written.
    pub preallocate: bool,
    /// Keep a checkpoint beside a file target, keep the target after a transport failure,
    /// and continue from a matching checkpoint ([`crate::resume`]).
    pub resume: bool,
    /// Target bytes between two checkpoints. Default: [`DEFAULT_CHECKPOINT_EVERY`].
    pub checkpoint_every: u64,
    /// Replace a file target that exists (`--force`). Without it an existing file is
    /// refused before anything is read or written (a resumed target is the import's own).
    pub overwrite: bool,
    /// The disk to import from an OVA that holds several (`--disk`): its file name, its
    /// `ovf:id` or `ovf:diskId`, or its position in the OVF from 1. Without it such an OVA
    /// is refused, naming its disks; with it, a source that is no OVA is refused.
    pub disk: Option<String>,
}

impl ImportOptions {
    /// Defaults for the rest.
    pub fn new(source: SourceSpec, target: TargetSpec) -> Self {
        Self {
            source,
            target,
            checksum: None,
            format: None,
            progress: None,
            progress_interval: source::REPORT_INTERVAL,
            decompress: DecompressOptions::default(),
            reorder_budget: DEFAULT_REORDER_BUDGET,
            preallocate: false,
            resume: false,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            overwrite: false,
            disk: None,
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// The disk format found (after the layers).
    pub format: DiskFormat,
    /// The layers peeled, outermost first (`xz`, `tar`, …).
    pub layers: Vec<&'static str>,
    /// The image's virtual size (the target's length for a file).
    pub virtual_size: u64,
    /// Source bytes read in this run (a resumed download counts each byte once).
    pub source_bytes: u64,
    /// Where this run continued a previous one's target (0: from the start).
    pub resumed_from: u64,
    /// The verified checksum, if one was given.
    pub checksum: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Imports an image. On failure nothing is left at a file target (a file created or
/// truncated by the import is removed); images that would need other files, or that do
/// not fit, fail before the target is opened.
///
/// With [`ImportOptions::resume`] a transport failure keeps the target and its checkpoint
/// when the import can resume, and a matching checkpoint is continued.
pub async fn import(opts: ImportOptions) -> Result<ImportReport> {
    let start = Instant::now();
    let probe = target::probe(&opts.target)?;
    // A target with a checkpoint beside it is an earlier import's partial: ido's own.
    let partial = resume::record_path(&opts.target.path).exists();
    if !probe.block && !partial && !opts.overwrite && opts.target.path.exists() {
        return Err(Error::InvalidArgument {
            field: "target",
            value: opts.target.path.display().to_string(),
            reason: "exists; pass --force to replace it".into(),
        });
    }
    let (record, window) = if opts.resume {
        resume_record(&opts, probe)?.unzip()
    } else {
        (None, None)
    };
    let window = window.flatten();
    let from = record.as_ref().map(|r| ResumeFrom {
        offset: r.offset,
        validator: r.validator.clone(),
        total: r.total,
    });
    // A qcow2 continues with its mapping, rebuilt from its tables by ranged reads; a
    // streamOptimized VMDK with its front read again.
    let mut map = None;
    let (record, from) = match (record, from) {
        (Some(r), Some(f)) if matches!(r.disk_format(), Some(DiskFormat::Qcow2 | DiskFormat::Vmdk)) => {
            let m = match r.disk_format() {
                Some(DiskFormat::Qcow2) => qcow2_map(&opts.source, &f).await,
                _ => vmdk_front(&opts.source, &f).await,
            };
            match m {
                Ok(m) => {
                    map = m;
                    (Some(r), Some(f))
                }
                Err(Error::SourceChanged { reason, .. }) => {
                    tracing::info!(%reason, "the object changed since the checkpoint; starting from 0");
                    (None, None)
                }
                Err(e) => return Err(e),
            }
        }
        other => other,
    };
    let opened = source::open(&opts.source, from.as_ref()).await?;
    // Tracked: when this future is dropped (Ctrl-C), the thread still ends the import (its
    // source gone, it removes or suspends the target) and the process waits for that.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let mut report =
        ido_engine::cleanup::spawn_blocking(move || run(opts, probe, opened, (record, window), map, stop))
            .await
            .map_err(|e| Error::Io {
                context: "the conversion thread".into(),
                source: io::Error::other(e.to_string()),
            })??;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Tells the conversion thread to stop when the import future is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reads a qcow2's header and tables from the source for a run that continues at
/// `from.offset`.
async fn qcow2_map(spec: &SourceSpec, from: &ResumeFrom) -> Result<Option<Mapping>> {
    let Some(ranges) = source::ranges(spec, from)? else {
        return Ok(None);
    };
    // The header cluster: clusters are at most 2 MiB.
    let head = ranges.read(0, 2 << 20).await?;
    let map = qcow2::resume_map(&head, from.offset, |off, len| ranges.read(off, len)).await?;
    tracing::info!(offset = from.offset, "qcow2 mapping rebuilt from its tables");
    Ok(Some(Mapping::Qcow2(map)))
}

/// Reads the front of a streamOptimized VMDK from the source for a run that continues at
/// `from.offset`.
async fn vmdk_front(spec: &SourceSpec, from: &ResumeFrom) -> Result<Option<Mapping>> {
    let Some(ranges) = source::ranges(spec, from)? else {
        return Ok(None);
    };
    let m = vmdk::resume_front(from.offset, |off, len| ranges.read(off, len)).await?;
    tracing::info!(offset = from.offset, "VMDK front read again");
    Ok(Some(Mapping::Vmdk(m)))
}

/// What a resumed qcow2 or VMDK continues with.
enum Mapping {
    Qcow2(ResumeMap),
    Vmdk(vmdk::Resume),
}

/// The checkpoint to continue, if there is one that this import matches (with, for a
/// checkpoint inside a gzip member, the window read back from the target).
fn resume_record(opts: &ImportOptions, probe: Probe) -> Result<Option<(Record, Option<Vec<u8>>)>> {
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
    let matches = r.source == opts.source.to_string()
        && r.checksum == checksum
        && hash_ok
        && r.preallocate == opts.preallocate
        && format_ok
        && r.offset > 0
        && decoded_ok
        && path.is_file();
    if !matches {
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
fn compression(name: &str) -> Option<Compression> {
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

/// The blocking part: everything after the source answered.
fn run(
    opts: ImportOptions,
    probe: Probe,
    opened: source::Opened,
    (record, window): (Option<Record>, Option<Vec<u8>>),
    map: Option<Mapping>,
    stop: Arc<AtomicBool>,
) -> Result<ImportReport> {
    let stats = Stats::new(Shared {
        hasher: opts.checksum.as_ref().map(|c| Hasher::new(c.algorithm)),
        hash_from: 0,
        reporter: Reporter::new(opts.progress.clone(), opts.progress_interval),
    });
    stats.lock().reporter.state.source_total = opened.total;
    let record_path = resume::record_path(&opts.target.path);
    // A resumed import continues the source at `resumed_at`; a raw image's target holds
    // the source's bytes up to there (`base`), a qcow2's the clusters stored before it.
    let resumed = record
        .as_ref()
        .and_then(Record::disk_format)
        .filter(|_| opened.offset > 0);
    let resumed_at = opened.offset;
    if resumed_at > 0
        && (resumed.is_none()
            || (matches!(resumed, Some(DiskFormat::Qcow2 | DiskFormat::Vmdk)) && map.is_none()))
    {
        return Err(Error::io(
            "resuming",
            io::Error::other("the source continued without a matching checkpoint"),
        ));
    }
    // A compressed image continues its decoder at a restart point.
    let decoded = record
        .as_ref()
        .filter(|_| resumed.is_some())
        .and_then(|r| r.decoded.clone());
    let base = match (resumed, &decoded) {
        (Some(DiskFormat::Raw | DiskFormat::Iso), Some(d)) => d.output,
        (Some(DiskFormat::Raw | DiskFormat::Iso), None) => resumed_at,
        _ => 0,
    };
    if opts.resume && resumed.is_none() {
        resume::remove(&record_path);
    }
    if let Some(r) = record.as_ref().filter(|_| resumed.is_some()) {
        let mut s = stats.lock();
        if let (Some(c), Some(h)) = (&opts.checksum, &r.hashed) {
            s.hasher = Some(Hasher::restore(c.algorithm, &h.state)?);
            s.hash_from = h.up_to;
        }
        s.reporter.state.source_done = resumed_at;
        s.reporter.state.resumed_from = resumed_at;
        tracing::info!(offset = resumed_at, total = ?opened.total, "continuing the previous run's target");
    }
    let mut bottom = Counted::new(opened.reader, stats.clone(), stop);

    // Peel compressions and archives until a disk format shows.
    let mut layers = Vec::new();
    // The last tar peeled: a VMDK descriptor member reads its extents from it.
    let mut tar: Option<SharedTar> = None;
    let mut size = Size {
        exact: opened.total,
        at_least: None,
    };
    let mut reader: Box<dyn Read + Send> = Box::new(bottom.clone());
    // The decoder's restart points, when a compressed image keeps checkpoints.
    let mut points = None;
    if let Some(d) = &decoded {
        let c = compression(&d.compression).ok_or_else(|| {
            Error::invalid("checkpoint", format!("unknown compression {:?}", d.compression))
        })?;
        let p = Points::new();
        // Until the decoder passes another, a checkpoint is this one again.
        p.push(Point {
            input: resumed_at,
            decoded: d.clone(),
        });
        let at = Restart {
            output: d.output,
            inflate: d.inflate.clone().zip(window),
            xz_check: d.xz_check,
        };
        reader = resumable(c, reader, resumed_at, Some(at), p.clone(), &opts.decompress)
            .map_err(|e| Error::io(format!("starting the {} decoder", c.name()), e))?;
        layers.push(c.name());
        size = Size {
            exact: None,
            at_least: None,
        };
        points = Some(p);
    }
    let detected = if let Some(format) = resumed {
        format
    } else {
        loop {
            let p = Prefixed::new(reader, HEAD_LEN).map_err(|e| Error::io("reading the image", e))?;
            if p.head().is_empty() {
                let what = match layers.last() {
                    Some(layer) => format!("the {layer} data holds nothing"),
                    None => "the source is empty (0 bytes)".into(),
                };
                return Err(Error::invalid(
                    "input",
                    format!("{what}: there is no disk to import"),
                ));
            }
            let d = detect(p.head());
            if !matches!(d, Detected::Disk(_)) && layers.len() == MAX_LAYERS {
                return Err(Error::Unsupported {
                    format: "archive",
                    reason: format!("more than {MAX_LAYERS} nested layers"),
                });
            }
            match d {
                Detected::Compressed(c) => {
                    // A zstd frame announces its content size; later frames may add more.
                    // A legacy lzma header may declare the exact size.
                    size = Size {
                        exact: (c == Compression::Lzma).then(|| lzma_size(p.head())).flatten(),
                        at_least: (c == Compression::Zstd)
                            .then(|| zstd_content_size(p.head()))
                            .flatten(),
                    };
                    // Restart points only where a checkpoint can use them: the outer layer of
                    // an object that can be asked for again from the middle.
                    let restarts = opts.resume
                        && layers.is_empty()
                        && resumes(c)
                        && !probe.block
                        && opened.validator.is_some()
                        && opened.total.is_some();
                    layers.push(c.name());
                    reader = if restarts {
                        let restart_points = Points::new();
                        points = Some(restart_points.clone());
                        resumable(c, Box::new(p), 0, None, restart_points, &opts.decompress)
                    } else {
                        decoder(c, Box::new(p), &opts.decompress)
                    }
                    .map_err(|e| Error::io(format!("starting the {} decoder", c.name()), e))?;
                }
                Detected::Tar => {
                    let t = TarDisk::open_with(Box::new(p) as Box<dyn Read + Send>, opts.disk.as_deref())?;
                    tracing::debug!(member = t.name(), size = t.size(), "disk inside tar");
                    size = Size {
                        exact: Some(t.size()),
                        at_least: None,
                    };
                    layers.push(if t.is_ova() { "ova" } else { "tar" });
                    let shared = SharedTar::new(t)?;
                    reader = Box::new(shared.reader());
                    tar = Some(shared);
                }
                Detected::Disk(f) => {
                    reader = Box::new(p);
                    break f;
                }
            }
        }
    };
    let format = match (opts.format, detected) {
        (None, f) => f,
        (Some(f @ (DiskFormat::Raw | DiskFormat::Iso)), _) => f,
        (Some(forced), f) if forced == f => f,
        // A fixed VHD looks like raw; its footer is recognised at the end.
        (Some(DiskFormat::Vhd), DiskFormat::Raw) => DiskFormat::Raw,
        (Some(forced), other) => {
            return Err(Error::invalid(
                forced.name(),
                format!("the data looks like {other}, not {forced}"),
            ));
        }
    };
    if opts.format.is_none() && resumed.is_none() {
        check_name(&opts.source, format, &layers)?;
    }
    if let Some(disk) = &opts.disk
        && !layers.contains(&"ova")
    {
        return Err(Error::InvalidArgument {
            field: "disk",
            value: disk.clone(),
            reason: format!(
                "chooses a disk of an OVA, but the source is {}",
                layers
                    .iter()
                    .chain([&format.name()])
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" in ")
            ),
        });
    }
    let extents = vmdk_extents(&opts.source, format, &layers, tar)?;
    // Only a detected raw image may turn out to be a fixed VHD.
    let fixed_vhd = opts.format.is_none_or(|f| f == DiskFormat::Vhd);
    tracing::debug!(%format, ?layers, "importing");

    // Checkpoints where a source byte is a target byte, and the object can be asked for
    // again from the middle (a validator and a length).
    // A qcow2's checkpoints are taken between clusters; a kept target cannot be
    // preallocated (what the previous run wrote is not known).
    // A raw or ISO image in one compression: at the decoder's restart points (the target's
    // record counts image bytes; see `resume::save`).
    // A streamOptimized VMDK's, at its grain markers (a monolithicSparse one has none, and
    // starts from 0).
    let by_safe_points =
        matches!(format, DiskFormat::Qcow2 | DiskFormat::Vmdk) && !opts.preallocate && extents.is_none();
    let points = points.filter(|_| layers.len() == 1 && matches!(format, DiskFormat::Raw | DiskFormat::Iso));
    let checkpoint = match (&opened.validator, opened.total) {
        (Some(validator), Some(total))
            if opts.resume
                && ((layers.is_empty()
                    && (matches!(format, DiskFormat::Raw | DiskFormat::Iso) || by_safe_points))
                    || points.is_some()) =>
        {
            Some(Checkpoint {
                path: record_path.clone(),
                record: Record {
                    version: resume::VERSION,
                    source: opts.source.to_string(),
                    validator: validator.clone(),
                    total,
                    format: format.name().to_string(),
                    checksum: opts.checksum.as_ref().map(ToString::to_string),
                    preallocate: opts.preallocate,
                    offset: if points.is_some() { base } else { resumed_at },
                    hashed: None,
                    decoded: None,
                },
                every: opts.checkpoint_every.max(1),
                by_safe_points,
                points: points.clone(),
            })
        }
        _ => {
            if opts.resume {
                tracing::info!(%format, ?layers, "this import cannot resume in a later run (only raw and ISO images, uncompressed or in one layer of gzip, xz, zstd or bzip2, and qcow2 and streamOptimized VMDK without preallocation, from HTTP or S3 can)");
            }
            None
        }
    };
    // A qcow2 read as it is stored can read data stored before its tables again by position.
    let positional = (format == DiskFormat::Qcow2 && layers.is_empty() && resumed.is_none())
        .then(|| positional(&opts.source, opened.total, opened.validator.as_deref()))
        .flatten();
    let mut target: Option<Target> = None;
    let result = convert(
        &opts,
        Layer {
            format,
            fixed_vhd,
            size,
            resumed: resumed.is_some(),
            base,
            map,
            positional,
            extents,
        },
        probe,
        &mut reader,
        &stats,
        &mut target,
        checkpoint,
    )
    .and_then(|done| within_virtual_size(&stats, format, done))
    .and_then(|(virtual_size, format)| {
        // Read what the decoders left (trailers, tar end, trailing bytes): every source
        // byte is hashed, and truncation or garbage in a layer is caught here.
        io::copy(&mut reader, &mut io::sink()).map_err(|e| Error::io("reading the image", e))?;
        drop(reader);
        bottom.drain().map_err(|e| Error::io("reading the source", e))?;
        Ok((virtual_size, format))
    })
    .and_then(|done| {
        let digest = stats.lock().hasher.take().map(Hasher::finish);
        if let (Some(c), Some(d)) = (&opts.checksum, &digest) {
            c.verify(d)?;
        }
        Ok(done)
    });
    let (virtual_size, format) = match result {
        Ok(v) => v,
        Err(e) => {
            if let Some(t) = target.take() {
                if e.is_transient() && restartable(points.as_ref(), &stats, &layers) {
                    t.suspend();
                } else {
                    t.abort();
                }
            }
            return Err(e);
        }
    };
    let t = target.take().expect("the target is open after a conversion");
    if let Err(e) = t.finish(virtual_size) {
        // `finish` consumed the target; remove what is left of a file.
        if !probe.block {
            let _ = std::fs::remove_file(&opts.target.path);
            resume::remove(&record_path);
        }
        return Err(e);
    }
    let mut s = stats.lock();
    s.reporter.finish();
    Ok(ImportReport {
        format,
        layers,
        virtual_size,
        source_bytes: s.reporter.state.source_done - resumed_at.min(s.reporter.state.source_done),
        resumed_from: if resumed.is_some() { resumed_at } else { 0 },
        checksum: opts.checksum.as_ref().map(ToString::to_string),
        elapsed: Duration::ZERO,
    })
}

/// Whether a checkpoint can be written after a failure: always, but for a compressed image
/// whose decoder passed no restart point that the target holds (logged: the next run starts
/// from 0).
fn restartable(points: Option<&Points>, stats: &Stats, layers: &[&str]) -> bool {
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

/// The guard after a conversion: a disk format's converter wrote nothing past the virtual
/// size its header declared (the target's final length), so the disk is neither cut nor
/// extended. (A raw layer's length is checked against its declared sizes as it is copied.)
fn within_virtual_size(
    stats: &Stats,
    format: DiskFormat,
    done: (u64, DiskFormat),
) -> Result<(u64, DiskFormat)> {
    let written = stats.lock().reporter.state.written;
    if !matches!(format, DiskFormat::Raw | DiskFormat::Iso) && written > done.0 {
        return Err(Error::invalid(
            format.name(),
            format!(
                "data was written up to byte {written}, past the virtual size of {} bytes its header declares",
                done.0
            ),
        ));
    }
    Ok(done)
}

/// A raw layer's length against the size its zstd frame announced (a lower bound: later
/// frames may add more).
fn at_least(len: u64, size: Size) -> Result<u64> {
    match size.at_least {
        Some(min) if len < min => Err(Error::invalid(
            "zstd",
            format!("the first frame declares {min} bytes of content, the data holds {len}"),
        )),
        _ => Ok(len),
    }
}

/// What is known of a raw layer's size before it is read.
#[derive(Clone, Copy, Debug)]
struct Size {
    /// The exact size (file length, Content-Length, tar member's real size, a legacy lzma
    /// header's size).
    exact: Option<u64>,
    /// A lower bound (the first zstd frame's content size).
    at_least: Option<u64>,
}

/// The disk layer to convert.
struct Layer {
    format: DiskFormat,
    /// A raw image may turn out to be a fixed VHD.
    fixed_vhd: bool,
    size: Size,
    /// The target is kept from a previous run.
    resumed: bool,
    /// The prefix of a resumed raw import (where its bytes start; 0 otherwise).
    base: u64,
    /// A resumed qcow2's mapping, or VMDK's front.
    map: Option<Mapping>,
    /// The image by position (see [`positional`]).
    positional: Option<Box<dyn ReadAt>>,
    /// Where a VMDK descriptor file's extents are (see [`vmdk_extents`]).
    extents: Option<Box<dyn ExtentFiles>>,
}

/// Where a VMDK descriptor file's extents are read: beside a local file, or after it in
/// the tar or OVA it is a member of. A tar whose member is read otherwise ends with it.
fn vmdk_extents(
    source: &SourceSpec,
    format: DiskFormat,
    layers: &[&str],
    tar: Option<SharedTar>,
) -> Result<Option<Box<dyn ExtentFiles>>> {
    let in_tar = matches!(layers.last(), Some(&("tar" | "ova")));
    Ok(match (tar, source) {
        (Some(t), _) if format == DiskFormat::Vmdk && in_tar => Some(Box::new(t.extents())),
        (Some(t), _) => {
            t.release()?;
            None
        }
        (None, SourceSpec::File(path)) if format == DiskFormat::Vmdk && layers.is_empty() => {
            Some(Box::new(LocalExtents::new(path)))
        }
        _ => None,
    })
}

/// The source by position, beside its stream: a regular file (the same length as the one
/// streamed), or an HTTP(S)/S3 object with a validator (each read checked against it).
fn positional(spec: &SourceSpec, total: Option<u64>, validator: Option<&str>) -> Option<Box<dyn ReadAt>> {
    match spec {
        SourceSpec::File(path) => {
            let f = std::fs::File::open(path).ok()?;
            let m = f.metadata().ok()?;
            (m.is_file() && Some(m.len()) == total).then(|| Box::new(f) as Box<dyn ReadAt>)
        }
        SourceSpec::Http(_) | SourceSpec::S3(_) => {
            let from = ResumeFrom {
                offset: 0,
                validator: validator?.to_owned(),
                total: total?,
            };
            let ranges = source::ranges(spec, &from).ok()??;
            let rt = tokio::runtime::Handle::try_current().ok()?;
            Some(Box::new(Ranged(move |off, len| {
                rt.block_on(ranges.read(off, len))
            })))
        }
        _ => None,
    }
}

/// Converts the disk layer; opens the target once the size has been checked. Returns the
/// virtual size and the format found (a raw image may turn out to be a fixed VHD when
/// `fixed_vhd` allows it).
fn convert(
    opts: &ImportOptions,
    layer: Layer,
    probe: Probe,
    reader: &mut Box<dyn Read + Send>,
    stats: &Stats,
    target: &mut Option<Target>,
    checkpoint: Option<Checkpoint>,
) -> Result<(u64, DiskFormat)> {
    let Layer {
        format,
        fixed_vhd,
        size,
        resumed,
        base,
        map,
        positional,
        extents,
    } = layer;
    let budget = opts.reorder_budget;
    let mut checkpoint = checkpoint;
    // Opens the target once the virtual size (when known) fits; a resumed import keeps it.
    let mut open = |vs: Option<u64>, target: &mut Option<Target>| -> Result<()> {
        if let Some(vs) = vs {
            probe.check(vs)?;
        }
        stats.lock().reporter.state.virtual_size = vs;
        let t = if resumed {
            Target::reopen(&opts.target, probe, stats.clone(), base)?
        } else {
            Target::open(&opts.target, probe, stats.clone())?
        };
        let mut t = t.preallocated(opts.preallocate);
        if let Some(c) = checkpoint.take() {
            t = t.with_checkpoints(c);
        }
        *target = Some(t);
        Ok(())
    };
    macro_rules! stream {
        ($ty:ty) => {{
            let s = <$ty>::open(reader.as_mut(), budget)?;
            let vs = s.virtual_size();
            open(Some(vs), target)?;
            s.convert(target.as_mut().expect("opened"))?;
            Ok((vs, format))
        }};
    }
    match format {
        DiskFormat::Raw | DiskFormat::Iso => {
            if let Some(n) = size.exact.or(size.at_least) {
                // A fixed VHD's footer (512 bytes) is not part of the disk.
                let footer = if fixed_vhd && n >= 1024 && n.is_multiple_of(512) {
                    512
                } else {
                    0
                };
                probe.check(n - footer)?;
            }
            open(None, target)?;
            stats.lock().reporter.state.virtual_size = size.exact;
            let t = target.as_mut().expect("opened");
            if format == DiskFormat::Raw && fixed_vhd {
                let (vs, kind) = vhd::copy_raw(reader.as_mut(), t, size.exact, base)?;
                if kind == RawKind::FixedVhd {
                    stats.lock().reporter.state.virtual_size = Some(vs);
                    return Ok((vs, DiskFormat::Vhd));
                }
                // `--format vhd` on data that ends without a fixed VHD's footer: not raw.
                if opts.format == Some(DiskFormat::Vhd) {
                    return Err(Error::invalid(
                        "vhd",
                        "the data does not end with a valid fixed-disk footer (\"conectix\", checksum, disk type 2)",
                    ));
                }
                return Ok((at_least(vs, size)?, DiskFormat::Raw));
            }
            let vs = raw::copy(reader.as_mut(), t, size.exact, base)?;
            Ok((at_least(vs, size)?, format))
        }
        DiskFormat::Qcow2 => {
            if let Some(Mapping::Qcow2(map)) = map {
                let vs = map.header.virtual_size;
                open(Some(vs), target)?;
                Qcow2Stream::resume(reader.as_mut(), map, target.as_mut().expect("opened"))?;
                return Ok((vs, format));
            }
            let mut q = Qcow2Stream::open(reader.as_mut(), budget)?;
            if let Some(at) = positional {
                q.set_positional(at);
            }
            let vs = q.header().virtual_size;
            open(Some(vs), target)?;
            q.convert(target.as_mut().expect("opened"))?;
            Ok((vs, format))
        }
        DiskFormat::Vmdk => {
            if let Some(Mapping::Vmdk(m)) = map {
                let vs = m.virtual_size;
                open(Some(vs), target)?;
                VmdkStream::resume(reader.as_mut(), m, target.as_mut().expect("opened"))?;
                return Ok((vs, format));
            }
            let v = Vmdk::open(reader.as_mut(), budget, extents)?;
            let vs = v.virtual_size();
            open(Some(vs), target)?;
            v.convert(target.as_mut().expect("opened"))?;
            Ok((vs, format))
        }
        DiskFormat::Vhd => stream!(VhdStream),
        DiskFormat::Vhdx => stream!(VhdxStream),
        DiskFormat::Vdi => stream!(VdiStream),
        DiskFormat::Qcow1 => Err(Error::Unsupported {
            format: format.name(),
            reason: "qcow version 1 is not converted; convert it with `qemu-img convert -O qcow2` first"
                .into(),
        }),
    }
}

/// Refuses content that contradicts the source's name (`disk.qcow2` that holds no qcow2, an
/// `.ova` that is no tar): importing it as raw would silently give a useless disk.
/// `--format` overrides the check.
fn check_name(source: &crate::source::SourceSpec, format: DiskFormat, layers: &[&str]) -> Result<()> {
    let Some(name) = source.file_name() else {
        return Ok(());
    };
    let lower = name.to_ascii_lowercase();
    let mut stem = lower.as_str();
    let mut named_layers = vec![];
    for (ext, layer) in [
        (".gz", "gzip"),
        (".xz", "xz"),
        (".zst", "zstd"),
        (".bz2", "bzip2"),
        (".lzma", "lzma"),
    ] {
        if let Some(s) = stem.strip_suffix(ext) {
            stem = s;
            named_layers.push(layer);
        }
    }
    let named = [
        (".ova", "ova"),
        (".tar", "tar"),
        (".qcow2", "qcow2"),
        (".qcow", "qcow"),
        (".vmdk", "vmdk"),
        (".vhdx", "vhdx"),
        (".vhd", "vhd"),
        (".vdi", "vdi"),
        (".iso", "iso"),
    ]
    .into_iter()
    .find(|(ext, _)| stem.ends_with(ext))
    .map(|(_, what)| what);
    let found = |what: &str| format.name() == what || layers.contains(&what);
    let mismatch = match named {
        // An ISO is raw data to the importer; a raw image named .iso is fine.
        Some("iso") => !matches!(format, DiskFormat::Iso | DiskFormat::Raw),
        // A fixed VHD starts as raw data; its footer is recognised at the end.
        Some("vhd") => !matches!(format, DiskFormat::Vhd | DiskFormat::Raw),
        Some(what) => !found(what),
        None => false,
    } || named_layers.iter().any(|l| !layers.contains(l));
    if mismatch {
        let content = layers
            .iter()
            .copied()
            .chain([format.name()])
            .collect::<Vec<_>>()
            .join(" in ");
        return Err(Error::Refused {
            format: format.name(),
            reason: format!(
                "{} is named like {} but its content is {content}; pass --format {} to import it as that",
                ido_engine::redact::escape_controls(&name),
                named
                    .into_iter()
                    .chain(named_layers.iter().copied())
                    .collect::<Vec<_>>()
                    .join("/"),
                format.name(),
            ),
        });
    }
    Ok(())
}
