//! Archives and compressions in the shapes the real tools make less often: zstd with
//! skippable frames (pzstd), sparse tar members (GNU, old GNU, PAX 0.0/0.1/1.0), gzip and
//! bzip2 followed by zero padding (tape blocking), legacy `.lzma`, pre-POSIX tars. And the
//! guards: a declared size is the final size, and a recognised container that does not
//! parse is an error, never raw data, with no target left behind.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ido_disk::{DiskFormat, ImportOptions, ImportReport, SourceSpec, TargetSpec, import};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Size of the sparse fixture: 24 MiB and 1000 bytes (not a multiple of any block).
const SPARSE_SIZE: u64 = (24 << 20) + 1000;

/// The sparse fixture's data: more than four regions (GNU tar then needs extended sparse
/// headers), some off block boundaries; with `tail` the last one ends the file, otherwise
/// the file ends in a hole.
fn sparse_regions(tail: bool) -> Vec<(u64, Vec<u8>)> {
    let mut r = vec![
        (0, random_bytes(11, 4096)),
        (64 << 10, random_bytes(12, 8192)),
        ((1 << 20) + 4096, random_bytes(13, 100_000)),
        (5 << 20, random_bytes(14, 300_001)),
        ((9 << 20) + 512, random_bytes(15, 4096)),
        (13 << 20, text_bytes(12_345)),
        (20 << 20, random_bytes(16, 1 << 20)),
    ];
    if tail {
        r.push((SPARSE_SIZE - 3000, random_bytes(17, 3000)));
    }
    r
}

/// Writes `dir/disk.raw` (sparse) and returns its content.
fn sparse_disk(dir: &Path, tail: bool) -> Vec<u8> {
    let regions = sparse_regions(tail);
    write_sparse(&dir.join("disk.raw"), SPARSE_SIZE, &regions);
    sparse_content(SPARSE_SIZE, &regions)
}

fn options(image: &Path, out: &Path) -> ImportOptions {
    let mut opts = ImportOptions::new(
        SourceSpec::File(image.to_path_buf()),
        TargetSpec {
            path: out.to_path_buf(),
            capacity: None,
        },
    );
    opts.overwrite = true;
    opts
}

/// Imports `image` (its checksum verified) and checks the disk, its holes, the layers
/// and the sizes; the target is removed afterwards.
async fn import_ok(image: &Path, want: &[u8], layers: &[&str]) -> ImportReport {
    let what = image.file_name().unwrap().to_string_lossy().to_string();
    let out = image.parent().unwrap().join("out.img");
    let mut opts = options(image, &out);
    opts.checksum = Some(sha256(image).parse().unwrap());
    let report = import(opts).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_same(&std::fs::read(&out).unwrap(), want, &what);
    assert_sparse(&out);
    assert_eq!(report.format, DiskFormat::Raw, "{what}");
    assert_eq!(report.layers, layers, "{what}");
    assert_eq!(report.virtual_size, want.len() as u64, "{what}");
    assert_eq!(
        report.source_bytes,
        std::fs::metadata(image).unwrap().len(),
        "{what}: every source byte read"
    );
    std::fs::remove_file(&out).unwrap();
    report
}

/// Imports `image`, which must fail and leave no target.
async fn refused(image: &Path) -> ido_disk::Error {
    refused_with(image, None).await
}

