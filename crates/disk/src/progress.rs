//! Progress reports (ido-io's [`Report`]: source bytes done of total, output position,
//! rate and ETA), throttled to one per interval.

use std::time::{Duration, Instant};

pub(crate) use ido_io::progress::{Report, ReportFn};

/// Throttles reports to one per interval (plus the final one).
pub(crate) struct Reporter {
    callback: Option<ReportFn>,
    interval: Duration,
    start: Instant,
    last: Option<Instant>,
    pub(crate) state: Report,
}

impl Reporter {
    pub(crate) fn new(callback: Option<ReportFn>, interval: Duration) -> Self {
        Self {
            callback,
            interval,
            start: Instant::now(),
            last: None,
            state: Report::default(),
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
        self.state.timed(now.duration_since(self.start), done);
        if let Some(cb) = &self.callback {
            cb(&self.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn throttles_and_computes_eta() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let cb: ReportFn = Arc::new(move |p: &Report| s2.lock().unwrap().push(p.clone()));
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
