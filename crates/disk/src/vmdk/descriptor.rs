//! The text descriptor (embedded in a sparse extent, or a descriptor file of its own) and
//! the plan of a descriptor file's extents.

use super::{FORMAT, SECTOR, bad};
use crate::qcow2::header::MAX_VIRTUAL_SIZE;
use crate::{Error, Result};

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
pub(super) struct Descriptor {
    pub(super) create_type: Option<String>,
    parent_cid: Option<String>,
    parent_hint: Option<String>,
    extents: Vec<ExtentLine>,
}

impl Descriptor {
    pub(super) fn parse(text: &str) -> Self {
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
    pub(super) fn files(&self) -> String {
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
    pub(super) fn check_embedded(&self) -> Result<()> {
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
pub(super) enum ExtentKind {
    /// Raw bytes from this offset (bytes) of the file (`FLAT`, `VMFS`).
    Flat(u64),
    /// A hosted sparse extent ("KDMV": monolithicSparse or streamOptimized).
    Sparse,
}

/// One extent of a descriptor file, placed in the disk.
#[derive(Clone, Debug)]
pub(super) struct Planned {
    pub(super) file: String,
    pub(super) kind: ExtentKind,
    /// Where it starts in the disk (bytes).
    pub(super) guest: u64,
    /// Its length (bytes).
    pub(super) len: u64,
}

impl Descriptor {
    /// The extents of a descriptor file, in the disk's order, checked: `RW` extents of
    /// type `FLAT`, `VMFS` or `SPARSE`, in files inside the descriptor's directory or
    /// archive.
    pub(super) fn plan(&self) -> Result<Vec<Planned>> {
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
            let p = e.planned(guest)?;
            guest = guest
                .checked_add(p.len)
                .filter(|g| *g <= MAX_VIRTUAL_SIZE)
                .ok_or_else(|| bad("the extents add up to more than the largest disk read"))?;
            plan.push(p);
        }
        Ok(plan)
    }
}

impl ExtentLine {
    /// This extent, checked, placed at `guest` (bytes) in the disk.
    fn planned(&self, guest: u64) -> Result<Planned> {
        let e = self;
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
        Ok(Planned {
            file,
            kind,
            guest,
            len: sectors * SECTOR,
        })
    }
}

/// Refuses an extent file name that leads out of the descriptor's directory or archive.
pub(super) fn check_extent_name(name: &str) -> Result<()> {
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
