//! Errors of the Proxmox API client, and the one place that maps an HTTP status and PVE's
//! error body (`errors` map, `message`) to them.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;

/// What went wrong talking to Proxmox. Never holds the token secret.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: the token is unknown, revoked or its secret is wrong.
    #[error("{call}: authentication failed (HTTP 401) for API token {token}")]
    Unauthorized {
        /// `METHOD /path`.
        call: String,
        /// `user@realm!tokenid`.
        token: String,
    },
    /// 403: the token lacks a privilege.
    #[error("{call}: permission denied (HTTP 403) for API token {token}: {message}")]
    Forbidden {
        call: String,
        token: String,
        message: String,
    },
    /// 400 with a per-parameter `errors` map.
    #[error("{call}: invalid parameters (HTTP 400): {}", fmt_errors(.errors))]
    Parameters {
        call: String,
        errors: BTreeMap<String, String>,
    },
    /// Any other non-2xx status, with PVE's message.
    #[error("{call}: HTTP {status}: {message}")]
    Status {
        call: String,
        status: u16,
        message: String,
    },
    /// The request did not complete (connect, TLS, timeout, reset).
    #[error("{call}: {source}")]
    Transport {
        call: String,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer that is not what the API documents.
    #[error("{call}: unexpected response: {message}")]
    Decode { call: String, message: String },
    /// A task stopped with an exit status other than `OK`/`WARNINGS: n`.
    #[error("task {upid} failed: {exit}{}", fmt_log(.log))]
    TaskFailed {
        upid: String,
        /// The exit status (PVE puts the error message there).
        exit: String,
        /// The last lines of the task log (URL queries removed).
        log: Vec<String>,
    },
    /// The server's version cannot import qcow2 images by URL.
    #[error("Proxmox VE {version:?} is too old: importing qcow2 images with download-url needs {}.{} or later", .needed.0, .needed.1)]
    TooOld { version: String, needed: (u32, u32) },
    /// Every VMID tried was taken by someone else meanwhile.
    #[error("no free VMID on {node} after {attempts} attempts (others keep taking them)")]
    NoFreeVmid { node: String, attempts: usize },
    /// A task did not stop in time (it was asked to stop).
    #[error("task {upid} still running after {timeout:?}")]
    TaskTimeout { upid: String, timeout: Duration },
}

fn fmt_errors(errors: &BTreeMap<String, String>) -> String {
    let v: Vec<String> = errors.iter().map(|(k, m)| format!("{k}: {}", m.trim())).collect();
    v.join("; ")
}

fn fmt_log(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (log: {})", log.join(" | "))
    }
}

impl ApiError {
    /// The server's message (status message, parameter errors or task exit and log), for
    /// classifying failures.
    pub fn server_text(&self) -> String {
        match self {
            Self::Forbidden { message, .. } | Self::Status { message, .. } => message.clone(),
            Self::Parameters { errors, .. } => fmt_errors(errors),
            Self::TaskFailed { exit, log, .. } => format!("{exit}\n{}", log.join("\n")),
            _ => String::new(),
        }
    }

    /// The VM (config file) does not exist.
    pub fn is_missing_vm(&self) -> bool {
        matches!(self, Self::Status { status: 500, .. }) && self.server_text().contains("does not exist")
    }

    /// The VM id was taken meanwhile (`VM N already exists`).
    pub fn is_vmid_taken(&self) -> bool {
        matches!(
            self,
            Self::Status { .. } | Self::Parameters { .. } | Self::TaskFailed { .. }
        ) && self.server_text().contains("already exists")
    }
}

/// Turns a non-2xx answer into an [`ApiError`]: `401` → `Unauthorized`, `403` → `Forbidden`,
/// `400` with `errors` → `Parameters`, anything else → `Status` with the body's `message`
/// (PVE ≥ 8.4) or the standard reason phrase (older servers only send it in the status line).
pub fn error_from_response(call: String, token: &str, status: u16, body: &[u8]) -> ApiError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = json
        .get("message")
        .and_then(Value::as_str)
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    let errors: BTreeMap<String, String> = json
        .get("errors")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let reason = || {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_string()
    };
    match status {
        401 => ApiError::Unauthorized {
            call,
            token: token.to_string(),
        },
        403 => ApiError::Forbidden {
            call,
            token: token.to_string(),
            message: message.unwrap_or_else(|| "permission check failed".into()),
        },
        400 if !errors.is_empty() => ApiError::Parameters { call, errors },
        _ => {
            let message = match (message, errors.is_empty()) {
                (Some(m), _) => m,
                (None, false) => fmt_errors(&errors),
                (None, true) => reason(),
            };
            ApiError::Status {
                call,
                status,
                message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_mapped_from_status_and_body() {
        let e = error_from_response("GET /x".into(), "a@pam!t", 401, b"");
        assert!(matches!(e, ApiError::Unauthorized { .. }), "{e}");
        let e = error_from_response(
            "POST /nodes/pve/qemu".into(),
            "a@pam!t",
            400,
            br#"{"data":null,"errors":{"vmid":"VM 100 already exists"}}"#,
        );
        assert!(e.is_vmid_taken(), "{e}");
        assert!(e.to_string().contains("vmid: VM 100 already exists"), "{e}");
        let e = error_from_response(
            "DELETE /nodes/pve/qemu/7".into(),
            "t",
            500,
            br#"{"data":null,"message":"Configuration file 'nodes/pve/qemu-server/7.conf' does not exist\n"}"#,
        );
        assert!(e.is_missing_vm(), "{e}");
        let e = error_from_response("GET /x".into(), "t", 500, br#"{"data":null}"#);
        assert_eq!(e.to_string(), "GET /x: HTTP 500: Internal Server Error");
        let e = error_from_response(
            "GET /x".into(),
            "t",
            403,
            br#"{"data":null,"message":"Permission check failed (/, Sys.Audit)\n"}"#,
        );
        assert!(e.to_string().contains("Sys.Audit"), "{e}");
    }
}
