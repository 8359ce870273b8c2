//! Pull mode (`vsphere.pullFromURL`): vSphere downloads the disks from S3 itself.
//!
//! ```text
//! S3 GET ──► descriptor only ──► CreateImportSpec ──► ImportVApp ──► lease ready
//!                                                                       │
//!   HttpNfcLeasePullFromUrls_Task(one file per fileItem: OVA URL + member)◄┘
//!        │   (wait for the task; HttpNfcLeaseProgress every 2 s)
//!        ▼
//!   HttpNfcLeaseComplete ──► MarkAsTemplate
//! ```
//!
//! The URL is [`S3Object::download_url`] (presigned for private buckets), `memberName` the
//! fileItem's path in the OVA. For https URLs, `sslThumbprint` pins the S3 server's
//! certificate as this process sees it (SHA-1 of the leaf certificate, `AB:CD:…`); http URLs
//! get `0000`, as the Go operator sends. A vCenter without pull mode (`MethodNotFound` or
//! `NotSupported`) gets a push import instead, after the half-made VM is removed. Any other
//! failure aborts the lease and removes the VM, as in push mode.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use ido_io::{ova::OvaReader, s3::S3Object};
use sha1::{Digest, Sha1};
use url::Url;

use super::VsphereError;
use super::{
    client::Client,
    import::{self, Target},
    lease::SourceFile,
    soap::{SoapError, error_chain},
    xml::MoRef,
};
use crate::{Progress, ProviderError, Result};

/// `sslThumbprint` sent for plain-http URLs (what the Go operator sends).
pub const HTTP_THUMBPRINT: &str = "0000";
/// Longest wait for the TLS handshake that reads the S3 server's certificate.
const THUMBPRINT_TIMEOUT: Duration = Duration::from_secs(30);
const METHOD: &str = "HttpNfcLeasePullFromUrls_Task";

