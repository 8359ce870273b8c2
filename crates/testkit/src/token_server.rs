//! A Docker registry token server on loopback (the protocol of Docker Hub, GHCR, Quay and
//! Harbor): `GET /token?service=…&scope=repository:NAME:pull,push` with optional HTTP basic
//! auth answers a JWT (ES256, its certificate in the `x5c` header) granting, per requested
//! scope, the intersection of what was asked and what a [`TokenPolicy`] allows.
//!
//! `docker-registry` trusts the tokens through `auth: token: rootcertbundle:`
//! ([`TokenServer::root_cert_bundle`]); [`crate::registry::DockerRegistry::start_with_token`]
//! wires both together. Every request is recorded ([`TokenServer::requests`]).

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};

use crate::serve::ThreadServer;
use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, Response, StatusCode, header},
};
use base64::Engine;
use rustls::{
    SignatureScheme,
    crypto::ring::sign::any_ecdsa_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::SigningKey,
};
use serde_json::json;
use tempfile::TempDir;

use crate::tls::TestCa;

/// Seconds a token is valid (`expires_in`).
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// The message of the 401 answered to unknown users and wrong passwords.
pub const INVALID_CREDENTIALS: &str = "invalid username or password for token server";

/// One `scope`: `TYPE:NAME:ACTION,ACTION` (e.g. `repository:team/app:pull,push`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    /// `repository` for images (other types are never granted anything).
    pub kind: String,
    /// The repository name.
    pub name: String,
    /// `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses `TYPE:NAME:ACTIONS` (the name may hold `:`, e.g. a host with a port).
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Self {
            kind: kind.into(),
            name: name.into(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect(),
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// What a user may do with the repositories whose name starts with `repo_prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRule {
    /// The user name the rule applies to.
    pub user: String,
    /// Repository name prefix (`""` for every repository).
    pub repo_prefix: String,
    /// Allowed actions (`pull`, `push`, `delete`; `*` for all).
    pub actions: Vec<String>,
}

/// Who may authenticate and what each user may do.
#[derive(Clone, Debug, Default)]
pub struct TokenPolicy {
    /// `(user, password)` in the order they were added.
    pub users: Vec<(String, String)>,
    /// Access rules for authenticated users; a scope's action is granted if any rule allows it.
    pub rules: Vec<AccessRule>,
    /// Everyone (anonymous or not) may pull every repository.
    pub anonymous_pull: bool,
}

impl TokenPolicy {
    /// No users, no rules, no anonymous pull.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces the password of) a user.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.users.retain(|(u, _)| u != user);
        self.users.push((user.into(), password.into()));
        self
    }

    /// Lets `user` do `actions` on repositories whose name starts with `repo_prefix`.
    pub fn allow(mut self, user: &str, repo_prefix: &str, actions: &[&str]) -> Self {
        self.rules.push(AccessRule {
            user: user.into(),
            repo_prefix: repo_prefix.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        });
        self
    }

    /// Lets everyone, anonymous included, pull every repository.
    pub fn anonymous_pull(mut self, allowed: bool) -> Self {
        self.anonymous_pull = allowed;
        self
    }

    fn check_password(&self, user: &str, password: &str) -> bool {
        self.users.iter().any(|(u, p)| u == user && p == password)
    }

    /// The part of `asked` that `user` (`None`: anonymous) may have; `None` if nothing.
    pub fn grant(&self, user: Option<&str>, asked: &Scope) -> Option<Scope> {
        if asked.kind != "repository" {
            return None;
        }
        let mut actions: Vec<String> = vec![];
        for a in &asked.actions {
            let allowed = (self.anonymous_pull && a == "pull")
                || user.is_some_and(|u| {
                    self.rules.iter().any(|r| {
                        r.user == u
                            && asked.name.starts_with(&r.repo_prefix)
                            && r.actions.iter().any(|x| x == a || x == "*")
                    })
                });
            if allowed && !actions.contains(a) {
                actions.push(a.clone());
            }
        }
        (!actions.is_empty()).then(|| Scope {
            kind: asked.kind.clone(),
            name: asked.name.clone(),
            actions,
        })
    }
}

