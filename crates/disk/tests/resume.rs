//! Resuming in a later run (a restarted importer pod): a transport failure with `resume`
//! keeps the target and a checkpoint; the next run asks for the rest with `Range` and
//! `If-Range`, continues the checksum from its saved state, and ends with exactly the image.
//! A changed object, a permanent failure, or an image that cannot resume start from 0 or
//! leave nothing behind. Compressed images (gzip, xz, zstd, bzip2) continue at a point where
//! their decoder can start again.

mod common;

use std::path::Path;
use std::time::Duration;

use common::http_server::{Behaviour, FileServer};
use common::*;
use ido_disk::resume::{Record, record_path};
use ido_disk::{HttpOptions, ImportOptions, RetryPolicy, SourceSpec, TargetSpec, import};

/// An import of `url` into `out` that resumes, checkpoints every 1 MiB, and gives up at
/// the first cut (as a pod that dies would).
fn options(url: &str, out: &Path, connections: usize) -> ImportOptions {
    ido_testkit::install_crypto_provider();
    let mut http = HttpOptions::new(url.parse().unwrap());
    http.retry = RetryPolicy {
        attempts: 1,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
    };
    http.connections = connections;
    http.chunk_size = 1 << 20;
    let mut o = ImportOptions::new(
        SourceSpec::Http(Box::new(http)),
        TargetSpec {
            path: out.to_path_buf(),
            capacity: None,
        },
    );
    o.resume = true;
    o.checkpoint_every = 1 << 20;
    // These tests import into one file again and again.
    o.overwrite = true;
    o
}

fn record_of(out: &Path) -> Record {
    serde_json::from_slice(&std::fs::read(record_path(out)).expect("a checkpoint is kept")).unwrap()
}

/// The fixture served with an ETag, cut once at `cut`.
async fn server(data: &[u8], cut: u64) -> FileServer {
    FileServer::start(
        data.to_vec(),
        Behaviour {
            ranges: true,
            cut_at: Some(cut),
            etag: Some("\"v1\"".into()),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_second_run_continues_where_the_first_one_died() {
    let dir = tempfile::tempdir().unwrap();
    let data = raw_image();
    let sum = sha256(&write_raw(dir.path()));
    let cut = data.len() as u64 * 6 / 10;
    let server = server(&data, cut).await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out, 1);
    opts.checksum = Some(sum.parse().unwrap());

    let err = import(opts.clone()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let rec = record_of(&out);
    assert!(out.exists(), "the target is kept for the next run");
    assert!(
        rec.offset > cut / 2 && rec.offset <= cut,
        "checkpoint at {} for a cut at {cut}",
        rec.offset
    );
    assert_eq!(rec.validator, "\"v1\"");
    assert_eq!(rec.total, data.len() as u64);

    let report = import(opts).await.unwrap();
    assert_eq!(report.resumed_from, rec.offset);
    assert_eq!(
        report.source_bytes,
        data.len() as u64 - rec.offset,
        "only the rest is fetched"
    );
    assert!(
        report.checksum.is_some(),
        "the checksum covers the kept prefix too"
    );
    assert_same(&std::fs::read(&out).unwrap(), &data, "resumed import");
    assert_sparse(&out);
    assert!(
        !record_path(&out).exists(),
        "the checkpoint is removed at the end"
    );

    let seen = server.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.range_start(), Some(rec.offset), "{seen:?}");
    assert_eq!(last.header("if-range"), Some("\"v1\""));
}

#[tokio::test]
async fn a_resumed_import_fetches_the_rest_in_parallel_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = raw_image();
    let server = server(&data, data.len() as u64 / 2).await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out, 4);
    if let SourceSpec::Http(h) = &mut opts.source {
        h.parallel_min = 4 << 20;
    }
    import(opts.clone()).await.unwrap_err();
    let rec = record_of(&out);
    let before = server.seen().len();

    let report = import(opts).await.unwrap();
    assert_eq!(report.resumed_from, rec.offset);
    assert_same(&std::fs::read(&out).unwrap(), &data, "parallel resumed import");
    let again = &server.seen()[before..];
    assert!(again.len() > 4, "parallel chunks: {again:?}");
    assert!(
        again
            .iter()
            .all(|s| s.range_start().is_some_and(|r| r >= rec.offset)),
        "nothing before the checkpoint is fetched again: {again:?}"
    );
}

