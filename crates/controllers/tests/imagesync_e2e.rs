//! ImageSync against real `docker-registry` instances, through the `ido run` driver and the
//! file store, with skopeo as the oracle: each matching tag lands on its own tag with the
//! source's digest, credentials come from dockerconfigjson Secrets on both sides (the
//! destination also TLS with the test kit's CA), a second pass copies nothing, and bad specs
//! and credentials become clear conditions.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use base64::Engine;
use ido_api::{
    ConditionStatus, ImageSync, TagResult,
    condition::find,
    imagesync::{conditions, reasons},
};
use ido_controllers::{
    Action, Context, Store,
    config::Config,
    file_store::FileStore,
    imagesync,
    run::{Manifest, RunOptions, apply_desired, load_manifests, run},
};
use ido_testkit::{
    oci_image::{build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo_raw},
};
use serde_json::{Value, json};

const NS: &str = "mirror";
const SRC_PW: &str = "src-pass-4711";
const DST_PW: &str = "dst-pass-0815";

/// A plain-HTTP source and a TLS destination, both requiring credentials.
async fn registries() -> (DockerRegistry, DockerRegistry) {
    let (src, dst) = tokio::join!(
        DockerRegistry::start(RegistryOptions {
            tls: false,
            auth: Some(("puller".into(), SRC_PW.into())),
        }),
        DockerRegistry::start(RegistryOptions {
            tls: true,
            auth: Some(("pusher".into(), DST_PW.into())),
        })
    );
    (src.unwrap(), dst.unwrap())
}

/// Pushes one small image per tag (`2.13.1` a two-platform index), each with its own
/// content; returns the digests skopeo sees.
async fn push_tags(reg: &DockerRegistry, repo: &str, tags: &[&str], dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, tag) in tags.iter().enumerate() {
        let platforms: &[&str] = if *tag == "2.13.1" {
            &["linux/amd64", "linux/arm64"]
        } else {
            &["linux/amd64"]
        };
        let layout = build_layout(
            &dir.join(format!("l-{tag}")),
            tag,
            platforms,
            1,
            4096,
            100 + i as u64,
        )
        .await
        .unwrap();
        push_layout(&layout, reg, &format!("{repo}:{tag}")).await.unwrap();
        let (_, digest) = skopeo_raw(reg, &format!("{repo}:{tag}"), dir).await.unwrap();
        out.insert(tag.to_string(), digest);
    }
    out
}

/// The two credential Secrets: the source's as `stringData`, the destination's as `data`.
fn secrets(src: &DockerRegistry, dst: &DockerRegistry) -> Vec<Value> {
    let cfg = |host: &str, user: &str, pw: &str| {
        json!({"auths": {host: {"username": user, "password": pw}}}).to_string()
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(cfg(dst.host(), "pusher", DST_PW));
    vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "src-creds"},
               "type": "kubernetes.io/dockerconfigjson",
               "stringData": {".dockerconfigjson": cfg(src.host(), "puller", SRC_PW)}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dst-creds"},
               "type": "kubernetes.io/dockerconfigjson",
               "data": {".dockerconfigjson": b64}}),
    ]
}

/// An ImageSync from `src/team/app` to `dst/mirror/app` with `spec` merged in.
fn image_sync(name: &str, src: &DockerRegistry, dst: &DockerRegistry, spec: Value) -> Value {
    let mut s = json!({
        "mode": "OnceByTag",
        "frequency": "1h",
        "source": {"name": format!("docker://{}/team/app", src.host()), "secretRef": {"name": "src-creds"},
                   "tlsVerify": false},
        "destination": {"name": format!("{}/mirror/app", dst.host()), "secretRef": {"name": "dst-creds"},
                        "caBundle": dst.ca().unwrap().ca_pem()},
    });
    merge(&mut s, &spec);
    json!({"apiVersion": "ido.dev/v1alpha1", "kind": "ImageSync", "metadata": {"name": name}, "spec": s})
}

fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// Writes `docs` as one multi-document manifest file (JSON is YAML) and loads it like
/// `ido run -f`.
fn manifests(dir: &Path, docs: &[Value]) -> Vec<Manifest> {
    let path = dir.join("manifests.yaml");
    let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    std::fs::write(&path, text.join("\n---\n")).unwrap();
    load_manifests(&[path], NS).unwrap()
}

