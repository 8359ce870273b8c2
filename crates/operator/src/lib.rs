//! The in-cluster driver of `ido operator`: the reconcilers of `ido-controllers` run by
//! kube-runtime controllers against the Kubernetes API.
//!
//! ```text
//!   ido operator ──▶ run(client, ContextParts, OperatorOptions)
//!                     ├─ http:       /healthz /readyz (plain)  /metrics (HTTPS + TokenReview/SubjectAccessReview)
//!                     ├─ startup:    /version, SelfSubjectReview, list NodeImages   (bounded; 401/403 end it)
//!                     └─ lease:      acquire ─▶ leading ─▶ controller: Release + NodeImage + ImageSync (+ DiskImport, DiskSource, DiskImportCron)
//!                                       │                     └─ KubeStore (the Store over the API)
//!                                     standby (ready, waits)
//! ```
//!
//! - [`kube_store`]: [`KubeStore`], the controllers' `Store` over the API (narrow writes,
//!   `resourceVersion` preconditions, events).
//! - [`controller`]: the kube-runtime controllers, metrics and per-object backoff.
//! - [`workqueue`]: controller-runtime's controller and work-queue metrics, measured at
//!   kube-runtime's scheduler.
//! - [`lease`]: leader election over a `coordination.k8s.io/v1` Lease.
//! - [`http`]: the metrics and probe endpoints; [`tls`] and [`auth`] secure the metrics.
//! - [`startup`]: the start-up check of the API server.
//! - [`rest_client`]: client-go's `rest_client_requests_total`, counted around the client.
//!
//! Only the leader runs controllers. Losing the lease ends [`run_until`] with an error (the
//! process exits and restarts as a standby); SIGTERM/SIGINT end it cleanly: controllers
//! finish running reconciles, the lease is given up, the endpoint stops.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use ido_controllers::{
    Context, Settings,
    config::{Config, ConfigError},
    metrics::Metrics,
};
use ido_io::s3::S3Source;
use ido_providers::Providers;
use kube::{Client, runtime::events::Reporter};
use tokio::sync::watch;

pub mod auth;
pub mod clone;
pub mod controller;
pub mod http;
pub mod kube_store;
pub mod lease;
pub mod rest_client;
pub mod startup;
pub mod tls;
pub mod upload;
pub mod webhook;
pub mod workqueue;

pub use http::{Health, Phase};
pub use kube_store::KubeStore;
pub use lease::{LeaderElector, LeaseConfig, LeaseError, Round};

/// Name the operator reports events as (`reportingController`).
pub const REPORTER: &str = "ido";

/// The parts of the reconcilers' [`Context`] that do not depend on the cluster; [`run_until`]
/// adds the [`KubeStore`].
pub struct ContextParts {
    /// The enabled providers.
    pub providers: Providers,
    /// Where node images are read from (`None`: no `s3` section).
    pub source: Option<S3Source>,
    /// Reconciler settings (NodeImage namespace, channel, retention, …).
    pub settings: Settings,
    /// The metrics `/metrics` serves.
    pub metrics: Metrics,
}

impl ContextParts {
    /// Builds providers, source and settings from the configuration.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            providers: config.providers()?,
            source: config.source()?,
            settings: config.settings()?,
            metrics: Metrics::default(),
        })
    }
}

