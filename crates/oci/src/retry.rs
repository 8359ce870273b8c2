//! Which registry failures are worth another try, and how long to wait first.
//!
//! Transient: 5xx, 408, 429 (status or a `TOOMANYREQUESTS` error envelope), connection
//! failures and resets, timeouts, bodies cut short. Everything else (4xx, certificates that
//! do not verify, spec violations, digest mismatches) fails at once.
//!
//! `Retry-After` is honoured where the response's headers reach the engine: the manifest
//! GETs it makes itself ([`crate::registry`], open registries). oci-client 0.18 turns the
//! responses of its own calls into errors without their headers, so there a 429 waits at
//! least [`MIN_WAIT_AFTER_429`] (what `Retry-After: 1` asks for), growing exponentially
//! over [`RETRIES`] attempts.

use std::time::Duration;

use ido_io::retry::RetryPolicy;
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};

/// How often a transient failure is retried.
pub(crate) const RETRIES: u32 = 5;

/// The least a 429 waits when the registry's `Retry-After` is not known.
pub(crate) const MIN_WAIT_AFTER_429: Duration = Duration::from_secs(1);

/// The longest `Retry-After` honoured; a registry asking for more gets an error sooner.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A failed attempt: the error, and the wait the registry asked for (`Retry-After`).
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) error: OciDistributionError,
    pub(crate) retry_after: Option<Duration>,
}

impl From<OciDistributionError> for Attempt {
    fn from(error: OciDistributionError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

/// Runs `op`, retrying transient failures after [`wait`]; `what` names it in logs and errors.
pub(crate) async fn with_retries<T, E, F, Fut>(what: &str, mut op: F) -> crate::Result<T>
where
    E: Into<Attempt>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        let failed: Attempt = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e.into(),
        };
        if attempt >= RETRIES || !transient(&failed.error) {
            return Err(crate::Error::Registry {
                what: what.into(),
                error: failed.error,
            });
        }
        attempt += 1;
        let pause = wait(attempt, &failed);
        tracing::warn!(error = %failed.error, attempt, "{what} failed; retrying in {pause:?}");
        tokio::time::sleep(pause).await;
    }
}

/// The HTTP status behind `e`, when it has one (a `TOOMANYREQUESTS` envelope counts as 429).
pub(crate) fn status(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|x| x.code == OciErrorCode::Toomanyrequests) =>
        {
            Some(429)
        }
        _ => None,
    }
}

/// What a refusal means, for the end of an error message.
pub(crate) fn hint(e: &OciDistributionError) -> &'static str {
    match status(e) {
        Some(401) => " (the registry wants credentials that were not given, or refused those given)",
        Some(403) => " (the credentials given may not do this)",
        _ => "",
    }
}

/// Whether another attempt may succeed ([`ido_io::retry`]'s classification; a digest
/// mismatch is not transient here, it is retried once by the blob copy).
pub(crate) fn transient(e: &OciDistributionError) -> bool {
    if let Some(code) = status(e) {
        return ido_io::retry::transient_status(code);
    }
    match e {
        OciDistributionError::RequestError(r) => ido_io::retry::transient_request(r),
        OciDistributionError::IoError(io) => digest_mismatch(io).is_none(),
        _ => false,
    }
}

/// ido-io's policy with this module's numbers: 0.5 s doubling, and a `Retry-After` up
/// to [`MAX_RETRY_AFTER`].
const POLICY: RetryPolicy = RetryPolicy {
    attempts: RETRIES,
    initial_backoff: Duration::from_millis(500),
    max_backoff: MAX_RETRY_AFTER,
};

/// How long to wait before attempt `attempt + 1` (`attempt` ≥ 1): what the registry asked
/// for (up to [`MAX_RETRY_AFTER`]), else 0.5 s doubling, and at least 1 s after a 429.
pub(crate) fn wait(attempt: u32, failed: &Attempt) -> Duration {
    let pause = POLICY.wait(attempt, failed.retry_after);
    if failed.retry_after.is_none() && status(&failed.error) == Some(429) {
        pause.max(MIN_WAIT_AFTER_429)
    } else {
        pause
    }
}

/// The digest mismatch an I/O error of a verified blob stream carries, if it is one.
pub(crate) fn digest_mismatch(e: &std::io::Error) -> Option<(String, String)> {
    match e.get_ref()?.downcast_ref::<DigestError>()? {
        DigestError::VerificationError { expected, actual } => Some((expected.clone(), actual.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "http://r/v2/x/blobs/uploads/u?digest=sha256:00".into(),
            message: String::new(),
        }
    }

    #[test]
    fn classification() {
        assert!(transient(&server(503)) && transient(&server(429)) && transient(&server(502)));
        assert!(!transient(&server(400)) && !transient(&server(404)) && !transient(&server(405)));
        let envelope = serde_json::from_str(
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down","detail":null}]}"#,
        )
        .unwrap();
        let e = OciDistributionError::RegistryError {
            envelope,
            url: "u".into(),
        };
        assert_eq!(status(&e), Some(429));
        assert!(transient(&e));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(transient(&OciDistributionError::IoError(reset)));
        let bad = std::io::Error::other(DigestError::VerificationError {
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
        });
        assert_eq!(
            digest_mismatch(&bad),
            Some(("sha256:aa".into(), "sha256:bb".into()))
        );
        assert!(!transient(&OciDistributionError::IoError(bad)));
        assert!(!transient(&OciDistributionError::SpecViolationError("x".into())));
    }

    #[test]
    fn waits() {
        let a = |e| Attempt::from(e);
        assert_eq!(wait(1, &a(server(503))), Duration::from_millis(500));
        assert_eq!(wait(2, &a(server(503))), Duration::from_secs(1));
        assert_eq!(wait(1, &a(server(429))), MIN_WAIT_AFTER_429);
        assert_eq!(wait(3, &a(server(429))), Duration::from_secs(2));
        let asked = Attempt {
            error: server(429),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(wait(1, &asked), Duration::from_secs(3));
        let greedy = Attempt {
            error: server(503),
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(wait(1, &greedy), MAX_RETRY_AFTER);
    }
}
