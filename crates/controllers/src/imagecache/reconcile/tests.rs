//! The policy reconciler over the file store: records made and kept current, `patch` mode,
//! and specs refused by field.

use std::sync::Arc;

use ido_api::{CachePhase, CachedImage, CachedImageStatus, ImageCachePolicy};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

use super::*;
use crate::{Settings, file_store::FileStore};

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn context(dir: &std::path::Path) -> Arc<Context<FileStore>> {
    Arc::new(Context::new(FileStore::open(dir).unwrap(), Settings::default()))
}

fn policy(spec: serde_json::Value) -> ImageCachePolicy {
    from(
        json!({"apiVersion": "ido.dev/v1alpha1", "kind": "ImageCachePolicy",
                "metadata": {"name": "p", "namespace": "apps", "generation": 1}, "spec": spec}),
    )
}

async fn deployment(ctx: &Context<FileStore>, name: &str, image: &str, replicas: i32) -> Deployment {
    ctx.store
        .create::<Deployment>(&from(json!({
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"imagePullSecrets": [{"name": "own"}],
                                           "containers": [{"name": "c", "image": image}]}}}
        })))
        .await
        .unwrap()
}

fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

/// `patch` mode: the workload's template points at the copy once it is present, in one
/// update, its own pull secret kept and the cache's added; the record keeps counting the
/// workload (now running the copy), so it never expires while used; a second pass changes
/// nothing.
#[tokio::test]
async fn patch_mode_points_templates_at_present_copies_once() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let p = ctx
        .store
        .create(&policy(
            json!({"target": {"registry": "cache.example:5000", "pathPrefix": "m",
                                         "pullSecretName": "cache-pull"},
                              "mode": "patch", "pinDigest": true}),
        ))
        .await
        .unwrap();
    deployment(&ctx, "web", "nginx:1.27", 0).await;

    // First pass: the record is made; no copy yet, so the template is left.
    reconcile(&p, &ctx).await.unwrap();
    let records = ctx.store.list::<CachedImage>().await.unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.spec.source, "docker.io/library/nginx:1.27");
    assert_eq!(r.spec.target, "cache.example:5000/m/docker.io/library/nginx:1.27");
    assert_eq!(r.spec.policy, "ImageCachePolicy/apps/p");
    let st = r.status.clone().unwrap();
    assert_eq!(st.workload_count, 1, "a Deployment scaled to zero counts");
    assert_eq!(st.pull_secrets[0].name, "own");
    let web = ctx
        .store
        .get::<Deployment>(Some("apps"), "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(image_of(&web), "nginx:1.27");

    // The copy is present: the next pass points the template at it, by digest.
    let digest = format!("sha256:{}", "a".repeat(64));
    ctx.store
        .update_status(&CachedImage {
            status: Some(CachedImageStatus {
                phase: CachePhase::Cached,
                digest: Some(digest.clone()),
                ..st
            }),
            ..r.clone()
        })
        .await
        .unwrap();
    let p = ctx
        .store
        .get::<ImageCachePolicy>(Some("apps"), "p")
        .await
        .unwrap()
        .unwrap();
    reconcile(&p, &ctx).await.unwrap();
    let web = ctx
        .store
        .get::<Deployment>(Some("apps"), "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        image_of(&web),
        format!("cache.example:5000/m/docker.io/library/nginx:1.27@{digest}")
    );
    let secrets: Vec<String> = web
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(secrets, ["own", "cache-pull"]);
    assert_eq!(web.metadata.generation, Some(2), "one update");

    // Again: nothing changes, and the record still counts the Deployment.
    let p = ctx
        .store
        .get::<ImageCachePolicy>(Some("apps"), "p")
        .await
        .unwrap()
        .unwrap();
    reconcile(&p, &ctx).await.unwrap();
    let again = ctx
        .store
        .get::<Deployment>(Some("apps"), "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.metadata.resource_version, web.metadata.resource_version);
    let r = &ctx.store.list::<CachedImage>().await.unwrap()[0];
    assert_eq!(r.status.as_ref().unwrap().workload_count, 1);
    let p = ctx
        .store
        .get::<ImageCachePolicy>(Some("apps"), "p")
        .await
        .unwrap()
        .unwrap();
    let st = p.status.unwrap();
    assert_eq!((st.cached, st.pending), (1, 0));
    assert_eq!(st.conditions[0].reason, "Scanned");
}

/// `webhook` mode never edits workloads, and a bad spec is refused naming each field.
#[tokio::test]
async fn webhook_mode_leaves_workloads_and_bad_specs_name_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let p = ctx
        .store
        .create(&policy(json!({"target": {"registry": "cache.example"}})))
        .await
        .unwrap();
    let before = deployment(&ctx, "web", "nginx:1.27", 1).await;
    // The registry's own workload opts out through its pod template's label.
    let mut registry: Deployment = from(json!({
        "metadata": {"name": "registry", "namespace": "apps"},
        "spec": {"selector": {"matchLabels": {"app": "registry"}},
                 "template": {"metadata": {"labels": {"app": "registry", "ido.dev/image-cache": "skip"}},
                              "spec": {"containers": [{"name": "r", "image": "registry:2"}]}}}
    }));
    registry = ctx.store.create(&registry).await.unwrap();
    reconcile(&p, &ctx).await.unwrap();
    let mut records = ctx.store.list::<CachedImage>().await.unwrap();
    assert_eq!(records.len(), 1, "the skipped workload's image is not cached");
    let r = records.remove(0);
    ctx.store
        .update_status(&CachedImage {
            status: Some(CachedImageStatus {
                phase: CachePhase::Cached,
                ..r.status.clone().unwrap()
            }),
            ..r
        })
        .await
        .unwrap();
    let p = ctx
        .store
        .get::<ImageCachePolicy>(Some("apps"), "p")
        .await
        .unwrap()
        .unwrap();
    reconcile(&p, &ctx).await.unwrap();
    let after = ctx
        .store
        .get::<Deployment>(Some("apps"), "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version);
    let untouched = ctx
        .store
        .get::<Deployment>(Some("apps"), "registry")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        untouched.metadata.resource_version,
        registry.metadata.resource_version
    );

    let bad = ctx
        .store
        .create(&from::<ImageCachePolicy>(json!({
            "apiVersion": "ido.dev/v1alpha1", "kind": "ImageCachePolicy",
            "metadata": {"name": "bad", "namespace": "apps"},
            "spec": {"target": {"registry": "cache.example/x"}, "retention": "soon",
                     "images": {"include": ["Nginx:1"]}, "platforms": ["linux"]}
        })))
        .await
        .unwrap();
    assert_eq!(reconcile(&bad, &ctx).await.unwrap(), Action::AwaitChange);
    let bad = ctx
        .store
        .get::<ImageCachePolicy>(Some("apps"), "bad")
        .await
        .unwrap()
        .unwrap();
    let c = &bad.status.unwrap().conditions[0];
    assert_eq!(
        (c.reason.as_str(), c.status),
        ("InvalidSpec", ido_api::ConditionStatus::False)
    );
    for field in [
        "spec.target",
        "spec.images",
        "spec.platforms[0]",
        "spec.retention",
    ] {
        assert!(c.message.contains(field), "{field}: {}", c.message);
    }
}
