//! The objects a DiskImport owns: its claim and its importer Job.
//!
//! The importer is `ido import SOURCE TARGET` in the operator's own image, with the claim
//! mounted (Filesystem: at `/data`, target `/data/disk.img`; Block: as the device
//! `/dev/ido-disk`; an archive: at `/data`, unpacked there with `--content-type archive`;
//! a blank disk: `ido import blank:`). Credentials are Secret volumes the controller never reads, named to
//! the importer by file path flags; CA bundles are ConfigMap volumes. Nothing secret is
//! in the arguments or the environment.

use std::collections::BTreeMap;

use ido_api::{
    DiskImport, SourceKind, VolumeMode,
    diskimport::{ContentType, quantity},
};
use k8s_openapi::api::{batch::v1::Job, core::v1::PersistentVolumeClaim};
use serde_json::{Value, json};

use super::ImporterSettings;

/// Label naming the DiskImport on its claim, Job and importer pods.
pub const DISK_IMPORT_LABEL: &str = "ido.dev/disk-import";
/// Name of the importer container.
pub const CONTAINER: &str = "importer";
/// Where a Filesystem claim is mounted in the importer.
pub const DATA_DIR: &str = "/data";
/// The disk file on a Filesystem claim (KubeVirt's name).
pub const DISK_FILE: &str = "/data/disk.img";
/// The device path of a Block claim in the importer.
pub const DEVICE: &str = "/dev/ido-disk";
/// Where a cloned Filesystem claim is mounted (read-only).
pub const SOURCE_DIR: &str = "/source";
/// The device path of a cloned Block claim.
pub const SOURCE_DEVICE: &str = "/dev/ido-source";
/// Where the source's Secret is mounted.
pub const CREDENTIALS_DIR: &str = "/var/run/ido/source-credentials";
/// Where the source's CA ConfigMap is mounted.
pub const CA_DIR: &str = "/var/run/ido/source-ca";
/// The importer's exit code for a permanent failure (bad image, checksum mismatch, …): the
/// Job fails at once instead of retrying (`podFailurePolicy`).
pub const PERMANENT_EXIT_CODE: i32 = 2;

/// A Kubernetes name of at most `max` bytes from `prefix` + `name`: as is when it fits,
/// else cut and suffixed with a hash of the whole (stable across releases: FNV-1a).
pub fn short_name(prefix: &str, name: &str, max: usize) -> String {
    let full = format!("{prefix}{name}");
    if full.len() <= max {
        return full;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in full.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let hash = format!("{:08x}", h as u32);
    let keep = max - hash.len() - 1;
    let mut cut = full[..keep].trim_end_matches(['-', '.']).to_string();
    cut.push('-');
    cut + &hash
}

/// Name of the importer Job (≤ 63 bytes: it becomes the pods' `job-name` label).
pub fn job_name(di: &DiskImport) -> String {
    short_name("importer-", di.metadata.name.as_deref().unwrap_or_default(), 63)
}

/// Value of [`DISK_IMPORT_LABEL`] (a label value: ≤ 63 bytes).
pub fn label_value(di: &DiskImport) -> String {
    short_name("", di.metadata.name.as_deref().unwrap_or_default(), 63)
}

/// Labels of the owned objects.
pub fn labels(di: &DiskImport) -> BTreeMap<String, String> {
    BTreeMap::from([
        (DISK_IMPORT_LABEL.to_string(), label_value(di)),
        ("app.kubernetes.io/managed-by".into(), "ido".into()),
        ("app.kubernetes.io/component".into(), "disk-import".into()),
    ])
}

/// The controller owner reference to `di`.
pub fn owner_reference(di: &DiskImport) -> Value {
    crate::store::controller_reference(di)
}

/// Whether `meta` names `di` as its owner.
pub fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, di: &DiskImport) -> bool {
    crate::store::owned_by(meta, di)
}

/// The volume mode of `di` (Filesystem unless Block; an archive's is always Filesystem).
pub fn volume_mode(di: &DiskImport) -> VolumeMode {
    match di.spec.content_type() {
        ContentType::Archive => VolumeMode::Filesystem,
        ContentType::Kubevirt => di.spec.storage.volume_mode.unwrap_or_default(),
    }
}

