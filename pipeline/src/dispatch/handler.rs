//! [`DispatchHandler`]: the dispatch stage's side of the [`Handler`] seam, and its
//! one-order path. A batch of messages goes the batched path ([`super::batch`]); an order
//! that path cannot settle at once, and every parked order come back, goes
//! [`DispatchHandler::process`]: validate, settle ([`super::placement`]), then park,
//! dead-letter or publish. Whatever the path, a message is acknowledged only once its
//! outcome is on the broker (G2).

use super::config::DispatchConfig;
use super::decide;
use super::error::DispatchError;
use super::park::ParkBackoff;
use super::placement::{Placer, Settled};
use super::publish::{self, state_event};
use crate::core::event::OrderCreated;
use crate::core::lifecycle::{version, OrderState};
use crate::db::claims::Claim;
use crate::kafka::dlq::DeadLetters;
use crate::kafka::emit::Emitter;
use crate::kafka::stage::{Delivery, Handler};
use crate::kafka::topics::name;
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use crate::provider::accounts::{Account, Accounts};
use crate::shutdown::{Interrupted, Shutdown};
use chrono::Utc;
use futures::future::BoxFuture;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Handles one `orders.created` message.
pub struct DispatchHandler {
    pub(super) accounts: Accounts,
    pub(super) placer: Placer,
    pub(super) emitter: Emitter,
    pub(super) dead_letters: DeadLetters,
    pub(super) max_event_bytes: usize,
    pub(super) default_deadline: chrono::Duration,
    pub(super) announce: bool,
    /// `orders.dispatch-retry` with the environment's prefix.
    pub(super) retry_topic: String,
    pub(super) park_backoff: ParkBackoff,
    pub(super) metrics: Arc<Metrics>,
}

impl Handler for DispatchHandler {
    fn handle(self: Arc<Self>, batch: Vec<Delivery>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(self.handle_batch(batch, shutdown))
    }

    /// A parked order waits for its due time without a place in flight; new orders are
    /// due at once (a header on them is not ours to trust).
    fn due_at(&self, message: &OwnedMessage) -> Option<chrono::DateTime<Utc>> {
        if message.topic() == self.retry_topic {
            super::park::due_at(message)
        } else {
            None
        }
    }
}

impl DispatchHandler {
    pub fn new(
        config: &DispatchConfig,
        kafka: &KafkaConfig,
        pool: PgPool,
        accounts: Accounts,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DispatchError> {
        let emitter = Emitter::new(kafka)?.counted(Arc::clone(&metrics));
        let dead_letters = DeadLetters::new(
            emitter.producer().clone(),
            kafka.topic(name::ORDERS_DLQ),
            "dispatch",
            Arc::clone(&metrics),
        );
        Ok(DispatchHandler {
            accounts,
            placer: Placer {
                batch: crate::db::BatchConnections::beside(&pool),
                pool,
                backoff: config.backoff(),
                park_after: Duration::from_millis(config.park_after_ms),
                lookup: config.lookup.keys()?,
            },
            emitter,
            dead_letters,
            max_event_bytes: config.max_event_bytes,
            default_deadline: config.default_deadline()?,
            announce: config.announce,
            retry_topic: kafka.topic(name::ORDERS_DISPATCH_RETRY),
            park_backoff: config.park_backoff(),
            metrics,
        })
    }

    /// The account of a validated order.
    pub(super) fn account(&self, order: &OrderCreated) -> &Arc<Account> {
        self.accounts
            .get(&order.provider_account)
            .expect("validated before")
    }

    /// The one-order path: validates the message, settles its order, then parks it,
    /// dead-letters it (a conflict, a refused claim) or publishes its outcome.
    pub(super) async fn process(
        &self,
        message: &OwnedMessage,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let order = match self.validate(message) {
            Ok(order) => order,
            Err(refusal) => return self.refuse(message, refusal, shutdown).await,
        };
        tracing::Span::current().record("order_id", tracing::field::display(order.order_id));
        self.reopen_if_replayed(message, &order, shutdown).await?;
        let account = self
            .accounts
            .get(&order.provider_account)
            .expect("validated above");
        let emitter = &self.emitter;
        // A parked order was announced before it was first placed.
        let announce = self.announce && message.topic() != self.retry_topic;
        let settled = self
            .placer
            .settle(
                &order,
                account,
                self.default_deadline,
                |claim: &Claim| {
                    let event = state_event(
                        &order,
                        claim,
                        OrderState::Dispatching,
                        None,
                        version::DISPATCHING,
                    );
                    async move {
                        if announce {
                            publish::announce(emitter, event).await;
                        }
                    }
                },
                shutdown,
            )
            .await?;
        if let Settled::Parked(parked) = &settled {
            return self.park(message, &order, parked, shutdown).await;
        }
        if let Some(why) = decide::dead_letter_reason(&order, &settled) {
            return self.dead_letter(message, why, shutdown).await;
        }
        self.publish(&order, &settled, shutdown).await
    }
}
