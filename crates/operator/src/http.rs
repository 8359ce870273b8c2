//! The operator's HTTP endpoints, on two listeners as controller-runtime has them:
//!
//! - **metrics** (`--metrics-bind-address`, default `:8443`): `GET /metrics`, every metric
//!   (`ido_*`, `controller_runtime_*`, `workqueue_*`), OpenMetrics text. Secure by default:
//!   HTTPS ([`crate::tls`]) and a bearer token the API server authenticates and authorises
//!   ([`crate::auth`]): 401 without a valid token, 403 when its user may not `get`
//!   `/metrics`. `--metrics-secure=false` serves plain HTTP to anyone.
//! - **probes** (`--health-probe-bind-address`, default `:8081`), plain HTTP, no auth:
//!   - `GET /healthz`: 200 while the process serves at all (liveness).
//!   - `GET /readyz`: 200 while this replica is a **standby** (it reached the API server
//!     and saw another holder's lease) or **leading** (its controllers run); 503 while
//!     starting (with the reason, e.g. why the API server is not reachable yet) and once
//!     shutting down. A standby is ready on purpose: with one replica and a rolling update
//!     (max unavailable 0), a new pod that waited for leadership before turning ready would
//!     never be, because the old pod keeps the lease until the new one is ready.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use ido_controllers::metrics::Metrics;

use crate::auth::{Authorizer, Decision};

/// Content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where this replica is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Not yet in touch with the lease (or the controllers not yet started).
    Starting = 0,
    /// Another replica leads; this one waits to take over.
    Standby = 1,
    /// This replica runs the controllers.
    Leading = 2,
    /// Shutting down.
    Stopping = 3,
}

impl Phase {
    /// The phase's name, as `/readyz` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Standby => "standby",
            Phase::Leading => "leading",
            Phase::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Default)]
struct HealthInner {
    phase: AtomicU8,
    /// Why the replica is still starting (empty: no known reason).
    reason: Mutex<String>,
}

/// The replica's [`Phase`], shared between the election and the endpoint. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<HealthInner>);

impl Health {
    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        self.0.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.0.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Standby,
            2 => Phase::Leading,
            _ => Phase::Stopping,
        }
    }

    /// Says why the replica is not ready yet (`/readyz` shows it while starting); empty
    /// clears it.
    pub fn set_reason(&self, reason: impl Into<String>) {
        *self.0.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.into();
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        matches!(self.phase(), Phase::Standby | Phase::Leading)
    }

    /// What `/readyz` says: the phase, and while starting the reason if one is known.
    pub fn describe(&self) -> String {
        let phase = self.phase();
        let reason = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        if phase == Phase::Starting && !reason.is_empty() {
            format!("{}: {reason}", phase.as_str())
        } else {
            phase.as_str().to_string()
        }
    }
}

/// The probes' routes: `/healthz`, `/readyz`.
pub fn probes_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let code = if health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, health.describe())
}

/// What the metrics handler reads.
#[derive(Clone)]
struct MetricsState {
    metrics: Metrics,
    auth: Option<Arc<Authorizer>>,
}

/// The metrics route: `/metrics`, behind `auth` when given.
pub fn metrics_router(metrics: Metrics, auth: Option<Arc<Authorizer>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(MetricsState { metrics, auth })
}

/// The bearer token of `headers`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn metrics_handler(
    State(s): State<MetricsState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(auth) = &s.auth {
        let Some(token) = bearer(&headers) else {
            return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
        };
        // As controller-runtime: the verb is the method, lower-case (GET: get).
        let verb = method.as_str().to_ascii_lowercase();
        match auth.check(token, uri.path(), &verb).await {
            Ok(Decision::Allowed { .. }) => {}
            Ok(Decision::Unauthenticated { reason }) => {
                tracing::debug!(%reason, "metrics request not authenticated");
                return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
            }
            Ok(Decision::Forbidden { user, reason }) => {
                tracing::debug!(%user, %reason, "metrics request not authorised");
                return (
                    StatusCode::FORBIDDEN,
                    format!("Authorization denied for user {user}"),
                )
                    .into_response();
            }
            Err(e) => {
                tracing::warn!(error = %e, "checking a metrics request failed");
                let msg = match e {
                    crate::auth::ReviewError::Authentication(_) => "Authentication failed".to_string(),
                    crate::auth::ReviewError::Authorization { user, .. } => {
                        format!("Authorization for user {user} failed")
                    }
                };
                return (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response();
            }
        }
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.encode()).into_response()
}

/// A bind address that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid bind address {0:?} (e.g. :8443, 127.0.0.1:8080, [::]:8443, or 0 for off)")]
pub struct BadBindAddress(pub String);

/// Parses a bind address as controller-runtime's flags take it: `HOST:PORT`, `:PORT` (every
/// IPv4 interface) or `0` (off: `None`). HOST is an IP address, `[IPv6]` or `localhost`.
pub fn parse_bind_address(s: &str) -> Result<Option<SocketAddr>, BadBindAddress> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    let bad = || BadBindAddress(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "" => std::net::Ipv4Addr::UNSPECIFIED.into(),
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => h.parse::<std::net::IpAddr>().map_err(|_| bad())?,
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

/// Binds `addr` (port 0 picks a free port; see the listener's `local_addr`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `router` on `listener` (plain TCP or [`crate::tls::TlsListener`]) until
/// `shutdown` completes.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    async fn call(r: &Router, path: &str) -> (StatusCode, String, String) {
        let resp = r
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn probes_follow_the_phase_and_tell_why_a_replica_is_not_ready() {
        let health = Health::default();
        let r = probes_router(health.clone());

        assert_eq!(call(&r, "/healthz").await.0, StatusCode::OK);
        let (code, _, body) = call(&r, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "starting")
        );
        health.set_reason("waiting for the API server at https://10.0.0.1:443: connection refused");
        let (code, _, body) = call(&r, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "starting: waiting for the API server at https://10.0.0.1:443: connection refused"
        );
        health.set(Phase::Standby);
        assert_eq!(call(&r, "/readyz").await.0, StatusCode::OK);
        assert_eq!(call(&r, "/readyz").await.2, "standby");
        health.set(Phase::Leading);
        assert_eq!(call(&r, "/readyz").await.2, "leading");
        health.set(Phase::Stopping);
        assert_eq!(call(&r, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(call(&r, "/metrics").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn plain_metrics_are_openmetrics() {
        let metrics = Metrics::default();
        metrics
            .reconciles
            .get_or_create(&ido_controllers::metrics::ControllerLabels {
                controller: "release".into(),
            })
            .inc();
        let r = metrics_router(metrics, None);
        let (code, ct, body) = call(&r, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ct, OPENMETRICS);
        assert!(
            body.contains(r#"ido_reconciles_total{controller="release"} 1"#),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
        assert_eq!(call(&r, "/readyz").await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn bind_addresses_as_controller_runtime_takes_them() {
        let a = |s: &str| parse_bind_address(s).unwrap().map(|a| a.to_string());
        assert_eq!(a(":8443").as_deref(), Some("0.0.0.0:8443"));
        assert_eq!(a("127.0.0.1:8080").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(a("localhost:9").as_deref(), Some("127.0.0.1:9"));
        assert_eq!(a("[::]:8443").as_deref(), Some("[::]:8443"));
        assert_eq!(a("0"), None);
        for bad in ["8443", "", ":", "host.example:1", ":99999"] {
            assert!(parse_bind_address(bad).is_err(), "{bad}");
        }
    }
}
