//! `ido operator` as the Helm chart deploys it, on a real control plane: `helm install`, then
//! this test plays the kubelet for the chart's Deployment (no kubelet runs here; see
//! `ido_testkit::kubelet`): the Secrets and ConfigMaps written where the Deployment's
//! volumeMounts say, its env, the `ido` binary run with the Deployment's args, authenticated
//! by a TokenRequest token of the chart's ServiceAccount, so the chart's RBAC is what the API
//! server enforces. A Release
//! applied with kubectl becomes a template in the vCenter simulator from an OVA in SeaweedFS,
//! and deleting it removes the template and the NodeImage; the same for Proxmox VE and Cloud
//! Director (their fakes). A DiskImport is imported for real into a hostPath
//! PersistentVolume, the test playing the importer Pod's kubelet too.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ido_testkit::{
    Cluster,
    kubelet::{RunningPod, run_deployment},
    oracle::oracle_list_vms,
    ova::OvaFixture,
    seaweed::{PUBLIC_BUCKET, SeaweedFs},
    vcsim::{Vcsim, VcsimOptions},
};
use serde_json::json;

const NS: &str = "giantswarm";
const OPERATOR_NS: &str = "ido-system";
const RELEASE: &str = "vsphere-33.0.0";
const IMAGE: &str = "flatcar-stable-4000.0.0-kube-1.33.1-tooling-1.20.0-gs";
const KEY: &str =
    "capv/flatcar-stable-4000.0.0-kube-1.33.1-tooling-1.20.0-gs/flatcar-stable-4000.0.0-kube-v1.33.1.ova";
const PASSWORD: &str = "deployed-pw-must-not-leak-71c";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/image-distribution-operator")
}

/// Installs the chart with `values` on `c` (the Release CRD of the dev CRDs and the
/// NodeImage namespace first), then plays the kubelet for its Deployment with the `ido`
/// binary, its files under `dir/pod`.
async fn deploy(c: &Cluster, values: &serde_json::Value, dir: &Path) -> RunningPod {
    install(c, values, dir).await;
    start(c, dir).await
}

/// `helm install` of the chart with `values` (the Release CRD and the NodeImage namespace
/// first).
async fn install(c: &Cluster, values: &serde_json::Value, dir: &Path) {
    std::fs::write(dir.join("values.json"), values.to_string()).unwrap();
    c.kubectl(&["create", "namespace", NS]).await.unwrap();
    let dev_crd = chart().join("../dev-crds/releases.release.giantswarm.io.yaml");
    c.kubectl(&["apply", "-f", &dev_crd.display().to_string()])
        .await
        .unwrap();
    c.helm(&[
        "install",
        "image-distribution-operator",
        &chart().display().to_string(),
        "--namespace",
        OPERATOR_NS,
        "--create-namespace",
        "--values",
        &dir.join("values.json").display().to_string(),
    ])
    .await
    .unwrap();
}

/// Plays the kubelet for the chart's Deployment with the `ido` binary, its files under
/// `dir/pod`.
async fn start(c: &Cluster, dir: &Path) -> RunningPod {
    run_deployment(
        c,
        OPERATOR_NS,
        "app.kubernetes.io/name=image-distribution-operator",
        Path::new(env!("CARGO_BIN_EXE_ido")),
        &dir.join("pod"),
    )
    .await
    .unwrap()
}

