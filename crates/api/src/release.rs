//! `Release` (`release.giantswarm.io/v1alpha1`): the part the operator reads.
//!
//! Only `metadata.name`, `deletionTimestamp`, `spec.components[]` and `spec.state` are used.
//! The operator never replaces a Release (it patches only its finalizers), so fields this
//! type does not know survive in a real cluster.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The provider prefix of a Release name shaped `<prefix>-<x.y.z…>` (`vsphere` for
/// `vsphere-30.1.0`, `cloud-director` for `cloud-director-0.10.5`); `None` for any other
/// shape. Each provider declares the prefix of its Releases.
pub fn prefix_of(release: &str) -> Option<&str> {
    // ^([a-z-]+)-\d+\.\d+\.\d+
    for (i, _) in release.match_indices('-') {
        let prefix = &release[..i];
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            break;
        }
        let mut parts = release[i + 1..].splitn(3, '.');
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let lead = |s: &str| s.bytes().next().is_some_and(|b| b.is_ascii_digit());
        if let (Some(a), Some(b), Some(c)) = (parts.next(), parts.next(), parts.next())
            && digits(a)
            && digits(b)
            && lead(c)
        {
            return Some(prefix);
        }
    }
    None
}

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

#[cfg(test)]
mod prefix_tests {
    use super::prefix_of;

    #[test]
    fn prefixes_of_release_names() {
        assert_eq!(prefix_of("vsphere-30.1.0"), Some("vsphere"));
        assert_eq!(prefix_of("cloud-director-0.10.5"), Some("cloud-director"));
        assert_eq!(prefix_of("proxmox-1.2.3-alpha.1"), Some("proxmox"));
        assert_eq!(prefix_of("kubevirt-1.0.0"), Some("kubevirt"));
        assert_eq!(prefix_of("aws-25.0.0"), Some("aws"));
        for bad in [
            "vsphere",
            "Vsphere-1.2.3",
            "vsphere-1.2",
            "-1.2.3",
            "vsphere-1.2.x",
        ] {
            assert_eq!(prefix_of(bad), None, "{bad}");
        }
    }
}
