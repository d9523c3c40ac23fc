//! What a decision makes, before anything is sent: the state event to publish, the next
//! check step and its tier topic, and the record that ends the step on its chain (G2, G4,
//! G6). A completed order's PIN is sealed here, so it is never published in clear. No IO
//! besides the clock given in, so every arm is unit-tested.

use super::Decision;
use crate::core::event::{OrderStateEvent, StatusCheck, SCHEMA_VERSION};
use crate::core::lifecycle::{version, OrderState};
use crate::db::chains::StepEnd;
use crate::pin::PinKeys;
use chrono::{DateTime, Utc};

/// The state event to publish (none when no attempt was used), the next check step with
/// its tier topic (none when the chain ends), and the chain's record of the step.
pub type Effects = (
    Option<OrderStateEvent>,
    Option<(String, StatusCheck)>,
    StepEnd,
);

/// The state event, the next message and the chain's record that `decision` makes, at
/// `now`; `tier_topics` and `tier_labels` name each tier of the schedule.
pub fn effects(
    check: &StatusCheck,
    decision: Decision,
    now: DateTime<Utc>,
    keys: &PinKeys,
    tier_topics: &[String],
    tier_labels: &[String],
) -> Effects {
    let version = version::after(check.version);
    let id = check.order_id;
    match decision {
        Decision::Complete { pin, attempts } => {
            tracing::debug!(order_id = %id, reference = %check.provider_reference, attempts, "order completed");
            let event = OrderStateEvent {
                pin: Some(keys.seal(id, &pin)),
                ..state_event(check, OrderState::Completed, attempts, version, now)
            };
            (
                Some(event),
                None,
                ended(attempts, version, OrderState::Completed),
            )
        }
        Decision::Fail { failure, attempts } => {
            tracing::info!(order_id = %id, reference = %check.provider_reference, attempts, reason = failure.reason.as_str(), detail = %failure.message, "order failed");
            let event = OrderStateEvent {
                failure: Some(failure),
                ..state_event(check, OrderState::Failed, attempts, version, now)
            };
            (
                Some(event),
                None,
                ended(attempts, version, OrderState::Failed),
            )
        }
        Decision::Pending {
            attempts,
            due,
            tier,
        } => {
            tracing::debug!(order_id = %id, attempts, due = %due, "order pending");
            let event = OrderStateEvent {
                next_check_at: Some(due),
                ..state_event(check, OrderState::Processing, attempts, version, now)
            };
            let end = waiting(attempts, version, due, &tier_labels[tier], None);
            let next = next_step(check, attempts, version, due, &tier_topics[tier]);
            (Some(event), Some(next), end)
        }
        Decision::Retry { due, tier, why } => {
            tracing::debug!(order_id = %id, due = %due, %why, "no usable answer from the provider; checking again without using an attempt");
            let (attempts, version) = (check.attempts, check.version);
            let end = waiting(attempts, version, due, &tier_labels[tier], Some(why));
            let next = next_step(check, attempts, version, due, &tier_topics[tier]);
            (None, Some(next), end)
        }
    }
}

/// The order's state event after `check`, numbered `version`.
fn state_event(
    check: &StatusCheck,
    state: OrderState,
    attempts: i32,
    version: i64,
    now: DateTime<Utc>,
) -> OrderStateEvent {
    OrderStateEvent {
        schema_version: SCHEMA_VERSION,
        order_id: check.order_id,
        tenant_id: check.tenant_id.clone(),
        provider_account: check.provider_account.clone(),
        provider_reference: Some(check.provider_reference.clone()),
        state,
        failure: None,
        pin: None,
        attempts,
        next_check_at: None,
        deadline: Some(check.deadline),
        version,
        changed_at: now,
    }
}

/// The step after `check`, due at `due`, on the tier topic `topic`.
fn next_step(
    check: &StatusCheck,
    attempts: i32,
    version: i64,
    due: DateTime<Utc>,
    topic: &str,
) -> (String, StatusCheck) {
    let next = StatusCheck {
        // `decode` refused a check without a successor, so this never saturates.
        seq: check.seq.saturating_add(1),
        attempts,
        due_at: due,
        version,
        ..check.clone()
    };
    (topic.to_string(), next)
}

