//! VMware VMDK (hosted sparse extent, "KDMV") → raw, streamed in file order.
//!
//! ```text
//!  monolithicSparse:  header │ descriptor │ rGD │ rGTs │ GD │ GTs │ grains …
//!  streamOptimized:   header │ descriptor │ [marker lba size │ deflate] … │ (GT, GD,
//!                     footer markers) │ end-of-stream marker
//! ```
//!
//! The header and the embedded descriptor are read and checked first, before the target
//! is opened. The descriptor must describe exactly this file: `createType`
//! `monolithicSparse` or `streamOptimized`, one `SPARSE` extent, no parent; delta disks (a
//! `parentCID`) are refused.
//!
//! **Descriptor files** (`monolithicFlat`, `twoGbMaxExtentFlat`, `twoGbMaxExtentSparse`,
//! `vmfs`) are read where their extents are at hand ([`ExtentFiles`]): beside a local
//! descriptor file (regular files in its directory or below, never through `..`, an
//! absolute path or a link leading out of it), or as the members after the descriptor in
//! the same tar or OVA (in any order). Each extent file is read once, front to back: `FLAT`
//! and `VMFS` extents are copied from their offset, `SPARSE` ones converted as below; every
//! extent is written where the descriptor places it. Only `RW` extents are read (qemu skips
//! the others, which would shift the disk); anywhere else (stdin, HTTP, a compressed
//! descriptor) a descriptor file is **refused**, naming its extents.
//!
//! - **Grain markers** (streamOptimized, flag bit 17): every grain carries its guest LBA,
//!   so the file is walked from the first grain to the end-of-stream marker and each grain
//!   is inflated (zlib) and written where it says; grain tables, the grain directory and
//!   the footer are skipped. Where the grain directory lies (at the front as qemu writes
//!   it, or at the end, `gdOffset = GD_AT_END`, as VMware does) does not matter. qemu-img
//!   writes no end-of-stream marker when its last grain fills the file to its end (an
//!   incompressible last grain, a blank disk): the file may then end at a marker boundary
//!   if the grain tables at its front (read before the walk) map no grain beyond it;
//!   otherwise it is truncated. Each marker is a safe point for a later run
//!   ([`crate::resume`]): every grain before it is written and the walk never looks back,
//!   so that run reads the front again by ranges ([`Resume`]) and walks on from there.
//! - **Tables** (monolithicSparse): as qcow2, pending structures are handled in file
//!   order — grain directory, grain tables, grains — and data found behind the stream goes
//!   through the reorder buffer. The directory read is the earlier of the two copies (the
//!   redundant one, in qemu's and VMware's layout, so the other copy is skipped). Pending
//!   grains cost 8 bytes each (a 32-bit sector and a 32-bit grain number), at most
//!   `reorder_budget / 8` of them (qemu puts every grain table before the first grain).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::qcow2::header::MAX_VIRTUAL_SIZE;
use crate::seq::{MAX_TABLE_BYTES, SeqFile, le16, le32, le64};
use crate::source::read_full;
use crate::target::Target;
use crate::{Error, Result};

const FORMAT: &str = "vmdk";
const SECTOR: u64 = 512;
/// `gdOffset` of a stream whose grain directory is found through the footer.
const GD_AT_END: u64 = u64::MAX;
const FLAG_REDUNDANT_GT: u32 = 1 << 1;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESSION_DEFLATE: u16 = 1;
/// Largest grain accepted (VMware always uses 64 KiB).
const MAX_GRAIN_SECTORS: u64 = 32768;
/// Largest descriptor read (sectors).
const MAX_DESCRIPTOR_SECTORS: u64 = 2048;
/// A grain-table entry meaning "zeros" when [`FLAG_ZERO_GRAIN`] is set.
const GTE_ZEROED: u32 = 1;
/// Metadata marker types.
const MARKER_EOS: u32 = 0;
const MARKER_FOOTER: u32 = 3;

fn bad(what: impl Into<String>) -> Error {
    Error::invalid(FORMAT, what)
}

/// The sparse extent header fields conversion needs (little-endian on disk).
#[derive(Clone, Debug)]
pub(crate) struct Header {
    flags: u32,
    /// Virtual size in sectors.
    capacity: u64,
    /// Grain size in sectors.
    grain: u64,
    gtes_per_gt: u64,
    rgd_offset: u64,
    gd_offset: u64,
    /// Sectors before the first grain.
    overhead: u64,
}

impl Header {
    fn parse(h: &[u8]) -> Result<Self> {
        let version = le32(h, 4);
        let flags = le32(h, 8);
        let hdr = Self {
            flags,
            capacity: le64(h, 12),
            grain: le64(h, 20),
            gtes_per_gt: u64::from(le32(h, 44)),
            rgd_offset: le64(h, 48),
            gd_offset: le64(h, 56),
            overhead: le64(h, 64),
        };
        if !(1..=3).contains(&version) {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: format!("sparse extent version {version}"),
            });
        }
        if !hdr.grain.is_power_of_two() || hdr.grain > MAX_GRAIN_SECTORS {
            return Err(bad(format!("grain size of {} sectors", hdr.grain)));
        }
        if !(1..=512).contains(&hdr.gtes_per_gt) {
            return Err(bad(format!("{} entries per grain table", hdr.gtes_per_gt)));
        }
        if hdr.capacity > MAX_VIRTUAL_SIZE / SECTOR || hdr.grains() > u64::from(u32::MAX) {
            return Err(bad(format!("capacity of {} sectors", hdr.capacity)));
        }
        if hdr.gd_entries() * 4 > MAX_TABLE_BYTES {
            return Err(bad(format!(
                "a grain directory of {} entries is too large",
                hdr.gd_entries()
            )));
        }
        if flags & FLAG_COMPRESSED != 0 {
            let algorithm = le16(h, 77);
            if algorithm != COMPRESSION_DEFLATE {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    reason: format!("compression algorithm {algorithm}"),
                });
            }
            if flags & FLAG_MARKERS == 0 {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    reason: "compressed grains without grain markers".into(),
                });
            }
        }
        Ok(hdr)
    }

    fn virtual_size(&self) -> u64 {
        self.capacity * SECTOR
    }

    fn grain_bytes(&self) -> u64 {
        self.grain * SECTOR
    }

    fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain)
    }

    fn gd_entries(&self) -> u64 {
        self.grains().div_ceil(self.gtes_per_gt)
    }
}

