//! image-operator's `Image` (`skopeo.io/v1alpha1`), served on the ImageSync engine so that
//! its users switch by installing the chart (`imageOperator.enabled`; off by default, so
//! that image-operator and ido can be installed side by side).
//!
//! The spec is image-operator's (`mode`, `frequency`, `allowCandidateRelease`,
//! `source`/`destination` `{name, version, useAwsIRSA}`), with ImageSync's optional fields
//! beside them (`secretRef`, `tlsVerify`, `caBundle`, `certConfigMap`, `platforms`,
//! `schedule`, `maxTags`, `concurrency`). It means what an ImageSync with the same spec
//! means, except that `frequency` defaults to image-operator's `5m`. Without the
//! original's bugs:
//!
//! - each matching tag is copied to itself (the original copied every match onto the
//!   literal `destination.version`);
//! - an unchanged digest is not copied again; a failed tag is retried, never marked synced;
//! - a bad `frequency` is reported (`Ready=False`, `InvalidSpec`), never read as 5 m, and
//!   `1d12h` is 36 h;
//! - any registry's tags are listed through `/v2/<name>/tags/list` (the original knew
//!   Docker Hub, Quay and public ECR only, and copied nothing from others);
//! - credentials come from the Image's own namespace, never one global set; `useAwsIRSA`
//!   takes ECR credentials for that side's registry from the pod's web identity, in the
//!   registry's own region.
//!
//! The status keeps the original's fields (`history`, the last 20 passes; `phase`;
//! `tagAlreadySynced`, now the tags at the destination after the last pass rather than a
//! list that only grows; `lastGenerationSeen`) beside ImageSync's (conditions,
//! `observedGeneration`, per-tag results).
//!
//! ```yaml
//! apiVersion: skopeo.io/v1alpha1
//! kind: Image
//! metadata: {name: argocd, namespace: apps}
//! spec:
//!   mode: OnceByTag
//!   frequency: 1h
//!   source:      {name: quay.io/argoproj/argocd, version: v2.13.x}
//!   destination: {name: registry.example/mirror/argocd, version: v2.13.x}
//! ```

use std::time::Duration;

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ImageSyncSpec, ImageSyncStatus};

/// Default of `frequency` (image-operator's).
pub const DEFAULT_FREQUENCY: Duration = Duration::from_secs(5 * 60);
/// Passes kept in `status.history` (image-operator's limit).
pub const HISTORY: usize = 20;

/// `status.phase` values.
pub mod phases {
    /// Every selected tag is at the destination.
    pub const COMPLETED: &str = "COMPLETED";
    /// A pass is running.
    pub const SYNCING: &str = "SYNCING";
    /// The last pass failed, or found nothing to copy (see the conditions).
    pub const FAILED: &str = "FAILED";
}

/// Mirrors images from a source repository to a destination repository
/// (image-operator's kind).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "skopeo.io",
    version = "v1alpha1",
    kind = "Image",
    plural = "images",
    namespaced,
    status = "ImageStatus",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.source.version"}"#,
    printcolumn = r#"{"name":"Destination","type":"string","jsonPath":".spec.destination.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Tags","type":"string","jsonPath":".status.tagSummary"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSyncTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ImageSpec {
    /// image-operator's fields and ImageSync's, meaning what they mean in an ImageSync;
    /// `frequency` defaults to `5m`.
    #[serde(flatten)]
    pub sync: ImageSyncSpec,
}

/// One pass, as image-operator records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    #[schemars(with = "String")]
    pub performed_at: Timestamp,
}

/// Observed state: image-operator's fields and ImageSync's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// Conditions, per-tag results and the schedule, as an ImageSync's status.
    #[serde(flatten)]
    pub sync: ImageSyncStatus,
    /// When the last passes ran, oldest first (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// `COMPLETED`, `SYNCING` or `FAILED` (the conditions say why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The tags at the destination after the last pass, highest version first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_already_synced: Vec<String>,
    /// The `.metadata.generation` the last pass ran for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_generation_seen: Option<i64>,
}

/// The CRD: `Image::crd()` with `spec.frequency` described with this kind's default.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = Image::crd();
    for v in &mut crd.spec.versions {
        let frequency = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("frequency"));
        if let Some(f) = frequency {
            f.description = Some(
                "How often OnceByTag and Recurrent look again: a Go duration (`90s`, `1h30m`, `1.5h`) where `d` and `w` may be used too (`1d12h`), at least 1s. Default `5m` (image-operator's). Ignored when `schedule` is set.".into(),
            );
        }
    }
    crd
}

impl Image {
    /// The spec as an ImageSync's, with image-operator's default `frequency`.
    pub fn sync_spec(&self) -> ImageSyncSpec {
        let mut s = self.spec.sync.clone();
        if s.frequency.is_none() && s.schedule.is_none() {
            s.frequency = Some("5m".into());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SyncMode;

    #[test]
    fn image_operator_manifests_read_unchanged() {
        // image-operator's README example, as its users have it.
        let y = r#"
apiVersion: skopeo.io/v1alpha1
kind: Image
metadata: {name: name, namespace: apps}
spec:
  allowCandidateRelease: false
  mode: OneShot
  frequency: "1m"
  source: {name: source/argoproj/argocd, version: v2.13.x, useAwsIRSA: false}
  destination: {name: destination/argoproj/argocd, version: v2.13.x, useAwsIRSA: true}
"#;
        let i: Image = yaml::from_str(y).unwrap();
        assert_eq!(i.spec.sync.mode, SyncMode::OneShot);
        assert_eq!(i.spec.sync.source.version.as_deref(), Some("v2.13.x"));
        assert!(i.spec.sync.destination.use_aws_irsa);
        assert_eq!(i.sync_spec().frequency.as_deref(), Some("1m"));
        let mut i = i;
        i.spec.sync.frequency = None;
        assert_eq!(
            i.sync_spec().frequency.as_deref(),
            Some("5m"),
            "image-operator's default"
        );
        // Its status as image-operator wrote it reads too.
        let st: ImageStatus = serde_json::from_value(serde_json::json!({
            "history": [{"performedAt": "2025-01-01T10:00:00Z"}],
            "phase": "COMPLETED",
            "tagAlreadySynced": ["v2.13.1"],
            "lastGenerationSeen": 3
        }))
        .unwrap();
        assert_eq!(st.tag_already_synced, ["v2.13.1"]);
        assert_eq!(st.last_generation_seen, Some(3));
    }

    #[test]
    fn crd_is_image_operators_name_with_a_status_subresource() {
        let crd = super::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("images.skopeo.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let y = yaml::to_string(&crd).unwrap();
        for s in [
            "allowCandidateRelease",
            "useAwsIRSA",
            "secretRef",
            "tagAlreadySynced",
            "lastGenerationSeen",
            "performedAt",
            "conditions",
            "Default `5m`",
        ] {
            assert!(y.contains(s), "{s} missing from the schema");
        }
    }
}
