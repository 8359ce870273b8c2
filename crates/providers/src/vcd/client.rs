//! The typed VCD client: API version negotiation, cloudapi logins (a bearer access token),
//! one re-login and retry on 401, keepalive during long transfers, and XML helpers.
//!
//! ```text
//! GET /api/versions ──► lowest advertised version ≥ 37.0
//! POST /cloudapi/1.0.0/sessions[/provider]  (Basic user@org) ──► X-VMWARE-VCLOUD-ACCESS-TOKEN
//! every call: Authorization: Bearer <token>, Accept: application/*+xml;version=<v>
//!             401 ──► log in again (once per session generation) ──► same call again
//! ```

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::{
    RequestBuilder, Response,
    header::{ACCEPT, AUTHORIZATION, HeaderValue},
};
use tokio::sync::OnceCell;
use url::Url;

use super::error::{VcdError, check};
use ido_io::xml::Node;

/// Oldest API version this client speaks.
pub const MIN_VERSION: (u32, u32) = (37, 0);
/// Idle timeout assumed when the login does not say (VCD's default is 30 min).
const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);
/// Log in again this long (at most a quarter of the timeout) before the idle timeout
/// would end a session.
const IDLE_MARGIN: Duration = Duration::from_secs(60);
/// Largest XML answer accepted.
const MAX_XML: usize = 16 << 20;
/// Header carrying the access token of a cloudapi login.
const TOKEN_HEADER: &str = "x-vmware-vcloud-access-token";

/// Login credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// Organization to log in to (`System` for provider administrators).
    pub org: String,
    /// User name without the org.
    pub username: String,
    /// Password; sent only in the login call.
    pub password: String,
}

impl Login {
    /// Whether this is a provider (`System`) login.
    pub fn is_system(&self) -> bool {
        self.org.eq_ignore_ascii_case("system")
    }
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("org", &self.org)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How a request counts for the session: VCD resets the idle timer on API calls only,
/// not on transfer PUTs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// A call under `/api`.
    Api,
    /// A PUT to a transfer URL.
    Transfer,
}

/// The VCD client. Cheap to clone; all clones share one session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    login: Login,
    refresh_after: Duration,
    version: OnceCell<String>,
    /// Serializes logins; holds the current session.
    session: tokio::sync::Mutex<Slot>,
    last_api: Mutex<Instant>,
    logins: AtomicU64,
}

#[derive(Default)]
struct Slot {
    current: Option<Session>,
    generation: u64,
}

