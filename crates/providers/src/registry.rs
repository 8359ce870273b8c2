//! Each provider's section of the configuration, and how the provider is built from it.
//!
//! A provider module declares its section by implementing [`ProviderConfig`] for its config
//! struct (the section's key, `enabled`, whether it creates DiskImports, how the provider is
//! built) and exports a [`Registration`] of it; [`BUILT_IN`](crate::BUILT_IN) lists the
//! registrations of this crate's providers. [`ProvidersConfig::decode`] decodes the sections
//! of the registered providers found in the values, each with errors naming its key path
//! (`vsphere.locations.dc0.datastore`), and [`ProvidersConfig::build`] builds the enabled
//! ones. No other place knows a provider's section.

use std::{any::Any, collections::BTreeMap, fmt, sync::Arc};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Provider, Providers, Result, kubevirt::DiskImportsSlot};

/// A provider's section of the configuration (its config struct), decoded from the values
/// at the key [`ProviderConfig::SECTION`].
pub trait ProviderConfig: DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// The section's key in the values, e.g. `vsphere`.
    const SECTION: &'static str;
    /// Whether the provider runs at all (its `enabled` key).
    fn enabled(&self) -> bool;
    /// Whether the provider imports through DiskImport objects: then the DiskImport
    /// controller runs while it is enabled, even when the values do not enable it for users.
    fn creates_disk_imports(&self) -> bool {
        false
    }
    /// Validates the section and builds the enabled provider (nothing is contacted yet);
    /// errors name the key (`vsphere.locations.dc0.datastore`). What the driver binds later
    /// (the DiskImport store) comes from `bindings`.
    fn build(&self, bindings: &Bindings) -> Result<Arc<dyn Provider>>;
}

/// What the driver binds into the providers after they are built, shared by those that use
/// it: the DiskImport store (`Providers::bind_disk_imports`).
#[derive(Clone, Default)]
pub struct Bindings {
    disk_imports: DiskImportsSlot,
}

impl Bindings {
    /// Where the driver binds its DiskImport store.
    pub fn disk_imports(&self) -> DiskImportsSlot {
        self.disk_imports.clone()
    }
}

/// A provider's section registered: the key it is found at and how it is decoded. A provider
/// module exports one (`pub const REGISTRATION: Registration = Registration::of::<…>()`).
#[derive(Clone, Copy)]
pub struct Registration {
    section: &'static str,
    decode: Decode,
}

/// Decodes a section from its value (`None`: `null`).
type Decode = fn(&Value) -> Result<Option<Arc<dyn Section>>, DecodeError>;

impl Registration {
    /// The registration of the section `C`.
    pub const fn of<C: ProviderConfig>() -> Self {
        Self {
            section: C::SECTION,
            decode: decode_section::<C>,
        }
    }

    /// The section's key in the values.
    pub fn section(&self) -> &'static str {
        self.section
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Registration").field(&self.section).finish()
    }
}

/// A decoded section, whatever its provider.
trait Section: Any + fmt::Debug + Send + Sync {
    fn key(&self) -> &'static str;
    fn enabled(&self) -> bool;
    fn creates_disk_imports(&self) -> bool;
    fn build(&self, bindings: &Bindings) -> Result<Arc<dyn Provider>>;
}

impl<C: ProviderConfig> Section for C {
    fn key(&self) -> &'static str {
        C::SECTION
    }
    fn enabled(&self) -> bool {
        ProviderConfig::enabled(self)
    }
    fn creates_disk_imports(&self) -> bool {
        ProviderConfig::creates_disk_imports(self)
    }
    fn build(&self, bindings: &Bindings) -> Result<Arc<dyn Provider>> {
        ProviderConfig::build(self, bindings)
    }
}

/// Decodes the section `C` from its value; `null` is no section. Decoded under its key, so
/// the error's key path is the one in the values (`vsphere.locations.dc0.datastore`).
fn decode_section<C: ProviderConfig>(v: &Value) -> Result<Option<Arc<dyn Section>>, DecodeError> {
    let values = Value::Object([(C::SECTION.to_string(), v.clone())].into_iter().collect());
    let mut sections: BTreeMap<String, Option<C>> = decode_with_path(&values)?;
    Ok(sections
        .remove(C::SECTION)
        .flatten()
        .map(|c| Arc::new(c) as Arc<dyn Section>))
}

/// The provider sections found in the values, decoded (in the order of their registrations).
#[derive(Clone, Debug, Default)]
pub struct ProvidersConfig {
    sections: Vec<Arc<dyn Section>>,
}

impl ProvidersConfig {
    /// Decodes the section of each provider in `registrations` that `values` (the whole
    /// values document) has; other keys are not looked at. Errors name the key path. Each
    /// section must be registered once.
    pub fn decode(values: &Value, registrations: &[Registration]) -> Result<Self, DecodeError> {
        for (i, r) in registrations.iter().enumerate() {
            assert!(
                registrations[..i].iter().all(|o| o.section != r.section),
                "two providers register the section {:?}",
                r.section
            );
        }
        let mut found = Vec::new();
        if let Value::Object(map) = values {
            // In the values' order, so the first bad section is the one a single decode
            // of the whole values would report.
            for (key, v) in map {
                if let Some(i) = registrations.iter().position(|r| r.section == key)
                    && let Some(section) = (registrations[i].decode)(v)?
                {
                    found.push((i, section));
                }
            }
        }
        found.sort_by_key(|(i, _)| *i);
        Ok(Self {
            sections: found.into_iter().map(|(_, s)| s).collect(),
        })
    }

