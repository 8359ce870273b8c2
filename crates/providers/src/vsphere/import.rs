//! Importing an OVA as a VM template, streamed from the source to the NFC lease.
//!
//! ```text
//! S3 GET ──► OvaReader ──► descriptor ──► CreateImportSpec ──► ImportVApp ──► lease ready
//!                │                                                              │
//!                └─► disk members ──► POST to device URLs (counted) ◄───────────┘
//!                                        │   (HttpNfcLeaseProgress every 2 s)
//!                                        ▼
//!                         HttpNfcLeaseComplete ──► MarkAsTemplate
//! ```
//!
//! The import spec carries ido's mark ([`super::mark`]), so the VM is recognisably ido's from
//! its creation on. Any failure after `ImportVApp` aborts the lease and destroys the half-made
//! VM (also when the import future is dropped). Memory stays flat: each disk goes from the S3 response
//! to the upload request chunk by chunk.
//!
//! Pull mode ([`super::pull`]) shares the steps around the transfer: [`import_spec`],
//! [`import_vapp`] (with its clean-up guard [`Pending`]), [`lease_ready`], [`spawn_progress`]
//! and [`complete`].

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::TryStreamExt;
use ido_io::{
    ova::{OvaMember, OvaReader},
    s3::S3Object,
};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE};
use tokio::task::JoinHandle;
use tokio_util::io::ReaderStream;

use super::VsphereError;
use super::{
    client::Client,
    lease::{DeviceUrl, FileItem, ImportParams, ImportSpec},
    mark::{self, Ownership},
    soap::{SoapError, error_chain},
    xml::{MoRef, Node},
};
use crate::{Progress, ProviderError, Result};

/// How often the lease is renewed with `HttpNfcLeaseProgress`.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Read size from the tar member into the upload.
const CHUNK: usize = 256 << 10;

/// Where an import goes (resolved inventory objects).
#[derive(Clone, Debug)]
pub struct Target {
    /// Resource pool (`ImportVApp`'s `_this`).
    pub pool: MoRef,
    /// Datastore of the disks.
    pub datastore: MoRef,
    /// VM folder of the template.
    pub folder: MoRef,
    /// Inventory path of the folder (to find the VM again), e.g. `/DC0/vm`.
    pub folder_path: String,
    /// Host to import to.
    pub host: Option<MoRef>,
    /// The network every OVF network is mapped onto.
    pub network: MoRef,
    /// The location's image suffix, if any (template names are `<image>-<suffix>`).
    pub suffix: Option<String>,
}

/// Imports the OVA `source` as template `name` into `target`; returns the template.
pub async fn import_ova(
    client: &Client,
    target: &Target,
    name: &str,
    source: &S3Object,
    progress: &Progress,
) -> Result<MoRef> {
    let stream = source.get().await?;
    let mut ova = OvaReader::from_stream(stream).await?;
    let spec = import_spec(client, target, name, &ova.descriptor, source).await?;
    let (lease, mut pending) = import_vapp(client, target, name, &spec).await?;
    let result = upload_and_finish(client, &lease, &spec, &mut ova, progress, &mut pending).await;
    pending.finish(name, result).await
}

/// `CreateImportSpec` for the OVF `descriptor` of `source` (every OVF network mapped onto the
/// target's network, thin disks). Descriptors vSphere rejects are [`ProviderError::InvalidImage`].
pub(super) async fn import_spec(
    client: &Client,
    target: &Target,
    name: &str,
    descriptor: &str,
    source: &S3Object,
) -> Result<ImportSpec> {
    let networks = ovf_networks(descriptor)?;
    let params = ImportParams {
        entity_name: name.to_string(),
        host: target.host.clone(),
        network_mapping: networks
            .into_iter()
            .map(|n| (n, target.network.clone()))
            .collect(),
        disk_provisioning: Some("thin".into()),
    };
    let spec = match client
        .create_import_spec(descriptor, &target.pool, &target.datastore, &params)
        .await
    {
        Err(e) if e.is_fault("InvalidArgument") => {
            return Err(ProviderError::InvalidImage(format!(
                "{}: OVF descriptor rejected: {e}",
                source.key()
            )));
        }
        r => r?,
    };
    for w in &spec.warnings {
        tracing::warn!(template = name, warning = %w, "OVF import warning");
    }
    if !spec.errors.is_empty() {
        let msgs: Vec<String> = spec.errors.iter().map(ToString::to_string).collect();
        return Err(ProviderError::InvalidImage(format!(
            "{}: OVF cannot be imported: {}",
            source.key(),
            msgs.join("; ")
        )));
    }
    let mut spec = spec;
    spec.spec_xml = mark::mark_import_spec(&spec.spec_xml, image_of(name, target))
        .map_err(|m| ProviderError::InvalidImage(format!("{}: {m}", source.key())))?;
    Ok(spec)
}

