//! The operator's HTTP endpoint (default `0.0.0.0:8080`): metrics and probes.
//!
//! - `GET /metrics`: every controller metric (`ido_*`), OpenMetrics text.
//! - `GET /healthz`: 200 while the process serves at all (liveness).
//! - `GET /readyz`: 200 while this replica is a **standby** (it reached the API server and
//!   saw another holder's lease) or **leading** (its controllers run); 503 while starting
//!   and once shutting down. A standby is ready on purpose: with one replica and a rolling
//!   update (max unavailable 0), a new pod that waited for leadership before turning ready
//!   would never be, because the old pod keeps the lease until the new one is ready.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use ido_controllers::metrics::Metrics;

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

/// The replica's [`Phase`], shared between the election and the endpoint. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<AtomicU8>);

impl Health {
    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Standby,
            2 => Phase::Leading,
            _ => Phase::Stopping,
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        matches!(self.phase(), Phase::Standby | Phase::Leading)
    }
}

/// What the handlers read.
#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// The endpoint's routes.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.encode())
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let phase = s.health.phase();
    let code = if s.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, phase.as_str())
}

/// Binds `addr` (port 0 picks a free port; see the listener's `local_addr`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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
    async fn probes_follow_the_phase_and_metrics_are_openmetrics() {
        let metrics = Metrics::default();
        metrics
            .reconciles
            .get_or_create(&ido_controllers::metrics::ControllerLabels {
                controller: "release".into(),
            })
            .inc();
        let health = Health::default();
        let r = router(metrics, health.clone());

        assert_eq!(call(&r, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            call(&r, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                call(&r, "/readyz").await.1,
                "starting".into()
            )
        );
        health.set(Phase::Standby);
        assert_eq!(call(&r, "/readyz").await.0, StatusCode::OK);
        health.set(Phase::Leading);
        assert_eq!(call(&r, "/readyz").await.2, "leading");
        health.set(Phase::Stopping);
        assert_eq!(call(&r, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);

        let (code, ct, body) = call(&r, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ct, OPENMETRICS);
        assert!(
            body.contains(r#"ido_reconciles_total{controller="release"} 1"#),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
    }
}
