//! Archives (`contentType: archive`, CDI's name): a tar — plain or gzip, xz, zstd, bzip2 or
//! lzma compressed, from any source an import takes — unpacked into an existing directory
//! while it streams. No copy of the archive is kept, and memory stays flat (one 1 MiB
//! buffer, a decoder's window, and the names of the directories made, whose modes and times
//! are set at the end).
//!
//! ```text
//!  source ─► Counted (progress, checksum) ─► detect ─► gzip | xz | zstd | bzip2 | lzma ─► …
//!    ─► tar (crate::tar::TarEntries: GNU, pax, sparse, long names)
//!    ─► TARGET/.ido-unpack-<random>/…   every member created relative to an open directory,
//!                                        never through a symbolic link (O_NOFOLLOW)
//!    ─► archive, decoders and source read to their end, checksum verified
//!    ─► each top-level entry renamed into TARGET (never replacing anything), the staging
//!       directory removed
//! ```
//!
//! Unlike CDI (`tar -xvC /data`) every member is checked, and the archive is refused, naming
//! it, the member and the reason ([`Error::ArchiveMember`]), when a member
//! - has an absolute path, a `..` component, a NUL byte, a name that is not UTF-8, or a path
//!   longer than 4096 bytes;
//! - would be made through a symbolic link (a directory of its path is a link made earlier);
//! - is a symbolic link whose target is absolute, leaves the target directory (more leading
//!   `..` than the link is deep), or has `..` after a name (`a/../b`: what that means
//!   depends on what `a` is, which later members may change);
//! - is a hard link to a path outside the archive, to a member not unpacked before it, to a
//!   directory, or to a symbolic link that would leave the target directory from the link's
//!   place;
//! - is a character or block device or a FIFO (refused by default: an importer has no use
//!   for device nodes, and cannot make them unprivileged; [`SpecialFiles::Skip`] skips them
//!   with a warning instead);
//! - has a top-level name that exists in the target directory already (nothing there is
//!   replaced or merged: a fresh filesystem's `lost+found` stays as it is), or that starts
//!   with `.ido-unpack-`;
//! - is of a type that is not unpacked (a multi-volume continuation, …; a volume label is
//!   skipped).
//!
//! Regular files get their mode without setuid and setgid (`mode & 0o1777`), directories
//! theirs once their content is in place, files, directories and links their modification
//! time; owners are not set (the importer does not run as root). Sparse members are written
//! sparse (only their data regions). A later member of the same path replaces an earlier
//! file or link (as `tar -x` does), never a directory.
//!
//! A failure anywhere — a refused member, a truncated or corrupt archive, a checksum
//! mismatch, a full disk, a stop — removes the staging directory: the target directory is
//! left as it was. Staging directories that a killed run left behind (`.ido-unpack-*`
//! directories) are removed by the next run; nothing else in the target is ever removed.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasher, Hasher as _};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

use crate::checksum::{Checksum, Hasher};
use crate::decompress::{DecompressOptions, decoder};
use crate::detect::{Detected, HEAD_LEN, Prefixed, detect};
use crate::progress::{ProgressFn, Reporter};
use crate::source::{self, Counted, Shared, SourceSpec, Stats};
use crate::tar::{Entry, EntryKind, TarEntries};
use crate::{Error, Result};

/// What the staging directory's name starts with (then 16 hex digits).
pub const STAGING_PREFIX: &str = ".ido-unpack-";
/// Most compression layers peeled before the tar.
const MAX_LAYERS: usize = 4;
/// Longest member path or link target accepted (Linux's `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// Mode bits kept: permissions and sticky; never setuid or setgid.
const MODE_MASK: u32 = 0o7777 & !0o6000;
/// Mode of a directory the archive implies (a member's parent with no entry of its own).
const IMPLIED_DIR_MODE: u32 = 0o755;
/// Copy buffer.
const BUF: usize = 1 << 20;

/// What to do with device nodes and FIFOs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpecialFiles {
    /// Refuse the archive, naming the member (the default).
    #[default]
    Refuse,
    /// Skip them, each with a warning.
    Skip,
}

