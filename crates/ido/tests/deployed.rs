//! `ido operator` as the Helm chart deploys it, on a real control plane: `helm install`, then
//! this test plays the kubelet for the chart's Deployment (no kubelet runs here; see
//! `ido_testkit::kubelet`): the Secrets and ConfigMaps written where the Deployment's
//! volumeMounts say, its env, the `ido` binary run with the Deployment's args, authenticated
//! by a TokenRequest token of the chart's ServiceAccount, so the chart's RBAC is what the API
//! server enforces. A Release
//! applied with kubectl becomes a template in the vCenter simulator from an OVA in SeaweedFS,
//! and deleting it removes the template and the NodeImage.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ido_testkit::{
    Cluster,
    kubelet::run_deployment,
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
    std::fs::write(d.join("values.json"), values.to_string()).unwrap();
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
        &d.join("values.json").display().to_string(),
    ])
    .await
    .unwrap();

    let root = d.join("pod");
    let mut operator = run_deployment(
        &c,
        OPERATOR_NS,
        "app.kubernetes.io/name=image-distribution-operator",
        Path::new(env!("CARGO_BIN_EXE_ido")),
        &root,
    )
    .await
    .unwrap();
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