/// Bytes the claim asks for to hold a disk of `size` bytes: rounded up to 1 MiB, and in
/// Filesystem mode grown by `overhead` (a fraction) for the filesystem, as CDI does.
pub fn claim_request(size: u64, mode: VolumeMode, overhead: f64) -> u64 {
    const MIB: u64 = 1 << 20;
    let mib = size.div_ceil(MIB);
    match mode {
        VolumeMode::Block => mib * MIB,
        VolumeMode::Filesystem => ((mib as f64 * (1.0 + overhead)).ceil() as u64) * MIB,
    }
}

/// The claim of `di`, asking for `request` bytes.
pub fn claim(di: &DiskImport, request: u64) -> PersistentVolumeClaim {
    let s = &di.spec.storage;
    let modes = if s.access_modes.is_empty() {
        vec!["ReadWriteOnce".to_string()]
    } else {
        s.access_modes.clone()
    };
    let mut spec = json!({
        "accessModes": modes,
        "volumeMode": volume_mode(di).as_str(),
        "resources": {"requests": {"storage": quantity::format(request)}},
    });
    if let Some(class) = &s.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": di.metadata.name,
            "namespace": di.metadata.namespace,
            "labels": labels(di),
            "ownerReferences": [owner_reference(di)],
        },
        "spec": spec,
    }))
    .expect("a valid PersistentVolumeClaim")
}

/// The importer's arguments, volumes and mounts for the source of `di`.
struct SourcePlan {
    args: Vec<String>,
    volumes: Vec<Value>,
    mounts: Vec<Value>,
    devices: Vec<Value>,
}

impl SourcePlan {
    /// Mounts the source's Secret at [`CREDENTIALS_DIR`].
    fn mount_secret(&mut self, name: &str) {
        self.volumes.push(json!({
            "name": "source-credentials",
            "secret": {"secretName": name, "defaultMode": 0o440},
        }));
        self.mounts
            .push(json!({"name": "source-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": true}));
    }

    /// Mounts the source's CA ConfigMap at [`CA_DIR`] and names it to the importer.
    fn mount_ca(&mut self, name: &str) {
        self.volumes
            .push(json!({"name": "source-ca", "configMap": {"name": name}}));
        self.mounts
            .push(json!({"name": "source-ca", "mountPath": CA_DIR, "readOnly": true}));
        self.args.extend(["--ca-dir".to_string(), CA_DIR.to_string()]);
    }
}

/// A file of the mounted Secret.
fn cred(f: &str) -> String {
    format!("{CREDENTIALS_DIR}/{f}")
}

