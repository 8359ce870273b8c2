//! The reader's side of a download: a queue bounded in bytes from the download task(s),
//! read as a blocking [`Read`] or a [`futures::Stream`].

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::sync::{Semaphore, mpsc};

/// A byte-bounded queue from the download task(s) to the reader.
pub(super) fn queue(budget: usize) -> (Queue, Body) {
    let (tx, rx) = mpsc::channel(1024);
    let sem = Arc::new(Semaphore::new(budget));
    (
        Queue {
            tx,
            budget: sem.clone(),
            max: budget,
        },
        Body {
            rx,
            cur: Bytes::new(),
            budget: sem,
            held: 0,
            max: budget,
        },
    )
}

/// The sending side of [`queue`].
pub(super) struct Queue {
    tx: mpsc::Sender<io::Result<Bytes>>,
    budget: Arc<Semaphore>,
    max: usize,
}

impl Queue {
    /// Queues `b` once the budget allows; false when the reader is gone.
    pub(super) async fn send(&self, b: Bytes) -> bool {
        let n = b.len().min(self.max) as u32;
        match self.budget.acquire_many(n).await {
            Ok(p) => p.forget(),
            Err(_) => return false,
        }
        self.tx.send(Ok(b)).await.is_ok()
    }

    pub(super) async fn fail(&self, e: io::Error) {
        let _ = self.tx.send(Err(e)).await;
    }
}

/// The bytes of a download, in order: a blocking [`Read`] (for a conversion thread) or a
/// [`futures::Stream`] of chunks. A failed download ends it with an I/O error holding the
/// [`FetchError`](super::FetchError) ([`FetchError::from_io`](super::FetchError::from_io)).
pub struct Body {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
    budget: Arc<Semaphore>,
    /// Budget taken by the last chunk handed out, given back when the next one is taken.
    held: usize,
    max: usize,
}

impl Body {
    fn release(&mut self) {
        if self.held > 0 {
            self.budget.add_permits(self.held);
            self.held = 0;
        }
    }

    fn took(&mut self, b: &Bytes) {
        self.held = b.len().min(self.max);
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            self.release();
            match self.rx.blocking_recv() {
                Some(Ok(b)) => {
                    self.took(&b);
                    self.cur = b;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

impl futures::Stream for Body {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.cur.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.cur))));
        }
        this.release();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                this.took(&b);
                Poll::Ready(Some(Ok(b)))
            }
            other => other,
        }
    }
}
