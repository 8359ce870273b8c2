//! AWS STS and ECR stand-ins on loopback, for ECR credentials from a pod's web identity
//! (EKS IRSA): one plain-HTTP endpoint (point `AWS_ENDPOINT_URL_STS` and
//! `AWS_ENDPOINT_URL_ECR` at [`AwsStandIn::endpoint`]) answering
//!
//! - STS `AssumeRoleWithWebIdentity` (a POSTed form, unsigned): checks the web identity
//!   token and role it was started with; answers fresh random temporary keys (XML, as STS);
//! - ECR `GetAuthorizationToken` (`X-Amz-Target`, JSON 1.1): checks the request's AWS
//!   Signature Version 4 against the keys it issued, and answers
//!   `base64("AWS:" + `[`AwsStandIn::ecr_password`]`)` (give that password to an htpasswd
//!   [`crate::registry::DockerRegistry`] for user `AWS`).
//!
//! The signature is recomputed here from the request as received, by this module's own
//! code (HMAC-SHA256 written out on `sha2`, not the product's signer), which is pinned to
//! cases of AWS's published SigV4 test suite in its unit tests. Refusals are shaped as AWS's
//! (`ErrorResponse/Error/{Code,Message}` for STS, `{"__type","message"}` for ECR). Every
//! call is recorded ([`AwsStandIn::calls`]).

use std::{
    collections::HashMap,
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;

use crate::serve::ThreadServer;
use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, Response, StatusCode, header, request::Parts},
};
use base64::Engine;
use sigv4::verify;

/// The ECR operation the stand-in serves.
pub const ECR_TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
/// Seconds the temporary keys are valid.
pub const SESSION_LIFETIME_SECS: i64 = 3600;
/// How far a request's `X-Amz-Date` may be from now (AWS allows 15 minutes; stricter here).
pub const MAX_SKEW_SECS: i64 = 5 * 60;
/// The account in `proxyEndpoint`.
pub const ACCOUNT: &str = "123456789012";

/// One call the stand-in answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsCall {
    /// `AssumeRoleWithWebIdentity`, `GetAuthorizationToken`, or what else was asked.
    pub action: String,
    /// The region of the signature's credential scope (ECR calls that carried one).
    pub region: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// The AWS error code of a refusal.
    pub error: Option<String>,
}

/// Keys the stand-in issued.
#[derive(Clone)]
struct Issued {
    secret: String,
    session_token: String,
    expires: jiff::Timestamp,
}

struct State {
    role_arn: String,
    web_identity_token: String,
    ecr_password: String,
    ecr_token_lifetime: Mutex<Duration>,
    issued: Mutex<HashMap<String, Issued>>,
    log: Mutex<Vec<AwsCall>>,
}

/// A running stand-in; stops when dropped.
pub struct AwsStandIn {
    addr: SocketAddr,
    state: Arc<State>,
    _server: ThreadServer,
}

impl fmt::Debug for AwsStandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsStandIn")
            .field("addr", &self.addr)
            .field("role_arn", &self.state.role_arn)
            .finish_non_exhaustive()
    }
}

