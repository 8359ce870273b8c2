//! Building a template on one node, and the VM and import-file calls it shares with
//! `exists`/`delete`.
//!
//! Steps: `download-url` into the import storage (with the S3 sidecar's sha256 when there is
//! one), VMID from `/cluster/nextid` (retried when another client takes it), create the VM
//! tagged [`MANAGED_TAG`] (ido's mark), import the disk, set the boot order, convert to a
//! template, add the version tags (failure only logged), delete the import file. A failure at
//! any step purges the VM (if one was created) and deletes the import file, best effort,
//! before the error is returned. Import files are named `ido-<image>.qcow2`, so a file ido
//! removes is one of its own.

use serde_json::Value;

use super::ProxmoxLocation;
use super::api::{ApiError, Client, as_bool, as_u32};
use super::task::{self, TaskPolicy, upid_of};
use crate::{MANAGED_TAG, Progress, ProviderError, Result};

/// How many VMIDs are tried when others take them between `nextid` and create.
const VMID_ATTEMPTS: usize = 5;

/// One node's API context.
pub(super) struct Ctx<'a> {
    pub api: &'a Client,
    pub policy: &'a TaskPolicy,
    /// Location name (for logs).
    pub location: &'a str,
    pub loc: &'a ProxmoxLocation,
}

/// What Proxmox downloads.
pub(super) struct Source {
    /// URL Proxmox can GET (presigned for private buckets; never logged).
    pub url: String,
    /// URL without signature, for logs.
    pub display: String,
    /// Bytes (from HEAD), added to the progress once the download is done.
    pub size: u64,
    /// sha256 (lowercase hex) from the sidecar, if any.
    pub sha256: Option<String>,
}

/// A VM of the image's name on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct VmEntry {
    pub vmid: u32,
    pub template: bool,
    /// Its tags (`tags`, split on `;`, `,` and spaces as PVE does).
    pub tags: Vec<String>,
    /// `status` is `running`.
    pub running: bool,
}

impl VmEntry {
    /// Whether it carries ido's mark, the tag [`MANAGED_TAG`].
    pub fn is_ours(&self) -> bool {
        self.tags.iter().any(|t| t == MANAGED_TAG)
    }

    /// What it is, for a name clash's message.
    pub fn describe(&self) -> String {
        let what = if self.template {
            "a template"
        } else if self.running {
            "a running VM"
        } else {
            "a VM"
        };
        let tags = if self.tags.is_empty() {
            "no tags".to_string()
        } else {
            format!("tags {:?}", self.tags.join(";"))
        };
        if self.is_ours() {
            format!(
                "{what} (VMID {}) tagged {MANAGED_TAG}: ido never destroys a running VM",
                self.vmid
            )
        } else {
            format!(
                "{what} (VMID {}, {tags}) without ido's tag {MANAGED_TAG}",
                self.vmid
            )
        }
    }
}

/// The import file of `image`: `ido-<image>.qcow2` (ido's own, by its name).
pub(super) fn import_file(image: &str) -> String {
    format!("ido-{image}.qcow2")
}

/// The tags of the template of `image`: [`MANAGED_TAG`], then the version tags if any.
pub fn all_tags(image: &str) -> String {
    match template_tags(image) {
        Some(v) => format!("{MANAGED_TAG};{v}"),
        None => MANAGED_TAG.to_string(),
    }
}

/// Tags from an image name `flatcar-<ch>-<flatcar>-kube-<k8s>-tooling-<tooling>[-gs]`:
/// `flatcar_<v>;kubernetes_<v>;os-tooling_<v>;release-channel_<ch>`. `None` for other names.
pub fn template_tags(image: &str) -> Option<String> {
    let rest = image.strip_prefix("flatcar-")?;
    let (channel, rest) = rest.split_once('-')?;
    let (flatcar, rest) = rest.split_once("-kube-")?;
    let (kube, tooling) = rest.split_once("-tooling-")?;
    let tooling = tooling.strip_suffix("-gs").unwrap_or(tooling);
    let kube = kube.strip_prefix('v').unwrap_or(kube);
    let tooling = tooling.strip_prefix('v').unwrap_or(tooling);
    let ok = |v: &str| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
    };
    [channel, flatcar, kube, tooling].iter().all(|v| ok(v)).then(|| {
        format!("flatcar_{flatcar};kubernetes_{kube};os-tooling_{tooling};release-channel_{channel}")
            .to_lowercase()
    })
}

/// Builds the template of `image`; returns its VMID. Cleans up after any failure.
pub(super) async fn build(cx: &Ctx<'_>, image: &str, src: &Source, progress: &Progress) -> Result<u32> {
    let file = import_file(image);
    let mut vmid = None;
    let result = steps(cx, image, &file, src, progress, &mut vmid).await;
    if let Err(e) = &result {
        tracing::warn!(location = cx.location, node = %cx.loc.node, image, vmid, error = %e,
            "template build failed; removing what it left");
        cleanup(cx, &file, vmid).await;
    }
    result
}

