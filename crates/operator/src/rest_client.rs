//! client-go's `rest_client_requests_total{code,method,host}`, as controller-runtime
//! exports it: every request the operator's Kubernetes client sends, counted when its
//! response arrives (`code` the status, `<error>` when none came), by method (`GET`,
//! `PATCH`, …) and API server (`host:port`). A watch counts once, when it opens.
//!
//! [`instrument`] wraps a [`Client`]'s service, so every API and store call made through
//! the returned client is counted; [`run_until`](crate::run_until) does it for the operator.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::http::{Request, Response};
use ido_controllers::metrics::Metrics;
use kube::{Client, client::Body};
use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family};

/// The labels of `rest_client_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The response's status code, or `<error>`.
    pub code: String,
    /// The request's method, upper-case.
    pub method: String,
    /// The API server's `host:port`.
    pub host: String,
}

/// The counter family, registered once per [`Metrics`] (unprefixed, as client-go names it).
pub fn requests(metrics: &Metrics) -> Family<RequestLabels, Counter> {
    let family = Family::<RequestLabels, Counter>::default();
    metrics
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .register(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            family.clone(),
        );
    family
}

/// `host:port` of an API server URL (`https://10.0.0.1:6443/` gives `10.0.0.1:6443`; the
/// scheme's port when none is written).
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port || authority.is_empty() {
        authority.to_string()
    } else if url.starts_with("http://") {
        format!("{authority}:80")
    } else {
        format!("{authority}:443")
    }
}

/// A client that sends through `client` and counts every request in `requests`, labelled
/// with `host`.
pub fn instrument(client: Client, host: &str, requests: Family<RequestLabels, Counter>) -> Client {
    let ns = client.default_namespace().to_string();
    let valid_until = *client.valid_until();
    Client::new(
        Counting {
            inner: client,
            host: host.to_string(),
            requests,
        },
        ns,
    )
    .with_valid_until(valid_until)
}

/// The counting service (see [`instrument`]).
#[derive(Clone)]
struct Counting {
    inner: Client,
    host: String,
    requests: Family<RequestLabels, Counter>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Request<Body>> for Counting {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let method = req.method().as_str().to_string();
            let result = this.inner.send(req).await;
            let code = match &result {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "<error>".to_string(),
            };
            this.requests
                .get_or_create(&RequestLabels {
                    code,
                    method,
                    host: this.host,
                })
                .inc();
            // The outer client unwraps a boxed kube::Error, so callers see the same errors.
            result.map_err(|e| Box::new(e) as BoxError)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_carry_their_port() {
        assert_eq!(host_of("https://127.0.0.1:6443/"), "127.0.0.1:6443");
        assert_eq!(
            host_of("https://kubernetes.default.svc"),
            "kubernetes.default.svc:443"
        );
        assert_eq!(host_of("http://localhost/api"), "localhost:80");
        assert_eq!(host_of("https://[::1]:6443"), "[::1]:6443");
        assert_eq!(host_of("https://[::1]"), "[::1]:443");
    }

    #[tokio::test]
    async fn every_request_is_counted_by_code_method_and_host() {
        let inner = tower::service_fn(|req: Request<Body>| async move {
            let status = if req.uri().path() == "/missing" { 404 } else { 200 };
            Response::builder()
                .status(status)
                .body(Body::empty())
                .map_err(|e| Box::new(e) as BoxError)
        });
        let metrics = Metrics::default();
        let family = requests(&metrics);
        let client = instrument(Client::new(inner, "default"), "127.0.0.1:6443", family);
        for (method, path) in [("GET", "/a"), ("GET", "/b"), ("PATCH", "/a"), ("GET", "/missing")] {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            client.send(req).await.unwrap();
        }
        let text = metrics.encode();
        assert!(text.contains("# TYPE rest_client_requests counter"), "{text}");
        for line in [
            r#"rest_client_requests_total{code="200",method="GET",host="127.0.0.1:6443"} 2"#,
            r#"rest_client_requests_total{code="200",method="PATCH",host="127.0.0.1:6443"} 1"#,
            r#"rest_client_requests_total{code="404",method="GET",host="127.0.0.1:6443"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }
}
