//! A tar holding one disk: the first regular file is streamed out; every member name is
//! checked (no absolute paths, no `..`), and a second non-empty regular file is an error.
//!
//! An **OVA** (a tar whose first file is an `.ovf` descriptor) is recognised: the OVF is
//! read (up to 4 MiB) and the disk it names — the file of its first `<Disk>`, else its
//! first `<File>` — is streamed; the manifest (`.mf`), certificate (`.cert`) and other
//! members are skipped, before and after it. A named file missing from the archive, a
//! reference outside it (a URL, an absolute path, `..`) or a disk split into chunks is an
//! error. Only that one disk is imported (others are reported in the log). Without a
//! usable reference, the first member that is not `.ovf`, `.mf` or `.cert` is the disk.
//!
//! ustar, GNU (long names, base-256 sizes for members over 8 GiB) and pax (`path`, `size`)
//! headers are understood. Nothing is ever extracted to the file system.

use std::io::{self, Read};

use crate::source::read_full;
use crate::{Error, Result};

const BLOCK: usize = 512;
/// Longest GNU long name or pax header accepted.
const MAX_META: u64 = 1 << 20;
/// Longest OVF descriptor accepted.
const MAX_OVF: u64 = 4 << 20;
/// Largest member size accepted (64 PiB, as the largest virtual size of any format).
const MAX_MEMBER: u64 = 1 << 56;

/// The disk member of a tar, readable as a stream.
pub struct TarDisk<R> {
    inner: R,
    name: String,
    size: u64,
    remaining: u64,
    /// Set for an OVA: other members are allowed after the disk.
    ova: bool,
}

/// One parsed header (after long-name and pax records were applied).
struct Member {
    name: String,
    kind: u8,
    size: u64,
}

