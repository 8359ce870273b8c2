//! The OVF descriptor, in memory: the files it references and the hardware-version patch.
//!
//! The patch rewrites the text of every `<vssd:VirtualSystemType>` and leaves every other
//! byte of the descriptor as it was (so an `.mf` digest of anything else stays valid).

use std::ops::Range;

use ido_engine::xml::Node;

/// A `References/File` of the descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvfFile {
    /// `ovf:href`: the OVA member name and VCD's file name.
    pub href: String,
    /// `ovf:size`, when declared.
    pub size: Option<u64>,
}

/// Parses the descriptor and lists its referenced files. Rejects what VCD cannot take
/// from a stream: compressed or chunked files, and files outside the package.
pub fn references(descriptor: &str) -> Result<Vec<OvfFile>, String> {
    let root = parse(descriptor)?;
    let mut out = Vec::new();
    for f in root
        .children_named("References")
        .flat_map(|r| r.children_named("File"))
    {
        let href = f
            .attr_any_ns("href")
            .filter(|h| !h.is_empty())
            .ok_or("a References/File has no ovf:href")?;
        if href.contains("://") || href.starts_with('/') || href.split('/').any(|c| c == "..") {
            return Err(format!("File {href:?} is not a file of the package"));
        }
        if f.attr_any_ns("compression")
            .is_some_and(|c| !c.is_empty() && c != "identity")
        {
            return Err(format!(
                "File {href:?} is compressed (ovf:compression), which VCD rejects"
            ));
        }
        if f.attr_any_ns("chunkSize").is_some() {
            return Err(format!(
                "File {href:?} is chunked (ovf:chunkSize), which is not supported"
            ));
        }
        let size = match f.attr_any_ns("size") {
            Some(s) => Some(
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("File {href:?} has a bad ovf:size {s:?}"))?,
            ),
            None => None,
        };
        if out.iter().any(|o: &OvfFile| o.href == href) {
            return Err(format!("File {href:?} is referenced twice"));
        }
        out.push(OvfFile {
            href: href.to_string(),
            size,
        });
    }
    Ok(out)
}

/// Writes `vmx-<version>` into every `VirtualSystemType` of the descriptor; returns the new
/// text and how many elements changed (0 leaves the text as it was).
pub fn set_hardware_version(descriptor: &str, version: u32) -> Result<(String, usize), String> {
    let root = parse(descriptor)?;
    let mut ranges = Vec::new();
    collect(&root, &mut ranges);
    let value = format!("vmx-{version:02}");
    let mut out = descriptor.to_string();
    // Back to front, so earlier ranges stay valid.
    ranges.sort_by_key(|r| std::cmp::Reverse(r.start));
    for r in &ranges {
        if r.is_empty() && descriptor[..r.start].ends_with("/>") {
            return Err("an empty <VirtualSystemType/> cannot be patched".into());
        }
        out.replace_range(r.clone(), &value);
    }
    Ok((out, ranges.len()))
}

fn collect(n: &Node, out: &mut Vec<Range<usize>>) {
    for c in &n.children {
        if c.name == "VirtualSystemType" {
            out.push(c.inner.clone());
        } else {
            collect(c, out);
        }
    }
}

fn parse(descriptor: &str) -> Result<Node, String> {
    let root = Node::parse(descriptor).map_err(|e| format!("OVF descriptor is not valid XML: {e}"))?;
    if root.name != "Envelope" {
        return Err(format!("OVF descriptor root is <{}>, not <Envelope>", root.name));
    }
    Ok(root)
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

    #[test]
    fn references_are_listed() {
        assert_eq!(
            references(OVF).unwrap(),
            vec![
                OvfFile {
                    href: "disk-0.vmdk".into(),
                    size: Some(3000)
                },
                OvfFile {
                    href: "disk-1.vmdk".into(),
                    size: None
                },
            ]
        );
        let bad = |from: &str, to: &str| references(&OVF.replace(from, to)).unwrap_err();
        assert!(bad("ovf:id=\"file1\"", "ovf:compression=\"gzip\"").contains("compressed"));
        assert!(bad("ovf:id=\"file1\"", "ovf:chunkSize=\"100\"").contains("chunked"));
        assert!(bad("disk-0.vmdk", "../etc/passwd").contains("not a file"));
        assert!(bad("ovf:size=\"3000\"", "ovf:size=\"lots\"").contains("bad ovf:size"));
        assert!(references("<Envelope><oops></Envelope>").is_err());
        assert!(references("<html/>").unwrap_err().contains("<html>"));
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
        assert!(set_hardware_version(&empty, 19).is_err());
    }
}
