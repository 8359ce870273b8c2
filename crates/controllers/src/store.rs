//! The small object-store interface the reconcilers run over.
//!
//! Two implementations drive the same reconcilers: the file-backed [`crate::file_store`]
//! (`ido run`, tests) and the kube-rs adapter in `ido-operator` (`ido operator`). Writes are
//! narrow on purpose: metadata patches touch only finalizers and annotations (fields this
//! operator does not know survive), status writes touch only the status, and every write
//! carries the object's `resourceVersion` so a stale read fails with [`StoreError::Conflict`]
//! instead of overwriting someone else's change.

use std::{collections::BTreeMap, fmt::Debug, future::Future};

use kube::Resource;
use serde::{Serialize, de::DeserializeOwned};

/// What a store can hold: a typed Kubernetes object.
pub trait Object:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<K> Object for K where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// The controller owner reference to `owner`: what an object it makes carries, so that it
/// goes with `owner` (the cluster's garbage collector; the file store does the same). No
/// `blockOwnerDeletion`: that would need `update` on the owner's `finalizers` where the
/// OwnerReferencesPermissionEnforcement admission plugin runs.
pub fn controller_reference<K: Object>(owner: &K) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "name": owner.meta().name,
        "uid": owner.meta().uid,
        "controller": true,
    })
}

/// Whether `meta` names `owner` (by UID and kind) among its owners: whether ido made it for
/// `owner`.
pub fn owned_by<K: Object>(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    owner: &K,
) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| Some(&r.uid) == owner.meta().uid.as_ref() && r.kind == K::kind(&()))
}

/// Identity of a stored object: its resource (`<plural>.<group>`, e.g.
/// `nodeimages.image.giantswarm.io`), namespace and name. The file store files objects by
/// it, and the tasks ([`crate::tasks`]) are kept by it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    /// The key of `obj`.
    pub fn of<K: Object>(obj: &K) -> Self {
        let m = obj.meta();
        Self::named::<K>(m.namespace.as_deref(), m.name.as_deref().unwrap_or_default())
    }

    /// The key of the `K` named `name` in `namespace`.
    pub fn named<K: Object>(namespace: Option<&str>, name: &str) -> Self {
        Self {
            resource: format!("{}.{}", K::plural(&()), K::group(&())),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// Whether the key names an object of kind `K`.
    pub fn is<K: Object>(&self) -> bool {
        self.resource == format!("{}.{}", K::plural(&()), K::group(&()))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.resource, self.name),
            None => write!(f, "{}/{}", self.resource, self.name),
        }
    }
}

/// Store failures, sorted by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: String, name: String },
    /// The object changed since it was read: read again and retry.
    #[error("{kind} {name:?} was modified concurrently")]
    Conflict { kind: String, name: String },
    /// A name or namespace the API server would refuse.
    #[error(transparent)]
    Invalid(#[from] ido_api::names::InvalidName),
    /// The API server (or the client on the way to it) failed the request.
    #[error("{op} {kind} {name:?}: {source}")]
    Api {
        op: &'static str,
        kind: String,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file of the state directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state directory is held by another process.
    #[error("state directory {} is in use by another ido (pid {holder}); wait for it to finish, or pass --wait-lock", path.display())]
    Busy {
        path: std::path::PathBuf,
        holder: String,
    },
    /// An object could not be encoded or decoded (`what` names it).
    #[error("{what}: {source}")]
    Encoding {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A change to an object's metadata: finalizers replaced, annotations set (`Some`) or removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaPatch {
    pub finalizers: Option<Vec<String>>,
    pub annotations: BTreeMap<String, Option<String>>,
}

/// `Normal` or `Warning`, as in `core/v1` Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event about an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub type_: EventType,
    /// CamelCase reason, e.g. `Uploaded`.
    pub reason: String,
    /// What was done, e.g. `Upload`.
    pub action: String,
    pub message: String,
}

impl Event {
    /// A `Normal` event; control characters in `message` are escaped (see [`status_of`]).
    pub fn normal(reason: &str, action: &str, message: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason: reason.into(),
            action: action.into(),
            message: ido_io::redact::escape_controls(&message.into()),
        }
    }
    /// A `Warning` event; control characters in `message` are escaped.
    pub fn warning(reason: &str, action: &str, message: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            reason: reason.into(),
            action: action.into(),
            message: ido_io::redact::escape_controls(&message.into()),
        }
    }
}

