//! The `ido run` driver: the reconcilers over the [`FileStore`], no cluster.
//!
//! The manifests given are the desired set: objects from them are created or updated, and
//! objects applied by an earlier run but no longer given are deleted (finalizers honoured).
//! A work queue then reconciles every object that changed or is due, Releases, NodeImages,
//! ImageSyncs, DiskImports, DiskSources and DiskImportCrons alike, NodeImages and ImageSyncs with bounded concurrency.
//! DiskImports get their claim and importer Job stored like any object; the `ido` binary
//! runs the Job in-process (its local kubelet, with `imports_run`), else they stay
//! `ImportScheduled` unless something writes the Job's status (as the tests do) or the
//! source is blank. Secrets and ConfigMaps are stored for
//! the ImageSyncs that reference them (and replaced when their data changes).
//! With `once`, the run ends when no work is left that can change anything now (an
//! ImageSync's next scheduled pass does not hold it), and reports whether every object
//! settled.
//!
//! `manifests` reads and applies what the run is given; `report` is the table it prints.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use ido_api::{
    CachedImage, ClusterImageCachePolicy, DiskImport, DiskImportCron, DiskSource, ImageCachePolicy,
    ImageSync, NodeImage, Release, cdi::DataVolume, image_operator::Image,
};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use tokio::{
    sync::{Semaphore, broadcast},
    task::JoinSet,
    time::Instant,
};

use crate::{
    Action, Context, claimimport, datavolume, diskimport, diskimportcron, disksource,
    file_store::{FileStore, Key},
    imagecache, imagesync, nodeimage, release,
    store::Store,
};

mod manifests;
mod report;

pub use manifests::{APPLIED_ANNOTATION, Manifest, applied_keys, apply, apply_desired, load_manifests};
pub use report::{Report, Row, disk_import_row, report, sync_row};

/// Options of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stop when settled instead of running forever.
    pub once: bool,
    /// NodeImages reconciled at once.
    pub image_concurrency: usize,
    /// ImageSyncs reconciled at once (each copies `spec.concurrency` tags at once).
    pub sync_concurrency: usize,
    /// Give up (with `once`) after this long.
    pub timeout: Duration,
    /// Failed reconciles of one object retried before `once` gives up on it.
    pub max_retries: u32,
    /// Something runs the DiskImports' importer Jobs (the `ido` binary's local kubelet):
    /// a DiskImport being imported then holds `once` like an upload does.
    pub imports_run: bool,
    /// Stops the run when cancelled (Ctrl-C, SIGTERM): no new work starts, the work in
    /// flight is stopped (its guards clean up what it had made) and the report is returned.
    pub stop: tokio_util::sync::CancellationToken,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            once: true,
            image_concurrency: 4,
            sync_concurrency: 4,
            timeout: Duration::from_secs(3600),
            max_retries: 3,
            imports_run: false,
            stop: Default::default(),
        }
    }
}

#[derive(Default)]
struct Entry {
    due: Option<Instant>,
    urgent: bool,
    running: bool,
    dirty: bool,
    failures: u32,
    last_error: Option<String>,
    /// Trigger fingerprint of the object when its last reconcile started.
    seen: Option<u64>,
}

