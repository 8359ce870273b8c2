//! Tar headers: blocks, long names, numbers and checksums, up to one [`Member`].

use std::io::{self, Read};

use super::pax::Pax;
use super::sparse::gnu_sparse_map;
use super::{BLOCK, MAX_MEMBER, MAX_META, Member, Next, Result, TarError, read_full};

pub(super) fn is_regular(kind: u8) -> bool {
    matches!(kind, b'0' | 0 | b'7' | b'S')
}

pub(super) fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

pub(super) fn skip(r: &mut impl Read, n: u64) -> Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink()).map_err(TarError::from_io)?;
    if copied < n {
        return Err(TarError::invalid("truncated archive"));
    }
    Ok(())
}

fn read_block(r: &mut impl Read) -> Result<Option<[u8; BLOCK]>> {
    let mut b = [0u8; BLOCK];
    let n = read_full(r, &mut b).map_err(TarError::from_io)?;
    match n {
        0 => Ok(None),
        BLOCK => Ok(Some(b)),
        _ => Err(TarError::invalid("truncated header")),
    }
}

fn read_meta(r: &mut impl Read, size: u64) -> Result<Vec<u8>> {
    read_meta_limited(r, size, MAX_META, "metadata record")
}

/// Reads a small member or record whole (with its padding), at most `max` bytes.
pub(super) fn read_meta_limited(r: &mut impl Read, size: u64, max: u64, what: &str) -> Result<Vec<u8>> {
    if size > max {
        return Err(TarError::invalid(format!("{what} of {size} bytes")));
    }
    let mut v = vec![0u8; padded(size) as usize];
    let n = read_full(r, &mut v).map_err(TarError::from_io)?;
    if n < v.len() {
        return Err(TarError::invalid("truncated metadata record"));
    }
    v.truncate(size as usize);
    Ok(v)
}

/// The next member, names as stored (unchecked).
pub(super) fn read_member(r: &mut impl Read) -> Result<Next> {
    let mut long_name: Option<String> = None;
    let mut long_link: Option<String> = None;
    let mut pax = Pax::default();
    loop {
        let Some(h) = read_block(r)? else {
            return Ok(Next::Eof);
        };
        if h.iter().all(|b| *b == 0) {
            return Ok(Next::End);
        }
        verify_checksum(&h)?;
        let kind = h[156];
        let size = member_size(parse_size(&h[124..136])?)?;
        match kind {
            b'L' => long_name = Some(cstr(&read_meta(r, size)?)),
            b'K' => long_link = Some(cstr(&read_meta(r, size)?)),
            b'x' => pax.read(r, size)?,
            b'g' => {
                read_meta(r, size)?;
            }
            _ => {
                let ustar = &h[257..263] == b"ustar\0";
                let mut name = cstr(&h[0..100]);
                if ustar && h[345] != 0 {
                    name = format!("{}/{}", cstr(&h[345..500]), name);
                }
                let name = pax
                    .sparse_name
                    .take()
                    .or(pax.path.take())
                    .or(long_name)
                    .unwrap_or(name);
                let link = pax
                    .linkpath
                    .take()
                    .or(long_link)
                    .unwrap_or_else(|| cstr(&h[157..257]));
                let size = if matches!(kind, b'1' | b'2' | b'5') {
                    0
                } else {
                    pax.size.unwrap_or(size)
                };
                // A GNU sparse member's extended sparse headers come before its data.
                let sparse = match kind {
                    b'S' => Some(gnu_sparse_map(r, &h, &name)?),
                    k if is_regular(k) => pax.sparse(&name)?,
                    _ => None,
                };
                let mode = parse_octal(&h[100..108]).map_or(0, |m| (m & 0o7777) as u32);
                let mtime = pax
                    .mtime
                    .or_else(|| parse_size(&h[136..148]).ok().and_then(|t| i64::try_from(t).ok()));
                return Ok(Next::Member(Member {
                    name,
                    kind,
                    size,
                    sparse,
                    mode,
                    mtime,
                    link,
                }));
            }
        }
    }
}

/// Refuses member sizes no archive can hold (they would overflow the padding arithmetic).
pub(super) fn member_size(size: u64) -> Result<u64> {
    if size > MAX_MEMBER {
        return Err(TarError::invalid(format!("member size {size} is out of range")));
    }
    Ok(size)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Refuses absolute names and `..` components.
pub(super) fn check_name(name: &str) -> Result<()> {
    if name.starts_with('/') || name.split(['/', '\\']).any(|c| c == "..") {
        return Err(TarError::Refused(format!(
            "member name {name:?} escapes the archive (absolute path or `..`)"
        )));
    }
    Ok(())
}

fn verify_checksum(h: &[u8; BLOCK]) -> Result<()> {
    match checksum_holds(h) {
        None => Err(TarError::invalid("bad header checksum field")),
        Some(false) => Err(TarError::invalid("header checksum mismatch")),
        Some(true) => Ok(()),
    }
}

/// Whether a 512-byte tar header's checksum field holds the sum of its bytes (the field
/// counted as spaces; unsigned, or signed as some old tars summed); `None` when the field
/// is not octal. The one check of every tar header ido reads (this reader's, ido-disk's
/// registry layers, and telling a pre-POSIX tar from raw data).
pub fn checksum_holds(h: &[u8]) -> Option<bool> {
    let h = h.get(..BLOCK)?;
    let field = &h[148..156];
    if !field.iter().any(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    let stored = parse_octal(field)?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    Some(stored == unsigned || stored as i64 == signed)
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|c| *c == b' ')
        .take_while(|c| (b'0'..=b'7').contains(c))
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// Octal, or GNU base-256 (high bit of the first byte set) for sizes of 8 GiB and more.
pub(super) fn parse_size(f: &[u8]) -> Result<u64> {
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 || f[1..f.len() - 8].iter().any(|b| *b != 0) {
            return Err(TarError::invalid("member size out of range"));
        }
        let mut v = 0u64;
        for b in &f[f.len() - 8..] {
            v = (v << 8) | u64::from(*b);
        }
        return Ok(v);
    }
    parse_octal(f).ok_or_else(|| TarError::invalid("bad size field"))
}
