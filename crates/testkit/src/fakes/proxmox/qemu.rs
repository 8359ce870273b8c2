//! Cluster and qemu endpoints: `nextid`, `resources`, VM create/list/config/template/destroy.
//!
//! Like PVE, `POST …/qemu`, `POST …/config`, `POST …/template` and `DELETE …/qemu/{id}` run as
//! tasks that hold the VM's lock; `PUT …/config` is synchronous. Volumes are allocated when
//! the task runs, and a template's disks are renamed `base-*`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::disks::{apply_disks, apply_plain, check_disks, to_template};
use super::schema::{Alloc, Change, config_changes};
use super::server::{PveError, Reply, Req, Shared};
use super::state::State;
use super::{FailHow, Step, fault, tasks};

/// Parameters of `POST /nodes/{node}/qemu` besides the config keys.
const CREATE_EXTRA: &[&str] = &["start", "pool", "storage", "import-working-storage", "unique"];
/// Parameters of `…/config` besides the config keys.
const CONFIG_EXTRA: &[&str] = &[
    "delete",
    "digest",
    "background_delay",
    "skiplock",
    "revert",
    "force",
];

/// `GET /cluster/nextid[?vmid=N]`: the lowest free id, as a string (like real servers).
pub(super) fn next_id(sh: &Arc<Shared>, req: &Req) -> Reply {
    req.check(&["vmid"], &[])?;
    let wanted = req.int("vmid", 100, 999_999_999)?;
    match fault(sh, Step::NextId) {
        Some(FailHow::Forbidden) => return Err(PveError::forbidden("/vms", "VM.Allocate")),
        Some(_) => return Err(PveError::server("unable to get next VMID (injected fault)")),
        None => {}
    }
    let mut st = sh.lock();
    if let Some(id) = wanted {
        let id = id as u32;
        if st.vms.contains_key(&id) {
            return Err(PveError::param("vmid", format!("VM {id} already exists")));
        }
        return Ok(json!(id.to_string()).into());
    }
    let id = st.next_free_id();
    if st.faults.nextid_races > 0 {
        st.faults.nextid_races -= 1;
        let node = st.nodes.keys().next().cloned().unwrap_or_default();
        st.insert_vm(&node, id, &format!("racer-{id}"), false);
    }
    Ok(json!(id.to_string()).into())
}

/// `GET /cluster/resources[?type=vm|storage|node]`.
pub(super) fn resources(sh: &Arc<Shared>, req: &Req) -> Reply {
    req.check(&["type"], &[])?;
    let kind = req.get("type");
    if let Some(k) = kind.filter(|k| !["vm", "storage", "node", "sdn"].contains(k)) {
        return Err(PveError::param(
            "type",
            format!("value '{k}' does not have a value in the enumeration 'vm, storage, node, sdn'"),
        ));
    }
    let st = sh.lock();
    let mut out = Vec::new();
    if kind.is_none_or(|k| k == "vm") {
        for (id, vm) in &st.vms {
            let mut e = vm_summary(&st, *id);
            e["id"] = json!(format!("qemu/{id}"));
            e["type"] = json!("qemu");
            e["node"] = json!(vm.node);
            e["template"] = json!(u8::from(vm.is_template()));
            out.push(e);
        }
    }
    if kind.is_none_or(|k| k == "storage") {
        for (n, node) in &st.nodes {
            for (s, storage) in &node.storages {
                out.push(json!({"id": format!("storage/{n}/{s}"), "type": "storage", "storage": s, "node": n,
                    "plugintype": storage.kind, "content": storage.content, "status": "available", "shared": 0}));
            }
        }
    }
    if kind.is_none_or(|k| k == "node") {
        for n in st.nodes.keys() {
            out.push(json!({"id": format!("node/{n}"), "type": "node", "node": n, "status": "online"}));
        }
    }
    Ok(Value::Array(out).into())
}

