//! Settling one order with its provider: placed, rejected or expired, and never bought
//! twice (G1).
//!
//! The loop works from the order's claim in `dispatch_claims` (see [`crate::db::claims`]):
//!
//! | phase     | what the lease owner does                                                |
//! |-----------|--------------------------------------------------------------------------|
//! | `new`     | place under the order's fixed reference (or expire it past its deadline) |
//! | `placing` | an earlier call may have bought it: check the reference; place again,     |
//! |           | under the same reference, only once the provider has shown no order under |
//! |           | it for the account's visibility window (new orders show with a lag, G9)   |
//! | settled   | nothing: report the recorded outcome (a redelivery, a duplicate event)    |
//!
//! The claim also records the digest of the first event's content: an event whose order id
//! is claimed under another account or with other content is a conflict, not a copy, and
//! nothing is done for it (the first event wins).
//!
//! Every placement call is preceded, after its permit is granted and right before it
//! leaves, by `begin_placing`, which renews the lease and fails if another worker took the
//! order over. Transient failures and account problems wait with backoff while other
//! orders go on; an answer that was lost is settled by a check, never by a new reference.
//!
//! Retrying in process is bounded, because the order holds one of the stage's in-flight
//! places and its partition's commit point meanwhile: an order is **parked** instead
//! ([`Settled::Parked`], re-published by the stage with a due time) when the next wait
//! (a backoff, an open breaker, a full concurrency cap, another worker's lease) would take
//! its time in this process past [`Placer::park_after`], or when it would wait and its
//! account already has `max_retrying` orders waiting ([`Account::try_retrying`]). Parking
//! leaves the claim as it is (reference fixed, phase kept, the lease given up), so the
//! order comes back to exactly the step it left.
//!
//! What fails an order (G9): a permanent code of the account answered to the first call
//! under the reference (`rejected`), or the deadline with no purchase known (`expired`,
//! with the last refusal's code when the provider kept refusing). A refusal with any other
//! code is retried with backoff. After an unclear call nothing the provider refuses fails
//! the order, not even a permanent code: the earlier call may have bought it, and a
//! provider that refuses a reused referans under a code of its own looks the same.

mod step;

use crate::core::backoff::{random_fraction, Backoff};
use crate::core::event::OrderCreated;
use crate::db::claims::{self, Claim, Claimed, Phase};
use crate::lookup::LookupKeys;
use crate::provider::accounts::Account;
use crate::shutdown::{Interrupted, Shutdown};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use step::{Retry, Step};
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

/// What became of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Placed(Claim),
    Rejected {
        claim: Claim,
        code: String,
        message: String,
    },
    Expired(Claim),
    /// The order was first claimed for another provider account than this event names;
    /// nothing was done for this event.
    AccountConflict(Claim),
    /// The order was first claimed by an event with other content (product, user fields,
    /// tenant); nothing was done for this event.
    ContentConflict(Claim),
    /// The order id was claimed as `invalid` (its first event could not be placed as given)
    /// by an event with this content: an account or a product that was unknown then is
    /// known now. The answer given then stands; nothing is placed.
    Invalid(Claim),
    /// The claim was settled before this event came (a redelivery or a re-send): what it
    /// recorded, which may have been published and followed by later states already.
    Earlier(Box<Settled>),
    /// The database refused to claim the order with this event's data: nothing was done.
    Refused(crate::db::Refused),
    /// Not settled, and not worth waiting for in this process: the stage parks the order
    /// and tries it again later.
    Parked(Parked),
}

/// Why and for how long an order is parked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parked {
    /// What holds the order up and which bound parked it, for the log.
    pub why: String,
    /// The wait the order was about to start (a backoff, an open breaker's remaining time,
    /// the rest of a visibility window): it need not come back sooner.
    pub wait: Duration,
    /// The claim's deadline, when the order was claimed: it comes back by then, so that the
    /// deadline still ends it on time.
    pub deadline: Option<DateTime<Utc>>,
}

