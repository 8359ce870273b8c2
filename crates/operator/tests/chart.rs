//! The Helm chart (`charts/image-distribution-operator`): it renders to valid manifests,
//! its configuration is accepted by the operator's own config loader, and its CRDs are the
//! ones generated from `ido-api`.
//!
//! Regenerate the CRD files after changing the API types:
//! `IDO_REGENERATE=1 cargo test -p ido-operator --test chart`.

#[allow(dead_code)]
#[path = "support/helm/mod.rs"]
mod helm;

use std::path::{Path, PathBuf};

use ido_controllers::config::Config;
use serde_json::{Value, json};

fn charts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts")
}

fn chart() -> helm::Chart {
    helm::Chart::load(&charts_dir().join("image-distribution-operator"))
}

/// Where each CRD's YAML lives: the chart installs NodeImage, ImageSync and DiskImport; Giant Swarm's
/// clusters own the Release CRD, so ours (for tests and demos) stays outside the chart.
fn crd_path(name: &str) -> PathBuf {
    match name {
        "nodeimages.image.giantswarm.io" | "imagesyncs.ido.dev" | "diskimports.ido.dev" => charts_dir()
            .join("image-distribution-operator/crds")
            .join(format!("{name}.yaml")),
        _ => charts_dir().join("dev-crds").join(format!("{name}.yaml")),
    }
}

const HEADER: &str =
    "# Generated from the ido-api types: IDO_REGENERATE=1 cargo test -p ido-operator --test chart\n";

#[test]
fn crds_are_generated_from_the_api_types() {
    let regenerate = std::env::var("IDO_REGENERATE").is_ok_and(|v| v == "1");
    for crd in ido_api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let want = format!("{HEADER}{}", yaml::to_string(&crd).unwrap());
        let path = crd_path(&name);
        if regenerate {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale: run IDO_REGENERATE=1 cargo test -p ido-operator --test chart",
            path.display()
        );
    }
    let mut in_chart: Vec<String> = std::fs::read_dir(charts_dir().join("image-distribution-operator/crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_chart.sort();
    assert_eq!(
        in_chart,
        [
            "diskimports.ido.dev.yaml",
            "imagesyncs.ido.dev.yaml",
            "nodeimages.image.giantswarm.io.yaml"
        ]
    );
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container(docs: &[(String, Value)]) -> Value {
    find(docs, "Deployment", "image-distribution-operator")["spec"]["template"]["spec"]["containers"][0]
        .clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn b64decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let vals: Vec<u32> = s
        .bytes()
        .filter(|&b| b != b'=')
        .map(|b| A.iter().position(|&a| a == b).unwrap() as u32)
        .collect();
    let mut out = vec![];
    for c in vals.chunks(4) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, v)| n | (v << (18 - 6 * i)));
        out.extend(n.to_be_bytes()[1..c.len()].iter());
    }
    out
}

/// Writes the rendered config (and the files the args merge in) as the pod would see
/// them, and loads it with the operator's loader.
fn load_rendered_config(docs: &[(String, Value)], dir: &Path) -> Config {
    let c = container(docs);
    let args = strings(&c["args"]);
    let mounts = c["volumeMounts"].as_array().unwrap();
    let volumes =
        find(docs, "Deployment", "image-distribution-operator")["spec"]["template"]["spec"]["volumes"]
            .clone();
    // Resolve a mounted path to the data of the ConfigMap / Secret behind it.
    let content = |path: &str| -> String {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        let v = volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let key = m["subPath"].as_str().unwrap();
        if let Some(cm) = v["configMap"]["name"].as_str() {
            find(docs, "ConfigMap", cm)["data"][key]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            let s = find(docs, "Secret", v["secret"]["secretName"].as_str().unwrap());
            String::from_utf8(b64decode(s["data"][key].as_str().unwrap())).unwrap()
        }
    };
    assert_eq!(args[..3], ["operator", "--config", "/etc/ido/config.yaml"]);
    let config = dir.join("config.yaml");
    std::fs::write(&config, content("/etc/ido/config.yaml")).unwrap();
    let mut merges = vec![];
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        assert_eq!(flag, "--merge", "unexpected argument");
        let (key, path) = rest.next().unwrap().split_once('=').unwrap();
        let file = dir.join(key);
        std::fs::write(&file, content(path)).unwrap();
        merges.push((key.to_string(), file));
    }
    Config::load(Some(&config), &merges).unwrap_or_else(|e| panic!("the chart's config is rejected: {e}"))
}

