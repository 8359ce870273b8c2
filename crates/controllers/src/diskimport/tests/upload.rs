//! Uploads (`source.upload`): waits while the operator serves no uploads; else the pod key's
//! Secret and an upload Job (`ido upload-server`), UploadScheduled → UploadReady when its
//! pod is ready → Succeeded, the key removed after.

use super::*;
use ido_api::UploadSource;

fn upload_source() -> DiskImportSource {
    DiskImportSource {
        upload: Some(UploadSource {
            checksum: Some(format!("sha256:{}", "ab".repeat(32))),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn uploads_get_a_keyed_upload_pod_and_are_ready_when_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path());
    ctx.store
        .create(&disk_import("up", upload_source(), sized("2Gi")))
        .await
        .unwrap();

    // No upload key: nothing made, the reason says why.
    let (next, di) = step(&ctx, "up").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Pending);
    assert_eq!(cond(&di, "Ready").reason, "UploadUnavailable");
    assert_eq!(next, Action::AwaitChange);
    assert!(absent::<Job>(&ctx, NS, "importer-up").await);

    let master = crate::diskimport::upload::UploadKey::generate();
    ctx.settings.disk_import.upload_key = Some(master.clone());
    let (_, di) = step(&ctx, "up").await;
    assert_eq!(status(&di).phase, DiskImportPhase::UploadScheduled);
    let secret: Secret = ctx
        .store
        .get(Some(NS), "upload-key-up")
        .await
        .unwrap()
        .expect("the pod key's Secret");
    assert!(owned_by(&secret.metadata, &di));
    let stored = secret
        .string_data
        .map(|d| d["key"].clone())
        .or_else(|| {
            secret
                .data
                .map(|d| String::from_utf8(d["key"].0.clone()).unwrap())
        })
        .unwrap();
    assert_eq!(
        stored,
        master.pod_key(di.metadata.uid.as_deref().unwrap()).to_hex()
    );
    assert_ne!(
        stored,
        master.to_hex(),
        "the master key never leaves the operator"
    );

    let job: Job = ctx.store.get(Some(NS), "importer-up").await.unwrap().unwrap();
    let a = args(&job);
    assert_eq!(
        a,
        [
            "upload-server",
            "/data/disk.img",
            "--listen",
            "0.0.0.0:8443",
            "--key-file",
            "/var/run/ido/upload/key",
            "--disk-import",
            "vms/up",
            "--checksum",
            &format!("sha256:{}", "ab".repeat(32)),
            "--size",
            "2147483648",
            "--progress",
            "plain",
            "--force",
        ]
    );
    let c = &json_of(&job)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["ports"][0]["containerPort"], 8443);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    let volumes = &json_of(&job)["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[1]["secret"]["secretName"], "upload-key-up");

    // A running pod that is not ready yet: still scheduled. Ready: UploadReady.
    add_pod(&ctx, &di, "importer-up-1", "Running", None).await;
    let (_, di) = step(&ctx, "up").await;
    assert_eq!(status(&di).phase, DiskImportPhase::UploadScheduled);
    set_job_status(&ctx, "importer-up", json!({"active": 1, "ready": 1})).await;
    let (_, di) = step(&ctx, "up").await;
    assert_eq!(status(&di).phase, DiskImportPhase::UploadReady);
    assert_eq!(cond(&di, "Ready").reason, "UploadReady");
    assert_eq!(cond(&di, "Running").status, ConditionStatus::True);

    // The upload is in: Succeeded, the Job and the key go, the claim stays.
    complete_job(&ctx, "importer-up").await;
    let (_, di) = step(&ctx, "up").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Succeeded);
    assert!(absent::<Secret>(&ctx, NS, "upload-key-up").await);
    assert!(absent::<Job>(&ctx, NS, "importer-up").await);
    assert!(
        ctx.store
            .get::<PersistentVolumeClaim>(Some(NS), "up")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn uploads_need_a_size_and_a_valid_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path());
    ctx.settings.disk_import.upload_key = Some(crate::diskimport::upload::UploadKey::generate());
    ctx.store
        .create(&disk_import("nosize", upload_source(), StorageSpec::default()))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "nosize").await;
    assert_eq!(cond(&di, "Ready").reason, "InvalidSpec");
    assert!(
        cond(&di, "Ready").message.contains("spec.storage.size"),
        "{:?}",
        cond(&di, "Ready")
    );
    let mut bad = upload_source();
    bad.upload.as_mut().unwrap().checksum = Some("sha256:nothex".into());
    ctx.store
        .create(&disk_import("badsum", bad, sized("1Gi")))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "badsum").await;
    let m = &cond(&di, "Ready").message;
    assert!(
        m.contains("spec.source.upload.checksum") && m.contains("sha256:nothex"),
        "{m}"
    );
}
