//! The Helm chart (`charts/image-distribution-operator`) with the real `helm` (v4, built by
//! `scripts/build-k8s.sh`): it lints, renders valid manifests whose configuration the
//! operator's own loader accepts, refuses values it does not know naming the key, installs,
//! upgrades (CRDs included) and uninstalls on a real control plane (the test kit's
//! [`Cluster`]), and its CRDs are the ones generated from `ido-api`. The image cache (off by
//! default) adds its CRDs, RBAC and admission webhook, whose serving certificate (made by
//! helm, the user's, or cert-manager's) verifies for the webhook's Service and survives
//! upgrades.
//!
//! Regenerate the CRD files after changing the API types:
//! `IDO_REGENERATE=1 cargo test -p ido-operator --test chart`.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use ido_controllers::config::Config;
use ido_providers::{
    kubevirt::KubevirtConfig, proxmox::ProxmoxConfig, vcd::VcdConfig, vsphere::VsphereConfig,
};
use ido_testkit::Cluster;
use serde_json::{Value, json};

/// The chart's name, and the release name under which every object keeps the original's name.
const NAME: &str = "image-distribution-operator";
const NS: &str = "ido-system";

fn charts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts")
}

fn chart_dir() -> PathBuf {
    charts_dir().join(NAME)
}

/// Where each CRD's YAML lives: the chart renders NodeImage, ImageSync, DiskImport,
/// DiskSource and DiskImportCron from
/// `files/crds/` (templates/crds.yaml), image-operator's Image from `files/compat/` only
/// with `imageOperator.enabled`, and the image cache's kinds from `files/cache/` only with
/// `imageCache.enabled`; Giant Swarm's clusters own the Release CRD, so ours (for tests and
/// demos) stays outside the chart.
fn crd_path(name: &str) -> PathBuf {
    match name {
        "nodeimages.image.giantswarm.io"
        | "imagesyncs.ido.dev"
        | "diskimports.ido.dev"
        | "diskimportcrons.ido.dev"
        | "disksources.ido.dev"
        | "uploadtokenrequests.ido.dev" => chart_dir().join("files/crds").join(format!("{name}.yaml")),
        "images.skopeo.io" => chart_dir().join("files/compat").join(format!("{name}.yaml")),
        "datavolumes.cdi.kubevirt.io" | "uploadtokenrequests.upload.cdi.kubevirt.io" => {
            chart_dir().join("files/cdi").join(format!("{name}.yaml"))
        }
        "imagecachepolicies.ido.dev" | "clusterimagecachepolicies.ido.dev" | "cachedimages.ido.dev" => {
            chart_dir().join("files/cache").join(format!("{name}.yaml"))
        }
        _ => charts_dir().join("dev-crds").join(format!("{name}.yaml")),
    }
}

const HEADER: &str =
    "# Generated from the ido-api types: IDO_REGENERATE=1 cargo test -p ido-operator --test chart\n";

/// The CRDs the chart carries, by name.
const CHART_CRDS: [&str; 6] = [
    "diskimportcrons.ido.dev",
    "diskimports.ido.dev",
    "disksources.ido.dev",
    "imagesyncs.ido.dev",
    "nodeimages.image.giantswarm.io",
    "uploadtokenrequests.ido.dev",
];

/// The image cache's CRDs, rendered only with `imageCache.enabled`.
const CACHE_CRDS: [&str; 3] = [
    "cachedimages.ido.dev",
    "clusterimagecachepolicies.ido.dev",
    "imagecachepolicies.ido.dev",
];

