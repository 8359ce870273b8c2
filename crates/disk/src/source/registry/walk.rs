//! A layer's tar walked in its own thread: the disk file found under `disk/`, whiteouts of
//! higher layers honoured, the file streamed out as the source.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read};

use tokio::sync::oneshot;

use super::*;
use crate::{Error, Result};

/// What a layer holds for the import.
pub(super) enum Found {
    /// The disk file (its bytes follow on the data channel).
    Disk { name: String, size: u64 },
    /// No disk; what the layer hides of the layers below.
    Nothing(Hidden),
}

/// What higher layers hide under `disk/`.
#[derive(Clone, Debug, Default)]
pub(super) struct Hidden {
    /// Names under `disk/` removed by whiteouts.
    pub(super) names: HashSet<String>,
    /// The whole directory is hidden (opaque whiteout, `.wh.disk`, or `disk` replaced).
    pub(super) opaque: bool,
}

/// Walks one layer's tar in its own thread.
pub(super) struct Walker {
    pub(super) blob: BlobReader,
    pub(super) media_type: String,
    pub(super) hidden: Hidden,
    pub(super) shown: String,
    pub(super) decompress: DecompressOptions,
}

type DataTx = std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>;

impl Walker {
    pub(super) fn run(self, found: oneshot::Sender<Result<Found>>, data: DataTx) {
        let mut found = Some(found);
        let r = self.walk(&mut found, &data);
        match (r, found) {
            (Ok(h), Some(f)) => {
                let _ = f.send(Ok(Found::Nothing(h)));
            }
            (Err(e), Some(f)) => {
                let _ = f.send(Err(e));
            }
            (Ok(_), None) => {}
            (Err(e), None) => {
                let _ = data.send(Err(e.into_io()));
            }
        }
    }

    fn walk(self, found: &mut Option<oneshot::Sender<Result<Found>>>, data: &DataTx) -> Result<Hidden> {
        let shown = self.shown.clone();
        let mut raw = BufReader::with_capacity(256 << 10, self.blob);
        let head = raw
            .fill_buf()
            .map_err(|e| Error::io(format!("reading {shown}"), e))?;
        let compression = if head.starts_with(&[0x1f, 0x8b]) || self.media_type.ends_with("gzip") {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || self.media_type.ends_with("zstd") {
            Some(Compression::Zstd)
        } else {
            None
        };
        let mut r: Box<dyn Read + Send> = match compression {
            Some(c) => decoder(c, Box::new(raw), &self.decompress)
                .map_err(|e| Error::io(format!("starting the {} decoder for {shown}", c.name()), e))?,
            None => Box::new(raw),
        };
        let mut hides = Hidden::default();
        let mut disk: Option<String> = None;
        let ctx = |e| Error::io(format!("reading {shown}"), e);
        while let Some(m) = next_member(&mut r, &shown)? {
            let name = normalize(&m.name);
            if name == ".wh.disk" || (name == "disk" && m.kind != b'5') {
                hides.opaque = true;
            }
            let Some(inner) = name.strip_prefix("disk/").filter(|n| !n.is_empty()) else {
                skip(&mut r, padded(m.size)).map_err(ctx)?;
                continue;
            };
            if inner.split('/').any(|c| c == "..") {
                return Err(Error::refused(
                    "containerDisk",
                    format!("{shown}: unsafe name {:?}", m.name),
                ));
            }
            if inner == ".wh..wh..opq" {
                hides.opaque = true;
            } else if let Some(gone) = inner.strip_prefix(".wh.") {
                hides.names.insert(gone.to_string());
            } else if !self.hidden.opaque && !self.hidden.names.contains(inner) && m.kind != b'5' {
                if !matches!(m.kind, b'0' | 0 | b'7') {
                    return Err(Error::Unsupported {
                        format: "containerDisk",
                        reason: format!(
                            "{shown}: {name} is not a regular file (tar type {:?})",
                            m.kind as char
                        ),
                    });
                }
                if let Some(first) = &disk {
                    return Err(Error::refused(
                        "containerDisk",
                        format!(
                            "{shown}: more than one file under /disk/ ({first}, {name}): which one is the disk is ambiguous"
                        ),
                    ));
                }
                disk = Some(name.clone());
                if let Some(f) = found.take() {
                    let _ = f.send(Ok(Found::Disk {
                        name: name.clone(),
                        size: m.size,
                    }));
                }
                stream(&mut r, m.size, data).map_err(ctx)?;
                skip(&mut r, padded(m.size) - m.size).map_err(ctx)?;
                continue;
            }
            skip(&mut r, padded(m.size)).map_err(ctx)?;
        }
        // The rest of the layer (tar padding, decoder trailers): the digest covers it.
        io::copy(&mut r, &mut io::sink()).map_err(ctx)?;
        let mut all = self.hidden;
        all.opaque |= hides.opaque;
        all.names.extend(hides.names);
        Ok(all)
    }
}

/// Sends `n` bytes of `r` to the reader in 1 MiB pieces (stops quietly if it is gone).
pub(super) fn stream(r: &mut dyn Read, mut n: u64, data: &DataTx) -> io::Result<()> {
    let mut gone = false;
    while n > 0 {
        let mut buf = vec![0u8; n.min(1 << 20) as usize];
        let k = read_full(r, &mut buf)?;
        if k < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the disk file is truncated",
            ));
        }
        n -= k as u64;
        if !gone && data.send(Ok(buf)).is_err() {
            gone = true;
        }
    }
    Ok(())
}