/// Runs the reconcilers until settled (`once`) or forever.
pub async fn run(ctx: Arc<Context<FileStore>>, opts: RunOptions) -> anyhow::Result<Report> {
    let mut changes = ctx.store.subscribe();
    let mut woken = ctx.tasks.subscribe();
    let mut queue = initial_queue(&ctx.store).await?;
    let images = Arc::new(Semaphore::new(opts.image_concurrency.max(1)));
    let syncs = Arc::new(Semaphore::new(opts.sync_concurrency.max(1)));
    let mut jobs: Jobs = JoinSet::new();
    let deadline = Instant::now() + opts.timeout;

    loop {
        // Take in every change already announced before deciding anything.
        loop {
            match changes.try_recv() {
                Ok(key) => mark_changed(&mut queue, &ctx.store, key),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        while let Ok(task) = woken.try_recv() {
            wake(&mut queue, task);
        }
        let now = Instant::now();
        start_due(&ctx, &mut queue, &mut jobs, &images, &syncs, now);

        // A task (an upload) still running holds `once` too, and so does an outcome its
        // object has not taken yet: its end wakes its object, whose reconcile takes it.
        let busy = queue.values().any(|e| e.running) || ctx.tasks.pending() > 0;
        let urgent_pending = queue.values().any(|e| e.urgent && e.due.is_some());
        if opts.once && !busy && !urgent_pending {
            break;
        }
        if opts.once && Instant::now() > deadline {
            tracing::warn!("run timed out after {:?}", opts.timeout);
            break;
        }
        let next_due = queue
            .values()
            .filter_map(|e| if e.running { None } else { e.due })
            .min();
        let sleep_until = next_due.unwrap_or(now + Duration::from_secs(3600)).min(deadline);

        tokio::select! {
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                let (key, result) = done.context("reconcile task panicked")?;
                record_result(&mut queue, key, result, &opts);
            }
            Ok(key) = changes.recv() => mark_changed(&mut queue, &ctx.store, key),
            Ok(task) = woken.recv() => {
                wake(&mut queue, task);
            }
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = opts.stop.cancelled() => {
                tracing::info!(running = jobs.len(), "stopping: the work in flight is stopped and cleaned up");
                break;
            }
        }
    }
    // Aborts what still runs and waits until it is dropped, so every guard has handed its
    // clean-up to `ido_io::cleanup` before this returns.
    jobs.shutdown().await;
    if !ctx.tasks.shutdown(Duration::from_secs(60)).await {
        tracing::warn!("some imports did not stop within a minute");
    }
    let errors: BTreeMap<Key, String> = queue
        .into_iter()
        .filter_map(|(k, e)| e.last_error.map(|m| (k, m)))
        .collect();
    report(&ctx, &errors).await
}

/// The reconciles to run and how each went, by object.
type Jobs = JoinSet<(Key, Result<Action, crate::Error>)>;

/// Every object of every kind, due now.
async fn initial_queue(store: &FileStore) -> anyhow::Result<BTreeMap<Key, Entry>> {
    let mut queue: BTreeMap<Key, Entry> = BTreeMap::new();
    let now = Instant::now();
    let mut keys: Vec<Key> = vec![];
    for k in kinds() {
        keys.extend((k.keys)(store).await?);
    }
    for key in keys {
        queue.insert(
            key,
            Entry {
                due: Some(now),
                urgent: true,
                ..Default::default()
            },
        );
    }
    Ok(queue)
}

/// Starts the reconcile of every object due by `now` and not running, within its kind's
/// limit.
fn start_due(
    ctx: &Arc<Context<FileStore>>,
    queue: &mut BTreeMap<Key, Entry>,
    jobs: &mut Jobs,
    images: &Arc<Semaphore>,
    syncs: &Arc<Semaphore>,
    now: Instant,
) {
    for (key, e) in queue.iter_mut() {
        if e.running || e.due.is_none_or(|d| d > now) {
            continue;
        }
        e.running = true;
        e.dirty = false;
        e.due = None;
        e.seen = ctx.store.raw(key).map(|v| crate::trigger_fingerprint(&v));
        let (ctx, key, images, syncs) = (ctx.clone(), key.clone(), images.clone(), syncs.clone());
        jobs.spawn(async move {
            let r = match kind_of(&key) {
                Some(k) => {
                    let _permit = match k.limit {
                        Limit::Images => Some(images.acquire_owned().await.expect("semaphore open")),
                        Limit::Syncs => Some(syncs.acquire_owned().await.expect("semaphore open")),
                        Limit::None => None,
                    };
                    (k.reconcile)(ctx.clone(), key.clone()).await
                }
                None => Ok(Action::AwaitChange),
            };
            (key, r)
        });
    }
}

/// Takes in how the reconcile of `key` ended: when it is due again, and whether that holds
/// `once`.
fn record_result(
    queue: &mut BTreeMap<Key, Entry>,
    key: Key,
    result: Result<Action, crate::Error>,
    opts: &RunOptions,
) {
    let holds_once = |key: &Key| {
        kind_of(key).is_some_and(|k| k.holds_once) || (opts.imports_run && key.is::<DiskImport>())
    };
    let e = queue.entry(key.clone()).or_default();
    e.running = false;
    match result {
        Ok(action) => {
            e.failures = 0;
            e.last_error = None;
            match action {
                // An ImageSync's next pass is its schedule: it does not hold `once`; a
                // DiskImport does while something runs its importer.
                Action::Requeue(d) => {
                    e.due = Some(Instant::now() + d);
                    e.urgent = d <= Duration::from_secs(30) && holds_once(&key);
                }
                Action::AwaitChange => {
                    e.due = None;
                    e.urgent = false;
                }
            }
        }
        Err(err) => {
            e.failures += 1;
            tracing::warn!(object = %key, error = %err, attempt = e.failures, "reconcile failed");
            e.last_error = Some(err.to_string());
            e.due = Some(Instant::now() + crate::backoff(e.failures));
            e.urgent = e.failures <= opts.max_retries;
        }
    }
    if e.dirty {
        e.due = Some(Instant::now());
        e.urgent = true;
    }
}

/// Which limit a kind's reconciles share (`RunOptions`' concurrencies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limit {
    Images,
    Syncs,
    None,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
/// Lists the keys of a kind's objects.
type ListKeys = fn(&FileStore) -> BoxFuture<Result<Vec<Key>, crate::store::StoreError>>;
/// Reads the object of a key and reconciles it.
type Reconcile = fn(Arc<Context<FileStore>>, Key) -> BoxFuture<Result<Action, crate::Error>>;

/// A kind the run reconciles: its resource (the store's key), how its objects are listed
/// and reconciled, the limit its reconciles share, and whether a short requeue holds
/// `--once` (an ImageSync's next pass is its schedule, and nothing here runs a DiskImport's
/// importer Job: those do not).
struct KindDef {
    resource: String,
    limit: Limit,
    holds_once: bool,
    keys: ListKeys,
    reconcile: Reconcile,
}

/// The dispatch table: one line per kind, its reconciler and its metrics label.
fn kinds() -> &'static [KindDef] {
    static KINDS: std::sync::OnceLock<Vec<KindDef>> = std::sync::OnceLock::new();
    KINDS.get_or_init(table)
}

