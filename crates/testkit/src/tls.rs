//! A throw-away certificate authority made with the `openssl` CLI.
//!
//! [`TestCa::new`] writes, in its own temporary directory, a CA (ECDSA P-256, `CA:TRUE`) and a
//! server certificate for `IP:127.0.0.1, DNS:localhost` signed by it. Peers load
//! [`TestCa::server_cert`]/[`TestCa::server_key`]; clients trust only [`TestCa::ca_pem`], so
//! certificate verification stays on in tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use tempfile::TempDir;

/// A CA plus one server certificate signed by it, stored in a temporary directory that is
/// removed when the `TestCa` is dropped.
pub struct TestCa {
    /// Holds the files; removed on drop.
    dir: TempDir,
    /// The CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), `subjectAltName = IP:127.0.0.1, DNS:localhost`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM, PKCS#8, unencrypted).
    pub server_key: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_cert", &self.ca_cert)
            .field("server_cert", &self.server_cert)
            .finish_non_exhaustive()
    }
}

/// Extensions of the server certificate (an `openssl x509 -extfile`).
const SERVER_EXT: &str = "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
basicConstraints = critical, CA:FALSE\n\
keyUsage = critical, digitalSignature, keyEncipherment\n\
extendedKeyUsage = serverAuth\n";

impl TestCa {
    /// Generates the CA and the server certificate (takes a few tens of milliseconds).
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ido-testca-")
            .tempdir()
            .context("creating a temporary directory for the test CA")?;
        let p = |name: &str| dir.path().join(name);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];

        let mut ca = Command::new("openssl");
        ca.args(["req", "-x509"])
            .args(ec)
            .args(["-days", "3650", "-subj", "/CN=ido test CA"]);
        ca.args(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        ca.arg("-keyout").arg(p("ca.key")).arg("-out").arg(p("ca.crt"));
        run(ca, "creating the CA certificate")?;

        let mut csr = Command::new("openssl");
        csr.arg("req").args(ec).args(["-subj", "/CN=localhost"]);
        csr.arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr"));
        run(csr, "creating the server key and CSR")?;

        std::fs::write(p("server.ext"), SERVER_EXT).context("writing server.ext")?;
        let mut sign = Command::new("openssl");
        sign.args(["x509", "-req", "-days", "825", "-sha256"]);
        sign.arg("-in").arg(p("server.csr"));
        sign.arg("-CA").arg(p("ca.crt")).arg("-CAkey").arg(p("ca.key"));
        sign.arg("-CAcreateserial").arg("-CAserial").arg(p("ca.srl"));
        sign.arg("-extfile").arg(p("server.ext"));
        sign.arg("-out").arg(p("server.crt"));
        run(sign, "signing the server certificate")?;

        Ok(Self {
            ca_cert: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            dir,
        })
    }

    /// The CA certificate as PEM text (what a client should trust).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca_cert).unwrap_or_default()
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A reqwest client that trusts only this CA (verification on, no proxy).
    pub fn reqwest_client(&self) -> anyhow::Result<reqwest::Client> {
        crate::install_crypto_provider();
        let cert = reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).context("parsing the CA PEM")?;
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .no_proxy()
            .build()
            .context("building a reqwest client trusting the test CA")
    }
}

/// Runs an openssl command, failing with its stderr.
fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{what}: running openssl"))?;
    if !out.status.success() {
        bail!(
            "{what}: openssl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_cert_verifies_against_the_ca() {
        let ca = TestCa::new().unwrap();
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca.ca_cert)
            .arg("-verify_ip")
            .arg("127.0.0.1")
            .arg(&ca.server_cert)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(ca.server_key.is_file());
    }
}
