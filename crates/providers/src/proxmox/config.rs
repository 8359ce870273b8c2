//! The `proxmox:` section of the configuration (the original's Helm values plus the VM
//! shape, which the original hard-coded) and its validation.

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;
use url::Url;

use crate::{ProviderError, Result};

/// Default `importStorage`.
pub const DEFAULT_IMPORT_STORAGE: &str = "local";
/// Port used when `credentials.url` is a bare `host` (PVE's API port).
pub const DEFAULT_PORT: u16 = 8006;
/// Default of `taskTimeoutSeconds`: how long one Proxmox task may run (the original's 30 min).
pub const DEFAULT_TASK_TIMEOUT_SECS: u64 = 30 * 60;

/// Values of `scsihw` Proxmox accepts.
const SCSIHW: &[&str] = &[
    "lsi",
    "lsi53c810",
    "virtio-scsi-pci",
    "virtio-scsi-single",
    "megasas",
    "pvscsi",
];
/// Values of `bios` Proxmox accepts.
const BIOS: &[&str] = &["seabios", "ovmf"];
/// NIC models Proxmox accepts in `netN`.
const NET_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

/// The `proxmox:` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxmoxConfig {
    /// Whether the provider runs at all.
    #[serde(default)]
    pub enabled: bool,
    /// Where and with which API token to connect.
    #[serde(default)]
    pub credentials: ProxmoxCredentials,
    /// Extra CA certificates (PEM) trusted for the API.
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// How long one Proxmox task (download, import, …) may run; default
    /// [`DEFAULT_TASK_TIMEOUT_SECS`].
    #[serde(default)]
    pub task_timeout_seconds: Option<u64>,
    /// Locations by name; each is one node.
    #[serde(default)]
    pub locations: BTreeMap<String, ProxmoxLocation>,
}

/// API endpoint and token. `Debug` never shows the secret.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxmoxCredentials {
    /// `host[:port]` (meaning `https://host:port/api2/json`, port 8006 by default) or an
    /// `https://` URL (`/api2/json` is appended unless present).
    #[serde(default)]
    pub url: String,
    /// User the token belongs to, e.g. `ido` (or `ido@pve`, then `realm` must be unset or equal).
    #[serde(default)]
    pub user: String,
    /// Realm of the user; default `pam`.
    #[serde(default)]
    pub realm: Option<String>,
    /// Token id, e.g. `capmox`.
    #[serde(default)]
    pub token_id: String,
    /// Token secret (a UUID): only ever sent in the `Authorization` header.
    #[serde(default)]
    pub secret: String,
    /// Skip TLS verification (self-signed PVE certificates). Off by default.
    #[serde(default)]
    pub insecure: bool,
}

impl fmt::Debug for ProxmoxCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxmoxCredentials")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("realm", &self.realm)
            .field("token_id", &self.token_id)
            .field("secret", &"<redacted>")
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Builds a `proxmox.credentials.<field>` error.
fn cred_err(field: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::Config {
        key: format!("proxmox.credentials.{field}"),
        message: message.into(),
    }
}

