//! HTTPS transport of the fake: TLS (rustls) in front of axum, `/api2/json` routing, token
//! auth, parameter parsing (query, form or JSON body; the query wins) and PVE's envelope
//! and error shapes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::state::State;
use super::{FakeRequest, qemu, storage, tasks};

/// What every handler shares.
pub(super) struct Shared {
    /// The inventory.
    pub state: Mutex<State>,
    /// `user@realm!tokenid`: the only identity that authenticates.
    pub token_user: String,
    /// The token's secret.
    pub secret: String,
    /// `/version`'s `version` (e.g. `8.4.1`).
    pub version: String,
    /// Client for `download-url` (trusts the fake's CA and any extra CAs).
    pub http: reqwest::Client,
}

impl Shared {
    /// Locks the state (a panicked holder does not poison the fake for other tests).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A PVE error reply: status, message (reason phrase and `message`), per-parameter errors.
#[derive(Debug)]
pub(super) struct PveError {
    pub status: u16,
    pub message: String,
    pub errors: BTreeMap<String, String>,
}

impl PveError {
    /// `400 Parameter verification failed.` with one parameter error.
    pub fn param(name: &str, msg: impl Into<String>) -> Self {
        Self::params([(name.to_string(), msg.into())].into())
    }
    /// `400 Parameter verification failed.` with several parameter errors.
    pub fn params(errors: BTreeMap<String, String>) -> Self {
        Self {
            status: 400,
            message: "Parameter verification failed.".into(),
            errors,
        }
    }
    /// The schema check `a` and the format check `b` together: both 400s merge their
    /// `errors` (PVE reports every bad parameter at once).
    pub fn merge<T>(a: Result<(), Self>, b: Result<T, Self>) -> Result<T, Self> {
        match (a, b) {
            (Ok(()), b) => b,
            (Err(mut a), Err(b)) if a.status == 400 && b.status == 400 => {
                a.errors.extend(b.errors);
                Err(a)
            }
            (Err(a), _) => Err(a),
        }
    }

    /// `500 <message>`: a handler died.
    pub fn server(msg: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: msg.into(),
            errors: BTreeMap::new(),
        }
    }
    /// `403 Permission check failed (<path>, <privilege>)`.
    pub fn forbidden(path: &str, privilege: &str) -> Self {
        Self {
            status: 403,
            message: format!("Permission check failed ({path}, {privilege})"),
            errors: BTreeMap::new(),
        }
    }
    /// `501 <message>`.
    pub fn not_implemented(msg: impl Into<String>) -> Self {
        Self {
            status: 501,
            message: msg.into(),
            errors: BTreeMap::new(),
        }
    }
}

/// A successful reply: `data` and, for paged endpoints, `total`.
pub(super) struct Data(pub Value, pub Option<usize>);

impl From<Value> for Data {
    fn from(v: Value) -> Self {
        Self(v, None)
    }
}

/// What a handler returns.
pub(super) type Reply = Result<Data, PveError>;

/// One parsed request.
pub(super) struct Req {
    pub method: String,
    /// Path segments after `/api2/json`, percent-decoded.
    pub segs: Vec<String>,
    /// Body and query parameters (query wins).
    pub params: BTreeMap<String, String>,
}

impl Req {
    /// A parameter's value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }

    /// Rejects parameters outside `allowed` (a trailing `N` allows a numbered family, e.g.
    /// `netN`) and missing `required` ones, the way PVE's schema check does.
    pub fn check(&self, allowed: &[&str], required: &[&str]) -> Result<(), PveError> {
        let known = |k: &str| {
            allowed.iter().any(|a| match a.strip_suffix('N') {
                Some(prefix) if a.len() > 1 => k
                    .strip_prefix(prefix)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
                _ => *a == k,
            }) || required.contains(&k)
        };
        let mut errors = BTreeMap::new();
        for k in self.params.keys().filter(|k| !known(k)) {
            errors.insert(
                k.clone(),
                "property is not defined in schema and the schema does not allow additional properties"
                    .to_string(),
            );
        }
        for r in required.iter().filter(|r| !self.params.contains_key(**r)) {
            errors.insert(r.to_string(), "property is missing and it is not optional".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PveError::params(errors))
        }
    }

    /// An integer parameter within `min..=max`.
    pub fn int(&self, k: &str, min: i64, max: i64) -> Result<Option<i64>, PveError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let n: i64 = v
            .parse()
            .map_err(|_| PveError::param(k, format!("type check ('integer') failed - got '{v}'")))?;
        if n < min {
            return Err(PveError::param(
                k,
                format!("value must have a minimum value of {min}"),
            ));
        }
        if n > max {
            return Err(PveError::param(
                k,
                format!("value must have a maximum value of {max}"),
            ));
        }
        Ok(Some(n))
    }

    /// A boolean parameter (`0`/`1`, PVE also takes `yes`/`no`, `true`/`false`, `on`/`off`).
    pub fn boolean(&self, k: &str) -> Result<bool, PveError> {
        match self.get(k) {
            None => Ok(false),
            Some("1" | "yes" | "true" | "on") => Ok(true),
            Some("0" | "no" | "false" | "off") => Ok(false),
            Some(v) => Err(PveError::param(
                k,
                format!("type check ('boolean') failed - got '{v}'"),
            )),
        }
    }
}

