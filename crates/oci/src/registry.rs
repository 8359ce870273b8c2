//! One side of a copy: a registry host with its TLS settings, credentials and limits.

use std::{sync::Arc, time::Duration};

use oci_client::{
    Client,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use tokio::sync::Semaphore;

use crate::{Error, Result, auth::AuthStore};

/// TLS settings of a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// Verify certificates (default). `false` allows plain HTTP or unverified TLS, like
    /// skopeo's `--tls-verify=false`.
    pub verify: bool,
    /// Extra trusted CAs (PEM).
    pub ca_bundle: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            verify: true,
            ca_bundle: None,
        }
    }
}

/// A registry as one side of copies. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    /// Host (with port) as in references.
    pub host: String,
    /// Client uploading blobs in one PUT.
    pub(crate) client: Client,
    /// Client uploading blobs in chunks (for registries refusing monolithic uploads).
    pub(crate) chunked: Client,
    auths: Arc<AuthStore>,
    /// Blob transfers to/from this registry at once.
    pub(crate) limit: Arc<Semaphore>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Blob transfers per registry at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 6;

impl Registry {
    /// Prepares `host` (e.g. `127.0.0.1:5000`, `docker.io`). With `verify: false` it probes
    /// whether the host speaks TLS at all and uses plain HTTP if not.
    pub async fn connect(
        host: &str,
        tls: &TlsSettings,
        auths: Arc<AuthStore>,
        concurrency: usize,
    ) -> Result<Self> {
        ido_engine::http::install_crypto_provider();
        let plain = !tls.verify && !speaks_tls(host).await;
        let mut extra = vec![];
        if let Some(pem) = &tls.ca_bundle {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::Invalid {
                    field: "CA bundle",
                    value: format!("for {host}"),
                    reason: "no PEM certificate in it".into(),
                });
            }
            extra.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            });
        }
        let config = |monolithic: bool| ClientConfig {
            protocol: if plain {
                ClientProtocol::HttpsExcept(vec![host.to_string()])
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: !tls.verify,
            use_monolithic_push: monolithic,
            extra_root_certificates: extra.clone(),
            max_concurrent_upload: concurrency,
            max_concurrent_download: concurrency,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            ..ClientConfig::default()
        };
        Ok(Self {
            host: host.to_string(),
            client: Client::new(config(true)),
            chunked: Client::new(config(false)),
            auths,
            limit: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    /// The credentials for this registry.
    pub fn auth(&self) -> RegistryAuth {
        self.auths.auth_for(&self.host)
    }
}

/// Whether `host` completes a TLS handshake (any certificate accepted).
async fn speaks_tls(host: &str) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        .build()
    else {
        return false;
    };
    client.get(format!("https://{host}/v2/")).send().await.is_ok()
}
