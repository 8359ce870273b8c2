//! A fake VMware Cloud Director (API 37+) for the OVA upload flow, served over HTTPS on
//! `127.0.0.1:0` with a [`TestCa`] certificate.
//!
//! Written from the public API reference (see `/work/shared/reference/vcd-proxmox-api.md`,
//! part A). What it implements:
//!
//! | call | behaviour |
//! |---|---|
//! | `GET /api/versions` | `SupportedVersions`, `LoginUrl` = `<base>/cloudapi/1.0.0/sessions` |
//! | `POST /cloudapi/1.0.0/sessions[/provider]` | Basic `user@org`; 200 + `X-VMWARE-VCLOUD-ACCESS-TOKEN` + JSON session; 401 otherwise |
//! | every other call | bearer token (`Authorization: Bearer` or the access-token header): 401 with an empty body when unknown, expired or idle too long; `/api` also needs `Accept: …;version=<offered>` (406) |
//! | `GET /api/org`, `/api/org/{id}`, `/api/catalog/{id}`, `/api/catalogItem/{id}` | entities of the session's org (403 for others) |
//! | `GET /api/query` | `catalog`, `adminCatalog`, `vAppTemplate`, `adminVAppTemplate`, `task`; `filter` split on `;` (AND) with `==` terms, values percent-decoded; paging |
//! | `POST /api/catalog/{id}/action/upload` | `UploadVAppTemplateParams` → 201 `CatalogItem`; 400 `DUPLICATE_NAME` |
//! | `GET /api/vAppTemplate/{id}` | status 0/8/-1, `Tasks`, `Files` with `upload:default` links while uploading |
//! | `PUT /transfer/{session}/{file}` | descriptor first; disks checked against the OVF's `References/File` (`ovf:size`), optional `Content-Range` pieces in order; bytes stored and hashed |
//! | `GET /api/task/{id}`, `POST …/action/cancel` | `queued`/`running`/`success`/`error`/`aborted`; cancelling an upload removes the template |
//! | `DELETE /api/vAppTemplate/{id}`, `/api/catalogItem/{id}` | 202 + delete task; 400 `BUSY_ENTITY` while an upload runs |
//! | `GET <entity>/metadata`, `GET\|PUT\|DELETE <entity>/metadata/{key}` (templates and catalog items) | `Metadata` / `MetadataValue` (typed values, domain GENERAL); writes are 202 + task, applied when it ends; 400 `BUSY_ENTITY` on a template while an upload runs |
//!
//! A template becomes resolved (status 8) only once every referenced file arrived
//! complete; a file of the wrong size fails the upload task (status -1). Switches inject
//! failures ([`FailStep`]), slow tasks and transfers, and expire sessions; the inspection
//! API ([`FakeVcd::templates`]) shows each template with the OVF it received and the
//! sizes and SHA-256 of the files stored.

mod inspect;
mod metadata;
mod ovf;
mod query;
mod render;
mod server;
mod state;
mod templates;
mod transfer;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::task::JoinHandle;

use self::state::State;
use crate::TestCa;

/// A step of the upload flow a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailStep {
    /// Logins answer 500.
    Login,
    /// `POST …/action/upload` answers 500 (nothing is created).
    UploadInit,
    /// The descriptor is taken (200) but rejected: status -1, upload task `error`.
    Descriptor,
    /// Disk PUTs answer 500 (nothing stored; the upload stays unfinished).
    Disk,
    /// The upload task ends in `error` (status -1) once every file arrived.
    Task,
    /// Template deletes answer 500.
    Delete,
    /// Metadata writes (PUT, DELETE) answer 500.
    Metadata,
}

/// One organization of the fake.
#[derive(Clone, Debug)]
pub struct FakeOrg {
    /// Org name.
    pub name: String,
    /// VDC names.
    pub vdcs: Vec<String>,
    /// Catalog names.
    pub catalogs: Vec<String>,
}

