use super::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Words, random bytes and zeros (deterministic).
fn data(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let run = (next() % 50_000) as usize;
        match next() % 3 {
            0 => (0..run).for_each(|_| v.push(next() as u8)),
            1 => v.resize(v.len() + run, 0),
            _ => (0..run / 8).for_each(|_| {
                v.extend_from_slice(["disk ", "image ", "xz "][(next() % 3) as usize].as_bytes())
            }),
        }
    }
    v.truncate(n);
    v
}

/// `cmd args` with `input` on its standard input: its output.
fn cli(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect(cmd);
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}");
    out.stdout
}

fn read_all(r: io::Result<Box<dyn Read + Send>>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r?.read_to_end(&mut out)?;
    Ok(out)
}

/// Continues `z` from `p` (the start of the stream for `None`).
fn from_point(c: Compression, z: &[u8], p: &Point, points: Points) -> io::Result<Vec<u8>> {
    let at = Restart {
        output: p.decoded.output,
        inflate: None,
        xz_check: p.decoded.xz_check,
    };
    let rest = Box::new(io::Cursor::new(z[p.input as usize..].to_vec()));
    read_all(resumable(c, rest, p.input, Some(at), points, &Default::default()))
}

/// Decodes `z` with every restart point kept, checks that each gives exactly the rest
/// of `want`, and returns them.
fn every_point_resumes(c: Compression, z: &[u8], want: &[u8]) -> Vec<Point> {
    let points = Points::with_gap(0);
    let whole = Box::new(io::Cursor::new(z.to_vec()));
    let got = read_all(resumable(c, whole, 0, None, points.clone(), &Default::default())).unwrap();
    assert!(got == want, "{c:?}");
    let all = points.all();
    for p in &all {
        let rest = from_point(c, z, p, Points::with_gap(0)).unwrap();
        assert!(rest == want[p.decoded.output as usize..], "{c:?} from {p:?}");
    }
    all
}

#[test]
fn xz_blocks_and_streams_are_restart_points() {
    let a = data(1, 3 << 20);
    let mt = cli("xz", &["-T2", "--block-size=128KiB", "-c"], &a);
    let st = cli("xz", &["-T1", "-c"], &a);
    let two = [mt.clone(), vec![0; 8], st, mt.clone()].concat();
    let want = [a.clone(), a.clone(), a.clone()].concat();
    let all = every_point_resumes(Compression::Xz, &two, &want);
    let blocks = all.iter().filter(|p| p.decoded.xz_check == Some(4)).count();
    // 24 blocks in each multi-threaded stream (the first of each is its stream's start);
    // none in the single-threaded one (its block header has no sizes).
    assert_eq!(blocks, 2 * 23, "{all:?}");
    let streams: Vec<(u64, u64)> = all
        .iter()
        .filter(|p| p.decoded.xz_check.is_none())
        .map(|p| (p.input, p.decoded.output))
        .collect();
    let second = mt.len() as u64 + 8;
    let third = (two.len() - mt.len()) as u64;
    assert_eq!(streams, [(second, 3 << 20), (third, 6 << 20)]);
    assert!(all.iter().all(|p| p.decoded.output % (128 << 10) == 0));
}

#[test]
fn a_continued_xz_stream_checks_the_stored_index() {
    let a = data(2, 1 << 20);
    let xz = cli("xz", &["-T2", "--block-size=64KiB", "-c"], &a);
    let points = Points::with_gap(0);
    read_all(resumable(
        Compression::Xz,
        Box::new(io::Cursor::new(xz.clone())),
        0,
        None,
        points.clone(),
        &Default::default(),
    ))
    .unwrap();
    let p = points.all()[8].clone();
    assert_eq!(p.decoded.xz_check, Some(4));
    // The index: before the 12-byte footer, its size from the footer's backward size.
    let n = xz.len();
    let backward = u32::from_le_bytes(xz[n - 8..n - 4].try_into().unwrap());
    let index = n - 12 - (backward as usize + 1) * 4;
    assert_eq!(xz[index], 0);
    let fails = |bad: Vec<u8>| {
        let e = from_point(Compression::Xz, &bad, &p, Points::new()).unwrap_err();
        crate::Error::io("reading", e).to_string()
    };
    let fix_crc = |bad: &mut Vec<u8>| {
        let crc = zlib_rs::crc32::crc32(0, &bad[index..n - 16]);
        bad[n - 16..n - 12].copy_from_slice(&crc.to_le_bytes());
    };
    // The stored index's CRC-32.
    let mut bad = xz.clone();
    bad[n - 14] ^= 1;
    assert!(fails(bad).contains("CRC-32"));
    // A record of a block decoded here, its CRC-32 made right: liblzma refuses the index
    // of the blocks it decoded.
    let mut bad = xz.clone();
    bad[n - 18] ^= 1;
    fix_crc(&mut bad);
    let msg = fails(bad);
    assert!(msg.contains("lzma data error"), "{msg}");
    // The footer's flags.
    let mut bad = xz.clone();
    bad[n - 3] = 1;
    assert!(fails(bad).contains("footer"));
    // Cut in the index.
    let e = from_point(Compression::Xz, &xz[..n - 20], &p, Points::new()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    // Records of blocks before the checkpoint are only counted (the stream header's
    // CRC and its blocks are not read again either).
    let mut other = xz.clone();
    other[index + 3] ^= 0x01;
    fix_crc(&mut other);
    assert!(
        from_point(Compression::Xz, &other, &p, Points::new()).unwrap() == a[p.decoded.output as usize..]
    );
}

#[test]
fn zstd_frames_and_bzip2_streams_are_restart_points() {
    let a = data(3, 700_000);
    let b = data(4, 300_000);
    let want = [a.clone(), b.clone(), a.clone()].concat();
    // zstd: frames, and a skippable frame between them.
    let (za, zb) = (
        zstd::encode_all(&a[..], 3).unwrap(),
        zstd::encode_all(&b[..], 19).unwrap(),
    );
    let skippable = [&0x184d_2a50u32.to_le_bytes()[..], &4u32.to_le_bytes(), b"skip"].concat();
    let z = [za.clone(), skippable, zb.clone(), za.clone()].concat();
    let all = every_point_resumes(Compression::Zstd, &z, &want);
    let outputs: Vec<u64> = all.iter().map(|p| p.decoded.output).collect();
    assert_eq!(outputs, [700_000, 1_000_000, 1_700_000]);
    assert!(from_point(Compression::Zstd, &z[..z.len() - 10], &all[1], Points::new()).is_err());
    // bzip2: streams, then zero padding.
    let bz = |d: &[u8]| {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    };
    let z = [bz(&a), bz(&b), bz(&a), vec![0; 100]].concat();
    let all = every_point_resumes(Compression::Bzip2, &z, &want);
    let outputs: Vec<u64> = all.iter().map(|p| p.decoded.output).collect();
    assert_eq!(outputs, [700_000, 1_000_000]);
}

fn roundtrip(c: Compression, compressed: Vec<u8>, expect: &[u8]) {
    let mut out = Vec::new();
    decoder(c, Box::new(io::Cursor::new(compressed)), &Default::default())
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, expect, "{c:?}");
}

