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
//! disk of zeros; a DataVolume asking for what ido cannot do is refused by field. CDI's
//! other examples (https, basic auth, Block, archives, registry images, Block uploads, a VM's
//! template), its clone examples across namespaces (authorized by a SubjectAccessReview, a
//! VolumeSnapshot too) and its PVC annotation flow (golden-pvc.yaml), each applied with
//! kubectl.

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

/// How a test PersistentVolume is made: its capacity, a directory or (`block`) a file
/// standing for a device (as the played kubelet attaches it), its class.
#[derive(Clone, Copy)]
struct Pv<'a> {
    bytes: u64,
    block: bool,
    class: &'a str,
}

impl Pv<'static> {
    /// A 1 GiB directory volume of no class.
    const DIR: Self = Self {
        bytes: 1 << 30,
        block: false,
        class: "",
    };
}

/// A hostPath PersistentVolume `name` at `path` (made: a directory, or a sparse file of
/// the volume's size for a Block one), reserved for the claim `ns/claim`.
async fn volume(c: &Cluster, name: &str, (ns, claim): (&str, &str), path: &Path, pv: Pv<'_>) {
    if pv.block {
        std::fs::File::create(path).unwrap().set_len(pv.bytes).unwrap();
    } else {
        std::fs::create_dir_all(path).unwrap();
    }
    let spec = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": pv.bytes.to_string()}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": pv.class,
            "volumeMode": if pv.block { "Block" } else { "Filesystem" },
            "hostPath": {"path": path.display().to_string(), "type": if pv.block { "File" } else { "Directory" }},
            "claimRef": {"namespace": ns, "name": claim},
        },
    });
    c.kubectl_stdin(&["apply", "-f", "-"], &spec.to_string())
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

/// The webhooks a test points the API server at (name, path, rules), as the chart has them.
fn upload_token_hook(groups: &[&str]) -> (&'static str, &'static str, Value) {
    let rules: Vec<Value> = groups
        .iter()
        .map(|g| {
            let version = if *g == "ido.dev" { "v1alpha1" } else { "v1beta1" };
            json!({"operations": ["CREATE"], "apiGroups": [g], "apiVersions": [version],
                   "resources": ["uploadtokenrequests"], "scope": "Namespaced"})
        })
        .collect();
    (
        "uploadtokenrequests.disk-import.ido.dev",
        "/mutate-upload-token",
        Value::Array(rules),
    )
}

fn clone_hook() -> (&'static str, &'static str, Value) {
    (
        "clones.disk-import.ido.dev",
        "/mutate-clone",
        json!([{"operations": ["CREATE"], "apiGroups": ["ido.dev"], "apiVersions": ["v1alpha1"],
                "resources": ["diskimports"], "scope": "Namespaced"},
               {"operations": ["CREATE"], "apiGroups": ["cdi.kubevirt.io"], "apiVersions": ["v1beta1"],
                "resources": ["datavolumes"], "scope": "Namespaced"}]),
    )
}

/// The operator with an upload key, serving its admission webhook and upload endpoint over
/// TLS on loopback (a test CA), and a MutatingWebhookConfiguration of `hooks` for namespace
/// `ns` pointing the API server at it; until [`Served::stop`].
struct Served {
    op: Operator,
    ca: TestCa,
    /// The upload endpoint.
    endpoint: std::net::SocketAddr,
    config: String,
}

impl Served {
    async fn start(
        c: &Cluster,
        (client, op_ns): (kube::Client, &str),
        (ns, hooks): (&str, &[(&str, &str, Value)]),
        d: &Path,
        tune: impl FnOnce(&mut Settings),
    ) -> Self {
        let ca = TestCa::new().unwrap();
        let certs = d.join("op-certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::copy(&ca.server_cert, certs.join("tls.crt")).unwrap();
        std::fs::copy(&ca.server_key, certs.join("tls.key")).unwrap();
        let (webhook, endpoint) = (free_addr(), free_addr());
        let op = Operator::start(client, op_ns, |s, o| {
            s.disk_import.upload_key = Some(UploadKey::generate());
            tune(s);
            o.webhook_addr = Some(webhook);
            o.webhook_cert_dir = Some(certs.clone());
            o.upload_addr = Some(endpoint);
            o.upload_cert_dir = Some(certs.clone());
        });
        let config = format!("hooks-{ns}");
        let webhooks: Vec<Value> = hooks
            .iter()
            .map(|(name, path, rules)| {
                json!({
                    "name": name,
                    "clientConfig": {"url": format!("https://127.0.0.1:{}{path}", webhook.port()),
                                     "caBundle": base64::engine::general_purpose::STANDARD.encode(ca.ca_pem())},
                    "rules": rules,
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                    "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                    "timeoutSeconds": 10
                })
            })
            .collect();
        let manifest = json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": config},
            "webhooks": webhooks,
        });
        c.kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string())
            .await
            .unwrap();
        Self {
            op,
            ca,
            endpoint,
            config,
        }
    }

    async fn stop(self, c: &Cluster) {
        c.kubectl(&["delete", "mutatingwebhookconfiguration", &self.config])
            .await
            .unwrap();
        self.op.stop().await;
    }
}