/// What to unpack where.
#[derive(Clone)]
pub struct ArchiveOptions {
    /// Where the archive comes from (any source an import takes).
    pub source: SourceSpec,
    /// The directory to unpack into; it must exist.
    pub target: PathBuf,
    /// Expected checksum of the source bytes (as fetched, before decompression).
    pub checksum: Option<Checksum>,
    /// Progress callback (`written` counts the file bytes unpacked).
    pub progress: Option<ProgressFn>,
    /// Least time between two progress reports. Default: 500 ms.
    pub progress_interval: Duration,
    /// Decoder settings (xz threads, zstd window).
    pub decompress: DecompressOptions,
    /// Device nodes and FIFOs: refused (default) or skipped.
    pub special_files: SpecialFiles,
}

impl ArchiveOptions {
    /// Defaults for the rest.
    pub fn new(source: SourceSpec, target: PathBuf) -> Self {
        Self {
            source,
            target,
            checksum: None,
            progress: None,
            progress_interval: source::REPORT_INTERVAL,
            decompress: DecompressOptions::default(),
            special_files: SpecialFiles::Refuse,
        }
    }
}

/// What an unpack did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// The compressions peeled, outermost first (`xz`, …); the tar is not listed.
    pub layers: Vec<&'static str>,
    /// Regular files made.
    pub files: u64,
    /// Directory members (directories only implied by a path are not counted).
    pub directories: u64,
    /// Symbolic links made.
    pub symlinks: u64,
    /// Hard links made.
    pub hard_links: u64,
    /// Members skipped (device nodes and FIFOs with [`SpecialFiles::Skip`], volume labels).
    pub skipped: u64,
    /// File data written (a sparse file's data regions).
    pub bytes: u64,
    /// Source bytes read.
    pub source_bytes: u64,
    /// The verified checksum, if one was given.
    pub checksum: Option<String>,
    /// The top-level entries placed into the target directory, sorted.
    pub entries: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Unpacks an archive into an existing directory. On failure the directory is left as it
