//! The OVF descriptor of an OVA: the disks it names, and the one imported.

use crate::{Error, Result};

/// OVA members that are not disks.
pub(super) fn is_ova_metadata(lower: &str) -> bool {
    [".ovf", ".mf", ".cert"].iter().any(|x| lower.ends_with(x))
}

/// The file name of the OVF's disk (`None`: the OVF names no file); several are an error.
#[cfg(test)]
pub(super) fn ovf_disk(ovf: &str) -> Result<Option<String>> {
    ovf_choose(ovf, None)
}

/// A disk an OVF names: the file of a `<Disk>` (or, without any, a `<File>`).
#[derive(Clone, Debug)]
struct OvfDisk {
    href: String,
    /// The file's `ovf:id`.
    file_id: Option<String>,
    /// The disk's `ovf:diskId`.
    disk_id: Option<String>,
    /// The file's `ovf:size` in bytes.
    size: Option<u64>,
    chunked: bool,
}

impl std::fmt::Display for OvfDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} (", self.href)?;
        if let Some(id) = &self.file_id {
            write!(f, "ovf:id {id:?}, ")?;
        }
        if let Some(id) = &self.disk_id {
            write!(f, "ovf:diskId {id:?}, ")?;
        }
        match self.size {
            Some(n) => write!(f, "{n} bytes)"),
            None => write!(f, "size not given)"),
        }
    }
}

/// The disks an OVF names, in its order: the files of its `<Disk>` elements, else its
/// `<File>` elements.
fn ovf_disks(ovf: &str) -> Result<Vec<OvfDisk>> {
    let mut files: Vec<OvfDisk> = Vec::new();
    let mut disk_refs: Vec<(Option<String>, String)> = Vec::new();
    for (tag, attrs) in xml_tags(ovf) {
        let attr = |name: &str| attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        match tag {
            "File" => {
                if let Some(href) = attr("href") {
                    files.push(OvfDisk {
                        href,
                        file_id: attr("id"),
                        disk_id: None,
                        size: attr("size").and_then(|v| v.trim().parse().ok()),
                        chunked: attr("chunkSize").is_some(),
                    });
                }
            }
            "Disk" => {
                if let Some(r) = attr("fileRef") {
                    disk_refs.push((attr("diskId"), r));
                }
            }
            _ => {}
        }
    }
    if disk_refs.is_empty() {
        return Ok(files);
    }
    let mut disks: Vec<OvfDisk> = Vec::new();
    for (disk_id, r) in disk_refs {
        let Some(file) = files.iter().find(|f| f.file_id.as_deref() == Some(r.as_str())) else {
            return Err(Error::invalid(
                "ova",
                format!("the OVF's disk refers to an unknown file {r:?}"),
            ));
        };
        if !disks.iter().any(|d| d.href == file.href) {
            disks.push(OvfDisk {
                disk_id,
                ..file.clone()
            });
        }
    }
    Ok(disks)
}

/// `1: "a.vmdk" (ovf:id "file1", 123 bytes), 2: …`
fn list_disks(disks: &[OvfDisk]) -> String {
    disks
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{}: {d}", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The file name of the OVF's disk to import (`None`: the OVF names no file): its only
/// disk, or the one `choice` names (file name, `ovf:id`, `ovf:diskId`, or position from 1).
/// Several disks and no choice, or a choice that names none, are errors listing them.
pub(super) fn ovf_choose(ovf: &str, choice: Option<&str>) -> Result<Option<String>> {
    let disks = ovf_disks(ovf)?;
    let disk = match (choice, disks.as_slice()) {
        (_, []) => return Ok(None),
        (None, [one]) => one,
        (None, several) => {
            return Err(Error::refused(
                "ova",
                format!(
                    "it holds {} disks: {}; choose one with --disk NAME|INDEX (its file name, ovf:id or ovf:diskId, \
                     or its position from 1)",
                    several.len(),
                    list_disks(several)
                ),
            ));
        }
        (Some(c), all) => {
            let named = all.iter().find(|d| {
                d.href == c
                    || d.href.rsplit(['/', '\\']).next() == Some(c)
                    || d.file_id.as_deref() == Some(c)
                    || d.disk_id.as_deref() == Some(c)
            });
            let by_index = || {
                c.trim()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| all.get(i))
            };
            match named.or_else(by_index) {
                Some(d) => d,
                None => {
                    return Err(Error::InvalidArgument {
                        field: "disk",
                        value: c.to_string(),
                        reason: format!("the OVA holds no such disk; its disks: {}", list_disks(all)),
                    });
                }
            }
        }
    };
    let href = &disk.href;
    if href.contains("://") || href.starts_with('/') || href.split(['/', '\\']).any(|c| c == "..") {
        return Err(Error::refused(
            "ova",
            format!("the OVF's disk {href:?} is outside the archive"),
        ));
    }
    if disk.chunked {
        return Err(Error::Unsupported {
            format: "ova",
            reason: format!("the disk {href:?} is split into chunks"),
        });
    }
    Ok(Some(href.clone()))
}

/// Start tags of an XML document, as (local name, [(local attribute name, value)]).
/// Enough for OVF references; comments, processing instructions and end tags are skipped.
fn xml_tags(doc: &str) -> Vec<(&str, Vec<(String, String)>)> {
    let local = |n: &str| n.rsplit(':').next().unwrap_or(n).to_string();
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        if rest.starts_with("!--") {
            rest = rest.find("-->").map_or("", |j| &rest[j + 3..]);
            continue;
        }
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        rest = &rest[end..];
        if tag.starts_with(['/', '?', '!']) {
            continue;
        }
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let name = tag[..name_end].rsplit(':').next().unwrap_or("");
        let mut attrs = Vec::new();
        let mut a = &tag[name_end..];
        while let Some(eq) = a.find('=') {
            let key = a[..eq].trim();
            let v = a[eq + 1..].trim_start();
            let Some(q) = v.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                break;
            };
            let Some(close) = v[1..].find(q) else {
                break;
            };
            let value = v[1..1 + close]
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            attrs.push((local(key), value));
            a = &v[close + 2..];
        }
        out.push((name, attrs));
    }
    out
}
