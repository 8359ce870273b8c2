//! Registry credentials from docker config files (`--authfile`, `~/.docker/config.json`) and
//! `kubernetes.io/dockerconfigjson` Secrets. They are kept per registry host, handed only to
//! `oci-client`, and never printed (`Debug` redacts them).

use std::collections::BTreeMap;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::{Error, Result};

/// A user name and password (or token). `Debug` shows only the user.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Credentials by registry host.
#[derive(Clone, Debug, Default)]
pub struct AuthStore {
    by_host: BTreeMap<String, Credentials>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

impl AuthStore {
    /// Parses a docker config (`{"auths": {host: {auth | username/password}}}`), as in a
    /// config file or a Secret's `.dockerconfigjson`. `origin` names it in errors.
    pub fn from_docker_config(json: &[u8], origin: &str) -> Result<Self> {
        let bad = |reason: String| Error::Invalid {
            field: "docker config",
            value: origin.into(),
            reason,
        };
        let cfg: DockerConfig =
            serde_json::from_slice(json).map_err(|e| bad(format!("not a docker config: {e}")))?;
        let mut by_host = BTreeMap::new();
        for (host, a) in cfg.auths {
            let creds = match (a.auth, a.username, a.password, a.identity_token) {
                (_, Some(u), Some(p), _) => Credentials {
                    username: u,
                    password: p,
                },
                (Some(b64), ..) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map_err(|_| bad(format!("auths.{host}.auth is not base64")))?;
                    let text =
                        String::from_utf8(raw).map_err(|_| bad(format!("auths.{host}.auth is not UTF-8")))?;
                    let (u, p) = text
                        .split_once(':')
                        .ok_or_else(|| bad(format!("auths.{host}.auth is not user:password")))?;
                    Credentials {
                        username: u.into(),
                        password: p.into(),
                    }
                }
                (None, _, _, Some(t)) => Credentials {
                    username: "<token>".into(),
                    password: t,
                },
                _ => continue,
            };
            by_host.insert(normalize_host(&host), creds);
        }
        Ok(Self { by_host })
    }

    /// Adds (or replaces) credentials for `host`.
    pub fn insert(&mut self, host: &str, creds: Credentials) {
        self.by_host.insert(normalize_host(host), creds);
    }

    /// Adds credentials for `host` unless it has some already (a pull secret's win over
    /// ones found otherwise, such as [`crate::aws`]'s): whether they were added.
    pub fn insert_if_absent(&mut self, host: &str, creds: Credentials) -> bool {
        match self.by_host.entry(normalize_host(host)) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(creds);
                true
            }
            std::collections::btree_map::Entry::Occupied(_) => false,
        }
    }

    /// Adds every entry of `other`, replacing same hosts.
    pub fn extend(&mut self, other: AuthStore) {
        self.by_host.extend(other.by_host);
    }

    /// The auth to use for `registry` (anonymous if none is known).
    pub fn auth_for(&self, registry: &str) -> RegistryAuth {
        match self.by_host.get(&normalize_host(registry)) {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// `https://index.docker.io/v1/`, `registry-1.docker.io`, `docker.io` → `docker.io`;
/// other entries lose scheme and path.
pub fn normalize_host(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"127.0.0.1:5000":{{"username":"bob","password":"pw"}}}}}}"#
        );
        let s = AuthStore::from_docker_config(json.as_bytes(), "test").unwrap();
        assert!(
            matches!(s.auth_for("index.docker.io"), RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret")
        );
        assert!(matches!(s.auth_for("127.0.0.1:5000"), RegistryAuth::Basic(u, _) if u == "bob"));
        assert!(matches!(s.auth_for("quay.io"), RegistryAuth::Anonymous));
        assert!(!format!("{s:?}").contains("s3cret"));
        let mut s = s;
        let other = |p: &str| Credentials {
            username: "AWS".into(),
            password: p.into(),
        };
        assert!(!s.insert_if_absent("127.0.0.1:5000", other("x")));
        assert!(matches!(s.auth_for("127.0.0.1:5000"), RegistryAuth::Basic(u, _) if u == "bob"));
        assert!(s.insert_if_absent("https://quay.io/", other("y")));
        assert!(matches!(s.auth_for("quay.io"), RegistryAuth::Basic(u, p) if u == "AWS" && p == "y"));
        let e = AuthStore::from_docker_config(br#"{"auths":{"x":{"auth":"!!"}}}"#, "f.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.json") && e.contains("auths.x.auth"), "{e}");
    }
}
