//! CDI's PVC annotation flow: a plain PersistentVolumeClaim annotated with
//! `cdi.kubevirt.io/storage.import.endpoint` (or `…import.source`) is filled by an import,
//! and the import's state is written back into the claim's annotations, as CDI's import
//! controller does. [`to_disk_import`] reads the annotations CDI reads into the spec of the
//! DiskImport that fills the claim; what ido cannot honour is refused by the annotation's
//! name and value ([`Refused`]), never ignored:
//!
//! | annotation (`cdi.kubevirt.io/…`) | DiskImport |
//! |---|---|
//! | `storage.import.source`: `http` (also absent or empty), `s3`, `registry`, `none` | `source.http`, `s3`, `registry`, `blank` |
//! | `storage.import.endpoint` (required unless `none`) | the source's `url` |
//! | `storage.import.secretName`, `storage.import.certConfigMap` (empty: none) | `secretRef`, `certConfigMap` (no CA for S3) |
//! | `storage.import.extraHeaders…` (every key with that prefix), `storage.import.checksum` | `http.extraHeaders`, `http.checksum` |
//! | `storage.import.registryImportMethod` (`pod` or empty), `…registryImageArchitecture` | `registry.platform` (`linux/<arch>`) |
//! | `storage.contentType`: `kubevirt` (also absent or empty), `archive` | `contentType` |
//! | `storage.preallocation.requested` | `preallocation` |
//! | the claim's `volumeMode` and `resources.requests.storage` | `storage.volumeMode`, `storage.size` |
//!
//! Refused when set (non-empty): `storage.import.source` `gcs`, `imageio`, `vddk`, `glance`
//! or any other value, `…insecureSkipVerify: "true"`, `…secretExtraHeaders…`,
//! `…registryImageStream`, `…registryImportMethod: node`, `…diskId`, `…uuid`,
//! `…backingFile`, `…vddk.thumbprint`, `storage.checkpoint.*`,
//! `storage.pod.priorityclassname`, `storage.pod.serviceAccountName`.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use super::Refused;
use crate::{
    DiskImportSource, DiskImportSpec, HttpSource, RegistrySource, S3Source, StorageSpec, VolumeMode,
    diskimport::{BlankSource, ContentType, quantity},
};

/// CDI's annotations on a claim, read and written as CDI's import controller does.
pub mod annotations {
    /// The source's URL (required unless the source is `none`).
    pub const ENDPOINT: &str = "cdi.kubevirt.io/storage.import.endpoint";
    /// `http` (the default), `s3`, `registry`, `none` (a blank disk); CDI also has `gcs`,
    /// `imageio`, `vddk`, `glance`.
    pub const SOURCE: &str = "cdi.kubevirt.io/storage.import.source";
    pub const SECRET: &str = "cdi.kubevirt.io/storage.import.secretName";
    pub const CERT_CONFIG_MAP: &str = "cdi.kubevirt.io/storage.import.certConfigMap";
    /// A prefix: every annotation starting with it is one `Name: value` header.
    pub const EXTRA_HEADERS: &str = "cdi.kubevirt.io/storage.import.extraHeaders";
    /// A prefix, as [`EXTRA_HEADERS`].
    pub const SECRET_EXTRA_HEADERS: &str = "cdi.kubevirt.io/storage.import.secretExtraHeaders";
    pub const CHECKSUM: &str = "cdi.kubevirt.io/storage.import.checksum";
    pub const INSECURE_SKIP_VERIFY: &str = "cdi.kubevirt.io/storage.import.insecureSkipVerify";
    pub const REGISTRY_IMPORT_METHOD: &str = "cdi.kubevirt.io/storage.import.registryImportMethod";
    pub const REGISTRY_IMAGE_STREAM: &str = "cdi.kubevirt.io/storage.import.registryImageStream";
    pub const REGISTRY_IMAGE_ARCHITECTURE: &str = "cdi.kubevirt.io/storage.import.registryImageArchitecture";
    pub const DISK_ID: &str = "cdi.kubevirt.io/storage.import.diskId";
    pub const UUID: &str = "cdi.kubevirt.io/storage.import.uuid";
    pub const BACKING_FILE: &str = "cdi.kubevirt.io/storage.import.backingFile";
    pub const THUMBPRINT: &str = "cdi.kubevirt.io/storage.import.vddk.thumbprint";
    /// A prefix (`storage.checkpoint.previous`, `.current`, `.final`): multi-stage imports.
    pub const CHECKPOINT: &str = "cdi.kubevirt.io/storage.checkpoint.";
    pub const PRIORITY_CLASS: &str = "cdi.kubevirt.io/storage.pod.priorityclassname";
    pub const SERVICE_ACCOUNT: &str = "cdi.kubevirt.io/storage.pod.serviceAccountName";
    /// `kubevirt` (the default) or `archive`.
    pub const CONTENT_TYPE: &str = "cdi.kubevirt.io/storage.contentType";
    pub const PREALLOCATION_REQUESTED: &str = "cdi.kubevirt.io/storage.preallocation.requested";

