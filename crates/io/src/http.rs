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

/// Checks that the process has a rustls crypto provider, which every TLS client here needs.
///
/// Libraries never choose one: the binary installs it at its start
/// (`rustls::crypto::ring::default_provider().install_default()`), as `ido` and the test kit
/// do. Without one, this is an error naming `field` instead of a panic inside rustls.
pub fn require_crypto_provider(field: &'static str) -> Result<()> {
    match rustls::crypto::CryptoProvider::get_default() {
        Some(_) => Ok(()),
        None => Err(Error::Invalid {
            field,
            value: "<tls settings>".into(),
            reason: "no rustls crypto provider is installed in this process; the program must install one \
                     at its start (rustls::crypto::ring::default_provider().install_default())"
                .into(),
        }),
    }
}

/// Builds a client for one peer. `field` names the config key of the CA bundle in errors.
pub fn client(tls: &TlsOptions, field: &'static str) -> Result<reqwest::Client> {
    require_crypto_provider(field)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a provider, building a client is an error naming the field, not a panic. The
    /// suite runs each test in its own process (nextest); under `cargo test` another test may
    /// have installed one already, and then there is nothing to check.
    #[test]
    fn no_crypto_provider_is_an_error_not_a_panic() {
        if rustls::crypto::CryptoProvider::get_default().is_some() {
            eprintln!("a provider is installed in this process already; nothing to check");
            return;
        }
        let e = client(&TlsOptions::default(), "vsphere.tls")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vsphere.tls") && e.contains("crypto provider"), "{e}");
        let _ = rustls::crypto::ring::default_provider().install_default();
        client(&TlsOptions::default(), "vsphere.tls").unwrap();
    }
}