impl AwsStandIn {
    /// Starts on `127.0.0.1:0`, trusting `web_identity_token` for `role_arn`, with a fresh
    /// random ECR password. It runs on its own thread (any runtime may call it).
    pub fn start(role_arn: &str, web_identity_token: &str) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the AWS stand-in to 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            role_arn: role_arn.into(),
            web_identity_token: web_identity_token.into(),
            ecr_password: random_text(32)?,
            ecr_token_lifetime: Mutex::new(Duration::from_secs(12 * 3600)),
            issued: Mutex::default(),
            log: Mutex::default(),
        });
        let st = state.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let st = st.clone();
            async move { handle(&st, req).await }
        });
        let server = ThreadServer::start("ido-aws-stand-in", listener, app, None)?;
        Ok(Self {
            addr,
            state,
            _server: server,
        })
    }

    /// `http://127.0.0.1:PORT` (STS and ECR alike).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The password ECR's tokens carry (user `AWS`).
    pub fn ecr_password(&self) -> &str {
        &self.state.ecr_password
    }

    /// `("AWS", password)`: the credentials for an htpasswd registry accepting its tokens.
    pub fn registry_credentials(&self) -> (String, String) {
        ("AWS".into(), self.state.ecr_password.clone())
    }

    /// The environment of a pod whose web identity token is in `token_file`, pointed here.
    pub fn env(&self, token_file: &Path, region: &str) -> Vec<(String, String)> {
        [
            ("AWS_ROLE_ARN", self.state.role_arn.clone()),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.display().to_string()),
            ("AWS_REGION", region.to_string()),
            ("AWS_ENDPOINT_URL_STS", self.endpoint()),
            ("AWS_ENDPOINT_URL_ECR", self.endpoint()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// How long ECR's tokens are valid from now on (12 hours, as ECR's, until changed).
    pub fn set_ecr_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.state.ecr_token_lifetime) = lifetime;
    }

    /// Every call answered so far, in order.
    pub fn calls(&self) -> Vec<AwsCall> {
        lock(&self.state.log).clone()
    }

    /// How many calls of `action` were answered (refused ones included).
    pub fn count(&self, action: &str) -> usize {
        lock(&self.state.log)
            .iter()
            .filter(|c| c.action == action)
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` random characters of base64 (with `+` and `/`, as AWS's secrets have).
fn random_text(n: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut raw = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom")?;
    let mut s = base64::engine::general_purpose::STANDARD.encode(raw);
    s.truncate(n);
    Ok(s)
}

/// What one request got.
struct Outcome {
    action: String,
    region: Option<String>,
    response: Response<Body>,
    error: Option<String>,
}

async fn handle(st: &State, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let out = if parts.headers.contains_key("x-amz-target") {
        ecr(st, &parts, &body)
    } else {
        sts(st, &parts, &body)
    };
    lock(&st.log).push(AwsCall {
        action: out.action,
        region: out.region,
        status: out.response.status().as_u16(),
        error: out.error,
    });
    out.response
}

fn sts(st: &State, parts: &Parts, body: &[u8]) -> Outcome {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let action = form.get("Action").cloned().unwrap_or_default();
    let refuse = |status: StatusCode, code: &str, message: &str| Outcome {
        action: action.clone(),
        region: None,
        response: sts_error(status, code, message),
        error: Some(code.to_string()),
    };
    let form_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if parts.method != Method::POST || parts.uri.path() != "/" || !form_type {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "expected a form POSTed to /",
        );
    }
    if action != "AssumeRoleWithWebIdentity" {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            &format!("Could not find operation {action}"),
        );
    }
    if form.get("Version").map(String::as_str) != Some("2011-06-15") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue",
            "unknown Version",
        );
    }
    let session_ok = form.get("RoleSessionName").is_some_and(|s| {
        (2..=64).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    });
    if !session_ok {
        return refuse(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "1 validation error detected: Value at 'roleSessionName' failed to satisfy constraint",
        );
    }
    if form.get("WebIdentityToken") != Some(&st.web_identity_token) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "The web identity token was not issued by the identity provider the role trusts",
        );
    }
    if form.get("RoleArn") != Some(&st.role_arn) {
        return refuse(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        );
    }
    let keys = (|| -> anyhow::Result<(String, Issued)> {
        let id = format!(
            "ASIA{}",
            hex::encode(random_text(12)?.as_bytes())[..16].to_ascii_uppercase()
        );
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(SESSION_LIFETIME_SECS);
        Ok((
            id,
            Issued {
                secret: random_text(40)?,
                session_token: random_text(300)?,
                expires,
            },
        ))
    })();
    let (id, issued) = match keys {
        Ok(k) => k,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                &e.to_string(),
            );
        }
    };
    let xml = format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ido:ido</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>{arn}/{session}</Arn>
      <AssumedRoleId>AROAEXAMPLE:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expires}</Expiration>
      <AccessKeyId>{id}</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.example</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        arn = xml_escape(&st.role_arn),
        session = xml_escape(&form["RoleSessionName"]),
        token = issued.session_token,
        secret = issued.secret,
        expires = issued.expires,
    );
    lock(&st.issued).insert(id, issued);
    Outcome {
        action,
        region: None,
        response: text_response(StatusCode::OK, "text/xml", xml),
        error: None,
    }
}

fn ecr(st: &State, parts: &Parts, body: &[u8]) -> Outcome {
    let target = header_str(&parts.headers, "x-amz-target").unwrap_or_default();
    let action = target.rsplit('.').next().unwrap_or_default().to_string();
    let mut region = None;
    let result = (|| {
        if target != ECR_TARGET {
            return Err(("UnknownOperationException", format!("unknown operation {target}")));
        }
        if parts.method != Method::POST || parts.uri.path() != "/" {
            return Err(("UnknownOperationException", "expected POST /".into()));
        }
        if header_str(&parts.headers, "content-type") != Some("application/x-amz-json-1.1") {
            return Err((
                "SerializationException",
                "Content-Type must be application/x-amz-json-1.1".into(),
            ));
        }
        let auth = verify(st, parts, body)?;
        region = Some(auth.region.clone());
        Ok(auth)
    })();
    let response = match &result {
        Ok(auth) => {
            let lifetime = *lock(&st.ecr_token_lifetime);
            let expires = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0 + lifetime.as_secs_f64();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{}", st.ecr_password));
            let json = serde_json::json!({"authorizationData": [{
                "authorizationToken": token,
                "expiresAt": expires,
                "proxyEndpoint": format!("https://{ACCOUNT}.dkr.ecr.{}.amazonaws.com", auth.region),
            }]});
            text_response(StatusCode::OK, "application/x-amz-json-1.1", json.to_string())
        }
        Err((code, message)) => {
            let mut r = text_response(
                StatusCode::BAD_REQUEST,
                "application/x-amz-json-1.1",
                serde_json::json!({"__type": code, "message": message}).to_string(),
            );
            if let Ok(v) = header::HeaderValue::from_str(code) {
                r.headers_mut().insert("x-amzn-errortype", v);
            }
            r
        }
    };
    Outcome {
        action,
        region,
        response,
        error: result.err().map(|(code, _)| code.to_string()),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn sts_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error>
  <RequestId>00000000-0000-0000-0000-000000000000</RequestId>
</ErrorResponse>"#,
        xml_escape(code),
        xml_escape(message)
    );
    text_response(status, "text/xml", xml)
}

mod sigv4;
#[cfg(test)]
mod tests;