/// was (see the module's documentation for what is refused).
pub async fn unpack(opts: ArchiveOptions) -> Result<UnpackReport> {
    let start = Instant::now();
    // The target first: a wrong one fails before the source is asked for anything.
    let root = open_root(&opts.target)?;
    let opened = source::open(&opts.source, None).await?;
    // Tracked: when this future is dropped (Ctrl-C), the thread still ends (its source
    // gone, it removes its staging directory) and the process waits for that.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let mut report = ido_engine::cleanup::spawn_blocking(move || run(opts, root, opened, stop))
        .await
        .map_err(|e| Error::Io {
            context: "the unpacking thread".into(),
            source: io::Error::other(e.to_string()),
        })??;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Tells the unpacking thread to stop when the future is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Opens the target directory (a symbolic link given as the target itself is followed: it
/// is the caller's).
fn open_root(target: &Path) -> Result<OwnedFd> {
    let bad = |reason: &str| Error::InvalidArgument {
        field: "target",
        value: target.display().to_string(),
        reason: reason.into(),
    };
    match rustix::fs::openat(
        CWD,
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) => Err(bad(
            "does not exist; an archive is unpacked into an existing directory",
        )),
        Err(Errno::NOTDIR) => Err(bad(
            "is not a directory; an archive is unpacked into an existing directory",
        )),
        Err(e) => Err(Error::io(format!("opening {}", target.display()), e.into())),
    }
}

/// The blocking part: everything after the source answered.
fn run(
    opts: ArchiveOptions,
    root: OwnedFd,
    opened: source::Opened,
    stop: Arc<AtomicBool>,
) -> Result<UnpackReport> {
    let stats = Stats::new(Shared {
        hasher: opts.checksum.as_ref().map(|c| Hasher::new(c.algorithm)),
        hash_from: 0,
        reporter: Reporter::new(opts.progress.clone(), opts.progress_interval),
    });
    stats.lock().reporter.state.source_total = opened.total;
    let mut bottom = Counted::new(opened.reader, stats.clone(), stop);
    let archive = opts.source.to_string();
    let (reader, layers) = peel(Box::new(bottom.clone()), &opts.decompress, &archive)?;

    remove_leftovers(&root, &opts.target)?;
    let staging_name = format!("{STAGING_PREFIX}{:016x}", random());
    rustix::fs::mkdirat(&root, staging_name.as_str(), Mode::from_raw_mode(0o700)).map_err(|e| {
        Error::io(
            format!("creating {}/{staging_name}", opts.target.display()),
            e.into(),
        )
    })?;
    let mut u = match open_dir_at(root.as_fd(), &staging_name) {
        Ok(staging) => Unpacker {
            archive: archive.clone(),
            target: &opts.target,
            root: &root,
            staging,
            special: opts.special_files,
            dirs: HashMap::new(),
            tops: HashSet::new(),
            cache: None,
            report: UnpackReport {
                layers,
                ..UnpackReport::default()
            },
            buf: vec![0u8; BUF],
            stats: &stats,
        },
        Err(e) => {
            discard(&root, &opts.target, &staging_name);
            return Err(Error::io(
                format!("opening {}/{staging_name}", opts.target.display()),
                e.into(),
            ));
        }
    };
    let mut tar = TarEntries::new(reader);
    let result = u
        .unpack_all(&mut tar)
        .and_then(|()| {
            // Read what the decoders left (trailers, padding after the tar's end, trailing
            // bytes): every source byte is hashed, and truncation in a layer is caught.
            let mut rest = tar.into_inner();
            io::copy(&mut rest, &mut io::sink())
                .map_err(|e| wrap(&archive, Error::io(format!("reading {archive}"), e)))?;
            drop(rest);
            bottom
                .drain()
                .map_err(|e| Error::io(format!("reading {archive}"), e))?;
            let digest = stats.lock().hasher.take().map(Hasher::finish);
            if let (Some(c), Some(d)) = (&opts.checksum, &digest) {
                c.verify(d)?;
            }
            Ok(())
        })
        .and_then(|()| u.commit(&staging_name));
    let mut report = match result {
        Ok(()) => std::mem::take(&mut u.report),
        Err(e) => {
            drop(u);
            discard(&root, &opts.target, &staging_name);
            return Err(e);
        }
    };
    let mut s = stats.lock();
    s.reporter.finish();
    report.source_bytes = s.reporter.state.source_done;
    report.checksum = opts.checksum.as_ref().map(ToString::to_string);
    tracing::debug!(
        archive = %archive,
        target = %opts.target.display(),
        files = report.files,
        directories = report.directories,
        symlinks = report.symlinks,
        hard_links = report.hard_links,
        bytes = report.bytes,
        "archive unpacked"
    );
    Ok(report)
}

/// Peels compressions until the tar shows; anything else is refused.
fn peel(
    mut reader: Box<dyn Read + Send>,
    decompress: &DecompressOptions,
    archive: &str,
) -> Result<(Box<dyn Read + Send>, Vec<&'static str>)> {
    let mut layers: Vec<&'static str> = Vec::new();
    loop {
        let p = Prefixed::new(reader, HEAD_LEN).map_err(|e| Error::io(format!("reading {archive}"), e))?;
        if p.head().is_empty() {
            let what = match layers.last() {
                Some(layer) => format!("the {layer} data holds nothing"),
                None => "the source is empty (0 bytes)".into(),
            };
            return Err(Error::invalid("archive", format!("{archive}: {what}")));
        }
        match detect(p.head()) {
            Detected::Tar => return Ok((Box::new(p), layers)),
            Detected::Compressed(c) if layers.len() < MAX_LAYERS => {
                layers.push(c.name());
                reader = decoder(c, Box::new(p), decompress)
                    .map_err(|e| Error::io(format!("starting the {} decoder", c.name()), e))?;
            }
            Detected::Compressed(_) => {
                return Err(Error::Unsupported {
                    format: "archive",
                    reason: format!("{archive}: more than {MAX_LAYERS} nested compressions"),
                });
            }
            Detected::Disk(f) => {
                let inside = layers
                    .iter()
                    .rev()
                    .map(|l| format!(" inside {l}"))
                    .collect::<String>();
                return Err(Error::invalid(
                    "archive",
                    format!(
                        "{archive} is not a tar archive: its content{inside} looks like {f}; an archive is a tar, \
                         plain or gzip, xz, zstd, bzip2 or lzma compressed"
                    ),
                ));
            }
        }
    }
}

/// A random 64-bit number (std's hasher keys come from the OS).
fn random() -> u64 {
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
fn remove_leftovers(root: &OwnedFd, target: &Path) -> Result<()> {
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
fn discard(root: &OwnedFd, target: &Path, staging: &str) {
    if let Err(e) = remove_tree(root.as_fd(), staging) {
        tracing::warn!(target = %target.display(), staging, error = %e, "cannot remove the staging directory");
    }
}

/// Flags of a directory opened on the way down: never through a symbolic link.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn open_dir_at(base: BorrowedFd<'_>, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(base, name, dir_flags(), Mode::empty())
}

/// Removes `name` in `parent` and everything under it, never following a symbolic link.
/// Directories are made writable first (an archive's read-only directories); one directory
/// is open at a time, however deep the tree.
fn remove_tree(parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
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
fn open_to_empty<P: rustix::path::Arg + Copy>(parent: BorrowedFd<'_>, name: P) -> io::Result<OwnedFd> {
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
fn unlock_dir<P: rustix::path::Arg + Copy>(parent: BorrowedFd<'_>, name: P) {
    let is_dir = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
    if is_dir {
        let _ = rustix::fs::chmodat(parent, name, Mode::from_raw_mode(0o700), AtFlags::empty());
    }
}

/// Why a member's name or link target is refused.
#[derive(Debug, thiserror::Error)]
enum PathRefusal {
    #[error("its {0} holds a NUL byte")]
    Nul(&'static str),
    #[error("its {0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("its {what} is {len} bytes long; at most {MAX_PATH} are accepted")]
    TooLong { what: &'static str, len: usize },
    #[error("its path is absolute")]
    Absolute,
    #[error("its path has a `..` component")]
    DotDot,
    #[error("its link target is empty")]
    EmptyTarget,
    #[error("it links to the absolute path {0:?}, outside the target directory")]
    AbsoluteTarget(String),
    #[error(
        "its link target {0:?} has `..` after a name (only leading `..` are accepted: where `name/..` leads \
         depends on what `name` is)"
    )]
    DotDotAfterName(String),
    #[error("it links to {target:?}, outside the target directory ({ups} levels up from {depth} deep)")]
    Outside {
        target: String,
        ups: usize,
        depth: usize,
    },
}

/// The components of a member's path below the target directory (empty and `.`
/// components dropped); `Err` says why the path is refused.
fn components(path: &str) -> Result<Vec<&str>, PathRefusal> {
    check_text(path, "name")?;
    if path.starts_with('/') {
        return Err(PathRefusal::Absolute);
    }
    let mut v = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(PathRefusal::DotDot),
            c => v.push(c),
        }
    }
    Ok(v)
}

/// What every name and link target must be.
fn check_text(s: &str, what: &'static str) -> Result<(), PathRefusal> {
    if s.contains('\0') {
        return Err(PathRefusal::Nul(what));
    }
    // The tar reader turns bytes that are not UTF-8 into U+FFFD: unpacking them under
    // another name would be wrong.
    if s.contains('\u{fffd}') {
        return Err(PathRefusal::NotUtf8(what));
    }
    if s.len() > MAX_PATH {
        return Err(PathRefusal::TooLong { what, len: s.len() });
    }
    Ok(())
}

/// Checks the target of a symbolic link made `depth` directories below the target
/// directory: relative, and inside (only leading `..`, at most `depth` of them).
fn check_link_target(target: &str, depth: usize) -> Result<(), PathRefusal> {
    check_text(target, "link target")?;
    if target.is_empty() {
        return Err(PathRefusal::EmptyTarget);
    }
    if target.starts_with('/') {
        return Err(PathRefusal::AbsoluteTarget(target.to_string()));
    }
    let (mut ups, mut named) = (0usize, false);
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => return Err(PathRefusal::DotDotAfterName(target.to_string())),
            ".." => ups += 1,
            _ => named = true,
        }
    }
    if ups > depth {
        return Err(PathRefusal::Outside {
            target: target.to_string(),
            ups,
            depth,
        });
    }
    Ok(())
}

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
struct Unpacker<'a> {
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
    report: UnpackReport,
    buf: Vec<u8>,
    stats: &'a Stats,
}

