//! One side of a copy: a registry host with its TLS settings, credentials and limits.
//!
//! Connecting makes one `GET /v2/`. With verification off it tells whether the host speaks
//! TLS at all (plain HTTP if not). A registry answering 200 without a challenge is *open*:
//! oci-client would send it no credentials either, but would ask `/v2/` again before every
//! request of a client holding (even anonymous) credentials. So for an open registry the
//! blob client holds none, and manifests are fetched with a plain GET here (oci-client's
//! manifest pulls always store credentials), which also lets the engine read `Retry-After`.

use std::sync::Arc;

use bytes::Bytes;
use ido_io::retry::retry_after;
use oci_client::{
    Client, Reference,
    client::{Certificate, CertificateEncoding},
    errors::OciDistributionError,
    secrets::RegistryAuth,
};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, LINK};
use tokio::sync::{OnceCell, Semaphore};

use crate::{Error, Result, auth::AuthStore, media::ACCEPTED, retry::Attempt};

mod presence;
mod probe;
mod token;

use probe::{Params, Probe, probe};
pub(crate) use token::{Bearer, TokenError};

/// TLS settings of a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// Verify certificates (default). `false` allows plain HTTP or unverified TLS, like
    /// skopeo's `--tls-verify=false`.
    pub verify: bool,
    /// Extra trusted CAs (PEM).
    pub ca_bundle: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            verify: true,
            ca_bundle: None,
        }
    }
}

/// A registry as one side of copies. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    /// Host (with port) as in references.
    pub host: String,
    /// Client for blobs (HEAD, GET, mount, monolithic upload) and manifest pushes: the calls
    /// that take no credentials, so an open registry's gets none.
    pub(crate) client: Client,
    /// Client uploading blobs in chunks (for registries refusing monolithic uploads).
    chunked: Arc<OnceCell<Client>>,
    /// Client for the calls that take credentials (manifest pulls, tag listing): the blob
    /// client itself, unless the registry is open (then built on first use).
    reader: Arc<OnceCell<Client>>,
    /// Plain HTTP client with the same TLS settings (probe, open registries' manifests).
    http: reqwest::Client,
    auths: Arc<AuthStore>,
    /// `/v2/` answered 200 without a challenge.
    open: bool,
    /// The token server, for a registry that answered `/v2/` with a bearer challenge.
    bearer: Option<Bearer>,
    /// Blob transfers to/from this registry at once.
    pub(crate) limit: Arc<Semaphore>,
    params: Arc<Params>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("open", &self.open)
            .field("plain", &self.params.plain)
            .field("concurrency", &self.params.concurrency)
            .finish_non_exhaustive()
    }
}

/// Blob transfers per registry at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 6;

/// The largest manifest fetched (registries commonly refuse more than 4 MiB).
const MANIFEST_MAX: usize = 4 << 20;

/// The plain HTTP client for `host` with `tls` (probe, open registries' manifests) and the
/// extra CA certificates for its oci-clients; the CA bundle must hold a PEM certificate.
fn http_client(host: &str, tls: &TlsSettings) -> Result<(reqwest::Client, Vec<Certificate>)> {
    if let Err(ido_io::Error::Invalid { reason, .. }) = ido_io::http::require_crypto_provider("tls") {
        return Err(Error::Invalid {
            field: "tls",
            value: format!("for {host}"),
            reason,
        });
    }
    let mut extra = vec![];
    if let Some(pem) = &tls.ca_bundle {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::Invalid {
                field: "CA bundle",
                value: format!("for {host}"),
                reason: "no PEM certificate in it".into(),
            });
        }
        extra.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.as_bytes().to_vec(),
        });
    }
    let options = ido_io::http::TlsOptions {
        insecure: !tls.verify,
        ca_bundle: tls.ca_bundle.clone(),
    };
    let http = ido_io::http::client(&options, "CA bundle").map_err(|e| Error::Invalid {
        field: "CA bundle",
        value: format!("for {host}"),
        reason: e.to_string(),
    })?;
    Ok((http, extra))
}

