//! The fake's inventory: orgs, catalogs, sessions, templates, files and tasks, and the
//! time-driven transitions (task completion) applied on every request.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};

use super::{FailStep, FakeVcdOptions};
use crate::XorShift64;

/// Name of the descriptor's file entry.
pub const DESCRIPTOR: &str = "descriptor.ovf";
/// Media type of a vApp template.
pub const TEMPLATE_TYPE: &str = "application/vnd.vmware.vcloud.vAppTemplate+xml";
/// Media type of a catalog item.
pub const ITEM_TYPE: &str = "application/vnd.vmware.vcloud.catalogItem+xml";

pub struct Org {
    pub id: String,
    pub name: String,
    pub vdcs: Vec<(String, String)>,
    pub catalogs: Vec<(String, String)>,
}

pub struct Session {
    pub org: String,
    pub sysadmin: bool,
    pub created: Instant,
    pub last_used: Instant,
}

/// What a request's token stands for.
#[derive(Clone, Debug)]
pub struct Caller {
    pub org: String,
    pub sysadmin: bool,
}

impl Caller {
    /// Whether this caller sees objects of `org`.
    pub fn sees(&self, org: &str) -> bool {
        self.sysadmin || self.org == org
    }
}

pub struct FileState {
    pub name: String,
    pub size: i64,
    pub data: Vec<u8>,
    pub hasher: Sha256,
    pub sha256: Option<String>,
    pub complete: bool,
}

impl FileState {
    pub fn new(name: &str, size: i64) -> Self {
        Self {
            name: name.into(),
            size,
            data: Vec::new(),
            hasher: Sha256::new(),
            sha256: None,
            complete: false,
        }
    }

    /// Appends a piece; completes the file when `last` (or the size is reached).
    pub fn append(&mut self, bytes: &[u8], last: bool) {
        self.hasher.update(bytes);
        self.data.extend_from_slice(bytes);
        if last || (self.size >= 0 && self.data.len() as i64 >= self.size) {
            self.size = self.data.len() as i64;
            self.complete = true;
            self.sha256 = Some(hex::encode(self.hasher.clone().finalize()));
        }
    }
}

pub struct Tmpl {
    pub uuid: String,
    pub item_id: String,
    pub org: String,
    pub catalog_id: String,
    pub catalog: String,
    pub name: String,
    pub description: String,
    pub created: SystemTime,
    /// -1 failed, 0 unfinished, 8 resolved.
    pub status: i32,
    pub transfer: String,
    pub ovf: Option<String>,
    /// The descriptor, then (once listed) one entry per `References/File`.
    pub files: Vec<FileState>,
    /// Disk entries parsed from the OVF, listed after `polls_left` GETs.
    pub pending_files: Vec<FileState>,
    pub polls_left: u32,
    pub upload_task: String,
    pub delete_task: Option<String>,
    /// The template's metadata (GENERAL domain): key → (type, value).
    pub metadata: BTreeMap<String, MetaValue>,
    /// Its catalog item's metadata.
    pub item_metadata: BTreeMap<String, MetaValue>,
    /// The owner's user name.
    pub owner: String,
}

/// A typed metadata value: `(xsi:type, value)`, e.g. `("MetadataStringValue", "ido")`.
pub type MetaValue = (String, String);

/// The entity of a template a metadata call is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaOn {
    /// The vApp template.
    Template,
    /// Its catalog item.
    Item,
}

impl Tmpl {
    pub fn descriptor_uploaded(&self) -> bool {
        self.ovf.is_some()
    }
}

/// What happens when a task's time is up.
#[derive(Clone, Debug)]
pub enum Finish {
    /// The upload ends: resolved when `ok`, failed otherwise.
    Upload { template: String, ok: bool },
    /// The template is removed.
    Delete { template: String },
    /// A metadata entry is set (`Some`) or removed (`None`).
    Metadata {
        template: String,
        on: MetaOn,
        key: String,
        value: Option<MetaValue>,
    },
}