/// One extent line of a descriptor: `RW 16389 SPARSE "disk.vmdk"`, `RW 16389 FLAT
/// "disk-flat.vmdk" 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ExtentLine {
    /// `RW`, `RDONLY` or `NOACCESS`.
    access: String,
    /// The size in sectors as written.
    sectors: String,
    kind: String,
    file: Option<String>,
    /// What follows the file name (a flat extent's offset in sectors), trimmed.
    offset: String,
}

/// The descriptor fields that decide whether the image is self-contained.
#[derive(Clone, Debug, Default)]
struct Descriptor {
    create_type: Option<String>,
    parent_cid: Option<String>,
    parent_hint: Option<String>,
    extents: Vec<ExtentLine>,
}

impl Descriptor {
    fn parse(text: &str) -> Self {
        let mut d = Descriptor::default();
        let unquote = |v: &str| v.trim().trim_matches('"').to_string();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                match k.trim() {
                    "createType" => d.create_type = Some(unquote(v)),
                    "parentCID" => d.parent_cid = Some(unquote(v)),
                    "parentFileNameHint" => d.parent_hint = Some(unquote(v)),
                    _ => {}
                }
                continue;
            }
            let mut words = line.split_whitespace();
            if let (Some(access @ ("RW" | "RDONLY" | "NOACCESS")), Some(sectors), Some(kind)) =
                (words.next(), words.next(), words.next())
            {
                let mut quoted = line.splitn(3, '"');
                let file = quoted.nth(1).map(str::to_string);
                let offset = quoted.next().unwrap_or("").trim().to_string();
                d.extents.push(ExtentLine {
                    access: access.to_string(),
                    sectors: sectors.to_string(),
                    kind: kind.to_ascii_uppercase(),
                    file,
                    offset,
                });
            }
        }
        d
    }

    /// The files the descriptor names, for messages.
    fn files(&self) -> String {
        let names: Vec<String> = self
            .extents
            .iter()
            .filter_map(|e| e.file.as_ref().map(|f| format!("{f:?}")))
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Refuses a delta disk (one with a parent).
    fn check_parent(&self) -> Result<()> {
        if let Some(cid) = &self.parent_cid
            && !cid.eq_ignore_ascii_case("ffffffff")
        {
            return Err(Error::refused(
                FORMAT,
                format!(
                    "it is a delta disk of parent {:?} (parentCID {cid})",
                    self.parent_hint.as_deref().unwrap_or("unknown")
                ),
            ));
        }
        Ok(())
    }

    /// Accepts a descriptor embedded in a sparse extent that describes only that extent.
    fn check_embedded(&self) -> Result<()> {
        self.check_parent()?;
        let create = self.create_type.as_deref().unwrap_or("monolithicSparse");
        let self_contained = ["monolithicSparse", "streamOptimized"]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(create));
        if !self_contained || self.extents.len() != 1 || self.extents[0].kind != "SPARSE" {
            return Err(Error::refused(
                FORMAT,
                format!(
                    "its descriptor (createType {create:?}) describes {} extent(s) in other files ({}); \
                     only monolithicSparse and streamOptimized images are read",
                    self.extents.len(),
                    self.files()
                ),
            ));
        }
        Ok(())
    }
}

/// createType values of descriptor files whose extents are read.
const SPLIT_TYPES: [&str; 4] = [
    "monolithicFlat",
    "twoGbMaxExtentFlat",
    "twoGbMaxExtentSparse",
    "vmfs",
];

/// What an extent file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExtentKind {
    /// Raw bytes from this offset (bytes) of the file (`FLAT`, `VMFS`).
    Flat(u64),
    /// A hosted sparse extent ("KDMV": monolithicSparse or streamOptimized).
    Sparse,
}

/// One extent of a descriptor file, placed in the disk.
#[derive(Clone, Debug)]
struct Planned {
    file: String,
    kind: ExtentKind,
    /// Where it starts in the disk (bytes).
    guest: u64,
    /// Its length (bytes).
    len: u64,
}

