//! The fake's HTTPS listener (the shared one of the fakes) in front of its router.

use std::{net::SocketAddr, sync::Arc};

use tokio::task::JoinHandle;

use super::server::{Shared, handle};
use crate::TestCa;

/// Binds `127.0.0.1:0` and serves the API over TLS with `ca`'s server certificate.
pub(super) async fn serve(sh: Arc<Shared>, ca: &TestCa) -> anyhow::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
    crate::fakes::tls::serve(ca, axum::Router::new().fallback(handle).with_state(sh)).await
}
