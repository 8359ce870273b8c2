//! [`KubeStore`]: the controllers' [`Store`] over the Kubernetes API.
//!
//! Every write is narrow and carries the object's `resourceVersion`, so the API server
//! turns a stale read into `409 Conflict` ([`StoreError::Conflict`]) instead of losing
//! someone else's change:
//!
//! | store call       | request                                                            | RBAC verb |
//! |------------------|--------------------------------------------------------------------|-----------|
//! | `get`            | `GET …/<plural>/<name>` (404 → `None`)                             | get       |
//! | `list`           | `GET …/<plural>` (the store's namespace for namespaced kinds)      | list      |
//! | `list_labeled`   | `GET …/namespaces/<ns>/<plural>?labelSelector=k=v,…`                | list      |
//! | `create`         | `POST …/<plural>`                                                   | create    |
//! | `patch_metadata` | JSON merge patch `{"metadata":{resourceVersion, finalizers, annotations}}` | patch |
//! | `update_status`  | server-side apply of `…/<plural>/<name>/status` (field manager `ido`, the whole status, with the `resourceVersion`) | patch (`<plural>/status`) |
//! | `delete`         | `DELETE …/<plural>/<name>`, background propagation (404 → done)     | delete    |
//! | `event`          | `events.k8s.io/v1` Event via kube's [`Recorder`] (create, patch for a repeat) | create, patch |
//! | `container_log_tail` | `GET …/namespaces/<ns>/pods/<name>/log?container=…&tailLines=…&limitBytes=…` (404 → `None`) | get (`pods/log`) |
//!
//! Status is written by server-side apply with one field manager (`ido`) that owns the
//! whole status: a field the new status leaves out (e.g. `conditions` or `locations`
//! serialize as absent when empty) is removed, which a merge patch could not do, and
//! nothing outside the status is touched. The `resourceVersion` in the applied object is a
//! precondition, so a stale status is refused with 409 like any other write.
//!
//! Deletes propagate in the background: a Job's pods go with it (the API's default for
//! `batch/v1` Jobs is to orphan them).
//!
//! Events about cluster-scoped objects (Releases) land in the `default` namespace: the API
//! server accepts `events.k8s.io/v1` events with an `eventTime` for a cluster-scoped object
//! only in `default` or `kube-system`, and kube's [`Recorder`] picks `default`.

use std::any::TypeId;

use ido_controllers::store::{Event, EventType, MetaPatch, Object, Result, Store, StoreError};
use k8s_openapi::NamespaceResourceScope;
use kube::{
    Client,
    api::{Api, DeleteParams, ListParams, LogParams, PostParams},
    core::{ObjectList, Request, params::Patch, params::PatchParams},
    runtime::events::{self, Recorder, Reporter},
};
use serde_json::{Map, Value, json};

/// Longest event note the API server accepts (bytes).
const MAX_NOTE: usize = 1024;
/// Longest event reason or action the API server accepts (bytes).
const MAX_REASON: usize = 128;

/// The [`Store`] of `ido operator`: typed requests over a [`kube::Client`]. Cheap to clone.
#[derive(Clone)]
pub struct KubeStore {
    /// The API client.
    client: Client,
    /// Publishes `events.k8s.io/v1` Events (with kube's de-duplication into series).
    recorder: Recorder,
    /// Namespace that `list` of a namespaced kind is limited to, and the namespace of a
    /// namespaced object that names none; `None` lists across all namespaces.
    namespace: Option<String>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    /// A store over `client`; events are reported as `reporter`; lists of namespaced kinds
    /// are limited to `namespace` (the operator's NodeImage namespace: this keeps its RBAC
    /// to a Role there) or span the cluster when `None`.
    pub fn new(client: Client, reporter: Reporter, namespace: Option<String>) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            recorder,
            namespace,
        }
    }

    /// The API client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Request builder for kind `K` in `namespace` (ignored for cluster-scoped kinds; a
    /// namespaced kind without one uses the store's, then the client's default namespace).
    fn request<K: Object>(&self, namespace: Option<&str>) -> Request {
        let ns = if is_namespaced::<K>() {
            Some(
                namespace
                    .or(self.namespace.as_deref())
                    .unwrap_or(self.client.default_namespace()),
            )
        } else {
            None
        };
        Request::new(K::url_path(&(), ns))
    }
}

/// Whether `K` lives in namespaces.
fn is_namespaced<K: Object>() -> bool {
    TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>()
}