#[test]
fn concatenated_members_and_streams() {
    let data = b"hello world ".repeat(1000);
    let gz = |d: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    };
    let xz = |d: &[u8]| {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(d).unwrap();
        e.finish().unwrap()
    };
    let both = [data.as_slice(), data.as_slice()].concat();
    roundtrip(Compression::Gzip, [gz(&data), gz(&data)].concat(), &both);
    roundtrip(
        Compression::Xz,
        [xz(&data), vec![0; 4], xz(&data)].concat(),
        &both,
    );
    let z = zstd::encode_all(&data[..], 1).unwrap();
    roundtrip(Compression::Zstd, [z.clone(), z].concat(), &both);
}

#[test]
fn zero_padding_and_legacy_lzma() {
    let data = b"padded ".repeat(1000);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&data).unwrap();
    let gz = e.finish().unwrap();
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    e.write_all(&data).unwrap();
    let bz = e.finish().unwrap();
    let opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
    let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    e.write_all(&data).unwrap();
    let lzma = e.finish().unwrap();
    let both = [data.as_slice(), data.as_slice()].concat();
    roundtrip(Compression::Gzip, [gz.clone(), vec![0; 10_000]].concat(), &data);
    roundtrip(
        Compression::Gzip,
        [gz.clone(), gz.clone(), vec![0; 1]].concat(),
        &both,
    );
    roundtrip(
        Compression::Bzip2,
        [bz.clone(), bz.clone(), vec![0; 512]].concat(),
        &both,
    );
    roundtrip(Compression::Lzma, lzma.clone(), &data);
    let fails = |c: Compression, input: Vec<u8>| {
        let mut out = Vec::new();
        decoder(c, Box::new(io::Cursor::new(input)), &Default::default())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err()
            .to_string()
    };
    for (c, z) in [(Compression::Gzip, &gz), (Compression::Bzip2, &bz)] {
        let msg = fails(c, [z.clone(), vec![0; 10], b"x".to_vec()].concat());
        assert!(msg.contains("after 10 zero bytes"), "{msg}");
        let msg = fails(c, [z.clone(), b"garbage".to_vec()].concat());
        assert!(msg.contains("data after the end"), "{msg}");
    }
    // Nothing may follow a legacy lzma stream (it has no padding).
    let msg = fails(Compression::Lzma, [lzma, vec![0; 4]].concat());
    assert!(msg.contains("data after the end"), "{msg}");
}

fn decode(compressed: Vec<u8>, opts: &DecompressOptions) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decoder(Compression::Zstd, Box::new(io::Cursor::new(compressed)), opts)?.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn zstd_windows_above_the_limit_are_refused_by_name() {
    // A frame made with a 256 MiB window (as `zstd --long=28` makes), no content size.
    let data = b"long window ".repeat(10_000);
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    e.window_log(28).unwrap();
    e.long_distance_matching(true).unwrap();
    e.include_contentsize(false).unwrap();
    e.write_all(&data).unwrap();
    let z = e.finish().unwrap();
    let err = decode(z.clone(), &DecompressOptions::default()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(
        msg.contains("128 MiB") && msg.contains("--zstd-window-log"),
        "{msg}"
    );
    let opts = DecompressOptions {
        zstd_window_log_max: 28,
        ..Default::default()
    };
    assert_eq!(decode(z, &opts).unwrap(), data);
    // The fuzzer's 10 bytes: a frame header declaring a 2 GiB window.
    let header = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa8, 0x5a, 0x68, 0x00, 0x27];
    let msg = decode(header, &DecompressOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--zstd-window-log"), "{msg}");
}
