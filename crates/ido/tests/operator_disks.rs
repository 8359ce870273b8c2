//! The operator's disk features on a real control plane, with the `ido` binary as the
//! workload the test plays the kubelet for.
//!
//! `ido upload`: the operator (in this process, as the chart's
//! ServiceAccount, the chart's RBAC enforced) serves the upload endpoint and the token
//! webhook, which the API server calls over TLS for a dry-run UploadTokenRequest; the
//! DiskImport `ido upload --size` creates gets a claim bound to a hostPath PersistentVolume
//! and an upload Job whose Pod the real job controller makes and this test plays (the Pod's
//! own `ido upload-server` runs against the volume's directory, on a loopback pod IP). The
//! disk equals qemu-img's conversion; a user without `create diskimports/upload` gets no
//! token, a stored UploadTokenRequest is refused, and an upload after the disk is in gets
//! 409.
//!
//! CDI compatibility: CDI's example DataVolume applied with kubectl becomes a DiskImport,
//! its importer Pod (played) imports a qcow2 over HTTP into a hostPath volume, and the
//! DataVolume reads Succeeded, 100.0%, with the claim; CDI's blank example makes a sparse
//! disk of zeros; a DataVolume asking for what ido cannot do is refused by field.

#[path = "../../disk/tests/common/mod.rs"]
mod common;

use common::http_server::{Behaviour, FileServer};

use std::{path::Path, time::Duration};

use base64::Engine as _;
use common::*;
use ido_controllers::{
    Settings,
    diskimport::{ImporterSettings, upload::UploadKey},
    metrics::Metrics,
};
use ido_operator::{ContextParts, OperatorOptions};
use ido_providers::Providers;
use ido_testkit::{Cluster, TestCa, kubelet::run_pod_at};
use serde_json::{Value, json};

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn chart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/image-distribution-operator")
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A namespace `prefix-…` for the operator, the chart's ServiceAccount and RBAC for
/// `values` applied, and a client as that ServiceAccount.
async fn chart_operator_client(
    c: &Cluster,
    prefix: &str,
    mut values: Value,
    dir: &Path,
) -> (String, kube::Client) {
    let op_ns = c.namespace(prefix).await.unwrap();
    values["namespace"] = json!(op_ns);
    let file = dir.join(format!("{prefix}-values.json"));
    std::fs::write(&file, values.to_string()).unwrap();
    let release = format!("ido-{}", op_ns.rsplit('-').next().unwrap());
    let rendered = c
        .helm(&[
            "template",
            &release,
            &chart().display().to_string(),
            "--namespace",
            &op_ns,
            "--values",
            &file.display().to_string(),
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ])
        .await
        .unwrap();
    c.kubectl_stdin(&["apply", "-f", "-"], &rendered).await.unwrap();
    let sa = rendered
        .split("\n---")
        .filter_map(|d| yaml::from_str::<Value>(d).ok())
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str().map(String::from))
        .unwrap();
    let token = c.token(&op_ns, &sa).await.unwrap();
    let client = c.client_with_token(&token, &op_ns).await.unwrap();
    (op_ns, client)
}

/// CDI's and ido's CRDs (`ido crds --compat`), applied.
async fn install_crds(c: &Cluster) {
    let crds = std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(["crds", "--compat"])
        .output()
        .unwrap();
    c.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &String::from_utf8(crds.stdout).unwrap(),
    )
    .await
    .unwrap();
}

/// A qcow2 of the common raw image in `d`, and qemu-img's raw conversion of it.
fn qcow2(d: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let raw = write_raw(d);
    let q = d.join("image.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    let oracle = qemu_raw(&q, d);
    (q, oracle)
}

/// A hostPath PersistentVolume `name` at `dir` (made), reserved for the claim `ns/claim`.
async fn volume(c: &Cluster, name: &str, ns: &str, claim: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
            "hostPath": {"path": dir.display().to_string(), "type": "Directory"},
            "claimRef": {"namespace": ns, "name": claim},
        },
    });
    c.kubectl_stdin(&["apply", "-f", "-"], &pv.to_string())
        .await
        .unwrap();
}

