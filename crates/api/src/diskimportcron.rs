//! `DiskImportCron` (`ido.dev/v1alpha1`): a golden image kept fresh, modelled on CDI's
//! `DataImportCron`.
//!
//! At creation and at every tick of `schedule` the controller polls the template's source
//! (a registry's manifest digest, or an HTTP object's `ETag`, else `Last-Modified`). When it
//! changed since the last import, it creates a DiskImport `<name>-<8 hex of its sha256>` from
//! the template, the source pinned (a registry by digest), owned by the cron and labelled
//! `ido.dev/disk-import-cron`. When that import has succeeded, the DiskSource
//! `managedDiskSource` is pointed at its claim, and (`garbageCollect: Outdated`) the oldest
//! of the cron's own imports beyond `importsToKeep` are deleted.
//!
//! ```yaml
//! apiVersion: ido.dev/v1alpha1
//! kind: DiskImportCron
//! metadata: {name: fedora, namespace: vms}
//! spec:
//!   schedule: "0 */6 * * *"           # cron, UTC
//!   managedDiskSource: fedora         # VMs clone `diskSource: fedora`
//!   importsToKeep: 3                  # default 3
//!   garbageCollect: Outdated          # or Never
//!   template:
//!     source:
//!       registry: {url: "docker://quay.io/containerdisks/fedora:41"}
//!     storage: {size: 10Gi}
//! ```

use jiff::Timestamp;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Condition, DiskImportSpec};

/// Condition types (CDI's).
pub mod conditions {
    /// The DiskSource points at an import of what the source held at the last poll.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// An import is running.
    pub const PROGRESSING: &str = "Progressing";
}

/// Condition reasons (see [`Reason`](crate::Reason), where every reason is spelled).
pub mod reasons {
    use crate::Reason;

    /// The DiskSource points at the import of the source's current digest.
    pub const UP_TO_DATE: &str = Reason::UpToDate.as_str();
    /// The source changed; its import has not succeeded yet.
    pub const OUTDATED: &str = Reason::Outdated.as_str();
    /// The source could not be polled (retried with backoff).
    pub const POLL_FAILED: &str = Reason::PollFailed.as_str();
    /// The import of the current digest failed (created again at the next tick).
    pub const IMPORT_FAILED: &str = Reason::ImportFailed.as_str();
    /// The DiskSource of `managedDiskSource` exists and is not this cron's.
    pub const NAME_CLASH: &str = Reason::NameClash.as_str();
    /// A spec field is invalid; the message names it and the value.
    pub const INVALID_SPEC: &str = Reason::InvalidSpec.as_str();
    /// An import is running.
    pub const IMPORT_IN_PROGRESS: &str = Reason::ImportInProgress.as_str();
    /// No import is running.
    pub const IDLE: &str = Reason::Idle.as_str();
}

/// Default of `importsToKeep`.
pub const DEFAULT_IMPORTS_TO_KEEP: u32 = 3;

/// A scheduled import that keeps a DiskSource at the newest image of its source.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "ido.dev",
    version = "v1alpha1",
    kind = "DiskImportCron",
    plural = "diskimportcrons",
    shortname = "dicron",
    namespaced,
    status = "DiskImportCronStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"DiskSource","type":"string","jsonPath":".spec.managedDiskSource"}"#,
    printcolumn = r#"{"name":"Claim","type":"string","jsonPath":".status.lastImportedClaim"}"#,
    printcolumn = r#"{"name":"UpToDate","type":"string","jsonPath":".status.conditions[?(@.type==\"UpToDate\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.template.source.registry) || has(self.template.source.http)").message("template.source must be registry or http (the sources whose changes can be polled)"))]
