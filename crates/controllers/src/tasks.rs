//! Long work, out of the reconcilers: uploads run as tracked tasks, one per object at a time.
//!
//! ```text
//!   reconcile ──take(key)──▶ Idle ──start(key, work)──▶ Running ──(work ends)──▶ Done(outcome)
//!       ▲                                  │                                     │
//!       └──────── woken(key): the driver reconciles the object again ◀──────────┘
//!   deletion ──cancel(key)──▶ the work is dropped (its guards hand their clean-up to
//!                             ido_io::cleanup) and the slot is emptied
//! ```
//!
//! A reconciler starts the work and returns at once; while it runs, reconciles of the same
//! object see `Running` and return (a deletion cancels it instead of waiting for it); when
//! it ends, its outcome waits in the slot and the object is woken: both drivers subscribe
//! ([`Tasks::subscribe`]) and reconcile the object named, which takes the outcome and
//! decides (requeue, or fail into the driver's backoff). A process that stops cancels
//! every task and waits until each is dropped ([`Tasks::shutdown`]).

use std::{
    any::Any,
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{broadcast, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The object a task works for: the store's key of it.
pub use crate::store::ObjectKey as TaskKey;

/// What a reconciler finds in an object's slot.
#[derive(Debug)]
pub enum TaskState<T> {
    /// No task: start one if there is work.
    Idle,
    /// A task is running; it wakes the object when it ends.
    Running,
    /// The task ended with this outcome (taken: the slot is empty again).
    Done(T),
}

enum Slot {
    Running {
        cancel: CancellationToken,
        ended: watch::Receiver<bool>,
    },
    Done(Box<dyn Any + Send>),
}

type Slots = Arc<Mutex<HashMap<TaskKey, Slot>>>;

/// The tasks of one process, shared by the reconcilers through their context.
pub struct Tasks {
    slots: Slots,
    woken: broadcast::Sender<TaskKey>,
    tracker: TaskTracker,
    /// The parent of every task's token; replaced after a shutdown.
    stop: Mutex<CancellationToken>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self {
            slots: Slots::default(),
            woken: broadcast::channel(1024).0,
            tracker: TaskTracker::new(),
            stop: Mutex::default(),
        }
    }
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tasks").field("running", &self.running()).finish()
    }
}