async fn refused_with(image: &Path, format: Option<DiskFormat>) -> ido_disk::Error {
    let out = image.parent().unwrap().join("refused.img");
    let mut opts = options(image, &out);
    opts.format = format;
    let e = match import(opts).await {
        Ok(r) => panic!("{}: imported ({r:?}), expected an error", image.display()),
        Err(e) => e,
    };
    assert!(
        !out.exists(),
        "{}: a target was left behind ({e})",
        image.display()
    );
    e
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// A zstd skippable frame (magic `0x184D2A5?`).
fn skippable(nibble: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x50 | nibble, 0x2a, 0x4d, 0x18];
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[tokio::test]
async fn zstd_with_skippable_frames() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = sparse_disk(d, true);
    // pzstd: a skippable frame (the next frame's size) before each frame.
    sh(&format!("cd {} && pzstd -q -p 2 -c disk.raw > p.raw.zst", s(d)));
    let p = std::fs::read(d.join("p.raw.zst")).unwrap();
    assert_eq!(
        &p[..4],
        &[0x50, 0x2a, 0x4d, 0x18],
        "pzstd starts with a skippable frame"
    );
    assert!(
        count(&p, &[0x28, 0xb5, 0x2f, 0xfd]) >= 2,
        "pzstd wrote several frames"
    );
    import_ok(&d.join("p.raw.zst"), &want, &["zstd"]).await;

    // Skippable frames first, between two frames and last (any of the 16 magics).
    sh(&format!(
        "cd {} && head -c 12582912 disk.raw | zstd -q -c > a.zst && tail -c +12582913 disk.raw | zstd -q -c > b.zst",
        s(d)
    ));
    let img = [
        skippable(0xa, b"metadata ahead of the data"),
        std::fs::read(d.join("a.zst")).unwrap(),
        skippable(0, &[0u8; 100]),
        std::fs::read(d.join("b.zst")).unwrap(),
        skippable(0xf, b""),
    ]
    .concat();
    std::fs::write(d.join("s.raw.zst"), img).unwrap();
    import_ok(&d.join("s.raw.zst"), &want, &["zstd"]).await;

    // A frame announcing its content size behind a skippable frame: the size is known up
    // front (a target too small is refused before it is written).
    sh(&format!("cd {} && zstd -q -c disk.raw > c.zst", s(d)));
    let img = [skippable(3, b"x"), std::fs::read(d.join("c.zst")).unwrap()].concat();
    std::fs::write(d.join("c.raw.zst"), img).unwrap();
    let out = d.join("small.img");
    let mut opts = options(&d.join("c.raw.zst"), &out);
    opts.target.capacity = Some(SPARSE_SIZE - 1);
    let e = import(opts).await.unwrap_err();
    assert_eq!(e.label(), "too_large", "{e}");
    assert!(!out.exists());
}

/// `tar` in `d` with `args`, archiving `disk.raw` into `name`.
fn tar(d: &Path, args: &str, name: &str) -> PathBuf {
    sh(&format!("cd {} && tar {args} -f {name} disk.raw", s(d)));
    d.join(name)
}

#[tokio::test]
async fn pax_sparse_members() {
    for tail in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let want = sparse_disk(d, tail);
        for (version, marker) in [
            ("0.0", "GNU.sparse.offset="),
            ("0.1", "GNU.sparse.map="),
            ("1.0", "GNU.sparse.major=1"),
        ] {
            let t = tar(
                d,
                &format!("--format=pax --sparse --sparse-version={version} -c"),
                &format!("pax-{version}.tar"),
            );
            let bytes = std::fs::read(&t).unwrap();
            assert!(count(&bytes, marker.as_bytes()) > 0, "{version}: {marker}");
            assert!(
                bytes.len() < (4 << 20),
                "{version}: the member is stored condensed"
            );
            import_ok(&t, &want, &["tar"]).await;
        }
        // GNU tar's default PAX sparse format, compressed.
        let t = tar(d, "--format=pax -Scz", "pax.tar.gz");
        import_ok(&t, &want, &["gzip", "tar"]).await;
    }
}

#[tokio::test]
async fn gnu_and_old_gnu_sparse_members() {
    for tail in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let want = sparse_disk(d, tail);
        for format in ["gnu", "oldgnu"] {
            let t = tar(
                d,
                &format!("--format={format} --sparse -c"),
                &format!("{format}.tar"),
            );
            let h = std::fs::read(&t).unwrap();
            assert_eq!(h[156], b'S', "{format}: a sparse member");
            assert_eq!(h[482], 1, "{format}: extended sparse headers follow");
            import_ok(&t, &want, &["tar"]).await;
        }
        // How a GCE image is packed (`tar --format=oldgnu -Sczf disk.tar.gz disk.raw`).
        let t = tar(d, "--format=oldgnu -Scz", "gce.tar.gz");
        import_ok(&t, &want, &["gzip", "tar"]).await;
    }
}

