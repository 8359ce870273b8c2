//! What the copy tests share: an `ido_oci::Registry` for a test-kit registry, or for a
//! plain-HTTP host (a proxy), and references. Each test binary uses part of it.
#![allow(dead_code)]

use std::sync::Arc;

use ido_oci::{
    Reference,
    auth::{AuthStore, Credentials},
    registry::{DEFAULT_CONCURRENCY, Registry, TlsSettings},
};
use ido_testkit::{ociregistry::OciRegistry, registry::DockerRegistry};

/// A test-kit registry a test talks to directly (raw manifests, the referrers API).
pub trait Peer {
    /// `http(s)://127.0.0.1:PORT`.
    fn base_url(&self) -> String;
}

impl Peer for DockerRegistry {
    fn base_url(&self) -> String {
        DockerRegistry::base_url(self)
    }
}

impl Peer for OciRegistry {
    fn base_url(&self) -> String {
        OciRegistry::base_url(self)
    }
}

fn tls(reg: &DockerRegistry) -> TlsSettings {
    match reg.ca() {
        Some(ca) => TlsSettings {
            verify: true,
            ca_bundle: Some(ca.ca_pem()),
        },
        None => TlsSettings {
            verify: false,
            ca_bundle: None,
        },
    }
}

fn auths(reg: &DockerRegistry) -> AuthStore {
    let mut auths = AuthStore::default();
    if let Some((u, p)) = reg.credentials() {
        auths.insert(
            reg.host(),
            Credentials {
                username: u.clone(),
                password: p.clone(),
            },
        );
    }
    auths
}

pub async fn side(reg: &DockerRegistry) -> Registry {
    Registry::connect(reg.host(), &tls(reg), Arc::new(auths(reg)), DEFAULT_CONCURRENCY)
        .await
        .unwrap()
}

/// An anonymous `Registry` for `host`, TLS verification off (plain HTTP allowed).
pub async fn plain(host: &str) -> Registry {
    ido_testkit::install_crypto_provider();
    let tls = TlsSettings {
        verify: false,
        ca_bundle: None,
    };
    Registry::connect(host, &tls, Arc::new(AuthStore::default()), DEFAULT_CONCURRENCY)
        .await
        .unwrap()
}

/// `host/repo_tag`.
pub fn r(host: &str, repo_tag: &str) -> Reference {
    format!("{host}/{repo_tag}").parse().unwrap()
}
