//! `ido upload-server`, the upload pod of a DiskImport, as a client meets it: tokens
//! checked, a qcow2 converted as it arrives (qemu-img the oracle), 503 while an upload
//! runs, 409 once the disk is in, a cut upload continued from the offset HEAD gives, a
//! multipart form, a checksum mismatch that leaves no disk and exits 2.

#[path = "../../disk/tests/common/mod.rs"]
mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::*;
use ido_api::DiskImport;
use ido_controllers::diskimport::upload::UploadKey;
use tokio::io::AsyncWriteExt;

struct Server {
    child: tokio::process::Child,
    url: String,
    master: UploadKey,
}

fn disk_import(uid: &str) -> DiskImport {
    let mut di = DiskImport::new(
        "fedora",
        serde_json::from_value(serde_json::json!({"source": {"upload": {}}})).unwrap(),
    );
    di.metadata.namespace = Some("vms".into());
    di.metadata.uid = Some(uid.into());
    di
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Starts `ido upload-server TARGET` with the pod key of DiskImport vms/fedora (uid u-1).
async fn start(dir: &Path, target: &Path, extra: &[&str]) -> Server {
    let master = UploadKey::generate();
    let key = dir.join("key");
    std::fs::write(&key, master.pod_key("u-1").to_hex()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .arg("upload-server")
        .arg(target)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--disk-import",
            "vms/fedora",
        ])
        .arg("--key-file")
        .arg(&key)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = http();
    for _ in 0..100 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { child, url, master }
}

impl Server {
    fn token(&self) -> String {
        self.master.issue(&disk_import("u-1"), jiff::Timestamp::now()).0
    }

    async fn exit(mut self) -> (i32, String) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the server exits after the upload")
            .unwrap();
        let mut err = String::new();
        use tokio::io::AsyncReadExt;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        (status.code().unwrap_or(-1), err)
    }
}

fn qcow2(d: &Path) -> (Vec<u8>, Vec<u8>) {
    let raw = write_raw(d);
    let q = d.join("image.qcow2");
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
    (std::fs::read(&q).unwrap(), qemu_raw(&q, d))
}

#[tokio::test]
async fn an_upload_is_converted_as_it_arrives_and_taken_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (image, oracle) = qcow2(d);
    let target = d.join("disk.img");
    let s = start(d, &target, &["--size", "128Mi"]).await;
    let http = http();
    let upload = format!("{}/v1beta1/upload", s.url);

    // No token, a forged one, another DiskImport's (same name, other UID): 401.
    let r = poke(&http, &upload, None).await;
    assert_eq!(r.status(), 401);
    let other = UploadKey::generate()
        .issue(&disk_import("u-1"), jiff::Timestamp::now())
        .0;
    let r = poke(&http, &upload, Some(&other)).await;
    assert_eq!(r.status(), 401);
    let replaced = s.master.issue(&disk_import("u-2"), jiff::Timestamp::now()).0;
    let r = http.head(&upload).bearer_auth(&replaced).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // The first half, then the connection cut.
    let token = s.token();
    let half = image.len() / 2;
    let mut tcp = tokio::net::TcpStream::connect(s.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1beta1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nUpload-Length: {}\r\nContent-Length: {}\r\n\r\n",
        image.len(),
        image.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&image[..half]).await.unwrap();
    tcp.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);

    // HEAD says where it stopped; a POST from 0 is refused, naming the offset.
    let mut offset = 0;
    for _ in 0..50 {
        let r = http.head(&upload).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        offset = r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse::<usize>()
            .unwrap();
        let r = poke(&http, &upload, Some(&token)).await;
        if r.status() == 409 {
            break;
        }
        let code = r.status();
        assert_eq!(
            code,
            503,
            "only while the cut request is still being read: {}",
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(offset, half, "every byte sent before the cut was taken");

    // Another request while this one runs: 503. The rest: 200 once the disk is in.
    let rest = image[offset..].to_vec();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_of(rx));
    let cont = tokio::spawn({
        let (http, upload, token) = (http.clone(), upload.clone(), token.clone());
        let len = image.len();
        async move {
            http.post(&upload)
                .bearer_auth(&token)
                .header("upload-offset", offset)
                .header("upload-length", len)
                .header("content-length", len - offset)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    });
    tx.send(Ok(rest[..1024].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = poke(&http, &upload, Some(&token)).await;
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
    tx.send(Ok(rest[1024..].to_vec())).await.unwrap();
    drop(tx);
    let r = cont.await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_same(&std::fs::read(&target).unwrap(), &oracle, "the uploaded qcow2");
    assert_sparse(&target);

    // After it: 409 (until the server exits, 0).
    let r = poke(&http, &upload, Some(&token)).await;
    assert_eq!(r.status(), 409);
    let (code, err) = s.exit().await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains(&token), "the token is never logged");
}

/// A one-byte upload attempt at `url` (with `token`, if any): what the server answers.
async fn poke(http: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = http.post(url).body("x");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// A stream of the channel's items.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
}

#[tokio::test]
async fn forms_async_uploads_and_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (image, oracle) = qcow2(d);
    let http = http();

    // A multipart form (curl -F file=@image.qcow2), async: 200 once the bytes are in.
    let target = d.join("form.img");
    let s = start(d, &target, &[]).await;
    let boundary = "XyZ123";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image.qcow2\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&image);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = http
        .post(format!("{}/v1beta1/upload-form-async", s.url))
        .bearer_auth(s.token())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (code, err) = s.exit().await;
    assert_eq!(code, 0, "{err}");
    assert_same(&std::fs::read(&target).unwrap(), &oracle, "the form's qcow2");

    // A checksum that does not match: 400 naming it, no disk, exit 2 (the Job fails at once).
    let target = d.join("bad.img");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let s = start(d, &target, &["--checksum", &wrong]).await;
    let r = http
        .post(format!("{}/v1alpha1/upload", s.url))
        .bearer_auth(s.token())
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with("Saving stream failed: ") && text.contains("checksum"),
        "{text}"
    );
    let (code, err) = s.exit().await;
    assert_eq!(code, 2, "{err}");
    assert!(!target.exists(), "a failed upload leaves no disk");

    // An archive DiskImport takes a tar at upload-archive; a disk one refuses that path.
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a.txt"), b"hello").unwrap();
    run(
        "tar",
        &[
            "-C",
            tree.to_str().unwrap(),
            "-cf",
            d.join("t.tar").to_str().unwrap(),
            "sub",
        ],
    );
    let into = d.join("claim");
    std::fs::create_dir(&into).unwrap();
    let s = start(d, &into, &["--content-type", "archive"]).await;
    // A token from `ido upload-token`, as for a server started by hand.
    let minted = std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(["upload-token", "--disk-import", "vms/fedora", "--key-file"])
        .arg(d.join("key"))
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let r = http
        .post(format!("{}/v1beta1/upload-archive", s.url))
        .bearer_auth(&token)
        .body(std::fs::read(d.join("t.tar")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(std::fs::read(into.join("sub/a.txt")).unwrap(), b"hello");
    let (code, err) = s.exit().await;
    assert_eq!(code, 0, "{err}");
}
