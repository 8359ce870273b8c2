//! HTTP clients: TLS verification on unless asked otherwise, optional CA bundle.

use std::time::Duration;

use crate::{Error, Result};

/// TLS settings of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Skip certificate verification (self-signed peers). Off by default.
    pub insecure: bool,
    /// Extra trusted CA certificates (PEM), added to the platform's roots.
    pub ca_bundle: Option<String>,
}

/// Installs the process-wide rustls crypto provider (ring). Safe to call many times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a client for one peer. `field` names the config key of the CA bundle in errors.
pub fn client(tls: &TlsOptions, field: &'static str) -> Result<reqwest::Client> {
    install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(300))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("ido/", env!("CARGO_PKG_VERSION")));
    if tls.insecure {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    if let Some(pem) = &tls.ca_bundle {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| Error::Invalid {
            field,
            value: "<PEM bundle>".into(),
            reason: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(Error::Invalid {
                field,
                value: "<PEM bundle>".into(),
                reason: "no certificate found".into(),
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| Error::Invalid {
        field,
        value: "<tls settings>".into(),
        reason: e.to_string(),
    })
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) as `%XX`: a value
/// in a URL's query or path segment, and the canonical form SigV4 signs.
pub fn encode_unreserved(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, UNRESERVED).to_string()
}
