//! The typed vim25 client: session handling (lazy login, re-login on `NotAuthenticated`,
//! keepalive) and the methods the provider needs.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::OnceCell, task::JoinHandle};
use url::Url;

use super::{
    soap::{Fault, Response, SoapError, Transport},
    xml::{MoRef, Node, NodeExt as _, Writer},
};

/// How often an idle session is kept alive with `CurrentTime` (vCenter's default idle
/// timeout is 30 min; govmomi uses 10).
pub const KEEPALIVE: Duration = Duration::from_secs(5 * 60);
/// Longest wait for a task.
const TASK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Login credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// User name, e.g. `administrator@vsphere.local`.
    pub username: String,
    /// Password; sent only in the `Login` call.
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What `RetrieveServiceContent` says (the managers this client uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceContent {
    /// The inventory root (`group-d1`).
    pub root_folder: MoRef,
    /// The PropertyCollector (`RetrievePropertiesEx`).
    pub property_collector: MoRef,
    /// The SearchIndex (`FindByInventoryPath`).
    pub search_index: MoRef,
    /// The SessionManager (`Login`, `Logout`).
    pub session_manager: MoRef,
    /// The OvfManager (`CreateImportSpec`).
    pub ovf_manager: MoRef,
    /// `about/apiVersion`, e.g. `6.5`.
    pub api_version: String,
}

/// One object of a `RetrievePropertiesEx` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectContent {
    /// The object.
    pub obj: Option<MoRef>,
    /// Retrieved properties: path and `val` element.
    pub props: Vec<(String, Node)>,
    /// Paths that could not be read, with their fault.
    pub missing: Vec<(String, Fault)>,
}

impl ObjectContent {
    /// The `val` of `path`; `None` when unset (vCenter leaves unset properties out).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }
    /// The text of `path`.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.get(path).map(|v| v.text.trim())
    }
    /// `path` as a boolean.
    pub fn bool(&self, path: &str) -> Option<bool> {
        self.get(path).and_then(Node::as_bool)
    }
}

/// A `RetrievePropertiesEx` query: `paths` of objects of type `kind`, read from `obj`
/// itself, or (with `traverse = (type, path)`) from the objects one traversal step away.
#[derive(Clone, Copy, Debug)]
pub struct PropertyQuery<'a> {
    /// The starting object.
    pub obj: &'a MoRef,
    /// Type of the objects whose properties are read (subtypes included).
    pub kind: &'a str,
    /// Property paths, e.g. `runtime.powerState`.
    pub paths: &'a [&'a str],
    /// One TraversalSpec step `(type, path)` from `obj`, e.g. `("ComputeResource", "host")`.
    pub traverse: Option<(&'a str, &'a str)>,
}

/// The vim25 client. Cheap to clone; all clones share one session.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    login: Login,
    service: OnceCell<ServiceContent>,
    /// Serializes logins; holds the session generation (bumped at every login).
    session: tokio::sync::Mutex<u64>,
    logins: AtomicU64,
    last_call: Mutex<Instant>,
    keepalive_every: Duration,
    keepalive: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", self.transport.url())
            .field("login", &self.login)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.keepalive.get_mut().ok().and_then(Option::take) {
            h.abort();
        }
    }
}

