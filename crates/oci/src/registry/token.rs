//! Credentials for a request: a bearer token from the registry's token server (its
//! challenge parsed, its refusals kept), basic credentials, or none.

use oci_client::{Reference, errors::OciDistributionError};
use reqwest::header::HeaderValue;

use super::*;

/// Why the token server gave no token (its own message, when it said one).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("token server {realm}: {message}")]
    Transport { realm: String, message: String },
    #[error("the token server {realm} refused the credentials: HTTP {status}: {message}")]
    Refused {
        realm: String,
        status: u16,
        message: String,
    },
    #[error("token server {realm}: no token in its answer")]
    NoToken { realm: String },
}

/// Where a token registry's tokens come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bearer {
    pub(super) realm: String,
    pub(super) service: Option<String>,
}

impl Bearer {
    /// The `Bearer` challenge of a `WWW-Authenticate` value, if it is one.
    pub(super) fn parse(header: &str) -> Option<Self> {
        let h = header.trim();
        let rest = h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))?;
        let (mut realm, mut service) = (None, None);
        let mut rest = rest.trim_start();
        // key=value or key="value" pairs apart by commas (quoted values may hold commas).
        while !rest.is_empty() {
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_ascii_lowercase();
            let after = &rest[eq + 1..];
            let (value, tail) = match after.strip_prefix('"') {
                Some(q) => {
                    let end = q.find('"')?;
                    (&q[..end], &q[end + 1..])
                }
                None => {
                    let end = after.find(',').unwrap_or(after.len());
                    (after[..end].trim(), &after[end..])
                }
            };
            match key.as_str() {
                "realm" => realm = Some(value.to_string()),
                "service" => service = Some(value.to_string()),
                _ => {}
            }
            rest = tail.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        }
        Some(Self {
            realm: realm?,
            service,
        })
    }
}

impl Registry {
    /// The `Authorization` a pull of `repo` needs: a bearer token from the registry's token
    /// server, basic credentials, or none (an open registry).
    pub(crate) async fn pull_authorization(
        &self,
        repo: &Reference,
    ) -> std::result::Result<Option<HeaderValue>, OciDistributionError> {
        self.authorization(repo, "pull").await
    }

    /// The `Authorization` for `actions` (`pull`, `pull,push`) on `repo`.
    pub(crate) async fn authorization(
        &self,
        repo: &Reference,
        actions: &str,
    ) -> std::result::Result<Option<HeaderValue>, OciDistributionError> {
        if self.open {
            return Ok(None);
        }
        let value = if self.bearer.is_some() {
            let scope = format!("repository:{}:{actions}", repo.repository());
            match self.token(&[scope]).await {
                Ok(Some(token)) => format!("Bearer {token}"),
                Ok(None) => return Ok(None),
                Err(e) => return Err(OciDistributionError::AuthenticationFailure(e.to_string())),
            }
        } else {
            match self.auth() {
                RegistryAuth::Basic(user, password) => {
                    use base64::Engine as _;
                    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                    format!("Basic {pair}")
                }
                _ => return Ok(None),
            }
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            OciDistributionError::GenericError(Some("a token that is not a header value".into()))
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }
}