impl Registry {
    /// Prepares `host` (e.g. `127.0.0.1:5000`, `docker.io`), see the module docs.
    pub async fn connect(
        host: &str,
        tls: &TlsSettings,
        auths: Arc<AuthStore>,
        concurrency: usize,
    ) -> Result<Self> {
        let (http, extra) = http_client(host, tls)?;
        let Probe {
            plain,
            open,
            unreachable,
            bearer,
        } = probe(&http, host, tls.verify).await;
        if let Some(reason) = unreachable {
            return Err(Error::Unreachable {
                host: host.to_string(),
                reason,
            });
        }
        let params = Arc::new(Params {
            host: host.to_string(),
            plain,
            verify: tls.verify,
            extra,
            concurrency: concurrency.max(1),
        });
        // Building an oci-client costs a few ms (it loads the system's CA store twice), so
        // the other two only when needed.
        let client = params.client(true)?;
        let reader = if open {
            OnceCell::new()
        } else {
            OnceCell::new_with(Some(client.clone()))
        };
        let reg = Self {
            host: host.to_string(),
            client,
            chunked: Arc::default(),
            reader: Arc::new(reader),
            http,
            auths,
            open,
            bearer,
            limit: Arc::new(Semaphore::new(params.concurrency)),
            params,
        };
        // A token registry: credentials the token server refuses are an error now, with its
        // own message (later, the registry would only answer 401 without saying why).
        if reg.bearer.is_some() && matches!(reg.auth(), RegistryAuth::Basic(..)) {
            reg.token(&[]).await.map_err(|e| Error::Unreachable {
                host: host.to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(reg)
    }

    /// A bearer token for `scopes` (`repository:NAME:pull,push`, …) from the registry's
    /// token server, with the credentials for this registry; `Ok(None)` when the registry
    /// does not use tokens. Errors carry the token server's own message.
    pub(crate) async fn token(&self, scopes: &[String]) -> std::result::Result<Option<String>, TokenError> {
        let Some(b) = &self.bearer else {
            return Ok(None);
        };
        let mut query: Vec<(&str, &str)> = vec![];
        if let Some(s) = &b.service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let mut req = self.http.get(&b.realm).query(&query);
        if let RegistryAuth::Basic(user, password) = self.auth() {
            req = req.basic_auth(user, Some(password));
        }
        let realm = ido_io::redact::url_str(&b.realm);
        let failed = |e: reqwest::Error| TokenError::Transport {
            realm: realm.clone(),
            message: ido_io::error_chain(&e),
        };
        let res = req.send().await.map_err(failed)?;
        let status = res.status();
        let body = res.bytes().await.map_err(failed)?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if !status.is_success() {
            // The message of a distribution error envelope, else the body's start.
            let message = json["errors"][0]["message"]
                .as_str()
                .or(json["details"].as_str())
                .map(String::from)
                .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
            return Err(TokenError::Refused {
                realm,
                status: status.as_u16(),
                message: ido_io::redact::escape_controls(&message),
            });
        }
        json["token"]
            .as_str()
            .or(json["access_token"].as_str())
            .map(|t| Some(t.to_string()))
            .ok_or(TokenError::NoToken { realm })
    }

    /// Mounts blob `digest` of `from` into `to` (same registry): true when the registry did
    /// (201). A token registry gets a token with both repositories' scopes (pull on the
    /// source), which oci-client's own push token lacks; an upload the registry opened
    /// instead (202) is cancelled.
    pub(crate) async fn mount(&self, to: &Reference, from: &Reference, digest: &str) -> bool {
        if self.bearer.is_none() {
            return self.client.mount_blob(to, from, digest).await.is_ok();
        }
        let scopes = [
            format!("repository:{}:pull,push", to.repository()),
            format!("repository:{}:pull", from.repository()),
        ];
        let token = match self.token(&scopes).await {
            Ok(Some(t)) => t,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(error = %e, "no token for a mount; copying instead");
                return false;
            }
        };
        let url = self.url(&format!("/v2/{}/blobs/uploads/", to.repository()));
        let res = self
            .http
            .post(&url)
            .query(&[("mount", digest), ("from", from.repository())])
            .bearer_auth(&token)
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await;
        match res {
            Ok(r) if r.status() == reqwest::StatusCode::CREATED => true,
            Ok(r) => {
                if r.status() == reqwest::StatusCode::ACCEPTED
                    && let Some(loc) = r
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                    && let Ok(loc) = reqwest::Url::parse(&url).and_then(|u| u.join(loc))
                {
                    let _ = self.http.delete(loc).bearer_auth(&token).send().await;
                }
                tracing::debug!(status = %r.status(), %digest, "mount refused; copying instead");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "mount failed; copying instead");
                false
            }
        }
    }

    /// The credentials for this registry.
    pub fn auth(&self) -> RegistryAuth {
        self.auths.auth_for(&self.host)
    }

    /// The oci-client client of this registry (TLS, plain HTTP and CA rules applied), for
    /// readers outside this crate such as the containerDisk source; they pass credentials
    /// per request ([`Registry::auth`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether `/v2/` answered 200 without a challenge when connecting.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Blob transfers to/from this registry at once.
    pub fn concurrency(&self) -> usize {
        self.params.concurrency
    }

    /// Hands the credentials for `r`'s registry to the blob client, unless the registry is
    /// open.
    pub(crate) async fn prepare(&self, r: &Reference) {
        if !self.open {
            self.client
                .store_auth_if_needed(r.resolve_registry(), &self.auth())
                .await;
        }
    }

    /// The client uploading in chunks (built on first use), with the credentials for `r`.
    pub(crate) async fn chunked(&self, r: &Reference) -> Result<&Client> {
        let c = self
            .chunked
            .get_or_try_init(|| async { self.params.client(false) })
            .await?;
        if !self.open {
            c.store_auth_if_needed(r.resolve_registry(), &self.auth()).await;
        }
        Ok(c)
    }

    /// The client for calls that store credentials (tag listing).
    pub(crate) async fn reader(&self) -> Result<&Client> {
        self.reader
            .get_or_try_init(|| async { self.params.client(true) })
            .await
    }

    /// The manifest `r` names: its bytes and the registry's `Docker-Content-Digest` (empty
    /// when absent).
    pub(crate) async fn pull_manifest_raw(&self, r: &Reference) -> Result<(Bytes, String), Attempt> {
        if !self.open {
            let reader = self
                .reader()
                .await
                .map_err(|e| Attempt::from(OciDistributionError::GenericError(Some(e.to_string()))))?;
            return Ok(reader.pull_manifest_raw(r, &self.auth(), ACCEPTED).await?);
        }
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            if self.params.plain { "http" } else { "https" },
            r.resolve_registry(),
            r.repository(),
            r.digest().or(r.tag()).unwrap_or("latest"),
        );
        let res = self
            .http
            .get(&url)
            .header(ACCEPT, ACCEPTED.join(", "))
            .send()
            .await
            .map_err(OciDistributionError::from)?;
        let status = res.status();
        let retry_after = retry_after(res.headers());
        let digest = res
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if res.content_length().is_some_and(|n| n > MANIFEST_MAX as u64) {
            return Err(OciDistributionError::GenericError(Some(format!(
                "{url}: manifest larger than {MANIFEST_MAX} bytes"
            )))
            .into());
        }
        let body = res.bytes().await.map_err(OciDistributionError::from)?;
        tracing::debug!(%url, %status, bytes = body.len(), "GET manifest");
        if status.is_success() && body.len() <= MANIFEST_MAX {
            return Ok((body, digest));
        }
        Err(refused(status, url, &body, retry_after))
    }
    /// `scheme://host` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        let scheme = if self.params.plain { "http" } else { "https" };
        format!("{scheme}://{}{path}", self.host)
    }

    /// Puts `bytes` as the manifest `r` names (a tag or a digest). Any 2xx is success, with
    /// or without the `Location` the specification asks for (some registries, ECR among
    /// them, leave it out).
    pub(crate) async fn push_manifest_raw(
        &self,
        r: &Reference,
        bytes: Bytes,
        media_type: &HeaderValue,
    ) -> Result<(), Attempt> {
        let auth = self.authorization(r, "pull,push").await?;
        let url = self.url(&format!(
            "/v2/{}/manifests/{}",
            r.repository(),
            r.digest().or(r.tag()).unwrap_or("latest")
        ));
        let mut req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, media_type.clone())
            .body(bytes);
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let res = req.send().await.map_err(OciDistributionError::from)?;
        let status = res.status();
        let retry_after = retry_after(res.headers());
        let body = res.bytes().await.unwrap_or_default();
        tracing::debug!(%url, %status, "PUT manifest");
        if status.is_success() {
            return Ok(());
        }
        Err(refused(status, url, &body, retry_after))
    }

    /// One page of a JSON listing at `url` (at most 32 MiB) and the next page's URL from its
    /// `Link: <…>; rel="next"` header, resolved against `url`.
    pub(crate) async fn get_page(
        &self,
        url: &str,
        auth: Option<&HeaderValue>,
    ) -> std::result::Result<(Bytes, Option<String>), OciDistributionError> {
        const PAGE_MAX: usize = 32 << 20;
        let mut req = self.http.get(url).header(ACCEPT, "application/json");
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let res = req.send().await?;
        let status = res.status();
        let next = res
            .headers()
            .get_all(LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_link)
            .and_then(|n| reqwest::Url::parse(url).ok()?.join(&n).ok())
            .map(String::from);
        if res.content_length().is_some_and(|n| n > PAGE_MAX as u64) {
            return Err(OciDistributionError::GenericError(Some(format!(
                "{url}: a page larger than {PAGE_MAX} bytes"
            ))));
        }
        let body = res.bytes().await?;
        tracing::debug!(%url, %status, bytes = body.len(), next = ?next, "GET page");
        if !status.is_success() || body.len() > PAGE_MAX {
            return Err(OciDistributionError::ServerError {
                code: status.as_u16(),
                url: url.to_string(),
                message: String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
            });
        }
        Ok((body, next))
    }
}

