//! The `vcd:` configuration (the original's Helm values, with many locations).
//!
//! ```yaml
//! vcd:
//!   enabled: true
//!   credentials: {url: https://vcd.example.com, username: ido, password: …, org: giantswarm}
//!   caBundle: |            # optional extra CA certificates (PEM)
//!   locations:             # a map of name → location …
//!     main: {vdc: vdc1, catalog: node-images, hardwareVersion: 19}
//!   # … or the original's single object: {name: main, vdc: vdc1, catalog: …}
//! ```

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::Value;
use url::Url;

use crate::{ProviderError, Result};

/// Bytes per transfer PUT when `uploadPieceSizeMiB` is not set (the original passed 10 MiB).
pub const DEFAULT_PIECE_MIB: u32 = 10;
/// Session age after which the client logs in again (the original's 20 h default).
pub const DEFAULT_SESSION_REFRESH: Duration = Duration::from_secs(20 * 3600);

/// The `vcd:` section of the configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VcdConfig {
    /// Whether the provider runs at all.
    #[serde(default)]
    pub enabled: bool,
    /// Where and as whom to log in.
    #[serde(default)]
    pub credentials: VcdCredentials,
    /// Extra CA certificates (PEM) trusted for the VCD endpoint.
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// Locations by name: a map, or the original's single object with a `name`.
    #[serde(default, deserialize_with = "de_locations")]
    pub locations: BTreeMap<String, VcdLocation>,
    /// Size of each transfer PUT in MiB (default [`DEFAULT_PIECE_MIB`]); one piece per
    /// running upload is held in memory so it can be sent again after a re-login.
    #[serde(default, rename = "uploadPieceSizeMiB")]
    pub upload_piece_size_mib: Option<u32>,
    /// Log in again once the session is this old, e.g. `20h` (default 20 h).
    #[serde(default)]
    pub session_refresh_threshold: Option<String>,
    /// Accepted for compatibility with the original's values and ignored: uploads stream
    /// from S3 to VCD and nothing is written to local disk.
    #[serde(default)]
    pub download_dir: Option<String>,
}

/// VCD endpoint and login. `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcdCredentials {
    /// `https://host[:port]` (an `/api` suffix is accepted), or just `host[:port]`.
    #[serde(default)]
    pub url: String,
    /// User name without the org, e.g. `ido`; the login sends `<username>@<org>`.
    #[serde(default)]
    pub username: String,
    /// Password: only ever sent in the login call; never logged or shown.
    #[serde(default)]
    pub password: String,
    /// Organization to log in to (`System` for a provider administrator).
    #[serde(default)]
    pub org: String,
    /// Skip TLS certificate verification. Off by default.
    #[serde(default)]
    pub insecure: bool,
}

impl fmt::Debug for VcdCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcdCredentials")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("org", &self.org)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl VcdCredentials {
    /// The endpoint's root with a trailing slash (`https://vcd.example.com/`); the API is
    /// under `api/` and logins under `cloudapi/`.
    pub fn base_url(&self) -> Result<Url> {
        const KEY: &str = "vcd.credentials.url";
        let v = self.url.trim();
        if v.is_empty() {
            return Err(config(KEY, "must be set (https://host[:port])"));
        }
        let bad = |m: &str| config(KEY, format!("{:?}: {m}", redact_userinfo(v)));
        let text = if v.contains("://") {
            v.to_string()
        } else {
            format!("https://{v}")
        };
        let mut url = Url::parse(&text).map_err(|e| bad(&format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad("scheme must be https (or http)"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not hold credentials: use vcd.credentials.username/password",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a query or fragment"));
        }
        let path = url.path().trim_end_matches('/');
        let path = path.strip_suffix("/api").unwrap_or(path).to_string();
        url.set_path(&format!("{path}/"));
        Ok(url)
    }

    /// Whether the login goes to the provider (`System`) organization.
    pub fn is_system(&self) -> bool {
        self.org.trim().eq_ignore_ascii_case("system")
    }
}

/// One location: the catalog templates go to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VcdLocation {
    /// Organization owning the catalog; default `credentials.org`.
    #[serde(default)]
    pub org: Option<String>,
    /// Virtual datacenter. Informational: uploads go to the catalog's storage (as in the
    /// original, which required it but never used it).
    #[serde(default)]
    pub vdc: Option<String>,
    /// Catalog name.
    #[serde(default)]
    pub catalog: String,
    /// Virtual hardware version written into the OVF (`19` → `vmx-19`); 0 keeps it.
    #[serde(default)]
    pub hardware_version: u32,
}

impl VcdLocation {
    /// The organization of the catalog: the location's own or the login's.
    pub fn org<'a>(&'a self, credentials: &'a VcdCredentials) -> &'a str {
        self.org
            .as_deref()
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .unwrap_or(credentials.org.trim())
    }
}

