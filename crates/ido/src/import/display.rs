//! The progress of `ido import`: an indicatif bar, plain lines every few seconds, or nothing.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ido_disk::{Progress, ProgressFn};

use crate::progress::{PLAIN_EVERY, ProgressMode, Shown, bytes_bar, human};

/// The progress display: an indicatif bar, plain lines every few seconds, or nothing.
pub(super) enum Display {
    Bar(indicatif::ProgressBar),
    Plain(Arc<Mutex<Option<Instant>>>),
    None,
}

impl Display {
    pub(super) fn new(mode: ProgressMode) -> Self {
        match mode.resolve() {
            Shown::Bar => Display::Bar(bytes_bar()),
            Shown::Plain => Display::Plain(Arc::new(Mutex::new(None))),
            Shown::None => Display::None,
        }
    }

    pub(super) fn callback(&self) -> Option<ProgressFn> {
        match self {
            Display::Bar(bar) => {
                let bar = bar.clone();
                Some(Arc::new(move |p: &Progress| {
                    if let Some(t) = p.source_total {
                        bar.set_length(t);
                    }
                    bar.set_position(p.source_done);
                }))
            }
            Display::Plain(last) => {
                let last = last.clone();
                Some(Arc::new(move |p: &Progress| {
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    if p.done || last.is_some_and(|l| l.elapsed() < PLAIN_EVERY) {
                        return;
                    }
                    *last = Some(Instant::now());
                    eprintln!("{}", plain_line(p));
                }))
            }
            Display::None => None,
        }
    }

    pub(super) fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// A plain progress line (the DiskImport controller reads it back from the log).
pub(super) fn plain_line(p: &Progress) -> String {
    let total = p
        .source_total
        .map(|t| format!(" of {}", human(t)))
        .unwrap_or_default();
    let pct = p.percent().map(|x| format!("{x:.1}% ")).unwrap_or_default();
    let eta = p
        .eta
        .map(|e| format!(", ETA {}s", e.as_secs()))
        .unwrap_or_default();
    format!(
        "import: {pct}{}{total} read, {}/s, {} written{eta}",
        human(p.source_done),
        human(p.rate as u64),
        human(p.written)
    )
}