#[tokio::test]
async fn sparse_members_beyond_8_gib() {
    // Offsets and sizes past 8 GiB no longer fit the octal fields: GNU headers hold them
    // in base-256.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = (8u64 << 30) + (1 << 20);
    let regions = vec![
        (0, random_bytes(21, 4096)),
        (3 << 30, random_bytes(22, 65536)),
        ((8 << 30) + 4096, random_bytes(23, 10_000)),
        (size - 777, random_bytes(24, 777)),
    ];
    write_sparse(&d.join("disk.raw"), size, &regions);
    // As a GCE image's disk.raw is packed (here without the gzip layer, to look at it).
    let t = tar(d, "--format=oldgnu --sparse -c", "big.tar");
    let h = std::fs::read(&t).unwrap();
    assert_eq!(h[483] & 0x80, 0x80, "the real size is in base-256");
    assert_eq!(h[386 + 2 * 24] & 0x80, 0x80, "the third offset is in base-256");
    let out = d.join("out.img");
    let report = import(options(&t, &out)).await.unwrap();
    assert_eq!(report.virtual_size, size);
    assert_eq!(report.layers, ["tar"]);
    assert_sparse_regions(&out, size, &regions);
}

#[tokio::test]
async fn gzip_and_bzip2_followed_by_zero_padding() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = sparse_disk(d, true);
    // `tar -z` to a tape: the compressed stream padded with zeros to the 10 KiB record.
    for (z, layer, ext) in [("z", "gzip", "gz"), ("j", "bzip2", "bz2")] {
        let name = format!("padded.tar.{ext}");
        sh(&format!(
            "cd {} && tar --format=gnu -S{z}c -f - disk.raw | dd bs=10240 iflag=fullblock conv=sync status=none > {name}",
            s(d)
        ));
        let b = std::fs::read(d.join(&name)).unwrap();
        assert!(
            b.len().is_multiple_of(10240) && b[b.len() - 1] == 0,
            "{name}: padded"
        );
        import_ok(&d.join(&name), &want, &[layer, "tar"]).await;
    }
    // One or two members or streams, then zeros.
    sh(&format!(
        "cd {} && (gzip -1 -c disk.raw; head -c 5000 /dev/zero) > z.raw.gz \
         && (head -c 1000000 disk.raw | gzip -c; tail -c +1000001 disk.raw | gzip -c; head -c 1 /dev/zero) > zz.raw.gz \
         && (bzip2 -1 -c disk.raw; head -c 5000 /dev/zero) > z.raw.bz2 \
         && (head -c 1000000 disk.raw | bzip2 -c; tail -c +1000001 disk.raw | bzip2 -c; head -c 512 /dev/zero) > zz.raw.bz2",
        s(d)
    ));
    import_ok(&d.join("z.raw.gz"), &want, &["gzip"]).await;
    import_ok(&d.join("zz.raw.gz"), &want, &["gzip"]).await;
    import_ok(&d.join("z.raw.bz2"), &want, &["bzip2"]).await;
    import_ok(&d.join("zz.raw.bz2"), &want, &["bzip2"]).await;
    // Anything else after the stream is still an error, zeros first or not.
    sh(&format!(
        "cd {} && (gzip -1 -c disk.raw; head -c 100 /dev/zero; printf x) > g1 \
         && (gzip -1 -c disk.raw; printf garbage) > g2 \
         && (bzip2 -1 -c disk.raw; head -c 100 /dev/zero; printf x) > b1",
        s(d)
    ));
    for name in ["g1", "g2", "b1"] {
        let e = refused(&d.join(name)).await;
        assert_ne!(e.label(), "refused", "{name}: {e}");
    }
}

