use super::*;
use std::io::Write;

/// A sparse extent header: 8-sector grains, `capacity` sectors, descriptor at sector 1.
fn header(flags: u32, capacity: u64, gd: u64, overhead: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&8u64.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&1u64.to_le_bytes());
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[56..64].copy_from_slice(&gd.to_le_bytes());
    h[64..72].copy_from_slice(&overhead.to_le_bytes());
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

fn descriptor(create: &str, capacity: u64) -> Vec<u8> {
    let mut d = format!("# Disk DescriptorFile\nparentCID=ffffffff\ncreateType=\"{create}\"\nRW {capacity} SPARSE \"x.vmdk\"\n")
        .into_bytes();
    d.resize(512, 0);
    d
}

fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().next_multiple_of(512), 0);
}

fn convert_into(image: &[u8], budget: u64, out: &std::path::Path) -> Result<u64> {
    let mut t = crate::target::scratch(out)?;
    let mut r = image;
    let v = VmdkStream::open(&mut r, budget)?;
    let vs = v.virtual_size();
    v.convert(&mut t)?;
    t.finish(vs)?;
    Ok(vs)
}

#[test]
fn stream_optimized_with_the_directory_at_the_end() {
    // VMware's layout: gdOffset = GD_AT_END; grains out of order; GT, GD, footer markers.
    let flags = 1 | FLAG_REDUNDANT_GT | FLAG_COMPRESSED | FLAG_MARKERS;
    let mut f = header(flags, 64, GD_AT_END, 2);
    f.extend(descriptor("streamOptimized", 64));
    for (lba, byte) in [(16u64, 0xaau8), (0, 0xbb)] {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&[byte; 4096]).unwrap();
        let z = z.finish().unwrap();
        f.extend(lba.to_le_bytes());
        f.extend((z.len() as u32).to_le_bytes());
        f.extend(z);
        pad(&mut f);
    }
    let marker = |f: &mut Vec<u8>, sectors: u64, kind: u32| {
        f.extend(sectors.to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.extend(kind.to_le_bytes());
        pad(f);
    };
    marker(&mut f, 4, 1); // grain table
    f.extend([0x55; 2048]);
    marker(&mut f, 1, 2); // grain directory
    f.extend([0x66; 512]);
    marker(&mut f, 1, MARKER_FOOTER);
    f.extend(header(flags, 64, 20, 2));
    marker(&mut f, 0, MARKER_EOS);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    assert_eq!(convert_into(&f, 1 << 20, &out).unwrap(), 32768);
    let mut want = vec![0u8; 32768];
    want[..4096].fill(0xbb);
    want[8192..12288].fill(0xaa);
    assert!(std::fs::read(&out).unwrap() == want);

    // Without the end-of-stream marker: truncated.
    let e = convert_into(&f[..f.len() - 512], 1 << 20, &out).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // A grain beyond the capacity.
    let mut g = f.clone();
    g[1024..1032].copy_from_slice(&64u64.to_le_bytes());
    let e = convert_into(&g, 1 << 20, &out).unwrap_err();
    assert!(e.to_string().contains("LBA 64"), "{e}");
}

#[test]
fn grains_before_their_table_are_reordered() {
    // header │ descriptor │ grain A │ GD │ GT (grain 0 → A, grain 2 → B) │ grain B
    let mut f = header(1, 32, 10, 2);
    f.extend(descriptor("monolithicSparse", 32));
    f.extend([0x11; 4096]);
    let mut gd = 11u32.to_le_bytes().to_vec();
    pad(&mut gd);
    f.extend(gd);
    let mut gt = vec![0u8; 2048];
    gt[..4].copy_from_slice(&2u32.to_le_bytes());
    gt[8..12].copy_from_slice(&15u32.to_le_bytes());
    f.extend(gt);
    f.extend([0x22; 4096]);
    assert_eq!(f.len(), 15 * 512 + 4096);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    assert_eq!(convert_into(&f, 1 << 20, &out).unwrap(), 16384);
    let mut want = vec![0u8; 16384];
    want[..4096].fill(0x11);
    want[8192..12288].fill(0x22);
    assert!(std::fs::read(&out).unwrap() == want);
    // Grain A does not fit in a 1 KiB reorder buffer.
    let e = convert_into(&f, 1024, &out).unwrap_err();
    assert_eq!(e.label(), "unsupported", "{e}");
}

#[test]
fn absurd_overhead_and_directory_offsets_are_invalid() {
    // Mutation test: these sector numbers used to overflow when turned into bytes.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let flags = 1 | FLAG_COMPRESSED | FLAG_MARKERS;
    for overhead in [u64::MAX - 1, 1 << 55, (MAX_VIRTUAL_SIZE / SECTOR) + 1] {
        let mut f = header(flags, 64, GD_AT_END, overhead);
        f.extend(descriptor("streamOptimized", 64));
        let e = convert_into(&f, 1 << 20, &out).unwrap_err();
        assert_eq!(e.label(), "invalid_image", "{e}");
        assert!(e.to_string().contains("overhead of"), "{e}");
    }
    for gd in [u64::MAX - 1, 1 << 55] {
        let mut f = header(1, 32, gd, 2);
        f.extend(descriptor("monolithicSparse", 32));
        let e = convert_into(&f, 1 << 20, &out).unwrap_err();
        assert_eq!(e.label(), "invalid_image", "{e}");
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}

#[test]
fn descriptors() {
    let ok = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\
              RW 16389 SPARSE \"disk.vmdk\"\nddb.adapterType = \"ide\"\n";
    Descriptor::parse(ok).check_embedded().unwrap();
    let flat = "createType=\"monolithicFlat\"\nRW 16389 FLAT \"disk-flat.vmdk\" 0\n";
    let e = Descriptor::parse(flat).check_embedded().unwrap_err();
    assert_eq!(e.label(), "refused");
    assert!(e.to_string().contains("disk-flat.vmdk"), "{e}");
    let two = "createType=\"twoGbMaxExtentSparse\"\nRW 4192256 SPARSE \"d-s001.vmdk\"\nRW 100 SPARSE \"d-s002.vmdk\"\n";
    assert!(
        Descriptor::parse(two)
            .check_embedded()
            .unwrap_err()
            .to_string()
            .contains("d-s002.vmdk")
    );
    let delta = "parentCID=1234abcd\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"monolithicSparse\"\nRW 8 SPARSE \"x.vmdk\"\n";
    let e = Descriptor::parse(delta).check_embedded().unwrap_err();
    assert!(e.to_string().contains("base.vmdk"), "{e}");
}
