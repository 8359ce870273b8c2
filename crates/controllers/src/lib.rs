//! Reconcilers as plain async functions over a small object store.
//!
//! ```text
//!   Release ──release::reconcile──▶ NodeImage ──nodeimage::reconcile──▶ Provider (vSphere, …)
//!                                        ▲                                   ▲
//!                                  Store (file or kube)              S3 source (engine)
//!
//!   DiskImport ──diskimport::reconcile──▶ PersistentVolumeClaim + importer Job (`ido import`)
//!        ▲                      ▲ (source.diskSource: the claim it resolves to)
//!        │                 DiskSource ──disksource::reconcile──▶ status.claim, Ready
//!        │                      ▲
//!   DiskImportCron ──diskimportcron::reconcile──▶ polls, DiskImports, points the DiskSource
//!   kubevirt provider (through diskimport::StoreDiskImports)
//! ```
//!
//! Two drivers run the same reconcilers: [`run`] (`ido run`, over the [`file_store`]) and
//! the kube-runtime controllers of `ido-operator` (`ido operator`). Reconcilers return
//! quickly: uploads run as [`tasks`] that wake their object when they end.

use std::{sync::Arc, time::Duration};

use ido_io::s3::S3Source;
use ido_providers::{ProviderError, Providers};

pub mod claimimport;
pub mod config;
pub mod datavolume;
pub mod diskimport;
pub mod diskimportcron;
pub mod disksource;
pub mod file_store;
pub mod imagecache;
pub mod imagesync;
pub mod metrics;
pub mod nodeimage;
pub mod release;
pub mod run;
pub mod store;
pub mod tasks;

pub use store::{Store, StoreError};

/// What a reconcile asks of its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Look again after this long.
    Requeue(Duration),
    /// Nothing to do until the object changes.
    AwaitChange,
}

/// Reconcile failures; the driver retries them with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl Error {
    /// Stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Store(StoreError::Conflict { .. }) => "conflict",
            Error::Store(_) => "store",
            Error::Provider(ProviderError::Config { .. }) => "config",
            Error::Provider(ProviderError::SourceMissing(_)) => "source_missing",
            Error::Provider(ProviderError::InvalidImage(_)) => "invalid_image",
            Error::Provider(ProviderError::Api(_)) => "provider_api",
            Error::Provider(ProviderError::Transport(_)) => "transport",
            Error::Provider(ProviderError::NameClash { .. }) => "name_clash",
        }
    }
}

/// Settings shared by the reconcilers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace NodeImages are created in (default `giantswarm`).
    pub namespace: String,
    /// Flatcar channel in image names (default `stable`).
    pub channel: String,
    /// How long an unused image is kept (`AwaitingDeletion`) before deletion; 0 = at once.
    pub retention: Duration,
    /// Locations of one image worked on at once.
    pub location_concurrency: usize,
    /// How often available images are checked again.
    pub recheck: Duration,
    /// How DiskImports are imported (importer image, overhead, retries).
    pub disk_import: diskimport::ImporterSettings,
    /// Serve image-operator's `Image` kind (`skopeo.io/v1alpha1`) in every namespace.
    pub image_operator: bool,
    /// Reconcile the workload image cache's policies and CachedImages.
    pub image_cache: bool,
    /// Cache copies made at once.
    pub cache_concurrency: usize,
    /// Serve CDI's DataVolume (`cdi.kubevirt.io/v1beta1`) as DiskImports (`ido operator`;
    /// `ido run` always reads DataVolume manifests).
    pub cdi_compat: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "giantswarm".into(),
            channel: "stable".into(),
            retention: Duration::ZERO,
            location_concurrency: 4,
            recheck: Duration::from_secs(300),
            disk_import: diskimport::ImporterSettings::default(),
            image_operator: false,
            image_cache: false,
            cache_concurrency: 4,
            cdi_compat: false,
        }
    }
}

/// The retry delay after `failures` consecutive failed reconciles of one object, the same
/// under both drivers (`ido run`, `ido operator`): 1 s, doubling, at most 5 min.
pub fn backoff(failures: u32) -> std::time::Duration {
    const MIN: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX: std::time::Duration = std::time::Duration::from_secs(300);
    let exp = failures.saturating_sub(1).min(16);
    MIN.saturating_mul(1 << exp).min(MAX)
}

/// Everything a reconcile needs.
pub struct Context<S: Store> {
    pub store: S,
    pub providers: Providers,
    /// Where node images are read from; `None` when no `s3` section is configured.
    pub source: Option<S3Source>,
    pub settings: Settings,
    pub metrics: metrics::Metrics,
    /// Releases found to exist lately (see [`SeenReleases`]).
    pub seen_releases: SeenReleases,
    /// The long work the reconcilers handed off (uploads), see [`tasks`].
    pub tasks: Arc<tasks::Tasks>,
    /// The image cache's copies running at once.
    pub cache_copies: imagecache::CopySlots,
}

impl<S: Store> Context<S> {
    /// A context over `store` with `settings`: no provider, no S3 source, its own metrics,
    /// tasks and caches. Set the other fields with struct update syntax.
    pub fn new(store: S, settings: Settings) -> Self {
        Self {
            store,
            providers: Providers::default(),
            source: None,
            settings,
            metrics: metrics::Metrics::default(),
            seen_releases: SeenReleases::default(),
            tasks: Arc::default(),
            cache_copies: imagecache::CopySlots::default(),
        }
    }
}

/// When each Release was last found to exist, so that the image controller, which checks
/// the Releases a NodeImage lists on every reconcile, asks the store again only after
/// [`SeenReleases::FRESH`] (a NodeImage listing 10 Releases is reconciled once per Release
/// added to it).
#[derive(Debug, Default)]
pub struct SeenReleases(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl SeenReleases {
    /// How long a Release found to exist is taken to still exist.
    pub const FRESH: std::time::Duration = std::time::Duration::from_secs(60);

    /// Whether `name` was found to exist less than [`Self::FRESH`] ago.
    pub fn fresh(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|t| t.elapsed() < Self::FRESH)
    }

    /// Records that `name` exists now, or forgets it.
    pub fn set(&self, name: &str, exists: bool) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if exists {
            m.insert(name.to_string(), std::time::Instant::now());
        } else {
            m.remove(name);
        }
    }
}

/// What of an object should start a reconcile: everything but the status the controllers
/// write about their own work (`status.releases` counts: the release controller writes it
/// for the image controller) and the `resourceVersion`. Drivers skip changes that leave
/// this unchanged, so a controller's own status writes do not re-trigger it.
pub fn trigger_fingerprint(obj: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    if let Some(o) = v.as_object_mut()
        && let Some(status) = o.remove("status")
    {
        o.insert(
            "releases".into(),
            status.get("releases").cloned().unwrap_or_default(),
        );
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let s: Vec<u64> = (1..=11).map(|n| super::backoff(n).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(super::backoff(0).as_secs(), 1);
        assert_eq!(super::backoff(u32::MAX).as_secs(), 300);
    }
}