/// How the operator runs. The defaults are `ido operator`'s (controller-runtime's
/// conventions): metrics over HTTPS with authentication on `:8443`, probes on `:8081`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorOptions {
    /// Address of `/metrics` (default `0.0.0.0:8443`).
    pub metrics_addr: SocketAddr,
    /// Whether `/metrics` is served at all (`--metrics-bind-address=0`: no).
    pub serve_metrics: bool,
    /// HTTPS and bearer tokens checked by the API server (default `true`); `false`: plain
    /// HTTP for anyone (tests, local runs).
    pub metrics_secure: bool,
    /// Directory with `tls.crt` and `tls.key` for the metrics' HTTPS; `None`: a self-signed
    /// certificate made at start.
    pub metrics_cert_dir: Option<PathBuf>,
    /// Address of the image cache's admission webhook, HTTPS (default `None`: off).
    pub webhook_addr: Option<SocketAddr>,
    /// Directory with the webhook's `tls.crt` and `tls.key`; `None`: self-signed.
    pub webhook_cert_dir: Option<PathBuf>,
    /// Address of the disk upload endpoint, HTTPS (default `None`: off; needs the upload
    /// key in the DiskImport settings).
    pub upload_addr: Option<SocketAddr>,
    /// Directory with the upload endpoint's `tls.crt` and `tls.key`; `None`: self-signed.
    pub upload_cert_dir: Option<PathBuf>,
    /// Address of `/healthz` and `/readyz`, plain HTTP (default `0.0.0.0:8081`; `None`: off).
    pub health_probe_addr: Option<SocketAddr>,
    /// How long to wait for the API server at start (default 60 s; `None`: forever).
    pub startup_timeout: Option<Duration>,
    /// The API server's address, named in start-up messages (the CLI sets it from its
    /// kubeconfig or in-cluster configuration).
    pub api_server: Option<String>,
    /// Run controllers only while holding the Lease (default `true`).
    pub leader_election: bool,
    /// Name of the Lease (default `ido-leader`).
    pub lease_name: String,
    /// Namespace of the Lease; `None`: `$POD_NAMESPACE`, else the NodeImage namespace.
    pub lease_namespace: Option<String>,
    /// This replica's identity (lease holder, event instance); `None`: `$POD_NAME`, else
    /// the host name.
    pub identity: Option<String>,
    /// NodeImages reconciled at once (the configuration's `concurrency.images`, default 4).
    pub images_concurrency: usize,
    /// Releases reconciled at once (the configuration's `concurrency.releases`, default 4).
    pub releases_concurrency: usize,
    /// ImageSyncs reconciled at once (default 4; each copies `spec.concurrency` tags at once).
    pub syncs_concurrency: usize,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 8443)),
            serve_metrics: true,
            metrics_secure: true,
            metrics_cert_dir: None,
            webhook_addr: None,
            webhook_cert_dir: None,
            upload_addr: None,
            upload_cert_dir: None,
            health_probe_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8081))),
            startup_timeout: Some(Duration::from_secs(60)),
            api_server: None,
            leader_election: true,
            lease_name: "ido-leader".into(),
            lease_namespace: None,
            identity: None,
            images_concurrency: 4,
            releases_concurrency: 4,
            syncs_concurrency: 4,
        }
    }
}

impl OperatorOptions {
    /// The defaults with the concurrencies from the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            images_concurrency: config.concurrency.images,
            releases_concurrency: config.concurrency.releases,
            ..Self::default()
        }
    }
}

/// This replica's identity: `$POD_NAME`, else `$HOSTNAME`, else the kernel's host name.
pub fn default_identity() -> String {
    let non_empty = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    std::env::var("POD_NAME")
        .ok()
        .and_then(non_empty)
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(non_empty))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(non_empty)
        })
        .unwrap_or_else(|| REPORTER.to_string())
}

/// Runs the operator (see the crate docs) until `shutdown` resolves (the `ido` binary
/// resolves it on SIGTERM or SIGINT), then stops cleanly: the controllers stop, the Lease
/// is released.
pub async fn run_until(
    client: Client,
    parts: ContextParts,
    opts: OperatorOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let host = opts
        .api_server
        .as_deref()
        .map(rest_client::host_of)
        .unwrap_or_default();
    let client = rest_client::instrument(client, &host, rest_client::requests(&parts.metrics));
    let identity = opts.identity.clone().unwrap_or_else(default_identity);
    let lease_namespace = opts
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| parts.settings.namespace.clone());
    let ctx = operator_context(&client, parts, &identity);
    let concurrency = concurrency(&opts);
    tracing::info!(
        namespace = %ctx.settings.namespace,
        providers = ?ctx.providers.ids(),
        %identity,
        leader_election = opts.leader_election,
        "starting the operator"
    );

    // One stop signal for everything: the caller's shutdown, or a fatal error below.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop_tx.send_replace(true);
        });
    }
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let health = Health::default();
    let mut servers = start_servers(&opts, &client, &ctx.metrics, &health, &stopped).await?;
    servers.extend(start_webhook(&opts, &ctx, &client, &stopped).await?);
    servers.extend(start_upload(&opts, &ctx, &client, &stopped).await?);
    let server = opts
        .api_server
        .clone()
        .unwrap_or_else(|| "(address not given)".to_string());

    let result = async {
        tokio::select! {
            r = startup::check(&client, &server, &ctx.settings.namespace, opts.startup_timeout, &health) => {
                r.context("starting the operator")?;
            }
            _ = stopped() => return Ok(()),
        }
        if opts.leader_election {
            let elector = LeaderElector::new(
                client.clone(),
                LeaseConfig::new(&opts.lease_name, lease_namespace, identity),
            );
            lead(&elector, client, ctx, concurrency, &health, &stopped).await
        } else {
            health.set(Phase::Leading);
            controller::run(client, ctx, concurrency, &stopped).await;
            Ok(())
        }
    }
    .await;
    health.set(Phase::Stopping);
    stop_tx.send_replace(true);
    wait_for_servers(servers).await;
    result
}