    // Written back: the import's state.
    /// The importer pod's phase: `Pending`, `Running`, `Succeeded`, `Failed`. `Succeeded`
    /// marks the claim complete: it is never imported into again.
    pub const POD_PHASE: &str = "cdi.kubevirt.io/storage.pod.phase";
    /// Failed importer pods so far.
    pub const POD_RESTARTS: &str = "cdi.kubevirt.io/storage.pod.restarts";
    /// `false` while the importer pod cannot be scheduled.
    pub const POD_SCHEDULABLE: &str = "cdi.kubevirt.io/storage.pod.schedulable";
    /// The importer pod's name.
    pub const IMPORT_POD_NAME: &str = "cdi.kubevirt.io/storage.import.importPodName";
    /// `true` while the importer runs, else `false` with a reason and message.
    pub const RUNNING: &str = "cdi.kubevirt.io/storage.condition.running";
    pub const RUNNING_REASON: &str = "cdi.kubevirt.io/storage.condition.running.reason";
    pub const RUNNING_MESSAGE: &str = "cdi.kubevirt.io/storage.condition.running.message";
}

use annotations as ann;

/// Whether `pvc` asks for an import (it carries [`annotations::ENDPOINT`] or
/// [`annotations::SOURCE`], as CDI's import controller decides).
pub fn wants_import(pvc: &PersistentVolumeClaim) -> bool {
    let a = pvc.metadata.annotations.as_ref();
    a.is_some_and(|a| a.contains_key(ann::ENDPOINT) || a.contains_key(ann::SOURCE))
}

fn refused(annotation: &str, message: impl Into<String>) -> Refused {
    Refused {
        path: annotation.into(),
        message: message.into(),
    }
}

