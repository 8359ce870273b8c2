//! Proxmox worker tasks: UPIDs and waiting for a task to stop.
//!
//! A task is polled through `GET /nodes/{node}/tasks/{upid}/status` with a doubling interval
//! until `status` is `stopped`. Exit status `OK` is success; `WARNINGS: n` is success with a
//! logged warning (the original failed on it); anything else fails with the last lines of
//! `GET …/log`. A task still running at the deadline is stopped (`DELETE …/tasks/{upid}`).

use std::{fmt, time::Duration};

use serde_json::Value;
use tokio::time::Instant;

use super::api::{ApiError, Client, redact_urls};

/// Log lines kept in a [`ApiError::TaskFailed`].
const LOG_TAIL: usize = 10;
/// Consecutive failed status polls tolerated (transient network errors).
const POLL_ERRORS: u32 = 3;

/// How tasks are waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskPolicy {
    /// First poll after this long (default 500 ms)…
    pub first_poll: Duration,
    /// …doubling up to this interval (default 10 s).
    pub max_poll: Duration,
    /// Give up (and stop the task) after this long (default 30 min).
    pub timeout: Duration,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        Self {
            first_poll: Duration::from_millis(500),
            max_poll: Duration::from_secs(10),
            timeout: Duration::from_secs(super::config::DEFAULT_TASK_TIMEOUT_SECS),
        }
    }
}

/// A task id: `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upid {
    raw: String,
    node: String,
    kind: String,
}

impl Upid {
    /// Parses a UPID; `None` if it does not have PVE's shape.
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let hex = |p: &str| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_hexdigit());
        let ok = parts.len() == 9
            && parts[0] == "UPID"
            && !parts[1].is_empty()
            && hex(parts[2])
            && hex(parts[3])
            && hex(parts[4])
            && !parts[5].is_empty()
            && !parts[7].is_empty()
            && parts[8].is_empty();
        ok.then(|| Self {
            raw: s.to_string(),
            node: parts[1].to_string(),
            kind: parts[5].to_string(),
        })
    }

    /// The node running the task.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The task type, e.g. `qmcreate`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The UPID as PVE wrote it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Reads a `data` that should be a UPID (calls that start tasks).
pub fn upid_of(call: &str, data: &Value) -> Result<Option<Upid>, ApiError> {
    match data {
        // `background_delay` lets PVE return null for a task that already finished.
        Value::Null => Ok(None),
        Value::String(s) => Upid::parse(s).map(Some).ok_or_else(|| ApiError::Decode {
            call: call.to_string(),
            message: format!("not a UPID: {s:?}"),
        }),
        other => Err(ApiError::Decode {
            call: call.to_string(),
            message: format!("expected a UPID, got {other}"),
        }),
    }
}

