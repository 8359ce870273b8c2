//! Prometheus metrics of the controllers (prometheus-client), shared by both drivers.
//!
//! Two sets: the project's own `ido_*`, and, beside them, the names users of
//! controller-runtime expect (`controller_runtime_*`, `workqueue_*`, unprefixed, with
//! controller-runtime's labels and buckets). The operator's kube-runtime driver fills the
//! latter (see `ido_operator::controller` for how each is measured); `ido run` does not.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
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

/// A cache policy (`ClusterImageCachePolicy/<name>`, `ImageCachePolicy/<ns>/<name>`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub policy: String,
}

/// A cache copy's result (`copied`, `present`, `failed`, `expired`) under a policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheCopyLabels {
    pub policy: String,
    pub result: String,
}

/// An admission webhook lookup's result: `hit` (a copy is present: the image is
/// rewritten) or `miss` (none yet: the image is left, a copy queued).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub result: String,
}

/// A controller and a reconcile's result, as controller-runtime labels
/// `controller_runtime_reconcile_total`: `success`, `error`, `requeue`, `requeue_after`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub controller: String,
    pub result: String,
}

/// A work queue; controller-runtime names each controller's queue after the controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub name: String,
}

/// A gauge of seconds (`workqueue_unfinished_work_seconds`, …).
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// Refreshes gauges that are sampled when `/metrics` is read (e.g. a queue's depth).
type Sampler = Box<dyn Fn() + Send + Sync>;

/// controller-runtime's `controller_runtime_reconcile_time_seconds` buckets.
const RECONCILE_TIME_BUCKETS: [f64; 40] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25,
    1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0,
    50.0, 60.0,
];

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
    /// Cache copies by policy and result.
    pub cache_copies: Family<CacheCopyLabels, Counter>,
    /// Blob bytes cache copies streamed.
    pub cache_bytes: Family<CacheLabels, Counter>,
    /// The admission webhook's image lookups, hits and misses.
    pub cache_lookups: Family<LookupLabels, Counter>,
    /// How long the admission webhook took to answer.
    pub admission_seconds: Histogram,
    /// `controller_runtime_reconcile_total{controller,result}`.
    pub cr_reconciles: Family<ResultLabels, Counter>,
    /// `controller_runtime_reconcile_errors_total{controller}`.
    pub cr_reconcile_errors: Family<ControllerLabels, Counter>,
    /// `controller_runtime_reconcile_time_seconds{controller}`.
    pub cr_reconcile_time: Family<ControllerLabels, Histogram>,
    /// `controller_runtime_max_concurrent_reconciles{controller}`.
    pub cr_max_concurrent: Family<ControllerLabels, Gauge>,
    /// `controller_runtime_active_workers{controller}`: reconciles running now.
    pub cr_active_workers: Family<ControllerLabels, Gauge>,
    /// `workqueue_depth{name}`: objects due for a reconcile that has not started yet.
    pub wq_depth: Family<QueueLabels, Gauge>,
    /// `workqueue_adds_total{name}`: objects entering the queue (not already waiting in it).
    pub wq_adds: Family<QueueLabels, Counter>,
    /// `workqueue_queue_duration_seconds{name}`: from due to the reconcile's start.
    pub wq_queue_duration: Family<QueueLabels, Histogram>,
    /// `workqueue_work_duration_seconds{name}`: a reconcile's run.
    pub wq_work_duration: Family<QueueLabels, Histogram>,
    /// `workqueue_retries_total{name}`: requeues after a delay (retries and periodic rechecks).
    pub wq_retries: Family<QueueLabels, Counter>,
    /// `workqueue_unfinished_work_seconds{name}`: summed age of the running reconciles.
    pub wq_unfinished_work: Family<QueueLabels, SecondsGauge>,
    /// `workqueue_longest_running_processor_seconds{name}`: age of the oldest running reconcile.
    pub wq_longest_running: Family<QueueLabels, SecondsGauge>,
    pub registry: Arc<std::sync::Mutex<Registry>>,
    samplers: Arc<std::sync::Mutex<Vec<Sampler>>>,
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
            cache_copies: Family::default(),
            cache_bytes: Family::default(),
            cache_lookups: Family::default(),
            admission_seconds: Histogram::new(ADMISSION_BUCKETS),
            cr_reconciles: Family::default(),
            cr_reconcile_errors: Family::default(),
            cr_reconcile_time: Family::new_with_constructor(|| Histogram::new(RECONCILE_TIME_BUCKETS)),
            cr_max_concurrent: Family::default(),
            cr_active_workers: Family::default(),
            wq_depth: Family::default(),
            wq_adds: Family::default(),
            wq_queue_duration: Family::new_with_constructor(queue_buckets),
            wq_work_duration: Family::new_with_constructor(queue_buckets),
            wq_retries: Family::default(),
            wq_unfinished_work: Family::default(),
            wq_longest_running: Family::default(),
            registry: Arc::default(),
            samplers: Arc::default(),
        };
        m.register_ido();
        m.register_controller_runtime();
        m
    }
}

/// Admission latency buckets: 0.25 ms to 10 s.
const ADMISSION_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// controller-runtime's work queue buckets: 10 ns to 1000 s, by tens.
fn queue_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-8, 10.0, 12))
}

impl Metrics {
    /// Runs `sample` before every [`Self::encode`], to set gauges that are read off a live
    /// state (a queue's depth, the age of running work) rather than counted.
    pub fn on_encode(&self, sample: impl Fn() + Send + Sync + 'static) {
        self.samplers.lock().expect("lock").push(Box::new(sample));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        for sample in self.samplers.lock().expect("lock").iter() {
            sample();
        }
        let mut out = String::new();
        let r = self.registry.lock().expect("lock");
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encode to string");
        out
    }

