//! `DiskImport` (`ido.dev/v1alpha1`): a VM disk image imported into a PersistentVolumeClaim,
//! modelled on CDI's `DataVolume`.
//!
//! The controller creates the claim and an importer Job that runs `ido import` with the
//! claim mounted (Filesystem: `/data/disk.img`; Block: the raw device). The importer streams
//! and converts while it downloads (qcow2, raw, ISO; gzip/xz/zstd/bzip2/tar), so there is no
//! scratch claim and no second copy. Credentials are mounted Secret files the controller
//! never reads.
//!
//! ```yaml
//! apiVersion: ido.dev/v1alpha1
//! kind: DiskImport
//! metadata: {name: fedora, namespace: vms}
//! spec:
//!   source:
//!     http:
//!       url: https://mirror.example/Fedora-Cloud-Base.qcow2
//!       checksum: sha256:…
//!       secretRef: mirror-basic-auth     # keys accessKeyId, secretKey (basic auth)
//!       certConfigMap: mirror-ca         # every key a PEM bundle
//!       extraHeaders: ["X-Token-Id: 42"]
//!   storage:
//!     storageClassName: fast
//!     accessModes: [ReadWriteOnce]
//!     volumeMode: Filesystem             # or Block
//!     size: 10Gi                         # absent: the image's virtual size + fs overhead
//! ```
//!
//! With `contentType: archive` the source is a tar (maybe compressed) that the importer
//! unpacks into the root of a Filesystem claim (`ido import --content-type archive SOURCE
//! /data`), refusing members that would land outside it.
//!
//! Phases follow CDI's: `Pending` → `ImportScheduled` → `ImportInProgress` → `Succeeded` |
//! `Failed`. The spec is immutable once created (a CEL rule; delete and create again to
//! retry a failed import).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;

/// Condition types (CDI's).
pub mod conditions {
    /// The disk is imported and the claim ready to use.
    pub const READY: &str = "Ready";
    /// The importer is running.
    pub const RUNNING: &str = "Running";
    /// The claim is bound to a volume.
    pub const BOUND: &str = "Bound";
}

/// Condition reasons (see [`Reason`](crate::Reason), where every reason is spelled).
pub mod reasons {
    use crate::Reason;

    /// The claim is bound.
    pub const BOUND: &str = Reason::Bound.as_str();
    /// Waiting (claim not bound, importer not started).
    pub const PENDING: &str = Reason::Pending.as_str();
    /// The claim lost its volume.
    pub const CLAIM_LOST: &str = Reason::ClaimLost.as_str();
    /// The importer is running.
    pub const POD_RUNNING: &str = Reason::PodRunning.as_str();
    /// The transfer is running (Ready=False).
    pub const TRANSFER_RUNNING: &str = Reason::TransferRunning.as_str();
    /// The import finished.
    pub const COMPLETED: &str = Reason::Completed.as_str();
    /// The importer failed (the message is its termination message).
    pub const ERROR: &str = Reason::Error.as_str();
    /// The import failed for good (retries exhausted or a permanent error).
    pub const IMPORT_FAILED: &str = Reason::ImportFailed.as_str();
    /// A spec field is invalid; the message names it.
    pub const INVALID_SPEC: &str = Reason::InvalidSpec.as_str();
    /// `storage.size` is absent and the image's virtual size cannot be learnt up front.
    pub const SIZE_UNKNOWN: &str = Reason::SizeUnknown.as_str();
    /// The claim or Job could not be created.
    pub const CREATE_FAILED: &str = Reason::CreateFailed.as_str();
    /// The upload pod is ready to take the upload.
    pub const UPLOAD_READY: &str = Reason::UploadReady.as_str();
    /// The operator serves no uploads (no upload key).
    pub const UPLOAD_UNAVAILABLE: &str = Reason::UploadUnavailable.as_str();
    /// A clone from another namespace is not authorized.
    pub const CLONE_UNAUTHORIZED: &str = Reason::CloneUnauthorized.as_str();
}

