//! [`Unpacker`]: the members of an archive made, one by one, in the staging directory.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

use super::paths::{check_link_target, components};
use super::staging::open_dir_at;
use super::{BUF, IMPLIED_DIR_MODE, MODE_MASK, STAGING_PREFIX, SpecialFiles, UnpackReport, wrap};
use crate::source::Stats;
use crate::tar::{Entry, EntryKind, TarEntries};
use crate::{Error, Result};

mod commit;

/// Mode and time of a directory, set once its content is in place.
#[derive(Clone, Copy, Debug)]
struct DirMeta {
    mode: u32,
    mtime: Option<i64>,
}

fn times(mtime: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    }
}

/// One archive being unpacked into the staging directory.
pub(super) struct Unpacker<'a> {
    /// The archive, for messages.
    archive: String,
    target: &'a Path,
    root: &'a OwnedFd,
    staging: OwnedFd,
    special: SpecialFiles,
    /// Directories made, by path below the target: their modes and times come last.
    dirs: HashMap<String, DirMeta>,
    /// Top-level names checked against the target directory.
    tops: HashSet<String>,
    /// The last parent directory opened, by path.
    cache: Option<(String, Rc<OwnedFd>)>,
    pub(super) report: UnpackReport,
    buf: Vec<u8>,
    stats: &'a Stats,
}

/// What a walk down the staging directory found.
enum Walk {
    Found(Rc<OwnedFd>),
    /// A directory on the way does not exist (and was not to be made).
    Missing,
}

impl<'a> Unpacker<'a> {
    /// An unpacker into the open staging directory `staging`, in `root` (the target
    /// directory `target`).
    pub(super) fn new(
        archive: String,
        target: &'a Path,
        root: &'a OwnedFd,
        staging: OwnedFd,
        special: SpecialFiles,
        layers: Vec<&'static str>,
        stats: &'a Stats,
    ) -> Self {
        Self {
            archive,
            target,
            root,
            staging,
            special,
            dirs: HashMap::new(),
            tops: HashSet::new(),
            cache: None,
            report: UnpackReport {
                layers,
                ..UnpackReport::default()
            },
            buf: vec![0u8; BUF],
            stats,
        }
    }

    fn refuse(&self, member: &str, reason: impl Into<String>) -> Error {
        Error::ArchiveMember {
            archive: self.archive.clone(),
            member: member.to_string(),
            reason: reason.into(),
        }
    }

    fn io(&self, member: &str, what: &str, e: impl Into<io::Error>) -> Error {
        Error::io(format!("{}: member {member:?}: {what}", self.archive), e.into())
    }

    pub(super) fn unpack_all<R: Read>(&mut self, tar: &mut TarEntries<R>) -> Result<()> {
        while let Some(e) = tar.next_entry().map_err(|e| wrap(&self.archive, e.into()))? {
            self.member(&e, tar)?;
        }
        Ok(())
    }