#[tokio::test]
async fn a_changed_object_is_imported_again_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = raw_image();
    let cut = data.len() as u64 / 2;
    // The first request has the old ETag; every later one sees a new object.
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            cut_at: Some(cut),
            etag: Some("\"v1\"".into()),
            etag_after: Some((1, "\"v2\"".into())),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let opts = options(&server.url(), &out, 1);
    import(opts.clone()).await.unwrap_err();
    assert!(record_of(&out).offset > 0);

    let report = import(opts).await.unwrap();
    assert_eq!(report.resumed_from, 0, "a changed object is not spliced");
    assert_eq!(report.source_bytes, data.len() as u64);
    assert_same(&std::fs::read(&out).unwrap(), &data, "re-imported");
    let seen = server.seen();
    assert_eq!(seen[1].header("if-range"), Some("\"v1\""), "{seen:?}");
    assert_eq!(
        seen.last().unwrap().range_start(),
        None,
        "then a plain GET: {seen:?}"
    );
    assert!(!record_path(&out).exists());
}

#[tokio::test]
async fn permanent_failures_and_images_that_cannot_resume_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = raw_image();
    let out = dir.path().join("out.img");

    // A checksum mismatch after a resumed run: target and checkpoint are removed.
    let server = server(&data, data.len() as u64 / 2).await;
    let mut opts = options(&server.url(), &out, 1);
    opts.checksum = Some(format!("sha256:{}", "0".repeat(64)).parse().unwrap());
    import(opts.clone()).await.unwrap_err();
    assert!(record_path(&out).exists());
    let err = import(opts).await.unwrap_err();
    assert_eq!(err.label(), "checksum_mismatch", "{err}");
    assert!(!out.exists() && !record_path(&out).exists());

    // Legacy lzma cannot continue from the middle (one stream, nothing in it to start
    // again at): a cut removes the target as without `resume`.
    let raw = write_raw(dir.path());
    sh(&format!("xz --format=lzma -1 -k {}", raw.display()));
    let lzma = std::fs::read(dir.path().join("disk.raw.lzma")).unwrap();
    let server = server_for(&lzma).await;
    let err = import(options(&server.url(), &out, 1)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!out.exists() && !record_path(&out).exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "only the fixtures (disk.raw, disk.raw.lzma) are left"
    );
}

async fn server_for(data: &[u8]) -> FileServer {
    server(data, data.len() as u64 / 2).await
}

#[tokio::test]
async fn a_checkpoint_of_other_options_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let data = raw_image();
    let server = server(&data, data.len() as u64 / 2).await;
    let out = dir.path().join("out.img");
    let opts = options(&server.url(), &out, 1);
    import(opts.clone()).await.unwrap_err();
    assert!(record_of(&out).offset > 0);

    let mut other = opts;
    other.preallocate = true;
    let report = import(other).await.unwrap();
    assert_eq!(report.resumed_from, 0, "preallocation differs: from 0");
    assert_same(&std::fs::read(&out).unwrap(), &data, "re-imported");
}

/// A qcow2 made by `qemu-img convert` from the fixture (`-c`: compressed clusters).
fn qcow2(dir: &Path, compressed: bool) -> Vec<u8> {
    let raw = write_raw(dir);
    let q = dir.join(if compressed { "c.qcow2" } else { "d.qcow2" });
    let mut args = vec!["convert", "-O", "qcow2"];
    if compressed {
        args.push("-c");
    }
    args.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
    run("qemu-img", &args);
    std::fs::read(&q).unwrap()
}

