//! A tar holding one disk: the first regular file is streamed out; every member name is
//! checked (no absolute paths, no `..`), and a second non-empty regular file is an error.
//!
//! ustar, GNU (long names, base-256 sizes for members over 8 GiB) and pax (`path`, `size`)
//! headers are understood. Nothing is ever extracted to the file system.

use std::io::{self, Read};

use crate::source::read_full;
use crate::{Error, Result};

const BLOCK: usize = 512;
/// Longest GNU long name or pax header accepted.
const MAX_META: u64 = 1 << 20;

/// The disk member of a tar, readable as a stream.
pub struct TarDisk<R> {
    inner: R,
    name: String,
    size: u64,
    remaining: u64,
}

/// One parsed header (after long-name and pax records were applied).
struct Member {
    name: String,
    kind: u8,
    size: u64,
}

impl<R: Read> TarDisk<R> {
    /// Reads headers up to the first regular file.
    pub fn open(mut inner: R) -> Result<Self> {
        loop {
            let Some(m) = next_member(&mut inner)? else {
                return Err(Error::invalid("tar", "the archive holds no file"));
            };
            if is_regular(m.kind) {
                return Ok(Self {
                    inner,
                    name: m.name,
                    size: m.size,
                    remaining: m.size,
                });
            }
            if m.kind == b'S' {
                return Err(Error::Unsupported {
                    format: "tar",
                    reason: format!("{:?} is a GNU sparse member", m.name),
                });
            }
            skip(&mut inner, padded(m.size))?;
        }
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Skips the rest of the disk and checks the rest of the archive.
    pub fn finish(mut self) -> Result<()> {
        let rest = self.remaining + (padded(self.size) - self.size);
        skip(&mut self.inner, rest)?;
        while let Some(m) = next_member(&mut self.inner)? {
            if is_regular(m.kind) && m.size > 0 {
                return Err(Error::invalid(
                    "tar",
                    format!(
                        "it holds more than one file ({:?} and {:?}); expected exactly one disk",
                        self.name, m.name
                    ),
                ));
            }
            skip(&mut self.inner, padded(m.size))?;
        }
        Ok(())
    }
}

impl<R: Read> Read for TarDisk<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(Error::invalid(
                "tar",
                format!("truncated: {:?} ends {} bytes early", self.name, self.remaining),
            )
            .into_io());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn is_regular(kind: u8) -> bool {
    matches!(kind, b'0' | 0 | b'7')
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn skip(r: &mut impl Read, n: u64) -> Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink()).map_err(|e| Error::io("reading tar", e))?;
    if copied < n {
        return Err(Error::invalid("tar", "truncated archive"));
    }
    Ok(())
}

fn read_block(r: &mut impl Read) -> Result<Option<[u8; BLOCK]>> {
    let mut b = [0u8; BLOCK];
    let n = read_full(r, &mut b).map_err(|e| Error::io("reading tar", e))?;
    match n {
        0 => Ok(None),
        BLOCK => Ok(Some(b)),
        _ => Err(Error::invalid("tar", "truncated header")),
    }
}

fn read_meta(r: &mut impl Read, size: u64) -> Result<Vec<u8>> {
    if size > MAX_META {
        return Err(Error::invalid("tar", format!("metadata record of {size} bytes")));
    }
    let mut v = vec![0u8; padded(size) as usize];
    let n = read_full(r, &mut v).map_err(|e| Error::io("reading tar", e))?;
    if n < v.len() {
        return Err(Error::invalid("tar", "truncated metadata record"));
    }
    v.truncate(size as usize);
    Ok(v)
}