    fn member<R: Read>(&mut self, e: &Entry, tar: &mut TarEntries<R>) -> Result<()> {
        let m = e.path.as_str();
        if e.kind == EntryKind::Other(b'V') {
            // A GNU volume label: a name, not a path.
            tracing::debug!(archive = %self.archive, label = m, "skipping the volume label");
            self.report.skipped += 1;
            return Ok(());
        }
        let comps = components(m).map_err(|why| self.refuse(m, why.to_string()))?;
        match e.kind {
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                if self.special == SpecialFiles::Refuse {
                    return Err(self.refuse(
                        m,
                        format!(
                            "it is {}: device nodes and FIFOs are not unpacked (`ido import --skip-special-files` skips them)",
                            e.kind.describe()
                        ),
                    ));
                }
                tracing::warn!(archive = %self.archive, member = m, kind = %e.kind.describe(), "skipping a special file");
                self.report.skipped += 1;
                return Ok(());
            }
            EntryKind::Other(k) => {
                return Err(self.refuse(
                    m,
                    format!("it is of tar type {:?}, which is not unpacked", char::from(k)),
                ));
            }
            _ => {}
        }
        let Some((&name, dirs)) = comps.split_last() else {
            // `.` or `./`: the target directory itself, which is left as it is.
            if e.kind == EntryKind::Directory {
                return Ok(());
            }
            return Err(self.refuse(m, "it names the target directory itself"));
        };
        self.check_top(comps[0], m)?;
        let parent = self.parent(dirs, m)?;
        match e.kind {
            EntryKind::Directory => self.directory(&parent, &comps, e),
            EntryKind::File => self.file(&parent, name, e, tar),
            EntryKind::Symlink => self.symlink(&parent, &comps, e),
            EntryKind::HardLink => self.hard_link(&parent, &comps, e),
            k => Err(self.refuse(m, format!("it is {}, which is not unpacked", k.describe()))),
        }
    }

    /// Refuses a top-level name that the target directory holds already (once per name).
    fn check_top(&mut self, top: &str, member: &str) -> Result<()> {
        if self.tops.contains(top) {
            return Ok(());
        }
        if top.starts_with(STAGING_PREFIX) {
            return Err(self.refuse(
                member,
                format!(
                    "top-level names starting with {STAGING_PREFIX:?} are ido's own (its staging directory)"
                ),
            ));
        }
        match rustix::fs::statat(self.root, top, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {}
            Ok(_) => {
                return Err(self.refuse(
                    member,
                    format!(
                        "{}/{top} exists already; nothing in the target directory is replaced (unpack into an empty \
                         directory, or remove it)",
                        self.target.display()
                    ),
                ));
            }
            Err(e) => return Err(self.io(member, &format!("looking for {top} in the target"), e)),
        }
        self.tops.insert(top.to_string());
        Ok(())
    }

    /// The directory `dirs` below the staging directory, made (as implied directories) where
    /// missing.
    fn parent(&mut self, dirs: &[&str], member: &str) -> Result<Rc<OwnedFd>> {
        match self.walk(dirs, true, member)? {
            Walk::Found(fd) => Ok(fd),
            // Not with `make`; said in words all the same.
            Walk::Missing => Err(self.io(
                member,
                "opening its directory",
                io::Error::from(io::ErrorKind::NotFound),
            )),
        }
    }

    /// Opens `dirs` component by component, never through a symbolic link.
    fn walk(&mut self, dirs: &[&str], make: bool, member: &str) -> Result<Walk> {
        let key = dirs.join("/");
        if let Some((k, fd)) = &self.cache
            && *k == key
        {
            return Ok(Walk::Found(fd.clone()));
        }
        let mut cur: Option<OwnedFd> = None;
        for (i, c) in dirs.iter().enumerate() {
            let base = cur.as_ref().map_or(self.staging.as_fd(), AsFd::as_fd);
            let fd = match open_dir_at(base, c) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if make => {
                    match rustix::fs::mkdirat(base, *c, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(self.io(member, &format!("creating {}", dirs[..=i].join("/")), e));
                        }
                    }
                    self.dirs.entry(dirs[..=i].join("/")).or_insert(DirMeta {
                        mode: IMPLIED_DIR_MODE,
                        mtime: None,
                    });
                    open_dir_at(base, c)
                        .map_err(|e| self.io(member, &format!("opening {}", dirs[..=i].join("/")), e))?
                }
                Err(Errno::NOENT) => return Ok(Walk::Missing),
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    let on_way = dirs[..=i].join("/");
                    let is_link = rustix::fs::statat(base, *c, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                    return Err(if is_link {
                        self.refuse(
                            member,
                            format!("its path passes through the symbolic link {on_way:?}"),
                        )
                    } else if e == Errno::NOTDIR {
                        self.refuse(
                            member,
                            format!("its path passes through {on_way:?}, which is not a directory"),
                        )
                    } else {
                        self.io(member, &format!("opening {on_way}"), e)
                    });
                }
                Err(e) => return Err(self.io(member, &format!("opening {}", dirs[..=i].join("/")), e)),
            };
            cur = Some(fd);
        }
        let fd = Rc::new(match cur {
            Some(fd) => fd,
            None => self
                .staging
                .try_clone()
                .map_err(|e| self.io(member, "opening the staging directory", e))?,
        });
        self.cache = Some((key, fd.clone()));
        Ok(Walk::Found(fd))
    }

    /// Makes room for a non-directory member: an earlier file or link of that name goes
    /// (as with `tar -x`); a directory stays and the member is refused.
    fn clear(&self, parent: &OwnedFd, name: &str, member: &str) -> Result<()> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Err(self.refuse(
                member,
                "an earlier member made this path a directory; it is not replaced",
            )),
            Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|e| self.io(member, "replacing an earlier member of that name", e)),
            Err(e) => Err(self.io(member, "looking at an earlier member of that name", e)),
        }
    }

    fn directory(&mut self, parent: &OwnedFd, comps: &[&str], e: &Entry) -> Result<()> {
        let m = e.path.as_str();
        let name = comps[comps.len() - 1];
        let mode = Mode::from_raw_mode(0o700);
        match rustix::fs::mkdirat(parent, name, mode) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| self.io(m, "looking at an earlier member of that name", err))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    // An earlier file or link of that name is replaced, as `tar -x` does.
                    rustix::fs::unlinkat(parent, name, AtFlags::empty())
                        .map_err(|err| self.io(m, "replacing an earlier member of that name", err))?;
                    rustix::fs::mkdirat(parent, name, mode)
                        .map_err(|err| self.io(m, "creating the directory", err))?;
                }
            }
            Err(err) => return Err(self.io(m, "creating the directory", err)),
        }
        self.dirs.insert(
            comps.join("/"),
            DirMeta {
                mode: e.mode & MODE_MASK,
                mtime: e.mtime,
            },
        );
        self.report.directories += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        parent: &OwnedFd,
        name: &str,
        e: &Entry,
        tar: &mut TarEntries<R>,
    ) -> Result<()> {
        let m = e.path.as_str();
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let create = || rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600));
        let fd = match create() {
            Err(Errno::EXIST) => {
                self.clear(parent, name, m)?;
                create()
            }
            other => other,
        }
        .map_err(|err| self.io(m, "creating the file", err))?;
        let mut f = File::from(fd);
        self.write_data(&mut f, e, tar)?;
        rustix::fs::fchmod(&f, Mode::from_raw_mode(e.mode & MODE_MASK))
            .map_err(|err| self.io(m, "setting the file's mode", err))?;
        if let Some(t) = e.mtime {
            rustix::fs::futimens(&f, &times(t)).map_err(|err| self.io(m, "setting the file's time", err))?;
        }
        self.report.files += 1;
        Ok(())
    }

    /// The member's data into `f`: a sparse member's regions at their offsets (the holes
    /// stay holes), anything else as it comes.
    fn write_data<R: Read>(&mut self, f: &mut File, e: &Entry, tar: &mut TarEntries<R>) -> Result<()> {
        let m = e.path.as_str();
        let read_err =
            |archive: &str, err: io::Error| wrap(archive, Error::io(format!("reading {archive}"), err));
        if let Some(map) = tar.sparse_map().map(<[(u64, u64)]>::to_vec) {
            for (off, len) in map {
                let mut done = 0u64;
                while done < len {
                    let want = (len - done).min(BUF as u64) as usize;
                    let n = tar
                        .read_stored(&mut self.buf[..want])
                        .map_err(|err| read_err(&self.archive, err))?;
                    if n == 0 {
                        return Err(wrap(
                            &self.archive,
                            Error::invalid("tar", format!("truncated: the data of {m:?} ends early")),
                        ));
                    }
                    f.write_all_at(&self.buf[..n], off + done)
                        .map_err(|err| self.io(m, "writing the file", err))?;
                    done += n as u64;
                    self.wrote(n);
                }
            }
            f.set_len(e.size)
                .map_err(|err| self.io(m, "setting the file's size", err))?;
            return Ok(());
        }
        loop {
            let n = tar
                .read(&mut self.buf)
                .map_err(|err| read_err(&self.archive, err))?;
            if n == 0 {
                return Ok(());
            }
            f.write_all(&self.buf[..n])
                .map_err(|err| self.io(m, "writing the file", err))?;
            self.wrote(n);
        }
    }

    fn wrote(&mut self, n: usize) {
        self.report.bytes += n as u64;
        self.stats.lock().reporter.state.written += n as u64;
    }

    fn symlink(&mut self, parent: &OwnedFd, comps: &[&str], e: &Entry) -> Result<()> {
        let m = e.path.as_str();
        let name = comps[comps.len() - 1];
        let target = e.link.as_deref().unwrap_or_default();
        check_link_target(target, comps.len() - 1).map_err(|why| self.refuse(m, why.to_string()))?;
        let make = || rustix::fs::symlinkat(target, parent, name);
        match make() {
            Err(Errno::EXIST) => {
                self.clear(parent, name, m)?;
                make()
            }
            other => other,
        }
        .map_err(|err| self.io(m, "creating the symbolic link", err))?;
        if let Some(t) = e.mtime {
            rustix::fs::utimensat(parent, name, &times(t), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|err| self.io(m, "setting the link's time", err))?;
        }
        self.report.symlinks += 1;
        Ok(())
    }

    fn hard_link(&mut self, parent: &Rc<OwnedFd>, comps: &[&str], e: &Entry) -> Result<()> {
        let m = e.path.as_str();
        let name = comps[comps.len() - 1];
        let link = e.link.as_deref().unwrap_or_default();
        let earlier = |why: &str| format!("it is a hard link to {link:?}, {why}");
        let to = components(link)
            .map_err(|why| self.refuse(m, earlier(&format!("whose path is refused: {why}"))))?;
        let Some((&to_name, to_dirs)) = to.split_last() else {
            return Err(self.refuse(m, earlier("the target directory itself")));
        };
        let not_earlier = || earlier("which is not a member unpacked before it");
        if !self.tops.contains(to[0]) {
            return Err(self.refuse(m, not_earlier()));
        }
        let to_parent = match self.walk(to_dirs, false, m)? {
            Walk::Found(fd) => fd,
            Walk::Missing => return Err(self.refuse(m, not_earlier())),
        };
        match rustix::fs::statat(&*to_parent, to_name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Err(self.refuse(m, not_earlier())),
            Err(err) => return Err(self.io(m, &format!("looking at {link}"), err)),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => return Err(self.refuse(m, earlier("a directory"))),
                // A link to a symbolic link is that link again, here: its target must
                // stay inside from this place too.
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&*to_parent, to_name, Vec::new())
                        .map_err(|err| self.io(m, &format!("reading the link {link}"), err))?;
                    let target = target.to_string_lossy();
                    check_link_target(&target, comps.len() - 1).map_err(|why| {
                        self.refuse(m, earlier(&format!("a symbolic link, and from here {why}")))
                    })?;
                }
                _ => {}
            },
        }
        if comps == to.as_slice() {
            return Err(self.refuse(m, earlier("itself")));
        }
        let make = || rustix::fs::linkat(&*to_parent, to_name, &**parent, name, AtFlags::empty());
        match make() {
            Err(Errno::EXIST) => {
                self.clear(parent, name, m)?;
                make()
            }
            other => other,
        }
        .map_err(|err| self.io(m, &format!("linking to {link}"), err))?;
        self.report.hard_links += 1;
        Ok(())
    }
}
