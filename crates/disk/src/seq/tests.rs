use super::*;

#[test]
fn serves_passed_ranges_from_retention_and_last() {
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut r = &data[..];
    let mut f = SeqFile::new(&mut r, "qcow2", 512, 1 << 20);
    assert_eq!(f.read_at(2048, 100, false).unwrap(), &data[2048..2148]);
    // Before pos: retained chunks.
    assert_eq!(f.read_at(100, 600, false).unwrap(), &data[100..700]);
    // Partly from the last range, partly retained.
    assert_eq!(f.read_at(650, 1398, false).unwrap(), &data[650..2048]);
    // A range read as an item is not retained.
    assert!(f.read_at(2040, 20, false).is_err());
    // Overlapping the last range and running past pos.
    assert_eq!(f.read_at(2148, 100, false).unwrap(), &data[2148..2248]);
    assert_eq!(f.read_at(2200, 300, false).unwrap(), &data[2200..2500]);
    f.stop_retaining();
    assert!(f.read_at(0, 10, false).is_err());
    // Past the end: short only when allowed.
    assert_eq!(f.read_at(4000, 200, true).unwrap().len(), 96);
    assert!(f.read_at(4050, 100, false).is_err());
    assert_eq!(f.pos(), 4096);
}

#[test]
fn ranges_past_the_end_of_the_offset_space_are_invalid() {
    // Mutation test: a table offset near u64::MAX used to overflow `off + len`.
    let data = [1u8; 1024];
    let mut r = &data[..];
    let mut f = SeqFile::new(&mut r, "vhd", 512, 1 << 20);
    let e = f.read_at(u64::MAX - 10, 512, false).unwrap_err();
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("out of range"), "{e}");
    // The file is still usable.
    assert_eq!(f.read_at(0, 4, false).unwrap(), &[1; 4]);
}

#[test]
fn the_tail_of_a_range_read_can_be_retained() {
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut r = &data[..];
    let mut f = SeqFile::new(&mut r, "qcow2", 512, 1 << 20);
    assert_eq!(f.read_at(1000, 1048, false).unwrap(), &data[1000..2048]);
    f.retain_tail(512).unwrap();
    // Another range replaces the last one; the tail of the first is still at hand,
    // the rest of it is not.
    assert_eq!(f.read_at(4096, 10, false).unwrap(), &data[4096..4106]);
    assert_eq!(f.read_at(1600, 2600, false).unwrap(), &data[1600..4200]);
    assert!(f.read_at(1500, 10, false).is_err());
    // What is retained already is not retained twice.
    f.retain_tail(4096).unwrap();
    assert_eq!(f.read_at(0, 2, false).unwrap(), &data[..2]);
    assert_eq!(f.read_at(1536, 100, false).unwrap(), &data[1536..1636]);
}

/// The image by position, counting the bytes read again.
struct Again(Vec<u8>, bool, std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ReadAt for Again {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let s = (off as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - s);
        buf[..n].copy_from_slice(&self.0[s..s + n]);
        self.2.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    fn cheap(&self) -> bool {
        self.1
    }
}

#[test]
fn passed_ranges_are_read_again_by_position() {
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8 + 1).collect();
    for cheap in [true, false] {
        let count = std::sync::Arc::default();
        let mut r = &data[..];
        let mut f = SeqFile::new(&mut r, "qcow2", 4096, 8192);
        f.set_positional(Box::new(Again(
            data.clone(),
            cheap,
            std::sync::Arc::clone(&count),
        )));
        assert_eq!(
            f.read_at(60 * 1024, 10, false).unwrap(),
            &data[60 * 1024..60 * 1024 + 10]
        );
        // A cheap source retains nothing; another retains within its budget (two
        // chunks) and reads the rest again.
        assert_eq!(f.retained_bytes, if cheap { 0 } else { 8192 });
        assert_eq!(
            f.read_at(100, 30 * 1024, false).unwrap(),
            &data[100..100 + 30 * 1024]
        );
        let again = count.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            again,
            if cheap {
                30 * 1024
            } else {
                30 * 1024 - (8192 - 100)
            }
        );
        // Past the end of the image: an error, not a panic.
        assert!(f.read_at(64 * 1024 - 5, 10, false).is_err());
    }
}

#[test]
fn budget_is_enforced_and_zeros_are_free() {
    let mut data = vec![0u8; 1 << 20];
    data.extend(std::iter::repeat_n(7u8, 8192));
    let mut r = &data[..];
    let mut f = SeqFile::new(&mut r, "qcow2", 4096, 4096);
    assert_eq!(f.read_at((1 << 20) - 1, 1, false).unwrap(), &[0]);
    assert_eq!(f.read_at(5, 3, false).unwrap(), &[0, 0, 0]);
    let e = f.read_at((1 << 20) + 8191, 1, false).unwrap_err();
    assert_eq!(e.label(), "unsupported");
}
