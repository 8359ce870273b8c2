//! The kube-runtime controllers around the plain reconcilers of `ido-controllers`.
//!
//! ```text
//!   watch Releases (cluster) ──▶ Controller ──▶ release::reconcile(&Release, &Context<KubeStore>)
//!   watch NodeImages (ns)    ──▶ Controller ──▶ nodeimage::reconcile(&NodeImage, &Context<KubeStore>)
//!                                  (concurrency = concurrency.images)
//!   watch ImageSyncs (ns)    ──▶ Controller ──▶ imagesync::reconcile(&ImageSync, &Context<KubeStore>)
//!                                  (concurrency = Concurrency::syncs; Secrets read per pass)
//!   watch Images (all)       ──▶ Controller ──▶ imagesync::reconcile(&Image, &Context<KubeStore>)
//!                                  (image-operator's skopeo.io kind; only with imageOperator.enabled)
//!   watch DiskImports (all)  ──▶ Controller ──▶ diskimport::reconcile(&DiskImport, &Context<KubeStore>)
//!     owns Jobs, PVCs (all, label app.kubernetes.io/component=disk-import)
//!                                  (only with diskImport.enabled or kubevirt.enabled)
//!   watch DiskSources (all)  ──▶ Controller ──▶ disksource::reconcile (same switch; rechecks
//!                                  its claim on a timer: it owns nothing)
//!   watch DiskImportCrons (all) ─▶ Controller ──▶ diskimportcron::reconcile (same switch)
//!   watch DataVolumes (all)     ─▶ Controller ──▶ datavolume::reconcile (cdiCompat.enabled)
//!     owns DiskImports (all, label ido.dev/data-volume)
//!   watch PVCs (all)            ─▶ Controller ──▶ claimimport::reconcile (cdiCompat.enabled
//!     owns DiskImports (all, label ido.dev/claim)     and diskImport.enabled: CDI's annotations)
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
//! image-operator's Images are watched in every namespace, as image-operator did, with the
//! cluster-wide grants the chart renders only when `imageOperator.enabled` asks for them.
//!
//! Each controller is kube-runtime's `applier` (what `Controller::run` wraps) driven here,
//! over the same reflector and watches `Controller` would build, so that every request into
//! its scheduler and every reconcile it starts passes through [`crate::workqueue::Queue`]:
//! that is where controller-runtime's `controller_runtime_*` and `workqueue_*` metrics are
//! measured (see there). Concurrency: NodeImages `concurrency.images`, ImageSyncs
//! [`Concurrency::syncs`], Releases [`Concurrency::releases`] (default 4), DiskImports 4.
//!
//! Each reconcile is timed into `ido_reconciles_total` / `ido_reconcile_duration_seconds`.
//! A failed reconcile bumps `ido_reconcile_failures_total{error}` and is retried after
//! [`ido_controllers::backoff`] per object (1 s, 2 s, … up to 5 min, as under `ido run`),
//! reset by the next success.
//! `ido_node_images{provider,state}` is recomputed from the NodeImage cache after every
//! NodeImage reconcile.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::{FutureExt, StreamExt, TryStreamExt, stream::BoxStream};
use ido_api::{
    CachedImage, ClusterImageCachePolicy, DiskImport, DiskImportCron, DiskSource, ImageCachePolicy,
    ImageSync, NodeImage, Release, cdi::DataVolume, image_operator::Image,
};
use ido_controllers::{
    Action, Context, Error, claimimport, datavolume, diskimport, diskimportcron, disksource, imagecache,
    imagesync,
    metrics::{ControllerLabels, FailureLabels, StateLabels},
    nodeimage, release,
    store::Object,
    tasks::{TaskKey, Tasks},
};
use k8s_openapi::api::{batch::v1::Job, core::v1::PersistentVolumeClaim};
use kube::{
    Api, Client,
    api::{ListParams, PartialObjectMeta},
    runtime::{
        WatchStreamExt, applier,
        controller::{self, Config, ReconcileRequest, trigger_owners, trigger_self},
        reflector::{self, ObjectRef, Store as Cache},
        utils::{CancelableJoinHandle, StreamBackoff},
        watcher,
    },
};
use tracing::Instrument;