/// Waits until `upid` stops; `Ok` for `OK` and `WARNINGS: n` (logged).
pub async fn wait(api: &Client, upid: &Upid, policy: &TaskPolicy) -> Result<(), ApiError> {
    let deadline = Instant::now() + policy.timeout;
    let mut interval = policy.first_poll;
    let mut errors = 0;
    loop {
        let sleep = interval.min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(sleep).await;
        let path = ["nodes", upid.node(), "tasks", upid.as_str(), "status"];
        match api.get::<Value>(&path, &[]).await {
            Ok(s) if s.get("status").and_then(Value::as_str) == Some("stopped") => {
                let exit = s.get("exitstatus").and_then(Value::as_str).unwrap_or_default();
                return finished(api, upid, exit).await;
            }
            Ok(_) => errors = 0,
            Err(e @ (ApiError::Transport { .. } | ApiError::Status { status: 500.., .. }))
                if errors < POLL_ERRORS =>
            {
                errors += 1;
                tracing::debug!(%upid, error = %e, "task status poll failed; retrying");
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            stop(api, upid).await;
            return Err(ApiError::TaskTimeout {
                upid: upid.to_string(),
                timeout: policy.timeout,
            });
        }
        interval = (interval * 2).min(policy.max_poll);
    }
}

/// Judges a stopped task's exit status.
async fn finished(api: &Client, upid: &Upid, exit: &str) -> Result<(), ApiError> {
    if exit == "OK" {
        return Ok(());
    }
    let log = log_tail(api, upid).await;
    if exit.starts_with("WARNINGS") {
        tracing::warn!(%upid, exit, log = %log.join(" | "), "Proxmox task finished with warnings");
        return Ok(());
    }
    Err(ApiError::TaskFailed {
        upid: upid.to_string(),
        exit: redact_urls(if exit.is_empty() {
            "unknown exit status"
        } else {
            exit
        }),
        log,
    })
}

/// The last [`LOG_TAIL`] lines of a task's log (empty if it cannot be read).
pub async fn log_tail(api: &Client, upid: &Upid) -> Vec<String> {
    let path = ["nodes", upid.node(), "tasks", upid.as_str(), "log"];
    let total = match api.get_paged(&path, 0, 1).await {
        Ok((_, total)) => total,
        Err(e) => {
            tracing::debug!(%upid, error = %e, "cannot read task log");
            return Vec::new();
        }
    };
    let start = total.saturating_sub(LOG_TAIL);
    let lines = api
        .get_paged(&path, start, LOG_TAIL)
        .await
        .map(|(l, _)| l)
        .unwrap_or_default();
    lines
        .iter()
        .filter_map(|l| l.get("t").and_then(Value::as_str))
        .map(redact_urls)
        .collect()
}

/// Asks PVE to stop a task (best effort).
pub async fn stop(api: &Client, upid: &Upid) {
    let path = ["nodes", upid.node(), "tasks", upid.as_str()];
    match api.delete::<Value>(&path, &[]).await {
        Ok(_) => tracing::warn!(%upid, "stopped a Proxmox task that ran too long"),
        Err(e) => tracing::warn!(%upid, error = %e, "cannot stop a Proxmox task"),
    }
}

impl Client {
    /// `GET` of a paged list: its lines and `total`.
    async fn get_paged(
        &self,
        path: &[&str],
        start: usize,
        limit: usize,
    ) -> Result<(Vec<Value>, usize), ApiError> {
        let (start, limit) = (start.to_string(), limit.to_string());
        let page: Paged = self
            .get_raw(path, &[("start", start.as_str()), ("limit", limit.as_str())])
            .await?;
        let total = page.total.as_ref().and_then(super::api::as_u32).unwrap_or(0) as usize;
        let total = total.max(page.data.len());
        Ok((page.data, total))
    }
}

/// A paged answer: `{"data": [...], "total": n}`.
#[derive(serde::Deserialize)]
struct Paged {
    #[serde(default)]
    data: Vec<Value>,
    #[serde(default)]
    total: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upids_parse() {
        let u = Upid::parse("UPID:pve:0003C6A1:01A4BB10:66F2A1F3:qmcreate:101:root@pam!ido:").unwrap();
        assert_eq!((u.node(), u.kind()), ("pve", "qmcreate"));
        let d =
            Upid::parse("UPID:pve2:0000A1B2:0A1B2C3D4:66F2A1F3:download:img.qcow2:ido@pve!capmox:").unwrap();
        assert_eq!(d.node(), "pve2");
        for bad in [
            "",
            "UPID:pve:1:2:3:qmcreate:101:root@pam",
            "UPID::1:2:3:qmcreate:101:root@pam:",
            "UPID:pve:xyz:2:3:qmcreate:101:root@pam:",
            "TASK:pve:1:2:3:qmcreate:101:root@pam:",
        ] {
            assert_eq!(Upid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn null_means_no_task() {
        assert_eq!(upid_of("c", &Value::Null).unwrap(), None);
        assert!(upid_of("c", &Value::from(3)).is_err());
        assert!(upid_of("c", &Value::from("nope")).is_err());
    }
}
