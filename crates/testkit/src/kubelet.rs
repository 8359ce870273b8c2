//! The kubelet's part, played for one Deployment: no kubelet runs on these machines, so a
//! test (or the quick start) runs the Deployment's container itself, as a kubelet would.
//!
//! [`run_deployment`] reads the Deployment from the API server, writes each mounted key of
//! its ConfigMaps and Secrets under a root directory where the volumeMounts say (Secrets
//! 0600), moves the args' mount paths under that root, gives its listeners free loopback
//! ports, sets its env (`fieldRef`s of the pod's name and namespace resolved), and runs the
//! given binary (the image's entrypoint) with a kubeconfig holding a TokenRequest token of the
//! pod's ServiceAccount: the API server applies that ServiceAccount's RBAC to every request.
//!
//! [`run_pod`] plays one Pod (an importer Pod the job controller made) to its end: its
//! claims are mounted as the hostPath directories of the PersistentVolumes they are bound to
//! (a Block claim's device path is its volume's hostPath: a device, or a file standing for one),
//! its Secret and ConfigMap volumes written under a root directory, the binary run with the
//! container's args; the Pod's status is written as a kubelet writes it (Running, then
//! Succeeded or Failed with the exit code and the log's tail as the termination message).

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
        let Some((files, secret)) = volume_files(c, namespace, volume).await? else {
            bail!("{path}: only ConfigMap and Secret volumes are played");
        };
        let data = files
            .get(key)
            .with_context(|| format!("{path}: the volume has no key {key}"))?
            .clone();
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

/// The files of a ConfigMap or Secret volume (`items` honoured) and whether they are
/// secret; `None` for another kind of volume.
async fn volume_files(
    c: &Cluster,
    namespace: &str,
    volume: &Value,
) -> anyhow::Result<Option<(BTreeMap<String, Vec<u8>>, bool)>> {
    use base64::Engine as _;
    let (kind, name, secret) = if let Some(n) = volume["configMap"]["name"].as_str() {
        ("configmap", n, false)
    } else if let Some(n) = volume["secret"]["secretName"].as_str() {
        ("secret", n, true)
    } else {
        return Ok(None);
    };
    let obj = c.kubectl_json(&["get", kind, name, "-n", namespace]).await?;
    let mut files = BTreeMap::new();
    for (key, v) in obj["data"].as_object().into_iter().flatten() {
        let text = v.as_str().unwrap_or_default();
        let data = if secret {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .with_context(|| format!("decoding Secret {name} key {key}"))?
        } else {
            text.as_bytes().to_vec()
        };
        files.insert(key.clone(), data);
    }
    let items = volume[if secret { "secret" } else { "configMap" }]["items"].as_array();
    if let Some(items) = items {
        let mut picked = BTreeMap::new();
        for i in items {
            let (Some(key), Some(path)) = (i["key"].as_str(), i["path"].as_str()) else {
                bail!("{kind} {name}: an item without key or path");
            };
            let data = files
                .get(key)
                .with_context(|| format!("{kind} {name} has no key {key}"))?;
            picked.insert(path.to_string(), data.clone());
        }
        files = picked;
    }
    Ok(Some((files, secret)))
}

/// The hostPath of the PersistentVolume claim `namespace/claim` is bound to.
async fn claim_host_path(c: &Cluster, namespace: &str, claim: &str) -> anyhow::Result<PathBuf> {
    let pvc = c.kubectl_json(&["get", "pvc", claim, "-n", namespace]).await?;
    let pv_name = pvc["spec"]["volumeName"]
        .as_str()
        .with_context(|| format!("claim {claim} is not bound"))?;
    let pv = c.kubectl_json(&["get", "pv", pv_name]).await?;
    Ok(PathBuf::from(
        pv["spec"]["hostPath"]["path"]
            .as_str()
            .with_context(|| format!("PersistentVolume {pv_name} is not a hostPath volume"))?,
    ))
}

/// Runs Pod `namespace/pod` (its first container) with `entrypoint` to its end, as a kubelet
/// would (see the module docs), and returns the exit code. Files go under `root`.
pub async fn run_pod(
    c: &Cluster,
    namespace: &str,
    pod_name: &str,
    entrypoint: &Path,
    root: &Path,
) -> anyhow::Result<i32> {
    run_pod_at(c, namespace, pod_name, entrypoint, root, None).await
}

