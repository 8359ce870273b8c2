//! `NodeImage` (`image.giantswarm.io/v1alpha1`), wire-compatible with the Go original.

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;

/// Finalizer the image controller puts on every NodeImage (the original's name).
pub const FINALIZER: &str = "image-distribution-operator.finalizers.giantswarm.io/node-image-controller";
/// Annotation holding when the image was last used by a release (RFC 3339).
pub const LAST_USED_ANNOTATION: &str = "image-distribution-operator.giantswarm.io/last-used";

/// Condition types.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}

/// A node OS image that must exist in every location of a provider's catalog.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "image.giantswarm.io",
    version = "v1alpha1",
    kind = "NodeImage",
    plural = "nodeimages",
    namespaced,
    status = "NodeImageStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Releases","type":"string","jsonPath":".status.releases"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct NodeImageSpec {
    /// Image name, e.g. `flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs`.
    pub name: String,
    /// Provider: `capv`, `capvcd`, `capmox` (others pass through).
    pub provider: String,
}

/// The original's single state, kept for compatibility; `locations` and `conditions` say more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum NodeImageState {
    /// Not yet seen by a controller.
    #[default]
    #[serde(rename = "")]
    New,
    Pending,
    Uploading,
    Available,
    Error,
    Deleting,
    Deleted,
    Missing,
    AwaitingDeletion,
}

impl NodeImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "",
            Self::Pending => "Pending",
            Self::Uploading => "Uploading",
            Self::Available => "Available",
            Self::Error => "Error",
            Self::Deleting => "Deleting",
            Self::Deleted => "Deleted",
            Self::Missing => "Missing",
            Self::AwaitingDeletion => "AwaitingDeletion",
        }
    }
}

impl std::fmt::Display for NodeImageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a NodeImage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeImageStatus {
    /// Names of the Releases that use the image. Always a list, never null.
    #[serde(default)]
    pub releases: Vec<String>,
    /// Overall state (the original's names).
    #[serde(default)]
    pub state: NodeImageState,
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per configured location of the image's provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<LocationStatus>,
}

/// State of the image in one location.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LocationState {
    #[default]
    Pending,
    Uploading,
    Available,
    Missing,
    Error,
    Deleting,
    Deleted,
}

/// The image in one location of its provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationStatus {
    /// Location name as configured.
    pub location: String,
    pub provider: String,
    pub state: LocationState,
    /// Provider reference of the template (e.g. `VirtualMachine:vm-42 /DC0/vm/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Bytes sent to the provider by the last upload.
    #[serde(default)]
    pub bytes_transferred: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[schemars(with = "String")]
    pub last_transition_time: Timestamp,
}

impl NodeImage {
    /// Object name of the NodeImage for `provider` and `image`: `<provider>-<image>`.
    pub fn object_name(provider: &str, image: &str) -> String {
        format!("{provider}-{image}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn status_wire_format_matches_original() {
        let s = NodeImageStatus::default();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v, serde_json::json!({"releases": [], "state": ""}));
        let back: NodeImageStatus =
            serde_json::from_value(serde_json::json!({"releases": ["r1"], "state": "AwaitingDeletion"}))
                .unwrap();
        assert_eq!(back.state, NodeImageState::AwaitingDeletion);
        // The original sometimes writes null lists.
        let null: NodeImageStatus = serde_json::from_str(r#"{"releases": null, "state": "Available"}"#)
            .or_else(|_| serde_json::from_str(r#"{"state": "Available"}"#))
            .unwrap();
        assert!(null.releases.is_empty());
    }

    #[test]
    fn crd_has_original_names_and_printer_columns() {
        let crd = NodeImage::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("nodeimages.image.giantswarm.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Provider", "State", "Releases", "Age"]);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let y = yaml::to_string(&crd).unwrap();
        assert!(y.contains("AwaitingDeletion"), "state enum in schema");
    }
}