fn source_plan(di: &DiskImport, source_block: bool) -> Option<SourcePlan> {
    let mut p = SourcePlan {
        args: vec![],
        volumes: vec![],
        mounts: vec![],
        devices: vec![],
    };
    match di.spec.source.kind().ok()? {
        SourceKind::Http(h) => {
            p.args.push(h.url.clone());
            for header in &h.extra_headers {
                p.args.extend(["--header".to_string(), header.clone()]);
            }
            if let Some(name) = &h.secret_ref {
                p.mount_secret(name);
                p.args.extend([
                    "--username-file".to_string(),
                    cred("accessKeyId"),
                    "--password-file".to_string(),
                    cred("secretKey"),
                ]);
            }
            if let Some(name) = &h.cert_config_map {
                p.mount_ca(name);
            }
            if let Some(c) = &h.checksum {
                p.args.extend(["--checksum".to_string(), c.clone()]);
            }
        }
        SourceKind::S3(s) => {
            // CDI's form `https://ENDPOINT/BUCKET/KEY` (path-style) becomes the importer's
            // `s3://BUCKET/KEY --s3-endpoint https://ENDPOINT`; `s3://…` passes as it is.
            match s3_endpoint_form(&s.url) {
                Some((endpoint, object)) => {
                    p.args.push(object);
                    p.args.extend(["--s3-endpoint".to_string(), endpoint]);
                }
                None => p.args.push(s.url.clone()),
            }
            if let Some(name) = &s.secret_ref {
                p.mount_secret(name);
                p.args.extend([
                    "--s3-access-key-file".to_string(),
                    cred("accessKeyId"),
                    "--s3-secret-key-file".to_string(),
                    cred("secretKey"),
                ]);
            }
        }
        SourceKind::Registry(r) => {
            p.args.push(r.url.clone());
            if let Some(name) = &r.secret_ref {
                p.mount_secret(name);
                p.args
                    .extend(["--authfile".to_string(), cred(".dockerconfigjson")]);
            }
            if let Some(name) = &r.cert_config_map {
                p.mount_ca(name);
            }
            if let Some(platform) = &r.platform {
                p.args.extend(["--platform".to_string(), platform.clone()]);
            }
        }
        // A blank disk is made by the importer too (a sparse disk.img on a Filesystem
        // claim; zeros written with preallocation); a Block claim without preallocation
        // is the disk as it is, with no importer.
        SourceKind::Blank => {
            if volume_mode(di) == VolumeMode::Block && di.spec.preallocation != Some(true) {
                return None;
            }
            p.args.push("blank:".into());
        }
        // Resolved to `pvc` by the controller before a Job is made (the DiskSource's claim):
        // no Job of its own.
        SourceKind::DiskSource(_) => return None,
        // Restored into a claim and resolved to `pvc` by the controller first, as above.
        SourceKind::Snapshot(_) => return None,
        // An upload: `ido upload-server`, the key it checks tokens with mounted.
        SourceKind::Upload(u) => {
            p.serve_uploads(di);
            if let Some(c) = &u.checksum {
                p.args.extend(["--checksum".to_string(), c.clone()]);
            }
        }
        // A clone from another namespace: this side is an upload server that takes the
        // disk, as it is, from the sender Job beside the source claim ([`sender_job`]).
        SourceKind::Pvc(_) if cross_namespace(di) => {
            p.serve_uploads(di);
            p.args.push("--verbatim".into());
        }
        // A clone: the source claim read-only beside the target, its disk copied byte for
        // byte (`--verbatim`: a disk's content is never taken for an image or a compression).
        SourceKind::Pvc(c) => {
            let from = p.mount_source(&c.name, source_block);
            p.args.push(from);
            p.args.push("--verbatim".into());
        }
    }
    Some(p)
}

impl SourcePlan {
    /// `ido upload-server`'s flags, with the pod key it checks tokens with mounted.
    fn serve_uploads(&mut self, di: &DiskImport) {
        self.volumes.push(json!({
            "name": "upload-key",
            "secret": {"secretName": super::upload::key_secret_name(di), "defaultMode": 0o440},
        }));
        self.mounts
            .push(json!({"name": "upload-key", "mountPath": super::upload::KEY_DIR, "readOnly": true}));
        self.args.extend([
            "--listen".to_string(),
            format!("0.0.0.0:{}", super::upload::PORT),
            "--key-file".to_string(),
            format!("{}/{}", super::upload::KEY_DIR, super::upload::KEY_FILE),
            "--disk-import".to_string(),
            format!(
                "{}/{}",
                di.metadata.namespace.as_deref().unwrap_or_default(),
                di.metadata.name.as_deref().unwrap_or_default()
            ),
        ]);
    }

    /// The source claim, read-only: its `disk.img`, or the device itself for a Block one.
    /// The path the disk is read from.
    fn mount_source(&mut self, claim: &str, block: bool) -> String {
        self.volumes.push(json!({
            "name": "source",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": true},
        }));
        if block {
            self.devices
                .push(json!({"name": "source", "devicePath": SOURCE_DEVICE}));
            SOURCE_DEVICE.into()
        } else {
            self.mounts
                .push(json!({"name": "source", "mountPath": SOURCE_DIR, "readOnly": true}));
            format!("{SOURCE_DIR}/disk.img")
        }
    }
}

/// Whether `di` clones a claim of another namespace.
pub fn cross_namespace(di: &DiskImport) -> bool {
    di.spec
        .source
        .pvc
        .as_ref()
        .and_then(|p| p.namespace.as_deref())
        .is_some_and(|ns| Some(ns) != di.metadata.namespace.as_deref())
}

/// Whether the Job of `di` serves uploads (`ido upload-server`): an upload, or the
/// receiving side of a clone from another namespace.
pub fn serves_uploads(di: &DiskImport) -> bool {
    di.spec.source.upload.is_some() || cross_namespace(di)
}

/// Where the sender's token is mounted.
pub const SENDER_TOKEN_DIR: &str = "/var/run/ido/clone";
/// Label naming, on a clone's sender Job and Secret, the DiskImport (`ns.name`, shortened)
/// they send to.
pub const CLONE_TARGET_LABEL: &str = "ido.dev/clone-target";
/// Annotation naming it in full (`ns/name`).
pub const CLONE_TARGET_ANNOTATION: &str = "ido.dev/clone-target";