impl<R: Read> TarDisk<R> {
    /// Reads headers up to the first regular file (for an OVA: up to its disk).
    pub fn open(mut inner: R) -> Result<Self> {
        let mut ova: Option<Option<String>> = None;
        let mut first = true;
        loop {
            let Some(m) = next_member(&mut inner)? else {
                return Err(match ova {
                    Some(Some(href)) => {
                        Error::invalid("ova", format!("the disk {href:?} named in the OVF is missing"))
                    }
                    Some(None) => Error::invalid("ova", "the archive holds no disk"),
                    None => Error::invalid("tar", "the archive holds no file"),
                });
            };
            if is_regular(m.kind) {
                let lower = m.name.to_ascii_lowercase();
                if first && lower.ends_with(".ovf") {
                    first = false;
                    let ovf = read_meta_limited(&mut inner, m.size, MAX_OVF, "OVF descriptor")?;
                    ova = Some(ovf_disk(&String::from_utf8_lossy(&ovf))?);
                    continue;
                }
                first = false;
                let wanted = match &ova {
                    None => true,
                    Some(Some(href)) => m.name == *href || m.name.rsplit('/').next() == Some(href.as_str()),
                    Some(None) => !is_ova_metadata(&lower),
                };
                if wanted {
                    return Ok(Self {
                        inner,
                        name: m.name,
                        size: m.size,
                        remaining: m.size,
                        ova: ova.is_some(),
                    });
                }
                skip(&mut inner, padded(m.size))?;
                continue;
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

    /// Whether the archive is an OVA (its disk was found through the OVF).
    pub fn is_ova(&self) -> bool {
        self.ova
    }

    /// Skips the rest of the disk and checks the rest of the archive.
    pub fn finish(mut self) -> Result<()> {
        let rest = self.remaining + (padded(self.size) - self.size);
        skip(&mut self.inner, rest)?;
        while let Some(m) = next_member(&mut self.inner)? {
            if self.ova {
                if is_regular(m.kind) && !is_ova_metadata(&m.name.to_ascii_lowercase()) {
                    tracing::warn!(disk = %self.name, other = %m.name, "the OVA holds another file; only the first disk is imported");
                }
            } else if is_regular(m.kind) && m.size > 0 {
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

/// OVA members that are not disks.
fn is_ova_metadata(lower: &str) -> bool {
    [".ovf", ".mf", ".cert"].iter().any(|x| lower.ends_with(x))
}

/// The file name of the OVF's first disk (`None`: the OVF names no file).
fn ovf_disk(ovf: &str) -> Result<Option<String>> {
    let mut files: Vec<(Option<String>, String, bool)> = Vec::new();
    let mut disk_ref: Option<String> = None;
    for (tag, attrs) in xml_tags(ovf) {
        let attr = |name: &str| attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        match tag {
            "File" => {
                if let Some(href) = attr("href") {
                    files.push((attr("id"), href, attr("chunkSize").is_some()));
                }
            }
            "Disk" if disk_ref.is_none() => disk_ref = attr("fileRef"),
            _ => {}
        }
    }
    let file = match &disk_ref {
        Some(r) => files.iter().find(|(id, _, _)| id.as_deref() == Some(r)),
        None => files.first(),
    };
    let Some((_, href, chunked)) = file else {
        return match disk_ref {
            Some(r) => Err(Error::invalid(
                "ova",
                format!("the OVF's disk refers to an unknown file {r:?}"),
            )),
            None => Ok(None),
        };
    };
    if href.contains("://") || href.starts_with('/') || href.split(['/', '\\']).any(|c| c == "..") {
        return Err(Error::refused(
            "ova",
            format!("the OVF's disk {href:?} is outside the archive"),
        ));
    }
    if *chunked {
        return Err(Error::Unsupported {
            format: "ova",
            reason: format!("the disk {href:?} is split into chunks"),
        });
    }
    Ok(Some(href.clone()))
}

/// Start tags of an XML document, as (local name, [(local attribute name, value)]).
/// Enough for OVF references; comments, processing instructions and end tags are skipped.
fn xml_tags(doc: &str) -> Vec<(&str, Vec<(String, String)>)> {
    let local = |n: &str| n.rsplit(':').next().unwrap_or(n).to_string();
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        if rest.starts_with("!--") {
            rest = rest.find("-->").map_or("", |j| &rest[j + 3..]);
            continue;
        }
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        rest = &rest[end..];
        if tag.starts_with(['/', '?', '!']) {
            continue;
        }
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let name = tag[..name_end].rsplit(':').next().unwrap_or("");
        let mut attrs = Vec::new();
        let mut a = &tag[name_end..];
        while let Some(eq) = a.find('=') {
            let key = a[..eq].trim();
            let v = a[eq + 1..].trim_start();
            let Some(q) = v.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                break;
            };
            let Some(close) = v[1..].find(q) else {
                break;
            };
            let value = v[1..1 + close]
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            attrs.push((local(key), value));
            a = &v[close + 2..];
        }
        out.push((name, attrs));
    }
    out
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
    read_meta_limited(r, size, MAX_META, "metadata record")
}

/// Reads a small member or record whole (with its padding), at most `max` bytes.
fn read_meta_limited(r: &mut impl Read, size: u64, max: u64, what: &str) -> Result<Vec<u8>> {
    if size > max {
        return Err(Error::invalid("tar", format!("{what} of {size} bytes")));
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
        let size = member_size(parse_size(&h[124..136])?)?;
        match kind {
            b'L' => long_name = Some(cstr(&read_meta(r, size)?)),
            b'K' => long_link = Some(cstr(&read_meta(r, size)?)),
            b'x' => {
                for (k, v) in parse_pax(&read_meta(r, size)?)? {
                    match k.as_str() {
                        "path" => pax_path = Some(v),
                        "size" => {
                            pax_size = Some(member_size(v.parse().map_err(|_| {
                                Error::invalid("tar", format!("pax size {v:?} is not a number"))
                            })?)?)
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

/// Refuses member sizes no archive can hold (they would overflow the padding arithmetic).
fn member_size(size: u64) -> Result<u64> {
    if size > MAX_MEMBER {
        return Err(Error::invalid(
            "tar",
            format!("member size {size} is out of range"),
        ));
    }
    Ok(size)
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

    const OVF: &str = r#"<?xml version="1.0"?>
<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <!-- <File ovf:href="commented.vmdk" ovf:id="c"/> -->
    <ovf:File ovf:href="other.iso" ovf:id="file0"/>
    <File ovf:href="disk-1.vmdk" ovf:id="file1" ovf:size="100"/>
  </References>
  <DiskSection><Disk ovf:capacity="8" ovf:diskId="vmdisk1" ovf:fileRef="file1"/></DiskSection>
</Envelope>"#;

    #[test]
    fn ova_disk_named_in_the_ovf() {
        assert_eq!(ovf_disk(OVF).unwrap().as_deref(), Some("disk-1.vmdk"));
        let a = archive(&[
            ("x.ovf", b'0', OVF.as_bytes()),
            ("x.mf", b'0', b"SHA256(disk-1.vmdk)= 00\n"),
            ("other.iso", b'0', b"iso"),
            ("disk-1.vmdk", b'0', b"disk"),
            ("x.cert", b'0', b"cert"),
        ]);
        let mut t = TarDisk::open(&a[..]).unwrap();
        assert!(t.is_ova());
        assert_eq!(t.name(), "disk-1.vmdk");
        let mut s = String::new();
        t.read_to_string(&mut s).unwrap();
        assert_eq!(s, "disk");
        t.finish().unwrap();
        // Without references: the first member that is not OVA metadata.
        let a = archive(&[
            ("x.ovf", b'0', b"<Envelope/>"),
            ("x.mf", b'0', b"m"),
            ("d.img", b'0', b"d"),
        ]);
        assert_eq!(TarDisk::open(&a[..]).unwrap().name(), "d.img");
        // A missing disk, a reference outside the archive.
        let a = archive(&[("x.ovf", b'0', OVF.as_bytes()), ("x.mf", b'0', b"m")]);
        let e = TarDisk::open(&a[..]).err().unwrap();
        assert!(e.to_string().contains("disk-1.vmdk"), "{e}");
        let evil = OVF.replace("disk-1.vmdk", "../../etc/shadow");
        assert_eq!(ovf_disk(&evil).unwrap_err().label(), "refused");
        let url = OVF.replace("disk-1.vmdk", "http://example.com/d.vmdk");
        assert_eq!(ovf_disk(&url).unwrap_err().label(), "refused");
    }

    #[test]
    fn base256_size() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..12].copy_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(parse_size(&f).unwrap(), 10 << 30);
    }

    #[test]
    fn absurd_member_sizes_are_invalid() {
        // Mutation test: a base-256 or pax size near u64::MAX used to overflow padding it
        // to a block.
        let mut h = header("disk.img", b'0', 0);
        h[124..136].fill(0);
        h[124] = 0x80;
        h[128..136].copy_from_slice(&u64::MAX.to_be_bytes());
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let e = TarDisk::open(&h[..]).err().unwrap();
        assert_eq!(e.label(), "invalid_image", "{e}");
        assert!(e.to_string().contains("member size"), "{e}");

        let pax = format!("29 size={}\n", u64::MAX);
        let a = archive(&[("pax", b'x', pax.as_bytes()), ("disk.img", b'0', b"x")]);
        let e = TarDisk::open(&a[..]).err().unwrap();
        assert!(e.to_string().contains("member size"), "{e}");
    }

    #[test]
    fn pax_records() {
        let r = parse_pax(b"19 path=a/disk.img\n15 size=123456\n").unwrap();
        assert_eq!(r[0], ("path".into(), "a/disk.img".into()));
        assert_eq!(r[1].1, "123456");
    }
}
