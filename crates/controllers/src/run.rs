//! The `ido run` driver: the reconcilers over the [`FileStore`], no cluster.
//!
//! The manifests given are the desired set: objects from them are created or updated, and
//! objects applied by an earlier run but no longer given are deleted (finalizers honoured).
//! A work queue then reconciles every object that changed or is due, Releases, NodeImages,
//! ImageSyncs and DiskImports alike, NodeImages and ImageSyncs with bounded concurrency.
//! DiskImports get their claim and importer Job stored like any object; nothing runs the
//! Job (no cluster), so they stay `ImportScheduled` unless something writes the Job's
//! status (as the tests do) or the source is blank. Secrets and ConfigMaps are stored for
//! the ImageSyncs that reference them (and replaced when their data changes).
//! With `once`, the run ends when no work is left that can change anything now (an
//! ImageSync's next scheduled pass does not hold it), and reports whether every object
//! settled.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use ido_api::{
    DiskImport, DiskImportPhase, ImageSync, NodeImage, NodeImageState, Release, condition,
    image_operator::Image, nodeimage::conditions,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::Value;
use tokio::{
    sync::{Semaphore, broadcast},
    task::JoinSet,
    time::Instant,
};

use crate::{
    Action, Context, diskimport,
    file_store::{FileStore, Key},
    imagesync, nodeimage, release,
    store::{EventType, Store},
};

/// Annotation marking objects applied from manifests (only those are pruned).
pub const APPLIED_ANNOTATION: &str = "ido.dev/applied-by";

/// An object read from a manifest.
#[derive(Clone, Debug)]
pub enum Manifest {
    Release(Box<Release>),
    NodeImage(Box<NodeImage>),
    ImageSync(Box<ImageSync>),
    /// image-operator's `Image` (`skopeo.io/v1alpha1`), synced as an ImageSync.
    Image(Box<Image>),
    /// A disk import: its claim and importer Job are stored; nothing runs the Job here.
    DiskImport(Box<DiskImport>),
    /// Credentials an ImageSync references (`kubernetes.io/dockerconfigjson`).
    Secret(Box<Secret>),
    /// CA bundles an ImageSync references (`certConfigMap`).
    ConfigMap(Box<ConfigMap>),
}

/// Reads manifests (files, or directories of `*.yaml`/`*.yml`; multi-document YAML).
pub fn load_manifests(paths: &[PathBuf], namespace: &str) -> anyhow::Result<Vec<Manifest>> {
    let mut files = vec![];
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| matches!(f.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        // No snippet in the message: the lines around an error may hold a Secret's data.
        let docs: Vec<Value> =
            yaml::from_multiple_with_options(&text, yaml::options! { with_snippet: false })
                .map_err(|e| anyhow::anyhow!("{}: invalid YAML: {e}", f.display()))?;
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let at = format!("{}: document {}", f.display(), i + 1);
            let ns = Some(namespace);
            let m = match (api.as_str(), kind.as_str()) {
                ("release.giantswarm.io/v1alpha1", "Release") => Manifest::Release(object(&doc, &at, None)?),
                ("image.giantswarm.io/v1alpha1", "NodeImage") => Manifest::NodeImage(object(&doc, &at, ns)?),
                ("ido.dev/v1alpha1", "ImageSync") => Manifest::ImageSync(object(&doc, &at, ns)?),
                ("skopeo.io/v1alpha1", "Image") => Manifest::Image(object(&doc, &at, ns)?),
                ("ido.dev/v1alpha1", "DiskImport") => Manifest::DiskImport(object(&doc, &at, ns)?),
                ("v1", "Secret") => Manifest::Secret(object(&doc, &at, ns)?),
                ("v1", "ConfigMap") => Manifest::ConfigMap(object(&doc, &at, ns)?),
                _ => bail!(
                    "{at}: unsupported kind {kind:?} (apiVersion {api:?}); expected Release (release.giantswarm.io/v1alpha1), NodeImage (image.giantswarm.io/v1alpha1), ImageSync or DiskImport (ido.dev/v1alpha1), Image (skopeo.io/v1alpha1), Secret or ConfigMap (v1)"
                ),
            };
            out.push(m);
        }
    }
    Ok(out)
}