/// CDI's and ido's CRDs, a namespace `prefix-…`, the operator with CDI compatibility as the
/// chart's ServiceAccount, and a server of the test qcow2 with qemu-img's raw of it.
async fn cdi_operator(c: &Cluster, prefix: &str, d: &Path) -> (String, Operator, FileServer, Vec<u8>) {
    let (q, oracle) = write_qcow2(d);
    let server = FileServer::start(
        std::fs::read(&q).unwrap(),
        Behaviour {
            ranges: true,
            ..Default::default()
        },
    )
    .await;
    install_crds(c).await;
    let vms = c.namespace(prefix).await.unwrap();
    let (op_ns, client) = chart_operator_client(
        c,
        &format!("{prefix}-op"),
        json!({"diskImport": {"enabled": true}, "cdiCompat": {"enabled": true}}),
        d,
    )
    .await;
    let op = Operator::start(client, &op_ns, |s, _| s.cdi_compat = true);
    (vms, op, server, oracle)
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
    let (image, oracle) = write_qcow2(d);

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

    // The operator: the webhook and the upload endpoint on loopback, with a test CA, and the
    // chart's webhook for UploadTokenRequests pointed at it.
    let served = Served::start(
        c,
        (client, &op_ns),
        (&vms, &[upload_token_hook(&["ido.dev", "upload.cdi.kubevirt.io"])]),
        d,
        |_| {},
    )
    .await;
    let (ca, endpoint) = (&served.ca, served.endpoint);

    // The volume the claim binds to.
    let pv_dir = d.join("pv");
    volume(c, &format!("{vms}-disk"), (&vms, "disk"), &pv_dir, Pv::DIR).await;

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

    served.stop(c).await;
}