async fn wait_for(what: &str, log: &Path, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "timed out waiting for {what}; operator log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test]
async fn the_chart_deployed_operator_distributes_and_removes_a_node_image() {
    let (c, s3, vc) = tokio::join!(
        Cluster::start(),
        SeaweedFs::shared(),
        Vcsim::start(VcsimOptions::default())
    );
    let (c, s3, vc) = (c.unwrap(), s3.unwrap(), vc.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ova = d.join("x.ova");
    OvaFixture::write(&ova, "flatcar", &[("disk-0.vmdk", 123_456)], "nic0")
        .await
        .unwrap();
    s3.put_object(PUBLIC_BUCKET, KEY, ova.as_path()).await.unwrap();

    let values = json!({
        "namespace": NS,
        "imageRetentionPeriod": "0",
        "s3": {"bucket": PUBLIC_BUCKET, "region": "us-east-1", "endpoint": s3.endpoint()},
        "vsphere": {
            "enabled": true,
            "caBundle": vc.ca_pem().unwrap(),
            "credentials": {"vcenter": vc.url(), "username": "someone", "password": PASSWORD},
            "locations": {"loc1": {"datacenter": "DC0", "datastore": "LocalDS_0", "cluster": "DC0_C0", "folder": "vm"}},
        },
    });
    let mut operator = deploy(&c, &values, d).await;
    let log = operator.log.clone();

    let release = format!(
        "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata: {{name: {RELEASE}}}\nspec:\n  components:\n  - {{name: flatcar, version: 4000.0.0}}\n  - {{name: kubernetes, version: v1.33.1}}\n  - {{name: os-tooling, version: v1.20.0}}\n"
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &release).await.unwrap();
    let ni_name = format!("capv-{IMAGE}");
    wait_for("an Available NodeImage", &log, async || {
        c.kubectl(&[
            "get",
            "nodeimage",
            &ni_name,
            "-n",
            NS,
            "-o",
            "jsonpath={.status.state}",
        ])
        .await
        .is_ok_and(|s| s == "Available")
    })
    .await;

    // What a user sees: the printer columns, the Events, the template in vCenter.
    let table = c.kubectl(&["get", "nodeimages", "-n", NS]).await.unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PROVIDER", "STATE", "RELEASES", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..4],
        [ni_name.as_str(), "capv", "Available", &format!("[\"{RELEASE}\"]")],
        "{table}"
    );
    let events = c.kubectl_json(&["get", "events", "-n", NS]).await.unwrap();
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(reasons.contains(&"Uploaded"), "{reasons:?}");
    let ni = c
        .kubectl_json(&["get", "nodeimage", &ni_name, "-n", NS, "--show-managed-fields"])
        .await
        .unwrap();
    assert!(
        ni["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["manager"] == "ido" && m["operation"] == "Apply" && m["subresource"] == "status"),
        "status through the status subresource: {ni}"
    );
    let vms = oracle_list_vms(&vc, "/DC0/vm").await.unwrap();
    assert!(
        vms.iter().any(|v| v["name"] == IMAGE && v["template"] == true),
        "{vms:?}"
    );

    // The Release goes: the template is removed, then the NodeImage and the Release.
    c.kubectl(&["delete", "release", RELEASE, "--wait=false"])
        .await
        .unwrap();
    wait_for("Release and NodeImage gone", &log, async || {
        c.kubectl(&["get", "nodeimages", "-n", NS, "-o", "name"])
            .await
            .is_ok_and(|s| s.trim().is_empty())
            && c.kubectl(&["get", "releases", "-o", "name"])
                .await
                .is_ok_and(|s| s.trim().is_empty())
    })
    .await;
    let vms = oracle_list_vms(&vc, "/DC0/vm").await.unwrap();
    assert!(!vms.iter().any(|v| v["name"] == IMAGE), "{vms:?}");

    // SIGTERM (as the kubelet stops a pod): a clean exit.
    let pid = operator.child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), operator.child.wait())
        .await
        .expect("the operator stops on SIGTERM")
        .unwrap();
    let logs = operator.logs();
    assert!(status.success(), "{status}: {logs}");
    assert!(!logs.contains(PASSWORD), "the password reached the log");
    let all_events = c.kubectl(&["get", "events", "-A", "-o", "json"]).await.unwrap();
    assert!(!all_events.contains(PASSWORD), "the password reached an event");
}

