use super::*;
use crate::detect::Compression;
use std::io::Write;
use std::process::{Command, Stdio};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Text-like words, random bytes, zeros and short repeats, in runs of varied length:
/// all three block types, matches near and far, codes of every length.
fn mixed(seed: u64, n: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "disk ",
        "image ",
        "import ",
        "the ",
        "sector ",
        "qcow2 ",
        "\n",
        "0x1f8b ",
        "resume ",
        "checkpoint ",
        "window ",
        "block ",
    ];
    let mut r = Rng(seed | 1);
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let run = (r.next() % 40_000) as usize + 1;
        match r.next() % 5 {
            0 => (0..run).for_each(|_| v.push(r.next() as u8)),
            1 => v.resize(v.len() + run, 0),
            2 => {
                let period = (r.next() % 7 + 1) as usize;
                let pat: Vec<u8> = (0..period).map(|_| r.next() as u8).collect();
                (0..run).for_each(|i| v.push(pat[i % period]));
            }
            _ => {
                while v.len() < n && run > 0 {
                    v.extend_from_slice(WORDS[(r.next() % 12) as usize].as_bytes());
                    if r.next().is_multiple_of(50) {
                        break;
                    }
                }
            }
        }
    }
    v.truncate(n);
    v
}

fn gzip(args: &[&str], data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn decode(gz: &[u8], points: Option<Points>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    GzResumable::new(gz, 0, None, points)?.read_to_end(&mut out)?;
    Ok(out)
}

/// What the import's usual decoder (flate2, members and padding) makes of `gz`.
fn flate2(gz: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    super::super::decoder(
        Compression::Gzip,
        Box::new(io::Cursor::new(gz.to_vec())),
        &Default::default(),
    )?
    .read_to_end(&mut out)?;
    Ok(out)
}

/// Continues `gz` from `p` (the window taken from `data`, as the import takes it from
/// the target) and returns the rest of the output.
fn rest_from(gz: &[u8], data: &[u8], p: &Point) -> Vec<u8> {
    let output = p.decoded.output as usize;
    let inside = p.decoded.inflate.clone().map(|f| {
        let w = (f.member as usize).min(WINDOW);
        let window = data[output - w..output].to_vec();
        assert_eq!(
            zlib_rs::crc32::crc32(0, &window),
            f.window,
            "window CRC at {output}"
        );
        (f, window)
    });
    let at = Restart {
        output: p.decoded.output,
        inside,
    };
    let mut d = GzResumable::new(&gz[p.input as usize..], p.input, Some(at), None).unwrap();
    let mut out = Vec::new();
    d.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn every_block_of_gzip_9_is_a_restart_point() {
    let data = mixed(7, 4 << 20);
    let gz = gzip(&["-9", "-c"], &data);
    let points = Points::with_gap(0);
    assert!(decode(&gz, Some(points.clone())).unwrap() == data);
    let all = points.all();
    let inside: Vec<&Point> = all.iter().filter(|p| p.decoded.inflate.is_some()).collect();
    assert!(inside.len() >= 40, "{} block boundaries", inside.len());
    let unaligned = inside
        .iter()
        .filter(|p| p.decoded.inflate.as_ref().unwrap().bit != 0)
        .count();
    assert!(
        unaligned >= inside.len() / 2,
        "{unaligned} of {} mid-byte",
        inside.len()
    );
    assert!(all.windows(2).all(|w| w[0].decoded.output < w[1].decoded.output));
    // The last point is the end of the member: nothing left.
    let last = all.last().unwrap();
    assert!(last.decoded.inflate.is_none() && last.input == gz.len() as u64);
    // Resuming from a point gives exactly the rest.
    for p in inside.iter().step_by(inside.len() / 12).chain(inside.last()) {
        let rest = rest_from(&gz, &data, p);
        assert!(
            rest == data[p.decoded.output as usize..],
            "resumed at byte {} bit {} (output {})",
            p.input,
            p.decoded.inflate.as_ref().unwrap().bit,
            p.decoded.output
        );
    }
}

#[test]
fn members_padding_and_levels_match_flate2() {
    let a = mixed(1, 300_000);
    let b = mixed(2, 200_000);
    for level in ["-1", "-6", "-9"] {
        let (ga, gb) = (gzip(&[level, "-c"], &a), gzip(&[level, "-c", "-n"], &b));
        let both = [a.clone(), b.clone()].concat();
        for (gz, want) in [
            (ga.clone(), a.clone()),
            ([ga.clone(), gb.clone()].concat(), both.clone()),
            ([ga.clone(), gb.clone(), vec![0; 1000]].concat(), both.clone()),
        ] {
            let points = Points::with_gap(0);
            let got = decode(&gz, Some(points.clone())).unwrap();
            assert!(got == want && flate2(&gz).unwrap() == want, "{level}");
            // From each member boundary and from a block inside the second member.
            for p in points.all() {
                assert!(rest_from(&gz, &want, &p) == want[p.decoded.output as usize..]);
            }
        }
    }
    // pigz: blocks ended by empty stored blocks (sync flushes), independent blocks.
    for args in [
        &["-p", "2", "-b", "128", "-c"][..],
        &["-p", "2", "-i", "-b", "64", "-c"],
    ] {
        let Ok(mut child) = Command::new("pigz")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            eprintln!("pigz is not installed: skipped");
            break;
        };
        let mut stdin = child.stdin.take().unwrap();
        let input = [a.clone(), b.clone()].concat();
        let writer = {
            let input = input.clone();
            std::thread::spawn(move || stdin.write_all(&input).unwrap())
        };
        let gz = child.wait_with_output().unwrap().stdout;
        writer.join().unwrap();
        let points = Points::with_gap(0);
        assert!(decode(&gz, Some(points.clone())).unwrap() == input);
        let all = points.all();
        assert!(all.len() > 3, "{args:?}: {} points", all.len());
        for p in all {
            assert!(rest_from(&gz, &input, &p) == input[p.decoded.output as usize..]);
        }
    }
    // A member with a name, a comment, an extra field and a header CRC (made here).
    let mut e = flate2::GzBuilder::new()
        .filename("disk.raw")
        .comment("made by a test")
        .extra(vec![1, 2, 3])
        .write(Vec::new(), flate2::Compression::best());
    e.write_all(&a).unwrap();
    let gz = e.finish().unwrap();
    assert!(decode(&gz, None).unwrap() == a);
    // Empty input data, and fixed codes (short data at level 1).
    for data in [&b""[..], b"hello hello hello hello"] {
        assert_eq!(decode(&gzip(&["-1", "-c"], data), None).unwrap(), data);
    }
}

/// Throughput against flate2 (zlib-rs): `cargo test --release -p ido-disk --lib
/// throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement"]
fn throughput() {
    let mixed_only = mixed(11, 96 << 20);
    let mut disk_like = mixed_only.clone();
    disk_like.resize(160 << 20, 0);
    for (what, data) in [("mixed", mixed_only), ("disk-like (zeros after)", disk_like)] {
        let gz = gzip(&["-6", "-c"], &data);
        let mut buf = vec![0u8; 1 << 20];
        let mut time = |r: &mut dyn Read| {
            let t = std::time::Instant::now();
            let mut n = 0;
            loop {
                match r.read(&mut buf).unwrap() {
                    0 => break,
                    k => n += k,
                }
            }
            assert_eq!(n, data.len());
            t.elapsed().as_secs_f64()
        };
        for _ in 0..3 {
            let f = time(
                &mut super::super::decoder(
                    Compression::Gzip,
                    Box::new(io::Cursor::new(gz.clone())),
                    &Default::default(),
                )
                .unwrap(),
            );
            let o = time(&mut GzResumable::new(&gz[..], 0, None, Some(Points::new())).unwrap());
            let mb = data.len() as f64 / 1e6;
            println!(
                "{what}: {} MiB from {} MiB: flate2 {:.0} MB/s, resumable {:.0} MB/s ({:.2}x the time)",
                data.len() >> 20,
                gz.len() >> 20,
                mb / f,
                mb / o,
                o / f
            );
        }
    }
}

#[test]
fn bad_input_is_an_error_like_flate2_never_a_panic() {
    let data = mixed(3, 100_000);
    let gz = gzip(&["-6", "-c"], &data);
    // Truncated anywhere.
    for cut in [0, 5, 10, 11, 100, gz.len() / 2, gz.len() - 8, gz.len() - 1] {
        let e = decode(&gz[..cut], None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {e}");
    }
    // Bytes changed: both decoders agree on whether it decodes, and on what.
    let mut r = Rng(99);
    for i in 0..3000 {
        let mut bad = gz.clone();
        for _ in 0..=(i % 3) {
            let at = (r.next() as usize) % bad.len();
            bad[at] ^= 1 << (r.next() % 8);
        }
        if i % 7 == 0 {
            bad.truncate((r.next() as usize) % bad.len());
        }
        let ours = decode(&bad, None);
        let theirs = flate2(&bad);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert!(a == b, "case {i}"),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "case {i}: ours {:?}, flate2 {:?}",
                ours.as_ref().err(),
                theirs.as_ref().err()
            ),
        }
    }
    // Data errors are typed (an invalid gzip image), not I/O trouble.
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 8] ^= 1;
    let e = decode(&bad, None).unwrap_err();
    let e = Error::io("reading", e);
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("CRC-32 mismatch"), "{e}");
    // A checkpoint state that does not fit its window is refused.
    let at = Restart {
        output: 10,
        inside: Some((
            InflatePoint {
                bit: 3,
                crc: 0,
                member: 100,
                window: 0,
            },
            vec![0; 10],
        )),
    };
    assert!(GzResumable::new(&gz[..], 0, Some(at), None).is_err());
}