/// The steps; `vmid` is set as soon as a VM of ours exists.
async fn steps(
    cx: &Ctx<'_>,
    image: &str,
    file: &str,
    src: &Source,
    progress: &Progress,
    vmid: &mut Option<u32>,
) -> Result<u32> {
    let (node, imp) = (cx.loc.node.as_str(), cx.loc.import_storage.as_str());
    let volid = format!("{imp}:import/{file}");
    if import_file_exists(cx, &volid).await? {
        // Left by an earlier attempt: download-url would refuse to overwrite it.
        tracing::info!(location = cx.location, node, %volid, "removing a stale import file");
        delete_volume(cx, &volid).await?;
    }

    tracing::info!(location = cx.location, node, image, source = %src.display, checksum = src.sha256.is_some(),
        "Proxmox downloads the image");
    let mut form = vec![
        ("content", "import"),
        ("filename", file),
        ("url", src.url.as_str()),
    ];
    if let Some(sum) = &src.sha256 {
        form.extend([("checksum", sum.as_str()), ("checksum-algorithm", "sha256")]);
    }
    let path = ["nodes", node, "storage", imp, "download-url"];
    run(cx, &path, cx.api.post(&path, &form).await)
        .await
        .map_err(download_error)?;
    progress.add(src.size);

    let id = create_vm(cx, image, vmid).await?;
    let ids = id.to_string();
    let config = ["nodes", node, "qemu", ids.as_str(), "config"];
    let disk = format!("{}:0,import-from={volid}", cx.loc.storage_pool);
    tracing::info!(location = cx.location, node, vmid = id, %disk, "importing the disk");
    run(
        cx,
        &config,
        cx.api.post(&config, &[("scsi0", disk.as_str())]).await,
    )
    .await?;
    cx.api.put::<Value>(&config, &[("boot", "order=scsi0")]).await?;
    let template = ["nodes", node, "qemu", ids.as_str(), "template"];
    run(cx, &template, cx.api.post(&template, &[]).await).await?;

    if template_tags(image).is_some() {
        // Replaces the tags: ido's mark stays among them.
        let tags = all_tags(image);
        if let Err(e) = cx.api.put::<Value>(&config, &[("tags", tags.as_str())]).await {
            tracing::warn!(location = cx.location, node, vmid = id, error = %e, "cannot add the version tags");
        }
    } else {
        tracing::info!(
            image,
            "no version tags: the image name is not flatcar-<channel>-<v>-kube-<v>-tooling-<v>"
        );
    }
    delete_volume(cx, &volid).await?;
    Ok(id)
}

/// Allocates a VMID and creates the VM, retrying when the id is taken meanwhile.
async fn create_vm(cx: &Ctx<'_>, image: &str, vmid: &mut Option<u32>) -> Result<u32> {
    let loc = cx.loc;
    let node = loc.node.as_str();
    let (memory, cores) = (loc.memory.to_string(), loc.cores.to_string());
    let net0 = format!("{},bridge={}", loc.net_model, loc.bridge);
    let path = ["nodes", node, "qemu"];
    for attempt in 1..=VMID_ATTEMPTS {
        let next: Value = cx.api.get(&["cluster", "nextid"], &[]).await?;
        let id = as_u32(&next).ok_or_else(|| ApiError::Decode {
            call: "GET /cluster/nextid".into(),
            message: format!("not a VMID: {next}"),
        })?;
        let ids = id.to_string();
        let form = [
            ("vmid", ids.as_str()),
            ("name", image),
            ("memory", memory.as_str()),
            ("cores", cores.as_str()),
            ("scsihw", loc.scsihw.as_str()),
            ("bios", loc.bios.as_str()),
            ("agent", "1"),
            ("net0", net0.as_str()),
            ("tags", MANAGED_TAG),
        ];
        let answer = match cx.api.post::<Value>(&path, &form).await {
            Err(e) if e.is_vmid_taken() => {
                tracing::info!(
                    location = cx.location,
                    node,
                    vmid = id,
                    attempt,
                    "VMID taken meanwhile; trying another"
                );
                continue;
            }
            r => r?,
        };
        *vmid = Some(id);
        match run(cx, &path, Ok(answer)).await {
            Err(e) if e.is_vmid_taken() => {
                // The config belongs to whoever took the id: not ours to purge.
                *vmid = None;
                tracing::info!(
                    location = cx.location,
                    node,
                    vmid = id,
                    attempt,
                    "VMID taken meanwhile; trying another"
                );
            }
            r => {
                r?;
                tracing::info!(location = cx.location, node, vmid = id, image, "VM created");
                return Ok(id);
            }
        }
    }
    Err(ProviderError::api(super::error::ApiError::NoFreeVmid {
        node: node.to_string(),
        attempts: VMID_ATTEMPTS,
    }))
}

