//! Progress of a transfer, one way for every byte-moving piece:
//! - [`Progress`]: bytes moved so far, readable while they move: the counter of every
//!   transfer (an upload to a provider, a registry copy), cheap to clone into the streams
//!   that count and the tasks that report;
//! - [`Report`]: one snapshot (done of total, rate, ETA), what a disk import's callback
//!   receives and what a counter reads as ([`Progress::report`]);
//! - `display` (feature `display`, for binaries): the indicatif bar and the plain lines
//!   that show reports.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

#[cfg(feature = "display")]
pub mod display;

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

    /// A snapshot, `elapsed` after the transfer started.
    pub fn report(&self, elapsed: Duration) -> Report {
        let total = self.total();
        let mut r = Report {
            source_done: self.get(),
            source_total: (total > 0).then_some(total),
            ..Report::default()
        };
        r.timed(elapsed, false);
        r
    }
}

/// One progress report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Source bytes received (as fetched, compressed); after an in-process resume each
    /// byte still counts once, and a resumed import counts what the previous run did.
    pub source_done: u64,
    /// Source bytes a previous run had done (a resumed import starts there; 0 otherwise).
    pub resumed_from: u64,
    /// Source size, when the source tells (file length, Content-Length).
    pub source_total: Option<u64>,
    /// The image's virtual size, once known.
    pub virtual_size: Option<u64>,
    /// Highest output offset written so far.
    pub written: u64,
    /// Source bytes per second since the transfer started (this run's bytes).
    pub rate: f64,
    /// Estimated time left, when the total is known and the rate is not zero.
    pub eta: Option<Duration>,
    /// Time since the transfer started.
    pub elapsed: Duration,
    /// Whether this is the last report (the transfer finished).
    pub done: bool,
}

impl Report {
    /// Percentage done (of the source), when the total is known.
    pub fn percent(&self) -> Option<f64> {
        self.source_total
            .filter(|t| *t > 0)
            .map(|t| (self.source_done as f64 * 100.0 / t as f64).min(100.0))
    }

    /// Sets the time fields (elapsed, rate of this run's bytes, ETA) and whether this is
    /// the last report.
    pub fn timed(&mut self, elapsed: Duration, done: bool) {
        self.elapsed = elapsed;
        self.done = done;
        let secs = elapsed.as_secs_f64();
        self.rate = if secs > 0.0 {
            self.source_done.saturating_sub(self.resumed_from) as f64 / secs
        } else {
            0.0
        };
        self.eta = match self.source_total {
            Some(total) if self.rate > 0.0 => Some(Duration::from_secs_f64(
                total.saturating_sub(self.source_done) as f64 / self.rate,
            )),
            _ => None,
        };
    }
}

/// A callback that receives reports; called from the thread doing the work, so keep it
/// quick.
pub type ReportFn = Arc<dyn Fn(&Report) + Send + Sync>;

/// `n` bytes in binary units, one decimal (`1.5 GiB`).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
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

    #[test]
    fn a_counter_reports_its_rate_and_eta() {
        let p = Progress::default();
        p.add_total(300);
        p.add(100);
        let r = p.report(Duration::from_secs(2));
        assert_eq!((r.source_done, r.source_total, r.rate), (100, Some(300), 50.0));
        assert_eq!(r.eta, Some(Duration::from_secs(4)));
        assert_eq!(r.percent().map(|x| x.round()), Some(33.0));
        assert_eq!(Progress::default().report(Duration::ZERO).source_total, None);
    }

    #[test]
    fn a_resumed_transfer_rates_only_this_runs_bytes() {
        let mut r = Report {
            source_done: 150,
            resumed_from: 100,
            source_total: Some(200),
            ..Report::default()
        };
        r.timed(Duration::from_secs(5), true);
        assert_eq!(r.rate, 10.0);
        assert_eq!(r.eta, Some(Duration::from_secs(5)));
        assert!(r.done);
    }

    #[test]
    fn human_units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
