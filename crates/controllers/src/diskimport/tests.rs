//! The DiskImport reconciler over the file store: what it creates, and the phases it reads
//! from Job and pod states written into the store as the cluster would.

use std::collections::BTreeMap;

use ido_api::{
    DiskImportSource, DiskImportSpec, HttpSource, RegistrySource, S3Source, StorageSpec, VolumeMode,
    diskimport::ContentType,
};
use ido_providers::Providers;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;
use crate::{Settings, file_store::FileStore, metrics::Metrics, store::Object};

const NS: &str = "vms";
const PASSWORD: &str = "s3cr3t-pw-never-shown";

fn context(dir: &std::path::Path) -> Context<FileStore> {
    ido_testkit::install_crypto_provider();
    Context {
        store: FileStore::open(dir).unwrap(),
        providers: Providers::default(),
        source: None,
        settings: Settings {
            disk_import: ImporterSettings {
                image: "ido:test".into(),
                ..ImporterSettings::default()
            },
            ..Settings::default()
        },
        metrics: Metrics::default(),
        seen_releases: Default::default(),
        tasks: Default::default(),
    }
}

fn disk_import(name: &str, source: DiskImportSource, storage: StorageSpec) -> DiskImport {
    let mut di = DiskImport::new(
        name,
        DiskImportSpec {
            source,
            storage,
            preallocation: None,
            content_type: None,
        },
    );
    di.metadata.namespace = Some(NS.into());
    di
}

fn http(url: &str) -> DiskImportSource {
    DiskImportSource {
        http: Some(HttpSource {
            url: url.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sized(size: &str) -> StorageSpec {
    StorageSpec {
        size: Some(size.into()),
        ..Default::default()
    }
}

/// Reconciles the stored copy of `name` once; returns the DiskImport as stored after.
async fn step(ctx: &Context<FileStore>, name: &str) -> (Action, DiskImport) {
    let di: DiskImport = ctx.store.get(Some(NS), name).await.unwrap().unwrap();
    let action = reconcile(&di, ctx).await.unwrap();
    (action, ctx.store.get(Some(NS), name).await.unwrap().unwrap())
}

fn status(di: &DiskImport) -> DiskImportStatus {
    di.status.clone().unwrap()
}

fn cond<'a>(di: &'a DiskImport, t: &str) -> &'a Condition {
    ido_api::condition::find(&di.status.as_ref().unwrap().conditions, t).unwrap()
}

fn json_of<K: Object>(k: &K) -> Value {
    serde_json::to_value(k).unwrap()
}

/// Writes `f(status)` as the Job's status, as the Job controller would.
async fn set_job_status(ctx: &Context<FileStore>, name: &str, st: Value) {
    let job: Job = ctx.store.get(Some(NS), name).await.unwrap().unwrap();
    let mut v = json_of(&job);
    v["status"] = st;
    ctx.store
        .update_status(&serde_json::from_value::<Job>(v).unwrap())
        .await
        .unwrap();
}

/// Stores an importer pod of `di` in `phase`, with a terminated container when `exit`.
async fn add_pod(
    ctx: &Context<FileStore>,
    di: &DiskImport,
    name: &str,
    phase: &str,
    exit: Option<(i32, &str)>,
) {
    let mut container = json!({"name": CONTAINER, "ready": phase == "Running", "restartCount": 0, "image": "ido:test", "imageID": ""});
    if let Some((code, message)) = exit {
        container["state"] = json!({"terminated": {"exitCode": code, "message": message}});
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": labels(di)},
        "status": {"phase": phase, "containerStatuses": [container]},
    }))
    .unwrap();
    ctx.store.create(&pod).await.unwrap();
}

fn args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap()
}