#[tokio::test]
async fn cdis_example_data_volume_imports_through_the_operator() {
    ido_testkit::install_crypto_provider();
    let c = Cluster::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vms, op, server, oracle) = cdi_operator(c, "cdi-vms", d).await;

    // The volumes the claims bind to.
    let pv_dir = d.join("pv");
    volume(
        c,
        &format!("{vms}-dv"),
        (&vms, "example-import-dv"),
        &pv_dir,
        Pv::DIR,
    )
    .await;
    let blank_dir = d.join("pv-blank");
    volume(
        c,
        &format!("{vms}-blank"),
        (&vms, "blank-image-datavolume"),
        &blank_dir,
        Pv::DIR,
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

/// The kubelet's part for a clone from another namespace: the upload pod of DiskImport
/// `ns/name` (on a loopback IP `127.0.NET.x`), then its sender in `source_ns` beside
/// `source_claim`, each run to its end (exit 0). The sender Job's name.
async fn play_clone(
    c: &'static Cluster,
    (ns, name): (&str, &str),
    (source_ns, source_claim): (&str, &str),
    root: &Path,
    net: u8,
) -> String {
    let target = tokio::spawn(play(
        c,
        ns.to_string(),
        format!("importer-{name}"),
        name.to_string(),
        root.join("target-pod"),
        Some(format!("127.0.{net}.{}", 2 + std::process::id() % 250)),
    ));
    let label = format!(
        "ido.dev/clone-target={}",
        ido_controllers::diskimport::short_name("", &format!("{ns}.{name}"), 63)
    );
    let mut sender = String::new();
    for _ in 0..300 {
        sender = c
            .kubectl(&[
                "get",
                "jobs",
                "-n",
                source_ns,
                "-l",
                &label,
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
        "no sender Job of {ns}/{name} in {source_ns}:\n{}",
        c.kubectl(&["get", "dv,diskimport", "-n", ns, "-o", "yaml"])
            .await
            .unwrap_or_default()
    );
    let (exit, log) = play(
        c,
        source_ns.to_string(),
        sender.clone(),
        source_claim.to_string(),
        root.join("sender-pod"),
        None,
    )
    .await;
    assert_eq!(exit, 0, "the sender of {name}:\n{log}");
    let (exit, log) = tokio::time::timeout(Duration::from_secs(60), target)
        .await
        .expect("the upload pod ends")
        .unwrap();
    assert_eq!(exit, 0, "the upload pod of {name}:\n{log}");
    sender
}

/// CDI's clone examples across namespaces: refused for a user who may not read the source
/// namespace (the operator's webhook asks a SubjectAccessReview), let in once they may; the
/// copy runs in an upload pod beside the new claim and a sender beside the source (both
/// played), byte for byte (the source disk's bytes are a qcow2 image: copied as they are, not
/// converted), and nothing of it is left in the source namespace. Then a VolumeSnapshot of the
/// source namespace (restored into a claim there, the test playing the CSI driver) and CDI's
/// Block clone example (v1alpha1), the same way.
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
    // The operator, and the chart's clone webhook pointed at it for this test's namespace.
    let served = Served::start(c, (client, &op_ns), (&vms, &[clone_hook()]), d, |s| {
        s.cdi_compat = true
    })
    .await;

    // The source: a claim of the source namespace whose disk's bytes are a qcow2 image and
    // then a hole (64 MiB in all).
    let (q, _) = write_qcow2(d);
    let src_dir = d.join("pv-source");
    volume(
        c,
        &format!("{source_ns}-src"),
        (&source_ns, "source-datavolume"),
        &src_dir,
        Pv {
            bytes: 64 << 20,
            ..Pv::DIR
        },
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
    volume(
        c,
        &format!("{vms}-clone"),
        (&vms, "cloned-datavolume"),
        &dst_dir,
        Pv {
            bytes: 1 << 30,
            ..Pv::DIR
        },
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
    let sender = play_clone(
        c,
        (&vms, "cloned-datavolume"),
        (&source_ns, "source-datavolume"),
        &d.join("clone"),
        1,
    )
    .await;
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
        "metadata": {"name": "volumesnapshots.snapshot.storage.k8s.io",
            "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-csi/external-snapshotter/pull/814"}},
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
    volume(
        c,
        &format!("{vms}-snap"),
        (&vms, "from-snapshot"),
        &snap_dst,
        Pv {
            bytes: 1 << 30,
            ..Pv::DIR
        },
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
    volume(
        c,
        &format!("{source_ns}-restored"),
        (&source_ns, &restore),
        &restored_dir,
        Pv {
            bytes: 64 << 20,
            ..Pv::DIR
        },
    )
    .await;
    let mut snapshot_disk = disk.clone();
    snapshot_disk[..1 << 20].fill(0x5a);
    std::fs::write(restored_dir.join("disk.img"), &snapshot_disk).unwrap();
    let sender = play_clone(
        c,
        (&vms, "from-snapshot"),
        (&source_ns, &restore),
        &d.join("snapshot"),
        2,
    )
    .await;
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

    // CDI's manifests/example/clone-block-datavolume.yaml (cdi.kubevirt.io/v1alpha1, served
    // too), its source namespace this test's: a Block claim into a Block claim, as alice.
    let block_src = d.join("block-source.img");
    let block = Pv {
        bytes: 64 << 20,
        block: true,
        ..Pv::DIR
    };
    volume(
        c,
        &format!("{source_ns}-block"),
        (&source_ns, "import-kubevirt-block-datavolume"),
        &block_src,
        block,
    )
    .await;
    std::fs::write(&block_src, &disk).unwrap();
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "import-kubevirt-block-datavolume", "namespace": source_ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeMode": "Block",
                 "resources": {"requests": {"storage": "64Mi"}}}});
    c.kubectl_stdin(&["apply", "-f", "-"], &claim.to_string())
        .await
        .unwrap();
    let block_dst = d.join("block-clone.img");
    volume(
        c,
        &format!("{vms}-block"),
        (&vms, "clone-block-datavolume"),
        &block_dst,
        Pv {
            bytes: 1 << 30,
            ..block
        },
    )
    .await;
    let example = format!(
        "apiVersion: cdi.kubevirt.io/v1alpha1\nkind: DataVolume\nmetadata:\n  name: clone-block-datavolume\nspec:\n  source:\n    pvc:\n      namespace: {source_ns} \n      name: import-kubevirt-block-datavolume \n  pvc:\n    volumeMode: Block\n    accessModes:\n      - ReadWriteOnce\n    resources:\n      requests:\n        storage: 1Gi\n\n"
    );
    let created = c
        .kubectl_output(&["create", "-n", &vms, "--as=alice", "-f", "-"], Some(&example))
        .await
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    play_clone(
        c,
        (&vms, "clone-block-datavolume"),
        (&source_ns, "import-kubevirt-block-datavolume"),
        &d.join("block"),
        3,
    )
    .await;
    wait_for("the Block clone Succeeded", async || {
        c.kubectl(&[
            "get",
            "dv",
            "clone-block-datavolume",
            "-n",
            &vms,
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await
        .is_ok_and(|p| p == "Succeeded")
    })
    .await;
    let got = std::fs::read(&block_dst).unwrap();
    assert_same(&got[..disk.len()], &disk, "the Block clone");
    assert!(got[disk.len()..].iter().all(|b| *b == 0));

    served.stop(c).await;
}

// CDI's other example manifests (kubevirt/containerized-data-importer, manifests/example/),
// each applied with kubectl through one operator: the https, basic-auth, Block, archive,
// registry and Block-upload imports end Succeeded with qemu-img's bytes (or the archive's
// files); what ido refuses (an archive into a Block claim, CDIConfig) is refused clearly.
// The manifests are CDI's text at c07cdb6fbd18 (byte for byte); what a test changes is said where it changes it, through
// [`cdi_example`], which fails when the text to change is not there.

const CDI_CERT_CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tls-certs\ndata:\n  ca.pem: |\n    -----BEGIN CERTIFICATE-----\n    ... <base64 encoded cert> ...\n    -----END CERTIFICATE-----\n";
const CDI_IMPORT: &str = "# This example assumes you are using a default storage class\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: my-data-volume\nspec:\n  source:\n      http:\n         url: \"https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img\"\n  storage:\n    resources:\n      requests:\n        storage: 500Mi\n";
const CDI_ENDPOINT_SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: endpoint-secret\n  labels:\n    app: containerized-data-importer\ntype: Opaque\ndata:\n  accessKeyId: \"\"  # <optional: your key or user name, base64 encoded>\n  secretKey:    \"\" # <optional: your secret or password, base64 encoded>\n";
const CDI_IMPORT_SECRET: &str = "# This example assumes you are using a default storage class\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: my-data-volume\nspec:\n  source:\n      http:\n         url: \"https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img\"\n         secretRef: endpoint-secret #If you are using the endpoint-secret.yaml example.\n  storage:\n    resources:\n      requests:\n        storage: 500Mi\n";
const CDI_IMPORT_BLOCK: &str = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: import-kubevirt-block-datavolume\nspec:\n  source:\n    http:\n      url: \"http://distro.ibiblio.org/tinycorelinux/9.x/x86/release/Core-current.iso\"\n  storage:\n    # Optional: Set the storage class or omit to accept the default\n    storageClassName: local\n    volumeMode: Block\n    accessModes:\n      - ReadWriteOnce\n    resources:\n      requests:\n        storage: 1Gi\n";
const CDI_ARCHIVE: &str = "# This example assumes you are using a default storage class\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: import-archive-datavolume\nspec:\n  source:\n      http:\n         url: \"http://geolite.maxmind.com/download/geoip/database/GeoLite2-Country.tar.gz\" #This url is just an example. You should change this to your destination url\n  contentType: archive\n  storage:\n    resources:\n      requests:\n        storage: 500Mi\n";
const CDI_ARCHIVE_BLOCK: &str = "# This example assumes you are using a default storage class\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: import-archive-block-datavolume\nspec:\n  source:\n      http:\n         url: \"http://geolite.maxmind.com/download/geoip/database/GeoLite2-Country.tar.gz\" #This url is just an example. You should change this to your destination url\n  contentType: archive\n  storage:\n    volumeMode: Block\n    resources:\n      requests:\n        storage: 500Mi\n";
const CDI_REGISTRY: &str = "# This example assumes you are using a default storage class\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: registry-image-datavolume\nspec:\n  source:\n    registry:\n      url: \"docker://kubevirt/fedora-cloud-registry-disk-demo\"\n  storage:\n    resources:\n      requests:\n        storage: 5Gi\n";
const CDI_REGISTRY_BLOCK: &str = "# This example assumes you are using a default storage class\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: registry-image-datavolume\nspec:\n  source:\n    registry:\n      url: \"docker://kubevirt/fedora-cloud-registry-disk-demo\"\n  storage:\n    volumeMode: Block\n    resources:\n      requests:\n        storage: 5Gi\n";
const CDI_UPLOAD_BLOCK: &str = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: upload-block-datavolume\nspec:\n  source:\n      upload: {}\n  storage:\n    volumeMode: Block\n    resources:\n      requests:\n        storage: 500Mi\n";
const CDI_UPLOAD_BLOCK_TOKEN: &str = "apiVersion: upload.cdi.kubevirt.io/v1beta1\nkind: UploadTokenRequest\nmetadata:\n  name: upload-block-datavolume-token\n  namespace: default\nspec:\n  pvcName: upload-block-datavolume\n";
const CDI_CDICONFIG: &str = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: CDIConfig\nmetadata:\n  name: config\nspec:\n  uploadProxyURLOverride: \"www.example.com\"\n";
const CDI_VM_DV: &str = "apiVersion: kubevirt.io/v1alpha3\nkind: VirtualMachine\nmetadata:\n  creationTimestamp: null\n  labels:\n    kubevirt.io/vm: vm-cirros-datavolume\n  name: vm-cirros-datavolume\nspec:\n  dataVolumeTemplates:\n  - metadata:\n      creationTimestamp: null\n      name: cirros-dv\n    spec:\n      pvc:\n        accessModes:\n        - ReadWriteOnce\n        resources:\n          requests:\n            storage: 100M\n        storageClassName: hdd\n      source:\n        http:\n          url: https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img\n  running: false\n  template:\n    metadata:\n      labels:\n        kubevirt.io/vm: vm-datavolume\n    spec:\n      domain:\n        devices:\n          disks:\n          - disk:\n              bus: virtio\n            name: datavolumevolume\n        machine:\n          type: \"\"\n        resources:\n          requests:\n            memory: 64M\n      terminationGracePeriodSeconds: 0\n      volumes:\n      - dataVolume:\n          name: cirros-dv\n        name: datavolumevolume\n\n";

/// `manifest` with each `(from, to)` replaced; panics when `from` is not in it.
fn cdi_example(manifest: &str, changes: &[(&str, &str)]) -> String {
    let mut m = manifest.to_string();
    for (from, to) in changes {
        assert!(m.contains(from), "{from:?} is not in\n{m}");
        m = m.replace(from, to);
    }
    m
}

/// The plain HTTP server at `upstream` (`host:port`) behind HTTPS with `ca`'s server
/// certificate (for 127.0.0.1), until the task is aborted: its `https://…` origin.
async fn https_front(upstream: String, ca: &TestCa, dir: &Path) -> (String, tokio::task::JoinHandle<()>) {
    use axum::serve::Listener as _;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(&ca.server_cert, dir.join("tls.crt")).unwrap();
    std::fs::copy(&ca.server_key, dir.join("tls.key")).unwrap();
    let config =
        ido_operator::tls::server_config(&ido_operator::tls::CertSource::Dir(dir.to_path_buf())).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let mut tls = ido_operator::tls::TlsListener::new(tcp, config).unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut conn, _) = tls.accept().await;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut plain).await;
                }
            });
        }
    });
    (format!("https://127.0.0.1:{port}"), task)
}

