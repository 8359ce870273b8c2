//! Blank disks: `size` bytes that read as zeros, as CDI's blank DataVolumes are. A file is
//! made sparse (every block allocated with `preallocate`); a block device is zeroed over
//! `size` bytes, so the disk reads as zeros whatever the device held.

use crate::{
    Error, Result,
    source::Stats,
    target::{self, Target, TargetSpec},
};

/// Makes a blank disk of `size` bytes at `spec` (an existing file only with `overwrite`).
/// A failure leaves no file behind.
pub fn blank(spec: &TargetSpec, size: u64, preallocate: bool, overwrite: bool) -> Result<()> {
    let probe = target::probe(spec)?;
    if !probe.block && !overwrite && spec.path.exists() {
        return Err(Error::InvalidArgument {
            field: "target",
            value: spec.path.display().to_string(),
            reason: "exists; pass --force to replace it".into(),
        });
    }
    probe.check(size)?;
    let t = Target::open(spec, probe, Stats::quiet())?.preallocated(preallocate);
    t.finish_or_abort(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn blank_files_are_sparse_unless_preallocated_and_read_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |name: &str, capacity| TargetSpec {
            path: dir.path().join(name),
            capacity,
        };
        let size = 8 << 20;
        blank(&spec("sparse.img", None), size, false, false).unwrap();
        let m = std::fs::metadata(dir.path().join("sparse.img")).unwrap();
        assert_eq!(m.len(), size);
        assert!(
            m.blocks() * 512 < size / 8,
            "sparse: {} bytes used",
            m.blocks() * 512
        );
        blank(&spec("full.img", None), size, true, false).unwrap();
        let m = std::fs::metadata(dir.path().join("full.img")).unwrap();
        assert!(
            m.blocks() * 512 >= size,
            "preallocated: {} bytes used",
            m.blocks() * 512
        );
        let bytes = std::fs::read(dir.path().join("full.img")).unwrap();
        assert!(bytes.iter().all(|b| *b == 0));

        // An existing file is kept unless asked; a size over the capacity is refused and
        // leaves nothing.
        let e = blank(&spec("sparse.img", None), size, false, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        blank(&spec("sparse.img", None), 1 << 20, false, true).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("sparse.img")).unwrap().len(),
            1 << 20
        );
        let e = blank(&spec("small.img", Some(1 << 20)), size, false, false).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        assert!(!dir.path().join("small.img").exists());
    }
}