#[tokio::test]
async fn a_qcow2_continues_with_its_mapping_rebuilt_from_its_tables() {
    for compressed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data = qcow2(dir.path(), compressed);
        let cut = data.len() as u64 * 6 / 10;
        let server = server(&data, cut).await;
        let out = dir.path().join("out.img");
        let mut opts = options(&server.url(), &out, 1);
        opts.checkpoint_every = 256 << 10;

        import(opts.clone()).await.unwrap_err();
        let rec = record_of(&out);
        assert_eq!(rec.format, "qcow2");
        assert!(
            rec.offset > 0 && rec.offset <= cut,
            "checkpoint at {} for a cut at {cut}",
            rec.offset
        );
        let before = server.seen().len();

        let report = import(opts).await.unwrap();
        assert_eq!(report.resumed_from, rec.offset, "compressed: {compressed}");
        assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "resumed qcow2");
        assert_sparse(&out);
        assert!(!record_path(&out).exists());
        // Ranged reads of the tables, then the stream from the checkpoint.
        let again = &server.seen()[before..];
        let stream = again.last().unwrap();
        assert_eq!(stream.range_start(), Some(rec.offset), "{again:?}");
        assert_eq!(stream.range_end(), None, "{again:?}");
        assert!(again.len() >= 3, "header, L1 and L2 reads: {again:?}");
        for table in &again[..again.len() - 1] {
            assert!(table.range_end().is_some(), "bounded table reads: {again:?}");
            assert_eq!(table.header("if-range"), Some("\"v1\""));
        }
        let table_bytes: u64 = again[..again.len() - 1]
            .iter()
            .map(|s| s.range_end().unwrap() + 1 - s.range_start().unwrap())
            .sum();
        assert!(
            table_bytes <= (2 << 20) + (256 << 10),
            "{table_bytes} bytes of tables"
        );
    }
}

#[tokio::test]
async fn a_qcow2_with_a_checksum_continues_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let data = qcow2(dir.path(), false);
    let cut = data.len() as u64 * 6 / 10;
    let out = dir.path().join("out.img");
    let sum = {
        let p = dir.path().join("served");
        std::fs::write(&p, &data).unwrap();
        sha256(&p)
    };
    let opts = |url: &str, sum: &str| {
        let mut o = options(url, &out, 1);
        o.checkpoint_every = 256 << 10;
        o.checksum = Some(sum.parse().unwrap());
        o
    };

    // Cut, then continue: the whole object is verified, the prefix is not fetched again.
    let served = server(&data, cut).await;
    let err = import(opts(&served.url(), &sum)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let rec = record_of(&out);
    let hashed = rec.hashed.clone().expect("the hash state is kept");
    assert!(
        rec.offset > 0 && hashed.up_to >= rec.offset && hashed.up_to <= cut,
        "checkpoint at {}, hashed to {} for a cut at {cut}",
        rec.offset,
        hashed.up_to
    );
    let before = served.seen().len();
    let report = import(opts(&served.url(), &sum)).await.unwrap();
    assert_eq!(report.resumed_from, rec.offset);
    assert_eq!(report.checksum.as_deref(), Some(sum.as_str()));
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "resumed qcow2");
    let stream = served.seen()[before..].last().cloned().unwrap();
    assert_eq!(stream.range_start(), Some(rec.offset));

    // A record whose hash state was damaged is not continued: the import starts from 0.
    let served = server(&data, cut).await;
    import(opts(&served.url(), &sum)).await.unwrap_err();
    let mut damaged = record_of(&out);
    damaged.hashed.as_mut().unwrap().state.truncate(10);
    std::fs::write(record_path(&out), serde_json::to_vec(&damaged).unwrap()).unwrap();
    let report = import(opts(&served.url(), &sum)).await.unwrap();
    assert_eq!(report.resumed_from, 0);
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "qcow2 from 0");

    // A wrong checksum is still caught after a resumed run, and nothing is left.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let served = server(&data, cut).await;
    import(opts(&served.url(), &wrong)).await.unwrap_err();
    assert!(record_of(&out).hashed.is_some());
    let err = import(opts(&served.url(), &wrong)).await.unwrap_err();
    assert_eq!(err.label(), "checksum_mismatch", "{err}");
    assert!(!out.exists() && !record_path(&out).exists());
}

// Compressed images: the checkpoint is a point where the decoder can start again.

/// `script` run in `dir` (with the raw fixture as `disk.raw`), and the file it makes.
fn made(dir: &Path, script: &str, file: &str) -> Vec<u8> {
    write_raw(dir);
    sh(&format!("cd {} && {script}", dir.display()));
    std::fs::read(dir.join(file)).unwrap()
}

