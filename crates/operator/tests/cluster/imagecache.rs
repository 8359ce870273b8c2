//! The workload image cache's scan on a real control plane: workloads applied through the
//! API, their ReplicaSets, Jobs and Pods made by the real controller-manager, and each image
//! counted once, at the workload that owns it, with its pull secrets.

use ido_controllers::imagecache::{CacheTarget, ImageFilter, Scope, scan};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    batch::v1::CronJob,
    core::v1::{Pod, ServiceAccount},
};
use serde_json::json;

use crate::{env::Env, store, wait_for};

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