#[tokio::test]
async fn legacy_lzma() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = sparse_disk(d, true);
    sh(&format!(
        "cd {} && xz --format=lzma -1 -c disk.raw > x.raw.lzma && lzma -c disk.raw > l.raw.lzma \
         && tar --format=gnu -Sc -f - disk.raw | lzma -c > t.tar.lzma",
        s(d)
    ));
    import_ok(&d.join("x.raw.lzma"), &want, &["lzma"]).await;
    import_ok(&d.join("l.raw.lzma"), &want, &["lzma"]).await;
    import_ok(&d.join("t.tar.lzma"), &want, &["lzma", "tar"]).await;
    // Truncated, or followed by garbage: errors.
    let l = std::fs::read(d.join("l.raw.lzma")).unwrap();
    std::fs::write(d.join("cut"), &l[..l.len() / 2]).unwrap();
    std::fs::write(d.join("trailing"), [&l[..], b"garbage"].concat()).unwrap();
    for name in ["cut", "trailing"] {
        let e = refused(&d.join(name)).await;
        assert_ne!(e.label(), "refused", "{name}: {e}");
    }
    // A file named .lzma that is not one is not imported as raw.
    std::fs::write(d.join("fake.raw.lzma"), random_bytes(5, 100_000)).unwrap();
    let e = refused(&d.join("fake.raw.lzma")).await;
    assert_eq!(e.label(), "refused", "{e}");
}

#[tokio::test]
async fn pre_posix_tar() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = sparse_disk(d, true);
    // No "ustar" magic: recognised by its header checksum.
    let t = tar(d, "--format=v7 -c", "archive");
    assert_ne!(&std::fs::read(&t).unwrap()[257..262], b"ustar");
    import_ok(&t, &want, &["tar"]).await;
}

// ---------------------------------------------------------------------------------------
// Hand-made tar headers: sparse maps that must be refused.

const BLOCK: usize = 512;

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    field[..w].copy_from_slice(format!("{v:0w$o}").as_bytes());
    field[w] = 0;
}

fn set_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

/// A header: ustar (`magic` "ustar\000") or GNU ("ustar  \0").
fn header(name: &str, kind: u8, size: u64, gnu: bool) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[124..136], size);
    h[156] = kind;
    h[257..265].copy_from_slice(if gnu { b"ustar  \0" } else { b"ustar\x0000" });
    set_checksum(&mut h);
    h
}

fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(BLOCK) * BLOCK, 0);
}

/// A GNU sparse member: `map` (offset, length) in the header and extended headers, then
/// `stored` bytes of data.
fn gnu_sparse(name: &str, real: u64, map: &[(u64, u64)], stored: u64) -> Vec<u8> {
    let mut h = header(name, b'S', stored, true);
    let mut entries = map.iter();
    for (i, (off, len)) in entries.by_ref().take(4).enumerate() {
        let at = 386 + i * 24;
        octal(&mut h[at..at + 12], *off);
        octal(&mut h[at + 12..at + 24], *len);
    }
    h[482] = u8::from(map.len() > 4);
    octal(&mut h[483..495], real);
    set_checksum(&mut h);
    let mut v = h;
    let rest: Vec<_> = entries.collect();
    for (k, chunk) in rest.chunks(21).enumerate() {
        let mut e = vec![0u8; BLOCK];
        for (i, (off, len)) in chunk.iter().enumerate() {
            octal(&mut e[i * 24..i * 24 + 12], *off);
            octal(&mut e[i * 24 + 12..i * 24 + 24], *len);
        }
        e[504] = u8::from((k + 1) * 21 < rest.len());
        v.extend_from_slice(&e);
    }
    v.extend(random_bytes(7, stored as usize));
    pad(&mut v);
    v.extend_from_slice(&[0u8; 2 * BLOCK]);
    v
}

/// A pax extended header with `records`, then a ustar member `name` with `data`.
fn pax_member(records: &[(&str, String)], name: &str, data: &[u8]) -> Vec<u8> {
    let mut body = String::new();
    for (k, v) in records {
        let rec = format!(" {k}={v}\n");
        let mut len = rec.len() + 1;
        while format!("{len}{rec}").len() != len {
            len += 1;
        }
        body.push_str(&format!("{len}{rec}"));
    }
    let mut v = header("PaxHeaders/x", b'x', body.len() as u64, false);
    v.extend_from_slice(body.as_bytes());
    pad(&mut v);
    v.extend(header(name, b'0', data.len() as u64, false));
    v.extend_from_slice(data);
    pad(&mut v);
    v.extend_from_slice(&[0u8; 2 * BLOCK]);
    v
}

