//! The DiskImportCron reconciler over the file store: polls of a real registry
//! (`docker-registry` with TLS and credentials) and of a local HTTP server's ETag, the imports
//! it creates, the DiskSource it moves once an import succeeded (importer Jobs completed as
//! the Job controller would write it), garbage collection and bad specs.

use std::sync::{Arc, Mutex};

use ido_api::{
    DiskImportCronSpec, DiskImportSource, DiskImportSpec, HttpSource, RegistrySource, StorageSpec,
};
use ido_testkit::{
    oci_image::{build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo_raw},
};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, PersistentVolumeClaim, Secret},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;
use crate::{Settings, diskimport::ImporterSettings, file_store::FileStore};

const NS: &str = "vms";
const PW: &str = "pull-pw-never-shown";

fn context(dir: &std::path::Path) -> Context<FileStore> {
    ido_testkit::install_crypto_provider();
    Context::new(
        FileStore::open(dir).unwrap(),
        Settings {
            disk_import: ImporterSettings {
                image: "ido:test".into(),
                ..ImporterSettings::default()
            },
            ..Settings::default()
        },
    )
}

/// A cron polling once a year (tests force the polls they want).
fn cron(
    name: &str,
    source: DiskImportSource,
    keep: Option<u32>,
    gc: Option<GarbageCollect>,
) -> DiskImportCron {
    let mut c = DiskImportCron::new(
        name,
        DiskImportCronSpec {
            template: DiskImportSpec {
                source,
                content_type: None,
                storage: StorageSpec {
                    size: Some("1Gi".into()),
                    ..Default::default()
                },
                preallocation: None,
            },
            schedule: "0 0 1 1 *".into(),
            imports_to_keep: keep,
            garbage_collect: gc,
            managed_disk_source: format!("{name}-golden"),
        },
    );
    c.metadata.namespace = Some(NS.into());
    c
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

async fn get<K: crate::store::Object>(ctx: &Context<FileStore>, name: &str) -> Option<K> {
    ctx.store.get(Some(NS), name).await.unwrap()
}

/// Reconciles the stored cron once; returns it as stored after.
async fn step(ctx: &Context<FileStore>, name: &str) -> (Action, DiskImportCron) {
    let c: DiskImportCron = get(ctx, name).await.unwrap();
    let action = reconcile(&c, ctx).await.unwrap();
    (action, get(ctx, name).await.unwrap())
}

/// Makes the next reconcile poll (as if the next tick had come).
async fn tick(ctx: &Context<FileStore>, name: &str) {
    let mut c: DiskImportCron = get(ctx, name).await.unwrap();
    c.status.as_mut().unwrap().next_poll_time = Some(Timestamp::now() - jiff::SignedDuration::from_secs(1));
    ctx.store.update_status(&c).await.unwrap();
}

fn status(c: &DiskImportCron) -> DiskImportCronStatus {
    c.status.clone().unwrap()
}

fn cond<'a>(c: &'a DiskImportCron, t: &str) -> &'a Condition {
    ido_api::condition::find(&c.status.as_ref().unwrap().conditions, t).unwrap()
}

/// The names of the stored DiskImports, sorted.
async fn import_names(ctx: &Context<FileStore>) -> Vec<String> {
    let mut v: Vec<String> = ctx
        .store
        .list_in::<DiskImport>(Some(NS))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.metadata.name.unwrap())
        .collect();
    v.sort();
    v
}

fn sorted<const N: usize>(names: [&str; N]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    v.sort();
    v
}

/// Runs the DiskImport `name` to Succeeded: its claim and Job made, the Job completed and
/// the claim bound as the cluster would write them.
async fn complete(ctx: &Context<FileStore>, name: &str) {
    let di: DiskImport = get(ctx, name).await.unwrap();
    crate::diskimport::reconcile(&di, ctx).await.unwrap();
    let job: Job = get(ctx, &format!("importer-{name}")).await.unwrap();
    let mut v = serde_json::to_value(&job).unwrap();
    v["status"] = json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]});
    ctx.store
        .update_status(&serde_json::from_value::<Job>(v).unwrap())
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = get(ctx, name).await.unwrap();
    let mut v = serde_json::to_value(&pvc).unwrap();
    v["status"] = json!({"phase": "Bound"});
    ctx.store
        .update_status(&serde_json::from_value::<PersistentVolumeClaim>(v).unwrap())
        .await
        .unwrap();
    let di: DiskImport = get(ctx, name).await.unwrap();
    crate::diskimport::reconcile(&di, ctx).await.unwrap();
    let di: DiskImport = get(ctx, name).await.unwrap();
    assert_eq!(di.status.unwrap().phase, DiskImportPhase::Succeeded, "{name}");
}

