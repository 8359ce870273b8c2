//! HTTP sources against a local server with fault injection: a cut resumes from the byte
//! where it stopped, 503s are retried, a server without Range support still works, auth
//! and extra headers are sent, and failures leave no target behind.

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
    let report = import(options(&server.url(), &out)).await.unwrap();
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
