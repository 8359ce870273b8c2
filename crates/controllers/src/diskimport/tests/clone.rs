//! Clones (`source.pvc`): the source claim mounted read-only beside the new one once its
//! own import succeeded, Block sources as devices, other namespaces refused.

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
