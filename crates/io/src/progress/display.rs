//! Showing progress on stderr: an indicatif bar on a terminal, a plain line every few
//! seconds otherwise (what logs and the DiskImport controller read), or nothing.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Report;

/// Least time between two plain progress lines.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    Bar,
    Plain,
    None,
}

impl Shown {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Shown::Bar
        } else {
            Shown::Plain
        }
    }
}

/// Shows reports as `shown` says; plain lines are written by `line`.
pub struct Display {
    inner: Inner,
}

enum Inner {
    Bar(indicatif::ProgressBar),
    Plain {
        last: Mutex<Option<Instant>>,
        line: fn(&Report) -> String,
    },
    None,
}

impl Display {
    pub fn new(shown: Shown, line: fn(&Report) -> String) -> Self {
        let inner = match shown {
            Shown::Bar => Inner::Bar(bytes_bar()),
            Shown::Plain => Inner::Plain {
                last: Mutex::new(None),
                line,
            },
            Shown::None => Inner::None,
        };
        Self { inner }
    }

    /// What this display shows.
    pub fn shown(&self) -> Shown {
        match self.inner {
            Inner::Bar(_) => Shown::Bar,
            Inner::Plain { .. } => Shown::Plain,
            Inner::None => Shown::None,
        }
    }

    /// Shows `r`: moves the bar, or writes a plain line unless one was written less than
    /// [`PLAIN_EVERY`] ago (the last report writes none: the caller says how it ended).
    pub fn show(&self, r: &Report) {
        match &self.inner {
            Inner::Bar(bar) => {
                if let Some(t) = r.source_total {
                    bar.set_length(t);
                }
                bar.set_position(r.source_done);
            }
            Inner::Plain { last, line } => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if r.done || last.is_some_and(|l| l.elapsed() < PLAIN_EVERY) {
                    return;
                }
                *last = Some(Instant::now());
                eprintln!("{}", line(r));
            }
            Inner::None => {}
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Inner::Bar(bar) = &self.inner {
            bar.finish_and_clear();
        }
    }
}

/// A byte-counting bar on stderr: done/total, rate, ETA.
fn bytes_bar() -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_is_what_it_was_asked_to_be() {
        let line: fn(&Report) -> String = |r| format!("{}", r.source_done);
        assert_eq!(Display::new(Shown::Plain, line).shown(), Shown::Plain);
        assert_eq!(Display::new(Shown::None, line).shown(), Shown::None);
        let d = Display::new(Shown::None, line);
        d.show(&Report::default());
        d.finish();
    }
}