pub struct Task {
    pub uuid: String,
    pub operation_name: String,
    pub operation: String,
    /// Media type of the owner (a vAppTemplate, or a catalogItem for its metadata).
    pub owner_type: &'static str,
    pub owner_href: String,
    pub owner_name: String,
    pub org: String,
    /// `queued`, `running`, `success`, `error`, `aborted`.
    pub status: String,
    /// `(majorErrorCode, minorErrorCode, message)`.
    pub error: Option<(u16, String, String)>,
    pub started: SystemTime,
    pub finish: Option<(Instant, Finish)>,
}

impl Task {
    pub fn running(&self) -> bool {
        matches!(
            self.status.as_str(),
            "queued" | "preRunning" | "running" | "postRunning"
        )
    }
}

pub struct State {
    pub base: String,
    pub opts: FakeVcdOptions,
    pub orgs: Vec<Org>,
    pub sessions: HashMap<String, Session>,
    pub templates: BTreeMap<String, Tmpl>,
    pub tasks: HashMap<String, Task>,
    pub failures: HashSet<FailStep>,
    pub task_delay: Duration,
    pub transfer_delay: Duration,
    pub session_lifetime: Option<Duration>,
    pub logins: u64,
    pub failed_logins: u64,
    pub max_uploading: usize,
    rng: XorShift64,
}

