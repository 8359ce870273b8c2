//! Raw (and ISO) images: copied in large blocks; zero blocks become holes in the target.

use std::io::Read;

use crate::source::read_full;
use crate::target::Target;
use crate::{Error, Result};

/// Size of one read from the decoders.
const CHUNK: usize = 1 << 20;

/// Copies the stream to the target from offset `base` (0, or where a resumed import
/// continues); returns the image size. `expected` (when the size was announced) must match
/// exactly.
pub(crate) fn copy(r: &mut dyn Read, target: &mut Target, expected: Option<u64>, base: u64) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = base;
    loop {
        let n = read_full(r, &mut buf).map_err(|e| Error::io("reading the image", e))?;
        if n == 0 {
            break;
        }
        target.write_at(off, &buf[..n])?;
        off += n as u64;
        if n < buf.len() {
            break;
        }
    }
    match expected {
        Some(e) if e != off => Err(Error::invalid(
            "raw",
            format!("expected {e} bytes, got {off} (truncated source?)"),
        )),
        _ => Ok(off),
    }
}