impl Client {
    /// A client of the SDK endpoint `url`. Does not connect: the first call logs in.
    /// `keepalive` is the idle time after which `CurrentTime` keeps the session alive.
    pub fn new(http: reqwest::Client, url: Url, login: Login, keepalive: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                transport: Transport::new(http, url),
                login,
                service: OnceCell::new(),
                session: tokio::sync::Mutex::new(0),
                logins: AtomicU64::new(0),
                last_call: Mutex::new(Instant::now()),
                keepalive_every: keepalive,
                keepalive: Mutex::new(None),
            }),
        }
    }

    /// The SDK endpoint.
    pub fn url(&self) -> &Url {
        self.inner.transport.url()
    }

    /// The HTTP client (shared TLS settings).
    pub fn http(&self) -> &reqwest::Client {
        self.inner.transport.http()
    }

    /// The current session cookie, if logged in.
    pub fn session_cookie(&self) -> Option<String> {
        self.inner.transport.cookie()
    }

    /// How many logins succeeded so far (1 + re-logins after expiry).
    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::Relaxed)
    }

    /// `RetrieveServiceContent`, once per client.
    pub async fn service_content(&self) -> Result<&ServiceContent, SoapError> {
        self.inner
            .service
            .get_or_try_init(|| async {
                let si = MoRef::new("ServiceInstance", "ServiceInstance");
                let body = Writer::call("RetrieveServiceContent", &si).finish("RetrieveServiceContent");
                let r = self.inner.transport.call("RetrieveServiceContent", &body).await?;
                parse_service_content(&r)
            })
            .await
    }

    /// `Login` with the configured credentials (drops any current cookie first).
    pub async fn login(&self) -> Result<(), SoapError> {
        let mut generation = self.inner.session.lock().await;
        self.login_locked(&mut generation).await
    }

    async fn login_locked(&self, generation: &mut u64) -> Result<(), SoapError> {
        let sm = self.service_content().await?.session_manager.clone();
        self.inner.transport.clear_cookie();
        let mut w = Writer::call("Login", &sm);
        w.text("userName", &self.inner.login.username)
            .text("password", &self.inner.login.password);
        if let Err(e) = self.inner.transport.call("Login", &w.finish("Login")).await {
            self.inner.transport.clear_cookie();
            return Err(e);
        }
        if self.inner.transport.cookie().is_none() {
            return Err(SoapError::response("Login", "no session cookie in the answer"));
        }
        *generation += 1;
        self.inner.logins.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(url = %self.url(), user = %self.inner.login.username, "vSphere session established");
        self.start_keepalive();
        Ok(())
    }

    /// `Logout`; the next call logs in again.
    pub async fn logout(&self) -> Result<(), SoapError> {
        let _guard = self.inner.session.lock().await;
        if self.inner.transport.cookie().is_none() {
            return Ok(());
        }
        let sm = self.service_content().await?.session_manager.clone();
        let r = self
            .inner
            .transport
            .call("Logout", &Writer::call("Logout", &sm).finish("Logout"))
            .await;
        self.inner.transport.clear_cookie();
        match r {
            Err(e) if !e.is_not_authenticated() => Err(e),
            _ => Ok(()),
        }
    }

    /// Runs `f` in a session: logs in first if needed, and on `NotAuthenticated` (expired
    /// session) logs in again and runs `f` once more.
    pub async fn with_session<T, F, Fut>(&self, f: F) -> Result<T, SoapError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SoapError>>,
    {
        let generation = {
            let mut g = self.inner.session.lock().await;
            if self.inner.transport.cookie().is_none() {
                self.login_locked(&mut g).await?;
            }
            *g
        };
        *self.inner.last_call.lock().expect("lock") = Instant::now();
        match f().await {
            Err(e) if e.is_not_authenticated() => {
                {
                    let mut g = self.inner.session.lock().await;
                    // Another call may have logged in again meanwhile.
                    if *g == generation {
                        tracing::info!(url = %self.url(), "vSphere session expired, logging in again");
                        self.login_locked(&mut g).await?;
                    }
                }
                f().await
            }
            r => r,
        }
    }

    /// Calls `method` on `this` with `params` (XML in WSDL order) in a session.
    pub async fn invoke(
        &self,
        method: &'static str,
        this: &MoRef,
        params: &str,
    ) -> Result<Response, SoapError> {
        let mut w = Writer::call(method, this);
        w.raw(params);
        let body = w.finish(method);
        self.with_session(|| self.inner.transport.call(method, &body))
            .await
    }

    fn start_keepalive(&self) {
        let mut slot = self.inner.keepalive.lock().expect("lock");
        if slot.is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = self.inner.keepalive_every;
        *slot = Some(rt.spawn(async move {
            loop {
                let due = {
                    let Some(inner) = weak.upgrade() else { return };
                    let idle = inner.last_call.lock().expect("lock").elapsed();
                    every.saturating_sub(idle)
                };
                tokio::time::sleep(due.max(Duration::from_millis(50))).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.last_call.lock().expect("lock").elapsed() < every
                    || inner.transport.cookie().is_none()
                {
                    continue;
                }
                let client = Client { inner };
                if let Err(e) = client.current_time().await {
                    tracing::warn!(url = %client.url(), error = %e, "vSphere keepalive failed");
                }
            }
        }));
    }

    /// `CurrentTime`: the server's clock (also keeps the session alive).
    pub async fn current_time(&self) -> Result<String, SoapError> {
        let si = MoRef::new("ServiceInstance", "ServiceInstance");
        let r = self.invoke("CurrentTime", &si, "").await?;
        Ok(r.returnval()
            .map(|n| n.text.trim().to_string())
            .unwrap_or_default())
    }

    /// `FindByInventoryPath`: the object at `path` (e.g. `/DC0/vm/tmpl`), `None` if absent.
    pub async fn find_by_inventory_path(&self, path: &str) -> Result<Option<MoRef>, SoapError> {
        let si = self.service_content().await?.search_index.clone();
        let mut w = Writer::default();
        w.text("inventoryPath", path);
        let r = self.invoke("FindByInventoryPath", &si, &w.into_string()).await?;
        Ok(r.returnval().and_then(Node::moref))
    }

    /// `RetrievePropertiesEx` (plus `ContinueRetrievePropertiesEx` while a token comes back).
    /// A `NotAuthenticated` entry in a `missingSet` counts as an expired session.
    pub async fn retrieve_properties(&self, q: PropertyQuery<'_>) -> Result<Vec<ObjectContent>, SoapError> {
        let pc = self.service_content().await?.property_collector.clone();
        let mut w = Writer::default();
        w.open("specSet", None).open("propSet", None).text("type", q.kind);
        for p in q.paths {
            w.text("pathSet", p);
        }
        w.close("propSet").open("objectSet", None).moref("obj", q.obj);
        match q.traverse {
            Some((kind, path)) => {
                w.text("skip", "true").open("selectSet", Some("TraversalSpec"));
                w.text("type", kind)
                    .text("path", path)
                    .text("skip", "false")
                    .close("selectSet");
            }
            None => {
                w.text("skip", "false");
            }
        }
        w.close("objectSet").close("specSet").raw("<options/>");
        let params = w.into_string();
        let method = "RetrievePropertiesEx";
        let (mut objects, mut token) = self
            .with_session(|| async {
                let mut w = Writer::call(method, &pc);
                w.raw(&params);
                let r = self.inner.transport.call(method, &w.finish(method)).await?;
                parse_retrieve_result(method, &r)
            })
            .await?;
        while let Some(t) = token {
            let mut w = Writer::default();
            w.text("token", &t);
            let r = self
                .invoke("ContinueRetrievePropertiesEx", &pc, &w.into_string())
                .await?;
            let (more, next) = parse_retrieve_result("ContinueRetrievePropertiesEx", &r)?;
            objects.extend(more);
            token = next;
        }
        Ok(objects)
    }

    /// Properties of one object (`None` when the answer holds no object).
    pub async fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent, SoapError> {
        let q = PropertyQuery {
            obj,
            kind: &obj.kind,
            paths,
            traverse: None,
        };
        Ok(self
            .retrieve_properties(q)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// Starts a `*_Task` method on `this` and waits for the task to end.
    pub async fn run_task(&self, method: &'static str, this: &MoRef, params: &str) -> Result<(), SoapError> {
        let r = self.invoke(method, this, params).await?;
        let task = r
            .returnval()
            .and_then(Node::moref)
            .ok_or_else(|| SoapError::response(method, "no task in the answer"))?;
        self.wait_task(method, &task).await
    }

    /// Polls `info.state` / `info.error` of `task` until it is `success` or `error`.
    pub async fn wait_task(&self, method: &'static str, task: &MoRef) -> Result<(), SoapError> {
        self.wait_task_progress(method, task, |_| {}).await
    }

    /// [`Client::wait_task`], also handing each `info.progress` (percent) seen to `on_progress`.
    pub async fn wait_task_progress(
        &self,
        method: &'static str,
        task: &MoRef,
        mut on_progress: impl FnMut(u8),
    ) -> Result<(), SoapError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let o = self
                .properties(task, &["info.state", "info.error", "info.progress"])
                .await?;
            if let Some(p) = o.text("info.progress").and_then(|p| p.parse::<i64>().ok()) {
                on_progress(p.clamp(0, 100) as u8);
            }
            match o.text("info.state") {
                Some("success") => return Ok(()),
                Some("error") => {
                    let fault = o
                        .get("info.error")
                        .map(Fault::from_localized)
                        .unwrap_or_else(|| Fault {
                            kind: "TaskError".into(),
                            message: "task failed without a reason".into(),
                        });
                    return Err(SoapError::Fault { method, fault });
                }
                _ if start.elapsed() > TASK_TIMEOUT => {
                    return Err(SoapError::response(
                        method,
                        format!("task {} did not end in time", task.value),
                    ));
                }
                _ => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// `Destroy_Task` and wait.
    pub async fn destroy(&self, obj: &MoRef) -> Result<(), SoapError> {
        self.run_task("Destroy_Task", obj, "").await
    }

    /// `PowerOffVM_Task` and wait.
    pub async fn power_off(&self, vm: &MoRef) -> Result<(), SoapError> {
        self.run_task("PowerOffVM_Task", vm, "").await
    }

    /// `MarkAsTemplate`.
    pub async fn mark_as_template(&self, vm: &MoRef) -> Result<(), SoapError> {
        self.invoke("MarkAsTemplate", vm, "").await.map(drop)
    }
}

fn moref_at(r: &Node, path: &str, method: &'static str) -> Result<MoRef, SoapError> {
    r.at(path)
        .and_then(Node::moref)
        .ok_or_else(|| SoapError::response(method, format!("no {path}")))
}

fn parse_service_content(r: &Response) -> Result<ServiceContent, SoapError> {
    const M: &str = "RetrieveServiceContent";
    let rv = r
        .returnval()
        .ok_or_else(|| SoapError::response(M, "no returnval"))?;
    Ok(ServiceContent {
        root_folder: moref_at(rv, "rootFolder", M)?,
        property_collector: moref_at(rv, "propertyCollector", M)?,
        search_index: moref_at(rv, "searchIndex", M)?,
        session_manager: moref_at(rv, "sessionManager", M)?,
        ovf_manager: moref_at(rv, "ovfManager", M)?,
        api_version: rv
            .text_at("about/apiVersion")
            .unwrap_or_default()
            .trim()
            .to_string(),
    })
}

type RetrieveResult = (Vec<ObjectContent>, Option<String>);

fn parse_retrieve_result(method: &'static str, r: &Response) -> Result<RetrieveResult, SoapError> {
    let Some(rv) = r.returnval() else {
        return Ok((Vec::new(), None));
    };
    let mut out = Vec::new();
    for o in rv.children_named("objects") {
        let mut c = ObjectContent {
            obj: o.child("obj").and_then(Node::moref),
            ..Default::default()
        };
        for p in o.children_named("propSet") {
            let name = p.text_at("name").unwrap_or_default().trim().to_string();
            c.props.push((name, p.child("val").cloned().unwrap_or_default()));
        }
        for m in o.children_named("missingSet") {
            let path = m.text_at("path").unwrap_or_default().trim().to_string();
            let fault = m
                .child("fault")
                .map(Fault::from_localized)
                .unwrap_or_else(|| Fault {
                    kind: "UnknownFault".into(),
                    message: String::new(),
                });
            if fault.is("NotAuthenticated") {
                return Err(SoapError::Fault { method, fault });
            }
            c.missing.push((path, fault));
        }
        out.push(c);
    }
    let token = rv
        .text_at("token")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    Ok((out, token))
}