/// The operator in this process (DiskImports on, in `op_ns`; `tune` sets the rest), until
/// [`Operator::stop`].
struct Operator {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Operator {
    fn start(
        client: kube::Client,
        op_ns: &str,
        tune: impl FnOnce(&mut Settings, &mut OperatorOptions),
    ) -> Self {
        let mut settings = Settings {
            namespace: op_ns.to_string(),
            disk_import: ImporterSettings {
                enabled: true,
                image: "ido:test".into(),
                recheck: Duration::from_millis(500),
                ..ImporterSettings::default()
            },
            ..Settings::default()
        };
        let mut opts = OperatorOptions {
            metrics_addr: free_addr(),
            health_probe_addr: None,
            leader_election: false,
            identity: Some("ido-0".into()),
            ..OperatorOptions::default()
        };
        tune(&mut settings, &mut opts);
        let parts = ContextParts {
            providers: Providers::default(),
            source: None,
            settings,
            metrics: Metrics::default(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ido_operator::run_until(client, parts, opts, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("clean shutdown")
            .unwrap()
            .unwrap();
    }
}

/// The kubelet's part for the Pod of Job `job` in `ns`, once the job controller made it and
/// `claim` is bound: its command run to its end (on the loopback pod IP `ip`, if given).
/// The exit code and the container's log.
async fn play(
    c: &'static Cluster,
    ns: String,
    job: String,
    claim: String,
    root: std::path::PathBuf,
    ip: Option<String>,
) -> (i32, String) {
    let selector = format!("job-name={job}");
    // A plain loop: this future is spawned (Send), which `wait_for`'s closure is not.
    let mut pod = String::new();
    for _ in 0..600 {
        pod = c
            .kubectl(&[
                "get",
                "pods",
                "-n",
                &ns,
                "-l",
                &selector,
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .await
            .unwrap_or_default();
        let bound = c
            .kubectl(&["get", "pvc", &claim, "-n", &ns, "-o", "jsonpath={.status.phase}"])
            .await
            .unwrap_or_default()
            == "Bound";
        if !pod.trim().is_empty() && bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pod.trim().is_empty(), "no Pod of {job}");
    let exit = run_pod_at(
        c,
        &ns,
        pod.trim(),
        Path::new(env!("CARGO_BIN_EXE_ido")),
        &root,
        ip.as_deref(),
    )
    .await
    .unwrap();
    let log = std::fs::read_to_string(root.join("container.err")).unwrap_or_default();
    (exit, log)
}

#[tokio::test]
async fn ido_upload_fills_a_disk_import_through_the_operator() {
    ido_testkit::install_crypto_provider();
    let c = Cluster::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (image, oracle) = qcow2(d);

    // The CRDs, and the chart's RBAC for uploads (the operator's and the users' roles).
    install_crds(c).await;
    let vms = c.namespace("upload-vms").await.unwrap();
    let (op_ns, client) = chart_operator_client(
        c,
        "upload-op",
        json!({"diskImport": {"enabled": true, "upload": {"enabled": true}}}),
        d,
    )
    .await;

    // The operator: the webhook and the upload endpoint on loopback, with a test CA.
    let ca = TestCa::new().unwrap();
    let certs = d.join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&ca.server_cert, certs.join("tls.crt")).unwrap();
    std::fs::copy(&ca.server_key, certs.join("tls.key")).unwrap();
    let (webhook, endpoint) = (free_addr(), free_addr());
    let op = Operator::start(client, &op_ns, |s, o| {
        s.disk_import.upload_key = Some(UploadKey::generate());
        o.webhook_addr = Some(webhook);
        o.webhook_cert_dir = Some(certs.clone());
        o.upload_addr = Some(endpoint);
        o.upload_cert_dir = Some(certs.clone());
    });
    // The chart's webhook for UploadTokenRequests, pointed at this operator.
    let config_name = format!("upload-{vms}");
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "uploadtokenrequests.disk-import.ido.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{}/mutate-upload-token", webhook.port()),
                             "caBundle": base64::engine::general_purpose::STANDARD.encode(ca.ca_pem())},
            "rules": [{"operations": ["CREATE"], "apiGroups": ["ido.dev"], "apiVersions": ["v1alpha1"],
                       "resources": ["uploadtokenrequests"], "scope": "Namespaced"},
                      {"operations": ["CREATE"], "apiGroups": ["upload.cdi.kubevirt.io"], "apiVersions": ["v1beta1"],
                       "resources": ["uploadtokenrequests"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": vms}},
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "timeoutSeconds": 10
        }]
    });
    c.kubectl_stdin(&["apply", "-f", "-"], &config.to_string())
        .await
        .unwrap();

    // The volume the claim binds to.
    let pv_dir = d.join("pv");
    volume(c, &format!("{vms}-disk"), &vms, "disk", &pv_dir).await;

    // The kubelet's part: once the job controller made the upload Pod, run it on a loopback
    // pod IP of its own.
    let kubelet = tokio::spawn(play(
        c,
        vms.clone(),
        "importer-disk".into(),
        "disk".into(),
        d.join("pod"),
        Some(format!("127.0.0.{}", 2 + std::process::id() % 250)),
    ));

    // `ido upload` as the cluster's admin: creates the DiskImport, waits, uploads.
    let url = format!("https://127.0.0.1:{}", endpoint.port());
    let upload = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args([
            "upload",
            "disk",
            "-n",
            &vms,
            "--size",
            "128Mi",
            "--storage-class",
            "",
            "--progress",
            "plain",
        ])
        .arg("--image-path")
        .arg(&image)
        .args(["--url", &url])
        .arg("--ca-file")
        .arg(&ca.ca_cert)
        .env("KUBECONFIG", c.kubeconfig())
        .env_remove("IDO_UPLOAD_URL")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&upload.stderr).into_owned();
    let (exit, pod_log) = tokio::time::timeout(Duration::from_secs(60), kubelet)
        .await
        .expect("the upload pod ends")
        .unwrap();
    assert!(
        upload.status.success(),
        "ido upload failed:\n{out}\nthe upload pod:\n{pod_log}"
    );
    assert_eq!(exit, 0, "{pod_log}");
    assert!(
        out.contains("created DiskImport") && out.contains("Succeeded"),
        "{out}"
    );
    assert!(
        out.contains("upload: 0.0% 0 B of ") && out.contains(" MiB) in "),
        "progress lines, then what was sent:\n{out}"
    );
    assert_same(
        &std::fs::read(pv_dir.join("disk.img")).unwrap(),
        &oracle,
        "the uploaded disk",
    );

