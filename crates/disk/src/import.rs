//! The import pipeline: open the source, peel layers, check the size, convert, verify.

use std::io::{self, Read};
use std::sync::{Arc, atomic::AtomicBool};
use std::time::{Duration, Instant};

use crate::checksum::{Checksum, Hasher};
use crate::decompress::DecompressOptions;
use crate::detect::DiskFormat;
use crate::progress::{ReportFn, Reporter};
use crate::qcow2::{self, DEFAULT_REORDER_BUDGET, ResumeMap};
use crate::resume::{self, DEFAULT_CHECKPOINT_EVERY, Points, Record};
use crate::source::{self, Counted, ResumeFrom, Shared, SourceSpec, Stats};
use crate::target::{self, Checkpoint, Probe, Target, TargetSpec};
use crate::vmdk;
use crate::{Error, Result};

mod checkpoint;
mod convert;
mod peel;

use checkpoint::{Continued, checkpoints, continued, restartable, restore, resume_record};
use convert::{Layer, convert, positional, within_virtual_size};
use peel::{Peeled, check_format, vmdk_extents};

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
    /// The source is a raw disk to copy byte for byte (a clone): nothing is detected or
    /// peeled, not even a compression, a tar or a fixed VHD's footer.
    pub verbatim: bool,
    /// Progress callback.
    pub progress: Option<ReportFn>,
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
            verbatim: false,
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
    // If this future is dropped (Ctrl-C), the thread still ends the import: its source
    // gone, it removes or suspends the target.
    let mut report = crate::worker::on_worker("the conversion thread", move |stop| {
        run(opts, probe, opened, (record, window), map, stop)
    })
    .await?;
    report.elapsed = start.elapsed();
    Ok(report)
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

/// The blocking part: everything after the source answered.
fn run(
    opts: ImportOptions,
    probe: Probe,
    opened: source::Opened,
    (record, window): (Option<Record>, Option<Vec<u8>>),
    map: Option<Mapping>,
    stop: Arc<AtomicBool>,
) -> Result<ImportReport> {
    let Prepared {
        stats,
        mut bottom,
        mut reader,
        layer,
        layers,
        points,
        checkpoint,
        resumed_at,
    } = prepare(&opts, probe, opened, record, window, map, stop)?;
    let (format, resumed) = (layer.format, layer.resumed);
    let mut target: Option<Target> = None;
    let result = convert(&opts, layer, probe, &mut reader, &stats, &mut target, checkpoint)
        .and_then(|done| within_virtual_size(&stats, format, done))
        .and_then(|done| {
            read_to_end(reader, &mut bottom, &stats, opts.checksum.as_ref())?;
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
            resume::remove(&resume::record_path(&opts.target.path));
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
        resumed_from: if resumed { resumed_at } else { 0 },
        checksum: opts.checksum.as_ref().map(ToString::to_string),
        elapsed: Duration::ZERO,
    })
}

/// What [`prepare`] found: the disk layer to convert, and how.
struct Prepared {
    stats: Stats,
    /// The source, counted and hashed.
    bottom: Counted,
    /// The disk layer's bytes.
    reader: Box<dyn Read + Send>,
    layer: Layer,
    /// The layers peeled, outermost first.
    layers: Vec<&'static str>,
    /// The decoder's restart points, when a compressed image keeps checkpoints.
    points: Option<Points>,
    checkpoint: Option<Checkpoint>,
    /// Where the source continued (0: from the start).
    resumed_at: u64,
}

