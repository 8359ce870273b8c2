//! The workload image cache (`ido.dev/v1alpha1`): the images workloads run, copied to the
//! cluster's own registry, and workloads pointed at the copies.
//!
//! - `ImageCachePolicy` (namespaced: the workloads of its namespace) and
//!   `ClusterImageCachePolicy` (cluster-scoped: the namespaces it selects) say where copies
//!   go, which workloads and images count, and how workloads are pointed at the copies;
//! - `CachedImage` (cluster-scoped, one per source image) records a copy: its source, where
//!   it lives, its digest, the workloads that use it and when they last did.
//!
//! ```yaml
//! apiVersion: ido.dev/v1alpha1
//! kind: ClusterImageCachePolicy
//! metadata: {name: everything}
//! spec:
//!   target: {registry: cache.example:5000, pathPrefix: mirror, secretRef: {name: cache-push}}
//!   namespaces: {exclude: [monitoring]}
//!   images: {exclude: ["cache.example:5000/**"]}
//!   mode: webhook          # webhook | patch | observe
//!   retention: 720h        # copies unused this long are deleted
//!   refreshInterval: 6h    # mutable tags checked again this often
//! ```

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Condition, imagesync::SecretReference};

/// Default of `retention`: copies unused for 30 days are deleted.
pub const DEFAULT_RETENTION: &str = "720h";
/// Default of `refreshInterval`: a mutable tag is checked again after 6 hours.
pub const DEFAULT_REFRESH_INTERVAL: &str = "6h";

/// What both policy kinds say.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicy {
    /// Where copies go.
    pub target: CacheTarget,
    /// Only workloads with these labels (absent: every workload in scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
    /// Which images are cached (absent: every image but the cache's own copies).
    #[serde(default)]
    pub images: ImageSelection,
    /// TLS settings of source registries that need them (a private CA, plain HTTP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRegistry>,
    /// The platforms copied, e.g. `linux/amd64` (empty: every platform of the source index,
    /// the index and its digest kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// How workloads are pointed at the copies.
    #[serde(default)]
    pub mode: CacheMode,
    /// Point workloads at the copy by digest (`…@sha256:…`) rather than by tag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin_digest: bool,
    /// Copies no workload used for this long are deleted (a Go duration plus `d` and `w`;
    /// default `720h`). An image still referenced by a workload, even one scaled to zero, is
    /// never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// How often a mutable tag is checked at its source and copied again when it moved
    /// (default `6h`; digest references never move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<String>,
}

/// The registry copies go to: `<registry>/<pathPrefix>/<source registry>/<repository>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheTarget {
    /// Host and optional port, e.g. `cache.example:5000`.
    pub registry: String,
    /// Path components before each copy's source registry, e.g. `mirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret with push credentials for the registry
    /// (in the policy's namespace; for a ClusterImageCachePolicy, in ido's). Pods that run
    /// copies get it added to their pull secrets (their own are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Verify the registry's TLS certificate (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// Extra CA certificates (PEM, inline) trusted for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// A ConfigMap whose every value is a PEM bundle of CA certificates for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// A pull Secret (`kubernetes.io/dockerconfigjson`) added to the pull secrets of pods
    /// pointed at copies, their own kept. It must exist in the pods' namespaces; absent,
    /// pods read the cache anonymously or with the nodes' credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret_name: Option<String>,
}

/// How a source registry is reached (sources not listed: TLS, verified).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceRegistry {
    /// Host and optional port, as in image references (`registry.internal:5000`).
    pub registry: String,
    /// Verify its TLS certificate (default true); false also allows plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// Extra CA certificates (PEM, inline) trusted for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// Include and exclude patterns over `registry/repository` (`*` within a path component,
/// `**` across them; `nginx` is `docker.io/library/nginx`). An exclude pattern wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageSelection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// How workloads are pointed at the copies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CacheMode {
    /// The admission webhook rewrites a Pod's images to copies known to be present (else
    /// it leaves them and a copy is made); workload objects are never edited.
    #[default]
    #[serde(rename = "webhook")]
    Webhook,
    /// The workload's pod template is edited in one update (image-cloner's way; fights
    /// GitOps tools that own the template).
    #[serde(rename = "patch")]
    Patch,
    /// Copies are made and recorded; nothing is rewritten.
    #[serde(rename = "observe")]
    Observe,
}

/// Namespaces by name: none included means every namespace; an excluded one never counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NamespaceSelection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// The images of a namespace's workloads, cached.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ido.dev",
    version = "v1alpha1",
    kind = "ImageCachePolicy",
    namespaced,
    status = "CachePolicyStatus",
    shortname = "icp",
    category = "ido",
    printcolumn = r#"{"name":"Registry","type":"string","jsonPath":".spec.target.registry"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Cached","type":"integer","jsonPath":".status.cached"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pending"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageCachePolicySpec {
    #[serde(flatten)]
    pub policy: CachePolicy,
}

