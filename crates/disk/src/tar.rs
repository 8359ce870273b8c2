//! A tar holding one disk: the first regular file is streamed out; every member name is
//! checked (no absolute paths, no `..`), and a second non-empty regular file is an error.
//!
//! An **OVA** (a tar whose first file is an `.ovf` descriptor) is recognised: the OVF is
//! read (up to 4 MiB) and the disk it names — the file of its first `<Disk>`, else its
//! first `<File>` — is streamed; the manifest (`.mf`), certificate (`.cert`) and other
//! members are skipped, before and after it. A named file missing from the archive, a
//! reference outside it (a URL, an absolute path, `..`) or a disk split into chunks is an
//! error. Only that one disk is imported (others are reported in the log). Without a
//! usable reference, the first member that is not `.ovf`, `.mf` or `.cert` is the disk.
//! A disk that is a VMDK descriptor file is read with its extents, the members after it
//! (`SharedTar`).
//!
//! The archive is read by [`ido_io::tar`], the one tar reader: ustar, pre-POSIX, GNU and
//! pax headers, and sparse members expanded as they stream (holes read as zeros, and
//! become holes in the target). Nothing is extracted to the file system here:
//! [`TarEntries`] (ido-io's) walks every member for [`crate::archive`], which unpacks
//! them. The reader's errors are this crate's [`Error::InvalidImage`],
//! [`Error::Refused`] and [`Error::Unsupported`] with the format `tar`.

use std::io::{self, Read};

use ido_io::tar::{TarError, TarReader};

use crate::{Error, Result};

mod ovf;
mod shared;

pub(crate) use ido_io::tar::checksum_holds;
pub use ido_io::tar::{Entry, EntryKind, MAX_SPARSE_ENTRIES, TarEntries};
use ovf::{is_ova_metadata, ovf_choose};
pub(crate) use shared::SharedTar;

/// Longest OVF descriptor accepted.
const MAX_OVF: u64 = 4 << 20;

impl From<TarError> for Error {
    fn from(e: TarError) -> Self {
        match e {
            TarError::Invalid(reason) => Error::invalid("tar", reason),
            TarError::Refused(reason) => Error::refused("tar", reason),
            TarError::Unsupported(reason) => Error::Unsupported {
                format: "tar",
                reason,
            },
            TarError::Io(source) => Error::io("reading tar", source),
        }
    }
}

/// The disk member of a tar, readable as a stream.
pub struct TarDisk<R> {
    tar: TarReader<R>,
    /// Set for an OVA: other members are allowed after the disk.
    ova: bool,
}

impl<R: Read> TarDisk<R> {
    /// Reads headers up to the first regular file (for an OVA: up to its disk; an OVA
    /// with several disks is refused, naming them: see [`TarDisk::open_with`]).
    pub fn open(inner: R) -> Result<Self> {
        Self::open_with(inner, None)
    }

    /// As [`TarDisk::open`]; `disk` chooses the disk of an OVA that holds several: its
    /// file name, its `ovf:id`, its `ovf:diskId`, or its position in the OVF from 1.
    pub fn open_with(inner: R, disk: Option<&str>) -> Result<Self> {
        let mut tar = TarReader::new(inner);
        let mut ova: Option<Option<String>> = None;
        let mut first = true;
        loop {
            let Some(m) = tar.next_member()? else {
                return Err(match (ova, disk) {
                    (Some(None), Some(d)) => Error::InvalidArgument {
                        field: "disk",
                        value: d.to_string(),
                        reason: "the OVF names no disk file and the OVA holds no member of that name".into(),
                    },
                    (Some(Some(href)), _) => {
                        Error::invalid("ova", format!("the disk {href:?} named in the OVF is missing"))
                    }
                    (Some(None), None) => Error::invalid("ova", "the archive holds no disk"),
                    (None, _) => Error::invalid("tar", "the archive holds no file"),
                });
            };
            if !m.is_regular() {
                continue;
            }
            let lower = m.name.to_ascii_lowercase();
            if first && lower.ends_with(".ovf") {
                first = false;
                let ovf = tar.read_whole(MAX_OVF, "OVF descriptor")?;
                ova = Some(ovf_choose(&String::from_utf8_lossy(&ovf), disk)?);
                continue;
            }
            first = false;
            let wanted = match &ova {
                None => true,
                Some(Some(href)) => m.name == *href || m.name.rsplit('/').next() == Some(href.as_str()),
                Some(None) => match disk {
                    Some(d) => m.name == d || m.name.rsplit('/').next() == Some(d),
                    None => !is_ova_metadata(&lower),
                },
            };
            if wanted {
                // A sparse member's map is checked, and read first when it opens the
                // data (PAX 1.0).
                tar.enter(m)?;
                return Ok(Self {
                    tar,
                    ova: ova.is_some(),
                });
            }
        }
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        self.tar.name()
    }

