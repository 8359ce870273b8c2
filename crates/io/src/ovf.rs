//! OVF descriptors (DMTF DSP0243), read with [`crate::xml`]: the files a package references,
//! the disks built from them, and the one edit ido makes (the hardware version).
//!
//! Every reader of an OVA goes through here: disk import picks the disk to convert, vSphere
//! and Cloud Director list the files to upload. The edit rewrites the text of every
//! `<vssd:VirtualSystemType>` and leaves every other byte as it was, so an `.mf` digest of
//! anything else stays valid.

use std::ops::Range;

use crate::xml::{Node, XmlError};

/// Why a descriptor was refused.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    #[error("the OVF descriptor is not valid XML: {0}")]
    Xml(#[from] XmlError),
    #[error("the OVF descriptor's root is <{0}>, not <Envelope>")]
    NotAnEnvelope(String),
    #[error("a References/File has no ovf:href")]
    NoHref,
    #[error("the OVF's file {0:?} is outside the package")]
    OutsidePackage(String),
    #[error("the OVF's file {href:?} has a bad ovf:size {value:?}")]
    BadSize { href: String, value: String },
    #[error("the OVF references the file {0:?} twice")]
    Duplicate(String),
    #[error("the OVF's disk {disk} refers to an unknown file {file_ref:?}")]
    UnknownFile { disk: String, file_ref: String },
    #[error("an empty <VirtualSystemType/> cannot be patched")]
    EmptyVirtualSystemType,
}

/// A `References/File` of the descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OvfFile {
    /// `ovf:href`: the member name in an OVA.
    pub href: String,
    /// `ovf:id`.
    pub id: Option<String>,
    /// `ovf:size` in bytes, when declared.
    pub size: Option<u64>,
    /// `ovf:compression` when set to something other than `identity` (e.g. `gzip`).
    pub compression: Option<String>,
    /// Whether the file is split into chunks (`ovf:chunkSize`).
    pub chunked: bool,
}

/// A disk of the descriptor: a `DiskSection/Disk` and the file it is stored in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvfDisk {
    /// `ovf:diskId`, if the disk came from a `<Disk>`.
    pub disk_id: Option<String>,
    /// The file holding it.
    pub file: OvfFile,
}

impl std::fmt::Display for OvfDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} (", self.file.href)?;
        if let Some(id) = &self.file.id {
            write!(f, "ovf:id {id:?}, ")?;
        }
        if let Some(id) = &self.disk_id {
            write!(f, "ovf:diskId {id:?}, ")?;
        }
        match self.file.size {
            Some(n) => write!(f, "{n} bytes)"),
            None => write!(f, "size not given)"),
        }
    }
}

/// A parsed descriptor.
#[derive(Clone, Debug)]
pub struct Descriptor {
    root: Node,
    /// The `References/File` elements, in order, each href once and inside the package.
    pub files: Vec<OvfFile>,
}

impl Descriptor {
    /// Parses `text`: an `<Envelope>` whose files are named, inside the package (no URL,
    /// absolute path or `..`), listed once, with numeric sizes.
    pub fn parse(text: &str) -> Result<Self, OvfError> {
        let root = Node::parse(text)?;
        if root.name != "Envelope" {
            return Err(OvfError::NotAnEnvelope(root.name));
        }
        let mut files: Vec<OvfFile> = Vec::new();
        for f in root
            .children_named("References")
            .flat_map(|r| r.children_named("File"))
        {
            let href = f
                .attr_any_ns("href")
                .filter(|h| !h.is_empty())
                .ok_or(OvfError::NoHref)?;
            if href.contains("://")
                || href.starts_with(['/', '\\'])
                || href.split(['/', '\\']).any(|c| c == "..")
            {
                return Err(OvfError::OutsidePackage(href.to_string()));
            }
            if files.iter().any(|o| o.href == href) {
                return Err(OvfError::Duplicate(href.to_string()));
            }
            let size = match f.attr_any_ns("size") {
                Some(s) => Some(s.trim().parse::<u64>().map_err(|_| OvfError::BadSize {
                    href: href.to_string(),
                    value: s.to_string(),
                })?),
                None => None,
            };
            files.push(OvfFile {
                href: href.to_string(),
                id: f.attr_any_ns("id").map(str::to_string),
                size,
                compression: f
                    .attr_any_ns("compression")
                    .filter(|c| !c.is_empty() && *c != "identity")
                    .map(str::to_string),
                chunked: f.attr_any_ns("chunkSize").is_some(),
            });
        }
        Ok(Self { root, files })
    }

    /// The disks, in order: the files of the `DiskSection/Disk` elements (each file once),
    /// or, when there is none, every referenced file.
    pub fn disks(&self) -> Result<Vec<OvfDisk>, OvfError> {
        let mut disks: Vec<OvfDisk> = Vec::new();
        let mut any = false;
        for d in self
            .root
            .children_named("DiskSection")
            .flat_map(|s| s.children_named("Disk"))
        {
            let Some(file_ref) = d.attr_any_ns("fileRef") else {
                continue;
            };
            any = true;
            let disk_id = d.attr_any_ns("diskId").map(str::to_string);
            let file = self
                .files
                .iter()
                .find(|f| f.id.as_deref() == Some(file_ref))
                .ok_or_else(|| OvfError::UnknownFile {
                    disk: disk_id.clone().unwrap_or_else(|| "without ovf:diskId".into()),
                    file_ref: file_ref.to_string(),
                })?;
            if !disks.iter().any(|x| x.file.href == file.href) {
                disks.push(OvfDisk {
                    disk_id,
                    file: file.clone(),
                });
            }
        }
        if !any {
            disks = self
                .files
                .iter()
                .map(|f| OvfDisk {
                    disk_id: None,
                    file: f.clone(),
                })
                .collect();
        }
        Ok(disks)
    }
}