fn context(dir: &Path) -> (FileStore, Arc<Context<FileStore>>) {
    let store = FileStore::open(&dir.join("state")).unwrap();
    let ctx = Config::from_value(json!({}))
        .unwrap()
        .context(store.clone())
        .unwrap();
    (store, Arc::new(ctx))
}

fn opts() -> RunOptions {
    RunOptions {
        timeout: Duration::from_secs(120),
        ..RunOptions::default()
    }
}

async fn get(store: &FileStore, name: &str) -> ImageSync {
    store.get::<ImageSync>(Some(NS), name).await.unwrap().unwrap()
}

fn ready(is: &ImageSync) -> (ConditionStatus, String, String) {
    let c = find(&is.status.as_ref().unwrap().conditions, conditions::READY).unwrap();
    (c.status, c.reason.clone(), c.message.clone())
}

fn results(is: &ImageSync) -> Vec<(String, TagResult)> {
    is.status
        .as_ref()
        .unwrap()
        .tags
        .iter()
        .map(|t| (t.tag.clone(), t.result))
        .collect()
}

/// The whole state directory (objects and events) without the Secrets themselves.
fn state_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.join("state")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("secrets.") {
                    stack.push(p);
                }
            } else {
                out += &std::fs::read_to_string(&p).unwrap();
            }
        }
    }
    out
}

#[tokio::test]
async fn pattern_copies_each_tag_to_itself_with_secrets_on_both_sides_then_nothing() {
    let (src, dst) = registries().await;
    let dir = tempfile::tempdir().unwrap();
    let tags = ["2.12.9", "2.13.0", "2.13.1", "2.13.2-rc.1", "2.14.0", "latest"];
    let digests = push_tags(&src, "team/app", &tags, dir.path()).await;

    let mut docs = secrets(&src, &dst);
    docs.push(image_sync(
        "app",
        &src,
        &dst,
        json!({"source": {"version": "2.13.x"}}),
    ));
    // A single tag renamed at the destination, in the same run.
    docs.push(image_sync(
        "app-latest",
        &src,
        &dst,
        json!({"mode": "OneShot", "source": {"version": "latest"}, "destination": {"version": "stable"}}),
    ));
    let (store, ctx) = context(dir.path());
    apply_desired(&store, &manifests(dir.path(), &docs))
        .await
        .unwrap();
    let report = run(ctx.clone(), opts()).await.unwrap();
    eprintln!("{}", report.table());
    assert!(report.ok(), "{}", report.table());

    let app = get(&store, "app").await;
    assert_eq!(
        results(&app),
        [
            ("2.13.1".to_string(), TagResult::Copied),
            ("2.13.0".to_string(), TagResult::Copied)
        ],
        "highest first; no rc, no 2.12/2.14"
    );
    let st = app.status.as_ref().unwrap();
    assert_eq!((st.matched_tags, st.tag_summary.as_str()), (2, "2/2"));
    assert_eq!(ready(&app).0, ConditionStatus::True, "{:?}", ready(&app));
    assert!(st.last_sync_time.is_some() && st.next_sync_time > st.last_sync_time);
    for t in &st.tags {
        assert_eq!(t.source_digest.as_ref(), Some(&digests[&t.tag]));
        assert_eq!(t.destination_digest.as_ref(), Some(&digests[&t.tag]));
        assert!(t.last_copied.is_some() && t.bytes >= 4096, "{t:?}");
    }
    // The oracle: every matching tag is at the destination under its own name, byte-exact.
    for tag in ["2.13.0", "2.13.1"] {
        let (_, d) = skopeo_raw(&dst, &format!("mirror/app:{tag}"), dir.path())
            .await
            .unwrap();
        assert_eq!(d, digests[tag], "{tag}");
    }
    for absent in ["2.13.x", "2.13.2-rc.1", "2.14.0", "2.12.9"] {
        assert!(
            skopeo_raw(&dst, &format!("mirror/app:{absent}"), dir.path())
                .await
                .is_err(),
            "{absent} must not exist at the destination"
        );
    }
    let (_, d) = skopeo_raw(&dst, "mirror/app:stable", dir.path()).await.unwrap();
    assert_eq!(d, digests["latest"], "latest copied to the renamed tag");
    let one = get(&store, "app-latest").await;
    assert_eq!(ready(&one).0, ConditionStatus::True);
    assert!(
        one.status.as_ref().unwrap().next_sync_time.is_none(),
        "OneShot plans nothing more"
    );
    assert_eq!(
        one.status.as_ref().unwrap().tags[0].destination_tag.as_deref(),
        Some("stable")
    );

    let metrics = ctx.metrics.encode();
    let copied_line = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("ido_imagesync_copies_total") && l.contains("result=\"copied\""))
            .map(str::to_string)
    };
    assert!(
        copied_line(&metrics).is_some_and(|l| l.ends_with(" 3")),
        "{metrics}"
    );
    let bytes_line = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("ido_imagesync_copy_bytes_total"))
            .map(str::to_string)
            .unwrap()
    };
    let bytes_before = bytes_line(&metrics);
    let duration = format!(
        "ido_imagesync_copy_duration_seconds_count{{source_registry=\"{}\",destination_registry=\"{}\"}} 3",
        src.host(),
        dst.host()
    );
    assert!(metrics.contains(&duration), "{metrics}");
    let events: Vec<String> = store.events().iter().map(|e| e.event.reason.clone()).collect();
    assert!(events.contains(&reasons::SYNCED.to_string()), "{events:?}");

    // Again, the same generation: OnceByTag skips what it copied, nothing is copied.
    let again = imagesync::sync(&app, &ctx).await.unwrap().unwrap();
    assert_eq!(
        results(&again),
        [
            ("2.13.1".to_string(), TagResult::Skipped),
            ("2.13.0".to_string(), TagResult::Skipped)
        ]
    );
    // Recurrent checks every tag again: the destination has each digest, nothing copied.
    let docs2: Vec<Value> = docs
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if d["metadata"]["name"] == "app" {
                d["spec"]["mode"] = json!("Recurrent");
            }
            d
        })
        .collect();
    apply_desired(&store, &manifests(dir.path(), &docs2))
        .await
        .unwrap();
    let report = run(ctx.clone(), opts()).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    let app = get(&store, "app").await;
    assert_eq!(
        results(&app),
        [
            ("2.13.1".to_string(), TagResult::Unchanged),
            ("2.13.0".to_string(), TagResult::Unchanged)
        ]
    );
    assert_eq!(app.status.as_ref().unwrap().observed_generation, Some(2));
    let metrics = ctx.metrics.encode();
    assert_eq!(bytes_line(&metrics), bytes_before, "no byte copied again");
    assert!(
        copied_line(&metrics).is_some_and(|l| l.ends_with(" 3")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ido_imagesync_copies_total")
                && l.contains("unchanged")
                && l.ends_with(" 2")),
        "{metrics}"
    );

    // Credentials never reach the status or the events.
    let text = state_text(dir.path());
    assert!(!text.contains(SRC_PW) && !text.contains(DST_PW));
}

