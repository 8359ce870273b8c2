//! The kube-runtime controllers around the plain reconcilers of `ido-controllers`.
//!
//! ```text
//!   watch Releases (cluster) ──▶ Controller ──▶ release::reconcile(&Release, &Context<KubeStore>)
//!   watch NodeImages (ns)    ──▶ Controller ──▶ nodeimage::reconcile(&NodeImage, &Context<KubeStore>)
//!                                  (concurrency = concurrency.images)
//!   watch ImageSyncs (ns)    ──▶ Controller ──▶ imagesync::reconcile(&ImageSync, &Context<KubeStore>)
//!                                  (concurrency = Concurrency::syncs; Secrets read per pass)
//!   watch DiskImports (all)  ──▶ Controller ──▶ diskimport::reconcile(&DiskImport, &Context<KubeStore>)
//!     owns Jobs, PVCs (all, label app.kubernetes.io/component=disk-import)
//!                                  (only with diskImport.enabled or kubevirt.enabled)
//! ```
//!
//! DiskImports are watched in every namespace (like CDI's DataVolumes: users and the
//! kubevirt provider's locations put them anywhere), so their grants are cluster-wide; the
//! chart renders them only when the controller is on. Owned Jobs and claims are watched
//! through their label, so the caches hold only importers and their claims.
//!
//! ImageSyncs are watched in the operator's namespace (`namespace`, the NodeImages'), like
//! NodeImages, so reading their credential Secrets needs a Role there and not a
//! cluster-wide grant on Secrets. If the ImageSync CRD is not installed (Helm does not
//! upgrade CRDs), that controller is off and a warning says so; the others run.
//!
//! Each reconcile is timed into `ido_reconciles_total` / `ido_reconcile_duration_seconds`.
//! A failed reconcile bumps `ido_reconcile_failures_total{error}` and is retried after an
//! exponential backoff per object (5 s, 10 s, … up to 5 min), reset by the next success.
//! `ido_node_images{provider,state}` is recomputed from the NodeImage cache after every
//! NodeImage reconcile.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use ido_api::{DiskImport, ImageSync, NodeImage, Release};
use ido_controllers::{
    Action, Context, Error, diskimport, imagesync,
    metrics::{ControllerLabels, FailureLabels, StateLabels},
    nodeimage, release,
    store::Object,
};
use k8s_openapi::api::{batch::v1::Job, core::v1::PersistentVolumeClaim};
use kube::{
    Api, Client,
    api::ListParams,
    runtime::{
        Controller,
        controller::{self, Config},
        reflector::{ObjectRef, Store as Cache},
        watcher,
    },
};
use tracing::Instrument;

use crate::KubeStore;

/// First retry delay after a failed reconcile.
const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Longest retry delay after failed reconciles.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every reconcile of one controller shares.
struct Shared<K: kube::Resource<DynamicType = ()> + 'static> {
    /// The reconcilers' context.
    ctx: Arc<Context<KubeStore>>,
    /// `release` or `nodeimage`: the metrics' `controller` label.
    name: &'static str,
    /// Consecutive failures per object.
    failures: Mutex<HashMap<ObjectRef<K>, u32>>,
    /// The controller's cache (for the NodeImage gauge).
    cache: Option<Cache<K>>,
}

impl<K: Object> Shared<K> {
    fn new(ctx: Arc<Context<KubeStore>>, name: &'static str) -> Self {
        Self {
            ctx,
            name,
            failures: Mutex::default(),
            cache: None,
        }
    }
}

/// The retry delay after `failures` consecutive failures: 5 s doubling up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// Our [`Action`] as kube-runtime's.
pub fn to_kube(action: Action) -> controller::Action {
    match action {
        Action::Requeue(d) => controller::Action::requeue(d),
        Action::AwaitChange => controller::Action::await_change(),
    }
}

