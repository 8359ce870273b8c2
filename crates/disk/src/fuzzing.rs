//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz, see `docs/fuzzing.md`): the
//! parsers that the public API reaches only through a network source. Not part of the API.
//!
//! Everything else is fuzzed through the public API: [`crate::import()`] from a file (every
//! format, layer and the tar/OVA reader), [`crate::tar::TarDisk`], [`crate::qcow2::Header`].

use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::task::{Context, Poll, Waker};

use crate::qcow2::{Qcow2Stream, resume_map};
use crate::source::Stats;
use crate::target::{Probe, Target, TargetSpec};
use crate::{Error, Result};

/// A resumed qcow2 import as an HTTP or S3 source runs it, with `image` in memory: the
/// mapping is rebuilt from the header cluster and the L1/L2 tables by ranged reads
/// (`qcow2::resume_map`), then the stream continues at `from` into a fresh file `target`
/// (at most `capacity` bytes; removed on failure). Returns the virtual size.
pub fn qcow2_resume(image: &[u8], from: u64, target: &Path, capacity: u64) -> Result<u64> {
    // As `import` does: the header cluster is a ranged read of at most 2 MiB.
    let head = &image[..image.len().min(2 << 20)];
    // A ranged read past the end of the object returns what there is.
    let read = |off: u64, len: u64| {
        let start = usize::try_from(off).unwrap_or(usize::MAX).min(image.len());
        let end = start
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
            .min(image.len());
        let bytes = image[start..end].to_vec();
        async move { Ok(bytes) }
    };
    let map = block_on(resume_map(head, from, read))?;
    let vs = map.header.virtual_size;
    let probe = Probe {
        block: false,
        capacity: Some(capacity),
    };
    probe.check(vs)?;
    let spec = TargetSpec {
        path: target.to_path_buf(),
        capacity: Some(capacity),
    };
    let mut t = Target::open(&spec, probe, Stats::quiet())?;
    let start = usize::try_from(map.from).unwrap_or(usize::MAX).min(image.len());
    let mut rest: &[u8] = &image[start..];
    let r: &mut dyn Read = &mut rest;
    match Qcow2Stream::resume(r, map, &mut t) {
        Ok(()) => {
            t.finish(vs)?;
            Ok(vs)
        }
        Err(e) => {
            t.abort();
            Err(e)
        }
    }
}

/// Polls a future whose awaits are all ready at once (the reads above are in memory).
fn block_on<F: Future<Output = Result<T>>, T>(f: F) -> Result<T> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    // Bounded: a future that is not ready after this many polls would wait for I/O.
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    Err(Error::invalid("qcow2", "the in-memory reads did not complete"))
}