/// One manifest document as a `K`: errors name the document and the field (for a Secret
/// never what its value is); a name is required; `namespace`, for namespaced kinds, is
/// set unless the document names one.
fn object<K: crate::store::Object>(doc: &Value, at: &str, namespace: Option<&str>) -> anyhow::Result<Box<K>> {
    let kind = K::kind(&());
    let mut obj: K = serde_path_to_error::deserialize(doc).map_err(|e| {
        if kind == "Secret" {
            anyhow::anyhow!("{at}: Secret field {} is invalid", e.path())
        } else {
            anyhow::anyhow!("{at}: {kind} field {}: {}", e.path(), e.inner())
        }
    })?;
    if let Some(ns) = namespace {
        obj.meta_mut().namespace.get_or_insert_with(|| ns.to_string());
    }
    let m = obj.meta();
    ido_api::names::check_meta(&kind, m.name.as_deref(), m.namespace.as_deref())
        .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
    Ok(Box::new(obj))
}

/// Applies the desired set: creates/updates the manifests' objects and deletes objects an
/// earlier run applied that are no longer given.
pub async fn apply_desired(store: &FileStore, manifests: &[Manifest]) -> anyhow::Result<()> {
    let wanted = apply(store, manifests).await?;
    prune::<Release>(store, &wanted).await?;
    prune::<NodeImage>(store, &wanted).await?;
    prune::<ImageSync>(store, &wanted).await?;
    prune::<Image>(store, &wanted).await?;
    prune::<DiskImport>(store, &wanted).await?;
    prune::<Secret>(store, &wanted).await?;
    prune::<ConfigMap>(store, &wanted).await?;
    Ok(())
}

/// Creates or updates the manifests' objects (nothing is pruned); returns their keys.
pub async fn apply(store: &FileStore, manifests: &[Manifest]) -> anyhow::Result<BTreeSet<Key>> {
    fn mark<K: crate::store::Object>(obj: &K) -> K {
        let mut obj = obj.clone();
        obj.meta_mut()
            .annotations
            .get_or_insert_default()
            .insert(APPLIED_ANNOTATION.into(), "ido-run".into());
        obj
    }
    let mut wanted = BTreeSet::new();
    for m in manifests {
        let key = match m {
            Manifest::Release(r) => FileStore::key_of(&store.apply(&mark(r.as_ref()))?),
            Manifest::NodeImage(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::ImageSync(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::Image(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::DiskImport(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::Secret(s) => {
                apply_data(store, &mark(s.as_ref()), |a, b| {
                    a.type_ == b.type_ && a.data == b.data && a.string_data == b.string_data
                })
                .await?
            }
            Manifest::ConfigMap(c) => {
                apply_data(store, &mark(c.as_ref()), |a, b| {
                    a.data == b.data && a.binary_data == b.binary_data
                })
                .await?
            }
        };
        wanted.insert(key);
    }
    Ok(wanted)
}

/// Stores a Secret or ConfigMap, replacing a stored one whose content (`same`), labels or
/// annotations differ (the store's `apply` compares only `spec`, which they do not have).
async fn apply_data<K: crate::store::Object>(
    store: &FileStore,
    obj: &K,
    same: impl Fn(&K, &K) -> bool,
) -> anyhow::Result<Key> {
    let key = FileStore::key_of(obj);
    let m = obj.meta();
    let name = m.name.as_deref().unwrap_or_default();
    if let Some(old) = store.get::<K>(m.namespace.as_deref(), name).await? {
        if same(&old, obj) && old.meta().labels == m.labels && old.meta().annotations == m.annotations {
            return Ok(key);
        }
        store.delete(&old).await?;
    }
    store.create(obj).await?;
    Ok(key)
}

/// Keys of the objects earlier runs applied from manifests (what an empty desired set
/// would delete).
pub async fn applied_keys(store: &FileStore) -> anyhow::Result<Vec<Key>> {
    async fn of<K: crate::store::Object>(store: &FileStore, out: &mut Vec<Key>) -> anyhow::Result<()> {
        for obj in store.list::<K>().await? {
            if obj
                .meta()
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(APPLIED_ANNOTATION))
            {
                out.push(FileStore::key_of(&obj));
            }
        }
        Ok(())
    }
    let mut out = vec![];
    of::<Release>(store, &mut out).await?;
    of::<NodeImage>(store, &mut out).await?;
    of::<ImageSync>(store, &mut out).await?;
    of::<Image>(store, &mut out).await?;
    of::<DiskImport>(store, &mut out).await?;
    of::<Secret>(store, &mut out).await?;
    of::<ConfigMap>(store, &mut out).await?;
    Ok(out)
}

async fn prune<K: crate::store::Object>(store: &FileStore, wanted: &BTreeSet<Key>) -> anyhow::Result<()> {
    for obj in store.list::<K>().await? {
        let applied = obj
            .meta()
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(APPLIED_ANNOTATION));
        if applied && !wanted.contains(&FileStore::key_of(&obj)) {
            store.delete(&obj).await?;
        }
    }
    Ok(())
}

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
            stop: Default::default(),
        }
    }
}

