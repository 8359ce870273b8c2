//! Proxmox VE (capmox): VM templates from qcow2 images through the Proxmox REST API only.
//!
//! - [`config`]: the `proxmox:` section and its validation.
//! - [`api`]: the typed HTTP client (token auth, envelope).
//! - [`error`]: its errors and the mapping from HTTP status and body.
//! - [`task`]: UPIDs and waiting for tasks.
//! - `build`: the template build with cleanup on failure.
//! - this module: the [`Provider`] implementation and the section's [`REGISTRATION`].
//!
//! Proxmox downloads the image itself (`download-url`), so the node needs outbound access
//! to S3; private buckets work through presigned URLs. Each location is one node: the
//! template is the VM named after the image **on that node** with `template: 1` and the tag
//! [`MANAGED_TAG`](crate::MANAGED_TAG) (ido's mark, set when the VM is created). A tagged VM of
//! that name that is not a template is the leftover of a failed attempt: `exists` removes it
//! and reports the template absent. A VM of that name without the tag (or running) is a
//! [`ProviderError::NameClash`]: never purged. Locations share one client and run
//! concurrently.
//!
//! The API token needs `VM.*`, `Datastore.*`, `SDN.*`, `Sys.AccessNetwork` and `Sys.Audit`
//! on `/`; the import storage needs the `import` content type (PVE ≥ 8.4 for qcow2).

pub mod api;
mod build;
pub mod config;
pub mod error;
pub mod task;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use ido_io::{http::TlsOptions, s3::S3Object};
use serde_json::Value;
use tokio::sync::OnceCell;

pub use self::build::{all_tags, template_tags};
pub use self::config::{ProxmoxConfig, ProxmoxCredentials, ProxmoxLocation};
use self::{
    api::{ApiError, Client},
    build::{Ctx, Source},
    task::TaskPolicy,
};
use crate::{
    Bindings, Progress, Provider, ProviderConfig, ProviderError, Registration, Result, SourceFormat, Template,
};

/// Oldest PVE release whose `download-url` takes qcow2 into `import` storage.
const MIN_VERSION: (u32, u32) = (8, 4);
/// Largest sidecar read.
const MAX_SIDECAR: usize = 4096;

impl From<ApiError> for ProviderError {
    fn from(e: ApiError) -> Self {
        match &e {
            ApiError::Unauthorized { .. } => ProviderError::Config {
                key: "proxmox.credentials".into(),
                message: format!(
                    "{e}: check user, realm, tokenId and secret, and that the token is not revoked"
                ),
            },
            ApiError::Forbidden { .. } => ProviderError::Config {
                key: "proxmox.credentials.tokenId".into(),
                message: format!(
                    "{e}: the token needs VM.*, Datastore.*, SDN.*, Sys.AccessNetwork and Sys.Audit on /"
                ),
            },
            ApiError::Transport { .. }
            | ApiError::Status {
                status: 502..=504 | 595 | 596,
                ..
            } => ProviderError::Transport(e.to_string()),
            _ => ProviderError::api(e),
        }
    }
}

/// The `proxmox:` section registered ([`crate::BUILT_IN`] lists it).
pub const REGISTRATION: Registration = Registration::of::<ProxmoxConfig>();

impl ProviderConfig for ProxmoxConfig {
    const SECTION: &'static str = "proxmox";
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn build(&self, _: &Bindings) -> Result<Arc<dyn Provider>> {
        Ok(Arc::new(ProxmoxProvider::new(self)?))
    }
}

/// The `capmox` provider: one API client shared by all locations (nodes).
#[derive(Debug)]
pub struct ProxmoxProvider {
    api: Client,
    policy: TaskPolicy,
    locations: BTreeMap<String, ProxmoxLocation>,
    /// Set once `/version` said the server is new enough.
    version_ok: OnceCell<String>,
}

impl ProxmoxProvider {
    /// Validates `cfg` and prepares the client; nothing is contacted yet.
    pub fn new(cfg: &ProxmoxConfig) -> Result<Self> {
        let policy = TaskPolicy {
            timeout: Duration::from_secs(
                cfg.task_timeout_seconds
                    .unwrap_or(config::DEFAULT_TASK_TIMEOUT_SECS),
            ),
            ..TaskPolicy::default()
        };
        Self::with_task_policy(cfg, policy)
    }

    /// [`ProxmoxProvider::new`] with another task polling policy (`taskTimeoutSeconds` is
    /// ignored: `policy.timeout` applies).
    pub fn with_task_policy(cfg: &ProxmoxConfig, policy: TaskPolicy) -> Result<Self> {
        cfg.validate()?;
        let c = &cfg.credentials;
        let tls = TlsOptions {
            insecure: c.insecure,
            ca_bundle: cfg.ca_bundle.clone(),
        };
        let http = ido_io::http::client(&tls, "proxmox.caBundle")?;
        let api = Client::new(http, c.api_url()?, c.token_name(), &c.secret).ok_or_else(|| {
            ProviderError::Config {
                key: "proxmox.credentials".into(),
                message: format!(
                    "{}: cannot form an Authorization header (value not shown)",
                    c.token_name()
                ),
            }
        })?;
        Ok(Self {
            api,
            policy,
            locations: cfg.locations.clone(),
            version_ok: OnceCell::new(),
        })
    }

