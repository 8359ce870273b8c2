//! Archives (`contentType: archive`, CDI's name): a tar — plain or gzip, xz, zstd, bzip2 or
//! lzma compressed, from any source an import takes — unpacked into an existing directory
//! while it streams. No copy of the archive is kept, and memory stays flat (one 1 MiB
//! buffer, a decoder's window, and the names of the directories made, whose modes and times
//! are set at the end).
//!
//! ```text
//!  source ─► Counted (progress, checksum) ─► detect ─► gzip | xz | zstd | bzip2 | lzma ─► …
//!    ─► tar (ido_io::tar::TarEntries: GNU, pax, sparse, long names)
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

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, atomic::AtomicBool};
use std::time::{Duration, Instant};

use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;

use crate::checksum::{Checksum, Hasher};
use crate::decompress::{DecompressOptions, decoder};
use crate::detect::{Detected, HEAD_LEN, Prefixed, detect};
use crate::progress::{ReportFn, Reporter};
use crate::source::{self, Counted, Shared, SourceSpec, Stats};
use crate::tar::TarEntries;
use crate::{Error, Result};

mod paths;
mod staging;
mod unpacker;

use staging::{discard, open_dir_at, random, remove_leftovers};
use unpacker::Unpacker;

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
    pub progress: Option<ReportFn>,
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
    // If this future is dropped (Ctrl-C), the thread still ends: its source gone, it removes
    // its staging directory.
    let mut report =
        crate::worker::on_worker("the unpacking thread", move |stop| run(opts, root, opened, stop)).await?;
    report.elapsed = start.elapsed();
    Ok(report)
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
    let (staging_name, staging) = make_staging(&root, &opts.target)?;
    let mut u = Unpacker::new(
        archive.clone(),
        &opts.target,
        &root,
        staging,
        opts.special_files,
        layers,
        &stats,
    );
    let mut tar = TarEntries::new(reader);
    let result = u
        .unpack_all(&mut tar)
        .and_then(|()| read_to_end(tar, &mut bottom, &archive, &stats, opts.checksum.as_ref()))
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

/// Makes the staging directory (`.ido-unpack-<random>`, mode 0700) in the target and opens
/// it; its name and the open directory.
fn make_staging(root: &OwnedFd, target: &Path) -> Result<(String, OwnedFd)> {
    let staging_name = format!("{STAGING_PREFIX}{:016x}", random());
    rustix::fs::mkdirat(root, staging_name.as_str(), Mode::from_raw_mode(0o700))
        .map_err(|e| Error::io(format!("creating {}/{staging_name}", target.display()), e.into()))?;
    match open_dir_at(root.as_fd(), &staging_name) {
        Ok(staging) => Ok((staging_name, staging)),
        Err(e) => {
            discard(root, target, &staging_name);
            Err(Error::io(
                format!("opening {}/{staging_name}", target.display()),
                e.into(),
            ))
        }
    }
}

/// Reads what the decoders left after the tar (trailers, padding after the tar's end,
/// trailing bytes): every source byte is hashed, and truncation in a layer is caught. Then
/// the checksum, if one was given, is verified.
fn read_to_end<R: Read>(
    tar: TarEntries<R>,
    bottom: &mut Counted,
    archive: &str,
    stats: &Stats,
    checksum: Option<&Checksum>,
) -> Result<()> {
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| wrap(archive, Error::io(format!("reading {archive}"), e)))?;
    drop(rest);
    bottom
        .drain()
        .map_err(|e| Error::io(format!("reading {archive}"), e))?;
    let digest = stats.lock().hasher.take().map(Hasher::finish);
    if let (Some(c), Some(d)) = (checksum, &digest) {
        c.verify(d)?;
    }
    Ok(())
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
mod tests;
