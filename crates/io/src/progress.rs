//! Bytes moved so far, readable while they move: one counter for every transfer (an upload
//! to a provider, a registry copy), cheap to clone into the streams that count and the
//! tasks that report. How progress is shown (bar, plain lines) is the binary's business.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// Bytes done (and, when known, the total) of one transfer. Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

impl Progress {
    /// Counts `n` more bytes done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes back `n` bytes (a failed attempt whose bytes will be sent again).
    pub fn take_back(&self, n: u64) {
        let _ = self.done.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
            Some(d.saturating_sub(n))
        });
    }

    /// Bytes done so far.
    pub fn get(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The total, 0 while unknown.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Adds `n` bytes to the total (as the parts of the transfer become known).
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_counts_and_taking_back_stops_at_zero() {
        let p = Progress::default();
        let q = p.clone();
        q.add(10);
        p.add_total(30);
        assert_eq!((p.get(), p.total()), (10, 30));
        p.take_back(4);
        assert_eq!(q.get(), 6);
        q.take_back(100);
        assert_eq!(p.get(), 0);
    }
}
