//! vSphere (capv): VM templates imported from OVAs through a small vim25 SOAP client.
//!
//! - [`xml`]: element tree (namespace-aware) and request writer.
//! - [`soap`]: transport, session cookie, faults.
//! - [`client`]: the typed client (sessions, keepalive, inventory and task calls).
//! - [`lease`]: `CreateImportSpec`, `ImportVApp` and the NFC lease calls.
//! - [`import`]: the streamed OVA import (push mode).
//! - [`pull`]: pull mode (vSphere downloads the OVA from S3), falling back to push.
//! - this module: the `vsphere:` configuration (its [`REGISTRATION`]) and the [`Provider`]
//!   implementation.
//!
//! Templates are named `<image>[-<imagesuffix>]` alike in create, exists and delete. Every VM
//! ido imports carries ido's mark in its `extraConfig` ([`mark`]). A marked VM of that name
//! that is not a template is the leftover of a failed attempt: `exists` removes it and reports
//! the template absent. Anything of that name without the mark (or powered on) is a
//! [`ProviderError::NameClash`]: never deleted, never replaced.

pub mod client;
pub mod import;
mod inventory;
pub mod lease;
pub mod mark;
pub mod pull;
pub mod soap;
pub mod xml;

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use ido_io::{http::TlsOptions, s3::S3Object};
use serde::Deserialize;
use url::Url;

pub use self::client::Client;
use self::{client::Login, mark::Ownership, soap::SoapError, xml::MoRef};
use crate::{
    Bindings, Progress, Provider, ProviderConfig, ProviderError, Registration, Result, SourceFormat, Template,
};

/// The `vsphere:` section of the configuration (the original's Helm values).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsphereConfig {
    /// Whether the provider runs at all.
    #[serde(default)]
    pub enabled: bool,
    /// Pull mode: vSphere downloads the OVA from S3 itself (`HttpNfcLeasePullFromUrls_Task`,
    /// vSphere 6.7+; ESXi hosts need to reach S3). Push mode is used where it is unsupported.
    #[serde(default, rename = "pullFromURL")]
    pub pull_from_url: bool,
    /// Skip TLS verification of vCenter (and of NFC uploads). Off by default.
    #[serde(default)]
    pub insecure: bool,
    /// Extra CA certificates (PEM) trusted for vCenter.
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// Where and as whom to log in.
    #[serde(default)]
    pub credentials: VsphereCredentials,
    /// Locations by name.
    #[serde(default)]
    pub locations: BTreeMap<String, VsphereLocation>,
}

/// vCenter and login. `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsphereCredentials {
    /// `host[:port]` (meaning `https://host[:port]/sdk`) or a full URL.
    #[serde(default)]
    pub vcenter: String,
    /// User name, e.g. `administrator@vsphere.local`.
    #[serde(default)]
    pub username: String,
    /// Password: only ever sent in the `Login` call; never logged or shown.
    #[serde(default)]
    pub password: String,
}

