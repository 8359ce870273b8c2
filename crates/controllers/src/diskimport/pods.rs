//! What the importer pods say: which runs, how far it got, why one failed or waits.

use ido_api::Reason;
use k8s_openapi::api::core::v1::Pod;

use super::CONTAINER;
use crate::{Context, store::Store};

/// The newest running importer pod's name.
pub(super) fn running_pod(pods: &[Pod]) -> Option<&str> {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .max_by_key(|p| p.metadata.creation_timestamp.clone())
        .and_then(|p| p.metadata.name.as_deref())
}

/// The IP of a ready importer pod (an upload pod taking requests).
pub(super) fn ready_pod_ip(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref())
        .filter(|st| {
            st.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .find_map(|st| st.pod_ip.clone())
}

/// The running importer's progress, from the tail of its log (`--progress plain` prints a
/// line every 5 s). Best effort: a log that cannot be read leaves the last value.
pub(super) async fn importer_progress<S: Store>(ctx: &Context<S>, ns: &str, pod: &str) -> Option<String> {
    match ctx.store.container_log_tail(ns, pod, CONTAINER, 4).await {
        Ok(log) => log.as_deref().and_then(progress_of),
        Err(e) => {
            tracing::debug!(namespace = ns, pod, error = %e, "cannot read the importer's log");
            None
        }
    }
}

/// The percentage of the last progress line of an importer's log
/// (`import: 42.0% 1.2 GiB of 2.9 GiB read, …`).
pub fn progress_of(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let pct = line.trim().strip_prefix("import: ")?.split_whitespace().next()?;
        let value: f64 = pct.strip_suffix('%')?.parse().ok()?;
        (0.0..=100.0).contains(&value).then(|| format!("{value:.1}%"))
    })
}

/// The message of the latest failed importer pod: its termination message (the importer's
/// error: `FallbackToLogsOnError` makes it the last log lines) or its reason.
pub(super) fn last_failure(pods: &[Pod]) -> Option<String> {
    let mut failed: Vec<(&Pod, String)> = pods
        .iter()
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            let term = st
                .container_statuses
                .iter()
                .flatten()
                .find(|c| c.name == CONTAINER)
                .and_then(|c| c.state.as_ref()?.terminated.as_ref())
                .filter(|t| t.exit_code != 0);
            let message = match term {
                Some(t) => {
                    let m = t.message.clone().unwrap_or_default();
                    let m = m.trim();
                    if m.is_empty() {
                        format!("importer exited with code {}", t.exit_code)
                    } else {
                        m.to_string()
                    }
                }
                None if st.phase.as_deref() == Some("Failed") => st
                    .message
                    .clone()
                    .or(st.reason.clone())
                    .unwrap_or_else(|| "pod failed".into()),
                None => return None,
            };
            Some((p, message))
        })
        .collect();
    failed.sort_by_key(|(p, _)| p.metadata.creation_timestamp.clone());
    failed.pop().map(|(_, m)| clip(&m, 1024))
}

/// Why a pending importer pod does not run: unschedulable, or its image cannot be pulled.
pub(super) fn pending_reason(pods: &[Pod]) -> Option<(&'static str, String)> {
    for p in pods {
        // A pod without a status yet says nothing; another may.
        let Some(st) = p.status.as_ref() else {
            continue;
        };
        for c in st.conditions.iter().flatten() {
            if c.type_ == "PodScheduled" && c.status == "False" {
                return Some((
                    Reason::Unschedulable.as_str(),
                    c.message.clone().unwrap_or_default(),
                ));
            }
        }
        for c in st.container_statuses.iter().flatten() {
            if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
                && matches!(w.reason.as_deref(), Some("ImagePullBackOff" | "ErrImagePull"))
            {
                return Some((
                    Reason::ImagePullFailed.as_str(),
                    w.message.clone().unwrap_or_default(),
                ));
            }
        }
    }
    None
}

/// The last `max` bytes of `s` (an error is at the end of a log), on a char boundary.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    #[test]
    fn a_pod_without_status_does_not_hide_another_that_waits() {
        let unscheduled = Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    message: Some("0/3 nodes are available".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pods = [Pod::default(), unscheduled];
        let (reason, message) = pending_reason(&pods).expect("the second pod's reason");
        assert_eq!(reason, Reason::Unschedulable.as_str());
        assert_eq!(message, "0/3 nodes are available");
    }
}
