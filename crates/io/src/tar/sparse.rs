//! Sparse members: their maps (GNU headers, PAX records), and [`Expand`], which reads the
//! holes as zeros.

use std::io::Read;

use super::header::{member_size, parse_size};
use super::{BLOCK, MAX_SPARSE_ENTRIES, Result, TarError, read_full};

/// How a sparse member's data is laid out.
#[derive(Debug)]
pub(super) enum Sparse {
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
pub(super) fn gnu_sparse_map(r: &mut impl Read, h: &[u8; BLOCK], name: &str) -> Result<Sparse> {
    let real_size = parse_size(&h[483..495])
        .map_err(|_| TarError::invalid(format!("tar member {name:?}: bad real size field")))?;
    let real_size = member_size(real_size)?;
    let mut entries = Vec::new();
    let mut more = push_slots(&h[386..482], name, &mut entries)?;
    let mut extended = h[482] != 0;
    while more && extended {
        let mut b = [0u8; BLOCK];
        if read_full(r, &mut b).map_err(TarError::from_io)? < BLOCK {
            return Err(TarError::invalid(format!(
                "truncated: the extended sparse headers of tar member {name:?} are cut short"
            )));
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
            return Err(TarError::invalid(format!(
                "the sparse map of tar member {name:?} has more than {MAX_SPARSE_ENTRIES} entries"
            )));
        }
        let field = |b: &[u8], what: &str| {
            parse_size(b).map_err(|_| {
                TarError::invalid(format!(
                    "tar member {name:?}: sparse map entry {i}: bad {what} field"
                ))
            })
        };
        entries.push((field(&f[..12], "offset")?, field(&f[12..], "length")?));
    }
    Ok(true)
}

/// A sparse member being read.
pub(super) struct Expand {
    /// (offset, length) of each data region: in order, apart, within the real size.
    pub(super) entries: Vec<(u64, u64)>,
    /// The entry being read.
    pub(super) next: usize,
    /// Bytes of the member read so far, holes included.
    pub(super) pos: u64,
    pub(super) real_size: u64,
}

impl Expand {
    /// Checks the map of member `name` against its real size and the bytes it stores.
    pub(super) fn new(name: &str, real_size: u64, stored: u64, entries: Vec<(u64, u64)>) -> Result<Self> {
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
                return Err(TarError::invalid(format!(
                    "{} starts before the previous entry ends (at {end}): the entries overlap or are out of order",
                    entry()
                )));
            }
            end = match off.checked_add(len) {
                Some(e) if e <= real_size => e,
                _ => {
                    return Err(TarError::invalid(format!(
                        "{} ends past the member's size of {real_size} bytes",
                        entry()
                    )));
                }
            };
            data += len;
        }
        if data != stored {
            return Err(TarError::invalid(format!(
                "tar member {name:?}: its sparse map places {data} bytes of data but the archive stores {stored}"
            )));
        }
        Ok(Self {
            entries,
            next: 0,
            pos: 0,
            real_size,
        })
    }
}
