//! A local regular file, read front to back with its holes skipped: where the file system
//! says a range holds no data (`SEEK_DATA`/`SEEK_HOLE`), its zeros are made in memory
//! instead of being copied out of the kernel. Images that `qemu-img` writes are sparse
//! files (a 4 GiB VHDX holding 1 GiB of data has 3 GiB of holes), and reading their holes
//! was most of the time an import took. File systems that do not track holes report the
//! whole file as data, and it is read as it is.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use rustix::fs::{SeekFrom, seek};

/// What is known of the bytes from the current position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// Data up to this offset.
    Data(u64),
    /// A hole up to this offset.
    Hole(u64),
}

/// A regular file of a known length, read sequentially by position.
pub(crate) struct SparseFile {
    file: File,
    pos: u64,
    len: u64,
    run: Run,
    /// Bytes of holes made in memory.
    skipped: u64,
}

impl SparseFile {
    pub(crate) fn new(file: File, len: u64) -> Self {
        Self {
            file,
            pos: 0,
            len,
            run: Run::Data(0),
            skipped: 0,
        }
    }

    /// The run at `self.pos` (which is below `self.len`).
    fn run_at(&mut self) -> Run {
        let pos = self.pos;
        match seek(&self.file, SeekFrom::Data(pos)) {
            Ok(data) if data > pos => Run::Hole(data.min(self.len)),
            Ok(_) => match seek(&self.file, SeekFrom::Hole(pos)) {
                Ok(hole) if hole > pos => Run::Data(hole.min(self.len)),
                _ => Run::Data(self.len),
            },
            // ENXIO: no data from here to the end of the file, or the file is shorter
            // than it was (then it ends here, and the length check says so).
            Err(rustix::io::Errno::NXIO) => {
                let now = self.file.metadata().map_or(self.len, |m| m.len());
                self.len = self.len.min(now);
                Run::Hole(self.len)
            }
            // No hole support (or any other answer): read everything.
            Err(_) => Run::Data(self.len),
        }
    }
}

impl Drop for SparseFile {
    fn drop(&mut self) {
        tracing::debug!(
            read = self.pos,
            holes = self.skipped,
            "local file read, holes skipped"
        );
    }
}

impl Read for SparseFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let end = match self.run {
            Run::Data(e) | Run::Hole(e) if e > self.pos => e,
            _ => {
                self.run = self.run_at();
                match self.run {
                    Run::Data(e) | Run::Hole(e) => e,
                }
            }
        };
        if end <= self.pos {
            return Ok(0);
        }
        let n = (end - self.pos).min(buf.len() as u64) as usize;
        let n = match self.run {
            Run::Hole(_) => {
                buf[..n].fill(0);
                self.skipped += n as u64;
                n
            }
            Run::Data(_) => self.file.read_at(&mut buf[..n], self.pos)?,
        };
        if n == 0 {
            // The file shrank under us: end here, and the length check says so.
            self.len = self.pos;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn read_all(mut r: impl Read, piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn holes_read_as_zeros_and_data_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        // Data, a hole of 3 MiB, data, and a hole to the end.
        f.write_all(&[7u8; 100_000]).unwrap();
        f.seek(io::SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&[9u8; 5000]).unwrap();
        f.set_len(8 << 20).unwrap();
        drop(f);
        let mut expected = vec![0u8; 8 << 20];
        expected[..100_000].fill(7);
        expected[3 << 20..(3 << 20) + 5000].fill(9);
        // Whether this file system tracks holes (tmpfs, ext4, xfs and btrfs do).
        let tracks = seek(File::open(&path).unwrap(), SeekFrom::Data(200_000)).is_ok_and(|d| d >= 1 << 20);
        for piece in [4096, 65_536, 1 << 20, 16 << 20] {
            let mut r = SparseFile::new(File::open(&path).unwrap(), 8 << 20);
            let mut got = Vec::new();
            let mut buf = vec![0u8; piece];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got.len(), expected.len(), "piece {piece}");
            assert!(got == expected, "piece {piece}: the bytes differ");
            if tracks {
                // The holes (at least the 3 MiB one and the tail, less page rounding)
                // were made in memory, not read.
                assert!(
                    r.skipped >= 6 << 20,
                    "piece {piece}: only {} hole bytes skipped",
                    r.skipped
                );
            }
        }
    }

    #[test]
    fn a_file_that_shrinks_ends_where_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, [1u8; 1000]).unwrap();
        let f = File::open(&path).unwrap();
        // Declared longer than it is: reading stops at the real end, with no zeros made up.
        let got = read_all(SparseFile::new(f, 5000), 4096);
        assert_eq!(got, vec![1u8; 1000]);
    }
}