/// The reconcilers' context over the cluster: a [`KubeStore`] whose events name this
/// replica (`identity`), with the providers' DiskImports bound to it.
fn operator_context(client: &Client, parts: ContextParts, identity: &str) -> Arc<Context<KubeStore>> {
    let ContextParts {
        providers,
        source,
        settings,
        metrics,
    } = parts;
    let reporter = Reporter {
        controller: REPORTER.into(),
        instance: Some(identity.to_string()),
    };
    let store = KubeStore::new(client.clone(), reporter, Some(settings.namespace.clone()));
    providers.bind_disk_imports(ido_controllers::diskimport::StoreDiskImports::shared(
        store.clone(),
    ));
    Arc::new(Context {
        providers,
        source,
        metrics,
        ..Context::new(store, settings)
    })
}

/// The controllers' concurrencies from the options: at least 1 each.
fn concurrency(opts: &OperatorOptions) -> controller::Concurrency {
    controller::Concurrency {
        images: u16::try_from(opts.images_concurrency).unwrap_or(u16::MAX).max(1),
        syncs: u16::try_from(opts.syncs_concurrency).unwrap_or(u16::MAX).max(1),
        releases: u16::try_from(opts.releases_concurrency)
            .unwrap_or(u16::MAX)
            .max(1),
    }
}

/// Waits for the endpoints to stop, logging how each ended badly.
async fn wait_for_servers(servers: Vec<Server>) {
    for (what, server) in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the {what} endpoint failed"),
            Err(e) => tracing::warn!(error = %e, "the {what} endpoint panicked"),
        }
    }
}

/// A running HTTP endpoint: what it serves and its task.
type Server = (&'static str, tokio::task::JoinHandle<std::io::Result<()>>);

/// Binds the probe and metrics listeners (and makes the metrics' certificate) first, so that
/// a bad address or certificate fails before anything runs, then serves both until
/// `stopped()`.
async fn start_servers<F>(
    opts: &OperatorOptions,
    client: &Client,
    metrics: &Metrics,
    health: &Health,
    stopped: &impl Fn() -> F,
) -> anyhow::Result<Vec<Server>>
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let probes = match opts.health_probe_addr {
        Some(addr) => Some(
            http::bind(addr)
                .await
                .with_context(|| format!("binding the health probe address {addr}"))?,
        ),
        None => None,
    };
    let metrics_listener = if opts.serve_metrics {
        let addr = opts.metrics_addr;
        let l = http::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        let tls = if opts.metrics_secure {
            let source = match &opts.metrics_cert_dir {
                Some(dir) => tls::CertSource::Dir(dir.clone()),
                None => tls::CertSource::SelfSigned,
            };
            Some((
                tls::server_config(&source).context("the metrics certificate")?,
                source,
            ))
        } else {
            None
        };
        Some((l, tls))
    } else {
        None
    };

    let mut servers = Vec::new();
    if let Some(l) = probes {
        tracing::info!(addr = %l.local_addr()?, "serving /healthz and /readyz (HTTP)");
        servers.push((
            "health probe",
            tokio::spawn(http::serve(l, http::probes_router(health.clone()), stopped())),
        ));
    } else {
        tracing::info!("health probes are off");
    }
    match metrics_listener {
        Some((l, Some((config, source)))) => {
            let addr = l.local_addr()?;
            let auth = Arc::new(auth::Authorizer::new(client.clone()));
            let router = http::metrics_router(metrics.clone(), Some(auth));
            let cert = match source {
                tls::CertSource::SelfSigned => "a self-signed certificate".to_string(),
                tls::CertSource::Dir(d) => format!("the certificate in {}", d.display()),
            };
            tracing::info!(%addr, %cert, "serving /metrics (HTTPS; bearer tokens checked with TokenReview and SubjectAccessReview)");
            let listener = tls::TlsListener::new(l, config)?;
            servers.push(("metrics", tokio::spawn(http::serve(listener, router, stopped()))));
        }
        Some((l, None)) => {
            tracing::info!(addr = %l.local_addr()?, "serving /metrics (plain HTTP, no authentication: --metrics-secure=false)");
            let router = http::metrics_router(metrics.clone(), None);
            servers.push(("metrics", tokio::spawn(http::serve(l, router, stopped()))));
        }
        None => tracing::info!("metrics are off"),
    }
    Ok(servers)
}

