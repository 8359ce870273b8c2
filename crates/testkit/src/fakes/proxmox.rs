//! A fake Proxmox VE API server, written from the public API reference
//! (<https://pve.proxmox.com/pve-docs/api-viewer/>) and PVE's server code as summarised in
//! `/work/shared/reference/vcd-proxmox-api.md` (Part B).
//!
//! It serves `https://127.0.0.1:<port>/api2/json/…` with a [`TestCa`] certificate and PVE's
//! shapes: the `{"data": …}` envelope (plus `total` on task logs), API-token auth (`401`
//! with an empty body without or with a wrong token), `400` with an `errors` map for
//! schema violations (unknown or missing parameters, bad formats), `500` with `message` for
//! handler errors, `501` for unknown paths and for bodies on GET/DELETE. Form-encoded and
//! JSON bodies are parsed; query parameters win.
//!
//! | endpoint | behaviour |
//! |---|---|
//! | `GET /version`, `GET /nodes` | version (default `8.4.1`) and the configured nodes |
//! | `GET /cluster/nextid[?vmid]` | lowest free id ≥ 100 as a string; 400 for a taken `vmid` |
//! | `GET /cluster/resources[?type]` | VMs (with `template` 0/1), storages, nodes |
//! | `GET/POST /nodes/{n}/qemu` | list (with `status` and `tags`); create (task `qmcreate`, 500 "already exists") |
//! | `GET/POST/PUT …/qemu/{id}/config` | config; POST is a task (`qmconfig`), PUT synchronous; `scsiN=<st>:0,import-from=<volid>` imports |
//! | `POST …/qemu/{id}/template` | task `qmtemplate`: disks renamed `base-*`, `template: 1` |
//! | `DELETE …/qemu/{id}?purge=1` | task `qmdestroy`, removes the VM's volumes |
//! | `GET /nodes/{n}/storage`, `GET /nodes/{n}/network` | storages `local` (import), `local-lvm` (images), `isos`; bridges `vmbr0`, `vmbr1` |
//! | `POST …/storage/{s}/download-url` | task `download`: really GETs the URL, checks `checksum`, runs `qemu-img info` |
//! | `GET …/storage/{s}/content`, `DELETE …/content/{volid}` | volumes; delete is a task (`WARNINGS: 1` if gone) |
//! | `GET …/tasks/{upid}/status`, `…/log`, `DELETE …/tasks/{upid}` | task state, paged log, stop |
//!
//! `tags` are stored as PVE stores them: split on `;`, `,` and spaces, deduplicated, joined
//! with `;`. VM ids are cluster-wide; a VM is addressed through the node holding it (another node
//! answers 500 "Configuration file … does not exist"). Tasks hold the VM's lock while they
//! run (`VM N is locked (…)` for conflicting calls).
//!
//! Switches: [`FakeProxmox::fail`] (a [`Step`] fails with a 500, a failed task or a 403),
//! [`FakeProxmox::warn`] (`WARNINGS: 1`), [`FakeProxmox::set_task_delay`],
//! [`FakeProxmox::race_next_ids`] (another client takes the id `nextid` just returned),
//! [`FakeProxmox::revoke_token`]. Inspection: [`FakeProxmox::vms`], [`FakeProxmox::volumes`],
//! [`FakeProxmox::import_files`], [`FakeProxmox::requests`].
//!
//! Not modelled: reason phrases (axum cannot set them; PVE ≥ 8.4 also sends `message`),
//! the ~3 s delay of real 401s, tickets/CSRF, `/cluster/resources` lagging behind creates,
//! md5/sha1 checksums, starting VMs (tests mark VMs running with [`FakeProxmox::set_running`]).

mod disks;
mod download;
mod qemu;
mod schema;
mod server;
mod state;
mod storage;
mod tasks;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use self::server::Shared;
use self::state::State;
use crate::TestCa;

/// A step of the template build whose request can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// `POST …/storage/{s}/download-url`.
    Download,
    /// `GET /cluster/nextid`.
    NextId,
    /// `POST /nodes/{n}/qemu`.
    Create,
    /// `…/config` with an `import-from` disk.
    Import,
    /// `…/config` with `boot`.
    Boot,
    /// `POST …/template`.
    Template,
    /// `…/config` with `tags`.
    Tag,
    /// Any other `…/config` call.
    Config,
    /// `DELETE …/storage/{s}/content/{volid}`.
    DeleteImport,
    /// `DELETE /nodes/{n}/qemu/{id}`.
    Destroy,
}

/// How an injected failure shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailHow {
    /// The request gets `500` with a message (before any task starts).
    Http,
    /// The request returns a UPID; the task ends with an error exit status (a synchronous
    /// call gets a 500). A failed download task leaves the downloaded file behind, like a
    /// worker killed after the rename (`unexpected status`).
    Task,
    /// The request gets `403 Permission check failed (…)`.
    Forbidden,
}

