//! The disk layer converted into the target, opened once its size has been checked.

use std::io::Read;

use super::{ImportOptions, Mapping, Size};
use crate::detect::DiskFormat;
use crate::qcow2::Qcow2Stream;
use crate::seq::{Ranged, ReadAt};
use crate::source::{self, ResumeFrom, SourceSpec, Stats};
use crate::target::{Checkpoint, Probe, Target};
use crate::vdi::VdiStream;
use crate::vhd::{self, RawKind, VhdStream};
use crate::vhdx::VhdxStream;
use crate::vmdk::{ExtentFiles, Vmdk, VmdkStream};
use crate::{Error, Result, raw};

/// The disk layer to convert.
pub(super) struct Layer {
    pub(super) format: DiskFormat,
    /// A raw image may turn out to be a fixed VHD.
    pub(super) fixed_vhd: bool,
    pub(super) size: Size,
    /// The target is kept from a previous run.
    pub(super) resumed: bool,
    /// The prefix of a resumed raw import (where its bytes start; 0 otherwise).
    pub(super) base: u64,
    /// A resumed qcow2's mapping, or VMDK's front.
    pub(super) map: Option<Mapping>,
    /// The image by position (see [`positional`]).
    pub(super) positional: Option<Box<dyn ReadAt>>,
    /// Where a VMDK descriptor file's extents are (see [`vmdk_extents`](super::peel::vmdk_extents)).
    pub(super) extents: Option<Box<dyn ExtentFiles>>,
}

/// Converts the disk layer; opens the target once the size has been checked. Returns the
/// virtual size and the format found (a raw image may turn out to be a fixed VHD when
/// `fixed_vhd` allows it).
pub(super) fn convert(
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
    let mut opener = Opener {
        opts,
        probe,
        stats,
        resumed,
        base,
        checkpoint,
    };
    macro_rules! stream {
        ($ty:ty) => {{
            let s = <$ty>::open(reader.as_mut(), budget)?;
            let vs = s.virtual_size();
            let t = opener.open(Some(vs), target)?;
            s.convert(t)?;
            Ok((vs, format))
        }};
    }
    match format {
        DiskFormat::Raw | DiskFormat::Iso => {
            convert_raw(&mut opener, reader, target, format, size, fixed_vhd)
        }
        DiskFormat::Qcow2 => {
            if let Some(Mapping::Qcow2(map)) = map {
                let vs = map.header.virtual_size;
                let t = opener.open(Some(vs), target)?;
                Qcow2Stream::resume(reader.as_mut(), map, t)?;
                return Ok((vs, format));
            }
            let mut q = Qcow2Stream::open(reader.as_mut(), budget)?;
            if let Some(at) = positional {
                q.set_positional(at);
            }
            let vs = q.header().virtual_size;
            let t = opener.open(Some(vs), target)?;
            q.convert(t)?;
            Ok((vs, format))
        }
        DiskFormat::Vmdk => {
            if let Some(Mapping::Vmdk(m)) = map {
                let vs = m.virtual_size;
                let t = opener.open(Some(vs), target)?;
                VmdkStream::resume(reader.as_mut(), m, t)?;
                return Ok((vs, format));
            }
            let v = Vmdk::open(reader.as_mut(), budget, extents)?;
            let vs = v.virtual_size();
            let t = opener.open(Some(vs), target)?;
            v.convert(t)?;
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

/// Opens the target once the virtual size (when known) fits; a resumed import keeps it.
struct Opener<'a> {
    opts: &'a ImportOptions,
    probe: Probe,
    stats: &'a Stats,
    resumed: bool,
    base: u64,
    checkpoint: Option<Checkpoint>,
}

impl Opener<'_> {
    fn open<'t>(&mut self, vs: Option<u64>, target: &'t mut Option<Target>) -> Result<&'t mut Target> {
        if let Some(vs) = vs {
            self.probe.check(vs)?;
        }
        self.stats.lock().reporter.state.virtual_size = vs;
        let t = if self.resumed {
            Target::reopen(&self.opts.target, self.probe, self.stats.clone(), self.base)?
        } else {
            Target::open(&self.opts.target, self.probe, self.stats.clone())?
        };
        let mut t = t.preallocated(self.opts.preallocate);
        if let Some(c) = self.checkpoint.take() {
            t = t.with_checkpoints(c);
        }
        Ok(target.insert(t))
    }
}

/// A raw or ISO image, its size checked first; a detected raw image may turn out to be a
/// fixed VHD when `fixed_vhd` allows it.
fn convert_raw(
    opener: &mut Opener<'_>,
    reader: &mut Box<dyn Read + Send>,
    target: &mut Option<Target>,
    format: DiskFormat,
    size: Size,
    fixed_vhd: bool,
) -> Result<(u64, DiskFormat)> {
    let (opts, probe, stats, base) = (opener.opts, opener.probe, opener.stats, opener.base);
    if let Some(n) = size.exact.or(size.at_least) {
        // A fixed VHD's footer (512 bytes) is not part of the disk.
        let footer = if fixed_vhd && n >= 1024 && n.is_multiple_of(512) {
            512
        } else {
            0
        };
        probe.check(n - footer)?;
    }
    let t = opener.open(None, target)?;
    stats.lock().reporter.state.virtual_size = size.exact;
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

/// The guard after a conversion: a disk format's converter wrote nothing past the virtual
/// size its header declared (the target's final length), so the disk is neither cut nor
/// extended. (A raw layer's length is checked against its declared sizes as it is copied.)
pub(super) fn within_virtual_size(
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

/// The source by position, beside its stream: a regular file (the same length as the one
/// streamed), or an HTTP(S)/S3 object with a validator (each read checked against it).
pub(super) fn positional(
    spec: &SourceSpec,
    total: Option<u64>,
    validator: Option<&str>,
) -> Option<Box<dyn ReadAt>> {
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
