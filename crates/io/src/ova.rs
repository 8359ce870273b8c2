//! Reading an OVA from a byte stream, one tar member at a time.
//!
//! An OVA is a tar whose first member is the OVF descriptor; the disks follow. The reader
//! hands out each member as an [`AsyncRead`] of known size so a provider can stream it
//! straight to its destination: nothing is written to disk and memory stays flat.
//!
//! The tar is read by [`crate::tar`], which is synchronous, in a blocking worker
//! (`spawn_blocking`) that reads the stream through the runtime and hands each member's
//! data over in chunks:
//!
//! ```text
//!  stream ─► worker: TarReader ─► events (one at a time) ─► OvaReader::next_member
//!                              └► data (4 × 128 KiB)     ─► OvaMember::reader
//! ```
//!
//! At most a few chunks are in flight. A member dropped unread (or left behind by the next
//! [`OvaReader::next_member`]) is skipped by the worker; an error reaches the member's
//! reader and the next `next_member`. When the reader and its members are all dropped, the
//! worker stops at once and drops the stream.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::tar::{EntryKind, Next, TarReader};
use crate::{Error, Result};

/// Largest OVF descriptor accepted (descriptors are a few KiB).
pub const MAX_DESCRIPTOR: u64 = 4 << 20;

/// Bytes of a member handed over at a time.
const CHUNK: usize = 128 << 10;
/// Chunks of a member in flight.
const DEPTH: usize = 4;

type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// An OVA being read front to back.
pub struct OvaReader {
    events: mpsc::Receiver<Result<Event>>,
    /// The member handed out last: left behind when the next one is asked for.
    current: Option<CancellationToken>,
    /// The end of the archive was reached.
    ended: bool,
    /// Stops the worker when the reader and every member are dropped.
    alive: Arc<DropGuard>,
    /// The descriptor's member name and text.
    pub descriptor_name: String,
    pub descriptor: String,
}

/// One member after the descriptor: a disk (or other file) of `size` bytes.
pub struct OvaMember {
    pub path: String,
    pub size: u64,
    pub reader: MemberReader,
}

/// The data of an [`OvaMember`]: exactly its `size` bytes, then the end. An archive that
/// ends early, or fails, is an error.
pub struct MemberReader {
    data: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
    /// Bytes not handed out yet.
    remaining: u64,
    path: String,
    _alive: Arc<DropGuard>,
}

/// What the worker says, in archive order.
enum Event {
    Descriptor {
        name: String,
        text: String,
    },
    Member {
        path: String,
        size: u64,
        data: mpsc::Receiver<io::Result<Bytes>>,
        /// Set when the member is left behind.
        cancel: CancellationToken,
    },
    End,
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
        let (tx, mut events) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let bridge = Bridge {
            reader,
            handle: Handle::current(),
            stop: stop.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let mut w = Worker {
                handle: bridge.handle.clone(),
                tar: TarReader::new(bridge),
                events: tx,
            };
            if let Err(e) = w.run() {
                let _ = w.events.blocking_send(Err(e));
            }
        });
        let alive = Arc::new(stop.drop_guard());
        match events.recv().await {
            Some(Ok(Event::Descriptor { name, text })) => Ok(Self {
                events,
                current: None,
                ended: false,
                alive,
                descriptor_name: name,
                descriptor: text,
            }),
            Some(Err(e)) => Err(e),
            Some(Ok(_)) | None => Err(stopped()),
        }
    }

    /// The next member, or `None` at the end. The previous member should have been read
    /// to its end or dropped; what is left of it is skipped (reading it further fails).
    pub async fn next_member(&mut self) -> Result<Option<OvaMember>> {
        if let Some(previous) = self.current.take() {
            previous.cancel();
        }
        if self.ended {
            return Ok(None);
        }
        match self.events.recv().await {
            Some(Ok(Event::Member {
                path,
                size,
                data,
                cancel,
            })) => {
                self.current = Some(cancel);
                Ok(Some(OvaMember {
                    path: path.clone(),
                    size,
                    reader: MemberReader {
                        data,
                        chunk: Bytes::new(),
                        remaining: size,
                        path,
                        _alive: self.alive.clone(),
                    },
                }))
            }
            Some(Ok(Event::End)) => {
                self.ended = true;
                Ok(None)
            }
            Some(Err(e)) => Err(e),
            Some(Ok(Event::Descriptor { .. })) | None => Err(stopped()),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidOva(reason.into())
}

/// The worker ended without saying why (it panicked, or an error was taken already).
fn stopped() -> Error {
    invalid("reading tar: the reader stopped before the end of the archive")
}

impl AsyncRead for MemberReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.remaining == 0 || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.data.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    let n = (chunk.len() as u64).min(this.remaining);
                    this.remaining -= n;
                    this.chunk = chunk.slice(..n as usize);
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{:?}: the OVA reader stopped with {} bytes of it unread (it was left behind, or \
                             the reader failed)",
                            this.path, this.remaining
                        ),
                    )));
                }
            }
        }
    }
}

