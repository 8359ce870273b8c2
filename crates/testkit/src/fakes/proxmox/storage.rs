//! Node-level storage and network endpoints, and the checks of `download-url` (whose
//! worker is in `download`).

use std::sync::Arc;

use serde_json::{Value, json};

use super::download::{Download, fetch};
use super::server::{PveError, Reply, Req, Shared};
use super::state::IFACES;
use super::{FailHow, Step, fault, tasks};

/// Content types `download-url` accepts, with the file extensions each allows.
const DOWNLOAD_CONTENT: &[(&str, &[&str])] = &[
    ("iso", &[".iso", ".img"]),
    ("vztmpl", &[".tar.gz", ".tar.xz", ".tar.zst"]),
    ("import", &[".ova", ".qcow2", ".raw", ".vmdk"]),
];

/// `GET /nodes/{node}/storage[?content=…]`.
pub(super) fn list(sh: &Arc<Shared>, node: &str, req: &Req) -> Reply {
    req.check(&["content", "enabled", "format", "storage", "target"], &[])?;
    let st = sh.lock();
    let out = st.nodes[node]
        .storages
        .iter()
        .filter(|(id, s)| {
            req.get("content")
                .is_none_or(|c| c.split(',').all(|c| s.has_content(c)))
                && req.get("storage").is_none_or(|w| w == id.as_str())
        })
        .map(|(id, s)| {
            let used: u64 = s.volumes.values().map(|v| v.size).sum();
            json!({"storage": id, "type": s.kind, "content": s.content, "active": 1, "enabled": 1,
                "shared": 0, "total": 1u64 << 40, "used": used, "avail": (1u64 << 40) - used})
        })
        .collect();
    Ok(Value::Array(out).into())
}

/// `GET /nodes/{node}/network[?type=bridge|any_bridge|eth]`.
pub(super) fn network(_node: &str, req: &Req) -> Reply {
    req.check(&["type"], &[])?;
    let out = IFACES
        .iter()
        .filter(|(_, kind)| match req.get("type") {
            None => true,
            Some("any_bridge") => *kind == "bridge",
            Some(t) => t == *kind,
        })
        .map(|(iface, kind)| {
            json!({"iface": iface, "type": kind, "active": 1, "autostart": 1, "method": "manual",
                "families": ["inet"], "priority": 1})
        })
        .collect();
    Ok(Value::Array(out).into())
}

/// `GET /nodes/{node}/storage/{storage}/content[?content=…&vmid=…]`.
pub(super) fn content(sh: &Arc<Shared>, node: &str, storage: &str, req: &Req) -> Reply {
    req.check(&["content", "vmid"], &[])?;
    let mut st = sh.lock();
    let s = st
        .storage_mut(node, storage)
        .ok_or_else(|| PveError::server(format!("storage '{storage}' does not exist")))?;
    let out = s
        .volumes
        .iter()
        .map(|(name, v)| {
            let content = if name.starts_with("import/") {
                "import"
            } else {
                "images"
            };
            let mut e = json!({"volid": format!("{storage}:{name}"), "format": v.format, "size": v.size,
                "ctime": v.ctime, "content": content});
            if let Some(id) = v.vmid {
                e["vmid"] = json!(id);
            }
            e
        })
        .filter(|e| req.get("content").is_none_or(|c| e["content"] == c))
        .filter(|e| {
            req.get("vmid")
                .is_none_or(|id| id.parse::<u64>().ok() == e["vmid"].as_u64())
        })
        .collect();
    Ok(Value::Array(out).into())
}

/// `DELETE /nodes/{node}/storage/{storage}/content/{volume}`: a task; a volume that is
/// already gone ends it with `WARNINGS: 1`.
pub(super) fn delete_volume(sh: &Arc<Shared>, node: &str, storage: &str, volume: &str, req: &Req) -> Reply {
    req.check(&["delay"], &[])?;
    let (storage, name) = match volume.split_once(':') {
        Some((s, n)) => (s.to_string(), n.to_string()),
        None => (storage.to_string(), volume.to_string()),
    };
    if sh.lock().storage_mut(node, &storage).is_none() {
        return Err(PveError::server(format!("storage '{storage}' does not exist")));
    }
    let how = fault(sh, Step::DeleteImport);
    match how {
        Some(FailHow::Forbidden) => {
            return Err(PveError::forbidden(
                &format!("/storage/{storage}"),
                "Datastore.Allocate",
            ));
        }
        Some(FailHow::Http) => return Err(PveError::server("injected fault")),
        _ => {}
    }
    let (sh2, node2) = (sh.clone(), node.to_string());
    let upid = tasks::spawn(
        sh,
        node,
        "imgdel",
        "",
        Some(Step::DeleteImport),
        None,
        async move {
            if how == Some(FailHow::Task) {
                return Err("injected fault".to_string());
            }
            let removed = sh2
                .lock()
                .storage_mut(&node2, &storage)
                .and_then(|s| s.volumes.remove(&name));
            match removed {
                Some(v) => {
                    if let Some(p) = v.path {
                        let _ = tokio::fs::remove_file(p).await;
                    }
                    Ok(vec![format!("Removed volume '{storage}:{name}'")])
                }
                None => Ok(vec![format!("WARN: volume '{storage}:{name}' does not exist")]),
            }
        },
    );
    Ok(json!(upid).into())
}