impl State {
    pub fn new(opts: FakeVcdOptions) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        let mut st = Self {
            base: String::new(),
            orgs: Vec::new(),
            sessions: HashMap::new(),
            templates: BTreeMap::new(),
            tasks: HashMap::new(),
            failures: HashSet::new(),
            task_delay: Duration::ZERO,
            transfer_delay: Duration::ZERO,
            session_lifetime: None,
            logins: 0,
            failed_logins: 0,
            max_uploading: 0,
            rng: XorShift64::new(seed ^ 0x5eed),
            opts,
        };
        let orgs = st.opts.orgs.clone();
        for o in orgs {
            let vdcs = o.vdcs.iter().map(|v| (st.uuid(), v.clone())).collect();
            let catalogs = o.catalogs.iter().map(|c| (st.uuid(), c.clone())).collect();
            let id = st.uuid();
            st.orgs.push(Org {
                id,
                name: o.name,
                vdcs,
                catalogs,
            });
        }
        st
    }

    /// A lowercase hex UUID (VCD style, as govcd's regexes expect).
    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// A fresh access token (longer than 32 characters, like VCD's JWTs).
    pub fn token(&mut self) -> String {
        (0..4).map(|_| format!("{:016x}", self.rng.next_u64())).collect()
    }

    pub fn fails(&self, step: FailStep) -> bool {
        self.failures.contains(&step)
    }

    pub fn org(&self, name: &str) -> Option<&Org> {
        self.orgs.iter().find(|o| o.name == name)
    }

    /// `(org name, catalog name)` of the catalog `id`.
    pub fn catalog(&self, id: &str) -> Option<(String, String)> {
        self.orgs.iter().find_map(|o| {
            o.catalogs
                .iter()
                .find(|(cid, _)| cid == id)
                .map(|(_, n)| (o.name.clone(), n.clone()))
        })
    }

    /// The session of `token`, if it is still valid; refreshes its idle timer when `api`.
    pub fn session(&mut self, token: &str, api: bool) -> Option<Caller> {
        let now = Instant::now();
        let s = self.sessions.get_mut(token)?;
        let too_old = self.session_lifetime.is_some_and(|l| s.created.elapsed() >= l);
        if too_old || now.duration_since(s.last_used) >= self.opts.idle_timeout {
            self.sessions.remove(token);
            return None;
        }
        if api {
            s.last_used = now;
        }
        Some(Caller {
            org: s.org.clone(),
            sysadmin: s.sysadmin,
        })
    }

    /// Applies every task transition whose time has come.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.running() && t.finish.as_ref().is_some_and(|(at, _)| *at <= now))
            .map(|t| t.uuid.clone())
            .collect();
        for id in due {
            let Some((_, finish)) = self.tasks.get_mut(&id).and_then(|t| t.finish.take()) else {
                continue;
            };
            match finish {
                Finish::Upload { template, ok: true } => {
                    if let Some(t) = self.templates.get_mut(&template) {
                        t.status = 8;
                    }
                    self.end_task(&id, "success", None);
                }
                Finish::Upload { template, ok: false } => {
                    let err = (
                        500,
                        "INTERNAL_SERVER_ERROR".into(),
                        "Failed to import the OVF package".into(),
                    );
                    self.fail_upload(&template, err);
                }
                Finish::Delete { template } => {
                    self.templates.remove(&template);
                    self.end_task(&id, "success", None);
                }
                Finish::Metadata {
                    template,
                    on,
                    key,
                    value,
                } => {
                    if let Some(t) = self.templates.get_mut(&template) {
                        let m = match on {
                            MetaOn::Template => &mut t.metadata,
                            MetaOn::Item => &mut t.item_metadata,
                        };
                        match value {
                            Some(v) => m.insert(key, v),
                            None => m.remove(&key),
                        };
                    }
                    self.end_task(&id, "success", None);
                }
            }
        }
    }

    pub fn end_task(&mut self, id: &str, status: &str, error: Option<(u16, String, String)>) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.status = status.into();
            t.error = error;
            t.finish = None;
        }
    }

    /// Fails the upload of `template`: status -1 and its task in `error`.
    pub fn fail_upload(&mut self, template: &str, error: (u16, String, String)) {
        let Some(t) = self.templates.get_mut(template) else {
            return;
        };
        t.status = -1;
        let task = t.upload_task.clone();
        self.end_task(&task, "error", Some(error));
    }

    /// Whether `template` is uploading (status 0 with its upload task running).
    pub fn uploading(&self, t: &Tmpl) -> bool {
        t.status == 0 && self.tasks.get(&t.upload_task).is_some_and(Task::running)
    }

    /// Creates an unfinished upload of `name` in catalog `catalog_id`; returns its uuid.
    pub fn create_upload(
        &mut self,
        org: &str,
        catalog_id: &str,
        catalog: &str,
        name: &str,
        desc: &str,
    ) -> String {
        let (uuid, item_id, transfer, task) = (self.uuid(), self.uuid(), self.uuid(), self.uuid());
        let owner_href = format!("{}/api/vAppTemplate/vappTemplate-{uuid}", self.base);
        self.tasks.insert(
            task.clone(),
            Task {
                uuid: task.clone(),
                operation_name: "vdcUploadOvfContents".into(),
                operation: format!("Importing Virtual Application Template {name}({uuid})"),
                owner_type: TEMPLATE_TYPE,
                owner_href,
                owner_name: name.into(),
                org: org.into(),
                status: "running".into(),
                error: None,
                started: SystemTime::now(),
                finish: None,
            },
        );
        self.templates.insert(
            uuid.clone(),
            Tmpl {
                uuid: uuid.clone(),
                item_id,
                org: org.into(),
                catalog_id: catalog_id.into(),
                catalog: catalog.into(),
                name: name.into(),
                description: desc.into(),
                created: SystemTime::now(),
                status: 0,
                transfer,
                ovf: None,
                files: vec![FileState::new(DESCRIPTOR, -1)],
                pending_files: Vec::new(),
                polls_left: 0,
                upload_task: task,
                delete_task: None,
                metadata: BTreeMap::new(),
                item_metadata: BTreeMap::new(),
                owner: self.opts.username.clone(),
            },
        );
        let uploading = self.templates.values().filter(|t| self.uploading(t)).count();
        self.max_uploading = self.max_uploading.max(uploading);
        uuid
    }

    /// Starts the end of an upload once every file is complete.
    pub fn maybe_finish(&mut self, template: &str) {
        let ok = !self.fails(FailStep::Task);
        let at = Instant::now() + self.task_delay;
        let Some(t) = self.templates.get(template) else {
            return;
        };
        let done =
            t.descriptor_uploaded() && t.pending_files.is_empty() && t.files.iter().all(|f| f.complete);
        if !done {
            return;
        }
        let task = t.upload_task.clone();
        let template = template.to_string();
        if let Some(task) = self.tasks.get_mut(&task)
            && task.running()
            && task.finish.is_none()
        {
            task.finish = Some((at, Finish::Upload { template, ok }));
        }
        self.tick();
    }
}

/// `2024-05-01T12:00:00.000Z` for a time.
pub fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string())
        .unwrap_or_default()
}
