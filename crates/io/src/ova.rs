//! Reading an OVA from a byte stream, one tar member at a time.
//!
//! An OVA is a tar whose first member is the OVF descriptor; the disks follow. The reader
//! hands out each member as an [`AsyncRead`] of known size so a provider can stream it
//! straight to its destination: nothing is written to disk and memory stays flat.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tar::{Archive, Entries, Entry};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;

use crate::{Error, Result};

/// Largest OVF descriptor accepted (descriptors are a few KiB).
pub const MAX_DESCRIPTOR: u64 = 4 << 20;

type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// An OVA being read front to back.
pub struct OvaReader {
    entries: Entries<Reader>,
    /// The descriptor's member name and text.
    pub descriptor_name: String,
    pub descriptor: String,
}

/// One member after the descriptor: a disk (or other file) of `size` bytes.
pub struct OvaMember {
    pub path: String,
    pub size: u64,
    pub reader: Entry<Archive<Reader>>,
}

impl OvaReader {
    /// Opens the OVA from a stream of chunks and reads its descriptor (the first member).
    pub async fn from_stream<S>(stream: S) -> Result<Self>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
    {
        Self::from_reader(Box::new(StreamReader::new(stream))).await
    }

    /// Opens the OVA from any reader and reads its descriptor.
    pub async fn from_reader(reader: Reader) -> Result<Self> {
        let mut archive = Archive::new(reader);
        let mut entries = archive.entries()?;
        let mut first = match entries.next().await {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(Error::InvalidOva(format!("not a tar archive: {e}"))),
            None => return Err(Error::InvalidOva("empty archive".into())),
        };
        let name = member_path(&first)?;
        if !name.to_ascii_lowercase().ends_with(".ovf") {
            return Err(Error::InvalidOva(format!(
                "first member {name:?} is not an .ovf descriptor"
            )));
        }
        let size = first.effective_size();
        if size > MAX_DESCRIPTOR {
            return Err(Error::InvalidOva(format!(
                "descriptor {name:?} is {size} bytes, over {MAX_DESCRIPTOR}"
            )));
        }
        let mut text = String::with_capacity(size as usize);
        (&mut first)
            .take(MAX_DESCRIPTOR)
            .read_to_string(&mut text)
            .await
            .map_err(|e| Error::InvalidOva(format!("reading descriptor {name:?}: {e}")))?;
        drop(first);
        Ok(Self {
            entries,
            descriptor_name: name,
            descriptor: text,
        })
    }

    /// The next member, or `None` at the end. The previous member must have been read to
    /// its end (or dropped, in which case its rest is skipped).
    pub async fn next_member(&mut self) -> Result<Option<OvaMember>> {
        loop {
            let entry = match self.entries.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(Error::InvalidOva(format!("reading tar: {e}"))),
                Some(Ok(e)) => e,
            };
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = member_path(&entry)?;
            let size = entry.effective_size();
            return Ok(Some(OvaMember {
                path,
                size,
                reader: entry,
            }));
        }
    }
}

fn member_path(e: &Entry<Archive<Reader>>) -> Result<String> {
    let p = e
        .path()
        .map_err(|err| Error::InvalidOva(format!("bad member name: {err}")))?;
    let s = p.to_string_lossy().trim_start_matches("./").to_string();
    if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") {
        return Err(Error::InvalidOva(format!("unsafe member name {s:?}")));
    }
    Ok(s)
}