    /// The API client.
    pub fn client(&self) -> &Client {
        &self.api
    }

    /// The configured location `name`.
    pub fn location(&self, name: &str) -> Result<&ProxmoxLocation> {
        self.locations.get(name).ok_or_else(|| ProviderError::Config {
            key: format!("proxmox.locations.{name}"),
            message: format!("location {name:?} is not configured"),
        })
    }

    fn ctx<'a>(&'a self, location: &'a str, loc: &'a ProxmoxLocation) -> Ctx<'a> {
        Ctx {
            api: &self.api,
            policy: &self.policy,
            location,
            loc,
        }
    }

    /// Checks once that the server is PVE ≥ 8.4 (and that the token works); returns its version.
    pub async fn check_version(&self) -> Result<&str> {
        let v = self
            .version_ok
            .get_or_try_init(|| async {
                let data: Value = self.api.get(&["version"], &[]).await?;
                let version = data
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
                let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                if found < MIN_VERSION {
                    return Err(ProviderError::api(ApiError::TooOld {
                        version,
                        needed: MIN_VERSION,
                    }));
                }
                Ok(version)
            })
            .await?;
        Ok(v)
    }

    /// Checks that the location's node, storages and bridge exist and fit; errors name the
    /// location's key.
    pub async fn check_location(&self, name: &str) -> Result<()> {
        let loc = self.location(name)?;
        let key = |f: &str| format!("proxmox.locations.{name}.{f}");
        let node = loc.node.as_str();
        let nodes: Vec<Value> = self.api.get(&["nodes"], &[]).await?;
        let names: Vec<&str> = nodes
            .iter()
            .filter_map(|n| n.get("node").and_then(Value::as_str))
            .collect();
        if !names.contains(&node) {
            return Err(ProviderError::Config {
                key: key("node"),
                message: format!(
                    "{node:?}: no such node in the cluster (nodes: {})",
                    names.join(", ")
                ),
            });
        }
        let storages: Vec<Value> = self.api.get(&["nodes", node, "storage"], &[]).await?;
        for (field, id, content) in [
            ("importStorage", &loc.import_storage, "import"),
            ("storagePool", &loc.storage_pool, "images"),
        ] {
            let s = storages
                .iter()
                .find(|s| s.get("storage").and_then(Value::as_str) == Some(id.as_str()));
            let Some(s) = s else {
                return Err(ProviderError::Config {
                    key: key(field),
                    message: format!("{id:?}: no such storage on node {node}"),
                });
            };
            let contents = s.get("content").and_then(Value::as_str).unwrap_or_default();
            if !contents.split(',').any(|c| c == content) {
                return Err(ProviderError::Config {
                    key: key(field),
                    message: format!(
                        "{id:?} on node {node} lacks the {content:?} content type (has {contents:?})"
                    ),
                });
            }
            if s.get("active").is_some_and(|a| !api::as_bool(a)) {
                return Err(ProviderError::Config {
                    key: key(field),
                    message: format!("{id:?} on node {node} is not active"),
                });
            }
        }
        let ifaces: Vec<Value> = self
            .api
            .get(&["nodes", node, "network"], &[("type", "any_bridge")])
            .await?;
        let bridges: Vec<&str> = ifaces
            .iter()
            .filter_map(|i| i.get("iface").and_then(Value::as_str))
            .collect();
        if !bridges.contains(&loc.bridge.as_str()) {
            return Err(ProviderError::Config {
                key: key("bridge"),
                message: format!(
                    "{:?}: no such bridge on node {node} (bridges: {})",
                    loc.bridge,
                    bridges.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// On a server-side failure, a wrong location is the likelier cause: report it by key.
    async fn diagnose<T>(&self, location: &str, r: Result<T, ApiError>) -> Result<T> {
        match r {
            Err(e @ ApiError::Status { .. }) => match self.check_location(location).await {
                Err(c @ ProviderError::Config { .. }) => Err(c),
                _ => Err(e.into()),
            },
            r => Ok(r?),
        }
    }
}

/// Template names are VM names: PVE's DNS-name format, short enough for `<name>.qcow2`.
fn check_image(image: &str) -> Result<()> {
    let ok = !image.is_empty()
        && image.len() <= 240
        && image.split('.').all(|l| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ProviderError::InvalidImage(format!(
            "{image:?} cannot name a Proxmox VM (DNS name: labels of letters, digits and '-')"
        )))
    }
}

/// The sha256 of `source` from its `<key>.sha256` sidecar (`sha256sum` output or a bare
/// digest), if the sidecar exists.
pub(crate) async fn sidecar_sha256(source: &S3Object) -> Result<Option<String>> {
    let sidecar = source.sibling(&format!("{}.sha256", source.key()));
    let mut stream = match sidecar.get().await {
        Ok(s) => s,
        Err(ido_io::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = Vec::new();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| ProviderError::Transport(format!("{}: {e}", sidecar.display_url())))?
    {
        text.extend_from_slice(&chunk);
        if text.len() > MAX_SIDECAR {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text);
    let base = source.key().rsplit('/').next().unwrap_or_default();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|l: &Vec<&str>| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .find(|l| l.get(1).is_some_and(|f| f.trim_start_matches('*') == base))
        .or(lines.first());
    match line.map(|l| l[0]) {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(h.to_ascii_lowercase()))
        }
        _ => Err(ProviderError::InvalidImage(format!(
            "{}: not a sha256 sidecar (expected 64 hex digits)",
            sidecar.display_url()
        ))),
    }
}

#[async_trait]
impl Provider for ProxmoxProvider {
    fn id(&self) -> &'static str {
        "capmox"
    }
    fn release_prefix(&self) -> &'static str {
        "proxmox"
    }

    fn format(&self) -> SourceFormat {
        SourceFormat::Qcow2
    }

    fn locations(&self) -> Vec<String> {
        self.locations.keys().cloned().collect()
    }

    async fn exists(&self, location: &str, image: &str) -> Result<Option<Template>> {
        check_image(image)?;
        let loc = self.location(location)?;
        let node = loc.node.as_str();
        let vms = self
            .diagnose(location, build::vms_named(&self.api, node, image).await)
            .await?;
        let cx = self.ctx(location, loc);
        let mut found = None;
        let mut clash = None;
        for vm in vms {
            if !vm.is_ours() || vm.running {
                clash.get_or_insert(vm);
                continue;
            }
            if vm.template {
                found.get_or_insert(vm.vmid);
                continue;
            }
            tracing::warn!(
                location,
                node,
                vmid = vm.vmid,
                image,
                "removing ido's VM left by a failed build (not a template)"
            );
            build::purge(&cx, vm.vmid).await?;
        }
        match (found, clash) {
            (Some(vmid), clash) => {
                if let Some(c) = clash {
                    tracing::warn!(location, node, image, other = %c.describe(), "another VM has the template's name");
                }
                Ok(Some(Template {
                    reference: format!("{node}/qemu/{vmid}"),
                    path: format!("{node}/{image}"),
                }))
            }
            (None, Some(c)) => Err(name_clash(location, node, image, &c)),
            (None, None) => Ok(None),
        }
    }

    async fn create(
        &self,
        location: &str,
        image: &str,
        source: &S3Object,
        progress: &Progress,
    ) -> Result<Template> {
        check_image(image)?;
        let loc = self.location(location)?;
        self.check_version().await?;
        self.check_location(location).await?;
        if let Some(t) = self.exists(location, image).await? {
            return Ok(t);
        }
        let info = source
            .head()
            .await?
            .ok_or_else(|| ProviderError::SourceMissing(source.display_url()))?;
        let src = Source {
            url: source.download_url().to_string(),
            display: source.display_url(),
            size: info.size,
            sha256: sidecar_sha256(source).await?,
        };
        let vmid = build::build(&self.ctx(location, loc), image, &src, progress).await?;
        tracing::info!(location, node = %loc.node, vmid, image, bytes = progress.get(), "template created");
        Ok(Template {
            reference: format!("{}/qemu/{vmid}", loc.node),
            path: format!("{}/{image}", loc.node),
        })
    }

    async fn delete(&self, location: &str, image: &str) -> Result<()> {
        check_image(image)?;
        let loc = self.location(location)?;
        let vms = self
            .diagnose(location, build::vms_named(&self.api, &loc.node, image).await)
            .await?;
        let cx = self.ctx(location, loc);
        let mut clash = None;
        for vm in vms {
            if !vm.is_ours() || vm.running {
                clash.get_or_insert(vm);
                continue;
            }
            build::purge(&cx, vm.vmid).await?;
            tracing::info!(location, node = %loc.node, vmid = vm.vmid, image, template = vm.template, "template deleted");
        }
        match clash {
            Some(c) => Err(name_clash(location, &loc.node, image, &c)),
            None => Ok(()),
        }
    }
}

/// The clash with `vm`, logged.
fn name_clash(location: &str, node: &str, image: &str, vm: &build::VmEntry) -> ProviderError {
    let owner = vm.describe();
    tracing::warn!(location, node, image, vmid = vm.vmid, %owner, "name clash: leaving the VM alone");
    ProviderError::NameClash {
        location: location.to_string(),
        name: format!("{node}/{image}"),
        owner,
    }
}

#[cfg(test)]
mod tests;