/// The outcome of a run: one row per object, and whether all settled.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

/// One object's line in the status table.
#[derive(Clone, Debug)]
pub struct Row {
    pub kind: &'static str,
    pub name: String,
    pub provider: String,
    pub state: String,
    pub releases: String,
    pub ok: bool,
    pub message: String,
    /// Per-location lines (NodeImages).
    pub locations: Vec<String>,
}

impl Report {
    /// True if every object settled well.
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.ok)
    }

    /// The status table.
    pub fn table(&self) -> String {
        let name_w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
        let rel_w = self
            .rows
            .iter()
            .map(|r| r.releases.len())
            .max()
            .unwrap_or(0)
            .max(8);
        let state_w = self.rows.iter().map(|r| r.state.len()).max().unwrap_or(0).max(16);
        let mut out = format!(
            "{:<10} {:<name_w$} {:<9} {:<state_w$} {:<rel_w$} MESSAGE\n",
            "KIND", "NAME", "PROVIDER", "STATE", "RELEASES"
        );
        for r in &self.rows {
            out += &format!(
                "{:<10} {:<name_w$} {:<9} {:<state_w$} {:<rel_w$} {}\n",
                r.kind, r.name, r.provider, r.state, r.releases, r.message
            );
            for l in &r.locations {
                out += &format!("           {l}\n");
            }
        }
        out
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
    let mut queue: BTreeMap<Key, Entry> = BTreeMap::new();
    let now = Instant::now();
    let mut keys: Vec<Key> = vec![];
    for k in kinds() {
        keys.extend((k.keys)(&ctx.store).await?);
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
    let images = Arc::new(Semaphore::new(opts.image_concurrency.max(1)));
    let syncs = Arc::new(Semaphore::new(opts.sync_concurrency.max(1)));
    let mut jobs: JoinSet<(Key, Result<Action, crate::Error>)> = JoinSet::new();
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
        let now = Instant::now();
        // Start due work.
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

        let busy = queue.values().any(|e| e.running);
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
                let e = queue.entry(key.clone()).or_default();
                e.running = false;
                match result {
                    Ok(action) => {
                        e.failures = 0;
                        e.last_error = None;
                        match action {
                            // An ImageSync's next pass is its schedule, and nothing here runs a
                            // DiskImport's importer Job: neither holds `once`.
                            Action::Requeue(d) => {
                                e.due = Some(Instant::now() + d);
                                e.urgent = d <= Duration::from_secs(30)
                                    && kind_of(&key).is_some_and(|k| k.holds_once);
                            }
                            Action::AwaitChange => { e.due = None; e.urgent = false; }
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
            Ok(key) = changes.recv() => mark_changed(&mut queue, &ctx.store, key),
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = opts.stop.cancelled() => {
                tracing::info!(running = jobs.len(), "stopping: the work in flight is stopped and cleaned up");
                break;
            }
        }
    }
    // Aborts what still runs and waits until it is dropped, so every guard has handed its
    // clean-up to `ido_engine::cleanup` before this returns.
    jobs.shutdown().await;
    let errors: BTreeMap<Key, String> = queue
        .into_iter()
        .filter_map(|(k, e)| e.last_error.map(|m| (k, m)))
        .collect();
    report(&ctx, &errors).await
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
                        Ok(None) => Ok(Action::AwaitChange),
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

/// An object changed: reconcile it now (or again once its running reconcile ends), unless
/// the change is only a controller's own status write.
fn mark_changed(queue: &mut BTreeMap<Key, Entry>, store: &FileStore, key: Key) {
    let key = match kind_of(&key) {
        Some(_) => key,
        None => match owner_key(store, &key) {
            Some(owner) => {
                // The owner's own fingerprint did not change: force the reconcile.
                let e = queue.entry(owner).or_default();
                if e.running {
                    e.dirty = true;
                } else {
                    e.due = Some(Instant::now());
                    e.urgent = true;
                }
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

/// Builds the status table from the store.
pub async fn report(ctx: &Context<FileStore>, errors: &BTreeMap<Key, String>) -> anyhow::Result<Report> {
    let mut rows = vec![];
    let events = ctx.store.events();
    let images = ctx.store.list::<NodeImage>().await?;
    for r in ctx.store.list::<Release>().await? {
        let key = FileStore::key_of(&r);
        let name = r.metadata.name.clone().unwrap_or_default();
        let enabled = ctx.providers.for_release(&name).map(|p| p.id());
        let provider = enabled.unwrap_or_default();
        let last_event = events.iter().rev().find(|e| e.object == key.to_string());
        let (state, ok, message) = if r.metadata.deletion_timestamp.is_some() {
            ("Deleting".to_string(), false, "deletion pending".to_string())
        } else if enabled.is_none() {
            let prefix = ido_api::release::prefix_of(&name).unwrap_or(&name);
            (
                "Skipped".into(),
                true,
                format!("no enabled provider makes {prefix:?} releases"),
            )
        } else if let Some(e) = errors.get(&key) {
            ("Error".into(), false, e.clone())
        } else {
            match release::image_name(&r, &ctx.settings.channel) {
                Err(e) => ("Invalid".into(), false, e.to_string()),
                Ok(img) => {
                    let ni_name = NodeImage::object_name(provider, &img);
                    match images
                        .iter()
                        .find(|n| n.metadata.name.as_deref() == Some(ni_name.as_str()))
                    {
                        Some(n)
                            if n.status
                                .as_ref()
                                .is_some_and(|s| s.state == NodeImageState::Available) =>
                        {
                            ("Ready".into(), true, format!("image {ni_name}"))
                        }
                        Some(_) => (
                            "NotReady".into(),
                            false,
                            format!("image {ni_name} is not available"),
                        ),
                        None => (
                            "NotReady".into(),
                            false,
                            format!("image {ni_name} does not exist"),
                        ),
                    }
                }
            }
        };
        let message = match last_event {
            Some(e) if e.event.type_ == EventType::Warning && ok => {
                format!("{message} (warning: {})", e.event.message)
            }
            _ => message,
        };
        let provider = match enabled {
            Some(id) => id.to_string(),
            None => ido_api::release::prefix_of(&name).unwrap_or_default().to_string(),
        };
        rows.push(Row {
            kind: "Release",
            name,
            provider,
            state,
            releases: String::new(),
            ok,
            message,
            locations: vec![],
        });
    }
    for n in &images {
        let key = FileStore::key_of(n);
        let st = n.status.clone().unwrap_or_default();
        let ready = condition::find(&st.conditions, conditions::READY);
        let ok = match st.state {
            NodeImageState::Available => n.metadata.deletion_timestamp.is_none(),
            NodeImageState::AwaitingDeletion => true,
            _ => false,
        };
        let mut message = ready
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        if let Some(e) = errors.get(&key)
            && !ok
        {
            message = format!("{message} (last error: {e})");
        }
        let locations = st
            .locations
            .iter()
            .map(|l| {
                format!(
                    "location {:<16} {:<10} {} bytes={} {}",
                    l.location,
                    format!("{:?}", l.state),
                    l.template.as_deref().unwrap_or("-"),
                    l.bytes_transferred,
                    l.message
                )
            })
            .collect();
        rows.push(Row {
            kind: "NodeImage",
            name: format!(
                "{}/{}",
                n.metadata.namespace.as_deref().unwrap_or_default(),
                n.metadata.name.as_deref().unwrap_or_default()
            ),
            provider: n.spec.provider.clone(),
            state: st.state.to_string(),
            releases: st.releases.join(","),
            ok,
            message,
            locations,
        });
    }
    for n in ctx.store.list::<ImageSync>().await? {
        rows.push(sync_row(&n, errors.get(&FileStore::key_of(&n))));
    }
    for n in ctx.store.list::<Image>().await? {
        rows.push(sync_row(&n, errors.get(&FileStore::key_of(&n))));
    }
    for n in ctx.store.list::<DiskImport>().await? {
        rows.push(disk_import_row(&n, errors.get(&FileStore::key_of(&n))));
    }
    Ok(Report { rows })
}

/// An ImageSync's (or Image's) line (its Ready condition) and one line per tag.
pub fn sync_row<K: imagesync::SyncKind>(n: &K, error: Option<&String>) -> Row {
    use ido_api::imagesync::conditions as c;
    let st = n.sync_status().cloned().unwrap_or_default();
    let ready = condition::find(&st.conditions, c::READY);
    let ok = ready.is_some_and(|r| r.status == ido_api::ConditionStatus::True);
    let mut message = ready
        .map(|r| format!("{}: {}", r.reason, r.message))
        .unwrap_or_else(|| "not synced yet".into());
    if !st.tag_summary.is_empty() {
        message = format!("tags {} in sync; {message}", st.tag_summary);
    }
    if let Some(e) = error
        && !ok
    {
        message = format!("{message} (last error: {e})");
    }
    let tags = st
        .tags
        .iter()
        .map(|t| {
            let tag = match &t.destination_tag {
                Some(d) => format!("{} -> {d}", t.tag),
                None => t.tag.clone(),
            };
            format!(
                "tag {tag:<20} {:<9} {} bytes={} {}",
                t.result.as_str(),
                t.destination_digest.as_deref().unwrap_or("-"),
                t.bytes,
                t.message
            )
        })
        .collect();
    Row {
        kind: if K::kind(&()) == "Image" {
            "Image"
        } else {
            "ImageSync"
        },
        name: format!(
            "{}/{}",
            n.meta().namespace.as_deref().unwrap_or_default(),
            n.meta().name.as_deref().unwrap_or_default()
        ),
        provider: "oci".into(),
        state: ready
            .map(|r| r.reason.clone())
            .unwrap_or_else(|| "Pending".into()),
        releases: String::new(),
        ok,
        message,
        locations: tags,
    }
}

/// A DiskImport's line: its phase and Ready condition. Only Succeeded is ok: `ido run`
/// stores the importer Job but runs nothing (blank disks succeed).
pub fn disk_import_row(n: &DiskImport, error: Option<&String>) -> Row {
    use ido_api::diskimport::conditions as c;
    let st = n.status.clone().unwrap_or_default();
    let ok = st.phase == DiskImportPhase::Succeeded;
    let ready = condition::find(&st.conditions, c::READY);
    let mut message = match ready {
        Some(r) if !r.message.is_empty() => format!("{}: {}", r.reason, r.message),
        Some(r) => r.reason.clone(),
        None => "not reconciled yet".into(),
    };
    if let Some(size) = &st.size {
        message = format!("size {size}; {message}");
    }
    if matches!(
        st.phase,
        DiskImportPhase::ImportScheduled | DiskImportPhase::ImportInProgress
    ) {
        message = format!(
            "{message}; importer Job {} stored (ido run does not run Jobs)",
            diskimport::job_name(n)
        );
    }
    if let Some(e) = error
        && !ok
    {
        message = format!("{message} (last error: {e})");
    }
    Row {
        kind: "DiskImport",
        name: format!(
            "{}/{}",
            n.metadata.namespace.as_deref().unwrap_or_default(),
            n.metadata.name.as_deref().unwrap_or_default()
        ),
        provider: "disk".into(),
        state: if st.phase == DiskImportPhase::New {
            "Pending".into()
        } else {
            st.phase.to_string()
        },
        releases: String::new(),
        ok,
        message,
        locations: vec![],
    }
}

/// Default state directory of `ido run`.
pub fn default_state_dir() -> PathBuf {
    Path::new(".ido").join("state")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<Vec<Manifest>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, text).unwrap();
        load_manifests(&[path], "team")
    }

    fn error(text: &str) -> String {
        format!("{:#}", load(text).unwrap_err())
    }

    #[test]
    fn manifests_get_the_namespace_and_errors_name_document_and_field() {
        let ms = load(
            "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata: {name: r}\nspec: {}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\ndata: {ca.crt: x}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: other}\n",
        )
        .unwrap();
        let [Manifest::Release(r), Manifest::ConfigMap(c), Manifest::Secret(s)] = ms.as_slice() else {
            panic!("{ms:?}")
        };
        assert_eq!(r.metadata.namespace, None, "Releases are cluster-scoped");
        assert_eq!(c.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("other"));

        let e = error(
            "---\napiVersion: ido.dev/v1alpha1\nkind: ImageSync\nmetadata: {name: a}\nspec: {mode: Sometimes}\n",
        );
        assert!(
            e.contains("m.yaml: document 1: ImageSync field spec.mode: unknown variant `Sometimes`"),
            "{e}"
        );
        let e = error(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {token: 'hunter2-not-base64!'}\n",
        );
        assert!(
            e.contains("document 1: Secret field data.token is invalid"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "a Secret's value is never echoed: {e}");
        let e = error("apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {a: b}}\n");
        assert!(
            e.contains("document 1: ConfigMap: metadata.name \"\": is required"),
            "{e}"
        );
        let e = error("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n");
        assert!(e.contains("unsupported kind \"Pod\""), "{e}");
    }
}