#[tokio::test]
async fn release_candidates_and_the_tag_cap() {
    let (src, dst) = registries().await;
    let dir = tempfile::tempdir().unwrap();
    let tags = ["3.0.0", "3.1.0", "3.2.0-rc1", "3.2.0-rc.2", "3.10.0"];
    let digests = push_tags(&src, "team/app", &tags, dir.path()).await;
    let mut docs = secrets(&src, &dst);
    docs.push(image_sync(
        "rc",
        &src,
        &dst,
        json!({"source": {"version": "3.x.0"}}),
    ));
    let (store, ctx) = context(dir.path());
    apply_desired(&store, &manifests(dir.path(), &docs))
        .await
        .unwrap();
    run(ctx.clone(), opts()).await.unwrap();
    let is = get(&store, "rc").await;
    let tags_of = |is: &ImageSync| -> Vec<String> { results(is).into_iter().map(|t| t.0).collect() };
    assert_eq!(tags_of(&is), ["3.10.0", "3.1.0", "3.0.0"], "rc excluded");

    // Candidates allowed, at most 2 tags: the two highest, and a clear condition.
    docs[2] = image_sync(
        "rc",
        &src,
        &dst,
        json!({"source": {"version": "3.x.0"}, "allowCandidateRelease": true, "maxTags": 2}),
    );
    apply_desired(&store, &manifests(dir.path(), &docs))
        .await
        .unwrap();
    let report = run(ctx.clone(), opts()).await.unwrap();
    assert!(!report.ok(), "the cap is not Ready: {}", report.table());
    let is = get(&store, "rc").await;
    assert_eq!(tags_of(&is), ["3.10.0", "3.2.0-rc.2"]);
    let (status, reason, message) = ready(&is);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, reasons::TAG_LIMIT_EXCEEDED)
    );
    assert!(
        message.contains("5 tags") && message.contains("spec.maxTags 2"),
        "{message}"
    );
    assert_eq!(is.status.as_ref().unwrap().matched_tags, 5);
    let degraded = find(&is.status.as_ref().unwrap().conditions, conditions::DEGRADED).unwrap();
    assert_eq!(degraded.status, ConditionStatus::True);
    let (_, d) = skopeo_raw(&dst, "mirror/app:3.2.0-rc.2", dir.path())
        .await
        .unwrap();
    assert_eq!(d, digests["3.2.0-rc.2"]);
    assert!(
        store
            .events()
            .iter()
            .any(|e| e.event.reason == reasons::TAG_LIMIT_EXCEEDED)
    );
}

