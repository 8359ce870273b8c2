//! The `--progress` flag of the byte-moving commands (`ido copy`, `ido import`); ido-io's
//! [`ido_io::progress::display`] shows the reports.

use clap::ValueEnum;
use ido_io::progress::display::Shown;

/// How progress is shown (`--progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    Bar,
    Plain,
    None,
}

impl ProgressMode {
    pub(crate) fn resolve(self) -> Shown {
        match self {
            ProgressMode::Auto => Shown::auto(),
            ProgressMode::Bar => Shown::Bar,
            ProgressMode::Plain => Shown::Plain,
            ProgressMode::None => Shown::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_modes_do_not_depend_on_the_terminal() {
        assert_eq!(ProgressMode::Bar.resolve(), Shown::Bar);
        assert_eq!(ProgressMode::Plain.resolve(), Shown::Plain);
        assert_eq!(ProgressMode::None.resolve(), Shown::None);
    }
}