impl Descriptor {
    /// The extents of a descriptor file, in the disk's order, checked: `RW` extents of
    /// type `FLAT`, `VMFS` or `SPARSE`, in files inside the descriptor's directory or
    /// archive.
    fn plan(&self) -> Result<Vec<Planned>> {
        self.check_parent()?;
        let create = self.create_type.as_deref().unwrap_or("");
        if !SPLIT_TYPES.iter().any(|t| t.eq_ignore_ascii_case(create)) {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: format!(
                    "a descriptor file of createType {create:?} (extents {}); descriptor files of \
                     createType {} are read",
                    self.files(),
                    SPLIT_TYPES.join(", ")
                ),
            });
        }
        if self.extents.is_empty() {
            return Err(bad(format!(
                "the descriptor file (createType {create:?}) names no extent"
            )));
        }
        let mut plan = Vec::with_capacity(self.extents.len());
        let mut guest = 0u64;
        for e in &self.extents {
            let unsupported = |reason: String| Error::Unsupported {
                format: FORMAT,
                reason,
            };
            let Some(file) = e.file.clone() else {
                return Err(unsupported(format!(
                    "the extent \"{} {} {}\" has no file (only FLAT, VMFS and SPARSE extents are read)",
                    e.access, e.sectors, e.kind
                )));
            };
            check_extent_name(&file)?;
            if e.access != "RW" {
                return Err(unsupported(format!(
                    "the extent {file:?} has access {} (only RW extents are read)",
                    e.access
                )));
            }
            let sectors = e
                .sectors
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_VIRTUAL_SIZE / SECTOR).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "the extent {file:?} has a size of {:?} sectors",
                        e.sectors
                    ))
                })?;
            let kind = match (e.kind.as_str(), e.offset.as_str()) {
                ("FLAT", offset) => ExtentKind::Flat(
                    offset
                        .parse::<u64>()
                        .ok()
                        .filter(|o| *o <= MAX_VIRTUAL_SIZE / SECTOR)
                        .ok_or_else(|| {
                            bad(format!(
                                "the FLAT extent {file:?} has an offset of {offset:?} sectors"
                            ))
                        })?
                        * SECTOR,
                ),
                ("VMFS", "") => ExtentKind::Flat(0),
                ("SPARSE", "") => ExtentKind::Sparse,
                ("VMFS" | "SPARSE", rest) => {
                    return Err(bad(format!(
                        "the {} extent {file:?} is followed by {rest:?}",
                        e.kind
                    )));
                }
                (other, _) => {
                    return Err(unsupported(format!(
                        "the extent {file:?} is of type {other} (only FLAT, VMFS and SPARSE extents are read)"
                    )));
                }
            };
            let len = sectors * SECTOR;
            plan.push(Planned {
                file,
                kind,
                guest,
                len,
            });
            guest = guest
                .checked_add(len)
                .filter(|g| *g <= MAX_VIRTUAL_SIZE)
                .ok_or_else(|| bad("the extents add up to more than the largest disk read"))?;
        }
        Ok(plan)
    }
}

/// Refuses an extent file name that leads out of the descriptor's directory or archive.
fn check_extent_name(name: &str) -> Result<()> {
    let escapes = name.is_empty()
        || name.starts_with(['/', '\\'])
        || name.as_bytes().get(1) == Some(&b':')
        || name.contains("://")
        || name.contains('\0')
        || name.split(['/', '\\']).any(|c| c == "..");
    if escapes {
        return Err(Error::refused(
            FORMAT,
            format!(
                "the extent {name:?} is outside the descriptor's directory or archive (an absolute \
                 path, a URL or `..`)"
            ),
        ));
    }
    Ok(())
}

/// An error met inside an extent file, naming it (if it does not already).
fn in_extent(name: &str, e: Error) -> Error {
    if e.to_string().contains(&format!("{name:?}")) {
        return e;
    }
    match e {
        Error::InvalidImage { format, reason } => Error::InvalidImage {
            format,
            reason: format!("extent {name:?}: {reason}"),
        },
        Error::Unsupported { format, reason } => Error::Unsupported {
            format,
            reason: format!("extent {name:?}: {reason}"),
        },
        Error::Refused { format, reason } => Error::Refused {
            format,
            reason: format!("extent {name:?}: {reason}"),
        },
        Error::Io { context, source } => Error::Io {
            context: format!("extent {name:?}: {context}"),
            source,
        },
        other => other,
    }
}

/// A flat extent file shorter than the descriptor says.
fn short_extent(name: &str, len: u64, off: u64, need: u64) -> Error {
    bad(format!(
        "the extent {name:?} is truncated: it holds {len} bytes; the descriptor reads {need} bytes from byte {off}"
    ))
}

/// Where the extent files of a descriptor file are read from.
pub(crate) trait ExtentFiles {
    /// Checks an extent before anything is written; its length when it is known by then
    /// (a local file). Default: nothing known.
    fn probe(&mut self, _name: &str) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Opens the next extent file to read: one of `wanted` (names as the descriptor spells
    /// them, in its order). A local directory opens the first; an archive the next of them
    /// it holds.
    fn next(&mut self, wanted: &[&str]) -> Result<ExtentFile<'_>>;

    /// After the last extent: checks what follows it (the rest of an archive).
    fn finish(&mut self) -> Result<()>;
}

/// An extent file being read.
pub(crate) struct ExtentFile<'s> {
    /// Its index in the names asked for.
    pub(crate) index: usize,
    /// Its length, when known.
    pub(crate) len: Option<u64>,
    /// Its bytes from the start.
    pub(crate) reader: Box<dyn Read + 's>,
}

/// The extents of a local descriptor file: regular files in its directory or below it,
/// never a path or a link that leads out of it.
pub(crate) struct LocalExtents {
    /// The descriptor as given.
    descriptor: PathBuf,
}

impl LocalExtents {
    /// The extents beside `descriptor`.
    pub(crate) fn new(descriptor: &Path) -> Self {
        Self {
            descriptor: descriptor.to_path_buf(),
        }
    }

    /// The extent's real path: a regular file inside the descriptor's directory.
    fn resolve(&self, name: &str) -> Result<PathBuf> {
        check_extent_name(name)?;
        let parent = self
            .descriptor
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(parent).map_err(|e| {
            Error::io(
                format!("resolving the directory of {}", self.descriptor.display()),
                e,
            )
        })?;
        let context = || format!("opening the extent {name:?} of {}", self.descriptor.display());
        let real = std::fs::canonicalize(dir.join(name)).map_err(|e| Error::io(context(), e))?;
        if !real.starts_with(&dir) {
            return Err(Error::refused(
                FORMAT,
                format!(
                    "the extent {name:?} of {} leads out of its directory (to {})",
                    self.descriptor.display(),
                    real.display()
                ),
            ));
        }
        let m = std::fs::metadata(&real).map_err(|e| Error::io(context(), e))?;
        if !m.is_file() {
            return Err(Error::refused(
                FORMAT,
                format!(
                    "the extent {name:?} of {} is not a regular file",
                    self.descriptor.display()
                ),
            ));
        }
        Ok(real)
    }
}

