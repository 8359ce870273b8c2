//! `ImageSync` (`ido.dev/v1alpha1`): mirror container images between registries, once, per
//! new tag, or on a schedule.
//!
//! Its spec field names are a superset of image-operator's `Image` (`skopeo.io/v1alpha1`):
//! `mode`, `frequency`, `allowCandidateRelease`, `source{name,version}`,
//! `destination{name,version}` and `useAwsIRSA` keep their names and meaning, so an `Image`
//! migrates by changing `apiVersion` and `kind`. Differences from the anchor:
//!
//! - every tag a pattern matches is copied to *itself* at the destination
//!   (`destination.version` is then empty or the same pattern);
//! - `frequency` defaults to `15m`, takes Go durations plus `d` and `w` (`1d12h` is 36 h);
//!   a bad value is reported (condition `Ready=False`, reason `InvalidSpec`), never replaced;
//! - credentials come from `kubernetes.io/dockerconfigjson` Secrets named per side
//!   (`secretRef`), TLS is verified unless a side says `tlsVerify: false`, and a side may
//!   trust extra CAs (`caBundle`, inline PEM, and/or `certConfigMap`, a ConfigMap of PEM
//!   bundles);
//! - `useAwsIRSA` is accepted but not supported (reported as `InvalidSpec` when true).
//!
//! ```yaml
//! apiVersion: ido.dev/v1alpha1
//! kind: ImageSync
//! metadata: {name: argocd-2-13}
//! spec:
//!   mode: OnceByTag            # OneShot | OnceByTag | Recurrent
//!   frequency: 1h              # or schedule: "0 3 * * *" (cron, UTC)
//!   allowCandidateRelease: false
//!   source:      {name: quay.io/argoproj/argocd, version: v2.13.x}
//!   destination: {name: registry.example/mirror/argocd, secretRef: {name: mirror-push}}
//!   platforms: [linux/amd64, linux/arm64]   # empty: every platform (the whole index)
//!   maxTags: 50
//!   concurrency: 4
//! ```

use std::time::Duration;

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;

/// Condition types (the same as NodeImage's).
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}

/// Condition reasons (see [`Reason`](crate::Reason), where every reason is spelled).
pub mod reasons {
    use crate::Reason;

    /// Every selected tag is at the destination.
    pub const SYNCED: &str = Reason::Synced.as_str();
    /// A spec field is invalid; the message names it.
    pub const INVALID_SPEC: &str = Reason::InvalidSpec.as_str();
    /// A referenced Secret (or CA ConfigMap) is missing or unusable.
    pub const CREDENTIALS_UNAVAILABLE: &str = Reason::CredentialsUnavailable.as_str();
    /// A registry could not be reached or refused the request.
    pub const REGISTRY_UNAVAILABLE: &str = Reason::RegistryUnavailable.as_str();
    /// The source has no tag matching `source.version`.
    pub const NO_MATCHING_TAGS: &str = Reason::NoMatchingTags.as_str();
    /// More tags matched than `maxTags`: only the `maxTags` highest were synced.
    pub const TAG_LIMIT_EXCEEDED: &str = Reason::TagLimitExceeded.as_str();
    /// Copying at least one tag failed.
    pub const COPY_FAILED: &str = Reason::CopyFailed.as_str();
    /// A sync pass is running.
    pub const SYNCING: &str = Reason::Syncing.as_str();
    /// No sync pass is running.
    pub const IDLE: &str = Reason::Idle.as_str();
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = Reason::AsExpected.as_str();
}

/// Default of `maxTags`.
pub const DEFAULT_MAX_TAGS: u32 = 50;
/// Default of `concurrency` (tags copied at once).
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Default of `frequency` (OnceByTag and Recurrent).
pub const DEFAULT_FREQUENCY: Duration = Duration::from_secs(15 * 60);

/// Mirrors images from a source repository to a destination repository.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ido.dev",
    version = "v1alpha1",
    kind = "ImageSync",
    plural = "imagesyncs",
    shortname = "isync",
    namespaced,
    status = "ImageSyncStatus",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.source.version","priority":1}"#,
    printcolumn = r#"{"name":"Destination","type":"string","jsonPath":".spec.destination.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Tags","type":"string","jsonPath":".status.tagSummary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSyncTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageSyncSpec {
    /// `OneShot`: sync once per spec change. `OnceByTag`: every `frequency`, copy tags not
    /// copied before (a tag once copied is never copied again). `Recurrent`: every
    /// `frequency`, copy every matching tag again if its source digest changed.
    pub mode: SyncMode,
    /// How often OnceByTag and Recurrent look again: a Go duration (`90s`, `1h30m`, `1.5h`)
    /// where `d` and `w` may be used too (`1d12h`), at least 1s. Default `15m`. Ignored when
    /// `schedule` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<String>,
    /// Standard 5-field cron expression (UTC) for OnceByTag and Recurrent, e.g.
    /// `0 3 * * *`; takes precedence over `frequency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Let patterns match release candidates (`-rc.N`, `-rcN`).
    #[serde(default)]
    pub allow_candidate_release: bool,
    /// Where images come from. `version`: a tag, an `x` pattern (`2.13.x`), a semver
    /// range (`>=2.13, <2.14`) or `regex:<expr>`.
    pub source: SyncEndpoint,
    /// Where images go. `version`: for a single source tag, the destination tag (default:
    /// the same); for a pattern, empty or the same pattern: each tag is copied to itself.
    pub destination: SyncEndpoint,
    /// Platforms (`os/arch[/variant]`) to copy from a multi-platform image; empty copies
    /// every platform and the index itself, digests preserved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Most tags a pattern may select (default 50). More matching tags set
    /// `Ready=False`/`TagLimitExceeded` and only the highest `maxTags` versions are synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_tags: Option<u32>,
    /// Tags copied at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: Option<u32>,
}

