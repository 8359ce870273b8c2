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
//!
//! ustar, pre-POSIX, GNU (long names and link names, base-256 sizes for members over
//! 8 GiB) and pax (`path`, `linkpath`, `size`, `mtime`) headers are understood. Nothing is
//! extracted to the file system here: [`TarEntries`] walks every member (type, mode, link
//! target, data) for [`crate::archive`], which unpacks them.
//!
//! **Sparse members** are expanded as they stream: GNU and old GNU (`S` members, their map
//! in the header and the extended sparse headers after it: what `tar -S` writes, as in a
//! GCE image's `disk.raw`) and PAX 0.0 (`GNU.sparse.offset`/`numbytes` records), 0.1
//! (`GNU.sparse.map`) and 1.0 (the map at the start of the member's data). Holes read as
//! zeros (they become holes in the target) and the member reads as its real size. The map
//! is kept (16 bytes an entry, at most [`MAX_SPARSE_ENTRIES`]), never the data; entries
//! out of order, overlapping or past the real size, or data that does not add up to what
//! the member stores, are refused naming the member and the entry.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use crate::source::read_full;
use crate::vmdk::{ExtentFile, ExtentFiles};
use crate::{Error, Result};

const BLOCK: usize = 512;
/// Longest GNU long name or pax header accepted.
const MAX_META: u64 = 1 << 20;
/// Longest OVF descriptor accepted.
const MAX_OVF: u64 = 4 << 20;
/// Largest member size accepted (64 PiB, as the largest virtual size of any format).
const MAX_MEMBER: u64 = 1 << 56;
/// Most entries of one sparse member's map (16 bytes each in memory: 32 MiB).
pub const MAX_SPARSE_ENTRIES: usize = 1 << 21;

/// The disk member of a tar, readable as a stream.
pub struct TarDisk<R> {
    inner: R,
    name: String,
    size: u64,
    remaining: u64,
    /// Set for an OVA: other members are allowed after the disk.
    ova: bool,
    /// A sparse member's map and read position (`size` and `remaining` count the bytes
    /// stored in the archive).
    sparse: Option<Expand>,
}

/// One parsed header (after long-name and pax records were applied).
struct Member {
    name: String,
    kind: u8,
    /// Bytes stored in the archive (a sparse member's data, condensed).
    size: u64,
    sparse: Option<Sparse>,
    /// Permission bits of the header (`mode`).
    mode: u32,
    /// Modification time in seconds since the epoch (pax `mtime`, else the header's).
    mtime: Option<i64>,
    /// A link's target (GNU long link name, pax `linkpath`, else the header's).
    link: String,
}

impl<R: Read> TarDisk<R> {
    /// Reads headers up to the first regular file (for an OVA: up to its disk; an OVA
    /// with several disks is refused, naming them: see [`TarDisk::open_with`]).
    pub fn open(inner: R) -> Result<Self> {
        Self::open_with(inner, None)
    }

    /// As [`TarDisk::open`]; `disk` chooses the disk of an OVA that holds several: its
    /// file name, its `ovf:id`, its `ovf:diskId`, or its position in the OVF from 1.
    pub fn open_with(mut inner: R, disk: Option<&str>) -> Result<Self> {
        let mut ova: Option<Option<String>> = None;
        let mut first = true;
        loop {
            let Some(m) = next_member(&mut inner)? else {
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
            if is_regular(m.kind) {
                let lower = m.name.to_ascii_lowercase();
                if first && lower.ends_with(".ovf") {
                    first = false;
                    let ovf = read_meta_limited(&mut inner, m.size, MAX_OVF, "OVF descriptor")?;
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
                    return Self::with_member(inner, m, ova.is_some());
                }
                skip(&mut inner, padded(m.size))?;
                continue;
            }
            skip(&mut inner, padded(m.size))?;
        }
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's size (a sparse member's real size).
    pub fn size(&self) -> u64 {
        self.sparse.as_ref().map_or(self.size, |e| e.real_size)
    }

    /// Whether the archive is an OVA (its disk was found through the OVF).
    pub fn is_ova(&self) -> bool {
        self.ova
    }

    /// Skips the rest of the disk and checks the rest of the archive.
    pub fn finish(mut self) -> Result<()> {
        let rest = self.remaining + (padded(self.size) - self.size);
        skip(&mut self.inner, rest)?;
        while let Some(m) = next_member(&mut self.inner)? {
            if self.ova {
                if is_regular(m.kind) && !is_ova_metadata(&m.name.to_ascii_lowercase()) {
                    tracing::info!(disk = %self.name, other = %m.name, "the OVA holds another file; it is not imported");
                }
            } else if is_regular(m.kind) && m.size > 0 {
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "it holds more than one file ({:?} and {:?}); expected exactly one disk",
                        self.name, m.name
                    ),
                ));
            }
            skip(&mut self.inner, padded(m.size))?;
        }
        Ok(())
    }
}

impl<R: Read> Read for TarDisk<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.sparse.is_some() {
            return self.read_sparse(buf);
        }
        self.read_stored(buf)
    }
}

impl<R: Read> TarDisk<R> {
    /// Positioned on member `m` (its header read): a sparse member's map is checked, and
    /// read first when it opens the data (PAX 1.0).
    fn with_member(inner: R, m: Member, ova: bool) -> Result<Self> {
        let mut t = Self {
            inner,
            name: String::new(),
            size: 0,
            remaining: 0,
            ova,
            sparse: None,
        };
        t.enter(m)?;
        Ok(t)
    }

    /// Makes `m` (its header just read) the current member; returns its (real) size.
    fn enter(&mut self, m: Member) -> Result<u64> {
        self.name = m.name;
        self.size = m.size;
        self.remaining = m.size;
        self.sparse = None;
        let (real_size, entries) = match m.sparse {
            None => return Ok(m.size),
            Some(Sparse::Map { real_size, entries }) => (real_size, entries),
            Some(Sparse::InData { real_size }) => (real_size, self.read_data_map()?),
        };
        self.sparse = Some(Expand::new(&self.name, real_size, self.remaining, entries)?);
        Ok(real_size)
    }