/// One request the token server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The basic-auth user name presented (`None`: anonymous), even if refused.
    pub user: Option<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// Scopes asked, in request order.
    pub requested: Vec<Scope>,
    /// Scopes granted (only those with at least one action).
    pub granted: Vec<Scope>,
    /// HTTP status answered (200, or 401 for bad credentials).
    pub status: u16,
}

struct State {
    policy: TokenPolicy,
    service: String,
    issuer: String,
    key: Arc<dyn SigningKey>,
    x5c: String,
    log: Mutex<Vec<TokenRequest>>,
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    _server: ThreadServer,
    dir: TempDir,
}

impl fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("service", &self.state.service)
            .finish_non_exhaustive()
    }
}

impl TokenServer {
    /// Starts a token server on `127.0.0.1:0` for `service`, with a fresh ECDSA P-256
    /// signing key and self-signed certificate; HTTPS with `tls`'s server certificate when
    /// given. It runs on its own thread, so it answers whatever the caller's runtime does.
    pub fn start(policy: TokenPolicy, service: &str, tls: Option<&TestCa>) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("ido-token-")
            .tempdir()
            .context("creating the token server's directory")?;
        let cert_path = dir.path().join("token.crt");
        let key_path = dir.path().join("token.key");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "3650", "-subj", "/CN=ido test token signer"])
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .output()
            .context("running openssl for the token signing key")?;
        if !out.status.success() {
            bail!(
                "openssl (token signing key) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let key_der = PrivateKeyDer::from_pem_file(&key_path).context("reading the token signing key")?;
        let key = any_ecdsa_type(&key_der).context("loading the token signing key")?;
        let cert =
            CertificateDer::from_pem_file(&cert_path).context("reading the token signing certificate")?;
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());

        let tls_config = match tls {
            Some(ca) => {
                let certs = CertificateDer::pem_file_iter(&ca.server_cert)
                    .context("reading the server certificate")?
                    .collect::<Result<Vec<_>, _>>()
                    .context("parsing the server certificate")?;
                let key = PrivateKeyDer::from_pem_file(&ca.server_key).context("reading the server key")?;
                let cfg = rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .context("building the token server's TLS config")?;
                Some(Arc::new(cfg))
            }
            None => None,
        };

        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the token server to 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            policy,
            service: service.into(),
            issuer: format!("ido-test-token-server-{}", addr.port()),
            key,
            x5c,
            log: Mutex::default(),
        });
        let st = state.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let st = st.clone();
            async move { handle(&st, req) }
        });
        let server = ThreadServer::start("ido-token-server", listener, app, tls_config)?;
        Ok(Self {
            addr,
            tls: tls.is_some(),
            state,
            _server: server,
            dir,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token endpoint, `http(s)://127.0.0.1:PORT/token` (the registry's `realm`).
    pub fn realm(&self) -> String {
        format!(
            "{}://{}/token",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// The `service` (the tokens' audience).
    pub fn service(&self) -> &str {
        &self.state.service
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// The certificate (PEM) of the signing key, for the registry's `rootcertbundle`.
    pub fn root_cert_bundle(&self) -> PathBuf {
        self.dir.path().join("token.crt")
    }

    /// The policy it enforces.
    pub fn policy(&self) -> &TokenPolicy {
        &self.state.policy
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The directory holding its key and certificate.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = json_response(
        status,
        json!({"errors": [{"code": code, "message": message, "detail": null}]}),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"ido test token server\""),
        );
    }
    r
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.into(), p.into()))
}

fn handle(st: &State, req: Request<Body>) -> Response<Body> {
    if req.uri().path() != "/token" {
        return error_response(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint");
    }
    if req.method() != Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "only GET is supported",
        );
    }
    let mut service = None;
    let mut requested = vec![];
    let mut malformed = vec![];
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "service" => service = Some(v.into_owned()),
            "scope" => {
                for s in v.split_whitespace() {
                    match Scope::parse(s) {
                        Some(scope) => requested.push(scope),
                        None => malformed.push(s.to_string()),
                    }
                }
            }
            _ => {}
        }
    }
    let creds = basic_auth(req.headers());
    let has_auth_header = req.headers().contains_key(header::AUTHORIZATION);
    let mut record = TokenRequest {
        user: creds.as_ref().map(|(u, _)| u.clone()),
        service: service.clone(),
        requested: requested.clone(),
        granted: vec![],
        status: 0,
    };
    let answer = (|| {
        if !malformed.is_empty() {
            return Err((
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                format!("malformed scope: {}", malformed.join(" ")),
            ));
        }
        if service.as_deref().is_some_and(|s| s != st.service) {
            return Err((
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                format!("unknown service {:?}", service.as_deref().unwrap_or("")),
            ));
        }
        let user = match &creds {
            Some((u, p)) if st.policy.check_password(u, p) => Some(u.as_str()),
            None if !has_auth_header => None,
            _ => {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    INVALID_CREDENTIALS.to_string(),
                ));
            }
        };
        let granted: Vec<Scope> = requested
            .iter()
            .filter_map(|s| st.policy.grant(user, s))
            .collect();
        let token = sign_token(st, user.unwrap_or(""), &granted)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e))?;
        Ok((granted, token))
    })();
    let response = match answer {
        Ok((granted, (token, issued_at))) => {
            record.granted = granted;
            json_response(
                StatusCode::OK,
                json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_LIFETIME_SECS,
                    "issued_at": rfc3339(issued_at),
                }),
            )
        }
        Err((status, code, message)) => error_response(status, code, &message),
    };
    record.status = response.status().as_u16();
    st.log.lock().unwrap_or_else(|e| e.into_inner()).push(record);
    response
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A signed JWT for `sub` granting `access`, and its issue time (Unix seconds).
fn sign_token(st: &State, sub: &str, access: &[Scope]) -> Result<(String, u64), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let jti = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(now.to_le_bytes());
        h.update(sub.as_bytes());
        h.update(crate::time_seed().to_le_bytes());
        hex::encode(&h.finalize()[..16])
    };
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [st.x5c]});
    let claims = json!({
        "iss": st.issuer,
        "sub": sub,
        "aud": st.service,
        "exp": now + TOKEN_LIFETIME_SECS,
        "nbf": now.saturating_sub(5),
        "iat": now,
        "jti": jti,
        "access": access.iter().map(|s| json!({
            "type": s.kind, "name": s.name, "actions": s.actions,
        })).collect::<Vec<_>>(),
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signer = st
        .key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .ok_or("the signing key cannot do ES256")?;
    let der = signer.sign(input.as_bytes()).map_err(|e| e.to_string())?;
    let raw = ecdsa_der_to_raw(&der, 32).ok_or("unexpected ECDSA signature encoding")?;
    Ok((format!("{input}.{}", b64url(&raw)), now))
}

/// An ASN.1 `SEQUENCE { INTEGER r, INTEGER s }` as the fixed-width `r || s` JWS wants.
fn ecdsa_der_to_raw(der: &[u8], width: usize) -> Option<Vec<u8>> {
    fn len_at(d: &[u8], i: usize) -> Option<(usize, usize)> {
        let b = *d.get(i)?;
        if b < 0x80 {
            return Some((b as usize, i + 1));
        }
        let n = (b & 0x7f) as usize;
        if n == 0 || n > 2 {
            return None;
        }
        let mut len = 0usize;
        for k in 0..n {
            len = (len << 8) | *d.get(i + 1 + k)? as usize;
        }
        Some((len, i + 1 + n))
    }
    if *der.first()? != 0x30 {
        return None;
    }
    let (seq_len, mut i) = len_at(der, 1)?;
    if i + seq_len != der.len() {
        return None;
    }
    let mut out = vec![];
    for _ in 0..2 {
        if *der.get(i)? != 0x02 {
            return None;
        }
        let (len, start) = len_at(der, i + 1)?;
        let mut int = der.get(start..start + len)?;
        while int.len() > 1 && int[0] == 0 {
            int = &int[1..];
        }
        if int.len() > width {
            return None;
        }
        out.extend(std::iter::repeat_n(0u8, width - int.len()));
        out.extend_from_slice(int);
        i = start + len;
    }
    (i == der.len()).then_some(out)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
fn rfc3339(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
