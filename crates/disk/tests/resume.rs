//! Resuming in a later run (a restarted importer pod): a transport failure with `resume`
//! keeps the target and a checkpoint; the next run asks for the rest with `Range` and
//! `If-Range`, re-hashes the kept prefix for the checksum, and ends with exactly the image.
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
