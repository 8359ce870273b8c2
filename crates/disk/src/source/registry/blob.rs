//! One layer blob: fetched with resumption at a cut, its digest checked, read as a
//! blocking reader.

use std::io::{self, Read};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use ido_oci::media::Descriptor;
use oci_client::Reference;
use oci_client::client::BlobResponse;
use sha2::Digest as _;
use tokio::sync::mpsc;

use super::*;
use crate::{Error, Result};

/// Streams one blob into `tx`, resuming a cut transfer at its offset, and checks its
/// digest at the end (an error on `tx` if it does not match).
pub(super) async fn fetch_blob(
    ctx: Ctx,
    image: Reference,
    layer: Descriptor,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    if let Err(e) = fetch_blob_inner(&ctx, &image, &layer, &tx).await {
        let _ = tx.send(Err(e.into_io())).await;
    }
}

pub(super) async fn fetch_blob_inner(
    ctx: &Ctx,
    image: &Reference,
    layer: &Descriptor,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<()> {
    let (alg, want) = layer.digest.split_once(':').unwrap_or_default();
    if alg != "sha256" {
        return Err(Error::Unsupported {
            format: "oci",
            reason: format!("{}: layer digest {} (only sha256)", ctx.shown, layer.digest),
        });
    }
    let what = format!("layer {}", layer.digest);
    let mut got = Received::default();
    let mut failures = 0u32;
    loop {
        let last = match ctx
            .client
            .pull_blob_stream_partial(image, layer.digest.as_str(), got.offset, None)
            .await
        {
            Ok(resp) => {
                let (stream, skip) = match resp {
                    BlobResponse::Partial(s) => (s.stream, 0),
                    // The registry ignored Range: skip what was received.
                    BlobResponse::Full(s) => (s.stream, got.offset),
                };
                if got.offset > 0 {
                    tracing::info!(image = %ctx.shown, %what, offset = got.offset, "resumed layer download");
                }
                let before = got.offset;
                let ended = got.receive(stream, skip, tx).await;
                if got.offset > before {
                    failures = 0;
                }
                match ended {
                    Ended::Gone => return Ok(()), // the walker is gone
                    Ended::Failed(e) => format!("{what}: transfer cut at byte {}: {e}", got.offset),
                    Ended::End if got.offset < layer.size => {
                        format!("{what}: body ended at {} of {} bytes", got.offset, layer.size)
                    }
                    Ended::End => {
                        let got = hex::encode(got.hasher.finalize());
                        if got != want {
                            return Err(Error::invalid(
                                "oci",
                                format!("{}: {what} has digest sha256:{got}", ctx.shown),
                            ));
                        }
                        return Ok(());
                    }
                }
            }
            Err(e) => match ctx.error(&what, e) {
                Error::RetriesExhausted { last, .. } => last,
                other => return Err(other),
            },
        };
        failures += 1;
        if failures >= ctx.retry.attempts {
            return Err(Error::RetriesExhausted {
                url: ctx.shown.clone(),
                attempts: failures,
                last,
            });
        }
        let wait = ctx.retry.backoff(failures);
        tracing::warn!(image = %ctx.shown, offset = got.offset, attempt = failures, ?wait, "{last}; retrying");
        tokio::time::sleep(wait).await;
    }
}

/// The bytes of a blob passed on so far: how many, and their hash.
#[derive(Default)]
struct Received {
    offset: u64,
    hasher: sha2::Sha256,
}

/// How one response's body ended.
enum Ended {
    /// At its end.
    End,
    /// The receiver (the layer's walker) is gone.
    Gone,
    /// With an error.
    Failed(io::Error),
}

impl Received {
    /// Passes one response's body on to `tx`, its first `skip` bytes dropped (passed on
    /// before), counting and hashing what goes.
    async fn receive(
        &mut self,
        mut stream: BoxStream<'static, io::Result<Bytes>>,
        mut skip: u64,
        tx: &mpsc::Sender<io::Result<Bytes>>,
    ) -> Ended {
        loop {
            match stream.next().await {
                Some(Ok(mut b)) => {
                    if skip > 0 {
                        let k = skip.min(b.len() as u64) as usize;
                        b = b.slice(k..);
                        skip -= k as u64;
                    }
                    if b.is_empty() {
                        continue;
                    }
                    self.offset += b.len() as u64;
                    self.hasher.update(&b);
                    if tx.send(Ok(b)).await.is_err() {
                        return Ended::Gone;
                    }
                }
                Some(Err(e)) => return Ended::Failed(e),
                None => return Ended::End,
            }
        }
    }
}

/// The bytes of one blob as a blocking reader.
pub(super) struct BlobReader {
    pub(super) rx: mpsc::Receiver<io::Result<Bytes>>,
    pub(super) cur: Bytes,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}