fn table() -> Vec<KindDef> {
    fn def<K: crate::store::Object>(limit: Limit, holds_once: bool, reconcile: Reconcile) -> KindDef {
        KindDef {
            resource: FileStore::key::<K>(None, "x").resource,
            limit,
            holds_once,
            keys: |store| {
                let store = store.clone();
                Box::pin(async move { Ok(store.list::<K>().await?.iter().map(FileStore::key_of).collect()) })
            },
            reconcile,
        }
    }
    /// Reads `key` as a `K` and reconciles it, timed under `label`.
    macro_rules! reconciler {
        ($k:ty, $label:literal, $f:path) => {
            |ctx: Arc<Context<FileStore>>, key: Key| -> BoxFuture<Result<Action, crate::Error>> {
                Box::pin(async move {
                    match ctx
                        .store
                        .get::<$k>(key.namespace.as_deref(), &key.name)
                        .await
                    {
                        Ok(Some(o)) => timed(&ctx, $label, $f(&o, &ctx)).await,
                        // Gone: work still running for it is dropped, and so is an outcome.
                        Ok(None) => {
                            ctx.tasks.cancel(&key).await;
                            Ok(Action::AwaitChange)
                        }
                        Err(e) => Err(e.into()),
                    }
                })
            }
        };
    }
    vec![
        def::<Release>(
            Limit::None,
            true,
            reconciler!(Release, "release", release::reconcile),
        ),
        def::<NodeImage>(
            Limit::Images,
            true,
            reconciler!(NodeImage, "nodeimage", nodeimage::reconcile),
        ),
        def::<ImageSync>(
            Limit::Syncs,
            false,
            reconciler!(ImageSync, "imagesync", imagesync::reconcile),
        ),
        def::<Image>(
            Limit::Syncs,
            false,
            reconciler!(Image, "image", imagesync::reconcile),
        ),
        def::<DiskImport>(
            Limit::None,
            false,
            reconciler!(DiskImport, "diskimport", diskimport::reconcile),
        ),
        def::<DiskSource>(
            Limit::None,
            false,
            reconciler!(DiskSource, "disksource", disksource::reconcile),
        ),
        def::<DiskImportCron>(
            Limit::None,
            false,
            reconciler!(DiskImportCron, "diskimportcron", diskimportcron::reconcile),
        ),
        def::<DataVolume>(
            Limit::None,
            false,
            reconciler!(DataVolume, "datavolume", datavolume::reconcile),
        ),
        // Claims: only those annotated as in CDI's PVC flow are acted on.
        def::<PersistentVolumeClaim>(
            Limit::None,
            false,
            reconciler!(PersistentVolumeClaim, "claimimport", claimimport::reconcile),
        ),
        def::<ImageCachePolicy>(
            Limit::None,
            false,
            reconciler!(
                ImageCachePolicy,
                "imagecachepolicy",
                imagecache::reconcile::reconcile
            ),
        ),
        def::<ClusterImageCachePolicy>(
            Limit::None,
            false,
            reconciler!(
                ClusterImageCachePolicy,
                "clusterimagecachepolicy",
                imagecache::reconcile::reconcile
            ),
        ),
        def::<CachedImage>(
            Limit::None,
            true,
            reconciler!(CachedImage, "cachedimage", imagecache::cached::reconcile),
        ),
    ]
}

