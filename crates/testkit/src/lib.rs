//! Test kit for `ido`: real peers started on loopback, independent oracles and fixtures.
//!
//! Every peer is a real program installed by `scripts/setup.sh` (see
//! `/work/shared/reference/test-peers.md`); nothing here talks to the network.
//!
//! | module | what it gives a test |
//! |---|---|
//! | [`cluster`] | [`Cluster`]: a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager from upstream), `kubectl` and `helm` |
//! | [`kubelet`] | [`kubelet::run_deployment`]: a Deployment's container run here as a kubelet would (mounted files, env, a ServiceAccount token) |
//! | [`tls`] | [`TestCa`]: a throw-away CA and a `127.0.0.1`/`localhost` server certificate (openssl CLI) |
//! | [`seaweed`] | [`SeaweedFs`]: a SeaweedFS S3 endpoint with a `public` (anonymous read) and a `private` bucket |
//! | [`vcsim`] | [`Vcsim`]: the project's vCenter simulator (`target/peers/ido-vcsim`), one per test |
//! | [`oracle`] | [`vsphere_oracle`]: an independent pyVmomi client to assert what exists in a simulator |
//! | [`nginx`] | [`nginx::Nginx`]: nginx serving a directory (Range, ETag, sendfile), for benchmarks |
//! | [`ova`] | [`OvaFixture`]: deterministic OVA files (OVF descriptor plus pseudo-random disks) |
//! | [`plot`] | [`plot::bars_svg`]: the benchmarks' SVG bar charts |
//!
//! Conventions:
//! - Peers are killed when their handle is dropped, and a small watchdog process kills them
//!   if the test binary dies first (so a peer never outlives the test process).
//! - Errors are [`anyhow`] errors whose context names what failed, with the tail of the
//!   peer's log when a peer misbehaves.
//! - reqwest in this workspace has no default TLS provider: call
//!   [`install_crypto_provider`] before building a client (the helpers here do).
//! - Secrets never go on a command line or into a child's environment, with one exception:
//!   the simulator's own `-username`/`-password` flags (a test fixture, see [`vcsim`]).

#![warn(missing_docs)]

pub mod aws;
pub mod bench;
pub mod cluster;
pub mod disk_corpus;
pub mod fakes;
pub mod fault_proxy;
pub mod kubelet;
pub mod nginx;
pub mod oci_image;
pub mod ociregistry;
pub mod oracle;
pub mod ova;
pub mod plot;
mod proc;
pub mod registry;
pub mod seaweed;
mod serve;
pub mod tar_bytes;
pub mod tls;
pub mod token_server;
pub mod vcsim;

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

pub use cluster::Cluster;
pub use oracle::vsphere_oracle;
pub use ova::{OvaDisk, OvaFixture, invalid_ova};
pub use seaweed::{ObjectBody, SeaweedFs};
pub use tls::TestCa;
pub use vcsim::{Vcsim, VcsimOptions};

/// The workspace root: two levels above this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

/// Every file below `dir`, except those under `skip`, with its bytes, in path order: taken
/// before and after a command, it shows that nothing outside `skip` was written or deleted.
pub fn files_below(dir: &std::path::Path, skip: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.starts_with(skip) {
            continue;
        }
        if p.is_dir() {
            out.extend(files_below(&p, skip));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
        }
    }
    out.sort();
    out
}

/// Writes `data` to `path` (created or truncated) readable by its owner only: for files
/// that hold credentials.
pub fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

/// Installs rustls' `ring` crypto provider as the process default (idempotent).
///
/// reqwest is built with `rustls-no-provider` in this workspace, so a client cannot be built
/// before some provider is installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A loopback TCP port that was free a moment ago (bind `127.0.0.1:0`, then release it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr().context("reading the bound address")?.port())
}

/// Lowest port [`free_port_pair`] hands out.
pub const PAIR_PORT_MIN: u16 = 20_000;
/// Offset of the second port of a pair (SeaweedFS listens for gRPC on `port + 10000`).
pub const PAIR_PORT_OFFSET: u16 = 10_000;
/// One past the highest port [`free_port_pair`] hands out: `port + 10000` stays below 32768,
/// where Linux's default ephemeral range starts, so outgoing connections never take it.
pub const PAIR_PORT_MAX: u16 = 22_768;

/// A loopback port `p` such that both `p` and `p + 10000` are free, with `p` in
/// [`PAIR_PORT_MIN`]`..`[`PAIR_PORT_MAX`] (so both are far below 65536).
///
/// Ports already handed out by this process are never returned again; a random start
/// makes clashes between concurrent test processes unlikely (callers retry on a clash).
pub fn free_port_pair() -> anyhow::Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    let span = u64::from(PAIR_PORT_MAX - PAIR_PORT_MIN);
    let mut rng = XorShift64::new(time_seed());
    let start = rng.next_u64() % span;
    for i in 0..span {
        let port = PAIR_PORT_MIN + ((start + i) % span) as u16;
        if used.contains(&port) {
            continue;
        }
        let a = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        let b = TcpListener::bind((Ipv4Addr::LOCALHOST, port + PAIR_PORT_OFFSET));
        if a.is_ok() && b.is_ok() {
            used.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port pair (p, p+{PAIR_PORT_OFFSET}) with p in {PAIR_PORT_MIN}..{PAIR_PORT_MAX}")
}

/// A seed from the clock and the process id (ports, not cryptography).
fn time_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// Marsaglia's xorshift64: deterministic pseudo-random bytes for fixtures and port picks.
#[derive(Clone, Debug)]
pub(crate) struct XorShift64(u64);

impl XorShift64 {
    /// A generator from `seed` (a zero seed is replaced, xorshift would stay at zero).
    pub(crate) fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x2545_f491_4f6c_dd1d } else { seed })
    }

    /// The next 64 pseudo-random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("crates/testkit").is_dir());
    }

    #[test]
    fn port_pairs_are_free_distinct_and_in_range() {
        let a = free_port_pair().unwrap();
        let b = free_port_pair().unwrap();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!((PAIR_PORT_MIN..PAIR_PORT_MAX).contains(&p));
            TcpListener::bind((Ipv4Addr::LOCALHOST, p + PAIR_PORT_OFFSET)).unwrap();
        }
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    fn xorshift_is_deterministic() {
        let mut a = XorShift64::new(42);
        let mut b = XorShift64::new(42);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(XorShift64::new(0).next_u64(), 0);
    }
}
