use super::*;
use serde_json::json;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn spec() -> serde_json::Value {
    json!({
        "initContainers": [{"name": "migrate", "image": "ghcr.io/o/migrate:1"}, {"name": "wait", "image": "busybox"}],
        "containers": [{"name": "app", "image": " nginx:1.27 "}, {"name": "side", "image": ""}],
        "ephemeralContainers": [{"name": "debug", "image": "quay.io/o/debug@sha256:".to_string() + &"b".repeat(64)}],
        "imagePullSecrets": [{"name": "own"}, {"name": "shared"}],
        "serviceAccountName": "app"
    })
}

fn images(w: &Workload) -> Vec<(ContainerKind, usize, String, String)> {
    w.images()
        .into_iter()
        .map(|u| (u.kind, u.index, u.container, u.image))
        .collect()
}

#[test]
fn every_container_of_every_workload_kind_counts() {
    let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": spec()});
    let selector = json!({"matchLabels": {"app": "x"}});
    let workloads = [
        Workload::Pod(Box::new(from(json!({"metadata": {"name": "p"}, "spec": spec()})))),
        Workload::Deployment(Box::new(from(
            json!({"metadata": {"name": "d"}, "spec": {"selector": selector, "template": template}}),
        ))),
        Workload::StatefulSet(Box::new(from(
            json!({"metadata": {"name": "s"}, "spec": {"selector": selector, "template": template}}),
        ))),
        Workload::DaemonSet(Box::new(from(
            json!({"metadata": {"name": "ds"}, "spec": {"selector": selector, "template": template}}),
        ))),
        Workload::ReplicaSet(Box::new(from(
            json!({"metadata": {"name": "rs"}, "spec": {"selector": selector, "template": template}}),
        ))),
        Workload::Job(Box::new(from(
            json!({"metadata": {"name": "j"}, "spec": {"template": template}}),
        ))),
        Workload::CronJob(Box::new(from(
            json!({"metadata": {"name": "c"}, "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}}),
        ))),
    ];
    let digest = "quay.io/o/debug@sha256:".to_string() + &"b".repeat(64);
    for w in &workloads {
        assert_eq!(
            images(w),
            [
                (
                    ContainerKind::Init,
                    0,
                    "migrate".into(),
                    "ghcr.io/o/migrate:1".into()
                ),
                (ContainerKind::Init, 1, "wait".into(), "busybox".into()),
                (ContainerKind::Main, 0, "app".into(), "nginx:1.27".into()),
                (ContainerKind::Ephemeral, 0, "debug".into(), digest.clone()),
            ],
            "{}",
            w.kind()
        );
        assert!(!w.is_owned());
    }
}

#[test]
fn owned_workloads_and_ones_without_a_template_are_told_apart() {
    let owned: Pod = from(json!({"metadata": {"name": "p", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]}, "spec": spec()}));
    assert!(Workload::Pod(Box::new(owned)).is_owned());
    let referenced: Pod = from(json!({"metadata": {"name": "p", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u"}]}, "spec": spec()}));
    assert!(!Workload::Pod(Box::new(referenced)).is_owned());
    let empty: ReplicaSet = from(json!({"metadata": {"name": "rs"}, "spec": {"selector": {}}}));
    assert!(Workload::ReplicaSet(Box::new(empty)).images().is_empty());
}

#[test]
fn pull_secrets_are_the_pods_then_its_service_accounts_each_once() {
    let spec: PodSpec = from(spec());
    let account: ServiceAccount = from(json!({"metadata": {"name": "app"},
        "imagePullSecrets": [{"name": "shared"}, {"name": "from-account"}, {"name": ""}]}));
    assert_eq!(
        pull_secret_names(&spec, Some(&account)),
        ["own", "shared", "from-account"]
    );
    assert_eq!(pull_secret_names(&spec, None), ["own", "shared"]);
    assert!(pull_secret_names(&PodSpec::default(), None).is_empty());
}