/// An image imported into a PersistentVolumeClaim of the same name.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "ido.dev",
    version = "v1alpha1",
    kind = "DiskImport",
    plural = "diskimports",
    shortname = "di",
    namespaced,
    status = "DiskImportStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","jsonPath":".status.restartCount","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: delete the DiskImport and create it again"))]
#[x_kube(validation = Rule::new("!has(self.contentType) || self.contentType != 'archive' || (!has(self.source.blank) && !has(self.source.registry) && !has(self.source.pvc) && !has(self.source.snapshot) && !has(self.source.diskSource))").message("contentType archive is not allowed with blank, registry, pvc, snapshot or diskSource sources"))]
#[x_kube(validation = Rule::new("!has(self.contentType) || self.contentType != 'archive' || !has(self.storage) || !has(self.storage.volumeMode) || self.storage.volumeMode != 'Block'").message("contentType archive unpacks into a filesystem: storage.volumeMode Block is not allowed"))]
#[serde(rename_all = "camelCase")]
pub struct DiskImportSpec {
    /// Where the image comes from: exactly one of `http`, `s3`, `registry`, `blank`, `pvc`,
    /// `snapshot`, `diskSource`, `upload`.
    pub source: DiskImportSource,
    /// What the source holds (CDI's `contentType`): `kubevirt` (the default), a VM disk
    /// image converted to raw; `archive`, a tar (plain, gz, xz, zst or bz2) unpacked into the
    /// root of a Filesystem claim. `archive` is not allowed with `blank`, `registry`, `pvc` or
    /// `diskSource` sources nor with `storage.volumeMode: Block`, and needs `storage.size` (the claim's
    /// size as it is: no probe, no filesystem overhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<ContentType>,
    /// The claim to create.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Write every block of the disk (no holes) instead of a sparse image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
}

/// The source: exactly one member is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.http), has(self.s3), has(self.registry), has(self.blank), has(self.pvc), has(self.snapshot), has(self.diskSource), has(self.upload)].filter(x, x).size() == 1").message("exactly one of http, s3, registry, blank, pvc, snapshot, diskSource, upload"))]
pub struct DiskImportSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<BlankSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSource>,
    #[serde(default, rename = "diskSource", skip_serializing_if = "Option::is_none")]
    pub disk_source: Option<DiskSourceReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSource>,
}

/// A [`DiskSource`](crate::DiskSource) of the DiskImport's namespace: a clone of the claim
/// it resolves to, exactly as `pvc` with that claim. The DiskImport is Pending while the
/// DiskSource is not Ready; the claim it names when the importer Job is created is the one
/// cloned, wherever the DiskSource points later.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DiskSourceReference {
    pub name: String,
}

/// A disk sent by a client (CDI's `source.upload`; `ido upload`, `curl`, `virtctl
/// image-upload`): an upload pod holds the claim and takes one upload, converted as it
/// arrives; the operator's upload endpoint lets in requests bearing a token of an
/// `UploadTokenRequest`. Needs `storage.size`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadSource {
    /// Expected checksum of the bytes as sent: `sha256:HEX`, `sha512:`, `sha1:`, `md5:`. A
    /// mismatch fails the upload and leaves no disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// A claim whose disk is copied (CDI's `source.pvc`, a host-assisted clone): its