/// The field manager of every status the operator writes.
pub const FIELD_MANAGER: &str = "ido";

/// The server-side apply body of `obj`'s status: its identity, its `resourceVersion` (a
/// precondition: a stale copy gets 409) and the whole status, which the operator's field
/// manager owns, so a field the new status leaves out is removed.
fn status_apply<K: Object>(obj: &K) -> serde_json::Result<Value> {
    let m = obj.meta();
    let mut metadata = json!({"name": m.name, "resourceVersion": m.resource_version});
    if let Some(ns) = &m.namespace {
        metadata["namespace"] = json!(ns);
    }
    let mut body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
    });
    if let Some(status) = ido_controllers::store::status_of(obj)? {
        body["status"] = status;
    }
    Ok(body)
}

/// Name of `obj`, for requests and errors.
fn name_of<K: Object>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

/// Maps a client error onto the store's error kinds: 404 → `NotFound`, 409 with reason
/// `AlreadyExists` → `AlreadyExists`, any other 409 → `Conflict`.
fn map_err<K: Object>(op: &'static str, name: &str, e: kube::Error) -> StoreError {
    let kind = K::kind(&()).to_string();
    let name = name.to_string();
    match e {
        kube::Error::Api(s) if s.code == 404 => StoreError::NotFound { kind, name },
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
            StoreError::AlreadyExists { kind, name }
        }
        kube::Error::Api(s) if s.code == 409 => StoreError::Conflict { kind, name },
        e => StoreError::Api {
            op,
            kind,
            name,
            source: Box::new(e),
        },
    }
}

/// A request that could not be built (an invalid name, say).
fn build_err<K: Object>(
    op: &'static str,
    name: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Api {
        op,
        kind: K::kind(&()).to_string(),
        name: name.to_string(),
        source: Box::new(e),
    }
}

