//! What each source and volume mode makes of the importer Job.

use super::*;

#[tokio::test]
async fn block_volumes_get_the_device_and_registry_and_s3_sources_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let block = StorageSpec {
        volume_mode: Some(VolumeMode::Block),
        access_modes: vec!["ReadWriteMany".into()],
        size: Some("2Gi".into()),
        ..Default::default()
    };
    let registry = DiskImportSource {
        registry: Some(RegistrySource {
            url: "docker://quay.io/containerdisks/fedora:41".into(),
            secret_ref: Some("pull".into()),
            cert_config_map: None,
            platform: Some("linux/arm64".into()),
        }),
        ..Default::default()
    };
    let mut di = disk_import("reg", registry, block);
    di.spec.preallocation = Some(true);
    ctx.store.create(&di).await.unwrap();
    step(&ctx, "reg").await;
    let pvc: PersistentVolumeClaim = ctx.store.get(Some(NS), "reg").await.unwrap().unwrap();
    let p = json_of(&pvc);
    assert_eq!(
        p["spec"]["resources"]["requests"]["storage"], "2Gi",
        "no overhead on a device"
    );
    assert_eq!(p["spec"]["volumeMode"], "Block");
    assert_eq!(p["spec"]["accessModes"], json!(["ReadWriteMany"]));
    let job: Job = ctx.store.get(Some(NS), "importer-reg").await.unwrap().unwrap();
    let c = &json_of(&job)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["volumeDevices"],
        json!([{"name": "disk", "devicePath": DEVICE}])
    );
    assert_eq!(
        args(&job),
        [
            "import",
            "docker://quay.io/containerdisks/fedora:41",
            DEVICE,
            "--authfile",
            "/var/run/ido/source-credentials/.dockerconfigjson",
            "--platform",
            "linux/arm64",
            "--size",
            &(2u64 << 30).to_string(),
            "--progress",
            "plain",
            "--preallocate",
            "--force",
        ]
    );

    let s3 = DiskImportSource {
        s3: Some(S3Source {
            url: "s3://images/f.qcow2".into(),
            secret_ref: Some("s3".into()),
        }),
        ..Default::default()
    };
    ctx.store
        .create(&disk_import("s3", s3, sized("1Gi")))
        .await
        .unwrap();
    step(&ctx, "s3").await;
    let job: Job = ctx.store.get(Some(NS), "importer-s3").await.unwrap().unwrap();
    assert_eq!(
        args(&job)[..7],
        [
            "import",
            "s3://images/f.qcow2",
            DISK_FILE,
            "--s3-access-key-file",
            "/var/run/ido/source-credentials/accessKeyId",
            "--s3-secret-key-file",
            "/var/run/ido/source-credentials/secretKey",
        ]
    );
}

#[test]
fn labels_select_the_importer_pods() {
    let di = disk_import("a", http("http://x/y"), sized("1Gi"));
    let l: BTreeMap<String, String> = labels(&di);
    assert_eq!(l[DISK_IMPORT_LABEL], "a");
    assert_eq!(job_name(&di), "importer-a");
}
