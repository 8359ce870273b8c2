//! Specs the controller cannot act on: they wait as Pending with a reason.

use super::*;

#[tokio::test]
async fn invalid_specs_unknown_sizes_and_foreign_claims_wait_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let two = DiskImportSource {
        http: Some(HttpSource {
            url: "http://x/y".into(),
            ..Default::default()
        }),
        blank: Some(ido_api::BlankSource {}),
        ..Default::default()
    };
    let mut bad_sum = http("http://x/y");
    bad_sum.http.as_mut().unwrap().checksum = Some("sha256:xyz".into());
    let cases = [
        ("two", two, sized("1Gi"), "exactly one of"),
        ("sum", bad_sum, sized("1Gi"), "spec.source.http.checksum"),
        ("ftp", http("ftp://x/y"), sized("1Gi"), "spec.source.http.url"),
        ("size", http("http://x/y"), sized("lots"), "spec.storage.size"),
    ];
    for (name, source, storage, want) in cases {
        ctx.store
            .create(&disk_import(name, source, storage))
            .await
            .unwrap();
        let (action, di) = step(&ctx, name).await;
        assert_eq!(action, Action::AwaitChange);
        assert_eq!(status(&di).phase, DiskImportPhase::Pending);
        let r = cond(&di, "Ready");
        assert_eq!(r.reason, "InvalidSpec", "{name}");
        assert!(r.message.contains(want), "{name}: {}", r.message);
    }
    assert_eq!(ctx.store.events().len(), 4, "one warning each");

    // No size and credentials: the controller does not read Secrets, so it asks.
    let mut secret_src = http("http://x/y.qcow2");
    secret_src.http.as_mut().unwrap().secret_ref = Some("s".into());
    ctx.store
        .create(&disk_import("nosize", secret_src, StorageSpec::default()))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "nosize").await;
    assert_eq!(cond(&di, "Ready").reason, "SizeUnknown");
    assert!(cond(&di, "Ready").message.contains("set spec.storage.size"));

    // A claim of the same name that is not ours is left alone.
    let foreign: PersistentVolumeClaim =
        serde_json::from_value(json!({"metadata": {"name": "taken", "namespace": NS}})).unwrap();
    ctx.store.create(&foreign).await.unwrap();
    ctx.store
        .create(&disk_import("taken", http("http://x/y"), sized("1Gi")))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "taken").await;
    assert_eq!(cond(&di, "Ready").reason, "CreateFailed");
    assert!(ctx.store.list::<Job>().await.unwrap().is_empty());
}
