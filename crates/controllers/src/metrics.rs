//! Prometheus metrics of the controllers (prometheus-client), shared by both drivers.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    pub provider: String,
    pub location: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadResultLabels {
    pub provider: String,
    pub location: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub provider: String,
    pub state: String,
}

/// A source and a destination registry (ImageSync copies).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub source_registry: String,
    pub destination_registry: String,
}

/// A copy's result (`copied`, `unchanged`, `failed`) between two registries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncResultLabels {
    pub source_registry: String,
    pub destination_registry: String,
    pub result: String,
}

/// Why an ImageSync pass failed (a condition reason) between two registries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncFailureLabels {
    pub source_registry: String,
    pub destination_registry: String,
    pub reason: String,
}

/// The controllers' metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub reconcile_seconds: Family<ControllerLabels, Histogram>,
    pub uploads: Family<UploadResultLabels, Counter>,
    pub upload_bytes: Family<UploadLabels, Counter>,
    pub upload_seconds: Family<UploadLabels, Histogram>,
    pub images: Family<StateLabels, Gauge>,
    /// ImageSync tag copies by result.
    pub sync_copies: Family<SyncResultLabels, Counter>,
    /// Blob bytes ImageSync copies streamed.
    pub sync_bytes: Family<SyncLabels, Counter>,
    /// Duration of one tag's copy (or check).
    pub sync_seconds: Family<SyncLabels, Histogram>,
    /// Failed ImageSync passes, by reason.
    pub sync_failures: Family<SyncFailureLabels, Counter>,
    pub registry: Arc<std::sync::Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let buckets = || Histogram::new([0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]);
        let m = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            reconcile_seconds: Family::new_with_constructor(buckets),
            uploads: Family::default(),
            upload_bytes: Family::default(),
            upload_seconds: Family::new_with_constructor(buckets),
            images: Family::default(),
            sync_copies: Family::default(),
            sync_bytes: Family::default(),
            sync_seconds: Family::new_with_constructor(buckets),
            sync_failures: Family::default(),
            registry: Arc::default(),
        };
        {
            let mut r = m.registry.lock().expect("lock");
            let r = r.sub_registry_with_prefix("ido");
            r.register("reconciles", "Reconciles run", m.reconciles.clone());
            r.register(
                "reconcile_failures",
                "Reconciles that failed, by error",
                m.failures.clone(),
            );
            r.register(
                "reconcile_duration_seconds",
                "Reconcile duration",
                m.reconcile_seconds.clone(),
            );
            r.register(
                "uploads",
                "Image uploads to provider locations, by result",
                m.uploads.clone(),
            );
            r.register(
                "upload_bytes",
                "Bytes sent to provider locations",
                m.upload_bytes.clone(),
            );
            r.register(
                "upload_duration_seconds",
                "Upload duration",
                m.upload_seconds.clone(),
            );
            r.register(
                "node_images",
                "NodeImages by provider and state",
                m.images.clone(),
            );
            r.register(
                "imagesync_copies",
                "ImageSync tag copies, by registries and result (copied, unchanged, failed)",
                m.sync_copies.clone(),
            );
            r.register(
                "imagesync_copy_bytes",
                "Blob bytes streamed by ImageSync copies, by registries",
                m.sync_bytes.clone(),
            );
            r.register(
                "imagesync_copy_duration_seconds",
                "Duration of one ImageSync tag copy or check, by registries",
                m.sync_seconds.clone(),
            );
            r.register(
                "imagesync_failures",
                "Failed ImageSync passes, by registries and reason",
                m.sync_failures.clone(),
            );
        }
        m
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().expect("lock");
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encode to string");
        out
    }
}