/// Name of the sender Job of `di` and of its token's Secret, in the source namespace.
pub fn sender_name(di: &DiskImport) -> String {
    short_name(
        "clone-source-",
        &format!(
            "{}-{}",
            di.metadata.namespace.as_deref().unwrap_or_default(),
            di.metadata.name.as_deref().unwrap_or_default()
        ),
        63,
    )
}

/// Labels of the sender's Job, pods and Secret (no owner reference crosses namespaces: the
/// DiskImport's finalizer removes them).
pub fn sender_labels(di: &DiskImport) -> BTreeMap<String, String> {
    let target = format!(
        "{}.{}",
        di.metadata.namespace.as_deref().unwrap_or_default(),
        di.metadata.name.as_deref().unwrap_or_default()
    );
    BTreeMap::from([
        (CLONE_TARGET_LABEL.to_string(), short_name("", &target, 63)),
        ("app.kubernetes.io/managed-by".into(), "ido".into()),
        ("app.kubernetes.io/component".into(), "disk-clone".into()),
    ])
}

fn sender_metadata(di: &DiskImport, source_ns: &str) -> Value {
    json!({
        "name": sender_name(di),
        "namespace": source_ns,
        "labels": sender_labels(di),
        "annotations": {CLONE_TARGET_ANNOTATION: format!(
            "{}/{}",
            di.metadata.namespace.as_deref().unwrap_or_default(),
            di.metadata.name.as_deref().unwrap_or_default()
        )},
    })
}

/// The Secret of the sender's upload token, in the source namespace.
pub fn sender_secret(di: &DiskImport, source_ns: &str, token: &str) -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": sender_metadata(di, source_ns),
        "type": "Opaque",
        "stringData": {"token": token},
    }))
    .expect("a valid Secret")
}

/// The sender Job of a clone from another namespace: `ido clone-send` beside the source
/// claim (read-only), to the upload pod at `url`, its token a mounted Secret.
pub fn sender_job(
    di: &DiskImport,
    settings: &ImporterSettings,
    source_block: bool,
    url: &str,
) -> Option<Job> {
    let pvc = di.spec.source.pvc.as_ref()?;
    let source_ns = pvc.namespace.as_deref()?;
    let mut p = SourcePlan {
        args: vec![],
        volumes: vec![],
        mounts: vec![],
        devices: vec![],
    };
    let from = p.mount_source(&pvc.name, source_block);
    p.volumes.push(json!({
        "name": "token",
        "secret": {"secretName": sender_name(di), "defaultMode": 0o440},
    }));
    p.mounts
        .push(json!({"name": "token", "mountPath": SENDER_TOKEN_DIR, "readOnly": true}));
    let args = vec![
        "clone-send".to_string(),
        from,
        "--url".into(),
        url.into(),
        "--token-file".into(),
        format!("{SENDER_TOKEN_DIR}/token"),
        "--progress".into(),
        "plain".into(),
    ];
    let container = container(settings, args, p.mounts, p.devices, None);
    Some(job(
        sender_metadata(di, source_ns),
        &sender_labels(di),
        settings,
        container,
        p.volumes,
    ))
}

/// The claim `ns/name` a `snapshot` source of `di` is restored into: `dataSource` the
/// VolumeSnapshot `snapshot` (the cluster's CSI driver fills it), of `size` bytes, the
/// `class` and volume `mode` of the snapshotted claim. Labelled and annotated as the
/// sender's objects are; owned by `di` (not as its controller) when in its namespace.
pub fn restore_claim(
    di: &DiskImport,
    (ns, name): (&str, &str),
    snapshot: &str,
    (class, mode): (Option<String>, &str),
    size: u64,
) -> PersistentVolumeClaim {
    let mut metadata = sender_metadata(di, ns);
    metadata["name"] = json!(name);
    if Some(ns) == di.metadata.namespace.as_deref() {
        let mut owner = owner_reference(di);
        owner["controller"] = json!(false);
        metadata["ownerReferences"] = json!([owner]);
    }
    let modes = if di.spec.storage.access_modes.is_empty() {
        vec!["ReadWriteOnce".to_string()]
    } else {
        di.spec.storage.access_modes.clone()
    };
    let mut spec = json!({
        "accessModes": modes,
        "volumeMode": mode,
        "resources": {"requests": {"storage": quantity::format(size)}},
        "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot},
    });
    if let Some(c) = class {
        spec["storageClassName"] = json!(c);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": spec,
    }))
    .expect("a valid PersistentVolumeClaim")
}

