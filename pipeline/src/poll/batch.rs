//! The poll stage's batched path: a batch of due check steps costs one statement to take
//! them, one provider call each, and one statement per group of answers to record them
//! (G2, G4, G6).
//!
//! 1. Each message is decoded once; unreadable ones are dead-lettered together.
//! 2. The steps are taken in one statement ([`chains::begin_steps`]); a step it could not
//!    take (a copy of a step already taken, a step another worker holds) goes the one-step
//!    path ([`PollHandler::process`]), which drops copies and waits for busy steps. When
//!    the database refuses the statement for one step's data, every step of the batch goes
//!    the one-step path, where only the refused one is dead-lettered.
//! 3. Each order is checked within its account's caps and breaker. The step's lease is
//!    renewed only when the wait for a permit took more than half of it.
//! 4. Answers are handled as they arrive, in groups: the state events and next steps of a
//!    group are published together, the group's steps recorded in one statement
//!    ([`chains::finish_steps`]), and then each message is acknowledged. A refused
//!    statement is redone step by step, and a step the database refuses is dead-lettered.

use super::effects::Effects;
use super::handler::refused_step;
use super::PollHandler;
use crate::core::event::StatusCheck;
use crate::db::chains::{self, Begun, StepEnd};
use crate::kafka::stage::{in_groups, message_span, Ack, Delivery, Handler};
use crate::shutdown::{Interrupted, Shutdown};
use chrono::{DateTime, Utc};
use futures::future::{join_all, BoxFuture};
use futures::stream::FuturesUnordered;
use rdkafka::message::{Message, OwnedMessage};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use uuid::Uuid;

/// Groups of answers being published and recorded at once.
const FINISHING_AT_ONCE: usize = 2;

/// One step of a batch.
struct Item {
    check: StatusCheck,
    message: OwnedMessage,
    ack: Ack,
    span: tracing::Span,
}

/// What a step's check led to. One per check, moved once into its group: boxing the large
/// variant would cost an allocation per check on the hot path for nothing.
#[allow(clippy::large_enum_variant)]
enum Stepped {
    /// The state event, the next step and the chain's record to write.
    Effects(Effects),
    /// Another worker took the step over while this one waited: nothing to do.
    TakenOver,
    Interrupted,
}

impl Handler for PollHandler {
    fn handle(self: Arc<Self>, batch: Vec<Delivery>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        // How late each check was handed over (G4): the poll stage's metric, not the loop's.
        for delivery in &batch {
            if let Some(late) = delivery.late {
                self.observe_lateness(delivery.message.topic(), late);
            }
        }
        Box::pin(self.handle_batch(batch, shutdown))
    }

    fn due_at(&self, message: &OwnedMessage) -> Option<DateTime<Utc>> {
        let due = super::due_at(message, &self.dispatched_topic, self.schedule.first_check)
            .or_else(|| self.decode(message).ok().map(|check| check.due_at))?;
        Some(super::hold_at_most(
            due,
            message.timestamp().to_millis(),
            Utc::now(),
            self.hold_of(message.topic()),
        ))
    }
}

impl PollHandler {
    async fn handle_batch(self: Arc<Self>, batch: Vec<Delivery>, mut shutdown: Shutdown) {
        let mut items = Vec::with_capacity(batch.len());
        let mut invalid = Vec::new();
        let mut again = Vec::new();
        let mut seen = HashSet::with_capacity(batch.len());
        for delivery in batch {
            let (message, ack) = delivery.into_parts();
            match self.decode(&message) {
                Err(why) => invalid.push((message, ack, why)),
                Ok(check) if seen.insert(check.order_id) => {
                    let span = message_span(&message);
                    span.record("order_id", tracing::field::display(check.order_id));
                    items.push(Item {
                        check,
                        message,
                        ack,
                        span,
                    });
                }
                // Another step of an order in this batch: after this batch's one.
                Ok(_) => again.push((message, ack)),
            }
        }
        let dead = join_all(invalid.into_iter().map(|(message, ack, why)| {
            let mut shutdown = shutdown.clone();
            let me = &self;
            async move {
                if me.dead_letter(&message, why, &mut shutdown).await.is_ok() {
                    ack.durable();
                }
            }
        }));
        let checked = self.check_batch(items, &mut shutdown);
        futures::join!(dead, checked);
        for (message, ack) in again {
            self.one_by_one(message, ack, &shutdown);
        }
    }

