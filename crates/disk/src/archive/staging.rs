//! The staging directory: its random name, the leftovers of killed runs, and removing a
//! tree through open directories, never following a symbolic link.

use std::hash::{BuildHasher, Hasher as _};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::STAGING_PREFIX;
use crate::{Error, Result};

/// A random 64-bit number (std's hasher keys come from the OS).
pub(super) fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Removes the staging directories an earlier run left (it was killed): directories
/// named `.ido-unpack-*` only.
pub(super) fn remove_leftovers(root: &OwnedFd, target: &Path) -> Result<()> {
    let io_err = |e: Errno| Error::io(format!("reading {}", target.display()), e.into());
    let mut leftovers = Vec::new();
    for entry in Dir::read_from(root).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name().to_string_lossy();
        if name.starts_with(STAGING_PREFIX) {
            leftovers.push(name.into_owned());
        }
    }
    for name in leftovers {
        match rustix::fs::statat(root, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                tracing::info!(target = %target.display(), leftover = %name, "removing the staging directory of an earlier run");
                remove_tree(root.as_fd(), &name)
                    .map_err(|e| Error::io(format!("removing {}/{name}", target.display()), e))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes the staging directory after a failure (best effort: logged when it cannot).
pub(super) fn discard(root: &OwnedFd, target: &Path, staging: &str) {
    if let Err(e) = remove_tree(root.as_fd(), staging) {
        tracing::warn!(target = %target.display(), staging, error = %e, "cannot remove the staging directory");
    }
}

/// Flags of a directory opened on the way down: never through a symbolic link.
pub(super) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

pub(super) fn open_dir_at(base: BorrowedFd<'_>, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(base, name, dir_flags(), Mode::empty())
}

/// Removes `name` in `parent` and everything under it, never following a symbolic link.
/// Directories are made writable first (an archive's read-only directories); one directory
/// is open at a time, however deep the tree.
pub(super) fn remove_tree(parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let mut cur = open_to_empty(parent, name)?;
    // The names from `name` down to `cur`.
    let mut path: Vec<std::ffi::CString> = Vec::new();
    loop {
        let _ = rustix::fs::fchmod(&cur, Mode::from_raw_mode(0o700));
        let mut sub = None;
        for entry in Dir::read_from(&cur)? {
            let entry = entry?;
            let n = entry.file_name();
            if n == c"." || n == c".." {
                continue;
            }
            match rustix::fs::unlinkat(&cur, n, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR | Errno::PERM) => {
                    sub = Some(n.to_owned());
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        match sub {
            Some(n) => {
                cur = open_to_empty(cur.as_fd(), n.as_c_str())?;
                path.push(n);
            }
            None => match path.pop() {
                // `cur` is empty: remove it from its parent.
                Some(n) => {
                    let up = rustix::fs::openat(&cur, c"..", dir_flags(), Mode::empty())?;
                    drop(cur);
                    rustix::fs::unlinkat(&up, n.as_c_str(), AtFlags::REMOVEDIR)?;
                    cur = up;
                }
                None => {
                    drop(cur);
                    return Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?);
                }
            },
        }
    }
}

/// Opens the directory `name` in `parent` to empty it; one the owner may not read (an
/// archive's `0000` directory, as a staging directory a killed run left) is made the
/// owner's first.
pub(super) fn open_to_empty<P: rustix::path::Arg + Copy>(
    parent: BorrowedFd<'_>,
    name: P,
) -> io::Result<OwnedFd> {
    match rustix::fs::openat(parent, name, dir_flags(), Mode::empty()) {
        Err(Errno::ACCESS) => {
            unlock_dir(parent, name);
            Ok(rustix::fs::openat(parent, name, dir_flags(), Mode::empty())?)
        }
        r => Ok(r?),
    }
}

/// Gives the owner every right on `name` in `parent` (0700) when it is a directory, never
/// through a symbolic link; best effort. Moving a directory to another parent needs write
/// access to it (its `..` changes), emptying it read and write access.
pub(super) fn unlock_dir<P: rustix::path::Arg + Copy>(parent: BorrowedFd<'_>, name: P) {
    let is_dir = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
    if is_dir {
        let _ = rustix::fs::chmodat(parent, name, Mode::from_raw_mode(0o700), AtFlags::empty());
    }
}
