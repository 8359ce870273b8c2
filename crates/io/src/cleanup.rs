//! Clean-up that outlives the work it undoes.
//!
//! When an upload or an import is abandoned (its future dropped: a failure elsewhere, a
//! shutdown, Ctrl-C), its guard cannot `await` in `Drop`; it hands the clean-up (abort a
//! lease, remove a half-made template, remove a partial file) to [`spawn`] or
//! [`spawn_blocking`]. These tasks are tracked, so a process that is stopping waits for
//! them with [`finish`] before it exits instead of leaving the half-made things behind.

use std::{future::Future, sync::LazyLock, time::Duration};

use tokio_util::task::TaskTracker;

static TRACKER: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Runs `cleanup` in the background on the current runtime, tracked. Returns false (and
/// drops it) when there is no runtime to run it on.
pub fn spawn(cleanup: impl Future<Output = ()> + Send + 'static) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            TRACKER.spawn_on(cleanup, &rt);
            true
        }
        Err(_) => false,
    }
}

/// Runs blocking work whose end must be waited for at exit (a conversion thread that
/// removes or keeps its partial target when its source goes away), tracked.
pub fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    TRACKER.spawn_blocking(f)
}

/// How many tracked tasks are still running.
pub fn pending() -> usize {
    TRACKER.len()
}

/// Waits up to `limit` for every tracked task to end; false if some were still running.
/// New tasks can still be tracked afterwards.
pub async fn finish(limit: Duration) -> bool {
    TRACKER.close();
    let done = tokio::time::timeout(limit, TRACKER.wait()).await.is_ok();
    TRACKER.reopen();
    done
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    struct Guard(Arc<AtomicBool>);

    impl Drop for Guard {
        fn drop(&mut self) {
            let done = self.0.clone();
            spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                done.store(true, Ordering::SeqCst);
            });
        }
    }

    #[tokio::test]
    async fn a_dropped_guard_is_cleaned_up_before_finish_returns() {
        let done = Arc::new(AtomicBool::new(false));
        let work = {
            let g = Guard(done.clone());
            async move {
                let _g = g;
                std::future::pending::<()>().await
            }
        };
        // The work is abandoned half-way.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), work)
                .await
                .is_err()
        );
        assert!(
            !done.load(Ordering::SeqCst),
            "the clean-up runs in the background"
        );
        assert!(finish(Duration::from_secs(5)).await);
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(pending(), 0);
    }
}