#[tokio::test]
async fn bad_sparse_maps_are_refused_naming_the_member_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let many: Vec<(u64, u64)> = (0..30).map(|i| (i * 8192, 512)).collect();
    let mut unsorted_late = many.clone();
    unsorted_late.swap(25, 26);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "beyond",
            gnu_sparse("disk.raw", 8192, &[(0, 512), (8000, 512)], 1024),
            "entry 2 of 2",
        ),
        (
            "overlap",
            gnu_sparse("disk.raw", 65536, &[(0, 1024), (512, 512)], 1536),
            "entry 2 of 2",
        ),
        (
            "unsorted",
            gnu_sparse("disk.raw", 65536, &[(4096, 512), (0, 512)], 1024),
            "entry 2 of 2",
        ),
        // In an extended header.
        (
            "unsorted-ext",
            gnu_sparse("disk.raw", 1 << 20, &unsorted_late, 30 * 512),
            "entry 27 of 30",
        ),
        (
            "sum",
            gnu_sparse("disk.raw", 65536, &[(0, 512), (4096, 512)], 512),
            "512",
        ),
        (
            "pax-0.1-beyond",
            pax_member(
                &[
                    ("GNU.sparse.size", "4096".into()),
                    ("GNU.sparse.numblocks", "2".into()),
                    ("GNU.sparse.name", "disk.raw".into()),
                    ("GNU.sparse.map", "0,512,4000,512".into()),
                ],
                "GNUSparseFile.1/disk.raw",
                &[1u8; 1024],
            ),
            "entry 2 of 2",
        ),
        (
            "pax-0.0-overlap",
            pax_member(
                &[
                    ("GNU.sparse.size", "65536".into()),
                    ("GNU.sparse.numblocks", "2".into()),
                    ("GNU.sparse.offset", "1024".into()),
                    ("GNU.sparse.numbytes", "512".into()),
                    ("GNU.sparse.offset", "1500".into()),
                    ("GNU.sparse.numbytes", "512".into()),
                ],
                "disk.raw",
                &[1u8; 1024],
            ),
            "entry 2 of 2",
        ),
        (
            "pax-1.0-unsorted",
            pax_member(
                &[
                    ("GNU.sparse.major", "1".into()),
                    ("GNU.sparse.minor", "0".into()),
                    ("GNU.sparse.name", "disk.raw".into()),
                    ("GNU.sparse.realsize", "65536".into()),
                ],
                "GNUSparseFile.1/disk.raw",
                &[b"2\n8192\n512\n0\n512\n".as_slice(), &[0u8; 495], &[1u8; 1024]].concat(),
            ),
            "entry 2 of 2",
        ),
        (
            "pax-1.0-huge-count",
            pax_member(
                &[
                    ("GNU.sparse.major", "1".into()),
                    ("GNU.sparse.minor", "0".into()),
                    ("GNU.sparse.name", "disk.raw".into()),
                    ("GNU.sparse.realsize", "65536".into()),
                ],
                "GNUSparseFile.1/disk.raw",
                &[b"99999999999999\n".as_slice(), &[0u8; 497]].concat(),
            ),
            "99999999999999",
        ),
        (
            "pax-unknown-version",
            pax_member(
                &[
                    ("GNU.sparse.major", "2".into()),
                    ("GNU.sparse.minor", "0".into()),
                    ("GNU.sparse.name", "disk.raw".into()),
                    ("GNU.sparse.realsize", "65536".into()),
                ],
                "GNUSparseFile.1/disk.raw",
                &[0u8; 512],
            ),
            "2.0",
        ),
        (
            "pax-0.1-count",
            pax_member(
                &[
                    ("GNU.sparse.size", "65536".into()),
                    ("GNU.sparse.numblocks", "3".into()),
                    ("GNU.sparse.name", "disk.raw".into()),
                    ("GNU.sparse.map", "0,512,4096,512".into()),
                ],
                "GNUSparseFile.1/disk.raw",
                &[1u8; 1024],
            ),
            "numblocks",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = d.join(format!("{name}.tar"));
        std::fs::write(&p, bytes).unwrap();
        let e = refused(&p).await;
        let msg = e.to_string();
        assert!(
            matches!(e.label(), "invalid_image" | "unsupported"),
            "{name}: {msg}"
        );
        assert!(msg.contains("disk.raw") && msg.contains(needle), "{name}: {msg}");
    }
    // The names keep their checks.
    let p = d.join("evil.tar");
    std::fs::write(&p, gnu_sparse("../evil.raw", 4096, &[(0, 512)], 512)).unwrap();
    assert_eq!(refused(&p).await.label(), "refused");
    let p = d.join("evil-pax.tar");
    let evil = pax_member(
        &[
            ("GNU.sparse.major", "1".into()),
            ("GNU.sparse.minor", "0".into()),
            ("GNU.sparse.name", "/etc/shadow".into()),
            ("GNU.sparse.realsize", "512".into()),
        ],
        "GNUSparseFile.1/disk.raw",
        &[b"1\n0\n512\n".as_slice(), &[0u8; 503], &[1u8; 512]].concat(),
    );
    std::fs::write(&p, evil).unwrap();
    assert_eq!(refused(&p).await.label(), "refused");
    // A valid hand-made one imports (holes as zeros).
    let p = d.join("good.tar");
    std::fs::write(&p, gnu_sparse("disk.raw", 65536, &many[..6], 6 * 512)).unwrap();
    let data = random_bytes(7, 6 * 512);
    let mut want = vec![0u8; 65536];
    for (i, (off, len)) in many[..6].iter().enumerate() {
        want[*off as usize..(off + len) as usize].copy_from_slice(&data[i * 512..(i + 1) * 512]);
    }
    let out = d.join("good.img");
    import(options(&p, &out)).await.unwrap();
    assert_same(&std::fs::read(&out).unwrap(), &want, "hand-made GNU sparse");
}

