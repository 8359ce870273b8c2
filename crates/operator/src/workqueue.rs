//! controller-runtime's controller and work-queue metrics, measured at kube-runtime's
//! scheduler.
//!
//! kube-runtime has no client-go work queue: a controller's requests (watch events of the
//! object or of what it owns, and the reconciler's requeues) go into its scheduler, which
//! keeps one entry per object (a new request for a waiting object only moves its due time
//! earlier), hands due objects to at most `concurrency` reconciles, and holds an object
//! back while a reconcile of it runs. The scheduler itself exposes nothing, but every way in
//! and out of it passes through the operator (see `controller::run`, which drives
//! kube-runtime's `applier` itself for this reason):
//!
//! ```text
//!   trigger stream ──requested(now)────────▶ ┌───────────┐ ──started──▶ reconcile ──finished
//!   requeue (Action) ──requested(now+delay)─▶ │ scheduler │ ──ObjectNotFound (object gone): dropped
//!                                            └───────────┘
//! ```
//!
//! [`Queue`] mirrors the scheduler's entries from these events (same keys, same
//! earliest-due merge), so:
//!
//! - `workqueue_adds_total`: requests for an object that was not already waiting (merged
//!   requests are not adds, as in client-go, where an item already in the queue is not
//!   added again); adds = reconciles started + objects gone + objects waiting.
//! - `workqueue_depth`: waiting objects that are due and not running (sampled at scrape).
//! - `workqueue_queue_duration_seconds`: from an object's due time (its request's arrival,
//!   or the end of its requeue delay) to its reconcile's start.
//! - `workqueue_work_duration_seconds`: the reconcile's run (as `controller_runtime_reconcile_time_seconds`).
//! - `workqueue_retries_total`: requeues: after a failure (the error policy's backoff) or
//!   asked for by the reconciler (client-go counts every `AddAfter`, which both go through).
//! - `workqueue_unfinished_work_seconds`, `workqueue_longest_running_processor_seconds`:
//!   from the running reconciles (sampled at scrape).
//! - `controller_runtime_active_workers`: running reconciles;
//!   `controller_runtime_max_concurrent_reconciles`: the controller's concurrency.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use ido_controllers::metrics::{ControllerLabels, Metrics, QueueLabels, ResultLabels};
use tokio::time::Instant;

/// An object of the controller's kind: namespace and name.
pub type Key = (Option<String>, String);

/// How a reconcile ended, as controller-runtime's `result` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done until the object changes.
    Success,
    /// Failed (the error policy requeues it after a backoff).
    Error,
    /// Requeued at once.
    Requeue,
    /// Requeued after a delay.
    RequeueAfter,
}

impl Outcome {
    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Requeue => "requeue",
            Outcome::RequeueAfter => "requeue_after",
        }
    }

    const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Error,
        Outcome::Requeue,
        Outcome::RequeueAfter,
    ];
}

#[derive(Default)]
struct State {
    /// Objects waiting in the scheduler, with the time each is due.
    waiting: HashMap<Key, Instant>,
    /// Running reconciles and when each started.
    running: HashMap<Key, Instant>,
}

/// One controller's work queue as seen from outside kube-runtime's scheduler (module docs).
pub struct Queue {
    name: &'static str,
    metrics: Metrics,
    state: Mutex<State>,
}

impl Queue {
    /// The queue of controller `name`, reconciling up to `concurrency` objects at once. Its
    /// metrics start at zero, as controller-runtime's do.
    pub fn new(name: &'static str, metrics: &Metrics, concurrency: u16) -> Arc<Self> {
        let q = Arc::new(Self {
            name,
            metrics: metrics.clone(),
            state: Mutex::default(),
        });
        let c = q.controller();
        // Created at zero, so that they are exported before the first reconcile.
        for o in Outcome::ALL {
            let _ = metrics.cr_reconciles.get_or_create(&q.result(o));
        }
        let _ = metrics.cr_reconcile_errors.get_or_create(&c);
        metrics.cr_active_workers.get_or_create(&c).set(0);
        metrics
            .cr_max_concurrent
            .get_or_create(&c)
            .set(i64::from(concurrency));
        let l = q.labels();
        let _ = metrics.wq_adds.get_or_create(&l);
        let _ = metrics.wq_retries.get_or_create(&l);
        let _ = metrics.wq_depth.get_or_create(&l);
        let _ = metrics.wq_unfinished_work.get_or_create(&l);
        let _ = metrics.wq_longest_running.get_or_create(&l);
        let weak: Weak<Self> = Arc::downgrade(&q);
        metrics.on_encode(move || {
            if let Some(q) = weak.upgrade() {
                q.sample(Instant::now());
            }
        });
        q
    }

