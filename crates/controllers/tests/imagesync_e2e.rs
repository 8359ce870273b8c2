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
