//! ECR credentials from the pod's web identity (EKS "IRSA", image-operator's `useAwsIRSA`).
//!
//! ```text
//!  token file ──AssumeRoleWithWebIdentity (STS, unsigned)──▶ temporary keys
//!             ──GetAuthorizationToken (ECR, SigV4 with them)──▶ AWS:<password> for the registry
//! ```
//!
//! The pod identity webhook sets `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_REGION`
//! (or `AWS_DEFAULT_REGION`) and optionally `AWS_ROLE_SESSION_NAME`. The region is the one
//! the registry host names (`<account>.dkr.ecr.<region>.amazonaws.com[.cn]`), else the
//! environment's. Endpoints follow the SDKs' `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL_ECR`
//! and `AWS_ENDPOINT_URL`. Registry credentials are cached per (role, region) until five
//! minutes before they expire; the token file is read again for every STS call (the kubelet
//! rotates it). The web identity token, the temporary keys and the ECR password never go
//! into errors, logs or `Debug` output.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use hmac::{KeyInit, Mac};
use ido_io::http::encode_unreserved;
use reqwest::Url;
use sha2::{Digest, Sha256};

use crate::{Error, Result, auth::Credentials};

const STS: &str = "STS AssumeRoleWithWebIdentity";
const ECR: &str = "ECR GetAuthorizationToken";
/// Registry credentials are fetched again this long before they expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_MAX: usize = 1 << 20;

/// Where the web identity comes from and which AWS endpoints to ask; built once per
/// process ([`IrsaConfig::from_env`]) and kept: clones share the credentials cache.
#[derive(Clone)]
pub struct IrsaConfig {
    role_arn: String,
    token_file: PathBuf,
    session_name: Option<String>,
    region: Option<String>,
    sts_endpoint: Option<Url>,
    ecr_endpoint: Option<Url>,
    http: reqwest::Client,
    cache: Arc<tokio::sync::Mutex<HashMap<(String, String), Cached>>>,
}

struct Cached {
    creds: Credentials,
    refresh_at: SystemTime,
}