/// How a pull import failed.
enum PullError {
    /// vSphere has no pull mode: import by push instead.
    Unsupported(SoapError),
    /// Anything else.
    Failed(ProviderError),
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported(e) => write!(f, "pull mode not supported: {e}"),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl From<ProviderError> for PullError {
    fn from(e: ProviderError) -> Self {
        Self::Failed(e)
    }
}

impl From<SoapError> for PullError {
    fn from(e: SoapError) -> Self {
        Self::Failed(e.into())
    }
}

impl From<ido_io::Error> for PullError {
    fn from(e: ido_io::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// Whether vSphere refused the pull call itself for lack of support.
fn unsupported(e: &SoapError) -> bool {
    e.is_fault("MethodNotFound") || e.is_fault("NotSupported")
}

/// Imports the OVA `source` as template `name` into `target` by pull; falls back to
/// [`import::import_ova`] (push) when vSphere has no pull mode. `progress` gets the declared
/// disk sizes once the pull is done (vSphere, not this process, moves the bytes).
pub async fn pull_ova(
    client: &Client,
    target: &Target,
    name: &str,
    source: &S3Object,
    progress: &Progress,
) -> Result<MoRef> {
    match pull(client, target, name, source).await {
        Ok((vm, bytes)) => {
            progress.add(bytes);
            Ok(vm)
        }
        Err(PullError::Unsupported(e)) => {
            tracing::warn!(template = name, error = %e, "vSphere has no pull mode, importing by push instead");
            import::import_ova(client, target, name, source, progress).await
        }
        Err(PullError::Failed(e)) => Err(e),
    }
}

/// The pull import; returns the template and the bytes pulled (declared sizes).
async fn pull(
    client: &Client,
    target: &Target,
    name: &str,
    source: &S3Object,
) -> Result<(MoRef, u64), PullError> {
    // Only the descriptor: the rest of the stream is dropped unread.
    let descriptor = OvaReader::from_stream(source.get().await?).await?.descriptor;
    let spec = import::import_spec(client, target, name, &descriptor, source).await?;
    let url = source.download_url();
    let thumbprint = match url.scheme() {
        "https" => ssl_thumbprint(&url).await?,
        _ => HTTP_THUMBPRINT.to_string(),
    };
    let (lease, mut pending) = import::import_vapp(client, target, name, &spec).await?;
    let result = async {
        let (vm, pairs) = import::lease_ready(client, &lease, &spec, &mut pending).await?;
        let files: Vec<SourceFile> = pairs
            .iter()
            .map(|(item, _)| SourceFile {
                target_device_id: item.device_id.clone(),
                url: url.to_string(),
                member_name: Some(item.path.clone()),
                create: item.create,
                ssl_thumbprint: Some(thumbprint.clone()),
                http_headers: Vec::new(),
                size: item.size,
            })
            .collect();
        let total: u64 = files.iter().filter_map(|f| f.size).sum();
        tracing::debug!(template = name, files = files.len(), bytes = total, source = %source.display_url(), "vSphere pulls the OVA");
        let task = match client.lease_pull_from_urls(&lease, &files).await {
            Err(e) if unsupported(&e) => return Err(PullError::Unsupported(e)),
            r => r?,
        };
        let percent = Arc::new(AtomicU8::new(0));
        let ticker = {
            let percent = percent.clone();
            import::spawn_progress(client.clone(), lease.clone(), move || {
                percent.load(Ordering::Relaxed)
            })
        };
        let waited = client
            .wait_task_progress(METHOD, &task, |p| percent.store(p, Ordering::Relaxed))
            .await;
        drop(ticker);
        match waited {
            Err(e) if e.is_fault("NotSupported") => return Err(PullError::Unsupported(e)),
            Err(SoapError::Fault { fault, .. }) => {
                return Err(PullError::Failed(ProviderError::api(VsphereError::PullFailed {
                    url: source.display_url(),
                    fault: redact(&fault.to_string(), &url),
                })));
            }
            r => r?,
        }
        import::complete(client, &lease, &vm).await?;
        Ok((vm, total))
    }
    .await;
    pending.finish(name, result).await
}

/// `message` without `url`'s query (a presigned URL's signature).
fn redact(message: &str, url: &Url) -> String {
    match url.query() {
        Some(q) if !q.is_empty() => message.replace(q, "<redacted>"),
        _ => message.to_string(),
    }
}

/// The SHA-1 thumbprint (`AB:CD:…`, uppercase) of the certificate the server of the https
/// `url` presents, read from a TLS handshake with it (a `HEAD /` without credentials).
///
/// The certificate is not verified: vSphere pins exactly the one seen here (as the Go
/// operator does). The S3 client verifies the same server when it reads the descriptor.
pub async fn ssl_thumbprint(url: &Url) -> Result<String> {
    let host = url
        .host_str()
        .ok_or_else(|| ProviderError::Config {
            key: "s3.endpoint".into(),
            message: format!("{}: no host", url.origin().ascii_serialization()),
        })?
        .to_string();
    let mut origin = url.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    let _ = origin.set_username("");
    let _ = origin.set_password(None);
    ido_io::http::require_crypto_provider("s3.endpoint")?;
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .tls_info(true)
        .timeout(THUMBPRINT_TIMEOUT)
        .build()
        .map_err(|e| ProviderError::Transport(format!("TLS client for {host}: {}", error_chain(&e))))?;
    let shown = origin.as_str().trim_end_matches('/').to_string();
    let resp = http.head(origin).send().await.map_err(|e| {
        ProviderError::Transport(format!(
            "reading the certificate of {shown}: {}",
            error_chain(&e.without_url())
        ))
    })?;
    let der = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .ok_or_else(|| ProviderError::Transport(format!("{shown} presented no TLS certificate")))?;
    Ok(thumbprint(der))
}

/// SHA-1 of `der` as uppercase hex pairs joined by `:`.
pub fn thumbprint(der: &[u8]) -> String {
    Sha1::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_are_uppercase_colon_pairs() {
        // SHA-1("abc") = a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d
        assert_eq!(
            thumbprint(b"abc"),
            "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D"
        );
    }

    #[test]
    fn signatures_are_redacted() {
        let url = Url::parse("https://s3/b/k.ova?X-Amz-Signature=abc&X-Amz-Credential=k").unwrap();
        let m = format!("GET {url}: 403");
        let r = redact(&m, &url);
        assert!(
            !r.contains("abc") && r.contains("https://s3/b/k.ova?<redacted>"),
            "{r}"
        );
        let plain = Url::parse("http://s3/b/k.ova").unwrap();
        assert_eq!(redact("x", &plain), "x");
    }
}