/// The DiskImport spec that fills `pvc`, from its annotations and its own spec; `overhead`
/// is the filesystem overhead (a fraction) kept free on a Filesystem claim, as for the claims
/// DiskImports make. `Err` names the first annotation (or claim field) ido cannot honour.
pub fn to_disk_import(pvc: &PersistentVolumeClaim, overhead: f64) -> Result<DiskImportSpec, Refused> {
    let empty = Default::default();
    let a = pvc.metadata.annotations.as_ref().unwrap_or(&empty);
    // Set and not empty.
    let get = |k: &str| a.get(k).map(String::as_str).filter(|v| !v.trim().is_empty());

    for (k, why) in [
        (
            ann::DISK_ID,
            "is for oVirt imageio sources, which are not supported",
        ),
        (ann::UUID, "is for VMware VDDK sources, which are not supported"),
        (
            ann::BACKING_FILE,
            "is for VMware VDDK sources, which are not supported",
        ),
        (
            ann::THUMBPRINT,
            "is for VMware VDDK sources, which are not supported",
        ),
        (
            ann::REGISTRY_IMAGE_STREAM,
            "OpenShift image streams are not supported; give the image in the endpoint",
        ),
        (
            ann::PRIORITY_CLASS,
            "the importer's priority class cannot be chosen per claim",
        ),
        (
            ann::SERVICE_ACCOUNT,
            "the importer's service account cannot be chosen per claim",
        ),
    ] {
        if let Some(v) = get(k) {
            return Err(refused(k, format!("{v:?}: {why}")));
        }
    }
    for (k, v) in a {
        if k.starts_with(ann::CHECKPOINT) && !v.is_empty() {
            return Err(refused(k, "multi-stage (warm) imports are not supported"));
        }
        if k.starts_with(ann::SECRET_EXTRA_HEADERS) && !v.is_empty() {
            return Err(refused(k, "headers from Secrets are not supported"));
        }
    }
    match get(ann::INSECURE_SKIP_VERIFY) {
        None | Some("false") => {}
        Some(v) => {
            return Err(refused(
                ann::INSECURE_SKIP_VERIFY,
                format!(
                    "{v:?}: TLS verification cannot be turned off; give {}",
                    ann::CERT_CONFIG_MAP
                ),
            ));
        }
    }

    let content_type = match get(ann::CONTENT_TYPE) {
        None | Some("kubevirt") => ContentType::Kubevirt,
        Some("archive") => ContentType::Archive,
        Some(v) => {
            return Err(refused(
                ann::CONTENT_TYPE,
                format!("{v:?} is not kubevirt or archive"),
            ));
        }
    };
    let preallocation = match get(ann::PREALLOCATION_REQUESTED) {
        None => None,
        // Go's strconv.ParseBool, as CDI reads it.
        Some("true" | "True" | "TRUE" | "t" | "T" | "1") => Some(true),
        Some("false" | "False" | "FALSE" | "f" | "F" | "0") => Some(false),
        Some(v) => {
            return Err(refused(
                ann::PREALLOCATION_REQUESTED,
                format!("{v:?} is not true or false"),
            ));
        }
    };

    let source_kind = get(ann::SOURCE).unwrap_or("http");
    let endpoint = || {
        get(ann::ENDPOINT).map(str::to_string).ok_or_else(|| {
            refused(
                ann::ENDPOINT,
                format!("is missing or empty; it is required for the source {source_kind}"),
            )
        })
    };
    // The URL is not repeated: it may hold credentials or a presigned query.
    let scheme = |url: &str, schemes: &[&str]| {
        let ok = url
            .split_once(':')
            .is_some_and(|(s, rest)| schemes.contains(&s) && !rest.is_empty());
        if ok {
            Ok(())
        } else {
            Err(refused(
                ann::ENDPOINT,
                format!(
                    "is not a {} URL (the source is {source_kind})",
                    schemes.join(" or ")
                ),
            ))
        }
    };
    let secret_ref = get(ann::SECRET).map(str::to_string);
    let cert_config_map = get(ann::CERT_CONFIG_MAP).map(str::to_string);
    let mut headers: Vec<(&String, &String)> = a
        .iter()
        .filter(|(k, v)| k.starts_with(ann::EXTRA_HEADERS) && !v.is_empty())
        .collect();
    headers.sort();
    let checksum = get(ann::CHECKSUM).map(str::to_string);
    let only_http = |set: bool, k: &str| {
        if set && source_kind != "http" {
            Err(refused(
                k,
                format!("is for http sources only (the source is {source_kind})"),
            ))
        } else {
            Ok(())
        }
    };
    only_http(checksum.is_some(), ann::CHECKSUM)?;
    if let Some((k, _)) = headers.first() {
        only_http(true, k.as_str())?;
    }
    let mut source = DiskImportSource::default();
    match source_kind {
        "http" => {
            let url = endpoint()?;
            scheme(&url, &["http", "https"][..])?;
            source.http = Some(HttpSource {
                url,
                secret_ref,
                cert_config_map,
                extra_headers: headers.into_iter().map(|(_, v)| v.clone()).collect(),
                checksum,
            });
        }
        "s3" => {
            if cert_config_map.is_some() {
                return Err(refused(ann::CERT_CONFIG_MAP, "a CA for S3 is not supported"));
            }
            let url = endpoint()?;
            scheme(&url, &["s3", "http", "https"][..])?;
            source.s3 = Some(S3Source { url, secret_ref });
        }
        "registry" => {
            match get(ann::REGISTRY_IMPORT_METHOD) {
                None | Some("pod") => {}
                Some(v) => {
                    return Err(refused(
                        ann::REGISTRY_IMPORT_METHOD,
                        format!("{v:?}: only pod (the importer pulls the image) is supported"),
                    ));
                }
            }
            if content_type == ContentType::Archive {
                return Err(refused(
                    ann::CONTENT_TYPE,
                    "\"archive\" is not allowed with the source registry",
                ));
            }
            let url = endpoint()?;
            scheme(&url, &["docker", "oci-archive"][..])?;
            source.registry = Some(RegistrySource {
                url,
                secret_ref,
                cert_config_map,
                platform: get(ann::REGISTRY_IMAGE_ARCHITECTURE).map(|arch| format!("linux/{arch}")),
            });
        }
        "none" => {
            if content_type == ContentType::Archive {
                return Err(refused(
                    ann::CONTENT_TYPE,
                    "\"archive\" is not allowed with the source none (a blank disk)",
                ));
            }
            source.blank = Some(BlankSource {});
        }
        "gcs" => {
            return Err(refused(
                ann::SOURCE,
                "\"gcs\" is not supported; use its HTTPS URL with the source http",
            ));
        }
        "imageio" | "vddk" | "glance" => {
            return Err(refused(ann::SOURCE, format!("{source_kind:?} is not supported")));
        }
        other => {
            return Err(refused(
                ann::SOURCE,
                format!("{other:?} is not http, s3, registry or none"),
            ));
        }
    }

    let spec = pvc.spec.clone().unwrap_or_default();
    let volume_mode = match spec.volume_mode.as_deref() {
        None | Some("Filesystem") => VolumeMode::Filesystem,
        Some("Block") => VolumeMode::Block,
        Some(other) => {
            return Err(refused(
                "spec.volumeMode",
                format!("{other:?} is not Filesystem or Block"),
            ));
        }
    };
    if content_type == ContentType::Archive && volume_mode == VolumeMode::Block {
        return Err(refused(
            ann::CONTENT_TYPE,
            "\"archive\" is unpacked into a filesystem; the claim's volumeMode is Block",
        ));
    }
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .ok_or_else(|| refused("spec.resources.requests.storage", "is required"))?;
    let bytes = quantity::parse(&request.0).ok_or_else(|| {
        refused(
            "spec.resources.requests.storage",
            format!("{:?} is not a size such as 10Gi", request.0),
        )
    })?;
    let size = disk_size(bytes, volume_mode, content_type, overhead);
    if size == 0 {
        return Err(refused(
            "spec.resources.requests.storage",
            format!("{:?} is too small for a disk (less than 1Mi)", request.0),
        ));
    }
    Ok(DiskImportSpec {
        source,
        content_type: (content_type == ContentType::Archive).then_some(ContentType::Archive),
        storage: StorageSpec {
            storage_class_name: None,
            access_modes: vec![],
            volume_mode: (volume_mode == VolumeMode::Block).then_some(VolumeMode::Block),
            size: Some(quantity::format(size)),
        },
        preallocation,
    })
}

