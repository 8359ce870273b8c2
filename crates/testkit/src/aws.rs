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
use sha2::{Digest, Sha256};

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

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, PartialEq, Eq)]
struct Authorization {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

impl Authorization {
    fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            fields.insert(k, v);
        }
        let scope: Vec<&str> = fields.get("Credential")?.split('/').collect();
        let [id, date, region, service, "aws4_request"] = scope.as_slice() else {
            return None;
        };
        Some(Self {
            access_key_id: id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers: fields
                .get("SignedHeaders")?
                .split(';')
                .map(String::from)
                .collect(),
            signature: fields.get("Signature")?.to_string(),
        })
    }
}

type Refusal = (&'static str, String);

/// Checks the SigV4 signature of an ECR request: the keys must be ones issued here, unexpired,
/// with their session token; the date recent; the signature the one computed here.
fn verify(st: &State, parts: &Parts, body: &[u8]) -> Result<Authorization, Refusal> {
    let Some(value) = header_str(&parts.headers, "authorization") else {
        return Err((
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".into(),
        ));
    };
    let auth = Authorization::parse(value).ok_or((
        "IncompleteSignatureException",
        "Authorization header requires Credential, SignedHeaders and Signature".to_string(),
    ))?;
    let invalid_token = || {
        (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_string(),
        )
    };
    let issued = lock(&st.issued)
        .get(&auth.access_key_id)
        .cloned()
        .ok_or_else(invalid_token)?;
    if header_str(&parts.headers, "x-amz-security-token") != Some(issued.session_token.as_str()) {
        return Err(invalid_token());
    }
    if jiff::Timestamp::now() >= issued.expires {
        return Err((
            "ExpiredTokenException",
            "The security token included in the request is expired".into(),
        ));
    }
    if auth.service != "ecr" {
        return Err((
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to correct service: 'ecr', not '{}'",
                auth.service
            ),
        ));
    }
    for needed in ["host", "x-amz-date", "x-amz-security-token"] {
        if !auth.signed_headers.iter().any(|h| h == needed) {
            return Err((
                "InvalidSignatureException",
                format!("'{needed}' must be a signed header"),
            ));
        }
    }
    let amz_date = header_str(&parts.headers, "x-amz-date").unwrap_or_default();
    let when = parse_amz_date(amz_date).ok_or((
        "IncompleteSignatureException",
        "X-Amz-Date must be YYYYMMDDTHHMMSSZ".to_string(),
    ))?;
    if !amz_date.starts_with(&auth.date) {
        return Err((
            "InvalidSignatureException",
            "Credential should be scoped to a valid date".into(),
        ));
    }
    let skew = (jiff::Timestamp::now().as_second() - when.as_second()).abs();
    if skew > MAX_SKEW_SECS {
        return Err((
            "InvalidSignatureException",
            format!("Signature expired: {amz_date} is more than {MAX_SKEW_SECS} s from now"),
        ));
    }
    let expected = signature(
        &issued.secret,
        &auth,
        amz_date,
        &canonical_request(parts, &auth, body),
    );
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err((
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method."
                .into(),
        ));
    }
    Ok(auth)
}

fn parse_amz_date(s: &str) -> Option<jiff::Timestamp> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
    .parse()
    .ok()
}

/// The canonical request of a received request, for the headers `auth` says were signed.
fn canonical_request(parts: &Parts, auth: &Authorization, body: &[u8]) -> String {
    let path: String = parts
        .uri
        .path()
        .split('/')
        .map(aws_encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<String> = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| format!("{}={}", aws_encode(&k), aws_encode(&v)))
        .collect();
    query.sort();
    let mut headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = parts
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        headers += &format!("{name}:{}\n", values.join(","));
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method,
        if path.is_empty() { "/".into() } else { path },
        query.join("&"),
        headers,
        auth.signed_headers.join(";"),
        hex::encode(Sha256::digest(body))
    )
}