/// What a walk down the staging directory found.
enum Walk {
    Found(Rc<OwnedFd>),
    /// A directory on the way does not exist (and was not to be made).
    Missing,
}

impl Unpacker<'_> {
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

    fn unpack_all<R: Read>(&mut self, tar: &mut TarEntries<R>) -> Result<()> {
        while let Some(e) = tar.next_entry().map_err(|e| wrap(&self.archive, e))? {
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

    /// Sets the directories' modes and times, deepest first, and moves the top-level
    /// entries into the target directory; then the staging directory (empty) goes. On a
    /// failure the entries moved are moved back.
    fn commit(&mut self, staging_name: &str) -> Result<()> {
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

/// An error of the tar reader or a decoder, with the archive named.
fn wrap(archive: &str, e: Error) -> Error {
    let named = |reason: String| format!("{archive}: {reason}");
    match e {
        Error::InvalidImage { format, reason } => Error::InvalidImage {
            format,
            reason: named(reason),
        },
        Error::Refused { format, reason } => Error::Refused {
            format,
            reason: named(reason),
        },
        Error::Unsupported { format, reason } => Error::Unsupported {
            format,
            reason: named(reason),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths() {
        assert_eq!(components("a/b/c").unwrap(), ["a", "b", "c"]);
        assert_eq!(components("./a//b/./").unwrap(), ["a", "b"]);
        assert!(components("./").unwrap().is_empty());
        assert!(components(".").unwrap().is_empty());
        for (bad, why) in [
            ("/etc/passwd", "absolute"),
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("a/..", "`..`"),
            ("a\0b", "NUL"),
            ("caf\u{fffd}", "UTF-8"),
        ] {
            let e = components(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(
            components(&"a/".repeat(2049))
                .unwrap_err()
                .to_string()
                .contains("4096")
        );
        // Names that only look odd are names.
        assert_eq!(components("..a/b..").unwrap(), ["..a", "b.."]);
        assert_eq!(components("a\\..\\b").unwrap(), ["a\\..\\b"]);
    }

    #[test]
    fn link_targets() {
        // A link at depth 2 (`x/y/link`) may go up twice.
        for ok in [
            "f",
            "./f",
            "sub/f",
            "../f",
            "../../f",
            "../../x/y/f",
            ".",
            "../..",
            "a/./b",
        ] {
            check_link_target(ok, 2).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for (bad, depth, why) in [
            ("../../../etc", 2, "outside"),
            ("..", 0, "outside"),
            ("/etc/passwd", 5, "absolute"),
            ("a/../..", 3, "after a name"),
            ("up/../../x", 3, "after a name"),
            ("", 1, "empty"),
            ("a\0b", 1, "NUL"),
        ] {
            let e = check_link_target(bad, depth).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?} at {depth}: {e}");
        }
    }

    #[test]
    fn removes_trees_with_read_only_directories_and_links_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let t = dir.path().join("t");
        let deep = t.join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"data").unwrap();
        std::os::unix::fs::symlink(&outside, t.join("a/out")).unwrap();
        std::os::unix::fs::symlink(&outside, t.join("a/b/out")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for d in ["a/b/c", "a/b", "a"] {
            std::fs::set_permissions(t.join(d), std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        let root = open_root(dir.path()).unwrap();
        remove_tree(root.as_fd(), "t").unwrap();
        assert!(!t.exists());
        assert!(outside.join("keep").exists(), "links are removed, not followed");
        remove_tree(root.as_fd(), "missing").unwrap();
    }

    #[test]
    fn the_target_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"").unwrap();
        for p in [f, dir.path().join("missing")] {
            let e = open_root(&p).unwrap_err();
            assert_eq!(e.label(), "invalid_argument", "{e}");
            assert!(e.to_string().contains("existing directory"), "{e}");
        }
    }
}
