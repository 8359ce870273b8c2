//! VCD errors and the one place that turns an HTTP status plus `<Error>` body into them.

use reqwest::Response;

use ido_io::{error_chain, xml::Node};

use crate::ProviderError;

/// Largest error body read.
const MAX_ERROR_BODY: usize = 64 << 10;

/// What went wrong talking to VCD. Messages never hold the password or the access token.
#[derive(Debug, thiserror::Error)]
pub enum VcdError {
    /// HTTP 401: the credentials were refused, or the session expired twice in a row.
    #[error("{what}: unauthorized (HTTP 401)")]
    Unauthorized {
        /// The call, e.g. `login to https://vcd/ as ido@org1`.
        what: String,
    },
    /// VCD answered with an error status (and usually an `<Error>` body).
    #[error("{what}: HTTP {status} {code}: {message}")]
    Api {
        /// The call.
        what: String,
        /// HTTP status (equal to `majorErrorCode`).
        status: u16,
        /// `minorErrorCode`, e.g. `DUPLICATE_NAME`; `-` when there was none.
        code: String,
        /// `message`.
        message: String,
    },
    /// The request did not get an answer (connect, TLS, timeout, broken body).
    #[error("{what}: {message}")]
    Transport {
        /// The call.
        what: String,
        /// The cause chain.
        message: String,
    },
    /// VCD answered something this client does not understand.
    #[error("{what}: unexpected answer: {message}")]
    Protocol {
        /// The call.
        what: String,
        /// What was wrong with it.
        message: String,
    },
    /// The template being uploaded went away (someone deleted it).
    #[error("the template {href} disappeared during the upload")]
    Vanished { href: String },
    /// VCD marked the upload failed.
    #[error("VCD failed the upload of {name:?} while waiting for {what}: {why}")]
    UploadFailed { name: String, what: String, why: String },
    /// A task ended in `error` or `aborted`.
    #[error("VCD task {operation} on {owner:?} ended {status}: {message}")]
    Task {
        /// `operationName`, e.g. `vdcUploadOvfContents`.
        operation: String,
        /// Name of the object the task works on.
        owner: String,
        /// Final status.
        status: String,
        /// The task's `<Error message>`.
        message: String,
    },
    /// Something did not happen in time.
    #[error("{what}: still not done after {secs} s")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
}

impl VcdError {
    /// HTTP status of an [`VcdError::Api`] (or 401).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }

    /// The entity does not exist: 404, or the 403 VCD gives for unknown ids.
    pub fn is_gone(&self) -> bool {
        matches!(self.status(), Some(403 | 404))
    }

    /// The entity is busy with another task (`BUSY_ENTITY`).
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Api { code, .. } if code == "BUSY_ENTITY")
    }

    /// A transport error for `what`.
    pub fn transport(what: &str, e: reqwest::Error) -> Self {
        Self::Transport {
            what: what.to_string(),
            message: error_chain(&e.without_url()),
        }
    }

    /// A protocol error for `what`.
    pub fn protocol(what: &str, message: impl Into<String>) -> Self {
        Self::Protocol {
            what: what.to_string(),
            message: message.into(),
        }
    }
}

/// Passes a 2xx response; turns any other status into a [`VcdError`], reading VCD's
/// `<Error majorErrorCode minorErrorCode message/>` body (or the cloudapi's JSON error).
pub async fn check(resp: Response, what: &str) -> Result<Response, VcdError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status.as_u16() == 401 {
        return Err(VcdError::Unauthorized { what: what.into() });
    }
    let body = resp.bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).into_owned();
    let (code, message) = parse_error_body(&text)
        .unwrap_or_else(|| ("-".into(), fallback_message(&text, status.canonical_reason())));
    Err(VcdError::Api {
        what: what.into(),
        status: status.as_u16(),
        code,
        message,
    })
}

/// `(minorErrorCode, message)` of an `<Error>` element or a cloudapi JSON error.
pub fn parse_error_body(text: &str) -> Option<(String, String)> {
    let t = text.trim_start_matches('\u{feff}').trim();
    if t.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(t).ok()?;
        let code = v.get("minorErrorCode")?.as_str().unwrap_or("-").to_string();
        let message = v
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string();
        return Some((code, message));
    }
    let n = Node::parse(t).ok()?;
    error_of(&n)
}

/// `(minorErrorCode, message)` of an `<Error>` element (itself or a child, as in a Task).
pub fn error_of(n: &Node) -> Option<(String, String)> {
    let e = if n.name == "Error" { n } else { n.child("Error")? };
    let code = e.attr("minorErrorCode").unwrap_or("-").to_string();
    let message = e.attr("message").unwrap_or("").to_string();
    Some((code, message))
}

fn fallback_message(text: &str, reason: Option<&str>) -> String {
    let t = text.trim();
    if t.is_empty() {
        return reason.unwrap_or("no message").to_string();
    }
    t.chars().take(200).collect()
}

impl From<VcdError> for ProviderError {
    fn from(e: VcdError) -> Self {
        match &e {
            VcdError::Unauthorized { .. } => ProviderError::Config {
                key: "vcd.credentials".into(),
                message: format!("{e}: check the url, org, username and password"),
            },
            VcdError::Api { status, .. } if *status >= 500 => ProviderError::Transport(e.to_string()),
            VcdError::Transport { .. } | VcdError::Timeout { .. } => ProviderError::Transport(e.to_string()),
            _ => ProviderError::api(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read() {
        let xml = r#"<?xml version="1.0"?><Error xmlns="http://www.vmware.com/vcloud/v1.5" majorErrorCode="400" minorErrorCode="DUPLICATE_NAME" message="The name &quot;x&quot; is taken" stackTrace="…"/>"#;
        assert_eq!(
            parse_error_body(xml),
            Some(("DUPLICATE_NAME".into(), "The name \"x\" is taken".into()))
        );
        let json = r#"{"minorErrorCode":"UNAUTHORIZED","message":"bad","stackTrace":null}"#;
        assert_eq!(
            parse_error_body(json),
            Some(("UNAUTHORIZED".into(), "bad".into()))
        );
        assert_eq!(parse_error_body("<html>oops</html>"), None);
        assert_eq!(parse_error_body(""), None);
    }

    #[test]
    fn errors_map_to_provider_errors() {
        let api = |status| VcdError::Api {
            what: "x".into(),
            status,
            code: "-".into(),
            message: "m".into(),
        };
        assert!(matches!(
            ProviderError::from(api(503)),
            ProviderError::Transport(_)
        ));
        assert!(matches!(ProviderError::from(api(400)), ProviderError::Api(_)));
        assert!(api(403).is_gone() && api(404).is_gone() && !api(400).is_gone());
        let e = ProviderError::from(VcdError::Unauthorized { what: "login".into() });
        assert!(matches!(&e, ProviderError::Config { key, .. } if key == "vcd.credentials"));
    }
}
