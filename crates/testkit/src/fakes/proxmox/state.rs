//! The fake cluster's inventory: nodes with storages and bridges, VMs (ids are cluster-wide),
//! volumes, tasks, and the fault switches. Guarded by one mutex that is never held across
//! an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{FailHow, FakeRequest, Step};

/// Storage ids every node has: `local` (dir: iso, vztmpl, backup, import), `local-lvm`
/// (lvmthin: images, rootdir) and `isos` (dir: iso only, for "wrong content type" cases).
pub(super) const STORAGES: [(&str, &str, &str); 3] = [
    ("local", "dir", "iso,vztmpl,backup,import"),
    ("local-lvm", "lvmthin", "images,rootdir"),
    ("isos", "dir", "iso"),
];

/// Network interfaces every node has.
pub(super) const IFACES: [(&str, &str); 3] = [("eno1", "eth"), ("vmbr0", "bridge"), ("vmbr1", "bridge")];

/// One volume of a storage.
#[derive(Clone, Debug)]
pub(super) struct Volume {
    /// Bytes used (the file size for file-backed volumes).
    pub size: u64,
    /// Disk size seen by a guest (qcow2 virtual size; equals `size` otherwise).
    pub virtual_size: u64,
    /// `qcow2`, `raw`, …
    pub format: String,
    /// Owner VM of `vm-N-*`/`base-N-*` volumes.
    pub vmid: Option<u32>,
    /// Creation time (Unix seconds).
    pub ctime: u64,
    /// The file on disk, for downloaded volumes.
    pub path: Option<PathBuf>,
}

/// One storage of one node.
#[derive(Debug)]
pub(super) struct Storage {
    /// `dir`, `lvmthin`.
    pub kind: &'static str,
    /// Content types, e.g. `iso,import`.
    pub content: &'static str,
    /// Volumes by name relative to the storage (`import/x.qcow2`, `vm-101-disk-0`).
    pub volumes: BTreeMap<String, Volume>,
    /// Where file-backed volumes live.
    pub dir: PathBuf,
}

impl Storage {
    /// Whether `content` is one of this storage's content types.
    pub fn has_content(&self, content: &str) -> bool {
        self.content.split(',').any(|c| c == content)
    }
}

/// One node.
#[derive(Debug)]
pub(super) struct Node {
    /// Storages by id.
    pub storages: BTreeMap<String, Storage>,
}

/// One VM (or template).
#[derive(Clone, Debug)]
pub(super) struct Vm {
    /// The node holding its config.
    pub node: String,
    /// Its config as `GET …/config` shows it (no `vmid`, no `digest`).
    pub config: BTreeMap<String, Value>,
    /// The lock a running task holds (`create`, `config`, `template`, `destroy`).
    pub lock: Option<String>,
    /// Whether it runs (only set by tests: the fake starts no VMs).
    pub running: bool,
}

impl Vm {
    /// The `name` config value.
    pub fn name(&self) -> &str {
        self.config.get("name").and_then(Value::as_str).unwrap_or("")
    }
    /// Whether the config has `template: 1`.
    pub fn is_template(&self) -> bool {
        self.config.get("template").and_then(Value::as_u64) == Some(1)
    }
}

/// State of one task.
#[derive(Debug)]
pub(super) struct Task {
    /// Parsed UPID fields.
    pub node: String,
    pub pid: u32,
    pub pstart: u32,
    pub starttime: u64,
    pub kind: String,
    pub id: String,
    /// `None` while running; the exit status once stopped.
    pub exit: Option<String>,
    /// Log lines so far.
    pub log: Vec<String>,
    /// Aborts the worker (task stop).
    pub abort: Option<tokio::task::AbortHandle>,
    /// VM whose lock the task holds, released when it stops.
    pub locked_vm: Option<u32>,
}

