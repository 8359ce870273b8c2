//! CDI's `DataVolume` (`cdi.kubevirt.io/v1beta1`), served by ido in its CDI compatibility
//! mode (off by default, so that CDI and ido can share a cluster): each DataVolume becomes
//! a [`DiskImport`](crate::DiskImport) of the same name, owned by it, whose status is
//! mirrored back in CDI's shape.
//!
//! The spec is kept as written (the CRD preserves unknown fields), so that a field ido
//! cannot honour is refused by name in the DataVolume's `Ready` condition instead of being
//! dropped silently by the API server. [`to_disk_import`] says what is honoured:
//!
//! | DataVolume | DiskImport |
//! |---|---|
//! | `source.http` {url, secretRef, certConfigMap, extraHeaders, checksum} | `source.http` |
//! | `source.s3` {url, secretRef} | `source.s3` |
//! | `source.registry` {url, secretRef, certConfigMap, platform.architecture, pullMethod: pod} | `source.registry` (`linux/<arch>`) |
//! | `source.blank`, `source.upload`, `source.pvc` {namespace, name}, `source.snapshot` {namespace, name} | the same |
//! | `pvc` or `storage` {accessModes, resources.requests.storage, storageClassName, volumeMode} | `storage` |
//! | `contentType`, `preallocation` | the same |
//!
//! Refused, each by its path: `sourceRef`, `source.gcs`, `source.imageio`,
//! `source.vddk`, `source.http.insecureSkipVerify`, `source.http.secretExtraHeaders`,
//! `source.s3.certConfigMap`, `source.registry.imageStream`, `pullMethod: node`, claim
//! fields other than those above, `priorityClassName`, `serviceAccountName`, `checkpoints`,
//! `finalCheckpoint`, and any field CDI does not have.
//!
//! CDI's older flow, a plain claim annotated for import, is read by [`claim`].

pub mod claim;

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Condition, DiskImportSource, DiskImportSpec, FieldError, HttpSource, PvcSource, RegistrySource, S3Source,
    StorageSpec, UploadSource, VolumeMode,
    diskimport::{BlankSource, ContentType},
};

/// A DataVolume as CDI's users write it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "DataVolume",
    plural = "datavolumes",
    shortname = "dv",
    shortname = "dvs",
    namespaced,
    status = "DataVolumeStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","jsonPath":".status.restartCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct DataVolumeSpec {
    /// CDI's DataVolume spec, kept as written (ido honours a part of it; see the docs).
    #[serde(flatten)]
    #[schemars(skip)]
    pub fields: BTreeMap<String, Value>,
}

/// CDI's DataVolume status, mirrored from the DiskImport.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    /// The claim (the DataVolume's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// CDI's phase (`Pending`, `ImportScheduled`, `ImportInProgress`, `UploadScheduled`,
    /// `UploadReady`, `Succeeded`, `Failed`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// `N/A`, `45.67%`, `100.0%`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub progress: String,
    #[serde(default)]
    pub restart_count: i32,
    /// `Ready`, `Running`, `Bound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRD of [`DataVolume`]: its spec keeps unknown fields (so that they are refused by
/// name, not pruned).
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = <DataVolume as kube::CustomResourceExt>::crd();
    for v in &mut crd.spec.versions {
        if let Some(spec) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
        {
            spec.type_ = Some("object".into());
            spec.properties = None;
            spec.x_kubernetes_preserve_unknown_fields = Some(true);
        }
    }
    // CDI's older examples say `cdi.kubevirt.io/v1alpha1`: served too, the same schema (the
    // API server changes only the apiVersion between the two; ido reads v1beta1).
    let mut alpha = crd.spec.versions[0].clone();
    alpha.name = "v1alpha1".into();
    alpha.storage = false;
    alpha.deprecated = Some(true);
    alpha.deprecation_warning = Some("cdi.kubevirt.io/v1alpha1 DataVolume is deprecated; use v1beta1".into());
    crd.spec.versions.push(alpha);
    crd
}