    async fn check_batch(self: &Arc<Self>, items: Vec<Item>, shutdown: &mut Shutdown) {
        if items.is_empty() {
            return;
        }
        let owner = Uuid::new_v4();
        let steps: Vec<(&StatusCheck, Duration)> = items
            .iter()
            .map(|i| (&i.check, self.lease_of(&i.check)))
            .collect();
        let begun_at = Instant::now();
        let taken =
            crate::db::retry_unless_refused("taking check steps", &self.backoff, shutdown, || {
                chains::begin_steps(&self.batch, &steps, owner)
            })
            .await;
        drop(steps);
        let Ok(taken) = taken else {
            return;
        };
        let taken = match taken {
            Ok(taken) => taken,
            Err(refused) => {
                tracing::warn!(steps = items.len(), error = %refused, "the database refused a batch's check steps; taking them one by one");
                for item in items {
                    self.one_by_one(item.message, item.ack, shutdown);
                }
                return;
            }
        };
        let taken: HashSet<Uuid> = taken.into_iter().collect();
        let running = FuturesUnordered::new();
        for item in items {
            if taken.contains(&item.check.order_id) {
                let span = item.span.clone();
                running.push(
                    self.check_one(item, owner, begun_at, shutdown.clone())
                        .instrument(span),
                );
            } else {
                self.one_by_one(item.message, item.ack, shutdown);
            }
        }
        // Answers are handled as they come: those that arrive while a group is being
        // published and recorded go together in the next group.
        in_groups(running, FINISHING_AT_ONCE, |group| {
            let mut shutdown = shutdown.clone();
            async move { self.finish_group(group, owner, &mut shutdown).await }
        })
        .await;
    }

    fn lease_of(&self, check: &StatusCheck) -> Duration {
        self.accounts
            .get(&check.provider_account)
            .expect("checked when decoding")
            .lease()
    }

    /// Checks one order whose step this batch holds, and decides what follows.
    async fn check_one(
        self: &Arc<Self>,
        item: Item,
        owner: Uuid,
        begun_at: Instant,
        mut shutdown: Shutdown,
    ) -> (Item, Stepped) {
        let account = Arc::clone(
            self.accounts
                .get(&item.check.provider_account)
                .expect("checked when decoding"),
        );
        let permit = tokio::select! {
            permit = account.permit() => permit,
            _ = shutdown.wait() => return (item, Stepped::Interrupted),
        };
        // A long wait for the caps or an open breaker may have outlasted the lease: renew
        // it then, and step aside if another worker took the step over meanwhile.
        if begun_at.elapsed() > account.lease() / 2 {
            let renewed = crate::shutdown::retry(
                "renewing a check step",
                &self.backoff,
                &mut shutdown,
                || chains::begin_step(&self.pool, &item.check, owner, account.lease()),
            )
            .await;
            match renewed {
                Ok(Begun::Mine) => {}
                Ok(_) => return (item, Stepped::TakenOver),
                Err(Interrupted) => return (item, Stepped::Interrupted),
            }
        }
        let outcome = tokio::select! {
            outcome = permit.check(&item.check.provider_reference) => outcome,
            _ = shutdown.wait() => return (item, Stepped::Interrupted),
        };
        let decision = super::decide(&item.check, outcome, Utc::now(), &self.schedule);
        self.observe(&item.check, &decision);
        let made = self.effects(&item.check, decision);
        (item, Stepped::Effects(made))
    }

    /// Publishes a group's outcomes together, records the steps in one statement, then
    /// acknowledges the messages.
    async fn finish_group(
        self: &Arc<Self>,
        group: Vec<(Item, Stepped)>,
        owner: Uuid,
        shutdown: &mut Shutdown,
    ) {
        let effects = self.set_aside(group, owner).await;
        if effects.is_empty() {
            return;
        }
        let done = self.publish_group(effects, owner, shutdown).await;
        if done.is_empty() {
            return;
        }
        self.record_group(done, owner, shutdown).await;
    }