/// Injected faults and slow-downs.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Pending failures: step, how, remaining count.
    pub fail: Vec<(Step, FailHow, u32)>,
    /// Steps whose tasks end with `WARNINGS: 1`.
    pub warn: BTreeSet<Step>,
    /// How long every task stays `running`.
    pub task_delay: Duration,
    /// The API token no longer authenticates.
    pub revoked: bool,
    /// `/cluster/nextid` answers that another client takes right after they are handed out.
    pub nextid_races: u32,
}

impl Faults {
    /// Consumes one pending failure of `step`, if any.
    pub fn take(&mut self, step: Step) -> Option<FailHow> {
        let i = self.fail.iter().position(|(s, _, n)| *s == step && *n > 0)?;
        let how = self.fail[i].1;
        self.fail[i].2 -= 1;
        if self.fail[i].2 == 0 {
            self.fail.remove(i);
        }
        Some(how)
    }
}

/// Everything the fake knows.
#[derive(Debug)]
pub(super) struct State {
    pub nodes: BTreeMap<String, Node>,
    pub vms: BTreeMap<u32, Vm>,
    pub tasks: BTreeMap<String, Task>,
    pub faults: Faults,
    pub requests: Vec<FakeRequest>,
    /// Next fake worker pid.
    pub next_pid: u32,
}

impl State {
    /// A cluster of `nodes`, file-backed storages under `root/<node>/<storage>`.
    pub fn new(nodes: &[String], root: &std::path::Path, task_delay: Duration) -> std::io::Result<Self> {
        let mut out = BTreeMap::new();
        for n in nodes {
            let mut storages = BTreeMap::new();
            for (id, kind, content) in STORAGES {
                let dir = root.join(n).join(id);
                std::fs::create_dir_all(dir.join("import"))?;
                let volumes = BTreeMap::new();
                storages.insert(
                    id.to_string(),
                    Storage {
                        kind,
                        content,
                        volumes,
                        dir,
                    },
                );
            }
            out.insert(n.clone(), Node { storages });
        }
        Ok(Self {
            nodes: out,
            vms: BTreeMap::new(),
            tasks: BTreeMap::new(),
            faults: Faults {
                task_delay,
                ..Faults::default()
            },
            requests: Vec::new(),
            next_pid: 0x3c6a1,
        })
    }

    /// The lowest free VM id ≥ 100 (cluster-wide).
    pub fn next_free_id(&self) -> u32 {
        (100..).find(|id| !self.vms.contains_key(id)).unwrap_or(100)
    }

    /// The storage `id` of `node`, if both exist.
    pub fn storage_mut(&mut self, node: &str, id: &str) -> Option<&mut Storage> {
        self.nodes.get_mut(node)?.storages.get_mut(id)
    }

    /// Adds a stopped VM with a minimal config; returns its id.
    pub fn insert_vm(&mut self, node: &str, vmid: u32, name: &str, template: bool) {
        let mut config = base_config(vmid);
        config.insert("name".into(), json!(name));
        if template {
            config.insert("template".into(), json!(1));
        }
        self.vms.insert(
            vmid,
            Vm {
                node: node.to_string(),
                config,
                lock: None,
                running: false,
            },
        );
    }
}

/// Keys every VM config gets on creation (besides the parameters).
pub(super) fn base_config(vmid: u32) -> BTreeMap<String, Value> {
    let now = unix_now();
    let mut c = BTreeMap::new();
    c.insert(
        "smbios1".into(),
        json!(format!("uuid=00000000-0000-4000-8000-{vmid:012x}")),
    );
    c.insert(
        "vmgenid".into(),
        json!(format!("11111111-2222-4333-8444-{vmid:012x}")),
    );
    c.insert("meta".into(), json!(format!("creation-qemu=9.2.0,ctime={now}")));
    c
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// PVE's size suffix notation (`64M`, `10G`, `512K`, bytes otherwise).
pub(super) fn format_size(bytes: u64) -> String {
    const K: u64 = 1024;
    for (unit, div) in [("T", K * K * K * K), ("G", K * K * K), ("M", K * K), ("K", K)] {
        if bytes >= div && bytes.is_multiple_of(div) {
            return format!("{}{unit}", bytes / div);
        }
    }
    bytes.to_string()
}
