//! Peeling: compressions and archives taken off until a disk format shows, and the format
//! found checked against what was asked for and against the source's name.

use std::io::Read;

use super::checkpoint::compression;
use super::{ImportOptions, MAX_LAYERS, Size};
use crate::decompress::{DecompressOptions, Restart, decoder, resumable, resumes};
use crate::detect::{
    Compression, Detected, DiskFormat, HEAD_LEN, Prefixed, detect, lzma_size, zstd_content_size,
};
use crate::resume::{Decoded, Point, Points};
use crate::source::SourceSpec;
use crate::tar::{SharedTar, TarDisk};
use crate::vmdk::{ExtentFiles, LocalExtents};
use crate::{Error, Result};

/// The layers peeled so far.
pub(super) struct Peeled {
    /// Outermost first (`xz`, `tar`, …).
    pub(super) layers: Vec<&'static str>,
    /// The last tar peeled: a VMDK descriptor member reads its extents from it.
    pub(super) tar: Option<SharedTar>,
    /// What is known of the innermost layer's size.
    pub(super) size: Size,
    /// The decoder's restart points, when a compressed image keeps checkpoints.
    pub(super) points: Option<Points>,
}

impl Peeled {
    /// Nothing peeled yet, from a source of `total` bytes (when known).
    pub(super) fn new(total: Option<u64>) -> Self {
        Self {
            layers: Vec::new(),
            tar: None,
            size: Size {
                exact: total,
                at_least: None,
            },
            points: None,
        }
    }

    /// Continues the decoder of a compressed image at the restart point `d` (the source
    /// at `resumed_at`, with `window`: a deflate block's 32 KiB before it).
    pub(super) fn resume_decoder(
        &mut self,
        reader: Box<dyn Read + Send>,
        d: &Decoded,
        window: Option<Vec<u8>>,
        resumed_at: u64,
        decompress: &DecompressOptions,
    ) -> Result<Box<dyn Read + Send>> {
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
        let reader = resumable(c, reader, resumed_at, Some(at), p.clone(), decompress)
            .map_err(|e| Error::io(format!("starting the {} decoder", c.name()), e))?;
        self.layers.push(c.name());
        self.size = Size {
            exact: None,
            at_least: None,
        };
        self.points = Some(p);
        Ok(reader)
    }

    /// Peels compressions and archives until a disk format shows; the reader of the disk
    /// layer and its format. `restarts`: the source can be asked for again from the middle
    /// and a checkpoint kept, so the outer compression keeps restart points where it can.
    pub(super) fn detect_disk(
        &mut self,
        mut reader: Box<dyn Read + Send>,
        opts: &ImportOptions,
        restarts: bool,
    ) -> Result<(Box<dyn Read + Send>, DiskFormat)> {
        loop {
            let p = Prefixed::new(reader, HEAD_LEN).map_err(|e| Error::io("reading the image", e))?;
            if p.head().is_empty() {
                let what = match self.layers.last() {
                    Some(layer) => format!("the {layer} data holds nothing"),
                    None => "the source is empty (0 bytes)".into(),
                };
                return Err(Error::invalid(
                    "input",
                    format!("{what}: there is no disk to import"),
                ));
            }
            if opts.verbatim {
                return Ok((Box::new(p), DiskFormat::Raw));
            }
            let d = detect(p.head());
            if !matches!(d, Detected::Disk(_)) && self.layers.len() == MAX_LAYERS {
                return Err(Error::Unsupported {
                    format: "archive",
                    reason: format!("more than {MAX_LAYERS} nested layers"),
                });
            }
            reader = match d {
                Detected::Compressed(c) => self.decoder(c, p, opts, restarts)?,
                Detected::Tar => {
                    let t = TarDisk::open_with(Box::new(p) as Box<dyn Read + Send>, opts.disk.as_deref())?;
                    tracing::debug!(member = t.name(), size = t.size(), "disk inside tar");
                    self.size = Size {
                        exact: Some(t.size()),
                        at_least: None,
                    };
                    self.layers.push(if t.is_ova() { "ova" } else { "tar" });
                    let shared = SharedTar::new(t)?;
                    let reader = Box::new(shared.reader());
                    self.tar = Some(shared);
                    reader
                }
                Detected::Disk(f) => return Ok((Box::new(p), f)),
            };
        }
    }

    /// Starts the decoder of a compression layer.
    fn decoder(
        &mut self,
        c: Compression,
        p: Prefixed<Box<dyn Read + Send>>,
        opts: &ImportOptions,
        restarts: bool,
    ) -> Result<Box<dyn Read + Send>> {
        // A zstd frame announces its content size; later frames may add more.
        // A legacy lzma header may declare the exact size.
        self.size = Size {
            exact: (c == Compression::Lzma).then(|| lzma_size(p.head())).flatten(),
            at_least: (c == Compression::Zstd)
                .then(|| zstd_content_size(p.head()))
                .flatten(),
        };
        // Restart points only where a checkpoint can use them: the outer layer of
        // an object that can be asked for again from the middle.
        let restarts = restarts && self.layers.is_empty() && resumes(c);
        self.layers.push(c.name());
        if restarts {
            let restart_points = Points::new();
            self.points = Some(restart_points.clone());
            resumable(c, Box::new(p), 0, None, restart_points, &opts.decompress)
        } else {
            decoder(c, Box::new(p), &opts.decompress)
        }
        .map_err(|e| Error::io(format!("starting the {} decoder", c.name()), e))
    }
}

/// The format to convert: the one detected, or the one forced (`--format`) where the
/// data allows it; then the source's name and `--disk` checked against what was found.
pub(super) fn check_format(
    opts: &ImportOptions,
    detected: DiskFormat,
    resumed: bool,
    layers: &[&'static str],
) -> Result<DiskFormat> {
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
    if opts.format.is_none() && !opts.verbatim && !resumed {
        check_name(&opts.source, format, layers)?;
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
    Ok(format)
}

/// Where a VMDK descriptor file's extents are read: beside a local file, or after it in
/// the tar or OVA it is a member of. A tar whose member is read otherwise ends with it.
pub(super) fn vmdk_extents(
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
                ido_io::redact::escape_controls(&name),
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