#[test]
fn defaults_render_a_minimal_operator() {
    let docs = chart().manifests("ido", "ido-system", &json!({}));
    for (file, d) in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{file}: {d}"
        );
        assert!(d["metadata"]["name"].is_string(), "{file}: {d}");
        let cluster_scoped = matches!(d["kind"].as_str(), Some("ClusterRole" | "ClusterRoleBinding"));
        assert_eq!(
            d["metadata"]["namespace"].is_string(),
            !cluster_scoped,
            "{file}: {d}"
        );
    }
    let kinds: Vec<&str> = docs.iter().map(|(_, d)| d["kind"].as_str().unwrap()).collect();
    for k in [
        "Deployment",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "ClusterRole",
        "Role",
        "RoleBinding",
    ] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    assert!(!kinds.contains(&"Secret"), "no credentials, no Secret");

    let dep = find(&docs, "Deployment", "image-distribution-operator");
    assert_eq!(dep["spec"]["replicas"], 1);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "image-distribution-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = container(&docs);
    assert_eq!(c["image"], "ghcr.io/ido-dev/ido:0.1.0");
    assert_eq!(
        strings(&c["args"]),
        ["operator", "--config", "/etc/ido/config.yaml"]
    );
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or("")
                    .into(),
            )
        })
        .collect();
    assert!(env.contains(&("POD_NAME".into(), "metadata.name".into())));
    assert!(env.contains(&("POD_NAMESPACE".into(), "metadata.namespace".into())));
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "500m", "memory": "128Mi"})
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        !c["volumeMounts"].to_string().contains("/tmp"),
        "no scratch space: imports stream"
    );
    let svc = find(&docs, "Service", "image-distribution-operator-metrics");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");

    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    let settings = config.settings().unwrap();
    assert_eq!(
        settings.namespace, "ido-system",
        "NodeImages default to the release namespace"
    );
    assert_eq!(settings.channel, "stable");
    assert!(settings.retention.is_zero());
    assert!(config.s3.is_none() && config.providers().unwrap().is_empty());
}