/// CDI's `UploadTokenRequest` (`upload.cdi.kubevirt.io/v1beta1`, CDI's aggregated API),
/// as a CRD of [`crate::upload::UploadTokenRequest`]'s schema in CDI's group, so that CDI's
/// manifests (`spec.pvcName`) get tokens from ido's webhook in the compatibility mode.
pub fn upload_token_request_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = crate::upload::crd();
    crd.metadata.name = Some("uploadtokenrequests.upload.cdi.kubevirt.io".into());
    crd.spec.group = "upload.cdi.kubevirt.io".into();
    for v in &mut crd.spec.versions {
        v.name = "v1beta1".into();
    }
    crd
}

/// A map's member `key` (`path` names it in errors).
fn member<'a>(v: &'a Value, path: &str, key: &str) -> Result<Option<&'a Value>, Refused> {
    match v {
        Value::Object(m) => Ok(m.get(key).filter(|v| !v.is_null())),
        Value::Null => Ok(None),
        _ => Err(field(path, "must be an object")),
    }
}

/// A DataVolume field ido cannot honour, by its path (`spec.source.gcs`), and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Refused {
    pub path: String,
    pub message: String,
}

impl From<FieldError> for Refused {
    fn from(e: FieldError) -> Self {
        Self {
            path: e.field.into(),
            message: e.message,
        }
    }
}

fn field(path: &str, message: impl Into<String>) -> Refused {
    Refused {
        path: path.into(),
        message: message.into(),
    }
}

fn string(v: &Value, path: &str, key: &str) -> Result<Option<String>, Refused> {
    match member(v, path, key)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(field(&format!("{path}.{key}"), "must be a string")),
    }
}

/// Refuses every member of `v` not in `known` (`path.member: not supported by ido`).
fn only(v: &Value, path: &str, known: &[&str], why: &[(&str, &str)]) -> Result<(), Refused> {
    let Value::Object(m) = v else {
        return Ok(());
    };
    for k in m.keys() {
        if known.contains(&k.as_str()) {
            continue;
        }
        let reason = why
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, r)| (*r).to_string())
            .unwrap_or_else(|| "not supported by ido's CDI compatibility mode".into());
        return Err(field(&format!("{path}.{k}"), reason));
    }
    Ok(())
}

fn from<T: serde::de::DeserializeOwned>(v: &Value, path: &str) -> Result<T, Refused> {
    serde_json::from_value(v.clone()).map_err(|e| field(path, e.to_string()))
}

/// The DiskImport spec a DataVolume spec asks for; `Err` names the first field ido cannot
/// honour ([`Refused`]: `spec.source.gcs: …`).
pub fn to_disk_import(spec: &DataVolumeSpec) -> Result<DiskImportSpec, Refused> {
    let s = Value::Object(spec.fields.clone().into_iter().collect());
    only(
        &s,
        "spec",
        &["source", "pvc", "storage", "contentType", "preallocation"],
        &[
            (
                "sourceRef",
                "DataSource references are not supported; use source.pvc",
            ),
            ("checkpoints", "multi-stage (warm) imports are not supported"),
            ("finalCheckpoint", "multi-stage (warm) imports are not supported"),
        ],
    )?;
    let source = member(&s, "spec", "source")?.ok_or_else(|| field("spec.source", "is required"))?;
    let source = translate_source(source)?;
    let storage = match (member(&s, "spec", "pvc")?, member(&s, "spec", "storage")?) {
        (Some(_), Some(_)) => return Err(field("spec", "exactly one of pvc and storage may be set")),
        (Some(p), None) => translate_claim(p, "spec.pvc")?,
        (None, Some(st)) => translate_claim(st, "spec.storage")?,
        // `storage:` left empty (CDI's clone example): the claim's defaults, the source's size.
        (None, None) if s.get("storage").is_some() => StorageSpec::default(),
        (None, None) => return Err(field("spec", "one of pvc and storage is required")),
    };
    let content_type = match string(&s, "spec", "contentType")?.as_deref() {
        None | Some("") | Some("kubevirt") => None,
        Some("archive") => Some(ContentType::Archive),
        Some(other) => {
            return Err(field(
                "spec.contentType",
                format!("{other:?} is not kubevirt or archive"),
            ));
        }
    };
    let preallocation = match member(&s, "spec", "preallocation")? {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(field("spec.preallocation", "must be true or false")),
    };
    Ok(DiskImportSpec {
        source,
        content_type,
        storage,
        preallocation,
    })
}