/// The sorted file names in a folder of the chart.
fn chart_files(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(chart_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

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
    assert_eq!(chart_files("files/crds"), CHART_CRDS.map(|n| format!("{n}.yaml")));
    assert_eq!(
        chart_files("files/cache"),
        CACHE_CRDS.map(|n| format!("{n}.yaml"))
    );
    // helm installs a chart's crds/ once and never upgrades them: the CRDs are templates.
    assert!(
        !chart_dir().join("crds").exists(),
        "the chart must not have a crds/ folder"
    );
}

// === helm ===

/// Runs the real `helm` with no cluster (`template`, `lint`), in a home of its own.
async fn helm(args: &[&str]) -> Output {
    let bins = ido_testkit::cluster::ensure_built().await.unwrap();
    let home = tempfile::tempdir().unwrap();
    tokio::process::Command::new(&bins.helm)
        .args(args)
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

/// A values file (JSON is YAML) that lives as long as the returned handle.
fn values_file(values: &Value) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(f.path(), values.to_string()).unwrap();
    f
}

/// The documents of a rendered chart, each with its `# Source:` template.
type Docs = Vec<(String, Value)>;

fn parse_docs(text: &str) -> Docs {
    text.split("\n---")
        .filter_map(|d| {
            let source = d
                .lines()
                .find_map(|l| l.strip_prefix("# Source: "))
                .unwrap_or("")
                .to_string();
            let v: Value = yaml::from_str(d).unwrap_or_else(|e| panic!("{source}: {e}\n{d}"));
            (!v.is_null()).then_some((source, v))
        })
        .collect()
}

/// `helm template RELEASE chart --namespace ido-system --values VALUES EXTRA…`: the documents,
/// or helm's error output.
async fn try_template(release: &str, values: &Value, extra: &[&str]) -> Result<Docs, String> {
    let f = values_file(values);
    let chart = chart_dir().display().to_string();
    let file = f.path().display().to_string();
    let mut args = vec!["template", release, &chart, "--namespace", NS, "--values", &file];
    args.extend_from_slice(extra);
    let out = helm(&args).await;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(parse_docs(&String::from_utf8_lossy(&out.stdout)))
}

/// The chart rendered as release `image-distribution-operator` (the original's names).
async fn template(values: &Value) -> Docs {
    try_template(NAME, values, &[])
        .await
        .unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

fn try_find<'a>(docs: &'a Docs, kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn find<'a>(docs: &'a Docs, kind: &str, name: &str) -> &'a Value {
    try_find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn kinds(docs: &Docs) -> Vec<&str> {
    docs.iter().map(|(_, d)| d["kind"].as_str().unwrap()).collect()
}

fn container(docs: &Docs) -> Value {
    find(docs, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0].clone()
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
fn load_rendered_config(docs: &Docs, dir: &Path) -> Config {
    let c = container(docs);
    let args = strings(&c["args"]);
    let mounts = c["volumeMounts"].as_array().unwrap();
    let volumes = find(docs, "Deployment", NAME)["spec"]["template"]["spec"]["volumes"].clone();
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
        if [
            "--metrics-bind-address=",
            "--health-probe-bind-address=",
            "--webhook-bind-address=",
            "--webhook-cert-dir=",
        ]
        .iter()
        .any(|f| flag.starts_with(f))
        {
            continue;
        }
        assert_eq!(flag, "--merge", "unexpected argument");
        let (key, path) = rest.next().unwrap().split_once('=').unwrap();
        let file = dir.join(key);
        std::fs::write(&file, content(path)).unwrap();
        merges.push((key.to_string(), file));
    }
    Config::load(Some(&config), &merges).unwrap_or_else(|e| panic!("the chart's config is rejected: {e}"))
}

/// Every provider, S3 with credentials, the DiskImport controller, the image cache (and its
/// webhook), the ServiceMonitor and the NetworkPolicy on.
fn every_provider() -> Value {
    json!({
        "namespace": "giantswarm",
        "imageRetentionPeriod": "720h",
        "s3": {"bucket": "node-images", "region": "eu-west-1", "endpoint": "https://s3.example:9000",
               "credentials": {"accessKeyId": "AKIA", "secretAccessKey": "s3cr3t"}},
        "vsphere": {"enabled": true, "pullFromURL": true,
                    "credentials": {"vcenter": "vcenter.example", "username": "admin@vsphere.local", "password": "pw"},
                    "locations": {"dc0": {"datacenter": "DC0", "datastore": "LocalDS_0", "folder": "vm", "cluster": "DC0_C0"}}},
        "proxmox": {"enabled": true,
                    "credentials": {"url": "pve.example:8006", "user": "ido", "realm": "pve", "tokenId": "capmox", "secret": "tok"},
                    "locations": {"pve1": {"node": "pve1", "storagePool": "local-lvm", "bridge": "vmbr0"}}},
        "vcd": {"enabled": true, "sessionRefreshThreshold": "10h",
                "credentials": {"url": "https://vcd.example", "username": "ido", "password": "vcd-pw", "org": "org1"},
                "locations": {"main": {"catalog": "node-images", "hardwareVersion": 19}}},
        "kubevirt": {"enabled": true, "locations": {"vms": {"namespace": "vm-images"}}},
        "diskImport": {"enabled": true, "upload": {"enabled": true}},
        "imageCache": {"enabled": true},
        "prometheus": {"serviceMonitor": {"enabled": true, "interval": "30s"}},
        "networkPolicy": {"enabled": true},
    })
}

// === lint and template ===

#[tokio::test]
async fn helm_lint_passes_with_defaults_and_with_every_provider() {
    let chart = chart_dir().display().to_string();
    let f = values_file(&every_provider());
    let file = f.path().display().to_string();
    let cert_manager = values_file(&json!({"imageCache": {"enabled": true,
        "webhook": {"certificate": {"source": "certManager"}}}}));
    let cert_manager = cert_manager.path().display().to_string();
    for args in [
        vec!["lint", "--strict", &chart],
        vec!["lint", "--strict", &chart, "--values", &file],
        vec!["lint", "--strict", &chart, "--values", &cert_manager],
    ] {
        let out = helm(&args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn defaults_render_a_minimal_operator() {
    let docs = template(&json!({})).await;
    for (file, d) in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{file}: {d}"
        );
        assert!(d["metadata"]["name"].is_string(), "{file}: {d}");
        let cluster_scoped = matches!(
            d["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition")
        );
        assert_eq!(
            d["metadata"]["namespace"].is_string(),
            !cluster_scoped,
            "{file}: {d}"
        );
    }
    let kinds = kinds(&docs);
    for k in [
        "Deployment",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    for k in ["Secret", "NetworkPolicy", "ServiceMonitor"] {
        assert!(!kinds.contains(&k), "{k} is off by default: {kinds:?}");
    }

    let dep = find(&docs, "Deployment", NAME);
    assert_eq!(dep["spec"]["replicas"], 1);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], NAME);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = container(&docs);
    assert_eq!(c["image"], "ghcr.io/ido-dev/ido:0.1.0");
    assert!(c["command"].is_null(), "the image's entrypoint (ido) runs");
    assert_eq!(
        strings(&c["args"]),
        [
            "operator",
            "--config",
            "/etc/ido/config.yaml",
            "--metrics-bind-address=:8443",
            "--health-probe-bind-address=:8081"
        ]
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
    assert_eq!(
        c["ports"],
        json!([
            {"name": "metrics", "containerPort": 8443, "protocol": "TCP"},
            {"name": "probes", "containerPort": 8081, "protocol": "TCP"},
        ])
    );
    let args = strings(&c["args"]);
    assert!(
        args.contains(&"--metrics-bind-address=:8443".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--health-probe-bind-address=:8081".to_string()),
        "{args:?}"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "probes");
    }
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
    let svc = find(&docs, "Service", &format!("{NAME}-metrics"));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");

    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    let settings = config.settings().unwrap();
    assert_eq!(
        settings.namespace, NS,
        "NodeImages default to the release namespace"
    );
    assert_eq!(settings.channel, "stable");
    assert!(settings.retention.is_zero());
    assert!(config.s3.is_none() && config.providers().unwrap().is_empty());
}

#[tokio::test]
async fn vsphere_and_s3_values_reach_the_operator() {
    ido_testkit::install_crypto_provider();
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
    let docs = template(&values).await;
    let c = container(&docs);
    assert_eq!(
        strings(&c["args"]),
        [
            "operator",
            "--config",
            "/etc/ido/config.yaml",
            "--metrics-bind-address=:8443",
            "--health-probe-bind-address=:8081",
            "--merge",
            "vsphere.credentials=/home/.vsphere/credentials",
            "--merge",
            "vsphere.locations=/home/.vsphere/locations",
            "--merge",
            "s3.credentials=/home/.s3/credentials",
        ]
    );
    find(&docs, "Secret", &format!("{NAME}-vsphere-credentials"));
    find(&docs, "ConfigMap", &format!("{NAME}-vsphere-locations"));
    let cfg_map = find(&docs, "ConfigMap", &format!("{NAME}-config"))["data"]["config.yaml"].to_string();
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
    let v = config.providers.get::<VsphereConfig>().unwrap();
    assert_eq!(v.credentials.password, "p\"w: d");
    assert_eq!(v.locations["dc0"].datastore, "LocalDS_0");

    // RBAC follows the NodeImage namespace; the Lease stays with the operator.
    let role = find(&docs, "Role", NAME);
    assert_eq!(role["metadata"]["namespace"], "giantswarm");
    let lease_role = find(&docs, "Role", &format!("{NAME}-leader-election"));
    assert_eq!(lease_role["metadata"]["namespace"], NS);
}

#[tokio::test]
async fn proxmox_and_vcd_values_reach_the_operator() {
    ido_testkit::install_crypto_provider();
    let values = json!({
        "proxmox": {
            "enabled": true,
            "credentials": {"url": "pve.example:8006", "user": "ido", "realm": "pve", "tokenId": "capmox", "secret": "tok-s3cret"},
            "locations": {"pve1": {"node": "pve1", "storagePool": "local-lvm", "bridge": "vmbr0"}},
        },
        "vcd": {
            "enabled": true,
            "sessionRefreshThreshold": "10h",
            "credentials": {"url": "https://vcd.example", "username": "ido", "password": "vcd-pw", "org": "org1"},
            "locations": {"main": {"catalog": "node-images", "hardwareVersion": 19}},
        },
    });
    let docs = template(&values).await;
    for p in ["proxmox", "vcd"] {
        find(&docs, "Secret", &format!("{NAME}-{p}-credentials"));
        find(&docs, "ConfigMap", &format!("{NAME}-{p}-locations"));
    }
    let cfg_map = find(&docs, "ConfigMap", &format!("{NAME}-config"))["data"]["config.yaml"].to_string();
    assert!(
        !cfg_map.contains("tok-s3cret") && !cfg_map.contains("vcd-pw"),
        "{cfg_map}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    assert_eq!(config.providers().unwrap().ids(), ["capmox", "capvcd"]);
    assert_eq!(
        config.providers.get::<ProxmoxConfig>().unwrap().locations["pve1"].node,
        "pve1"
    );
    let vcd = config.providers.get::<VcdConfig>().unwrap();
    assert_eq!(vcd.session_refresh_threshold.as_deref(), Some("10h"));
    assert_eq!(vcd.locations["main"].hardware_version, 19);
}

#[tokio::test]
async fn kubevirt_and_disk_import_values_reach_the_operator() {
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
    let docs = template(&values).await;
    find(&docs, "ClusterRole", &format!("{NAME}-disk-import"));
    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    assert_eq!(config.providers().unwrap().ids(), ["capk"]);
    let d = config.settings().unwrap().disk_import;
    assert!(d.enabled, "kubevirt turns the DiskImport controller on");
    assert_eq!(d.image, "ghcr.io/ido-dev/ido:1.2.3", "the operator's own image");
    assert_eq!((d.filesystem_overhead, d.backoff_limit), (0.1, 5));
    assert!(d.resources.is_some());
    let loc = &config.providers.get::<KubevirtConfig>().unwrap().locations["vms"];
    assert_eq!(loc.namespace, "vm-images");
    assert_eq!(loc.volume_mode, Some(ido_api::VolumeMode::Block));

    // Defaults: the controller is off and no cluster-wide grant on Jobs is rendered.
    let docs = template(&json!({})).await;
    let config = load_rendered_config(&docs, dir.path());
    let d = config.settings().unwrap().disk_import;
    assert!(!d.enabled);
    assert_eq!(d.image, "ghcr.io/ido-dev/ido:0.1.0");
    assert!(try_find(&docs, "ClusterRole", &format!("{NAME}-disk-import")).is_none());
}

#[tokio::test]
async fn the_crd_templates_are_the_generated_crds() {
    let generated: Vec<Value> = CHART_CRDS
        .iter()
        .map(|n| yaml::from_str(&std::fs::read_to_string(crd_path(n)).unwrap()).unwrap())
        .collect();
    let crds = |docs: &Docs| -> Vec<Value> {
        docs.iter()
            .filter(|(_, d)| d["kind"] == "CustomResourceDefinition")
            .map(|(_, d)| d.clone())
            .collect()
    };
    let docs = template(&json!({})).await;
    let rendered = crds(&docs);
    assert_eq!(rendered.len(), CHART_CRDS.len(), "{rendered:?}");
    assert!(
        docs.iter()
            .all(|(_, d)| d["metadata"]["name"] != "releases.release.giantswarm.io"),
        "the Release CRD is the cluster's, kept in charts/dev-crds"
    );
    for want in &generated {
        let name = &want["metadata"]["name"];
        let have = rendered
            .iter()
            .find(|d| &d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not rendered"));
        let meta = &have["metadata"];
        assert_eq!(meta["annotations"]["helm.sh/resource-policy"], "keep", "{name}");
        assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "Helm", "{name}");
        let mut bare = have.clone();
        let m = bare["metadata"].as_object_mut().unwrap();
        m.remove("labels");
        m.remove("annotations");
        // helm's fromYaml/toYaml writes 1.0 as 1: the same JSON number to the API server.
        assert_eq!(
            numbers_as_floats(bare),
            numbers_as_floats(want.clone()),
            "{name}: rendered differs from files/crds"
        );
    }

    // image-operator's Image only when asked for, so that image-operator can own it.
    let docs = template(&json!({"imageOperator": {"enabled": true}})).await;
    let rendered = crds(&docs);
    assert_eq!(rendered.len(), CHART_CRDS.len() + 1);
    let want: Value =
        yaml::from_str(&std::fs::read_to_string(crd_path("images.skopeo.io")).unwrap()).unwrap();
    let mut have = rendered
        .into_iter()
        .find(|d| d["metadata"]["name"] == "images.skopeo.io")
        .expect("images.skopeo.io rendered");
    let m = have["metadata"].as_object_mut().unwrap();
    m.remove("labels");
    m.remove("annotations");
    assert_eq!(numbers_as_floats(have), numbers_as_floats(want));
    let rules = &find(&docs, "ClusterRole", &format!("{NAME}-image-operator"))["rules"];
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["apiGroups"] == json!(["skopeo.io"]) && r["resources"] == json!(["images"])),
        "{rules}"
    );
    assert!(
        try_find(
            &template(&json!({})).await,
            "ClusterRole",
            &format!("{NAME}-image-operator")
        )
        .is_none(),
        "no grant on Images unless imageOperator.enabled"
    );

    // The image cache's kinds only with imageCache.enabled.
    assert!(
        crds(&template(&json!({})).await)
            .iter()
            .all(|d| !CACHE_CRDS.contains(&d["metadata"]["name"].as_str().unwrap())),
        "no cache CRDs by default"
    );
    let docs = template(&json!({"imageCache": {"enabled": true}})).await;
    let rendered = crds(&docs);
    assert_eq!(rendered.len(), CHART_CRDS.len() + CACHE_CRDS.len());
    for name in CACHE_CRDS {
        let want: Value = yaml::from_str(&std::fs::read_to_string(crd_path(name)).unwrap()).unwrap();
        let mut have = rendered
            .iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not rendered"))
            .clone();
        assert_eq!(
            have["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}"
        );
        let m = have["metadata"].as_object_mut().unwrap();
        m.remove("labels");
        m.remove("annotations");
        assert_eq!(
            numbers_as_floats(have),
            numbers_as_floats(want),
            "{name}: rendered differs from files/cache"
        );
    }
    let docs = template(&json!({"imageCache": {"enabled": true}, "crd": {"enable": false}})).await;
    assert!(crds(&docs).is_empty());

    let docs = template(&json!({"crd": {"keep": false}})).await;
    for crd in crds(&docs) {
        assert!(crd["metadata"]["annotations"].is_null(), "{crd}");
    }
    let docs = template(&json!({"crd": {"enable": false}})).await;
    assert!(crds(&docs).is_empty());
}

fn numbers_as_floats(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_floats(v))).collect()),
        other => other,
    }
}

