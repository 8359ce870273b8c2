//! `ido operator` as the Helm chart deploys it, on a real control plane: `helm install`, then
//! this test plays the kubelet for the chart's Deployment (no kubelet runs here): it writes
//! the Secrets and ConfigMaps where the Deployment's volumeMounts say, sets its env, and runs
//! the `ido` binary with the Deployment's args, authenticated by a TokenRequest token of the
//! chart's ServiceAccount, so the chart's RBAC is what the API server enforces. A Release
//! applied with kubectl becomes a template in the vCenter simulator from an OVA in SeaweedFS,
//! and deleting it removes the template and the NodeImage.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use ido_testkit::{
    Cluster,
    oracle::oracle_list_vms,
    ova::OvaFixture,
    seaweed::{PUBLIC_BUCKET, SeaweedFs},
    vcsim::{Vcsim, VcsimOptions},
};
use serde_json::{Value, json};

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

async fn json_of(c: &Cluster, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    serde_json::from_str(&c.kubectl(&args).await.unwrap()).unwrap()
}

/// The data of key `key` of the ConfigMap or Secret behind `volume`.
async fn volume_file(c: &Cluster, volume: &Value, key: &str) -> Vec<u8> {
    use base64::Engine as _;
    if let Some(name) = volume["configMap"]["name"].as_str() {
        let cm = json_of(c, &["get", "configmap", name, "-n", OPERATOR_NS]).await;
        cm["data"][key].as_str().unwrap().as_bytes().to_vec()
    } else {
        let name = volume["secret"]["secretName"].as_str().unwrap();
        let s = json_of(c, &["get", "secret", name, "-n", OPERATOR_NS]).await;
        base64::engine::general_purpose::STANDARD
            .decode(s["data"][key].as_str().unwrap())
            .unwrap()
    }
}

/// A loopback address that was free a moment ago.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The kubelet's part for the chart's Deployment: its files under `root`, its args with the
/// mount paths moved under `root` (and its listeners on free loopback ports), its env, and
/// a kubeconfig holding a token of its ServiceAccount. Returns the running operator.
async fn run_deployment(c: &Cluster, root: &Path) -> tokio::process::Child {
    let deploy = json_of(
        c,
        &[
            "get",
            "deployment",
            "-n",
            OPERATOR_NS,
            "-l",
            "app.kubernetes.io/name=image-distribution-operator",
        ],
    )
    .await;
    let pod = &deploy["items"][0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mut mount_paths = vec![];
    for m in container["volumeMounts"].as_array().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        let key = m["subPath"].as_str().expect("the chart mounts single keys");
        let data = volume_file(c, volumes[m["name"].as_str().unwrap()], key).await;
        let file = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, data).unwrap();
        mount_paths.push(path.to_string());
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            if let Some(flag) = ["--metrics-bind-address=", "--health-probe-bind-address="]
                .into_iter()
                .find(|f| a.starts_with(f))
            {
                return format!("{flag}{}", free_addr());
            }
            mount_paths.iter().fold(a.to_string(), |a, p| {
                a.replace(p, &root.join(p.trim_start_matches('/')).display().to_string())
            })
        })
        .collect();
    let sa = pod["serviceAccountName"].as_str().unwrap();
    let token = c.token(OPERATOR_NS, sa).await.unwrap();
    let kubeconfig = root.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: sa, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: sa, namespace: {OPERATOR_NS}}}}}]\ncurrent-context: c\n",
            c.server().unwrap(),
            c.dir().join("pki/ca.crt").display()
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"));
    cmd.args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(root.join("operator.log")).unwrap())
        .stderr(std::fs::File::create(root.join("operator.err")).unwrap())
        .kill_on_drop(true);
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "image-distribution-operator-0".to_string(),
            Some("metadata.namespace") => OPERATOR_NS.to_string(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => e["value"].as_str().unwrap().to_string(),
        };
        cmd.env(name, value);
    }
    cmd.spawn().unwrap()
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
    let mut operator = run_deployment(&c, &root).await;
    let log = root.join("operator.err");

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
    let events = json_of(&c, &["get", "events", "-n", NS]).await;
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(reasons.contains(&"Uploaded"), "{reasons:?}");
    let ni = json_of(
        &c,
        &["get", "nodeimage", &ni_name, "-n", NS, "--show-managed-fields"],
    )
    .await;
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
    let pid = operator.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), operator.wait())
        .await
        .expect("the operator stops on SIGTERM")
        .unwrap();
    let logs =
        std::fs::read_to_string(&log).unwrap() + &std::fs::read_to_string(root.join("operator.log")).unwrap();
    assert!(status.success(), "{status}: {logs}");
    assert!(!logs.contains(PASSWORD), "the password reached the log");
    let all_events = c.kubectl(&["get", "events", "-A", "-o", "json"]).await.unwrap();
    assert!(!all_events.contains(PASSWORD), "the password reached an event");
}
