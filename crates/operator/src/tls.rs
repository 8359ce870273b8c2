//! HTTPS for the metrics endpoint, as controller-runtime serves it: the certificate and key
//! of a directory (`tls.crt`, `tls.key`, e.g. a cert-manager Secret mounted there; reloaded
//! when they change, like controller-runtime's certwatcher), else a self-signed certificate
//! made at start.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use anyhow::Context as _;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Certificate file in a certificate directory (controller-runtime's name).
pub const CERT_FILE: &str = "tls.crt";
/// Key file in a certificate directory.
pub const KEY_FILE: &str = "tls.key";
/// How often a certificate directory is checked for new files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// Made at start, for `localhost`, `127.0.0.1` and `::1` (scrapers skip verification or
    /// pin it; controller-runtime's default).
    SelfSigned,
    /// `tls.crt` (PEM chain, leaf first) and `tls.key` (PEM private key) in this directory.
    Dir(PathBuf),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
pub fn self_signed() -> anyhow::Result<CertifiedKey> {
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let generated =
        rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    certified(vec![generated.cert.der().clone()], &key)
}

fn certified(chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'_>) -> anyhow::Result<CertifiedKey> {
    let signer = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .context("unsupported private key")?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .context("the private key does not match the certificate")?;
    Ok(ck)
}

/// The certificate and key of `dir` (`tls.crt`, `tls.key`) and the bytes read.
fn load_dir(dir: &Path) -> anyhow::Result<(CertifiedKey, Vec<u8>)> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let cert_pem = std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key_pem = std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert_path.display());
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| format!("parsing {}", key_path.display()))?;
    let ck = certified(chain, &key).with_context(|| format!("loading {}", dir.display()))?;
    let mut stamp = cert_pem;
    stamp.extend_from_slice(&key_pem);
    Ok((ck, stamp))
}

/// Serves the current certificate; for a directory, a task re-reads it every
/// [`RELOAD_EVERY`] and swaps in a changed, valid pair (a broken one is logged and the old
/// one kept).
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Watches `dir` while `resolver` lives.
async fn reload(resolver: Weak<Resolver>, dir: PathBuf, mut stamp: Vec<u8>) {
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let Some(r) = resolver.upgrade() else { return };
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || load_dir(&d)).await {
            Ok(Ok((ck, new))) if new != stamp => {
                *r.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
                stamp = new;
                tracing::info!(dir = %dir.display(), "reloaded the metrics certificate");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = format!("{e:#}"), "reloading the metrics certificate failed; keeping the current one")
            }
            Err(e) => tracing::warn!(error = %e, "reloading the metrics certificate failed"),
        }
    }
}

/// The server configuration for `source` (HTTP/1.1, TLS 1.2 and 1.3). For a directory, the
/// files are checked now and then watched.
pub fn server_config(source: &CertSource) -> anyhow::Result<Arc<ServerConfig>> {
    let resolver = match source {
        CertSource::SelfSigned => Arc::new(Resolver {
            current: RwLock::new(Arc::new(self_signed()?)),
        }),
        CertSource::Dir(dir) => {
            let (ck, stamp) = load_dir(dir)?;
            let r = Arc::new(Resolver {
                current: RwLock::new(Arc::new(ck)),
            });
            tokio::spawn(reload(Arc::downgrade(&r), dir.clone(), stamp));
            r
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP listener that hands out connections once their TLS handshake is done (each
/// handshake runs on its own task, so a slow client holds up no one).
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _accept: AbortOnDrop,
}

impl TlsListener {
    /// Accepts on `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        let accept = tokio::spawn(async move {
            loop {
                let (sock, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accepting a metrics connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            _accept: AbortOnDrop(accept),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task is gone only with the listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_matches_its_key() {
        let ck = self_signed().unwrap();
        assert_eq!(ck.cert.len(), 1);
        server_config_blocking(&CertSource::SelfSigned);
    }

    fn server_config_blocking(source: &CertSource) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { server_config(source).unwrap() });
    }

    #[test]
    fn a_directory_needs_both_files_and_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_dir(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("tls.crt"), "{e:#}");
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), a.cert.pem()).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b.signing_key.serialize_pem()).unwrap();
        let e = load_dir(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("does not match"), "{e:#}");
        std::fs::write(dir.path().join(KEY_FILE), a.signing_key.serialize_pem()).unwrap();
        load_dir(dir.path()).unwrap();
    }
}