    /// The member's size (a sparse member's real size).
    pub fn size(&self) -> u64 {
        self.tar.size()
    }

    /// Whether the archive is an OVA (its disk was found through the OVF).
    pub fn is_ova(&self) -> bool {
        self.ova
    }

    /// Skips the rest of the disk and checks the rest of the archive.
    pub fn finish(mut self) -> Result<()> {
        let disk = self.tar.name().to_string();
        while let Some(m) = self.tar.next_member()? {
            if self.ova {
                if m.is_regular() && !is_ova_metadata(&m.name.to_ascii_lowercase()) {
                    tracing::info!(disk = %disk, other = %m.name, "the OVA holds another file; it is not imported");
                }
            } else if m.is_regular() && m.size > 0 {
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "it holds more than one file ({disk:?} and {:?}); expected exactly one disk",
                        m.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the current member has been read to its end (a sparse member: its holes
    /// too).
    pub(crate) fn at_end(&self) -> bool {
        self.tar.at_end()
    }
}

impl<R: Read> Read for TarDisk<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read(buf)
    }
}

impl<R: Read> TarDisk<R> {
    /// Moves to the next regular member named `dir` + one of `wanted` (the extents of the
    /// VMDK descriptor file `descriptor`, the current member, in any order): skips the
    /// rest of the current member and returns the index of the name found and the
    /// member's size. In a plain tar any other non-empty file is an error; an OVA's other
    /// members are skipped.
    fn next_named(&mut self, dir: &str, wanted: &[&str], descriptor: &str) -> Result<(usize, u64)> {
        let format = if self.ova { "ova" } else { "tar" };
        loop {
            let Some(m) = self.tar.next_member()? else {
                let names: Vec<String> = wanted.iter().map(|w| format!("{w:?}")).collect();
                return Err(Error::invalid(
                    format,
                    format!(
                        "the extent(s) {} of the VMDK descriptor {descriptor:?} are not in the archive after it",
                        names.join(", ")
                    ),
                ));
            };
            let name = strip_dot(&m.name);
            let index = name
                .strip_prefix(dir)
                .and_then(|rel| wanted.iter().position(|w| strip_dot(w) == rel));
            if let Some(i) = index {
                if !m.is_regular() {
                    return Err(Error::refused(
                        format,
                        format!(
                            "the extent {:?} of the VMDK descriptor {descriptor:?} is not a regular file in the \
                             archive (member type {:?})",
                            wanted[i],
                            char::from(m.kind)
                        ),
                    ));
                }
                // A sparse extent reads expanded, as its real size.
                let len = self.tar.enter(m)?;
                return Ok((i, len));
            }
            if m.is_regular() && m.size > 0 && !self.ova {
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "it holds {:?}, which the VMDK descriptor {descriptor:?} does not name; expected the \
                         descriptor and its extents only",
                        m.name
                    ),
                ));
            }
        }
    }
}

/// A member name without leading `./`.
fn strip_dot(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n
}

#[cfg(test)]
mod tests;