/// The merge patch of a [`MetaPatch`]: only the fields it changes, plus the precondition.
pub fn meta_patch_body(resource_version: Option<&str>, patch: &MetaPatch) -> Value {
    let mut meta = Map::new();
    if let Some(rv) = resource_version {
        meta.insert("resourceVersion".into(), json!(rv));
    }
    if let Some(f) = &patch.finalizers {
        meta.insert("finalizers".into(), json!(f));
    }
    if !patch.annotations.is_empty() {
        let a: Map<String, Value> = patch
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, |v| json!(v))))
            .collect();
        meta.insert("annotations".into(), Value::Object(a));
    }
    json!({ "metadata": meta })
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl Store for KubeStore {
    async fn get<K: Object>(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>> {
        let req = self
            .request::<K>(namespace)
            .get(name, &Default::default())
            .map_err(|e| build_err::<K>("get", name, e))?;
        match self.client.request::<K>(req).await {
            Ok(obj) => Ok(Some(obj)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(map_err::<K>("get", name, e)),
        }
    }

    /// A namespaced kind is listed in the store's namespace.
    async fn list<K: Object>(&self) -> Result<Vec<K>> {
        self.list_in::<K>(self.namespace.as_deref()).await
    }

    async fn list_in<K: Object>(&self, namespace: Option<&str>) -> Result<Vec<K>> {
        let ns = if is_namespaced::<K>() { namespace } else { None };
        let req = Request::new(K::url_path(&(), ns))
            .list(&ListParams::default())
            .map_err(|e| build_err::<K>("list", "", e))?;
        let list: ObjectList<K> = self
            .client
            .request(req)
            .await
            .map_err(|e| map_err::<K>("list", "", e))?;
        Ok(list.items)
    }

    async fn replace<K: Object>(&self, obj: &K) -> Result<K> {
        let name = name_of(obj);
        let body = serde_json::to_vec(obj).map_err(|e| build_err::<K>("update", &name, e))?;
        let req = self
            .request::<K>(obj.meta().namespace.as_deref())
            .replace(&name, &PostParams::default(), body)
            .map_err(|e| build_err::<K>("update", &name, e))?;
        self.client
            .request::<K>(req)
            .await
            .map_err(|e| map_err::<K>("update", &name, e))
    }

    async fn list_labeled<K: Object>(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<K>> {
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let req = Request::new(K::url_path(&(), Some(namespace)))
            .list(&ListParams::default().labels(&selector.join(",")))
            .map_err(|e| build_err::<K>("list", "", e))?;
        let list: ObjectList<K> = self
            .client
            .request(req)
            .await
            .map_err(|e| map_err::<K>("list", "", e))?;
        Ok(list.items)
    }

    async fn create<K: Object>(&self, obj: &K) -> Result<K> {
        let name = name_of(obj);
        let mut obj = obj.clone();
        // The server assigns these; a stale copy would be rejected.
        obj.meta_mut().resource_version = None;
        obj.meta_mut().uid = None;
        let body = serde_json::to_vec(&obj).map_err(|e| build_err::<K>("create", &name, e))?;
        let req = self
            .request::<K>(obj.meta().namespace.as_deref())
            .create(&PostParams::default(), body)
            .map_err(|e| build_err::<K>("create", &name, e))?;
        self.client
            .request::<K>(req)
            .await
            .map_err(|e| map_err::<K>("create", &name, e))
    }

    async fn patch_metadata<K: Object>(&self, obj: &K, patch: &MetaPatch) -> Result<K> {
        let name = name_of(obj);
        let body = meta_patch_body(obj.meta().resource_version.as_deref(), patch);
        let req = self
            .request::<K>(obj.meta().namespace.as_deref())
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .map_err(|e| build_err::<K>("patch", &name, e))?;
        self.client
            .request::<K>(req)
            .await
            .map_err(|e| map_err::<K>("patch", &name, e))
    }

    async fn update_status<K: Object>(&self, obj: &K) -> Result<K> {
        let name = name_of(obj);
        let body = status_apply(obj).map_err(|e| build_err::<K>("update status of", &name, e))?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let req = self
            .request::<K>(obj.meta().namespace.as_deref())
            .patch_subresource("status", &name, &params, &Patch::Apply(&body))
            .map_err(|e| build_err::<K>("update status of", &name, e))?;
        self.client
            .request::<K>(req)
            .await
            .map_err(|e| map_err::<K>("update status of", &name, e))
    }

    async fn delete<K: Object>(&self, obj: &K) -> Result<()> {
        let name = name_of(obj);
        let req = self
            .request::<K>(obj.meta().namespace.as_deref())
            .delete(&name, &DeleteParams::background())
            .map_err(|e| build_err::<K>("delete", &name, e))?;
        match self.client.request_text(req).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(map_err::<K>("delete", &name, e)),
        }
    }

    async fn event<K: Object>(&self, obj: &K, event: Event) {
        let ev = events::Event {
            type_: match event.type_ {
                EventType::Normal => events::EventType::Normal,
                EventType::Warning => events::EventType::Warning,
            },
            reason: truncate(&event.reason, MAX_REASON),
            action: truncate(&event.action, MAX_REASON),
            note: Some(truncate(&event.message, MAX_NOTE)),
            secondary: None,
        };
        let reference = obj.object_ref(&());
        if let Err(error) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(
                kind = %K::kind(&()),
                name = %name_of(obj),
                reason = %event.reason,
                %error,
                "publishing an event failed"
            );
        }
    }

    async fn container_log_tail(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        lines: u32,
    ) -> Result<Option<String>> {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = LogParams {
            container: Some(container.to_string()),
            tail_lines: Some(i64::from(lines)),
            // A tail of progress lines; a log line longer than this is cut.
            limit_bytes: Some(MAX_LOG_TAIL),
            ..LogParams::default()
        };
        match api.logs(pod, &params).await {
            Ok(text) => Ok(Some(text)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(map_err::<k8s_openapi::api::core::v1::Pod>(
                "reading the log of",
                pod,
                e,
            )),
        }
    }
}

/// Most bytes of a container's log tail read at once.
const MAX_LOG_TAIL: i64 = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_patch_sets_and_removes() {
        let mut p = MetaPatch {
            finalizers: Some(vec!["a".into()]),
            ..Default::default()
        };
        p.annotations.insert("set".into(), Some("v".into()));
        p.annotations.insert("gone".into(), None);
        assert_eq!(
            meta_patch_body(Some("7"), &p),
            json!({"metadata": {"resourceVersion": "7", "finalizers": ["a"], "annotations": {"set": "v", "gone": null}}})
        );
        assert_eq!(
            meta_patch_body(None, &MetaPatch::default()),
            json!({"metadata": {}})
        );
    }

    #[test]
    fn scope_of_kinds() {
        assert!(is_namespaced::<ido_api::NodeImage>());
        assert!(!is_namespaced::<ido_api::Release>());
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(700);
        let t = truncate(&long, MAX_NOTE);
        assert!(t.len() <= MAX_NOTE && t.ends_with("..."));
    }
}