impl Settled {
    /// The outcome a settled claim records (`placed`, `rejected` or `expired`).
    pub(crate) fn from_recorded(claim: Claim) -> Settled {
        match claim.phase {
            Phase::Placed => Settled::Placed(claim),
            Phase::Rejected => {
                let code = claim.outcome_code.clone().unwrap_or_default();
                let message = claim.outcome_message.clone().unwrap_or_default();
                Settled::Rejected {
                    claim,
                    code,
                    message,
                }
            }
            Phase::Expired => Settled::Expired(claim),
            Phase::Invalid => Settled::Invalid(claim),
            Phase::New | Phase::Placing => unreachable!("only a settled claim has an outcome"),
        }
    }
}

/// What kept the order waiting so far in one settling.
struct Tries {
    /// Failed database calls and backoff retries: the exponent of the next backoff.
    failures: u32,
    /// A place among the account's orders waiting to be retried, once one is taken; kept
    /// until the settling ends.
    retrying: Option<OwnedSemaphorePermit>,
}

/// How a claim attempt ended.
enum Claiming {
    /// This settling holds the order's lease.
    Held(Claim),
    /// Waited (another worker's lease, a failed statement): claim again.
    Again,
    /// The settling ends here: the order is parked, or the database refused its claim.
    Over(Settled),
}

/// One settling: an order, its account, and the lease owner working on it.
struct Work<'a> {
    order: &'a OrderCreated,
    account: &'a Account,
    /// Each settling is its own lease owner, so two copies of one order in this process
    /// take turns just as copies in two processes do.
    owner: Uuid,
    /// [`OrderCreated::content_digest`] of this event.
    digest: String,
    /// The keyed digest of its first user field, when lookup keys are set.
    user_digest: Option<String>,
    /// The last code and message the provider refused a placement with, for the failure
    /// that ends an order the provider kept refusing until its deadline.
    refused: Mutex<Option<(String, String)>>,
    /// When this settling began: its time in process counts against `park_after`.
    started: Instant,
}

pub struct Placer {
    pub pool: PgPool,
    /// The batch claims' and settles' connections ([`crate::db::BatchConnections`]).
    pub batch: crate::db::BatchConnections,
    pub backoff: Backoff,
    /// How long one order may be worked on in this process, its waits included, before
    /// it is parked instead of waiting again.
    pub park_after: Duration,
    /// The keys that digest each new claim's first user field ([`crate::lookup`]).
    pub lookup: Option<LookupKeys>,
}

