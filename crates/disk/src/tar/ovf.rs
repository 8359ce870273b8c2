//! The OVF descriptor of an OVA: the disks it names, and the one imported.

use ido_io::ovf::{Descriptor, OvfDisk, OvfError};

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

/// The disks an OVF names, in its order (ido-io's one OVF reader): the files of its
/// `<Disk>` elements, else its `<File>` elements. A file outside the archive is refused.
fn ovf_disks(ovf: &str) -> Result<Vec<OvfDisk>> {
    let refused = |e: OvfError| match e {
        OvfError::OutsidePackage(href) => {
            Error::refused("ova", format!("the OVF's file {href:?} is outside the archive"))
        }
        e => Error::invalid("ova", e.to_string()),
    };
    Descriptor::parse(ovf).and_then(|d| d.disks()).map_err(refused)
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
                d.file.href == c
                    || d.file.href.rsplit(['/', '\\']).next() == Some(c)
                    || d.file.id.as_deref() == Some(c)
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
    let href = &disk.file.href;
    if disk.file.chunked {
        return Err(Error::Unsupported {
            format: "ova",
            reason: format!("the disk {href:?} is split into chunks"),
        });
    }
    Ok(Some(href.clone()))
}
