//! What the dispatch stage emits for an order, and when: `dispatched` on `orders.state`
//! with the order on `orders.dispatched`, or `failed` (rejected, expired, invalid), each
//! sent until the broker has it (the caller acknowledges the message only then: G2); the
//! informational `dispatching` before a placement. A re-send of an order whose status
//! checks have started publishes nothing: its later states come from the poll stage, and
//! an older state must never follow them (G8).
//!
//! The events themselves are built by pure functions at the bottom of this file.

use super::handler::DispatchHandler;
use super::placement::Settled;
use crate::core::event::{Failure, OrderCreated, OrderDispatched, OrderStateEvent, SCHEMA_VERSION};
use crate::core::lifecycle::{version, FailureReason, OrderState};
use crate::db::claims::Claim;
use crate::kafka::emit::{until_sent, Emitter};
use crate::shutdown::{Interrupted, Shutdown};
use chrono::Utc;
use std::time::Duration;

/// How long the `dispatching` state may hold a placement up.
pub(super) const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

impl DispatchHandler {
    /// Publishes what became of a settled order (see the module header).
    pub(super) async fn publish(
        &self,
        order: &OrderCreated,
        settled: &Settled,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let Some(settled) = self.still_to_publish(order, settled, shutdown).await? else {
            return Ok(());
        };
        match settled {
            Settled::Placed(claim) => {
                tracing::debug!(order_id = %order.order_id, reference = %claim.provider_reference, "order placed");
                self.publish_placed(order, claim, shutdown).await
            }
            Settled::Rejected {
                claim,
                code,
                message,
            } => {
                tracing::info!(order_id = %order.order_id, reference = %claim.provider_reference, code = %code, "order rejected by the provider");
                let state = rejected_event(order, claim, code, message);
                self.publish_state("publishing a rejected order", &state, shutdown)
                    .await
            }
            Settled::Invalid(claim) => self.publish_invalid(order, claim, shutdown).await,
            Settled::AccountConflict(_)
            | Settled::ContentConflict(_)
            | Settled::Refused(_)
            | Settled::Parked(_) => {
                unreachable!("dead-lettered or parked before publishing")
            }
            Settled::Earlier(_) => unreachable!("a recorded outcome is never an earlier one"),
            Settled::Expired(claim) => {
                tracing::info!(order_id = %order.order_id, reference = %claim.provider_reference, "order expired before placement");
                let state = expired_event(order, claim);
                self.publish_state("publishing an expired order", &state, shutdown)
                    .await
            }
        }
    }

    /// The outcome to publish: `settled` itself, or for a claim settled before this event
    /// came, the outcome it recorded, unless that is `placed` and the order's checks have
    /// started (`None`: nothing new to say).
    async fn still_to_publish<'s>(
        &self,
        order: &OrderCreated,
        settled: &'s Settled,
        shutdown: &mut Shutdown,
    ) -> Result<Option<&'s Settled>, Interrupted> {
        match settled {
            Settled::Earlier(recorded) => {
                if matches!(**recorded, Settled::Placed(_))
                    && self.checks_started(order, shutdown).await?
                {
                    tracing::debug!(order_id = %order.order_id, "a re-send of an order whose checks have started; its states come from the poll stage");
                    return Ok(None);
                }
                Ok(Some(&**recorded))
            }
            settled => Ok(Some(settled)),
        }
    }

    /// Whether the poll stage has started the order's status checks: then its later states
    /// are on `orders.state` or on their way, and `dispatched` would be an older one.
    async fn checks_started(
        &self,
        order: &OrderCreated,
        shutdown: &mut Shutdown,
    ) -> Result<bool, Interrupted> {
        let chain = crate::shutdown::retry(
            "reading an order's check chain",
            &self.placer.backoff,
            shutdown,
            || crate::db::chains::get(&self.placer.pool, order.order_id),
        )
        .await?;
        Ok(chain.is_some())
    }

    /// `dispatched` on `orders.state` and the order on `orders.dispatched`, sent together.
    async fn publish_placed(
        &self,
        order: &OrderCreated,
        claim: &Claim,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let state = state_event(
            order,
            claim,
            OrderState::Dispatched,
            None,
            version::DISPATCHED,
        );
        let dispatched = dispatched_event(order, claim, &state);
        until_sent(
            "publishing a dispatched order",
            &self.placer.backoff,
            shutdown,
            || async {
                let (a, b) = futures::join!(
                    self.emitter.state(&state),
                    self.emitter.dispatched(&dispatched)
                );
                a.and(b)
            },
        )
        .await
    }

    /// `failed` (invalid) for an order whose id is claimed as `invalid`: the answer to an
    /// order that cannot be placed as given, first or again.
    pub(super) async fn publish_invalid(
        &self,
        order: &OrderCreated,
        claim: &Claim,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let state = invalid_event(order, claim);
        self.publish_state(
            "publishing an order that cannot be placed",
            &state,
            shutdown,
        )
        .await
    }

    /// One state on `orders.state`, sent until the broker has it; `what` names it in the log
    /// of a retry.
    async fn publish_state(
        &self,
        what: &str,
        state: &OrderStateEvent,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        until_sent(what, &self.placer.backoff, shutdown, || {
            self.emitter.state(state)
        })
        .await
    }
}

