//! An in-memory Kubernetes API server behind a `kube::Client`, for the requests the
//! operator makes: get, list, watch (streamed), create, JSON merge patch, update (PUT), the
//! `status` subresource, a pod's `log` (set by the test), and delete with finalizers. It keeps the API server's rules that
//! matter to a controller: `resourceVersion` preconditions (409 Conflict), 409
//! AlreadyExists, 404 NotFound as `Status` JSON, status ignored on the main resource (and
//! everything but status ignored on `/status`) for kinds with a status subresource, delete
//! with finalizers setting `deletionTimestamp`, removal once the last finalizer goes, and no
//! new finalizers on an object being deleted, and `key=value` label selectors on lists and
//! watches (no garbage collector: owned objects stay when their owner goes). Every request the client sends is recorded as
//! a [`Call`] (verb, group, resource, subresource, namespace) for the RBAC checks.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use kube::Resource;
use serde_json::Value;
use tokio::sync::broadcast;

mod objects;
mod watch;

/// Kinds whose status is a subresource (main-resource writes leave it alone).
const STATUS_SUBRESOURCE: &[&str] = &[
    "nodeimages",
    "imagesyncs",
    "diskimports",
    "jobs",
    "persistentvolumeclaims",
    "pods",
];

/// Whether `obj` matches the `labelSelector` of `query` (`k=v` terms joined by `,`).
pub(crate) fn selected(obj: &Value, query: &str) -> bool {
    let Some(sel) = query.split('&').find_map(|q| q.strip_prefix("labelSelector=")) else {
        return true;
    };
    let sel = sel.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/");
    sel.split(',')
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v),
            None => panic!("unsupported label selector term {term:?}"),
        })
}

/// One request, as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Call {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
}

/// Where an object lives: (api prefix, resource, namespace, name).
type Key = (String, String, Option<String>, String);

/// One change, for watches.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    prefix: String,
    resource: String,
    namespace: Option<String>,
    object: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    /// Container logs by (namespace, pod, container), as the kubelet would serve them.
    logs: BTreeMap<(String, String, String), String>,
    rv: u64,
    log: Vec<Change>,
    calls: Vec<Call>,
}

/// The fake API server. Cheap to clone.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(v: &Value) -> Body {
    Full::new(Bytes::from(v.to_string())).boxed_unsync()
}