/// A KubeVirt containerDisk holding `disk` as `disk/<file>` (one uncompressed layer, this
/// machine's platform), pushed to `reg` as `repo_tag` with skopeo.
async fn push_container_disk(
    reg: &ido_testkit::registry::DockerRegistry,
    dir: &Path,
    repo_tag: &str,
    file: &str,
    disk: &[u8],
) {
    use sha2::Digest as _;
    let layout = dir.join("containerdisk");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |data: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data).unwrap();
        json!({"digest": format!("sha256:{hex}"), "size": data.len()})
    };
    let layer = ido_testkit::tar_bytes::files(&[(&format!("disk/{file}"), disk)]);
    let mut l = blob(&layer);
    l["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config =
        json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [l["digest"]]}});
    let mut cd = blob(&serde_json::to_vec(&config).unwrap());
    cd["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": cd, "layers": [l]});
    let mut md = blob(&serde_json::to_vec(&manifest).unwrap());
    md["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    md["annotations"] = json!({"org.opencontainers.image.ref.name": "t"});
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [md]})).unwrap(),
    )
    .unwrap();
    let l = ido_testkit::oci_image::Layout {
        dir: layout,
        tag: "t".into(),
        digest: md["digest"].as_str().unwrap().into(),
        images: vec![],
        layer_bytes: 0,
    };
    ido_testkit::oci_image::push_layout(&l, reg, repo_tag)
        .await
        .unwrap();
}

/// The first `n` bytes of the file at `path` (a disk much larger than its image is not read).
fn disk_prefix(path: &Path, n: usize) -> Vec<u8> {
    use std::io::Read as _;
    let mut buf = vec![0; n];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    buf
}

/// The phase of DataVolume `ns/name` ("" before it has one).
async fn data_volume_phase(c: &Cluster, ns: &str, name: &str) -> String {
    c.kubectl(&["get", "dv", name, "-n", ns, "-o", "jsonpath={.status.phase}"])
        .await
        .unwrap_or_default()
}

