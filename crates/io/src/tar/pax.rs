//! Pax extended headers: the records a member's header is overridden with, and the
//! sparse maps of PAX sparse members.

use std::io::{self, Read};

use super::header::{member_size, padded, skip};
use super::sparse::Sparse;
use super::{MAX_META, MAX_SPARSE_ENTRIES, Result, TarError, read_full};

/// What the pax extended headers before a member said.
#[derive(Default)]
pub(super) struct Pax {
    pub(super) path: Option<String>,
    pub(super) size: Option<u64>,
    pub(super) linkpath: Option<String>,
    /// `mtime`, whole seconds (the fraction dropped).
    pub(super) mtime: Option<i64>,
    pub(super) sparse_major: Option<String>,
    pub(super) sparse_minor: Option<String>,
    pub(super) sparse_name: Option<String>,
    /// `GNU.sparse.size` (0.0, 0.1) or `GNU.sparse.realsize` (1.0).
    pub(super) sparse_real_size: Option<u64>,
    pub(super) sparse_numblocks: Option<u64>,
    /// Entries of `GNU.sparse.offset`/`GNU.sparse.numbytes` (0.0) or `GNU.sparse.map` (0.1).
    pub(super) sparse_entries: Vec<(u64, u64)>,
    /// An offset waiting for its length.
    pub(super) sparse_offset: Option<u64>,
}

impl Pax {
    /// Reads an extended header of `size` bytes (and its padding) record by record
    /// (`LEN KEY=VALUE\n`). A sparse map's numbers are parsed as they come, never held as
    /// text; other values are at most [`MAX_META`] bytes.
    pub(super) fn read(&mut self, r: &mut impl Read, size: u64) -> Result<()> {
        let mut rd = io::BufReader::with_capacity(64 << 10, (&mut *r).take(size));
        while let Some(c) = next_byte(&mut rd)? {
            self.record(&mut rd, c)?;
        }
        if rd.into_inner().limit() > 0 {
            return Err(TarError::invalid("truncated pax header"));
        }
        skip(r, padded(size) - size)
    }

    fn record(&mut self, rd: &mut impl io::BufRead, first: u8) -> Result<()> {
        let bad = |why: &str| TarError::invalid(format!("malformed pax header: {why}"));
        let cut = || bad("a record is cut short");
        // The record's length, this number and the newline included.
        let (mut len, mut used, mut c) = (0u64, 0u64, first);
        while c != b' ' {
            if !c.is_ascii_digit() {
                return Err(bad("a record length is not a number"));
            }
            len = len
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or_else(|| bad("a record length is out of range"))?;
            used += 1;
            c = next_byte(rd)?.ok_or_else(cut)?;
        }
        used += 1;
        let mut key = Vec::new();
        loop {
            let c = next_byte(rd)?.ok_or_else(cut)?;
            used += 1;
            if c == b'=' {
                break;
            }
            if c == b'\n' || key.len() >= 256 {
                return Err(bad("a record has no key"));
            }
            key.push(c);
        }
        let key = String::from_utf8_lossy(&key).into_owned();
        let value_len = len
            .checked_sub(used + 1)
            .ok_or_else(|| bad(&format!("the record {key} is shorter than its key")))?;
        if key == "GNU.sparse.map" {
            self.read_map(rd, value_len)?;
        } else {
            if value_len > MAX_META {
                return Err(bad(&format!("the record {key} holds {value_len} bytes")));
            }
            let mut v = vec![0u8; value_len as usize];
            if read_full(rd, &mut v).map_err(TarError::from_io)? < v.len() {
                return Err(cut());
            }
            self.apply(&key, String::from_utf8_lossy(&v).into_owned())?;
        }
        if next_byte(rd)? != Some(b'\n') {
            return Err(bad(&format!("the record {key} does not end with a newline")));
        }
        Ok(())
    }

    /// `GNU.sparse.map`: offset,length,offset,length…
    fn read_map(&mut self, rd: &mut impl io::BufRead, len: u64) -> Result<()> {
        let bad = |why: &str| TarError::invalid(format!("malformed pax header: GNU.sparse.map {why}"));
        let mut cur: Option<u64> = None;
        for _ in 0..len {
            match next_byte(rd)?.ok_or_else(|| bad("is cut short"))? {
                c @ b'0'..=b'9' => {
                    let v = cur
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')));
                    cur = Some(v.ok_or_else(|| bad("holds a number out of range"))?);
                }
                b',' => {
                    let v = cur.take().ok_or_else(|| bad("holds an empty number"))?;
                    self.push_number(v)?;
                }
                _ => return Err(bad("holds a byte that is not a digit or a comma")),
            }
        }
        if let Some(v) = cur {
            self.push_number(v)?;
        }
        Ok(())
    }