/// Where the frame content size of the zstd frame at the start of `z` is (offset, width).
fn zstd_fcs_field(z: &[u8]) -> (usize, usize) {
    let fhd = z[4];
    let single = fhd & 0x20 != 0;
    let pos = 5 + usize::from(!single) + [0, 1, 2, 4][usize::from(fhd & 3)];
    let width = match (fhd >> 6, single) {
        (0, true) => 1,
        (0, false) => 0,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    (pos, width)
}

#[tokio::test]
async fn declared_sizes_are_final_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sparse_disk(d, true);
    // A zstd frame that declares one byte more, or less, than it holds.
    sh(&format!("cd {} && zstd -q --no-check -c disk.raw > z", s(d)));
    let z = std::fs::read(d.join("z")).unwrap();
    let (pos, width) = zstd_fcs_field(&z);
    assert!(width >= 4, "the frame declares its size");
    for delta in [1i64, -1] {
        let mut b = z.clone();
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(&b[pos..pos + width]);
        let fcs = (u64::from_le_bytes(v) as i64 + delta) as u64;
        b[pos..pos + width].copy_from_slice(&fcs.to_le_bytes()[..width]);
        std::fs::write(d.join("fcs"), b).unwrap();
        let e = refused(&d.join("fcs")).await;
        assert_ne!(e.label(), "refused", "{delta}: {e}");
    }
    // A tar member shorter than its header says (cut inside the data; the rest is zeros so
    // a sloppy reader would not notice).
    let t = tar(d, "--format=ustar -c", "t.tar");
    let mut b = std::fs::read(&t).unwrap();
    b.truncate(20 << 20);
    std::fs::write(d.join("cut-tar"), &b).unwrap();
    let e = refused(&d.join("cut-tar")).await;
    assert!(e.to_string().contains("disk.raw"), "{e}");
    // A sparse member cut inside its data, and one cut inside its map.
    let t = tar(d, "--format=gnu --sparse -c", "g.tar");
    let b = std::fs::read(&t).unwrap();
    std::fs::write(d.join("cut-sparse"), &b[..b.len() / 2]).unwrap();
    let e = refused(&d.join("cut-sparse")).await;
    assert!(e.to_string().contains("disk.raw"), "{e}");
    std::fs::write(d.join("cut-map"), &b[..BLOCK + 100]).unwrap();
    refused(&d.join("cut-map")).await;
    let t = tar(d, "--format=pax --sparse --sparse-version=1.0 -c", "p.tar");
    let b = std::fs::read(&t).unwrap();
    let map_at = b.windows(6).position(|w| w == b"\n4096\n").unwrap();
    std::fs::write(d.join("cut-pax-map"), &b[..map_at + 3]).unwrap();
    refused(&d.join("cut-pax-map")).await;
    // `--format vhd` on data without a fixed VHD footer is not imported as raw.
    let e = refused_with(&d.join("disk.raw"), Some(DiskFormat::Vhd)).await;
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("footer"), "{e}");
}

