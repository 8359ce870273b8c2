//! Resuming an import in a later process (a restarted importer pod, a second `ido import
//! --resume`): a checkpoint file beside the target records how far the target is durable.
//!
//! ```text
//!   target  /data/disk.img              [0 ───── offset) synced ── … still being written
//!   record  /data/disk.img.ido-resume   {source, validator, total, format, offset, hashed, …}
//! ```
//!
//! Every [`ImportOptions::checkpoint_every`](crate::ImportOptions::checkpoint_every) bytes
//! the target is synced, then the record is replaced atomically (written to a temporary
//! file, synced, renamed), so a record never claims bytes that a crash could lose. A
//! transport failure writes a last record at the exact position; success and permanent
//! failures remove the record (and, for failures, the target).
//!
//! A later run resumes only when the record matches: the same source (URL without its
//! query, so a presigned S3 URL may be signed again), the same options, and the server
//! still has the same object (`Range` with `If-Range: <validator>`; a changed object gets
//! the whole body back and the import starts from 0).
//!
//! What resumes, from HTTP(S) or S3 whose server sends a validator (ETag or Last-Modified):
//! - an uncompressed raw or ISO image (or a fixed VHD): a source byte is a target byte;
//! - an uncompressed qcow2 without preallocation: `offset` is where the next cluster to
//!   convert is stored, and the next run rebuilds the mapping from the image's tables with
//!   ranged reads ([`crate::qcow2`]).
//!
//! With a checksum, the record also holds the hash's state over the source's first
//! `hashed.upTo` bytes (at or past `offset`: the reader runs ahead of the writer); the next
//! run continues that hash and feeds it only the bytes past `upTo`.
//!
//! Compressed images and the other formats start from 0: a decoder's state cannot be
//! rebuilt from the middle of its stream.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detect::DiskFormat;
use crate::{Error, Result};

/// Version of the record's layout.
pub(crate) const VERSION: u32 = 2;

/// The default distance between two checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 256 << 20;

/// What a checkpoint file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Layout version ([`VERSION`]).
    pub version: u32,
    /// The source as shown (a URL without its query).
    pub source: String,
    /// The object's validator when it was first fetched (strong ETag, else Last-Modified).
    pub validator: String,
    /// The object's length.
    pub total: u64,
    /// The format being imported (`raw`, `iso` or `qcow2`).
    pub format: String,
    /// The checksum asked for, as given.
    pub checksum: Option<String>,
    /// Whether zeros are written too.
    pub preallocate: bool,
    /// The source offset to continue from: a raw image's target is on stable storage up to
    /// it; a qcow2's every cluster stored before it is.
    pub offset: u64,
    /// The checksum's state, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed: Option<Hashed>,
}

/// A checksum's running state over a prefix of the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hashed {
    /// How many source bytes the state covers (at least [`Record::offset`]).
    pub up_to: u64,
    /// The state ([`crate::checksum::Hasher::state`]).
    pub state: String,
}

impl Record {
    /// The format recorded, if it is one that resumes.
    pub(crate) fn disk_format(&self) -> Option<DiskFormat> {
        match self.format.as_str() {
            "raw" => Some(DiskFormat::Raw),
            "iso" => Some(DiskFormat::Iso),
            "qcow2" => Some(DiskFormat::Qcow2),
            _ => None,
        }
    }
}

/// Where the record of a target lives: `<target>.ido-resume`.
pub fn record_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".ido-resume");
    PathBuf::from(name)
}

/// Reads a record; `None` when there is none or it cannot be used (logged).
pub(crate) fn load(path: &Path) -> Option<Record> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the checkpoint; starting from 0");
            return None;
        }
    };
    match serde_json::from_slice::<Record>(&text) {
        Ok(r) if r.version == VERSION => Some(r),
        Ok(r) => {
            tracing::info!(path = %path.display(), version = r.version, "checkpoint of another version; starting from 0");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable checkpoint; starting from 0");
            None
        }
    }
}

/// Replaces the record atomically: a crash leaves the old one or the new one.
pub(crate) fn save(path: &Path, record: &Record) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("writing the checkpoint {}", path.display()), e)
    })
}

/// Removes the record (and a temporary one a crash may have left).
pub(crate) fn remove(path: &Path) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    for p in [path, Path::new(&tmp)] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "could not remove the checkpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> Record {
        Record {
            version: VERSION,
            source: "https://example.org/disk.img".into(),
            validator: "\"v1\"".into(),
            total: 10 << 20,
            format: "raw".into(),
            checksum: None,
            preallocate: false,
            offset,
            hashed: None,
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(&dir.path().join("disk.img"));
        assert!(path.ends_with("disk.img.ido-resume"));
        assert_eq!(load(&path), None);
        save(&path, &record(1 << 20)).unwrap();
        let mut hashed = record(2 << 20);
        hashed.hashed = Some(Hashed {
            up_to: 3 << 20,
            state: "00ab".into(),
        });
        save(&path, &hashed).unwrap();
        assert_eq!(load(&path), Some(hashed));
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path), None);
        let mut other = record(1);
        other.version = VERSION + 1;
        std::fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(load(&path), None);
        remove(&path);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary file left"
        );
    }
}