fn translate_source(src: &Value) -> Result<DiskImportSource, Refused> {
    let p = "spec.source";
    only(
        src,
        p,
        &["http", "s3", "registry", "blank", "upload", "pvc", "snapshot"],
        &[
            ("gcs", "GCS is not supported; use its HTTPS URL with source.http"),
            ("imageio", "oVirt imageio is not supported"),
            ("vddk", "VMware VDDK is not supported"),
        ],
    )?;
    let mut out = DiskImportSource::default();
    if let Some(h) = member(src, p, "http")? {
        let p = "spec.source.http";
        only(
            h,
            p,
            &["url", "secretRef", "certConfigMap", "extraHeaders", "checksum"],
            &[
                (
                    "insecureSkipVerify",
                    "TLS verification cannot be turned off; give certConfigMap",
                ),
                ("secretExtraHeaders", "headers from Secrets are not supported"),
            ],
        )?;
        out.http = Some(HttpSource {
            url: string(h, p, "url")?.ok_or_else(|| field("spec.source.http.url", "is required"))?,
            secret_ref: string(h, p, "secretRef")?,
            cert_config_map: string(h, p, "certConfigMap")?,
            extra_headers: member(h, p, "extraHeaders")?
                .map(|v| from(v, "spec.source.http.extraHeaders"))
                .transpose()?
                .unwrap_or_default(),
            checksum: string(h, p, "checksum")?,
        });
    }
    if let Some(v) = member(src, p, "s3")? {
        let p = "spec.source.s3";
        only(
            v,
            p,
            &["url", "secretRef"],
            &[("certConfigMap", "a CA for S3 is not supported")],
        )?;
        out.s3 = Some(S3Source {
            url: string(v, p, "url")?.ok_or_else(|| field("spec.source.s3.url", "is required"))?,
            secret_ref: string(v, p, "secretRef")?,
        });
    }
    if let Some(r) = member(src, p, "registry")? {
        let p = "spec.source.registry";
        only(
            r,
            p,
            &["url", "secretRef", "certConfigMap", "platform", "pullMethod"],
            &[(
                "imageStream",
                "OpenShift image streams are not supported; give url",
            )],
        )?;
        if let Some(m) = string(r, p, "pullMethod")?
            && m != "pod"
        {
            return Err(field(
                "spec.source.registry.pullMethod",
                format!("{m:?}: only pod (the importer pulls the image) is supported"),
            ));
        }
        let platform = match member(r, p, "platform")? {
            None => None,
            Some(pl) => {
                only(pl, "spec.source.registry.platform", &["architecture"], &[])?;
                string(pl, "spec.source.registry.platform", "architecture")?.map(|a| format!("linux/{a}"))
            }
        };
        out.registry = Some(RegistrySource {
            url: string(r, p, "url")?.ok_or_else(|| field("spec.source.registry.url", "is required"))?,
            secret_ref: string(r, p, "secretRef")?,
            cert_config_map: string(r, p, "certConfigMap")?,
            platform,
        });
    }
    if member(src, p, "blank")?.is_some() {
        out.blank = Some(BlankSource {});
    }
    if member(src, p, "upload")?.is_some() {
        out.upload = Some(UploadSource::default());
    }
    if let Some(c) = member(src, p, "snapshot")? {
        let p = "spec.source.snapshot";
        only(c, p, &["namespace", "name"], &[])?;
        out.snapshot = Some(crate::diskimport::SnapshotSource {
            namespace: string(c, p, "namespace")?,
            name: string(c, p, "name")?.ok_or_else(|| field("spec.source.snapshot.name", "is required"))?,
        });
    }
    if let Some(c) = member(src, p, "pvc")? {
        let p = "spec.source.pvc";
        only(c, p, &["namespace", "name"], &[])?;
        out.pvc = Some(PvcSource {
            namespace: string(c, p, "namespace")?,
            name: string(c, p, "name")?.ok_or_else(|| field("spec.source.pvc.name", "is required"))?,
        });
    }
    out.kind()?;
    Ok(out)
}