/// Parsed request path.
struct Target {
    prefix: String,
    group: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Target {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, group, rest) = match seg[0] {
        "api" => (format!("/api/{}", seg[1]), String::new(), &seg[2..]),
        "apis" => (
            format!("/apis/{}/{}", seg[1], seg[2]),
            seg[1].to_string(),
            &seg[3..],
        ),
        other => panic!("unexpected path {other}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    Target {
        prefix,
        group,
        namespace,
        resource: rest[0].to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    }
}

impl FakeApi {
    /// An empty server.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            changes: broadcast::channel(1024).0,
        }
    }

    /// A client of this server; `default_namespace` as in a kubeconfig.
    pub fn client(&self, default_namespace: &str) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, default_namespace)
    }

    /// Every request recorded so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Stores `obj` as a user would (`kubectl create`), unrecorded.
    pub fn create<K: Resource<DynamicType = ()> + serde::Serialize>(&self, obj: &K) -> Value {
        let url = K::url_path(&(), obj.meta().namespace.as_deref());
        let (code, v) = self.apply(Method::POST, &url, None, serde_json::to_value(obj).unwrap(), "");
        assert!(code.is_success(), "create {url}: {v}");
        v
    }

    /// The object at `K`'s `namespace/name`, unrecorded.
    pub fn get<K: Resource<DynamicType = ()>>(&self, namespace: Option<&str>, name: &str) -> Option<Value> {
        let t = parse_path(&format!("{}/{name}", K::url_path(&(), namespace)));
        let key = (t.prefix, t.resource, t.namespace, name.to_string());
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Every object of `K`'s resource, unrecorded.
    pub fn list<K: Resource<DynamicType = ()>>(&self) -> Vec<Value> {
        let t = parse_path(&format!("{}/x", K::url_path(&(), None)));
        let st = self.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|(k, _)| k.0 == t.prefix && k.1 == t.resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes `K`'s `namespace/name` with `f` and writes it back as a user would
    /// (`kubectl edit`), unrecorded.
    pub fn modify<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) {
        let mut v = self.get::<K>(namespace, name).expect("object to modify");
        f(&mut v);
        let url = format!("{}/{name}", K::url_path(&(), namespace));
        let (code, out) = self.apply(Method::PUT, &url, None, v, "");
        assert!(code.is_success(), "update {url}: {out}");
    }

    /// Replaces the status of `K`'s `namespace/name` as its controller would (a Job's by
    /// the Job controller, a pod's by the kubelet), unrecorded.
    pub fn set_status<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) {
        let mut v = self.get::<K>(namespace, name).expect("object to update");
        v["status"] = status;
        let url = format!("{}/{name}/status", K::url_path(&(), namespace));
        let (code, out) = self.apply(Method::PUT, &url, None, v, "");
        assert!(code.is_success(), "update status {url}: {out}");
    }

    /// Sets what a pod's container has logged so far (the kubelet's part), unrecorded.
    pub fn set_log(&self, namespace: &str, pod: &str, container: &str, text: &str) {
        let key = (namespace.to_string(), pod.to_string(), container.to_string());
        self.state.lock().unwrap().logs.insert(key, text.to_string());
    }

    /// `GET …/pods/<name>/log?container=…&tailLines=N&limitBytes=M`: the last N lines of the
    /// log, cut to M bytes, as plain text; 404 for an unknown pod.
    fn log(&self, t: &Target, query: &str) -> Response<Body> {
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|q| q.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        let (ns, pod) = (
            t.namespace.clone().unwrap_or_default(),
            t.name.clone().unwrap_or_default(),
        );
        let container = param("container").expect("the operator names the container");
        let st = self.state.lock().unwrap();
        let pod_key = (
            "/api/v1".to_string(),
            "pods".to_string(),
            Some(ns.clone()),
            pod.clone(),
        );
        if !st.objects.contains_key(&pod_key) {
            let (code, v) = (
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": format!("pods \"{pod}\" not found")}),
            );
            return Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(full(&v))
                .unwrap();
        }
        let text = st.logs.get(&(ns, pod, container)).cloned().unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = param("tailLines").map_or(lines.len(), |n| n.parse().unwrap());
        let mut out = lines[lines.len().saturating_sub(tail)..].join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        if let Some(limit) = param("limitBytes") {
            out.truncate(limit.parse().unwrap());
        }
        Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(out)).boxed_unsync())
            .unwrap()
    }

    /// Deletes `K`'s `namespace/name` as a user would (`kubectl delete`), unrecorded.
    pub fn delete<K: Resource<DynamicType = ()>>(&self, namespace: Option<&str>, name: &str) {
        let url = format!("{}/{name}", K::url_path(&(), namespace));
        let (code, v) = self.apply(Method::DELETE, &url, None, Value::Null, "");
        assert!(code.is_success(), "delete {url}: {v}");
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        let query = parts.uri.query().unwrap_or("").to_string();
        let path = parts.uri.path().to_string();
        let t = parse_path(&path);
        let watch = query.split('&').any(|q| q == "watch=true" || q == "watch=1");
        let verb = match (&parts.method, &t.name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) if watch => "watch",
            (&Method::GET, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (m, _) => panic!("unexpected {m} {path}"),
        };
        self.state.lock().unwrap().calls.push(Call {
            verb: verb.into(),
            group: t.group.clone(),
            resource: t.resource.clone(),
            subresource: t.subresource.clone(),
            namespace: t.namespace.clone(),
        });
        if verb == "watch" {
            return self.watch(t, &query);
        }
        if verb == "get" && t.resource == "pods" && t.subresource.as_deref() == Some("log") {
            return self.log(&t, &query);
        }
        if verb == "patch" {
            let ct = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(
                ct.as_deref(),
                Some("application/merge-patch+json"),
                "only merge patches are expected"
            );
        }
        let (code, v) = self.apply(parts.method, &path, t.name.clone(), body, &query);
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(full(&v))
            .unwrap()
    }
}
