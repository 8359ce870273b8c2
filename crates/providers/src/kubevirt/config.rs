//! The `kubevirt:` section of the configuration.
//!
//! ```yaml
//! kubevirt:
//!   enabled: true
//!   timeoutSeconds: 3600          # how long create waits for one DiskImport
//!   locations:
//!     vms: {namespace: vm-images, storageClassName: fast, size: 20Gi,
//!           accessModes: [ReadWriteMany], volumeMode: Block}
//! ```

use std::collections::BTreeMap;

use ido_api::VolumeMode;
use serde::Deserialize;

use crate::{ProviderError, Result};

/// Default of `timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;

/// The `kubevirt:` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubevirtConfig {
    /// Whether the provider runs at all.
    #[serde(default)]
    pub enabled: bool,
    /// How long `create` waits for a DiskImport to succeed (default 1 h); a slower one
    /// keeps running and is looked at again at the next reconcile.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Locations by name; each is a namespace.
    #[serde(default)]
    pub locations: BTreeMap<String, KubevirtLocation>,
}

/// One location: the namespace the golden claims live in, and their shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubevirtLocation {
    pub namespace: String,
    /// Storage class of the claims; absent: the cluster's default.
    #[serde(default)]
    pub storage_class_name: Option<String>,
    /// Disk size (a quantity); absent: the image's virtual size (from its qcow2 header).
    #[serde(default)]
    pub size: Option<String>,
    /// Default `[ReadWriteOnce]`; live migration needs `ReadWriteMany`.
    #[serde(default)]
    pub access_modes: Vec<String>,
    /// `Filesystem` (default) or `Block`.
    #[serde(default)]
    pub volume_mode: Option<VolumeMode>,
}

const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

impl KubevirtConfig {
    /// Checks every location; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let err = |key: String, message: String| Err(ProviderError::Config { key, message });
        if self.timeout_seconds == Some(0) {
            return err("kubevirt.timeoutSeconds".into(), "must be more than 0".into());
        }
        for (name, loc) in &self.locations {
            let key = |f: &str| format!("kubevirt.locations.{name}.{f}");
            let ns = &loc.namespace;
            let dns_label = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !ns.starts_with('-')
                && !ns.ends_with('-');
            if !dns_label {
                return err(
                    key("namespace"),
                    format!("{ns:?} is not a namespace name (DNS label)"),
                );
            }
            if let Some(s) = &loc.size
                && ido_api::diskimport::quantity::parse(s).is_none_or(|b| b == 0)
            {
                return err(key("size"), format!("{s:?} is not a size such as 20Gi"));
            }
            if let Some(m) = loc
                .access_modes
                .iter()
                .find(|m| !ACCESS_MODES.contains(&m.as_str()))
            {
                return err(
                    key("accessModes"),
                    format!("{m:?} is not one of {}", ACCESS_MODES.join(", ")),
                );
            }
        }
        Ok(())
    }
}
