//! The import pipeline: open the source, peel layers, check the size, convert, verify.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::checksum::{Checksum, Hasher};
use crate::decompress::{DecompressOptions, decoder};
use crate::detect::{Compression, Detected, DiskFormat, HEAD_LEN, Prefixed, detect, zstd_content_size};
use crate::progress::{ProgressFn, Reporter};
use crate::qcow2::{DEFAULT_REORDER_BUDGET, Qcow2Stream};
use crate::source::{self, Counted, Shared, SourceSpec, Stats};
use crate::tar::TarDisk;
use crate::target::{self, Probe, Target, TargetSpec};
use crate::vdi::VdiStream;
use crate::vhd::{self, RawKind, VhdStream};
use crate::vhdx::VhdxStream;
use crate::vmdk::VmdkStream;
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
    /// metadata is incomplete.
    /// Default: [`DEFAULT_REORDER_BUDGET`].
    pub reorder_budget: u64,
    /// Write zeros too, so a file target has every block allocated (DiskImport's
    /// `preallocation`); holes otherwise. A block device is always fully written.
    pub preallocate: bool,
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
    /// The verified checksum, if one was given.
    pub checksum: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Imports an image. On failure nothing is left at a file target (a file created or
/// truncated by the import is removed); images that would need other files, or that do
/// not fit, fail before the target is opened.
pub async fn import(opts: ImportOptions) -> Result<ImportReport> {
    let start = Instant::now();
    let probe = target::probe(&opts.target)?;
    let opened = source::open(&opts.source).await?;
    let mut report = tokio::task::spawn_blocking(move || run(opts, probe, opened))
        .await
        .map_err(|e| Error::Io {
            context: "the conversion thread".into(),
            source: io::Error::other(e.to_string()),
        })??;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The blocking part: everything after the source answered.
fn run(opts: ImportOptions, probe: Probe, opened: source::Opened) -> Result<ImportReport> {
    let stats = Stats::new(Shared {
        hasher: opts.checksum.as_ref().map(|c| Hasher::new(c.algorithm)),
        reporter: Reporter::new(opts.progress.clone(), opts.progress_interval),
    });
    stats.lock().reporter.state.source_total = opened.total;
    let mut bottom = Counted::new(opened.reader, stats.clone());

    // Peel compressions and archives until a disk format shows.
    let mut layers = Vec::new();
    let mut size = Size {
        exact: opened.total,
        at_least: None,
    };
    let mut reader: Box<dyn Read + Send> = Box::new(bottom.clone());
    let detected = loop {
        let p = Prefixed::new(reader, HEAD_LEN).map_err(|e| Error::io("reading the image", e))?;
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
                size = Size {
                    exact: None,
                    at_least: (c == Compression::Zstd)
                        .then(|| zstd_content_size(p.head()))
                        .flatten(),
                };
                layers.push(c.name());
                reader = decoder(c, Box::new(p), &opts.decompress)
                    .map_err(|e| Error::io(format!("starting the {} decoder", c.name()), e))?;
            }
            Detected::Tar => {
                let t = TarDisk::open(p)?;
                tracing::debug!(member = t.name(), size = t.size(), "disk inside tar");
                size = Size {
                    exact: Some(t.size()),
                    at_least: None,
                };
                layers.push(if t.is_ova() { "ova" } else { "tar" });
                reader = Box::new(FinishingTar(Some(t)));
            }
            Detected::Disk(f) => {
                reader = Box::new(p);
                break f;
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
    // Only a detected raw image may turn out to be a fixed VHD.
    let fixed_vhd = opts.format.is_none_or(|f| f == DiskFormat::Vhd);
    tracing::debug!(%format, ?layers, "importing");

    let mut target: Option<Target> = None;
    let result = convert(
        &opts,
        format,
        fixed_vhd,
        probe,
        size,
        &mut reader,
        &stats,
        &mut target,
    )
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
                t.abort();
            }
            return Err(e);
        }
    };
    let t = target.take().expect("the target is open after a conversion");
    if let Err(e) = t.finish(virtual_size) {
        // `finish` consumed the target; remove what is left of a file.
        if !probe.block {
            let _ = std::fs::remove_file(&opts.target.path);
        }
        return Err(e);
    }
    let mut s = stats.lock();
    s.reporter.finish();
    Ok(ImportReport {
        format,
        layers,
        virtual_size,
        source_bytes: s.reporter.state.source_done,
        checksum: opts.checksum.as_ref().map(ToString::to_string),
        elapsed: Duration::ZERO,
    })
}

/// What is known of a raw layer's size before it is read.
#[derive(Clone, Copy, Debug)]
struct Size {
    /// The exact size (file length, Content-Length, tar member size).
    exact: Option<u64>,
    /// A lower bound (the first zstd frame's content size).
    at_least: Option<u64>,
}

/// Converts the disk layer; opens the target once the size has been checked. Returns the
/// virtual size and the format found (a raw image may turn out to be a fixed VHD when
/// `fixed_vhd` allows it).
#[allow(clippy::too_many_arguments)]
fn convert(
    opts: &ImportOptions,
    format: DiskFormat,
    fixed_vhd: bool,
    probe: Probe,
    size: Size,
    reader: &mut Box<dyn Read + Send>,
    stats: &Stats,
    target: &mut Option<Target>,
) -> Result<(u64, DiskFormat)> {
    let budget = opts.reorder_budget;
    // Opens the target once the virtual size is known and fits.
    let open = |vs: u64, target: &mut Option<Target>| -> Result<()> {
        probe.check(vs)?;
        stats.lock().reporter.state.virtual_size = Some(vs);
        *target = Some(Target::open(&opts.target, probe, stats.clone())?.preallocated(opts.preallocate));
        Ok(())
    };
    macro_rules! stream {
        ($ty:ty) => {{
            let s = <$ty>::open(reader.as_mut(), budget)?;
            let vs = s.virtual_size();
            open(vs, target)?;
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
            stats.lock().reporter.state.virtual_size = size.exact;
            let t = target
                .insert(Target::open(&opts.target, probe, stats.clone())?.preallocated(opts.preallocate));
            if format == DiskFormat::Raw && fixed_vhd {
                let (vs, kind) = vhd::copy_raw(reader.as_mut(), t, size.exact)?;
                if kind == RawKind::FixedVhd {
                    stats.lock().reporter.state.virtual_size = Some(vs);
                    return Ok((vs, DiskFormat::Vhd));
                }
                return Ok((vs, DiskFormat::Raw));
            }
            Ok((raw::copy(reader.as_mut(), t, size.exact)?, format))
        }
        DiskFormat::Qcow2 => {
            let q = Qcow2Stream::open(reader.as_mut(), budget)?;
            let vs = q.header().virtual_size;
            open(vs, target)?;
            q.convert(target.as_mut().expect("opened"))?;
            Ok((vs, format))
        }
        DiskFormat::Vmdk => stream!(VmdkStream),
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

/// A tar's disk member that checks the rest of the archive when it is read to its end.
struct FinishingTar<R: Read>(Option<TarDisk<R>>);

impl<R: Read> Read for FinishingTar<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(t) = &mut self.0 else {
            return Ok(0);
        };
        let n = t.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let t = self.0.take().expect("checked above");
            t.finish().map_err(Error::into_io)?;
        }
        Ok(n)
    }
}