/// `obj`'s status as the stores write it: every string in it with control characters
/// escaped. Messages carry text from outside (a server's error body, a file name inside an
/// archive, an OVF field), and a status or an event must not hold a forged line or a
/// terminal escape. `None` when the object has no status.
pub fn status_of<K: Object>(obj: &K) -> serde_json::Result<Option<serde_json::Value>> {
    fn escape(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.chars().any(char::is_control) => {
                *s = ido_io::redact::escape_controls(s);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(escape),
            serde_json::Value::Object(o) => o.values_mut().for_each(escape),
            _ => {}
        }
    }
    let mut full = serde_json::to_value(obj)?;
    Ok(match full.get_mut("status") {
        Some(status) if !status.is_null() => {
            escape(status);
            Some(status.take())
        }
        _ => None,
    })
}

/// The object store. Methods are generic over the object type; namespaces come from the
/// object (or the `namespace` argument of `get` and `list_labeled`).
pub trait Store: Clone + Send + Sync + 'static {
    /// The object, or `None`.
    fn get<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Result<Option<K>>> + Send;
    /// Every object of a kind (all namespaces).
    fn list<K: Object>(&self) -> impl Future<Output = Result<Vec<K>>> + Send;
    /// The objects of a namespaced kind in `namespace`, or in every namespace (`None`),
    /// whatever namespace the store itself serves (the workload image cache looks at the
    /// workloads of every namespace).
    fn list_in<K: Object>(&self, namespace: Option<&str>) -> impl Future<Output = Result<Vec<K>>> + Send;
    /// The objects of a namespaced kind in `namespace` that carry every label of `labels`
    /// (a label selector of `key=value` terms).
    fn list_labeled<K: Object>(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Vec<K>>> + Send;
    /// Creates `obj` (metadata name/namespace/labels/annotations, spec and status).
    fn create<K: Object>(&self, obj: &K) -> impl Future<Output = Result<K>> + Send;
    /// Patches finalizers/annotations of `obj` (conflict if `obj` is stale).
    fn patch_metadata<K: Object>(&self, obj: &K, patch: &MetaPatch)
    -> impl Future<Output = Result<K>> + Send;
    /// Replaces `obj`'s metadata labels and annotations and its spec (everything but the
    /// status) in one write (conflict if `obj` is stale).
    fn replace<K: Object>(&self, obj: &K) -> impl Future<Output = Result<K>> + Send;
    /// Writes `obj`'s status (conflict if `obj` is stale).
    fn update_status<K: Object>(&self, obj: &K) -> impl Future<Output = Result<K>> + Send;
    /// Deletes `obj` (sets `deletionTimestamp` while finalizers remain). Absent is success.
    fn delete<K: Object>(&self, obj: &K) -> impl Future<Output = Result<()>> + Send;
    /// Records an event about `obj`. Never fails the caller.
    fn event<K: Object>(&self, obj: &K, event: Event) -> impl Future<Output = ()> + Send;
    /// The last `lines` lines of `container`'s log in pod `namespace/pod`; `None` where
    /// nothing runs pods (the default: the file store of `ido run`) or the pod is gone.
    fn container_log_tail(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        lines: u32,
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        let _ = (namespace, pod, container, lines);
        async { Ok(None) }
    }
}