    /// The next number of a sparse map: an offset, then its length.
    fn push_number(&mut self, v: u64) -> Result<()> {
        match self.sparse_offset.take() {
            Some(off) => self.sparse_entries.push((off, v)),
            None if self.sparse_entries.len() >= MAX_SPARSE_ENTRIES => {
                let name = self.sparse_name.as_deref().or(self.path.as_deref()).unwrap_or("");
                return Err(TarError::invalid(format!(
                    "the sparse map of tar member {name:?} has more than {MAX_SPARSE_ENTRIES} entries"
                )));
            }
            None => self.sparse_offset = Some(v),
        }
        Ok(())
    }

    fn apply(&mut self, key: &str, v: String) -> Result<()> {
        let num = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| TarError::invalid(format!("pax record {key} {v:?} is not a number")))
        };
        let out_of_turn = |what: &str| TarError::invalid(format!("malformed pax header: {key} {what}"));
        match key {
            "path" => self.path = Some(v),
            "linkpath" => self.linkpath = Some(v),
            // Seconds, maybe negative, maybe with a fraction; anything else is ignored.
            "mtime" => self.mtime = v.trim().split('.').next().and_then(|t| t.parse().ok()),
            "size" => self.size = Some(member_size(num(&v)?)?),
            "GNU.sparse.major" => self.sparse_major = Some(v),
            "GNU.sparse.minor" => self.sparse_minor = Some(v),
            "GNU.sparse.name" => self.sparse_name = Some(v),
            "GNU.sparse.size" | "GNU.sparse.realsize" => self.sparse_real_size = Some(member_size(num(&v)?)?),
            "GNU.sparse.numblocks" => self.sparse_numblocks = Some(num(&v)?),
            "GNU.sparse.offset" if self.sparse_offset.is_some() => {
                return Err(out_of_turn("follows another offset"));
            }
            "GNU.sparse.numbytes" if self.sparse_offset.is_none() => {
                return Err(out_of_turn("has no GNU.sparse.offset before it"));
            }
            "GNU.sparse.offset" | "GNU.sparse.numbytes" => self.push_number(num(&v)?)?,
            _ => {}
        }
        Ok(())
    }

    /// The sparse layout these records give the regular member `name`, if any.
    pub(super) fn sparse(&mut self, name: &str) -> Result<Option<Sparse>> {
        let real = |size: Option<u64>, key: &str| {
            size.ok_or_else(|| TarError::invalid(format!("sparse tar member {name:?} has no {key} record")))
        };
        match (self.sparse_major.as_deref(), self.sparse_minor.as_deref()) {
            (Some("1"), Some("0")) => Ok(Some(Sparse::InData {
                real_size: real(self.sparse_real_size, "GNU.sparse.realsize")?,
            })),
            (Some(major), minor) => Err(TarError::Unsupported(format!(
                "tar member {name:?} is sparse in PAX format {major}.{}; GNU tar's 0.0, 0.1 and 1.0 are supported",
                minor.unwrap_or("?")
            ))),
            (None, _)
                if self.sparse_real_size.is_some()
                    || self.sparse_numblocks.is_some()
                    || !self.sparse_entries.is_empty() =>
            {
                let real_size = real(self.sparse_real_size, "GNU.sparse.size")?;
                if self.sparse_offset.is_some() {
                    return Err(TarError::invalid(format!(
                        "tar member {name:?}: its sparse map ends with an offset without a length"
                    )));
                }
                let entries = std::mem::take(&mut self.sparse_entries);
                if let Some(k) = self.sparse_numblocks
                    && k != entries.len() as u64
                {
                    return Err(TarError::invalid(format!(
                        "tar member {name:?}: GNU.sparse.numblocks is {k} but its sparse map has {} entries",
                        entries.len()
                    )));
                }
                Ok(Some(Sparse::Map { real_size, entries }))
            }
            _ => Ok(None),
        }
    }
}

fn next_byte(r: &mut impl io::BufRead) -> Result<Option<u8>> {
    let b = r.fill_buf().map_err(TarError::from_io)?.first().copied();
    if b.is_some() {
        r.consume(1);
    }
    Ok(b)
}