/// The URL the sender in the source namespace posts to: the upload pod's.
pub fn sender_url(pod_ip: &str) -> String {
    let host = if pod_ip.contains(':') {
        format!("[{pod_ip}]")
    } else {
        pod_ip.to_string()
    };
    format!("http://{host}:{}/v1beta1/upload", super::upload::PORT)
}

/// The URL a sender Job was made with.
pub fn sender_job_url(job: &Job) -> Option<String> {
    let args = job
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .args
        .as_ref()?;
    let i = args.iter().position(|a| a == "--url")?;
    args.get(i + 1).cloned()
}

/// The claim a clone's importer Job reads (its `source` volume), if it is one.
pub fn source_claim(job: &Job) -> Option<String> {
    job.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "source")?
        .persistent_volume_claim
        .as_ref()
        .map(|c| c.claim_name.clone())
}

/// `https://host[:port]/bucket/key` → (`https://host[:port]`, `s3://bucket/key`); `None`
/// for `s3://…` or anything else.
fn s3_endpoint_form(url: &str) -> Option<(String, String)> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    let path = u.path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/')?;
    if bucket.is_empty() || key.is_empty() {
        return None;
    }
    let endpoint = u[..url::Position::BeforePath].to_string();
    Some((endpoint, format!("s3://{bucket}/{key}")))
}

/// `ido import SOURCE TARGET` with the source's flags of `plan` and the importer's own.
fn importer_args(di: &DiskImport, plan: &SourcePlan, mode: VolumeMode, size: u64) -> Vec<String> {
    let archive = di.spec.content_type() == ContentType::Archive;
    let target = match (archive, mode) {
        (true, _) => DATA_DIR,
        (false, VolumeMode::Filesystem) => DISK_FILE,
        (false, VolumeMode::Block) => DEVICE,
    };
    let upload = serves_uploads(di);
    // `ido upload-server TARGET [flags]`, or `ido import SOURCE TARGET [flags]`.
    let mut args = if upload {
        vec!["upload-server".to_string(), target.to_string()]
    } else {
        vec!["import".to_string(), plan.args[0].clone(), target.to_string()]
    };
    args.extend(plan.args[usize::from(!upload)..].iter().cloned());
    if archive {
        // `ido import SOURCE /data [source flags] --content-type archive --progress plain`:
        // unpacked into the claim's root; a failed pod leaves nothing there (what a killed
        // one left in its staging directory, the next removes), so there is nothing to
        // resume, force or preallocate.
        args.extend(["--content-type", "archive", "--progress", "plain"].map(String::from));
    } else {
        // `ido import SOURCE TARGET [source flags] --size N --progress plain [--preallocate] [--resume] --force`
        args.extend([
            "--size".into(),
            size.to_string(),
            "--progress".into(),
            "plain".into(),
        ]);
        if di.spec.preallocation == Some(true) {
            args.push("--preallocate".into());
        }
        // A replacement pod continues the last one's file (a checkpoint beside it). A block
        // device has no room for the checkpoint: there a new pod starts from 0. A blank
        // disk has nothing to continue, nor has an upload (its client sends it again).
        let blank = matches!(di.spec.source.kind(), Ok(SourceKind::Blank));
        if mode == VolumeMode::Filesystem && !blank && !upload {
            args.push("--resume".into());
        }
        // The claim is the DiskImport's own: what a failed pod left there is replaced.
        args.push("--force".into());
    }
    args
}