#[tokio::test]
async fn bad_specs_and_credentials_become_conditions_naming_the_field() {
    let (src, dst) = registries().await;
    let dir = tempfile::tempdir().unwrap();
    push_tags(&src, "team/app", &["1.0.0"], dir.path()).await;
    let mut docs = secrets(&src, &dst);
    // A wrong destination password, an invalid frequency, a missing Secret.
    docs[1] = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dst-creds"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": json!({"auths": {dst.host(): {"username": "pusher", "password": "wrong-pw-1234"}}}).to_string()}});
    docs.push(image_sync(
        "bad-frequency",
        &src,
        &dst,
        json!({"frequency": "5x", "source": {"version": "1.0.0"}}),
    ));
    docs.push(image_sync(
        "no-secret",
        &src,
        &dst,
        json!({"source": {"version": "1.0.0", "secretRef": {"name": "absent"}}}),
    ));
    docs.push(image_sync(
        "no-ca",
        &src,
        &dst,
        json!({"source": {"version": "1.0.0"}, "destination": {"certConfigMap": "absent-ca"}}),
    ));
    docs.push(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "not-pem"},
        "data": {"ca.crt": "nothing"}}),
    );
    docs.push(image_sync(
        "not-pem-ca",
        &src,
        &dst,
        json!({"source": {"version": "1.0.0"}, "destination": {"certConfigMap": "not-pem"}}),
    ));
    docs.push(image_sync(
        "wrong-password",
        &src,
        &dst,
        json!({"source": {"version": "1.0.0"}}),
    ));
    let (store, ctx) = context(dir.path());
    apply_desired(&store, &manifests(dir.path(), &docs))
        .await
        .unwrap();
    let report = run(ctx.clone(), opts()).await.unwrap();
    eprintln!("{}", report.table());
    assert!(!report.ok());

    let (s, reason, msg) = ready(&get(&store, "bad-frequency").await);
    assert_eq!(
        (s, reason.as_str()),
        (ConditionStatus::False, reasons::INVALID_SPEC)
    );
    assert!(msg.starts_with("spec.frequency: invalid value \"5x\""), "{msg}");
    let bad = get(&store, "bad-frequency").await;
    assert_eq!(
        imagesync::reconcile(&bad, &ctx).await.unwrap(),
        Action::AwaitChange
    );

    let (s, reason, msg) = ready(&get(&store, "no-secret").await);
    assert_eq!(
        (s, reason.as_str()),
        (ConditionStatus::False, reasons::CREDENTIALS_UNAVAILABLE)
    );
    assert!(
        msg.contains("spec.source.secretRef") && msg.contains("mirror/absent not found"),
        "{msg}"
    );
    let no_secret = get(&store, "no-secret").await;
    let next = no_secret.status.as_ref().unwrap().next_sync_time.unwrap();
    let wait = next.duration_since(jiff::Timestamp::now()).as_secs();
    assert!(
        (50..=61).contains(&wait),
        "retried in about a minute, not {wait}s"
    );

    for (name, want) in [
        (
            "no-ca",
            "spec.destination.certConfigMap: ConfigMap mirror/absent-ca not found",
        ),
        (
            "not-pem-ca",
            "spec.destination.certConfigMap: ConfigMap mirror/not-pem has no PEM certificate",
        ),
    ] {
        let (s, reason, msg) = ready(&get(&store, name).await);
        assert_eq!(
            (s, reason.as_str()),
            (ConditionStatus::False, reasons::CREDENTIALS_UNAVAILABLE),
            "{name}"
        );
        assert!(msg.starts_with(want), "{name}: {msg}");
    }

    let wp = get(&store, "wrong-password").await;
    let (s, reason, msg) = ready(&wp);
    assert_eq!(
        (s, reason.as_str()),
        (ConditionStatus::False, reasons::COPY_FAILED),
        "{msg}"
    );
    assert_eq!(results(&wp), [("1.0.0".to_string(), TagResult::Failed)]);
    assert!(ctx.metrics.encode().contains("result=\"failed\""));

    let text = state_text(dir.path()) + &report.table();
    for pw in [SRC_PW, DST_PW, "wrong-pw-1234"] {
        assert!(!text.contains(pw), "{pw} leaked");
    }
}

