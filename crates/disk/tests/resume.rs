//! Resuming in a later run (a restarted importer pod): a transport failure with `resume`
//! keeps the target and a checkpoint; the next run asks for the rest with `Range` and
//! `If-Range`, continues the checksum from its saved state, and ends with exactly the image.
//! A changed object, a permanent failure, or an image that cannot resume start from 0 or
//! leave nothing behind.

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

    // gzip cannot continue from the middle: a cut removes the target as without `resume`.
    let raw = write_raw(dir.path());
    sh(&format!("gzip -1 -k {}", raw.display()));
    let gz = std::fs::read(dir.path().join("disk.raw.gz")).unwrap();
    let server = server_for(&gz).await;
    let err = import(options(&server.url(), &out, 1)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!out.exists() && !record_path(&out).exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "only the fixtures (disk.raw, disk.raw.gz) are left"
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