#[test]
fn vsphere_and_s3_values_reach_the_operator() {
    let values = json!({
        "namespace": "giantswarm",
        "imageRetentionPeriod": "720h",
        "concurrency": {"images": 2},
        "s3": {
            "bucket": "node-images", "region": "eu-west-1", "endpoint": "https://s3.example:9000",
            "credentials": {"accessKeyId": "AKIA", "secretAccessKey": "s3cr3t"},
        },
        "vsphere": {
            "enabled": true,
            "credentials": {"vcenter": "vcenter.example", "username": "admin@vsphere.local", "password": "p\"w: d"},
            "locations": {"dc0": {"datacenter": "DC0", "datastore": "LocalDS_0", "folder": "vm", "cluster": "DC0_C0"}},
        },
    });
    let docs = chart().manifests("ido", "ido-system", &values);
    let c = container(&docs);
    assert_eq!(
        strings(&c["args"]),
        [
            "operator",
            "--config",
            "/etc/ido/config.yaml",
            "--merge",
            "vsphere.credentials=/home/.vsphere/credentials",
            "--merge",
            "vsphere.locations=/home/.vsphere/locations",
            "--merge",
            "s3.credentials=/home/.s3/credentials",
        ]
    );
    find(&docs, "Secret", "image-distribution-operator-vsphere-credentials");
    find(
        &docs,
        "ConfigMap",
        "image-distribution-operator-vsphere-locations",
    );
    let cfg_map =
        find(&docs, "ConfigMap", "image-distribution-operator-config")["data"]["config.yaml"].to_string();
    assert!(
        !cfg_map.contains("s3cr3t") && !cfg_map.contains("admin@"),
        "credentials stay in Secrets: {cfg_map}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    let settings = config.settings().unwrap();
    assert_eq!(settings.namespace, "giantswarm");
    assert_eq!(settings.retention.as_secs(), 720 * 3600);
    assert_eq!(config.concurrency.images, 2);
    assert!(config.source().unwrap().is_some_and(|s| s.signed()));
    assert_eq!(config.providers().unwrap().ids(), ["capv"]);
    let v = config.providers.vsphere.unwrap();
    assert_eq!(v.credentials.password, "p\"w: d");
    assert_eq!(v.locations["dc0"].datastore, "LocalDS_0");

    // RBAC follows the NodeImage namespace; the Lease stays with the operator.
    let role = find(&docs, "Role", "image-distribution-operator");
    assert_eq!(role["metadata"]["namespace"], "giantswarm");
    let lease_role = find(&docs, "Role", "image-distribution-operator-leader-election");
    assert_eq!(lease_role["metadata"]["namespace"], "ido-system");
}

#[test]
fn proxmox_and_vcd_values_reach_the_operator() {
    let values = json!({
        "proxmox": {
            "enabled": true,
            "credentials": {"url": "pve.example:8006", "user": "ido", "realm": "pve", "tokenId": "capmox", "secret": "tok-s3cret"},
            "locations": {"pve1": {"node": "pve1", "storagePool": "local-lvm", "bridge": "vmbr0"}},
        },
        "vcd": {
            "enabled": true,
            "credentials": {"url": "https://vcd.example", "username": "ido", "password": "vcd-pw", "org": "org1"},
            "locations": {"main": {"catalog": "node-images", "hardwareVersion": 19}},
        },
    });
    let docs = chart().manifests("ido", "ido-system", &values);
    for p in ["proxmox", "vcd"] {
        find(
            &docs,
            "Secret",
            &format!("image-distribution-operator-{p}-credentials"),
        );
        find(
            &docs,
            "ConfigMap",
            &format!("image-distribution-operator-{p}-locations"),
        );
    }
    let cfg_map =
        find(&docs, "ConfigMap", "image-distribution-operator-config")["data"]["config.yaml"].to_string();
    assert!(
        !cfg_map.contains("tok-s3cret") && !cfg_map.contains("vcd-pw"),
        "{cfg_map}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    assert_eq!(config.providers().unwrap().ids(), ["capmox", "capvcd"]);
    assert_eq!(config.providers.proxmox.unwrap().locations["pve1"].node, "pve1");
}

#[test]
fn kubevirt_and_disk_import_values_reach_the_operator() {
    let values = json!({
        "controllerManager": {"image": {"tag": "1.2.3"}},
        "diskImport": {"filesystemOverhead": "0.1", "backoffLimit": 5,
                       "resources": {"limits": {"memory": "1Gi"}}},
        "kubevirt": {
            "enabled": true,
            "locations": {"vms": {"namespace": "vm-images", "storageClassName": "fast", "size": "20Gi",
                                  "accessModes": ["ReadWriteMany"], "volumeMode": "Block"}},
        },
    });
    let docs = chart().manifests("ido", "ido-system", &values);
    find(&docs, "ClusterRole", "image-distribution-operator-disk-import");
    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    assert_eq!(config.providers().unwrap().ids(), ["capk"]);
    let d = config.settings().unwrap().disk_import;
    assert!(d.enabled, "kubevirt turns the DiskImport controller on");
    assert_eq!(d.image, "ghcr.io/ido-dev/ido:1.2.3", "the operator's own image");
    assert_eq!((d.filesystem_overhead, d.backoff_limit), (0.1, 5));
    assert!(d.resources.is_some());
    let loc = &config.providers.kubevirt.unwrap().locations["vms"];
    assert_eq!(loc.namespace, "vm-images");
    assert_eq!(loc.volume_mode, Some(ido_api::VolumeMode::Block));

    // Defaults: the controller is off and no cluster-wide grant on Jobs is rendered.
    let docs = chart().manifests("ido", "ido-system", &json!({}));
    let config = load_rendered_config(&docs, dir.path());
    let d = config.settings().unwrap().disk_import;
    assert!(!d.enabled);
    assert_eq!(d.image, "ghcr.io/ido-dev/ido:0.1.0");
    assert!(
        !docs
            .iter()
            .any(|(_, d)| d["metadata"]["name"] == "image-distribution-operator-disk-import")
    );
}

/// `helm template` stand-in: prints the chart rendered with `IDO_VALUES` (JSON) merged in.
/// `IDO_VALUES='{"vsphere":{"enabled":true}}' cargo test -p ido-operator --test chart -- --ignored --nocapture`
#[test]
#[ignore = "prints the rendered chart"]
fn print_rendered_chart() {
    let values: Value = std::env::var("IDO_VALUES")
        .map(|v| serde_json::from_str(&v).unwrap())
        .unwrap_or(json!({}));
    for (file, text) in chart().render("ido", "ido-system", &values) {
        println!("---\n# Source: {file}\n{}", text.trim());
    }
}
