//! Disk changes of VM configs: checking targets and import sources, allocating (or
//! importing) volumes, and renaming them `base-*` when a VM becomes a template.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::schema::{Alloc, Change, is_disk_key};
use super::server::PveError;
use super::state::{State, Volume, format_size, unix_now};

/// Checks target storages and import sources of disk changes before anything starts.
pub(super) fn check_disks(st: &State, node: &str, changes: &[Change]) -> Result<(), PveError> {
    let storages = &st.nodes[node].storages;
    for c in changes {
        let Change::Disk(_, plan) = c else { continue };
        let target = storages
            .get(&plan.storage)
            .ok_or_else(|| PveError::server(format!("storage '{}' does not exist", plan.storage)))?;
        if !target.has_content("images") {
            return Err(PveError::server(format!(
                "storage '{}' does not support vm images",
                plan.storage
            )));
        }
        if let Alloc::Import { storage, volume } = &plan.alloc {
            let found = storages
                .get(storage)
                .is_some_and(|s| s.volumes.contains_key(volume));
            if !found {
                return Err(PveError::server(format!(
                    "volume '{storage}:{volume}' does not exist"
                )));
            }
        }
    }
    Ok(())
}

/// Applies non-disk changes to `config`; returns the disk changes for [`apply_disks`].
pub(super) fn apply_plain(config: &mut BTreeMap<String, Value>, changes: Vec<Change>) -> Vec<Change> {
    let mut disks = Vec::new();
    for c in changes {
        match c {
            Change::Set(k, v) => {
                config.insert(k, v);
            }
            Change::Delete(k) => {
                config.remove(&k);
            }
            d @ Change::Disk(..) => disks.push(d),
        }
    }
    disks
}

/// Allocates (or imports) each disk's volume on `node` and writes the config value.
pub(super) fn apply_disks(st: &mut State, node: &str, vmid: u32, disks: Vec<Change>) -> Result<(), String> {
    for c in disks {
        let Change::Disk(key, plan) = c else { continue };
        let storages = &mut st.nodes.get_mut(node).ok_or("node vanished")?.storages;
        let (virtual_size, volname) = match &plan.alloc {
            Alloc::Existing(v) => (0, v.clone()),
            alloc => {
                let size = match alloc {
                    Alloc::Import { storage, volume } => storages
                        .get(storage)
                        .and_then(|s| s.volumes.get(volume))
                        .map(|v| v.virtual_size)
                        .ok_or_else(|| format!("volume '{storage}:{volume}' does not exist"))?,
                    Alloc::New(bytes) => *bytes,
                    Alloc::Existing(_) => 0,
                };
                let target = storages.get_mut(&plan.storage).ok_or("storage vanished")?;
                let n = (0..)
                    .find(|n| {
                        !target.volumes.contains_key(&format!("vm-{vmid}-disk-{n}"))
                            && !target.volumes.contains_key(&format!("base-{vmid}-disk-{n}"))
                    })
                    .unwrap_or(0);
                let name = format!("vm-{vmid}-disk-{n}");
                let volume = Volume {
                    size,
                    virtual_size: size,
                    format: "raw".into(),
                    vmid: Some(vmid),
                    ctime: unix_now(),
                    path: None,
                };
                target.volumes.insert(name.clone(), volume);
                (size, name)
            }
        };
        let mut value = format!("{}:{volname}", plan.storage);
        for o in &plan.opts {
            value.push(',');
            value.push_str(o);
        }
        if virtual_size > 0 && !plan.opts.iter().any(|o| o.starts_with("size=")) {
            value.push_str(&format!(",size={}", format_size(virtual_size)));
        }
        if let Some(vm) = st.vms.get_mut(&vmid) {
            vm.config.insert(key, json!(value));
        }
    }
    Ok(())
}

/// Renames the VM's `vm-N-disk-K` volumes to `base-N-disk-K` and sets `template: 1`.
pub(super) fn to_template(st: &mut State, node: &str, vmid: u32) -> Result<(), String> {
    let from = format!("vm-{vmid}-disk-");
    let to = format!("base-{vmid}-disk-");
    let vm = st.vms.get(&vmid).ok_or("VM vanished")?.clone();
    let mut config = vm.config.clone();
    for (k, v) in &vm.config {
        let Some(s) = v.as_str().filter(|_| is_disk_key(k)) else {
            continue;
        };
        let Some((storage, rest)) = s.split_once(':') else {
            continue;
        };
        let volname = rest.split(',').next().unwrap_or_default();
        if !volname.starts_with(&from) {
            continue;
        }
        let new = volname.replacen(&from, &to, 1);
        if let Some(st_) = st.storage_mut(node, storage)
            && let Some(vol) = st_.volumes.remove(volname)
        {
            st_.volumes.insert(new.clone(), vol);
        }
        config.insert(k.clone(), json!(s.replacen(volname, &new, 1)));
    }
    config.insert("template".into(), json!(1));
    st.vms.get_mut(&vmid).ok_or("VM vanished")?.config = config;
    Ok(())
}
