//! Clones (`source.pvc`): the source claim mounted read-only beside the new one once its
//! own import succeeded, Block sources as devices; from another namespace, only with the
//! webhook's token, through an upload pod and a sender beside the source claim.

use ido_api::DiskSource;

use super::*;

fn pvc_source(name: &str, namespace: Option<&str>) -> DiskImportSource {
    DiskImportSource {
        pvc: Some(ido_api::PvcSource {
            namespace: namespace.map(String::from),
            name: name.into(),
        }),
        ..Default::default()
    }
}

fn container(job: &Job) -> Value {
    json_of(job)["spec"]["template"]["spec"]["containers"][0].clone()
}

#[tokio::test]
async fn a_clone_waits_for_its_source_then_reads_it_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    ctx.store
        .create(&disk_import(
            "golden",
            http("http://mirror.example/f.raw"),
            sized("1Gi"),
        ))
        .await
        .unwrap();
    step(&ctx, "golden").await;
    ctx.store
        .create(&disk_import("copy", pvc_source("golden", None), sized("1Gi")))
        .await
        .unwrap();
    let (next, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Pending);
    assert!(
        cond(&di, "Ready")
            .message
            .contains("being filled by DiskImport golden"),
        "{:?}",
        cond(&di, "Ready")
    );
    assert_eq!(next, Action::Requeue(Duration::from_secs(5)));
    assert!(absent::<Job>(&ctx, NS, "importer-copy").await);

    // The source's import succeeds: the clone's importer reads its disk.img, read-only.
    complete_job(&ctx, "importer-golden").await;
    let (_, golden) = step(&ctx, "golden").await;
    assert_eq!(status(&golden).phase, DiskImportPhase::Succeeded);
    let (_, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::CloneScheduled);
    let job: Job = ctx.store.get(Some(NS), "importer-copy").await.unwrap().unwrap();
    let c = container(&job);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[..4],
        ["import", "/source/disk.img", "/data/disk.img", "--verbatim"]
    );
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "source", "mountPath": "/source", "readOnly": true})),
        "{c}"
    );
    let volumes = &json_of(&job)["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes.as_array().unwrap().contains(
            &json!({"name": "source", "persistentVolumeClaim": {"claimName": "golden", "readOnly": true}})
        ),
        "{volumes}"
    );
}

#[tokio::test]
async fn block_sources_are_devices_and_missing_ones_wait() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    // A Block claim nobody's DiskImport fills: cloned at once, as a device.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "vm-root", "namespace": NS},
        "spec": {"volumeMode": "Block", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "2Gi"}}}
    }))
    .unwrap();
    ctx.store.create(&claim).await.unwrap();
    ctx.store
        .create(&disk_import(
            "snap",
            pvc_source("vm-root", Some(NS)),
            sized("2Gi"),
        ))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "snap").await;
    assert_eq!(status(&di).phase, DiskImportPhase::CloneScheduled);
    let job: Job = ctx.store.get(Some(NS), "importer-snap").await.unwrap().unwrap();
    let c = container(&job);
    assert_eq!(c["args"][1], "/dev/ido-source");
    assert_eq!(
        c["volumeDevices"],
        json!([{"name": "source", "devicePath": "/dev/ido-source"}]),
        "{c}"
    );

    // A missing source waits; another namespace is refused by name.
    ctx.store
        .create(&disk_import("later", pvc_source("not-yet", None), sized("1Gi")))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "later").await;
    assert!(cond(&di, "Ready").message.contains("does not exist yet"));
}

fn disk_source_source(name: &str) -> DiskImportSource {
    DiskImportSource {
        disk_source: Some(ido_api::DiskSourceReference { name: name.into() }),
        ..Default::default()
    }
}

fn disk_source(name: &str, claim: &str) -> DiskSource {
    let mut ds = DiskSource::new(
        name,
        ido_api::DiskSourceSpec {
            source: ido_api::DiskSourceSource {
                pvc: ido_api::ClaimReference { name: claim.into() },
            },
        },
    );
    ds.metadata.namespace = Some(NS.into());
    ds
}