/// The admission webhook, when `--webhook-bind-address` asks for it: the image cache's
/// (when the cache is on; its policies read every few seconds while it serves), the
/// upload tokens' and the clones' (when uploads are). Its listener and certificate first: a bad one fails
/// the start.
async fn start_webhook<F>(
    opts: &OperatorOptions,
    ctx: &Arc<Context<KubeStore>>,
    client: &Client,
    stopped: &impl Fn() -> F,
) -> anyhow::Result<Option<Server>>
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let Some(addr) = opts.webhook_addr else {
        return Ok(None);
    };
    let listener = https_listener(addr, opts.webhook_cert_dir.as_ref(), "webhook").await?;
    let mut router = axum::Router::new();
    let mut refresh = None;
    let mut paths = vec![];
    // The image cache's webhook predates the switch: it is served unless only uploads are.
    if ctx.settings.image_cache || ctx.settings.disk_import.upload_key.is_none() {
        let admission = ido_controllers::imagecache::admission::Admission::new(ctx.clone());
        refresh = Some(tokio::spawn(admission.clone().refresh_loop()));
        router = router.merge(webhook::router(admission));
        paths.push(webhook::PATH);
    }
    if let Some(key) = &ctx.settings.disk_import.upload_key {
        router = router.merge(upload::token_router(client.clone(), key.clone()));
        router = router.merge(clone::router(client.clone(), key.clone()));
        paths.extend([upload::TOKEN_PATH, clone::PATH]);
    }
    tracing::info!(%addr, paths = ?paths, "serving the admission webhook (HTTPS)");
    let serve = http::serve(listener, router, stopped());
    Ok(Some((
        "webhook",
        tokio::spawn(async move {
            let r = serve.await;
            if let Some(refresh) = refresh {
                refresh.abort();
            }
            r
        }),
    )))
}

/// An HTTPS listener on `addr` with the certificate of `cert_dir` (`tls.crt`, `tls.key`,
/// reloaded when they change), else a self-signed one; `what` names it in errors.
async fn https_listener(
    addr: SocketAddr,
    cert_dir: Option<&PathBuf>,
    what: &str,
) -> anyhow::Result<tls::TlsListener> {
    let l = http::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))?;
    let source = match cert_dir {
        Some(dir) => tls::CertSource::Dir(dir.clone()),
        None => tls::CertSource::SelfSigned,
    };
    let config = tls::server_config(&source).with_context(|| format!("the {what} certificate"))?;
    Ok(tls::TlsListener::new(l, config)?)
}

/// The disk upload endpoint, when `--upload-bind-address` asks for it (HTTPS); it needs
/// the upload key.
async fn start_upload<F>(
    opts: &OperatorOptions,
    ctx: &Arc<Context<KubeStore>>,
    client: &Client,
    stopped: &impl Fn() -> F,
) -> anyhow::Result<Option<Server>>
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let Some(addr) = opts.upload_addr else {
        return Ok(None);
    };
    let Some(key) = &ctx.settings.disk_import.upload_key else {
        anyhow::bail!(
            "--upload-bind-address {addr} needs --upload-key-file (the key upload tokens are signed with)"
        );
    };
    let listener = https_listener(addr, opts.upload_cert_dir.as_ref(), "upload").await?;
    let router = upload::proxy_router(client.clone(), key.clone())?;
    tracing::info!(%addr, "serving disk uploads (HTTPS)");
    Ok(Some((
        "upload",
        tokio::spawn(http::serve(listener, router, stopped())),
    )))
}

/// Waits for the lease, then runs the controllers while holding it.
async fn lead<F>(
    elector: &LeaderElector,
    client: Client,
    ctx: Arc<Context<KubeStore>>,
    concurrency: controller::Concurrency,
    health: &Health,
    stopped: &impl Fn() -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let cfg = elector.config();
    let mut last_holder = None;
    let acquire = elector.acquire(|round| match round {
        Ok(Round::Leading) => {
            tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, "acquired the lease")
        }
        Ok(Round::Standby { holder }) => {
            health.set(Phase::Standby);
            if last_holder.as_ref() != Some(holder) {
                tracing::info!(lease = %cfg.name, %holder, "standing by: another replica leads");
                last_holder = Some(holder.clone());
            }
        }
        Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "reading the lease failed"),
    });
    tokio::select! {
        _ = acquire => {}
        _ = stopped() => return Ok(()),
    }
    health.set(Phase::Leading);
    tokio::select! {
        _ = controller::run(client, ctx, concurrency, stopped) => {}
        lost = elector.hold() => {
            // Dropping the controllers cancels their running reconciles.
            return Err(anyhow::Error::new(lost).context("lost leadership; stopping the controllers"));
        }
    }
    if let Err(e) = elector.release().await {
        tracing::warn!(lease = %cfg.name, error = %e, "giving up the lease failed");
    }
    Ok(())
}