impl std::fmt::Debug for IrsaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrsaConfig")
            .field("role_arn", &self.role_arn)
            .field("token_file", &self.token_file)
            .field("region", &self.region)
            .field("sts_endpoint", &self.sts_endpoint.as_ref().map(Url::as_str))
            .field("ecr_endpoint", &self.ecr_endpoint.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

impl IrsaConfig {
    /// From the process environment (see the module docs).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From the variables `var` gives (`None`: unset): the environment, or a map in tests.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| var(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let missing = |var: &'static str| Error::AwsEnv {
            var,
            reason: "not set: ECR credentials from the pod's web identity (useAwsIRSA) need the \
                     variables EKS's pod identity webhook sets for a service account annotated \
                     eks.amazonaws.com/role-arn"
                .into(),
        };
        let role_arn = get("AWS_ROLE_ARN").ok_or_else(|| missing("AWS_ROLE_ARN"))?;
        let token_file = get("AWS_WEB_IDENTITY_TOKEN_FILE")
            .ok_or_else(|| missing("AWS_WEB_IDENTITY_TOKEN_FILE"))?
            .into();
        let endpoint = |name: &'static str| -> Result<Option<Url>> {
            let Some(v) = get(name) else { return Ok(None) };
            let url = Url::parse(&v)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            url.map(Some).ok_or_else(|| Error::AwsEnv {
                var: name,
                reason: format!("{} is not an http(s) URL", ido_io::redact::url_str(&v)),
            })
        };
        let global = endpoint("AWS_ENDPOINT_URL")?;
        let http =
            ido_io::http::client(&Default::default(), "AWS endpoints").map_err(|e| Error::Invalid {
                field: "AWS client",
                value: String::new(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            role_arn,
            token_file,
            session_name: get("AWS_ROLE_SESSION_NAME"),
            region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            sts_endpoint: endpoint("AWS_ENDPOINT_URL_STS")?.or_else(|| global.clone()),
            ecr_endpoint: endpoint("AWS_ENDPOINT_URL_ECR")?.or(global),
            http,
            cache: Arc::default(),
        })
    }

    /// The role assumed (`AWS_ROLE_ARN`).
    pub fn role_arn(&self) -> &str {
        &self.role_arn
    }

    /// Credentials (`AWS` and a 12-hour password) for the ECR registry `registry_host`,
    /// from the cache or from STS and ECR.
    pub async fn ecr_credentials(&self, registry_host: &str) -> Result<Credentials> {
        let region = self.region_for(registry_host)?;
        let key = (self.role_arn.clone(), region.clone());
        // Held across the calls: concurrent callers wait for one fetch.
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(&key)
            && SystemTime::now() < c.refresh_at
        {
            return Ok(c.creds.clone());
        }
        let keys = self.assume_role(&region).await?;
        let (creds, expires_at) = self.authorization_token(&region, &keys).await?;
        tracing::info!(
            registry = registry_host,
            %region,
            role = %self.role_arn,
            expires_at = %jiff::Timestamp::try_from(expires_at).map(|t| t.to_string()).unwrap_or_default(),
            "ECR credentials from the pod's web identity"
        );
        let refresh_at = expires_at.checked_sub(REFRESH_BEFORE).unwrap_or(UNIX_EPOCH);
        cache.insert(
            key,
            Cached {
                creds: creds.clone(),
                refresh_at,
            },
        );
        Ok(creds)
    }

    /// The region the host names, else the environment's.
    fn region_for(&self, registry_host: &str) -> Result<String> {
        if let Some(r) = region_from_host(registry_host) {
            return Ok(r);
        }
        match &self.region {
            Some(r) if is_region(r) => Ok(r.clone()),
            Some(r) => Err(Error::AwsEnv {
                var: "AWS_REGION",
                reason: format!("{r:?} is not a region name"),
            }),
            None => Err(Error::AwsEnv {
                var: "AWS_REGION",
                reason: format!(
                    "not set, and the registry host {registry_host:?} names no region \
                     (<account>.dkr.ecr.<region>.amazonaws.com)"
                ),
            }),
        }
    }

    fn endpoint(&self, over: &Option<Url>, service: &str, region: &str) -> Url {
        over.clone().unwrap_or_else(|| {
            let suffix = if region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            // `region` is `[a-z0-9-]+` (region_for).
            Url::parse(&format!("https://{service}.{region}.{suffix}/")).expect("an AWS endpoint URL")
        })
    }

    /// STS `AssumeRoleWithWebIdentity` with the token file's token.
    async fn assume_role(&self, region: &str) -> Result<SessionKeys> {
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| Error::AwsEnv {
                var: "AWS_WEB_IDENTITY_TOKEN_FILE",
                reason: format!("cannot read {}: {e}", self.token_file.display()),
            })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::AwsEnv {
                var: "AWS_WEB_IDENTITY_TOKEN_FILE",
                reason: format!("{} is empty", self.token_file.display()),
            });
        }
        let url = self.endpoint(&self.sts_endpoint, "sts", region);
        let session = self.session_name.clone().unwrap_or_else(|| {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            format!("ido-{secs}")
        });
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", self.role_arn.as_str()),
            ("RoleSessionName", session.as_str()),
            ("WebIdentityToken", token),
        ];
        let req = self.http.post(url.clone()).form(&form).timeout(CALL_TIMEOUT);
        let (status, body) = send(req, STS, &url).await?;
        let secrets = [token];
        if !(200..300).contains(&status) {
            let [code, message] = xml_texts(&body, [&["Error", "Code"], &["Error", "Message"]]);
            return Err(aws_error(STS, &url, status, code, message, &body, &secrets));
        }
        const CREDS: [&str; 2] = ["AssumeRoleWithWebIdentityResult", "Credentials"];
        let [id, secret, session_token] = xml_texts(
            &body,
            [
                &[CREDS[0], CREDS[1], "AccessKeyId"],
                &[CREDS[0], CREDS[1], "SecretAccessKey"],
                &[CREDS[0], CREDS[1], "SessionToken"],
            ],
        );
        match (id, secret, session_token) {
            (Some(access_key_id), Some(secret_access_key), Some(session_token)) => Ok(SessionKeys {
                access_key_id,
                secret_access_key,
                session_token: Some(session_token),
            }),
            _ => Err(Error::Aws {
                step: STS,
                endpoint: endpoint_str(&url),
                code: None,
                message: format!(
                    "HTTP {status} without AssumeRoleWithWebIdentityResult/Credentials in the answer"
                ),
            }),
        }
    }

    /// ECR `GetAuthorizationToken` signed with `keys`: the credentials and when they expire.
    async fn authorization_token(
        &self,
        region: &str,
        keys: &SessionKeys,
    ) -> Result<(Credentials, SystemTime)> {
        let url = self.endpoint(&self.ecr_endpoint, "api.ecr", region);
        let req = self.ecr_request(&url, region, keys)?;
        let (status, body) = send(req, ECR, &url).await?;
        let secrets = [
            keys.secret_access_key.as_str(),
            keys.session_token.as_deref().unwrap_or_default(),
        ];
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if !(200..300).contains(&status) {
            // `__type` may be `namespace#Code`.
            let code = json["__type"]
                .as_str()
                .map(|t| t.rsplit('#').next().unwrap_or(t).to_string());
            let message = json["message"]
                .as_str()
                .or(json["Message"].as_str())
                .map(String::from);
            return Err(aws_error(ECR, &url, status, code, message, &body, &secrets));
        }
        ecr_credentials(&url, status, &json)
    }

    /// The `GetAuthorizationToken` request to `url`, signed (SigV4) with `keys`.
    fn ecr_request(&self, url: &Url, region: &str, keys: &SessionKeys) -> Result<reqwest::RequestBuilder> {
        let body = b"{}";
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            (
                "x-amz-target",
                "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
            ),
        ];
        let signed = sign(
            keys,
            &Scope {
                region,
                service: "ecr",
            },
            jiff::Timestamp::now(),
            &Signable {
                method: "POST",
                url,
                headers: &headers,
                body,
            },
        );
        let mut req = self.http.post(url.clone()).body(&body[..]).timeout(CALL_TIMEOUT);
        for (k, v) in headers.iter().map(|(k, v)| (*k, v.to_string())).chain(signed) {
            let mut v = reqwest::header::HeaderValue::from_str(&v).map_err(|_| Error::Aws {
                step: ECR,
                endpoint: endpoint_str(url),
                code: None,
                message: format!("a {k} header that is not a header value"),
            })?;
            v.set_sensitive(k == "authorization" || k == "x-amz-security-token");
            req = req.header(k, v);
        }
        Ok(req)
    }
}

