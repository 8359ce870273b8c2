//! The image cache's mutating admission webhook over HTTPS: `POST /mutate-v1-pod` takes an
//! `AdmissionReview` (v1) of a Pod and answers with
//! [`ido_controllers::imagecache::admission`]'s decision. Every replica serves it (the
//! API server calls whichever the Service picks), leader or not.
//!
//! The certificate comes from `--webhook-cert-dir` (`tls.crt`, `tls.key`: the chart's
//! Secret or cert-manager's, reloaded when they change), else a self-signed one.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use ido_controllers::{Store, imagecache::admission::Admission};

/// Where the API server posts Pods.
pub const PATH: &str = "/mutate-v1-pod";
/// The largest AdmissionReview taken (the API server sends at most 3 MiB objects).
const BODY_MAX: usize = 6 << 20;

/// The webhook's routes.
pub fn router<S: Store>(admission: Arc<Admission<S>>) -> Router {
    Router::new()
        .route(PATH, post(review::<S>))
        .layer(DefaultBodyLimit::max(BODY_MAX))
        .with_state(admission)
}

async fn review<S: Store>(State(admission): State<Arc<Admission<S>>>, body: Bytes) -> Response {
    let started = Instant::now();
    let answer = admission.review(&body).await;
    admission.observe(started.elapsed());
    match serde_json::to_vec(&answer) {
        Ok(json) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
