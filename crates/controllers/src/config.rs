//! The operator's configuration: the original's Helm values shape.
//!
//! ```yaml
//! namespace: giantswarm          # where NodeImages live
//! releaseChannel: stable         # flatcar channel in image names
//! imageRetentionPeriod: "0"      # Go duration (e.g. 720h) an unused image is kept
//! concurrency: {images: 4, locations: 4}
//! s3: {bucket, region, http, endpoint, credentials: {accessKeyId, secretAccessKey}, insecure, caBundle}
//! vsphere: {enabled, insecure, caBundle, credentials: {vcenter, username, password}, locations: {…}}
//! kubevirt: {enabled, timeoutSeconds, locations: {name: {namespace, storageClassName, size, accessModes, volumeMode}}}
//! diskImport: {enabled, image, imagePullPolicy, filesystemOverhead, backoffLimit, resources}
//! imageOperator: {enabled}      # serve image-operator's Image (skopeo.io/v1alpha1)
//! cdiCompat: {enabled}          # serve CDI's DataVolume (cdi.kubevirt.io/v1beta1)
//! imageCache: {enabled, concurrency, webhook: {…}}   # the workload image cache
//! ```
//! Keys the operator does not know (the rest of a Helm values file) are ignored. Separate
//! files (a mounted credentials Secret, a locations ConfigMap) are merged in at a key.
//!
//! The provider sections (`vsphere`, `proxmox`, `vcd`, `kubevirt`) are their providers' own:
//! each is decoded and built by its provider module's registration
//! ([`ido_providers::BUILT_IN`], see [`ido_providers::registry`]); this module decodes none
//! of them itself.

use std::{path::Path, time::Duration};

use ido_io::{
    http::TlsOptions,
    s3::{S3Credentials, S3Location, S3Source},
};
use ido_providers::{Providers, ProvidersConfig, Registration, registry::DecodeError};
use serde::Deserialize;
use serde_json::Value;

use crate::{Settings, diskimport::ImporterSettings};

/// A configuration error naming the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{key}: invalid value {value:?}: {reason}")]
    Value {
        key: String,
        value: String,
        reason: String,
    },
    /// A value of the wrong type; the value is not shown (it may be a secret).
    #[error(
        "{key}: expected {expected}, got {found} (charts/image-distribution-operator/values.schema.json)"
    )]
    Type {
        key: String,
        expected: String,
        found: &'static str,
    },
    #[error(transparent)]
    Provider(#[from] ido_providers::ProviderError),
    #[error(transparent)]
    Engine(#[from] ido_io::Error),
}

impl From<DecodeError> for ConfigError {
    fn from(DecodeError { key, value, reason }: DecodeError) -> Self {
        Self::Value { key, value, reason }
    }
}

fn default_namespace() -> String {
    "giantswarm".into()
}
fn default_channel() -> String {
    "stable".into()
}
fn default_four() -> usize {
    4
}

/// How much work runs at once.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// NodeImages reconciled at once.
    #[serde(default = "default_four")]
    pub images: usize,
    /// Locations of one NodeImage worked on at once.
    #[serde(default = "default_four")]
    pub locations: usize,
    /// Releases reconciled at once by `ido operator`.
    #[serde(default = "default_four")]
    pub releases: usize,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            images: 4,
            locations: 4,
            releases: 4,
        }
    }
}

/// The `s3` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Config {
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub region: String,
    /// `http://` instead of `https://` for AWS URLs.
    #[serde(default)]
    pub http: bool,
    /// S3-compatible endpoint URL (path-style).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Keys for private buckets; anonymous when absent.
    #[serde(default)]
    pub credentials: Option<S3Credentials>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub ca_bundle: Option<String>,
}

/// The `diskImport` section: the DiskImport controller and its importer Jobs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskImportConfig {
    /// Run the DiskImport controller (`ido operator`); on too when `kubevirt` is enabled.
    #[serde(default)]
    pub enabled: bool,
    /// Importer image: the operator's own (the chart sets it); it runs `ido import`.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// Fraction a Filesystem claim is grown by for the filesystem (default 0.055), a
    /// number or a string (`"0.055"`, as CDI writes it).
    #[serde(default)]
    pub filesystem_overhead: Option<Value>,
    /// Importer pods replaced after failures before the import fails (default 3).
    #[serde(default)]
    pub backoff_limit: Option<i32>,
    /// Resources of the importer container.
    #[serde(default)]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// The `imageOperator` section: image-operator's `Image` kind served on the ImageSync engine.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageOperatorConfig {
    /// Watch `images.skopeo.io` in every namespace (`ido operator`).
    #[serde(default)]
    pub enabled: bool,
}