/// The registry credentials of a successful `GetAuthorizationToken` answer (`json`, from
/// `url` with `status`) and when they expire.
fn ecr_credentials(url: &Url, status: u16, json: &serde_json::Value) -> Result<(Credentials, SystemTime)> {
    let data = &json["authorizationData"][0];
    let bad = |what: &str| Error::Aws {
        step: ECR,
        endpoint: endpoint_str(url),
        code: None,
        message: format!("HTTP {status}: {what}"),
    };
    let token = data["authorizationToken"]
        .as_str()
        .ok_or_else(|| bad("no authorizationData[0].authorizationToken in the answer"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(|| bad("authorizationToken is not base64 of text"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| bad("authorizationToken is not user:password"))?;
    let expires_at = data["expiresAt"]
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| UNIX_EPOCH + Duration::from_secs_f64(s))
        .ok_or_else(|| bad("no expiresAt (epoch seconds) in authorizationData[0]"))?;
    Ok((
        Credentials {
            username: user.to_string(),
            password: password.to_string(),
        },
        expires_at,
    ))
}

/// The region of an ECR registry host: `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`
/// or the dual-stack `<account>.dkr-ecr.<region>.on.aws` (a port is ignored).
pub fn region_from_host(host: &str) -> Option<String> {
    let host = crate::auth::normalize_host(host);
    let host = host.split(':').next().unwrap_or_default();
    let labels: Vec<&str> = host.split('.').collect();
    let region = match labels.as_slice() {
        [_, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com"]
        | [_, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com", "cn"]
        | [_, "dkr-ecr", region, "on", "aws"] => *region,
        _ => return None,
    };
    is_region(region).then(|| region.to_string())
}

/// `[a-z0-9-]+`, as AWS region names are.
fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Sends `req`: its status and body (at most [`BODY_MAX`] bytes).
async fn send(req: reqwest::RequestBuilder, step: &'static str, url: &Url) -> Result<(u16, Vec<u8>)> {
    let failed = |e: reqwest::Error| Error::Aws {
        step,
        endpoint: endpoint_str(url),
        code: None,
        message: ido_io::error_chain(&e),
    };
    let res = req.send().await.map_err(failed)?;
    let status = res.status().as_u16();
    let body = res.bytes().await.map_err(failed)?;
    Ok((status, body[..body.len().min(BODY_MAX)].to_vec()))
}

fn endpoint_str(url: &Url) -> String {
    ido_io::redact::url(url)
}

/// The error of a failed call: AWS's code and message, else the start of the body; with
/// `secrets` hidden should the service echo one.
fn aws_error(
    step: &'static str,
    url: &Url,
    status: u16,
    code: Option<String>,
    message: Option<String>,
    body: &[u8],
    secrets: &[&str],
) -> Error {
    let message = match message {
        Some(m) => format!("{m} (HTTP {status})"),
        None => format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ),
    };
    let mut message = ido_io::redact::escape_controls(&message);
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        message = message.replace(s, "<redacted>");
    }
    Error::Aws {
        step,
        endpoint: endpoint_str(url),
        code,
        message,
    }
}

/// The text of the elements at `paths` (local names below the root, namespaces ignored),
/// trimmed; `None` where absent or when the body is not XML.
fn xml_texts<const N: usize>(body: &[u8], paths: [&[&str]; N]) -> [Option<String>; N] {
    let root = std::str::from_utf8(body)
        .ok()
        .and_then(|t| ido_io::xml::Node::parse(t.trim_start_matches('\u{feff}')).ok());
    paths.map(|p| {
        let node = root.as_ref()?.at(&p.join("/"))?;
        Some(node.text.trim().to_string())
    })
}

// --- AWS Signature Version 4 ----------------------------------------------------------

/// Temporary (or long-term) AWS keys. `Debug` shows only the key id.
#[derive(Clone)]
struct SessionKeys {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The credential scope's region and service.
struct Scope<'a> {
    region: &'a str,
    service: &'a str,
}

/// What a signature covers: the method, URL, the headers to sign besides `host`,
/// `x-amz-date` and `x-amz-security-token` (lower-case names), and the body.
struct Signable<'a> {
    method: &'a str,
    url: &'a Url,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

/// The headers to add to `req` (`x-amz-date`, `x-amz-security-token` when there is a
/// session token, `authorization`) to sign it with `keys` at `time`.
fn sign(
    keys: &SessionKeys,
    scope: &Scope,
    time: jiff::Timestamp,
    req: &Signable,
) -> Vec<(&'static str, String)> {
    let amz_date = time.strftime("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let mut added = vec![("x-amz-date", amz_date.clone())];
    if let Some(t) = &keys.session_token {
        added.push(("x-amz-security-token", t.clone()));
    }
    let host = match req.url.port() {
        Some(p) => format!("{}:{p}", req.url.host_str().unwrap_or_default()),
        None => req.url.host_str().unwrap_or_default().to_string(),
    };
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), canonical_value(v)))
        .chain([("host".to_string(), host)])
        .chain(added.iter().map(|(k, v)| (k.to_string(), canonical_value(v))))
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical_request = [
        req.method,
        &canonical_path(req.url.path()),
        &canonical_query(req.url),
        &canonical_headers,
        &signed_headers,
        &hex::encode(Sha256::digest(req.body)),
    ]
    .join("\n");
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{credential_scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", keys.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [scope.region, scope.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    added.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
            keys.access_key_id
        ),
    ));
    added
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A header value trimmed, inner runs of spaces collapsed to one.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each path segment URI-encoded (again: the path is already percent-encoded, and services
/// other than S3 encode twice).
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(encode_unreserved)
        .collect::<Vec<_>>()
        .join("/")
}

/// Query parameters URI-encoded and sorted by name, then value.
fn canonical_query(url: &Url) -> String {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (encode_unreserved(&k), encode_unreserved(&v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests;