/// A DiskImport through the chart-deployed operator, for real: the PersistentVolume binder
/// binds the claim to a hostPath volume in a temporary directory, the job controller makes
/// the importer Pod, and this test plays its kubelet (`ido_testkit::kubelet::run_pod`): the
/// Pod's own `ido import` command runs against the volume's directory. The disk equals
/// qemu-img's conversion of the same qcow2; deleting the DiskImport takes the claim, the Job
/// and the Pod with it.
#[tokio::test]
async fn the_chart_deployed_operator_imports_a_disk_into_a_host_path_volume() {
    use ido_testkit::kubelet::run_pod;
    let (c, s3) = tokio::join!(Cluster::start(), SeaweedFs::shared());
    let (c, s3) = (c.unwrap(), s3.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A qcow2 with data in a few places, as qemu-img makes it.
    let raw = d.join("disk.raw");
    let mut bytes = vec![0u8; 24 << 20];
    for (i, b) in bytes[..(3 << 20)].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    bytes[(16 << 20)..(17 << 20)].fill(0x5a);
    std::fs::write(&raw, &bytes).unwrap();
    let qcow2 = d.join("disk.qcow2");
    let converted = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(converted.success());
    let oracle = d.join("oracle.raw");
    let converted = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&qcow2)
        .arg(&oracle)
        .status()
        .unwrap();
    assert!(converted.success());
    let key = format!("disks/{}/disk.qcow2", std::process::id());
    s3.put_object(PUBLIC_BUCKET, &key, qcow2.as_path()).await.unwrap();

    let values = json!({"namespace": NS, "diskImport": {"enabled": true}});
    let operator = deploy(&c, &values, d).await;
    let log = operator.log.clone();

    // The volume: a hostPath directory, reserved for the claim the DiskImport makes.
    let vms = c.namespace("vms").await.unwrap();
    let pv_dir = d.join("pv");
    std::fs::create_dir_all(&pv_dir).unwrap();
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("{vms}-disk")},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": pv_dir.display().to_string(), "type": "Directory"},
            "claimRef": {"namespace": vms, "name": "disk"},
        },
    });
    c.kubectl_stdin(&["apply", "-f", "-"], &pv.to_string())
        .await
        .unwrap();
    let di = format!(
        "apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: disk, namespace: {vms}}}\nspec:\n  source:\n    s3: {{url: \"{}/{PUBLIC_BUCKET}/{key}\"}}\n  storage: {{size: 64Mi, storageClassName: \"\"}}\n",
        s3.endpoint()
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &di).await.unwrap();

    let get = async |what: &[&str]| c.kubectl(what).await.unwrap_or_default();
    wait_for("the claim bound and the importer Pod", &log, async || {
        get(&["get", "pvc", "disk", "-n", &vms, "-o", "jsonpath={.status.phase}"]).await == "Bound"
            && !get(&[
                "get",
                "pods",
                "-n",
                &vms,
                "-l",
                "job-name=importer-disk",
                "-o",
                "name",
            ])
            .await
            .trim()
            .is_empty()
    })
    .await;
    let pod = get(&[
        "get",
        "pods",
        "-n",
        &vms,
        "-l",
        "job-name=importer-disk",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])
    .await;
    let exit = run_pod(
        &c,
        &vms,
        &pod,
        Path::new(env!("CARGO_BIN_EXE_ido")),
        &d.join("importer"),
    )
    .await
    .unwrap();
    let importer_log = std::fs::read_to_string(d.join("importer/container.err")).unwrap_or_default();
    assert_eq!(exit, 0, "the importer failed:\n{importer_log}");
    wait_for("the DiskImport Ready", &log, async || {
        get(&[
            "get",
            "diskimport",
            "disk",
            "-n",
            &vms,
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await
            == "Succeeded"
    })
    .await;
    let di = c
        .kubectl_json(&["get", "diskimport", "disk", "-n", &vms])
        .await
        .unwrap();
    let ready = di["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["status"], "True", "{di}");
    assert_eq!(ready["observedGeneration"], di["metadata"]["generation"], "{di}");
    let got = std::fs::read(pv_dir.join("disk.img")).unwrap();
    let want = std::fs::read(&oracle).unwrap();
    assert!(got.len() >= want.len(), "{} < {}", got.len(), want.len());
    assert!(
        got[..want.len()] == want[..],
        "the disk differs from qemu-img's conversion"
    );
    assert!(got[want.len()..].iter().all(|&b| b == 0), "past the image: zeros");

    // The DiskImport goes: its claim, Job and Pod go with it (owner references).
    c.kubectl(&["delete", "diskimport", "disk", "-n", &vms])
        .await
        .unwrap();
    wait_for("claim, Job and Pod gone", &log, async || {
        get(&["get", "pvc,jobs,pods", "-n", &vms, "-o", "name"])
            .await
            .trim()
            .is_empty()
    })
    .await;
    assert!(!operator.logs().contains("panicked"));
}

/// The same, for Proxmox VE and VMware Cloud Director (their fakes: no real server runs
/// here): the chart-deployed operator turns a `proxmox-…` and a `cloud-director-…` Release
/// into a template in each, and their deletion removes both, NodeImages included.
#[tokio::test]
async fn the_chart_deployed_operator_distributes_to_proxmox_and_cloud_director() {
    use ido_io::s3::node_image_key;
    use ido_testkit::fakes::{
        proxmox::FakeProxmox,
        vcd::{FakeVcd, FakeVcdOptions},
    };
    const IMG: &str = "flatcar-stable-4081.2.0-kube-1.32.3-tooling-1.24.0-gs";
    let (c, s3, pve, vcd) = tokio::join!(
        Cluster::start(),
        SeaweedFs::shared(),
        FakeProxmox::start(),
        FakeVcd::start(FakeVcdOptions::default())
    );
    let (c, s3, pve, vcd) = (c.unwrap(), s3.unwrap(), pve.unwrap(), vcd.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ova = d.join("n.ova");
    OvaFixture::write(&ova, "flatcar", &[("disk-0.vmdk", 150_000)], "nic0")
        .await
        .unwrap();
    s3.put_object(
        PUBLIC_BUCKET,
        &node_image_key("capvcd", IMG, "ova"),
        ova.as_path(),
    )
    .await
    .unwrap();
    let qcow = d.join("n.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success());
    s3.put_object(
        PUBLIC_BUCKET,
        &node_image_key("capmox", IMG, "qcow2"),
        qcow.as_path(),
    )
    .await
    .unwrap();

    let p = pve.options();
    let v = FakeVcdOptions::default();
    let values = json!({
        "namespace": NS,
        "imageRetentionPeriod": "0",
        "s3": {"bucket": PUBLIC_BUCKET, "region": "us-east-1", "endpoint": s3.endpoint()},
        "proxmox": {
            "enabled": true, "caBundle": pve.ca_pem(),
            "credentials": {"url": pve.url(), "user": p.userid.split('@').next().unwrap(),
                            "realm": p.userid.split('@').nth(1).unwrap(), "tokenId": p.token_id, "secret": p.secret},
            "locations": {"pve1": {"node": "pve1", "storagePool": "local-lvm", "bridge": "vmbr0"}},
        },
        "vcd": {
            "enabled": true, "caBundle": vcd.ca_pem(),
            "credentials": {"url": vcd.url(), "username": v.username, "password": v.password, "org": "org1"},
            "locations": {"cat1": {"catalog": "cat1", "hardwareVersion": 19}},
        },
    });
    let operator = deploy(&c, &values, d).await;
    let log = operator.log.clone();

    for r in ["proxmox-32.0.0", "cloud-director-32.0.0"] {
        let release = format!(
            "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata: {{name: {r}}}\nspec:\n  components:\n  - {{name: flatcar, version: 4081.2.0}}\n  - {{name: kubernetes, version: v1.32.3}}\n  - {{name: os-tooling, version: 1.24.0}}\n"
        );
        c.kubectl_stdin(&["apply", "-f", "-"], &release).await.unwrap();
    }
    let state = async |ni: &str| {
        c.kubectl(&["get", "nodeimage", ni, "-n", NS, "-o", "jsonpath={.status.state}"])
            .await
            .unwrap_or_default()
    };
    let (mox, cd) = (format!("capmox-{IMG}"), format!("capvcd-{IMG}"));
    wait_for("both NodeImages Available", &log, async || {
        state(&mox).await == "Available" && state(&cd).await == "Available"
    })
    .await;
    assert!(pve.vms_on("pve1").iter().any(|v| v.name == IMG && v.template));
    assert!(vcd.templates("cat1").iter().any(|t| t.name == IMG));

    c.kubectl(&[
        "delete",
        "releases",
        "proxmox-32.0.0",
        "cloud-director-32.0.0",
        "--wait=false",
    ])
    .await
    .unwrap();
    wait_for("NodeImages and templates gone", &log, async || {
        c.kubectl(&["get", "nodeimages", "-n", NS, "-o", "name"])
            .await
            .is_ok_and(|s| s.trim().is_empty())
            && pve.vms().is_empty()
            && vcd.templates("cat1").is_empty()
    })
    .await;
    let logs = operator.logs();
    assert!(
        !logs.contains(&p.secret) && !logs.contains(&v.password),
        "a secret reached the log"
    );
}

/// image-operator's users switch by installing the chart: with `imageOperator.enabled` the
/// chart installs the `images.skopeo.io` CRD and the grants, and an `Image` exactly as
/// image-operator's README writes it, in a namespace of its own, is synced by the deployed
/// operator: each tag onto itself, `kubectl get images` showing the phase. Its destination
/// says `useAwsIRSA`: this test plays EKS's pod identity webhook (the ServiceAccount's
/// `eks.amazonaws.com/role-arn` annotation becomes the pod's `AWS_ROLE_ARN` and web identity
/// token file), and the test kit's STS and ECR stand-ins issue the registry's credentials.
#[tokio::test]
async fn the_chart_deployed_operator_serves_image_operators_images() {
    use ido_testkit::{
        aws::AwsStandIn,
        oci_image::{build_layout, push_layout},
        registry::{DockerRegistry, RegistryOptions, skopeo_raw},
    };
    const ROLE: &str = "arn:aws:iam::123456789012:role/ido-mirror";
    let aws = AwsStandIn::start(ROLE, "projected-sa-token").unwrap();
    let (c, src, dst) = tokio::join!(
        Cluster::start(),
        DockerRegistry::start(RegistryOptions::default()),
        DockerRegistry::start(RegistryOptions {
            tls: false,
            auth: Some(aws.registry_credentials()),
        })
    );
    let (c, src, dst) = (c.unwrap(), src.unwrap(), dst.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut digests = vec![];
    for (i, tag) in ["v2.13.1", "v2.13.2", "v2.14.0"].into_iter().enumerate() {
        let l = build_layout(&d.join(tag), tag, &["linux/amd64"], 1, 2048, 60 + i as u64)
            .await
            .unwrap();
        push_layout(&l, &src, &format!("argoproj/argocd:{tag}"))
            .await
            .unwrap();
        digests.push((tag, l.digest));
    }

    install(
        &c,
        &json!({
            "imageOperator": {"enabled": true},
            "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": ROLE}},
        }),
        d,
    )
    .await;
    // EKS's pod identity webhook: the role of the ServiceAccount's annotation and a token.
    let sa = c
        .kubectl_json(&[
            "get",
            "serviceaccount",
            "image-distribution-operator",
            "-n",
            OPERATOR_NS,
        ])
        .await
        .unwrap();
    let role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        .as_str()
        .unwrap()
        .to_string();
    let token = d.join("eks-token");
    std::fs::write(&token, "projected-sa-token").unwrap();
    let mut set_env = vec![
        "set".to_string(),
        "env".into(),
        "deployment/image-distribution-operator".into(),
        "-n".into(),
        OPERATOR_NS.into(),
    ];
    for (k, v) in aws.env(&token, "eu-west-2") {
        set_env.push(format!("{k}={}", if k == "AWS_ROLE_ARN" { &role } else { &v }));
    }
    c.kubectl(&set_env.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .unwrap();
    let operator = start(&c, d).await;
    let log = operator.log.clone();

    c.kubectl(&["create", "namespace", "apps"]).await.unwrap();
    let image = format!(
        "apiVersion: skopeo.io/v1alpha1\nkind: Image\nmetadata: {{name: argocd, namespace: apps}}\nspec:\n  allowCandidateRelease: false\n  mode: OnceByTag\n  frequency: \"1h\"\n  source: {{name: {}/argoproj/argocd, version: v2.13.x, useAwsIRSA: false, tlsVerify: false}}\n  destination: {{name: {}/mirror/argocd, version: v2.13.x, useAwsIRSA: true, tlsVerify: false}}\n",
        src.host(),
        dst.host()
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &image).await.unwrap();
    wait_for("a COMPLETED Image", &log, async || {
        c.kubectl(&[
            "get",
            "image.skopeo.io",
            "argocd",
            "-n",
            "apps",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await
        .is_ok_and(|s| s == "COMPLETED")
    })
    .await;
    for (tag, digest) in &digests[..2] {
        let (_, got) = skopeo_raw(&dst, &format!("mirror/argocd:{tag}"), d)
            .await
            .unwrap();
        assert_eq!(&got, digest, "{tag} onto itself");
    }
    assert!(skopeo_raw(&dst, "mirror/argocd:v2.14.0", d).await.is_err());
    let i = c
        .kubectl_json(&["get", "image.skopeo.io", "argocd", "-n", "apps"])
        .await
        .unwrap();
    assert_eq!(
        i["status"]["tagAlreadySynced"],
        json!(["v2.13.2", "v2.13.1"]),
        "{i}"
    );
    assert_eq!(i["status"]["lastGenerationSeen"], i["metadata"]["generation"]);
    assert_eq!(i["status"]["history"].as_array().unwrap().len(), 1);
    let table = c
        .kubectl(&["get", "images.skopeo.io", "-n", "apps"])
        .await
        .unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SOURCE",
            "VERSION",
            "DESTINATION",
            "MODE",
            "TAGS",
            "PHASE",
            "LAST",
            "SYNC",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!((row[5], row[6]), ("2/2", "COMPLETED"), "{table}");
    let events = c
        .kubectl(&["get", "events", "-n", "apps", "-o", "json"])
        .await
        .unwrap();
    assert!(events.contains("\"Synced\""), "{events}");
    assert_eq!(aws.count("AssumeRoleWithWebIdentity"), 1);
    let logs = operator.logs();
    let all_events = c.kubectl(&["get", "events", "-A", "-o", "json"]).await.unwrap();
    for secret in [aws.ecr_password(), "projected-sa-token"] {
        assert!(!logs.contains(secret) && !all_events.contains(secret) && !i.to_string().contains(secret));
    }
}
