//! The dispatch stage's batched path: a batch of `orders.created` messages costs one claim
//! statement, one provider call per order, and one settle statement per group of answers
//! (G1, G2, G8).
//!
//! 1. Each event is decoded once and validated; unusable ones are dead-lettered together.
//! 2. Orders never claimed before are claimed in one statement
//!    ([`claims::claim_new_batch`]), which fixes each reference and marks the order
//!    `placing` under this batch's lease in the same commit, before any call of the batch.
//! 3. Each is placed under its reference while the lease still has half its length left
//!    (after waiting for the account's caps); otherwise, and for every answer that does
//!    not settle the order (no answer, an account problem, an unknown outcome, a refusal
//!    with a code that is not permanent), it goes the one-order path
//!    ([`super::placement`]), which checks the reference before placing again. Only the
//!    account's permanent codes reject an order here (G9).
//! 4. Answers are settled as they arrive, in groups, one statement per group
//!    ([`claims::settle_batch`]); the outcomes are published together, and each message is
//!    acknowledged once its events are on the broker.
//!
//! Orders that already had a claim (a redelivery, a re-send, a crash between claim and
//! settlement, a parked order come back) and a second event of one order in the same
//! batch take the one-order path, which answers a settled claim with its recorded outcome
//! and a conflict with the DLQ. An order whose account takes no call within the lease's
//! half (an open breaker, a full cap) goes there at once, uncalled, to be parked. So do
//! all of a batch's orders when the database refuses the batch's claim statement for one
//! event's data: claimed one at a time, the refused one is dead-lettered
//! (`database_refused`) and the others go on.

use super::decide::Refusal;
use super::handler::DispatchHandler;
use super::placement::Settled;
use super::publish::{state_event, ANNOUNCE_WAIT};
use crate::core::backoff::random_fraction;
use crate::core::event::OrderCreated;
use crate::core::lifecycle::{version, OrderState};
use crate::db::claims::{self, Claim, NewClaim, Phase};
use crate::kafka::stage::{in_groups, message_span, Ack, Delivery};
use crate::provider::accounts::Account;
use crate::provider::{PlaceOutcome, Placement};
use crate::shutdown::Shutdown;
use chrono::Utc;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use rdkafka::message::OwnedMessage;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use uuid::Uuid;

/// Groups of answers being settled at once (each a statement, then a round of sends).
const SETTLING_AT_ONCE: usize = 2;

/// One valid order of a batch.
struct Item {
    order: OrderCreated,
    message: OwnedMessage,
    ack: Ack,
    span: tracing::Span,
}

/// How a placement of the fast path ended.
enum Placed {
    Settle {
        phase: Phase,
        code: Option<String>,
        message: Option<String>,
    },
    /// Not settled: the one-order path takes over after `wait`. `release` gives the lease
    /// up first, so that the next claim need not wait it out.
    Fallback { wait: Duration, release: bool },
}

impl Placed {
    /// The one-order path takes over after `wait`, with the lease given up first.
    fn fallback(wait: Duration) -> Placed {
        Placed::Fallback {
            wait,
            release: true,
        }
    }
}

impl DispatchHandler {
    pub(super) async fn handle_batch(
        self: Arc<Self>,
        batch: Vec<Delivery>,
        mut shutdown: Shutdown,
    ) {
        let mut items = Vec::with_capacity(batch.len());
        let mut invalid = Vec::new();
        let mut again = Vec::new();
        let mut seen = HashSet::with_capacity(batch.len());
        for delivery in batch {
            let (message, ack) = delivery.into_parts();
            match self.validate(&message) {
                // An order that cannot be placed claims its id (to be answered): after an
                // earlier event of the id in this batch, and before a later one, so the
                // first in the log wins.
                Err(Refusal::Unplaceable(order, _)) if !seen.insert(order.order_id) => {
                    again.push((message, ack))
                }
                Err(refusal) => invalid.push((message, ack, refusal)),
                Ok(order) if seen.insert(order.order_id) => {
                    let span = message_span(&message);
                    span.record("order_id", tracing::field::display(order.order_id));
                    items.push(Item {
                        order,
                        message,
                        ack,
                        span,
                    });
                }
                // A second event of an order in this batch: after the first is settled.
                Ok(_) => again.push((message, ack)),
            }
        }
        let dead = join_all(invalid.into_iter().map(|(message, ack, refusal)| {
            let mut shutdown = shutdown.clone();
            let me = &self;
            async move {
                if me.refuse(&message, refusal, &mut shutdown).await.is_ok() {
                    ack.durable();
                }
            }
        }));
        let placed = self.place_batch(items, &mut shutdown);
        futures::join!(dead, placed);
        for (message, ack) in again {
            self.one_by_one(message, ack, Duration::ZERO, &shutdown);
        }
    }

