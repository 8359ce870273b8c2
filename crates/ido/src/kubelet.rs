//! `ido run`'s stand-in for the kubelet: it runs the importer Jobs DiskImports make, in
//! this process, with their claims as local paths, so the manifests that import disks in a
//! cluster import them without one.
//!
//! ```text
//!   Job importer-<name> (label ido.dev/disk-import, no outcome yet)
//!     claim <ns>/<claim> ─▶ --volume <ns>/<claim>=PATH, else <state>/volumes/<ns>/<claim>
//!                           (a directory for a Filesystem claim, a file for a Block one)
//!     Secret / ConfigMap volumes ─▶ a private directory of their keys (0700, files 0600),
//!                                   removed afterwards
//!     the container's args, its mount paths replaced by those paths ─▶ `ido import`
//!   ─▶ a Pod for the attempt (Running, then its container terminated with the exit code
//!      and the error as the termination message), the claim Bound, the Job's outcome
//!      (Complete, or Failed): the DiskImport controller takes it from there
//! ```
//!
//! One attempt per Job: a failed import fails its Job (delete and re-apply the DiskImport
//! to try again, as in a cluster once the retries are spent).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::Parser;
use ido_controllers::{
    diskimport::{CONTAINER, DISK_IMPORT_LABEL, PERMANENT_EXIT_CODE},
    file_store::FileStore,
    store::Store,
};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::import::{Failed, ImportArgs, run_import};

/// Where claims live on this machine.
#[derive(Clone, Debug)]
pub struct Volumes {
    /// Claims not named below: `<root>/<namespace>/<claim>`.
    pub root: PathBuf,
    /// `<namespace>/<claim>` → a directory (Filesystem) or a file or block device (Block).
    pub named: BTreeMap<String, PathBuf>,
}

impl Volumes {
    /// The path of claim `ns/claim`; a Filesystem claim's directory is made if missing.
    fn path(&self, ns: &str, claim: &str, block: bool) -> anyhow::Result<PathBuf> {
        let path = match self.named.get(&format!("{ns}/{claim}")) {
            Some(p) => p.clone(),
            None if block => self.root.join(ns).join(format!("{claim}.img")),
            None => self.root.join(ns).join(claim),
        };
        let dir = if block {
            path.parent().map(Path::to_path_buf)
        } else {
            Some(path.clone())
        };
        if let Some(dir) = dir {
            std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        }
        Ok(path)
    }
}

/// Parses a `--volume NAMESPACE/CLAIM=PATH` value.
pub fn parse_volume(s: &str) -> Result<(String, PathBuf), String> {
    let (claim, path) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid --volume {s:?}: expected NAMESPACE/CLAIM=PATH"))?;
    let (ns, name) = claim
        .split_once('/')
        .ok_or_else(|| format!("invalid --volume {s:?}: expected NAMESPACE/CLAIM=PATH"))?;
    let bad = ido_api::names::label_error(ns)
        .map(|r| format!("namespace {ns:?}: {r}"))
        .or_else(|| ido_api::names::subdomain_error(name).map(|r| format!("claim {name:?}: {r}")));
    if let Some(reason) = bad {
        return Err(format!("invalid --volume {s:?}: {reason}"));
    }
    if path.is_empty() {
        return Err(format!("invalid --volume {s:?}: the path is empty"));
    }
    Ok((claim.to_string(), PathBuf::from(path)))
}