#[tokio::test]
async fn an_http_import_gets_a_claim_and_an_importer_job_and_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mirror-auth", "namespace": NS},
        "stringData": {"accessKeyId": "user", "secretKey": PASSWORD},
    }))
    .unwrap();
    ctx.store.create(&secret).await.unwrap();
    let checksum = format!("sha256:{}", "ab".repeat(32));
    let source = DiskImportSource {
        http: Some(HttpSource {
            url: "https://mirror.example/f.qcow2.xz".into(),
            secret_ref: Some("mirror-auth".into()),
            cert_config_map: Some("mirror-ca".into()),
            extra_headers: vec!["X-Mirror: eu".into()],
            checksum: Some(checksum.clone()),
        }),
        ..Default::default()
    };
    let storage = StorageSpec {
        storage_class_name: Some("fast".into()),
        size: Some("10Gi".into()),
        ..Default::default()
    };
    let di = ctx
        .store
        .create(&disk_import("fedora", source, storage))
        .await
        .unwrap();
    let uid = di.metadata.uid.clone().unwrap();

    let (action, di) = step(&ctx, "fedora").await;
    assert_eq!(action, Action::Requeue(ctx.settings.disk_import.recheck));
    let st = status(&di);
    assert_eq!(st.phase, DiskImportPhase::ImportScheduled);
    assert_eq!(
        (st.claim_name.as_deref(), st.size.as_deref()),
        (Some("fedora"), Some("10Gi"))
    );
    assert_eq!(st.progress, "N/A");
    assert_eq!(cond(&di, "Bound").reason, "Pending");
    assert_eq!(cond(&di, "Ready").status, ConditionStatus::False);

    // The claim: the size plus 5.5 % filesystem overhead, owned by the DiskImport.
    let pvc: PersistentVolumeClaim = ctx.store.get(Some(NS), "fedora").await.unwrap().unwrap();
    let p = json_of(&pvc);
    assert_eq!(p["spec"]["resources"]["requests"]["storage"], "10804Mi");
    assert_eq!(p["spec"]["storageClassName"], "fast");
    assert_eq!(p["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(p["spec"]["volumeMode"], "Filesystem");
    assert_eq!(p["metadata"]["labels"][DISK_IMPORT_LABEL], "fedora");
    let owner = &p["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].as_str(),
            owner["uid"].as_str(),
            owner["controller"].as_bool()
        ),
        (Some("DiskImport"), Some(uid.as_str()), Some(true))
    );

    // The Job: `ido import` with the claim mounted, credentials as mounted files.
    let job: Job = ctx.store.get(Some(NS), "importer-fedora").await.unwrap().unwrap();
    let j = json_of(&job);
    assert_eq!(j["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    assert_eq!(j["spec"]["backoffLimit"], 3);
    assert_eq!(
        j["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"],
        json!([PERMANENT_EXIT_CODE])
    );
    let pod = &j["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        j["spec"]["template"]["metadata"]["labels"][DISK_IMPORT_LABEL],
        "fedora"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ido:test");
    assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
    assert_eq!(
        args(&job),
        [
            "import",
            "https://mirror.example/f.qcow2.xz",
            DISK_FILE,
            "--header",
            "X-Mirror: eu",
            "--username-file",
            "/var/run/ido/source-credentials/accessKeyId",
            "--password-file",
            "/var/run/ido/source-credentials/secretKey",
            "--ca-dir",
            CA_DIR,
            "--checksum",
            &checksum,
            "--size",
            &(10u64 << 30).to_string(),
            "--progress",
            "plain",
            "--resume",
            "--force",
        ]
    );
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "disk", "mountPath": "/data"},
            {"name": "source-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": true},
            {"name": "source-ca", "mountPath": CA_DIR, "readOnly": true},
        ])
    );
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "disk", "persistentVolumeClaim": {"claimName": "fedora"}},
            {"name": "source-credentials", "secret": {"secretName": "mirror-auth", "defaultMode": 0o440}},
            {"name": "source-ca", "configMap": {"name": "mirror-ca"}},
        ])
    );
    assert!(
        c.get("env").is_none() && c.get("envFrom").is_none(),
        "no environment: {c}"
    );
    let all = j.to_string() + &p.to_string() + &json_of(&di).to_string();
    assert!(!all.contains(PASSWORD) && !all.contains("\"user\""), "{all}");

    // Reconciled again: nothing new is created.
    let (_, di) = step(&ctx, "fedora").await;
    assert_eq!(status(&di).phase, DiskImportPhase::ImportScheduled);

    // The claim binds and a pod runs.
    let mut bound = json_of(&pvc);
    bound["status"] = json!({"phase": "Bound"});
    ctx.store
        .update_status(&serde_json::from_value::<PersistentVolumeClaim>(bound).unwrap())
        .await
        .unwrap();
    add_pod(&ctx, &di, "importer-fedora-a", "Running", None).await;
    set_job_status(&ctx, "importer-fedora", json!({"active": 1, "ready": 1})).await;
    let (_, di) = step(&ctx, "fedora").await;
    assert_eq!(status(&di).phase, DiskImportPhase::ImportInProgress);
    assert_eq!(cond(&di, "Running").status, ConditionStatus::True);
    assert_eq!(cond(&di, "Ready").reason, "TransferRunning");
    assert_eq!(cond(&di, "Bound").status, ConditionStatus::True);

    // The pod fails (a connection lost for good); the Job starts another.
    ctx.store
        .delete(
            &ctx.store
                .get::<Pod>(Some(NS), "importer-fedora-a")
                .await
                .unwrap()
                .unwrap(),
        )
        .await
        .unwrap();
    add_pod(
        &ctx,
        &di,
        "importer-fedora-a",
        "Failed",
        Some((1, "error: retries exhausted")),
    )
    .await;
    set_job_status(&ctx, "importer-fedora", json!({"active": 1, "failed": 1})).await;
    let (_, di) = step(&ctx, "fedora").await;
    let st = status(&di);
    assert_eq!(
        (st.phase, st.restart_count),
        (DiskImportPhase::ImportInProgress, 1)
    );
    assert_eq!(cond(&di, "Running").reason, "Error");
    assert_eq!(cond(&di, "Running").message, "error: retries exhausted");

    // It completes: Succeeded, the Job goes, the claim stays.
    set_job_status(
        &ctx,
        "importer-fedora",
        json!({"succeeded": 1, "failed": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .await;
    let (action, di) = step(&ctx, "fedora").await;
    assert_eq!(action, Action::AwaitChange);
    let st = status(&di);
    assert_eq!(
        (st.phase, st.progress.as_str()),
        (DiskImportPhase::Succeeded, "100.0%")
    );
    assert_eq!(cond(&di, "Ready").status, ConditionStatus::True);
    assert!(
        ctx.store
            .get::<Job>(Some(NS), "importer-fedora")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ctx.store
            .get::<PersistentVolumeClaim>(Some(NS), "fedora")
            .await
            .unwrap()
            .is_some()
    );
    let reasons: Vec<String> = ctx.store.events().into_iter().map(|e| e.event.reason).collect();
    assert_eq!(
        reasons,
        [
            "ImportScheduled",
            "ImportInProgress",
            "ImporterFailed",
            "ImportSucceeded"
        ]
    );
    assert!(
        !serde_json::to_string(&ctx.store.events())
            .unwrap()
            .contains(PASSWORD)
    );

    // Deleting the DiskImport deletes its claim (owner references).
    ctx.store.delete(&di).await.unwrap();
    assert!(
        ctx.store
            .get::<PersistentVolumeClaim>(Some(NS), "fedora")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ctx.store
            .get::<Secret>(Some(NS), "mirror-auth")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_failed_job_fails_the_import_with_the_importers_message() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let di = ctx
        .store
        .create(&disk_import(
            "bad",
            http("http://mirror.example/x.img"),
            sized("1Gi"),
        ))
        .await
        .unwrap();
    step(&ctx, "bad").await;
    add_pod(
        &ctx,
        &di,
        "importer-bad-x",
        "Failed",
        Some((2, "error: checksum mismatch: expected sha256:aa, got sha256:bb")),
    )
    .await;
    set_job_status(
        &ctx,
        "importer-bad",
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "Container importer for pod vms/importer-bad-x failed with exit code 2"}]}),
    )
    .await;
    let (action, di) = step(&ctx, "bad").await;
    assert_eq!(action, Action::AwaitChange);
    assert_eq!(status(&di).phase, DiskImportPhase::Failed);
    let ready = cond(&di, "Ready");
    assert_eq!(ready.reason, "ImportFailed");
    assert!(
        ready.message.starts_with("error: checksum mismatch"),
        "{}",
        ready.message
    );
    let last = ctx.store.events().pop().unwrap().event;
    assert_eq!(
        (last.reason.as_str(), last.type_),
        ("ImportFailed", crate::store::EventType::Warning)
    );
    // Failed stays Failed; the Job stays for its logs.
    let (_, di) = step(&ctx, "bad").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Failed);
    assert!(
        ctx.store
            .get::<Job>(Some(NS), "importer-bad")
            .await
            .unwrap()
            .is_some()
    );
}

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

