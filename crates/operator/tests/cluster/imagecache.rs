//! The workload image cache's scan on a real control plane: workloads applied through the
//! API, their ReplicaSets, Jobs and Pods made by the real controller-manager, and each image
//! counted once, at the workload that owns it, with its pull secrets.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use ido_api::{CachedImage, ClusterImageCachePolicy};
use ido_controllers::{
    Settings,
    imagecache::{CacheTarget, ImageFilter, Scope, scan},
    metrics::Metrics,
};
use ido_operator::{ContextParts, OperatorOptions};
use ido_providers::Providers;
use ido_testkit::{
    TestCa,
    oci_image::{build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions},
};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::{Deployment, ReplicaSet},
    batch::v1::CronJob,
    core::v1::{Pod, ServiceAccount},
};
use serde_json::json;

use crate::{env::Env, free_addr, imagesync::docker_secret, store, wait_for};

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn the_scan_counts_images_at_their_workloads_as_the_controllers_made_them() {
    let env = Env::new("imagecache", json!({})).await;
    let ns = env.ns.as_str();
    let sel = json!({"matchLabels": {"app": "web"}});
    env.create::<Deployment>(&from(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 2, "selector": sel, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"imagePullSecrets": [{"name": "hub"}],
                     "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                     "containers": [{"name": "web", "image": "nginx:1.27"}]}}}
    })))
    .await;
    env.create::<ServiceAccount>(&from(json!({
        "metadata": {"name": "batch", "namespace": ns},
        "imagePullSecrets": [{"name": "from-account"}]
    })))
    .await;
    env.create::<CronJob>(&from(json!({
        "metadata": {"name": "nightly", "namespace": ns},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "serviceAccountName": "batch", "restartPolicy": "Never",
            "containers": [{"name": "job", "image": "ghcr.io/o/job:2"}]}}}}}
    })))
    .await;
    env.create::<Pod>(&from(json!({
        "metadata": {"name": "debug", "namespace": ns},
        "spec": {"containers": [{"name": "sh", "image": "docker.io/library/busybox:1.36"}]}
    })))
    .await;
    // The real deployment and replicaset controllers make the ReplicaSet and its Pods.
    wait_for("the Deployment's ReplicaSet and two Pods", async || {
        env.list::<ReplicaSet>(Some(ns)).await.len() == 1 && env.list::<Pod>(Some(ns)).await.len() == 3
    })
    .await;

    let store = store(&env, env.admin.clone());
    let target = CacheTarget::new("cache.example:5000", "mirror").unwrap();
    let found = scan(
        &store,
        &Scope::namespace(ns, None).unwrap(),
        &ImageFilter::default(),
        &target,
    )
    .await
    .unwrap();
    let by_image: Vec<(String, Vec<String>)> = found
        .images
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.workloads
                    .iter()
                    .map(|w| format!("{}/{}", w.kind, w.name))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        by_image,
        [
            (
                "docker.io/library/busybox:1.36".to_string(),
                vec!["Deployment/web".to_string(), "Pod/debug".to_string()]
            ),
            (
                "docker.io/library/nginx:1.27".to_string(),
                vec!["Deployment/web".to_string()]
            ),
            ("ghcr.io/o/job:2".to_string(), vec!["CronJob/nightly".to_string()]),
        ],
        "the ReplicaSet and its Pods count at the Deployment"
    );
    assert_eq!(
        found.images["docker.io/library/nginx:1.27"].pull_secrets[ns],
        ["hub"]
    );
    assert_eq!(found.images["ghcr.io/o/job:2"].pull_secrets[ns], ["from-account"]);

    // Another namespace's policy sees none of it.
    let other = scan(
        &store,
        &Scope::namespace("default", None).unwrap(),
        &ImageFilter::default(),
        &target,
    )
    .await
    .unwrap();
    assert!(
        other.images.keys().all(|k| !k.contains("ghcr.io/o/job")),
        "{other:?}"
    );
}

// === the whole cache: operator, webhook, real controllers, real registries ===

/// The test image of `tag` in the source registry `src`.
fn image_of(src: &str, tag: &str) -> String {
    format!("{src}/team/app:{tag}")
}

/// The copy's name for `repo:tag` of the source registry `src` in the cache `cache`.
fn copy_of(cache: &str, src: &str, repo_tag: &str) -> String {
    format!("{cache}/mirror/{}/{repo_tag}", src.replace(':', "_"))
}

/// The images of the Pods of `ns` whose name starts with `prefix`.
async fn pod_images(env: &Env, ns: &str, prefix: &str) -> Vec<String> {
    env.list::<Pod>(Some(ns))
        .await
        .iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with(prefix)
        })
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The digest of `repo:tag` in `reg` (`None`: absent), and its media type.
async fn manifest(reg: &DockerRegistry, repo_tag: &str) -> Option<(String, String)> {
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    let r = reqwest::Client::new()
        .get(format!("{}/v2/{repo}/manifests/{tag}", reg.base_url()))
        .header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    let digest = r.headers()["Docker-Content-Digest"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    Some((digest, body["mediaType"].as_str().unwrap_or_default().to_string()))
}

/// A Deployment of `image` in `ns`, as `kubectl apply` takes it.
fn deployment_yaml(ns: &str, name: &str, image: &str, replicas: u32) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"imagePullSecrets": [{"name": "src-pull"}],
                                       "containers": [{"name": "app", "image": image}]}}}
    })
    .to_string()
}