/// `disk.img` (Filesystem) or the device itself (Block), byte for byte, sparse, Filesystem
/// and Block either way. A claim another DiskImport fills is copied once that import has
/// succeeded.
///
/// A claim of another namespace is cloned only for a requester allowed to: the operator's
/// webhook asks the API server (a SubjectAccessReview) whether whoever creates the
/// DiskImport may `create` `diskimports/source` in the claim's namespace (for a DataVolume,
/// CDI's `datavolumes/source`), and marks the DiskImport if so (`ido.dev/clone-token`).
/// Unmarked, it waits (`CloneUnauthorized`). The copy then runs in two pods: one in the
/// source namespace reads the claim and sends it to one in the DiskImport's, which writes
/// it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// The claim's namespace (default: the DiskImport's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// A VolumeSnapshot (`snapshot.storage.k8s.io/v1`) whose disk is copied (CDI's
/// `source.snapshot`): the snapshot is restored to a claim in its namespace (the cluster's
/// CSI driver fills it), that claim is cloned as `pvc` would be, and then removed. Another
/// namespace needs the same permission as a `pvc` clone's (`diskimports/source` there).
/// Waits while the snapshot is missing or not `readyToUse`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// The snapshot's namespace (default: the DiskImport's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// An image at an HTTP(S) URL.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// `http://` or `https://` URL of the image (qcow2, raw, ISO; possibly gz/xz/zst/bz2/tar).
    pub url: String,
    /// A Secret in the same namespace with keys `accessKeyId` (user) and `secretKey`
    /// (password) for basic auth (CDI's keys). Mounted into the importer, never read by
    /// the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// A ConfigMap in the same namespace whose every key is a PEM bundle of CAs to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Extra request headers, `Name: value` (not secret: they are visible in the Job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<String>,
    /// Expected checksum of the bytes as fetched: `sha256:HEX`, `sha512:`, `sha1:`, `md5:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// An object in S3 (or an S3-compatible store, path-style URL).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// `s3://bucket/key` or `https://endpoint/bucket/key`.
    pub url: String,
    /// A Secret with keys `accessKeyId` and `secretKey`; absent: anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

/// A container disk image (`docker://registry/repo:tag`, the disk under `/disk/`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySource {
    /// `docker://registry/repository:tag` or `@sha256:…`.
    pub url: String,
    /// A `kubernetes.io/dockerconfigjson` Secret with credentials for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// A ConfigMap whose every key is a PEM bundle of CAs to trust for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// `os/arch[/variant]` to pick from a multi-platform image (default: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// An empty disk of `storage.size`: a sparse `disk.img` on a Filesystem claim, the claim
/// itself in Block mode (zeroed with `preallocation`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BlankSource {}

/// What a DiskImport's source holds: `kubevirt`, a VM disk image (qcow2, raw, ISO, vmdk, …)
/// converted to raw (`disk.img` on a Filesystem claim, or the Block device); `archive`, a tar
/// unpacked into the root of a Filesystem claim (members checked: nothing outside the claim,
/// no device nodes).
// No doc comments on the variants: the field's description stays the CRD's (as VolumeMode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    #[default]
    Kubevirt,
    Archive,
}

impl ContentType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kubevirt => "kubevirt",
            Self::Archive => "archive",
        }
    }
}

impl DiskImportSpec {
    /// The content type, `kubevirt` when absent.
    pub fn content_type(&self) -> ContentType {
        self.content_type.unwrap_or_default()
    }
}

/// Filesystem (a `disk.img` file on the volume) or Block (the volume is the disk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VolumeMode {
    #[default]
    Filesystem,
    Block,
}

impl VolumeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filesystem => "Filesystem",
            Self::Block => "Block",
        }
    }
}

/// The claim's shape (CDI's `storage`, without the StorageProfile lookups).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Storage class; absent: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Default `[ReadWriteOnce]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// Default `Filesystem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<VolumeMode>,
    /// The disk's size (a quantity: `10Gi`). The claim asks for more in Filesystem mode
    /// (filesystem overhead, default 5.5 %). Absent: the image's virtual size, read from
    /// its first bytes before anything is created; this works for `http` sources without
    /// `secretRef` whose image is qcow2, raw/ISO or zstd with a content size. Otherwise the
    /// DiskImport waits with `Ready=False`, reason `SizeUnknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// CDI's phases (the ones an import goes through).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DiskImportPhase {
    /// Not yet seen by the controller.
    #[default]
    #[serde(rename = "")]
    New,
    /// Waiting: for the size, a valid spec, or the claim.
    Pending,
    /// Claim and importer Job created; the importer pod has not started.
    ImportScheduled,
    /// The importer pod runs.
    ImportInProgress,
    /// Claim and upload Job created; the upload pod is not ready yet.
    UploadScheduled,
    /// The upload pod is ready: an upload may start (or is running).
    UploadReady,
    /// A clone (`source.pvc`): claim and Job created, the copy has not started.
    CloneScheduled,
    /// A clone's copy runs.
    CloneInProgress,
    /// The disk is in the claim.
    Succeeded,
    /// The import failed for good (see the Ready condition).
    Failed,
}