/// Runs the importer Jobs that appear in `store` until `stop`.
pub async fn serve(store: FileStore, volumes: Volumes, stop: CancellationToken) {
    let mut changes = store.subscribe();
    let mut started: HashSet<String> = HashSet::new();
    let mut running = tokio::task::JoinSet::new();
    loop {
        match store.list_in::<Job>(None).await {
            Ok(jobs) => {
                for job in jobs.into_iter().filter(waiting) {
                    let uid = job.metadata.uid.clone().unwrap_or_default();
                    if started.insert(uid) {
                        let (store, volumes) = (store.clone(), volumes.clone());
                        running.spawn(async move { attempt(&store, &volumes, job).await });
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing importer Jobs failed"),
        }
        tokio::select! {
            _ = changes.recv() => {}
            Some(_) = running.join_next() => {}
            _ = stop.cancelled() => break,
        }
    }
    // Dropping the set stops imports still running; their guards clean up.
    running.shutdown().await;
}

/// An importer Job with no outcome yet.
fn waiting(job: &Job) -> bool {
    let labelled = job
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(DISK_IMPORT_LABEL));
    let st = job.status.as_ref();
    labelled
        && job.metadata.deletion_timestamp.is_none()
        && st.and_then(|s| s.succeeded).unwrap_or(0) == 0
        && st.and_then(|s| s.failed).unwrap_or(0) == 0
}

/// One attempt of `job`: its pod, the import, the outcome.
async fn attempt(store: &FileStore, volumes: &Volumes, job: Job) {
    let name = job.metadata.name.clone().unwrap_or_default();
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let pod = match start_pod(store, &job).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(job = %name, error = %e, "cannot record the importer pod");
            return;
        }
    };
    let scratch = tempfile::Builder::new().prefix("ido-importer-").tempdir();
    let outcome = match scratch {
        Ok(dir) => match prepare(store, volumes, &job, dir.path()).await {
            Ok(args) => {
                tracing::info!(job = %name, namespace = %ns, "running the importer");
                run(args).await
            }
            Err(e) => Err((1, format!("{e:#}"))),
        },
        Err(e) => Err((1, format!("making a scratch directory: {e}"))),
    };
    if let Err((code, message)) = &outcome {
        tracing::warn!(job = %name, namespace = %ns, code, %message, "the importer failed");
    }
    if let Err(e) = finish(store, &job, pod, outcome).await {
        tracing::warn!(job = %name, error = %e, "cannot record the importer's outcome");
    }
}

/// The import with the Job's arguments: `Err((exit code, message))` when it fails.
async fn run(args: Vec<String>) -> Result<(), (i32, String)> {
    #[derive(Parser)]
    #[command(name = "import")]
    struct Importer {
        #[command(flatten)]
        args: ImportArgs,
    }
    let parsed = Importer::try_parse_from(&args).map_err(|e| (PERMANENT_EXIT_CODE, e.to_string()))?;
    match run_import(parsed.args).await {
        Ok(()) => Ok(()),
        Err(Failed::Permanent(m)) => Err((PERMANENT_EXIT_CODE, m)),
        Err(Failed::Other(e)) => Err((1, format!("{e:#}"))),
    }
}

/// The Job's container arguments (from `import`), each mount path replaced by its local
/// path; Secrets and ConfigMaps written under `scratch`.
async fn prepare(
    store: &FileStore,
    volumes: &Volumes,
    job: &Job,
    scratch: &Path,
) -> anyhow::Result<Vec<String>> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let spec = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("the Job has no pod template")?;
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)
        .context("the Job has no importer container")?;
    let mut mapped: Vec<(String, PathBuf)> = Vec::new();
    let volume = |name: &str| spec.volumes.iter().flatten().find(|v| v.name == name);
    for d in container.volume_devices.iter().flatten() {
        let v = volume(&d.name).with_context(|| format!("no volume {}", d.name))?;
        let claim = v
            .persistent_volume_claim
            .as_ref()
            .context("a device that is not a claim")?;
        mapped.push((d.device_path.clone(), volumes.path(&ns, &claim.claim_name, true)?));
    }
    for (i, m) in container.volume_mounts.iter().flatten().enumerate() {
        let v = volume(&m.name).with_context(|| format!("no volume {}", m.name))?;
        let local = if let Some(c) = &v.persistent_volume_claim {
            volumes.path(&ns, &c.claim_name, false)?
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let secret: Secret = store
                .get(Some(&ns), &name)
                .await?
                .with_context(|| format!("Secret {ns}/{name} not found"))?;
            let data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .chain(
                    secret
                        .string_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                )
                .collect();
            write_files(&scratch.join(format!("volume-{i}")), &data)?
        } else if let Some(c) = &v.config_map {
            let name = c.name.clone();
            let cm: ConfigMap = store
                .get(Some(&ns), &name)
                .await?
                .with_context(|| format!("ConfigMap {ns}/{name} not found"))?;
            let data = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            write_files(&scratch.join(format!("volume-{i}")), &data)?
        } else {
            anyhow::bail!("volume {} is of a kind ido run does not mount", m.name);
        };
        mapped.push((m.mount_path.clone(), local));
    }
    // Longest mount path first, so /data/x is not taken for /d…
    mapped.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let replace = |arg: &str| -> String {
        for (at, local) in &mapped {
            if arg == at {
                return local.display().to_string();
            }
            if let Some(rest) = arg.strip_prefix(at.as_str()).filter(|r| r.starts_with('/')) {
                return format!("{}{rest}", local.display());
            }
        }
        arg.to_string()
    };
    let args = container.args.clone().unwrap_or_default();
    anyhow::ensure!(
        args.first().map(String::as_str) == Some("import"),
        "the importer's arguments do not start with import: {args:?}"
    );
    Ok(args.iter().map(|a| replace(a)).collect())
}