#[tokio::test]
async fn unknown_values_are_refused_naming_the_key() {
    for (set, names) in [
        ("bogusKey=1", &["bogusKey"][..]),
        ("vsphere.enabeld=true", &["/vsphere", "enabeld"]),
        ("controllerManager.replica=2", &["/controllerManager", "replica"]),
        ("vcd.locations.main.catlog=x", &["/vcd/locations/main", "catlog"]),
        // The original's container section has no counterpart: refused, not ignored.
        (
            "controllerManager.container.image.repository=x",
            &["/controllerManager", "container"],
        ),
        // Numbers where the operator reads a string.
        (
            "vsphere.credentials.password=1234",
            &["/vsphere/credentials/password", "want string"],
        ),
        ("certmanager.enable=true", &["certmanager.enable"]),
        (
            "prometheus.serviceMonitor.enabled=true,metrics.service.enabled=false",
            &["metrics.service.enabled"],
        ),
    ] {
        let err = try_template(NAME, &json!({}), &["--set", set])
            .await
            .expect_err(set);
        for n in names {
            assert!(err.contains(n), "--set {set}: {n:?} not in {err}");
        }
    }
}

#[tokio::test]
async fn the_original_charts_values_are_honoured() {
    // The original chart's keys (its values.yaml), minus controllerManager.container.
    let original = json!({
        "rbac": {"enable": true}, "crd": {"enable": true, "keep": true}, "metrics": {"enable": true},
        "prometheus": {"enable": true}, "certmanager": {"enable": false}, "networkPolicy": {"enable": true},
        "imageRetentionPeriod": "0",
        "clientSetup": {"initialBackoffDelay": "", "retryCount": null},
        "s3": {"bucket": "b", "region": "r", "timeout": "", "http": false},
        "vsphere": {"enabled": false, "pullFromURL": false, "locations": {},
                    "credentials": {"username": "", "password": "", "vcenter": ""}},
        "vcd": {"enabled": true, "downloadDir": "/tmp/images",
                "credentials": {"url": "https://vcd.example", "username": "u", "password": "p", "org": "o", "insecure": false},
                "locations": {"name": "main", "vdc": "vdc1", "catalog": "images", "hardwareVersion": 19}},
        "proxmox": {"enabled": false, "locations": {},
                    "credentials": {"url": "", "user": "", "realm": "pam", "tokenId": "", "secret": "", "insecure": false}},
    });
    let docs = template(&original).await;
    let rendered = kinds(&docs);
    for k in [
        "Service",
        "ServiceMonitor",
        "NetworkPolicy",
        "ClusterRole",
        "CustomResourceDefinition",
    ] {
        assert!(rendered.contains(&k), "{k} missing: {rendered:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    let vcd = config.providers.get::<VcdConfig>().unwrap();
    assert_eq!(vcd.locations["main"].hardware_version, 19, "the single location");
    assert!(config.s3.is_some());

    let mut off = original.clone();
    off["rbac"]["enable"] = json!(false);
    off["metrics"]["enable"] = json!(false);
    off["prometheus"]["enable"] = json!(false);
    off["networkPolicy"]["enable"] = json!(false);
    let docs = template(&off).await;
    let rendered = kinds(&docs);
    for k in [
        "Service",
        "ServiceMonitor",
        "NetworkPolicy",
        "ClusterRole",
        "Role",
        "RoleBinding",
    ] {
        assert!(!rendered.contains(&k), "{k} rendered: {rendered:?}");
    }
}

#[tokio::test]
async fn rbac_service_monitor_and_network_policy_follow_their_switches() {
    let docs = template(&json!({"rbac": {"create": false}})).await;
    let kinds = kinds(&docs);
    for k in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(!kinds.contains(&k), "{k} rendered: {kinds:?}");
    }
    assert!(kinds.contains(&"ServiceAccount"));

    let values = json!({
        "prometheus": {"serviceMonitor": {"enabled": true, "interval": "30s", "labels": {"release": "prom"}}},
        "networkPolicy": {"enabled": true, "metricsFrom": [{"namespaceSelector": {"matchLabels": {"metrics": "enabled"}}}]},
    });
    let docs = template(&values).await;
    let svc = find(&docs, "Service", &format!("{NAME}-metrics"));
    let sm = find(&docs, "ServiceMonitor", NAME);
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["namespace"], NS);
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(sm["spec"]["namespaceSelector"]["matchNames"], json!([NS]));
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(
        (&ep["path"], &ep["scheme"], &ep["interval"]),
        (&json!("/metrics"), &json!("https"), &json!("30s"))
    );

    let np = find(&docs, "NetworkPolicy", NAME);
    let pod_labels = &find(&docs, "Deployment", NAME)["spec"]["template"]["metadata"]["labels"];
    for (k, v) in np["spec"]["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the NetworkPolicy selects the operator's pods");
    }
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2, "metrics and probes");
    assert_eq!(
        ingress[1]["ports"],
        json!([{"port": "probes", "protocol": "TCP"}])
    );
    assert!(ingress[1]["from"].is_null(), "the kubelet probes from the node");
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "metrics", "protocol": "TCP"}])
    );
    assert_eq!(container(&docs)["ports"][0]["name"], "metrics");
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["metrics"],
        "enabled"
    );
    assert_eq!(np["spec"]["egress"], json!([{}]), "egress to anywhere");
}