/// When an ImageSync copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SyncMode {
    OneShot,
    OnceByTag,
    Recurrent,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneShot => "OneShot",
            Self::OnceByTag => "OnceByTag",
            Self::Recurrent => "Recurrent",
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One side of a sync: a repository and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncEndpoint {
    /// Repository without tag, e.g. `quay.io/argoproj/argocd`, `registry:5000/mirror/app`
    /// (Docker Hub names may be short: `library/nginx`). A `docker://` prefix is accepted.
    pub name: String,
    /// Tag or tag pattern (see the spec's `source` and `destination`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret in the ImageSync's namespace with
    /// credentials for this side's registry. Absent: anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Verify the registry's TLS certificate (default true). `false` allows plain HTTP or
    /// unverified TLS, like skopeo's `--tls-verify=false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// Extra CA certificates (PEM, inline) trusted for this side's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// A ConfigMap in the ImageSync's namespace whose every value is a PEM bundle of CA
    /// certificates trusted for this side's registry (as DiskImport's `certConfigMap`);
    /// added to `caBundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Accepted for compatibility with image-operator; not supported (use `secretRef`).
    #[serde(rename = "useAwsIRSA", default, skip_serializing_if = "std::ops::Not::not")]
    pub use_aws_irsa: bool,
}

/// A Secret in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretReference {
    pub name: String,
}

/// Observed state of an ImageSync.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSyncStatus {
    /// The `.metadata.generation` the last sync pass ran for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the last sync pass ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_sync_time: Option<Timestamp>,
    /// When a pass last read every selected destination tag. Until a day later, passes of
    /// the same generation take the digests in `tags` for what the destination holds (a tag
    /// still listed there is not read again), so a tag whose source has not moved costs one
    /// request to the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub destinations_verified_time: Option<Timestamp>,
    /// When the next sync pass is due; absent when none is planned (OneShot done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub next_sync_time: Option<Timestamp>,
    /// Tags the source version matched at the last pass (before the `maxTags` cap).
    #[serde(default)]
    pub matched_tags: u32,
    /// `<in sync>/<selected>`, e.g. `12/12`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag_summary: String,
    /// One entry per selected tag, highest version first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TagStatus>,
}

/// What the last pass did with a tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TagResult {
    /// Selected, not yet copied.
    #[default]
    Pending,
    /// Copied (manifests pushed; blobs the destination lacked streamed).
    Copied,
    /// The destination already had the source digest: nothing copied.
    Unchanged,
    /// Not looked at: OnceByTag copied it before.
    Skipped,
    /// The copy failed (see `message`).
    Failed,
}

impl TagResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Copied => "Copied",
            Self::Unchanged => "Unchanged",
            Self::Skipped => "Skipped",
            Self::Failed => "Failed",
        }
    }

    /// Whether the tag is at the destination.
    pub fn in_sync(self) -> bool {
        matches!(self, Self::Copied | Self::Unchanged | Self::Skipped)
    }
}

impl std::fmt::Display for TagResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tag of an ImageSync.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagStatus {
    /// Source tag.
    pub tag: String,
    /// Destination tag when it differs from `tag` (a single renamed tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_tag: Option<String>,
    /// Digest of the source tag (set when the whole image or index is copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    /// Digest now at the destination tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_digest: Option<String>,
    pub result: TagResult,
    /// When the tag was last copied (something pushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_copied: Option<Timestamp>,
    /// Blob bytes streamed by the last copy.
    #[serde(default)]
    pub bytes: u64,
    /// Details, e.g. the error of a failed copy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

pub use crate::duration::parse_frequency;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn anchor_image_manifest_deserializes_after_changing_kind() {
        // The anchor's README example, apiVersion and kind changed.
        let y = r#"
apiVersion: ido.dev/v1alpha1
kind: ImageSync
metadata: {name: name}
spec:
  allowCandidateRelease: false
  mode: OneShot
  frequency: "1m"
  source: {name: source/argoproj/argocd, version: v2.13.x, useAwsIRSA: false}
  destination: {name: destination/argoproj/argocd, version: v2.13.x}
"#;
        let is: ImageSync = yaml::from_str(y).unwrap();
        assert_eq!(is.spec.mode, SyncMode::OneShot);
        assert_eq!(is.spec.source.version.as_deref(), Some("v2.13.x"));
        assert_eq!(is.spec.frequency.as_deref(), Some("1m"));
        let back = serde_json::to_value(&is.spec).unwrap();
        assert_eq!(
            back["source"],
            serde_json::json!({"name": "source/argoproj/argocd", "version": "v2.13.x"})
        );
    }

    #[test]
    fn crd_names_columns_and_status() {
        let crd = ImageSync::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("imagesyncs.ido.dev"));
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
        assert_eq!(
            cols,
            [
                "Source",
                "Destination",
                "Mode",
                "Tags",
                "Ready",
                "Last Sync",
                "Age"
            ]
        );
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let y = yaml::to_string(&crd).unwrap();
        for s in [
            "OnceByTag",
            "useAwsIRSA",
            "secretRef",
            "tlsVerify",
            "caBundle",
            "Unchanged",
        ] {
            assert!(y.contains(s), "{s} missing from the schema");
        }
    }
}