impl ExtentFiles for LocalExtents {
    fn probe(&mut self, name: &str) -> Result<Option<u64>> {
        let p = self.resolve(name)?;
        let m = std::fs::metadata(&p).map_err(|e| Error::io(format!("opening the extent {name:?}"), e))?;
        Ok(Some(m.len()))
    }

    fn next(&mut self, wanted: &[&str]) -> Result<ExtentFile<'_>> {
        let Some(name) = wanted.first() else {
            return Err(bad("no extent left to read"));
        };
        let p = self.resolve(name)?;
        let context = || format!("opening the extent {name:?} of {}", self.descriptor.display());
        let f = std::fs::File::open(&p).map_err(|e| Error::io(context(), e))?;
        let len = f.metadata().map_err(|e| Error::io(context(), e))?.len();
        Ok(ExtentFile {
            index: 0,
            len: Some(len),
            reader: Box::new(std::io::BufReader::with_capacity(256 << 10, f)),
        })
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A descriptor file's disk: its extents, read one file after the other.
pub(crate) struct Split {
    plan: Vec<Planned>,
    extents: Box<dyn ExtentFiles>,
    budget: u64,
}

impl Split {
    fn virtual_size(&self) -> u64 {
        self.plan.last().map_or(0, |p| p.guest + p.len)
    }

    /// Reads each extent file once, in the order the extents come (the descriptor's, or an
    /// archive's), and writes its extents where the descriptor places them.
    fn convert(mut self, target: &mut Target) -> Result<()> {
        let mut files: Vec<(String, Vec<Planned>)> = Vec::new();
        for p in std::mem::take(&mut self.plan) {
            match files.iter_mut().find(|(f, _)| *f == p.file) {
                Some((_, parts)) => parts.push(p),
                None => files.push((p.file.clone(), vec![p])),
            }
        }
        while !files.is_empty() {
            let names: Vec<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
            let mut opened = self.extents.next(&names)?;
            if opened.index >= files.len() {
                return Err(bad(format!(
                    "extent file number {} is not asked for",
                    opened.index
                )));
            }
            let (name, parts) = files.remove(opened.index);
            copy_extent_file(&name, parts, &mut opened, self.budget, target)
                .map_err(|e| in_extent(&name, e))?;
        }
        self.extents.finish()
    }
}

/// Writes the extents `parts` of one file.
fn copy_extent_file(
    name: &str,
    mut parts: Vec<Planned>,
    f: &mut ExtentFile<'_>,
    budget: u64,
    target: &mut Target,
) -> Result<()> {
    if parts.iter().any(|p| p.kind == ExtentKind::Sparse) {
        let [p] = parts.as_slice() else {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: format!("the sparse extent {name:?} is named {} times", parts.len()),
            });
        };
        let mut s = VmdkStream::open_with(&mut *f.reader, budget, false)?;
        if s.header.virtual_size() != p.len {
            return Err(bad(format!(
                "the sparse extent {name:?} holds {} sectors; the descriptor gives it {}",
                s.header.capacity,
                p.len / SECTOR
            )));
        }
        s.base = p.guest;
        return s.convert(target);
    }
    parts.sort_by_key(|p| match p.kind {
        ExtentKind::Flat(off) => off,
        ExtentKind::Sparse => 0,
    });
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for p in parts {
        let ExtentKind::Flat(off) = p.kind else {
            continue;
        };
        if off < pos {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: format!("the flat extents in {name:?} overlap at byte {off}"),
            });
        }
        if let Some(len) = f.len
            && off + p.len > len
        {
            return Err(short_extent(name, len, off, p.len));
        }
        let skipped = std::io::copy(&mut (&mut f.reader).take(off - pos), &mut std::io::sink())
            .map_err(|e| Error::io("reading the extent", e))?;
        if skipped < off - pos {
            return Err(short_extent(name, pos + skipped, off, p.len));
        }
        let mut done = 0u64;
        while done < p.len {
            let n = (p.len - done).min(buf.len() as u64) as usize;
            let got =
                read_full(&mut *f.reader, &mut buf[..n]).map_err(|e| Error::io("reading the extent", e))?;
            if got < n {
                return Err(short_extent(name, off + done + got as u64, off, p.len));
            }
            target.write_at(p.guest + done, &buf[..n])?;
            done += n as u64;
        }
        pos = off + p.len;
    }
    Ok(())
}

/// A VMDK from the stream: a sparse extent, or a descriptor file whose extents are read
/// beside it.
pub(crate) enum Vmdk<'a> {
    /// monolithicSparse, streamOptimized.
    Sparse(Box<VmdkStream<'a>>),
    /// A descriptor file and its extents.
    Split(Split),
}

impl<'a> Vmdk<'a> {
    /// Reads and checks the header and the embedded descriptor, or the descriptor file and
    /// (where `extents` knows them before anything is written) its extent files. Without
    /// `extents`, a descriptor file is refused.
    pub(crate) fn open(
        r: &'a mut dyn Read,
        budget: u64,
        extents: Option<Box<dyn ExtentFiles>>,
    ) -> Result<Self> {
        let mut file = SeqFile::new(r, FORMAT, 512, budget);
        let head = file.read_at(0, SECTOR as usize, true)?;
        if !head.starts_with(b"# Disk DescriptorFile") {
            return VmdkStream::from_file(file, budget, true).map(|s| Vmdk::Sparse(Box::new(s)));
        }
        let max = (MAX_DESCRIPTOR_SECTORS * SECTOR) as usize;
        let text = file.read_at(0, max, true)?;
        let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
        let too_large = end == max;
        let d = Descriptor::parse(&String::from_utf8_lossy(&text[..end]));
        let Some(mut extents) = extents else {
            return Err(Error::refused(
                FORMAT,
                format!(
                    "a descriptor file (createType {:?}): its data is in other files ({}), which are \
                     read only beside a local descriptor file or in the same tar or OVA",
                    d.create_type.as_deref().unwrap_or("unknown"),
                    d.files()
                ),
            ));
        };
        if too_large {
            return Err(bad(format!("a descriptor file of more than {max} bytes")));
        }
        let plan = d.plan()?;
        for p in &plan {
            if let Some(len) = extents.probe(&p.file)?
                && let ExtentKind::Flat(off) = p.kind
                && off + p.len > len
            {
                return Err(short_extent(&p.file, len, off, p.len));
            }
        }
        Ok(Vmdk::Split(Split {
            plan,
            extents,
            budget,
        }))
    }