/// The only axum handler: auth, parsing, routing, envelope.
pub(super) async fn handle(AxumState(sh): AxumState<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let Some(rest) = parts.uri.path().strip_prefix("/api2/json") else {
        return error(PveError::not_implemented("no such path"));
    };
    let rest = rest.to_string();
    if let Err(reason) = authenticate(&sh, &parts.headers) {
        // Real PVE: `401 No ticket` / `401 Authentication failed!` (reason phrase), empty body.
        tracing::debug!(%reason, path = %parts.uri.path(), "fake proxmox: 401");
        return reply(401, None);
    }
    let Ok(bytes) = to_bytes(body, 16 << 20).await else {
        return error(PveError::server("request body too large or unreadable"));
    };
    let mut params = BTreeMap::new();
    if !bytes.is_empty() {
        if matches!(method.as_str(), "GET" | "DELETE") {
            return error(PveError::not_implemented(format!(
                "Unexpected content for method '{method}'"
            )));
        }
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if json {
            match serde_json::from_slice::<BTreeMap<String, Value>>(&bytes) {
                Ok(m) => params.extend(m.into_iter().map(|(k, v)| (k, scalar(&v)))),
                Err(e) => return error(PveError::param("body", format!("invalid JSON: {e}"))),
            }
        } else {
            params.extend(url::form_urlencoded::parse(&bytes).into_owned());
        }
    }
    if let Some(q) = parts.uri.query() {
        params.extend(url::form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    let segs: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    sh.lock().requests.push(FakeRequest {
        method: method.clone(),
        path: format!("/{}", segs.join("/")),
        params: params.clone(),
    });
    let req = Req { method, segs, params };
    match route(&sh, &req) {
        Ok(Data(data, total)) => {
            let mut body = json!({ "data": data });
            if let Some(t) = total {
                body["total"] = json!(t);
            }
            reply(200, Some(body))
        }
        Err(e) => error(e),
    }
}

/// Checks `Authorization: PVEAPIToken=<user>@<realm>!<tokenid>=<secret>`.
fn authenticate(sh: &Shared, headers: &HeaderMap) -> Result<(), String> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Err("No ticket".into());
    };
    let ok = v
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("PVEAPIToken=")
                .or_else(|| v.strip_prefix("PVEAPIToken "))
        })
        .and_then(|t| t.split_once('='))
        .is_some_and(|(id, secret)| id == sh.token_user && secret == sh.secret);
    if ok && !sh.lock().faults.revoked {
        Ok(())
    } else {
        Err("Authentication failed!".into())
    }
}

/// Dispatches on method and path.
fn route(sh: &Arc<Shared>, req: &Req) -> Reply {
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    match (m, segs.as_slice()) {
        ("GET", ["version"]) => {
            req.check(&[], &[])?;
            let release: String = sh.version.split('.').take(2).collect::<Vec<_>>().join(".");
            Ok(json!({"version": sh.version, "release": release, "repoid": "2a5fa54a8503f96d"}).into())
        }
        ("GET", ["nodes"]) => {
            let nodes: Vec<Value> = sh
                .lock()
                .nodes
                .keys()
                .map(|n| json!({"node": n, "status": "online", "type": "node", "id": format!("node/{n}"), "maxcpu": 8, "level": ""}))
                .collect();
            Ok(Value::Array(nodes).into())
        }
        ("GET", ["cluster", "nextid"]) => qemu::next_id(sh, req),
        ("GET", ["cluster", "resources"]) => qemu::resources(sh, req),
        (_, ["nodes", node, rest @ ..]) => {
            if !sh.lock().nodes.contains_key(*node) {
                return Err(PveError::server(format!(
                    "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
                )));
            }
            match (m, rest) {
                ("GET", ["qemu"]) => qemu::list(sh, node, req),
                ("POST", ["qemu"]) => qemu::create(sh, node, req),
                ("GET", ["qemu", id, "config"]) => qemu::config_get(sh, node, id, req),
                ("POST" | "PUT", ["qemu", id, "config"]) => qemu::config_set(sh, node, id, req),
                ("POST", ["qemu", id, "template"]) => qemu::template(sh, node, id, req),
                ("DELETE", ["qemu", id]) => qemu::destroy(sh, node, id, req),
                ("GET", ["storage"]) => storage::list(sh, node, req),
                ("GET", ["storage", s, "content"]) => storage::content(sh, node, s, req),
                ("DELETE", ["storage", s, "content", vol @ ..]) if !vol.is_empty() => {
                    storage::delete_volume(sh, node, s, &vol.join("/"), req)
                }
                ("POST", ["storage", s, "download-url"]) => storage::download_url(sh, node, s, req),
                ("GET", ["network"]) => storage::network(node, req),
                ("GET", ["tasks", upid, "status"]) => tasks::status(sh, node, upid, req),
                ("GET", ["tasks", upid, "log"]) => tasks::log(sh, node, upid, req),
                ("DELETE", ["tasks", upid]) => tasks::stop(sh, node, upid, req),
                _ => Err(not_implemented(req)),
            }
        }
        _ => Err(not_implemented(req)),
    }
}

/// `501 Method 'GET /x' not implemented` (PVE's answer for unknown paths, not 404).
fn not_implemented(req: &Req) -> PveError {
    PveError::not_implemented(format!(
        "Method '{} /{}' not implemented",
        req.method,
        req.segs.join("/")
    ))
}

/// A JSON scalar as the string PVE's parameter parser would see.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => u8::from(*b).to_string(),
        other => other.to_string(),
    }
}

/// Decodes `%XX` escapes (not `+`: paths are not forms).
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error reply: PVE ≥ 8.4 puts the message both in the status line and in `message`.
fn error(e: PveError) -> Response {
    let mut body = json!({"data": null, "message": format!("{}\n", e.message)});
    if !e.errors.is_empty() {
        body["errors"] = json!(e.errors);
    }
    reply(e.status, Some(body))
}

/// A response with `status` and an optional JSON body (401s have none). The reason phrase
/// stays the standard one: axum cannot set another without naming hyper's extension type.
fn reply(status: u16, body: Option<Value>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut b = Response::builder().status(status);
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json;charset=UTF-8");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).unwrap_or_default()
}