/// Writes `vmx-<version>` into every `VirtualSystemType` of `descriptor`; returns the new
/// text and how many elements changed (0 leaves the text as it was).
pub fn set_hardware_version(descriptor: &str, version: u32) -> Result<(String, usize), OvfError> {
    let root = Descriptor::parse(descriptor)?.root;
    let mut ranges = Vec::new();
    collect_system_types(&root, &mut ranges);
    let value = format!("vmx-{version:02}");
    let mut out = descriptor.to_string();
    // Back to front, so earlier ranges stay valid.
    ranges.sort_by_key(|r| std::cmp::Reverse(r.start));
    for r in &ranges {
        if r.is_empty() && descriptor[..r.start].ends_with("/>") {
            return Err(OvfError::EmptyVirtualSystemType);
        }
        out.replace_range(r.clone(), &value);
    }
    Ok((out, ranges.len()))
}

fn collect_system_types(n: &Node, out: &mut Vec<Range<usize>>) {
    for c in &n.children {
        if c.name == "VirtualSystemType" {
            out.push(c.inner.clone());
        } else {
            collect_system_types(c, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:href="disk-0.vmdk" ovf:id="file1" ovf:size="3000"/>
    <File ovf:href="disk-1.vmdk" ovf:id="file2"/>
  </References>
  <VirtualSystem ovf:id="x"><VirtualHardwareSection><System>
    <vssd:InstanceID>0</vssd:InstanceID>
    <vssd:VirtualSystemType>vmx-09 vmx-10</vssd:VirtualSystemType>
  </System></VirtualHardwareSection></VirtualSystem>
</Envelope>
"#;

    fn file(href: &str, id: &str, size: Option<u64>) -> OvfFile {
        OvfFile {
            href: href.into(),
            id: Some(id.into()),
            size,
            ..Default::default()
        }
    }

    #[test]
    fn references_are_listed() {
        let d = Descriptor::parse(OVF).unwrap();
        assert_eq!(
            d.files,
            vec![
                file("disk-0.vmdk", "file1", Some(3000)),
                file("disk-1.vmdk", "file2", None)
            ]
        );
        let with = |from: &str, to: &str| Descriptor::parse(&OVF.replace(from, to));
        let gz = with("ovf:id=\"file1\"", "ovf:id=\"file1\" ovf:compression=\"gzip\"").unwrap();
        assert_eq!(gz.files[0].compression.as_deref(), Some("gzip"));
        let id = with(
            "ovf:id=\"file1\"",
            "ovf:id=\"file1\" ovf:compression=\"identity\"",
        )
        .unwrap();
        assert_eq!(id.files[0].compression, None);
        assert!(with("ovf:id=\"file1\"", "ovf:chunkSize=\"100\"").unwrap().files[0].chunked);
        let err = |from: &str, to: &str| with(from, to).unwrap_err().to_string();
        assert!(err("disk-0.vmdk", "../etc/passwd").contains("outside the package"));
        assert!(err("disk-0.vmdk", "http://x/y").contains("outside the package"));
        assert!(err("ovf:size=\"3000\"", "ovf:size=\"lots\"").contains("bad ovf:size \"lots\""));
        assert!(err("disk-1.vmdk", "disk-0.vmdk").contains("twice"));
        assert!(err("ovf:href=\"disk-1.vmdk\" ", "").contains("no ovf:href"));
        assert!(Descriptor::parse("<Envelope><oops></Envelope>").is_err());
        assert!(
            Descriptor::parse("<html/>")
                .unwrap_err()
                .to_string()
                .contains("<html>")
        );
    }

    #[test]
    fn disks_come_from_the_disk_section_else_the_files() {
        let d = Descriptor::parse(OVF).unwrap();
        assert_eq!(d.disks().unwrap().len(), 2, "no DiskSection: every file");
        let section = OVF.replace(
            "</References>",
            r#"</References><DiskSection><Disk ovf:diskId="vmdisk2" ovf:fileRef="file2"/><Disk ovf:diskId="again" ovf:fileRef="file2"/></DiskSection>"#,
        );
        let disks = Descriptor::parse(&section).unwrap().disks().unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].disk_id.as_deref(), Some("vmdisk2"));
        assert_eq!(disks[0].file.href, "disk-1.vmdk");
        assert_eq!(
            disks[0].to_string(),
            r#""disk-1.vmdk" (ovf:id "file2", ovf:diskId "vmdisk2", size not given)"#
        );
        let dangling = section.replace("ovf:fileRef=\"file2\"/><Disk", "ovf:fileRef=\"file9\"/><Disk");
        let e = Descriptor::parse(&dangling).unwrap().disks().unwrap_err();
        assert!(e.to_string().contains("unknown file \"file9\""), "{e}");
    }

    #[test]
    fn hardware_version_is_patched_in_place() {
        let (patched, n) = set_hardware_version(OVF, 19).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            patched,
            OVF.replace(
                "<vssd:VirtualSystemType>vmx-09 vmx-10<",
                "<vssd:VirtualSystemType>vmx-19<"
            )
        );
        assert_eq!(
            set_hardware_version(&patched, 9)
                .unwrap()
                .0
                .matches(">vmx-09<")
                .count(),
            1
        );
        let none = OVF.replace("VirtualSystemType", "Other");
        assert_eq!(set_hardware_version(&none, 19).unwrap(), (none, 0));
        let empty = OVF.replace(
            "<vssd:VirtualSystemType>vmx-09 vmx-10</vssd:VirtualSystemType>",
            "<vssd:VirtualSystemType/>",
        );
        assert!(matches!(
            set_hardware_version(&empty, 19),
            Err(OvfError::EmptyVirtualSystemType)
        ));
    }
}