/// Reconciles the stored DiskSource `name`; returns it as stored after.
async fn resolve(ctx: &Context<FileStore>, name: &str) -> DiskSource {
    let ds: DiskSource = ctx.store.get(Some(NS), name).await.unwrap().unwrap();
    crate::disksource::reconcile(&ds, ctx).await.unwrap();
    ctx.store.get(Some(NS), name).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_disk_source_clone_waits_until_it_is_ready_then_clones_its_claim_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    ctx.store
        .create(&disk_import(
            "vm-root",
            disk_source_source("fedora"),
            sized("1Gi"),
        ))
        .await
        .unwrap();
    let (next, di) = step(&ctx, "vm-root").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Pending);
    assert!(
        cond(&di, "Ready")
            .message
            .contains("DiskSource vms/fedora does not exist yet"),
        "{:?}",
        cond(&di, "Ready")
    );
    assert_eq!(next, Action::Requeue(Duration::from_secs(5)));

    // The DiskSource names a claim its DiskImport still fills: not Ready, and the clone waits.
    ctx.store
        .create(&disk_import(
            "golden",
            http("http://mirror.example/f.raw"),
            sized("1Gi"),
        ))
        .await
        .unwrap();
    step(&ctx, "golden").await;
    ctx.store.create(&disk_source("fedora", "golden")).await.unwrap();
    let ds = resolve(&ctx, "fedora").await;
    let ready = ido_api::condition::find(&ds.status.as_ref().unwrap().conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status, ready.reason.as_str()),
        (ConditionStatus::False, "ImportNotSucceeded")
    );
    let (_, di) = step(&ctx, "vm-root").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Pending);
    assert!(
        cond(&di, "Ready")
            .message
            .contains("is not ready: ImportNotSucceeded"),
        "{:?}",
        cond(&di, "Ready")
    );
    assert!(absent::<Job>(&ctx, NS, "importer-vm-root").await);

    // The import succeeds and its claim binds: Ready, and the clone's importer reads it.
    complete_job(&ctx, "importer-golden").await;
    step(&ctx, "golden").await;
    let ds = resolve(&ctx, "fedora").await;
    assert!(ds.ready_claim().unwrap_err().contains("ClaimNotBound"));
    let pvc: PersistentVolumeClaim = ctx.store.get(Some(NS), "golden").await.unwrap().unwrap();
    let mut bound = json_of(&pvc);
    bound["status"] = json!({"phase": "Bound"});
    ctx.store
        .update_status(&serde_json::from_value::<PersistentVolumeClaim>(bound).unwrap())
        .await
        .unwrap();
    let ds = resolve(&ctx, "fedora").await;
    assert_eq!(ds.ready_claim(), Ok("golden"));
    let (_, di) = step(&ctx, "vm-root").await;
    assert_eq!(status(&di).phase, DiskImportPhase::CloneScheduled);
    let job: Job = ctx
        .store
        .get(Some(NS), "importer-vm-root")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(source_claim(&job).as_deref(), Some("golden"));
    assert_eq!(container(&job)["args"][1], "/source/disk.img");

    // The DiskSource moves (to a claim that does not exist): the running clone keeps its own.
    let mut moved: DiskSource = ctx.store.get(Some(NS), "fedora").await.unwrap().unwrap();
    moved.spec.source.pvc.name = "elsewhere".into();
    ctx.store.replace(&moved).await.unwrap();
    let ds = resolve(&ctx, "fedora").await;
    assert!(ds.ready_claim().unwrap_err().contains("ClaimMissing"));
    let (_, di) = step(&ctx, "vm-root").await;
    assert_eq!(status(&di).phase, DiskImportPhase::CloneScheduled);
    let job: Job = ctx
        .store
        .get(Some(NS), "importer-vm-root")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(source_claim(&job).as_deref(), Some("golden"));
}

