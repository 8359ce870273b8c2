//! The progress of `ido import`: ido-io's display (a bar, plain lines every few seconds, or
//! nothing), fed by the import's reports.

use std::sync::Arc;

use ido_disk::{Report, ReportFn};
use ido_io::progress::{display::Display, human};

use crate::progress::ProgressMode;

/// The display for `mode` and the callback that feeds it (none when nothing is shown).
pub(super) fn display(mode: ProgressMode) -> (Arc<Display>, Option<ReportFn>) {
    let display = Arc::new(Display::new(mode.resolve(), plain_line));
    let callback = (display.shown() != ido_io::progress::display::Shown::None).then(|| {
        let d = display.clone();
        Arc::new(move |r: &Report| d.show(r)) as ReportFn
    });
    (display, callback)
}

/// A plain progress line (the DiskImport controller reads it back from the log).
pub(super) fn plain_line(p: &Report) -> String {
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