    /// Whether the current member has been read to its end (a sparse member: its holes
    /// too).
    pub(crate) fn at_end(&self) -> bool {
        match &self.sparse {
            Some(e) => e.pos >= e.real_size,
            None => self.remaining == 0,
        }
    }

    /// PAX 1.0: the map that opens the member's data, decimal numbers a line each (the
    /// count, then offset and length of each entry), padded to a block.
    fn read_data_map(&mut self) -> Result<Vec<(u64, u64)>> {
        let name = self.name.clone();
        let bad = |why: String| Error::invalid("tar", format!("the sparse map of tar member {name:?} {why}"));
        let mut entries: Vec<(u64, u64)> = Vec::new();
        let mut count: Option<u64> = None;
        let mut offset: Option<u64> = None;
        let mut cur: Option<u64> = None;
        let mut block = [0u8; BLOCK];
        loop {
            let n = read_full(self, &mut block).map_err(|e| Error::io("reading tar", e))?;
            if n < BLOCK {
                return Err(bad("runs past the end of the member (truncated?)".into()));
            }
            for c in block {
                match c {
                    b'0'..=b'9' => {
                        let v = cur
                            .unwrap_or(0)
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(c - b'0')));
                        cur = Some(v.ok_or_else(|| bad("holds a number out of range".into()))?);
                    }
                    b'\n' => {
                        let v = cur.take().ok_or_else(|| bad("holds an empty line".into()))?;
                        match (count, offset.take()) {
                            (None, _) if v > MAX_SPARSE_ENTRIES as u64 => {
                                return Err(bad(format!(
                                    "has {v} entries; at most {MAX_SPARSE_ENTRIES} are accepted"
                                )));
                            }
                            (None, _) => count = Some(v),
                            (Some(_), None) => offset = Some(v),
                            (Some(_), Some(off)) => entries.push((off, v)),
                        }
                    }
                    _ => {
                        return Err(bad(format!("holds the byte {c:#04x}, not a digit or a newline")));
                    }
                }
                if count == Some(entries.len() as u64) && offset.is_none() && cur.is_none() {
                    // The rest of the block is padding.
                    return Ok(entries);
                }
            }
        }
    }

    /// The next bytes of a sparse member: zeros in holes, stored data in the map's regions.
    fn read_sparse(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let e = self.sparse.as_mut().expect("a sparse member");
            if e.pos >= e.real_size || buf.is_empty() {
                return Ok(0);
            }
            let (off, len) = e.entries.get(e.next).copied().unwrap_or((e.real_size, 0));
            if e.pos < off {
                let n = (off - e.pos).min(buf.len() as u64) as usize;
                buf[..n].fill(0);
                e.pos += n as u64;
                return Ok(n);
            }
            if e.pos < off + len {
                let want = (off + len - e.pos).min(buf.len() as u64) as usize;
                let n = self.read_stored(&mut buf[..want])?;
                if n == 0 {
                    return Err(Error::invalid(
                        "tar",
                        format!("truncated: the data of sparse member {:?} ends early", self.name),
                    )
                    .into_io());
                }
                self.sparse.as_mut().expect("a sparse member").pos += n as u64;
                return Ok(n);
            }
            e.next += 1;
        }
    }

    /// The member's stored bytes.
    fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(Error::invalid(
                "tar",
                format!("truncated: {:?} ends {} bytes early", self.name, self.remaining),
            )
            .into_io());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl<R: Read> TarDisk<R> {
    /// Moves to the next regular member named `dir` + one of `wanted` (the extents of the
    /// VMDK descriptor file `descriptor`, the current member, in any order): skips the
    /// rest of the current member and returns the index of the name found and the
    /// member's size. In a plain tar any other non-empty file is an error; an OVA's other
    /// members are skipped.
    fn next_named(&mut self, dir: &str, wanted: &[&str], descriptor: &str) -> Result<(usize, u64)> {
        let rest = self.remaining + (padded(self.size) - self.size);
        skip(&mut self.inner, rest)?;
        (self.remaining, self.size) = (0, 0);
        let format = if self.ova { "ova" } else { "tar" };
        loop {
            let Some(m) = next_member(&mut self.inner)? else {
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
                if !is_regular(m.kind) {
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
                let len = self.enter(m)?;
                return Ok((i, len));
            }
            if is_regular(m.kind) && m.size > 0 && !self.ova {
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "it holds {:?}, which the VMDK descriptor {descriptor:?} does not name; expected the \
                         descriptor and its extents only",
                        m.name
                    ),
                ));
            }
            skip(&mut self.inner, padded(m.size))?;
        }
    }
}

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
    fn of(kind: u8, name: &str) -> Self {
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
/// headers understood are [`TarDisk`]'s. The archive must end with its end-of-archive
/// marker: an input that stops at a header's place is truncated.
pub struct TarEntries<R> {
    tar: TarDisk<R>,
    ended: bool,
}

impl<R: Read> TarEntries<R> {
    /// Reads `inner` from its first header.
    pub fn new(inner: R) -> Self {
        Self {
            tar: TarDisk {
                inner,
                name: String::new(),
                size: 0,
                remaining: 0,
                ova: false,
                sparse: None,
            },
            ended: false,
        }
    }

    /// The next member, after skipping what is left of the current one; `None` at the
    /// end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        let t = &mut self.tar;
        let rest = t.remaining + (padded(t.size) - t.size);
        skip(&mut t.inner, rest)?;
        (t.remaining, t.size, t.sparse) = (0, 0, None);
        let m = match read_member(&mut t.inner)? {
            Next::Member(m) => m,
            Next::End => {
                self.ended = true;
                return Ok(None);
            }
            Next::Eof => {
                return Err(Error::invalid(
                    "tar",
                    "truncated: the archive ends without its end-of-archive marker",
                ));
            }
        };
        let kind = EntryKind::of(m.kind, &m.name);
        let entry = Entry {
            path: m.name.clone(),
            kind,
            mode: m.mode,
            mtime: m.mtime,
            link: matches!(kind, EntryKind::Symlink | EntryKind::HardLink).then(|| m.link.clone()),
            size: 0,
        };
        let size = t.enter(m)?;
        Ok(Some(Entry {
            size: if kind == EntryKind::File { size } else { 0 },
            ..entry
        }))
    }

    /// The current member's data regions (offset, length), in order, when it is sparse.
    pub fn sparse_map(&self) -> Option<&[(u64, u64)]> {
        self.tar.sparse.as_ref().map(|e| e.entries.as_slice())
    }

    /// The current member's bytes as stored (a sparse member's regions one after the other).
    pub fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read_stored(buf)
    }

    /// The reader after the archive (what follows its end-of-archive marker).
    pub fn into_inner(self) -> R {
        self.tar.inner
    }
}