    /// The guest-visible size.
    pub(crate) fn virtual_size(&self) -> u64 {
        match self {
            Vmdk::Sparse(s) => s.virtual_size(),
            Vmdk::Split(s) => s.virtual_size(),
        }
    }

    /// Writes the disk to `target` (unallocated and zero grains stay holes).
    pub(crate) fn convert(self, target: &mut Target) -> Result<()> {
        match self {
            Vmdk::Sparse(s) => s.convert(target),
            Vmdk::Split(s) => s.convert(target),
        }
    }
}

/// A streamOptimized VMDK that a previous run left at the grain marker at `from`: the front
/// of the file (header, embedded descriptor, the grain tables qemu writes before the
/// grains), read again by ranges.
pub(crate) struct Resume {
    front: Vec<u8>,
    from: u64,
    pub(crate) virtual_size: u64,
}

/// The most of a VMDK's front a resumed run reads again (qemu's grain tables for a 2 TiB
/// disk with 64 KiB grains: 128 MiB).
const MAX_FRONT: u64 = 256 << 20;

/// Reads the front of a streamOptimized VMDK for a run that continues at `from` with
/// `read(offset, length)`: its header sector, then everything before the first grain.
pub(crate) async fn resume_front<F, Fut>(from: u64, read: F) -> Result<Resume>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    let head = read(0, SECTOR).await?;
    if head.len() < SECTOR as usize || !head.starts_with(b"KDMV") {
        return Err(bad("no sparse extent header (\"KDMV\") to continue"));
    }
    let h = Header::parse(&head)?;
    let overhead = h.overhead.saturating_mul(SECTOR);
    if h.flags & FLAG_MARKERS == 0 || overhead > from || overhead > MAX_FRONT {
        return Err(bad(format!(
            "cannot continue at {from:#x} (flags {:#x}, {overhead} bytes before the grains)",
            h.flags
        )));
    }
    let front = if overhead > SECTOR {
        read(0, overhead).await?
    } else {
        head
    };
    Ok(Resume {
        front,
        from,
        virtual_size: h.virtual_size(),
    })
}

/// A VMDK sparse extent being read from a stream.
pub(crate) struct VmdkStream<'a> {
    file: SeqFile<'a>,
    header: Header,
    budget: u64,
    /// Where the extent starts in the disk (an extent of a descriptor file; 0 otherwise).
    base: u64,
}

impl<'a> VmdkStream<'a> {
    /// Reads and checks the header and the embedded descriptor (a descriptor file is
    /// refused: see [`Vmdk::open`]).
    #[cfg(test)]
    pub(crate) fn open(r: &'a mut dyn Read, budget: u64) -> Result<Self> {
        match Vmdk::open(r, budget, None)? {
            Vmdk::Sparse(s) => Ok(*s),
            Vmdk::Split(_) => Err(bad("a descriptor file where a sparse extent was expected")),
        }
    }

    /// Reads and checks the header and, with `embedded`, the embedded descriptor (an
    /// extent of a descriptor file has none that counts).
    fn open_with(r: &'a mut dyn Read, budget: u64, embedded: bool) -> Result<Self> {
        Self::from_file(SeqFile::new(r, FORMAT, 512, budget), budget, embedded)
    }

    fn from_file(mut file: SeqFile<'a>, budget: u64, embedded: bool) -> Result<Self> {
        let head = file.read_at(0, SECTOR as usize, true)?;
        if head.starts_with(b"# Disk DescriptorFile") {
            return Err(bad("a descriptor file where a sparse extent was expected"));
        }
        if head.starts_with(b"COWD") {
            return Err(Error::Unsupported {
                format: FORMAT,
                reason: "ESX sparse (COWD) extents".into(),
            });
        }
        if head.len() < SECTOR as usize || !head.starts_with(b"KDMV") {
            return Err(bad("no sparse extent header (\"KDMV\")"));
        }
        let header = Header::parse(head)?;
        let (desc_off, desc_len) = (le64(head, 28), le64(head, 36));
        if embedded && desc_off != 0 && desc_len != 0 {
            if desc_len > MAX_DESCRIPTOR_SECTORS || desc_off > MAX_TABLE_BYTES / SECTOR {
                return Err(bad(format!(
                    "descriptor at sector {desc_off} of {desc_len} sectors"
                )));
            }
            let text = file.read_at(desc_off * SECTOR, (desc_len * SECTOR) as usize, false)?;
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            Descriptor::parse(&String::from_utf8_lossy(&text[..end])).check_embedded()?;
        }
        Ok(Self {
            file,
            header,
            budget,
            base: 0,
        })
    }

    /// The guest-visible size.
    pub(crate) fn virtual_size(&self) -> u64 {
        self.header.virtual_size()
    }

    /// Writes the allocated grains to `target` (unallocated and zero grains stay holes).
    pub(crate) fn convert(self, target: &mut Target) -> Result<()> {
        if self.header.flags & FLAG_MARKERS != 0 {
            self.walk_markers(target)
        } else {
            self.follow_tables(target)
        }
    }