/// The Deployment's name and the sorted names of the cluster-scoped RBAC objects of a release.
async fn release_names(release: &str, values: &Value) -> (String, Vec<String>, Docs) {
    let docs = try_template(release, values, &[]).await.unwrap();
    let dep = find_kind(&docs, "Deployment")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cluster: Vec<String> = docs
        .iter()
        .filter(|(_, d)| matches!(d["kind"].as_str(), Some("ClusterRole" | "ClusterRoleBinding")))
        .map(|(_, d)| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    cluster.sort();
    (dep, cluster, docs)
}

fn find_kind<'a>(docs: &'a Docs, kind: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[tokio::test]
async fn releases_get_their_own_cluster_scoped_names() {
    let on = json!({"diskImport": {"enabled": true}});
    let (dep, cluster, _) = release_names(NAME, &on).await;
    assert_eq!(dep, NAME, "the original's names");
    assert_eq!(
        cluster,
        [
            format!("ClusterRole/{NAME}"),
            format!("ClusterRole/{NAME}-disk-import"),
            format!("ClusterRole/{NAME}-metrics-reader"),
            format!("ClusterRoleBinding/{NAME}"),
            format!("ClusterRoleBinding/{NAME}-disk-import"),
        ]
    );

    let (a, a_cluster, a_docs) = release_names("ido-a", &on).await;
    let (b, b_cluster, _) = release_names("ido-b", &on).await;
    assert_eq!(a, format!("ido-a-{NAME}"));
    assert_eq!(b, format!("ido-b-{NAME}"));
    assert_eq!(a_cluster.len(), 5);
    assert!(
        a_cluster.iter().all(|n| !b_cluster.contains(n)),
        "{a_cluster:?} {b_cluster:?}"
    );
    // Bindings grant the release's own ServiceAccount its own ClusterRole.
    let crb = find(&a_docs, "ClusterRoleBinding", &a);
    assert_eq!(crb["subjects"][0]["name"], a);
    assert_eq!(crb["roleRef"]["name"], a);

    let (dep, _, _) = release_names("prod-image-distribution-operator", &json!({})).await;
    assert_eq!(dep, "prod-image-distribution-operator", "contains the chart name");
    let (dep, _, _) = release_names("x", &json!({"fullnameOverride": "ido"})).await;
    assert_eq!(dep, "ido");
    // Helm's longest release name (53 characters): names stay DNS labels.
    let long = "r23456789-123456789-123456789-123456789-123456789-123";
    let (dep, _, docs) = release_names(long, &json!({})).await;
    assert!(dep.len() <= 63 && !dep.ends_with('-'), "{dep}");
    let svc = find_kind(&docs, "Service")["metadata"]["name"].as_str().unwrap();
    assert!(svc.len() <= 63 && svc.ends_with("-metrics"), "{svc}");
}

// === the image cache ===

/// Where the operator reads the webhook's serving certificate (controller-runtime's default).
const CERT_DIR: &str = "/tmp/k8s-webhook-server/serving-certs";

fn webhook_service() -> String {
    format!("{NAME}-webhook")
}

/// The names the API server may call the webhook Service by, in the release namespace.
fn webhook_dns_names() -> Vec<String> {
    let svc = webhook_service();
    vec![
        svc.clone(),
        format!("{svc}.{NS}"),
        format!("{svc}.{NS}.svc"),
        format!("{svc}.{NS}.svc.cluster.local"),
    ]
}

/// The image cache with its webhook, the certificate from `source` (plus `certificate`).
fn cache_on(certificate: Value) -> Value {
    json!({"imageCache": {"enabled": true, "webhook": {"certificate": certificate}}})
}

fn the_webhook(docs: &Docs) -> &Value {
    let mwc = find(docs, "MutatingWebhookConfiguration", NAME);
    let hooks = mwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "{mwc}");
    &hooks[0]
}