/// The image a template name stands for (the name without the location's suffix).
fn image_of<'a>(name: &'a str, target: &Target) -> &'a str {
    target
        .suffix
        .as_deref()
        .and_then(|s| name.strip_suffix(s))
        .and_then(|n| n.strip_suffix('-'))
        .unwrap_or(name)
}

/// `ImportVApp` of `spec`: the lease, and the guard that removes what the import makes unless
/// it is [finished](Pending::finish) successfully.
pub(super) async fn import_vapp(
    client: &Client,
    target: &Target,
    name: &str,
    spec: &ImportSpec,
) -> Result<(MoRef, Pending)> {
    let lease = client
        .import_vapp(&target.pool, spec, Some(&target.folder), target.host.as_ref())
        .await?;
    let pending = Pending {
        client: client.clone(),
        lease: lease.clone(),
        vm: None,
        path: format!("{}/{}", target.folder_path, name),
        armed: true,
    };
    Ok((lease, pending))
}

/// Waits for the lease to be ready; returns the new VM (also recorded in `pending`) and each
/// file item paired with its device URL (`fileItem.deviceId == deviceUrl.importKey`).
pub(super) async fn lease_ready<'a>(
    client: &Client,
    lease: &MoRef,
    spec: &'a ImportSpec,
    pending: &mut Pending,
) -> Result<(MoRef, Vec<(&'a FileItem, DeviceUrl)>)> {
    let info = client.lease_wait_ready(lease).await.map_err(|e| match e {
        SoapError::Fault { fault, .. } => ProviderError::api(VsphereError::LeaseFailed(fault.to_string())),
        e => e.into(),
    })?;
    let vm = info
        .entity
        .clone()
        .ok_or_else(|| ProviderError::api(VsphereError::LeaseWithoutVm))?;
    pending.vm = Some(vm.clone());
    let mut pairs = Vec::with_capacity(spec.file_items.len());
    for item in &spec.file_items {
        let du = info
            .device_urls
            .iter()
            .find(|d| d.import_key == item.device_id)
            .ok_or_else(|| {
                ProviderError::api(VsphereError::NoDevice {
                    path: item.path.clone(),
                    device: item.device_id.clone(),
                })
            })?;
        pairs.push((item, du.clone()));
    }
    Ok((vm, pairs))
}

/// `HttpNfcLeaseComplete`, then `MarkAsTemplate`.
pub(super) async fn complete(client: &Client, lease: &MoRef, vm: &MoRef) -> Result<()> {
    client.lease_complete(lease).await?;
    client.mark_as_template(vm).await?;
    Ok(())
}

async fn upload_and_finish(
    client: &Client,
    lease: &MoRef,
    spec: &ImportSpec,
    ova: &mut OvaReader,
    progress: &Progress,
    pending: &mut Pending,
) -> Result<MoRef> {
    let (vm, pairs) = lease_ready(client, lease, spec, pending).await?;
    // Keyed by OVA member path.
    let mut todo: HashMap<&str, (&FileItem, String)> = pairs
        .into_iter()
        .map(|(item, du)| (item.path.as_str(), (item, fix_url(&du.url, client.url()))))
        .collect();
    let total: u64 = spec.file_items.iter().filter_map(|f| f.size).sum();
    let sent = Arc::new(AtomicU64::new(0));
    let ticker = {
        let sent = sent.clone();
        spawn_progress(client.clone(), lease.clone(), move || {
            let done = sent.load(Ordering::Relaxed);
            done.saturating_mul(100).checked_div(total).unwrap_or(0) as u8
        })
    };

    // Members come in archive order; stop reading once every expected file went out.
    while !todo.is_empty()
        && let Some(member) = ova.next_member().await?
    {
        let Some((item, url)) = todo.remove(member.path.as_str()) else {
            tracing::debug!(member = %member.path, "skipping OVA member not in the import");
            continue;
        };
        let counted = Counter {
            sent: sent.clone(),
            progress: progress.clone(),
        };
        upload_member(client, item, &url, member, counted).await?;
    }
    if let Some(path) = todo.keys().next() {
        return Err(ProviderError::InvalidImage(format!(
            "OVA has no member {path:?}, which its OVF references"
        )));
    }
    drop(ticker);
    complete(client, lease, &vm).await?;
    Ok(vm)
}

/// Sends one OVA member to its device URL: a disk POSTed (stream-optimized VMDK), a file to
/// create PUT; `counted` counts the bytes as they go.
async fn upload_member(
    client: &Client,
    item: &FileItem,
    url: &str,
    member: OvaMember,
    counted: Counter,
) -> Result<()> {
    tracing::debug!(member = %member.path, size = member.size, "uploading");
    let body = ReaderStream::with_capacity(member.reader, CHUNK).inspect_ok(move |b| counted.add(b.len()));
    let mut req = if item.create {
        client
            .http()
            .put(url)
            .header("Overwrite", "t")
            .header(CONTENT_TYPE, "application/octet-stream")
    } else {
        client
            .http()
            .post(url)
            .header(CONTENT_TYPE, "application/x-vnd.vmware-streamVmdk")
    };
    req = req.header(CONTENT_LENGTH, member.size);
    if let Some(c) = client.session_cookie().filter(|_| same_host(url, client.url())) {
        req = req.header(COOKIE, c);
    }
    let resp = req
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .map_err(|e| {
            ProviderError::Transport(format!(
                "upload of {}: {}",
                member.path,
                error_chain(&e.without_url())
            ))
        })?;
    let status = resp.status();
    if !matches!(status.as_u16(), 200 | 201) {
        return Err(ProviderError::api(VsphereError::Upload {
            path: member.path.clone(),
            status: status.as_u16(),
        }));
    }
    Ok(())
}

/// Counts bytes handed to the HTTP client.
struct Counter {
    sent: Arc<AtomicU64>,
    progress: Progress,
}

impl Counter {
    fn add(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.progress.add(n as u64);
    }
}

/// A background task, aborted when this is dropped.
pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews `lease` every [`PROGRESS_EVERY`] with `HttpNfcLeaseProgress`, reporting `percent()`
/// (capped at 99 until the lease completes).
pub(super) fn spawn_progress(
    client: Client,
    lease: MoRef,
    percent: impl Fn() -> u8 + Send + 'static,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = client.lease_progress(&lease, percent().min(99)).await {
                tracing::warn!(lease = %lease.value, error = %e, "HttpNfcLeaseProgress failed");
            }
        }
    }))
}

