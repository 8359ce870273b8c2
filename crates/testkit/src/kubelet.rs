//! The kubelet's part, played for one Deployment: no kubelet runs on these machines, so a
//! test (or the quick start) runs the Deployment's container itself, as a kubelet would.
//!
//! [`run_deployment`] reads the Deployment from the API server, writes each mounted key of
//! its ConfigMaps and Secrets under a root directory where the volumeMounts say (Secrets
//! 0600), moves the args' mount paths under that root, gives its listeners free loopback
//! ports, sets its env (`fieldRef`s of the pod's name and namespace resolved), and runs the
//! given binary (the image's entrypoint) with a kubeconfig holding a TokenRequest token of the
//! pod's ServiceAccount: the API server applies that ServiceAccount's RBAC to every request.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::Cluster;

/// A Deployment's container running on this machine.
pub struct RunningPod {
    /// The process (killed on drop).
    pub child: tokio::process::Child,
    /// Its standard error (the log), under the root.
    pub log: PathBuf,
    /// Its standard output.
    pub out: PathBuf,
}

impl RunningPod {
    /// Both of the container's output streams, for messages.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

/// Flags whose value is a listening address: replaced by a free loopback port.
const LISTEN_FLAGS: [&str; 2] = ["--metrics-bind-address=", "--health-probe-bind-address="];

/// Runs the first container of the Deployment selected by `selector` in `namespace` with
/// `entrypoint` (see the module docs); files and logs go under `root`.
pub async fn run_deployment(
    c: &Cluster,
    namespace: &str,
    selector: &str,
    entrypoint: &Path,
    root: &Path,
) -> anyhow::Result<RunningPod> {
    use base64::Engine as _;
    let list = c
        .kubectl_json(&["get", "deployment", "-n", namespace, "-l", selector])
        .await?;
    let deploy = &list["items"][0];
    if deploy.is_null() {
        bail!("no Deployment in {namespace} matches {selector}");
    }
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| Some((v["name"].as_str()?, v))).collect())
        .unwrap_or_default();
    let mut mounts = vec![];
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = m["mountPath"]
            .as_str()
            .context("a volumeMount without mountPath")?;
        let key = m["subPath"]
            .as_str()
            .with_context(|| format!("{path}: only single-key (subPath) mounts are played"))?;
        let volume = volumes
            .get(m["name"].as_str().unwrap_or_default())
            .with_context(|| format!("{path}: no volume {}", m["name"]))?;
        let (data, secret) = if let Some(name) = volume["configMap"]["name"].as_str() {
            let cm = c
                .kubectl_json(&["get", "configmap", name, "-n", namespace])
                .await?;
            let text = cm["data"][key]
                .as_str()
                .with_context(|| format!("ConfigMap {name} has no key {key}"))?;
            (text.as_bytes().to_vec(), false)
        } else if let Some(name) = volume["secret"]["secretName"].as_str() {
            let s = c.kubectl_json(&["get", "secret", name, "-n", namespace]).await?;
            let b64 = s["data"][key]
                .as_str()
                .with_context(|| format!("Secret {name} has no key {key}"))?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .context("decoding a Secret")?;
            (data, true)
        } else {
            bail!("{path}: only ConfigMap and Secret volumes are played");
        };
        let file = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().context("a mount path")?)?;
        if secret {
            crate::write_private(&file, &data)?;
        } else {
            std::fs::write(&file, &data).with_context(|| format!("writing {}", file.display()))?;
        }
        mounts.push(path.to_string());
    }
    let under_root = |a: &str| {
        mounts.iter().fold(a.to_string(), |a, p| {
            a.replace(p, &root.join(p.trim_start_matches('/')).display().to_string())
        })
    };
    let mut args = vec![];
    for a in container["args"].as_array().into_iter().flatten() {
        let a = a.as_str().context("a non-string arg")?;
        args.push(match LISTEN_FLAGS.into_iter().find(|f| a.starts_with(f)) {
            Some(flag) => format!("{flag}127.0.0.1:{}", crate::free_port()?),
            None => under_root(a),
        });
    }
    let pod_name = format!("{}-0", deploy["metadata"]["name"].as_str().unwrap_or("pod"));
    let sa = pod["serviceAccountName"].as_str().unwrap_or("default");
    let token = c.token(namespace, sa).await?;
    let kubeconfig = root.join("kubeconfig");
    crate::write_private(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: sa, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: sa, namespace: {namespace}}}}}]\ncurrent-context: c\n",
            c.server()?,
            c.dir().join("pki/ca.crt").display()
        )
        .as_bytes(),
    )?;
    let (log, out) = (root.join("container.err"), root.join("container.out"));
    let mut cmd = tokio::process::Command::new(entrypoint);
    cmd.args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("an env var without a name")?;
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => pod_name.clone(),
            Some("metadata.namespace") => namespace.to_string(),
            Some(other) => bail!("env {name}: fieldRef {other} is not played"),
            None => under_root(e["value"].as_str().unwrap_or_default()),
        };
        cmd.env(name, value);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("running {}", entrypoint.display()))?;
    Ok(RunningPod { child, log, out })
}