/// The images of the selected namespaces' workloads, cached.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ido.dev",
    version = "v1alpha1",
    kind = "ClusterImageCachePolicy",
    status = "CachePolicyStatus",
    shortname = "cicp",
    category = "ido",
    printcolumn = r#"{"name":"Registry","type":"string","jsonPath":".spec.target.registry"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Cached","type":"integer","jsonPath":".status.cached"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pending"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterImageCachePolicySpec {
    #[serde(flatten)]
    pub policy: CachePolicy,
    /// The namespaces whose workloads count (ido's own and `kube-system` never do).
    #[serde(default)]
    pub namespaces: NamespaceSelection,
}

/// Observed state of a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the spec is valid and the cache registry answers), `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Images in scope with a copy present.
    #[serde(default)]
    pub cached: u32,
    /// Images in scope without a copy yet (queued, copying or failed).
    #[serde(default)]
    pub pending: u32,
}

/// One source image and its copy.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ido.dev",
    version = "v1alpha1",
    kind = "CachedImage",
    status = "CachedImageStatus",
    shortname = "ci",
    category = "ido",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#,
    printcolumn = r#"{"name":"Copy","type":"string","jsonPath":".spec.target","priority":1}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Workloads","type":"integer","jsonPath":".status.workloadCount"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.digest","priority":1}"#,
    printcolumn = r#"{"name":"Last Used","type":"date","jsonPath":".status.lastUsedTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CachedImageSpec {
    /// The source image, normalised (`docker.io/library/nginx:1.27`).
    pub source: String,
    /// Where its copy lives.
    pub target: String,
    /// The policy that caches it: `ClusterImageCachePolicy/<name>` or
    /// `ImageCachePolicy/<namespace>/<name>`.
    pub policy: String,
}

/// Where a copy stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CachePhase {
    /// Queued for its first copy.
    #[default]
    Pending,
    Copying,
    /// The copy is present (and was the source's content when last checked).
    Cached,
    /// The last copy failed; the condition says why, and it is tried again.
    Failed,
}

/// A pull Secret a workload reads its image with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct PullSecretReference {
    pub namespace: String,
    pub name: String,
}

/// A workload that runs an image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct WorkloadReference {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// Observed state of a copy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedImageStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: CachePhase,
    /// Digest of the copy's manifest (the source's, as copies keep digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The workloads that run the image (Pods owned by a workload are counted there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadReference>,
    #[serde(default)]
    pub workload_count: u32,
    /// The pull Secrets those workloads read the source with (the copy reads it with them,
    /// in order; their values are never written anywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<PullSecretReference>,
    /// When a workload last ran it (now, while one does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_used_time: Option<Timestamp>,
    /// When the last copy was tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_attempt_time: Option<Timestamp>,
    /// When the copy was last made or found current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_copied_time: Option<Timestamp>,
    /// Blob bytes the last copy moved.
    #[serde(default)]
    pub bytes: u64,
    /// ido pushed the copy's manifest (it was not there before): only such a copy is
    /// deleted from the registry when it expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pushed: bool,
    /// `Ready` (the copy is present), with the reason of a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn policies_share_their_fields_and_the_cluster_one_selects_namespaces() {
        let v = json!({"target": {"registry": "cache.example:5000", "pathPrefix": "mirror",
                                  "secretRef": {"name": "push"}},
                       "images": {"exclude": ["cache.example:5000/**"]},
                       "mode": "patch", "pinDigest": true, "retention": "48h",
                       "namespaces": {"include": ["apps"]}});
        let c: ClusterImageCachePolicySpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(c.policy.mode, CacheMode::Patch);
        assert_eq!(c.namespaces.include, ["apps"]);
        assert_eq!(serde_json::to_value(&c).unwrap(), v);
        let n: ImageCachePolicySpec = serde_json::from_value(json!({"target": {"registry": "r"}})).unwrap();
        assert_eq!(n.policy.mode, CacheMode::Webhook, "the default");
        assert!(n.policy.platforms.is_empty() && n.policy.images.include.is_empty());
    }

    #[test]
    fn the_crds_are_cluster_and_namespace_scoped_with_their_columns() {
        let crd = |c: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
            serde_json::to_value(c).unwrap()
        };
        let ns = crd(ImageCachePolicy::crd());
        let cl = crd(ClusterImageCachePolicy::crd());
        let ci = crd(CachedImage::crd());
        assert_eq!(ns["spec"]["scope"], "Namespaced");
        assert_eq!(cl["spec"]["scope"], "Cluster");
        assert_eq!(ci["spec"]["scope"], "Cluster");
        let props =
            &cl["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for field in [
            "target",
            "images",
            "mode",
            "namespaces",
            "retention",
            "workloadSelector",
        ] {
            assert!(props.get(field).is_some(), "{field}: {props}");
        }
        let columns: Vec<&str> = ci["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            [
                "Source",
                "Copy",
                "Phase",
                "Workloads",
                "Digest",
                "Last Used",
                "Age"
            ]
        );
        assert_eq!(ci["spec"]["versions"][0]["subresources"]["status"], json!({}));
    }
}