/// The `cdiCompat` section: CDI's DataVolume served as DiskImports.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdiCompatConfig {
    /// Watch `datavolumes.cdi.kubevirt.io` in every namespace (`ido operator`).
    #[serde(default)]
    pub enabled: bool,
}

/// The `imageCache` section: the workload image cache's controllers.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageCacheConfig {
    /// Reconcile the cache policies and CachedImages (`ido operator`).
    #[serde(default)]
    pub enabled: bool,
    /// Copies made at once (default 4).
    #[serde(default = "default_cache_concurrency")]
    pub concurrency: usize,
    /// The chart's webhook settings (its Service, certificate and configuration); the
    /// operator takes its listener from `--webhook-bind-address`.
    #[serde(default)]
    pub webhook: Option<Value>,
}

impl Default for ImageCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            concurrency: default_cache_concurrency(),
            webhook: None,
        }
    }
}

fn default_cache_concurrency() -> usize {
    4
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_channel")]
    pub release_channel: String,
    /// Go duration string; `"0"` deletes unused images at once.
    #[serde(default)]
    pub image_retention_period: Option<Value>,
    #[serde(default)]
    pub concurrency: Concurrency,
    #[serde(default)]
    pub s3: Option<S3Config>,
    #[serde(default)]
    pub disk_import: DiskImportConfig,
    #[serde(default)]
    pub image_operator: ImageOperatorConfig,
    #[serde(default)]
    pub image_cache: ImageCacheConfig,
    #[serde(default)]
    pub cdi_compat: CdiCompatConfig,
    /// The provider sections (`vsphere`, …): each registered provider decodes its own.
    #[serde(skip)]
    pub providers: ProvidersConfig,
}

impl Config {
    /// Reads a values file and merges `KEY=FILE` extras (dotted keys, YAML files) into it.
    pub fn load(values: Option<&Path>, merges: &[(String, std::path::PathBuf)]) -> Result<Self, ConfigError> {
        let mut root = match values {
            Some(p) => {
                let v = read_yaml(p)?;
                if v.is_null() {
                    return Err(ConfigError::File {
                        path: p.display().to_string(),
                        message: "the values file is empty (leave --config out for the defaults)".into(),
                    });
                }
                v
            }
            None => Value::Object(Default::default()),
        };
        for (key, file) in merges {
            let v = read_yaml(file)?;
            let mut at = &mut root;
            for part in key.split('.') {
                if !at.is_object() {
                    return Err(ConfigError::Value {
                        key: key.clone(),
                        value: at.to_string(),
                        reason: "is not a map".into(),
                    });
                }
                at = at
                    .as_object_mut()
                    .expect("object")
                    .entry(part)
                    .or_insert(Value::Object(Default::default()));
            }
            *at = v;
        }
        Self::from_value(root)
    }

    /// Decodes a configuration with the built-in providers' sections; errors name the key.
    pub fn from_value(v: Value) -> Result<Self, ConfigError> {
        Self::from_value_with(v, ido_providers::BUILT_IN)
    }

    /// Decodes a configuration whose provider sections are those of `providers` (each
    /// decodes its own); errors name the key. The chart's values schema checks every key it
    /// has; a registered section it lacks (a provider the chart does not ship) must be a
    /// map, and its provider's decoding judges its keys.
    pub fn from_value_with(v: Value, providers: &[Registration]) -> Result<Self, ConfigError> {
        match schema_error(&v, &schema_with(providers), "") {
            None => {}
            Some(SchemaError::UnknownKey(key)) => {
                return Err(ConfigError::Value {
                    value: ido_io::redact::escape_controls(key.rsplit('.').next().unwrap_or_default()),
                    key: ido_io::redact::escape_controls(&key),
                    reason: "is not a key of the values (charts/image-distribution-operator/values.schema.json); check its spelling".into(),
                });
            }
            Some(SchemaError::Type(key, expected, found)) => {
                return Err(ConfigError::Type {
                    key: ido_io::redact::escape_controls(&key),
                    expected,
                    found,
                });
            }
        }
        let mut c: Config = decode_with_path(&v)?;
        c.providers = ProvidersConfig::decode(&v, providers)?;
        c.settings()?;
        if c.concurrency.images == 0 {
            return Err(value_err("concurrency.images", "0", "must be at least 1"));
        }
        if c.image_cache.concurrency == 0 {
            return Err(value_err("imageCache.concurrency", "0", "must be at least 1"));
        }
        if c.concurrency.locations == 0 {
            return Err(value_err("concurrency.locations", "0", "must be at least 1"));
        }
        Ok(c)
    }

