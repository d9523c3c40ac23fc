//! The poll stage's handler: what it holds (accounts, pool, schedule, PIN keys, producer),
//! and what both of its paths share: decoding a message into its check (refusing one the
//! chain could not follow), publishing a check's outcome, dead-lettering (counted on the
//! order's chain so that the reconciler can give up on it), and the check metrics. The
//! one-step path is in `step.rs`, the batched one in `batch.rs`.

use super::decide::has_successor;
use super::effects::{self, Effects};
use super::{tier_topics, Decision, PollError};
use crate::core::backoff::Backoff;
use crate::core::event::{
    self, InvalidEvent, InvalidKind, OrderDispatched, OrderStateEvent, StatusCheck,
};
use crate::core::schedule::Schedule;
use crate::db::{chains, BatchConnections};
use crate::kafka::dlq::DeadLetters;
use crate::kafka::emit::{until_sent, Emitter};
use crate::kafka::topics::name;
use crate::kafka::{KafkaConfig, Pace};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::pin::PinKeys;
use crate::provider::accounts::Accounts;
use crate::shutdown::{Interrupted, Shutdown};
use chrono::Utc;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Largest accepted dispatched or status-check event, in bytes.
const MAX_EVENT_BYTES: usize = 16 * 1024;

/// Handles one dispatched or status-check message.
pub struct PollHandler {
    pub(super) accounts: Accounts,
    pub(super) pool: PgPool,
    /// The batch statements' connections ([`crate::db::BatchConnections`]).
    pub(super) batch: BatchConnections,
    pub(super) schedule: Schedule,
    keys: PinKeys,
    emitter: Emitter,
    dead_letters: DeadLetters,
    pub(super) dispatched_topic: String,
    tier_topics: Vec<String>,
    tier_labels: Vec<String>,
    /// Each consumed topic with the longest a message of it waits ([`super::hold_at_most`]).
    hold: Vec<(String, Duration)>,
    /// Each consumed topic's lateness histogram, looked up once here, not per message.
    lateness: Vec<(String, Histogram)>,
    pub(super) backoff: Backoff,
    metrics: Arc<Metrics>,
}

