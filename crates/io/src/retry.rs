//! One retry policy for every HTTP peer: which answers are worth another try, how long to
//! wait (doubling, capped), and the wait a server asks for with `Retry-After`.
//!
//! Transient: 5xx, 408 and 429 answers, and requests that did not complete (connect,
//! timeout, a body cut short), unless a certificate failed to verify (it will not verify on
//! a retry either). Everything else fails at once.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How failed requests and cut transfers are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failures in a row (without progress in between) before giving up. Default: 8.
    pub attempts: u32,
    /// First backoff; doubled after each failure. Default: 500 ms.
    pub initial_backoff: Duration,
    /// Longest backoff, and longest `Retry-After` honoured. Default: 30 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The backoff after `failures` failures in a row (≥ 1): `initial_backoff` doubled
    /// `failures - 1` times, at most `max_backoff`.
    pub fn backoff(&self, failures: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.max_backoff)
    }

    /// The wait before the next attempt: what the server asked for (at most `max_backoff`),
    /// else the backoff.
    pub fn wait(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(asked) => asked.min(self.max_backoff),
            None => self.backoff(failures),
        }
    }
}

/// Whether an HTTP answer with `status` may succeed when asked again.
pub fn transient_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Whether a request that failed without an answer may succeed when made again.
pub fn transient_request(e: &reqwest::Error) -> bool {
    if let Some(s) = e.status() {
        return transient_status(s.as_u16());
    }
    !crate::error_chain(e).to_ascii_lowercase().contains("certificate")
        && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode())
}

/// The wait a `Retry-After` header asks for, if any.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// A `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v)
        .ok()?;
    let ms = at.as_millisecond() - jiff::Timestamp::now().as_millisecond();
    Some(Duration::from_millis(ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_retry_after_is_capped_too() {
        let p = RetryPolicy::default();
        let waits: Vec<u64> = (1..=8).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(p.backoff(u32::MAX), p.max_backoff);
        assert_eq!(p.wait(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(p.wait(1, Some(Duration::from_secs(3600))), p.max_backoff);
        assert_eq!(p.wait(2, None), Duration::from_secs(1));
    }

    #[test]
    fn statuses() {
        assert!(transient_status(503) && transient_status(429) && transient_status(408));
        assert!(!transient_status(400) && !transient_status(404) && !transient_status(401));
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30);
        let text = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&soon)
            .unwrap();
        let d = parse_retry_after(&text).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{text} {d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    }
}