/// Applies `manifest` in `ns`, plays its importer (the claim's volume bound to `volume`),
/// and waits for the DataVolume `name` to be Succeeded.
async fn import_example(c: &'static Cluster, ns: &str, name: &str, manifest: &str, root: &Path) {
    c.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], manifest)
        .await
        .unwrap();
    let (exit, log) = play(
        c,
        ns.to_string(),
        format!("importer-{name}"),
        name.to_string(),
        root.to_path_buf(),
        None,
    )
    .await;
    assert_eq!(exit, 0, "{name}'s importer:\n{log}");
    wait_for(&format!("{name} Succeeded"), async || {
        data_volume_phase(c, ns, name).await == "Succeeded"
    })
    .await;
}

#[tokio::test]
async fn cdis_other_examples_import_through_the_operator() {
    ido_testkit::install_crypto_provider();
    let c = Cluster::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (q, oracle) = write_qcow2(d);
    let qcow2_bytes = std::fs::read(&q).unwrap();

    install_crds(c).await;
    let vms = c.namespace("cdi-ex").await.unwrap();
    let other = c.namespace("cdi-ex-other").await.unwrap();
    let (op_ns, client) = chart_operator_client(
        c,
        "cdi-ex-op",
        json!({"diskImport": {"enabled": true, "upload": {"enabled": true}}, "cdiCompat": {"enabled": true}}),
        d,
    )
    .await;
    // The operator with CDI's kinds, the upload endpoint and the token webhook (as the
    // upload test has them).
    let served = Served::start(
        c,
        (client, &op_ns),
        (&vms, &[upload_token_hook(&["upload.cdi.kubevirt.io"])]),
        d,
        |s| s.cdi_compat = true,
    )
    .await;
    let (op_ca, endpoint) = (&served.ca, served.endpoint);

    // The servers: the qcow2 over plain HTTP (basic auth required), and behind HTTPS with a
    // certificate of the registry's test CA; the registry (TLS) holds it as a containerDisk.
    let reg = ido_testkit::registry::DockerRegistry::start(ido_testkit::registry::RegistryOptions {
        tls: true,
        auth: None,
    })
    .await
    .unwrap();
    let reg_ca = reg.ca().unwrap();
    push_container_disk(
        &reg,
        d,
        "containerdisks/cirros:0.4.0",
        "cirros.qcow2",
        &qcow2_bytes,
    )
    .await;
    let open = FileServer::start(
        qcow2_bytes.clone(),
        Behaviour {
            ranges: true,
            ..Default::default()
        },
    )
    .await;
    let upstream = open
        .url()
        .trim_start_matches("http://")
        .trim_end_matches("/image")
        .to_string();
    let (https, _front) = https_front(upstream, reg_ca, &d.join("front-certs")).await;
    let user = format!("cdi-{}", std::process::id());
    let password = format!("pw-{:x}", jiff::Timestamp::now().as_nanosecond());
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let guarded = FileServer::start(
        qcow2_bytes.clone(),
        Behaviour {
            authorization: Some(format!("Basic {}", b64(&format!("{user}:{password}")))),
            ..Default::default()
        },
    )
    .await;

    // cert-configmap.yaml, the certificate the registry's CA (indented as the example's).
    let ca_block: String = reg_ca.ca_pem().lines().map(|l| format!("    {l}\n")).collect();
    let certs = cdi_example(
        CDI_CERT_CONFIGMAP,
        &[(
            "    -----BEGIN CERTIFICATE-----\n    ... <base64 encoded cert> ...\n    -----END CERTIFICATE-----\n",
            &ca_block,
        )],
    );
    for ns in [&vms, &other] {
        c.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &certs)
            .await
            .unwrap();
    }

    // import-kubevirt-datavolume.yaml, its URL the HTTPS front, with `certConfigMap:
    // tls-certs` (cert-configmap.yaml's name; datavolumes.md's optional field), in the
    // other namespace (import-kubevirt-datavolume-secret.yaml has its name).
    let https_dir = d.join("pv-https");
    volume(
        c,
        &format!("{other}-https"),
        (&other, "my-data-volume"),
        &https_dir,
        Pv {
            bytes: 1 << 30,
            block: false,
            ..Pv::DIR
        },
    )
    .await;
    let https_url = format!("\"{https}/image\"\n         certConfigMap: tls-certs");
    let m = cdi_example(
        CDI_IMPORT,
        &[(
            "\"https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img\"",
            &https_url,
        )],
    );
    import_example(c, &other, "my-data-volume", &m, &d.join("pod-https")).await;
    assert_same(
        &disk_prefix(&https_dir.join("disk.img"), oracle.len()),
        &oracle,
        "the https import",
    );

    // endpoint-secret.yaml with the server's user and password (base64, as it says) and
    // import-kubevirt-datavolume-secret.yaml, its URL the guarded server's.
    let secret = cdi_example(
        CDI_ENDPOINT_SECRET,
        &[
            ("accessKeyId: \"\"", &format!("accessKeyId: \"{}\"", b64(&user))),
            (
                "secretKey:    \"\"",
                &format!("secretKey:    \"{}\"", b64(&password)),
            ),
        ],
    );
    c.kubectl_stdin(&["apply", "-n", &vms, "-f", "-"], &secret)
        .await
        .unwrap();
    let secret_dir = d.join("pv-secret");
    volume(
        c,
        &format!("{vms}-secret"),
        (&vms, "my-data-volume"),
        &secret_dir,
        Pv {
            bytes: 1 << 30,
            block: false,
            ..Pv::DIR
        },
    )
    .await;
    let m = cdi_example(
        CDI_IMPORT_SECRET,
        &[(
            "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img",
            &guarded.url(),
        )],
    );
    import_example(c, &vms, "my-data-volume", &m, &d.join("pod-secret")).await;
    assert_same(
        &disk_prefix(&secret_dir.join("disk.img"), oracle.len()),
        &oracle,
        "the import with endpoint-secret",
    );
    let seen = guarded.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| s.header("authorization").is_some()),
        "{seen:?}"
    );
    let logs = std::fs::read_to_string(d.join("pod-secret/container.err")).unwrap_or_default();
    assert!(!logs.contains(&password), "the password in the importer's log");

    // import-kubevirt-block-datavolume.yaml: its URL the open server's (the qcow2 instead of
    // an ISO), storageClassName "" (the class of the test's volume) instead of local.
    let block_dev = d.join("pv-block.dev");
    volume(
        c,
        &format!("{vms}-block"),
        (&vms, "import-kubevirt-block-datavolume"),
        &block_dev,
        Pv {
            bytes: 1 << 30,
            block: true,
            ..Pv::DIR
        },
    )
    .await;
    let m = cdi_example(
        CDI_IMPORT_BLOCK,
        &[
            (
                "http://distro.ibiblio.org/tinycorelinux/9.x/x86/release/Core-current.iso",
                &open.url(),
            ),
            ("storageClassName: local", "storageClassName: \"\""),
        ],
    );
    import_example(
        c,
        &vms,
        "import-kubevirt-block-datavolume",
        &m,
        &d.join("pod-block"),
    )
    .await;
    assert_same(
        &disk_prefix(&block_dev, oracle.len()),
        &oracle,
        "the Block import",
    );

    // import-archive-datavolume.yaml, its URL a server of a tar.gz of files (made by GNU tar):
    // the claim holds those files.
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("GeoLite2-Country_20260101")).unwrap();
    std::fs::write(
        tree.join("GeoLite2-Country_20260101/GeoLite2-Country.mmdb"),
        random_bytes(7, 3 << 20),
    )
    .unwrap();
    std::fs::write(
        tree.join("GeoLite2-Country_20260101/LICENSE.txt"),
        text_bytes(5000),
    )
    .unwrap();
    std::fs::write(tree.join("README"), b"CDI archive example\n").unwrap();
    let tgz = d.join("GeoLite2-Country.tar.gz");
    run(
        "tar",
        &[
            "-czf",
            tgz.to_str().unwrap(),
            "-C",
            tree.to_str().unwrap(),
            "GeoLite2-Country_20260101",
            "README",
        ],
    );
    let archive_server = FileServer::start(std::fs::read(&tgz).unwrap(), Behaviour::default()).await;
    let archive_dir = d.join("pv-archive");
    volume(
        c,
        &format!("{vms}-archive"),
        (&vms, "import-archive-datavolume"),
        &archive_dir,
        Pv {
            bytes: 1 << 30,
            block: false,
            ..Pv::DIR
        },
    )
    .await;
    let m = cdi_example(
        CDI_ARCHIVE,
        &[(
            "http://geolite.maxmind.com/download/geoip/database/GeoLite2-Country.tar.gz",
            &archive_server.url(),
        )],
    );
    import_example(c, &vms, "import-archive-datavolume", &m, &d.join("pod-archive")).await;
    let relative = |root: &Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        ido_testkit::files_below(root, &root.join(".none"))
            .into_iter()
            .map(|(p, b)| (p.strip_prefix(root).unwrap().to_path_buf(), b))
            .collect()
    };
    let want = relative(&tree);
    assert_eq!(want.len(), 3);
    assert!(
        relative(&archive_dir) == want,
        "the claim holds the archive's files"
    );

    // import-archive-block-datavolume.yaml, its URL the same: refused by its field (CDI
    // refuses it too: "ContentType Archive cannot have block volumeMode"); nothing made.
    let m = cdi_example(
        CDI_ARCHIVE_BLOCK,
        &[(
            "http://geolite.maxmind.com/download/geoip/database/GeoLite2-Country.tar.gz",
            &archive_server.url(),
        )],
    );
    c.kubectl_stdin(&["apply", "-n", &vms, "-f", "-"], &m)
        .await
        .unwrap();
    let message = async || {
        c.kubectl(&[
            "get",
            "dv",
            "import-archive-block-datavolume",
            "-n",
            &vms,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
        ])
        .await
        .unwrap_or_default()
    };
    wait_for("the archive-into-Block refusal", async || {
        message().await.starts_with("spec.storage.volumeMode: ")
    })
    .await;
    assert_eq!(
        data_volume_phase(c, &vms, "import-archive-block-datavolume").await,
        "Pending"
    );
    assert!(
        c.kubectl(&[
            "get",
            "diskimport,pvc",
            "import-archive-block-datavolume",
            "-n",
            &vms
        ])
        .await
        .is_err()
    );

    // registry-image-datavolume.yaml and registry-image-block-datavolume.yaml (the same name:
    // the Block one in the other namespace), their URL the test registry's containerDisk,
    // with `certConfigMap: tls-certs` (the registry's CA; the examples' public registry needs
    // none).
    let image = format!("docker://{}/containerdisks/cirros:0.4.0", reg.host());
    let registry_changes = [(
        "docker://kubevirt/fedora-cloud-registry-disk-demo\"\n",
        format!("{image}\"\n      certConfigMap: tls-certs\n"),
    )];
    let registry_changes: Vec<(&str, &str)> =
        registry_changes.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let reg_dir = d.join("pv-registry");
    volume(
        c,
        &format!("{vms}-registry"),
        (&vms, "registry-image-datavolume"),
        &reg_dir,
        Pv {
            bytes: 6 << 30,
            block: false,
            ..Pv::DIR
        },
    )
    .await;
    let m = cdi_example(CDI_REGISTRY, &registry_changes);
    import_example(c, &vms, "registry-image-datavolume", &m, &d.join("pod-registry")).await;
    assert_same(
        &disk_prefix(&reg_dir.join("disk.img"), oracle.len()),
        &oracle,
        "the registry import",
    );
    let reg_dev = d.join("pv-registry-block.dev");
    volume(
        c,
        &format!("{other}-registry"),
        (&other, "registry-image-datavolume"),
        &reg_dev,
        Pv {
            bytes: 5 << 30,
            block: true,
            ..Pv::DIR
        },
    )
    .await;
    let m = cdi_example(CDI_REGISTRY_BLOCK, &registry_changes);
    import_example(
        c,
        &other,
        "registry-image-datavolume",
        &m,
        &d.join("pod-registry-block"),
    )
    .await;
    assert_same(
        &disk_prefix(&reg_dev, oracle.len()),
        &oracle,
        "the Block registry import",
    );

    // vm-dv.yaml: no KubeVirt here, so its dataVolumeTemplate becomes the DataVolume KubeVirt
    // would make (its metadata and spec), its URL the open server's, storageClassName ""
    // instead of hdd.
    let vm: Value = yaml::from_str(&cdi_example(
        CDI_VM_DV,
        &[
            (
                "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img",
                &open.url(),
            ),
            ("storageClassName: hdd", "storageClassName: \"\""),
        ],
    ))
    .unwrap();
    let template = &vm["spec"]["dataVolumeTemplates"][0];
    let dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                    "metadata": template["metadata"], "spec": template["spec"]});
    let vm_dir = d.join("pv-vm");
    volume(
        c,
        &format!("{vms}-vm"),
        (&vms, "cirros-dv"),
        &vm_dir,
        Pv {
            bytes: 1 << 30,
            block: false,
            ..Pv::DIR
        },
    )
    .await;
    import_example(c, &vms, "cirros-dv", &dv.to_string(), &d.join("pod-vm")).await;
    assert_same(
        &disk_prefix(&vm_dir.join("disk.img"), oracle.len()),
        &oracle,
        "vm-dv's disk",
    );

    // upload-block-datavolume.yaml, unchanged, and a token asked with
    // upload-block-datavolume-token.yaml (its namespace the test's): the qcow2 POSTed to the
    // operator's upload endpoint lands in the Block claim.
    let up_dev = d.join("pv-upload-block.dev");
    volume(
        c,
        &format!("{vms}-upload"),
        (&vms, "upload-block-datavolume"),
        &up_dev,
        Pv {
            bytes: 500 << 20,
            block: true,
            ..Pv::DIR
        },
    )
    .await;
    c.kubectl_stdin(&["apply", "-n", &vms, "-f", "-"], CDI_UPLOAD_BLOCK)
        .await
        .unwrap();
    let kubelet = tokio::spawn(play(
        c,
        vms.clone(),
        "importer-upload-block-datavolume".into(),
        "upload-block-datavolume".into(),
        d.join("pod-upload"),
        Some(format!("127.0.0.{}", 2 + (std::process::id() + 1) % 250)),
    ));
    wait_for("UploadReady", async || {
        data_volume_phase(c, &vms, "upload-block-datavolume").await == "UploadReady"
    })
    .await;
    let request = cdi_example(
        CDI_UPLOAD_BLOCK_TOKEN,
        &[("namespace: default", &format!("namespace: {vms}"))],
    );
    let answer = c
        .kubectl_stdin(&["create", "--dry-run=server", "-o", "json", "-f", "-"], &request)
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let token = answer["status"]["token"].as_str().expect("a token").to_string();
    let http = op_ca.reqwest_client().unwrap();
    let r = http
        .post(format!("https://127.0.0.1:{}/v1beta1/upload", endpoint.port()))
        .bearer_auth(&token)
        .body(qcow2_bytes.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    let (exit, log) = tokio::time::timeout(Duration::from_secs(60), kubelet)
        .await
        .expect("the upload pod ends")
        .unwrap();
    assert!(status.is_success(), "{status}: {body}\nthe upload pod:\n{log}");
    assert_eq!(exit, 0, "{log}");
    wait_for("the upload Succeeded", async || {
        data_volume_phase(c, &vms, "upload-block-datavolume").await == "Succeeded"
    })
    .await;
    assert_same(&disk_prefix(&up_dev, oracle.len()), &oracle, "the Block upload");

    // example-cdiconfig.yaml, unchanged: ido serves no CDIConfig (CDI's own configuration:
    // the upload proxy's URL is the chart's), so kubectl says the kind is unknown.
    let applied = c
        .kubectl_output(&["apply", "-f", "-"], Some(CDI_CDICONFIG))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&applied.stderr);
    assert!(
        !applied.status.success() && err.contains("no matches for kind \"CDIConfig\""),
        "{err}"
    );

    served.stop(c).await;
}