    let di = c
        .kubectl_json(&["get", "diskimport", "disk", "-n", &vms])
        .await
        .unwrap();
    assert_eq!(di["status"]["phase"], "Succeeded", "{di}");
    let events = c
        .kubectl(&["get", "events", "-n", &vms, "-o", "json"])
        .await
        .unwrap();
    for reason in ["UploadScheduled", "UploadReady", "ImportSucceeded"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }
    wait_for("the upload key's Secret removed", async || {
        c.kubectl(&["get", "secret", "upload-key-disk", "-n", &vms])
            .await
            .is_err()
    })
    .await;

    // A token for the admin again, asked as CDI's manifests/example/upload-datavolume-token.yaml
    // does (CDI's group, `pvcName`; its namespace and claim this test's): the endpoint says
    // the upload is complete.
    let cdi_request = format!(
        "apiVersion: upload.cdi.kubevirt.io/v1beta1\nkind: UploadTokenRequest\nmetadata:\n  name: upload-datavolume\n  namespace: {vms}\nspec:\n  pvcName: disk\n"
    );
    let answer = c
        .kubectl_stdin(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            &cdi_request,
        )
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let token = answer["status"]["token"].as_str().unwrap().to_string();
    assert!(!out.contains(&token));
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca.ca_pem().into_bytes()).unwrap())
        .build()
        .unwrap();
    let r = http
        .post(format!("{url}/v1beta1/upload"))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "{}", r.text().await.unwrap());

    // Not stored: a create that is no dry run is refused.
    let req = json!({"apiVersion": "ido.dev/v1alpha1", "kind": "UploadTokenRequest",
                     "metadata": {"name": "t", "namespace": vms}, "spec": {"diskImport": "disk"}})
    .to_string();
    let stored = c
        .kubectl_output(&["create", "-f", "-"], Some(&req))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&stored.stderr);
    assert!(!stored.status.success() && err.contains("dry runs only"), "{err}");

    // A user who may create UploadTokenRequests but not upload into DiskImports: refused,
    // by the SubjectAccessReview.
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "tokens-only", "namespace": vms},
        "rules": [{"apiGroups": ["ido.dev"], "resources": ["uploadtokenrequests"], "verbs": ["create"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tokens-only", "namespace": vms},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tokens-only"},
        "subjects": [{"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}]});
    for o in [role, binding] {
        c.kubectl_stdin(&["apply", "-f", "-"], &o.to_string())
            .await
            .unwrap();
    }
    let denied = c
        .kubectl_output(
            &[
                "create",
                "--dry-run=server",
                "-o",
                "json",
                "--as=mallory",
                "-f",
                "-",
            ],
            Some(&req),
        )
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && err.contains("mallory may not upload into DiskImport"),
        "{err}"
    );

    c.kubectl(&["delete", "mutatingwebhookconfiguration", &config_name])
        .await
        .unwrap();
    op.stop().await;
}

#[tokio::test]
async fn cdis_example_data_volume_imports_through_the_operator() {
    ido_testkit::install_crypto_provider();
    let c = Cluster::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (q, oracle) = qcow2(d);
    let server = FileServer::start(
        std::fs::read(&q).unwrap(),
        Behaviour {
            ranges: true,
            ..Default::default()
        },
    )
    .await;
    install_crds(c).await;
    let vms = c.namespace("cdi-vms").await.unwrap();
    let (op_ns, client) = chart_operator_client(
        c,
        "cdi-op",
        json!({"diskImport": {"enabled": true}, "cdiCompat": {"enabled": true}}),
        d,
    )
    .await;
    let op = Operator::start(client, &op_ns, |s, _| s.cdi_compat = true);

    // The volumes the claims bind to.
    let pv_dir = d.join("pv");
    volume(c, &format!("{vms}-dv"), &vms, "example-import-dv", &pv_dir).await;
    let blank_dir = d.join("pv-blank");
    volume(
        c,
        &format!("{vms}-blank"),
        &vms,
        "blank-image-datavolume",
        &blank_dir,
    )
    .await;
    // CDI's manifests/example/import-kubevirt-datavolume.yaml, its URL this test's server
    // (and storageClassName "", the class of the PV above).
    let example = format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: example-import-dv\nspec:\n  source:\n    http:\n      url: \"{}\"\n  pvc:\n    storageClassName: \"\"\n    accessModes:\n      - ReadWriteOnce\n    resources:\n      requests:\n        storage: \"500Mi\"\n",
        server.url()
    );
    c.kubectl_stdin(&["apply", "-n", &vms, "-f", "-"], &example)
        .await
        .unwrap();
    let get = async |args: &[&str]| c.kubectl(args).await.unwrap_or_default();
    let dv_phase =
        async |name: &str| get(&["get", "dv", name, "-n", &vms, "-o", "jsonpath={.status.phase}"]).await;
    wait_for("ImportScheduled", async || {
        dv_phase("example-import-dv").await == "ImportScheduled"
    })
    .await;
    let (exit, log) = play(
        c,
        vms.clone(),
        "importer-example-import-dv".into(),
        "example-import-dv".into(),
        d.join("importer"),
        None,
    )
    .await;
    assert_eq!(exit, 0, "{log}");
    wait_for("the DataVolume Succeeded", async || {
        dv_phase("example-import-dv").await == "Succeeded"
    })
    .await;
    let dv = c
        .kubectl_json(&["get", "datavolume", "example-import-dv", "-n", &vms])
        .await
        .unwrap();
    assert_eq!(dv["status"]["progress"], "100.0%", "{dv}");
    assert_eq!(dv["status"]["claimName"], "example-import-dv", "{dv}");
    let got = std::fs::read(pv_dir.join("disk.img")).unwrap();
    assert_same(&got[..oracle.len()], &oracle, "the DataVolume's disk");

    // CDI's manifests/example/blank-image-datavolume.yaml, unchanged (no class: it binds to
    // a PV of none, as there is no default class here): a sparse 500Mi disk of zeros.
    let blank = "# This example assumes you are using a default storage class\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: blank-image-datavolume\nspec:\n  source:\n      blank: {}\n  pvc:\n    accessModes:\n      - ReadWriteOnce\n    resources:\n      requests:\n        storage: 500Mi\n";
    c.kubectl_stdin(&["apply", "-n", &vms, "-f", "-"], blank)
        .await
        .unwrap();
    let (exit, log) = play(
        c,
        vms.clone(),
        "importer-blank-image-datavolume".into(),
        "blank-image-datavolume".into(),
        d.join("blank-importer"),
        None,
    )
    .await;
    assert_eq!(exit, 0, "{log}");
    wait_for("the blank DataVolume Succeeded", async || {
        dv_phase("blank-image-datavolume").await == "Succeeded"
    })
    .await;
    let disk = blank_dir.join("disk.img");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 500 << 20);
    assert_sparse(&disk);
    assert!(std::fs::read(&disk).unwrap().iter().all(|b| *b == 0));

    // What ido cannot do is refused by its field, and nothing is made.
    let gcs = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: from-gcs}\nspec:\n  source: {gcs: {url: 'gs://bucket/disk.img'}}\n  storage: {resources: {requests: {storage: 1Gi}}}\n";
    c.kubectl_stdin(&["apply", "-n", &vms, "-f", "-"], gcs)
        .await
        .unwrap();
    wait_for("the refusal", async || {
        get(&[
            "get",
            "dv",
            "from-gcs",
            "-n",
            &vms,
            "-o",
            "jsonpath={.status.conditions[0].message}",
        ])
        .await
        .starts_with("spec.source.gcs: ")
    })
    .await;
    assert!(
        c.kubectl(&["get", "diskimport", "from-gcs", "-n", &vms])
            .await
            .is_err()
    );

    // Deleting the DataVolume takes its DiskImport and claim (garbage collector).
    c.kubectl(&["delete", "dv", "example-import-dv", "-n", &vms])
        .await
        .unwrap();
    wait_for("the DiskImport and claim gone", async || {
        c.kubectl(&["get", "diskimport", "example-import-dv", "-n", &vms])
            .await
            .is_err()
            && c.kubectl(&["get", "pvc", "example-import-dv", "-n", &vms])
                .await
                .is_err()
    })
    .await;
    op.stop().await;
}