/// The next member (`None` at the end-of-archive marker or at the end of the input).
fn next_member(r: &mut impl Read) -> Result<Option<Member>> {
    let mut long_name: Option<String> = None;
    let mut long_link: Option<String> = None;
    let mut pax_path: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    loop {
        let Some(h) = read_block(r)? else {
            return Ok(None);
        };
        if h.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        verify_checksum(&h)?;
        let kind = h[156];
        let size = parse_size(&h[124..136])?;
        match kind {
            b'L' => long_name = Some(cstr(&read_meta(r, size)?)),
            b'K' => long_link = Some(cstr(&read_meta(r, size)?)),
            b'x' => {
                for (k, v) in parse_pax(&read_meta(r, size)?)? {
                    match k.as_str() {
                        "path" => pax_path = Some(v),
                        "size" => {
                            pax_size = Some(v.parse().map_err(|_| {
                                Error::invalid("tar", format!("pax size {v:?} is not a number"))
                            })?)
                        }
                        _ => {}
                    }
                }
            }
            b'g' => {
                read_meta(r, size)?;
            }
            _ => {
                let ustar = &h[257..263] == b"ustar\0";
                let mut name = cstr(&h[0..100]);
                if ustar && h[345] != 0 {
                    name = format!("{}/{}", cstr(&h[345..500]), name);
                }
                let name = pax_path.or(long_name).unwrap_or(name);
                let link = long_link.unwrap_or_else(|| cstr(&h[157..257]));
                check_name(&name)?;
                if matches!(kind, b'1' | b'2') {
                    check_name(&link)?;
                }
                let size = if matches!(kind, b'1' | b'2' | b'5') {
                    0
                } else {
                    pax_size.unwrap_or(size)
                };
                return Ok(Some(Member { name, kind, size }));
            }
        }
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Refuses absolute names and `..` components.
fn check_name(name: &str) -> Result<()> {
    if name.starts_with('/') || name.split(['/', '\\']).any(|c| c == "..") {
        return Err(Error::refused(
            "tar",
            format!("member name {name:?} escapes the archive (absolute path or `..`)"),
        ));
    }
    Ok(())
}

fn verify_checksum(h: &[u8; BLOCK]) -> Result<()> {
    let stored =
        parse_octal(&h[148..156]).ok_or_else(|| Error::invalid("tar", "bad header checksum field"))?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && stored as i64 != signed {
        return Err(Error::invalid("tar", "header checksum mismatch"));
    }
    Ok(())
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
fn parse_size(f: &[u8]) -> Result<u64> {
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 || f[1..f.len() - 8].iter().any(|b| *b != 0) {
            return Err(Error::invalid("tar", "member size out of range"));
        }
        let mut v = 0u64;
        for b in &f[f.len() - 8..] {
            v = (v << 8) | u64::from(*b);
        }
        return Ok(v);
    }
    parse_octal(f).ok_or_else(|| Error::invalid("tar", "bad size field"))
}

/// pax records: `LEN KEY=VALUE\n`.
fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let bad = || Error::invalid("tar", "malformed pax header");
    while !data.is_empty() {
        let sp = data.iter().position(|c| *c == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() {
            return Err(bad());
        }
        let rec = &data[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        let eq = rec.iter().position(|c| *c == b'=').ok_or_else(bad)?;
        out.push((
            String::from_utf8_lossy(&rec[..eq]).into_owned(),
            String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
        ));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ustar header.
    pub(crate) fn header(name: &str, kind: u8, size: u64) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive(members: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, kind, data) in members {
            v.extend_from_slice(&header(name, *kind, data.len() as u64));
            v.extend_from_slice(data);
            v.resize(padded(v.len() as u64) as usize, 0);
        }
        v.extend_from_slice(&[0u8; 1024]);
        v
    }

    #[test]
    fn reads_the_one_disk() {
        let a = archive(&[("dir/", b'5', b""), ("dir/disk.img", b'0', b"hello")]);
        let mut t = TarDisk::open(&a[..]).unwrap();
        assert_eq!((t.name(), t.size()), ("dir/disk.img", 5));
        let mut s = String::new();
        t.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        t.finish().unwrap();
    }

    #[test]
    fn refuses_traversal_and_second_files() {
        let a = archive(&[("../../etc/passwd", b'0', b"x")]);
        assert_eq!(TarDisk::open(&a[..]).err().unwrap().label(), "refused");
        let a = archive(&[("link", b'2', b"")]);
        assert!(TarDisk::open(&a[..]).is_err()); // no regular file
        let a = archive(&[("a.img", b'0', b"a"), ("b.img", b'0', b"b")]);
        let mut t = TarDisk::open(&a[..]).unwrap();
        io::copy(&mut t, &mut io::sink()).unwrap();
        assert_eq!(t.finish().unwrap_err().label(), "invalid_image");
    }

    #[test]
    fn base256_size() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..12].copy_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(parse_size(&f).unwrap(), 10 << 30);
    }

    #[test]
    fn pax_records() {
        let r = parse_pax(b"19 path=a/disk.img\n15 size=123456\n").unwrap();
        assert_eq!(r[0], ("path".into(), "a/disk.img".into()));
        assert_eq!(r[1].1, "123456");
    }
}