fn points_at(ds: &DiskSource) -> &str {
    &ds.spec.source.pvc.name
}

fn event_reasons(ctx: &Context<FileStore>) -> Vec<String> {
    ctx.store.events().into_iter().map(|e| e.event.reason).collect()
}

// === registry ===

/// Pushes a small image of `seed`'s content to `repo:tag`; its digest as skopeo sees it.
async fn push(reg: &DockerRegistry, repo_tag: &str, seed: u64, dir: &std::path::Path) -> String {
    let layout = build_layout(
        &dir.join(format!("l{seed}")),
        "t",
        &["linux/amd64"],
        1,
        4096,
        seed,
    )
    .await
    .unwrap();
    push_layout(&layout, reg, repo_tag).await.unwrap();
    skopeo_raw(reg, repo_tag, dir).await.unwrap().1
}

// One scenario followed step by step, as the DiskImport lifecycle test is.
#[tokio::test]
async fn a_registry_digest_is_imported_once_and_the_disk_source_moves_after_success() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(&dir.path().join("state"));
    let reg = DockerRegistry::start(RegistryOptions {
        tls: true,
        auth: Some(("puller".into(), PW.into())),
    })
    .await
    .unwrap();
    let d1 = push(&reg, "disks/fedora:41", 1, dir.path()).await;
    // The template's pull Secret and CA ConfigMap, read for the poll.
    let config = json!({"auths": {reg.host(): {"username": "puller", "password": PW}}}).to_string();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pull", "namespace": NS},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config},
    }))
    .unwrap();
    ctx.store.create(&secret).await.unwrap();
    let ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "registry-ca", "namespace": NS},
        "data": {"ca.crt": reg.ca().unwrap().ca_pem()},
    }))
    .unwrap();
    ctx.store.create(&ca).await.unwrap();
    let source = DiskImportSource {
        registry: Some(RegistrySource {
            url: format!("docker://{}/disks/fedora:41", reg.host()),
            secret_ref: Some("pull".into()),
            cert_config_map: Some("registry-ca".into()),
            platform: None,
        }),
        ..Default::default()
    };
    let created = ctx
        .store
        .create(&cron("fedora", source, None, None))
        .await
        .unwrap();

    // First poll: one DiskImport, pinned by digest, owned and labelled; no DiskSource yet.
    let (action, c) = step(&ctx, "fedora").await;
    let first = import_name("fedora", &d1);
    assert_eq!(import_names(&ctx).await, sorted([&first]));
    let di: DiskImport = get(&ctx, &first).await.unwrap();
    assert_eq!(
        di.spec.source.registry.as_ref().unwrap().url,
        format!("docker://{}/disks/fedora@{d1}", reg.host())
    );
    assert_eq!(
        di.spec.source.registry.as_ref().unwrap().secret_ref.as_deref(),
        Some("pull")
    );
    assert_eq!(di.metadata.labels.as_ref().unwrap()[CRON_LABEL], "fedora");
    assert_eq!(
        di.metadata.owner_references.as_ref().unwrap()[0].uid,
        created.metadata.uid.clone().unwrap()
    );
    let st = status(&c);
    assert_eq!(st.last_polled_digest.as_deref(), Some(d1.as_str()));
    assert!(st.last_poll_time.is_some());
    assert!(st.next_poll_time.unwrap() > Timestamp::now(), "the next tick");
    assert_eq!(cond(&c, "UpToDate").reason, "Outdated");
    assert_eq!(cond(&c, "Progressing").status, ConditionStatus::True);
    assert!(get::<DiskSource>(&ctx, "fedora-golden").await.is_none());
    // Woken by its import, and looked at again at the import's recheck meanwhile.
    assert_eq!(action, Action::Requeue(ctx.settings.disk_import.recheck));

    // The import succeeds: the DiskSource is created, owned, at its claim.
    complete(&ctx, &first).await;
    let (_, c) = step(&ctx, "fedora").await;
    let ds: DiskSource = get(&ctx, "fedora-golden").await.unwrap();
    assert_eq!(points_at(&ds), first);
    assert_eq!(
        ds.metadata.owner_references.as_ref().unwrap()[0].kind,
        "DiskImportCron"
    );
    let st = status(&c);
    assert_eq!(st.last_imported_claim.as_deref(), Some(first.as_str()));
    assert!(st.last_import_time.is_some());
    assert_eq!(st.current_imports.len(), 1);
    assert_eq!(
        (
            st.current_imports[0].disk_import.as_str(),
            st.current_imports[0].digest.as_str()
        ),
        (first.as_str(), d1.as_str())
    );
    assert_eq!(cond(&c, "UpToDate").status, ConditionStatus::True);
    assert_eq!(cond(&c, "Progressing").reason, "Idle");

    // The next tick finds the same digest: nothing is imported.
    let polled_before = st.last_poll_time;
    tick(&ctx, "fedora").await;
    let (_, c) = step(&ctx, "fedora").await;
    assert_ne!(status(&c).last_poll_time, polled_before, "it polled");
    assert_eq!(import_names(&ctx).await, sorted([&first]));
    assert_eq!(cond(&c, "UpToDate").status, ConditionStatus::True);

    // A new image under the tag: a second import; the DiskSource stays until it succeeds.
    let d2 = push(&reg, "disks/fedora:41", 2, dir.path()).await;
    assert_ne!(d1, d2);
    tick(&ctx, "fedora").await;
    let (_, c) = step(&ctx, "fedora").await;
    let second = import_name("fedora", &d2);
    assert_eq!(import_names(&ctx).await, sorted([&first, &second]));
    assert_eq!(cond(&c, "UpToDate").reason, "Outdated");
    assert!(cond(&c, "UpToDate").message.contains(&second));
    let ds: DiskSource = get(&ctx, "fedora-golden").await.unwrap();
    assert_eq!(points_at(&ds), first, "not before the new import succeeded");
    let di: DiskImport = get(&ctx, &second).await.unwrap();
    crate::diskimport::reconcile(&di, &ctx).await.unwrap();
    step(&ctx, "fedora").await;
    assert_eq!(
        points_at(&get::<DiskSource>(&ctx, "fedora-golden").await.unwrap()),
        first
    );

    complete(&ctx, &second).await;
    let (_, c) = step(&ctx, "fedora").await;
    let ds: DiskSource = get(&ctx, "fedora-golden").await.unwrap();
    assert_eq!(points_at(&ds), second);
    let st = status(&c);
    assert_eq!(st.last_imported_claim.as_deref(), Some(second.as_str()));
    let kept: Vec<&str> = st
        .current_imports
        .iter()
        .map(|i| i.disk_import.as_str())
        .collect();
    assert_eq!(kept, [second.as_str(), first.as_str()], "newest first");
    assert_eq!(cond(&c, "UpToDate").status, ConditionStatus::True);

    // The DiskSource resolves to the new claim.
    crate::disksource::reconcile(&ds, &ctx).await.unwrap();
    let ds: DiskSource = get(&ctx, "fedora-golden").await.unwrap();
    assert_eq!(ds.ready_claim(), Ok(second.as_str()));

    assert_eq!(
        event_reasons(&ctx)
            .into_iter()
            .filter(|r| r != "ImportScheduled" && r != "ImportSucceeded")
            .collect::<Vec<_>>(),
        ["ImportCreated", "SourceUpdated", "ImportCreated", "SourceUpdated"]
    );
    let everything = serde_json::to_string(&ctx.store.events()).unwrap()
        + &serde_json::to_string(&c).unwrap()
        + &serde_json::to_string(&get::<DiskImport>(&ctx, &second).await.unwrap()).unwrap();
    assert!(!everything.contains(PW), "no credential anywhere");
}