/// A hostPath PersistentVolume of `capacity` at `dir` (made), reserved for `ns/claim`.
async fn sized_volume(c: &Cluster, name: &str, capacity: &str, (ns, claim): (&str, &str), dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": capacity}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
            "hostPath": {"path": dir.display().to_string(), "type": "Directory"},
            "claimRef": {"namespace": ns, "name": claim},
        },
    });
    c.kubectl_stdin(&["apply", "-f", "-"], &pv.to_string())
        .await
        .unwrap();
}

/// CDI's clone example across namespaces: refused for a user who may not read the source
/// namespace (the operator's webhook asks a SubjectAccessReview), let in once they may; the
/// copy runs in an upload pod beside the new claim and a sender beside the source (both
/// played), byte for byte (the source disk's bytes are a qcow2 image: copied as they are, not
/// converted), and nothing of it is left in the source namespace.
#[tokio::test]
async fn cdis_clone_example_copies_a_claim_of_another_namespace_for_an_allowed_user() {
    ido_testkit::install_crypto_provider();
    let c = Cluster::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    install_crds(c).await;
    let source_ns = c.namespace("clone-src").await.unwrap();
    let vms = c.namespace("clone-vms").await.unwrap();
    let (op_ns, client) = chart_operator_client(
        c,
        "clone-op",
        json!({"diskImport": {"enabled": true, "upload": {"enabled": true}}, "cdiCompat": {"enabled": true}}),
        d,
    )
    .await;
    let ca = TestCa::new().unwrap();
    let certs = d.join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&ca.server_cert, certs.join("tls.crt")).unwrap();
    std::fs::copy(&ca.server_key, certs.join("tls.key")).unwrap();
    let webhook = free_addr();
    let op = Operator::start(client, &op_ns, |s, o| {
        s.cdi_compat = true;
        s.disk_import.upload_key = Some(UploadKey::generate());
        o.webhook_addr = Some(webhook);
        o.webhook_cert_dir = Some(certs.clone());
    });
    // The chart's clone webhook, pointed at this operator, for this test's namespace.
    let config_name = format!("clone-{vms}");
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "clones.disk-import.ido.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{}/mutate-clone", webhook.port()),
                             "caBundle": base64::engine::general_purpose::STANDARD.encode(ca.ca_pem())},
            "rules": [{"operations": ["CREATE"], "apiGroups": ["ido.dev"], "apiVersions": ["v1alpha1"],
                       "resources": ["diskimports"], "scope": "Namespaced"},
                      {"operations": ["CREATE"], "apiGroups": ["cdi.kubevirt.io"], "apiVersions": ["v1beta1"],
                       "resources": ["datavolumes"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": vms}},
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "timeoutSeconds": 10
        }]
    });
    c.kubectl_stdin(&["apply", "-f", "-"], &config.to_string())
        .await
        .unwrap();

    // The source: a claim of the source namespace whose disk's bytes are a qcow2 image and
    // then a hole (64 MiB in all).
    let (q, _) = qcow2(d);
    let src_dir = d.join("pv-source");
    sized_volume(
        c,
        &format!("{source_ns}-src"),
        "64Mi",
        (&source_ns, "source-datavolume"),
        &src_dir,
    )
    .await;
    let mut disk = std::fs::read(&q).unwrap();
    disk.resize(64 << 20, 0);
    std::fs::write(src_dir.join("disk.img"), &disk).unwrap();
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "source-datavolume", "namespace": source_ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "resources": {"requests": {"storage": "64Mi"}}}});
    c.kubectl_stdin(&["apply", "-f", "-"], &claim.to_string())
        .await
        .unwrap();
    let dst_dir = d.join("pv-clone");
    sized_volume(
        c,
        &format!("{vms}-clone"),
        "1Gi",
        (&vms, "cloned-datavolume"),
        &dst_dir,
    )
    .await;

    // Alice may edit the VMs' namespace only.
    let bind = |ns: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice-edit", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]})
        .to_string()
    };
    c.kubectl_stdin(&["apply", "-f", "-"], &bind(&vms)).await.unwrap();
    // (and create DataVolumes there: CDI's own roles would aggregate that into edit)
    let dv_role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "datavolumes", "namespace": vms},
        "rules": [{"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes"], "verbs": ["create", "get"]}]});
    let dv_binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "alice-datavolumes", "namespace": vms},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "datavolumes"},
        "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]});
    for o in [dv_role, dv_binding] {
        c.kubectl_stdin(&["apply", "-f", "-"], &o.to_string())
            .await
            .unwrap();
    }
    // CDI's manifests/example/clone-datavolume.yaml, its source namespace this test's.
    let example = format!(
        "# This example assumes you are using a default storage class\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: cloned-datavolume\nspec:\n  source:\n    pvc:\n      namespace: {source_ns}\n      name: source-datavolume\n  storage:\n"
    );
    let apply = async || {
        c.kubectl_output(&["create", "-n", &vms, "--as=alice", "-f", "-"], Some(&example))
            .await
            .unwrap()
    };
    let denied = apply().await;
    let err = String::from_utf8_lossy(&denied.stderr).into_owned();
    assert!(
        !denied.status.success()
            && err.contains(&format!(
                "alice may not clone {source_ns}/source-datavolume into DataVolume {vms}/cloned-datavolume"
            )),
        "{err}"
    );
    assert!(
        c.kubectl(&["get", "dv", "cloned-datavolume", "-n", &vms])
            .await
            .is_err()
    );

    // Allowed to edit the source namespace too (edit aggregates datavolumes/source): let in.
    c.kubectl_stdin(&["apply", "-f", "-"], &bind(&source_ns))
        .await
        .unwrap();
    wait_for("the edit role to carry datavolumes/source", async || {
        c.kubectl(&[
            "auth",
            "can-i",
            "create",
            "datavolumes.cdi.kubevirt.io",
            "--subresource=source",
            "-n",
            &source_ns,
            "--as=alice",
        ])
        .await
        .is_ok_and(|o| o.trim() == "yes")
    })
    .await;
    let allowed = apply().await;
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let dv = c
        .kubectl_json(&["get", "dv", "cloned-datavolume", "-n", &vms])
        .await
        .unwrap();
    assert!(
        dv["metadata"]["annotations"]["ido.dev/clone-token"].is_string(),
        "{dv}"
    );

    // The upload pod beside the new claim, then the sender beside the source: played.
    let target = tokio::spawn(play(
        c,
        vms.clone(),
        "importer-cloned-datavolume".into(),
        "cloned-datavolume".into(),
        d.join("target-pod"),
        Some(format!("127.0.1.{}", 2 + std::process::id() % 250)),
    ));
    let mut sender = String::new();
    for _ in 0..300 {
        sender = c
            .kubectl(&[
                "get",
                "jobs",
                "-n",
                &source_ns,
                "-l",
                "ido.dev/clone-target",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .await
            .unwrap_or_default()
            .trim()
            .to_string();
        if !sender.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !sender.is_empty(),
        "no sender Job in the source namespace; the DataVolume and DiskImport:\n{}\npods:\n{}",
        c.kubectl(&["get", "dv,diskimport,events", "-n", &vms, "-o", "yaml"])
            .await
            .unwrap_or_default(),
        c.kubectl(&["get", "pods,jobs", "-n", &vms, "-o", "yaml"])
            .await
            .unwrap_or_default()
    );
    let (exit, log) = play(
        c,
        source_ns.clone(),
        sender.clone(),
        "source-datavolume".into(),
        d.join("sender-pod"),
        None,
    )
    .await;
    assert_eq!(exit, 0, "the sender:\n{log}");
    let (exit, log) = tokio::time::timeout(Duration::from_secs(60), target)
        .await
        .expect("the upload pod ends")
        .unwrap();
    assert_eq!(exit, 0, "the upload pod:\n{log}");
    let dv_phase = async || {
        c.kubectl(&[
            "get",
            "dv",
            "cloned-datavolume",
            "-n",
            &vms,
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await
        .unwrap_or_default()
    };
    wait_for("the clone Succeeded", async || dv_phase().await == "Succeeded").await;
    let got = std::fs::read(dst_dir.join("disk.img")).unwrap();
    assert_same(&got[..disk.len()], &disk, "the clone, byte for byte");
    assert!(got[disk.len()..].iter().all(|b| *b == 0));
    let events = c
        .kubectl(&["get", "events", "-n", &vms, "-o", "json"])
        .await
        .unwrap();
    for reason in ["CloneScheduled", "CloneInProgress", "ImportSucceeded"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }
    // Nothing of the clone is left in the source namespace; the source claim is untouched.
    wait_for("the sender's Job and Secret removed", async || {
        c.kubectl(&["get", "job", &sender, "-n", &source_ns])
            .await
            .is_err()
            && c.kubectl(&["get", "secret", &sender, "-n", &source_ns])
                .await
                .is_err()
    })
    .await;
    let di = c
        .kubectl_json(&["get", "diskimport", "cloned-datavolume", "-n", &vms])
        .await
        .unwrap();
    assert!(di["metadata"]["finalizers"].is_null(), "{di}");
    assert_eq!(std::fs::read(src_dir.join("disk.img")).unwrap(), disk);

    // A VolumeSnapshot of the source namespace (its CRD as the snapshot controller's
    // project installs it, in short; the test plays the snapshot controller and the CSI
    // driver): restored into a claim there, which is cloned across, then removed.
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "volumesnapshots.snapshot.storage.k8s.io"},
        "spec": {"group": "snapshot.storage.k8s.io", "scope": "Namespaced",
            "names": {"kind": "VolumeSnapshot", "plural": "volumesnapshots", "singular": "volumesnapshot", "listKind": "VolumeSnapshotList"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &crd.to_string())
        .await
        .unwrap();
    let snap = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "golden-snap", "namespace": source_ns},
        "spec": {"source": {"persistentVolumeClaimName": "source-datavolume"}}});
    wait_for("the VolumeSnapshot kind served", async || {
        c.kubectl_stdin(&["apply", "-f", "-"], &snap.to_string())
            .await
            .is_ok()
    })
    .await;
    c.kubectl(&[
        "patch",
        "volumesnapshot",
        "golden-snap",
        "-n",
        &source_ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"readyToUse": true, "restoreSize": "64Mi"}}"#,
    ])
    .await
    .unwrap();
    let snap_dst = d.join("pv-from-snapshot");
    sized_volume(
        c,
        &format!("{vms}-snap"),
        "1Gi",
        (&vms, "from-snapshot"),
        &snap_dst,
    )
    .await;
    let di = json!({"apiVersion": "ido.dev/v1alpha1", "kind": "DiskImport",
        "metadata": {"name": "from-snapshot", "namespace": vms},
        "spec": {"source": {"snapshot": {"namespace": source_ns, "name": "golden-snap"}}}});
    c.kubectl_stdin(&["create", "-f", "-"], &di.to_string())
        .await
        .unwrap();
    // The CSI driver's part: the restored claim bound to a volume holding the snapshot.
    let restore = format!("restore-{vms}-from-snapshot");
    wait_for("the restore claim", async || {
        c.kubectl(&["get", "pvc", &restore, "-n", &source_ns])
            .await
            .is_ok()
    })
    .await;
    let claim = c
        .kubectl_json(&["get", "pvc", &restore, "-n", &source_ns])
        .await
        .unwrap();
    assert_eq!(claim["spec"]["dataSource"]["kind"], "VolumeSnapshot", "{claim}");
    assert_eq!(claim["spec"]["dataSource"]["name"], "golden-snap", "{claim}");
    let restored_dir = d.join("pv-restored");
    sized_volume(
        c,
        &format!("{source_ns}-restored"),
        "64Mi",
        (&source_ns, &restore),
        &restored_dir,
    )
    .await;
    let mut snapshot_disk = disk.clone();
    snapshot_disk[..1 << 20].fill(0x5a);
    std::fs::write(restored_dir.join("disk.img"), &snapshot_disk).unwrap();
    let target = tokio::spawn(play(
        c,
        vms.clone(),
        "importer-from-snapshot".into(),
        "from-snapshot".into(),
        d.join("snapshot-target-pod"),
        Some(format!("127.0.2.{}", 2 + std::process::id() % 250)),
    ));
    let label = format!(
        "ido.dev/clone-target={}",
        ido_controllers::diskimport::short_name("", &format!("{vms}.from-snapshot"), 63)
    );
    let mut sender = String::new();
    wait_for("the snapshot clone's sender Job", async || {
        sender = c
            .kubectl(&[
                "get",
                "jobs",
                "-n",
                &source_ns,
                "-l",
                &label,
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .await
            .unwrap_or_default()
            .trim()
            .to_string();
        !sender.is_empty()
    })
    .await;
    let (exit, log) = play(
        c,
        source_ns.clone(),
        sender.clone(),
        restore.clone(),
        d.join("snapshot-sender-pod"),
        None,
    )
    .await;
    assert_eq!(exit, 0, "the sender:\n{log}");
    let (exit, log) = tokio::time::timeout(Duration::from_secs(60), target)
        .await
        .expect("the upload pod ends")
        .unwrap();
    assert_eq!(exit, 0, "the upload pod:\n{log}");
    wait_for("the snapshot clone Succeeded", async || {
        c.kubectl(&[
            "get",
            "diskimport",
            "from-snapshot",
            "-n",
            &vms,
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await
        .is_ok_and(|p| p == "Succeeded")
    })
    .await;
    let got = std::fs::read(snap_dst.join("disk.img")).unwrap();
    assert_same(&got, &snapshot_disk, "the snapshot's clone");
    wait_for("the restore claim and the sender removed", async || {
        c.kubectl(&["get", "pvc", &restore, "-n", &source_ns])
            .await
            .is_err()
            && c.kubectl(&["get", "job", &sender, "-n", &source_ns])
                .await
                .is_err()
    })
    .await;

    c.kubectl(&["delete", "mutatingwebhookconfiguration", &config_name])
        .await
        .unwrap();
    op.stop().await;
}
