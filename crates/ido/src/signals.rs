//! Stopping on SIGINT (Ctrl-C) and SIGTERM.
//!
//! The first signal stops the command: `ido run` stops starting work and stops what runs,
//! `ido operator` shuts down cleanly, the other commands are stopped where they are. What
//! was half-made (an NFC lease and its VM, a Cloud Director upload, a partial import target)
//! is cleaned up by its guard through `ido_io::cleanup`, which is waited for, up to
//! [`CLEANUP_LIMIT`]. The process then exits 130 (SIGINT) or 143 (SIGTERM), as shells report
//! a command a signal ended; `ido operator` exits 0 after a clean stop, as controllers do.
//! A second signal exits at once.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// How long a stopping process waits for its clean-up.
pub(crate) const CLEANUP_LIMIT: Duration = Duration::from_secs(25);

/// A stopping signal.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stop {
    Interrupt,
    Terminate,
}

impl Stop {
    /// The exit status of a command a signal ended: 128 + the signal's number.
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Stop::Interrupt => 130,
            Stop::Terminate => 143,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
        }
    }
}

/// The process's SIGINT and SIGTERM, listened to from the start (a signal that arrives
/// before [`Signals::recv`] is awaited is not lost).
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    pub(crate) fn listen() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    pub(crate) async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.int.recv() => Stop::Interrupt,
            _ = self.term.recv() => Stop::Terminate,
        }
    }
}
