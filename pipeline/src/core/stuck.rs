//! When an unfinished order is **stuck**: it has not moved for longer than its schedule
//! explains (`orderflow order list --stuck`, the status page). Pure: the facts come from
//! the tables (`crate::db::find` reads them), the rule is here.
//!
//! Every unfinished order waits for one next step, and the schedule says by when that step
//! is due:
//!
//! | where the order is ([`Progress`])            | its next step is due at ([`Progress::due`])        |
//! |----------------------------------------------|----------------------------------------------------|
//! | not placed yet (claim `new` or `placing`)    | its last placement attempt + `placement_wait`      |
//! | placed, no status check started             | its placement + the schedule's `first_check`       |
//! | a check done, the next one waiting on a tier | the chain's `next_check_at`                        |
//! | a check being made by a poll worker          | the end of that worker's lease                     |
//!
//! The order is stuck once `now` is past that time by more than `grace`, and is then
//! `now - due` overdue. `placement_wait` is the longest the dispatch stage's own schedule
//! lets an order wait between two placement attempts: its parking maximum
//! (`ORDERFLOW_DISPATCH_PARK_MAX_MS`, 10 min by default; retries in process and an open
//! breaker's rest are shorter). A check's tier delay and the deadline are already in
//! `next_check_at` (the poll stage never schedules a check past the deadline), so an order
//! that is not final shortly after its deadline is stuck by the same rule. `grace` absorbs
//! the delay topics' granularity and a busy stage's lag; the reconciler uses the same idea
//! (`ORDERFLOW_RECONCILE_GRACE`) to re-enqueue checks, so an order stuck in a check phase is
//! one the reconciler should already have brought back.
//!
//! An order whose attempts keep failing (an account answering code 8, a provider timing
//! out) is not stuck while the attempts come on schedule: it is *held up*, which
//! `order show` names with `failing_since`. Final orders are never stuck.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// What the schedule explains: how long each step may take before the order counts as
/// stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// From placement to the first status check (the schedule's `first_check`).
    pub first_check: Duration,
    /// The longest wait between two placement attempts (the dispatch stage's parking
    /// maximum).
    pub placement_wait: Duration,
    /// How far past its due time a step may be before the order is stuck.
    pub grace: Duration,
}

impl Default for Allowance {
    /// The stages' defaults: first check 60 s, parking maximum 10 min, grace 2 min.
    fn default() -> Self {
        Allowance {
            first_check: Duration::from_secs(60),
            placement_wait: Duration::from_secs(600),
            grace: Duration::from_secs(120),
        }
    }
}

/// Where an unfinished order is, as its tables record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not placed yet; its claim was made or its last placement attempt began at
    /// `last_attempt`.
    Placing { last_attempt: DateTime<Utc> },
    /// Placed at `placed_at`; its first status check has not started.
    Placed { placed_at: DateTime<Utc> },
    /// A status check is done; the next is due at `next_check_at`.
    Waiting { next_check_at: DateTime<Utc> },
    /// A poll worker is making a check under a lease that ends at `lease_until`.
    Checking { lease_until: DateTime<Utc> },
}

/// Which step a stuck order is waiting for; its `as_str` is the word in `order list` and
/// in JSON (`stuck.step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Placement,
    FirstCheck,
    NextCheck,
    Check,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Placement => "placement",
            Step::FirstCheck => "first_check",
            Step::NextCheck => "next_check",
            Step::Check => "check",
        }
    }
}

/// A stuck order: the step it waits for, when that step was due, and by how much it is
/// overdue now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub step: Step,
    pub due: DateTime<Utc>,
    pub overdue: Duration,
}

