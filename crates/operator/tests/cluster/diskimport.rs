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

use crate::{env::Env, free_addr, store, wait_for};

fn disk_import(ns: &str) -> DiskImport {
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
            content_type: None,
        },
    );
    di.metadata.namespace = Some(ns.into());
    di
}

/// The operator imports a DiskImport end to end: the real job controller makes the
/// importer Pod and completes the Job, the test plays the kubelet (the Pod runs, then
/// succeeds); after success the Job goes and the garbage collector takes its Pod; the
/// provider's adapter deletes the DiskImport with its claim. The operator runs as the
/// chart's ServiceAccount with DiskImports enabled (cluster-wide grants).
#[tokio::test]
async fn operator_imports_disks_cluster_wide() {
    let env = Env::new("disk", json!({"diskImport": {"enabled": true}})).await;
    // Where the DiskImport lives: not the operator's NodeImage namespace.
    let vms = env.cluster().namespace("vms").await.unwrap();
    let vms = vms.as_str();
    let phase = async || {
        env.get::<DiskImport>(Some(vms), "fedora")
            .await
            .map(|d| d["status"]["phase"].clone())
            .unwrap_or_default()
    };
    let parts = ContextParts {
        providers: Providers::default(),
        source: None,
        settings: Settings {
            namespace: env.ns.clone(),
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
        health_probe_addr: Some(free_addr()),
        leader_election: false,
        identity: Some("ido-0".into()),
        ..OperatorOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = env.operator_client().await;
    let op = tokio::spawn(ido_operator::run_until(client.clone(), parts, opts, async {
        let _ = stopped.await;
    }));

    // Created as the kubevirt provider does, through the store adapter.
    let imports = StoreDiskImports(store(&env, client));
    imports.create(&disk_import(vms)).await.unwrap();
    wait_for("the importer Job", async || {
        env.get::<Job>(Some(vms), "importer-fedora").await.is_some() && phase().await == "ImportScheduled"
    })
    .await;
    let pvc = env
        .get::<PersistentVolumeClaim>(Some(vms), "fedora")
        .await
        .unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "4322Mi");
    let job = env.get::<Job>(Some(vms), "importer-fedora").await.unwrap();
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

    // The job controller made the importer Pod; the kubelet (this test) runs it.
    let pods = async || {
        env.list::<Pod>(Some(vms))
            .await
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["job-name"] == "importer-fedora")
            .collect::<Vec<_>>()
    };
    wait_for("the importer Pod", async || pods().await.len() == 1).await;
    let pod = pods().await[0]["metadata"]["name"].as_str().unwrap().to_string();
    let container = |state: Value| json!([{"name": "importer", "image": "ido:test", "imageID": "", "ready": false, "restartCount": 0, "state": state}]);
    env.set_status::<Pod>(
        Some(vms),
        &pod,
        json!({"phase": "Running", "containerStatuses": container(json!({"running": {}}))}),
    )
    .await;
    wait_for("ImportInProgress", async || phase().await == "ImportInProgress").await;
    env.set_status::<Pod>(
        Some(vms),
        &pod,
        json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))}),
    )
    .await;
    wait_for("Succeeded and the Job gone", async || {
        phase().await == "Succeeded" && env.get::<Job>(Some(vms), "importer-fedora").await.is_none()
    })
    .await;
    wait_for("the garbage collector to take the Pod", async || {
        pods().await.is_empty()
    })
    .await;
    let di = env.get::<DiskImport>(Some(vms), "fedora").await.unwrap();
    assert_eq!(di["status"]["progress"], "100.0%");
    assert_eq!(di["status"]["claimName"], "fedora");
    let reasons: Vec<String> = env
        .list::<K8sEvent>(Some(vms))
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(reasons.contains(&"ImportSucceeded".to_string()), "{reasons:?}");

    // The provider deletes it; the claim goes with it (owner reference, garbage collector).
    imports.delete(vms, "fedora").await.unwrap();
    wait_for("DiskImport and claim gone", async || {
        env.get::<DiskImport>(Some(vms), "fedora").await.is_none()
            && env
                .get::<PersistentVolumeClaim>(Some(vms), "fedora")
                .await
                .is_none()
    })
    .await;

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), op)
        .await
        .expect("clean shutdown")
        .unwrap()
        .unwrap();
}