/// A request the fake received (the token is never recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path after `/api2/json`, percent-decoded, e.g. `/nodes/pve1/qemu`.
    pub path: String,
    /// Query and body parameters.
    pub params: BTreeMap<String, String>,
}

/// A VM as the fake holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeVm {
    /// VM id.
    pub vmid: u32,
    /// Node holding its config.
    pub node: String,
    /// The `name` config value.
    pub name: String,
    /// Whether the config has `template: 1`.
    pub template: bool,
    /// The `tags` config value.
    pub tags: Option<String>,
    /// The full config (as `GET …/config` shows it, without `digest`).
    pub config: BTreeMap<String, Value>,
    /// The lock of a running task.
    pub lock: Option<String>,
    /// Whether it runs (see [`FakeProxmox::set_running`]).
    pub running: bool,
}

/// Options of [`FakeProxmox::with_options`].
#[derive(Clone, Debug)]
pub struct FakeProxmoxOptions {
    /// Node names (default `["pve1"]`).
    pub nodes: Vec<String>,
    /// `/version`'s version (default `8.4.1`).
    pub version: String,
    /// `user@realm` of the token (default `ido@pve`).
    pub userid: String,
    /// Token id (default `capmox`).
    pub token_id: String,
    /// Token secret (default a fixed UUID).
    pub secret: String,
    /// How long tasks stay `running` (default 30 ms).
    pub task_delay: Duration,
    /// Extra CA certificates (PEM) `download-url` trusts besides the fake's own CA.
    pub extra_ca_pem: Option<String>,
}

impl Default for FakeProxmoxOptions {
    fn default() -> Self {
        Self {
            nodes: vec!["pve1".into()],
            version: "8.4.1".into(),
            userid: "ido@pve".into(),
            token_id: "capmox".into(),
            secret: "9f6f3c2e-1d4b-4c8a-b5e7-0a1b2c3d4e5f".into(),
            task_delay: Duration::from_millis(30),
            extra_ca_pem: None,
        }
    }
}

/// A running fake; the server stops when it is dropped.
pub struct FakeProxmox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca: TestCa,
    opts: FakeProxmoxOptions,
    handles: Vec<JoinHandle<()>>,
    /// Storage files; removed on drop.
    dir: TempDir,
}

impl std::fmt::Debug for FakeProxmox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProxmox")
            .field("addr", &self.addr)
            .field("nodes", &self.opts.nodes)
            .finish_non_exhaustive()
    }
}

impl FakeProxmox {
    /// Starts a fake with default options (one node `pve1`).
    pub async fn start() -> anyhow::Result<Self> {
        Self::with_options(FakeProxmoxOptions::default()).await
    }

