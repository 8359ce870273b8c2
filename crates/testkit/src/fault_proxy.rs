//! A fault-injecting HTTP/1.1 reverse proxy on `127.0.0.1:0`, in front of a plain-HTTP
//! upstream (e.g. a [`DockerRegistry`](crate::registry::DockerRegistry)).
//!
//! Requests and responses stream through in both directions. The upstream sees its own
//! `Host`; `Location` headers pointing at the upstream are rewritten to the proxy, so upload
//! sessions keep going through it. [`Rule`]s, switchable at runtime, inject faults into the
//! requests they match:
//!
//! | [`Fault`] | what the client sees |
//! |---|---|
//! | [`Fault::ResetResponse`] | the response headers and the first N body bytes, then a TCP reset (mid-blob) |
//! | [`Fault::ResetRequest`] | a TCP reset once N bytes of its request body have passed (mid-upload) |
//! | [`Fault::Status`] | that status (e.g. 503) with an OCI error body, without the upstream seeing the request |
//! | [`Fault::TooManyRequests`] | 429 with `Retry-After` and a `TOOMANYREQUESTS` error body, idem |
//! | [`Fault::Throttle`] | the upstream's response, its body at most N bytes per second (a slow download) |
//! | [`Fault::PageTags`] | a tag list in pages of at most N, each pointing at the next with `Link` (as hosted registries page) |
//!
//! A reset is a real RST: the accepted socket gets `SO_LINGER` 0 before it is dropped.
//! [`FaultProxy::counts`] says what was injected, [`FaultProxy::events`] when.
//!
//! ```no_run
//! # async fn f(reg: &ido_testkit::registry::DockerRegistry) -> anyhow::Result<()> {
//! use ido_testkit::fault_proxy::{Fault, FaultProxy, Rule, When};
//! let proxy = FaultProxy::start(&reg.base_url()).await?;
//! proxy.set_rules(vec![
//!     Rule::new(Fault::ResetResponse { after_bytes: 100_000 }).method("GET").path("/blobs/sha256:").when(When::First(1)),
//!     Rule::new(Fault::Status(503)).when(When::EveryNth(7)),
//! ]);
//! // ... copy through `proxy.host()` ...
//! assert_eq!(proxy.counts().resets_response, 1);
//! # Ok(()) }
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::{net::TcpListener, task::JoinHandle};

use conn::{Conn, FaultListener};

/// What to do to a matching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward it, then reset the connection after `after_bytes` bytes of the response body.
    ResetResponse {
        /// Body bytes passed on before the reset.
        after_bytes: u64,
    },
    /// Forward it, and reset the connection once `after_bytes` bytes of its body have passed.
    ResetRequest {
        /// Request body bytes passed on before the reset.
        after_bytes: u64,
    },
    /// Answer this status (5xx) with an OCI error body; the upstream never sees the request.
    Status(u16),
    /// Answer 429 with `Retry-After: <retry_after_secs>`; the upstream never sees the request.
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// Answer a tag list (`GET …/tags/list`) a page at a time: at most `page` tags (fewer
    /// if `n` asks for fewer), after the `last` given, with `Link: <…>; rel="next"` while
    /// more remain; the upstream's whole list is the source.
    PageTags {
        /// The most tags a page holds, whatever `n` asks.
        page: usize,
    },
    /// Forward it, and pass the response body on at most this many bytes per second.
    Throttle {
        /// Body bytes per second.
        bytes_per_sec: u64,
    },
}

/// Which of the matching requests a rule hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// The first `n` matching requests.
    First(u64),
    /// Every `n`th matching request (the `n`th, `2n`th, …).
    EveryNth(u64),
}

/// A fault, the requests it applies to, and when.
#[derive(Clone, Debug)]
pub struct Rule {
    /// What is injected.
    pub fault: Fault,
    /// Only requests with this method (any if `None`).
    pub method: Option<String>,
    /// Only requests whose path and query contain this (any if empty).
    pub path_contains: String,
    /// Which of the matching requests.
    pub when: When,
}

impl Rule {
    /// `fault` for every request (narrow it with [`Rule::method`], [`Rule::path`], [`Rule::when`]).
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            method: None,
            path_contains: String::new(),
            when: When::EveryNth(1),
        }
    }

    /// Only requests with `method` (e.g. `"GET"`).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests whose path and query contain `s` (e.g. `"/blobs/sha256:"`).
    pub fn path(mut self, s: &str) -> Self {
        self.path_contains = s.into();
        self
    }

    /// Which of the matching requests.
    pub fn when(mut self, when: When) -> Self {
        self.when = when;
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && path.contains(&self.path_contains)
    }
}

