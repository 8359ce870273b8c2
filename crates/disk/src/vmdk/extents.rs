//! The extent files of a descriptor file: where they are read from ([`ExtentFiles`]: a
//! local directory here, a tar in [`crate::tar`]) and how they are copied ([`Split`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::descriptor::{ExtentKind, Planned, check_extent_name};
use super::{FORMAT, SECTOR, VmdkStream, bad};
use crate::source::read_full;
use crate::target::Target;
use crate::{Error, Result};

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
pub(super) fn short_extent(name: &str, len: u64, off: u64, need: u64) -> Error {
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
    pub(super) plan: Vec<Planned>,
    pub(super) extents: Box<dyn ExtentFiles>,
    pub(super) budget: u64,
}

impl Split {
    pub(super) fn virtual_size(&self) -> u64 {
        self.plan.last().map_or(0, |p| p.guest + p.len)
    }

    /// Reads each extent file once, in the order the extents come (the descriptor's, or an
    /// archive's), and writes its extents where the descriptor places them.
    pub(super) fn convert(mut self, target: &mut Target) -> Result<()> {
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