/// Publishes the informational `dispatching` state, waiting for it at most
/// [`ANNOUNCE_WAIT`]: never holds the placement up for long. A record already handed to
/// the producer still goes out, ahead of this order's later events.
pub(super) async fn announce(emitter: &Emitter, event: OrderStateEvent) {
    match tokio::time::timeout(ANNOUNCE_WAIT, emitter.state(&event)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(order_id = %event.order_id, error = %e, "publishing the dispatching state failed")
        }
        Err(_) => {
            tracing::warn!(order_id = %event.order_id, "the dispatching state is not acknowledged yet; placing anyway")
        }
    }
}

/// A state of an order placed (or about to be) under the claim's reference.
pub(super) fn state_event(
    order: &OrderCreated,
    claim: &Claim,
    state: OrderState,
    failure: Option<Failure>,
    version: i64,
) -> OrderStateEvent {
    OrderStateEvent {
        schema_version: SCHEMA_VERSION,
        order_id: order.order_id,
        tenant_id: order.tenant_id.clone(),
        provider_account: claim.provider_account.clone(),
        provider_reference: Some(claim.provider_reference.clone()),
        state,
        failure,
        pin: None,
        attempts: 0,
        next_check_at: None,
        deadline: Some(claim.deadline),
        version,
        changed_at: Utc::now(),
    }
}

/// The order on `orders.dispatched`, dispatched when its `dispatched` state says.
fn dispatched_event(
    order: &OrderCreated,
    claim: &Claim,
    state: &OrderStateEvent,
) -> OrderDispatched {
    OrderDispatched {
        schema_version: SCHEMA_VERSION,
        order_id: order.order_id,
        tenant_id: order.tenant_id.clone(),
        provider_account: claim.provider_account.clone(),
        provider_reference: claim.provider_reference.clone(),
        dispatched_at: state.changed_at,
        deadline: claim.deadline,
        version: version::DISPATCHED,
        created_at: Some(order.created_at),
    }
}

/// `failed` (rejected): the provider refused the order with a permanent code.
fn rejected_event(
    order: &OrderCreated,
    claim: &Claim,
    code: &str,
    message: &str,
) -> OrderStateEvent {
    let failure = Failure {
        reason: FailureReason::Rejected,
        code: Some(code.to_owned()),
        message: message.to_owned(),
    };
    state_event(
        order,
        claim,
        OrderState::Failed,
        Some(failure),
        version::DISPATCHED,
    )
}

/// `failed` (deadline) for an order that expired before placement. The code is the
/// provider's last refusal, when it kept refusing (G9: not a rejection, but the shop may
/// want to know why).
fn expired_event(order: &OrderCreated, claim: &Claim) -> OrderStateEvent {
    let failure = Failure {
        reason: FailureReason::Deadline,
        code: claim.outcome_code.clone(),
        message: claim
            .outcome_message
            .clone()
            .unwrap_or_else(|| "deadline passed".into()),
    };
    state_event(
        order,
        claim,
        OrderState::Failed,
        Some(failure),
        version::DISPATCHED,
    )
}

