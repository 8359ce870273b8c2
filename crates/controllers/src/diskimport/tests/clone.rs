//! Clones (`source.pvc`): the source claim mounted read-only beside the new one once its
//! own import succeeded, Block sources as devices, other namespaces refused.

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
    assert!(
        ctx.store
            .get::<Job>(Some(NS), "importer-copy")
            .await
            .unwrap()
            .is_none()
    );

    // The source's import succeeds: the clone's importer reads its disk.img, read-only.
    set_job_status(
        &ctx,
        "importer-golden",
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .await;
    let (_, golden) = step(&ctx, "golden").await;
    assert_eq!(status(&golden).phase, DiskImportPhase::Succeeded);
    let (_, di) = step(&ctx, "copy").await;
    assert_eq!(status(&di).phase, DiskImportPhase::ImportScheduled);
    let job: Job = ctx.store.get(Some(NS), "importer-copy").await.unwrap().unwrap();
    let c = container(&job);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[..5],
        ["import", "/source/disk.img", "/data/disk.img", "--format", "raw"]
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
async fn block_sources_are_devices_and_other_namespaces_are_refused() {
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
    assert_eq!(status(&di).phase, DiskImportPhase::ImportScheduled);
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
    ctx.store
        .create(&disk_import(
            "elsewhere",
            pvc_source("golden", Some("other")),
            sized("1Gi"),
        ))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "elsewhere").await;
    let ready = cond(&di, "Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("spec.source.pvc.namespace"),
        "{}",
        ready.message
    );
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
    assert!(
        ctx.store
            .get::<Job>(Some(NS), "importer-vm-root")
            .await
            .unwrap()
            .is_none()
    );

    // The import succeeds and its claim binds: Ready, and the clone's importer reads it.
    set_job_status(
        &ctx,
        "importer-golden",
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .await;
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
    assert_eq!(status(&di).phase, DiskImportPhase::ImportScheduled);
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
    assert_eq!(status(&di).phase, DiskImportPhase::ImportScheduled);
    let job: Job = ctx
        .store
        .get(Some(NS), "importer-vm-root")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(source_claim(&job).as_deref(), Some("golden"));
}