    /// streamOptimized: grain markers, in file order, up to the end-of-stream marker.
    fn walk_markers(mut self, target: &mut Target) -> Result<()> {
        // Nothing behind the walk is ever needed.
        self.file.stop_retaining();
        let (overhead, mapped_end) = self.front()?;
        let pos = overhead.max(self.file.pos().next_multiple_of(SECTOR));
        self.walk(target, pos, mapped_end)
    }

    /// Where the grains start, and where the grains the front tables map end (see
    /// [`VmdkStream::front_tables_end`]).
    fn front(&mut self) -> Result<(u64, Option<u64>)> {
        let h = &self.header;
        let overhead = h
            .overhead
            .checked_mul(SECTOR)
            .filter(|o| *o <= MAX_VIRTUAL_SIZE)
            .ok_or_else(|| bad(format!("overhead of {} sectors", h.overhead)))?;
        Ok((overhead, self.front_tables_end(overhead)?))
    }

    /// Continues the walk of a streamOptimized extent that a previous run left at the
    /// marker at `m.from`: `r` yields the file from there on, `m.front` its start.
    pub(crate) fn resume(r: &'a mut dyn Read, m: Resume, target: &mut Target) -> Result<()> {
        let mut front = &m.front[..];
        let mut head = VmdkStream::open_with(&mut front, 0, true)?;
        if head.header.flags & FLAG_MARKERS == 0 {
            return Err(bad("a checkpoint for a VMDK without grain markers"));
        }
        head.file.stop_retaining();
        let (overhead, mapped_end) = head.front()?;
        if m.from < overhead {
            return Err(bad(format!(
                "a checkpoint at {:#x}, before the first grain",
                m.from
            )));
        }
        let mut file = SeqFile::new(r, FORMAT, 512, 0);
        file.start_at(m.from);
        file.stop_retaining();
        Self {
            file,
            header: head.header,
            budget: 0,
            base: 0,
        }
        .walk(target, m.from, mapped_end)
    }

    /// Walks the markers from `pos`.
    fn walk(mut self, target: &mut Target, mut pos: u64, mapped_end: Option<u64>) -> Result<()> {
        let h = self.header.clone();
        let vs = h.virtual_size();
        let grain = h.grain_bytes();
        let mut inflate = flate2::Decompress::new(true);
        let mut out = vec![0u8; grain as usize];
        loop {
            // Every grain before `pos` is written: a later run may continue here.
            if self.base == 0 {
                target.safe_point(pos)?;
            }
            let m = self.file.read_at(pos, SECTOR as usize, true)?;
            if m.len() < SECTOR as usize {
                // qemu-img ends the file after its last grain when that grain fills it to
                // its end: complete if the grain tables map nothing further.
                if m.is_empty() && mapped_end.is_some_and(|end| pos >= end) {
                    return Ok(());
                }
                let why = match mapped_end {
                    Some(end) if pos < end => {
                        format!("; its grain tables map a grain at {:#x}", end - 1)
                    }
                    _ => String::new(),
                };
                return Err(bad(format!(
                    "truncated: the file ends at {:#x} without an end-of-stream marker{why}",
                    pos + m.len() as u64
                )));
            }
            let (value, size) = (le64(m, 0), u64::from(le32(m, 8)));
            if size == 0 {
                let kind = le32(m, 12);
                match kind {
                    MARKER_EOS => return Ok(()),
                    1..=MARKER_FOOTER if value <= MAX_TABLE_BYTES / SECTOR => {
                        pos += SECTOR + value * SECTOR;
                    }
                    _ => {
                        return Err(bad(format!(
                            "bad marker at {pos:#x} (type {kind}, {value} sectors)"
                        )));
                    }
                }
                continue;
            }
            // A grain: LBA, compressed size, zlib data; padded to a sector.
            let guest = value.checked_mul(SECTOR).filter(|g| *g < vs);
            let Some(guest) = guest.filter(|_| value.is_multiple_of(h.grain) && size <= 2 * grain + 4096)
            else {
                return Err(bad(format!(
                    "grain marker at {pos:#x}: LBA {value}, {size} bytes (capacity {} sectors)",
                    h.capacity
                )));
            };
            let data = self.file.read_at(pos, (12 + size) as usize, false)?;
            inflate.reset(true);
            let status = inflate
                .decompress(&data[12..], &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| bad(format!("grain at {pos:#x} (LBA {value}): {e}")))?;
            if status != flate2::Status::StreamEnd {
                return Err(bad(format!(
                    "grain at {pos:#x} (LBA {value}) does not inflate to at most one grain"
                )));
            }
            let n = (inflate.total_out()).min(vs - guest) as usize;
            target.write_at(self.base + guest, &out[..n])?;
            pos += (12 + size).next_multiple_of(SECTOR);
        }
    }

    /// Where the grains mapped by a stream's grain tables end, when those tables come
    /// before the first grain (qemu-img fills them in as it writes the grains): a file
    /// that ends without an end-of-stream marker at or after this offset is complete.
    /// `None` when the tables are not there (VMware's layout: the grain directory at the
    /// end, `GD_AT_END`): the end-of-stream marker is then required.
    fn front_tables_end(&mut self, overhead: u64) -> Result<Option<u64>> {
        let h = self.header.clone();
        let (dir_len, gt_len) = (h.gd_entries() * 4, h.gtes_per_gt * 4);
        let Some(gd_at) = h
            .gd_offset
            .checked_mul(SECTOR)
            .filter(|o| *o > 0 && *o >= self.file.pos() && o.saturating_add(dir_len) <= overhead)
        else {
            return Ok(None);
        };
        let mut tables: Vec<(u64, u64)> = self
            .file
            .read_at(gd_at, dir_len as usize, false)?
            .chunks_exact(4)
            .enumerate()
            .filter_map(|(i, e)| {
                let sector = u64::from(le32(e, 0));
                (sector != 0).then_some((sector * SECTOR, i as u64))
            })
            .collect();
        tables.sort_unstable();
        let mut end = 0u64;
        for (at, index) in tables {
            if at < self.file.pos() || at + gt_len > overhead {
                return Ok(None);
            }
            let gt = self.file.read_at(at, gt_len as usize, false)?;
            for (j, e) in gt.chunks_exact(4).enumerate() {
                if index * h.gtes_per_gt + j as u64 >= h.grains() {
                    break;
                }
                let sector = u64::from(le32(e, 0));
                if sector == 0 || (sector == u64::from(GTE_ZEROED) && h.flags & FLAG_ZERO_GRAIN != 0) {
                    continue;
                }
                end = end.max(sector * SECTOR + 1);
            }
        }
        Ok(Some(end))
    }

