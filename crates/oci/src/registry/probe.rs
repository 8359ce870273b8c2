//! What a registry is: `GET /v2/` tells TLS or plain HTTP, open or challenging; the
//! oci-client clients are built from that.

use std::time::Duration;

use oci_client::{
    Client,
    client::{Certificate, ClientConfig, ClientProtocol},
};
use reqwest::header::WWW_AUTHENTICATE;

use super::*;

/// What the oci-client clients of a registry are built from.
pub(super) struct Params {
    pub(super) host: String,
    pub(super) plain: bool,
    pub(super) verify: bool,
    pub(super) extra: Vec<Certificate>,
    pub(super) concurrency: usize,
}

impl Params {
    pub(super) fn client(&self, monolithic: bool) -> Result<Client> {
        let config = ClientConfig {
            protocol: if self.plain {
                ClientProtocol::HttpsExcept(vec![self.host.clone()])
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: !self.verify,
            use_monolithic_push: monolithic,
            extra_root_certificates: self.extra.clone(),
            max_concurrent_upload: self.concurrency,
            max_concurrent_download: self.concurrency,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            ..ClientConfig::default()
        };
        Client::try_from(config).map_err(|e| Error::Invalid {
            field: "registry client",
            value: self.host.clone(),
            reason: ido_io::error_chain(&e),
        })
    }
}

/// What `GET /v2/` told about a registry.
pub(super) struct Probe {
    /// It does not speak TLS (only looked for with verification off).
    pub(super) plain: bool,
    /// It answered 200 without `WWW-Authenticate`.
    pub(super) open: bool,
    /// Why it cannot be used, when another try would not change it: nothing listens, it
    /// speaks plain HTTP to a client that wants TLS, its certificate does not verify.
    pub(super) unreachable: Option<String>,
    /// Its `WWW-Authenticate: Bearer realm=…,service=…` challenge: a token registry.
    pub(super) bearer: Option<Bearer>,
}

/// `GET https://host/v2/` (and `http://` if that fails and verification is off). A failure
/// another try may get past (a timeout, a reset) leaves the defaults (TLS, not open): the
/// copy's own requests then retry and report it.
pub(super) async fn probe(http: &reqwest::Client, host: &str, verify: bool) -> Probe {
    let is_open = |r: &reqwest::Response| {
        r.status() == reqwest::StatusCode::OK && !r.headers().contains_key(WWW_AUTHENTICATE)
    };
    let bearer = |r: &reqwest::Response| {
        r.headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Bearer::parse)
    };
    let get = |scheme: &str| {
        http.get(format!("{scheme}://{host}/v2/"))
            .timeout(Duration::from_secs(20))
            .send()
    };
    let tls = match get("https").await {
        Ok(r) => {
            return Probe {
                plain: false,
                open: is_open(&r),
                unreachable: None,
                bearer: bearer(&r),
            };
        }
        Err(e) => e,
    };
    let lower = |e: &reqwest::Error| ido_io::error_chain(e).to_ascii_lowercase();
    let refused = |e: &reqwest::Error| lower(e).contains("connection refused");
    if verify {
        let chain = lower(&tls);
        let unreachable = if refused(&tls) {
            Some(format!(
                "cannot connect: connection refused (nothing listens on {host})"
            ))
        } else if [
            "invalidcontenttype",
            "corrupt message",
            "wrong version number",
            "http/1",
        ]
        .iter()
        .any(|s| chain.contains(s))
        {
            Some(format!(
                "TLS handshake failed ({chain}): it speaks plain HTTP, not TLS; to use plain HTTP, turn TLS verification off for it (--tls-verify=false, tlsVerify: false)"
            ))
        } else if chain.contains("certificate") {
            Some(format!(
                "its TLS certificate does not verify ({chain}); give its CA (--cert-dir, caBundle) or turn verification off"
            ))
        } else {
            None
        };
        return Probe {
            plain: false,
            open: false,
            unreachable,
            bearer: None,
        };
    }
    match get("http").await {
        Ok(r) => Probe {
            plain: true,
            open: is_open(&r),
            unreachable: None,
            bearer: bearer(&r),
        },
        Err(e) => Probe {
            plain: true,
            open: false,
            unreachable: (refused(&tls) && refused(&e))
                .then(|| format!("cannot connect: connection refused (nothing listens on {host})")),
            bearer: None,
        },
    }
}
