//! The small HTTP servers of the test kit (the token server, the AWS stand-in): an axum app
//! served from its own thread and runtime, so that any test runtime may start and drop
//! it, plain or over TLS; stopped and joined when dropped.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;

/// A running server.
pub(crate) struct ThreadServer {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadServer {
    /// Serves `app` on `listener` (bound by the caller, which knows its address before
    /// anything is served) from a thread named `name`; over TLS with `tls`.
    pub(crate) fn start(
        name: &str,
        listener: std::net::TcpListener,
        app: axum::Router,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("building {name}'s runtime"))?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(tcp) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let stop = async {
                        let _ = rx.await;
                    };
                    match tls {
                        Some(cfg) => {
                            let l = TlsListener {
                                tcp,
                                acceptor: tokio_rustls::TlsAcceptor::from(cfg),
                            };
                            let _ = axum::serve(l, app).with_graceful_shutdown(stop).await;
                        }
                        None => {
                            let _ = axum::serve(tcp, app).with_graceful_shutdown(stop).await;
                        }
                    }
                });
            })
            .with_context(|| format!("spawning {name}'s thread"))?;
        Ok(Self {
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TLS over a TCP listener; a client that fails its handshake is dropped, not fatal.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let hs = tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp));
            if let Ok(Ok(tls)) = hs.await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
