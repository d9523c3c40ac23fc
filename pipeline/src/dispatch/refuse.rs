//! Events the dispatch stage does not place: each is dead-lettered on `orders.dlq` with its
//! reason, and an order that cannot be placed as given (its account not configured, its
//! product not one the provider sells) is also answered `failed` (invalid) on
//! `orders.state`, after its order id is claimed as `invalid` so that the answer is final
//! for the id (G2). An order id claimed before gets no second answer: the order it
//! collides with has its own (see the module header of [`super`]).
//!
//! The one way back: a *replayed* event (`orderflow dlq replay`, header
//! `orderflow.replay.of`) of an order answered so, with the same account and content, once
//! its account and product are known, turns the `invalid` claim back into a `new` one
//! ([`DispatchHandler::reopen_if_replayed`]), and the order is placed as if it were new.
//! Nothing was ever placed under the claim, so nothing can be bought twice (G1); only
//! replayed events pay for the statement (docs/design/lifecycle.md, G3).

use super::decide::{self, Refusal};
use super::handler::DispatchHandler;
use crate::core::event::{InvalidEvent, InvalidKind, OrderCreated};
use crate::db::claims::{self, InvalidClaim};
use crate::kafka::headers;
use crate::provider::accounts::Accounts;
use crate::shutdown::{Interrupted, Shutdown};
use rdkafka::message::{Message, OwnedMessage};

/// Whether the order's account is configured and sells its product.
fn placeable(accounts: &Accounts, order: &OrderCreated) -> Result<(), InvalidEvent> {
    let account = accounts.get(&order.provider_account).ok_or_else(|| {
        InvalidEvent::new(
            InvalidKind::UnknownProviderAccount,
            format!(
                "provider_account {:?} is not configured",
                order.provider_account
            ),
        )
    })?;
    account
        .provider
        .validate_product(&order.product)
        .map_err(|why| InvalidEvent::new(InvalidKind::InvalidProduct, why))
}

/// The stage's checks of an `orders.created` payload published under its own order id,
/// for `orderflow order submit`: decoding and field limits, then, when `accounts` is
/// given, the account and product as [`DispatchHandler`] checks them. An error here is
/// what the stage would dead-letter (or answer `failed`, reason `invalid`).
pub fn validate_event(
    payload: &[u8],
    max_event_bytes: usize,
    accounts: Option<&Accounts>,
) -> Result<OrderCreated, InvalidEvent> {
    let order = OrderCreated::decode(payload, max_event_bytes)?;
    if let Some(accounts) = accounts {
        placeable(accounts, &order)?;
    }
    Ok(order)
}

impl DispatchHandler {
    /// The order a message asks for, or why it is not placed.
    pub(super) fn validate(&self, message: &OwnedMessage) -> Result<OrderCreated, Refusal> {
        let order =
            OrderCreated::decode(message.payload().unwrap_or_default(), self.max_event_bytes)
                .map_err(Refusal::Unusable)?;
        let keyed = decide::keyed(message.key(), order.order_id);
        let placeable = placeable(&self.accounts, &order);
        decide::admit(order, placeable, keyed)
    }

    /// For a replayed event of a placeable order: reopens its order id's `invalid` claim,
    /// if that is what it has, so that the order is placed (see the module header). Costs
    /// nothing for any other event.
    pub(super) async fn reopen_if_replayed(
        &self,
        message: &OwnedMessage,
        order: &OrderCreated,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let Some(replay_of) = message
            .headers()
            .and_then(|h| headers::get(h, headers::REPLAY_OF))
        else {
            return Ok(());
        };
        let digest = order.content_digest();
        let deadline = order
            .deadline
            .unwrap_or_else(|| chrono::Utc::now() + self.default_deadline);
        let reopened = crate::db::retry_unless_refused(
            "reopening a replayed order answered invalid",
            &self.placer.backoff,
            shutdown,
            || {
                claims::reopen_invalid(
                    &self.placer.pool,
                    order.order_id,
                    &order.provider_account,
                    &digest,
                    deadline,
                )
            },
        )
        .await?;
        match reopened {
            Ok(true) => tracing::info!(
                order_id = %order.order_id, replay_of,
                "a replayed order that was answered failed (invalid) is placed now"
            ),
            Ok(false) => {}
            Err(refused) => tracing::warn!(
                order_id = %order.order_id, error = %refused,
                "the database refused to reopen a replayed order's claim; it keeps its answer"
            ),
        }
        Ok(())
    }

    /// Dead-letters an event that is not placed and, if it is an order that cannot be
    /// placed as given, answers it `failed` (invalid) unless its order id is claimed
    /// already (see the module header).
    pub(super) async fn refuse(
        &self,
        message: &OwnedMessage,
        refusal: Refusal,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        match refusal {
            Refusal::Unusable(why) => self.dead_letter(message, why, shutdown).await,
            Refusal::Unplaceable(order, why) => {
                self.answer_invalid(&order, &why, shutdown).await?;
                self.dead_letter(message, why, shutdown).await
            }
        }
    }

    /// Claims `order`'s id as `invalid` and publishes `failed` (invalid) for it, unless the
    /// id was claimed before by another event.
    async fn answer_invalid(
        &self,
        order: &OrderCreated,
        why: &InvalidEvent,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let text = decide::invalid_message(why);
        let digest = order.content_digest();
        let claimed = crate::db::retry_unless_refused(
            "claiming an order that cannot be placed",
            &self.placer.backoff,
            shutdown,
            || {
                claims::claim_invalid(
                    &self.placer.pool,
                    order.order_id,
                    &order.tenant_id,
                    &order.provider_account,
                    &digest,
                    &text,
                )
            },
        )
        .await?;
        let claim = match claimed {
            Ok(InvalidClaim::Answer(claim)) => claim,
            Ok(InvalidClaim::Taken(_)) => {
                tracing::info!(order_id = %order.order_id, "the order id is claimed by another event, which has its own answer; not answering this one");
                return Ok(());
            }
            Err(refused) => {
                tracing::warn!(order_id = %order.order_id, error = %refused, "the database refused to claim the order id; dead-lettering without an answer");
                return Ok(());
            }
        };
        self.publish_invalid(order, &claim, shutdown).await
    }

    /// Puts the event on `orders.dlq` with its reason, until the broker has it.
    pub(super) async fn dead_letter(
        &self,
        message: &OwnedMessage,
        why: InvalidEvent,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        self.dead_letters
            .put(message, &why, &self.placer.backoff, shutdown)
            .await
    }
}