/// The hex signature of `canonical_request` under `secret` and `auth`'s scope.
fn signature(secret: &str, auth: &Authorization, amz_date: &str, canonical_request: &str) -> String {
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k_region = hmac_sha256(&k_date, auth.region.as_bytes());
    let k_service = hmac_sha256(&k_region, auth.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    hex::encode(hmac_sha256(&k_signing, to_sign.as_bytes()))
}

/// HMAC-SHA256 (RFC 2104) written out on a hash.
fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

fn aws_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// The signature recomputed from a request of AWS's SigV4 test suite (its `.req` and
    /// `.authz` files) equals the suite's.
    fn suite_check(method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8], authz: &str) {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, _) = b.body(()).unwrap().into_parts();
        let auth = Authorization::parse(authz).unwrap();
        assert_eq!(auth.region, "us-east-1");
        let got = signature(
            SUITE_SECRET,
            &auth,
            "20150830T123600Z",
            &canonical_request(&parts, &auth, body),
        );
        assert_eq!(got, auth.signature, "{uri} {headers:?}");
    }

    #[test]
    fn verifier_matches_the_aws_test_suite() {
        let c = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
        let host = ("Host", "example.amazonaws.com");
        let date = ("X-Amz-Date", "20150830T123600Z");
        suite_check(
            "GET",
            "/",
            &[host, date],
            b"",
            &format!(
                "{c}, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            ),
        );
        suite_check(
            "GET",
            "/?Param2=value2&Param1=value1",
            &[host, date],
            b"",
            &format!(
                "{c}, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
            ),
        );
        suite_check(
            "POST",
            "/",
            &[("Content-Type", "application/x-www-form-urlencoded"), host, date],
            b"Param1=value1",
            &format!(
                "{c}, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
            ),
        );
        suite_check(
            "POST",
            "/",
            &[host, date, ("X-Amz-Security-Token", SUITE_TOKEN)],
            b"",
            &format!(
                "{c}, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
            ),
        );
    }

    /// Temporary keys from the stand-in's STS.
    async fn assume(http: &reqwest::Client, s: &AwsStandIn) -> (String, String, String) {
        let res = http
            .post(s.endpoint())
            .form(&[
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", "arn:aws:iam::123456789012:role/ido"),
                ("RoleSessionName", "unit"),
                ("WebIdentityToken", "jwt-1"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let xml = res.text().await.unwrap();
        let field = |name: &str| {
            let open = format!("<{name}>");
            let start = xml.find(&open).unwrap() + open.len();
            xml[start..start + xml[start..].find('<').unwrap()].to_string()
        };
        (
            field("AccessKeyId"),
            field("SecretAccessKey"),
            field("SessionToken"),
        )
    }

    /// An ECR request signed here (by the verifier's own functions) at `amz_date`.
    fn ecr_request(
        http: &reqwest::Client,
        s: &AwsStandIn,
        (id, secret, token): (&str, &str, Option<&str>),
        amz_date: &str,
    ) -> reqwest::RequestBuilder {
        let host = s.addr.to_string();
        let mut headers = vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("host", host.as_str()),
            ("x-amz-date", amz_date),
        ];
        if let Some(t) = token {
            headers.push(("x-amz-security-token", t));
        }
        headers.push(("x-amz-target", ECR_TARGET));
        let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
        let auth = Authorization {
            access_key_id: id.into(),
            date: amz_date[..8].into(),
            region: "eu-west-3".into(),
            service: "ecr".into(),
            signed_headers: signed.iter().map(|s| s.to_string()).collect(),
            signature: String::new(),
        };
        let mut b = Request::builder().method("POST").uri("/");
        for (k, v) in &headers {
            b = b.header(*k, *v);
        }
        let (parts, _) = b.body(()).unwrap().into_parts();
        let sig = signature(secret, &auth, amz_date, &canonical_request(&parts, &auth, b"{}"));
        let mut req = http.post(s.endpoint()).body("{}");
        for (k, v) in headers.iter().filter(|(k, _)| *k != "host") {
            req = req.header(*k, *v);
        }
        req.header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={id}/{}/eu-west-3/ecr/aws4_request, SignedHeaders={}, Signature={sig}",
                &amz_date[..8],
                signed.join(";")
            ),
        )
    }

    async fn refusal(req: reqwest::RequestBuilder) -> String {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 400);
        let json: serde_json::Value = res.json().await.unwrap();
        assert!(json["message"].is_string(), "{json}");
        json["__type"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn ecr_checks_signatures() {
        crate::install_crypto_provider();
        let s = AwsStandIn::start("arn:aws:iam::123456789012:role/ido", "jwt-1").unwrap();
        let http = reqwest::Client::new();
        let (id, secret, token) = assume(&http, &s).await;
        assert!(id.starts_with("ASIA") && secret.len() == 40 && token.len() == 300);
        let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();

        let res = ecr_request(&http, &s, (&id, &secret, Some(&token)), &now)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let json: serde_json::Value = res.json().await.unwrap();
        let data = &json["authorizationData"][0];
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data["authorizationToken"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, format!("AWS:{}", s.ecr_password()).as_bytes());
        assert!(data["expiresAt"].as_f64().unwrap() > jiff::Timestamp::now().as_second() as f64);

        // A wrong secret, a stale date, no or another session token, unknown keys, nothing.
        let wrong = ecr_request(&http, &s, (&id, "not-the-secret", Some(&token)), &now);
        assert_eq!(refusal(wrong).await, "InvalidSignatureException");
        let stale = (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(20))
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let old = ecr_request(&http, &s, (&id, &secret, Some(&token)), &stale);
        assert_eq!(refusal(old).await, "InvalidSignatureException");
        let no_token = ecr_request(&http, &s, (&id, &secret, None), &now);
        assert_eq!(refusal(no_token).await, "UnrecognizedClientException");
        let other_token = ecr_request(&http, &s, (&id, &secret, Some("AQoD-other")), &now);
        assert_eq!(refusal(other_token).await, "UnrecognizedClientException");
        let unknown = ecr_request(&http, &s, ("ASIAUNKNOWN", &secret, Some(&token)), &now);
        assert_eq!(refusal(unknown).await, "UnrecognizedClientException");
        let unsigned = http
            .post(s.endpoint())
            .header("x-amz-target", ECR_TARGET)
            .header("content-type", "application/x-amz-json-1.1")
            .body("{}");
        assert_eq!(refusal(unsigned).await, "MissingAuthenticationTokenException");
        // A body other than the one signed.
        let tampered = ecr_request(&http, &s, (&id, &secret, Some(&token)), &now).body("{ }");
        assert_eq!(refusal(tampered).await, "InvalidSignatureException");

        let calls = s.calls();
        assert_eq!(s.count("AssumeRoleWithWebIdentity"), 1);
        assert_eq!(s.count("GetAuthorizationToken"), 8);
        assert_eq!(calls[1].region.as_deref(), Some("eu-west-3"));
        assert_eq!((calls[1].status, calls[2].status), (200, 400));
    }

    #[tokio::test]
    async fn sts_checks_token_and_role() {
        crate::install_crypto_provider();
        let s = AwsStandIn::start("arn:aws:iam::123456789012:role/ido", "jwt-1").unwrap();
        let http = reqwest::Client::new();
        let call = |role: &'static str, token: &'static str| {
            http.post(s.endpoint())
                .form(&[
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role),
                    ("RoleSessionName", "unit"),
                    ("WebIdentityToken", token),
                ])
                .send()
        };
        let res = call("arn:aws:iam::123456789012:role/ido", "jwt-2").await.unwrap();
        assert_eq!(res.status(), 400);
        let body = res.text().await.unwrap();
        assert!(body.contains("<Code>InvalidIdentityToken</Code>"), "{body}");
        let res = call("arn:aws:iam::123456789012:role/other", "jwt-1")
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
        assert!(res.text().await.unwrap().contains("<Code>AccessDenied</Code>"));
        assert_eq!(s.count("AssumeRoleWithWebIdentity"), 2);
        assert!(s.calls().iter().all(|c| c.error.is_some()));
    }
}
