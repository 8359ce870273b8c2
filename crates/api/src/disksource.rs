//! `DiskSource` (`ido.dev/v1alpha1`): a stable name for a disk, modelled on CDI's
//! `DataSource`.
//!
//! It names a claim of its namespace; `status.claim` is that claim once it can be cloned
//! (Ready). A DiskImport with `source.diskSource: {name}` clones the claim it resolves to,
//! so VMs that say `diskSource: fedora` get whatever claim the DiskSource points at when
//! their disk is made. A [`DiskImportCron`](crate::DiskImportCron) moves its DiskSource to
//! each new import once that import has succeeded.
//!
//! ```yaml
//! apiVersion: ido.dev/v1alpha1
//! kind: DiskSource
//! metadata: {name: fedora, namespace: vms}
//! spec:
//!   source:
//!     pvc: {name: fedora-1a2b3c4d}
//! ```

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;

/// Condition types.
pub mod conditions {
    /// The claim exists, is bound, and the DiskImport that fills it (if any) succeeded.
    pub const READY: &str = "Ready";
}

/// Condition reasons (see [`Reason`](crate::Reason), where every reason is spelled).
pub mod reasons {
    use crate::Reason;

    /// The claim can be cloned.
    pub const CLAIM_READY: &str = Reason::ClaimReady.as_str();
    /// The claim does not exist.
    pub const CLAIM_MISSING: &str = Reason::ClaimMissing.as_str();
    /// The claim is not bound to a volume.
    pub const CLAIM_NOT_BOUND: &str = Reason::ClaimNotBound.as_str();
    /// The DiskImport that fills the claim has not succeeded.
    pub const IMPORT_NOT_SUCCEEDED: &str = Reason::ImportNotSucceeded.as_str();
    /// A spec field is invalid; the message names it.
    pub const INVALID_SPEC: &str = Reason::InvalidSpec.as_str();
}

/// A stable name for a claim of the same namespace.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "ido.dev",
    version = "v1alpha1",
    kind = "DiskSource",
    plural = "disksources",
    shortname = "dsrc",
    namespaced,
    status = "DiskSourceStatus",
    printcolumn = r#"{"name":"Claim","type":"string","jsonPath":".status.claim"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DiskSourceSpec {
    /// What the name stands for.
    pub source: DiskSourceSource,
}

/// What a DiskSource names (CDI's `DataSource` also allows snapshots; ido has claims).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DiskSourceSource {
    /// A claim in the DiskSource's namespace.
    pub pvc: ClaimReference,
}

/// A claim of the referring object's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimReference {
    pub name: String,
}

/// Observed state of a DiskSource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskSourceStatus {
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The claim the DiskSource resolves to (`spec.source.pvc.name`); usable when `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl DiskSource {
    /// The claim to clone: `status.claim` when the status is of the current generation and
    /// Ready; `Err` is why not (the Ready condition's message, or that it was not looked at
    /// yet).
    pub fn ready_claim(&self) -> Result<&str, String> {
        let Some(st) = self
            .status
            .as_ref()
            .filter(|s| s.observed_generation == self.metadata.generation)
        else {
            return Err("it has not been resolved yet".into());
        };
        let ready = crate::condition::find(&st.conditions, conditions::READY);
        match (ready, st.claim.as_deref()) {
            (Some(c), Some(claim)) if c.status == crate::ConditionStatus::True => Ok(claim),
            (Some(c), _) => Err(format!("{}: {}", c.reason, c.message)),
            (None, _) => Err("it has not been resolved yet".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_names_and_columns() {
        let crd = DiskSource::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("disksources.ido.dev"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["dsrc".to_string()]));
        let v = &crd.spec.versions[0];
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Claim", "Ready", "Age"]);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let ds: DiskSource =
            yaml::from_str("metadata: {name: f}\nspec: {source: {pvc: {name: golden}}}\n").unwrap();
        assert_eq!(ds.spec.source.pvc.name, "golden");
        assert!(ds.ready_claim().unwrap_err().contains("not been resolved"));
    }
}