/// `failed` (invalid) for an order whose id is claimed as `invalid`. No reference: nothing
/// was ever sent to the provider.
fn invalid_event(order: &OrderCreated, claim: &Claim) -> OrderStateEvent {
    OrderStateEvent {
        schema_version: SCHEMA_VERSION,
        order_id: order.order_id,
        tenant_id: order.tenant_id.clone(),
        provider_account: claim.provider_account.clone(),
        provider_reference: None,
        state: OrderState::Failed,
        failure: Some(Failure {
            reason: FailureReason::Invalid,
            code: None,
            message: claim
                .outcome_message
                .clone()
                .unwrap_or_else(|| "the order cannot be placed as given".into()),
        }),
        pin: None,
        attempts: 0,
        next_check_at: None,
        deadline: None,
        version: version::DISPATCHED,
        changed_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::claims::Phase;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn order() -> OrderCreated {
        OrderCreated {
            schema_version: 1,
            order_id: Uuid::new_v4(),
            tenant_id: "shop".into(),
            provider_account: "znet-main".into(),
            product: BTreeMap::new(),
            user_identifier: "5550000000".into(),
            user_extra: String::new(),
            created_at: Utc::now(),
            deadline: None,
        }
    }

    fn claim(order: &OrderCreated, phase: Phase) -> Claim {
        Claim {
            order_id: order.order_id,
            provider_account: "znet-main".into(),
            provider_reference: "ref-1".into(),
            phase,
            place_calls: 1,
            deadline: Utc::now() + chrono::Duration::hours(1),
            outcome_code: None,
            outcome_message: None,
            content_digest: None,
            first_not_found_at: None,
        }
    }

    #[test]
    fn dispatched_goes_out_twice_with_one_time() {
        let o = order();
        let c = claim(&o, Phase::Placed);
        let state = state_event(&o, &c, OrderState::Dispatched, None, version::DISPATCHED);
        let dispatched = dispatched_event(&o, &c, &state);
        assert_eq!(dispatched.dispatched_at, state.changed_at);
        assert_eq!(dispatched.provider_reference, "ref-1");
        assert_eq!(state.provider_reference.as_deref(), Some("ref-1"));
        assert_eq!(
            (state.deadline, dispatched.deadline),
            (Some(c.deadline), c.deadline)
        );
        assert_eq!(dispatched.created_at, Some(o.created_at));
    }

    #[test]
    fn failures_name_their_reason() {
        let o = order();
        let rejected = rejected_event(&o, &claim(&o, Phase::Rejected), "E12", "out of stock");
        let failure = rejected.failure.expect("a failure");
        assert_eq!(rejected.state, OrderState::Failed);
        assert_eq!(failure.reason, FailureReason::Rejected);
        assert_eq!(failure.code.as_deref(), Some("E12"));
        assert_eq!(failure.message, "out of stock");

        let mut refused_until_deadline = claim(&o, Phase::Expired);
        refused_until_deadline.outcome_code = Some("E7".into());
        refused_until_deadline.outcome_message = Some("kept refusing".into());
        let kept = expired_event(&o, &refused_until_deadline)
            .failure
            .expect("a failure");
        assert_eq!(kept.reason, FailureReason::Deadline);
        assert_eq!(
            (kept.code.as_deref(), kept.message.as_str()),
            (Some("E7"), "kept refusing")
        );
        let silent = expired_event(&o, &claim(&o, Phase::Expired))
            .failure
            .expect("a failure");
        assert_eq!(
            (silent.code, silent.message.as_str()),
            (None, "deadline passed")
        );
    }

    #[test]
    fn an_invalid_order_has_no_reference_nor_deadline() {
        let o = order();
        let mut c = claim(&o, Phase::Invalid);
        let state = invalid_event(&o, &c);
        assert_eq!((state.provider_reference, state.deadline), (None, None));
        let failure = state.failure.expect("a failure");
        assert_eq!(failure.reason, FailureReason::Invalid);
        assert_eq!(failure.message, "the order cannot be placed as given");
        c.outcome_message = Some("the order cannot be placed as given: no such product".into());
        let failure = invalid_event(&o, &c).failure.expect("a failure");
        assert_eq!(
            failure.message,
            "the order cannot be placed as given: no such product"
        );
        assert_eq!(invalid_event(&o, &c).version, version::DISPATCHED);
    }
}