    fn controller(&self) -> ControllerLabels {
        ControllerLabels {
            controller: self.name.into(),
        }
    }

    fn labels(&self) -> QueueLabels {
        QueueLabels {
            name: self.name.into(),
        }
    }

    fn result(&self, o: Outcome) -> ResultLabels {
        ResultLabels {
            controller: self.name.into(),
            result: o.as_str().into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the registry while related samples change together, so that a scrape (which
    /// encodes under the same lock) never sees one without the other (e.g. a reconcile
    /// counted but not yet timed).
    fn together(&self) -> std::sync::MutexGuard<'_, prometheus_client::registry::Registry> {
        self.metrics.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request for `key` due at `due` entered the scheduler.
    pub fn requested(&self, key: Key, due: Instant) {
        let mut s = self.lock();
        match s.waiting.get_mut(&key) {
            Some(d) => *d = (*d).min(due),
            None => {
                s.waiting.insert(key, due);
                let _together = self.together();
                self.metrics.wq_adds.get_or_create(&self.labels()).inc();
            }
        }
    }

    /// The reconciler (or the error policy) asked to see `key` again after `delay`.
    pub fn requeued(&self, key: Key, delay: Duration) {
        let now = Instant::now();
        self.metrics.wq_retries.get_or_create(&self.labels()).inc();
        self.requested(key, now.checked_add(delay).unwrap_or(now));
    }

    /// The scheduler handed `key` to a reconcile, which starts now; the returned guard
    /// records its end.
    pub fn started(self: &Arc<Self>, key: Key) -> Running {
        let now = Instant::now();
        let mut s = self.lock();
        let _together = self.together();
        if let Some(due) = s.waiting.remove(&key) {
            self.metrics
                .wq_queue_duration
                .get_or_create(&self.labels())
                .observe(now.saturating_duration_since(due).as_secs_f64());
        }
        s.running.insert(key.clone(), now);
        self.metrics
            .cr_active_workers
            .get_or_create(&self.controller())
            .inc();
        Running {
            queue: self.clone(),
            key,
            start: now,
            outcome: None,
        }
    }

    /// The scheduler dropped `key`: its object is gone from the cache.
    pub fn dropped(&self, key: &Key) {
        self.lock().waiting.remove(key);
    }

    /// Sets the sampled gauges as of `now`.
    fn sample(&self, now: Instant) {
        let s = self.lock();
        let depth = s
            .waiting
            .iter()
            .filter(|(k, due)| **due <= now && !s.running.contains_key(*k))
            .count();
        let ages = s
            .running
            .values()
            .map(|start| now.saturating_duration_since(*start).as_secs_f64());
        let (sum, max) = ages.fold((0.0, 0.0_f64), |(sum, max), a| (sum + a, max.max(a)));
        let l = self.labels();
        self.metrics
            .wq_depth
            .get_or_create(&l)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.metrics.wq_unfinished_work.get_or_create(&l).set(sum);
        self.metrics.wq_longest_running.get_or_create(&l).set(max);
    }
}

/// A running reconcile; dropping it records its end (also when it is cancelled, which
/// counts as no result).
pub struct Running {
    queue: Arc<Queue>,
    key: Key,
    start: Instant,
    outcome: Option<Outcome>,
}

impl Running {
    /// The reconcile ended with `outcome`.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let q = &self.queue;
        let secs = self.start.elapsed().as_secs_f64();
        q.lock().running.remove(&self.key);
        let m = &q.metrics;
        m.cr_active_workers.get_or_create(&q.controller()).dec();
        let Some(outcome) = self.outcome else { return };
        let _together = q.together();
        m.cr_reconciles.get_or_create(&q.result(outcome)).inc();
        if outcome == Outcome::Error {
            m.cr_reconcile_errors.get_or_create(&q.controller()).inc();
        }
        m.cr_reconcile_time.get_or_create(&q.controller()).observe(secs);
        m.wq_work_duration.get_or_create(&q.labels()).observe(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        (Some("ns".into()), name.into())
    }

    /// The queue's gauges as sampled at `at`: depth, longest running (s).
    fn gauges(q: &Queue, m: &Metrics, at: Instant) -> (i64, f64) {
        q.sample(at);
        let l = q.labels();
        (
            m.wq_depth.get_or_create(&l).get(),
            m.wq_longest_running.get_or_create(&l).get(),
        )
    }

    #[test]
    fn mirrors_the_scheduler_adds_merges_depth_and_durations() {
        let m = Metrics::default();
        let q = Queue::new("nodeimage", &m, 2);
        let t = m.encode();
        for line in [
            r#"controller_runtime_reconcile_total{controller="nodeimage",result="requeue_after"} 0"#,
            r#"controller_runtime_max_concurrent_reconciles{controller="nodeimage"} 2"#,
            r#"controller_runtime_active_workers{controller="nodeimage"} 0"#,
            r#"workqueue_adds_total{name="nodeimage"} 0"#,
            r#"workqueue_depth{name="nodeimage"} 0"#,
        ] {
            assert!(t.contains(line), "{line}\n{t}");
        }

        // Two watch events for a (250 ms ago and now), one for b: a merges, keeping the
        // earlier due time.
        let t0 = Instant::now();
        let ago = t0.checked_sub(Duration::from_millis(250)).unwrap();
        q.requested(key("a"), ago);
        q.requested(key("a"), t0);
        q.requested(key("b"), t0);
        assert_eq!(gauges(&q, &m, Instant::now()).0, 2);

        let a = q.started(key("a"));
        // A request for a while it runs: waiting, but not runnable.
        q.requested(key("a"), Instant::now());
        let t = m.encode();
        assert!(t.contains(r#"workqueue_adds_total{name="nodeimage"} 3"#), "{t}");
        assert!(t.contains(r#"workqueue_depth{name="nodeimage"} 1"#), "{t}");
        assert!(
            t.contains(r#"controller_runtime_active_workers{controller="nodeimage"} 1"#),
            "{t}"
        );
        // Waited ≥ 250 ms: in the 1 s bucket, not the 0.1 s one.
        assert!(
            t.contains(r#"workqueue_queue_duration_seconds_bucket{le="1.0",name="nodeimage"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"workqueue_queue_duration_seconds_bucket{le="0.1",name="nodeimage"} 0"#),
            "{t}"
        );
        let (_, longest) = gauges(&q, &m, Instant::now() + Duration::from_secs(2));
        assert!((2.0..3.0).contains(&longest), "{longest}");
        a.finish(Outcome::Error);
        q.requeued(key("a"), Duration::from_secs(5));
        let t = m.encode();
        assert!(t.contains(r#"workqueue_adds_total{name="nodeimage"} 3"#), "{t}");
        assert!(
            t.contains(r#"workqueue_retries_total{name="nodeimage"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"controller_runtime_reconcile_errors_total{controller="nodeimage"} 1"#));
        assert!(t.contains(r#"controller_runtime_reconcile_total{controller="nodeimage",result="error"} 1"#));
        assert!(t.contains(r#"controller_runtime_active_workers{controller="nodeimage"} 0"#));
        assert!(t.contains(r#"workqueue_work_duration_seconds_count{name="nodeimage"} 1"#));
        assert!(t.contains(r#"controller_runtime_reconcile_time_seconds_count{controller="nodeimage"} 1"#));
        // a is due (the watch request came before the requeue), b too.
        assert_eq!(gauges(&q, &m, Instant::now()).0, 2);

        // A requeue alone is not due until its delay has passed.
        q.started(key("a")).finish(Outcome::RequeueAfter);
        q.requeued(key("a"), Duration::from_secs(60));
        assert_eq!(gauges(&q, &m, Instant::now()).0, 1);
        assert_eq!(gauges(&q, &m, Instant::now() + Duration::from_secs(61)).0, 2);
        q.dropped(&key("b"));
        assert_eq!(gauges(&q, &m, Instant::now() + Duration::from_secs(61)).0, 1);
        // Cancelled: no result counted, the worker is freed.
        drop(q.started(key("a")));
        let t = m.encode();
        assert!(t.contains(r#"controller_runtime_active_workers{controller="nodeimage"} 0"#));
        assert!(t.contains(
            r#"controller_runtime_reconcile_total{controller="nodeimage",result="requeue_after"} 1"#
        ));
        assert!(t.contains(r#"workqueue_adds_total{name="nodeimage"} 4"#), "{t}");
        assert!(t.contains(r#"workqueue_depth{name="nodeimage"} 0"#), "{t}");
    }
}