impl Placer {
    /// Works on `order` until its placement is settled. `announce` is called once, before the
    /// first placement call, so the caller can publish `dispatching`.
    pub async fn settle<F, Fut>(
        &self,
        order: &OrderCreated,
        account: &Account,
        default_deadline: chrono::Duration,
        announce: F,
        shutdown: &mut Shutdown,
    ) -> Result<Settled, Interrupted>
    where
        F: FnMut(&Claim) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let work = Work {
            order,
            account,
            owner: Uuid::new_v4(),
            digest: order.content_digest(),
            user_digest: self.user_digest(order),
            refused: Mutex::new(None),
            started: Instant::now(),
        };
        let settled = self
            .settle_loop(&work, default_deadline, announce, shutdown)
            .await;
        if matches!(settled, Err(_) | Ok(Settled::Parked(_))) {
            // Let the next owner (or this order's parked copy) start at once instead of
            // waiting the lease out.
            let _ = claims::release(&self.pool, order.order_id, work.owner).await;
        }
        settled
    }

    /// The keyed digest a new claim of `order` stores, when lookup keys are set.
    pub fn user_digest(&self, order: &OrderCreated) -> Option<String> {
        self.lookup.as_ref()?.digest(&order.user_identifier)
    }

    /// How long a wait in this settling may still take before the order is parked.
    fn patience(&self, work: &Work<'_>) -> Duration {
        self.park_after.saturating_sub(work.started.elapsed())
    }

    /// Whether to park the order rather than wait `wait` in process, and why: the wait
    /// would take it past `park_after`, or its account has no place left for another
    /// order waiting to be retried. A place taken here is kept in `retrying` until the
    /// settling ends.
    fn park_instead(
        &self,
        work: &Work<'_>,
        wait: Duration,
        retrying: &mut Option<OwnedSemaphorePermit>,
    ) -> Option<String> {
        if wait.is_zero() {
            return None;
        }
        let spent = work.started.elapsed();
        if spent + wait > self.park_after {
            return Some(format!(
                "parked: waiting {} ms more would keep it in this process past {} ms \
                 (it has been here {} ms)",
                wait.as_millis(),
                self.park_after.as_millis(),
                spent.as_millis()
            ));
        }
        if retrying.is_none() {
            *retrying = work.account.try_retrying();
            if retrying.is_none() {
                return Some(format!(
                    "parked: account {} already has {} orders waiting to be retried \
                     (max_retrying)",
                    work.account.id,
                    work.account.max_retrying()
                ));
            }
        }
        None
    }

    async fn settle_loop<F, Fut>(
        &self,
        work: &Work<'_>,
        default_deadline: chrono::Duration,
        mut announce: F,
        shutdown: &mut Shutdown,
    ) -> Result<Settled, Interrupted>
    where
        F: FnMut(&Claim) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let order = work.order;
        let deadline = order
            .deadline
            .unwrap_or_else(|| Utc::now() + default_deadline);
        let mut tries = Tries {
            failures: 0,
            retrying: None,
        };
        let mut announced = false;
        loop {
            if shutdown.is_set() {
                return Err(Interrupted);
            }
            let claim = match self.claim(work, deadline, &mut tries, shutdown).await? {
                Claiming::Held(claim) => claim,
                Claiming::Again => continue,
                Claiming::Over(settled) => return Ok(settled),
            };
            let claim = match self.same_order(work, claim).await {
                Ok(claim) => claim,
                Err(conflict) => return Ok(conflict),
            };
            let step = match claim.phase {
                Phase::Placed | Phase::Expired | Phase::Rejected | Phase::Invalid => {
                    return Ok(Settled::Earlier(Box::new(Settled::from_recorded(claim))))
                }
                Phase::New => {
                    if !announced {
                        announce(&claim).await;
                        announced = true;
                    }
                    self.place(work, &claim).await
                }
                Phase::Placing => self.resolve(work, &claim).await,
            };
            let settled = match step {
                Step::Settle {
                    phase,
                    code,
                    message,
                } => {
                    self.record(work, phase, code, message, &mut tries, shutdown)
                        .await?
                }
                Step::Retry(retry) => self
                    .wait_to_retry(work, &claim, retry, &mut tries, shutdown)
                    .await?
                    .map(Settled::Parked),
            };
            if let Some(settled) = settled {
                return Ok(settled);
            }
        }
    }

    /// Claims the order for this settling, or waits to try again (another worker holds
    /// it, the database failed), or ends the settling (the order is parked, or the
    /// database refuses the event's data).
    async fn claim(
        &self,
        work: &Work<'_>,
        deadline: DateTime<Utc>,
        tries: &mut Tries,
        shutdown: &mut Shutdown,
    ) -> Result<Claiming, Interrupted> {
        let order = work.order;
        let claimed = claims::claim_with_content(
            &self.pool,
            order.order_id,
            &order.tenant_id,
            &work.account.id,
            claims::Content {
                digest: Some(&work.digest),
                user_digest: work.user_digest.as_deref(),
            },
            deadline,
            work.owner,
            work.account.lease(),
        )
        .await;
        match claimed {
            Ok(Claimed::Held(claim)) => Ok(Claiming::Held(claim)),
            Ok(Claimed::Busy { until }) => {
                let wait = (until - Utc::now()).to_std().unwrap_or_default();
                // Another worker holds the order (a copy of it, a worker that stopped
                // without letting go): its lease may run for a while.
                if let Some(bound) = self.park_instead(work, wait, &mut tries.retrying) {
                    return Ok(Claiming::Over(Settled::Parked(Parked {
                        why: format!("another worker holds the order; {bound}"),
                        wait,
                        deadline: None,
                    })));
                }
                shutdown
                    .sleep(wait.clamp(Duration::from_millis(100), Duration::from_secs(1)))
                    .await?;
                Ok(Claiming::Again)
            }
            Err(e) => {
                // The event's data (tenant, account, deadline) is what the database
                // refuses: the same claim would be refused forever.
                if let Some(refused) = crate::db::Refused::of(&e) {
                    return Ok(Claiming::Over(Settled::Refused(refused)));
                }
                tracing::warn!(order_id = %order.order_id, error = %e, "claiming the order failed; retrying");
                shutdown
                    .sleep(self.backoff.delay(tries.failures, random_fraction()))
                    .await?;
                tries.failures += 1;
                Ok(Claiming::Again)
            }
        }
    }

    /// The claim, if it is this event's order: the first event's account and content.
    /// Otherwise the conflict, with the lease given up: nothing is done for this event.
    async fn same_order(&self, work: &Work<'_>, claim: Claim) -> Result<Claim, Settled> {
        let order = work.order;
        if claim.provider_account != work.account.id {
            let _ = claims::release(&self.pool, order.order_id, work.owner).await;
            return Err(Settled::AccountConflict(claim));
        }
        if claim
            .content_digest
            .as_ref()
            .is_some_and(|first| *first != work.digest)
        {
            let _ = claims::release(&self.pool, order.order_id, work.owner).await;
            return Err(Settled::ContentConflict(claim));
        }
        Ok(claim)
    }

    /// Records the outcome a step reached. `None` when it is not recorded: another owner
    /// took the order over (the next claim reads what is), or recording failed (tried
    /// again after a backoff).
    async fn record(
        &self,
        work: &Work<'_>,
        phase: Phase,
        code: Option<String>,
        message: Option<String>,
        tries: &mut Tries,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Settled>, Interrupted> {
        let order = work.order;
        let recorded = claims::settle(
            &self.pool,
            order.order_id,
            work.owner,
            phase,
            code.as_deref(),
            message.as_deref(),
        )
        .await;
        // Recorded: that is the outcome. Not recorded (another owner took over):
        // the next claim reads what is.
        match recorded {
            Ok(Some(claim)) => return Ok(Some(Settled::from_recorded(claim))),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(order_id = %order.order_id, error = %e, "recording the outcome failed; retrying");
                shutdown
                    .sleep(self.backoff.delay(tries.failures, random_fraction()))
                    .await?;
                tries.failures += 1;
            }
        }
        Ok(None)
    }

    /// Waits as `retry` asks before the next step, noting why for `order show`; `Some`
    /// when the order is parked instead of waiting.
    async fn wait_to_retry(
        &self,
        work: &Work<'_>,
        claim: &Claim,
        retry: Retry,
        tries: &mut Tries,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Parked>, Interrupted> {
        let order = work.order;
        let Retry {
            after,
            within,
            why,
            noted,
        } = retry;
        let after = after.unwrap_or_else(|| {
            tries.failures += 1;
            self.backoff.delay(tries.failures - 1, random_fraction())
        });
        let after = within.map_or(after, |within| after.min(within));
        // For `order show`: what holds the order up, and since when. Best
        // effort: the retry goes on without it.
        if noted {
            if let Err(e) = claims::note_error(&self.pool, order.order_id, work.owner, &why).await {
                tracing::debug!(order_id = %order.order_id, error = %e, "could not record why the order waits");
            }
        }
        if let Some(bound) = self.park_instead(work, after, &mut tries.retrying) {
            return Ok(Some(Parked {
                why: format!("{why}; {bound}"),
                wait: after,
                deadline: Some(claim.deadline),
            }));
        }
        tracing::info!(order_id = %order.order_id, reference = %claim.provider_reference, retry_in_ms = after.as_millis() as u64, "{why}");
        shutdown.sleep(after).await?;
        Ok(None)
    }
}
