//! Progress display shared by the byte-moving commands (`ido copy`, `ido import`): an
//! indicatif bar on a terminal, plain lines every few seconds otherwise, or nothing.

use std::{io::IsTerminal, time::Duration};

use clap::ValueEnum;

/// How progress is shown (`--progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    Bar,
    Plain,
    None,
}

/// Least time between two plain progress lines.
pub(crate) const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// What `mode` resolves to on this stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shown {
    Bar,
    Plain,
    None,
}

impl ProgressMode {
    pub(crate) fn resolve(self) -> Shown {
        match self {
            ProgressMode::Bar => Shown::Bar,
            ProgressMode::Auto if std::io::stderr().is_terminal() => Shown::Bar,
            ProgressMode::Auto | ProgressMode::Plain => Shown::Plain,
            ProgressMode::None => Shown::None,
        }
    }
}

/// A byte-counting bar on stderr: done/total, rate, ETA.
pub(crate) fn bytes_bar() -> indicatif::ProgressBar {
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

/// `n` bytes in binary units, one decimal (`1.5 GiB`).
pub(crate) fn human(n: u64) -> String {
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
    fn human_units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn explicit_modes_do_not_depend_on_the_terminal() {
        assert_eq!(ProgressMode::Bar.resolve(), Shown::Bar);
        assert_eq!(ProgressMode::Plain.resolve(), Shown::Plain);
        assert_eq!(ProgressMode::None.resolve(), Shown::None);
    }
}