/// The operator with the cache on: the API server calls its webhook over TLS through a
/// real MutatingWebhookConfiguration; the real deployment and replicaset controllers make
/// the Pods; copies go from a private multi-arch source to a docker-registry cache.
#[tokio::test]
async fn the_webhook_points_deployments_pods_at_copies_and_the_cache_expires_what_no_workload_uses() {
    let env = Env::new("cachewh", json!({"imageCache": {"enabled": true}})).await;
    let apps = env.cluster().namespace("cacheapps").await.unwrap();
    let (user, password) = ("puller".to_string(), "s3cret-pull".to_string());
    let src = DockerRegistry::start(RegistryOptions {
        auth: Some((user.clone(), password.clone())),
        ..Default::default()
    })
    .await
    .unwrap();
    let cache = DockerRegistry::start(RegistryOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut digests = BTreeMap::new();
    for (i, tag) in ["1.0", "1.1", "1.2"].into_iter().enumerate() {
        let layout = build_layout(
            &dir.path().join(tag),
            tag,
            &["linux/amd64", "linux/arm64"],
            2,
            64 << 10,
            i as u64,
        )
        .await
        .unwrap();
        push_layout(&layout, &src, &format!("team/app:{tag}"))
            .await
            .unwrap();
        digests.insert(tag, layout.digest.clone());
    }
    env.create(&docker_secret(&apps, "src-pull", src.host(), &user, &password))
        .await;

    // The policy: the test's namespace of apps, copies by plain HTTP, unused ones kept 3 s.
    let policy_name = format!("cache-{apps}");
    let policy: ClusterImageCachePolicy = from(json!({
        "apiVersion": "ido.dev/v1alpha1", "kind": "ClusterImageCachePolicy",
        "metadata": {"name": policy_name},
        "spec": {"target": {"registry": cache.host(), "pathPrefix": "mirror", "tlsVerify": false,
                            "pullSecretName": "cache-pull"},
                 "sources": [{"registry": src.host(), "tlsVerify": false}],
                 "namespaces": {"include": [apps]},
                 "retention": "3s"}
    }));
    env.create(&policy).await;

    // The operator as the chart's ServiceAccount, its webhook on loopback with a test CA.
    let ca = TestCa::new().unwrap();
    let certs = tempfile::tempdir().unwrap();
    std::fs::copy(&ca.server_cert, certs.path().join("tls.crt")).unwrap();
    std::fs::copy(&ca.server_key, certs.path().join("tls.key")).unwrap();
    let webhook = free_addr();
    let metrics = Metrics::default();
    let parts = ContextParts {
        providers: Providers::default(),
        source: None,
        settings: Settings {
            namespace: env.ns.clone(),
            image_cache: true,
            recheck: Duration::from_secs(1),
            ..Settings::default()
        },
        metrics: metrics.clone(),
    };
    let opts = OperatorOptions {
        metrics_addr: free_addr(),
        health_probe_addr: None,
        leader_election: false,
        identity: Some("ido-0".into()),
        webhook_addr: Some(webhook),
        webhook_cert_dir: Some(certs.path().to_path_buf()),
        ..OperatorOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let op = tokio::spawn(ido_operator::run_until(
        env.operator_client().await,
        parts,
        opts,
        async {
            let _ = stopped.await;
        },
    ));
    use base64::Engine as _;
    let config: MutatingWebhookConfiguration = from(json!({
        "metadata": {"name": policy_name},
        "webhooks": [{
            "name": "pods.image-cache.ido.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{}/mutate-v1-pod", webhook.port()),
                             "caBundle": base64::engine::general_purpose::STANDARD.encode(ca.ca_pem())},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "*"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": apps}},
            "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Ignore", "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 5
        }]
    }));
    env.create(&config).await;

    // The webhook has read the policy once a server-side dry run of a Pod is looked up.
    let probe = json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "probe", "namespace": apps},
                       "spec": {"containers": [{"name": "c", "image": image_of(src.host(), "1.0")}]}})
    .to_string();
    wait_for("the webhook to read the policy", async || {
        let _ = env
            .cluster()
            .kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &probe)
            .await;
        metrics
            .encode()
            .contains("ido_cache_lookups_total{result=\"miss\"}")
    })
    .await;

    // Three Deployments applied with kubectl: `web` runs, `idle` is scaled to zero, `gone`
    // will be deleted. The first Pods find no copy: they start from the source, and the
    // copies are made (the webhook queues web's and gone's, the scan finds idle's).
    let image = |tag: &str| image_of(src.host(), tag);
    for (name, tag, replicas) in [("web", "1.0", 2), ("idle", "1.1", 0), ("gone", "1.2", 1)] {
        env.cluster()
            .kubectl_stdin(
                &["apply", "-f", "-"],
                &deployment_yaml(&apps, name, &image(tag), replicas),
            )
            .await
            .unwrap();
    }
    let records = async || {
        env.list::<CachedImage>(None)
            .await
            .into_iter()
            .filter(|c| c["spec"]["policy"] == format!("ClusterImageCachePolicy/{policy_name}"))
            .collect::<Vec<_>>()
    };
    wait_for("three copies made", async || {
        let r = records().await;
        r.len() == 3 && r.iter().all(|c| c["status"]["phase"] == "Cached")
    })
    .await;
    for (tag, digest) in &digests {
        let (copied, media_type) = manifest(
            &cache,
            &format!("mirror/{}/team/app:{tag}", src.host().replace(':', "_")),
        )
        .await
        .expect("the copy");
        assert_eq!(&copied, digest, "the copy keeps the source's digest");
        assert_eq!(
            media_type, "application/vnd.oci.image.index.v1+json",
            "and its index"
        );
    }
    let web = records()
        .await
        .into_iter()
        .find(|c| c["spec"]["source"] == image("1.0"))
        .unwrap();
    assert_eq!(
        web["status"]["pullSecrets"],
        json!([{"namespace": apps, "name": "src-pull"}])
    );
    assert_eq!(
        web["status"]["workloads"],
        json!([{"kind": "Deployment", "namespace": apps, "name": "web"}])
    );
    assert_eq!(web["status"]["pushed"], true);

    // Pods made now point at the copy (once the webhook's "absent" answer has aged), with
    // the cache's pull secret added and their own kept: a second Deployment of the image.
    let web_copy = copy_of(cache.host(), src.host(), "team/app:1.0");
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.cluster()
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &deployment_yaml(&apps, "more", &image("1.0"), 2),
        )
        .await
        .unwrap();
    wait_for("more's Pods on the copy", async || {
        pod_images(&env, &apps, "more-")
            .await
            .iter()
            .filter(|i| **i == web_copy)
            .count()
            == 2
    })
    .await;
    let pod = env
        .list::<Pod>(Some(&apps))
        .await
        .into_iter()
        .find(|p| p["spec"]["containers"][0]["image"] == web_copy.as_str())
        .unwrap();
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "src-pull"}, {"name": "cache-pull"}])
    );
    // The Deployment itself is not edited (webhook mode).
    let d = env.get::<Deployment>(Some(&apps), "more").await.unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        image("1.0")
    );

    // GC: gone's Deployment deleted, its copy expires (3 s) and is deleted from the cache;
    // web's (running) and idle's (scaled to zero) are kept.
    env.delete::<Deployment>(Some(&apps), "gone").await;
    wait_for("gone's record and copy deleted", async || {
        records().await.len() == 2
    })
    .await;
    let gone = format!("mirror/{}/team/app:1.2", src.host().replace(':', "_"));
    assert_eq!(manifest(&cache, &gone).await, None, "the expired copy is deleted");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let kept: BTreeSet<String> = records()
        .await
        .iter()
        .map(|c| c["spec"]["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kept,
        BTreeSet::from([image("1.0"), image("1.1")]),
        "referenced copies are kept"
    );

    // Metrics: copies, bytes, hits and misses, admission latency.
    let text = metrics.encode();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value(&format!(
            "ido_cache_copies_total{{policy=\"ClusterImageCachePolicy/{policy_name}\",result=\"copied\"}}"
        )),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(&format!(
            "ido_cache_copies_total{{policy=\"ClusterImageCachePolicy/{policy_name}\",result=\"expired\"}}"
        )),
        1.0,
        "{text}"
    );
    assert!(
        value(&format!(
            "ido_cache_copy_bytes_total{{policy=\"ClusterImageCachePolicy/{policy_name}\"}}"
        )) > 0.0,
        "{text}"
    );
    assert!(value("ido_cache_lookups_total{result=\"hit\"}") >= 2.0, "{text}");
    assert!(value("ido_cache_lookups_total{result=\"miss\"}") >= 1.0, "{text}");
    assert!(
        value("ido_cache_admission_duration_seconds_count") >= 3.0,
        "{text}"
    );

    // The cache registry stopped: within a refresh, Pods are admitted unchanged.
    drop(cache);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let started = std::time::Instant::now();
    env.cluster()
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &deployment_yaml(&apps, "later", &image("1.0"), 1),
        )
        .await
        .unwrap();
    wait_for("later's Pod from the source", async || {
        pod_images(&env, &apps, "later-").await == [image("1.0")]
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "admitted within the timeout"
    );

    env.delete::<MutatingWebhookConfiguration>(None, &policy_name)
        .await;
    env.delete::<ClusterImageCachePolicy>(None, &policy_name).await;
    let _ = stop.send(());
    op.await.unwrap().unwrap();
}
