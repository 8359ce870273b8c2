//! The blocking thread an import or an unpacking runs on.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

/// Runs `work` on a blocking thread tracked by `ido_io::cleanup`, with a flag raised when
/// the returned future is dropped (Ctrl-C): the thread then stops and still ends its work
/// (its source gone, it removes or suspends what it made), and a stopping process waits for
/// that. `what` names the thread in the error if it panics.
pub(crate) async fn on_worker<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce(Arc<AtomicBool>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    ido_io::cleanup::spawn_blocking(move || work(stop))
        .await
        .map_err(|e| Error::Io {
            context: what.into(),
            source: io::Error::other(e.to_string()),
        })?
}

/// Raises the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
