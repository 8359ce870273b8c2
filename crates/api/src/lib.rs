//! Kubernetes API types of the image distribution operator.
//!
//! - [`NodeImage`] (`image.giantswarm.io/v1alpha1`): wire-compatible with the Go original,
//!   plus additive status fields (conditions, observedGeneration, per-location status).
//! - [`Release`] (`release.giantswarm.io/v1alpha1`): the part of Giant Swarm's Release that
//!   the operator reads. Its CRD is shipped for tests and demos only.
//! - [`ImageSync`] (`ido.dev/v1alpha1`): mirrors container images between registries; its
//!   spec is a superset of image-operator's `Image`.
//!
//! - [`DiskImport`] (`ido.dev/v1alpha1`): a disk image imported into a PersistentVolumeClaim
//!   by an importer Job (CDI's DataVolume, streamed, no scratch space).
//!
//! CRD YAML is generated from these types (`ido crds`), never written by hand.

pub mod condition;
pub mod diskimport;
pub mod imagesync;
pub mod names;
pub mod nodeimage;
pub mod release;

pub use condition::{Condition, ConditionStatus};
pub use diskimport::{
    BlankSource, DiskImport, DiskImportPhase, DiskImportSource, DiskImportSpec, DiskImportStatus, HttpSource,
    RegistrySource, S3Source, SourceKind, StorageSpec, VolumeMode,
};
pub use imagesync::{
    ImageSync, ImageSyncSpec, ImageSyncStatus, SecretReference, SyncEndpoint, SyncMode, TagResult, TagStatus,
};
pub use nodeimage::{
    LocationState, LocationStatus, NodeImage, NodeImageSpec, NodeImageState, NodeImageStatus,
};
pub use release::{Release, ReleaseComponent, ReleaseSpec};

use kube::CustomResourceExt;

/// Every CRD the project defines, in the order `ido crds` prints them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![
        NodeImage::crd(),
        Release::crd(),
        ImageSync::crd(),
        DiskImport::crd(),
    ]
}