/// What an import in flight leaves if it fails: the lease and (once known) the VM. Removed
/// by [`Pending::finish`] on failure, or in the background if the import future is dropped.
pub(super) struct Pending {
    client: Client,
    lease: MoRef,
    vm: Option<MoRef>,
    path: String,
    armed: bool,
}

impl Pending {
    /// Ends the import with `result`: on error, aborts the lease and removes the VM first.
    pub(super) async fn finish<T, E: std::fmt::Display>(
        mut self,
        name: &str,
        result: std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.armed = false;
        if let Err(e) = &result {
            tracing::warn!(template = name, error = %e, "import failed, removing what was made");
            cleanup(&self.client, &self.lease, self.vm.as_ref(), &self.path).await;
        }
        result
    }
}

impl Drop for Pending {
    /// The import future was dropped mid-way: clean up in the background.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (client, lease, vm, path) = (
            self.client.clone(),
            self.lease.clone(),
            self.vm.clone(),
            self.path.clone(),
        );
        ido_io::cleanup::spawn(async move { cleanup(&client, &lease, vm.as_ref(), &path).await });
    }
}

async fn cleanup(client: &Client, lease: &MoRef, vm: Option<&MoRef>, path: &str) {
    if let Err(e) = client.lease_abort(lease).await
        && !e.is_fault("ManagedObjectNotFound")
    {
        tracing::warn!(lease = %lease.value, error = %e, "HttpNfcLeaseAbort failed");
    }
    let vm = match vm {
        // The lease named it: it is ours, whatever state it got to.
        Some(v) => v.clone(),
        // Not known yet: whatever has the name now, only if it carries ido's mark and is no
        // template (a VM of another import of ido's would be a template by then).
        None => {
            let Ok(Some(v)) = client.find_by_inventory_path(path).await else {
                return;
            };
            match mark::ownership(client, &v).await {
                Ok(Some(Ownership::Ours { template: false })) => v,
                Ok(other) => {
                    tracing::debug!(%path, found = ?other, "not removing: not a half-made VM of ido's");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%path, error = %e, "cannot tell whose the VM is: leaving it");
                    return;
                }
            }
        }
    };
    if let Err(e) = remove_vm(client, &vm).await {
        tracing::warn!(vm = %vm, error = %e, "could not remove the VM of a failed import");
    }
}