/// The kind of `key`, if the run reconciles it.
fn kind_of(key: &Key) -> Option<&'static KindDef> {
    kinds().iter().find(|k| k.resource == key.resource)
}

/// The DiskImport owning a changed claim or Job (its status is what the DiskImport
/// reports), as the operator's `owns` watches do.
fn owner_key(store: &FileStore, key: &Key) -> Option<Key> {
    let owned = [
        FileStore::key::<k8s_openapi::api::batch::v1::Job>(None, "x").resource,
        FileStore::key::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(None, "x").resource,
    ];
    if !owned.contains(&key.resource) {
        return None;
    }
    let v = store.raw(key)?;
    let owner = v["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == "DiskImport" && r["controller"] == true)?;
    Some(FileStore::key::<DiskImport>(
        key.namespace.as_deref(),
        owner["name"].as_str()?,
    ))
}

/// The DiskImportCron, DataVolume or claim owning a changed DiskImport (each follows its
/// imports), as the operator's `owns` watches do.
fn cron_owner(store: &FileStore, key: &Key) -> Option<Key> {
    if !key.is::<DiskImport>() {
        return None;
    }
    let v = store.raw(key)?;
    let owner = v["metadata"]["ownerReferences"].as_array()?.iter().find(|r| {
        ["DiskImportCron", "DataVolume", "PersistentVolumeClaim"]
            .contains(&r["kind"].as_str().unwrap_or_default())
            && r["controller"] == true
    })?;
    let (ns, name) = (key.namespace.as_deref(), owner["name"].as_str()?);
    Some(match owner["kind"].as_str() {
        Some("DataVolume") => FileStore::key::<DataVolume>(ns, name),
        Some("PersistentVolumeClaim") => FileStore::key::<PersistentVolumeClaim>(ns, name),
        _ => FileStore::key::<DiskImportCron>(ns, name),
    })
}

/// Reconciles `key` now (or again right after its running reconcile).
fn wake(queue: &mut BTreeMap<Key, Entry>, key: Key) {
    let e = queue.entry(key).or_default();
    if e.running {
        e.dirty = true;
    } else {
        e.due = Some(Instant::now());
        e.urgent = true;
    }
}

/// An object changed: reconcile it now (or again once its running reconcile ends), unless
/// the change is only a controller's own status write.
fn mark_changed(queue: &mut BTreeMap<Key, Entry>, store: &FileStore, key: Key) {
    if let Some(cron) = cron_owner(store, &key) {
        wake(queue, cron);
    }
    let key = match kind_of(&key) {
        Some(_) => {
            // A claim is a kind of its own (CDI's PVC flow) and a DiskImport's product.
            if let Some(owner) = owner_key(store, &key) {
                wake(queue, owner);
            }
            key
        }
        None => match owner_key(store, &key) {
            Some(owner) => {
                // The owner's own fingerprint did not change: force the reconcile.
                wake(queue, owner);
                return;
            }
            None => return,
        },
    };
    let fp = store.raw(&key).map(|v| crate::trigger_fingerprint(&v));
    let e = queue.entry(key).or_default();
    if fp.is_some() && fp == e.seen {
        return;
    }
    if e.running {
        e.dirty = true;
    } else if e.failures == 0 || e.urgent {
        e.due = Some(Instant::now());
        e.urgent = true;
    }
}

async fn timed<S: Store>(
    ctx: &Context<S>,
    controller: &str,
    f: impl Future<Output = Result<Action, crate::Error>>,
) -> Result<Action, crate::Error> {
    let labels = crate::metrics::ControllerLabels {
        controller: controller.into(),
    };
    let start = std::time::Instant::now();
    let r = f.await;
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    ctx.metrics
        .reconcile_seconds
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    if let Err(e) = &r {
        ctx.metrics
            .failures
            .get_or_create(&crate::metrics::FailureLabels {
                controller: controller.into(),
                error: e.metric_label().into(),
            })
            .inc();
    }
    r
}

/// Default state directory of `ido run`.
pub fn default_state_dir() -> PathBuf {
    Path::new(".ido").join("state")
}