/// Serves the compressed image `z` cut once at `cut`, imports it with a checkpoint every
/// `every` image bytes and (with `checksum`) its SHA-256 checked, then again. The first run
/// keeps a checkpoint inside the compressed stream, after several; the second continues
/// there, fetches only the rest (one ranged request) and ends with exactly `want`. Returns
/// the first run's checkpoint.
async fn cut_then_resume(z: &[u8], want: &[u8], cut: u64, every: u64, checksum: bool) -> Record {
    let dir = tempfile::tempdir().unwrap();
    let server = server(z, cut).await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out, 1);
    opts.checkpoint_every = every;
    if checksum {
        let p = dir.path().join("served");
        std::fs::write(&p, z).unwrap();
        opts.checksum = Some(sha256(&p).parse().unwrap());
    }

    let err = import(opts.clone()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let rec = record_of(&out);
    let d = rec
        .decoded
        .clone()
        .expect("a checkpoint inside the compressed stream");
    assert!(
        rec.offset > 0 && rec.offset <= cut,
        "checkpoint at {} for a cut at {cut}: {rec:?}",
        rec.offset
    );
    assert!(d.output >= 2 * every, "after two checkpoints or more: {d:?}");
    assert_eq!(checksum, rec.hashed.is_some());
    let before = server.seen().len();

    let report = import(opts).await.unwrap();
    assert_eq!(report.resumed_from, rec.offset);
    assert_eq!(
        report.source_bytes,
        z.len() as u64 - rec.offset,
        "only the rest is fetched"
    );
    assert_same(&std::fs::read(&out).unwrap(), want, "resumed import");
    assert!(!record_path(&out).exists());
    let again = &server.seen()[before..];
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].range_start(), Some(rec.offset), "{again:?}");
    assert_eq!(again[0].header("if-range"), Some("\"v1\""));
    rec
}

/// The compressed image `z` cut at `cut` once checkpoints were kept, then changed on the
/// server (another ETag): the next run starts from 0 and is still right.
async fn changed_then_from_zero(z: &[u8], want: &[u8], cut: u64, every: u64) {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start(
        z.to_vec(),
        Behaviour {
            ranges: true,
            cut_at: Some(cut),
            etag: Some("\"v1\"".into()),
            etag_after: Some((1, "\"v2\"".into())),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out, 1);
    opts.checkpoint_every = every;
    import(opts.clone()).await.unwrap_err();
    assert!(record_of(&out).decoded.is_some());
    let report = import(opts).await.unwrap();
    assert_eq!(report.resumed_from, 0, "a changed object is not continued");
    assert_eq!(report.source_bytes, z.len() as u64);
    assert_same(&std::fs::read(&out).unwrap(), want, "imported again");
    assert!(!record_path(&out).exists());
    assert_eq!(server.seen().last().unwrap().range_start(), None);
}

/// Where `needle` (a run of the fixture) is in the compressed `z`, roughly: a cut there
/// lands in the middle of the stream.
fn at_fraction(z: &[u8], num: u64, den: u64) -> u64 {
    z.len() as u64 * num / den
}

#[tokio::test]
async fn a_gzip_image_continues_inside_its_deflate_stream() {
    let dir = tempfile::tempdir().unwrap();
    let gz = made(dir.path(), "gzip -c disk.raw > disk.raw.gz", "disk.raw.gz");
    let want = raw_image();
    // In the compressed text (after the first MiB of random data): a block boundary of
    // Huffman codes, mid-byte.
    let rec = cut_then_resume(&gz, &want, at_fraction(&gz, 35, 100), 256 << 10, true).await;
    let d = rec.decoded.unwrap();
    assert_eq!(d.compression, "gzip");
    let inflate = d.inflate.expect("inside the member");
    assert!(inflate.member == d.output && inflate.bit < 8, "{inflate:?}");
    // Later, in stored blocks of random data; without a checksum.
    cut_then_resume(&gz, &want, at_fraction(&gz, 6, 10), 1 << 20, false).await;
    changed_then_from_zero(&gz, &want, at_fraction(&gz, 6, 10), 1 << 20).await;
}

#[tokio::test]
async fn an_iso_in_gzip_continues_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut iso = raw_image();
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    std::fs::write(dir.path().join("disk.iso"), &iso).unwrap();
    sh(&format!("cd {} && gzip -9 -k disk.iso", dir.path().display()));
    let gz = std::fs::read(dir.path().join("disk.iso.gz")).unwrap();
    let rec = cut_then_resume(&gz, &iso, at_fraction(&gz, 4, 10), 512 << 10, false).await;
    assert_eq!(rec.format, "iso");
}