/// Removes what a failed build left, logging (never returning) failures.
async fn cleanup(cx: &Ctx<'_>, file: &str, vmid: Option<u32>) {
    if let Some(id) = vmid
        && let Err(e) = purge(cx, id).await
    {
        tracing::warn!(location = cx.location, node = %cx.loc.node, vmid = id, error = %e, "cannot remove the VM");
    }
    let volid = format!("{}:import/{file}", cx.loc.import_storage);
    let r = match import_file_exists(cx, &volid).await {
        Ok(true) => delete_volume(cx, &volid).await,
        other => other.map(drop),
    };
    if let Err(e) = r {
        tracing::warn!(location = cx.location, node = %cx.loc.node, %volid, error = %e, "cannot remove the import file");
    }
}

/// A download failure: the image's fault when PVE rejected the file itself.
fn download_error(e: ApiError) -> ProviderError {
    let text = e.server_text();
    let image_at_fault = matches!(e, ApiError::TaskFailed { .. })
        && [
            "failed to verify",
            "checksum mismatch",
            "not a qcow2",
            "invalid format",
        ]
        .iter()
        .any(|m| text.contains(m));
    if image_at_fault {
        ProviderError::InvalidImage(format!("Proxmox rejected the download: {e}"))
    } else {
        e.into()
    }
}

/// Waits for the task a call started (a `null` answer means it already finished).
async fn run(cx: &Ctx<'_>, path: &[&str], answer: Result<Value, ApiError>) -> Result<(), ApiError> {
    let call = format!("/{}", path.join("/"));
    match upid_of(&call, &answer?)? {
        Some(upid) => task::wait(cx.api, &upid, cx.policy).await,
        None => Ok(()),
    }
}

/// The VMs named `name` on `node` (`GET /nodes/{node}/qemu`, which reads the configs and is
/// immediately consistent, unlike `/cluster/resources`).
pub(super) async fn vms_named(api: &Client, node: &str, name: &str) -> Result<Vec<VmEntry>, ApiError> {
    let list: Vec<Value> = api.get(&["nodes", node, "qemu"], &[]).await?;
    let mut out: Vec<VmEntry> = list
        .iter()
        .filter(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .filter_map(|v| {
            Some(VmEntry {
                vmid: as_u32(v.get("vmid")?)?,
                template: v.get("template").is_some_and(as_bool),
                tags: v
                    .get("tags")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .split([';', ',', ' '])
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
                running: v.get("status").and_then(Value::as_str) == Some("running"),
            })
        })
        .collect();
    out.sort_by_key(|v| v.vmid);
    Ok(out)
}

/// Destroys a VM with its disks; an absent VM is success.
pub(super) async fn purge(cx: &Ctx<'_>, vmid: u32) -> Result<(), ApiError> {
    let ids = vmid.to_string();
    let path = ["nodes", cx.loc.node.as_str(), "qemu", ids.as_str()];
    let answer = cx
        .api
        .delete(&path, &[("purge", "1"), ("destroy-unreferenced-disks", "1")])
        .await;
    match run(cx, &path, answer).await {
        Err(e) if e.is_missing_vm() => Ok(()),
        r => r,
    }
}

/// Whether `volid` is listed in the import storage.
async fn import_file_exists(cx: &Ctx<'_>, volid: &str) -> Result<bool, ApiError> {
    let path = [
        "nodes",
        cx.loc.node.as_str(),
        "storage",
        cx.loc.import_storage.as_str(),
        "content",
    ];
    let list: Vec<Value> = cx.api.get(&path, &[("content", "import")]).await?;
    Ok(list
        .iter()
        .any(|v| v.get("volid").and_then(Value::as_str) == Some(volid)))
}

/// Deletes a volume of the import storage and waits (`WARNINGS` when already gone is fine).
async fn delete_volume(cx: &Ctx<'_>, volid: &str) -> Result<(), ApiError> {
    let path = [
        "nodes",
        cx.loc.node.as_str(),
        "storage",
        cx.loc.import_storage.as_str(),
        "content",
        volid,
    ];
    run(cx, &path, cx.api.delete(&path, &[]).await).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ido_tags_its_templates() {
        assert_eq!(
            all_tags("flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs"),
            "ido-managed;flatcar_3975.2.0;kubernetes_1.30.4;os-tooling_1.18.1;release-channel_stable"
        );
        assert_eq!(all_tags("ubuntu-24.04"), "ido-managed");
        assert_eq!(import_file("img"), "ido-img.qcow2");
    }

    #[test]
    fn tags_come_from_the_image_name() {
        assert_eq!(
            template_tags("flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs").as_deref(),
            Some("flatcar_3975.2.0;kubernetes_1.30.4;os-tooling_1.18.1;release-channel_stable")
        );
        assert_eq!(
            template_tags("flatcar-beta-4459.1.0-kube-v1.34.5-tooling-v1.27.0").as_deref(),
            Some("flatcar_4459.1.0;kubernetes_1.34.5;os-tooling_1.27.0;release-channel_beta")
        );
        assert_eq!(template_tags("ubuntu-24.04"), None);
        assert_eq!(template_tags("flatcar-stable-1-kube-1.30.4"), None);
    }
}