/// image-operator's `Image` (`skopeo.io/v1alpha1`) as its users wrote it, plus the Secrets
/// ido needs: synced on the same engine, each tag onto itself (image-operator copied every
/// match onto the literal `destination.version`), with image-operator's status fields kept
/// up (`history`, `phase`, `tagAlreadySynced`, `lastGenerationSeen`) beside the conditions.
/// A frequency image-operator silently read as 5 minutes is an InvalidSpec condition.
#[tokio::test]
async fn image_operators_image_kind_syncs_on_the_same_engine() {
    use ido_api::image_operator::{Image, phases};
    let (src, dst) = registries().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let digests = push_tags(&src, "team/app", &["v2.13.1", "v2.13.2", "v2.14.0"], d).await;
    let mut image = image_sync(
        "argocd",
        &src,
        &dst,
        json!({
            "mode": "OnceByTag",
            "allowCandidateRelease": false,
            "source": {"version": "v2.13.x", "useAwsIRSA": false},
            "destination": {"version": "v2.13.x"},
        }),
    );
    image["apiVersion"] = json!("skopeo.io/v1alpha1");
    image["kind"] = json!("Image");
    image["spec"].as_object_mut().unwrap().remove("frequency");
    let mut bad = image.clone();
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["frequency"] = json!("every day");
    let mut docs = secrets(&src, &dst);
    docs.extend([image, bad]);
    let (store, ctx) = context(d);
    apply_desired(&store, &manifests(d, &docs)).await.unwrap();
    let report = run(ctx.clone(), RunOptions { once: true, ..opts() })
        .await
        .unwrap();
    let row = report
        .rows
        .iter()
        .find(|r| r.name == format!("{NS}/argocd"))
        .unwrap();
    assert_eq!(row.kind, "Image");
    assert!(row.ok, "{row:?}");

    let i = store.get::<Image>(Some(NS), "argocd").await.unwrap().unwrap();
    let st = i.status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some(phases::COMPLETED));
    assert_eq!(st.tag_already_synced, ["v2.13.2", "v2.13.1"]);
    assert_eq!(st.last_generation_seen, i.metadata.generation);
    assert_eq!(st.history.len(), 1);
    assert_eq!(Some(st.history[0].performed_at), st.sync.last_sync_time);
    let next = st.sync.next_sync_time.unwrap();
    let after = next.duration_since(st.sync.last_sync_time.unwrap()).as_secs();
    assert!(
        (299..=301).contains(&after),
        "image-operator's default frequency, 5m: {after}s"
    );
    for tag in ["v2.13.1", "v2.13.2"] {
        let (_, digest) = skopeo_raw(&dst, &format!("mirror/app:{tag}"), d).await.unwrap();
        assert_eq!(digest, digests[tag], "{tag} onto itself");
    }
    assert!(
        skopeo_raw(&dst, "mirror/app:v2.13.x", d).await.is_err(),
        "nothing lands on the pattern's literal tag"
    );
    assert!(skopeo_raw(&dst, "mirror/app:v2.14.0", d).await.is_err());

    // A second pass (as the schedule's): nothing copied, one more history entry, at most 20.
    for _ in 0..21 {
        imagesync::sync(
            &store.get::<Image>(Some(NS), "argocd").await.unwrap().unwrap(),
            &ctx,
        )
        .await
        .unwrap();
    }
    let st = store
        .get::<Image>(Some(NS), "argocd")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.history.len(), 20, "the last 20 passes");
    assert_eq!(st.tag_already_synced, ["v2.13.2", "v2.13.1"]);
    assert!(st.sync.tags.iter().all(|t| t.result == TagResult::Skipped));

    let bad = store.get::<Image>(Some(NS), "bad").await.unwrap().unwrap();
    let st = bad.status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some(phases::FAILED));
    let c = find(&st.sync.conditions, conditions::READY).unwrap();
    assert_eq!(c.reason, reasons::INVALID_SPEC);
    assert!(
        c.message.starts_with("spec.frequency") && c.message.contains("every day"),
        "{}",
        c.message
    );
    assert!(st.history.is_empty(), "no pass ran");
    let text = state_text(d);
    assert!(!text.contains(SRC_PW) && !text.contains(DST_PW));
}

