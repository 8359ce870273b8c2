//! Raw (and ISO) images: copied in large blocks; zero blocks become holes in the target.

use std::io::Read;

use crate::seq::with_pipe;
use crate::source::read_full;
use crate::target::Target;
use crate::{Error, Result};

/// Size of one read from the decoders, and of a piece handed to the writing thread (small
/// enough to be in the CPU cache still when it is written).
const PIECE: usize = 256 << 10;

/// Copies the stream to the target from offset `base` (0, or where a resumed import
/// continues); returns the image size. `expected` (when the size was announced) must match
/// exactly.
pub(crate) fn copy(r: &mut dyn Read, target: &mut Target, expected: Option<u64>, base: u64) -> Result<u64> {
    // Read here, written on a second thread (reads and writes overlap).
    let off = with_pipe(target, PIECE as u64, |pipe| {
        let mut off = base;
        loop {
            let mut piece = pipe.buffer();
            piece.resize(PIECE, 0);
            let n = read_full(r, &mut piece).map_err(|e| Error::io("reading the image", e))?;
            if n == 0 {
                break;
            }
            piece.truncate(n);
            if !pipe.write(off, piece) {
                break;
            }
            off += n as u64;
            if n < PIECE {
                break;
            }
        }
        Ok(off)
    })?;
    match expected {
        Some(e) if e != off => Err(Error::invalid(
            "raw",
            format!("expected {e} bytes, got {off} (truncated source?)"),
        )),
        _ => Ok(off),
    }
}