fn port_names(c: &Value) -> Vec<String> {
    c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_image_cache_renders_nothing_unless_enabled() {
    let cache_kinds = ["MutatingWebhookConfiguration", "Certificate", "Issuer", "Secret"];
    for (values, cache_rbac) in [
        (json!({"networkPolicy": {"enabled": true}}), false),
        // The webhook off: the controllers' grants and CRDs, no webhook.
        (
            json!({"networkPolicy": {"enabled": true},
                   "imageCache": {"enabled": true, "webhook": {"enabled": false}}}),
            true,
        ),
    ] {
        let docs = template(&values).await;
        let kinds = kinds(&docs);
        for k in cache_kinds {
            assert!(!kinds.contains(&k), "{values}: {k} rendered");
        }
        assert!(
            try_find(&docs, "Service", &webhook_service()).is_none(),
            "{values}"
        );
        for kind in ["ClusterRole", "ClusterRoleBinding"] {
            assert_eq!(
                try_find(&docs, kind, &format!("{NAME}-image-cache")).is_some(),
                cache_rbac,
                "{values}: {kind}"
            );
        }
        let cache_crds = docs
            .iter()
            .filter(|(_, d)| CACHE_CRDS.contains(&d["metadata"]["name"].as_str().unwrap()))
            .count();
        assert_eq!(cache_crds, if cache_rbac { 3 } else { 0 }, "{values}");
        let c = container(&docs);
        let args = strings(&c["args"]);
        assert!(
            args.iter().all(|a| !a.contains("webhook")),
            "the operator's default is no webhook listener: {args:?}"
        );
        assert_eq!(port_names(&c), ["metrics", "probes"], "{values}");
        let pod = &find(&docs, "Deployment", NAME)["spec"]["template"]["spec"];
        assert!(
            !pod.to_string().contains("webhook"),
            "{values}: no webhook volume or mount: {pod}"
        );
        let np = find(&docs, "NetworkPolicy", NAME);
        assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 2, "{np}");

        let dir = tempfile::tempdir().unwrap();
        let config = load_rendered_config(&docs, dir.path());
        assert_eq!(config.image_cache.enabled, cache_rbac);
    }
}

#[tokio::test]
async fn the_image_cache_gets_its_rbac_listener_and_webhook() {
    let mut values = cache_on(json!({}));
    values["imageCache"]["concurrency"] = json!(2);
    values["networkPolicy"] = json!({"enabled": true});
    let docs = template(&values).await;
    for (file, d) in &docs {
        let cluster_scoped = matches!(
            d["kind"].as_str(),
            Some(
                "ClusterRole"
                    | "ClusterRoleBinding"
                    | "CustomResourceDefinition"
                    | "MutatingWebhookConfiguration"
            )
        );
        assert_eq!(
            d["metadata"]["namespace"].is_string(),
            !cluster_scoped,
            "{file}: {d}"
        );
    }

    // RBAC: the workloads and their pull secrets anywhere, the cache's own kinds.
    let role = find(&docs, "ClusterRole", &format!("{NAME}-image-cache"));
    let read = json!(["get", "list", "watch"]);
    let read_update = json!(["get", "list", "watch", "update"]);
    let write = json!(["create", "patch"]);
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods", "serviceaccounts", "namespaces"], "verbs": read},
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
             "verbs": read_update},
            {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": read_update},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
            {"apiGroups": ["ido.dev"], "resources": ["cachedimages"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["ido.dev"], "resources": ["cachedimages/status"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["ido.dev"], "resources": ["imagecachepolicies", "clusterimagecachepolicies"],
             "verbs": read},
            {"apiGroups": ["ido.dev"],
             "resources": ["imagecachepolicies/status", "clusterimagecachepolicies/status"],
             "verbs": ["patch", "update"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": write},
            {"apiGroups": [""], "resources": ["events"], "verbs": write},
        ])
    );
    let binding = find(&docs, "ClusterRoleBinding", &format!("{NAME}-image-cache"));
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{NAME}-image-cache")})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": NAME, "namespace": NS}])
    );

    // The operator listens for the webhook with the certificate Secret mounted.
    let c = container(&docs);
    assert_eq!(
        strings(&c["args"]),
        [
            "operator",
            "--config",
            "/etc/ido/config.yaml",
            "--metrics-bind-address=:8443",
            "--health-probe-bind-address=:8081",
            "--webhook-bind-address=:9443",
            &format!("--webhook-cert-dir={CERT_DIR}"),
        ]
    );
    assert_eq!(
        c["ports"][2],
        json!({"name": "webhook", "containerPort": 9443, "protocol": "TCP"})
    );
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == CERT_DIR)
        .unwrap_or_else(|| panic!("{CERT_DIR} is not mounted: {}", c["volumeMounts"]));
    assert_eq!(mount["readOnly"], true);
    assert!(
        mount["subPath"].is_null(),
        "a renewed certificate reaches the pod"
    );
    let pod = &find(&docs, "Deployment", NAME)["spec"]["template"];
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["secret"],
        json!({"secretName": format!("{NAME}-webhook-cert"),
               "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]})
    );

    // The Service in front of it selects the operator's pods.
    let svc = find(&docs, "Service", &webhook_service());
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}])
    );
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][k], v,
            "the Service selects the operator's pods"
        );
    }

    // The webhook: pod creations everywhere but kube-system and the operator's namespace.
    let mut hook = the_webhook(&docs).clone();
    assert!(hook["clientConfig"]["caBundle"].is_string(), "{hook}");
    hook["clientConfig"].as_object_mut().unwrap().remove("caBundle");
    assert_eq!(
        hook,
        json!({
            "name": "pods.image-cache.ido.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"name": webhook_service(), "namespace": NS,
                                         "path": "/mutate-v1-pod", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "*"}],
            "matchPolicy": "Equivalent",
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                        "operator": "NotIn", "values": ["kube-system", NS]}]},
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 5,
        })
    );
    let mwc = find(&docs, "MutatingWebhookConfiguration", NAME);
    assert!(mwc["metadata"]["annotations"].is_null(), "{mwc}");

    // The API server reaches the webhook port through the NetworkPolicy.
    let np = find(&docs, "NetworkPolicy", NAME);
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 3, "metrics, probes and the webhook");
    assert_eq!(
        ingress[2],
        json!({"ports": [{"port": "webhook", "protocol": "TCP"}]}),
        "from anywhere: the API server's address is the cluster's"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = load_rendered_config(&docs, dir.path());
    assert!(config.image_cache.enabled);
    assert_eq!(config.image_cache.concurrency, 2);

    // The port and timeout follow the values.
    let mut values = cache_on(json!({}));
    values["imageCache"]["webhook"]["port"] = json!(10443);
    values["imageCache"]["webhook"]["timeoutSeconds"] = json!(10);
    let docs = template(&values).await;
    let c = container(&docs);
    assert!(strings(&c["args"]).contains(&"--webhook-bind-address=:10443".to_string()));
    assert_eq!(c["ports"][2]["containerPort"], 10443);
    assert_eq!(the_webhook(&docs)["timeoutSeconds"], 10);
}