impl fmt::Debug for VsphereCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VsphereCredentials")
            .field("vcenter", &self.vcenter)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl VsphereCredentials {
    /// The SDK endpoint: `host[:port]` → `https://host[:port]/sdk`; a URL without a path
    /// gets `/sdk`.
    pub fn sdk_url(&self) -> Result<Url> {
        let v = self.vcenter.trim();
        let bad = |message: String| ProviderError::Config {
            key: "vsphere.credentials.vcenter".into(),
            message: format!("{:?}: {message}", redact_userinfo(v)),
        };
        if v.is_empty() {
            return Err(ProviderError::Config {
                key: "vsphere.credentials.vcenter".into(),
                message: "must be set (host[:port] or https://host[:port]/sdk)".into(),
            });
        }
        let text = if v.contains("://") {
            v.to_string()
        } else {
            format!("https://{v}/sdk")
        };
        let mut url = Url::parse(&text).map_err(|e| bad(format!("not a host[:port] or URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("scheme must be https (or http)".into()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not hold credentials: use vsphere.credentials.username/password".into(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a query or fragment".into()));
        }
        if url.path() == "/" || url.path().is_empty() {
            url.set_path("/sdk");
        }
        Ok(url)
    }
}

/// One location: where templates go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsphereLocation {
    /// Datacenter name (or inventory path).
    #[serde(default)]
    pub datacenter: String,
    /// Datastore name under the datacenter.
    #[serde(default)]
    pub datastore: String,
    /// Cluster (or standalone host's compute resource) under `/<dc>/host`.
    #[serde(default)]
    pub cluster: String,
    /// VM folder: relative to the datacenter's `vm` folder, or an absolute inventory path;
    /// empty or `vm` means the `vm` folder itself.
    #[serde(default)]
    pub folder: String,
    /// Resource pool under the cluster's `Resources` (or under the cluster, or absolute);
    /// default the cluster's `Resources`.
    #[serde(default, alias = "resourcePool")]
    pub resourcepool: Option<String>,
    /// Host in the cluster; default the first usable one.
    #[serde(default)]
    pub host: Option<String>,
    /// Network name under `/<dc>/network`; default the datacenter's first network.
    #[serde(default)]
    pub network: Option<String>,
    /// Appended to template names as `-<imagesuffix>`.
    #[serde(default, alias = "imageSuffix")]
    pub imagesuffix: Option<String>,
}

impl VsphereLocation {
    /// Template name of `image` here: `<image>-<imagesuffix>` when a suffix is set.
    pub fn template_name(&self, image: &str) -> String {
        match self
            .imagesuffix
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(s) => format!("{image}-{s}"),
            None => image.to_string(),
        }
    }

    /// Inventory path of the datacenter, e.g. `/DC0`.
    pub fn datacenter_path(&self) -> String {
        format!("/{}", self.datacenter.trim_matches('/'))
    }

    /// Inventory path of the VM folder, e.g. `/DC0/vm/templates`.
    pub fn folder_path(&self) -> String {
        let f = self.folder.trim();
        if f.starts_with('/') {
            return format!("/{}", f.trim_matches('/'));
        }
        let f = f.trim_matches('/');
        let f = f.strip_prefix("vm/").unwrap_or(f);
        match f {
            "" | "vm" => format!("{}/vm", self.datacenter_path()),
            rel => format!("{}/vm/{rel}", self.datacenter_path()),
        }
    }

    /// Inventory path of the template of `image`.
    pub fn template_path(&self, image: &str) -> String {
        format!("{}/{}", self.folder_path(), self.template_name(image))
    }
}

impl VsphereConfig {
    /// Checks the section; errors name the full key (`vsphere.locations.loc1.datastore`) and
    /// the value at fault. Never echoes the password.
    pub fn validate(&self) -> Result<()> {
        let err = |key: String, message: String| Err(ProviderError::Config { key, message });
        self.credentials.sdk_url()?;
        if self.credentials.username.trim().is_empty() {
            return err("vsphere.credentials.username".into(), "must be set".into());
        }
        if self.credentials.password.is_empty() {
            return err("vsphere.credentials.password".into(), "must be set".into());
        }
        if self.locations.is_empty() {
            return err("vsphere.locations".into(), "no location configured".into());
        }
        for (name, l) in &self.locations {
            let key = |f: &str| format!("vsphere.locations.{name}.{f}");
            if name.trim().is_empty() {
                return err(
                    "vsphere.locations".into(),
                    format!("{name:?}: location names must not be empty"),
                );
            }
            for (field, value) in [
                ("datacenter", &l.datacenter),
                ("datastore", &l.datastore),
                ("cluster", &l.cluster),
            ] {
                if value.trim().is_empty() {
                    return err(key(field), format!("{value:?}: must be set"));
                }
            }
            for (field, value) in [("datastore", Some(&l.datastore)), ("network", l.network.as_ref())] {
                if let Some(v) = value
                    && v.starts_with('/')
                    && v.trim_matches('/').is_empty()
                {
                    return err(key(field), format!("{v:?}: not an inventory path"));
                }
            }
            for (field, value) in [("host", &l.host), ("imagesuffix", &l.imagesuffix)] {
                if let Some(v) = value
                    && (v.trim().is_empty() || v.contains('/'))
                {
                    return err(key(field), format!("{v:?}: must be a non-empty name without '/'"));
                }
            }
        }
        Ok(())
    }
}

use ido_io::redact::userinfo as redact_userinfo;

/// What vSphere did that an import cannot go on from (besides the SOAP errors).
#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    #[error("no usable host in cluster {cluster} (connected, not in maintenance mode, powered on)")]
    NoUsableHost { cluster: String },
    #[error("vSphere import lease failed: {0}")]
    LeaseFailed(String),
    #[error("vSphere import lease names no VM")]
    LeaseWithoutVm,
    #[error("vSphere lease has no device for {path} ({device})")]
    NoDevice { path: String, device: String },
    #[error("upload of {path}: HTTP {status}")]
    Upload { path: String, status: u16 },
    #[error("vSphere could not pull {url}: {fault}")]
    PullFailed { url: String, fault: String },
}

impl From<SoapError> for ProviderError {
    fn from(e: SoapError) -> Self {
        match &e {
            SoapError::Fault { fault, .. } if fault.is("InvalidLogin") => ProviderError::Config {
                key: "vsphere.credentials".into(),
                message: format!("{e}: check the username and password"),
            },
            SoapError::Http {
                status: 502..=504, ..
            }
            | SoapError::Transport { .. } => ProviderError::Transport(e.to_string()),
            _ => ProviderError::api(e),
        }
    }
}

/// The `vsphere:` section registered ([`crate::BUILT_IN`] lists it).
pub const REGISTRATION: Registration = Registration::of::<VsphereConfig>();

impl ProviderConfig for VsphereConfig {
    const SECTION: &'static str = "vsphere";
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn build(&self, _: &Bindings) -> Result<Arc<dyn Provider>> {
        Ok(Arc::new(VsphereProvider::new(self)?))
    }
}