impl ProxmoxCredentials {
    /// The API base, e.g. `https://pve.example.com:8006/api2/json`.
    pub fn api_url(&self) -> Result<Url> {
        let v = self.url.trim();
        if v.is_empty() {
            return Err(cred_err(
                "url",
                "must be set (host[:port] or https://host[:port])",
            ));
        }
        let bare = !v.contains("://");
        let text = if bare {
            format!("https://{v}")
        } else {
            v.to_string()
        };
        let bad = |m: &str| cred_err("url", format!("{v:?}: {m}"));
        let mut url = Url::parse(&text).map_err(|e| bad(&format!("not a host[:port] or URL: {e}")))?;
        if url.scheme() != "https" {
            return Err(bad("must be https (the API token would travel in clear text)"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(cred_err(
                "url",
                "must not hold credentials: use user, tokenId and secret",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a query or fragment"));
        }
        if bare && url.port().is_none() {
            let _ = url.set_port(Some(DEFAULT_PORT));
        }
        let path = url.path().trim_end_matches('/').to_string();
        if !path.ends_with("/api2/json") {
            url.set_path(&format!("{path}/api2/json"));
        }
        Ok(url)
    }

    /// `<user>@<realm>!<tokenId>`: the token's full id (no secret), for headers and messages.
    pub fn token_name(&self) -> String {
        let user = self.user.trim();
        match (user.contains('@'), self.realm.as_deref().map(str::trim)) {
            (true, _) => format!("{user}!{}", self.token_id.trim()),
            (false, Some(r)) if !r.is_empty() => format!("{user}@{r}!{}", self.token_id.trim()),
            (false, _) => format!("{user}@pam!{}", self.token_id.trim()),
        }
    }

    /// Checks every field; errors name the key and never show the secret.
    pub fn validate(&self) -> Result<()> {
        self.api_url()?;
        let user = self.user.trim();
        let (name, realm_in_user) = match user.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (user, None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !":!@=".contains(c))
        {
            return Err(cred_err(
                "user",
                format!("{user:?}: must be a user name such as ido or ido@pve"),
            ));
        }
        let realm = self.realm.as_deref().map(str::trim);
        if let (Some(a), Some(b)) = (realm_in_user, realm)
            && a != b
        {
            return Err(cred_err(
                "realm",
                format!("{b:?}: differs from the realm in user {user:?}"),
            ));
        }
        if let Some(r) = realm_in_user.or(realm)
            && !is_id(r, |c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(cred_err("realm", format!("{r:?}: not a realm name")));
        }
        let tid = self.token_id.trim();
        if !is_id(tid, |c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(cred_err(
                "tokenId",
                format!("{tid:?}: must be a token id such as capmox"),
            ));
        }
        if self.secret.is_empty() {
            return Err(cred_err("secret", "must be set"));
        }
        if !self.secret.chars().all(|c| c.is_ascii_graphic()) {
            return Err(cred_err(
                "secret",
                "contains whitespace or non-ASCII characters (value not shown)",
            ));
        }
        Ok(())
    }
}

/// A letter, then characters allowed by `ok`.
fn is_id(s: &str, ok: impl Fn(char) -> bool) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && s.chars().all(ok)
}

/// One location: a node, its storages and the shape of the template VM.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxmoxLocation {
    /// Node name, e.g. `pve1`.
    #[serde(default)]
    pub node: String,
    /// Storage of the template's disk (needs the `images` content type), e.g. `local-lvm`.
    #[serde(default)]
    pub storage_pool: String,
    /// Storage the qcow2 is downloaded into (needs the `import` content type).
    #[serde(default = "default_import_storage")]
    pub import_storage: String,
    /// Bridge of `net0`, e.g. `vmbr0`.
    #[serde(default)]
    pub bridge: String,
    /// Memory in MiB (2048).
    #[serde(default = "default_memory")]
    pub memory: u32,
    /// vCPU cores (2).
    #[serde(default = "default_cores")]
    pub cores: u32,
    /// SCSI controller (`virtio-scsi-pci`).
    #[serde(default = "default_scsihw")]
    pub scsihw: String,
    /// Firmware (`seabios`).
    #[serde(default = "default_bios")]
    pub bios: String,
    /// NIC model of `net0` (`e1000`).
    #[serde(default = "default_net_model")]
    pub net_model: String,
}

fn default_import_storage() -> String {
    DEFAULT_IMPORT_STORAGE.into()
}
fn default_memory() -> u32 {
    2048
}
fn default_cores() -> u32 {
    2
}
fn default_scsihw() -> String {
    "virtio-scsi-pci".into()
}
fn default_bios() -> String {
    "seabios".into()
}
fn default_net_model() -> String {
    "e1000".into()
}

impl Default for ProxmoxLocation {
    fn default() -> Self {
        Self {
            node: String::new(),
            storage_pool: String::new(),
            import_storage: default_import_storage(),
            bridge: String::new(),
            memory: default_memory(),
            cores: default_cores(),
            scsihw: default_scsihw(),
            bios: default_bios(),
            net_model: default_net_model(),
        }
    }
}

impl ProxmoxLocation {
    /// Checks the fields of location `name`; errors name `proxmox.locations.<name>.<field>`.
    pub fn validate(&self, name: &str) -> Result<()> {
        let err = |field: &str, message: String| {
            Err(ProviderError::Config {
                key: format!("proxmox.locations.{name}.{field}"),
                message,
            })
        };
        let node_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !node_ok(&self.node) {
            return err(
                "node",
                format!("{:?}: must be a node name such as pve1", self.node),
            );
        }
        for (field, v) in [
            ("storagePool", &self.storage_pool),
            ("importStorage", &self.import_storage),
        ] {
            let ok = is_id(v, |c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
            if !ok {
                return err(field, format!("{v:?}: must be a storage id such as local-lvm"));
            }
        }
        let bridge_ok = is_id(&self.bridge, |c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && self.bridge.len() <= 15;
        if !bridge_ok {
            return err(
                "bridge",
                format!("{:?}: must be a bridge name such as vmbr0", self.bridge),
            );
        }
        if self.memory < 16 {
            return err("memory", format!("{}: must be at least 16 (MiB)", self.memory));
        }
        if !(1..=1024).contains(&self.cores) {
            return err("cores", format!("{}: must be between 1 and 1024", self.cores));
        }
        for (field, v, allowed) in [
            ("scsihw", &self.scsihw, SCSIHW),
            ("bios", &self.bios, BIOS),
            ("netModel", &self.net_model, NET_MODELS),
        ] {
            if !allowed.contains(&v.as_str()) {
                return err(field, format!("{v:?}: must be one of {}", allowed.join(", ")));
            }
        }
        Ok(())
    }
}

impl ProxmoxConfig {
    /// Checks the section; errors name the full key (`proxmox.locations.loc1.node`) and the
    /// value at fault. Never echoes the secret.
    pub fn validate(&self) -> Result<()> {
        self.credentials.validate()?;
        if self.task_timeout_seconds == Some(0) {
            return Err(ProviderError::Config {
                key: "proxmox.taskTimeoutSeconds".into(),
                message: "0: must be positive".into(),
            });
        }
        if self.locations.is_empty() {
            return Err(ProviderError::Config {
                key: "proxmox.locations".into(),
                message: "no location configured".into(),
            });
        }
        let mut nodes: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, l) in &self.locations {
            if name.trim().is_empty() || name.contains('.') {
                return Err(ProviderError::Config {
                    key: "proxmox.locations".into(),
                    message: format!("{name:?}: location names must be non-empty, without '.'"),
                });
            }
            l.validate(name)?;
            if let Some(other) = nodes.insert(&l.node, name) {
                return Err(ProviderError::Config {
                    key: format!("proxmox.locations.{name}.node"),
                    message: format!(
                        "{:?}: already used by location {other:?} (templates are named after the image, one per node)",
                        l.node
                    ),
                });
            }
        }
        Ok(())
    }
}