/// The CRD's CEL rules for `contentType: archive`, as the API server applies them: not with
/// a blank or registry source, not onto a Block volume; an archive from HTTP onto a
/// Filesystem claim, and disk images from any source, are accepted.
#[tokio::test]
async fn the_api_server_refuses_archives_it_cannot_unpack() {
    let env = Env::new("cel", json!({"diskImport": {"enabled": true}})).await;
    let vms = env.cluster().namespace("vms").await.unwrap();
    let api: kube::Api<DiskImport> = kube::Api::namespaced(env.admin.clone(), &vms);
    let http = json!({"http": {"url": "https://mirror.example/rootfs.tar.xz"}});
    let registry = json!({"registry": {"url": "docker://quay.io/containerdisks/fedora:41"}});
    let blank = json!({"blank": {}});
    let size = json!({"size": "1Gi"});
    let block = json!({"size": "1Gi", "volumeMode": "Block"});
    let cases = [
        (
            "blank",
            &blank,
            &size,
            "archive",
            Some("not allowed with blank, registry, pvc, snapshot or diskSource sources"),
        ),
        (
            "registry",
            &registry,
            &size,
            "archive",
            Some("not allowed with blank, registry, pvc, snapshot or diskSource sources"),
        ),
        (
            "block",
            &http,
            &block,
            "archive",
            Some("storage.volumeMode Block is not allowed"),
        ),
        ("http", &http, &size, "archive", None),
        ("no-storage", &http, &json!(null), "archive", None),
        ("disk-registry", &registry, &block, "kubevirt", None),
        ("disk-blank", &blank, &size, "kubevirt", None),
    ];
    for (name, source, storage, content, refused) in cases {
        let mut spec = json!({"source": source, "contentType": content});
        if !storage.is_null() {
            spec["storage"] = storage.clone();
        }
        let di: DiskImport = serde_json::from_value(json!({
            "apiVersion": "ido.dev/v1alpha1", "kind": "DiskImport",
            "metadata": {"name": name, "namespace": vms},
            "spec": spec,
        }))
        .unwrap();
        let got = api.create(&kube::api::PostParams::default(), &di).await;
        match (refused, got) {
            (None, Ok(_)) => {}
            (Some(want), Err(e)) => {
                let m = e.to_string();
                assert!(m.contains(want) && m.contains("Invalid"), "{name}: {m}");
            }
            (None, Err(e)) => panic!("{name}: refused: {e}"),
            (Some(_), Ok(_)) => panic!("{name}: accepted"),
        }
    }
}

#[tokio::test]
async fn kube_store_lists_by_label_and_deletes_in_the_background() {
    let env = Env::new("labels", json!({"diskImport": {"enabled": true}})).await;
    let vms = env.cluster().namespace("vms").await.unwrap();
    let vms = vms.as_str();
    let s = store(&env, env.operator_client().await);
    use ido_controllers::store::Store;
    for (name, app) in [("a", "x"), ("b", "y")] {
        env.create(
            &serde_json::from_value::<Pod>(json!({
                "metadata": {"name": name, "namespace": vms, "labels": {"app": app, "tier": "t"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            }))
            .unwrap(),
        )
        .await;
    }
    let sel = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let pods: Vec<Pod> = s
        .list_labeled(vms, &sel(&[("app", "x"), ("tier", "t")]))
        .await
        .unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].metadata.name.as_deref(), Some("a"));
    let none: Vec<Pod> = s.list_labeled(&env.ns, &sel(&[("app", "x")])).await.unwrap();
    assert!(none.is_empty());
    // The chart grants no pod deletes: the operator deletes Jobs, whose Pods the garbage
    // collector removes. Deleting through the store as the admin shows the call's shape.
    let admin = store(&env, env.admin.clone());
    admin.delete(&pods[0]).await.unwrap();
    wait_for("the pod gone", async || {
        env.get::<Pod>(Some(vms), "a").await.is_none()
    })
    .await;
}

