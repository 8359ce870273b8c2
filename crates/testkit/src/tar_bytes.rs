//! Small tars made by hand, byte by byte: ustar headers written here (not by a tar library),
//! so tests can shape archives a library would refuse to write, and read them back with
//! ido's own reader.

/// A tar block.
pub const BLOCK: usize = 512;

/// `size` rounded up to whole blocks.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// A minimal ustar header: `name` (at most 100 bytes), type byte `kind`, mode 0644, `size`.
pub fn header(name: &str, kind: u8, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    set_checksum(&mut h);
    h
}

/// Writes a header's checksum field (after other fields were changed).
pub fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

/// An archive of `(name, type byte, data)` members and its two end blocks.
pub fn archive(members: &[(&str, u8, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (name, kind, data) in members {
        v.extend_from_slice(&header(name, *kind, data.len() as u64));
        v.extend_from_slice(data);
        v.resize(padded(v.len() as u64) as usize, 0);
    }
    v.extend_from_slice(&[0u8; 2 * BLOCK]);
    v
}

/// An archive of regular files.
pub fn files(members: &[(&str, &[u8])]) -> Vec<u8> {
    let members: Vec<(&str, u8, &[u8])> = members.iter().map(|(n, d)| (*n, b'0', *d)).collect();
    archive(&members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_their_checksum_and_archives_end_in_two_zero_blocks() {
        let a = files(&[("a.txt", b"hello")]);
        assert_eq!(a.len(), 4 * BLOCK);
        let h = &a[..BLOCK];
        let field = std::str::from_utf8(&h[148..154]).unwrap();
        let mut blank = [0u8; BLOCK];
        blank.copy_from_slice(h);
        blank[148..156].copy_from_slice(b"        ");
        let sum: u64 = blank.iter().map(|b| u64::from(*b)).sum();
        assert_eq!(u64::from_str_radix(field, 8).unwrap(), sum);
        assert_eq!(&a[BLOCK..BLOCK + 5], b"hello");
        assert!(a[2 * BLOCK..].iter().all(|b| *b == 0));
    }
}
