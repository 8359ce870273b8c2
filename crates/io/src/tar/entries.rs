//! [`TarEntries`]: every member of a tar, for an unpacker (ido-disk's archives).

use std::io::{self, Read};

use super::header::is_regular;
use super::{Next, Result, TarError, TarReader};

/// What a tar member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (`0`, NUL, `7` contiguous, GNU sparse `S`).
    File,
    /// A directory (`5`; GNU's dumpdir `D`; a pre-POSIX regular member whose name ends in `/`).
    Directory,
    /// A symbolic link (`2`); [`Entry::link`] is its target.
    Symlink,
    /// A hard link to an earlier member (`1`); [`Entry::link`] names it.
    HardLink,
    /// A character device (`3`).
    CharDevice,
    /// A block device (`4`).
    BlockDevice,
    /// A FIFO (`6`).
    Fifo,
    /// Anything else (a GNU volume label `V`, a multi-volume continuation `M`, …): the type
    /// byte.
    Other(u8),
}

impl EntryKind {
    pub(super) fn of(kind: u8, name: &str) -> Self {
        match kind {
            b'5' | b'D' => EntryKind::Directory,
            // Pre-POSIX tars mark directories by a trailing slash only.
            k if is_regular(k) && name.ends_with('/') => EntryKind::Directory,
            k if is_regular(k) => EntryKind::File,
            b'1' => EntryKind::HardLink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'6' => EntryKind::Fifo,
            k => EntryKind::Other(k),
        }
    }

    /// In words, for messages.
    pub fn describe(self) -> String {
        match self {
            EntryKind::File => "a regular file".into(),
            EntryKind::Directory => "a directory".into(),
            EntryKind::Symlink => "a symbolic link".into(),
            EntryKind::HardLink => "a hard link".into(),
            EntryKind::CharDevice => "a character device".into(),
            EntryKind::BlockDevice => "a block device".into(),
            EntryKind::Fifo => "a FIFO".into(),
            EntryKind::Other(k) => format!("of tar type {:?}", char::from(k)),
        }
    }
}

/// One member's header, as [`TarEntries::next_entry`] gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name as stored (GNU long name or pax `path` applied), **unchecked**: it may be
    /// absolute, hold `..`, a NUL (from a pax record) or U+FFFD (bytes that are not UTF-8).
    pub path: String,
    /// What the member is.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most: setuid, setgid and sticky included).
    pub mode: u32,
    /// Modification time, seconds since the epoch, when the header gives one.
    pub mtime: Option<i64>,
    /// The target of a symbolic or hard link, as stored (unchecked).
    pub link: Option<String>,
    /// Bytes of data: a sparse file's real size, holes included; 0 for links and
    /// directories.
    pub size: u64,
}

/// Every member of a tar, in order, with the data of the current one: its bytes through
/// [`Read`] (a sparse member's holes as zeros), or its stored regions
/// ([`TarEntries::sparse_map`], [`TarEntries::read_stored`]) to write them sparse. The
/// headers understood are [`TarReader`]'s. The archive must end with its end-of-archive
/// marker: an input that stops at a header's place is truncated.
pub struct TarEntries<R> {
    tar: TarReader<R>,
    ended: bool,
}

impl<R: Read> TarEntries<R> {
    /// Reads `inner` from its first header.
    pub fn new(inner: R) -> Self {
        Self {
            tar: TarReader::new(inner),
            ended: false,
        }
    }

    /// The next member, after skipping what is left of the current one; `None` at the
    /// end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        let m = match self.tar.read_header()? {
            Next::Member(m) => m,
            Next::End => {
                self.ended = true;
                return Ok(None);
            }
            Next::Eof => {
                return Err(TarError::invalid(
                    "truncated: the archive ends without its end-of-archive marker",
                ));
            }
        };
        let kind = m.entry_kind();
        let entry = Entry {
            path: m.name.clone(),
            kind,
            mode: m.mode,
            mtime: m.mtime,
            link: matches!(kind, EntryKind::Symlink | EntryKind::HardLink).then(|| m.link.clone()),
            size: 0,
        };
        let size = self.tar.enter(m)?;
        Ok(Some(Entry {
            size: if kind == EntryKind::File { size } else { 0 },
            ..entry
        }))
    }

    /// The current member's data regions (offset, length), in order, when it is sparse.
    pub fn sparse_map(&self) -> Option<&[(u64, u64)]> {
        self.tar.sparse_map()
    }

    /// The current member's bytes as stored (a sparse member's regions one after the other).
    pub fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read_stored(buf)
    }

    /// The reader after the archive (what follows its end-of-archive marker).
    pub fn into_inner(self) -> R {
        self.tar.into_inner()
    }
}

impl<R: Read> Read for TarEntries<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read(buf)
    }
}