    /// The decoded section `C`, if the values have it.
    pub fn get<C: ProviderConfig>(&self) -> Option<&C> {
        self.sections.iter().find_map(|s| {
            let any: &dyn Any = s.as_ref();
            any.downcast_ref::<C>()
        })
    }

    /// Whether an enabled provider imports through DiskImport objects (then the DiskImport
    /// controller must run even when the values do not enable it for users).
    pub fn creates_disk_imports(&self) -> bool {
        self.sections
            .iter()
            .any(|s| s.enabled() && s.creates_disk_imports())
    }

    /// Validates and builds the enabled providers (none connects yet).
    pub fn build(&self) -> Result<Providers> {
        let mut out = Providers::default();
        for s in self.sections.iter().filter(|s| s.enabled()) {
            let p = s.build(&out.bindings)?;
            if out.get(p.id()).is_some() {
                return Err(crate::ProviderError::Config {
                    key: s.key().to_string(),
                    message: format!(
                        "builds provider {:?}, which another section has built already",
                        p.id()
                    ),
                });
            }
            out.insert(p);
        }
        Ok(out)
    }
}

/// A value of the configuration that does not decode: its key path, the value (redacted
/// where the key names a secret) and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: invalid value {value:?}: {reason}")]
pub struct DecodeError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// Decodes `v`, naming the failing key (and its value, unless the key names a password,
/// secret or token) in the error. A map or list is shown with what it holds under such keys
/// redacted, and the value of an unknown key (perhaps a misspelt `password`) not at all.
pub fn decode_with_path<T: DeserializeOwned>(v: &Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let key = e.path().to_string();
        let secret = names_a_secret(&key);
        let reason = e.into_inner().to_string();
        let value = if secret {
            "<redacted>".to_string()
        } else if reason.starts_with("unknown field") {
            "<not shown>".to_string()
        } else {
            lookup(v, &key)
                .map(|x| redacted(x).to_string())
                .unwrap_or_default()
        };
        let reason = if secret {
            "invalid type or value".to_string()
        } else {
            reason
        };
        DecodeError { key, value, reason }
    })
}

fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"].iter().any(|w| key.contains(w))
}

/// `v` with the values of keys that name a secret replaced, at any depth.
fn redacted(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = if names_a_secret(k) {
                        Value::String("<redacted>".into())
                    } else {
                        redacted(x)
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |at, k| at.get(k))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Creds {
        user: String,
        password: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        credentials: Creds,
    }

    #[test]
    fn no_secret_reaches_a_decoding_error() {
        for bad in [
            json!({"credentials": {"user": "u", "pasword": "hunter2"}}),
            json!({"credentials": {"password": "hunter2"}}),
            json!({"credentials": {"user": 7, "password": "hunter2"}}),
            json!({"credentials": [{"user": "u", "password": "hunter2"}]}),
        ] {
            let e = decode_with_path::<Sample>(&bad).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert!(e.key.starts_with("credentials"), "{e}");
        }
        let e =
            decode_with_path::<Sample>(&json!({"credentials": {"user": 7, "password": "p"}})).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("credentials.user", "7"),
            "plain values are shown"
        );
    }
    use crate::{BUILT_IN, kubevirt::KubevirtConfig, vsphere::VsphereConfig};

    #[test]
    fn sections_decode_under_their_key_path() {
        let e = ProvidersConfig::decode(
            &json!({"vsphere": {"locations": {"dc0": {"datacenter": 7}}}}),
            BUILT_IN,
        )
        .unwrap_err();
        assert_eq!(e.key, "vsphere.locations.dc0.datacenter");
        assert_eq!(e.value, "7");
        let e = ProvidersConfig::decode(&json!({"vsphere": {"credentials": {"password": 7}}}), BUILT_IN)
            .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("vsphere.credentials.password", "<redacted>")
        );
    }

    #[test]
    fn absent_null_and_disabled_sections_build_nothing() {
        let c = ProvidersConfig::decode(
            &json!({"vsphere": null, "kubevirt": {"enabled": false}, "other": 1}),
            BUILT_IN,
        )
        .unwrap();
        assert!(c.get::<VsphereConfig>().is_none());
        assert!(c.get::<KubevirtConfig>().is_some_and(|k| !k.enabled));
        assert!(!c.creates_disk_imports());
        assert!(c.build().unwrap().is_empty());
        let c = ProvidersConfig::decode(&json!({"kubevirt": {"enabled": true}}), BUILT_IN).unwrap();
        assert!(c.creates_disk_imports());
        assert_eq!(c.build().unwrap().ids(), ["capk"]);
    }

    #[test]
    fn the_built_in_sections_are_distinct() {
        let sections: Vec<&str> = BUILT_IN.iter().map(Registration::section).collect();
        assert_eq!(sections, ["vsphere", "proxmox", "vcd", "kubevirt"]);
    }
}