impl FakeOrg {
    /// An org with the given VDCs and catalogs.
    pub fn new(name: &str, vdcs: &[&str], catalogs: &[&str]) -> Self {
        Self {
            name: name.into(),
            vdcs: vdcs.iter().map(|s| s.to_string()).collect(),
            catalogs: catalogs.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// What the fake serves.
#[derive(Clone, Debug)]
pub struct FakeVcdOptions {
    /// The one user (valid in every org).
    pub username: String,
    /// Its password.
    pub password: String,
    /// Organizations, VDCs and catalogs.
    pub orgs: Vec<FakeOrg>,
    /// Whether the user may also log in to `System` (provider login, admin queries).
    pub system_admin: bool,
    /// API versions offered by `/api/versions`.
    pub versions: Vec<String>,
    /// Idle timeout of sessions (reset by `/api` calls, not by transfers).
    pub idle_timeout: Duration,
    /// Template GETs after the descriptor PUT before the disk files are listed.
    pub files_after_polls: u32,
}

impl Default for FakeVcdOptions {
    /// User `ido`, org `org1` (VDC `vdc1`, catalogs `cat1`, `cat2`) and org `org2`
    /// (catalog `cat1`); versions 36.0–38.0; 30 min idle timeout; files listed after 1 poll.
    fn default() -> Self {
        Self {
            username: "ido".into(),
            password: "fake-vcd-password".into(),
            orgs: vec![
                FakeOrg::new("org1", &["vdc1"], &["cat1", "cat2"]),
                FakeOrg::new("org2", &["vdc2"], &["cat1"]),
            ],
            system_admin: true,
            versions: vec!["36.0".into(), "37.0".into(), "38.0".into()],
            idle_timeout: Duration::from_secs(30 * 60),
            files_after_polls: 1,
        }
    }
}

/// A file of a template as stored by the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeFile {
    /// File name (`descriptor.ovf` or the OVF's `ovf:href`).
    pub name: String,
    /// Expected size (-1 when the OVF did not say).
    pub size: i64,
    /// Bytes stored.
    pub received: u64,
    /// Whether the whole file arrived.
    pub complete: bool,
    /// SHA-256 (lowercase hex) of the stored bytes, once complete.
    pub sha256: Option<String>,
}

/// A template as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeTemplate {
    /// Its uuid.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Org name.
    pub org: String,
    /// Catalog name.
    pub catalog: String,
    /// -1 failed, 0 unfinished, 8 resolved.
    pub status: i32,
    /// The upload task's status.
    pub task_status: String,
    /// The upload task's error message.
    pub task_error: Option<String>,
    /// Whether a delete is under way.
    pub deleting: bool,
    /// The OVF descriptor received, byte for byte.
    pub ovf: Option<String>,
    /// The files (the descriptor first).
    pub files: Vec<FakeFile>,
    /// The template's metadata: key → value (any type, as text).
    pub metadata: BTreeMap<String, String>,
    /// Its catalog item's metadata.
    pub item_metadata: BTreeMap<String, String>,
    /// The owner's user name.
    pub owner: String,
}

impl FakeTemplate {
    /// Whether the upload finished (status 8).
    pub fn is_resolved(&self) -> bool {
        self.status == 8
    }

    /// The file `name`.
    pub fn file(&self, name: &str) -> Option<&FakeFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The texts of the OVF's `VirtualSystemType` elements, e.g. `["vmx-19"]`.
    pub fn virtual_system_types(&self) -> Vec<String> {
        self.ovf
            .as_deref()
            .map(ovf::virtual_system_types)
            .unwrap_or_default()
    }
}

/// A template planted by a test, in a given state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seed {
    /// Uploaded and resolved (status 8).
    Resolved,
    /// A failed upload (status -1, task `error`).
    Failed,
    /// An upload that never finished (status 0, task `running`, descriptor in).
    Unfinished,
}