impl DiskImportPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "",
            Self::Pending => "Pending",
            Self::ImportScheduled => "ImportScheduled",
            Self::ImportInProgress => "ImportInProgress",
            Self::UploadScheduled => "UploadScheduled",
            Self::UploadReady => "UploadReady",
            Self::CloneScheduled => "CloneScheduled",
            Self::CloneInProgress => "CloneInProgress",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for DiskImportPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a DiskImport.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskImportStatus {
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: DiskImportPhase,
    /// `N/A` while unknown, `100.0%` when done (CDI's format).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub progress: String,
    /// The claim holding the disk (the DiskImport's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// The disk's size (given, or the image's virtual size), a quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Importer pods that failed and were replaced.
    #[serde(default)]
    pub restart_count: i32,
    /// `Ready`, `Running`, `Bound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl DiskImportSource {
    /// The member set, as `(field name, …)`; `Err` names what is wrong.
    pub fn kind(&self) -> Result<SourceKind<'_>, crate::FieldError> {
        let set: Vec<SourceKind<'_>> = [
            self.http.as_ref().map(SourceKind::Http),
            self.s3.as_ref().map(SourceKind::S3),
            self.registry.as_ref().map(SourceKind::Registry),
            self.blank.as_ref().map(|_| SourceKind::Blank),
            self.pvc.as_ref().map(SourceKind::Pvc),
            self.snapshot.as_ref().map(SourceKind::Snapshot),
            self.disk_source.as_ref().map(SourceKind::DiskSource),
            self.upload.as_ref().map(SourceKind::Upload),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [one] => Ok(*one),
            [] => Err(crate::FieldError::new(
                "spec.source",
                "one of http, s3, registry, blank, pvc, snapshot, diskSource, upload is required",
            )),
            _ => Err(crate::FieldError::new(
                "spec.source",
                "exactly one of http, s3, registry, blank, pvc, snapshot, diskSource, upload may be set",
            )),
        }
    }
}