// === HTTP ===

/// A server answering every request with `ETag: "<etag>"` (500 while the tag is empty);
/// counts HEAD requests.
struct EtagServer {
    url: String,
    etag: Arc<Mutex<String>>,
    heads: Arc<Mutex<usize>>,
}

async fn etag_server() -> EtagServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/fedora.qcow2", listener.local_addr().unwrap());
    let etag = Arc::new(Mutex::new("v1".to_string()));
    let heads = Arc::new(Mutex::new(0));
    let (e, h) = (etag.clone(), heads.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (e, h) = (e.clone(), h.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                if buf.starts_with(b"HEAD ") {
                    *h.lock().unwrap() += 1;
                }
                let tag = e.lock().unwrap().clone();
                let reply = if tag.is_empty() {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\netag: \"{tag}\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                };
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    EtagServer { url, etag, heads }
}

impl EtagServer {
    fn set(&self, tag: &str) {
        *self.etag.lock().unwrap() = tag.into();
    }
}

/// Polls `cron` with the server at `tag` and completes the import that makes.
async fn import_version(ctx: &Context<FileStore>, server: &EtagServer, cron: &str, tag: &str) -> String {
    server.set(tag);
    tick(ctx, cron).await;
    step(ctx, cron).await;
    let name = import_name(cron, &format!("etag:\"{tag}\""));
    complete(ctx, &name).await;
    step(ctx, cron).await;
    name
}

/// Sets the cron's `importsToKeep` (a new generation).
async fn set_keep(ctx: &Context<FileStore>, name: &str, keep: u32) {
    let mut c: DiskImportCron = get(ctx, name).await.unwrap();
    c.spec.imports_to_keep = Some(keep);
    ctx.store.replace(&c).await.unwrap();
}

#[tokio::test]
async fn outdated_imports_beyond_imports_to_keep_go_but_never_foreign_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let server = etag_server().await;
    ctx.store
        .create(&cron("web", http(&server.url), Some(2), None))
        .await
        .unwrap();
    // Someone's DiskImport with the cron's label but not made by it.
    let mut foreign = DiskImport::new(
        "web-mine",
        DiskImportSpec {
            source: http(&server.url),
            content_type: None,
            storage: StorageSpec {
                size: Some("1Gi".into()),
                ..Default::default()
            },
            preallocation: None,
        },
    );
    foreign.metadata.namespace = Some(NS.into());
    foreign.metadata.labels = Some([(CRON_LABEL.to_string(), "web".to_string())].into());
    ctx.store.create(&foreign).await.unwrap();

    // v1 by the first poll, then v2: both kept.
    let (_, c) = step(&ctx, "web").await;
    let v1 = import_name("web", "etag:\"v1\"");
    assert_eq!(status(&c).last_polled_digest.as_deref(), Some("etag:\"v1\""));
    complete(&ctx, &v1).await;
    step(&ctx, "web").await;
    let v2 = import_version(&ctx, &server, "web", "v2").await;
    assert_eq!(import_names(&ctx).await, sorted([&v1, &v2, "web-mine"]));
    assert!(!event_reasons(&ctx).contains(&"GarbageCollected".to_string()));

    // A failing poll deletes nothing, even with importsToKeep lowered to 1 (a new spec is
    // polled at once), and is retried soon.
    server.set("");
    set_keep(&ctx, "web", 1).await;
    let (action, c) = step(&ctx, "web").await;
    let up = cond(&c, "UpToDate");
    assert_eq!(
        (up.status, up.reason.as_str()),
        (ConditionStatus::False, "PollFailed")
    );
    assert!(up.message.contains("500"), "{}", up.message);
    assert!(
        up.message.contains("spec.template.source.http.url"),
        "{}",
        up.message
    );
    let st = status(&c);
    assert_eq!(st.poll_failures, 1);
    let retry = st.next_poll_time.unwrap().duration_since(Timestamp::now());
    assert!(retry <= jiff::SignedDuration::from_secs(2), "{retry:?}");
    assert!(
        matches!(action, Action::Requeue(d) if d <= Duration::from_secs(2)),
        "{action:?}"
    );
    assert_eq!(import_names(&ctx).await, sorted([&v1, &v2, "web-mine"]));

    // v3 with importsToKeep 2: the third own import; the oldest (v1) goes, the foreign one
    // stays.
    set_keep(&ctx, "web", 2).await;
    let v3 = import_version(&ctx, &server, "web", "v3").await;
    assert_eq!(import_names(&ctx).await, sorted([&v2, &v3, "web-mine"]));
    assert!(
        get::<PersistentVolumeClaim>(&ctx, &v1).await.is_none(),
        "its claim with it"
    );
    assert_eq!(
        points_at(&get::<DiskSource>(&ctx, "web-golden").await.unwrap()),
        v3
    );
    let c: DiskImportCron = get(&ctx, "web").await.unwrap();
    let st = status(&c);
    let kept: Vec<&str> = st
        .current_imports
        .iter()
        .map(|i| i.disk_import.as_str())
        .collect();
    assert_eq!(kept, [v3.as_str(), v2.as_str()]);
    assert_eq!(
        event_reasons(&ctx)
            .iter()
            .filter(|r| *r == "GarbageCollected")
            .count(),
        1
    );
    assert!(*server.heads.lock().unwrap() >= 4, "polled with HEAD");
}

#[tokio::test]
async fn with_never_every_import_is_kept_and_a_foreign_disk_source_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let server = etag_server().await;
    ctx.store
        .create(&cron(
            "keep",
            http(&server.url),
            Some(1),
            Some(GarbageCollect::Never),
        ))
        .await
        .unwrap();
    step(&ctx, "keep").await;
    complete(&ctx, &import_name("keep", "etag:\"v1\"")).await;
    step(&ctx, "keep").await;
    import_version(&ctx, &server, "keep", "v2").await;
    import_version(&ctx, &server, "keep", "v3").await;
    assert_eq!(import_names(&ctx).await.len(), 3, "importsToKeep 1, but Never");
    assert!(!event_reasons(&ctx).contains(&"GarbageCollected".to_string()));

    // A DiskSource the cron did not create is never taken over.
    let mut theirs = DiskSource::new(
        "mine-golden",
        DiskSourceSpec {
            source: DiskSourceSource {
                pvc: ClaimReference {
                    name: "their-claim".into(),
                },
            },
        },
    );
    theirs.metadata.namespace = Some(NS.into());
    ctx.store.create(&theirs).await.unwrap();
    server.set("v1");
    ctx.store
        .create(&cron("mine", http(&server.url), None, None))
        .await
        .unwrap();
    step(&ctx, "mine").await;
    complete(&ctx, &import_name("mine", "etag:\"v1\"")).await;
    let (_, c) = step(&ctx, "mine").await;
    let up = cond(&c, "UpToDate");
    assert_eq!(
        (up.status, up.reason.as_str()),
        (ConditionStatus::False, "NameClash")
    );
    assert!(
        up.message.contains("DiskSource vms/mine-golden"),
        "{}",
        up.message
    );
    let ds: DiskSource = get(&ctx, "mine-golden").await.unwrap();
    assert_eq!(points_at(&ds), "their-claim");
    assert!(ds.metadata.owner_references.is_none());
    assert!(status(&c).last_imported_claim.is_none());
}