    /// Claims the batch's new orders, places them, settles and publishes them.
    async fn place_batch(self: &Arc<Self>, items: Vec<Item>, shutdown: &mut Shutdown) {
        if items.is_empty() {
            return;
        }
        let owner = Uuid::new_v4();
        let now = Utc::now();
        let digests: Vec<String> = items.iter().map(|i| i.order.content_digest()).collect();
        let users: Vec<Option<String>> = items
            .iter()
            .map(|i| self.placer.user_digest(&i.order))
            .collect();
        let new: Vec<NewClaim> = items
            .iter()
            .zip(digests.iter().zip(&users))
            .map(|(i, (digest, user))| NewClaim {
                order_id: i.order.order_id,
                tenant_id: &i.order.tenant_id,
                provider_account: &i.order.provider_account,
                content_digest: digest,
                user_digest: user.as_deref(),
                deadline: i.order.deadline.unwrap_or(now + self.default_deadline),
                lease: self.account(&i.order).lease(),
            })
            .collect();
        let claimed_at = Instant::now();
        let claimed = crate::db::retry_unless_refused(
            "claiming a batch of orders",
            &self.placer.backoff,
            shutdown,
            || claims::claim_new_batch(&self.placer.batch, &new, owner),
        )
        .await;
        drop(new);
        let Ok(claimed) = claimed else {
            return; // shutdown: nothing was called; the acks report the batch interrupted
        };
        // One event's data refused fails the batch's statement, which is one commit: nothing
        // is claimed. Each order goes the one-order path, which claims it alone, so the
        // refused one is dead-lettered and the others are placed.
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(refused) => {
                tracing::warn!(orders = items.len(), error = %refused, "the database refused a batch's claims; claiming its orders one by one");
                for item in items {
                    self.one_by_one(item.message, item.ack, Duration::ZERO, shutdown);
                }
                return;
            }
        };
        crate::crash::point("dispatch.after_claim");
        let mut claimed: HashMap<Uuid, Claim> =
            claimed.into_iter().map(|c| (c.order_id, c)).collect();
        let mut fresh = Vec::with_capacity(claimed.len());
        for item in items {
            match claimed.remove(&item.order.order_id) {
                Some(claim) => fresh.push((item, claim)),
                None => self.one_by_one(item.message, item.ack, Duration::ZERO, shutdown),
            }
        }
        if self.announce {
            self.announce(&fresh).await;
        }
        let running: FuturesUnordered<_> = fresh
            .into_iter()
            .map(|(item, claim)| {
                let span = item.span.clone();
                self.place_one(item, claim, owner, claimed_at, shutdown.clone())
                    .instrument(span)
            })
            .collect();
        // Answers are settled as they come: those that arrive while a group is being
        // settled go together in the next statement.
        in_groups(running, SETTLING_AT_ONCE, |group| {
            crate::crash::point("dispatch.after_calls");
            let mut shutdown = shutdown.clone();
            async move { self.settle_group(group, owner, &mut shutdown).await }
        })
        .await;
    }

    /// Places one freshly claimed order, unless its lease may have run out meanwhile.
    async fn place_one(
        self: &Arc<Self>,
        item: Item,
        claim: Claim,
        owner: Uuid,
        claimed_at: Instant,
        mut shutdown: Shutdown,
    ) -> (Item, Claim, Placed) {
        if claim.phase == Phase::New {
            // Claimed past its deadline: never called.
            let end = Placed::Settle {
                phase: Phase::Expired,
                code: None,
                message: Some("the deadline passed before the provider took the order".into()),
            };
            return (item, claim, end);
        }
        let account = Arc::clone(self.account(&item.order));
        let patience = (account.lease() / 2).saturating_sub(claimed_at.elapsed());
        let permit = tokio::select! {
            permit = account.permit_within(patience) => permit,
            _ = shutdown.wait() => return (item, claim, Placed::fallback(Duration::ZERO)),
        };
        let permit = match permit {
            Ok(permit) => permit,
            // The account takes no call for now (its breaker is open): no call under this
            // fresh reference was made, so the order is `new` again, and the one-order path
            // parks it without checking anything.
            Err(_) => {
                self.unmark(&item, owner).await;
                return (item, claim, Placed::fallback(Duration::ZERO));
            }
        };
        // The claim's lease covers the call only while it has half its length left; a long
        // wait for the caps or an open breaker hands the order to the one-order path, which
        // renews the lease (or finds it taken) and checks the reference before any call.
        if claimed_at.elapsed() > account.lease() / 2 || Utc::now() >= claim.deadline {
            drop(permit);
            return (item, claim, Placed::fallback(Duration::ZERO));
        }
        let placement = Placement {
            reference: claim.provider_reference.clone(),
            product: item.order.product.clone(),
            user_identifier: item.order.user_identifier.clone(),
            user_extra: item.order.user_extra.clone(),
        };
        let outcome = tokio::select! {
            outcome = permit.place(&placement) => outcome,
            // The call may have landed: the one-order path checks the reference first.
            _ = shutdown.wait() => PlaceOutcome::Unknown { detail: "interrupted by shutdown".into() },
        };
        let end = self
            .first_answer(&item, &claim, owner, &account, outcome)
            .await;
        (item, claim, end)
    }

    /// What the answer to the first call under a fresh reference means: accepted or
    /// rejected (a permanent code, or a reference another system uses) settles the order;
    /// anything else hands it to the one-order path after a backoff, `new` again when the
    /// call certainly bought nothing.
    async fn first_answer(
        &self,
        item: &Item,
        claim: &Claim,
        owner: Uuid,
        account: &Account,
        outcome: PlaceOutcome,
    ) -> Placed {
        let backoff = || self.placer.backoff.delay(0, random_fraction());
        match outcome {
            PlaceOutcome::Accepted { .. } => Placed::Settle {
                phase: Phase::Placed,
                code: None,
                message: None,
            },
            PlaceOutcome::Rejected { code, message } => Placed::Settle {
                phase: Phase::Rejected,
                code: Some(code),
                message: Some(message),
            },
            // The very first call under this reference: the order it names is not ours.
            PlaceOutcome::Duplicate { code, message } => {
                tracing::error!(
                    order_id = %item.order.order_id, reference = %claim.provider_reference,
                    "the provider already had an order under this new reference: references \
                     overlap with another system on account {} (see README); failing the \
                     order, nothing was bought for it", account.id
                );
                Placed::Settle {
                    phase: Phase::Rejected,
                    code: Some(code),
                    message: Some(message),
                }
            }
            // Maintenance, a rate limit, a code never seen: this first call bought nothing.
            // The one-order path places it again after a backoff, until its deadline.
            PlaceOutcome::Refused { code, .. } => {
                self.unmark(item, owner).await;
                tracing::info!(order_id = %item.order.order_id, code = %code, "the provider refused the order for now; placing it again later");
                Placed::fallback(backoff())
            }
            PlaceOutcome::Transient { detail }
            | PlaceOutcome::AccountProblem {
                detail,
                not_placed: true,
            } => {
                // Nothing was bought: back to `new`, so the deadline can still end it cleanly.
                self.unmark(item, owner).await;
                tracing::info!(order_id = %item.order.order_id, "placement did not reach the provider ({detail}); retrying");
                Placed::fallback(backoff())
            }
            PlaceOutcome::AccountProblem { detail, .. } | PlaceOutcome::Unknown { detail } => {
                tracing::info!(order_id = %item.order.order_id, reference = %claim.provider_reference, "placement outcome unknown ({detail}); checking the reference next");
                Placed::fallback(backoff())
            }
        }
    }

    /// Takes a freshly claimed order back to `new`: no call under its reference bought
    /// anything. Harmless if it fails: `placing` only costs a check before the next attempt.
    async fn unmark(&self, item: &Item, owner: Uuid) {
        if let Err(e) = claims::unmark_placing(&self.placer.pool, item.order.order_id, owner).await
        {
            tracing::debug!(order_id = %item.order.order_id, error = %e, "could not reset the placement mark");
        }
    }

    /// Records a group of answers in one statement, then publishes and acknowledges them.
    async fn settle_group(
        self: &Arc<Self>,
        group: Vec<(Item, Claim, Placed)>,
        owner: Uuid,
        shutdown: &mut Shutdown,
    ) {
        let mut settle = Vec::with_capacity(group.len());
        for (item, claim, end) in group {
            match end {
                Placed::Settle {
                    phase,
                    code,
                    message,
                } => settle.push((item, claim, phase, code, message)),
                Placed::Fallback { wait, release } => {
                    if release {
                        let _ =
                            claims::release(&self.placer.pool, item.order.order_id, owner).await;
                    }
                    self.one_by_one(item.message, item.ack, wait, shutdown);
                }
            }
        }
        if settle.is_empty() {
            return;
        }
        let outcomes: Vec<claims::Outcome> = settle
            .iter()
            .map(|(item, _, phase, code, message)| claims::Outcome {
                order_id: item.order.order_id,
                phase: *phase,
                code: code.as_deref(),
                message: message.as_deref(),
            })
            .collect();
        let recorded = crate::shutdown::retry(
            "recording a batch of outcomes",
            &self.placer.backoff,
            shutdown,
            || claims::settle_batch(&self.placer.batch, owner, &outcomes),
        )
        .await;
        drop(outcomes);
        let Ok(recorded) = recorded else {
            return; // shutdown: the next owner settles them by checking
        };
        let mut recorded: HashMap<Uuid, Claim> =
            recorded.into_iter().map(|c| (c.order_id, c)).collect();
        let publishing = settle.into_iter().filter_map(|(item, ..)| {
            let Some(claim) = recorded.remove(&item.order.order_id) else {
                // Another owner took the order over: it reads what is recorded.
                self.one_by_one(item.message, item.ack, Duration::ZERO, shutdown);
                return None;
            };
            let mut shutdown = shutdown.clone();
            let span = item.span.clone();
            Some(
                async move {
                    let settled = Settled::from_recorded(claim);
                    if self
                        .publish(&item.order, &settled, &mut shutdown)
                        .await
                        .is_ok()
                    {
                        item.ack.durable();
                    }
                }
                .instrument(span),
            )
        });
        join_all(publishing.collect::<Vec<_>>()).await;
    }

    /// Publishes `dispatching` for freshly claimed orders (informational, off by default:
    /// it costs a send before the calls), waiting for it a bounded time.
    async fn announce(&self, fresh: &[(Item, Claim)]) {
        let sends = fresh.iter().map(|(item, claim)| {
            let event = state_event(
                &item.order,
                claim,
                OrderState::Dispatching,
                None,
                version::DISPATCHING,
            );
            async move { self.emitter.state(&event).await }.instrument(item.span.clone())
        });
        match tokio::time::timeout(ANNOUNCE_WAIT, join_all(sends)).await {
            Ok(results) => {
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    tracing::warn!(error = %e, "publishing the dispatching state failed");
                }
            }
            Err(_) => {
                tracing::warn!("the dispatching state is not acknowledged yet; placing anyway")
            }
        }
    }

    /// Hands one message to the one-order path, in a task of its own, after `wait`.
    fn one_by_one(
        self: &Arc<Self>,
        message: OwnedMessage,
        ack: Ack,
        wait: Duration,
        shutdown: &Shutdown,
    ) {
        let me = Arc::clone(self);
        let mut shutdown = shutdown.clone();
        let span = message_span(&message);
        tokio::spawn(
            async move {
                if shutdown.sleep(wait).await.is_err() {
                    return;
                }
                if me.process(&message, &mut shutdown).await.is_ok() {
                    ack.durable();
                }
            }
            .instrument(span),
        );
    }
}