impl PollHandler {
    pub fn new(
        kafka: &KafkaConfig,
        pool: PgPool,
        accounts: Accounts,
        schedule: Schedule,
        keys: PinKeys,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PollError> {
        let emitter = Emitter::paced(kafka, Pace::Patient)?.counted(Arc::clone(&metrics));
        let dead_letters = DeadLetters::new(
            emitter.producer().clone(),
            kafka.topic(name::ORDERS_DLQ),
            "poll",
            Arc::clone(&metrics),
        );
        let topics = tier_topics(kafka, &schedule);
        let mut hold = vec![(kafka.topic(name::ORDERS_DISPATCHED), schedule.first_check)];
        for (topic, delay) in topics.iter().zip(&schedule.tiers) {
            hold.push((topic.clone(), *delay));
        }
        let lateness = hold
            .iter()
            .map(|(topic, _)| {
                let histogram = metrics
                    .check_lateness_seconds
                    .get_or_create(&Metrics::topic(topic));
                (topic.clone(), histogram.clone())
            })
            .collect();
        Ok(PollHandler {
            accounts,
            batch: BatchConnections::beside(&pool),
            pool,
            hold,
            lateness,
            tier_topics: topics,
            tier_labels: schedule.tier_labels(),
            schedule,
            keys,
            emitter,
            dead_letters,
            dispatched_topic: kafka.topic(name::ORDERS_DISPATCHED),
            backoff: Backoff {
                min: Duration::from_millis(200),
                max: Duration::from_secs(10),
            },
            metrics,
        })
    }

    /// Records how late a check of `topic` was handed over (G4).
    pub(super) fn observe_lateness(&self, topic: &str, late: Duration) {
        match self.lateness.iter().find(|(t, _)| t == topic) {
            Some((_, histogram)) => histogram.observe(late.as_secs_f64()),
            None => self
                .metrics
                .check_lateness_seconds
                .get_or_create(&Metrics::topic(topic))
                .observe(late.as_secs_f64()),
        }
    }

    /// How long a message of `topic` waits at most: its delay (the longest, should two
    /// tiers share a topic), or the longest of all for a topic this stage does not know.
    pub(super) fn hold_of(&self, topic: &str) -> Duration {
        let known = self
            .hold
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, d)| *d);
        known
            .max()
            .or_else(|| self.hold.iter().map(|(_, d)| *d).max())
            .unwrap_or_default()
    }

    /// Counts a dead-lettered message on its order's chain (by the message key), so that the
    /// reconciler stops re-enqueueing a step that is only ever dead-lettered
    /// ([`chains::record_dead_letter`]). Best effort: if the count is lost, the reconciler
    /// sends one copy more.
    async fn count_dead_letter(&self, message: &OwnedMessage) {
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        let Some(order_id) = key.and_then(|k| k.parse::<Uuid>().ok()) else {
            return;
        };
        if let Err(e) = chains::record_dead_letter(&self.pool, order_id).await {
            tracing::warn!(%order_id, error = %e, "counting a dead-lettered check on its chain failed");
        }
    }

    /// The check a message asks for: the first one for a dispatched order.
    pub(super) fn decode(&self, message: &OwnedMessage) -> Result<StatusCheck, InvalidEvent> {
        let payload = message.payload().unwrap_or_default();
        let check = if message.topic() == self.dispatched_topic {
            let dispatched: OrderDispatched = event::decode(payload, MAX_EVENT_BYTES)?;
            StatusCheck::first(&dispatched, self.schedule.first_check)
        } else {
            event::decode(payload, MAX_EVENT_BYTES)?
        };
        if check.seq < 1 || check.attempts < 0 {
            return Err(InvalidEvent::new(
                InvalidKind::InvalidField,
                "seq must be at least 1 and attempts at least 0",
            ));
        }
        has_successor(&check)?;
        if message.key() != Some(check.order_id.to_string().as_bytes()) {
            return Err(InvalidEvent::new(
                InvalidKind::InvalidField,
                "the message key is not the event's order_id",
            ));
        }
        if self.accounts.get(&check.provider_account).is_none() {
            return Err(InvalidEvent::new(
                InvalidKind::UnknownProviderAccount,
                format!(
                    "provider_account {:?} is not configured",
                    check.provider_account
                ),
            ));
        }
        Ok(check)
    }

    /// Copies `message` to the DLQ with `why`, once the broker has it.
    pub(super) async fn dead_letter(
        &self,
        message: &OwnedMessage,
        why: InvalidEvent,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        self.dead_letters
            .put(message, &why, &self.backoff, shutdown)
            .await?;
        // The reconciler gives up on a chain whose steps keep being dead-lettered.
        self.count_dead_letter(message).await;
        Ok(())
    }

    /// Counts what a check led to, and how long the order took when it ended.
    pub(super) fn observe(&self, check: &StatusCheck, decision: &Decision) {
        let outcome = OutcomeLabel {
            outcome: decision.outcome(),
        };
        self.metrics.check_outcomes.get_or_create(&outcome).inc();
        if let Decision::Complete { attempts, .. } | Decision::Fail { attempts, .. } = decision {
            self.metrics.check_attempts.observe(f64::from(*attempts));
            let took = (Utc::now() - check.dispatched_at)
                .to_std()
                .unwrap_or_default();
            self.metrics
                .dispatch_to_final_seconds
                .get_or_create(&outcome)
                .observe(took.as_secs_f64());
            if let Some(created) = check.created_at {
                let took = (Utc::now() - created).to_std().unwrap_or_default();
                self.metrics
                    .created_to_final_seconds
                    .get_or_create(&outcome)
                    .observe(took.as_secs_f64());
            }
        }
    }

    /// Publishes a check's state event and next step together, until the broker has both.
    pub(super) async fn publish(
        &self,
        state: Option<&OrderStateEvent>,
        next: Option<&(String, StatusCheck)>,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        until_sent(
            "publishing a check's outcome",
            &self.backoff,
            shutdown,
            || async {
                let state_sent = async {
                    match state {
                        Some(state) => self.emitter.state(state).await,
                        None => Ok(()),
                    }
                };
                let next_sent = async {
                    match next {
                        Some((topic, next)) => self.emitter.status_check(topic, next).await,
                        None => Ok(()),
                    }
                };
                let (a, b) = futures::join!(state_sent, next_sent);
                a.and(b)
            },
        )
        .await
    }

    /// The state event, the next message and the chain's record that `decision` makes.
    pub(super) fn effects(&self, check: &StatusCheck, decision: Decision) -> Effects {
        effects::effects(
            check,
            decision,
            Utc::now(),
            &self.keys,
            &self.tier_topics,
            &self.tier_labels,
        )
    }
}

/// The DLQ reason of a step whose data the database refused while `doing` it.
pub(super) fn refused_step(
    check: &StatusCheck,
    doing: &str,
    refused: crate::db::Refused,
) -> InvalidEvent {
    InvalidEvent::database_refused(
        format!(
            "{doing} step {} of order {}'s check chain failed: {refused}",
            check.seq, check.order_id
        ),
        refused.sqlstate,
    )
}