/// A request the registry answered with `status`: the start of its body as the message,
/// and when to try again if it said.
fn refused(
    status: reqwest::StatusCode,
    url: String,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
) -> Attempt {
    Attempt {
        error: OciDistributionError::ServerError {
            code: status.as_u16(),
            url,
            message: String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
        },
        retry_after,
    }
}

/// The target of a `rel="next"` link in one `Link` header value (`<url>; rel="next"`, links
/// apart by commas).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| target.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::{Bearer, next_link};

    #[test]
    fn bearer_challenges() {
        let b = Bearer::parse(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#).unwrap();
        assert_eq!(b.realm, "https://auth.docker.io/token");
        assert_eq!(b.service.as_deref(), Some("registry.docker.io"));
        let b = Bearer::parse("Bearer realm=http://127.0.0.1:1/token, service=x").unwrap();
        assert_eq!(
            (b.realm.as_str(), b.service.as_deref()),
            ("http://127.0.0.1:1/token", Some("x"))
        );
        assert_eq!(Bearer::parse(r#"Basic realm="r""#), None);
        assert_eq!(Bearer::parse("Bearer service=x"), None);
    }

    #[test]
    fn next_links() {
        assert_eq!(
            next_link("</v2/a/tags/list?n=100&last=x>; rel=\"next\"").as_deref(),
            Some("/v2/a/tags/list?n=100&last=x")
        );
        assert_eq!(
            next_link("<https://r/prev>; rel=\"prev\", <https://r/next>; rel=next").as_deref(),
            Some("https://r/next")
        );
        assert_eq!(next_link("<https://r/prev>; rel=\"prev\""), None);
        assert_eq!(next_link("garbage"), None);
    }
}