/// The one source of a DiskImport.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SourceKind<'a> {
    Http(&'a HttpSource),
    S3(&'a S3Source),
    Registry(&'a RegistrySource),
    Blank,
    Pvc(&'a PvcSource),
    Snapshot(&'a SnapshotSource),
    DiskSource(&'a DiskSourceReference),
    Upload(&'a UploadSource),
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn cdi_shaped_manifest_round_trips() {
        let y = r#"
apiVersion: ido.dev/v1alpha1
kind: DiskImport
metadata: {name: fedora, namespace: vms}
spec:
  source:
    http:
      url: https://mirror.example/f.qcow2
      secretRef: auth
      certConfigMap: ca
      extraHeaders: ["X-A: b"]
      checksum: sha256:00
  storage: {storageClassName: fast, accessModes: [ReadWriteOnce], volumeMode: Block, size: 10Gi}
  preallocation: true
"#;
        let di: DiskImport = yaml::from_str(y).unwrap();
        let SourceKind::Http(h) = di.spec.source.kind().unwrap() else {
            panic!("http")
        };
        assert_eq!(h.secret_ref.as_deref(), Some("auth"));
        assert_eq!(di.spec.storage.volume_mode, Some(VolumeMode::Block));
        let back = serde_json::to_value(&di.spec).unwrap();
        assert_eq!(back["storage"]["size"], "10Gi");
        assert_eq!(back["source"]["http"]["extraHeaders"][0], "X-A: b");
        assert_eq!(di.spec.content_type(), ContentType::Kubevirt);
        assert!(back.get("contentType").is_none(), "absent stays absent");
        let archive: DiskImport =
            yaml::from_str(&y.replace("preallocation: true", "contentType: archive")).unwrap();
        assert_eq!(archive.spec.content_type(), ContentType::Archive);
        assert_eq!(
            serde_json::to_value(&archive.spec).unwrap()["contentType"],
            "archive"
        );
        let two = DiskImportSource {
            blank: Some(BlankSource {}),
            s3: Some(S3Source::default()),
            ..Default::default()
        };
        assert!(
            two.kind()
                .unwrap_err()
                .to_string()
                .contains("spec.source: exactly one")
        );
        assert!(DiskImportSource::default().kind().is_err());
    }

    #[test]
    fn crd_names_columns_and_rules() {
        let crd = DiskImport::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("diskimports.ido.dev"));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Phase", "Progress", "Size", "Age"]);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let y = yaml::to_string(&crd).unwrap();
        for s in [
            "ImportInProgress",
            "certConfigMap",
            "volumeMode",
            "self == oldSelf",
            "exactly one of http, s3, registry, blank, pvc, snapshot, diskSource, upload",
            "contentType archive is not allowed with blank, registry, pvc, snapshot or",
            "root of a Filesystem claim. `archive` is not allowed",
            "storage.volumeMode Block is not allowed",
            "- kubevirt",
            "- archive",
        ] {
            assert!(y.contains(s), "{s} missing from the CRD");
        }
    }
}

/// Kubernetes quantities for sizes (`10Gi`, `512M`, `1073741824`).
pub mod quantity {
    /// Bytes of a quantity: binary (`Ki` … `Ei`) or decimal (`k`, `M` … `E`) suffixes, or
    /// none; fractions (`1.5Gi`) are rounded up to a byte. `None` if invalid.
    pub fn parse(q: &str) -> Option<u64> {
        let q = q.trim();
        let split = q
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(q.len());
        let (num, suffix) = q.split_at(split);
        let mult: u64 = match suffix {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "Pi" => 1 << 50,
            "Ei" => 1 << 60,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "P" => 1_000_000_000_000_000,
            "E" => 1_000_000_000_000_000_000,
            _ => return None,
        };
        if num.is_empty() || num.starts_with('.') || num.matches('.').count() > 1 {
            return None;
        }
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: u64 = int.parse().ok()?;
        let mut bytes = int.checked_mul(mult)?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let f: u128 = frac[..digits as usize].parse().ok()?;
            let scale = 10u128.pow(digits);
            let extra = (f * u128::from(mult)).div_ceil(scale);
            bytes = bytes.checked_add(u64::try_from(extra).ok()?)?;
        }
        Some(bytes)
    }

    /// The shortest exact binary quantity for `bytes` (`10Gi`, `1536Mi`, `1000`).
    pub fn format(bytes: u64) -> String {
        for (suffix, shift) in [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ] {
            if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
                return format!("{}{suffix}", bytes >> shift);
            }
        }
        bytes.to_string()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn quantities() {
            assert_eq!(parse("10Gi"), Some(10 << 30));
            assert_eq!(parse("4G"), Some(4_000_000_000));
            assert_eq!(parse("1.5Gi"), Some(3 << 29));
            assert_eq!(parse("1048576"), Some(1 << 20));
            for bad in ["", "Gi", "1.2.3Gi", "5X", "-1Gi", ".5Gi"] {
                assert_eq!(parse(bad), None, "{bad:?}");
            }
            assert_eq!(format(10 << 30), "10Gi");
            assert_eq!(format(1536 << 20), "1536Mi");
            assert_eq!(format(1000), "1000");
        }
    }
}