    /// Reconciler settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let retention = match &self.image_retention_period {
            None | Some(Value::Null) => Duration::ZERO,
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Duration::ZERO,
            Some(Value::String(s)) => ido_api::duration::parse_duration(s)
                .map_err(|reason| value_err("imageRetentionPeriod", s, &reason.to_string()))?,
            Some(other) => {
                return Err(value_err(
                    "imageRetentionPeriod",
                    &other.to_string(),
                    "expected a duration such as 720h",
                ));
            }
        };
        if let Some(reason) = ido_api::names::label_error(&self.namespace) {
            return Err(value_err("namespace", &self.namespace, &reason));
        }
        if self.release_channel.is_empty() || !self.release_channel.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(value_err(
                "releaseChannel",
                &self.release_channel,
                "must be a lower-case word such as stable",
            ));
        }
        Ok(Settings {
            namespace: self.namespace.clone(),
            channel: self.release_channel.clone(),
            retention,
            location_concurrency: self.concurrency.locations,
            disk_import: self.importer_settings()?,
            image_operator: self.image_operator.enabled,
            image_cache: self.image_cache.enabled,
            cache_concurrency: self.image_cache.concurrency,
            cdi_compat: self.cdi_compat.enabled,
            ..Settings::default()
        })
    }

    /// The DiskImport controller's settings.
    fn importer_settings(&self) -> Result<ImporterSettings, ConfigError> {
        let d = &self.disk_import;
        let mut out = ImporterSettings {
            enabled: d.enabled || self.providers.creates_disk_imports(),
            ..ImporterSettings::default()
        };
        if let Some(image) = d.image.as_ref().filter(|i| !i.is_empty()) {
            out.image = image.clone();
        }
        if let Some(p) = d.image_pull_policy.as_ref().filter(|p| !p.is_empty()) {
            if !["Always", "IfNotPresent", "Never"].contains(&p.as_str()) {
                return Err(value_err(
                    "diskImport.imagePullPolicy",
                    p,
                    "expected Always, IfNotPresent or Never",
                ));
            }
            out.image_pull_policy = p.clone();
        }
        if let Some(v) = &d.filesystem_overhead {
            let f = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            out.filesystem_overhead = f.filter(|f| (0.0..1.0).contains(f)).ok_or_else(|| {
                value_err(
                    "diskImport.filesystemOverhead",
                    &v.to_string(),
                    "expected a fraction from 0 to below 1, such as 0.055",
                )
            })?;
        }
        if let Some(b) = d.backoff_limit {
            if b < 0 {
                return Err(value_err(
                    "diskImport.backoffLimit",
                    &b.to_string(),
                    "must not be negative",
                ));
            }
            out.backoff_limit = b;
        }
        out.resources = d.resources.clone();
        Ok(out)
    }

    /// The S3 source, if configured.
    pub fn source(&self) -> Result<Option<S3Source>, ConfigError> {
        let Some(s3) = &self.s3 else { return Ok(None) };
        let client = ido_io::http::client(
            &TlsOptions {
                insecure: s3.insecure,
                ca_bundle: s3.ca_bundle.clone(),
            },
            "s3.caBundle",
        )?;
        let loc = S3Location {
            bucket: s3.bucket.clone(),
            region: s3.region.clone(),
            endpoint: s3.endpoint.clone(),
            http: s3.http,
            credentials: s3.credentials.clone(),
        };
        Ok(Some(S3Source::new(&loc, client)?))
    }

    /// The enabled providers.
    pub fn providers(&self) -> Result<Providers, ConfigError> {
        Ok(self.providers.build()?)
    }

    /// A reconcile context over `store`: providers, source, settings, fresh metrics.
    /// The kubevirt provider's DiskImports go through `store`.
    pub fn context<S: crate::Store>(&self, store: S) -> Result<crate::Context<S>, ConfigError> {
        let providers = self.providers()?;
        providers.bind_disk_imports(crate::diskimport::StoreDiskImports::shared(store.clone()));
        Ok(crate::Context {
            providers,
            source: self.source()?,
            ..crate::Context::new(store, self.settings()?)
        })
    }
}

/// The chart's values schema: `ido run` and `ido operator` take the same values as the chart.
fn values_schema() -> &'static Value {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(include_str!(
            "../../../charts/image-distribution-operator/values.schema.json"
        ))
        .expect("the chart's values.schema.json is JSON")
    })
}

/// The chart's values schema, with the sections of `providers` it lacks as maps.
fn schema_with(providers: &[Registration]) -> std::borrow::Cow<'static, Value> {
    let chart = values_schema();
    let mut missing = providers
        .iter()
        .map(Registration::section)
        .filter(|s| chart["properties"].get(s).is_none())
        .peekable();
    if missing.peek().is_none() {
        return std::borrow::Cow::Borrowed(chart);
    }
    let mut schema = chart.clone();
    for section in missing {
        schema["properties"][section] = serde_json::json!({"type": "object"});
    }
    std::borrow::Cow::Owned(schema)
}