/// Runs `reconcile` in a span naming the object, timed into the metrics, and resets the
/// object's failure count on success.
async fn timed<K: Object>(
    obj: &K,
    shared: &Shared<K>,
    reconcile: impl Future<Output = Result<Action, Error>>,
) -> Result<controller::Action, Error> {
    let labels = ControllerLabels {
        controller: shared.name.into(),
    };
    let start = Instant::now();
    let span = tracing::info_span!("reconcile", controller = shared.name, object = %ObjectRef::from_obj(obj));
    let r = reconcile.instrument(span).await;
    shared.ctx.metrics.reconciles.get_or_create(&labels).inc();
    shared
        .ctx
        .metrics
        .reconcile_seconds
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    if r.is_ok() {
        shared
            .failures
            .lock()
            .expect("lock")
            .remove(&ObjectRef::from_obj(obj));
    }
    r.map(to_kube)
}

/// Logs a failed reconcile, counts it and picks the retry delay.
fn error_policy<K: Object>(obj: Arc<K>, error: &Error, shared: Arc<Shared<K>>) -> controller::Action {
    let key = ObjectRef::from_obj(obj.as_ref());
    let n = {
        let mut f = shared.failures.lock().expect("lock");
        let n = f.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    };
    shared
        .ctx
        .metrics
        .failures
        .get_or_create(&FailureLabels {
            controller: shared.name.into(),
            error: error.metric_label().into(),
        })
        .inc();
    let delay = backoff(n);
    tracing::warn!(controller = shared.name, object = %key, %error, attempt = n, retry_in = ?delay, "reconcile failed");
    controller::Action::requeue(delay)
}

async fn reconcile_release(
    obj: Arc<Release>,
    shared: Arc<Shared<Release>>,
) -> Result<controller::Action, Error> {
    timed(obj.as_ref(), &shared, release::reconcile(&obj, &shared.ctx)).await
}

async fn reconcile_imagesync(
    obj: Arc<ImageSync>,
    shared: Arc<Shared<ImageSync>>,
) -> Result<controller::Action, Error> {
    timed(obj.as_ref(), &shared, imagesync::reconcile(&obj, &shared.ctx)).await
}

async fn reconcile_diskimport(
    obj: Arc<DiskImport>,
    shared: Arc<Shared<DiskImport>>,
) -> Result<controller::Action, Error> {
    timed(obj.as_ref(), &shared, diskimport::reconcile(&obj, &shared.ctx)).await
}

async fn reconcile_nodeimage(
    obj: Arc<NodeImage>,
    shared: Arc<Shared<NodeImage>>,
) -> Result<controller::Action, Error> {
    let r = timed(obj.as_ref(), &shared, nodeimage::reconcile(&obj, &shared.ctx)).await;
    if let Some(cache) = &shared.cache {
        update_gauge(&shared.ctx, &cache.state());
    }
    r
}

/// Recomputes `ido_node_images{provider,state}` from the cached NodeImages.
fn update_gauge(ctx: &Context<KubeStore>, images: &[Arc<NodeImage>]) {
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for ni in images {
        let state = ni.status.as_ref().map(|s| s.state.as_str()).unwrap_or_default();
        let state = if state.is_empty() { "New" } else { state };
        *counts
            .entry((ni.spec.provider.clone(), state.to_string()))
            .or_default() += 1;
    }
    ctx.metrics.images.clear();
    for ((provider, state), n) in counts {
        ctx.metrics
            .images
            .get_or_create(&StateLabels { provider, state })
            .set(n);
    }
}

/// Logs what a controller's run stream yields (reconcile errors were logged already).
async fn drain<K: Object>(
    name: &'static str,
    stream: impl futures::Stream<
        Item = Result<(ObjectRef<K>, controller::Action), controller::Error<Error, watcher::Error>>,
    >,
) {
    stream
        .for_each(|r| async move {
            match r {
                Ok((obj, action)) => tracing::debug!(controller = name, object = %obj, ?action, "reconciled"),
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => tracing::warn!(controller = name, error = %e, "controller error"),
            }
        })
        .await;
}

/// Objects of each kind reconciled at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concurrency {
    /// NodeImages (the configuration's `concurrency.images`).
    pub images: u16,
    /// ImageSyncs (each copies its `spec.concurrency` tags at once).
    pub syncs: u16,
}