impl VcdConfig {
    /// Checks the section; errors name the full key (`vcd.locations.main.catalog`) and the
    /// value at fault. Never echoes the password.
    pub fn validate(&self) -> Result<()> {
        let c = &self.credentials;
        c.base_url()?;
        if c.username.trim().is_empty() {
            return Err(config("vcd.credentials.username", "must be set"));
        }
        if c.username.contains(':') {
            return Err(config(
                "vcd.credentials.username",
                format!("{:?}: must not contain ':'", c.username),
            ));
        }
        if c.password.is_empty() {
            return Err(config("vcd.credentials.password", "must be set"));
        }
        if c.org.trim().is_empty() {
            return Err(config("vcd.credentials.org", "must be set"));
        }
        if self.locations.is_empty() {
            return Err(config("vcd.locations", "no location configured"));
        }
        let mut seen: BTreeMap<(String, String), &str> = BTreeMap::new();
        for (name, l) in &self.locations {
            let key = |f: &str| format!("vcd.locations.{name}.{f}");
            if name.trim().is_empty() {
                return Err(config(
                    "vcd.locations",
                    format!("{name:?}: names must not be empty"),
                ));
            }
            if l.catalog.trim().is_empty() {
                return Err(config(key("catalog"), format!("{:?}: must be set", l.catalog)));
            }
            if let Some(o) = &l.org
                && o.trim().is_empty()
            {
                return Err(config(key("org"), format!("{o:?}: must not be empty when set")));
            }
            if l.hardware_version != 0 && !(4..=99).contains(&l.hardware_version) {
                return Err(config(
                    key("hardwareVersion"),
                    format!("{}: must be 0 (keep) or a vmx version 4..99", l.hardware_version),
                ));
            }
            let at = (l.org(c).to_lowercase(), l.catalog.trim().to_lowercase());
            if let Some(other) = seen.insert(at, name) {
                return Err(config(
                    key("catalog"),
                    format!(
                        "{:?} in org {:?} is also location {other:?}'s catalog: templates would clash",
                        l.catalog,
                        l.org(c)
                    ),
                ));
            }
        }
        if let Some(p) = self.upload_piece_size_mib
            && !(1..=1024).contains(&p)
        {
            return Err(config("vcd.uploadPieceSizeMiB", format!("{p}: must be 1..1024")));
        }
        self.session_refresh()?;
        Ok(())
    }

    /// Bytes per transfer PUT.
    pub fn piece_size(&self) -> usize {
        self.upload_piece_size_mib
            .unwrap_or(DEFAULT_PIECE_MIB)
            .clamp(1, 1024) as usize
            * (1 << 20)
    }

    /// The session age after which the client logs in again.
    pub fn session_refresh(&self) -> Result<Duration> {
        let Some(s) = self.session_refresh_threshold.as_deref() else {
            return Ok(DEFAULT_SESSION_REFRESH);
        };
        match parse_duration(s) {
            Some(d) if d >= Duration::from_secs(60) => Ok(d),
            _ => Err(config(
                "vcd.sessionRefreshThreshold",
                format!("{s:?}: must be a duration of at least 1m, e.g. 20h or 1h30m"),
            )),
        }
    }
}

fn config(key: impl Into<String>, message: impl Into<String>) -> ProviderError {
    ProviderError::Config {
        key: key.into(),
        message: message.into(),
    }
}

/// A Go-style duration: `20h`, `90m`, `1h30m`, `45s` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => ido_api::duration::parse_duration(s).ok(),
    }
}

use ido_io::redact::userinfo as redact_userinfo;

fn de_locations<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, VcdLocation>, D::Error> {
    parse_locations(Option::<Value>::deserialize(d)?).map_err(D::Error::custom)
}

/// Why `vcd.locations` cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LocationsError {
    #[error("vcd.locations: a location in a list needs a string `name`")]
    Unnamed,
    #[error("vcd.locations.{name}: {source}")]
    Location {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("vcd.locations: list items must be locations")]
    NotALocation,
    #[error("vcd.locations: {0:?} is listed twice")]
    Twice(String),
    #[error("vcd.locations: expected a map of name → location or one location with a name, got {0}")]
    Shape(Value),
}

/// Reads `locations`: a map of name → location, a list of locations with a `name`, or one
/// location with a `name` (the original's shape).
pub fn parse_locations(v: Option<Value>) -> Result<BTreeMap<String, VcdLocation>, LocationsError> {
    let location = |name: &str, v: Value| {
        serde_json::from_value(v).map_err(|source| LocationsError::Location {
            name: name.to_string(),
            source,
        })
    };
    let named = |mut m: serde_json::Map<String, Value>| {
        let Some(Value::String(name)) = m.remove("name") else {
            return Err(LocationsError::Unnamed);
        };
        let loc = location(&name, Value::Object(m))?;
        Ok((name, loc))
    };
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if matches!(m.get("name"), Some(Value::String(_))) => {
            let (name, loc) = named(m)?;
            out.insert(name, loc);
        }
        Some(Value::Object(m)) => {
            for (name, v) in m {
                let loc = location(&name, v)?;
                out.insert(name, loc);
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                let Value::Object(m) = item else {
                    return Err(LocationsError::NotALocation);
                };
                let (name, loc) = named(m)?;
                if out.insert(name.clone(), loc).is_some() {
                    return Err(LocationsError::Twice(name));
                }
            }
        }
        Some(other) => return Err(LocationsError::Shape(other)),
    }
    Ok(out)
}