impl Tasks {
    /// Starts `work` for `key` unless the slot is taken (running, or an outcome not yet
    /// taken); returns whether it started. `work` gets a token
    /// that is cancelled when the task is (its future is dropped at that point anyway).
    pub fn start<T, F>(&self, key: TaskKey, work: impl FnOnce(CancellationToken) -> F) -> bool
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let cancel = self.stop.lock().expect("task stop").child_token();
        let (ended_tx, ended) = watch::channel(false);
        {
            let mut slots = self.slots.lock().expect("task slots");
            if slots.contains_key(&key) {
                return false;
            }
            slots.insert(
                key.clone(),
                Slot::Running {
                    cancel: cancel.clone(),
                    ended,
                },
            );
        }
        let fut = work(cancel.clone());
        let (slots, woken) = (self.slots.clone(), self.woken.clone());
        self.tracker.spawn(async move {
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                out = fut => Some(out),
            };
            {
                let mut slots = slots.lock().expect("task slots");
                match outcome {
                    Some(out) => {
                        slots.insert(key.clone(), Slot::Done(Box::new(out)));
                    }
                    None => {
                        slots.remove(&key);
                    }
                }
            }
            let _ = ended_tx.send(true);
            let _ = woken.send(key);
        });
        true
    }

    /// What is in `key`'s slot; a finished task's outcome is taken out. An outcome of
    /// another type than `T` is dropped and reads as `Idle`.
    pub fn take<T: 'static>(&self, key: &TaskKey) -> TaskState<T> {
        let mut slots = self.slots.lock().expect("task slots");
        match slots.get(key) {
            None => TaskState::Idle,
            Some(Slot::Running { .. }) => TaskState::Running,
            Some(Slot::Done(_)) => match slots.remove(key) {
                Some(Slot::Done(out)) => match out.downcast::<T>() {
                    Ok(t) => TaskState::Done(*t),
                    Err(_) => TaskState::Idle,
                },
                _ => TaskState::Idle,
            },
        }
    }

    /// Cancels `key`'s task and waits until its work is dropped (its guards have handed
    /// their clean-up to `ido_io::cleanup`); an outcome not yet taken is dropped.
    /// Returns whether a task was running.
    pub async fn cancel(&self, key: &TaskKey) -> bool {
        match self.cancel_now(key) {
            Some(mut ended) => {
                let _ = ended.wait_for(|e| *e).await;
                true
            }
            None => false,
        }
    }

    /// Cancels `key`'s task at once, without waiting for it to end (its slot stays taken
    /// until it has); an outcome not yet taken is dropped. Returns a receiver that turns
    /// true when the task has ended, if one was running.
    pub fn cancel_now(&self, key: &TaskKey) -> Option<watch::Receiver<bool>> {
        let mut slots = self.slots.lock().expect("task slots");
        match slots.get(key) {
            Some(Slot::Running { cancel, ended }) => {
                cancel.cancel();
                Some(ended.clone())
            }
            Some(Slot::Done(_)) => {
                slots.remove(key);
                None
            }
            None => None,
        }
    }

    /// The keys with a task running or an outcome not yet taken.
    pub fn keys(&self) -> Vec<TaskKey> {
        self.slots.lock().expect("task slots").keys().cloned().collect()
    }

    /// Whether `key` has a task running or an outcome not yet taken.
    pub fn occupied(&self, key: &TaskKey) -> bool {
        self.slots.lock().expect("task slots").contains_key(key)
    }

    /// Waits until `key`'s task, if one runs, has ended.
    pub async fn ended(&self, key: &TaskKey) {
        let ended = match self.slots.lock().expect("task slots").get(key) {
            Some(Slot::Running { ended, .. }) => Some(ended.clone()),
            _ => None,
        };
        if let Some(mut ended) = ended {
            let _ = ended.wait_for(|e| *e).await;
        }
    }

    /// The keys of tasks that ended, as they end.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskKey> {
        self.woken.subscribe()
    }

    /// How many objects have a task running or an outcome not yet taken: work whose end a
    /// reconcile has still to see.
    pub fn pending(&self) -> usize {
        self.slots.lock().expect("task slots").len()
    }

    /// How many tasks are running.
    pub fn running(&self) -> usize {
        self.slots
            .lock()
            .expect("task slots")
            .values()
            .filter(|s| matches!(s, Slot::Running { .. }))
            .count()
    }

    /// Cancels every task and waits up to `limit` until all are dropped; false if some were
    /// still running. Tasks started afterwards run as usual (a driver that runs again).
    pub async fn shutdown(&self, limit: Duration) -> bool {
        let stop = std::mem::take(&mut *self.stop.lock().expect("task stop"));
        stop.cancel();
        self.tracker.close();
        let done = tokio::time::timeout(limit, self.tracker.wait()).await.is_ok();
        self.tracker.reopen();
        done
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn key(name: &str) -> TaskKey {
        TaskKey {
            resource: "nodeimages.image.giantswarm.io".into(),
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn a_task_runs_once_wakes_its_object_and_leaves_its_outcome() {
        let tasks = Tasks::default();
        let mut woken = tasks.subscribe();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        assert!(tasks.start(key("a"), |_| async move {
            wait.await.unwrap();
            42u32
        }));
        assert!(!tasks.start(key("a"), |_| async { 0u32 }), "one task per object");
        assert!(matches!(tasks.take::<u32>(&key("a")), TaskState::Running));
        assert!(matches!(tasks.take::<u32>(&key("b")), TaskState::Idle));
        assert_eq!(tasks.running(), 1);
        go.send(()).unwrap();
        assert_eq!(woken.recv().await.unwrap(), key("a"));
        assert_eq!(tasks.running(), 0);
        assert!(
            !tasks.start(key("a"), |_| async { 0u32 }),
            "the outcome holds the slot"
        );
        assert!(matches!(tasks.take::<u32>(&key("a")), TaskState::Done(42)));
        assert!(matches!(tasks.take::<u32>(&key("a")), TaskState::Idle));
    }

    /// A guard whose drop records that the work was abandoned.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn cancel_drops_the_work_before_it_returns_and_empties_the_slot() {
        let tasks = Tasks::default();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        let (started, on_start) = tokio::sync::oneshot::channel::<()>();
        tasks.start(key("a"), |_| async move {
            let _guard = guard;
            started.send(()).unwrap();
            std::future::pending::<u32>().await
        });
        on_start.await.unwrap();
        assert!(!dropped.load(Ordering::SeqCst));
        assert!(tasks.cancel(&key("a")).await);
        assert!(dropped.load(Ordering::SeqCst), "dropped before cancel returned");
        assert!(matches!(tasks.take::<u32>(&key("a")), TaskState::Idle));
        assert!(!tasks.cancel(&key("a")).await, "nothing left to cancel");
    }

    #[tokio::test]
    async fn cancel_now_fires_at_once_and_drops_an_outcome_not_taken() {
        let tasks = Tasks::default();
        tasks.start(key("run"), |_| std::future::pending::<u32>());
        tasks.start(key("done"), |_| async { 7u32 });
        tasks.ended(&key("done")).await;
        let mut keys = tasks.keys();
        keys.sort();
        assert_eq!(keys, [key("done"), key("run")]);
        assert!(
            tasks.cancel_now(&key("done")).is_none(),
            "an outcome is not a running task"
        );
        assert!(
            matches!(tasks.take::<u32>(&key("done")), TaskState::Idle),
            "the outcome is gone"
        );
        let mut ended = tasks.cancel_now(&key("run")).expect("a running task");
        ended.wait_for(|e| *e).await.unwrap();
        assert!(tasks.keys().is_empty());
        assert!(tasks.cancel_now(&key("nothing")).is_none());
    }

    #[tokio::test]
    async fn shutdown_cancels_everything_then_work_starts_again() {
        let tasks = Tasks::default();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        tasks.start(key("a"), |_| async move {
            let _guard = guard;
            std::future::pending::<u32>().await
        });
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(tasks.running(), 0);
        assert!(tasks.start(key("b"), |_| async { 1u32 }));
        tasks.ended(&key("b")).await;
        assert!(matches!(tasks.take::<u32>(&key("b")), TaskState::Done(1)));
    }
}