    /// Registers ido's own metrics, prefixed `ido_`.
    fn register_ido(&self) {
        let mut r = self.registry.lock().expect("lock");
        let r = r.sub_registry_with_prefix("ido");
        r.register("reconciles", "Reconciles run", self.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by error",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            self.reconcile_seconds.clone(),
        );
        r.register(
            "uploads",
            "Image uploads to provider locations, by result",
            self.uploads.clone(),
        );
        r.register(
            "upload_bytes",
            "Bytes sent to provider locations",
            self.upload_bytes.clone(),
        );
        r.register(
            "upload_duration_seconds",
            "Upload duration",
            self.upload_seconds.clone(),
        );
        r.register(
            "node_images",
            "NodeImages by provider and state",
            self.images.clone(),
        );
        r.register(
            "cache_copies",
            "Image cache copies, by policy and result (copied, present, failed, expired)",
            self.cache_copies.clone(),
        );
        r.register(
            "cache_copy_bytes",
            "Blob bytes image cache copies streamed",
            self.cache_bytes.clone(),
        );
        r.register(
            "cache_lookups",
            "Admission webhook lookups of copies: hit (rewritten) or miss (left, copy queued)",
            self.cache_lookups.clone(),
        );
        r.register(
            "cache_admission_duration_seconds",
            "How long the admission webhook took to answer",
            self.admission_seconds.clone(),
        );
        r.register(
            "imagesync_copies",
            "ImageSync tag copies, by registries and result (copied, unchanged, failed)",
            self.sync_copies.clone(),
        );
        r.register(
            "imagesync_copy_bytes",
            "Blob bytes streamed by ImageSync copies, by registries",
            self.sync_bytes.clone(),
        );
        r.register(
            "imagesync_copy_duration_seconds",
            "Duration of one ImageSync tag copy or check, by registries",
            self.sync_seconds.clone(),
        );
        r.register(
            "imagesync_failures",
            "Failed ImageSync passes, by registries and reason",
            self.sync_failures.clone(),
        );
    }

    /// Registers the metrics named as controller-runtime names them.
    fn register_controller_runtime(&self) {
        // Unprefixed, as controller-runtime names them (counters get `_total`).
        let mut r = self.registry.lock().expect("lock");
        r.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            self.cr_reconciles.clone(),
        );
        r.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            self.cr_reconcile_errors.clone(),
        );
        r.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            self.cr_reconcile_time.clone(),
        );
        r.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            self.cr_max_concurrent.clone(),
        );
        r.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            self.cr_active_workers.clone(),
        );
        r.register(
            "workqueue_depth",
            "Current depth of workqueue",
            self.wq_depth.clone(),
        );
        r.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            self.wq_adds.clone(),
        );
        r.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            self.wq_queue_duration.clone(),
        );
        r.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            self.wq_work_duration.clone(),
        );
        r.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            self.wq_retries.clone(),
        );
        r.register(
        "workqueue_unfinished_work_seconds",
        "How many seconds of work has been done that is in progress and hasn't been observed by work_duration",
        self.wq_unfinished_work.clone(),
    );
        r.register(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            self.wq_longest_running.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_runtime_metrics_carry_their_names_labels_and_buckets() {
        let m = Metrics::default();
        let c = ControllerLabels {
            controller: "nodeimage".into(),
        };
        let q = QueueLabels {
            name: "nodeimage".into(),
        };
        m.cr_reconciles
            .get_or_create(&ResultLabels {
                controller: "nodeimage".into(),
                result: "success".into(),
            })
            .inc();
        m.cr_reconcile_errors.get_or_create(&c).inc();
        m.cr_reconcile_time.get_or_create(&c).observe(0.2);
        m.cr_max_concurrent.get_or_create(&c).set(4);
        m.cr_active_workers.get_or_create(&c).set(1);
        m.wq_adds.get_or_create(&q).inc();
        m.wq_retries.get_or_create(&q).inc();
        m.wq_queue_duration.get_or_create(&q).observe(0.001);
        m.wq_work_duration.get_or_create(&q).observe(0.2);
        m.wq_longest_running.get_or_create(&q).set(1.5);
        let depth = m.wq_depth.clone();
        let q2 = q.clone();
        m.on_encode(move || {
            depth.get_or_create(&q2).set(3);
        });
        let text = m.encode();
        for line in [
            r#"controller_runtime_reconcile_total{controller="nodeimage",result="success"} 1"#,
            r#"controller_runtime_reconcile_errors_total{controller="nodeimage"} 1"#,
            r#"controller_runtime_reconcile_time_seconds_bucket{le="0.25",controller="nodeimage"} 1"#,
            r#"controller_runtime_reconcile_time_seconds_count{controller="nodeimage"} 1"#,
            r#"controller_runtime_max_concurrent_reconciles{controller="nodeimage"} 4"#,
            r#"controller_runtime_active_workers{controller="nodeimage"} 1"#,
            r#"workqueue_depth{name="nodeimage"} 3"#,
            r#"workqueue_adds_total{name="nodeimage"} 1"#,
            r#"workqueue_retries_total{name="nodeimage"} 1"#,
            r#"workqueue_queue_duration_seconds_bucket{le="0.001",name="nodeimage"} 1"#,
            r#"workqueue_work_duration_seconds_bucket{le="1.0",name="nodeimage"} 1"#,
            r#"workqueue_longest_running_processor_seconds{name="nodeimage"} 1.5"#,
            "# TYPE controller_runtime_reconcile counter",
            "# TYPE workqueue_depth gauge",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("ido_controller_runtime"), "{text}");
    }
}
