//! Sizes read from the image, and the kubevirt provider importing through the store.

use super::*;

/// An HTTP server on loopback: `/disk.qcow2` (a qcow2 header of a 3 GiB disk, Range
/// honoured), `/disk.xz`, `*.sha256` sidecars; 404 otherwise.
async fn image_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
    qcow.resize(1 << 20, 0);
    qcow[24..32].copy_from_slice(&(3u64 << 30).to_be_bytes());
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let qcow = qcow.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, extra, body): (&str, String, Vec<u8>) = if path.contains(".sha256") {
                    (
                        "200 OK",
                        String::new(),
                        format!("{}  f\n", "cd".repeat(32)).into_bytes(),
                    )
                } else if path.contains("disk.qcow2") {
                    let end = (64 << 10).min(qcow.len());
                    (
                        "206 Partial Content",
                        format!("content-range: bytes 0-{}/{}\r\n", end - 1, qcow.len()),
                        qcow[..end].to_vec(),
                    )
                } else if path.contains("disk.xz") {
                    ("200 OK", String::new(), b"\xfd7zXZ\0rest".to_vec())
                } else {
                    ("404 Not Found", String::new(), vec![])
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    base
}

#[tokio::test]
async fn a_missing_size_is_read_from_the_image_header() {
    let base = image_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    ctx.store
        .create(&disk_import(
            "q",
            http(&format!("{base}/disk.qcow2")),
            StorageSpec::default(),
        ))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "q").await;
    assert_eq!(status(&di).size.as_deref(), Some("3Gi"));
    assert_eq!(status(&di).phase, DiskImportPhase::ImportScheduled);
    let pvc: PersistentVolumeClaim = ctx.store.get(Some(NS), "q").await.unwrap().unwrap();
    assert_eq!(
        json_of(&pvc)["spec"]["resources"]["requests"]["storage"],
        "3241Mi"
    );
    let job: Job = ctx.store.get(Some(NS), "importer-q").await.unwrap().unwrap();
    assert!(args(&job).contains(&(3u64 << 30).to_string()));

    ctx.store
        .create(&disk_import(
            "x",
            http(&format!("{base}/disk.xz")),
            StorageSpec::default(),
        ))
        .await
        .unwrap();
    let (action, di) = step(&ctx, "x").await;
    assert_eq!(action, Action::AwaitChange);
    let r = cond(&di, "Ready");
    assert_eq!(r.reason, "SizeUnknown");
    assert!(
        r.message.contains("xz-compressed") && r.message.contains("set spec.storage.size"),
        "{}",
        r.message
    );

    ctx.store
        .create(&disk_import(
            "gone",
            http(&format!("{base}/nothing")),
            StorageSpec::default(),
        ))
        .await
        .unwrap();
    let (action, di) = step(&ctx, "gone").await;
    assert_eq!(action, Action::Requeue(Duration::from_secs(60)), "retried");
    assert!(
        cond(&di, "Ready").message.contains("404"),
        "{}",
        cond(&di, "Ready").message
    );
}

#[tokio::test]
async fn the_kubevirt_provider_imports_through_disk_imports_in_the_store() {
    use ido_providers::{BUILT_IN, Progress, ProvidersConfig};
    let base = image_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path());
    let cfg = ProvidersConfig::decode(
        &json!({"kubevirt": {
            "enabled": true,
            "locations": {"main": {"namespace": NS, "storageClassName": "golden"}},
        }}),
        BUILT_IN,
    )
    .unwrap();
    ctx.providers = cfg.build().unwrap();
    ctx.providers
        .bind_disk_imports(StoreDiskImports::shared(ctx.store.clone()));
    let loc = S3Location(base);
    let object = loc.object("capk/img/disk.qcow2");
    let provider = ctx.providers.get("capk").unwrap().clone();
    let image = "flatcar-stable-1.2.3";
    assert_eq!(provider.exists("main", image).await.unwrap(), None);

    // The "cluster": reconciles DiskImports and completes importer Jobs once they exist.
    let cluster = {
        let ctx = Context::new(ctx.store.clone(), ctx.settings.clone());
        tokio::spawn(async move {
            loop {
                if let Some(di) = ctx.store.get::<DiskImport>(Some(NS), image).await.unwrap() {
                    reconcile(&di, &ctx).await.unwrap();
                    if let Some(job) = ctx.store.get::<Job>(Some(NS), &job_name(&di)).await.unwrap()
                        && job.status.is_none()
                    {
                        set_job_status(&ctx, &job_name(&di), json!({"succeeded": 1})).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t = tokio::time::timeout(
        Duration::from_secs(30),
        provider.create("main", image, &object, &Progress::default()),
    )
    .await
    .unwrap()
    .unwrap();
    cluster.abort();
    assert_eq!(t.reference, format!("PersistentVolumeClaim:{NS}/{image}"));
    let di: DiskImport = ctx.store.get(Some(NS), image).await.unwrap().unwrap();
    let http = di.spec.source.http.as_ref().unwrap();
    assert_eq!(http.url, format!("{}/images/capk/img/disk.qcow2", loc.0));
    assert_eq!(http.checksum, Some(format!("sha256:{}", "cd".repeat(32))));
    let pvc: PersistentVolumeClaim = ctx.store.get(Some(NS), image).await.unwrap().unwrap();
    assert_eq!(json_of(&pvc)["spec"]["storageClassName"], "golden");
    assert_eq!(provider.exists("main", image).await.unwrap(), Some(t));

    provider.delete("main", image).await.unwrap();
    assert!(absent::<DiskImport>(&ctx, NS, image).await);
    assert!(absent::<PersistentVolumeClaim>(&ctx, NS, image).await);
}

/// A path-style S3 endpoint at the image server (bucket `images`, rewritten to its root).
struct S3Location(String);

impl S3Location {
    fn object(&self, key: &str) -> ido_io::s3::S3Object {
        let loc = ido_io::s3::S3Location {
            bucket: "images".into(),
            region: String::new(),
            endpoint: Some(self.0.clone()),
            http: false,
            credentials: None,
        };
        let client = ido_io::http::client(&Default::default(), "s3.caBundle").unwrap();
        ido_io::s3::S3Source::new(&loc, client).unwrap().object(key)
    }
}