fn plus(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Progress {
    /// The step the order waits for.
    pub fn step(&self) -> Step {
        match self {
            Progress::Placing { .. } => Step::Placement,
            Progress::Placed { .. } => Step::FirstCheck,
            Progress::Waiting { .. } => Step::NextCheck,
            Progress::Checking { .. } => Step::Check,
        }
    }

    /// When the schedule expects the order's next step (the table in the module header).
    pub fn due(&self, allowance: &Allowance) -> DateTime<Utc> {
        match *self {
            Progress::Placing { last_attempt } => plus(last_attempt, allowance.placement_wait),
            Progress::Placed { placed_at } => plus(placed_at, allowance.first_check),
            Progress::Waiting { next_check_at } => next_check_at,
            Progress::Checking { lease_until } => lease_until,
        }
    }

    /// `Some` when the order is stuck at `now`: its next step is overdue by more than the
    /// grace.
    pub fn stuck(&self, now: DateTime<Utc>, allowance: &Allowance) -> Option<Stuck> {
        let due = self.due(allowance);
        let overdue = (now - due).to_std().ok()?;
        (overdue > allowance.grace).then_some(Stuck {
            step: self.step(),
            due,
            overdue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    const MIN: i64 = 60;

    #[test]
    fn each_step_is_due_as_its_schedule_says() {
        let a = Allowance::default();
        assert_eq!(
            Progress::Placing {
                last_attempt: at(0)
            }
            .due(&a),
            at(10 * MIN)
        );
        assert_eq!(Progress::Placed { placed_at: at(0) }.due(&a), at(MIN));
        assert_eq!(
            Progress::Waiting {
                next_check_at: at(7)
            }
            .due(&a),
            at(7)
        );
        assert_eq!(Progress::Checking { lease_until: at(9) }.due(&a), at(9));
    }

    #[test]
    fn an_order_is_stuck_only_past_its_due_time_and_the_grace() {
        let a = Allowance::default();
        let waiting = Progress::Waiting {
            next_check_at: at(0),
        };
        // Due, and overdue by up to the grace: on schedule.
        assert_eq!(waiting.stuck(at(-5), &a), None);
        assert_eq!(waiting.stuck(at(0), &a), None);
        assert_eq!(waiting.stuck(at(2 * MIN), &a), None);
        // A second past the grace: stuck, overdue by the whole wait.
        assert_eq!(
            waiting.stuck(at(2 * MIN + 1), &a),
            Some(Stuck {
                step: Step::NextCheck,
                due: at(0),
                overdue: Duration::from_secs(121),
            })
        );
    }

    #[test]
    fn a_placement_retried_on_schedule_is_not_stuck() {
        // An order parked for the longest wait (10 min) and not yet tried again is on
        // schedule; one not tried for 12 min and 1 s is stuck.
        let a = Allowance::default();
        let placing = Progress::Placing {
            last_attempt: at(0),
        };
        assert_eq!(placing.stuck(at(12 * MIN), &a), None);
        let stuck = placing.stuck(at(12 * MIN + 1), &a).unwrap();
        assert_eq!(stuck.step, Step::Placement);
        assert_eq!(stuck.overdue, Duration::from_secs(2 * 60 + 1));
    }

    #[test]
    fn a_first_check_that_never_started_is_stuck_after_first_check_and_grace() {
        let a = Allowance {
            first_check: Duration::from_secs(2),
            placement_wait: Duration::from_secs(5),
            grace: Duration::from_secs(1),
        };
        let placed = Progress::Placed { placed_at: at(0) };
        assert_eq!(placed.stuck(at(3), &a), None);
        assert_eq!(
            placed.stuck(at(4), &a).map(|s| s.step),
            Some(Step::FirstCheck)
        );
    }

    fn progress() -> impl Strategy<Value = Progress> {
        (0u8..4, -100_000i64..100_000).prop_map(|(kind, t)| match kind {
            0 => Progress::Placing {
                last_attempt: at(t),
            },
            1 => Progress::Placed { placed_at: at(t) },
            2 => Progress::Waiting {
                next_check_at: at(t),
            },
            _ => Progress::Checking { lease_until: at(t) },
        })
    }

    fn allowance() -> impl Strategy<Value = Allowance> {
        (0u64..10_000, 0u64..10_000, 0u64..10_000).prop_map(|(f, p, g)| Allowance {
            first_check: Duration::from_secs(f),
            placement_wait: Duration::from_secs(p),
            grace: Duration::from_secs(g),
        })
    }

    proptest! {
        #[test]
        fn stuck_means_overdue_by_more_than_the_grace(
            p in progress(), a in allowance(), now in -200_000i64..200_000,
        ) {
            let due = p.due(&a);
            match p.stuck(at(now), &a) {
                Some(s) => {
                    prop_assert_eq!(s.due, due);
                    prop_assert!(s.overdue > a.grace);
                    prop_assert_eq!(at(now) - due, chrono::Duration::from_std(s.overdue).unwrap());
                }
                None => prop_assert!(at(now) - due <= chrono::Duration::from_std(a.grace).unwrap()),
            }
        }

        #[test]
        fn a_stuck_order_stays_stuck_as_time_passes(
            p in progress(), a in allowance(), now in -200_000i64..200_000, later in 0i64..100_000,
        ) {
            if let Some(s) = p.stuck(at(now), &a) {
                let after = p.stuck(at(now + later), &a).expect("still stuck");
                prop_assert!(after.overdue >= s.overdue);
            }
        }
    }
}