/// The PEM certificates of a bundle, DER-encoded.
fn pem_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Verifies `leaf` as a TLS server certificate for `name` against the roots of `ca_pem`, as
/// a client (the API server) does.
fn verify_server_cert(ca_pem: &[u8], leaf_pem: &[u8], name: &str) -> Result<(), rustls::Error> {
    use rustls::{RootCertStore, client::WebPkiServerVerifier, pki_types::ServerName};
    let mut roots = RootCertStore::empty();
    for c in pem_certs(ca_pem) {
        roots.add(c).unwrap();
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let chain = pem_certs(leaf_pem);
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &chain[0],
        &chain[1..],
        &ServerName::try_from(name.to_string()).unwrap(),
        &[],
        rustls::pki_types::UnixTime::now(),
    )
    .map(|_| ())
}

/// The helm-made Secret's data, decoded, and the webhook's caBundle, decoded.
fn helm_made_certificate(docs: &Docs) -> (Value, Vec<u8>) {
    let secret = find(docs, "Secret", &format!("{NAME}-webhook-cert"));
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let mut keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"], "{secret}");
    let ca_bundle = b64decode(the_webhook(docs)["clientConfig"]["caBundle"].as_str().unwrap());
    (secret["data"].clone(), ca_bundle)
}

#[tokio::test]
async fn the_helm_made_certificate_verifies_for_the_webhook_service() {
    let docs = template(&cache_on(json!({}))).await;
    let (data, ca_bundle) = helm_made_certificate(&docs);
    let pem = |k: &str| b64decode(data[k].as_str().unwrap());
    assert_eq!(ca_bundle, pem("ca.crt"), "the webhook trusts the Secret's CA");
    let (tls_crt, tls_key) = (pem("tls.crt"), pem("tls.key"));

    // The name the API server calls it by (<svc>.<ns>.svc), and the others.
    for name in webhook_dns_names() {
        verify_server_cert(&ca_bundle, &tls_crt, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let err = verify_server_cert(&ca_bundle, &tls_crt, &format!("{}.other.svc", webhook_service()))
        .expect_err("valid for another namespace's Service");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");

    // The key is the certificate's.
    use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
    let key =
        rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::from_pem_slice(&tls_key).unwrap())
            .unwrap();
    rustls::sign::CertifiedKey::new(pem_certs(&tls_crt), key)
        .keys_match()
        .expect("tls.key is tls.crt's key");

    // Each install makes its own CA (helm template finds no Secret to reuse).
    let (_, other_ca) = helm_made_certificate(&template(&cache_on(json!({}))).await);
    assert_ne!(other_ca, ca_bundle);
    let err = verify_server_cert(&other_ca, &tls_crt, &format!("{}.{NS}.svc", webhook_service()))
        .expect_err("verified against another CA");
    // Both CAs have the same name: the other one's signature does not verify.
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
            )
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_users_secret_serves_the_webhook() {
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let docs = template(&cache_on(
        json!({"source": "secret", "secretName": "corp-webhook-tls", "caBundle": CA}),
    ))
    .await;
    let kinds = kinds(&docs);
    for k in ["Secret", "Certificate", "Issuer"] {
        assert!(!kinds.contains(&k), "{k} rendered: {kinds:?}");
    }
    let volumes = find(&docs, "Deployment", NAME)["spec"]["template"]["spec"]["volumes"].clone();
    let volume = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "webhook-cert")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "corp-webhook-tls");
    let hook = the_webhook(&docs);
    assert_eq!(
        String::from_utf8(b64decode(hook["clientConfig"]["caBundle"].as_str().unwrap())).unwrap(),
        CA
    );

    // Values the source cannot do without, or does not use, fail naming the key.
    for (certificate, key) in [
        (
            json!({"source": "secret", "caBundle": CA}),
            "imageCache.webhook.certificate.secretName",
        ),
        (
            json!({"source": "secret", "secretName": "tls"}),
            "imageCache.webhook.certificate.caBundle",
        ),
        (
            json!({"secretName": "tls"}),
            "imageCache.webhook.certificate.secretName",
        ),
        (
            json!({"issuerRef": {"name": "ca"}}),
            "imageCache.webhook.certificate.issuerRef",
        ),
        (
            json!({"source": "certManager", "issuerRef": {"kind": "ClusterIssuer"}}),
            "imageCache.webhook.certificate.issuerRef.name",
        ),
    ] {
        let err = try_template(NAME, &cache_on(certificate.clone()), &[])
            .await
            .expect_err(&certificate.to_string());
        assert!(err.contains(key), "{certificate}: {key} not in {err}");
    }
    // The webhook off: its certificate values are not looked at.
    let mut off = cache_on(json!({"source": "secret"}));
    off["imageCache"]["webhook"]["enabled"] = json!(false);
    template(&off).await;
}