/// What the proxy has done since it started (or since [`FaultProxy::set_rules`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received.
    pub requests: u64,
    /// Responses cut by a reset ([`Fault::ResetResponse`], once the bytes had passed).
    pub resets_response: u64,
    /// Uploads cut by a reset ([`Fault::ResetRequest`], once the bytes had passed).
    pub resets_request: u64,
    /// Status answers injected ([`Fault::Status`]).
    pub statuses: u64,
    /// 429 answers injected ([`Fault::TooManyRequests`]).
    pub too_many_requests: u64,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Event {
    /// When it arrived.
    pub at: Instant,
    /// Its method.
    pub method: String,
    /// Its path and query.
    pub path: String,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
}

/// Keeps the event log bounded.
const MAX_EVENTS: usize = 100_000;

#[derive(Default)]
struct Rules {
    rules: Vec<Rule>,
    /// Matching requests seen, per rule.
    seen: Vec<u64>,
    counts: Counts,
    events: Vec<Event>,
}

struct Shared {
    upstream: String,
    me: String,
    client: reqwest::Client,
    rules: Mutex<Rules>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://HOST:PORT`), with no rules.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let upstream = upstream.trim_end_matches('/').to_string();
        anyhow::ensure!(
            upstream.starts_with("http://"),
            "the fault proxy fronts plain-HTTP upstreams, not {upstream}"
        );
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding 127.0.0.1:0")?;
        let addr = tcp.local_addr().context("reading the bound address")?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the upstream client")?;
        let shared = Arc::new(Shared {
            upstream,
            me: format!("http://{addr}"),
            client,
            rules: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone())
            .into_make_service_with_connect_info::<Conn>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(FaultListener { tcp, addr }, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// `127.0.0.1:PORT`, for image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.me.clone()
    }

    /// Replaces the rules, and zeroes the counts and the event log. The first rule that hits
    /// a request applies (every rule still counts the requests it matches).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        let mut r = self.shared.lock();
        r.seen = vec![0; rules.len()];
        r.rules = rules;
        r.counts = Counts::default();
        r.events.clear();
    }

    /// Removes every rule (counts and events stay).
    pub fn clear_rules(&self) {
        let mut r = self.shared.lock();
        r.rules.clear();
        r.seen.clear();
    }

    /// What was injected so far.
    pub fn counts(&self) -> Counts {
        self.shared.lock().counts
    }

    /// The requests seen so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.shared.lock().events.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === requests ===

/// Headers that belong to one hop, not to the request or response.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// The fault for a request, counting it against every rule it matches.
fn decide(shared: &Shared, method: &str, path: &str) -> Option<Fault> {
    let mut r = shared.lock();
    r.counts.requests += 1;
    let mut chosen = None;
    for i in 0..r.rules.len() {
        if !r.rules[i].matches(method, path) {
            continue;
        }
        r.seen[i] += 1;
        let n = r.seen[i];
        let hit = match r.rules[i].when {
            When::First(k) => n <= k,
            When::EveryNth(k) => k > 0 && n.is_multiple_of(k),
        };
        if hit && chosen.is_none() {
            chosen = Some(r.rules[i].fault.clone());
        }
    }
    match &chosen {
        Some(Fault::Status(_)) => r.counts.statuses += 1,
        Some(Fault::TooManyRequests { .. }) => r.counts.too_many_requests += 1,
        _ => {}
    }
    if r.events.len() < MAX_EVENTS {
        r.events.push(Event {
            at: Instant::now(),
            method: method.into(),
            path: path.into(),
            fault: chosen.clone(),
        });
    }
    chosen
}

/// An OCI error body, as registries send.
fn oci_error(status: StatusCode, code: &str, message: &str, extra: &[(HeaderName, String)]) -> Response {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":null}}]}}"#);
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            res.headers_mut().insert(k.clone(), v);
        }
    }
    res
}

/// A response that makes hyper drop the connection (reset, as it is marked).
fn reset_now() -> Response {
    let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault proxy: reset");
    Response::new(Body::from_stream(futures::stream::once(async move {
        Err::<Bytes, _>(err)
    })))
}

