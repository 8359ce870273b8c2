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
