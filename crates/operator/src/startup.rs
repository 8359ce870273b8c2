//! The start-up check: before anything else, the operator makes sure the API server answers
//! and accepts its credentials, so that a wrong address, a TLS problem or a bad token is
//! reported instead of retried silently by the watches.
//!
//! Each attempt asks, in order:
//!
//! 1. `GET /version` (any authenticated user may): reachable, TLS trusted, token accepted;
//! 2. a `SelfSubjectReview` (authentication.k8s.io/v1): who the operator is, for the log
//!    (skipped where the API server lacks it);
//! 3. `list` NodeImages in their namespace, one at most: the operator's main grant.
//!
//! A failed attempt is logged at once with its cause and `/readyz` says it; attempts repeat
//! (0.5 s, doubling up to 5 s) until the start-up timeout, then the operator gives up with
//! the last cause. 401 (the credentials are not accepted) and 403 (not allowed) end it at
//! once: waiting does not fix them.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{Api, Client, api::ListParams, api::PostParams};
use tokio::time::Instant;

use crate::Health;

/// Longest a single attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause between attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// Longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The API server did not accept the credentials.
    #[error(
        "unauthorised (401 Unauthorized): the Kubernetes API server at {server} rejected the operator's credentials ({message}); check the ServiceAccount token or the kubeconfig's user"
    )]
    Unauthorized { server: String, message: String },
    /// The credentials are accepted but not allowed what the operator needs.
    #[error(
        "forbidden (403 Forbidden): {user} may not {what} on the Kubernetes API server at {server} ({message}); check the operator's RBAC"
    )]
    Forbidden {
        server: String,
        user: String,
        what: String,
        message: String,
    },
    /// No attempt succeeded within the start-up timeout.
    #[error(
        "the Kubernetes API server at {server} was not reachable within {timeout:?} ({attempts} attempts): {cause}"
    )]
    Unreachable {
        server: String,
        timeout: Duration,
        attempts: u32,
        cause: String,
    },
}

/// What a successful attempt learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiInfo {
    /// The server's version (`gitVersion`).
    pub version: String,
    /// Who the operator is (empty if the server cannot say).
    pub user: String,
}

/// One attempt's failure.
enum Failure {
    /// Ends the check at once.
    Permanent(StartupError),
    /// Worth another attempt.
    Transient(String),
}

/// `e` with its causes, `a: b: c`, without repeats.
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Sorts a failed request of the attempt: 401 and 403 are permanent.
fn classify(server: &str, user: &str, what: &str, e: kube::Error) -> Failure {
    match &e {
        kube::Error::Api(s) if s.code == 401 => Failure::Permanent(StartupError::Unauthorized {
            server: server.to_string(),
            message: s.message.clone(),
        }),
        kube::Error::Api(s) if s.code == 403 => Failure::Permanent(StartupError::Forbidden {
            server: server.to_string(),
            user: if user.is_empty() {
                "the operator".to_string()
            } else {
                user.to_string()
            },
            what: what.to_string(),
            message: s.message.clone(),
        }),
        _ => Failure::Transient(format!("{what}: {}", causes(&e))),
    }
}

async fn attempt(client: &Client, server: &str, namespace: &str) -> Result<ApiInfo, Failure> {
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| classify(server, "", "GET /version", e))?
        .git_version;
    let user = match Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
    {
        Ok(r) => r
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default(),
        // Not served (older or restricted API servers): the user stays unknown.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => String::new(),
        Err(e) => return Err(classify(server, "", "create selfsubjectreviews", e)),
    };
    let what = format!("list nodeimages.image.giantswarm.io in namespace {namespace}");
    match Api::<ido_api::NodeImage>::namespaced(client.clone(), namespace)
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => {}
        // The CRD is missing: the NodeImage controller's watch reports it; not a
        // credentials problem.
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::warn!(%namespace, "NodeImages are not served: is the CRD nodeimages.image.giantswarm.io installed?")
        }
        Err(e) => return Err(classify(server, &user, &what, e)),
    }
    Ok(ApiInfo { version, user })
}

/// Checks the API server (module docs) at `server` (its address, for messages), giving up
/// after `timeout` (`None`: never). `health` carries the last failure to `/readyz`.
pub async fn check(
    client: &Client,
    server: &str,
    namespace: &str,
    timeout: Option<Duration>,
    health: &Health,
) -> Result<ApiInfo, StartupError> {
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let budget = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(ATTEMPT_TIMEOUT)
            .min(ATTEMPT_TIMEOUT)
            .max(Duration::from_millis(100));
        let cause = match tokio::time::timeout(budget, attempt(client, server, namespace)).await {
            Ok(Ok(info)) => {
                health.set_reason("");
                tracing::info!(%server, version = %info.version, user = %info.user, "the Kubernetes API server answers");
                return Ok(info);
            }
            Ok(Err(Failure::Permanent(e))) => {
                tracing::error!(%server, error = %e, "the Kubernetes API server refuses the operator");
                health.set_reason(e.to_string());
                return Err(e);
            }
            Ok(Err(Failure::Transient(cause))) => cause,
            Err(_) => format!("no answer within {budget:?}"),
        };
        tracing::warn!(%server, attempt = attempts, error = %cause, "the Kubernetes API server is not usable yet");
        health.set_reason(format!(
            "waiting for the Kubernetes API server at {server}: {cause}"
        ));
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(StartupError::Unreachable {
                server: server.to_string(),
                timeout: timeout.unwrap_or_default(),
                attempts,
                cause,
            });
        }
        tokio::time::sleep(left.map_or(pause, |l| l.min(pause))).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_chained_without_repeats() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(causes(&e), "outer: Connection refused (os error 111)");
    }

    /// An address nothing listens on.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        format!("https://{a}")
    }

    #[tokio::test]
    async fn an_unreachable_server_is_given_up_on_at_the_timeout_with_the_cause() {
        rustls::crypto::ring::default_provider().install_default().ok();
        let url = closed_port();
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let health = Health::default();
        let t = Instant::now();
        let e = check(&client, &url, "ns", Some(Duration::from_secs(2)), &health)
            .await
            .unwrap_err();
        let elapsed = t.elapsed();
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(4),
            "{elapsed:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&url), "{msg}");
        assert!(msg.to_lowercase().contains("connection refused"), "{msg}");
        assert!(health.describe().contains(&url), "{}", health.describe());
    }
}