/// Shared by the server and the handle.
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake VCD; stops when dropped.
pub struct FakeVcd {
    shared: Arc<Shared>,
    url: String,
    ca: TestCa,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeVcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVcd")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeVcd {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeVcd {
    /// Starts the fake with `opts` (a fresh CA and certificate each time).
    pub async fn start(opts: FakeVcdOptions) -> anyhow::Result<Self> {
        let ca = TestCa::new()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(opts)),
        });
        let (addr, tasks) = server::serve(&ca, shared.clone()).await?;
        let url = format!("https://{addr}");
        shared.lock().base = url.clone();
        Ok(Self {
            shared,
            url,
            ca,
            tasks,
        })
    }

    /// `https://127.0.0.1:<port>` (the `url` credential).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA certificate (PEM) a client must trust.
    pub fn ca_pem(&self) -> String {
        self.ca.ca_pem()
    }

    /// The user name.
    pub fn username(&self) -> String {
        self.shared.lock().opts.username.clone()
    }

    /// The password.
    pub fn password(&self) -> String {
        self.shared.lock().opts.password.clone()
    }

    /// Makes `step` fail until [`FakeVcd::heal`].
    pub fn fail(&self, step: FailStep) {
        self.shared.lock().failures.insert(step);
    }

    /// Stops failing `step`.
    pub fn heal(&self, step: FailStep) {
        self.shared.lock().failures.remove(&step);
    }

    /// Tasks (upload completion, deletes) take `d` to finish.
    pub fn set_task_delay(&self, d: Duration) {
        self.shared.lock().task_delay = d;
    }

    /// Every transfer PUT takes at least `d` to answer.
    pub fn set_transfer_delay(&self, d: Duration) {
        self.shared.lock().transfer_delay = d;
    }

    /// Ends every session now (the next call with an old token gets 401).
    pub fn expire_sessions_now(&self) {
        self.shared.lock().sessions.clear();
    }

    /// Sessions (current and future) end `d` after their login; `None` lifts the limit.
    pub fn expire_sessions_after(&self, d: Option<Duration>) {
        self.shared.lock().session_lifetime = d;
    }

    /// Successful logins so far.
    pub fn logins(&self) -> u64 {
        self.shared.lock().logins
    }

    /// Refused logins so far.
    pub fn failed_logins(&self) -> u64 {
        self.shared.lock().failed_logins
    }

    /// Most templates ever uploading at the same time.
    pub fn max_concurrent_uploads(&self) -> usize {
        self.shared.lock().max_uploading
    }

    /// The templates of every catalog named `catalog` (any org), by name.
    pub fn templates(&self, catalog: &str) -> Vec<FakeTemplate> {
        let mut st = self.shared.lock();
        st.tick();
        st.inspect(|t| t.catalog == catalog)
    }

    /// The template `name` in catalog `catalog` of org `org`.
    pub fn template(&self, org: &str, catalog: &str, name: &str) -> Option<FakeTemplate> {
        let mut st = self.shared.lock();
        st.tick();
        st.inspect(|t| t.org == org && t.catalog == catalog && t.name == name)
            .pop()
    }

    /// The bytes stored for `file` of the template with uuid `id`.
    pub fn file_bytes(&self, id: &str, file: &str) -> Option<Vec<u8>> {
        self.shared.lock().file_bytes(id, file)
    }

    /// Plants a template `name` in `org`/`catalog` in the state `seed`, without metadata (as
    /// anyone else's upload would be); returns its uuid.
    pub fn seed_template(&self, org: &str, catalog: &str, name: &str, seed: Seed) -> anyhow::Result<String> {
        self.shared.lock().seed(org, catalog, name, seed)
    }

    /// Sets the string metadata `key` = `value` on the template with uuid `id` (or, with
    /// `on_item`, on its catalog item) at once, as another client would have.
    pub fn set_metadata(&self, id: &str, on_item: bool, key: &str, value: &str) -> anyhow::Result<()> {
        let mut st = self.shared.lock();
        let t = st
            .templates
            .get_mut(id)
            .ok_or_else(|| anyhow::anyhow!("no template {id}"))?;
        let m = if on_item {
            &mut t.item_metadata
        } else {
            &mut t.metadata
        };
        m.insert(key.into(), ("MetadataStringValue".into(), value.into()));
        Ok(())
    }

    /// Makes `user` the owner of the template with uuid `id`.
    pub fn set_owner(&self, id: &str, user: &str) -> anyhow::Result<()> {
        let mut st = self.shared.lock();
        let t = st
            .templates
            .get_mut(id)
            .ok_or_else(|| anyhow::anyhow!("no template {id}"))?;
        t.owner = user.into();
        Ok(())
    }
}
