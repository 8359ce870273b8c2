//! Status conditions following the Kubernetes API conventions (`metav1.Condition`).

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One observation of an aspect of an object's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// CamelCase type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// The `.metadata.generation` this condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    #[schemars(with = "String")]
    pub last_transition_time: Timestamp,
    /// CamelCase machine-readable reason.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
}

/// Sets `new` in `conditions`, keeping `lastTransitionTime` when the status is unchanged.
/// Returns true if anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => {
            if c.status == new.status
                && c.reason == new.reason
                && c.message == new.message
                && c.observed_generation == new.observed_generation
            {
                return false;
            }
            let keep_time = c.status == new.status;
            let time = c.last_transition_time;
            *c = new;
            if keep_time {
                c.last_transition_time = time;
            }
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Finds the condition of `type_`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: ConditionStatus, reason: &str, t: i64) -> Condition {
        Condition {
            type_: "Ready".into(),
            status,
            observed_generation: Some(1),
            last_transition_time: Timestamp::from_second(t).unwrap(),
            reason: reason.into(),
            message: String::new(),
        }
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut cs = vec![cond(ConditionStatus::False, "A", 10)];
        assert!(set_condition(&mut cs, cond(ConditionStatus::False, "B", 20)));
        assert_eq!(cs[0].last_transition_time.as_second(), 10);
        assert_eq!(cs[0].reason, "B");
        assert!(set_condition(&mut cs, cond(ConditionStatus::True, "C", 30)));
        assert_eq!(cs[0].last_transition_time.as_second(), 30);
        assert!(!set_condition(&mut cs, cond(ConditionStatus::True, "C", 40)));
    }
}