/// The `capv` provider: one vCenter session shared by all locations.
#[derive(Debug)]
pub struct VsphereProvider {
    client: Client,
    locations: BTreeMap<String, VsphereLocation>,
    pull: bool,
}

impl VsphereProvider {
    /// Validates `cfg` and prepares the client; connects lazily on first use.
    pub fn new(cfg: &VsphereConfig) -> Result<Self> {
        Self::with_keepalive(cfg, client::KEEPALIVE)
    }

    /// [`VsphereProvider::new`] with a keepalive interval other than [`client::KEEPALIVE`].
    pub fn with_keepalive(cfg: &VsphereConfig, keepalive: Duration) -> Result<Self> {
        cfg.validate()?;
        let tls = TlsOptions {
            insecure: cfg.insecure,
            ca_bundle: cfg.ca_bundle.clone(),
        };
        let http = ido_io::http::client(&tls, "vsphere.caBundle")?;
        let login = Login {
            username: cfg.credentials.username.clone(),
            password: cfg.credentials.password.clone(),
        };
        let client = Client::new(http, cfg.credentials.sdk_url()?, login, keepalive);
        Ok(Self {
            client,
            locations: cfg.locations.clone(),
            pull: cfg.pull_from_url,
        })
    }

    /// The vim25 client (shared session).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends the session (the next call logs in again).
    pub async fn logout(&self) -> Result<()> {
        Ok(self.client.logout().await?)
    }

    /// The configured location `name`.
    pub fn location(&self, name: &str) -> Result<&VsphereLocation> {
        self.locations.get(name).ok_or_else(|| ProviderError::Config {
            key: format!("vsphere.locations.{name}"),
            message: format!("location {name:?} is not configured"),
        })
    }
}

fn check_image(image: &str) -> Result<()> {
    if image.is_empty() || image.contains('/') {
        return Err(ProviderError::InvalidImage(format!(
            "{image:?} cannot name a vSphere template"
        )));
    }
    Ok(())
}

#[async_trait]
impl Provider for VsphereProvider {
    fn id(&self) -> &'static str {
        "capv"
    }
    fn release_prefix(&self) -> &'static str {
        "vsphere"
    }

    fn format(&self) -> SourceFormat {
        SourceFormat::Ova
    }

    fn locations(&self) -> Vec<String> {
        self.locations.keys().cloned().collect()
    }

    async fn exists(&self, location: &str, image: &str) -> Result<Option<Template>> {
        check_image(image)?;
        let path = self.location(location)?.template_path(image);
        let Some(obj) = self.client.find_by_inventory_path(&path).await? else {
            return Ok(None);
        };
        match mark::ownership(&self.client, &obj).await? {
            None => Ok(None),
            Some(Ownership::Ours { template: true }) => Ok(Some(Template {
                reference: obj.to_string(),
                path,
            })),
            Some(Ownership::Ours { template: false }) => {
                tracing::warn!(%path, vm = %obj, "removing ido's VM left by a failed import (not a template)");
                import::remove_vm(&self.client, &obj).await?;
                Ok(None)
            }
            Some(Ownership::Clash(owner)) => Err(name_clash(location, &path, &obj, owner)),
        }
    }

    async fn create(
        &self,
        location: &str,
        image: &str,
        source: &S3Object,
        progress: &Progress,
    ) -> Result<Template> {
        if let Some(t) = self.exists(location, image).await? {
            return Ok(t);
        }
        let loc = self.location(location)?;
        let target = inventory::resolve(&self.client, location, loc).await?;
        let name = loc.template_name(image);
        tracing::info!(location, template = %name, source = %source.display_url(), pull = self.pull, "importing OVA");
        let vm = if self.pull {
            pull::pull_ova(&self.client, &target, &name, source, progress).await?
        } else {
            import::import_ova(&self.client, &target, &name, source, progress).await?
        };
        tracing::info!(location, template = %name, vm = %vm, bytes = progress.get(), "template created");
        Ok(Template {
            reference: vm.to_string(),
            path: loc.template_path(image),
        })
    }

    async fn delete(&self, location: &str, image: &str) -> Result<()> {
        check_image(image)?;
        let path = self.location(location)?.template_path(image);
        let Some(obj) = self.client.find_by_inventory_path(&path).await? else {
            return Ok(());
        };
        match mark::ownership(&self.client, &obj).await? {
            None => Ok(()),
            Some(Ownership::Ours { .. }) => {
                import::remove_vm(&self.client, &obj).await?;
                tracing::info!(location, %path, "template deleted");
                Ok(())
            }
            Some(Ownership::Clash(owner)) => Err(name_clash(location, &path, &obj, owner)),
        }
    }
}

/// The clash with `obj` at `path`, logged.
fn name_clash(location: &str, path: &str, obj: &MoRef, owner: String) -> ProviderError {
    tracing::warn!(location, %path, object = %obj, %owner, "name clash: leaving the object alone");
    ProviderError::NameClash {
        location: location.to_string(),
        name: format!("{path} ({obj})"),
        owner,
    }
}

#[cfg(test)]
mod tests;