impl<R: Read> Read for TarEntries<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read(buf)
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

/// What a VMDK descriptor file starts with.
const VMDK_DESCRIPTOR: &[u8] = b"# Disk DescriptorFile";

/// A tar's disk member, shared by the pipeline's reader ([`SharedTar::reader`]) and, when
/// the member is a VMDK descriptor file, by its extents ([`SharedTar::extents`]): the
/// members after it. The archive is checked to its end when the member has been read (a
/// descriptor's: after its extents).
#[derive(Clone)]
pub(crate) struct SharedTar(Arc<Mutex<SharedState>>);

struct SharedState {
    tar: Option<TarDisk<Box<dyn Read + Send>>>,
    /// The member's first bytes (read to recognise a descriptor), replayed first.
    head: Vec<u8>,
    head_pos: usize,
    /// The member is a VMDK descriptor file: its end does not end the archive.
    hold: bool,
    /// The member's name.
    name: String,
}

fn lock(m: &Mutex<SharedState>) -> std::sync::MutexGuard<'_, SharedState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedTar {
    /// Shares `tar`, positioned on its disk member.
    pub(crate) fn new(mut tar: TarDisk<Box<dyn Read + Send>>) -> Result<Self> {
        let mut head = vec![0u8; VMDK_DESCRIPTOR.len()];
        let n = read_full(&mut tar, &mut head).map_err(|e| Error::io("reading tar", e))?;
        head.truncate(n);
        Ok(Self(Arc::new(Mutex::new(SharedState {
            hold: head == VMDK_DESCRIPTOR,
            name: tar.name.clone(),
            tar: Some(tar),
            head,
            head_pos: 0,
        }))))
    }

    /// The member's bytes; at its end, the rest of the archive is checked (unless it is
    /// a descriptor whose extents follow).
    pub(crate) fn reader(&self) -> SharedReader {
        SharedReader(self.0.clone())
    }

    /// The members after the descriptor, as its extents.
    pub(crate) fn extents(&self) -> TarExtents {
        let name = lock(&self.0).name.clone();
        let dir = match strip_dot(&name).rfind('/') {
            Some(i) => strip_dot(&name)[..=i].to_string(),
            None => String::new(),
        };
        TarExtents {
            state: self.0.clone(),
            dir,
            descriptor: name,
        }
    }

    /// The member is not read as a descriptor: the archive ends with it (checked now if it
    /// has been read to its end).
    pub(crate) fn release(&self) -> Result<()> {
        release(&self.0)
    }
}

fn release(state: &Mutex<SharedState>) -> Result<()> {
    let mut s = lock(state);
    s.hold = false;
    if s.tar.as_ref().is_some_and(|t| t.at_end()) {
        let t = s.tar.take().expect("checked above");
        t.finish()?;
    }
    Ok(())
}

/// See [`SharedTar::reader`].
pub(crate) struct SharedReader(Arc<Mutex<SharedState>>);

impl Read for SharedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = lock(&self.0);
        if s.head_pos < s.head.len() {
            let n = buf.len().min(s.head.len() - s.head_pos);
            buf[..n].copy_from_slice(&s.head[s.head_pos..s.head_pos + n]);
            s.head_pos += n;
            return Ok(n);
        }
        let Some(t) = s.tar.as_mut() else {
            return Ok(0);
        };
        let n = t.read(buf)?;
        if n == 0 && !buf.is_empty() && !s.hold {
            let t = s.tar.take().expect("checked above");
            t.finish().map_err(Error::into_io)?;
        }
        Ok(n)
    }
}

/// The extents of a VMDK descriptor file in a tar or OVA: members after it, named
/// relative to its directory in the archive.
pub(crate) struct TarExtents {
    state: Arc<Mutex<SharedState>>,
    /// The descriptor's directory in the archive (`""` or ending in `/`).
    dir: String,
    descriptor: String,
}

impl ExtentFiles for TarExtents {
    fn next(&mut self, wanted: &[&str]) -> Result<ExtentFile<'_>> {
        let mut s = lock(&self.state);
        let Some(t) = s.tar.as_mut() else {
            return Err(Error::invalid(
                "tar",
                format!("the archive ended before the extents of {:?}", self.descriptor),
            ));
        };
        let (index, len) = t.next_named(&self.dir, wanted, &self.descriptor)?;
        Ok(ExtentFile {
            index,
            len: Some(len),
            reader: Box::new(MemberReader(self.state.clone())),
        })
    }

    fn finish(&mut self) -> Result<()> {
        let mut s = lock(&self.state);
        s.hold = false;
        match s.tar.take() {
            Some(t) => t.finish(),
            None => Ok(()),
        }
    }
}

impl Drop for TarExtents {
    fn drop(&mut self) {
        lock(&self.state).hold = false;
    }
}

/// The current member of a shared tar (an extent), to its end.
struct MemberReader(Arc<Mutex<SharedState>>);

