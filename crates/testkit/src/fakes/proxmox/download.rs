//! The `download-url` worker: really fetches the URL into the storage's `import/`
//! directory (through a temporary file), verifies the checksum and checks the file with
//! `qemu-img info` (a `.qcow2` must really be qcow2, without a backing file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::digest::DynDigest;
use tokio::io::AsyncWriteExt;

use super::server::Shared;
use super::state::{Volume, unix_now};
use super::tasks;

/// A `download-url` request, checked.
pub(super) struct Download {
    pub node: String,
    pub storage: String,
    pub file: String,
    pub url: String,
    pub checksum: Option<(String, String)>,
    pub compressed: bool,
    pub import: bool,
}

/// The download task's work.
pub(super) async fn fetch(sh: &Arc<Shared>, upid: &str, d: &Download) -> Result<Vec<String>, String> {
    let volname = format!("import/{}", d.file);
    let (dir, existing) = {
        let mut st = sh.lock();
        let s = st.storage_mut(&d.node, &d.storage).ok_or("storage vanished")?;
        (s.dir.clone(), s.volumes.get(&volname).cloned())
    };
    let dest = dir.join(&volname);
    if d.import && d.compressed {
        return Err("decompression not supported for import".into());
    }
    if existing.is_some() {
        if let Some((alg, want)) = &d.checksum
            && hash_file(&dest, alg).await? == *want
        {
            return Ok(vec![format!(
                "file already exists {} - no need to download",
                dest.display()
            )]);
        }
        return Err(format!("refusing to override existing file '{}'", dest.display()));
    }
    tasks::log_line(sh, upid, format!("downloading {} to {}", d.url, dest.display()));
    let tmp = dir
        .join("import")
        .join(format!(".{}.tmp_{}", d.file, std::process::id()));
    let result = download_and_check(sh, d, &tmp).await;
    let (size, virtual_size, format, mut lines) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&tmp, &dest)
        .await
        .map_err(|e| format!("rename failed: {e}"))?;
    let volume = Volume {
        size,
        virtual_size,
        format,
        vmid: None,
        ctime: unix_now(),
        path: Some(dest.clone()),
    };
    let mut st = sh.lock();
    st.storage_mut(&d.node, &d.storage)
        .ok_or("storage vanished")?
        .volumes
        .insert(volname, volume);
    lines.push(format!(
        "download of '{}' to '{}' finished",
        d.url,
        dest.display()
    ));
    Ok(lines)
}

/// Fetches into `tmp`, checks the checksum and the image; returns size, virtual size, format
/// and log lines.
async fn download_and_check(
    sh: &Shared,
    d: &Download,
    tmp: &Path,
) -> Result<(u64, u64, String, Vec<String>), String> {
    let mut resp = sh
        .http
        .get(&d.url)
        .send()
        .await
        .map_err(|e| format!("download failed: {}", e.without_url()))?;
    if !resp.status().is_success() {
        return Err(format!("download failed: HTTP {}", resp.status()));
    }
    let mut out = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| format!("unable to create '{}': {e}", tmp.display()))?;
    let mut hasher = d.checksum.as_ref().map(|(a, _)| hasher(a)).transpose()?;
    let mut size = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("download failed: {}", e.without_url()))?
    {
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        size += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| format!("write failed: {e}"))?;
    }
    out.flush().await.map_err(|e| format!("write failed: {e}"))?;
    drop(out);
    let mut lines = Vec::new();
    if let (Some(h), Some((_, want))) = (hasher, &d.checksum) {
        let got = hex(&h.finalize());
        if got != *want {
            return Err(format!("checksum mismatch: got '{got}' != expect '{want}'"));
        }
        lines.push("checksum verification successful".into());
    }
    let expected = d.file.rsplit('.').next().unwrap_or_default();
    let (format, virtual_size) = if d.import && expected != "ova" {
        let info = qemu_img_info(tmp).await?;
        let format = info["format"].as_str().unwrap_or_default().to_string();
        if format != expected {
            return Err(format!(
                "failed to verify file: '{}' is not a {expected} image (detected format '{format}')",
                d.file
            ));
        }
        if info.get("backing-filename").is_some() {
            return Err(format!("failed to verify file: '{}' has a backing file", d.file));
        }
        (format, info["virtual-size"].as_u64().unwrap_or(size))
    } else {
        (expected.to_string(), size)
    };
    Ok((size, virtual_size, format, lines))
}

/// `qemu-img info --output=json` of a file.
async fn qemu_img_info(path: &Path) -> Result<Value, String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .await
        .map_err(|e| format!("failed to verify file: running qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "failed to verify file: qemu-img info: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("failed to verify file: qemu-img output: {e}"))
}

/// A hasher for a PVE checksum algorithm (md5 and sha1 are not supported by the fake).
fn hasher(alg: &str) -> Result<Box<dyn DynDigest + Send>, String> {
    use sha2::Digest;
    Ok(match alg {
        "sha224" => Box::new(sha2::Sha224::new()),
        "sha256" => Box::new(sha2::Sha256::new()),
        "sha384" => Box::new(sha2::Sha384::new()),
        "sha512" => Box::new(sha2::Sha512::new()),
        other => {
            return Err(format!(
                "checksum algorithm '{other}' is not supported by this fake"
            ));
        }
    })
}

/// Hashes a file on disk.
async fn hash_file(path: &PathBuf, alg: &str) -> Result<String, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("reading '{}': {e}", path.display()))?;
    let mut h = hasher(alg)?;
    h.update(&bytes);
    Ok(hex(&h.finalize()))
}

/// Lowercase hex.
fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}