use crate::{
    KubeStore,
    workqueue::{Key, Outcome, Queue, Running},
};

/// DiskImports reconciled at once (each writes a claim and a Job).
const DISK_IMPORT_CONCURRENCY: u16 = 4;

/// What every reconcile of one controller shares.
struct Shared<K: kube::Resource<DynamicType = ()> + 'static> {
    /// The reconcilers' context.
    ctx: Arc<Context<KubeStore>>,
    /// `release`, `nodeimage`, …: the metrics' `controller` label.
    name: &'static str,
    /// Consecutive failures per object.
    failures: Mutex<HashMap<ObjectRef<K>, u32>>,
    /// The controller's cache (for the NodeImage gauge).
    cache: Cache<K>,
    /// The work queue's metrics.
    queue: Arc<Queue>,
}

/// Our [`Action`] as kube-runtime's.
pub fn to_kube(action: Action) -> controller::Action {
    match action {
        Action::Requeue(d) => controller::Action::requeue(d),
        Action::AwaitChange => controller::Action::await_change(),
    }
}

/// The work queue's key of `obj`.
fn key<K: Object>(obj: &K) -> Key {
    let m = obj.meta();
    (m.namespace.clone(), m.name.clone().unwrap_or_default())
}

/// Runs `reconcile` in a span naming the object, timed into the metrics (`running` records
/// its end in the work queue's), and resets the object's failure count on success.
async fn timed<K: Object>(
    obj: &K,
    shared: &Shared<K>,
    running: Running,
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
    running.finish(match &r {
        Err(_) => Outcome::Error,
        Ok(Action::AwaitChange) => Outcome::Success,
        Ok(Action::Requeue(d)) if d.is_zero() => Outcome::Requeue,
        Ok(Action::Requeue(_)) => Outcome::RequeueAfter,
    });
    if let Ok(Action::Requeue(d)) = &r {
        shared.queue.requeued(key(obj), *d);
    }
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
    let delay = ido_controllers::backoff(n);
    shared.queue.requeued(self::key(obj.as_ref()), delay);
    tracing::warn!(controller = shared.name, object = %key, %error, attempt = n, retry_in = ?delay, "reconcile failed");
    controller::Action::requeue(delay)
}

async fn reconcile_release(
    obj: Arc<Release>,
    shared: Arc<Shared<Release>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        release::reconcile(&obj, &shared.ctx),
    )
    .await
}

/// ImageSyncs and image-operator's Images: the same reconciler (`imagesync::SyncKind`).
async fn reconcile_sync<K: imagesync::SyncKind>(
    obj: Arc<K>,
    shared: Arc<Shared<K>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        imagesync::reconcile(obj.as_ref(), &shared.ctx),
    )
    .await
}

/// Both cache policy kinds: the same reconciler (`imagecache::policy::PolicyKind`).
async fn reconcile_cache_policy<P: imagecache::policy::PolicyKind>(
    obj: Arc<P>,
    shared: Arc<Shared<P>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        imagecache::reconcile::reconcile(obj.as_ref(), &shared.ctx),
    )
    .await
}

async fn reconcile_cached_image(
    obj: Arc<CachedImage>,
    shared: Arc<Shared<CachedImage>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        imagecache::cached::reconcile(&obj, &shared.ctx),
    )
    .await
}

async fn reconcile_diskimport(
    obj: Arc<DiskImport>,
    shared: Arc<Shared<DiskImport>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        diskimport::reconcile(&obj, &shared.ctx),
    )
    .await
}

async fn reconcile_disksource(
    obj: Arc<DiskSource>,
    shared: Arc<Shared<DiskSource>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        disksource::reconcile(&obj, &shared.ctx),
    )
    .await
}