impl Read for MemberReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match lock(&self.0).tar.as_mut() {
            Some(t) => t.read(buf),
            None => Ok(0),
        }
    }
}

/// OVA members that are not disks.
fn is_ova_metadata(lower: &str) -> bool {
    [".ovf", ".mf", ".cert"].iter().any(|x| lower.ends_with(x))
}

/// The file name of the OVF's disk (`None`: the OVF names no file); several are an error.
#[cfg(test)]
fn ovf_disk(ovf: &str) -> Result<Option<String>> {
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
fn ovf_choose(ovf: &str, choice: Option<&str>) -> Result<Option<String>> {
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

fn is_regular(kind: u8) -> bool {
    matches!(kind, b'0' | 0 | b'7' | b'S')
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn skip(r: &mut impl Read, n: u64) -> Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink()).map_err(|e| Error::io("reading tar", e))?;
    if copied < n {
        return Err(Error::invalid("tar", "truncated archive"));
    }
    Ok(())
}

fn read_block(r: &mut impl Read) -> Result<Option<[u8; BLOCK]>> {
    let mut b = [0u8; BLOCK];
    let n = read_full(r, &mut b).map_err(|e| Error::io("reading tar", e))?;
    match n {
        0 => Ok(None),
        BLOCK => Ok(Some(b)),
        _ => Err(Error::invalid("tar", "truncated header")),
    }
}

fn read_meta(r: &mut impl Read, size: u64) -> Result<Vec<u8>> {
    read_meta_limited(r, size, MAX_META, "metadata record")
}

/// Reads a small member or record whole (with its padding), at most `max` bytes.
fn read_meta_limited(r: &mut impl Read, size: u64, max: u64, what: &str) -> Result<Vec<u8>> {
    if size > max {
        return Err(Error::invalid("tar", format!("{what} of {size} bytes")));
    }
    let mut v = vec![0u8; padded(size) as usize];
    let n = read_full(r, &mut v).map_err(|e| Error::io("reading tar", e))?;
    if n < v.len() {
        return Err(Error::invalid("tar", "truncated metadata record"));
    }
    v.truncate(size as usize);
    Ok(v)
}

/// The next member (`None` at the end-of-archive marker or at the end of the input), its
/// name checked (and a link's target: no absolute paths, no `..`).
fn next_member(r: &mut impl Read) -> Result<Option<Member>> {
    let Next::Member(m) = read_member(r)? else {
        return Ok(None);
    };
    check_name(&m.name)?;
    if matches!(m.kind, b'1' | b'2') {
        check_name(&m.link)?;
    }
    Ok(Some(m))
}

/// What follows in an archive.
enum Next {
    Member(Member),
    /// The end-of-archive marker (a zero block).
    End,
    /// The end of the input, at a header's place.
    Eof,
}

/// The next member, names as stored (unchecked).
fn read_member(r: &mut impl Read) -> Result<Next> {
    let mut long_name: Option<String> = None;
    let mut long_link: Option<String> = None;
    let mut pax = Pax::default();
    loop {
        let Some(h) = read_block(r)? else {
            return Ok(Next::Eof);
        };
        if h.iter().all(|b| *b == 0) {
            return Ok(Next::End);
        }
        verify_checksum(&h)?;
        let kind = h[156];
        let size = member_size(parse_size(&h[124..136])?)?;
        match kind {
            b'L' => long_name = Some(cstr(&read_meta(r, size)?)),
            b'K' => long_link = Some(cstr(&read_meta(r, size)?)),
            b'x' => pax.read(r, size)?,
            b'g' => {
                read_meta(r, size)?;
            }
            _ => {
                let ustar = &h[257..263] == b"ustar\0";
                let mut name = cstr(&h[0..100]);
                if ustar && h[345] != 0 {
                    name = format!("{}/{}", cstr(&h[345..500]), name);
                }
                let name = pax
                    .sparse_name
                    .take()
                    .or(pax.path.take())
                    .or(long_name)
                    .unwrap_or(name);
                let link = pax
                    .linkpath
                    .take()
                    .or(long_link)
                    .unwrap_or_else(|| cstr(&h[157..257]));
                let size = if matches!(kind, b'1' | b'2' | b'5') {
                    0
                } else {
                    pax.size.unwrap_or(size)
                };
                // A GNU sparse member's extended sparse headers come before its data.
                let sparse = match kind {
                    b'S' => Some(gnu_sparse_map(r, &h, &name)?),
                    k if is_regular(k) => pax.sparse(&name)?,
                    _ => None,
                };
                let mode = parse_octal(&h[100..108]).map_or(0, |m| (m & 0o7777) as u32);
                let mtime = pax
                    .mtime
                    .or_else(|| parse_size(&h[136..148]).ok().and_then(|t| i64::try_from(t).ok()));
                return Ok(Next::Member(Member {
                    name,
                    kind,
                    size,
                    sparse,
                    mode,
                    mtime,
                    link,
                }));
            }
        }
    }
}

/// Refuses member sizes no archive can hold (they would overflow the padding arithmetic).
fn member_size(size: u64) -> Result<u64> {
    if size > MAX_MEMBER {
        return Err(Error::invalid(
            "tar",
            format!("member size {size} is out of range"),
        ));
    }
    Ok(size)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Refuses absolute names and `..` components.
fn check_name(name: &str) -> Result<()> {
    if name.starts_with('/') || name.split(['/', '\\']).any(|c| c == "..") {
        return Err(Error::refused(
            "tar",
            format!("member name {name:?} escapes the archive (absolute path or `..`)"),
        ));
    }
    Ok(())
}

fn verify_checksum(h: &[u8; BLOCK]) -> Result<()> {
    match checksum_holds(h) {
        None => Err(Error::invalid("tar", "bad header checksum field")),
        Some(false) => Err(Error::invalid("tar", "header checksum mismatch")),
        Some(true) => Ok(()),
    }
}

/// Whether a 512-byte tar header's checksum field holds the sum of its bytes (the field
/// counted as spaces; unsigned, or signed as some old tars summed); `None` when the field
/// is not octal. The one check of every tar reader here (archives, registry layers, and
/// telling a pre-POSIX tar from raw data).
pub(crate) fn checksum_holds(h: &[u8]) -> Option<bool> {
    let h = h.get(..BLOCK)?;
    let field = &h[148..156];
    if !field.iter().any(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    let stored = parse_octal(field)?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    Some(stored == unsigned || stored as i64 == signed)
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|c| *c == b' ')
        .take_while(|c| (b'0'..=b'7').contains(c))
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// Octal, or GNU base-256 (high bit of the first byte set) for sizes of 8 GiB and more.
fn parse_size(f: &[u8]) -> Result<u64> {
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 || f[1..f.len() - 8].iter().any(|b| *b != 0) {
            return Err(Error::invalid("tar", "member size out of range"));
        }
        let mut v = 0u64;
        for b in &f[f.len() - 8..] {
            v = (v << 8) | u64::from(*b);
        }
        return Ok(v);
    }
    parse_octal(f).ok_or_else(|| Error::invalid("tar", "bad size field"))
}

/// What the pax extended headers before a member said.
#[derive(Default)]
struct Pax {
    path: Option<String>,
    size: Option<u64>,
    linkpath: Option<String>,
    /// `mtime`, whole seconds (the fraction dropped).
    mtime: Option<i64>,
    sparse_major: Option<String>,
    sparse_minor: Option<String>,
    sparse_name: Option<String>,
    /// `GNU.sparse.size` (0.0, 0.1) or `GNU.sparse.realsize` (1.0).
    sparse_real_size: Option<u64>,
    sparse_numblocks: Option<u64>,
    /// Entries of `GNU.sparse.offset`/`GNU.sparse.numbytes` (0.0) or `GNU.sparse.map` (0.1).
    sparse_entries: Vec<(u64, u64)>,
    /// An offset waiting for its length.
    sparse_offset: Option<u64>,
}

impl Pax {
    /// Reads an extended header of `size` bytes (and its padding) record by record
    /// (`LEN KEY=VALUE\n`). A sparse map's numbers are parsed as they come, never held as
    /// text; other values are at most [`MAX_META`] bytes.
    fn read(&mut self, r: &mut impl Read, size: u64) -> Result<()> {
        let mut rd = io::BufReader::with_capacity(64 << 10, (&mut *r).take(size));
        while let Some(c) = next_byte(&mut rd)? {
            self.record(&mut rd, c)?;
        }
        if rd.into_inner().limit() > 0 {
            return Err(Error::invalid("tar", "truncated pax header"));
        }
        skip(r, padded(size) - size)
    }

    fn record(&mut self, rd: &mut impl io::BufRead, first: u8) -> Result<()> {
        let bad = |why: &str| Error::invalid("tar", format!("malformed pax header: {why}"));
        let cut = || bad("a record is cut short");
        // The record's length, this number and the newline included.
        let (mut len, mut used, mut c) = (0u64, 0u64, first);
        while c != b' ' {
            if !c.is_ascii_digit() {
                return Err(bad("a record length is not a number"));
            }
            len = len
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or_else(|| bad("a record length is out of range"))?;
            used += 1;
            c = next_byte(rd)?.ok_or_else(cut)?;
        }
        used += 1;
        let mut key = Vec::new();
        loop {
            let c = next_byte(rd)?.ok_or_else(cut)?;
            used += 1;
            if c == b'=' {
                break;
            }
            if c == b'\n' || key.len() >= 256 {
                return Err(bad("a record has no key"));
            }
            key.push(c);
        }
        let key = String::from_utf8_lossy(&key).into_owned();
        let value_len = len
            .checked_sub(used + 1)
            .ok_or_else(|| bad(&format!("the record {key} is shorter than its key")))?;
        if key == "GNU.sparse.map" {
            self.read_map(rd, value_len)?;
        } else {
            if value_len > MAX_META {
                return Err(bad(&format!("the record {key} holds {value_len} bytes")));
            }
            let mut v = vec![0u8; value_len as usize];
            if read_full(rd, &mut v).map_err(|e| Error::io("reading tar", e))? < v.len() {
                return Err(cut());
            }
            self.apply(&key, String::from_utf8_lossy(&v).into_owned())?;
        }
        if next_byte(rd)? != Some(b'\n') {
            return Err(bad(&format!("the record {key} does not end with a newline")));
        }
        Ok(())
    }

    /// `GNU.sparse.map`: offset,length,offset,length…
    fn read_map(&mut self, rd: &mut impl io::BufRead, len: u64) -> Result<()> {
        let bad = |why: &str| Error::invalid("tar", format!("malformed pax header: GNU.sparse.map {why}"));
        let mut cur: Option<u64> = None;
        for _ in 0..len {
            match next_byte(rd)?.ok_or_else(|| bad("is cut short"))? {
                c @ b'0'..=b'9' => {
                    let v = cur
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')));
                    cur = Some(v.ok_or_else(|| bad("holds a number out of range"))?);
                }
                b',' => {
                    let v = cur.take().ok_or_else(|| bad("holds an empty number"))?;
                    self.push_number(v)?;
                }
                _ => return Err(bad("holds a byte that is not a digit or a comma")),
            }
        }
        if let Some(v) = cur {
            self.push_number(v)?;
        }
        Ok(())
    }

    /// The next number of a sparse map: an offset, then its length.
    fn push_number(&mut self, v: u64) -> Result<()> {
        match self.sparse_offset.take() {
            Some(off) => self.sparse_entries.push((off, v)),
            None if self.sparse_entries.len() >= MAX_SPARSE_ENTRIES => {
                let name = self.sparse_name.as_deref().or(self.path.as_deref()).unwrap_or("");
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "the sparse map of tar member {name:?} has more than {MAX_SPARSE_ENTRIES} entries"
                    ),
                ));
            }
            None => self.sparse_offset = Some(v),
        }
        Ok(())
    }

    fn apply(&mut self, key: &str, v: String) -> Result<()> {
        let num = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| Error::invalid("tar", format!("pax record {key} {v:?} is not a number")))
        };
        let out_of_turn = |what: &str| Error::invalid("tar", format!("malformed pax header: {key} {what}"));
        match key {
            "path" => self.path = Some(v),
            "linkpath" => self.linkpath = Some(v),
            // Seconds, maybe negative, maybe with a fraction; anything else is ignored.
            "mtime" => self.mtime = v.trim().split('.').next().and_then(|t| t.parse().ok()),
            "size" => self.size = Some(member_size(num(&v)?)?),
            "GNU.sparse.major" => self.sparse_major = Some(v),
            "GNU.sparse.minor" => self.sparse_minor = Some(v),
            "GNU.sparse.name" => self.sparse_name = Some(v),
            "GNU.sparse.size" | "GNU.sparse.realsize" => self.sparse_real_size = Some(member_size(num(&v)?)?),
            "GNU.sparse.numblocks" => self.sparse_numblocks = Some(num(&v)?),
            "GNU.sparse.offset" if self.sparse_offset.is_some() => {
                return Err(out_of_turn("follows another offset"));
            }
            "GNU.sparse.numbytes" if self.sparse_offset.is_none() => {
                return Err(out_of_turn("has no GNU.sparse.offset before it"));
            }
            "GNU.sparse.offset" | "GNU.sparse.numbytes" => self.push_number(num(&v)?)?,
            _ => {}
        }
        Ok(())
    }

    /// The sparse layout these records give the regular member `name`, if any.
    fn sparse(&mut self, name: &str) -> Result<Option<Sparse>> {
        let real = |size: Option<u64>, key: &str| {
            size.ok_or_else(|| {
                Error::invalid("tar", format!("sparse tar member {name:?} has no {key} record"))
            })
        };
        match (self.sparse_major.as_deref(), self.sparse_minor.as_deref()) {
            (Some("1"), Some("0")) => Ok(Some(Sparse::InData {
                real_size: real(self.sparse_real_size, "GNU.sparse.realsize")?,
            })),
            (Some(major), minor) => Err(Error::Unsupported {
                format: "tar",
                reason: format!(
                    "tar member {name:?} is sparse in PAX format {major}.{}; GNU tar's 0.0, 0.1 and 1.0 are supported",
                    minor.unwrap_or("?")
                ),
            }),
            (None, _)
                if self.sparse_real_size.is_some()
                    || self.sparse_numblocks.is_some()
                    || !self.sparse_entries.is_empty() =>
            {
                let real_size = real(self.sparse_real_size, "GNU.sparse.size")?;
                if self.sparse_offset.is_some() {
                    return Err(Error::invalid(
                        "tar",
                        format!("tar member {name:?}: its sparse map ends with an offset without a length"),
                    ));
                }
                let entries = std::mem::take(&mut self.sparse_entries);
                if let Some(k) = self.sparse_numblocks
                    && k != entries.len() as u64
                {
                    return Err(Error::invalid(
                        "tar",
                        format!(
                            "tar member {name:?}: GNU.sparse.numblocks is {k} but its sparse map has {} entries",
                            entries.len()
                        ),
                    ));
                }
                Ok(Some(Sparse::Map { real_size, entries }))
            }
            _ => Ok(None),
        }
    }
}

