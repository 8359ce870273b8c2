//! [`SharedTar`]: a tar's disk member shared by the pipeline's reader and, for a VMDK
//! descriptor file, its extents (the members after it).

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use super::{TarDisk, strip_dot};
use crate::source::read_full;
use crate::vmdk::{ExtentFile, ExtentFiles};
use crate::{Error, Result};

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
            name: tar.name().to_string(),
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
