use super::*;
use crate::file_store::FileStore;
use serde_json::json;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn pod_spec(image: &str, secret: Option<&str>) -> serde_json::Value {
    let mut s = json!({"containers": [{"name": "c", "image": image}]});
    if let Some(n) = secret {
        s["imagePullSecrets"] = json!([{"name": n}]);
    }
    s
}

fn meta(ns: &str, name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "namespace": ns, "labels": labels})
}

async fn store_with_workloads(dir: &std::path::Path) -> FileStore {
    let store = FileStore::open(dir).unwrap();
    let tpl = |image: &str, secret: Option<&str>| json!({"metadata": {"labels": {"app": "x"}}, "spec": pod_spec(image, secret)});
    let sel = json!({"matchLabels": {"app": "x"}});
    store
        .create::<Deployment>(&from(
            json!({"metadata": meta("apps", "web", json!({"tier": "front"})),
            "spec": {"selector": sel, "template": tpl("nginx:1.27", Some("hub"))}}),
        ))
        .await
        .unwrap();
    // The Deployment's ReplicaSet and Pod: owned, counted at the Deployment.
    let owner = |kind: &str, name: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]);
    let mut rs = meta("apps", "web-1", json!({}));
    rs["ownerReferences"] = owner("Deployment", "web");
    store
        .create::<ReplicaSet>(&from(
            json!({"metadata": rs, "spec": {"selector": sel, "template": tpl("nginx:1.27", None)}}),
        ))
        .await
        .unwrap();
    let mut pod = meta("apps", "web-1-abc", json!({}));
    pod["ownerReferences"] = owner("ReplicaSet", "web-1");
    store
        .create::<Pod>(&from(
            json!({"metadata": pod, "spec": pod_spec("nginx:1.27", None)}),
        ))
        .await
        .unwrap();
    // A CronJob running the same image with another secret, through its ServiceAccount.
    store
        .create::<ServiceAccount>(&from(json!({"metadata": meta("apps", "batch", json!({})),
            "imagePullSecrets": [{"name": "from-account"}]})))
        .await
        .unwrap();
    let mut job_spec = pod_spec("docker.io/library/nginx:1.27", None);
    job_spec["serviceAccountName"] = json!("batch");
    job_spec["restartPolicy"] = json!("Never");
    store
        .create::<CronJob>(&from(
            json!({"metadata": meta("apps", "nightly", json!({"tier": "batch"})),
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": job_spec}}}}}),
        ))
        .await
        .unwrap();
    // A bare Pod with an image already in the cache, one with an unreadable image, and
    // workloads in kube-system and ido's namespace.
    store
        .create::<Pod>(&from(json!({"metadata": meta("apps", "cached", json!({})),
            "spec": pod_spec("cache.example:5000/mirror/docker.io/library/redis:7", None)})))
        .await
        .unwrap();
    store
        .create::<Pod>(&from(
            json!({"metadata": meta("apps", "odd", json!({})), "spec": pod_spec("Not An Image", None)}),
        ))
        .await
        .unwrap();
    for ns in ["kube-system", "ido"] {
        store
            .create::<DaemonSet>(&from(json!({"metadata": meta(ns, "agent", json!({})),
                "spec": {"selector": sel, "template": tpl("quay.io/o/agent:1", None)}})))
            .await
            .unwrap();
    }
    store
        .create::<StatefulSet>(&from(
            json!({"metadata": meta("data", "db", json!({"tier": "back"})),
            "spec": {"selector": sel, "serviceName": "db", "template": tpl("quay.io/o/db:2", None)}}),
        ))
        .await
        .unwrap();
    store
}

fn names(scan: &Scan) -> Vec<(String, Vec<String>)> {
    scan.images
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.workloads
                    .iter()
                    .map(|w| format!("{}/{}/{}", w.kind, w.namespace, w.name))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_cluster_policy_counts_each_workload_once_with_its_pull_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_workloads(dir.path()).await;
    let target = CacheTarget::new("cache.example:5000", "mirror").unwrap();
    let spec: ClusterImageCachePolicySpec = from(json!({"target": {"registry": "cache.example:5000"}}));
    let scope = Scope::cluster(&spec, "ido").unwrap();
    let scan = scan(&store, &scope, &ImageFilter::default(), &target)
        .await
        .unwrap();
    assert_eq!(
        names(&scan),
        [
            (
                "docker.io/library/nginx:1.27".to_string(),
                vec![
                    "CronJob/apps/nightly".to_string(),
                    "Deployment/apps/web".to_string()
                ]
            ),
            (
                "quay.io/o/db:2".to_string(),
                vec!["StatefulSet/data/db".to_string()]
            ),
        ]
    );
    let nginx = &scan.images["docker.io/library/nginx:1.27"];
    assert_eq!(nginx.pull_secrets["apps"], ["hub", "from-account"]);
    assert_eq!(scan.unreadable.len(), 1);
    assert_eq!(scan.unreadable[0].0.name, "odd");
}

#[tokio::test]
async fn namespaces_selectors_and_filters_narrow_the_scope() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_workloads(dir.path()).await;
    let target = CacheTarget::new("cache.example:5000", "mirror").unwrap();
    let only_data: ClusterImageCachePolicySpec =
        from(json!({"target": {"registry": "r"}, "namespaces": {"include": ["data", "kube-system"]}}));
    let s = scan(
        &store,
        &Scope::cluster(&only_data, "ido").unwrap(),
        &ImageFilter::default(),
        &target,
    )
    .await
    .unwrap();
    assert_eq!(
        s.images.keys().collect::<Vec<_>>(),
        ["quay.io/o/db:2"],
        "kube-system never counts"
    );

    let selector: LabelSelector =
        from(json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}));
    let s = scan(
        &store,
        &Scope::namespace("apps", Some(&selector)).unwrap(),
        &ImageFilter::default(),
        &target,
    )
    .await
    .unwrap();
    assert_eq!(
        names(&s),
        [(
            "docker.io/library/nginx:1.27".to_string(),
            vec!["Deployment/apps/web".to_string()]
        )]
    );

    let no_hub = ImageFilter::new(&[], &["docker.io/**".to_string()]).unwrap();
    let everything: ClusterImageCachePolicySpec = from(json!({"target": {"registry": "r"}}));
    let s = scan(
        &store,
        &Scope::cluster(&everything, "ido").unwrap(),
        &no_hub,
        &target,
    )
    .await
    .unwrap();
    assert_eq!(s.images.keys().collect::<Vec<_>>(), ["quay.io/o/db:2"]);

    let bad: LabelSelector = from(json!({"matchExpressions": [{"key": "tier", "operator": "Near"}]}));
    let e = Scope::namespace("apps", Some(&bad)).unwrap_err();
    assert!(e.to_string().contains("workloadSelector"), "{e}");
}
