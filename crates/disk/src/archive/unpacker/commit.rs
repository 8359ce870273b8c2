//! The end of an unpacking: directories' modes and times, and the top-level entries moved
//! into the target directory.

use std::cmp::Reverse;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, Mode, RenameFlags};
use rustix::io::Errno;

use super::super::staging::{open_dir_at, unlock_dir};
use super::{DirMeta, Unpacker, times};
use crate::{Error, Result};

impl Unpacker<'_> {
    /// Sets the directories' modes and times, deepest first, and moves the top-level
    /// entries into the target directory; then the staging directory (empty) goes. On a
    /// failure the entries moved are moved back.
    pub(in crate::archive) fn commit(&mut self, staging_name: &str) -> Result<()> {
        self.cache = None;
        let mut dirs: Vec<(String, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|(p, _)| Reverse(p.matches('/').count()));
        let (top, deep): (Vec<_>, Vec<_>) = dirs.into_iter().partition(|(p, _)| !p.contains('/'));
        for (p, meta) in &deep {
            self.set_dir_meta(self.staging.as_fd(), p, *meta)?;
        }
        let io_err = |e: Errno| {
            Error::io(
                format!("{}: reading the staging directory", self.archive),
                e.into(),
            )
        };
        let mut names = Vec::new();
        for entry in Dir::read_from(&self.staging).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let n = entry.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        names.sort();
        let mut moved: Vec<String> = Vec::new();
        let placed = names
            .iter()
            .try_for_each(|n| {
                self.place(n)?;
                moved.push(n.clone());
                Ok::<(), Error>(())
            })
            .and_then(|()| {
                // Moving a directory may touch its time; a top-level directory gets its mode
                // (maybe read-only) only where it stays.
                top.iter()
                    .try_for_each(|(p, meta)| self.set_dir_meta(self.root.as_fd(), p, *meta))
            });
        if let Err(e) = placed {
            self.move_back(&moved);
            return Err(e);
        }
        if let Err(e) = rustix::fs::unlinkat(self.root, staging_name, AtFlags::REMOVEDIR) {
            tracing::warn!(target = %self.target.display(), staging = staging_name, error = %e, "cannot remove the staging directory");
        }
        self.report.entries = names;
        Ok(())
    }

    /// Moves the top-level entry `name` from the staging directory into the target, where
    /// nothing of that name may be.
    fn place(&self, name: &str) -> Result<()> {
        let exists = || {
            self.refuse(
                name,
                format!(
                    "{}/{name} appeared while the archive was unpacked; nothing in the target directory is replaced",
                    self.target.display()
                ),
            )
        };
        match rustix::fs::renameat_with(&self.staging, name, self.root, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST | Errno::NOTEMPTY) => Err(exists()),
            // A file system without RENAME_NOREPLACE: look, then rename.
            Err(Errno::INVAL | Errno::NOSYS) => {
                match rustix::fs::statat(self.root, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Err(Errno::NOENT) => rustix::fs::renameat(&self.staging, name, self.root, name)
                        .map_err(|e| self.io(name, "moving it into the target directory", e)),
                    Ok(_) => Err(exists()),
                    Err(e) => Err(self.io(name, "moving it into the target directory", e)),
                }
            }
            Err(e) => Err(self.io(name, "moving it into the target directory", e)),
        }
    }

    /// Undoes [`Unpacker::place`] after a failure (best effort, logged).
    fn move_back(&self, moved: &[String]) {
        for name in moved.iter().rev() {
            unlock_dir(self.root.as_fd(), name.as_str());
            if let Err(e) = rustix::fs::renameat(self.root, name.as_str(), &self.staging, name.as_str()) {
                tracing::warn!(target = %self.target.display(), entry = %name, error = %e, "cannot take an unpacked entry back");
            }
        }
    }

    /// Mode and time of the directory `path` below `base`.
    fn set_dir_meta(&self, base: BorrowedFd<'_>, path: &str, meta: DirMeta) -> Result<()> {
        let err = |what: &str, e: Errno| self.io(path, what, e);
        let mut cur: Option<OwnedFd> = None;
        for c in path.split('/') {
            let b = cur.as_ref().map_or(base, AsFd::as_fd);
            cur = Some(open_dir_at(b, c).map_err(|e| err("opening the directory", e))?);
        }
        let Some(fd) = cur else {
            return Ok(());
        };
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
            .map_err(|e| err("setting the directory's mode", e))?;
        if let Some(t) = meta.mtime {
            rustix::fs::futimens(&fd, &times(t)).map_err(|e| err("setting the directory's time", e))?;
        }
        Ok(())
    }
}
