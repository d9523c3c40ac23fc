//! The poll stage's pure decisions: what one answered (or unanswered) check leads to, by
//! the table in the module header ([`super`]), and which checks a successor can follow
//! (G4, G6). No IO here, so the policy is unit-tested without a provider.

use crate::core::event::{Failure, InvalidEvent, InvalidKind, StatusCheck};
use crate::core::lifecycle::FailureReason;
use crate::core::schedule::{GiveUp, Next, Schedule};
use crate::provider::CheckOutcome;
use crate::secret::Secret;
use chrono::{DateTime, Utc};

/// What one answered (or unanswered) check leads to. Pure, so that the policy of the table
/// in this module's header is tested without a provider.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Complete {
        pin: Secret,
        attempts: i32,
    },
    Fail {
        failure: Failure,
        attempts: i32,
    },
    /// Still pending: a `processing` event, and the next check.
    Pending {
        attempts: i32,
        due: DateTime<Utc>,
        tier: usize,
    },
    /// No usable answer: check again without using an attempt.
    Retry {
        due: DateTime<Utc>,
        tier: usize,
        /// What the answer was instead, for the chain's record.
        why: String,
    },
}

impl Decision {
    /// One word for metrics: completed, cancelled, deadline, pending or no_answer.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Complete { .. } => "completed",
            Decision::Fail { failure, .. } => failure.reason.as_str(),
            Decision::Pending { .. } => "pending",
            Decision::Retry { .. } => "no_answer",
        }
    }
}

/// Decides what follows `outcome`, the answer to `check` received at `now`.
pub fn decide(
    check: &StatusCheck,
    outcome: CheckOutcome,
    now: DateTime<Utc>,
    schedule: &Schedule,
) -> Decision {
    let answered = check.attempts.saturating_add(1);
    let give_up = |give_up: GiveUp, attempts: i32, detail: String| Decision::Fail {
        failure: Failure {
            reason: FailureReason::Deadline,
            code: None,
            message: match give_up {
                GiveUp::Deadline => format!("not final by the deadline ({detail})"),
                GiveUp::MaxAttempts => format!("still pending after {attempts} checks ({detail})"),
            },
        },
        attempts,
    };
    let pending = |detail: String| match schedule.next(answered as u32, now, check.deadline) {
        Next::Check { due, tier } => Decision::Pending {
            attempts: answered,
            due,
            tier,
        },
        Next::GiveUp(why) => give_up(why, answered, detail),
    };
    match outcome {
        CheckOutcome::Completed { pin } => Decision::Complete {
            pin,
            attempts: answered,
        },
        CheckOutcome::Cancelled { message } => Decision::Fail {
            failure: Failure {
                reason: FailureReason::Cancelled,
                code: None,
                message,
            },
            attempts: answered,
        },
        CheckOutcome::Pending => pending("the provider still processes it".into()),
        CheckOutcome::Unclear { detail } => pending(detail),
        CheckOutcome::NotFound { code, message } => {
            pending(format!("the provider did not find it: {code}|{message}"))
        }
        // A code the account does not list as not-found says nothing about the order (G9).
        CheckOutcome::Refused { code, message } => {
            let detail = format!("the provider refused the check: {code}|{message}");
            match schedule.retry(now, check.deadline) {
                Next::Check { due, tier } => Decision::Retry {
                    due,
                    tier,
                    why: detail,
                },
                Next::GiveUp(why) => give_up(why, check.attempts, detail),
            }
        }
        CheckOutcome::Transient { detail } => match schedule.retry(now, check.deadline) {
            Next::Check { due, tier } => Decision::Retry {
                due,
                tier,
                why: format!("no usable answer: {detail}"),
            },
            Next::GiveUp(why) => give_up(why, check.attempts, detail),
        },
        CheckOutcome::AccountProblem { detail } => match schedule.retry(now, check.deadline) {
            Next::Check { due, tier } => Decision::Retry {
                due,
                tier,
                why: format!("account {} has a problem: {detail}", check.provider_account),
            },
            Next::GiveUp(why) => give_up(why, check.attempts, detail),
        },
    }
}

