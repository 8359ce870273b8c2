//! `Release` (`release.giantswarm.io/v1alpha1`): the part the operator reads.
//!
//! Only `metadata.name`, `deletionTimestamp`, `spec.components[]` and `spec.state` are used.
//! The operator never replaces a Release (it patches only its finalizers), so fields this
//! type does not know survive in a real cluster.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Finalizer the release controller puts on Releases of enabled providers.
pub const FINALIZER: &str = "image-distribution-operator.finalizers.giantswarm.io/release-controller";

/// A Giant Swarm release: a named set of component versions.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "release.giantswarm.io",
    version = "v1alpha1",
    kind = "Release",
    plural = "releases",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSpec {
    #[serde(default)]
    pub components: Vec<ReleaseComponent>,
    /// `active`, `deprecated`, `wip` or `preview`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

/// One component of a release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseComponent {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Release {
    /// A Release named `name` with the given `(component, version)` pairs.
    pub fn with_components(name: &str, components: &[(&str, &str)]) -> Self {
        Release::new(
            name,
            ReleaseSpec {
                components: components
                    .iter()
                    .map(|(n, v)| ReleaseComponent {
                        name: n.to_string(),
                        version: v.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )
    }

    /// Version of the component `name`, if present and non-empty.
    pub fn component(&self, name: &str) -> Option<&str> {
        self.spec
            .components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.version.as_str())
            .filter(|v| !v.is_empty())
    }
}