/// Everything before the conversion: the run a checkpoint continues, the layers peeled,
/// the format checked, the checkpoints this run keeps.
fn prepare(
    opts: &ImportOptions,
    probe: Probe,
    opened: source::Opened,
    record: Option<Record>,
    window: Option<Vec<u8>>,
    map: Option<Mapping>,
    stop: Arc<AtomicBool>,
) -> Result<Prepared> {
    let resumed_at = opened.offset;
    let (stats, continued) = start(opts, record.as_ref(), &opened, map.is_some())?;
    let Continued { resumed, base, .. } = continued;
    let bottom = Counted::new(opened.reader, stats.clone(), stop);
    let restarts = opts.resume && !probe.block && opened.validator.is_some() && opened.total.is_some();
    let (reader, detected, peeled) = peel(
        opts,
        Box::new(bottom.clone()),
        opened.total,
        &continued,
        window,
        resumed_at,
        restarts,
    )?;
    let Peeled {
        layers,
        tar,
        size,
        points,
    } = peeled;
    let format = check_format(opts, detected, resumed.is_some(), &layers)?;
    let extents = vmdk_extents(&opts.source, format, &layers, tar)?;
    // Only a detected raw image may turn out to be a fixed VHD.
    let fixed_vhd = !opts.verbatim && opts.format.is_none_or(|f| f == DiskFormat::Vhd);
    tracing::debug!(%format, ?layers, "importing");

    let by_safe_points =
        matches!(format, DiskFormat::Qcow2 | DiskFormat::Vmdk) && !opts.preallocate && extents.is_none();
    let points = points.filter(|_| layers.len() == 1 && matches!(format, DiskFormat::Raw | DiskFormat::Iso));
    let checkpoint = checkpoints(
        opts,
        opened.validator.as_deref().zip(opened.total),
        format,
        &layers,
        by_safe_points,
        points.as_ref(),
        if points.is_some() { base } else { resumed_at },
    );
    // A qcow2 read as it is stored can read data stored before its tables again by position.
    let positional = (format == DiskFormat::Qcow2 && layers.is_empty() && resumed.is_none())
        .then(|| positional(&opts.source, opened.total, opened.validator.as_deref()))
        .flatten();
    Ok(Prepared {
        stats,
        bottom,
        reader,
        layer: Layer {
            format,
            fixed_vhd,
            size,
            resumed: resumed.is_some(),
            base,
            map,
            positional,
            extents,
        },
        layers,
        points,
        checkpoint,
        resumed_at,
    })
}

/// Peels compressions and archives until a disk format shows: the disk layer's reader and
/// format. A run that continues a compressed image's decoder starts it at its restart point
/// (`window`, `resumed_at`); one that continues a kept target knows the format already.
fn peel(
    opts: &ImportOptions,
    mut reader: Box<dyn Read + Send>,
    total: Option<u64>,
    continued: &Continued,
    window: Option<Vec<u8>>,
    resumed_at: u64,
    restarts: bool,
) -> Result<(Box<dyn Read + Send>, DiskFormat, Peeled)> {
    let mut peeled = Peeled::new(total);
    if let Some(d) = &continued.decoded {
        reader = peeled.resume_decoder(reader, d, window, resumed_at, &opts.decompress)?;
    }
    if let Some(format) = continued.resumed {
        return Ok((reader, format, peeled));
    }
    let (disk, format) = peeled.detect_disk(reader, opts, restarts)?;
    Ok((disk, format, peeled))
}

/// The counters (and the hash) of this run, and where it continues: a checkpoint that does
/// not apply is removed, one that does gives its hash state and progress.
fn start(
    opts: &ImportOptions,
    record: Option<&Record>,
    opened: &source::Opened,
    mapped: bool,
) -> Result<(Stats, Continued)> {
    let stats = Stats::new(Shared {
        hasher: opts.checksum.as_ref().map(|c| Hasher::new(c.algorithm)),
        hash_from: 0,
        reporter: Reporter::new(opts.progress.clone(), opts.progress_interval),
    });
    stats.lock().reporter.state.source_total = opened.total;
    let resumed_at = opened.offset;
    let c = continued(record, resumed_at, mapped)?;
    if opts.resume && c.resumed.is_none() {
        resume::remove(&resume::record_path(&opts.target.path));
    }
    if let Some(r) = record.filter(|_| c.resumed.is_some()) {
        restore(&stats, opts.checksum.as_ref(), r, resumed_at, opened.total)?;
    }
    Ok((stats, c))
}

/// Reads what the decoders left (trailers, tar end, trailing bytes): every source byte is
/// hashed, and truncation or garbage in a layer is caught here. Then the checksum, if one
/// was given, is verified.
fn read_to_end(
    mut reader: Box<dyn Read + Send>,
    bottom: &mut Counted,
    stats: &Stats,
    checksum: Option<&Checksum>,
) -> Result<()> {
    io::copy(&mut reader, &mut io::sink()).map_err(|e| Error::io("reading the image", e))?;
    drop(reader);
    bottom.drain().map_err(|e| Error::io("reading the source", e))?;
    let digest = stats.lock().hasher.take().map(Hasher::finish);
    if let (Some(c), Some(d)) = (checksum, &digest) {
        c.verify(d)?;
    }
    Ok(())
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