#[tokio::test]
async fn cert_manager_issues_the_webhook_certificate() {
    let docs = template(&cache_on(json!({"source": "certManager"}))).await;
    assert!(
        !kinds(&docs).contains(&"Secret"),
        "cert-manager writes the Secret"
    );
    let issuer = find(&docs, "Issuer", &format!("{NAME}-webhook-selfsigned"));
    assert_eq!(issuer["apiVersion"], "cert-manager.io/v1");
    assert_eq!(issuer["metadata"]["namespace"], NS);
    assert_eq!(issuer["spec"], json!({"selfSigned": {}}));
    let cert = find(&docs, "Certificate", &format!("{NAME}-webhook"));
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["metadata"]["namespace"], NS);
    assert_eq!(cert["spec"]["secretName"], format!("{NAME}-webhook-cert"));
    assert_eq!(cert["spec"]["dnsNames"], json!(webhook_dns_names()));
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": format!("{NAME}-webhook-selfsigned"), "kind": "Issuer", "group": "cert-manager.io"})
    );
    let volumes = find(&docs, "Deployment", NAME)["spec"]["template"]["spec"]["volumes"].clone();
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == cert["spec"]["secretName"]),
        "the operator mounts the Certificate's Secret: {volumes}"
    );
    // cert-manager's cainjector fills in the caBundle.
    let mwc = find(&docs, "MutatingWebhookConfiguration", NAME);
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NS}/{NAME}-webhook")
    );
    assert!(the_webhook(&docs)["clientConfig"]["caBundle"].is_null());

    // An issuer of the user's: no Issuer of the chart's.
    let corp = json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"});
    let docs = template(&cache_on(json!({"source": "certManager", "issuerRef": corp}))).await;
    assert!(!kinds(&docs).contains(&"Issuer"));
    assert_eq!(
        find(&docs, "Certificate", &format!("{NAME}-webhook"))["spec"]["issuerRef"],
        corp
    );
}

// === on a real control plane ===

const NODE_IMAGE: &str = "capv-flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs";

fn node_image_manifest(ns: &str) -> String {
    json!({
        "apiVersion": "image.giantswarm.io/v1alpha1",
        "kind": "NodeImage",
        "metadata": {"name": NODE_IMAGE, "namespace": ns},
        "spec": {"name": "flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs", "provider": "capv"},
    })
    .to_string()
}

/// `kubectl get … -o json`, or `None` when absent.
async fn get(c: &Cluster, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get", "-o", "json"];
    all.extend_from_slice(args);
    let out = c.kubectl_output(&all, None).await.unwrap();
    if out.status.success() {
        return Some(serde_json::from_slice(&out.stdout).unwrap());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NotFound"), "kubectl {all:?}: {err}");
    None
}

async fn crds_established(c: &Cluster) {
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=30s"];
    let names: Vec<String> = CHART_CRDS.iter().map(|n| format!("crd/{n}")).collect();
    args.extend(names.iter().map(String::as_str));
    c.kubectl(&args).await.unwrap();
}

/// A minimal stand-in of the Prometheus Operator's ServiceMonitor CRD (any spec), so that
/// the API server takes the chart's ServiceMonitor.
const SERVICE_MONITOR_CRD: &str = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
"metadata":{"name":"servicemonitors.monitoring.coreos.com"},
"spec":{"group":"monitoring.coreos.com","scope":"Namespaced",
 "names":{"kind":"ServiceMonitor","plural":"servicemonitors","singular":"servicemonitor","listKind":"ServiceMonitorList"},
 "versions":[{"name":"v1","served":true,"storage":true,
  "schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_on_a_real_cluster() {
    let c = Cluster::start().await.unwrap();
    let chart = chart_dir().display().to_string();
    let vsphere = json!({"s3": {"bucket": "node-images", "credentials": {"accessKeyId": "a", "secretAccessKey": "s"}},
                         "vsphere": {"enabled": true, "credentials": {"vcenter": "vc", "username": "u", "password": "p"},
                                     "locations": {"dc0": {"datacenter": "DC0", "datastore": "ds"}}}});
    let f = values_file(&vsphere);
    let file = f.path().display().to_string();

    // Install: the API server takes every object, the CRDs are served.
    c.helm(&[
        "install",
        NAME,
        &chart,
        "-n",
        NS,
        "--create-namespace",
        "--values",
        &file,
    ])
    .await
    .unwrap();
    crds_established(&c).await;
    for crd in CHART_CRDS {
        let crd = get(&c, &["crd", crd]).await.unwrap();
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
        assert_eq!(crd["metadata"]["annotations"]["meta.helm.sh/release-name"], NAME);
    }
    for (kind, name) in [
        ("deployment", NAME.to_string()),
        ("serviceaccount", NAME.to_string()),
        ("secret", format!("{NAME}-vsphere-credentials")),
        ("configmap", format!("{NAME}-vsphere-locations")),
        ("service", format!("{NAME}-metrics")),
    ] {
        assert!(get(&c, &[kind, &name, "-n", NS]).await.is_some(), "{kind} {name}");
    }
    assert!(get(&c, &["clusterrole", NAME]).await.is_some());
    c.kubectl_stdin(&["apply", "-f", "-"], &node_image_manifest(NS))
        .await
        .unwrap();
    let uid = get(&c, &["nodeimage", NODE_IMAGE, "-n", NS]).await.unwrap()["metadata"]["uid"].clone();

    // A second release beside it (the CRDs are the first one's): no cluster-scoped clash.
    c.helm(&[
        "install",
        "ido-b",
        &chart,
        "-n",
        "ido-b",
        "--create-namespace",
        "--set",
        "crd.enable=false",
    ])
    .await
    .unwrap();
    assert!(
        get(&c, &["clusterrole", &format!("ido-b-{NAME}")])
            .await
            .is_some()
    );
    c.helm(&["uninstall", "ido-b", "-n", "ido-b"]).await.unwrap();
    assert!(get(&c, &["clusterrole", NAME]).await.is_some());
    crds_established(&c).await;

    // Upgrade with changed values: the CRDs are upgraded (the keep annotation goes), the
    // ServiceMonitor and NetworkPolicy are taken by the API server, the NodeImage stays.
    c.kubectl_stdin(&["apply", "-f", "-"], SERVICE_MONITOR_CRD)
        .await
        .unwrap();
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/servicemonitors.monitoring.coreos.com",
    ])
    .await
    .unwrap();
    let mut changed = vsphere.clone();
    changed["controllerManager"] = json!({"replicas": 2});
    changed["imageRetentionPeriod"] = json!("720h");
    changed["crd"] = json!({"keep": false});
    changed["prometheus"] = json!({"serviceMonitor": {"enabled": true}});
    changed["networkPolicy"] = json!({"enabled": true});
    let f2 = values_file(&changed);
    c.helm(&[
        "upgrade",
        NAME,
        &chart,
        "-n",
        NS,
        "--values",
        &f2.path().display().to_string(),
    ])
    .await
    .unwrap();
    let dep = get(&c, &["deployment", NAME, "-n", NS]).await.unwrap();
    assert_eq!(dep["spec"]["replicas"], 2);
    let cm = get(&c, &["configmap", &format!("{NAME}-config"), "-n", NS])
        .await
        .unwrap();
    assert!(cm["data"]["config.yaml"].as_str().unwrap().contains("720h"));
    assert!(get(&c, &["servicemonitor", NAME, "-n", NS]).await.is_some());
    assert!(get(&c, &["networkpolicy", NAME, "-n", NS]).await.is_some());
    for crd in CHART_CRDS {
        let crd = get(&c, &["crd", crd]).await.unwrap();
        assert!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null(),
            "helm upgrade updates the CRDs: {}",
            crd["metadata"]
        );
    }
    crds_established(&c).await;
    let ni = get(&c, &["nodeimage", NODE_IMAGE, "-n", NS])
        .await
        .expect("the NodeImage survives the upgrade");
    assert_eq!(ni["metadata"]["uid"], uid);

    // Back to crd.keep (the default): uninstalling keeps the CRDs and the NodeImage.
    c.helm(&["upgrade", NAME, &chart, "-n", NS, "--values", &file])
        .await
        .unwrap();
    let crd = get(&c, &["crd", CHART_CRDS[2]]).await.unwrap();
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    let out = c.helm(&["uninstall", NAME, "-n", NS]).await.unwrap();
    assert!(out.contains("kept due to the resource policy"), "{out}");
    crds_established(&c).await;
    let ni = get(&c, &["nodeimage", NODE_IMAGE, "-n", NS])
        .await
        .expect("the NodeImage survives uninstall");
    assert_eq!(ni["metadata"]["uid"], uid);
    assert!(get(&c, &["deployment", NAME, "-n", NS]).await.is_none());
    assert!(get(&c, &["clusterrole", NAME]).await.is_none());
    assert_eq!(c.helm(&["list", "-A", "-q"]).await.unwrap().trim(), "");
}