/// What the schema refuses first in a values document.
#[derive(Debug, PartialEq, Eq)]
enum SchemaError {
    /// A key the schema does not have (its dotted path).
    UnknownKey(String),
    /// A value of another JSON type than the schema's (path, expected, found). The value
    /// itself is never shown: it may be a credential.
    Type(String, String, &'static str),
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The first thing `schema` does not allow in `v`: a key outside its `properties` and
/// `additionalProperties`, or a value of another `type` (`anyOf` alternatives tried in turn).
fn schema_error(v: &Value, schema: &Value, path: &str) -> Option<SchemaError> {
    if let Some(alternatives) = schema["anyOf"].as_array() {
        let found: Vec<Option<SchemaError>> = alternatives.iter().map(|s| schema_error(v, s, path)).collect();
        return if found.iter().any(Option::is_none) {
            None
        } else {
            found.into_iter().flatten().next()
        };
    }
    let allowed: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let found = json_type(v);
    // A null is the decoder's to judge (a default, or an error naming the key).
    let fits = allowed.is_empty()
        || found == "null"
        || allowed.contains(&found)
        || (found == "integer" && allowed.contains(&"number"));
    if !fits {
        return Some(SchemaError::Type(path.to_string(), allowed.join(" or "), found));
    }
    let Value::Object(map) = v else {
        return None;
    };
    for (k, child) in map {
        let at = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let sub = match schema["properties"].get(k) {
            Some(p) => p,
            None => match &schema["additionalProperties"] {
                Value::Bool(false) => return Some(SchemaError::UnknownKey(at)),
                s @ Value::Object(_) => s,
                _ => continue,
            },
        };
        if let Some(bad) = schema_error(child, sub, &at) {
            return Some(bad);
        }
    }
    None
}

fn value_err(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn read_yaml(p: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|e| ConfigError::File {
        path: p.display().to_string(),
        message: e.to_string(),
    })?;
    // No snippet in the message: the lines around an error may hold a credential.
    yaml::from_str_with_options(&text, yaml::options! { with_snippet: false }).map_err(|e| {
        ConfigError::File {
            path: p.display().to_string(),
            message: e.to_string(),
        }
    })
}

/// Decodes `v`, naming the failing key (and its value) in the error.
fn decode_with_path<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ConfigError> {
    Ok(ido_providers::registry::decode_with_path(v)?)
}

#[cfg(test)]
mod schema_tests {
    use serde_json::json;

    use super::*;

    fn key_of(v: Value) -> String {
        match Config::from_value(v) {
            Err(ConfigError::Value { key, reason, .. }) => {
                assert!(reason.contains("not a key"), "{reason}");
                key
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_their_path() {
        assert_eq!(key_of(json!({"namepsace": "x"})), "namepsace");
        assert_eq!(key_of(json!({"vsphere": {"enabeld": true}})), "vsphere.enabeld");
        assert_eq!(
            key_of(json!({"vsphere": {"locations": {"dc0": {"datacenter": "DC0", "datastroe": "x"}}}})),
            "vsphere.locations.dc0.datastroe"
        );
        assert_eq!(key_of(json!({"s3": {"bucket": "b", "regoin": "r"}})), "s3.regoin");
        // VCD's locations: the original's single location or a map of them (`anyOf`).
        assert_eq!(
            key_of(json!({"vcd": {"locations": {"main": {"catalog": "c"}}, "credentails": {}}})),
            "vcd.credentails"
        );
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_without_showing_them() {
        let e = Config::from_value(json!({"vsphere": {"credentials": ["hunter2"]}})).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("vsphere.credentials: expected object, got array"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        let msg = Config::from_value(json!({"vsphere": {"enabled": "yes"}}))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("vsphere.enabled: expected boolean, got string"),
            "{msg}"
        );
    }

    #[test]
    fn the_charts_values_and_the_originals_shapes_are_accepted() {
        let values: Value = yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../charts/image-distribution-operator/values.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(schema_error(&values, values_schema(), ""), None);
        Config::from_value(json!({
            "vcd": {"locations": {"name": "main", "catalog": "c", "hardwareVersion": 19}},
            "vsphere": {"locations": {"dc0": {"datacenter": "DC0", "resourcepool": "rp"}}},
        }))
        .unwrap();
    }

    #[test]
    fn every_built_in_provider_has_its_section_in_the_chart() {
        for r in ido_providers::BUILT_IN {
            let section = &values_schema()["properties"][r.section()];
            assert_eq!(section["type"], "object", "{r:?}");
            assert_eq!(
                section["additionalProperties"], false,
                "{r:?}: unknown keys are refused"
            );
        }
        assert!(matches!(
            schema_with(ido_providers::BUILT_IN),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