/// Re-syncs read the destination once a day: within a generation, a pass after one that
/// read every destination tag takes the digests it recorded for the tags the destination
/// still lists (one tag listing, no manifest read per tag); a tag deleted at the destination
/// is copied again; a day on, every tag is read again. Counted in front of the destination.
#[tokio::test]
async fn re_syncs_trust_the_recorded_destination_digests_for_a_day() {
    use ido_testkit::fault_proxy::FaultProxy;
    let (src, dst) = tokio::join!(
        DockerRegistry::start(RegistryOptions::default()),
        DockerRegistry::start(RegistryOptions::default())
    );
    let (src, dst) = (src.unwrap(), dst.unwrap());
    let proxy = FaultProxy::start(&dst.base_url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let digests = push_tags(&src, "team/app", &["1.0.0", "1.1.0", "1.2.0"], d).await;
    let is = json!({"apiVersion": "ido.dev/v1alpha1", "kind": "ImageSync", "metadata": {"name": "app"},
        "spec": {"mode": "Recurrent", "frequency": "1h",
                 "source": {"name": format!("{}/team/app", src.host()), "version": "1.x.x", "tlsVerify": false},
                 "destination": {"name": format!("{}/mirror/app", proxy.host()), "tlsVerify": false}}});
    let (store, ctx) = context(d);
    apply_desired(&store, &manifests(d, &[is])).await.unwrap();
    let reads = || {
        let ev = proxy.events();
        let manifests = ev
            .iter()
            .filter(|e| e.path.contains("/manifests/") && e.method != "PUT")
            .count();
        let lists = ev.iter().filter(|e| e.path.contains("/tags/list")).count();
        (manifests, lists)
    };
    let pass = || async {
        imagesync::sync(&get(&store, "app").await, &ctx)
            .await
            .unwrap()
            .unwrap()
    };

    let first = pass().await;
    assert_eq!(ready(&first).0, ConditionStatus::True, "{:?}", ready(&first));
    assert!(results(&first).iter().all(|(_, r)| *r == TagResult::Copied));
    let verified = first.status.as_ref().unwrap().destinations_verified_time;
    assert!(verified.is_some());
    assert_eq!(reads(), (3, 0), "the first pass reads each destination tag");

    let second = pass().await;
    assert!(
        results(&second).iter().all(|(_, r)| *r == TagResult::Unchanged),
        "{:?}",
        results(&second)
    );
    assert_eq!(reads(), (3, 1), "one listing, no manifest read");
    assert_eq!(
        second.status.as_ref().unwrap().destinations_verified_time,
        verified
    );

    // A tag deleted at the destination (its tag directory gone): copied again.
    let tag_dir = dst
        .data_dir()
        .join("docker/registry/v2/repositories/mirror/app/_manifests/tags/1.1.0");
    std::fs::remove_dir_all(&tag_dir).unwrap();
    let third = pass().await;
    assert_eq!(
        results(&third),
        [
            ("1.2.0".to_string(), TagResult::Unchanged),
            ("1.1.0".to_string(), TagResult::Copied),
            ("1.0.0".to_string(), TagResult::Unchanged)
        ]
    );
    let (_, got) = skopeo_raw(&dst, "mirror/app:1.1.0", d).await.unwrap();
    assert_eq!(got, digests["1.1.0"]);

    // A day on: every destination tag is read again.
    let mut old = get(&store, "app").await;
    let day_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(25);
    old.status.as_mut().unwrap().destinations_verified_time = Some(day_ago);
    store.update_status(&old).await.unwrap();
    let before = reads().0;
    let fourth = pass().await;
    assert!(results(&fourth).iter().all(|(_, r)| *r == TagResult::Unchanged));
    assert_eq!(reads().0 - before, 3, "every tag read");
    assert!(fourth.status.as_ref().unwrap().destinations_verified_time > Some(day_ago));
}

/// An ImageSync applied to a file store, whose source (`team/app` with `tags`, selected by
/// `version`) comes through a proxy that serves blobs at `bytes_per_sec`.
struct Throttled {
    _src: DockerRegistry,
    dst: DockerRegistry,
    proxy: ido_testkit::fault_proxy::FaultProxy,
    dir: tempfile::TempDir,
    store: FileStore,
    ctx: Arc<Context<FileStore>>,
}

async fn throttled(name: &str, tags: &[&str], version: &str, bytes_per_sec: u64, spec: Value) -> Throttled {
    use ido_testkit::fault_proxy::{Fault, FaultProxy, Rule};

    let (src, dst) = tokio::join!(
        DockerRegistry::start(RegistryOptions {
            tls: false,
            auth: None,
        }),
        DockerRegistry::start(RegistryOptions {
            tls: true,
            auth: Some(("pusher".into(), DST_PW.into())),
        })
    );
    let (src, dst) = (src.unwrap(), dst.unwrap());
    let dir = tempfile::tempdir().unwrap();
    push_tags(&src, "team/app", tags, dir.path()).await;
    let proxy = FaultProxy::start(&src.base_url()).await.unwrap();
    proxy.set_rules(vec![
        Rule::new(Fault::Throttle { bytes_per_sec })
            .method("GET")
            .path("/blobs/"),
    ]);
    let mut doc = image_sync(name, &src, &dst, spec);
    doc["spec"]["source"] = json!({"name": format!("docker://{}/team/app", proxy.host()),
                                   "version": version, "tlsVerify": false});
    let mut docs = secrets(&src, &dst);
    docs.push(doc);
    let (store, ctx) = context(dir.path());
    apply_desired(&store, &manifests(dir.path(), &docs))
        .await
        .unwrap();
    Throttled {
        _src: src,
        dst,
        proxy,
        dir,
        store,
        ctx,
    }
}

#[tokio::test]
async fn a_pass_runs_as_a_task_and_goes_with_its_object() {
    use ido_controllers::tasks::TaskKey;
    use std::time::Instant;

    // Blobs come at 256 bytes a second: the pass takes far longer than the test waits.
    // Every part is bound: a registry or directory dropped here would end the pass early.
    let Throttled {
        _src,
        dst: _dst,
        proxy,
        dir: _dir,
        store,
        ctx,
    } = throttled("slow", &["1.0.0"], "1.0.0", 256, json!({})).await;

    // The reconcile hands the pass to a task and returns at once.
    let is = get(&store, "slow").await;
    let key = TaskKey::of(&is);
    let started = Instant::now();
    assert!(matches!(
        imagesync::reconcile(&is, &ctx).await.unwrap(),
        Action::Requeue(_)
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(ctx.tasks.occupied(&key), "the pass runs as a task");

    // While `ido run` waits for it, the object is deleted: the pass is dropped, and the run
    // settles instead of waiting for the transfer.
    let runner = tokio::spawn(run(ctx.clone(), opts()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!runner.is_finished(), "a running pass holds `ido run --once`");
    store.delete(&is).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("the run settles once the object is gone")
        .unwrap()
        .unwrap();
    eprintln!("{}", report.table());
    assert!(!ctx.tasks.occupied(&key), "the pass and its outcome are gone");
    assert!(proxy.counts().requests >= 1, "the pass had begun");
}

#[tokio::test]
async fn a_pass_stops_at_its_next_progress_write_once_its_object_is_deleted() {
    use ido_controllers::tasks::TaskKey;

    // About 6 s a tag, one at a time: the first progress write comes after the first tag.
    let Throttled {
        _src,
        dst,
        proxy: _proxy,
        dir,
        store,
        ctx,
    } = throttled(
        "three",
        &["1.0.0", "2.0.0", "3.0.0"],
        ">=1.0.0",
        800,
        json!({"concurrency": 1}),
    )
    .await;
    let is = get(&store, "three").await;
    let key = TaskKey::of(&is);
    imagesync::reconcile(&is, &ctx).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Deleted with no driver to cancel the pass (as while the operator was down): the
    // pass notices at its next progress write.
    store.delete(&is).await.unwrap();
    tokio::time::timeout(Duration::from_secs(12), ctx.tasks.ended(&key))
        .await
        .expect("the pass stopped after its first tag, not after all three");
    assert!(
        skopeo_raw(&dst, "mirror/app:1.0.0", dir.path()).await.is_err(),
        "the last tag was never copied"
    );
}