/// `./disk/x`, `/disk/x` → `disk/x`.
pub(super) fn normalize(name: &str) -> String {
    let mut n = name;
    loop {
        if let Some(r) = n.strip_prefix("./") {
            n = r;
        } else if let Some(r) = n.strip_prefix('/') {
            n = r;
        } else {
            break;
        }
    }
    n.trim_end_matches('/').to_string()
}

/// The disk file as the source's reader. Ends when the layer has been read to its end
/// (a second disk file, a bad digest or a cut that cannot be resumed fail it instead).
pub(super) struct DiskReader {
    pub(super) rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    pub(super) cur: Vec<u8>,
    pub(super) pos: usize,
    pub(super) _fetch: AbortOnDrop,
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Read for DiskReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.cur = b;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// --- a minimal streaming tar reader (ustar, GNU long names, pax path/size) ---

pub(super) const BLOCK: usize = 512;

pub(super) struct Member {
    pub(super) name: String,
    pub(super) kind: u8,
    pub(super) size: u64,
}

pub(super) fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

pub(super) fn skip(r: &mut dyn Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the layer's tar is truncated",
        ));
    }
    Ok(())
}

/// The next member's header (data not read), or `None` at the end of the archive.
pub(super) fn next_member(r: &mut dyn Read, shown: &str) -> Result<Option<Member>> {
    let bad = |reason: String| Error::invalid("tar", format!("{shown}: {reason}"));
    let io_err = |e| Error::io(format!("reading {shown}"), e);
    let (mut long_name, mut pax_path, mut pax_size) = (None::<String>, None::<String>, None::<u64>);
    loop {
        let mut h = [0u8; BLOCK];
        let n = read_full(r, &mut h).map_err(io_err)?;
        if n == 0 || h.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        if n < BLOCK {
            return Err(bad("truncated header".into()));
        }
        if crate::tar::checksum_holds(&h) != Some(true) {
            return Err(bad("header checksum mismatch (not a tar layer?)".into()));
        }
        let size = size_field(&h[124..136]).ok_or_else(|| bad("bad size field".into()))?;
        let kind = h[156];
        match kind {
            b'L' | b'x' | b'g' => {
                if size > 1 << 20 {
                    return Err(bad(format!("metadata entry of {size} bytes")));
                }
                let mut data = vec![0u8; size as usize];
                if read_full(r, &mut data).map_err(io_err)? < data.len() {
                    return Err(bad("truncated".into()));
                }
                skip(r, padded(size) - size).map_err(io_err)?;
                if kind == b'L' {
                    long_name = Some(cstr(&data));
                } else if kind == b'x' {
                    for (k, v) in pax(&data) {
                        match k.as_str() {
                            "path" => pax_path = Some(v),
                            "size" => pax_size = v.parse().ok(),
                            _ => {}
                        }
                    }
                }
                continue;
            }
            _ => {}
        }
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        return Ok(Some(Member {
            name: pax_path.or(long_name).unwrap_or(name),
            kind,
            size: pax_size.unwrap_or(size),
        }));
    }
}

pub(super) fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub(super) fn octal(f: &[u8]) -> Option<u64> {
    let s = cstr(f);
    let t = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if t.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(t, 8).ok()
}

/// Octal, or GNU base-256 (high bit set).
pub(super) fn size_field(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        Some(v)
    } else {
        octal(f)
    }
}

/// `LEN KEY=VALUE\n` records.
pub(super) fn pax(mut data: &[u8]) -> Vec<(String, String)> {
    let mut out = vec![];
    while !data.is_empty() {
        let Some(sp) = data.iter().position(|c| *c == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > data.len() {
            break;
        }
        let rec = &data[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|c| *c == b'=') {
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
            ));
        }
        data = &data[len..];
    }
    out
}