/// CDI's `pvc` (a PersistentVolumeClaimSpec) or `storage`: the parts a DiskImport's claim has.
fn translate_claim(c: &Value, p: &str) -> Result<StorageSpec, Refused> {
    only(
        c,
        p,
        &["accessModes", "resources", "storageClassName", "volumeMode"],
        &[
            ("selector", "claim selectors are not supported"),
            ("volumeName", "binding to a named volume is not supported"),
            (
                "dataSource",
                "claim data sources are not supported; use spec.source",
            ),
            (
                "dataSourceRef",
                "claim data sources are not supported; use spec.source",
            ),
        ],
    )?;
    let size = match member(c, p, "resources")? {
        None => None,
        Some(r) => {
            let rp = format!("{p}.resources");
            only(r, &rp, &["requests", "limits"], &[])?;
            match member(r, &rp, "requests")? {
                None => None,
                Some(req) => string(req, &format!("{rp}.requests"), "storage")?,
            }
        }
    };
    let volume_mode = match string(c, p, "volumeMode")?.as_deref() {
        None | Some("Filesystem") | Some("FromStorageProfile") => None,
        Some("Block") => Some(VolumeMode::Block),
        Some(other) => {
            return Err(field(
                &format!("{p}.volumeMode"),
                format!("{other:?} is not Filesystem or Block"),
            ));
        }
    };
    Ok(StorageSpec {
        storage_class_name: string(c, p, "storageClassName")?,
        access_modes: member(c, p, "accessModes")?
            .map(|v| from(v, &format!("{p}.accessModes")))
            .transpose()?
            .unwrap_or_default(),
        volume_mode,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dv(y: &str) -> DataVolume {
        yaml::from_str(y).unwrap()
    }

    #[test]
    fn cdis_examples_translate() {
        // manifests/example/import-kubevirt-datavolume.yaml
        let d = dv(r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: example-import-dv}
spec:
  source:
    http:
      url: "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img"
  pvc:
    accessModes: [ReadWriteOnce]
    resources: {requests: {storage: "500Mi"}}
"#);
        let s = to_disk_import(&d.spec).unwrap();
        assert_eq!(
            s.source.http.unwrap().url,
            "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img"
        );
        assert_eq!(s.storage.size.as_deref(), Some("500Mi"));
        assert_eq!(s.storage.access_modes, ["ReadWriteOnce"]);

        // registry-image-block-datavolume.yaml
        let d = dv(r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: registry-image-datavolume}
spec:
  source:
    registry: {url: "docker://kubevirt/fedora-cloud-registry-disk-demo", platform: {architecture: arm64}}
  storage:
    volumeMode: Block
    resources: {requests: {storage: 5Gi}}
"#);
        let s = to_disk_import(&d.spec).unwrap();
        let r = s.source.registry.unwrap();
        assert_eq!(r.platform.as_deref(), Some("linux/arm64"));
        assert_eq!(s.storage.volume_mode, Some(VolumeMode::Block));

        // blank, upload, clone, archive, preallocation.
        for (y, check) in [
            (
                "source: {blank: {}}\npvc: {resources: {requests: {storage: 1Gi}}}\npreallocation: true",
                "blank",
            ),
            (
                "source: {upload: {}}\nstorage: {resources: {requests: {storage: 1Gi}}}",
                "upload",
            ),
            (
                "source: {pvc: {namespace: source-ns, name: golden}}\nstorage: {resources: {requests: {storage: 1Gi}}}",
                "pvc",
            ),
            (
                "source: {snapshot: {namespace: snaps, name: snap}}\nstorage:",
                "snapshot",
            ),
            (
                "source: {http: {url: 'http://x/a.tar'}}\ncontentType: archive\npvc: {resources: {requests: {storage: 1Gi}}}",
                "archive",
            ),
        ] {
            let d = dv(&format!(
                "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: x}}\nspec:\n  {}",
                y.replace('\n', "\n  ")
            ));
            let s = to_disk_import(&d.spec).unwrap_or_else(|e| panic!("{check}: {e}"));
            match check {
                "blank" => assert!(s.source.blank.is_some() && s.preallocation == Some(true)),
                "upload" => assert!(s.source.upload.is_some()),
                "pvc" => assert_eq!(s.source.pvc.unwrap().namespace.as_deref(), Some("source-ns")),
                "snapshot" => assert_eq!(s.source.snapshot.unwrap().name, "snap"),
                _ => assert_eq!(s.content_type, Some(ContentType::Archive)),
            }
        }
    }

    #[test]
    fn what_ido_cannot_honour_is_refused_by_name() {
        for (y, path) in [
            ("source: {gcs: {url: 'gs://b/k'}}\npvc: {}", "spec.source.gcs"),
            (
                "source: {snapshot: {name: s, size: 1}}\npvc: {}",
                "spec.source.snapshot.size",
            ),
            (
                "sourceRef: {kind: DataSource, name: d}\npvc: {}",
                "spec.sourceRef",
            ),
            (
                "source: {http: {url: 'https://x', insecureSkipVerify: true}}\npvc: {}",
                "spec.source.http.insecureSkipVerify",
            ),
            (
                "source: {registry: {url: 'docker://x', pullMethod: node}}\npvc: {}",
                "spec.source.registry.pullMethod",
            ),
            (
                "source: {blank: {}}\npvc: {selector: {matchLabels: {a: b}}}",
                "spec.pvc.selector",
            ),
            (
                "source: {blank: {}}\npvc: {}\npriorityClassName: high",
                "spec.priorityClassName",
            ),
            (
                "source: {blank: {}}\npvc: {}\nstorage: {}",
                "exactly one of pvc and storage",
            ),
            (
                "source: {blank: {}, upload: {}}\npvc: {}",
                "spec.source: exactly one",
            ),
            (
                "source: {blank: {}}\npvc: {}\ncontentType: iso",
                "spec.contentType",
            ),
        ] {
            let d = dv(&format!(
                "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: x}}\nspec:\n  {}",
                y.replace('\n', "\n  ")
            ));
            let e = to_disk_import(&d.spec).unwrap_err().to_string();
            assert!(e.contains(path), "{path}: {e}");
        }
    }

    #[test]
    fn the_crd_keeps_unknown_fields_of_the_spec() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("datavolumes.cdi.kubevirt.io"));
        let v = &crd.spec.versions[0];
        let spec = &v
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap()
            .properties
            .as_ref()
            .unwrap()["spec"];
        assert_eq!(spec.x_kubernetes_preserve_unknown_fields, Some(true));
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        assert_eq!(crd.spec.names.short_names.as_ref().unwrap(), &["dv", "dvs"]);
        let names: Vec<(&str, bool, bool)> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        assert_eq!(names, [("v1beta1", true, true), ("v1alpha1", true, false)]);
        let tokens = upload_token_request_crd();
        assert_eq!(
            tokens.metadata.name.as_deref(),
            Some("uploadtokenrequests.upload.cdi.kubevirt.io")
        );
        assert_eq!(tokens.spec.versions[0].name, "v1beta1");
        assert!(tokens.spec.versions[0].subresources.is_none());
    }
}