/// The worker: walks the tar, sends the descriptor, then each regular member's header and
/// data.
struct Worker {
    tar: TarReader<Bridge>,
    events: mpsc::Sender<Result<Event>>,
    handle: Handle,
}

impl Worker {
    /// `Ok` at the end of the archive or when no one listens any more.
    fn run(&mut self) -> Result<()> {
        let first = match self.tar.read_header() {
            Ok(Next::Member(m)) => m,
            Ok(Next::End | Next::Eof) => return Err(invalid("empty archive")),
            Err(e) => return Err(invalid(format!("not a tar archive: {e}"))),
        };
        let name = member_path(&first.name)?;
        if !name.to_ascii_lowercase().ends_with(".ovf") {
            return Err(invalid(format!(
                "first member {name:?} is not an .ovf descriptor"
            )));
        }
        let reading = |e: &dyn std::fmt::Display| invalid(format!("reading descriptor {name:?}: {e}"));
        let size = self.tar.enter(first).map_err(|e| reading(&e))?;
        if size > MAX_DESCRIPTOR {
            return Err(invalid(format!(
                "descriptor {name:?} is {size} bytes, over {MAX_DESCRIPTOR}"
            )));
        }
        let mut text = Vec::with_capacity(size as usize);
        self.tar.read_to_end(&mut text).map_err(|e| reading(&e))?;
        let text = String::from_utf8(text).map_err(|e| reading(&e))?;
        if !self.send(Event::Descriptor { name, text }) {
            return Ok(());
        }
        loop {
            let m = match self.tar.read_header() {
                Ok(Next::Member(m)) => m,
                Ok(Next::End | Next::Eof) => {
                    self.send(Event::End);
                    return Ok(());
                }
                Err(e) => return Err(invalid(format!("reading tar: {e}"))),
            };
            if m.entry_kind() != EntryKind::File {
                continue;
            }
            let path = member_path(&m.name)?;
            let size = self
                .tar
                .enter(m)
                .map_err(|e| invalid(format!("reading tar: {e}")))?;
            let (tx, data) = mpsc::channel(DEPTH);
            let cancel = CancellationToken::new();
            let member = Event::Member {
                path: path.clone(),
                size,
                data,
                cancel: cancel.clone(),
            };
            if !self.send(member) {
                return Ok(());
            }
            if let Err(e) = self.stream(&tx, &cancel) {
                let text = format!("reading {path}: {e}");
                self.hand(&tx, Err(e), &cancel);
                return Err(invalid(text));
            }
        }
    }

    /// Hands the current member's data to `tx`, until its end or until it is left behind
    /// (the rest is skipped by the next header read).
    fn stream(&mut self, tx: &mpsc::Sender<io::Result<Bytes>>, cancel: &CancellationToken) -> io::Result<()> {
        loop {
            let mut buf = BytesMut::zeroed(CHUNK);
            let mut n = 0;
            while n < CHUNK {
                match self.tar.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if !self.hand(tx, Ok(buf.freeze()), cancel) {
                return Ok(());
            }
        }
    }

    /// Hands `item` to a member's reader; `false` when the member was dropped or left
    /// behind.
    fn hand(
        &self,
        tx: &mpsc::Sender<io::Result<Bytes>>,
        item: io::Result<Bytes>,
        cancel: &CancellationToken,
    ) -> bool {
        self.handle.block_on(async {
            tokio::select! {
                biased;
                () = cancel.cancelled() => false,
                r = tx.send(item) => r.is_ok(),
            }
        })
    }

    /// `false` when no one listens any more.
    fn send(&self, event: Event) -> bool {
        self.events.blocking_send(Ok(event)).is_ok()
    }
}

/// The stream as a synchronous reader for the worker; a read stops when the reader and
/// every member are dropped.
struct Bridge {
    reader: Reader,
    handle: Handle,
    stop: CancellationToken,
}

impl Read for Bridge {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Self { reader, handle, stop } = self;
        handle.block_on(async {
            tokio::select! {
                r = reader.read(buf) => r,
                () = stop.cancelled() => Err(io::Error::other("the OVA reader was dropped")),
            }
        })
    }
}

/// A member's name without leading `./`; empty, absolute and `..` names are refused.
fn member_path(name: &str) -> Result<String> {
    let s = name.trim_start_matches("./").to_string();
    if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") {
        return Err(invalid(format!("unsafe member name {s:?}")));
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