/// `POST /nodes/{node}/storage/{storage}/download-url`.
pub(super) fn download_url(sh: &Arc<Shared>, node: &str, storage: &str, req: &Req) -> Reply {
    let known = [
        "url",
        "content",
        "filename",
        "checksum",
        "checksum-algorithm",
        "compression",
        "verify-certificates",
    ];
    req.check(&known, &["url", "content", "filename"])?;
    let get = |k| req.get(k).unwrap_or_default();
    let (url, content, file) = (get("url"), get("content"), get("filename"));
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(PveError::param(
            "url",
            "invalid format - value does not look like a valid url",
        ));
    }
    let Some((_, exts)) = DOWNLOAD_CONTENT.iter().find(|(c, _)| *c == content) else {
        return Err(PveError::param(
            "content",
            format!("value '{content}' does not have a value in the enumeration 'iso, vztmpl, import'"),
        ));
    };
    let name_ok = file.len() <= 255
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+=-".contains(&b))
        && exts.iter().any(|e| file.len() > e.len() && file.ends_with(e));
    if !name_ok {
        return Err(PveError::param("filename", "invalid filename or wrong extension"));
    }
    let checksum = match (req.get("checksum"), req.get("checksum-algorithm")) {
        (Some(c), Some(a)) if ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"].contains(&a) => {
            Some((a.to_string(), c.to_lowercase()))
        }
        (Some(_), Some(a)) => {
            return Err(PveError::param(
                "checksum-algorithm",
                format!(
                    "value '{a}' does not have a value in the enumeration 'md5, sha1, sha224, sha256, sha384, sha512'"
                ),
            ));
        }
        (Some(_), None) => {
            return Err(PveError::param(
                "checksum-algorithm",
                "missing property - 'checksum' requires this property",
            ));
        }
        (None, Some(_)) => {
            return Err(PveError::param(
                "checksum",
                "missing property - 'checksum-algorithm' requires this property",
            ));
        }
        (None, None) => None,
    };
    {
        let mut st = sh.lock();
        let s = st
            .storage_mut(node, storage)
            .ok_or_else(|| PveError::server(format!("storage '{storage}' does not exist")))?;
        if !s.has_content(content) {
            return Err(PveError::server(format!(
                "storage '{storage}' is not configured for content-type '{content}'"
            )));
        }
    }
    let how = fault(sh, Step::Download);
    match how {
        Some(FailHow::Forbidden) => {
            return Err(PveError::forbidden(
                &format!("/storage/{storage}"),
                "Datastore.AllocateTemplate",
            ));
        }
        Some(FailHow::Http) => return Err(PveError::server("injected fault")),
        _ => {}
    }
    let d = Download {
        node: node.into(),
        storage: storage.into(),
        file: file.into(),
        url: url.into(),
        checksum,
        compressed: req.get("compression").is_some(),
        import: content == "import",
    };
    let upid_cell = Arc::new(std::sync::OnceLock::<String>::new());
    let (sh2, cell) = (sh.clone(), upid_cell.clone());
    let upid = tasks::spawn(
        sh,
        node,
        "download",
        &tasks::encode_id(file),
        Some(Step::Download),
        None,
        async move {
            let upid = cell.get().cloned().unwrap_or_default();
            let r = fetch(&sh2, &upid, &d).await;
            if how == Some(FailHow::Task) {
                // A worker killed after the file landed: the file stays behind.
                return Err("unexpected status".to_string());
            }
            r
        },
    );
    let _ = upid_cell.set(upid.clone());
    Ok(json!(upid).into())
}
