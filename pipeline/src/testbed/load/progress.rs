//! The load run's live progress line on stderr.

use super::Snapshot;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

/// The live progress line: rewritten in place on a terminal, a line every 5 s otherwise.
pub(super) struct Progress {
    tty: bool,
}

impl Progress {
    pub(super) fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// `last` shows the line whatever the time (the closing one).
    pub(super) fn show(&self, now: &Snapshot, open: usize, last: bool) {
        let secs = now.at.round() as u64;
        if !self.tty && !last && secs % 5 != 0 {
            return;
        }
        let mut line = format!(
            "[{secs:>4}s] created {} | dispatched {} | completed {} | failed {} | dead-lettered {} | open {open}",
            now.published, now.dispatched, now.completed, now.failed, now.dead_lettered,
        );
        if !now.waiting.is_empty() {
            line.push_str(" | waiting");
            for (tier, n) in &now.waiting {
                let _ = write!(line, " {tier}:{n}");
            }
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    pub(super) fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