/// [`run_pod`] for a Pod that serves (an upload pod): with `ip` (a loopback address such as
/// `127.0.0.7`), listen addresses `0.0.0.0:PORT` in its args become `ip:PORT`, and while it
/// runs the Pod has that `podIP` and is Ready once its port takes connections.
pub async fn run_pod_at(
    c: &Cluster,
    namespace: &str,
    pod_name: &str,
    entrypoint: &Path,
    root: &Path,
    ip: Option<&str>,
) -> anyhow::Result<i32> {
    let pod = c.kubectl_json(&["get", "pod", pod_name, "-n", namespace]).await?;
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    let cname = container["name"].as_str().unwrap_or("main");
    let image = container["image"].as_str().unwrap_or_default();
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| Some((v["name"].as_str()?, v))).collect())
        .unwrap_or_default();
    // mount path → where it is on this machine
    let mut mounts: Vec<(String, PathBuf)> = vec![];
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = m["mountPath"]
            .as_str()
            .context("a volumeMount without mountPath")?;
        let volume = volumes
            .get(m["name"].as_str().unwrap_or_default())
            .with_context(|| format!("{path}: no volume {}", m["name"]))?;
        let host = if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            claim_host_path(c, namespace, claim).await?
        } else if let Some((files, secret)) = volume_files(c, namespace, volume).await? {
            let dir = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir)?;
            for (name, data) in files {
                let file = dir.join(name);
                if secret {
                    crate::write_private(&file, &data)?;
                } else {
                    std::fs::write(&file, &data)?;
                }
            }
            dir
        } else if volume.get("emptyDir").is_some() {
            let dir = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir)?;
            dir
        } else {
            bail!("{path}: volume {} is of a kind not played", m["name"]);
        };
        mounts.push((path.to_string(), host));
    }
    // Block claims: the device path is where the bound PersistentVolume's hostPath is (a
    // block device, or a file standing for one).
    for d in container["volumeDevices"].as_array().into_iter().flatten() {
        let path = d["devicePath"]
            .as_str()
            .context("a volumeDevice without devicePath")?;
        let claim = volumes
            .get(d["name"].as_str().unwrap_or_default())
            .and_then(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .with_context(|| format!("{path}: volume {} is not a claim", d["name"]))?;
        mounts.push((path.to_string(), claim_host_path(c, namespace, claim).await?));
    }
    // Longest mount paths first, so /data/x is not taken for /data.
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let on_host = |a: &str| {
        mounts
            .iter()
            .find(|(p, _)| a == p || a.starts_with(&format!("{p}/")))
            .map(|(p, h)| format!("{}{}", h.display(), &a[p.len()..]))
            .unwrap_or_else(|| a.to_string())
    };
    let args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(on_host))
        .map(|a| match (ip, a.strip_prefix("0.0.0.0:")) {
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            _ => a,
        })
        .collect();
    let status = |state: Value, phase: &str| {
        serde_json::json!({"status": {"phase": phase, "containerStatuses": [{
            "name": cname, "image": image, "imageID": "", "ready": phase == "Running",
            "restartCount": 0, "state": state,
        }]}})
        .to_string()
    };
    let patch = async |body: String| {
        c.kubectl(&[
            "patch",
            "pod",
            pod_name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &body,
        ])
        .await
    };
    patch(status(serde_json::json!({"running": {}}), "Running")).await?;
    std::fs::create_dir_all(root)?;
    let (log, out) = (root.join("container.err"), root.join("container.out"));
    let mut cmd = tokio::process::Command::new(entrypoint);
    cmd.args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);
    for e in container["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (e["name"].as_str(), e["value"].as_str()) {
            cmd.env(name, on_host(value));
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", entrypoint.display()))?;
    if let Some(ip) = ip {
        // Ready (the readiness probe passes) once the container's first port listens.
        let port = container["ports"][0]["containerPort"].as_u64().unwrap_or(0);
        let mut ready = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect((ip, port as u16)).await.is_ok() {
                ready = true;
                break;
            }
            if child.try_wait()?.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if ready {
            let now = jiff::Timestamp::now().to_string();
            let body = serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}], "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ], "containerStatuses": [{
                "name": cname, "image": image, "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}},
            }]}});
            patch(body.to_string()).await?;
        }
    }
    let exit = child
        .wait()
        .await
        .with_context(|| format!("running {}", entrypoint.display()))?
        .code()
        .unwrap_or(137);
    // FallbackToLogsOnError: the log's tail is the termination message of a failure.
    let message: String = if exit == 0 {
        String::new()
    } else {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    let (phase, reason) = if exit == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    let mut end: Value = serde_json::from_str(&status(
        serde_json::json!({"terminated": {"exitCode": exit, "reason": reason, "message": message}}),
        phase,
    ))?;
    if ip.is_some() {
        end["status"]["conditions"] = serde_json::json!([{"type": "Ready", "status": "False"}]);
    }
    patch(end.to_string()).await?;
    Ok(exit)
}