#[tokio::test]
async fn an_xz_image_continues_at_a_block_or_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let want = raw_image();
    // Multi-threaded xz: 1 MiB blocks whose headers record their sizes.
    let xz = made(
        dir.path(),
        "xz -T2 --block-size=1MiB -c disk.raw > disk.raw.xz",
        "disk.raw.xz",
    );
    let rec = cut_then_resume(&xz, &want, at_fraction(&xz, 6, 10), 1 << 20, true).await;
    let d = rec.decoded.unwrap();
    assert_eq!(d.xz_check, Some(4), "at a block of a CRC-64 stream: {d:?}");
    assert_eq!(d.output % (1 << 20), 0, "{d:?}");
    changed_then_from_zero(&xz, &want, at_fraction(&xz, 6, 10), 1 << 20).await;

    // Two streams of one block each (xz run single-threaded on each half): the second
    // stream's start.
    let two = made(
        dir.path(),
        "head -c 32M disk.raw | xz -T1 -c > a.xz && tail -c +33554433 disk.raw | xz -T1 -c > b.xz && cat a.xz b.xz > two.xz",
        "two.xz",
    );
    let first = std::fs::metadata(dir.path().join("a.xz")).unwrap().len();
    let cut = first + (two.len() as u64 - first) / 2;
    let rec = cut_then_resume(&two, &want, cut, 1 << 20, false).await;
    let d = rec.decoded.unwrap();
    assert_eq!((rec.offset, d.output, d.xz_check), (first, 32 << 20, None));
}

#[tokio::test]
async fn an_xz_stream_of_one_block_starts_again_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let xz = made(dir.path(), "xz -T1 -c disk.raw > disk.raw.xz", "disk.raw.xz");
    single_stream_starts_again(&xz).await;
}

#[tokio::test]
async fn a_zstd_image_continues_at_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let want = raw_image();
    // pzstd: one frame per chunk (2 MiB at level 1), each after a skippable frame.
    let zst = made(
        dir.path(),
        "pzstd -q -1 -p 2 -c disk.raw > disk.raw.zst",
        "disk.raw.zst",
    );
    let rec = cut_then_resume(&zst, &want, at_fraction(&zst, 6, 10), 1 << 20, true).await;
    assert_eq!(rec.decoded.unwrap().compression, "zstd");
    changed_then_from_zero(&zst, &want, at_fraction(&zst, 6, 10), 1 << 20).await;
}

/// A stream the decoder cannot start again inside: a cut leaves nothing (it is logged), and
/// the next run imports it from 0.
async fn single_stream_starts_again(z: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let server = server(z, at_fraction(z, 6, 10)).await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out, 1);
    opts.checkpoint_every = 256 << 10;
    let err = import(opts.clone()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!out.exists() && !record_path(&out).exists());
    let report = import(opts).await.unwrap();
    assert_eq!(report.resumed_from, 0);
    assert_eq!(report.source_bytes, z.len() as u64);
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "from 0");
}

#[tokio::test]
async fn a_single_zstd_frame_starts_again_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let zst = made(
        dir.path(),
        "zstd -q -T2 -c disk.raw > disk.raw.zst",
        "disk.raw.zst",
    );
    single_stream_starts_again(&zst).await;
}

#[tokio::test]
async fn a_bzip2_image_continues_at_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let want = raw_image();
    // One stream per MiB, as pbzip2 writes one per 900 kB block.
    let bz = made(
        dir.path(),
        "split -b 1M -d -a 3 disk.raw part- && for p in part-*; do bzip2 -1 -c $p; done > disk.raw.bz2",
        "disk.raw.bz2",
    );
    let rec = cut_then_resume(&bz, &want, at_fraction(&bz, 6, 10), 1 << 20, true).await;
    let d = rec.decoded.unwrap();
    assert_eq!(d.compression, "bzip2");
    assert_eq!(d.output % (1 << 20), 0, "at a stream: {d:?}");
    changed_then_from_zero(&bz, &want, at_fraction(&bz, 6, 10), 1 << 20).await;
    // bzip2 itself writes one stream.
    let one = made(dir.path(), "bzip2 -1 -c disk.raw > one.bz2", "one.bz2");
    single_stream_starts_again(&one).await;
}