async fn reconcile_diskimportcron(
    obj: Arc<DiskImportCron>,
    shared: Arc<Shared<DiskImportCron>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        diskimportcron::reconcile(&obj, &shared.ctx),
    )
    .await
}

async fn reconcile_datavolume(
    obj: Arc<DataVolume>,
    shared: Arc<Shared<DataVolume>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        datavolume::reconcile(&obj, &shared.ctx),
    )
    .await
}

async fn reconcile_claim(
    obj: Arc<PersistentVolumeClaim>,
    shared: Arc<Shared<PersistentVolumeClaim>>,
    running: Running,
) -> Result<controller::Action, Error> {
    timed(
        obj.as_ref(),
        &shared,
        running,
        claimimport::reconcile(&obj, &shared.ctx),
    )
    .await
}

async fn reconcile_nodeimage(
    obj: Arc<NodeImage>,
    shared: Arc<Shared<NodeImage>>,
    running: Running,
) -> Result<controller::Action, Error> {
    let r = timed(
        obj.as_ref(),
        &shared,
        running,
        nodeimage::reconcile(&obj, &shared.ctx),
    )
    .await;
    update_gauge(&shared.ctx, &shared.cache.state());
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

/// Logs what a controller's run stream yields (reconcile errors were logged already) and
/// tells the work queue about objects the scheduler dropped because they are gone.
async fn drain<K: Object>(
    name: &'static str,
    queue: Arc<Queue>,
    stream: impl futures::Stream<
        Item = Result<(ObjectRef<K>, controller::Action), controller::Error<Error, watcher::Error>>,
    >,
) {
    stream
        .for_each(|r| {
            match r {
                Ok((obj, action)) => tracing::debug!(controller = name, object = %obj, ?action, "reconciled"),
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(controller = name, object = %obj, "gone before its reconcile");
                    queue.dropped(&(obj.namespace.clone(), obj.name.clone()));
                }
                Err(e) => tracing::warn!(controller = name, error = %e, "controller error"),
            }
            std::future::ready(())
        })
        .await;
}

/// Requests to reconcile the owners (of kind `K`) of objects that `api` watches.
type Triggers<K> = BoxStream<'static, Result<ReconcileRequest<K>, watcher::Error>>;

/// What of `obj` triggers a reconcile: everything but the resource version, the managed
/// fields and the status (except a NodeImage's `status.releases`).
fn fingerprint<K: Object>(obj: &K) -> Option<u64> {
    serde_json::to_value(obj)
        .ok()
        .map(|v| ido_controllers::trigger_fingerprint(&v))
}