/// Runs `write` on `obj`; on a conflict reads the object again and runs `write` on the fresh
/// copy (up to 5 times). `Ok(None)` if the object disappeared.
async fn retry_on_conflict<S, K, F, Fut>(store: &S, obj: &K, mut write: F) -> Result<Option<K>>
where
    S: Store,
    K: Object,
    F: FnMut(K) -> Fut,
    Fut: Future<Output = Result<K>>,
{
    let mut current = obj.clone();
    for _ in 0..5 {
        match write(current.clone()).await {
            Ok(stored) => return Ok(Some(stored)),
            Err(StoreError::Conflict { .. }) => {
                let meta = current.meta();
                let name = meta.name.as_deref().unwrap_or_default();
                match store.get::<K>(meta.namespace.as_deref(), name).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(None),
                }
            }
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict {
        kind: K::kind(&()).to_string(),
        name: obj.meta().name.clone().unwrap_or_default(),
    })
}

/// Applies `change` to `obj` and writes the status if that changed anything, re-applying
/// `change` to a fresh copy on conflict. Returns the object as stored, or `None` if it
/// disappeared.
pub async fn modify_status<S: Store, K: Object>(
    store: &S,
    obj: &K,
    change: impl Fn(&mut K),
) -> Result<Option<K>> {
    let change = &change;
    retry_on_conflict(store, obj, |current| async move {
        let mut next = current.clone();
        change(&mut next);
        let json = |k: &K| {
            serde_json::to_value(k).map_err(|source| StoreError::Encoding {
                what: format!("encoding {}", K::kind(&())),
                source,
            })
        };
        if json(&current)? == json(&next)? {
            return Ok(current);
        }
        store.update_status(&next).await
    })
    .await
}

/// Patches metadata, re-reading on conflict like [`modify_status`].
pub async fn patch_metadata_retry<S: Store, K: Object>(
    store: &S,
    obj: &K,
    patch: &MetaPatch,
) -> Result<Option<K>> {
    retry_on_conflict(store, obj, |current| async move {
        store.patch_metadata(&current, patch).await
    })
    .await
}

/// Whether `obj` carries `finalizer`.
pub fn has_finalizer<K: Object>(obj: &K, finalizer: &str) -> bool {
    obj.meta().finalizers.iter().flatten().any(|f| f == finalizer)
}

/// A patch that adds (`add`) or removes `finalizer`, keeping the others.
pub fn finalizer_patch<K: Object>(obj: &K, finalizer: &str, add: bool) -> MetaPatch {
    let mut list: Vec<String> = obj
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if add {
        list.push(finalizer.to_string());
    }
    MetaPatch {
        finalizers: Some(list),
        annotations: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text from outside (an OVF field, a server's error body) cannot forge a line or send a
    /// terminal escape through a status or an event.
    #[test]
    fn statuses_and_events_hold_no_raw_control_characters() {
        let mut ni: ido_api::NodeImage = serde_json::from_value(serde_json::json!({
            "apiVersion": "image.giantswarm.io/v1alpha1",
            "kind": "NodeImage",
            "metadata": {"name": "x"},
            "spec": {"name": "x", "provider": "capv"},
        }))
        .unwrap();
        let mut status = ido_api::NodeImageStatus::default();
        ido_api::condition::set_condition(
            &mut status.conditions,
            ido_api::condition::Condition {
                type_: "Ready".into(),
                status: ido_api::condition::ConditionStatus::False,
                observed_generation: None,
                last_transition_time: jiff::Timestamp::UNIX_EPOCH,
                reason: "InvalidImage".into(),
                message: "disk \u{1b}[31mred\nFORGED line\r".into(),
            },
        );
        ni.status = Some(status);
        let v = status_of(&ni).unwrap().unwrap();
        let msg = v["conditions"][0]["message"].as_str().unwrap();
        assert_eq!(msg, "disk \\u{1b}[31mred\\nFORGED line\\r");
        let e = Event::warning("Failed", "Upload", "body: \u{1b}]0;title\u{7}\nFORGED");
        assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
    }
}