#[tokio::test]
async fn a_compressed_qcow2_continues_between_its_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let data = qcow2(dir.path(), true);
    let want = qemu_raw(&dir.path().join("c.qcow2"), dir.path());
    let cut = data.len() as u64 * 6 / 10;
    let server = server(&data, cut).await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out, 1);
    opts.checkpoint_every = 256 << 10;
    import(opts.clone()).await.unwrap_err();
    let rec = record_of(&out);
    assert!(
        rec.offset >= 2 * (256 << 10) && rec.offset <= cut && rec.decoded.is_none(),
        "after two checkpoints or more: {rec:?}"
    );
    let report = import(opts.clone()).await.unwrap();
    assert_eq!(report.resumed_from, rec.offset);
    // The stream from the checkpoint on (the tables are read again by range, aside).
    assert_eq!(report.source_bytes, data.len() as u64 - rec.offset);
    assert_same(&std::fs::read(&out).unwrap(), &want, "resumed compressed qcow2");

    // A changed object starts from 0.
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            cut_at: Some(cut),
            etag: Some("\"v1\"".into()),
            etag_after: Some((1, "\"v2\"".into())),
            ..Default::default()
        },
    )
    .await;
    let opts = {
        let mut o = options(&server.url(), &out, 1);
        o.checkpoint_every = 256 << 10;
        o
    };
    import(opts.clone()).await.unwrap_err();
    assert!(record_of(&out).offset > 0);
    let report = import(opts).await.unwrap();
    assert_eq!(report.resumed_from, 0);
    assert_same(&std::fs::read(&out).unwrap(), &want, "compressed qcow2 from 0");
}

#[tokio::test]
async fn a_stream_optimized_vmdk_continues_at_a_grain_marker() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let vmdk = dir.path().join("s.vmdk");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            raw.to_str().unwrap(),
            vmdk.to_str().unwrap(),
        ],
    );
    let data = std::fs::read(&vmdk).unwrap();
    let want = qemu_raw(&vmdk, dir.path());
    let cut = data.len() as u64 * 6 / 10;
    let server = server(&data, cut).await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out, 1);
    opts.checkpoint_every = 256 << 10;
    import(opts.clone()).await.unwrap_err();
    let rec = record_of(&out);
    assert_eq!(rec.format, "vmdk");
    assert!(
        rec.offset > 512 << 10 && rec.offset <= cut && rec.offset.is_multiple_of(512),
        "{rec:?}"
    );
    let before = server.seen().len();
    let report = import(opts.clone()).await.unwrap();
    assert_eq!(report.resumed_from, rec.offset);
    assert_eq!(report.source_bytes, data.len() as u64 - rec.offset);
    assert_same(
        &std::fs::read(&out).unwrap(),
        &want,
        "resumed streamOptimized VMDK",
    );
    assert!(!record_path(&out).exists());
    // The front (header, descriptor, grain tables) by range, then the stream.
    let again = &server.seen()[before..];
    let stream = again.last().unwrap();
    assert_eq!(stream.range_start(), Some(rec.offset), "{again:?}");
    for front in &again[..again.len() - 1] {
        assert_eq!(front.range_start(), Some(0), "{again:?}");
        assert!(front.range_end().unwrap() < 1 << 20, "{again:?}");
    }

    // A changed object starts from 0.
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            cut_at: Some(cut),
            etag: Some("\"v1\"".into()),
            etag_after: Some((1, "\"v2\"".into())),
            ..Default::default()
        },
    )
    .await;
    let mut opts = options(&server.url(), &out, 1);
    opts.checkpoint_every = 256 << 10;
    import(opts.clone()).await.unwrap_err();
    assert!(record_of(&out).offset > 0);
    let report = import(opts).await.unwrap();
    assert_eq!(report.resumed_from, 0);
    assert_same(&std::fs::read(&out).unwrap(), &want, "VMDK from 0");
}
