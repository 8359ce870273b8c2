//! HTTP sources against a local server with fault injection: a cut resumes from the byte
//! where it stopped, 503s are retried, a server without Range support still works, auth
//! and extra headers are sent, and failures leave no target behind. Parallel ranged GETs:
//! the bytes arrive in order, a cut chunk resumes from its own cut, a changed object is
//! detected, a server without ranges gets one stream.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http_server::{Behaviour, FileServer};
use common::*;
use ido_disk::{
    BasicAuth, DiskFormat, HttpOptions, ImportOptions, RetryPolicy, SourceSpec, TargetSpec, import,
};

/// A qcow2.xz of the fixture (its bytes) in `dir`.
fn qcow2_xz(dir: &Path) -> Vec<u8> {
    let raw = write_raw(dir);
    let q = dir.join("d.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    sh(&format!("xz -T2 --block-size=2MiB -1 {}", q.display()));
    std::fs::read(dir.join("d.qcow2.xz")).unwrap()
}

fn options(url: &str, out: &Path) -> ImportOptions {
    let mut http = HttpOptions::new(url.parse().unwrap());
    http.retry = RetryPolicy {
        attempts: 4,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
    };
    ImportOptions::new(
        SourceSpec::Http(Box::new(http)),
        TargetSpec {
            path: out.to_path_buf(),
            capacity: None,
        },
    )
}

fn http_mut(o: &mut ImportOptions) -> &mut HttpOptions {
    match &mut o.source {
        SourceSpec::Http(h) => h,
        _ => unreachable!(),
    }
}

fn checksum_of(data: &[u8], dir: &Path) -> String {
    let p: PathBuf = dir.join("served");
    std::fs::write(&p, data).unwrap();
    sha256(&p)
}

#[tokio::test]
async fn a_cut_at_half_resumes_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let data = qcow2_xz(dir.path());
    let half = data.len() as u64 / 2;
    let sum = checksum_of(&data, dir.path());
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            cut_at: Some(half),
            etag: Some("\"v1\"".into()),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out);
    opts.checksum = Some(sum.parse().unwrap());
    let report = import(opts).await.unwrap();
    assert_eq!(report.format, DiskFormat::Qcow2);
    assert_eq!(report.layers, ["xz"]);
    assert_eq!(report.source_bytes, data.len() as u64, "no byte fetched twice");
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "resumed import");
    assert_sparse(&out);

    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range_start(), None);
    let resumed_at = seen[1].range_start().expect("the second request has a Range");
    assert!(resumed_at > 0, "resumed from 0");
    assert_eq!(resumed_at, half, "resumed exactly where the bytes stopped");
    assert_eq!(seen[1].header("if-range"), Some("\"v1\""));
}

#[tokio::test]
async fn server_without_ranges_works_even_after_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    sh(&format!("gzip -1 -k {}", raw.display()));
    let data = std::fs::read(dir.path().join("disk.raw.gz")).unwrap();
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: false,
            cut_at: Some(data.len() as u64 / 3),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let report = import(options(&server.url(), &out)).await.unwrap();
    assert_eq!(report.layers, ["gzip"]);
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "no-range import");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn service_unavailable_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let data = std::fs::read(&raw).unwrap();
    let server = FileServer::start(
        data,
        Behaviour {
            ranges: true,
            fail_first: 2,
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out);
    // One stream: the request count below is then exact.
    http_mut(&mut opts).connections = 1;
    let report = import(opts).await.unwrap();
    assert_eq!(report.format, DiskFormat::Raw);
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "after 503s");
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn retries_end_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start(
        vec![1; 1000],
        Behaviour {
            fail_first: 100,
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let e = import(options(&server.url(), &out)).await.unwrap_err();
    assert_eq!(e.label(), "retries_exhausted", "{e}");
    assert_eq!(server.seen().len(), 4);
    assert!(!out.exists());
}

#[tokio::test]
async fn not_found_fails_before_the_target_exists() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start(vec![1; 1000], Behaviour::default()).await;
    let out = dir.path().join("out.img");
    let e = import(options(&server.missing_url(), &out)).await.unwrap_err();
    assert_eq!(e.label(), "not_found", "{e}");
    assert!(!out.exists());
}

#[tokio::test]
async fn basic_auth_and_extra_headers_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let data = std::fs::read(&raw).unwrap();
    let server = FileServer::start(
        data,
        Behaviour {
            ranges: true,
            // base64("user:pw")
            authorization: Some("Basic dXNlcjpwdw==".into()),
            required_header: Some(("X-Token".into(), "abc".into())),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let mut opts = options(&server.url(), &out);
    http_mut(&mut opts).basic_auth = Some(BasicAuth {
        username: "user".into(),
        password: "pw".into(),
    });
    http_mut(&mut opts).add_header_line("X-Token: abc").unwrap();
    import(opts.clone()).await.unwrap();
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "with auth");

    std::fs::remove_file(&out).unwrap();
    http_mut(&mut opts).basic_auth.as_mut().unwrap().password = "wrong".into();
    let e = import(opts).await.unwrap_err();
    assert_eq!(e.label(), "denied", "{e}");
    assert!(!out.exists());
}