/// Passes on the first `limit` bytes of `inner`; if it has more, marks the connection for a
/// reset, runs `on_reset` and fails instead of going on (also if `inner` ends there).
fn cut_after<S, E>(
    inner: S,
    limit: u64,
    conn: Arc<AtomicBool>,
    on_reset: impl FnOnce() + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let reset = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault proxy: reset");
    let cut = Arc::new(AtomicBool::new(false));
    let (cut_in, cut_end) = (cut.clone(), cut);
    let mut passed = 0u64;
    let mut on_reset = Some(on_reset);
    let body = inner.map(move |item| {
        let mut b = item.map_err(|e| std::io::Error::other(e.to_string()))?;
        if cut_in.load(Ordering::SeqCst) {
            return Err(reset());
        }
        if passed + b.len() as u64 > limit {
            b.truncate((limit - passed) as usize);
            passed = limit;
            cut_in.store(true, Ordering::SeqCst);
            conn.store(true, Ordering::SeqCst);
            if let Some(f) = on_reset.take() {
                f();
            }
            return if b.is_empty() { Err(reset()) } else { Ok(b) };
        }
        passed += b.len() as u64;
        Ok(b)
    });
    let tail = futures::stream::once(async move { cut_end.load(Ordering::SeqCst).then(|| Err(reset())) })
        .filter_map(|x| async move { x });
    body.chain(tail)
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let fault = decide(&shared, &method, &path);
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return oci_error(status, "UNAVAILABLE", "fault proxy: injected", &[]);
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            return oci_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "fault proxy: slow down",
                &[(header::RETRY_AFTER, retry_after_secs.to_string())],
            );
        }
        Some(Fault::PageTags { page }) if method == "GET" && path.contains("/tags/list") => {
            return page_tags(&shared, &path, req.headers(), page).await;
        }
        _ => {}
    }

    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            headers.append(k.clone(), v.clone());
        }
    }
    let body_stream = body.into_data_stream();
    let upstream_body = match fault {
        Some(Fault::ResetRequest { after_bytes }) => {
            let s2 = shared.clone();
            reqwest::Body::wrap_stream(cut_after(body_stream, after_bytes, conn.0.clone(), move || {
                s2.lock().counts.resets_request += 1;
            }))
        }
        _ => reqwest::Body::wrap_stream(body_stream),
    };
    let url = format!("{}{path}", shared.upstream);
    let sent = shared
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(upstream_body)
        .send()
        .await;
    let upstream = match sent {
        Ok(r) => r,
        // The request body was cut (or the upstream is gone): reset the client's connection.
        Err(_) if conn.0.load(Ordering::SeqCst) => return reset_now(),
        Err(e) => {
            return oci_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &format!("fault proxy: upstream: {e}").replace('"', "'"),
                &[],
            );
        }
    };
    if conn.0.load(Ordering::SeqCst) {
        return reset_now();
    }

    let mut res = Response::new(Body::empty());
    *res.status_mut() = upstream.status();
    for (k, v) in upstream.headers() {
        if hop_by_hop(k) {
            continue;
        }
        let v = match (k == header::LOCATION, v.to_str()) {
            (true, Ok(loc)) if loc.starts_with(&shared.upstream) => {
                let rewritten = format!("{}{}", shared.me, &loc[shared.upstream.len()..]);
                HeaderValue::from_str(&rewritten).unwrap_or_else(|_| v.clone())
            }
            _ => v.clone(),
        };
        res.headers_mut().append(k.clone(), v);
    }
    let stream = upstream.bytes_stream();
    *res.body_mut() = match fault {
        Some(Fault::ResetResponse { after_bytes }) => {
            let s2 = shared.clone();
            Body::from_stream(cut_after(stream, after_bytes, conn.0.clone(), move || {
                s2.lock().counts.resets_response += 1;
            }))
        }
        Some(Fault::Throttle { bytes_per_sec }) => {
            let rate = bytes_per_sec.max(1) as f64;
            Body::from_stream(stream.then(move |item| async move {
                if let Ok(b) = &item {
                    tokio::time::sleep(Duration::from_secs_f64(b.len() as f64 / rate)).await;
                }
                item
            }))
        }
        _ => Body::from_stream(stream),
    };
    res
}

/// One page of the upstream's tag list (see [`Fault::PageTags`]).
async fn page_tags(shared: &Shared, path_query: &str, headers: &HeaderMap, page: usize) -> Response {
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let param = |k: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    let mut req = shared.client.get(format!("{}{path}", shared.upstream));
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, a.clone());
    }
    let upstream = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return oci_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &e.to_string().replace('"', "'"),
                &[],
            );
        }
    };
    let status = upstream.status();
    let body: serde_json::Value = match upstream.json().await {
        Ok(v) if status.is_success() => v,
        _ => return oci_error(status, "UNKNOWN", "fault proxy: upstream tag list", &[]),
    };
    let mut tags: Vec<String> = body["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(String::from))
        .collect();
    tags.sort();
    let after = param("last");
    let rest: Vec<&String> = tags
        .iter()
        .filter(|t| after.as_deref().is_none_or(|a| t.as_str() > a))
        .collect();
    let n = param("n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(page)
        .min(page);
    let this: Vec<&String> = rest.iter().take(n).copied().collect();
    let mut res = Response::new(Body::from(
        serde_json::json!({"name": body["name"], "tags": this}).to_string(),
    ));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if rest.len() > this.len()
        && let Some(last) = this.last()
    {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        if let Ok(v) = HeaderValue::from_str(&format!("<{path}?{q}>; rel=\"next\"")) {
            res.headers_mut().insert(header::LINK, v);
        }
    }
    res
}

mod conn;
#[cfg(test)]
mod tests;