/// Writes `data` as files of a new private directory `dir` (0700; files 0600).
fn write_files(dir: &Path, data: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    for (key, bytes) in data {
        anyhow::ensure!(
            !key.is_empty() && !key.contains('/') && key != "." && key != "..",
            "a key {key:?} that is not a file name"
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(key))?;
        std::io::Write::write_all(&mut f, bytes)?;
    }
    Ok(dir.to_path_buf())
}

/// The attempt's Pod (Running), and its claim Bound as a local volume binds it.
async fn start_pod(store: &FileStore, job: &Job) -> anyhow::Result<Pod> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert("job-name".into(), name.clone());
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-local"), "namespace": ns, "labels": labels,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                          "uid": job.metadata.uid, "controller": true}]},
        "spec": template.spec,
    }))?;
    let mut pod = match store.create(&pod).await {
        Ok(p) => p,
        Err(ido_controllers::StoreError::AlreadyExists { .. }) => store
            .get(Some(&ns), &format!("{name}-local"))
            .await?
            .context("the importer pod vanished")?,
        Err(e) => return Err(e.into()),
    };
    pod.status = Some(serde_json::from_value(json!({
        "phase": "Running",
        "containerStatuses": [{"name": CONTAINER, "image": "ido", "imageID": "", "ready": true,
                               "restartCount": 0, "state": {"running": {"startedAt": now()}}}],
    }))?);
    let pod = store.update_status(&pod).await?;
    for claim in template.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(c) = &claim.persistent_volume_claim
            && let Some(mut pvc) = store
                .get::<PersistentVolumeClaim>(Some(&ns), &c.claim_name)
                .await?
            && pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound")
        {
            let requested = pvc
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.clone())
                .unwrap_or_default();
            pvc.status = Some(serde_json::from_value(
                json!({"phase": "Bound", "capacity": requested}),
            )?);
            store.update_status(&pvc).await?;
        }
    }
    Ok(pod)
}

/// Records the attempt's end on its Pod and its Job.
async fn finish(
    store: &FileStore,
    job: &Job,
    pod: Pod,
    outcome: Result<(), (i32, String)>,
) -> anyhow::Result<()> {
    let (code, message) = match &outcome {
        Ok(()) => (0, String::new()),
        Err((c, m)) => (*c, m.clone()),
    };
    let mut pod = pod;
    pod.status = Some(serde_json::from_value(json!({
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{"name": CONTAINER, "image": "ido", "imageID": "", "ready": false,
                               "restartCount": 0,
                               "state": {"terminated": {"exitCode": code, "message": message,
                                                        "reason": if code == 0 { "Completed" } else { "Error" },
                                                        "finishedAt": now()}}}],
    }))?);
    store.update_status(&pod).await?;
    let Some(mut current) = store
        .get::<Job>(
            job.metadata.namespace.as_deref(),
            job.metadata.name.as_deref().unwrap_or_default(),
        )
        .await?
    else {
        return Ok(());
    };
    let status: Value = if code == 0 {
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}]})
    } else {
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                            "message": message, "lastTransitionTime": now()}]})
    };
    current.status = Some(serde_json::from_value(status)?);
    store.update_status(&current).await?;
    Ok(())
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_name_a_claim_and_a_path() {
        assert_eq!(
            parse_volume("vms/disk=/dev/vg0/disk").unwrap(),
            ("vms/disk".to_string(), PathBuf::from("/dev/vg0/disk"))
        );
        for bad in [
            "disk=/x",
            "vms/disk",
            "vms/disk=",
            "VMS/disk=/x",
            "vms/../x=/y",
            "vms/Disk=/x",
        ] {
            let e = parse_volume(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
