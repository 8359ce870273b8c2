//! Archives: unpacked into a Filesystem claim of the given size.

use super::*;

fn archive(di: DiskImport) -> DiskImport {
    let mut di = di;
    di.spec.content_type = Some(ContentType::Archive);
    di
}

// One scenario followed step by step; it reads better whole than cut into helpers.
#[tokio::test]
async fn archives_get_a_filesystem_claim_of_their_size_and_an_unpacking_job() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let checksum = format!("sha256:{}", "cd".repeat(32));
    let mut source = http("https://mirror.example/rootfs.tar.xz");
    source.http.as_mut().unwrap().checksum = Some(checksum.clone());
    let mut di = archive(disk_import("rootfs", source, sized("2Gi")));
    // Preallocation is for disk images; an archive's files are written as they come.
    di.spec.preallocation = Some(true);
    ctx.store.create(&di).await.unwrap();
    let (_, di) = step(&ctx, "rootfs").await;
    let st = status(&di);
    assert_eq!(st.phase, DiskImportPhase::ImportScheduled);
    assert_eq!(st.size.as_deref(), Some("2Gi"));

    // The claim: Filesystem, the size as it is (the files need it, not a disk.img beside
    // the filesystem's own overhead).
    let pvc: PersistentVolumeClaim = ctx.store.get(Some(NS), "rootfs").await.unwrap().unwrap();
    let p = json_of(&pvc);
    assert_eq!(p["spec"]["volumeMode"], "Filesystem");
    assert_eq!(p["spec"]["resources"]["requests"]["storage"], "2Gi");

    // The Job: the claim mounted as a directory, unpacked into its root.
    let job: Job = ctx.store.get(Some(NS), "importer-rootfs").await.unwrap().unwrap();
    assert_eq!(
        args(&job),
        [
            "import",
            "https://mirror.example/rootfs.tar.xz",
            DATA_DIR,
            "--checksum",
            &checksum,
            "--content-type",
            "archive",
            "--progress",
            "plain",
        ]
    );
    let c = &json_of(&job)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "disk", "mountPath": DATA_DIR}])
    );
    assert!(c.get("volumeDevices").is_none(), "{c}");

    // Followed as any import: running, then done.
    add_pod(&ctx, &di, "importer-rootfs-a", "Running", None).await;
    set_job_status(&ctx, "importer-rootfs", json!({"active": 1, "ready": 1})).await;
    let (_, di) = step(&ctx, "rootfs").await;
    assert_eq!(status(&di).phase, DiskImportPhase::ImportInProgress);
    assert_eq!(cond(&di, "Running").reason, "PodRunning");
    complete_job(&ctx, "importer-rootfs").await;
    let (_, di) = step(&ctx, "rootfs").await;
    let st = status(&di);
    assert_eq!(
        (st.phase, st.progress.as_str()),
        (DiskImportPhase::Succeeded, "100.0%")
    );
    assert_eq!(cond(&di, "Ready").reason, "Completed");
    assert!(absent::<Job>(&ctx, NS, "importer-rootfs").await);

    // S3 in CDI's form works the same.
    let s3 = DiskImportSource {
        s3: Some(S3Source {
            url: "https://minio.example:9000/images/rootfs.tar".into(),
            secret_ref: None,
        }),
        ..Default::default()
    };
    ctx.store
        .create(&archive(disk_import("s3root", s3, sized("1Gi"))))
        .await
        .unwrap();
    step(&ctx, "s3root").await;
    let job: Job = ctx.store.get(Some(NS), "importer-s3root").await.unwrap().unwrap();
    assert_eq!(
        args(&job),
        [
            "import",
            "s3://images/rootfs.tar",
            DATA_DIR,
            "--s3-endpoint",
            "https://minio.example:9000",
            "--content-type",
            "archive",
            "--progress",
            "plain",
        ]
    );
}

#[tokio::test]
async fn archives_from_blank_or_registry_sources_onto_block_volumes_or_without_a_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let blank = DiskImportSource {
        blank: Some(ido_api::BlankSource {}),
        ..Default::default()
    };
    let registry = DiskImportSource {
        registry: Some(RegistrySource {
            url: "docker://quay.io/containerdisks/fedora:41".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let block = StorageSpec {
        volume_mode: Some(VolumeMode::Block),
        size: Some("1Gi".into()),
        ..Default::default()
    };
    let cases = [
        (
            "blank",
            blank,
            sized("1Gi"),
            "not allowed with blank, registry, pvc, snapshot or diskSource sources",
        ),
        (
            "registry",
            registry,
            sized("1Gi"),
            "not allowed with blank, registry, pvc, snapshot or diskSource sources",
        ),
        ("block", http("http://x/r.tar"), block, "Block is not allowed"),
        (
            "nosize",
            http("http://x/r.tar"),
            StorageSpec::default(),
            "spec.storage.size: required for an archive",
        ),
    ];
    for (name, source, storage, want) in cases {
        ctx.store
            .create(&archive(disk_import(name, source, storage)))
            .await
            .unwrap();
        let (action, di) = step(&ctx, name).await;
        assert_eq!(action, Action::AwaitChange, "{name}");
        assert_eq!(status(&di).phase, DiskImportPhase::Pending, "{name}");
        let r = cond(&di, "Ready");
        assert_eq!(r.reason, "InvalidSpec", "{name}");
        assert!(r.message.contains(want), "{name}: {}", r.message);
    }
    assert!(
        ctx.store
            .list::<PersistentVolumeClaim>()
            .await
            .unwrap()
            .is_empty()
    );
    assert!(ctx.store.list::<Job>().await.unwrap().is_empty());
    // The same sources as disk images are fine.
    let blank = DiskImportSource {
        blank: Some(ido_api::BlankSource {}),
        ..Default::default()
    };
    let mut di = archive(disk_import("blank-disk", blank.clone(), sized("1Gi")));
    di.spec.content_type = Some(ContentType::Kubevirt);
    ctx.store.create(&di).await.unwrap();
    let (_, di) = step(&ctx, "blank-disk").await;
    // A blank disk on a Filesystem claim is a sparse disk.img the importer makes.
    assert_eq!(status(&di).phase, DiskImportPhase::ImportScheduled);
    let job = ctx
        .store
        .get::<Job>(Some(NS), "importer-blank-disk")
        .await
        .unwrap()
        .expect("an importer for the blank disk");
    let args = job.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args[..3], ["import", "blank:", "/data/disk.img"]);
    assert!(
        args.contains(&"--size".to_string()) && !args.contains(&"--resume".to_string()),
        "{args:?}"
    );
    // On a Block claim it is the claim itself, unless preallocated.
    let mut block = sized("1Gi");
    block.volume_mode = Some(ido_api::VolumeMode::Block);
    ctx.store
        .create(&disk_import("blank-block", blank.clone(), block.clone()))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "blank-block").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Succeeded);
    let mut zeroed = disk_import("blank-zeroed", blank, block);
    zeroed.spec.preallocation = Some(true);
    ctx.store.create(&zeroed).await.unwrap();
    let (_, di) = step(&ctx, "blank-zeroed").await;
    assert_eq!(status(&di).phase, DiskImportPhase::ImportScheduled);
    let job = ctx
        .store
        .get::<Job>(Some(NS), "importer-blank-zeroed")
        .await
        .unwrap()
        .unwrap();
    let args = job.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args[..3], ["import", "blank:", "/dev/ido-disk"]);
    assert!(args.contains(&"--preallocate".to_string()), "{args:?}");
}