    /// The group's steps that have effects to publish; a step taken over is acknowledged,
    /// an interrupted one released.
    async fn set_aside(&self, group: Vec<(Item, Stepped)>, owner: Uuid) -> Vec<(Item, Effects)> {
        let mut effects = Vec::with_capacity(group.len());
        for (item, stepped) in group {
            match stepped {
                Stepped::Effects(made) => effects.push((item, made)),
                Stepped::TakenOver => {
                    tracing::debug!(order_id = %item.check.order_id, seq = item.check.seq, "the check step was taken over while waiting for the provider");
                    item.ack.durable();
                }
                Stepped::Interrupted => self.release(&item.check, owner).await,
            }
        }
        effects
    }

    /// Publishes the group's state events and next steps together; the steps whose
    /// outcome the broker has, with their chain records (an interrupted one is released).
    async fn publish_group(
        &self,
        effects: Vec<(Item, Effects)>,
        owner: Uuid,
        shutdown: &Shutdown,
    ) -> Vec<(Item, StepEnd)> {
        let published = join_all(effects.iter().map(|(item, (state, next, _))| {
            let mut shutdown = shutdown.clone();
            async move {
                self.publish(state.as_ref(), next.as_ref(), &mut shutdown)
                    .await
            }
            .instrument(item.span.clone())
        }))
        .await;
        let mut done = Vec::with_capacity(effects.len());
        for ((item, (_, _, end)), sent) in effects.into_iter().zip(published) {
            match sent {
                Ok(()) => done.push((item, end)),
                Err(Interrupted) => self.release(&item.check, owner).await,
            }
        }
        done
    }

    /// Records the group's steps in one statement, then acknowledges their messages (a
    /// refused statement is redone step by step).
    async fn record_group(&self, done: Vec<(Item, StepEnd)>, owner: Uuid, shutdown: &mut Shutdown) {
        let steps: Vec<(Uuid, i64, &StepEnd)> = done
            .iter()
            .map(|(item, end)| (item.check.order_id, item.check.seq, end))
            .collect();
        let recorded = crate::db::retry_unless_refused(
            "recording check steps",
            &self.backoff,
            shutdown,
            || chains::finish_steps(&self.batch, owner, &steps),
        )
        .await;
        drop(steps);
        let Ok(recorded) = recorded else {
            return; // shutdown: the steps are redone; their successors are dropped as copies
        };
        let recorded: HashSet<Uuid> = match recorded {
            Ok(recorded) => recorded.into_iter().collect(),
            Err(refused) => {
                tracing::warn!(steps = done.len(), error = %refused, "the database refused a group's step records; recording them one by one");
                self.finish_one_by_one(done, owner, shutdown).await;
                return;
            }
        };
        for (item, _) in done {
            if !recorded.contains(&item.check.order_id) {
                tracing::warn!(order_id = %item.check.order_id, seq = item.check.seq, "the check step was taken over by another worker; its next step will run once");
            }
            item.ack.durable();
        }
    }

    /// Records a group's steps one at a time, after the database refused them together: a
    /// refused one is dead-lettered (its outcome is on the broker already), the others are
    /// recorded and acknowledged.
    async fn finish_one_by_one(
        &self,
        done: Vec<(Item, StepEnd)>,
        owner: Uuid,
        shutdown: &mut Shutdown,
    ) {
        for (item, end) in done {
            let check = &item.check;
            let recorded = crate::db::retry_unless_refused(
                "recording a check step",
                &self.backoff,
                shutdown,
                || chains::finish_step(&self.pool, check.order_id, check.seq, owner, &end),
            )
            .await;
            let sent = match recorded {
                Err(Interrupted) => return,
                Ok(Ok(_)) => Ok(()),
                Ok(Err(refused)) => {
                    let why = refused_step(check, "recording", refused);
                    self.dead_letter(&item.message, why, shutdown).await
                }
            };
            if sent.is_ok() {
                item.ack.durable();
            }
        }
    }

    /// Lets another worker take the step at once (this one stopped before finishing it).
    async fn release(&self, check: &StatusCheck, owner: Uuid) {
        let _ = chains::release(&self.pool, check.order_id, check.seq, owner).await;
    }

    /// Hands one message to the one-step path, in a task of its own.
    fn one_by_one(self: &Arc<Self>, message: OwnedMessage, ack: Ack, shutdown: &Shutdown) {
        let me = Arc::clone(self);
        let mut shutdown = shutdown.clone();
        let span = message_span(&message);
        tokio::spawn(
            async move {
                if me.process(&message, &mut shutdown).await.is_ok() {
                    ack.durable();
                }
            }
            .instrument(span),
        );
    }
}