/// Refuses a check whose next step or next state event could not be numbered: `seq` and
/// `version` come from the message, and one at `i64::MAX` would overflow `seq + 1` here and
/// in `check_chains` (where the error would fail every reconciler pass, not just this order).
pub(super) fn has_successor(check: &StatusCheck) -> Result<(), InvalidEvent> {
    if check.seq == i64::MAX || check.version == i64::MAX {
        return Err(InvalidEvent::new(
            InvalidKind::InvalidField,
            "seq and version must be below 9223372036854775807 (they are counted up)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::SCHEMA_VERSION;
    use uuid::Uuid;

    fn check(attempts: i32, deadline_in: i64) -> (StatusCheck, DateTime<Utc>) {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let check = StatusCheck {
            schema_version: SCHEMA_VERSION,
            order_id: Uuid::new_v4(),
            tenant_id: "shop-1".into(),
            provider_account: "znet-main".into(),
            provider_reference: "100000042".into(),
            dispatched_at: now,
            deadline: now + chrono::Duration::seconds(deadline_in),
            seq: 3,
            attempts,
            due_at: now,
            version: 4,
            created_at: None,
        };
        (check, now)
    }

    #[test]
    fn a_check_whose_successor_cannot_be_numbered_is_refused() {
        let (mut c, now) = check(i32::MAX, 3600);
        assert!(has_successor(&c).is_ok());
        // Attempts saturate instead of overflowing.
        let d = decide(&c, CheckOutcome::Pending, now, &Schedule::default());
        assert!(
            matches!(
                d,
                Decision::Pending {
                    attempts: i32::MAX,
                    ..
                }
            ),
            "{d:?}"
        );
        c.seq = i64::MAX;
        assert!(has_successor(&c).is_err());
        c.seq = 3;
        c.version = i64::MAX;
        assert!(has_successor(&c).is_err());
    }

    #[test]
    fn a_pending_answer_uses_an_attempt_and_moves_up_a_tier() {
        let (c, now) = check(2, 3600);
        let s = Schedule::default();
        assert_eq!(
            decide(&c, CheckOutcome::Pending, now, &s),
            Decision::Pending {
                attempts: 3,
                due: now + chrono::Duration::seconds(120),
                tier: 2
            }
        );
    }

    #[test]
    fn no_answer_uses_no_attempt() {
        let (c, now) = check(2, 3600);
        let d = decide(
            &c,
            CheckOutcome::Transient {
                detail: "503".into(),
            },
            now,
            &Schedule::default(),
        );
        assert_eq!(
            d,
            Decision::Retry {
                due: now + chrono::Duration::seconds(30),
                tier: 0,
                why: "no usable answer: 503".into(),
            }
        );
    }

    #[test]
    fn an_unlisted_error_code_is_no_answer_not_not_found() {
        let (c, now) = check(2, 3600);
        let d = decide(
            &c,
            CheckOutcome::Refused {
                code: "12".into(),
                message: "Sistem meşgul".into(),
            },
            now,
            &Schedule::default(),
        );
        assert_eq!(
            d,
            Decision::Retry {
                due: now + chrono::Duration::seconds(30),
                tier: 0,
                why: "the provider refused the check: 12|Sistem meşgul".into(),
            },
            "no attempt used"
        );
    }

    #[test]
    fn final_answers_end_the_chain() {
        let (c, now) = check(0, 3600);
        let s = Schedule::default();
        let pin = Secret::new("ABCD-1234");
        assert_eq!(
            decide(&c, CheckOutcome::Completed { pin: pin.clone() }, now, &s),
            Decision::Complete { pin, attempts: 1 }
        );
        let Decision::Fail { failure, .. } = decide(
            &c,
            CheckOutcome::Cancelled {
                message: "stok yok".into(),
            },
            now,
            &s,
        ) else {
            panic!("not failed")
        };
        assert_eq!(failure.reason, FailureReason::Cancelled);
    }

    #[test]
    fn at_the_deadline_pending_and_no_answer_both_fail() {
        let (c, now) = check(5, 0);
        let s = Schedule::default();
        for outcome in [
            CheckOutcome::Pending,
            CheckOutcome::Transient {
                detail: "timeout".into(),
            },
        ] {
            let Decision::Fail { failure, .. } = decide(&c, outcome, now, &s) else {
                panic!("not failed")
            };
            assert_eq!(failure.reason, FailureReason::Deadline);
        }
        // A completed answer still wins at the deadline.
        assert!(matches!(
            decide(
                &c,
                CheckOutcome::Completed {
                    pin: Secret::new("X")
                },
                now,
                &s
            ),
            Decision::Complete { .. }
        ));
    }
}
