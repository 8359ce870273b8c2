//! Parallel ranged GETs of a large object, delivered in order.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderValue;

use super::body::Queue;
use super::request::{Conn, Fetch, Response, Sink};
use super::{FetchError, SLICE};

/// How a parallel download is cut.
pub(super) struct Plan {
    /// Where the download starts (0, or a resumed download's offset).
    pub(super) start: u64,
    pub(super) total: u64,
    pub(super) chunk: u64,
    pub(super) connections: usize,
    pub(super) validator: Option<HeaderValue>,
}

/// Parallel ranged GETs: chunk `i` is bytes `[start + i·chunk, start + (i+1)·chunk)`; up to
/// `connections` chunks are fetched at once, each into its own buffer, and handed to the
/// reader in order. The first response (a plain GET, or a resumed download's ranged one)
/// serves chunk 0. Memory stays bounded: at most `connections` chunk buffers are being
/// filled, plus the one the reader is consuming. Each chunk retries and resumes on its own
/// (`Range: bytes=<cut>-<end>` with `If-Range`), and every response is checked against the
/// first one's validator and length.
pub(super) async fn fetch_parallel(
    conn: Arc<Conn>,
    plan: Plan,
    first: Response,
    tx: &Queue,
) -> Result<(), FetchError> {
    let count = (plan.total - plan.start).div_ceil(plan.chunk);
    let mut tasks = Tasks(VecDeque::new());
    let mut first = Some(first);
    let mut next = 0u64;
    // Chunk buffers are recycled once the reader has dropped every slice of them: the
    // allocator never sees a stream of fresh multi-MiB buffers (which it would serve from
    // its heaps and fragment), so memory stays flat.
    let mut pool: Vec<BytesMut> = Vec::new();
    let mut lent: VecDeque<Bytes> = VecDeque::new();
    let spawn = |i: u64, body: Option<Response>, mut buf: BytesMut| {
        let start = plan.start + i * plan.chunk;
        let end = (start + plan.chunk).min(plan.total);
        let mut f = Fetch::new(conn.clone(), start, Some(end));
        f.total = Some(plan.total);
        f.validator = plan.validator.clone();
        f.ranges = true;
        buf.clear();
        buf.reserve((end - start) as usize);
        tokio::spawn(async move {
            let body = match body {
                Some(b) => Some(b),
                None => f.request().await?,
            };
            f.run(body, &mut Sink::Buffer(&mut buf)).await?;
            Ok(buf.freeze())
        })
    };
    while next < count || !tasks.0.is_empty() {
        while tasks.0.len() < plan.connections && next < count {
            // Take back the buffers the reader is done with.
            for _ in 0..lent.len() {
                let b = lent.pop_front().expect("counted");
                match b.try_into_mut() {
                    Ok(m) => pool.push(m),
                    Err(b) => lent.push_back(b),
                }
            }
            let buf = pool.pop().unwrap_or_default();
            tasks.0.push_back(spawn(next, first.take(), buf));
            next += 1;
        }
        let head = tasks.0.pop_front().expect("a task is pending");
        let data: Bytes = head.await.map_err(|e| FetchError::Task {
            url: conn.shown.clone(),
            reason: e.to_string(),
        })??;
        let mut off = 0;
        while off < data.len() {
            let n = SLICE.min(data.len() - off);
            if !tx.send(data.slice(off..off + n)).await {
                return Ok(()); // the reader is gone (it failed, or is done)
            }
            off += n;
        }
        lent.push_back(data);
    }
    Ok(())
}

/// Pending chunk downloads, aborted when dropped (an error or a reader gone).
struct Tasks(VecDeque<tokio::task::JoinHandle<Result<Bytes, FetchError>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