/// A copy of the chart as it was before its CRDs became templates: CRDs in `crds/`, and
/// the NodeImage CRD stale (no printer columns).
fn chart_with_a_crds_folder(dir: &Path) -> PathBuf {
    let old = dir.join(NAME);
    let out = std::process::Command::new("cp")
        .arg("-r")
        .arg(chart_dir())
        .arg(&old)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file(old.join("templates/crds.yaml")).unwrap();
    std::fs::rename(old.join("files/crds"), old.join("crds")).unwrap();
    let path = old.join("crds/nodeimages.image.giantswarm.io.yaml");
    let mut crd: Value = yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    crd["spec"]["versions"][0]
        .as_object_mut()
        .unwrap()
        .remove("additionalPrinterColumns");
    std::fs::write(&path, crd.to_string()).unwrap();
    old
}

#[tokio::test]
async fn crds_from_a_crds_folder_are_taken_over_and_upgraded() {
    let c = Cluster::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = chart_with_a_crds_folder(dir.path()).display().to_string();
    let chart = chart_dir().display().to_string();
    c.helm(&["install", NAME, &old, "-n", NS, "--create-namespace"])
        .await
        .unwrap();
    crds_established(&c).await;
    let columns = async || {
        get(&c, &["crd", "nodeimages.image.giantswarm.io"]).await.unwrap()["spec"]["versions"][0]
            ["additionalPrinterColumns"]
            .clone()
    };
    assert!(columns().await.is_null());
    c.kubectl_stdin(&["apply", "-f", "-"], &node_image_manifest(NS))
        .await
        .unwrap();

    // helm will not adopt CRDs it did not create (values.yaml says so, and what to do).
    let err = c
        .helm(&["upgrade", NAME, &chart, "-n", NS])
        .await
        .expect_err("helm adopted CRDs from crds/");
    assert!(err.to_string().contains("invalid ownership metadata"), "{err}");

    c.helm(&["upgrade", NAME, &chart, "-n", NS, "--take-ownership"])
        .await
        .unwrap();
    crds_established(&c).await;
    let generated: Value =
        yaml::from_str(&std::fs::read_to_string(crd_path("nodeimages.image.giantswarm.io")).unwrap())
            .unwrap();
    assert_eq!(
        columns().await,
        generated["spec"]["versions"][0]["additionalPrinterColumns"],
        "the upgrade brought the CRD up to date"
    );
    let crd = get(&c, &["crd", "nodeimages.image.giantswarm.io"]).await.unwrap();
    assert_eq!(crd["metadata"]["annotations"]["meta.helm.sh/release-name"], NAME);
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    assert!(get(&c, &["nodeimage", NODE_IMAGE, "-n", NS]).await.is_some());
}

#[tokio::test]
async fn the_webhook_certificate_is_kept_across_upgrades() {
    let c = Cluster::start().await.unwrap();
    let chart = chart_dir().display().to_string();
    let on = values_file(&cache_on(json!({})));
    let on = on.path().display().to_string();
    c.helm(&[
        "install",
        NAME,
        &chart,
        "-n",
        NS,
        "--create-namespace",
        "--values",
        &on,
    ])
    .await
    .unwrap();
    let secret_name = format!("{NAME}-webhook-cert");
    let state = async || {
        let secret = get(&c, &["secret", &secret_name, "-n", NS]).await.unwrap();
        let mwc = get(&c, &["mutatingwebhookconfiguration", NAME]).await.unwrap();
        (secret["data"].clone(), mwc["webhooks"][0].clone())
    };
    let (data, hook) = state().await;
    assert_eq!(
        hook["clientConfig"]["caBundle"], data["ca.crt"],
        "the webhook trusts the Secret's CA"
    );
    let tls_crt = b64decode(data["tls.crt"].as_str().unwrap());
    let ca = b64decode(data["ca.crt"].as_str().unwrap());
    verify_server_cert(&ca, &tls_crt, &format!("{}.{NS}.svc", webhook_service())).unwrap();

    // With nothing to answer it, the webhook lets pods through (failurePolicy Ignore).
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "web", "namespace": "default"},
                     "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}});
    c.kubectl_stdin(&["create", "-f", "-"], &pod.to_string())
        .await
        .unwrap();
    assert!(get(&c, &["pod", "web", "-n", "default"]).await.is_some());

    // An upgrade (changed values) keeps the certificate and the webhook's trust in it.
    let mut changed = cache_on(json!({}));
    changed["imageCache"]["webhook"]["timeoutSeconds"] = json!(3);
    let changed = values_file(&changed);
    c.helm(&[
        "upgrade",
        NAME,
        &chart,
        "-n",
        NS,
        "--values",
        &changed.path().display().to_string(),
    ])
    .await
    .unwrap();
    let (after, hook) = state().await;
    assert_eq!(hook["timeoutSeconds"], 3, "the upgrade applied");
    assert_eq!(after, data, "the certificate changed on upgrade");
    assert_eq!(hook["clientConfig"]["caBundle"], data["ca.crt"]);

    // Without the cache, nothing of it stays but the CRDs (crd.keep).
    c.helm(&["upgrade", NAME, &chart, "-n", NS, "--reset-values"])
        .await
        .unwrap();
    assert!(get(&c, &["mutatingwebhookconfiguration", NAME]).await.is_none());
    assert!(get(&c, &["secret", &secret_name, "-n", NS]).await.is_none());
    assert!(
        get(&c, &["clusterrole", &format!("{NAME}-image-cache")])
            .await
            .is_none()
    );
    for crd in CACHE_CRDS {
        assert!(get(&c, &["crd", crd]).await.is_some(), "{crd}");
    }
}