struct Session {
    token: String,
    generation: u64,
    created: Instant,
    idle: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base.as_str())
            .field("login", &self.inner.login)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the VCD at `base` (`https://host/`). Does not connect: the first call
    /// negotiates the version and logs in. Sessions older than `refresh_after` are renewed.
    pub fn new(http: reqwest::Client, base: Url, login: Login, refresh_after: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                base,
                login,
                refresh_after,
                version: OnceCell::new(),
                session: tokio::sync::Mutex::new(Slot::default()),
                last_api: Mutex::new(Instant::now()),
                logins: AtomicU64::new(0),
            }),
        }
    }

    /// The endpoint root, e.g. `https://vcd.example.com/`.
    pub fn base(&self) -> &Url {
        &self.inner.base
    }

    /// The login's organization.
    pub fn org(&self) -> &str {
        &self.inner.login.org
    }

    /// Whether the login is a provider administrator (queries use the `admin*` types).
    pub fn is_system(&self) -> bool {
        self.inner.login.is_system()
    }

    /// Successful logins so far.
    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::Relaxed)
    }

    /// `<base>api/<rest>`.
    pub fn api_url(&self, rest: &str) -> String {
        format!("{}api/{rest}", self.inner.base)
    }

    /// The negotiated API version (asked once per client).
    pub async fn version(&self) -> Result<&str, VcdError> {
        self.inner
            .version
            .get_or_try_init(|| self.negotiate())
            .await
            .map(String::as_str)
    }

    async fn negotiate(&self) -> Result<String, VcdError> {
        let url = self.api_url("versions");
        let what = format!("GET {url}");
        let resp = self
            .inner
            .http
            .get(&url)
            .header(ACCEPT, "application/*+xml")
            .send()
            .await
            .map_err(|e| VcdError::transport(&what, e))?;
        let root = read_xml(check(resp, &what).await?, &what).await?;
        let advertised: Vec<&str> = root
            .children_named("VersionInfo")
            .filter_map(|v| v.text_at("Version"))
            .map(str::trim)
            .collect();
        let chosen = advertised
            .iter()
            .filter_map(|v| parse_version(v).map(|n| (n, *v)))
            .filter(|(n, _)| *n >= MIN_VERSION)
            .min_by_key(|(n, _)| *n)
            .map(|(_, v)| v.to_string());
        let version = chosen.ok_or_else(|| {
            VcdError::protocol(
                &what,
                format!(
                    "VCD offers API versions {advertised:?}; this client needs {}.{} or later",
                    MIN_VERSION.0, MIN_VERSION.1
                ),
            )
        })?;
        tracing::debug!(base = %self.inner.base, %version, "negotiated the VCD API version");
        Ok(version)
    }

    /// A valid session token and its generation, logging in when there is none or the
    /// current one is too old or idle too long.
    async fn session(&self) -> Result<(String, u64), VcdError> {
        let mut slot = self.inner.session.lock().await;
        let idle_for = self
            .inner
            .last_api
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if let Some(s) = &slot.current {
            let margin = IDLE_MARGIN.min(s.idle / 4);
            if s.created.elapsed() < self.inner.refresh_after && idle_for + margin < s.idle {
                return Ok((s.token.clone(), s.generation));
            }
            tracing::debug!(age = ?s.created.elapsed(), ?idle_for, "renewing the VCD session");
        }
        slot.generation += 1;
        let session = self.login(slot.generation).await?;
        let out = (session.token.clone(), session.generation);
        slot.current = Some(session);
        self.touch();
        Ok(out)
    }

    /// Forgets the session of `generation` (a 401 said it is gone); a newer one is kept.
    async fn invalidate(&self, generation: u64) {
        let mut slot = self.inner.session.lock().await;
        if slot.current.as_ref().is_some_and(|s| s.generation == generation) {
            slot.current = None;
        }
    }

    async fn login(&self, generation: u64) -> Result<Session, VcdError> {
        let version = self.version().await?.to_string();
        let l = &self.inner.login;
        let path = if l.is_system() {
            "cloudapi/1.0.0/sessions/provider"
        } else {
            "cloudapi/1.0.0/sessions"
        };
        let url = format!("{}{path}", self.inner.base);
        let who = format!("{}@{}", l.username, l.org);
        let what = format!("login to {} as {who}", self.inner.base);
        let resp = self
            .inner
            .http
            .post(&url)
            .basic_auth(&who, Some(&l.password))
            .header(ACCEPT, format!("application/json;version={version}"))
            .send()
            .await
            .map_err(|e| VcdError::transport(&what, e))?;
        let resp = match check(resp, &what).await {
            Err(VcdError::Api { status: 403, .. }) => return Err(VcdError::Unauthorized { what }),
            r => r?,
        };
        let token = resp
            .headers()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| VcdError::protocol(&what, "no X-VMWARE-VCLOUD-ACCESS-TOKEN header"))?
            .to_string();
        let body = resp.bytes().await.unwrap_or_default();
        let idle = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("sessionIdleTimeoutMinutes")?.as_u64())
            .filter(|m| *m > 0)
            .map(|m| Duration::from_secs(m * 60))
            .unwrap_or(DEFAULT_IDLE);
        self.inner.logins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(base = %self.inner.base, user = %who, %version, idle_timeout = ?idle, "logged in to VCD");
        Ok(Session {
            token,
            generation,
            created: Instant::now(),
            idle,
        })
    }

    fn touch(&self) {
        if let Ok(mut t) = self.inner.last_api.lock() {
            *t = Instant::now();
        }
    }

    /// Sends the request `make` builds, authenticated; on 401 logs in again and sends it
    /// once more. Returns the 2xx response or the error [`check`] makes of it.
    pub async fn send(
        &self,
        what: &str,
        usage: Use,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, VcdError> {
        let mut retried = false;
        loop {
            let (token, generation) = self.session().await?;
            let version = self.version().await?;
            let mut req = make(&self.inner.http)
                .build()
                .map_err(|e| VcdError::transport(what, e))?;
            let h = req.headers_mut();
            let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| VcdError::protocol(what, "the access token is not a valid header value"))?;
            auth.set_sensitive(true);
            h.insert(AUTHORIZATION, auth);
            if !h.contains_key(ACCEPT) {
                let accept = HeaderValue::from_str(&format!("application/*+xml;version={version}"))
                    .map_err(|_| VcdError::protocol(what, "bad API version"))?;
                h.insert(ACCEPT, accept);
            }
            let resp = self
                .inner
                .http
                .execute(req)
                .await
                .map_err(|e| VcdError::transport(what, e))?;
            if resp.status().as_u16() == 401 && !retried {
                tracing::info!(what, "VCD session expired or revoked; logging in again");
                self.invalidate(generation).await;
                retried = true;
                continue;
            }
            let resp = check(resp, what).await?;
            if usage == Use::Api {
                self.touch();
            }
            return Ok(resp);
        }
    }

    /// Keeps the session from idling out during long transfers (which do not count as
    /// activity): a cheap query once a third of the idle timeout has passed.
    pub async fn keep_alive(&self) {
        let idle = {
            let slot = self.inner.session.lock().await;
            slot.current.as_ref().map_or(DEFAULT_IDLE, |s| s.idle)
        };
        let idle_for = self
            .inner
            .last_api
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if idle_for < idle / 3 {
            return;
        }
        let url = self.api_url("query?type=task&format=records&page=1&pageSize=1");
        if let Err(e) = self.get("keepalive query", &url).await {
            tracing::warn!(error = %e, "VCD keepalive query failed");
        }
    }
}

pub(super) async fn read_xml(resp: Response, what: &str) -> Result<Node, VcdError> {
    let body = resp.bytes().await.map_err(|e| VcdError::transport(what, e))?;
    if body.len() > MAX_XML {
        return Err(VcdError::protocol(
            what,
            format!("answer of {} bytes is too large", body.len()),
        ));
    }
    let text = String::from_utf8_lossy(&body);
    Node::parse(text.trim_start_matches('\u{feff}'))
        .map_err(|e| VcdError::protocol(what, format!("not XML: {e}")))
}

/// `"37.0"` → `(37, 0)`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()
        .map(|m| m.chars().take_while(char::is_ascii_digit).collect::<String>())
        .map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(parse_version("37.0"), Some((37, 0)));
        assert_eq!(parse_version("38.1"), Some((38, 1)));
        assert_eq!(parse_version("5.5"), Some((5, 5)));
        assert_eq!(parse_version("39"), Some((39, 0)));
        assert_eq!(parse_version("x"), None);
        assert!(parse_version("36.3").unwrap() < MIN_VERSION);
    }

    #[test]
    fn login_debug_hides_password() {
        let l = Login {
            org: "o".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{l:?}").contains("hunter2"));
    }
}