    /// Starts a fake on `127.0.0.1:0` (must run inside a tokio runtime).
    pub async fn with_options(opts: FakeProxmoxOptions) -> anyhow::Result<Self> {
        let ca = TestCa::new().context("creating the fake's CA")?;
        let dir = tempfile::Builder::new()
            .prefix("ido-fake-pve-")
            .tempdir()
            .context("creating the storage directory")?;
        let state = State::new(&opts.nodes, dir.path(), opts.task_delay).context("creating storages")?;
        crate::install_crypto_provider();
        let mut pems = ca.ca_pem();
        if let Some(extra) = &opts.extra_ca_pem {
            pems.push('\n');
            pems.push_str(extra);
        }
        let certs = reqwest::Certificate::from_pem_bundle(pems.as_bytes()).context("parsing CA PEMs")?;
        let http = reqwest::Client::builder()
            .tls_certs_only(certs)
            .no_proxy()
            .build()
            .context("building the download client")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            token_user: format!("{}!{}", opts.userid, opts.token_id),
            secret: opts.secret.clone(),
            version: opts.version.clone(),
            http,
        });
        let (addr, handles) = tls::serve(shared.clone(), &ca).await?;
        Ok(Self {
            shared,
            addr,
            ca,
            opts,
            handles,
            dir,
        })
    }

    /// `https://127.0.0.1:<port>` (the API is under `/api2/json`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `127.0.0.1:<port>`, the original's `credentials.url` form.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The CA certificate (PEM) that signed the server certificate.
    pub fn ca_pem(&self) -> String {
        self.ca.ca_pem()
    }

    /// The options the fake runs with (user, token id, secret, nodes).
    pub fn options(&self) -> &FakeProxmoxOptions {
        &self.opts
    }

    /// Makes the next `times` requests of `step` fail `how`.
    pub fn fail(&self, step: Step, how: FailHow, times: u32) {
        self.shared.lock().faults.fail.push((step, how, times));
    }

    /// Drops every pending failure and warning.
    pub fn clear_faults(&self) {
        let mut st = self.shared.lock();
        st.faults.fail.clear();
        st.faults.warn.clear();
        st.faults.nextid_races = 0;
    }

    /// Injected failures not consumed yet.
    pub fn pending_failures(&self) -> u32 {
        self.shared.lock().faults.fail.iter().map(|(_, _, n)| n).sum()
    }

    /// Makes every task of `step` end with `WARNINGS: 1` (its effect still happens).
    pub fn warn(&self, step: Step) {
        self.shared.lock().faults.warn.insert(step);
    }

    /// How long tasks stay `running` from now on.
    pub fn set_task_delay(&self, d: Duration) {
        self.shared.lock().faults.task_delay = d;
    }

    /// The next `n` ids `/cluster/nextid` hands out are taken by another client (a VM
    /// `racer-<id>` on the first node) right after the answer.
    pub fn race_next_ids(&self, n: u32) {
        self.shared.lock().faults.nextid_races = n;
    }

    /// Revokes (or restores) the API token: every request then gets 401.
    pub fn revoke_token(&self, revoked: bool) {
        self.shared.lock().faults.revoked = revoked;
    }

    /// Every VM, by id.
    pub fn vms(&self) -> Vec<FakeVm> {
        let st = self.shared.lock();
        st.vms
            .iter()
            .map(|(id, vm)| FakeVm {
                vmid: *id,
                node: vm.node.clone(),
                name: vm.name().to_string(),
                template: vm.is_template(),
                tags: vm.config.get("tags").and_then(Value::as_str).map(str::to_string),
                config: vm.config.clone(),
                lock: vm.lock.clone(),
                running: vm.running,
            })
            .collect()
    }

    /// The VMs on `node`.
    pub fn vms_on(&self, node: &str) -> Vec<FakeVm> {
        self.vms().into_iter().filter(|v| v.node == node).collect()
    }

    /// Volume names of a storage (`import/x.qcow2`, `base-100-disk-0`, …).
    pub fn volumes(&self, node: &str, storage: &str) -> Vec<String> {
        let mut st = self.shared.lock();
        st.storage_mut(node, storage)
            .map(|s| s.volumes.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// File names in a storage's `import/` (listed volumes and files on disk, incl. partial
    /// downloads), sorted.
    pub fn import_files(&self, node: &str, storage: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .volumes(node, storage)
            .into_iter()
            .filter_map(|v| v.strip_prefix("import/").map(str::to_string))
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.import_dir(node, storage)) {
            out.extend(rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
        out.sort();
        out.dedup();
        out
    }

    /// The directory holding a storage's `import/` files.
    pub fn import_dir(&self, node: &str, storage: &str) -> PathBuf {
        self.dir.path().join(node).join(storage).join("import")
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests of `method` whose path ends with `suffix`.
    pub fn requests_to(&self, method: &str, suffix: &str) -> Vec<FakeRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .collect()
    }

    /// Tasks still running.
    pub fn running_tasks(&self) -> usize {
        self.shared
            .lock()
            .tasks
            .values()
            .filter(|t| t.exit.is_none())
            .count()
    }

    /// Adds a stopped VM `name` on `node` (a template when `template`) without tags, as
    /// another client would; returns its id.
    pub fn add_vm(&self, node: &str, name: &str, template: bool) -> u32 {
        self.add_vm_tagged(node, name, template, "")
    }

    /// [`FakeProxmox::add_vm`] with the `tags` config value `tags` (`;`-separated; none when
    /// empty).
    pub fn add_vm_tagged(&self, node: &str, name: &str, template: bool, tags: &str) -> u32 {
        let mut st = self.shared.lock();
        let id = st.next_free_id();
        st.insert_vm(node, id, name, template);
        let tags = schema::unique_tags(tags);
        if !tags.is_empty()
            && let Some(vm) = st.vms.get_mut(&id)
        {
            vm.config.insert("tags".into(), Value::String(tags));
        }
        id
    }

    /// Marks VM `vmid` running (listed `status: running`; destroy refuses) or stopped.
    pub fn set_running(&self, vmid: u32, running: bool) {
        if let Some(vm) = self.shared.lock().vms.get_mut(&vmid) {
            vm.running = running;
        }
    }
}

impl Drop for FakeProxmox {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
        for t in self.shared.lock().tasks.values_mut() {
            if let Some(a) = t.abort.take() {
                a.abort();
            }
        }
    }
}

/// Consumes one pending failure of `step`.
fn fault(sh: &Shared, step: Step) -> Option<FailHow> {
    sh.lock().faults.take(step)
}
