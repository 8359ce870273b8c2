//! DiskImports through the operator: `run_until` with the DiskImport controller watching
//! DiskImports, Jobs and claims in every namespace; the kubevirt provider's store adapter
//! (`StoreDiskImports`) over `KubeStore` creates and deletes them.

use std::time::Duration;

use ido_api::{DiskImport, DiskImportSource, DiskImportSpec, HttpSource, StorageSpec};
use ido_controllers::{
    Settings,
    diskimport::{ImporterSettings, StoreDiskImports},
    metrics::Metrics,
};
use ido_operator::{ContextParts, OperatorOptions};
use ido_providers::{Providers, kubevirt::DiskImports};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolumeClaim, Pod},
    events::v1::Event as K8sEvent,
};
use serde_json::{Value, json};

use crate::{
    NS, OPERATOR_NS,
    fake_api::{Call, FakeApi},
    free_addr,
    rbac::{assert_granted_with, disk_import_values},
    store, wait_for,
};

/// Where the DiskImport lives: not the operator's NodeImage namespace.
const VMS: &str = "vms";

fn disk_import() -> DiskImport {
    let mut di = DiskImport::new(
        "fedora",
        DiskImportSpec {
            source: DiskImportSource {
                http: Some(HttpSource {
                    url: "https://mirror.example/fedora.qcow2".into(),
                    secret_ref: Some("mirror-auth".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            storage: StorageSpec {
                size: Some("4Gi".into()),
                ..Default::default()
            },
            preallocation: None,
        },
    );
    di.metadata.namespace = Some(VMS.into());
    di
}

fn phase(fake: &FakeApi) -> Value {
    fake.get::<DiskImport>(Some(VMS), "fedora")
        .map(|d| d["status"]["phase"].clone())
        .unwrap_or_default()
}

/// The operator imports a DiskImport end to end (with the fake playing the Job controller
/// and kubelet), then the provider's adapter deletes it. Returns the requests made.
pub(crate) async fn diskimport_scenario() -> Vec<Call> {
    let fake = FakeApi::new();
    let parts = ContextParts {
        providers: Providers::default(),
        source: None,
        settings: Settings {
            namespace: NS.into(),
            disk_import: ImporterSettings {
                enabled: true,
                image: "ido:test".into(),
                recheck: Duration::from_millis(200),
                ..ImporterSettings::default()
            },
            ..Settings::default()
        },
        metrics: Metrics::default(),
    };
    let opts = OperatorOptions {
        metrics_addr: free_addr(),
        leader_election: false,
        identity: Some("ido-0".into()),
        ..OperatorOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let op = tokio::spawn(ido_operator::run_until(
        fake.client(OPERATOR_NS),
        parts,
        opts,
        async {
            let _ = stopped.await;
        },
    ));

    // Created as the kubevirt provider does, through the store adapter.
    let imports = StoreDiskImports(store(&fake));
    imports.create(&disk_import()).await.unwrap();
    wait_for("the importer Job", || {
        fake.get::<Job>(Some(VMS), "importer-fedora").is_some() && phase(&fake) == "ImportScheduled"
    })
    .await;
    let pvc = fake.get::<PersistentVolumeClaim>(Some(VMS), "fedora").unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "4322Mi");
    let job = fake.get::<Job>(Some(VMS), "importer-fedora").unwrap();
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["args"].as_array().unwrap()[0..3],
        [
            json!("import"),
            json!("https://mirror.example/fedora.qcow2"),
            json!("/data/disk.img")
        ]
    );
    assert_eq!(
        c["volumeMounts"][0],
        json!({"name": "disk", "mountPath": "/data"})
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"],
        "mirror-auth"
    );
    let labels = job["spec"]["template"]["metadata"]["labels"].clone();

    // The Job controller starts a pod; the kubelet runs it.
    fake.create(
        &serde_json::from_value::<Pod>(json!({
            "metadata": {"name": "importer-fedora-x1", "namespace": VMS, "labels": labels},
        }))
        .unwrap(),
    );
    fake.set_status::<Pod>(Some(VMS), "importer-fedora-x1", json!({"phase": "Running"}));
    fake.set_status::<Job>(Some(VMS), "importer-fedora", json!({"active": 1}));
    wait_for("ImportInProgress", || phase(&fake) == "ImportInProgress").await;
    // The importer reports progress in its log; the operator reads the tail back.
    let progress = || {
        fake.get::<DiskImport>(Some(VMS), "fedora")
            .map(|d| d["status"]["progress"].clone())
            .unwrap_or_default()
    };
    fake.set_log(
        VMS,
        "importer-fedora-x1",
        "importer",
        "import: 12.0% 0.5 GiB of 4.0 GiB read, 90.0 MiB/s, ETA 40s\nimport: 41.5% 1.7 GiB of 4.0 GiB read, 95.0 MiB/s, ETA 25s\n",
    );
    wait_for("progress from the importer's log", || progress() == "41.5%").await;
    fake.set_status::<Job>(
        Some(VMS),
        "importer-fedora",
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    );
    wait_for("Succeeded and the Job gone", || {
        phase(&fake) == "Succeeded" && fake.get::<Job>(Some(VMS), "importer-fedora").is_none()
    })
    .await;
    let di = fake.get::<DiskImport>(Some(VMS), "fedora").unwrap();
    assert_eq!(di["status"]["progress"], "100.0%");
    assert_eq!(di["status"]["claimName"], "fedora");
    let reasons: Vec<String> = fake
        .list::<K8sEvent>()
        .iter()
        .filter(|e| e["metadata"]["namespace"] == VMS)
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(reasons.contains(&"ImportSucceeded".to_string()), "{reasons:?}");

    // The provider deletes it with its claim (no garbage collector in the fake).
    imports.delete(VMS, "fedora").await.unwrap();
    assert!(fake.get::<DiskImport>(Some(VMS), "fedora").is_none());
    assert!(fake.get::<PersistentVolumeClaim>(Some(VMS), "fedora").is_none());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), op)
        .await
        .expect("clean shutdown")
        .unwrap()
        .unwrap();
    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.verb == "list" && c.resource == "pods" && c.namespace.as_deref() == Some(VMS)),
        "importer pods are listed by label in their namespace"
    );
    assert!(
        !calls.iter().any(|c| c.resource == "secrets"),
        "Secrets are never read"
    );
    calls
}

#[tokio::test]
async fn operator_imports_disks_cluster_wide() {
    let calls = diskimport_scenario().await;
    assert_granted_with(&calls, &disk_import_values());
}

#[tokio::test]
async fn kube_store_lists_by_label_and_deletes_in_the_background() {
    let fake = FakeApi::new();
    let s = store(&fake);
    use ido_controllers::store::Store;
    for (name, app) in [("a", "x"), ("b", "y")] {
        fake.create(
            &serde_json::from_value::<Pod>(json!({
                "metadata": {"name": name, "namespace": VMS, "labels": {"app": app, "tier": "t"}},
            }))
            .unwrap(),
        );
    }
    let sel = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let pods: Vec<Pod> = s
        .list_labeled(VMS, &sel(&[("app", "x"), ("tier", "t")]))
        .await
        .unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].metadata.name.as_deref(), Some("a"));
    let none: Vec<Pod> = s.list_labeled("other", &sel(&[("app", "x")])).await.unwrap();
    assert!(none.is_empty());
    s.delete(&pods[0]).await.unwrap();
    assert!(fake.get::<Pod>(Some(VMS), "a").is_none());
}