/// The disk that fits a claim of `request` bytes: whole MiB; in Filesystem mode (a disk
/// image, not an archive) what is left after the filesystem's `overhead`, so that a claim
/// a DiskImport would make for that disk asks for no more than `request`.
pub fn disk_size(request: u64, mode: VolumeMode, content: ContentType, overhead: f64) -> u64 {
    const MIB: u64 = 1 << 20;
    let mib = request / MIB;
    let mib = match (mode, content) {
        (VolumeMode::Filesystem, ContentType::Kubevirt) => (mib as f64 / (1.0 + overhead)).floor() as u64,
        _ => mib,
    };
    mib * MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(y: &str) -> PersistentVolumeClaim {
        yaml::from_str(y).unwrap()
    }

    /// A claim of 10Gi with `annotations` (YAML flow mapping members).
    fn annotated(annotations: &str) -> PersistentVolumeClaim {
        pvc(&format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: c, annotations: {{{annotations}}}}}\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 10Gi}}}}}}\n"
        ))
    }

    #[test]
    fn cdis_example_claims_translate() {
        // CDI's manifests/example/golden-pvc.yaml, its endpoint filled in.
        let golden = pvc(r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: "golden-pvc"
  labels:
    app: containerized-data-importer
  annotations:
    cdi.kubevirt.io/storage.import.endpoint: "https://mirror.example/disk.qcow2"   # Required. Format: (http||s3)://www.myUrl.com/path/of/data
    cdi.kubevirt.io/storage.import.secretName: "" # Optional. The name of the secret containing credentials for the data source
spec:
  accessModes:
  - ReadWriteOnce
  resources:
    requests:
      storage: 10Gi
"#);
        assert!(wants_import(&golden));
        let s = to_disk_import(&golden, 0.055).unwrap();
        let h = s.source.http.unwrap();
        assert_eq!(h.url, "https://mirror.example/disk.qcow2");
        assert_eq!(h.secret_ref, None, "an empty secretName is no Secret");
        // 10240 MiB / 1.055, whole MiB: the claim a DiskImport would make for it is 10Gi.
        assert_eq!(s.storage.size.as_deref(), Some("9706Mi"));
        assert_eq!(s.storage.volume_mode, None);

        // manifests/example/registry-image-pvc.yaml
        let reg = pvc(r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: "registry-image-pvc"
  labels:
    app: containerized-data-importer
  annotations:
    cdi.kubevirt.io/storage.import.source: "registry"
    cdi.kubevirt.io/storage.import.endpoint: "docker://docker.io/cirros"
spec:
  accessModes:
  - ReadWriteOnce
  resources:
    requests:
      storage: 5Gi
  storageClassName: local
"#);
        let s = to_disk_import(&reg, 0.055).unwrap();
        assert_eq!(s.source.registry.unwrap().url, "docker://docker.io/cirros");

        // Every other source and option CDI's import controller reads.
        let s = to_disk_import(
            &annotated(
                "cdi.kubevirt.io/storage.import.endpoint: 'https://h/a.tar.gz', cdi.kubevirt.io/storage.import.secretName: auth, cdi.kubevirt.io/storage.import.certConfigMap: ca, cdi.kubevirt.io/storage.import.extraHeaders.b: 'B: 2', cdi.kubevirt.io/storage.import.extraHeaders: 'A: 1', cdi.kubevirt.io/storage.import.checksum: 'sha256:00', cdi.kubevirt.io/storage.contentType: archive, cdi.kubevirt.io/storage.import.insecureSkipVerify: 'false'",
            ),
            0.055,
        )
        .unwrap();
        let h = s.source.http.unwrap();
        assert_eq!(h.secret_ref.as_deref(), Some("auth"));
        assert_eq!(h.cert_config_map.as_deref(), Some("ca"));
        assert_eq!(h.extra_headers, ["A: 1", "B: 2"]);
        assert_eq!(s.content_type, Some(ContentType::Archive));
        assert_eq!(
            s.storage.size.as_deref(),
            Some("10Gi"),
            "an archive's size is the claim's"
        );
        let s = to_disk_import(
            &annotated(
                "cdi.kubevirt.io/storage.import.source: s3, cdi.kubevirt.io/storage.import.endpoint: 's3://b/k', cdi.kubevirt.io/storage.import.secretName: keys",
            ),
            0.055,
        )
        .unwrap();
        assert_eq!(s.source.s3.unwrap().secret_ref.as_deref(), Some("keys"));
        let s = to_disk_import(
            &annotated(
                "cdi.kubevirt.io/storage.import.source: registry, cdi.kubevirt.io/storage.import.endpoint: 'docker://q/d:1', cdi.kubevirt.io/storage.import.registryImportMethod: pod, cdi.kubevirt.io/storage.import.registryImageArchitecture: arm64",
            ),
            0.055,
        )
        .unwrap();
        assert_eq!(
            s.source.registry.unwrap().platform.as_deref(),
            Some("linux/arm64")
        );
        let mut blank = annotated(
            "cdi.kubevirt.io/storage.import.source: none, cdi.kubevirt.io/storage.preallocation.requested: 'true'",
        );
        blank.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let s = to_disk_import(&blank, 0.055).unwrap();
        assert!(s.source.blank.is_some() && s.preallocation == Some(true));
        assert_eq!(s.storage.volume_mode, Some(VolumeMode::Block));
        assert_eq!(
            s.storage.size.as_deref(),
            Some("10Gi"),
            "a Block claim is the disk"
        );

        assert!(!wants_import(&annotated("other: x")));
    }

    #[test]
    fn what_ido_cannot_honour_is_refused_by_annotation_and_value() {
        for (annotations, want) in [
            (
                "cdi.kubevirt.io/storage.import.source: gcs, cdi.kubevirt.io/storage.import.endpoint: 'gs://b/k'",
                "cdi.kubevirt.io/storage.import.source: \"gcs\" is not supported",
            ),
            (
                "cdi.kubevirt.io/storage.import.source: vddk, cdi.kubevirt.io/storage.import.endpoint: 'https://vc'",
                "cdi.kubevirt.io/storage.import.source: \"vddk\"",
            ),
            (
                "cdi.kubevirt.io/storage.import.source: ftp, cdi.kubevirt.io/storage.import.endpoint: 'ftp://x'",
                "cdi.kubevirt.io/storage.import.source: \"ftp\" is not http, s3, registry or none",
            ),
            (
                "cdi.kubevirt.io/storage.import.endpoint: ''",
                "cdi.kubevirt.io/storage.import.endpoint: is missing or empty",
            ),
            (
                "cdi.kubevirt.io/storage.import.endpoint: 'ftp://user:hunter2@x/d'",
                "cdi.kubevirt.io/storage.import.endpoint: is not a http or https URL",
            ),
            (
                "cdi.kubevirt.io/storage.import.endpoint: 'https://x', cdi.kubevirt.io/storage.contentType: iso",
                "cdi.kubevirt.io/storage.contentType: \"iso\" is not kubevirt or archive",
            ),
            (
                "cdi.kubevirt.io/storage.import.endpoint: 'https://x', cdi.kubevirt.io/storage.import.insecureSkipVerify: 'true'",
                "cdi.kubevirt.io/storage.import.insecureSkipVerify: \"true\"",
            ),
            (
                "cdi.kubevirt.io/storage.import.source: registry, cdi.kubevirt.io/storage.import.endpoint: 'docker://x', cdi.kubevirt.io/storage.import.registryImportMethod: node",
                "cdi.kubevirt.io/storage.import.registryImportMethod: \"node\"",
            ),
            (
                "cdi.kubevirt.io/storage.import.endpoint: 'https://x', cdi.kubevirt.io/storage.import.secretExtraHeaders.0: hdrs",
                "cdi.kubevirt.io/storage.import.secretExtraHeaders.0: ",
            ),
            (
                "cdi.kubevirt.io/storage.import.endpoint: 'https://x', cdi.kubevirt.io/storage.checkpoint.current: snap-1",
                "cdi.kubevirt.io/storage.checkpoint.current: ",
            ),
            (
                "cdi.kubevirt.io/storage.import.source: s3, cdi.kubevirt.io/storage.import.endpoint: 's3://b/k', cdi.kubevirt.io/storage.import.checksum: 'sha256:00'",
                "cdi.kubevirt.io/storage.import.checksum: is for http sources only",
            ),
            (
                "cdi.kubevirt.io/storage.import.source: none, cdi.kubevirt.io/storage.contentType: archive",
                "cdi.kubevirt.io/storage.contentType: ",
            ),
            (
                "cdi.kubevirt.io/storage.import.endpoint: 'https://x', cdi.kubevirt.io/storage.preallocation.requested: maybe",
                "cdi.kubevirt.io/storage.preallocation.requested: \"maybe\"",
            ),
            (
                "cdi.kubevirt.io/storage.import.endpoint: 'https://x', cdi.kubevirt.io/storage.pod.priorityclassname: high",
                "cdi.kubevirt.io/storage.pod.priorityclassname: \"high\"",
            ),
        ] {
            let e = to_disk_import(&annotated(annotations), 0.055)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{want}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let mut no_size = annotated("cdi.kubevirt.io/storage.import.endpoint: 'https://x'");
        no_size.spec.as_mut().unwrap().resources = None;
        let e = to_disk_import(&no_size, 0.055).unwrap_err().to_string();
        assert_eq!(e, "spec.resources.requests.storage: is required");
    }
}