#[tokio::test]
async fn an_invalid_schedule_is_an_invalid_spec_naming_the_field_and_nothing_is_polled() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let server = etag_server().await;
    let mut bad = cron("bad", http(&server.url), None, None);
    bad.spec.schedule = "61 * * * *".into();
    ctx.store.create(&bad).await.unwrap();
    let (action, c) = step(&ctx, "bad").await;
    assert_eq!(action, Action::AwaitChange);
    let up = cond(&c, "UpToDate");
    assert_eq!(
        (up.status, up.reason.as_str()),
        (ConditionStatus::False, "InvalidSpec")
    );
    assert!(
        up.message.contains("spec.schedule") && up.message.contains("\"61 * * * *\""),
        "{}",
        up.message
    );
    assert!(import_names(&ctx).await.is_empty());
    assert_eq!(*server.heads.lock().unwrap(), 0);
    assert_eq!(event_reasons(&ctx), ["InvalidSpec"]);

    // Other fields are named too: importsToKeep, the template's own checks, its source.
    let mut c: DiskImportCron = get(&ctx, "bad").await.unwrap();
    for (change, field) in [
        (
            json!({"schedule": "@daily", "importsToKeep": 0}),
            "spec.importsToKeep",
        ),
        (
            json!({"schedule": "@daily", "importsToKeep": 1, "template": {"source": {"http": {"url": "ftp://x/y"}}, "storage": {"size": "1Gi"}}}),
            "spec.template.source.http.url",
        ),
        (
            json!({"schedule": "@daily", "importsToKeep": 1, "template": {"source": {"blank": {}}, "storage": {"size": "1Gi"}}}),
            "spec.template.source: must be registry or http",
        ),
    ] {
        let mut v: Value = serde_json::to_value(&c).unwrap();
        for (k, val) in change.as_object().unwrap() {
            v["spec"][k] = val.clone();
        }
        ctx.store
            .replace(&serde_json::from_value::<DiskImportCron>(v).unwrap())
            .await
            .unwrap();
        let (_, after) = step(&ctx, "bad").await;
        let up = cond(&after, "UpToDate");
        assert_eq!(up.reason, "InvalidSpec");
        assert!(up.message.contains(field), "{field}: {}", up.message);
        c = after;
    }
    assert!(import_names(&ctx).await.is_empty());
}
