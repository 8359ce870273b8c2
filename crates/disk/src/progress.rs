//! Progress reports: source bytes done of total, output position, rate and ETA.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// One progress report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
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
    /// Source bytes per second since the import started (this run's bytes).
    pub rate: f64,
    /// Estimated time left, when the total is known and the rate is not zero.
    pub eta: Option<Duration>,
    /// Time since the import started.
    pub elapsed: Duration,
    /// Whether this is the last report (the import finished).
    pub done: bool,
}

impl Progress {
    /// Percentage done (of the source), when the total is known.
    pub fn percent(&self) -> Option<f64> {
        self.source_total
            .filter(|t| *t > 0)
            .map(|t| (self.source_done as f64 * 100.0 / t as f64).min(100.0))
    }
}

/// The callback that receives reports; called from the conversion thread, so keep it quick.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Throttles reports to one per interval (plus the final one).
pub(crate) struct Reporter {
    callback: Option<ProgressFn>,
    interval: Duration,
    start: Instant,
    last: Option<Instant>,
    pub(crate) state: Progress,
}

impl Reporter {
    pub(crate) fn new(callback: Option<ProgressFn>, interval: Duration) -> Self {
        Self {
            callback,
            interval,
            start: Instant::now(),
            last: None,
            state: Progress::default(),
        }
    }

    /// Reports if the interval has passed since the last report.
    pub(crate) fn tick(&mut self) {
        if self.callback.is_none() {
            return;
        }
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < self.interval) {
            return;
        }
        self.last = Some(now);
        self.emit(now, false);
    }

    /// The final report.
    pub(crate) fn finish(&mut self) {
        if self.callback.is_some() {
            self.emit(Instant::now(), true);
        }
    }

    fn emit(&mut self, now: Instant, done: bool) {
        let elapsed = now.duration_since(self.start);
        let s = &mut self.state;
        s.elapsed = elapsed;
        s.done = done;
        let secs = elapsed.as_secs_f64();
        s.rate = if secs > 0.0 {
            s.source_done.saturating_sub(s.resumed_from) as f64 / secs
        } else {
            0.0
        };
        s.eta = match s.source_total {
            Some(total) if s.rate > 0.0 => Some(Duration::from_secs_f64(
                total.saturating_sub(s.source_done) as f64 / s.rate,
            )),
            _ => None,
        };
        if let Some(cb) = &self.callback {
            cb(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn throttles_and_computes_eta() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let cb: ProgressFn = Arc::new(move |p: &Progress| s2.lock().unwrap().push(p.clone()));
        let mut r = Reporter::new(Some(cb), Duration::from_secs(3600));
        r.state.source_total = Some(100);
        r.state.source_done = 10;
        r.tick();
        r.state.source_done = 50;
        r.tick(); // throttled
        r.finish();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen[1].done);
        assert_eq!(seen[1].percent(), Some(50.0));
        assert!(seen[1].eta.is_some());
    }
}