/// `GET /nodes/{node}/qemu`: the VMs whose config lives on `node`.
pub(super) fn list(sh: &Arc<Shared>, node: &str, req: &Req) -> Reply {
    req.check(&["full"], &[])?;
    let st = sh.lock();
    let vms = st
        .vms
        .iter()
        .filter(|(_, vm)| vm.node == node)
        .map(|(id, vm)| {
            let mut e = vm_summary(&st, *id);
            if vm.is_template() {
                e["template"] = json!(1);
            }
            e
        })
        .collect();
    Ok(Value::Array(vms).into())
}

/// The fields `/nodes/{n}/qemu` and `/cluster/resources` share.
fn vm_summary(st: &State, id: u32) -> Value {
    let vm = &st.vms[&id];
    let mem: u64 = vm
        .config
        .get("memory")
        .and_then(Value::as_str)
        .and_then(|m| m.parse().ok())
        .unwrap_or(512);
    let status = if vm.running { "running" } else { "stopped" };
    let mut e = json!({"vmid": id, "name": vm.name(), "status": status, "maxmem": mem << 20,
        "cpus": vm.config.get("cores").and_then(Value::as_u64).unwrap_or(1), "maxdisk": 0, "uptime": 0,
        "cpu": 0, "mem": 0, "disk": 0, "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0});
    if let Some(t) = vm.config.get("tags") {
        e["tags"] = t.clone();
    }
    if let Some(l) = &vm.lock {
        e["lock"] = json!(l);
    }
    e
}

/// `POST /nodes/{node}/qemu`.
pub(super) fn create(sh: &Arc<Shared>, node: &str, req: &Req) -> Reply {
    let allowed: Vec<&str> = super::schema::CONFIG_KEYS
        .iter()
        .chain(CREATE_EXTRA)
        .copied()
        .collect();
    let id = req.int("vmid", 100, 999_999_999)?.unwrap_or_default() as u32;
    let changes = PveError::merge(req.check(&allowed, &["vmid"]), config_changes(req, id))?;
    let how = fault(sh, Step::Create);
    if how == Some(FailHow::Forbidden) {
        return Err(PveError::forbidden(&format!("/vms/{id}"), "VM.Allocate"));
    }
    if how == Some(FailHow::Http) {
        return Err(PveError::server(format!(
            "unable to create VM {id} - injected fault"
        )));
    }
    let mut st = sh.lock();
    if let Some(other) = st.vms.get(&id) {
        return Err(PveError::server(format!(
            "unable to create VM {id} - VM {id} already exists on node '{}'",
            other.node
        )));
    }
    check_disks(&st, node, &changes)?;
    st.insert_vm(node, id, "", false);
    let vm = st.vms.get_mut(&id).expect("just inserted");
    vm.config.remove("name");
    vm.lock = Some("create".into());
    let disks = apply_plain(&mut vm.config, changes);
    drop(st);
    let sh2 = sh.clone();
    let node2 = node.to_string();
    let upid = tasks::spawn(
        sh,
        node,
        "qmcreate",
        &id.to_string(),
        Some(Step::Create),
        Some(id),
        async move {
            let mut st = sh2.lock();
            let r = if how == Some(FailHow::Task) {
                Err("injected fault".to_string())
            } else {
                apply_disks(&mut st, &node2, id, disks)
            };
            r.map(|()| Vec::new()).map_err(|e| {
                st.vms.remove(&id);
                format!("unable to create VM {id} - {e}")
            })
        },
    );
    Ok(json!(upid).into())
}

/// `GET /nodes/{node}/qemu/{id}/config`.
pub(super) fn config_get(sh: &Arc<Shared>, node: &str, id: &str, req: &Req) -> Reply {
    req.check(&["current", "snapshot"], &[])?;
    let st = sh.lock();
    let (id, vm) = vm_on(&st, node, id)?;
    let mut c: serde_json::Map<String, Value> = vm.config.clone().into_iter().collect();
    if let Some(l) = &vm.lock {
        c.insert("lock".into(), json!(l));
    }
    let text = Value::Object(c.clone()).to_string();
    c.insert("digest".into(), json!(digest(&format!("{id}{text}"))));
    Ok(Value::Object(c).into())
}

/// `POST` (task) and `PUT` (synchronous) `/nodes/{node}/qemu/{id}/config`.
pub(super) fn config_set(sh: &Arc<Shared>, node: &str, id: &str, req: &Req) -> Reply {
    let allowed: Vec<&str> = super::schema::CONFIG_KEYS
        .iter()
        .chain(CONFIG_EXTRA)
        .copied()
        .collect();
    let vmid = vm_on(&sh.lock(), node, id)?.0;
    let changes = PveError::merge(req.check(&allowed, &[]), config_changes(req, vmid))?;
    let imports = changes
        .iter()
        .any(|c| matches!(c, Change::Disk(_, p) if matches!(p.alloc, Alloc::Import { .. })));
    let step = if imports {
        Step::Import
    } else if req.params.contains_key("tags") {
        Step::Tag
    } else if req.params.contains_key("boot") {
        Step::Boot
    } else {
        Step::Config
    };
    let how = fault(sh, step);
    if how == Some(FailHow::Forbidden) {
        let privilege = if imports {
            "VM.Config.Disk"
        } else {
            "VM.Config.Options"
        };
        return Err(PveError::forbidden(&format!("/vms/{vmid}"), privilege));
    }
    let sync = req.method == "PUT";
    if how == Some(FailHow::Http) || (sync && how == Some(FailHow::Task)) {
        return Err(PveError::server(format!(
            "{step:?} of VM {vmid} failed (injected fault)"
        )));
    }
    let mut st = sh.lock();
    let vm = &st.vms[&vmid];
    if let Some(lock) = vm
        .lock
        .as_ref()
        .filter(|_| !req.boolean("skiplock").unwrap_or(false))
    {
        return Err(PveError::server(format!("VM {vmid} is locked ({lock})")));
    }
    if vm.is_template() && changes.iter().any(|c| matches!(c, Change::Disk(..))) {
        return Err(PveError::server(format!(
            "VM {vmid} is a template - unable to change disks"
        )));
    }
    check_disks(&st, node, &changes)?;
    if sync {
        let vm = st.vms.get_mut(&vmid).expect("checked");
        let disks = apply_plain(&mut vm.config, changes);
        apply_disks(&mut st, node, vmid, disks).map_err(PveError::server)?;
        return Ok(Value::Null.into());
    }
    st.vms.get_mut(&vmid).expect("checked").lock = Some("config".into());
    drop(st);
    let (sh2, node2) = (sh.clone(), node.to_string());
    let upid = tasks::spawn(
        sh,
        node,
        "qmconfig",
        &vmid.to_string(),
        Some(step),
        Some(vmid),
        async move {
            if how == Some(FailHow::Task) {
                return Err(format!("{step:?} failed (injected fault)"));
            }
            let mut st = sh2.lock();
            let vm = st.vms.get_mut(&vmid).ok_or("VM vanished")?;
            let disks = apply_plain(&mut vm.config, changes);
            apply_disks(&mut st, &node2, vmid, disks).map(|()| Vec::new())
        },
    );
    Ok(json!(upid).into())
}

/// `POST /nodes/{node}/qemu/{id}/template`.
pub(super) fn template(sh: &Arc<Shared>, node: &str, id: &str, req: &Req) -> Reply {
    req.check(&["disk"], &[])?;
    let how = fault(sh, Step::Template);
    let mut st = sh.lock();
    let (vmid, vm) = vm_on(&st, node, id)?;
    if how == Some(FailHow::Forbidden) {
        return Err(PveError::forbidden(&format!("/vms/{vmid}"), "VM.Allocate"));
    }
    if how == Some(FailHow::Http) {
        return Err(PveError::server("injected fault"));
    }
    if let Some(lock) = &vm.lock {
        return Err(PveError::server(format!("VM {vmid} is locked ({lock})")));
    }
    if vm.is_template() {
        return Err(PveError::server("you can't convert a template to a template"));
    }
    st.vms.get_mut(&vmid).expect("checked").lock = Some("template".into());
    drop(st);
    let (sh2, node2) = (sh.clone(), node.to_string());
    let upid = tasks::spawn(
        sh,
        node,
        "qmtemplate",
        &vmid.to_string(),
        Some(Step::Template),
        Some(vmid),
        async move {
            if how == Some(FailHow::Task) {
                return Err("injected fault".to_string());
            }
            let mut st = sh2.lock();
            to_template(&mut st, &node2, vmid)?;
            Ok(Vec::new())
        },
    );
    Ok(json!(upid).into())
}

/// `DELETE /nodes/{node}/qemu/{id}[?purge=1&destroy-unreferenced-disks=1]`.
pub(super) fn destroy(sh: &Arc<Shared>, node: &str, id: &str, req: &Req) -> Reply {
    req.check(&["purge", "destroy-unreferenced-disks", "skiplock"], &[])?;
    let how = fault(sh, Step::Destroy);
    let mut st = sh.lock();
    let (vmid, vm) = vm_on(&st, node, id)?;
    if how == Some(FailHow::Forbidden) {
        return Err(PveError::forbidden(&format!("/vms/{vmid}"), "VM.Allocate"));
    }
    if how == Some(FailHow::Http) {
        return Err(PveError::server("injected fault"));
    }
    if let Some(lock) = vm
        .lock
        .as_ref()
        .filter(|_| !req.boolean("skiplock").unwrap_or(false))
    {
        return Err(PveError::server(format!("VM {vmid} is locked ({lock})")));
    }
    if vm.running {
        return Err(PveError::server(format!("VM {vmid} is running - destroy failed")));
    }
    st.vms.get_mut(&vmid).expect("checked").lock = Some("destroyed".into());
    drop(st);
    let (sh2, node2) = (sh.clone(), node.to_string());
    let upid = tasks::spawn(
        sh,
        node,
        "qmdestroy",
        &vmid.to_string(),
        Some(Step::Destroy),
        Some(vmid),
        async move {
            if how == Some(FailHow::Task) {
                return Err("injected fault".to_string());
            }
            let mut st = sh2.lock();
            st.vms.remove(&vmid);
            let mut lines = Vec::new();
            for (sid, storage) in &mut st.nodes.get_mut(&node2).ok_or("node vanished")?.storages {
                let owned: Vec<String> = storage
                    .volumes
                    .iter()
                    .filter(|(_, v)| v.vmid == Some(vmid))
                    .map(|(k, _)| k.clone())
                    .collect();
                for v in owned {
                    storage.volumes.remove(&v);
                    lines.push(format!("Removed volume '{sid}:{v}'"));
                }
            }
            lines.push(format!("purging VM {vmid} from related configurations.."));
            Ok(lines)
        },
    );
    Ok(json!(upid).into())
}

/// The VM `id` if its config lives on `node`; PVE's 500 otherwise.
fn vm_on<'a>(st: &'a State, node: &str, id: &str) -> Result<(u32, &'a super::state::Vm), PveError> {
    let vmid: u32 = id
        .parse()
        .map_err(|_| PveError::param("vmid", format!("type check ('integer') failed - got '{id}'")))?;
    st.vms
        .get(&vmid)
        .filter(|vm| vm.node == node)
        .map(|vm| (vmid, vm))
        .ok_or_else(|| {
            PveError::server(format!(
                "Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"
            ))
        })
}

/// A config digest (40 hex digits, like PVE's SHA-1).
fn digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .take(20)
        .map(|b| format!("{b:02x}"))
        .collect()
}