fn next_byte(r: &mut impl io::BufRead) -> Result<Option<u8>> {
    let b = r
        .fill_buf()
        .map_err(|e| Error::io("reading tar", e))?
        .first()
        .copied();
    if b.is_some() {
        r.consume(1);
    }
    Ok(b)
}

/// How a sparse member's data is laid out.
#[derive(Debug)]
enum Sparse {
    /// The map came with the headers (GNU sparse headers; PAX 0.0 and 0.1 records).
    Map {
        real_size: u64,
        entries: Vec<(u64, u64)>,
    },
    /// PAX 1.0: the map opens the member's data.
    InData { real_size: u64 },
}

/// The sparse map of a GNU `S` member: four entries in its header, then extended sparse
/// headers of 21 entries each while their "extended" flag is set. An empty slot ends the
/// map, as GNU tar reads it.
fn gnu_sparse_map(r: &mut impl Read, h: &[u8; BLOCK], name: &str) -> Result<Sparse> {
    let real_size = parse_size(&h[483..495])
        .map_err(|_| Error::invalid("tar", format!("tar member {name:?}: bad real size field")))?;
    let real_size = member_size(real_size)?;
    let mut entries = Vec::new();
    let mut more = push_slots(&h[386..482], name, &mut entries)?;
    let mut extended = h[482] != 0;
    while more && extended {
        let mut b = [0u8; BLOCK];
        if read_full(r, &mut b).map_err(|e| Error::io("reading tar", e))? < BLOCK {
            return Err(Error::invalid(
                "tar",
                format!("truncated: the extended sparse headers of tar member {name:?} are cut short"),
            ));
        }
        more = push_slots(&b[..504], name, &mut entries)?;
        extended = b[504] != 0;
    }
    Ok(Sparse::Map { real_size, entries })
}