/// Requests to reconcile the objects of kind `K` whose task (an upload) ended: the task left
/// its outcome for the next reconcile ([`ido_controllers::tasks`]).
fn woken_by_tasks<K: Object>(ctx: &Context<KubeStore>) -> Triggers<K> {
    futures::stream::unfold(ctx.tasks.subscribe(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(key) if key.is::<K>() => {
                    let mut obj = ObjectRef::<K>::new(&key.name);
                    if let Some(ns) = &key.namespace {
                        obj = obj.within(ns);
                    }
                    return Some((Ok(ReconcileRequest::from(obj)), rx));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

/// Cancels the task of the deleted `obj`, if one runs. At once, before the watch goes on:
/// an object re-created under the name must not take the old one's outcome, nor have its
/// own task cancelled late.
fn cancel_task_of<K: Object>(tasks: &Tasks, obj: &K) {
    let key = TaskKey::of(obj);
    if tasks.cancel_now(&key).is_some() {
        tracing::info!(object = %key, "deleted: its running task was cancelled");
    }
}

/// After a (re-)list: cancels the tasks of objects of kind `K` that are no longer there
/// (deleted while the watch was down: no deletion event tells of them).
fn cancel_tasks_of_gone<K: Object>(tasks: &Tasks, cache: &reflector::Store<K>) {
    for key in tasks.keys().into_iter().filter(|k| k.is::<K>()) {
        let mut obj = ObjectRef::<K>::new(&key.name);
        if let Some(ns) = &key.namespace {
            obj = obj.within(ns);
        }
        if cache.get(&obj).is_none() && tasks.cancel_now(&key).is_some() {
            tracing::info!(object = %key, "gone while unwatched: its running task was cancelled");
        }
    }
}

/// Requests for the owners of the objects `api` lists with `wc` (metadata only), as
/// `Controller::owns` makes them.
fn owners<K: Object, Child: Object>(api: Api<PartialObjectMeta<Child>>, wc: watcher::Config) -> Triggers<K> {
    trigger_owners(watcher(api, wc).touched_objects(), (), ()).boxed()
}

/// Requests to reconcile the objects `api` watches (kept in the reflector `writer` fills)
/// when something the reconciler reads changed.
fn watched<K: Object>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    cache: reflector::Store<K>,
    tasks: Arc<Tasks>,
) -> Triggers<K> {
    let events = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        // A deleted object is not reconciled: its task (an ImageSync's pass) is cancelled
        // here, as `ido run` does for an object gone from its store.
        .inspect_ok(move |event| match event {
            watcher::Event::Delete(obj) => cancel_task_of(&tasks, obj),
            watcher::Event::InitDone => cancel_tasks_of_gone(&tasks, &cache),
            _ => {}
        });
    trigger_self(
        events
            .applied_objects()
            // Only changes that matter to the reconciler (not its own progress writes to the
            // status), as `ido run` decides: see `ido_controllers::trigger_fingerprint`.
            .predicate_filter(fingerprint::<K>, Default::default()),
        (),
    )
    .boxed()
}

/// One controller: kube-runtime's `applier` over a reflector of `api` (plus `owned`
/// triggers), as `Controller::new(..).run(..)` builds it, with the requests and reconciles
/// observed by the controller's [`Queue`]. Ends once `shutdown` resolved and running
/// reconciles finished.
fn drive<K, R, Fut>(
    ctx: Arc<Context<KubeStore>>,
    name: &'static str,
    concurrency: u16,
    api: Api<K>,
    owned: Vec<Triggers<K>>,
    reconcile: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send
where
    K: Object,
    R: Fn(Arc<K>, Arc<Shared<K>>, Running) -> Fut + Send + 'static,
    Fut: Future<Output = Result<controller::Action, Error>> + Send + 'static,
{
    let (cache, writer) = reflector::store::<K>();
    let shutdown = shutdown.shared();
    let queue = Queue::new(name, &ctx.metrics, concurrency);
    let shared = Arc::new(Shared {
        ctx,
        name,
        failures: Mutex::default(),
        cache: cache.clone(),
        queue: queue.clone(),
    });
    let mut triggers = futures::stream::SelectAll::new();
    triggers.push(watched(api, writer, cache.clone(), shared.ctx.tasks.clone()));
    triggers.extend(owned);
    triggers.push(woken_by_tasks::<K>(&shared.ctx));
    let observed = queue.clone();
    let requests = StreamBackoff::new(triggers, watcher::DefaultBackoff::default())
        .take_until(shutdown.clone())
        .inspect_ok(move |r: &ReconcileRequest<K>| {
            observed.requested(
                (r.obj_ref.namespace.clone(), r.obj_ref.name.clone()),
                tokio::time::Instant::now(),
            )
        });
    let ready = cache.clone();
    let stream = applier(
        move |obj: Arc<K>, shared: Arc<Shared<K>>| {
            // Called as the scheduler hands the object over: the reconcile starts now.
            let running = shared.queue.started(key(obj.as_ref()));
            CancelableJoinHandle::spawn(
                reconcile(obj, shared, running).in_current_span(),
                &tokio::runtime::Handle::current(),
            )
        },
        error_policy,
        shared,
        cache,
        requests,
        Config::default().concurrency(concurrency.max(1)),
    );
    let run = drain(name, queue, stream);
    async move {
        tokio::select! {
            _ = run => {}
            // Stopped before the first list completed: the applier would wait for a store
            // that is never filled (its watch is no longer polled). Nothing ran: just end.
            _ = async {
                shutdown.await;
                if ready.wait_until_ready().now_or_never().is_some() {
                    std::future::pending::<()>().await;
                }
            } => tracing::debug!(controller = name, "stopped before its first list completed"),
        }
    }
}

/// Objects of each kind reconciled at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concurrency {
    /// NodeImages (the configuration's `concurrency.images`).
    pub images: u16,
    /// ImageSyncs (each copies its `spec.concurrency` tags at once).
    pub syncs: u16,
    /// Releases (each writes a NodeImage or two).
    pub releases: u16,
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

/// Warnings when a CRD of an optional controller is not installed.
const NO_DISK_IMPORT_CRD: &str = "the DiskImport CRD (diskimports.ido.dev) is not installed: DiskImports are not reconciled; install it (`ido crds | kubectl apply -f -`, or the chart with crd.enable) and restart";
const NO_IMAGE_SYNC_CRD: &str = "the ImageSync CRD (imagesyncs.ido.dev) is not installed: ImageSyncs are not reconciled; install it (`ido crds | kubectl apply -f -`, or the chart with crd.enable) and restart";
const NO_IMAGE_CRD: &str = "imageOperator.enabled, but image-operator's Image CRD (images.skopeo.io) is not installed: Images are not reconciled; install it (`ido crds --compat | kubectl apply -f -`, or the chart with crd.enable) and restart";

/// The DiskImport controller, woken by the claims and Jobs DiskImports own.
fn disk_imports(
    client: Client,
    ctx: Arc<Context<KubeStore>>,
    api: Api<DiskImport>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send {
    let owned = || watcher::Config::default().labels(DISK_IMPORT_COMPONENT);
    drive(
        ctx,
        "diskimport",
        DISK_IMPORT_CONCURRENCY,
        api,
        vec![
            owners::<DiskImport, Job>(Api::all(client.clone()), owned()),
            owners::<DiskImport, PersistentVolumeClaim>(Api::all(client), owned()),
        ],
        reconcile_diskimport,
        shutdown,
    )
}

const NO_DISK_SOURCE_CRD: &str = "the DiskSource CRD (disksources.ido.dev) is not installed: DiskSources are not reconciled; install it (`ido crds | kubectl apply -f -`, or the chart with crd.enable) and restart";
const NO_DISK_IMPORT_CRON_CRD: &str = "the DiskImportCron CRD (diskimportcrons.ido.dev) is not installed: DiskImportCrons are not reconciled; install it (`ido crds | kubectl apply -f -`, or the chart with crd.enable) and restart";

/// The golden-image controllers (DiskSources; DiskImportCrons, woken by the DiskImports
/// they own), behind the DiskImport controller's switch.
async fn golden_images<F>(
    client: Client,
    ctx: Arc<Context<KubeStore>>,
    shutdown: impl Fn() -> F,
) -> impl Future<Output = ()> + Send
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    if !ctx.settings.disk_import.enabled {
        return futures::future::Either::Right(std::future::ready(()));
    }
    let sources = when_served(
        Api::<DiskSource>::all(client.clone()),
        NO_DISK_SOURCE_CRD,
        |api| {
            drive(
                ctx.clone(),
                "disksource",
                DISK_IMPORT_CONCURRENCY,
                api,
                vec![],
                reconcile_disksource,
                shutdown(),
            )
        },
    )
    .await;
    let crons = when_served(
        Api::<DiskImportCron>::all(client.clone()),
        NO_DISK_IMPORT_CRON_CRD,
        |api| {
            drive(
                ctx.clone(),
                "diskimportcron",
                DISK_IMPORT_CONCURRENCY,
                api,
                vec![owners::<DiskImportCron, DiskImport>(
                    Api::all(client),
                    watcher::Config::default().labels(diskimportcron::CRON_LABEL),
                )],
                reconcile_diskimportcron,
                shutdown(),
            )
        },
    )
    .await;
    futures::future::Either::Left(async move {
        futures::future::join(sources, crons).await;
    })
}

const NO_DATA_VOLUME_CRD: &str = "cdiCompat.enabled, but the DataVolume CRD (datavolumes.cdi.kubevirt.io) is not installed: DataVolumes are not reconciled; install it (the chart with cdiCompat.enabled and crd.enable) and restart";

/// CDI compatibility (`cdiCompat.enabled`): DataVolumes in every namespace, each woken by
/// the DiskImport it owns; and, with the DiskImport controller, CDI's annotated claims in
/// every namespace (claims that ask for no import are looked at and left alone), each woken
/// by the DiskImport that fills it.
async fn data_volumes<F>(
    client: Client,
    ctx: Arc<Context<KubeStore>>,
    shutdown: impl Fn() -> F,
) -> impl Future<Output = ()> + Send
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    if !ctx.settings.cdi_compat {
        return futures::future::Either::Right(std::future::ready(()));
    }
    let dvs = when_served(
        Api::<DataVolume>::all(client.clone()),
        NO_DATA_VOLUME_CRD,
        |api| {
            drive(
                ctx.clone(),
                "datavolume",
                DISK_IMPORT_CONCURRENCY,
                api,
                vec![owners::<DataVolume, DiskImport>(
                    Api::all(client.clone()),
                    watcher::Config::default().labels(datavolume::DATA_VOLUME_LABEL),
                )],
                reconcile_datavolume,
                shutdown(),
            )
        },
    )
    .await;
    // The claims' DiskImports are filled by the DiskImport controller (same switch).
    let claims = if ctx.settings.disk_import.enabled && served(&Api::<DiskImport>::all(client.clone())).await
    {
        futures::future::Either::Left(drive(
            ctx.clone(),
            "claimimport",
            DISK_IMPORT_CONCURRENCY,
            Api::<PersistentVolumeClaim>::all(client.clone()),
            vec![owners::<PersistentVolumeClaim, DiskImport>(
                Api::all(client),
                watcher::Config::default().labels(claimimport::CLAIM_LABEL),
            )],
            reconcile_claim,
            shutdown(),
        ))
    } else {
        futures::future::Either::Right(std::future::ready(()))
    };
    futures::future::Either::Left(async move {
        futures::future::join(dvs, claims).await;
    })
}

const NO_CACHE_CRDS: &str = "imageCache.enabled, but the image cache's CRDs (imagecachepolicies, clusterimagecachepolicies, cachedimages .ido.dev) are not installed: the cache is not reconciled; install them (`ido crds | kubectl apply -f -`, or the chart with crd.enable) and restart";

/// The image cache's controllers (both policy kinds, every namespace; CachedImages), when
/// `imageCache.enabled` and their CRDs are installed.
async fn image_cache<F>(
    client: Client,
    ctx: Arc<Context<KubeStore>>,
    shutdown: impl Fn() -> F,
) -> impl Future<Output = ()> + Send
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    if !ctx.settings.image_cache || !served(&Api::<CachedImage>::all(client.clone())).await {
        if ctx.settings.image_cache {
            tracing::warn!("{NO_CACHE_CRDS}");
        }
        return futures::future::Either::Right(std::future::ready(()));
    }
    let policies = drive(
        ctx.clone(),
        "imagecachepolicy",
        CACHE_CONCURRENCY,
        Api::<ImageCachePolicy>::all(client.clone()),
        vec![],
        reconcile_cache_policy::<ImageCachePolicy>,
        shutdown(),
    );
    let cluster_policies = drive(
        ctx.clone(),
        "clusterimagecachepolicy",
        CACHE_CONCURRENCY,
        Api::<ClusterImageCachePolicy>::all(client.clone()),
        vec![],
        reconcile_cache_policy::<ClusterImageCachePolicy>,
        shutdown(),
    );
    let records = drive(
        ctx,
        "cachedimage",
        CACHE_CONCURRENCY,
        Api::<CachedImage>::all(client),
        vec![],
        reconcile_cached_image,
        shutdown(),
    );
    futures::future::Either::Left(async move {
        futures::future::join3(policies, cluster_policies, records).await;
    })
}

/// Cache policies and CachedImages reconciled at once (copies are bounded apart, by
/// `imageCache.concurrency`).
const CACHE_CONCURRENCY: u16 = 4;

/// `start(api)` when the API server serves `K` (its CRD is installed); else the warning
/// `missing` is logged and nothing runs.
async fn when_served<K: Object, D: Future<Output = ()>>(
    api: Api<K>,
    missing: &str,
    start: impl FnOnce(Api<K>) -> D,
) -> futures::future::Either<D, std::future::Ready<()>> {
    if served(&api).await {
        futures::future::Either::Left(start(api))
    } else {
        tracing::warn!("{missing}");
        futures::future::Either::Right(std::future::ready(()))
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
    let ns = ctx.settings.namespace.clone();
    let disk_api = Api::<DiskImport>::all(client.clone());
    let disks = if !ctx.settings.disk_import.enabled {
        futures::future::Either::Right(std::future::ready(()))
    } else {
        when_served(disk_api, NO_DISK_IMPORT_CRD, |api| {
            disk_imports(client.clone(), ctx.clone(), api, shutdown())
        })
        .await
    };
    let sync_api = Api::<ImageSync>::namespaced(client.clone(), &ns);
    let syncs = when_served(sync_api, NO_IMAGE_SYNC_CRD, |api| {
        drive(
            ctx.clone(),
            "imagesync",
            concurrency.syncs.max(1),
            api,
            vec![],
            reconcile_sync::<ImageSync>,
            shutdown(),
        )
    })
    .await;
    let image_api = Api::<Image>::all(client.clone());
    let images_compat = if !ctx.settings.image_operator {
        futures::future::Either::Right(std::future::ready(()))
    } else {
        when_served(image_api, NO_IMAGE_CRD, |api| {
            drive(
                ctx.clone(),
                "image",
                concurrency.syncs.max(1),
                api,
                vec![],
                reconcile_sync::<Image>,
                shutdown(),
            )
        })
        .await
    };
    let releases = drive(
        ctx.clone(),
        "release",
        concurrency.releases.max(1),
        Api::<Release>::all(client.clone()),
        vec![],
        reconcile_release,
        shutdown(),
    );
    let cache = image_cache(client.clone(), ctx.clone(), &shutdown).await;
    let golden = golden_images(client.clone(), ctx.clone(), &shutdown).await;
    let cdi = data_volumes(client.clone(), ctx.clone(), &shutdown).await;
    let tasks = ctx.tasks.clone();
    let images = drive(
        ctx,
        "nodeimage",
        concurrency.images.max(1),
        Api::<NodeImage>::namespaced(client, &ns),
        vec![],
        reconcile_nodeimage,
        shutdown(),
    );
    tracing::info!("controllers started");
    futures::future::join4(
        futures::future::join5(releases, images, syncs, disks, images_compat),
        cache,
        golden,
        cdi,
    )
    .await;
    // Uploads still running are stopped; their guards clean up (waited for by the binary).
    if !tasks.shutdown(std::time::Duration::from_secs(60)).await {
        tracing::warn!("some imports did not stop within a minute");
    }
    tracing::info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn actions_map_onto_kube() {
        assert_eq!(
            to_kube(Action::Requeue(Duration::from_secs(7))),
            controller::Action::requeue(Duration::from_secs(7))
        );
        assert_eq!(to_kube(Action::AwaitChange), controller::Action::await_change());
    }
}
