//! What the copy tests share: an `ido_oci::Registry` for a test-kit registry.

use std::sync::Arc;

use ido_oci::{
    auth::{AuthStore, Credentials},
    registry::{DEFAULT_CONCURRENCY, Registry, TlsSettings},
};
use ido_testkit::registry::DockerRegistry;

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
