//! Riding out outages: which failures of the broker or the database waiting can cure (a
//! broker restarting, a leader election, a coordinator moving, PostgreSQL restarting or
//! failing over) and which it cannot (bad credentials, a database that does not exist), and
//! the patience clock that says how long a stage waits before it gives up.
//!
//! A stage that meets a curable failure keeps running, says not ready on `/readyz`, and
//! resumes when the dependency answers again; only when the outage lasted longer than its
//! patience (`ORDERFLOW_OUTAGE_PATIENCE`), or the failure is one waiting cannot cure, does
//! it exit, with one sentence. Pure: the caller supplies the time and the error's class.

use std::time::{Duration, Instant};

/// Whether waiting can cure a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The dependency is away or busy and will answer again: wait.
    Transient,
    /// The same request will fail again however long one waits (credentials refused, the
    /// thing asked for does not exist): stop with one sentence.
    Fatal,
}

/// PostgreSQL's verdict by SQLSTATE: class 28 (invalid authorization: a wrong password, a
/// role that may not log in) and 3D000 (the database does not exist) are fatal; the rest of
/// what a connection or a statement of a healthy program meets during an outage is not:
/// 08 (connection exceptions), 57P01-57P03 (administrator shutdown, crash shutdown, cannot
/// connect now: a restart or a promotion in progress), 53 (insufficient resources: too many
/// connections), 40 (serialization failures), 25006 (a read-only transaction: a standby not
/// promoted yet).
pub fn sqlstate_fault(code: &str) -> Fault {
    if code.starts_with("28") || code == "3D000" {
        Fault::Fatal
    } else {
        Fault::Transient
    }
}

/// What the patience clock says about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep waiting: the outage has lasted `down`, `left` remains of the patience.
    Wait { down: Duration, left: Duration },
    /// The outage outlasted the patience, or waiting cannot cure it: stop.
    GiveUp { down: Duration },
}

/// One dependency's outage clock: since when it has been failing, if it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outage {
    since: Option<Instant>,
}

impl Outage {
    /// A failure at `now`: the outage starts (or goes on), and the verdict under `patience`.
    pub fn failed(&mut self, fault: Fault, now: Instant, patience: Duration) -> Verdict {
        let since = *self.since.get_or_insert(now);
        let down = now.saturating_duration_since(since);
        match fault {
            Fault::Fatal => Verdict::GiveUp { down },
            Fault::Transient if down >= patience => Verdict::GiveUp { down },
            Fault::Transient => Verdict::Wait {
                down,
                left: patience - down,
            },
        }
    }

    /// The dependency answered at `now`: the outage, if there was one, is over; returns how
    /// long it lasted.
    pub fn answered(&mut self, now: Instant) -> Option<Duration> {
        self.since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }

    /// Whether the dependency is failing now.
    pub fn is_down(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(300);

    #[test]
    fn credentials_and_a_missing_database_are_fatal_everything_else_waits() {
        for code in ["28P01", "28000", "3D000"] {
            assert_eq!(sqlstate_fault(code), Fault::Fatal, "{code}");
        }
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "40001", "25006", "XX000",
        ] {
            assert_eq!(sqlstate_fault(code), Fault::Transient, "{code}");
        }
    }

    #[test]
    fn a_transient_outage_is_waited_out_until_the_patience_is_spent() {
        let t0 = Instant::now();
        let mut outage = Outage::default();
        assert!(!outage.is_down());
        assert_eq!(
            outage.failed(Fault::Transient, t0, PATIENCE),
            Verdict::Wait {
                down: Duration::ZERO,
                left: PATIENCE
            }
        );
        assert!(outage.is_down());
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            outage.failed(Fault::Transient, later, PATIENCE),
            Verdict::Wait {
                down: Duration::from_secs(100),
                left: Duration::from_secs(200)
            }
        );
        let spent = t0 + PATIENCE;
        assert_eq!(
            outage.failed(Fault::Transient, spent, PATIENCE),
            Verdict::GiveUp { down: PATIENCE }
        );
    }

    #[test]
    fn an_answer_ends_the_outage_and_the_next_one_starts_afresh() {
        let t0 = Instant::now();
        let mut outage = Outage::default();
        assert_eq!(outage.answered(t0), None);
        outage.failed(Fault::Transient, t0, PATIENCE);
        let back = t0 + Duration::from_secs(250);
        assert_eq!(outage.answered(back), Some(Duration::from_secs(250)));
        assert!(!outage.is_down());
        // 250 s of the first outage do not count against the second.
        let again = back + Duration::from_secs(1);
        outage.failed(Fault::Transient, again, PATIENCE);
        assert!(matches!(
            outage.failed(Fault::Transient, again + Duration::from_secs(100), PATIENCE),
            Verdict::Wait { .. }
        ));
    }

    #[test]
    fn a_fatal_failure_gives_up_at_once() {
        let t0 = Instant::now();
        let mut outage = Outage::default();
        assert_eq!(
            outage.failed(Fault::Fatal, t0, PATIENCE),
            Verdict::GiveUp {
                down: Duration::ZERO
            }
        );
    }
}