/// A pod of `job` in `ns`, Running and Ready at `ip` (as the kubelet reports it).
async fn ready_pod(
    ctx: &Context<FileStore>,
    ns: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    ip: &str,
) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": CONTAINER, "ready": true, "restartCount": 0, "image": "ido:test", "imageID": ""}]},
    }))
    .unwrap();
    ctx.store.create(&pod).await.unwrap();
}

const GOLDEN: &str = "golden-images";

async fn golden_claim(ctx: &Context<FileStore>) {
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "fedora", "namespace": GOLDEN},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
        "status": {"phase": "Bound", "capacity": {"storage": "2Gi"}}
    }))
    .unwrap();
    ctx.store.create(&claim).await.unwrap();
}

fn cross(name: &str, token: Option<String>) -> DiskImport {
    let mut di = disk_import(name, pvc_source("fedora", Some(GOLDEN)), StorageSpec::default());
    if let Some(t) = token {
        di.metadata.annotations = Some([(crate::diskimport::upload::CLONE_TOKEN.to_string(), t)].into());
    }
    di
}

#[tokio::test]
async fn a_clone_from_another_namespace_needs_the_webhooks_token_and_sends_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path());
    let master = crate::diskimport::upload::UploadKey::generate();
    ctx.settings.disk_import.upload_key = Some(master.clone());
    golden_claim(&ctx).await;
    let now = jiff::Timestamp::now();

    // No token, or one for another target: it waits, saying what authorizes it.
    ctx.store.create(&cross("nobody", None)).await.unwrap();
    let forged = master.issue_clone("golden-images/fedora", "vms/other", now);
    ctx.store.create(&cross("forged", Some(forged))).await.unwrap();
    for name in ["nobody", "forged"] {
        let (next, di) = step(&ctx, name).await;
        assert_eq!(status(&di).phase, DiskImportPhase::Pending);
        let ready = cond(&di, "Ready");
        assert_eq!(ready.reason, "CloneUnauthorized", "{name}");
        assert!(ready.message.contains("diskimports/source"), "{}", ready.message);
        assert_eq!(next, Action::AwaitChange);
        assert!(
            ctx.store
                .get::<Job>(Some(NS), &format!("importer-{name}"))
                .await
                .unwrap()
                .is_none()
        );
    }

    // With the webhook's token: an upload pod that takes the disk as it is, sized like the
    // source claim (no storage.size).
    let token = master.issue_clone("golden-images/fedora", "vms/copy", now);
    ctx.store.create(&cross("copy", Some(token))).await.unwrap();
    let (_, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::CloneScheduled);
    assert_eq!(status(&di).size.as_deref(), Some("2Gi"));
    let job: Job = ctx.store.get(Some(NS), "importer-copy").await.unwrap().unwrap();
    let a = args(&job);
    assert_eq!(a[..2], ["upload-server", "/data/disk.img"]);
    assert!(a.contains(&"--verbatim".to_string()), "{a:?}");
    assert!(a.windows(2).any(|w| w == ["--disk-import", "vms/copy"]), "{a:?}");
    assert!(
        ctx.store
            .get::<Secret>(Some(NS), "upload-key-copy")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        absent::<Job>(&ctx, GOLDEN, "clone-source-vms-copy").await,
        "no sender before the upload pod is ready"
    );

    // The upload pod is ready: the sender beside the source claim, with a token the upload
    // pod's key opens, in a Secret; the DiskImport holds a finalizer for them.
    ready_pod(&ctx, NS, "importer-copy-1", labels(&di), "10.1.2.3").await;
    set_job_status(&ctx, "importer-copy", json!({"active": 1, "ready": 1})).await;
    let (_, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::CloneInProgress);
    assert!(crate::store::has_finalizer(&di, CLONE_FINALIZER));
    let sender: Job = ctx
        .store
        .get(Some(GOLDEN), "clone-source-vms-copy")
        .await
        .unwrap()
        .expect("the sender Job");
    assert_eq!(
        args(&sender),
        [
            "clone-send",
            "/source/disk.img",
            "--url",
            "http://10.1.2.3:8443/v1beta1/upload",
            "--token-file",
            "/var/run/ido/clone/token",
            "--progress",
            "plain"
        ]
    );
    let volumes = &json_of(&sender)["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes.as_array().unwrap().contains(
            &json!({"name": "source", "persistentVolumeClaim": {"claimName": "fedora", "readOnly": true}})
        ),
        "{volumes}"
    );
    let secret: Secret = ctx
        .store
        .get(Some(GOLDEN), "clone-source-vms-copy")
        .await
        .unwrap()
        .unwrap();
    let token = secret.string_data.unwrap()["token"].clone();
    let claims = master
        .pod_key(di.metadata.uid.as_deref().unwrap())
        .verify(&token, jiff::Timestamp::now())
        .unwrap();
    assert_eq!((claims.ns.as_str(), claims.name.as_str()), ("vms", "copy"));

    // The upload pod is replaced: the sender is made again for the new one.
    let old: Pod = ctx.store.get(Some(NS), "importer-copy-1").await.unwrap().unwrap();
    ctx.store.delete(&old).await.unwrap();
    ready_pod(&ctx, NS, "importer-copy-2", labels(&di), "10.1.2.4").await;
    step(&ctx, "copy").await;
    step(&ctx, "copy").await;
    let sender: Job = ctx
        .store
        .get(Some(GOLDEN), "clone-source-vms-copy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(args(&sender)[3], "http://10.1.2.4:8443/v1beta1/upload");

    // Done: Succeeded, and nothing of the clone is left in the source namespace.
    complete_job(&ctx, "importer-copy").await;
    let (_, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Succeeded);
    assert!(!crate::store::has_finalizer(&di, CLONE_FINALIZER));
    assert!(absent::<Job>(&ctx, GOLDEN, "clone-source-vms-copy").await);
    assert!(absent::<Secret>(&ctx, GOLDEN, "clone-source-vms-copy").await);
    let claim: PersistentVolumeClaim = ctx.store.get(Some(GOLDEN), "fedora").await.unwrap().unwrap();
    assert!(
        claim.metadata.deletion_timestamp.is_none(),
        "the source claim is never touched"
    );
}