/// Chunk size of the parallel tests: 64 MiB + 2.5 KiB make 17 chunks (the last one short).
const CHUNK: u64 = 4 << 20;

fn parallel_options(url: &str, out: &Path) -> ImportOptions {
    let mut o = options(url, out);
    let h = http_mut(&mut o);
    h.connections = 4;
    h.chunk_size = CHUNK;
    h.parallel_min = 0;
    o
}

/// The ranged requests seen, as (start, end inclusive), in arrival order.
fn ranges(server: &FileServer) -> Vec<(u64, u64)> {
    server
        .seen()
        .iter()
        .filter_map(|s| Some((s.range_start()?, s.range_end()?)))
        .collect()
}

#[tokio::test]
async fn parallel_ranged_gets_deliver_the_bytes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let data = std::fs::read(&raw).unwrap();
    let sum = sha256(&raw);
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            etag: Some("\"p1\"".into()),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let mut opts = parallel_options(&server.url(), &out);
    opts.checksum = Some(sum.parse().unwrap());
    let report = import(opts).await.unwrap();
    assert_eq!(report.source_bytes, data.len() as u64);
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "parallel import");
    assert_sparse(&out);

    let seen = server.seen();
    assert_eq!(seen[0].header("range"), None, "the first request is a plain GET");
    let chunks = (data.len() as u64).div_ceil(CHUNK);
    let mut got = ranges(&server);
    got.sort();
    let want: Vec<(u64, u64)> = (1..chunks)
        .map(|i| (i * CHUNK, ((i + 1) * CHUNK).min(data.len() as u64) - 1))
        .collect();
    assert_eq!(got, want, "every chunk after the first fetched once, by range");
    assert!(
        seen[1..].iter().all(|s| s.header("if-range") == Some("\"p1\"")),
        "every ranged GET is guarded by the first response's ETag"
    );
}

#[tokio::test]
async fn a_cut_chunk_resumes_from_its_own_cut() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let data = std::fs::read(&raw).unwrap();
    let cut = 5 * CHUNK + 1_234_567; // inside chunk 5
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            cut_at: Some(cut),
            etag: Some("\"c1\"".into()),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let mut opts = parallel_options(&server.url(), &out);
    opts.checksum = Some(sha256(&raw).parse().unwrap());
    let report = import(opts).await.unwrap();
    assert_eq!(report.source_bytes, data.len() as u64, "no byte delivered twice");
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "resumed chunk");

    let got = ranges(&server);
    assert!(
        got.contains(&(cut, 6 * CHUNK - 1)),
        "the cut chunk resumed at the cut, up to its own end: {got:?}"
    );
    assert_eq!(
        got.iter().filter(|r| r.0 == 5 * CHUNK).count(),
        1,
        "the cut chunk was not fetched again from its start: {got:?}"
    );
    assert_eq!(got.len() as u64, (data.len() as u64).div_ceil(CHUNK), "{got:?}");
}

#[tokio::test]
async fn a_changed_object_fails_instead_of_mixing_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(7, (40 << 20) + 77);
    let server = FileServer::start(
        data,
        Behaviour {
            ranges: true,
            etag: Some("\"v1\"".into()),
            // From the fourth request on, the object has another ETag.
            etag_after: Some((3, "\"v2\"".into())),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    let e = import(parallel_options(&server.url(), &out)).await.unwrap_err();
    assert_eq!(e.label(), "source_changed", "{e}");
    assert!(!out.exists());
}

#[tokio::test]
async fn a_large_object_without_ranges_is_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let data = std::fs::read(&raw).unwrap();
    let server = FileServer::start(
        data,
        Behaviour {
            ranges: false,
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("out.img");
    import(parallel_options(&server.url(), &out)).await.unwrap();
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "no-range import");
    assert_eq!(server.seen().len(), 1, "one GET, no ranged requests");
}

#[tokio::test]
async fn presigned_queries_stay_out_of_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = FileServer::start(vec![1; 1000], Behaviour::default()).await;
    let out = dir.path().join("out.img");
    let url = format!("{}?X-Amz-Signature=sekrit&token=t0k", server.missing_url());
    let e = import(options(&url, &out)).await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(!text.contains("sekrit") && !text.contains("t0k"), "{text}");
    assert_eq!(e.label(), "not_found");
}