    /// monolithicSparse: grain directory → grain tables → grains, in file order.
    fn follow_tables(mut self, target: &mut Target) -> Result<()> {
        let h = self.header.clone();
        let vs = h.virtual_size();
        let grain = h.grain_bytes();
        let gd = match (h.gd_offset, h.rgd_offset) {
            (GD_AT_END, _) => {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    reason: "a grain directory at the end without grain markers".into(),
                });
            }
            (gd, rgd) if h.flags & FLAG_REDUNDANT_GT != 0 && rgd != 0 && rgd < gd => rgd,
            (gd, _) => gd,
        };
        if gd == 0 {
            return Err(bad("no grain directory"));
        }
        let gd_at = gd
            .checked_mul(SECTOR)
            .filter(|o| *o <= MAX_VIRTUAL_SIZE)
            .ok_or_else(|| bad(format!("grain directory at sector {gd} is out of range")))?;
        let max_pending = (self.budget / 8).max(1 << 20) as usize;
        let dir = self.file.read_at(gd_at, (h.gd_entries() * 4) as usize, false)?;
        // Grain tables by file offset → their index in the directory.
        let mut tables: BTreeMap<u64, u64> = BTreeMap::new();
        for (i, e) in dir.chunks_exact(4).enumerate() {
            let sector = u64::from(le32(e, 0));
            if sector == 0 {
                continue;
            }
            if tables.insert(sector * SECTOR, i as u64).is_some() {
                return Err(bad(format!(
                    "grain directory entry {i}: grain table at sector {sector} twice"
                )));
            }
        }
        // Grains: (sector << 32 | grain number), smallest sector first.
        let mut grains: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
        loop {
            let next_grain = grains.peek().map(|Reverse(g)| (g >> 32) * SECTOR);
            let next_table = tables.first_key_value().map(|(o, _)| *o);
            if tables.is_empty() && next_grain.is_none_or(|g| g >= self.file.pos()) {
                self.file.stop_retaining();
            }
            match (next_table, next_grain) {
                (None, None) => return Ok(()),
                (Some(t), g) if g.is_none_or(|g| t <= g) => {
                    let index = tables.remove(&t).expect("the first key");
                    let gt = self.file.read_at(t, (h.gtes_per_gt * 4) as usize, false)?;
                    for (j, e) in gt.chunks_exact(4).enumerate() {
                        let number = index * h.gtes_per_gt + j as u64;
                        if number >= h.grains() {
                            break;
                        }
                        let sector = le32(e, 0);
                        if sector == 0 || (sector == GTE_ZEROED && h.flags & FLAG_ZERO_GRAIN != 0) {
                            continue;
                        }
                        grains.push(Reverse(u64::from(sector) << 32 | number));
                    }
                    if grains.len() > max_pending {
                        return Err(Error::Unsupported {
                            format: FORMAT,
                            reason: format!(
                                "more than {max_pending} grains are mapped ahead of the stream (raise the reorder buffer)"
                            ),
                        });
                    }
                }
                (_, Some(off)) => {
                    let Reverse(g) = grains.pop().expect("peeked");
                    let guest = (g & u64::from(u32::MAX)) * grain;
                    self.file
                        .copy_to(off, grain.min(vs - guest), target, self.base + guest)?;
                }
                (Some(_), None) => unreachable!("a table with no grain pending is handled above"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Reporter;
    use crate::source::{Shared, Stats};
    use crate::target::{Target, TargetSpec, probe};
    use std::io::Write;

    /// A sparse extent header: 8-sector grains, `capacity` sectors, descriptor at sector 1.
    fn header(flags: u32, capacity: u64, gd: u64, overhead: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"KDMV");
        h[4..8].copy_from_slice(&3u32.to_le_bytes());
        h[8..12].copy_from_slice(&flags.to_le_bytes());
        h[12..20].copy_from_slice(&capacity.to_le_bytes());
        h[20..28].copy_from_slice(&8u64.to_le_bytes());
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&1u64.to_le_bytes());
        h[44..48].copy_from_slice(&512u32.to_le_bytes());
        h[56..64].copy_from_slice(&gd.to_le_bytes());
        h[64..72].copy_from_slice(&overhead.to_le_bytes());
        h[77..79].copy_from_slice(&1u16.to_le_bytes());
        h
    }

    fn descriptor(create: &str, capacity: u64) -> Vec<u8> {
        let mut d = format!("# Disk DescriptorFile\nparentCID=ffffffff\ncreateType=\"{create}\"\nRW {capacity} SPARSE \"x.vmdk\"\n")
            .into_bytes();
        d.resize(512, 0);
        d
    }

    fn pad(v: &mut Vec<u8>) {
        v.resize(v.len().next_multiple_of(512), 0);
    }

    fn convert_into(image: &[u8], budget: u64, out: &std::path::Path) -> Result<u64> {
        let spec = TargetSpec {
            path: out.to_path_buf(),
            capacity: None,
        };
        let stats = Stats::new(Shared {
            hasher: None,
            hash_from: 0,
            reporter: Reporter::new(None, std::time::Duration::from_secs(1)),
        });
        let mut t = Target::open(&spec, probe(&spec)?, stats)?;
        let mut r = image;
        let v = VmdkStream::open(&mut r, budget)?;
        let vs = v.virtual_size();
        v.convert(&mut t)?;
        t.finish(vs)?;
        Ok(vs)
    }

    #[test]
    fn stream_optimized_with_the_directory_at_the_end() {
        // VMware's layout: gdOffset = GD_AT_END; grains out of order; GT, GD, footer markers.
        let flags = 1 | FLAG_REDUNDANT_GT | FLAG_COMPRESSED | FLAG_MARKERS;
        let mut f = header(flags, 64, GD_AT_END, 2);
        f.extend(descriptor("streamOptimized", 64));
        for (lba, byte) in [(16u64, 0xaau8), (0, 0xbb)] {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&[byte; 4096]).unwrap();
            let z = z.finish().unwrap();
            f.extend(lba.to_le_bytes());
            f.extend((z.len() as u32).to_le_bytes());
            f.extend(z);
            pad(&mut f);
        }
        let marker = |f: &mut Vec<u8>, sectors: u64, kind: u32| {
            f.extend(sectors.to_le_bytes());
            f.extend(0u32.to_le_bytes());
            f.extend(kind.to_le_bytes());
            pad(f);
        };
        marker(&mut f, 4, 1); // grain table
        f.extend([0x55; 2048]);
        marker(&mut f, 1, 2); // grain directory
        f.extend([0x66; 512]);
        marker(&mut f, 1, MARKER_FOOTER);
        f.extend(header(flags, 64, 20, 2));
        marker(&mut f, 0, MARKER_EOS);

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        assert_eq!(convert_into(&f, 1 << 20, &out).unwrap(), 32768);
        let mut want = vec![0u8; 32768];
        want[..4096].fill(0xbb);
        want[8192..12288].fill(0xaa);
        assert!(std::fs::read(&out).unwrap() == want);

        // Without the end-of-stream marker: truncated.
        let e = convert_into(&f[..f.len() - 512], 1 << 20, &out).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // A grain beyond the capacity.
        let mut g = f.clone();
        g[1024..1032].copy_from_slice(&64u64.to_le_bytes());
        let e = convert_into(&g, 1 << 20, &out).unwrap_err();
        assert!(e.to_string().contains("LBA 64"), "{e}");
    }

    #[test]
    fn grains_before_their_table_are_reordered() {
        // header │ descriptor │ grain A │ GD │ GT (grain 0 → A, grain 2 → B) │ grain B
        let mut f = header(1, 32, 10, 2);
        f.extend(descriptor("monolithicSparse", 32));
        f.extend([0x11; 4096]);
        let mut gd = 11u32.to_le_bytes().to_vec();
        pad(&mut gd);
        f.extend(gd);
        let mut gt = vec![0u8; 2048];
        gt[..4].copy_from_slice(&2u32.to_le_bytes());
        gt[8..12].copy_from_slice(&15u32.to_le_bytes());
        f.extend(gt);
        f.extend([0x22; 4096]);
        assert_eq!(f.len(), 15 * 512 + 4096);

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        assert_eq!(convert_into(&f, 1 << 20, &out).unwrap(), 16384);
        let mut want = vec![0u8; 16384];
        want[..4096].fill(0x11);
        want[8192..12288].fill(0x22);
        assert!(std::fs::read(&out).unwrap() == want);
        // Grain A does not fit in a 1 KiB reorder buffer.
        let e = convert_into(&f, 1024, &out).unwrap_err();
        assert_eq!(e.label(), "unsupported", "{e}");
    }

    #[test]
    fn absurd_overhead_and_directory_offsets_are_invalid() {
        // Mutation test: these sector numbers used to overflow when turned into bytes.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        let flags = 1 | FLAG_COMPRESSED | FLAG_MARKERS;
        for overhead in [u64::MAX - 1, 1 << 55, (MAX_VIRTUAL_SIZE / SECTOR) + 1] {
            let mut f = header(flags, 64, GD_AT_END, overhead);
            f.extend(descriptor("streamOptimized", 64));
            let e = convert_into(&f, 1 << 20, &out).unwrap_err();
            assert_eq!(e.label(), "invalid_image", "{e}");
            assert!(e.to_string().contains("overhead of"), "{e}");
        }
        for gd in [u64::MAX - 1, 1 << 55] {
            let mut f = header(1, 32, gd, 2);
            f.extend(descriptor("monolithicSparse", 32));
            let e = convert_into(&f, 1 << 20, &out).unwrap_err();
            assert_eq!(e.label(), "invalid_image", "{e}");
            assert!(e.to_string().contains("out of range"), "{e}");
        }
    }

    #[test]
    fn descriptors() {
        let ok = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\
                  RW 16389 SPARSE \"disk.vmdk\"\nddb.adapterType = \"ide\"\n";
        Descriptor::parse(ok).check_embedded().unwrap();
        let flat = "createType=\"monolithicFlat\"\nRW 16389 FLAT \"disk-flat.vmdk\" 0\n";
        let e = Descriptor::parse(flat).check_embedded().unwrap_err();
        assert_eq!(e.label(), "refused");
        assert!(e.to_string().contains("disk-flat.vmdk"), "{e}");
        let two = "createType=\"twoGbMaxExtentSparse\"\nRW 4192256 SPARSE \"d-s001.vmdk\"\nRW 100 SPARSE \"d-s002.vmdk\"\n";
        assert!(
            Descriptor::parse(two)
                .check_embedded()
                .unwrap_err()
                .to_string()
                .contains("d-s002.vmdk")
        );
        let delta = "parentCID=1234abcd\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"monolithicSparse\"\nRW 8 SPARSE \"x.vmdk\"\n";
        let e = Descriptor::parse(delta).check_embedded().unwrap_err();
        assert!(e.to_string().contains("base.vmdk"), "{e}");
    }
}