/// Label on the claims and Jobs DiskImports own (the owned watches select by it).
const DISK_IMPORT_COMPONENT: &str = "app.kubernetes.io/component=disk-import";

/// Whether the API server serves `K` (its CRD is installed).
async fn served<K: Object>(api: &Api<K>) -> bool {
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        // Anything else (e.g. a transient error): let the controller's watch retry.
        Err(_) => true,
    }
}

/// Runs the controllers until `shutdown()` resolves (each stops taking new work, then
/// waits for running reconciles) or the returned future is dropped (running reconciles
/// are cancelled). NodeImages and ImageSyncs are watched in `ctx.settings.namespace`,
/// Releases cluster-wide.
pub async fn run<F>(
    client: Client,
    ctx: Arc<Context<KubeStore>>,
    concurrency: Concurrency,
    shutdown: impl Fn() -> F,
) where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let releases = Controller::new(Api::<Release>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown());
    let images = Controller::new(
        Api::<NodeImage>::namespaced(client.clone(), &ctx.settings.namespace),
        watcher::Config::default(),
    )
    .with_config(Config::default().concurrency(concurrency.images.max(1)))
    .graceful_shutdown_on(shutdown());
    let disk_api = Api::<DiskImport>::all(client.clone());
    let disks = if !ctx.settings.disk_import.enabled {
        futures::future::Either::Right(std::future::ready(()))
    } else if served(&disk_api).await {
        let owned = || watcher::Config::default().labels(DISK_IMPORT_COMPONENT);
        let c = Controller::new(disk_api, watcher::Config::default())
            .owns(Api::<Job>::all(client.clone()), owned())
            .owns(Api::<PersistentVolumeClaim>::all(client.clone()), owned())
            .with_config(Config::default().concurrency(4))
            .graceful_shutdown_on(shutdown());
        let shared = Arc::new(Shared::new(ctx.clone(), "diskimport"));
        futures::future::Either::Left(drain(
            "diskimport",
            c.run(reconcile_diskimport, error_policy, shared),
        ))
    } else {
        tracing::warn!(
            "the DiskImport CRD (diskimports.ido.dev) is not installed: DiskImports are not reconciled; apply charts/image-distribution-operator/crds/diskimports.ido.dev.yaml and restart"
        );
        futures::future::Either::Right(std::future::ready(()))
    };
    let sync_api = Api::<ImageSync>::namespaced(client, &ctx.settings.namespace);
    let syncs = if served(&sync_api).await {
        let c = Controller::new(sync_api, watcher::Config::default())
            .with_config(Config::default().concurrency(concurrency.syncs.max(1)))
            .graceful_shutdown_on(shutdown());
        let shared = Arc::new(Shared::new(ctx.clone(), "imagesync"));
        futures::future::Either::Left(drain(
            "imagesync",
            c.run(reconcile_imagesync, error_policy, shared),
        ))
    } else {
        tracing::warn!(
            "the ImageSync CRD (imagesyncs.ido.dev) is not installed: ImageSyncs are not reconciled; apply charts/image-distribution-operator/crds/imagesyncs.ido.dev.yaml and restart"
        );
        futures::future::Either::Right(std::future::ready(()))
    };

    let release_shared = Arc::new(Shared::new(ctx.clone(), "release"));
    let mut image_shared = Shared::new(ctx, "nodeimage");
    image_shared.cache = Some(images.store());
    let image_shared = Arc::new(image_shared);

    let releases = drain(
        "release",
        releases.run(reconcile_release, error_policy, release_shared),
    );
    let images = drain(
        "nodeimage",
        images.run(reconcile_nodeimage, error_policy, image_shared),
    );
    tracing::info!("controllers started");
    futures::future::join4(releases, images, syncs, disks).await;
    tracing::info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let s: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(0), BACKOFF_MIN);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn actions_map_onto_kube() {
        assert_eq!(
            to_kube(Action::Requeue(Duration::from_secs(7))),
            controller::Action::requeue(Duration::from_secs(7))
        );
        assert_eq!(to_kube(Action::AwaitChange), controller::Action::await_change());
    }
}