#[tokio::test]
async fn blank_disks_are_a_claim_only() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let blank = DiskImportSource {
        blank: Some(ido_api::BlankSource {}),
        ..Default::default()
    };
    ctx.store
        .create(&disk_import("scratch", blank, sized("5Gi")))
        .await
        .unwrap();
    let (_, di) = step(&ctx, "scratch").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Succeeded);
    assert!(
        ctx.store
            .get::<PersistentVolumeClaim>(Some(NS), "scratch")
            .await
            .unwrap()
            .is_some()
    );
    assert!(ctx.store.list::<Job>().await.unwrap().is_empty());
}

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

fn archive(di: DiskImport) -> DiskImport {
    let mut di = di;
    di.spec.content_type = Some(ContentType::Archive);
    di
}

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
    set_job_status(
        &ctx,
        "importer-rootfs",
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .await;
    let (_, di) = step(&ctx, "rootfs").await;
    let st = status(&di);
    assert_eq!(
        (st.phase, st.progress.as_str()),
        (DiskImportPhase::Succeeded, "100.0%")
    );
    assert_eq!(cond(&di, "Ready").reason, "Completed");
    assert!(
        ctx.store
            .get::<Job>(Some(NS), "importer-rootfs")
            .await
            .unwrap()
            .is_none()
    );

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
            "not allowed with blank or registry sources",
        ),
        (
            "registry",
            registry,
            sized("1Gi"),
            "not allowed with blank or registry sources",
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
    let mut di = archive(disk_import("blank-disk", blank, sized("1Gi")));
    di.spec.content_type = Some(ContentType::Kubevirt);
    ctx.store.create(&di).await.unwrap();
    let (_, di) = step(&ctx, "blank-disk").await;
    assert_eq!(status(&di).phase, DiskImportPhase::Succeeded);
}

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
    use ido_providers::{Progress, ProvidersConfig};
    let base = image_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path());
    let cfg: ProvidersConfig = serde_json::from_value(json!({"kubevirt": {
        "enabled": true,
        "locations": {"main": {"namespace": NS, "storageClassName": "golden"}},
    }}))
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
        let ctx = Context {
            store: ctx.store.clone(),
            providers: Providers::default(),
            source: None,
            settings: ctx.settings.clone(),
            metrics: Metrics::default(),
            seen_releases: Default::default(),
            tasks: Default::default(),
        };
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
    assert!(
        ctx.store
            .get::<DiskImport>(Some(NS), image)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ctx.store
            .get::<PersistentVolumeClaim>(Some(NS), image)
            .await
            .unwrap()
            .is_none()
    );
}

