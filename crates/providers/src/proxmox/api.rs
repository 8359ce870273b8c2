//! A thin typed client of the Proxmox VE REST API: API-token auth, form-encoded bodies and
//! the `{"data": …}` envelope. Non-2xx answers become [`ApiError`]s through
//! [`error_from_response`].

use std::{fmt, time::Duration};

use reqwest::{
    Method,
    header::{AUTHORIZATION, HeaderValue},
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

pub use super::error::{ApiError, error_from_response};

/// Timeout of one API request (the original's 30 s; long work runs in tasks).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read.
const MAX_BODY: usize = 16 << 20;

/// The API client: cheap to clone, safe to share between locations.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `PVEAPIToken=…` (marked sensitive).
    auth: HeaderValue,
    /// `user@realm!tokenid`.
    token: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `base` (`https://host:port/api2/json`) authenticating as `token`
    /// (`user@realm!tokenid`) with `secret`. `None` if they cannot form a header value.
    pub fn new(http: reqwest::Client, base: Url, token: String, secret: &str) -> Option<Self> {
        let mut auth = HeaderValue::from_str(&format!("PVEAPIToken={token}={secret}")).ok()?;
        auth.set_sensitive(true);
        Some(Self {
            http,
            base,
            auth,
            token,
        })
    }

    /// `user@realm!tokenid`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `GET <path>?<query>`; `path` is a list of segments (percent-encoded here).
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        self.call(Method::GET, path, query, &[]).await
    }

    /// `POST` with a form body.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &[&str],
        form: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        self.call(Method::POST, path, &[], form).await
    }

    /// `PUT` with a form body.
    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &[&str],
        form: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        self.call(Method::PUT, path, &[], form).await
    }

    /// `DELETE` (parameters in the query: PVE rejects bodies on DELETE).
    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        self.call(Method::DELETE, path, query, &[]).await
    }

    /// `GET` decoding the whole body (for answers with fields beside `data`, e.g. `total`).
    pub async fn get_raw<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let (call, body) = self.send(Method::GET, path, query, &[]).await?;
        decode(&call, &body)
    }

    /// Sends one request and decodes `data`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        form: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        #[derive(serde::Deserialize)]
        struct Envelope<T> {
            data: T,
        }
        let (call, body) = self.send(method, path, query, form).await?;
        decode::<Envelope<T>>(&call, &body).map(|e| e.data)
    }

    /// Sends one request; the call's name and the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        form: &[(&str, &str)],
    ) -> Result<(String, Vec<u8>), ApiError> {
        let call = format!("{method} /{}", path.join("/"));
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ApiError::Decode {
                call: call.clone(),
                message: "base URL cannot have a path".into(),
            })?
            .pop_if_empty()
            .extend(path);
        let mut req = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
            .timeout(REQUEST_TIMEOUT);
        if !query.is_empty() {
            req = req.query(query);
        }
        if !form.is_empty() {
            req = req.form(form);
        }
        tracing::trace!(%call, "proxmox request");
        let transport = |e: reqwest::Error| ApiError::Transport {
            call: call.clone(),
            source: e.without_url(),
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ApiError::Decode {
                    call,
                    message: format!("body larger than {MAX_BODY} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if !(200..300).contains(&status) {
            return Err(error_from_response(call, &self.token, status, &body));
        }
        Ok((call, body))
    }
}

/// Decodes a JSON body.
fn decode<T: DeserializeOwned>(call: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Decode {
        call: call.to_string(),
        message: format!("{e}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
    })
}

/// A JSON number or numeric string as `u32` (PVE returns ids both ways).
pub fn as_u32(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A PVE boolean (`1`, `"1"`, `true`) as `bool`.
pub fn as_bool(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_u64().is_some_and(|n| n != 0),
        Value::String(s) => matches!(s.as_str(), "1" | "true" | "yes" | "on"),
        _ => false,
    }
}

/// A task log line with credentials and URL queries (presigned S3 URLs carry signatures)
/// hidden, and control characters escaped.
pub use ido_io::redact::text as redact_urls;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_booleans_come_both_ways() {
        assert_eq!(as_u32(&Value::from("100")), Some(100));
        assert_eq!(as_u32(&Value::from(101)), Some(101));
        assert_eq!(as_u32(&Value::from("x")), None);
        assert!(as_bool(&Value::from(1)) && as_bool(&Value::from("1")) && !as_bool(&Value::Null));
    }

    #[test]
    fn url_queries_are_redacted() {
        let l = "downloading https://s3/b/k.qcow2?X-Amz-Signature=abc to '/var/lib/vz/import/k.qcow2'";
        assert_eq!(
            redact_urls(l),
            "downloading https://s3/b/k.qcow2?<redacted> to '/var/lib/vz/import/k.qcow2'"
        );
        assert_eq!(redact_urls("no http here: httpx"), "no http here: httpx");
    }
}