#[tokio::test]
async fn a_failed_sender_fails_the_clone_with_its_message_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path());
    let master = crate::diskimport::upload::UploadKey::generate();
    ctx.settings.disk_import.upload_key = Some(master.clone());
    golden_claim(&ctx).await;
    let token = master.issue_clone("golden-images/fedora", "vms/copy", jiff::Timestamp::now());
    ctx.store.create(&cross("copy", Some(token))).await.unwrap();
    let (_, di) = step(&ctx, "copy").await;
    ready_pod(&ctx, NS, "importer-copy-1", labels(&di), "10.1.2.3").await;
    set_job_status(&ctx, "importer-copy", json!({"active": 1, "ready": 1})).await;
    step(&ctx, "copy").await;

    let sender: Job = ctx
        .store
        .get(Some(GOLDEN), "clone-source-vms-copy")
        .await
        .unwrap()
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "clone-source-vms-copy-1", "namespace": GOLDEN, "labels": crate::diskimport::job::sender_labels(&di)},
        "status": {"phase": "Failed", "containerStatuses": [{"name": CONTAINER, "ready": false, "restartCount": 0, "image": "ido:test", "imageID": "",
            "state": {"terminated": {"exitCode": 1, "message": "opening /source/disk.img: No such file or directory"}}}]},
    }))
    .unwrap();
    ctx.store.create(&pod).await.unwrap();
    let mut v = json_of(&sender);
    v["status"] = json!({"failed": 4, "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]});
    ctx.store
        .update_status(&serde_json::from_value::<Job>(v).unwrap())
        .await
        .unwrap();
    let (_, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Failed);
    let ready = cond(&di, "Ready");
    assert!(
        ready
            .message
            .contains("the sender in golden-images failed: opening /source/disk.img"),
        "{}",
        ready.message
    );
    // The next look removes the sender and lets the DiskImport go.
    let (_, di) = step(&ctx, "copy").await;
    assert!(!crate::store::has_finalizer(&di, CLONE_FINALIZER));
    assert!(absent::<Job>(&ctx, GOLDEN, "clone-source-vms-copy").await);
}

fn snapshot(name: &str, ready: Option<bool>, error: Option<&str>) -> ido_api::snapshot::VolumeSnapshot {
    serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"source": {"persistentVolumeClaimName": "vm-root"}},
        "status": {"readyToUse": ready, "restoreSize": "1Gi", "error": error.map(|m| json!({"message": m}))},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_snapshot_is_restored_into_a_claim_that_is_cloned_and_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let source = DiskImportSource {
        snapshot: Some(ido_api::SnapshotSource {
            namespace: None,
            name: "before-upgrade".into(),
        }),
        ..Default::default()
    };
    ctx.store
        .create(&disk_import("copy", source, StorageSpec::default()))
        .await
        .unwrap();

    // No snapshot yet; then one that is not ready: it waits, saying so.
    let (next, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Pending);
    assert!(
        cond(&di, "Ready")
            .message
            .contains("VolumeSnapshot vms/before-upgrade does not exist"),
        "{:?}",
        cond(&di, "Ready")
    );
    assert_eq!(next, Action::Requeue(Duration::from_secs(5)));
    ctx.store
        .create(&snapshot(
            "before-upgrade",
            Some(false),
            Some("the CSI driver is busy"),
        ))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "copy").await;
    assert!(
        cond(&di, "Ready")
            .message
            .contains("not ready to use yet: the CSI driver is busy"),
        "{:?}",
        cond(&di, "Ready")
    );
    assert!(absent::<PersistentVolumeClaim>(&ctx, NS, "restore-vms-copy").await);

    // Ready: restored into a claim of the snapshotted claim's class and mode (Block), its
    // size the snapshot's, which is cloned (as a device).
    let vs: ido_api::snapshot::VolumeSnapshot =
        ctx.store.get(Some(NS), "before-upgrade").await.unwrap().unwrap();
    let mut ready = vs.clone();
    ready.status = snapshot("before-upgrade", Some(true), None).status;
    ctx.store.update_status(&ready).await.unwrap();
    let root: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "vm-root", "namespace": NS},
        "spec": {"volumeMode": "Block", "storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    ctx.store.create(&root).await.unwrap();
    let (_, di) = step(&ctx, "copy").await;
    assert_eq!(
        status(&di).phase,
        DiskImportPhase::CloneScheduled,
        "{:?}",
        cond(&di, "Ready")
    );
    assert_eq!(status(&di).size.as_deref(), Some("1Gi"));
    let restored: PersistentVolumeClaim = ctx
        .store
        .get(Some(NS), "restore-vms-copy")
        .await
        .unwrap()
        .expect("the restore claim");
    let spec = json_of(&restored)["spec"].clone();
    assert_eq!(
        spec["dataSource"],
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "before-upgrade"})
    );
    assert_eq!(spec["volumeMode"], "Block");
    assert_eq!(spec["storageClassName"], "fast");
    assert_eq!(spec["resources"]["requests"]["storage"], "1Gi");
    let owner = &restored.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.name.as_str(), owner.controller), ("copy", Some(false)));
    let job: Job = ctx.store.get(Some(NS), "importer-copy").await.unwrap().unwrap();
    assert_eq!(source_claim(&job).as_deref(), Some("restore-vms-copy"));
    assert_eq!(container(&job)["args"][1], "/dev/ido-source");

    // Done: the restored claim goes; the snapshot and the snapshotted claim stay.
    complete_job(&ctx, "importer-copy").await;
    let (_, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Succeeded);
    assert!(!crate::store::has_finalizer(&di, CLONE_FINALIZER));
    assert!(absent::<PersistentVolumeClaim>(&ctx, NS, "restore-vms-copy").await);
    assert!(
        ctx.store
            .get::<ido_api::snapshot::VolumeSnapshot>(Some(NS), "before-upgrade")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        ctx.store
            .get::<PersistentVolumeClaim>(Some(NS), "vm-root")
            .await
            .unwrap()
            .is_some()
    );
}