/// A path-style S3 endpoint at the image server (bucket `images`, rewritten to its root).
struct S3Location(String);

impl S3Location {
    fn object(&self, key: &str) -> ido_engine::s3::S3Object {
        let loc = ido_engine::s3::S3Location {
            bucket: "images".into(),
            region: String::new(),
            endpoint: Some(self.0.clone()),
            http: false,
            credentials: None,
        };
        let client = ido_engine::http::client(&Default::default(), "s3.caBundle").unwrap();
        ido_engine::s3::S3Source::new(&loc, client).unwrap().object(key)
    }
}

#[test]
fn progress_is_the_last_progress_line_of_the_log() {
    let log = "import: 12.5% 1.0 GiB of 8.0 GiB read, 90.0 MiB/s, ETA 80s\n\
               import: 37.25% 3.0 GiB of 8.0 GiB read, 95.0 MiB/s, ETA 55s\n\
               WARN retrying after a cut\n";
    assert_eq!(progress_of(log).as_deref(), Some("37.2%"));
    assert_eq!(
        progress_of("import: 10.0 MiB read, 5.0 MiB/s\n"),
        None,
        "no total, no %"
    );
    assert_eq!(progress_of("import: 140% nonsense\n"), None);
    assert_eq!(progress_of(""), None);
}

#[test]
fn labels_select_the_importer_pods() {
    let di = disk_import("a", http("http://x/y"), sized("1Gi"));
    let l: BTreeMap<String, String> = labels(&di);
    assert_eq!(l[DISK_IMPORT_LABEL], "a");
    assert_eq!(job_name(&di), "importer-a");
}

#[tokio::test]
async fn ido_run_stores_the_claim_and_job_and_follows_the_jobs_status() {
    use crate::run::{RunOptions, apply_desired, load_manifests, run};
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("disk.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {name: fedora}\n\
         spec: {source: {http: {url: 'http://mirror.example/f.raw'}}, storage: {size: 1Gi}}\n",
    )
    .unwrap();
    let ctx = std::sync::Arc::new(context(&dir.path().join("state")));
    let manifests = load_manifests(&[manifest], NS).unwrap();
    apply_desired(&ctx.store, &manifests).await.unwrap();
    let opts = RunOptions {
        timeout: Duration::from_secs(20),
        ..RunOptions::default()
    };
    let report = run(ctx.clone(), opts.clone()).await.unwrap();
    assert!(!report.ok(), "nothing runs the importer");
    let row = report.rows.iter().find(|r| r.kind == "DiskImport").unwrap();
    assert_eq!(row.state, "ImportScheduled");
    assert!(
        row.message.contains("importer Job importer-fedora stored"),
        "{}",
        row.message
    );
    assert!(
        dir.path()
            .join("state/jobs.batch/vms/importer-fedora.json")
            .exists()
    );

    // Something completes the Job: the change reaches the owning DiskImport.
    set_job_status(&ctx, "importer-fedora", json!({"succeeded": 1})).await;
    let report = run(ctx.clone(), opts).await.unwrap();
    let row = report.rows.iter().find(|r| r.kind == "DiskImport").unwrap();
    assert_eq!(row.state, "Succeeded", "{}", report.table());
    assert!(report.ok());
    assert!(
        !dir.path()
            .join("state/jobs.batch/vms/importer-fedora.json")
            .exists()
    );
}