/// The importer container: `args`, with the claim mounted (Filesystem) or attached as
/// [`DEVICE`] (Block) besides the source's `mounts`; a sender's has no claim (`mode`
/// `None`).
fn container(
    settings: &ImporterSettings,
    args: Vec<String>,
    mounts: Vec<Value>,
    devices: Vec<Value>,
    mode: Option<VolumeMode>,
) -> Value {
    let mut container = json!({
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    match mode {
        Some(VolumeMode::Filesystem) => container["volumeMounts"]
            .as_array_mut()
            .expect("array")
            .insert(0, json!({"name": "disk", "mountPath": DATA_DIR})),
        Some(VolumeMode::Block) => {
            container["volumeDevices"] = json!([{"name": "disk", "devicePath": DEVICE}]);
        }
        None => {}
    }
    if !devices.is_empty() {
        let mut all = container["volumeDevices"].as_array().cloned().unwrap_or_default();
        all.extend(devices);
        container["volumeDevices"] = Value::Array(all);
    }
    if let Some(r) = &settings.resources {
        container["resources"] = serde_json::to_value(r).expect("resources serialize");
    }
    container
}

/// The importer Job of `di` for a disk of `size` bytes (`source_block`: a cloned claim is
/// a Block one); `None` for a blank Block claim without preallocation (no importer: the
/// claim is the disk), and for a `diskSource` not yet resolved to its claim (the controller
/// resolves it to a `pvc` source first).
pub fn importer_job(
    di: &DiskImport,
    settings: &ImporterSettings,
    size: u64,
    source_block: bool,
) -> Option<Job> {
    let plan = source_plan(di, source_block)?;
    let mode = volume_mode(di);
    let args = importer_args(di, &plan, mode, size);
    let mut volumes = vec![json!({
        "name": "disk",
        "persistentVolumeClaim": {"claimName": di.metadata.name},
    })];
    volumes.extend(plan.volumes);
    let mut container = container(settings, args, plan.mounts, plan.devices, Some(mode));
    if serves_uploads(di) {
        // Ready once it listens: the operator forwards uploads to ready pods only.
        let port = super::upload::PORT;
        container["ports"] = json!([{"name": "upload", "containerPort": port}]);
        container["readinessProbe"] = json!({
            "httpGet": {"path": "/healthz", "port": port},
            "periodSeconds": 2,
        });
    }
    let metadata = json!({
        "name": job_name(di),
        "namespace": di.metadata.namespace,
        "labels": labels(di),
        "ownerReferences": [owner_reference(di)],
    });
    Some(job(metadata, &labels(di), settings, container, volumes))
}

/// A Job of one unprivileged pod running `container` with `volumes`.
fn job(
    metadata: Value,
    labels: &BTreeMap<String, String>,
    settings: &ImporterSettings,
    container: Value,
    volumes: Vec<Value>,
) -> Job {
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            // A failed pod is replaced (a new pod starts the import again) up to this often.
            "backoffLimit": settings.backoff_limit,
            "podFailurePolicy": {"rules": [
                // Permanent errors (invalid image, checksum mismatch): fail at once.
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [PERMANENT_EXIT_CODE]}},
                // Evictions and preemptions do not count against backoffLimit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    });
    serde_json::from_value(job).expect("a valid Job")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_in_cdis_form_name_their_endpoint() {
        assert_eq!(
            s3_endpoint_form("https://minio.example:9000/images/flatcar/disk.qcow2"),
            Some((
                "https://minio.example:9000".to_string(),
                "s3://images/flatcar/disk.qcow2".to_string()
            ))
        );
        assert_eq!(s3_endpoint_form("s3://images/disk.qcow2"), None);
        assert_eq!(s3_endpoint_form("https://minio.example/images"), None);
    }

    #[test]
    fn names_fit_kubernetes_limits() {
        assert_eq!(short_name("importer-", "disk", 63), "importer-disk");
        let long = "a".repeat(100);
        let n = short_name("importer-", &long, 63);
        assert_eq!(n.len(), 63);
        assert!(n.starts_with("importer-aaa"));
        assert_eq!(n, short_name("importer-", &long, 63), "stable");
        assert_ne!(n, short_name("importer-", &"a".repeat(101), 63));
        let dotted = format!("{}.x", "b".repeat(60));
        assert!(!short_name("", &dotted, 20).contains(".-"));
    }

    #[test]
    fn claim_requests_add_filesystem_overhead() {
        const GIB: u64 = 1 << 30;
        assert_eq!(claim_request(10 * GIB, VolumeMode::Block, 0.055), 10 * GIB);
        let fs = claim_request(10 * GIB, VolumeMode::Filesystem, 0.055);
        assert_eq!(fs, 10804 << 20, "ceil(10240 MiB × 1.055)");
        assert_eq!(claim_request(1, VolumeMode::Block, 0.0), 1 << 20);
    }
}
