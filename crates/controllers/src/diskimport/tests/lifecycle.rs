//! An import from its claim and Job to Succeeded or Failed, as `ido operator` and `ido run` follow it.

use super::*;

// One scenario followed step by step; it reads better whole than cut into helpers.
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
    assert!(absent::<Job>(&ctx, NS, "importer-fedora").await);
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
    assert!(absent::<PersistentVolumeClaim>(&ctx, NS, "fedora").await);
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
async fn blank_block_disks_are_a_claim_only() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let blank = DiskImportSource {
        blank: Some(ido_api::BlankSource {}),
        ..Default::default()
    };
    let mut storage = sized("5Gi");
    storage.volume_mode = Some(ido_api::VolumeMode::Block);
    ctx.store
        .create(&disk_import("scratch", blank, storage))
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
        row.message.contains("importer Job importer-fedora"),
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

/// A reconcile woken with a stale copy (a cache that does not show Succeeded yet, after the
/// importer Job was removed on success) neither makes a new importer nor takes the end back.
#[tokio::test]
async fn a_stale_copy_after_success_makes_no_second_importer() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    ctx.store
        .create(&disk_import(
            "fedora",
            http("http://mirror.example/f.raw"),
            sized("1Gi"),
        ))
        .await
        .unwrap();
    let (_, stale) = step(&ctx, "fedora").await;
    assert_eq!(status(&stale).phase, DiskImportPhase::ImportScheduled);
    complete_job(&ctx, "importer-fedora").await;
    let (_, done) = step(&ctx, "fedora").await;
    assert_eq!(status(&done).phase, DiskImportPhase::Succeeded);
    assert!(
        absent::<Job>(&ctx, NS, "importer-fedora").await,
        "removed after success"
    );

    reconcile(&stale, &ctx).await.unwrap();
    assert!(
        absent::<Job>(&ctx, NS, "importer-fedora").await,
        "no second importer"
    );
    let now: DiskImport = ctx.store.get(Some(NS), "fedora").await.unwrap().unwrap();
    assert_eq!(status(&now).phase, DiskImportPhase::Succeeded);
}
