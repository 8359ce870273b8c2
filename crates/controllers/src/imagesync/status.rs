//! The status of a pass: conditions from how it ended, their order, the retry delay of a
//! failing ImageSync, messages clipped to what the API server and readers take.

use std::time::Duration;

use ido_api::{
    Condition, ConditionStatus, ImageSyncStatus, TagStatus,
    condition::{find, set_condition},
    imagesync::{conditions, reasons},
};
use jiff::Timestamp;

/// Shortest and longest wait before retrying a failed pass.
pub(super) const RETRY_MIN: Duration = Duration::from_secs(60);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(15 * 60);
/// Longest message written to a condition, tag entry or event.
pub(crate) const MAX_MESSAGE: usize = 900;

/// A pass that could not start copying: (reason, message).
pub(super) type Failure = (&'static str, String);

/// How a pass ended, for the conditions and the next pass.
pub(super) enum Ending {
    /// Credentials or registries failed before any copy.
    Failed(Failure),
    NoMatch(String),
    Done {
        failed: Vec<(String, String)>,
        exceeded: Option<String>,
    },
}

pub(crate) fn now_s() -> Timestamp {
    Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
}

pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

pub(crate) fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    g: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        observed_generation: g,
        last_transition_time: now_s(),
        reason: reason.into(),
        message: clip(&message, MAX_MESSAGE),
    }
}

pub(super) fn ready_reason(st: Option<&ImageSyncStatus>) -> Option<(String, String)> {
    st.and_then(|s| find(&s.conditions, conditions::READY))
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// A condition's status, reason and message.
type Observation<'a> = (ConditionStatus, &'a str, String);

/// Sets the three conditions for a pass's ending.
pub(super) fn conclude(
    st: &mut ImageSyncStatus,
    ending: &Ending,
    in_sync: usize,
    copied: usize,
    g: Option<i64>,
) {
    let (ready, degraded): (Observation, Option<(&str, String)>) = match ending {
        Ending::Failed((reason, m)) => (
            (ConditionStatus::False, reason, m.clone()),
            Some((reason, m.clone())),
        ),
        Ending::NoMatch(m) => (
            (ConditionStatus::False, reasons::NO_MATCHING_TAGS, m.clone()),
            None,
        ),
        Ending::Done { failed, exceeded } => {
            let fail_msg = (!failed.is_empty()).then(|| {
                let each: Vec<String> = failed.iter().map(|(t, e)| format!("{t}: {e}")).collect();
                format!(
                    "{} of {} tag(s) failed: {}",
                    failed.len(),
                    in_sync + failed.len(),
                    each.join("; ")
                )
            });
            match (fail_msg, exceeded) {
                (Some(f), ex) => {
                    let d = match ex {
                        Some(x) => format!("{f}; {x}"),
                        None => f.clone(),
                    };
                    (
                        (ConditionStatus::False, reasons::COPY_FAILED, f),
                        Some((reasons::COPY_FAILED, d)),
                    )
                }
                (None, Some(x)) => (
                    (ConditionStatus::False, reasons::TAG_LIMIT_EXCEEDED, x.clone()),
                    Some((reasons::TAG_LIMIT_EXCEEDED, x.clone())),
                ),
                (None, None) => (
                    (
                        ConditionStatus::True,
                        reasons::SYNCED,
                        format!(
                            "{in_sync} tag(s) in sync ({copied} copied, {} unchanged or skipped)",
                            in_sync - copied
                        ),
                    ),
                    None,
                ),
            }
        }
    };
    let c = &mut st.conditions;
    set_condition(c, condition(conditions::READY, ready.0, ready.1, ready.2, g));
    set_condition(
        c,
        condition(
            conditions::PROGRESSING,
            ConditionStatus::False,
            reasons::IDLE,
            String::new(),
            g,
        ),
    );
    let degraded = match degraded {
        Some((r, m)) => condition(conditions::DEGRADED, ConditionStatus::True, r, m, g),
        None => condition(
            conditions::DEGRADED,
            ConditionStatus::False,
            reasons::AS_EXPECTED,
            String::new(),
            g,
        ),
    };
    set_condition(c, degraded);
    order_conditions(c);
}

/// Ready, Progressing, Degraded, then any other, whatever order they were set in.
pub(super) fn order_conditions(c: &mut [Condition]) {
    let rank = |t: &str| {
        [conditions::READY, conditions::PROGRESSING, conditions::DEGRADED]
            .iter()
            .position(|x| *x == t)
            .unwrap_or(3)
    };
    c.sort_by_key(|x| rank(&x.type_));
}

/// How long to wait before retrying a failing ImageSync: as long as it has been failing
/// (Ready not True), between [`RETRY_MIN`] and [`RETRY_MAX`].
pub(super) fn retry_delay(previous: &ImageSyncStatus, now: Timestamp) -> Duration {
    find(&previous.conditions, conditions::READY)
        .filter(|c| c.status != ConditionStatus::True)
        .and_then(|c| Duration::try_from(now.duration_since(c.last_transition_time)).ok())
        .unwrap_or_default()
        .clamp(RETRY_MIN, RETRY_MAX)
}

pub(super) fn summary(tags: &[TagStatus]) -> String {
    format!(
        "{}/{}",
        tags.iter().filter(|t| t.result.in_sync()).count(),
        tags.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_the_time_failing() {
        let now: Timestamp = "2025-01-01T10:00:00Z".parse().unwrap();
        let failing_since = |s: &str| ImageSyncStatus {
            conditions: vec![Condition {
                type_: conditions::READY.into(),
                status: ConditionStatus::False,
                observed_generation: Some(1),
                last_transition_time: s.parse().unwrap(),
                reason: reasons::COPY_FAILED.into(),
                message: String::new(),
            }],
            ..Default::default()
        };
        assert_eq!(retry_delay(&ImageSyncStatus::default(), now), RETRY_MIN);
        assert_eq!(
            retry_delay(&failing_since("2025-01-01T09:59:30Z"), now),
            RETRY_MIN
        );
        assert_eq!(
            retry_delay(&failing_since("2025-01-01T09:56:00Z"), now),
            Duration::from_secs(240)
        );
        assert_eq!(
            retry_delay(&failing_since("2024-12-31T00:00:00Z"), now),
            RETRY_MAX
        );
    }

    #[test]
    fn clipped_messages_stay_on_char_boundaries() {
        assert_eq!(clip("short", 10), "short");
        let c = clip(&"é".repeat(100), 51);
        assert!(c.len() <= 51 && c.ends_with("..."));
    }
}