/// Golden images through the operator, as the chart's ServiceAccount: a DiskImportCron
/// polls a private registry (TLS, credentials from its template's Secret, CA from its
/// ConfigMap), makes a DiskImport pinned by digest; once that import succeeded (the test
/// plays its importer Pod) and its claim is bound, the DiskSource points at it and a
/// DiskImport cloning `diskSource: fedora` gets a clone Job reading that claim. The API
/// server's CEL rules refuse a template from S3 and two sources at once.
#[tokio::test]
async fn a_disk_import_cron_keeps_a_disk_source_at_the_newest_image() {
    use ido_testkit::{
        oci_image::{build_layout, push_layout},
        registry::{DockerRegistry, RegistryOptions},
    };
    let env = Env::new(
        "golden",
        json!({"diskImport": {"enabled": true, "cronCredentials": true}}),
    )
    .await;
    let vms = env.cluster().namespace("golden-vms").await.unwrap();
    let vms = vms.as_str();
    let reg = DockerRegistry::start(RegistryOptions {
        tls: true,
        auth: Some(("puller".into(), "golden-pw".into())),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), "41", &["linux/amd64"], 1, 4096, 7)
        .await
        .unwrap();
    push_layout(&layout, &reg, "disks/fedora:41").await.unwrap();
    let config = json!({"auths": {reg.host(): {"username": "puller", "password": "golden-pw"}}}).to_string();
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pull", "namespace": vms},
         "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": config}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "registry-ca", "namespace": vms},
         "data": {"ca.crt": reg.ca().unwrap().ca_pem()}},
    ]});
    env.cluster()
        .kubectl_stdin(&["apply", "-f", "-"], &objects.to_string())
        .await
        .unwrap();

    let parts = ContextParts {
        providers: Providers::default(),
        source: None,
        settings: Settings {
            namespace: env.ns.clone(),
            disk_import: ImporterSettings {
                enabled: true,
                image: "ido:test".into(),
                recheck: Duration::from_millis(300),
                ..ImporterSettings::default()
            },
            ..Settings::default()
        },
        metrics: Metrics::default(),
    };
    let opts = OperatorOptions {
        metrics_addr: free_addr(),
        health_probe_addr: None,
        leader_election: false,
        identity: Some("ido-0".into()),
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

    // The API server's rules: a template must come from a registry or HTTP; one source.
    let cluster = env.cluster();
    let refused = |y: String| async move {
        let out = cluster
            .kubectl_output(&["apply", "-f", "-"], Some(&y))
            .await
            .unwrap();
        assert!(!out.status.success(), "accepted:\n{y}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(format!(
        "apiVersion: ido.dev/v1alpha1\nkind: DiskImportCron\nmetadata: {{name: s3, namespace: {vms}}}\nspec:\n  schedule: '0 * * * *'\n  managedDiskSource: s3\n  template:\n    source: {{s3: {{url: 's3://b/k'}}}}\n    storage: {{size: 1Gi}}\n"
    ))
    .await;
    assert!(err.contains("registry") && err.contains("http"), "{err}");
    let err = refused(format!(
        "apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: two, namespace: {vms}}}\nspec:\n  source: {{pvc: {{name: a}}, diskSource: {{name: b}}}}\n  storage: {{size: 1Gi}}\n"
    ))
    .await;
    assert!(err.contains("exactly one of"), "{err}");

    let cron = format!(
        "apiVersion: ido.dev/v1alpha1\nkind: DiskImportCron\nmetadata: {{name: fedora, namespace: {vms}}}\nspec:\n  schedule: '0 0 1 1 *'\n  managedDiskSource: fedora\n  template:\n    source:\n      registry: {{url: 'docker://{}/disks/fedora:41', secretRef: pull, certConfigMap: registry-ca}}\n    storage: {{size: 64Mi, storageClassName: ''}}\n",
        reg.host()
    );
    env.cluster()
        .kubectl_stdin(&["apply", "-f", "-"], &cron)
        .await
        .unwrap();
    let imports = async || {
        env.list::<DiskImport>(Some(vms))
            .await
            .into_iter()
            .filter(|d| d["metadata"]["labels"]["ido.dev/disk-import-cron"] == "fedora")
            .collect::<Vec<_>>()
    };
    wait_for("the cron's DiskImport", async || imports().await.len() == 1).await;
    let di = imports().await.remove(0);
    let name = di["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(
        di["spec"]["source"]["registry"]["url"],
        format!("docker://{}/disks/fedora@{}", reg.host(), layout.digest)
    );

    // Its claim bound to a volume, its importer run (the test as the kubelet).
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("{vms}-golden")},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": dir.path().display().to_string()},
                 "claimRef": {"namespace": vms, "name": name}},
    });
    env.cluster()
        .kubectl_stdin(&["apply", "-f", "-"], &pv.to_string())
        .await
        .unwrap();
    let job = format!("importer-{name}");
    let pods = async || {
        env.list::<Pod>(Some(vms))
            .await
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["job-name"] == job.as_str())
            .collect::<Vec<_>>()
    };
    wait_for("the importer Pod", async || pods().await.len() == 1).await;
    let pod = pods().await[0]["metadata"]["name"].as_str().unwrap().to_string();
    let container = |state: Value| json!([{"name": "importer", "image": "ido:test", "imageID": "", "ready": false, "restartCount": 0, "state": state}]);
    env.set_status::<Pod>(
        Some(vms),
        &pod,
        json!({"phase": "Succeeded", "containerStatuses": container(json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))}),
    )
    .await;

    // The DiskSource follows, Ready; a clone of it reads the imported claim.
    wait_for("the DiskSource at the import", async || {
        env.get::<ido_api::DiskSource>(Some(vms), "fedora")
            .await
            .is_some_and(|ds| {
                ds["status"]["claim"] == name.as_str()
                    && ds["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    })
    .await;
    let clone = format!(
        "apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: vm-root, namespace: {vms}}}\nspec:\n  source: {{diskSource: {{name: fedora}}}}\n  storage: {{size: 64Mi}}\n"
    );
    env.cluster()
        .kubectl_stdin(&["apply", "-f", "-"], &clone)
        .await
        .unwrap();
    wait_for("the clone Job", async || {
        env.get::<Job>(Some(vms), "importer-vm-root")
            .await
            .is_some_and(|j| {
                j["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v["persistentVolumeClaim"]["claimName"] == name.as_str())
            })
    })
    .await;
    let cron = env
        .get::<ido_api::DiskImportCron>(Some(vms), "fedora")
        .await
        .unwrap();
    assert_eq!(cron["status"]["lastImportedClaim"], name.as_str(), "{cron}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), op)
        .await
        .expect("clean shutdown")
        .unwrap()
        .unwrap();
}