/// Powers `vm` off if needed and destroys it; an already missing VM is success.
pub async fn remove_vm(client: &Client, vm: &MoRef) -> Result<(), SoapError> {
    let gone = |e: &SoapError| e.is_fault("ManagedObjectNotFound");
    let state = match client.properties(vm, &["runtime.powerState"]).await {
        Err(e) if gone(&e) => return Ok(()),
        r => r?,
    };
    if state.text("runtime.powerState") == Some("poweredOn") {
        match client.power_off(vm).await {
            Err(e) if gone(&e) => return Ok(()),
            Err(e) if e.is_fault("InvalidPowerState") => {}
            r => r?,
        }
    }
    match client.destroy(vm).await {
        Err(e) if gone(&e) => Ok(()),
        r => r,
    }
}

/// Network names of an OVF descriptor (`NetworkSection/Network@ovf:name`).
pub fn ovf_networks(descriptor: &str) -> Result<Vec<String>> {
    let root = Node::parse(descriptor.trim_start_matches('\u{feff}'))
        .map_err(|e| ProviderError::InvalidImage(format!("OVF descriptor is not valid XML: {e}")))?;
    if root.name != "Envelope" {
        return Err(ProviderError::InvalidImage(format!(
            "OVF descriptor root is <{}>, not <Envelope>",
            root.name
        )));
    }
    let mut names = Vec::new();
    for section in root.children_named("NetworkSection") {
        for n in section.children_named("Network") {
            if let Some(name) = n.attr_any_ns("name").filter(|s| !s.is_empty())
                && !names.iter().any(|x| x == name)
            {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// A device URL with host `*` pointed at the vCenter (scheme included: vcsim always says
/// `https`). `%5B`/`%5D` escapes are kept.
pub fn fix_url(url: &str, sdk: &url::Url) -> String {
    let Some(rest) = url
        .strip_prefix("https://*")
        .or_else(|| url.strip_prefix("http://*"))
    else {
        return url.to_string();
    };
    let host = match (sdk.host_str(), sdk.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return url.to_string(),
    };
    format!("{}://{host}{rest}", sdk.scheme())
}

fn same_host(url: &str, sdk: &url::Url) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.host_str() == sdk.host_str() && u.port_or_known_default() == sdk.port_or_known_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_urls_are_fixed_up() {
        let sdk = url::Url::parse("http://127.0.0.1:8989/sdk").unwrap();
        assert_eq!(
            fix_url("https://*/nfc/session%5Bk%5Dab/disk-0.vmdk", &sdk),
            "http://127.0.0.1:8989/nfc/session%5Bk%5Dab/disk-0.vmdk"
        );
        let sdk = url::Url::parse("https://vc.example/sdk").unwrap();
        assert_eq!(
            fix_url("https://*/nfc/x/disk.vmdk", &sdk),
            "https://vc.example/nfc/x/disk.vmdk"
        );
        assert_eq!(
            fix_url("https://esx1.example/nfc/x", &sdk),
            "https://esx1.example/nfc/x"
        );
    }

    #[test]
    fn networks_of_a_descriptor() {
        let ovf = r#"<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><NetworkSection><Info>n</Info><Network ovf:name="nic0"/><Network ovf:name="VM Network"/></NetworkSection></Envelope>"#;
        assert_eq!(
            ovf_networks(ovf).unwrap(),
            vec!["nic0".to_string(), "VM Network".to_string()]
        );
        assert!(matches!(
            ovf_networks("garbage"),
            Err(ProviderError::InvalidImage(_))
        ));
        assert!(matches!(
            ovf_networks("<html/>"),
            Err(ProviderError::InvalidImage(_))
        ));
    }
}
