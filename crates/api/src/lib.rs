//! Kubernetes API types of the image distribution operator.
//!
//! - [`NodeImage`] (`image.giantswarm.io/v1alpha1`): wire-compatible with the Go original,
//!   plus additive status fields (conditions, observedGeneration, per-location status).
//! - [`Release`] (`release.giantswarm.io/v1alpha1`): the part of Giant Swarm's Release that
//!   the operator reads. Its CRD is shipped for tests and demos only.
//! - [`ImageSync`] (`ido.dev/v1alpha1`): mirrors container images between registries; its
//!   spec is a superset of image-operator's `Image`.
//!
//! - [`image_operator::Image`] (`skopeo.io/v1alpha1`): image-operator's kind, served on
//!   the ImageSync engine when the chart opts in.
//! - [`DiskImport`] (`ido.dev/v1alpha1`): a disk image imported into a PersistentVolumeClaim
//!   by an importer Job (CDI's DataVolume, streamed, no scratch space).
//! - [`DiskSource`] and [`DiskImportCron`] (`ido.dev/v1alpha1`): a stable name for a claim
//!   (CDI's DataSource) and a scheduled import that points one at the newest image of a
//!   source (CDI's DataImportCron).
//!
//! - [`cdi::DataVolume`] (`cdi.kubevirt.io/v1beta1`): CDI's kind, served as DiskImports in
//!   the CDI compatibility mode.
//! - [`upload::UploadTokenRequest`] (`ido.dev/v1alpha1`): a token to upload a disk into a
//!   DiskImport, answered by ido's admission webhook to a dry run, never stored.
//!
//! CRD YAML is generated from these types (`ido crds`), never written by hand.

pub mod cdi;
pub mod condition;
pub mod diskimport;
pub mod diskimportcron;
pub mod disksource;
pub mod duration;
pub mod image_operator;
pub mod imagecache;
pub mod imagesync;
pub mod names;
pub mod nodeimage;
pub mod reason;
pub mod release;
pub mod snapshot;
pub mod upload;

pub use condition::{Condition, ConditionStatus};
pub use diskimport::{
    BlankSource, DiskImport, DiskImportPhase, DiskImportSource, DiskImportSpec, DiskImportStatus,
    DiskSourceReference, HttpSource, PvcSource, RegistrySource, S3Source, SnapshotSource, SourceKind,
    StorageSpec, UploadSource, VolumeMode,
};
pub use diskimportcron::{
    CronImport, DiskImportCron, DiskImportCronSpec, DiskImportCronStatus, GarbageCollect,
};
pub use disksource::{ClaimReference, DiskSource, DiskSourceSource, DiskSourceSpec, DiskSourceStatus};
pub use imagecache::{
    CachePhase, CachePolicy, CachePolicyStatus, CachedImage, CachedImageSpec, CachedImageStatus,
    ClusterImageCachePolicy, ClusterImageCachePolicySpec, ImageCachePolicy, ImageCachePolicySpec,
};
pub use imagesync::{
    ImageSync, ImageSyncSpec, ImageSyncStatus, SecretReference, SyncEndpoint, SyncMode, TagResult, TagStatus,
};
pub use nodeimage::{
    LocationState, LocationStatus, NodeImage, NodeImageSpec, NodeImageState, NodeImageStatus,
};
pub use reason::Reason;

/// A spec field that cannot be worked with: the field, and why (the message names the value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path, e.g. `spec.source.http.url`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
pub use release::{Release, ReleaseComponent, ReleaseSpec};

use kube::CustomResourceExt;

/// API groups of other projects whose kinds ido serves for their users (image-operator's,
/// CDI's): their CRDs are not ido's to install where those projects run.
pub const FOREIGN_GROUPS: [&str; 3] = ["skopeo.io", "cdi.kubevirt.io", "upload.cdi.kubevirt.io"];

/// Every CRD the project defines, in the order `ido crds` prints them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    [
        NodeImage::crd(),
        Release::crd(),
        ImageSync::crd(),
        DiskImport::crd(),
        DiskSource::crd(),
        DiskImportCron::crd(),
        image_operator::crd(),
        ImageCachePolicy::crd(),
        ClusterImageCachePolicy::crd(),
        CachedImage::crd(),
        upload::crd(),
        cdi::crd(),
        cdi::upload_token_request_crd(),
    ]
    .into_iter()
    .map(|mut crd| {
        for v in &mut crd.spec.versions {
            if let Some(schema) = v.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                kube_formats(schema);
            }
        }
        crd
    })
    .collect()
}

/// Makes schemars' output what the API server and kubectl's validation take: the formats
/// of unsigned integers (`uint8`…`uint64`, unknown to the server, which warns on every
/// apply) become the signed ones (the schema's `minimum: 0` keeps them non-negative), and
/// the `null` schemars lists among an optional enum's values goes (`nullable` says it).
fn kube_formats(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    if let Some(f) = schema.format.as_mut() {
        match f.as_str() {
            "uint64" | "uint" => *f = "int64".into(),
            "uint32" | "uint16" | "uint8" => *f = "int32".into(),
            _ => {}
        }
    }
    if let Some(values) = schema.enum_.as_mut() {
        values.retain(|v| {
            !matches!(
                v,
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::Value::Null
                )
            )
        });
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.as_mut().and_then(|i| match i {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => {
                Some(s.as_mut())
            }
            _ => None,
        }))
        .chain(schema.additional_properties.as_mut().and_then(|a| match a {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(s) => {
                Some(s.as_mut())
            }
            _ => None,
        }))
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.all_of.iter_mut().flatten());
    for child in children {
        kube_formats(child);
    }
}

#[cfg(test)]
mod crd_tests {
    #[test]
    fn crds_use_only_formats_the_api_server_knows() {
        for crd in super::crds() {
            let text = serde_json::to_string(&crd).unwrap();
            assert!(!text.contains("\"format\":\"uint"), "{text}");
            assert!(!text.contains(",null]"), "{text}");
        }
    }
}