#[serde(rename_all = "camelCase")]
pub struct DiskImportCronSpec {
    /// The DiskImports to create: a DiskImport's spec whose source is `registry` or `http`.
    #[schemars(schema_with = "template_schema")]
    pub template: DiskImportSpec,
    /// When to poll the source: a 5-field cron expression (or `@daily`, …), in UTC. The
    /// source is also polled when the cron is created or its spec changes.
    pub schedule: String,
    /// How many of its imports the cron keeps with `garbageCollect: Outdated` (default 3,
    /// at least 1); the one its DiskSource points at is always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub imports_to_keep: Option<u32>,
    /// `Outdated` (default): delete the oldest imports beyond `importsToKeep`; `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garbage_collect: Option<GarbageCollect>,
    /// The DiskSource (in the cron's namespace) pointed at the newest import. Created and
    /// owned by the cron; one that exists and is not the cron's is left alone (condition
    /// `UpToDate=False`, reason `NameClash`).
    pub managed_disk_source: String,
}

/// The template's schema: a DiskImport's spec without its immutability rule (a cron's
/// template may change; the DiskImports made from it do not).
fn template_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <DiskImportSpec as JsonSchema>::json_schema(g);
    if let Some(rules) = schema
        .as_object_mut()
        .and_then(|o| o.get_mut("x-kubernetes-validations"))
        .and_then(|r| r.as_array_mut())
    {
        rules.retain(|r| !r["rule"].as_str().is_some_and(|s| s.contains("oldSelf")));
    }
    schema
}

/// Whether outdated imports are deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GarbageCollect {
    #[default]
    Outdated,
    Never,
}

/// One import the cron made and keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronImport {
    /// The DiskImport (its claim has the same name).
    pub disk_import: String,
    /// What the source was at the poll that made it: `sha256:…` (registry), `etag:"…"` or
    /// `last-modified:…` (http).
    pub digest: String,
    /// When the import succeeded.
    #[schemars(with = "String")]
    pub time: Timestamp,
}

/// Observed state of a DiskImportCron.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskImportCronStatus {
    /// The `.metadata.generation` the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The cron's succeeded imports still kept, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_imports: Vec<CronImport>,
    /// The claim the DiskSource points at (the newest succeeded import's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_imported_claim: Option<String>,
    /// When the newest import succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_import_time: Option<Timestamp>,
    /// When the source was last polled (successfully or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_poll_time: Option<Timestamp>,
    /// When the source is polled next: the next tick, or sooner after a failed poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub next_poll_time: Option<Timestamp>,
    /// What the source was at the last successful poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_polled_digest: Option<String>,
    /// Polls that failed in a row (the retry waits 1 s, doubling, at most 5 min, and at
    /// most until the next tick).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub poll_failures: u32,
    /// `UpToDate`, `Progressing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl DiskImportCronSpec {
    /// `importsToKeep`, 3 when absent.
    pub fn imports_to_keep(&self) -> u32 {
        self.imports_to_keep.unwrap_or(DEFAULT_IMPORTS_TO_KEEP)
    }

    /// `garbageCollect`, `Outdated` when absent.
    pub fn garbage_collect(&self) -> GarbageCollect {
        self.garbage_collect.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_names_rules_and_a_mutable_template() {
        let crd = DiskImportCron::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("diskimportcrons.ido.dev"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["dicron".to_string()]));
        let y = yaml::to_string(&crd).unwrap();
        for s in [
            "template.source must be registry or http",
            "exactly one of http, s3, registry, blank, pvc, snapshot, diskSource",
            "- Outdated",
            "- Never",
            "managedDiskSource",
        ] {
            assert!(y.contains(s), "{s} missing from the CRD");
        }
        assert!(!y.contains("oldSelf"), "the template may change: {y}");
        let cron: DiskImportCron = yaml::from_str(
            "metadata: {name: f}\nspec: {schedule: '@daily', managedDiskSource: f, template: {source: {http: {url: 'http://x/y'}}}}\n",
        )
        .unwrap();
        assert_eq!(cron.spec.imports_to_keep(), 3);
        assert_eq!(cron.spec.garbage_collect(), GarbageCollect::Outdated);
    }
}