/// The record of a step whose chain goes on: its next step waits on the tier `tier`.
fn waiting(
    attempts: i32,
    version: i64,
    due: DateTime<Utc>,
    tier: &str,
    error: Option<String>,
) -> StepEnd {
    StepEnd {
        attempts,
        version,
        next_check_at: Some(due),
        final_state: None,
        tier: Some(tier.to_string()),
        error,
    }
}

/// The record of a step that ended its chain in `state`.
fn ended(attempts: i32, version: i64, state: OrderState) -> StepEnd {
    StepEnd {
        attempts,
        version,
        next_check_at: None,
        final_state: Some(state),
        tier: None,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Failure;
    use crate::core::lifecycle::FailureReason;
    use crate::secret::Secret;
    use uuid::Uuid;

    fn check() -> StatusCheck {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        StatusCheck {
            schema_version: SCHEMA_VERSION,
            order_id: Uuid::new_v4(),
            tenant_id: "shop-1".into(),
            provider_account: "znet-main".into(),
            provider_reference: "100000042".into(),
            dispatched_at: now,
            deadline: now + chrono::Duration::seconds(3600),
            seq: 3,
            attempts: 2,
            due_at: now,
            version: 4,
            created_at: None,
        }
    }

    fn made(decision: Decision) -> Effects {
        let keys = PinKeys::parse("k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let topics = ["t.30s".to_string(), "t.1m".to_string()];
        let labels = ["30s".to_string(), "1m".to_string()];
        let now = DateTime::from_timestamp(1_800_000_010, 0).unwrap();
        effects(&check(), decision, now, &keys, &topics, &labels)
    }

    #[test]
    fn pending_publishes_processing_and_the_next_step_on_its_tier() {
        let c = check();
        let due = c.due_at + chrono::Duration::seconds(60);
        let (state, next, end) = made(Decision::Pending {
            attempts: 3,
            due,
            tier: 1,
        });
        let state = state.expect("a state event");
        assert_eq!(state.state, OrderState::Processing);
        assert_eq!((state.attempts, state.version), (3, version::after(4)));
        assert_eq!(state.next_check_at, Some(due));
        let (topic, next) = next.expect("a next step");
        assert_eq!(topic, "t.1m");
        assert_eq!((next.seq, next.attempts, next.due_at), (4, 3, due));
        assert_eq!(next.version, version::after(4));
        assert_eq!(end.tier.as_deref(), Some("1m"));
        assert_eq!((end.final_state, end.error), (None, None));
    }

    #[test]
    fn no_answer_publishes_no_state_and_keeps_attempts_and_version() {
        let c = check();
        let (state, next, end) = made(Decision::Retry {
            due: c.due_at,
            tier: 0,
            why: "no usable answer: 503".into(),
        });
        assert!(state.is_none());
        let (topic, next) = next.expect("a next step");
        assert_eq!(topic, "t.30s");
        assert_eq!((next.seq, next.attempts, next.version), (4, 2, 4));
        assert_eq!((end.attempts, end.version), (2, 4));
        assert_eq!(end.error.as_deref(), Some("no usable answer: 503"));
    }

    #[test]
    fn final_decisions_end_the_chain_and_seal_the_pin() {
        let (state, next, end) = made(Decision::Complete {
            pin: Secret::new("ABCD-1234"),
            attempts: 3,
        });
        let state = state.expect("a state event");
        assert_eq!(state.state, OrderState::Completed);
        assert!(state.pin.is_some(), "the PIN is sealed, not dropped");
        assert!(next.is_none());
        assert_eq!(end.final_state, Some(OrderState::Completed));
        let failure = Failure {
            reason: FailureReason::Cancelled,
            code: None,
            message: "stok yok".into(),
        };
        let (state, next, end) = made(Decision::Fail {
            failure: failure.clone(),
            attempts: 3,
        });
        let state = state.expect("a state event");
        assert_eq!(
            (state.state, state.failure),
            (OrderState::Failed, Some(failure))
        );
        assert!(next.is_none() && end.tier.is_none());
        assert_eq!(end.final_state, Some(OrderState::Failed));
    }
}