/// Writes `bytes` to `d/name` (no extension: the file name does not hint at the format).
fn put(d: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[tokio::test]
async fn recognised_containers_that_do_not_parse_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    sparse_disk(d, true);
    let make = |format: &str, options: &str| -> Vec<u8> {
        let o = d.join(format!("made.{format}"));
        let mut args = vec!["convert", "-O", format];
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend([s(&raw), s(&o)]);
        run("qemu-img", &args);
        std::fs::read(&o).unwrap()
    };
    let qcow2 = make("qcow2", "");
    let vmdk = make("vmdk", "");
    let stream = make("vmdk", "subformat=streamOptimized");
    let vhd = make("vpc", "");
    let vhdx = make("vhdx", "");
    let vdi = make("vdi", "");
    sh(&format!(
        "cd {} && gzip -1 -c disk.raw > gz && bzip2 -1 -c disk.raw > bz2 && xz -1 -c disk.raw > xz \
         && zstd -q -1 -c disk.raw > zst && tar --format=ustar -cf tar disk.raw",
        s(d)
    ));
    let read = |n: &str| std::fs::read(d.join(n)).unwrap();
    let patched = |mut b: Vec<u8>, at: usize, v: &[u8]| {
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("qcow2-header-cut", qcow2[..48].to_vec()),
        ("qcow2-magic-only", qcow2[..4].to_vec()),
        ("qcow2-version-9", patched(qcow2.clone(), 4, &9u32.to_be_bytes())),
        ("vmdk-header-cut", vmdk[..100].to_vec()),
        ("vmdk-stream-cut", stream[..1000].to_vec()),
        ("vhd-footer-checksum", patched(vhd.clone(), 64, &[0, 0, 0, 0])),
        ("vhd-cut", vhd[..600].to_vec()),
        ("vhdx-cut", vhdx[..70_000].to_vec()),
        ("vdi-cut", vdi[..0x180].to_vec()),
        ("gzip-method", patched(read("gz"), 2, &[7])),
        ("gzip-header-cut", read("gz")[..5].to_vec()),
        ("bzip2-level", patched(read("bz2"), 3, b"0")),
        ("bzip2-magic-only", b"BZh".to_vec()),
        ("xz-header-crc", patched(read("xz"), 8, &[0xff])),
        ("zstd-frame-header-cut", read("zst")[..5].to_vec()),
        ("zstd-skippable-cut", skippable(0, &[1u8; 100])[..50].to_vec()),
        ("zstd-skippable-only", skippable(0, &[1u8; 100])),
        ("tar-checksum", patched(read("tar"), 148, b"0000000")),
        ("tar-header-cut", read("tar")[..400].to_vec()),
    ];
    // A legacy zstd frame (v0.7): not decodable here, but not raw either.
    cases.push(("zstd-legacy", patched(read("zst"), 0, &[0x27])));
    for (name, bytes) in cases {
        let p = put(d, name, &bytes);
        let e = refused(&p).await;
        assert!(
            matches!(e.label(), "invalid_image" | "unsupported" | "io"),
            "{name}: {} ({e})",
            e.label()
        );
    }
}