/// Adds the entries of GNU sparse slots (24 bytes each: offset, length); `false` once a
/// slot is empty.
fn push_slots(slots: &[u8], name: &str, entries: &mut Vec<(u64, u64)>) -> Result<bool> {
    for f in slots.chunks_exact(24) {
        if f[12] == 0 {
            return Ok(false);
        }
        let i = entries.len() + 1;
        if i > MAX_SPARSE_ENTRIES {
            return Err(Error::invalid(
                "tar",
                format!("the sparse map of tar member {name:?} has more than {MAX_SPARSE_ENTRIES} entries"),
            ));
        }
        let field = |b: &[u8], what: &str| {
            parse_size(b).map_err(|_| {
                Error::invalid(
                    "tar",
                    format!("tar member {name:?}: sparse map entry {i}: bad {what} field"),
                )
            })
        };
        entries.push((field(&f[..12], "offset")?, field(&f[12..], "length")?));
    }
    Ok(true)
}

/// A sparse member being read.
struct Expand {
    /// (offset, length) of each data region: in order, apart, within the real size.
    entries: Vec<(u64, u64)>,
    /// The entry being read.
    next: usize,
    /// Bytes of the member read so far, holes included.
    pos: u64,
    real_size: u64,
}

impl Expand {
    /// Checks the map of member `name` against its real size and the bytes it stores.
    fn new(name: &str, real_size: u64, stored: u64, entries: Vec<(u64, u64)>) -> Result<Self> {
        let n = entries.len();
        let (mut end, mut data) = (0u64, 0u64);
        for (i, &(off, len)) in entries.iter().enumerate() {
            let entry = || {
                format!(
                    "tar member {name:?}: sparse map entry {} of {n} (offset {off}, {len} bytes)",
                    i + 1
                )
            };
            if off < end {
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "{} starts before the previous entry ends (at {end}): the entries overlap or are out of order",
                        entry()
                    ),
                ));
            }
            end = match off.checked_add(len) {
                Some(e) if e <= real_size => e,
                _ => {
                    return Err(Error::invalid(
                        "tar",
                        format!("{} ends past the member's size of {real_size} bytes", entry()),
                    ));
                }
            };
            data += len;
        }
        if data != stored {
            return Err(Error::invalid(
                "tar",
                format!(
                    "tar member {name:?}: its sparse map places {data} bytes of data but the archive stores {stored}"
                ),
            ));
        }
        Ok(Self {
            entries,
            next: 0,
            pos: 0,
            real_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ustar header.
    pub(crate) fn header(name: &str, kind: u8, size: u64) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive(members: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, kind, data) in members {
            v.extend_from_slice(&header(name, *kind, data.len() as u64));
            v.extend_from_slice(data);
            v.resize(padded(v.len() as u64) as usize, 0);
        }
        v.extend_from_slice(&[0u8; 1024]);
        v
    }

    #[test]
    fn reads_the_one_disk() {
        let a = archive(&[("dir/", b'5', b""), ("dir/disk.img", b'0', b"hello")]);
        let mut t = TarDisk::open(&a[..]).unwrap();
        assert_eq!((t.name(), t.size()), ("dir/disk.img", 5));
        let mut s = String::new();
        t.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        t.finish().unwrap();
    }

    #[test]
    fn refuses_traversal_and_second_files() {
        let a = archive(&[("../../etc/passwd", b'0', b"x")]);
        assert_eq!(TarDisk::open(&a[..]).err().unwrap().label(), "refused");
        let a = archive(&[("link", b'2', b"")]);
        assert!(TarDisk::open(&a[..]).is_err()); // no regular file
        let a = archive(&[("a.img", b'0', b"a"), ("b.img", b'0', b"b")]);
        let mut t = TarDisk::open(&a[..]).unwrap();
        io::copy(&mut t, &mut io::sink()).unwrap();
        assert_eq!(t.finish().unwrap_err().label(), "invalid_image");
    }

    const OVF: &str = r#"<?xml version="1.0"?>
<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <!-- <File ovf:href="commented.vmdk" ovf:id="c"/> -->
    <ovf:File ovf:href="other.iso" ovf:id="file0"/>
    <File ovf:href="disk-1.vmdk" ovf:id="file1" ovf:size="100"/>
  </References>
  <DiskSection><Disk ovf:capacity="8" ovf:diskId="vmdisk1" ovf:fileRef="file1"/></DiskSection>
</Envelope>"#;

    #[test]
    fn ova_disk_named_in_the_ovf() {
        assert_eq!(ovf_disk(OVF).unwrap().as_deref(), Some("disk-1.vmdk"));
        let a = archive(&[
            ("x.ovf", b'0', OVF.as_bytes()),
            ("x.mf", b'0', b"SHA256(disk-1.vmdk)= 00\n"),
            ("other.iso", b'0', b"iso"),
            ("disk-1.vmdk", b'0', b"disk"),
            ("x.cert", b'0', b"cert"),
        ]);
        let mut t = TarDisk::open(&a[..]).unwrap();
        assert!(t.is_ova());
        assert_eq!(t.name(), "disk-1.vmdk");
        let mut s = String::new();
        t.read_to_string(&mut s).unwrap();
        assert_eq!(s, "disk");
        t.finish().unwrap();
        // Without references: the first member that is not OVA metadata.
        let a = archive(&[
            ("x.ovf", b'0', b"<Envelope/>"),
            ("x.mf", b'0', b"m"),
            ("d.img", b'0', b"d"),
        ]);
        assert_eq!(TarDisk::open(&a[..]).unwrap().name(), "d.img");
        // A missing disk, a reference outside the archive.
        let a = archive(&[("x.ovf", b'0', OVF.as_bytes()), ("x.mf", b'0', b"m")]);
        let e = TarDisk::open(&a[..]).err().unwrap();
        assert!(e.to_string().contains("disk-1.vmdk"), "{e}");
        let evil = OVF.replace("disk-1.vmdk", "../../etc/shadow");
        assert_eq!(ovf_disk(&evil).unwrap_err().label(), "refused");
        let url = OVF.replace("disk-1.vmdk", "http://example.com/d.vmdk");
        assert_eq!(ovf_disk(&url).unwrap_err().label(), "refused");
    }

    #[test]
    fn ova_disk_chosen_among_several() {
        let two = OVF.replace(
            "</DiskSection>",
            "<Disk ovf:diskId=\"vmdisk2\" ovf:fileRef=\"file0\"/></DiskSection>",
        );
        let e = ovf_choose(&two, None).unwrap_err();
        assert_eq!(e.label(), "refused");
        for want in [
            "disk-1.vmdk",
            "file1",
            "100 bytes",
            "other.iso",
            "file0",
            "--disk",
        ] {
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        for (choice, href) in [
            ("other.iso", "other.iso"),
            ("file1", "disk-1.vmdk"),
            ("vmdisk2", "other.iso"),
            ("1", "disk-1.vmdk"),
            ("2", "other.iso"),
        ] {
            assert_eq!(ovf_choose(&two, Some(choice)).unwrap().as_deref(), Some(href));
        }
        let e = ovf_choose(&two, Some("3")).unwrap_err();
        assert_eq!(e.label(), "invalid_argument");
        assert!(
            e.to_string().contains("disk-1.vmdk") && e.to_string().contains("\"3\""),
            "{e}"
        );
        // The same disk named twice is one disk; a choice of the only disk is fine.
        assert_eq!(
            ovf_choose(OVF, Some("1")).unwrap().as_deref(),
            Some("disk-1.vmdk")
        );
        // Without a DiskSection, the files are the candidates.
        let files = "<Envelope><References><File ovf:href=\"a.vmdk\" ovf:id=\"a\"/>\
                     <File ovf:href=\"b.vmdk\" ovf:id=\"b\"/></References></Envelope>";
        assert!(ovf_choose(files, None).is_err());
        assert_eq!(ovf_choose(files, Some("b")).unwrap().as_deref(), Some("b.vmdk"));
    }

    #[test]
    fn entries_walk_every_member() {
        let mut link = header("l", b'2', 0);
        link[157..166].copy_from_slice(b"../target");
        link[100..107].copy_from_slice(b"0000777");
        link[136..147].copy_from_slice(b"13200000000");
        link[148..156].copy_from_slice(b"        ");
        let sum: u64 = link.iter().map(|b| u64::from(*b)).sum();
        link[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let pax = "20 linkpath=a/b/c/d\n22 mtime=1700000000.5\n";
        let mut a = archive(&[
            ("d/", b'5', b""),
            ("d/f", b'0', b"data"),
            ("v7dir/", b'0', b""),
            ("pax", b'x', pax.as_bytes()),
            ("s", b'2', b""),
            ("h", b'1', b""),
            ("dev", b'3', b""),
        ]);
        // The symbolic link with its own header fields, before the end marker.
        let end = a.len() - 1024;
        a.splice(end..end, link);
        let mut t = TarEntries::new(&a[..]);
        let mut seen = Vec::new();
        while let Some(e) = t.next_entry().unwrap() {
            if e.path == "d/f" {
                let mut s = String::new();
                t.read_to_string(&mut s).unwrap();
                assert_eq!((s.as_str(), e.size, e.mode), ("data", 4, 0o644));
            }
            seen.push((e.path, e.kind, e.link, e.mtime));
        }
        assert_eq!(
            seen,
            [
                ("d/".into(), EntryKind::Directory, None, Some(0)),
                ("d/f".into(), EntryKind::File, None, Some(0)),
                ("v7dir/".into(), EntryKind::Directory, None, Some(0)),
                (
                    "s".into(),
                    EntryKind::Symlink,
                    Some("a/b/c/d".into()),
                    Some(1_700_000_000)
                ),
                ("h".into(), EntryKind::HardLink, Some(String::new()), Some(0)),
                ("dev".into(), EntryKind::CharDevice, None, Some(0)),
                (
                    "l".into(),
                    EntryKind::Symlink,
                    Some("../target".into()),
                    Some(0o13200000000)
                ),
            ]
        );
        assert!(t.next_entry().unwrap().is_none(), "ended");
        // Names are given as stored: the caller checks them.
        let a = archive(&[("../x", b'0', b"x")]);
        assert_eq!(
            TarEntries::new(&a[..]).next_entry().unwrap().unwrap().path,
            "../x"
        );
        // No end-of-archive marker: truncated.
        let a = archive(&[("f", b'0', b"x")]);
        let mut t = TarEntries::new(&a[..a.len() - 1024]);
        assert!(t.next_entry().unwrap().is_some());
        let e = t.next_entry().unwrap_err();
        assert!(e.to_string().contains("end-of-archive marker"), "{e}");
    }

    #[test]
    fn base256_size() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..12].copy_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(parse_size(&f).unwrap(), 10 << 30);
    }

    #[test]
    fn absurd_member_sizes_are_invalid() {
        // Mutation test: a base-256 or pax size near u64::MAX used to overflow padding it
        // to a block.
        let mut h = header("disk.img", b'0', 0);
        h[124..136].fill(0);
        h[124] = 0x80;
        h[128..136].copy_from_slice(&u64::MAX.to_be_bytes());
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let e = TarDisk::open(&h[..]).err().unwrap();
        assert_eq!(e.label(), "invalid_image", "{e}");
        assert!(e.to_string().contains("member size"), "{e}");

        let pax = format!("29 size={}\n", u64::MAX);
        let a = archive(&[("pax", b'x', pax.as_bytes()), ("disk.img", b'0', b"x")]);
        let e = TarDisk::open(&a[..]).err().unwrap();
        assert!(e.to_string().contains("member size"), "{e}");
    }

    #[test]
    fn pax_records() {
        let data = b"19 path=a/disk.img\n15 size=123456\n";
        let mut block = data.to_vec();
        block.resize(BLOCK, 0);
        let mut pax = Pax::default();
        pax.read(&mut &block[..], data.len() as u64).unwrap();
        assert_eq!(pax.path.as_deref(), Some("a/disk.img"));
        assert_eq!(pax.size, Some(123456));
        // Records that do not add up to the header's size, or lack their newline.
        for bad in [
            &b"20 path=a/disk.img\n"[..],
            b"19 path=a/disk.img ",
            b"x path=a\n",
        ] {
            let mut block = bad.to_vec();
            block.resize(BLOCK, 0);
            let e = Pax::default()
                .read(&mut &block[..], bad.len() as u64)
                .unwrap_err();
            assert!(e.to_string().contains("pax"), "{e}");
        }
    }
}