#[tokio::test]
async fn cdis_example_claims_import_through_the_operator() {
    ido_testkit::install_crypto_provider();
    let c = Cluster::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vms, op, server, oracle) = cdi_operator(c, "cdi-pvc", d).await;

    // CDI's manifests/example/golden-pvc.yaml (its last version, before CDI's examples moved
    // to DataVolumes), its endpoint this test's server; no class: it binds to the PV below,
    // of none, as there is no default class here.
    let pv_dir = d.join("pv-golden");
    volume(
        c,
        &format!("{vms}-golden"),
        (&vms, "golden-pvc"),
        &pv_dir,
        Pv {
            bytes: 10 << 30,
            block: false,
            class: "",
        },
    )
    .await;
    let golden = format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: \"golden-pvc\"\n  labels:\n    app: containerized-data-importer\n  annotations:\n    cdi.kubevirt.io/storage.import.endpoint: \"{}\"   # Required. Format: (http||s3)://www.myUrl.com/path/of/data\n    cdi.kubevirt.io/storage.import.secretName: \"\" # Optional. The name of the secret containing credentials for the data source\nspec:\n  accessModes:\n  - ReadWriteOnce\n  resources:\n    requests:\n      storage: 10Gi\n  # Optional: Set the storage class or omit to accept the default\n  # storageClassName: local\n",
        server.url()
    );
    c.kubectl_stdin(&["apply", "-n", &vms, "-f", "-"], &golden)
        .await
        .unwrap();
    let get = async |args: &[&str]| c.kubectl(args).await.unwrap_or_default();
    let annotation = async |claim: &str, key: &str| {
        let path = format!("jsonpath={{.metadata.annotations.{}}}", key.replace('.', "\\."));
        get(&["get", "pvc", claim, "-n", &vms, "-o", &path]).await
    };
    wait_for("the importer scheduled", async || {
        annotation("golden-pvc", "cdi.kubevirt.io/storage.pod.phase").await == "Pending"
    })
    .await;
    let (exit, log) = play(
        c,
        vms.clone(),
        "importer-golden-pvc".into(),
        "golden-pvc".into(),
        d.join("importer"),
        None,
    )
    .await;
    assert_eq!(exit, 0, "{log}");
    wait_for("the claim's import Succeeded", async || {
        annotation("golden-pvc", "cdi.kubevirt.io/storage.pod.phase").await == "Succeeded"
    })
    .await;

    // The disk is in the user's claim: qemu-img's conversion.
    let disk = pv_dir.join("disk.img");
    assert_same(&std::fs::read(&disk).unwrap(), &oracle, "the claim's disk");

    // CDI's status annotations; the claim is still the user's (no owner, its spec as given).
    let pvc = c
        .kubectl_json(&["get", "pvc", "golden-pvc", "-n", &vms])
        .await
        .unwrap();
    let a = &pvc["metadata"]["annotations"];
    assert_eq!(a["cdi.kubevirt.io/storage.pod.phase"], "Succeeded", "{a}");
    assert_eq!(a["cdi.kubevirt.io/storage.pod.restarts"], "0", "{a}");
    assert_eq!(a["cdi.kubevirt.io/storage.condition.running"], "false", "{a}");
    assert_eq!(
        a["cdi.kubevirt.io/storage.condition.running.reason"], "Completed",
        "{a}"
    );
    assert!(
        a["cdi.kubevirt.io/storage.import.importPodName"]
            .as_str()
            .is_some_and(|p| p.starts_with("importer-golden-pvc-")),
        "{a}"
    );
    assert!(pvc["metadata"]["ownerReferences"].is_null(), "{pvc}");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "10Gi");
    assert_eq!(pvc["status"]["phase"], "Bound");
    let di = c
        .kubectl_json(&["get", "diskimport", "golden-pvc", "-n", &vms])
        .await
        .unwrap();
    assert_eq!(di["status"]["phase"], "Succeeded", "{di}");
    assert_eq!(
        di["metadata"]["ownerReferences"][0]["kind"],
        "PersistentVolumeClaim"
    );
    assert_eq!(
        di["metadata"]["ownerReferences"][0]["uid"],
        pvc["metadata"]["uid"]
    );
    assert_eq!(a["ido.dev/disk-import-uid"], di["metadata"]["uid"], "{a}");
    let events = get(&[
        "get",
        "events",
        "-n",
        &vms,
        "--field-selector",
        "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=golden-pvc",
        "-o",
        "json",
    ])
    .await;
    assert!(events.contains("ImportSucceeded"), "{events}");

    // Deleting the claim's DiskImport never deletes the claim, and a complete claim is not
    // imported into again.
    c.kubectl(&["delete", "diskimport", "golden-pvc", "-n", &vms])
        .await
        .unwrap();
    wait_for("the DiskImport gone", async || {
        c.kubectl(&["get", "diskimport", "golden-pvc", "-n", &vms])
            .await
            .is_err()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get(&[
            "get",
            "pvc",
            "golden-pvc",
            "-n",
            &vms,
            "-o",
            "jsonpath={.status.phase}"
        ])
        .await,
        "Bound"
    );
    assert!(
        c.kubectl(&["get", "diskimport", "golden-pvc", "-n", &vms])
            .await
            .is_err()
    );
    assert_same(&std::fs::read(&disk).unwrap(), &oracle, "the claim's disk, kept");

    // What ido cannot do is refused by its annotation and value, and nothing is made.
    let gcs = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: from-gcs\n  annotations:\n    cdi.kubevirt.io/storage.import.source: gcs\n    cdi.kubevirt.io/storage.import.endpoint: gs://bucket/disk.img\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n";
    c.kubectl_stdin(&["apply", "-n", &vms, "-f", "-"], gcs)
        .await
        .unwrap();
    wait_for("the refusal", async || {
        annotation("from-gcs", "cdi.kubevirt.io/storage.condition.running.message")
            .await
            .starts_with("cdi.kubevirt.io/storage.import.source: \"gcs\" is not supported")
    })
    .await;
    assert_eq!(
        annotation("from-gcs", "cdi.kubevirt.io/storage.condition.running.reason").await,
        "InvalidSpec"
    );
    assert!(
        get(&[
            "get",
            "events",
            "-n",
            &vms,
            "--field-selector",
            "involvedObject.name=from-gcs",
            "-o",
            "json"
        ])
        .await
        .contains("InvalidSpec")
    );
    assert!(
        c.kubectl(&["get", "diskimport", "from-gcs", "-n", &vms])
            .await
            .is_err()
    );
    op.stop().await;
}
