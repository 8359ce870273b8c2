//! SeaweedFS peer: anonymous read on `public`, keys on `private`, streamed uploads, cleanup.

use std::time::Duration;

use anyhow::Context;
use ido_testkit::SeaweedFs;
use ido_testkit::seaweed::{PRIVATE_BUCKET, PUBLIC_BUCKET};
use reqwest::StatusCode;
use tokio::io::AsyncReadExt;

fn anonymous() -> reqwest::Client {
    ido_testkit::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn public_reads_anonymously_and_private_needs_keys() -> anyhow::Result<()> {
    let s3 = SeaweedFs::shared().await?;
    s3.put_object(PUBLIC_BUCKET, "acl/hello.txt", b"hello public")
        .await?;
    s3.put_object(PRIVATE_BUCKET, "acl/secret.txt", b"hello private")
        .await?;
    let http = anonymous();

    let resp = http
        .get(s3.object_url(PUBLIC_BUCKET, "acl/hello.txt")?)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await?, "hello public");
    let ranged = http
        .get(s3.object_url(PUBLIC_BUCKET, "acl/hello.txt")?)
        .header("Range", "bytes=0-4")
        .send()
        .await?;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await?, "hello");

    let denied = http
        .get(s3.object_url(PRIVATE_BUCKET, "acl/secret.txt")?)
        .send()
        .await?;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let signed = s3.presigned_get_url(PRIVATE_BUCKET, "acl/secret.txt", Duration::from_secs(60))?;
    let resp = http.get(signed).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await?, "hello private");
    assert_eq!(
        s3.get_object(PRIVATE_BUCKET, "acl/secret.txt").await?,
        "hello private"
    );
    Ok(())
}

#[tokio::test]
async fn files_are_streamed_as_the_body() -> anyhow::Result<()> {
    let s3 = SeaweedFs::shared().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("blob.bin");
    let mut bytes = Vec::new();
    ido_testkit::ova::disk_reader(99, 3 * 1024 * 1024 + 17)
        .read_to_end(&mut bytes)
        .await?;
    tokio::fs::write(&path, &bytes).await?;
    s3.put_object(PUBLIC_BUCKET, "stream/blob.bin", path.as_path())
        .await?;
    let got = s3.get_object(PUBLIC_BUCKET, "stream/blob.bin").await?;
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "downloaded bytes differ");
    Ok(())
}

#[tokio::test]
async fn a_private_instance_is_killed_on_drop() -> anyhow::Result<()> {
    let s3 = SeaweedFs::start().await?;
    s3.put_object(PRIVATE_BUCKET, "k", b"v").await?;
    assert_eq!(s3.get_object(PRIVATE_BUCKET, "k").await?, "v");
    let (pid, port, log) = (s3.pid(), s3.s3_port(), s3.log_path());
    assert!(log.is_file());
    // Its sockets go with it, but not one of the same name that is not its own (another
    // instance's, when this one never got the port): here one is replaced by a foreign one.
    let sockets = s3.sockets();
    assert!(sockets.len() >= 4, "{sockets:?}");
    let foreign = &sockets[0];
    std::fs::remove_file(foreign)?;
    let _listener = std::os::unix::net::UnixListener::bind(foreign)?;
    drop(s3);
    assert!(foreign.exists(), "a socket that was not its own was removed");
    for s in &sockets[1..] {
        assert!(!s.exists(), "{} left behind", s.display());
    }
    std::fs::remove_file(foreign)?;
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "weed {pid} still exists"
    );
    std::net::TcpListener::bind(("127.0.0.1", port)).context("S3 port still taken")?;
    assert!(!log.exists(), "the directory was not removed");
    Ok(())
}
