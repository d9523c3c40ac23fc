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

use crate::core::backoff::{random_fraction, Backoff};
use crate::core::event::OrderCreated;
use crate::db::claims::{self, Begin, Claim, Claimed, Phase};
use crate::provider::accounts::Account;
use crate::provider::{CheckOutcome, PlaceOutcome, Placement};
use crate::shutdown::{Interrupted, Shutdown};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::Mutex;
use std::time::{Duration, Instant};
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

/// The next move after one step.
enum Step {
    Settle {
        phase: Phase,
        code: Option<String>,
        message: Option<String>,
    },
    /// Try again after `after`, or after the next backoff delay when `None`; never later
    /// than `within`.
    Retry {
        after: Option<Duration>,
        within: Option<Duration>,
        why: String,
        /// Whether `why` is what `order show` should name as holding the order up; not
        /// for a wait on the account's breaker, whose cause the failed calls before it
        /// already recorded.
        noted: bool,
    },
}

impl Step {
    fn placed() -> Step {
        Step::Settle {
            phase: Phase::Placed,
            code: None,
            message: None,
        }
    }

    fn backoff(why: String) -> Step {
        Step::Retry {
            after: None,
            within: None,
            why,
            noted: true,
        }
    }

    fn at_once(why: &str) -> Step {
        Step::Retry {
            after: Some(Duration::ZERO),
            within: None,
            why: why.into(),
            noted: true,
        }
    }
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
    /// The last code and message the provider refused a placement with, for the failure
    /// that ends an order the provider kept refusing until its deadline.
    refused: Mutex<Option<(String, String)>>,
    /// When this settling began: its time in process counts against `park_after`.
    started: Instant,
}

pub struct Placer {
    pub pool: PgPool,
    pub backoff: Backoff,
    /// How long one order may be worked on in this process, its waits included, before
    /// it is parked instead of waiting again.
    pub park_after: Duration,
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
        let mut failures = 0u32;
        let mut announced = false;
        let mut retrying = None;
        loop {
            if shutdown.is_set() {
                return Err(Interrupted);
            }
            let claimed = claims::claim_with_content(
                &self.pool,
                order.order_id,
                &order.tenant_id,
                &work.account.id,
                Some(&work.digest),
                deadline,
                work.owner,
                work.account.lease(),
            )
            .await;
            let claim = match claimed {
                Ok(Claimed::Held(claim)) => claim,
                Ok(Claimed::Busy { until }) => {
                    let wait = (until - Utc::now()).to_std().unwrap_or_default();
                    // Another worker holds the order (a copy of it, a worker that stopped
                    // without letting go): its lease may run for a while.
                    if let Some(bound) = self.park_instead(work, wait, &mut retrying) {
                        return Ok(Settled::Parked(Parked {
                            why: format!("another worker holds the order; {bound}"),
                            wait,
                            deadline: None,
                        }));
                    }
                    shutdown
                        .sleep(wait.clamp(Duration::from_millis(100), Duration::from_secs(1)))
                        .await?;
                    continue;
                }
                Err(e) => {
                    // The event's data (tenant, account, deadline) is what the database
                    // refuses: the same claim would be refused forever.
                    if let Some(refused) = crate::db::Refused::of(&e) {
                        return Ok(Settled::Refused(refused));
                    }
                    tracing::warn!(order_id = %order.order_id, error = %e, "claiming the order failed; retrying");
                    shutdown
                        .sleep(self.backoff.delay(failures, random_fraction()))
                        .await?;
                    failures += 1;
                    continue;
                }
            };
            if claim.provider_account != work.account.id {
                let _ = claims::release(&self.pool, order.order_id, work.owner).await;
                return Ok(Settled::AccountConflict(claim));
            }
            if claim
                .content_digest
                .as_ref()
                .is_some_and(|first| *first != work.digest)
            {
                let _ = claims::release(&self.pool, order.order_id, work.owner).await;
                return Ok(Settled::ContentConflict(claim));
            }
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
            match step {
                Step::Settle {
                    phase,
                    code,
                    message,
                } => {
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
                        Ok(Some(claim)) => return Ok(Settled::from_recorded(claim)),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(order_id = %order.order_id, error = %e, "recording the outcome failed; retrying");
                            shutdown
                                .sleep(self.backoff.delay(failures, random_fraction()))
                                .await?;
                            failures += 1;
                        }
                    }
                }
                Step::Retry {
                    after,
                    within,
                    why,
                    noted,
                } => {
                    let after = after.unwrap_or_else(|| {
                        failures += 1;
                        self.backoff.delay(failures - 1, random_fraction())
                    });
                    let after = within.map_or(after, |within| after.min(within));
                    // For `order show`: what holds the order up, and since when. Best
                    // effort: the retry goes on without it.
                    if noted {
                        if let Err(e) =
                            claims::note_error(&self.pool, order.order_id, work.owner, &why).await
                        {
                            tracing::debug!(order_id = %order.order_id, error = %e, "could not record why the order waits");
                        }
                    }
                    if let Some(bound) = self.park_instead(work, after, &mut retrying) {
                        return Ok(Settled::Parked(Parked {
                            why: format!("{why}; {bound}"),
                            wait: after,
                            deadline: Some(claim.deadline),
                        }));
                    }
                    tracing::info!(order_id = %order.order_id, reference = %claim.provider_reference, retry_in_ms = after.as_millis() as u64, "{why}");
                    shutdown.sleep(after).await?;
                }
            }
        }
    }

    /// Places the order under its reference. Only called when nothing under that reference
    /// is known to the provider (`new`, or a check just said so).
    async fn place(&self, work: &Work<'_>, claim: &Claim) -> Step {
        if Utc::now() > claim.deadline {
            return Self::expired(work);
        }
        let order = work.order;
        let permit = match work.account.permit_within(self.patience(work)).await {
            Ok(permit) => permit,
            // Nothing was called: the wait decides whether the order is parked.
            Err(wait) => return Self::account_busy(work, wait),
        };
        let lease = work.account.lease();
        let before =
            match claims::begin_placing(&self.pool, order.order_id, work.owner, lease).await {
                Ok(Begin::Ready(before)) => before,
                Ok(Begin::LeaseLost) => {
                    return Step::at_once("another worker took the order over; claiming again")
                }
                // The wait for the permit outlasted the deadline.
                Ok(Begin::PastDeadline) => return Self::expired(work),
                Err(e) => return Step::backoff(format!("marking the placement failed: {e}")),
            };
        let placement = Placement {
            reference: claim.provider_reference.clone(),
            product: order.product.clone(),
            user_identifier: order.user_identifier.clone(),
            user_extra: order.user_extra.clone(),
        };
        let outcome = permit.place(&placement).await;
        let account = &work.account.id;
        match outcome {
            PlaceOutcome::Accepted { .. } => Step::placed(),
            PlaceOutcome::Rejected { code, message } if before == Phase::New => Step::Settle {
                phase: Phase::Rejected,
                code: Some(code),
                message: Some(message),
            },
            // The provider answered and bought nothing, and nothing was sent before: the order
            // is `new` again and is placed again after a backoff, until its deadline.
            PlaceOutcome::Refused { code, message } if before == Phase::New => {
                self.not_sent(work, before).await;
                let step = Step::backoff(format!(
                    "the provider refused the order for now ({code}); placing it again later"
                ));
                *work.refused.lock().expect("refusal lock") = Some((code, message));
                step
            }
            // An earlier call under this reference may have bought the order, and a provider
            // may refuse a reused referans with any code: not a customer rejection (G9). The
            // order stays `placing`, so the next step checks the reference again.
            PlaceOutcome::Rejected { code, message } | PlaceOutcome::Refused { code, message } => {
                let step = Step::backoff(format!(
                    "the provider refused to place the order again ({code}); an earlier call may \
                     have bought it, checking the reference next"
                ));
                *work.refused.lock().expect("refusal lock") = Some((code, message));
                step
            }
            // The very first call under this reference: the order it names is not ours.
            PlaceOutcome::Duplicate { code, message } if before == Phase::New => {
                tracing::error!(
                    order_id = %order.order_id, reference = %claim.provider_reference,
                    "the provider already had an order under this new reference: references \
                     overlap with another system on account {account} (see README); \
                     failing the order, nothing was bought for it"
                );
                Step::Settle {
                    phase: Phase::Rejected,
                    code: Some(code),
                    message: Some(message),
                }
            }
            PlaceOutcome::Duplicate { code, .. } => Step::backoff(format!(
                "the provider already has this reference ({code}); checking it next"
            )),
            PlaceOutcome::AccountProblem { detail, not_placed } => {
                if not_placed {
                    self.not_sent(work, before).await;
                }
                Step::backoff(format!("account {account} has a problem: {detail}"))
            }
            PlaceOutcome::Transient { detail } => {
                self.not_sent(work, before).await;
                Step::backoff(format!("placement did not reach the provider: {detail}"))
            }
            PlaceOutcome::Unknown { detail } => Step::backoff(format!(
                "placement outcome unknown ({detail}); checking the reference next"
            )),
        }
    }

    /// The account would keep the order waiting `wait` before a call (its breaker is open, or
    /// its concurrency cap stayed full): a retry after that wait, which parks the order
    /// when it is long.
    fn account_busy(work: &Work<'_>, wait: Duration) -> Step {
        Step::Retry {
            after: Some(wait.max(Duration::from_millis(1))),
            within: None,
            noted: false,
            why: format!(
                "account {} takes no call for now (its circuit breaker is open or its calls \
                 are all busy)",
                work.account.id
            ),
        }
    }

    /// The order's deadline passed and nothing is known to be bought. If the provider kept
    /// refusing it, the failure says so, with the last code: not a rejection (G9), but not a
    /// silent expiry either.
    fn expired(work: &Work<'_>) -> Step {
        let refused = work.refused.lock().expect("refusal lock").clone();
        match refused {
            Some((code, message)) => Step::Settle {
                phase: Phase::Expired,
                message: Some(format!(
                    "the provider kept refusing with code {code} until the deadline ({message})"
                )),
                code: Some(code),
            },
            None => Step::Settle {
                phase: Phase::Expired,
                code: None,
                message: Some("the deadline passed before the provider took the order".into()),
            },
        }
    }

    /// The call certainly bought nothing. If nothing had been sent before it either, the
    /// order is `new` again, so that its deadline can end it without a check.
    async fn not_sent(&self, work: &Work<'_>, before: Phase) {
        if before == Phase::New {
            if let Err(e) =
                claims::unmark_placing(&self.pool, work.order.order_id, work.owner).await
            {
                // Harmless: `placing` only costs a check before the next attempt.
                tracing::debug!(order_id = %work.order.order_id, error = %e, "could not reset the placement mark");
            }
        }
    }

    /// Settles a `placing` order: whatever the provider knows under the reference decides.
    /// "Not found" right after a call proves nothing, because providers show new orders with
    /// a lag: the order is placed again (under the same reference) only once the reference
    /// has stayed not-found for the account's visibility window, recorded in the claim so
    /// that a restart does not shorten the wait.
    async fn resolve(&self, work: &Work<'_>, claim: &Claim) -> Step {
        // Past the deadline no call starts; the order fails only once its reference has
        // stayed not-found for the visibility window (G9: the deadline with no purchase
        // known, and a purchase made by the last call would show within the window).
        let past_deadline = Utc::now() > claim.deadline;
        match self.check(work, claim).await {
            Ok(true) => Step::placed(),
            Ok(false) => {
                let window = work.account.visibility_window;
                let noted = claims::note_not_found(
                    &self.pool,
                    work.order.order_id,
                    work.owner,
                    work.account.lease(),
                )
                .await;
                match noted {
                    Ok(Some(unseen)) if unseen >= window && past_deadline => Self::expired(work),
                    Ok(Some(unseen)) if unseen >= window => self.place(work, claim).await,
                    Ok(Some(unseen)) => Step::Retry {
                        after: None,
                        within: Some(window - unseen),
                        noted: true,
                        why: format!(
                            "the provider does not show the reference yet (not found for {} ms \
                             of a {} ms visibility window); checking it again before placing \
                             it again",
                            unseen.as_millis(),
                            window.as_millis()
                        ),
                    },
                    Ok(None) => Step::at_once("another worker took the order over; claiming again"),
                    Err(e) => Step::backoff(format!("recording the not-found answer failed: {e}")),
                }
            }
            // The provider cannot be asked (an account problem, no answer) and the deadline
            // passed more than a visibility window ago: no purchase is known, and waiting on
            // would leave the order without an answer for ever (G2). It fails at the deadline
            // like a check chain that never got an answer, saying that the placement is
            // unresolved, so that support can look the reference up.
            Err(Step::Retry { why, .. })
                if Utc::now()
                    > claim.deadline
                        + chrono::Duration::from_std(work.account.visibility_window)
                            .unwrap_or_default() =>
            {
                tracing::warn!(
                    order_id = %work.order.order_id, reference = %claim.provider_reference,
                    "failing an order at its deadline whose unclear placement the provider \
                     could not be asked about: {why}"
                );
                Step::Settle {
                    phase: Phase::Expired,
                    code: None,
                    message: Some(format!(
                        "the deadline passed and the provider could not say whether the unclear \
                         placement under reference {} went through ({why})",
                        claim.provider_reference
                    )),
                }
            }
            Err(step) => step,
        }
    }

    /// Whether the provider has an order under the claim's reference; `Err` when it could not
    /// say.
    async fn check(&self, work: &Work<'_>, claim: &Claim) -> Result<bool, Step> {
        let permit = match work.account.permit_within(self.patience(work)).await {
            Ok(permit) => permit,
            Err(wait) => return Err(Self::account_busy(work, wait)),
        };
        match permit.check(&claim.provider_reference).await {
            CheckOutcome::Pending
            | CheckOutcome::Completed { .. }
            | CheckOutcome::Cancelled { .. }
            | CheckOutcome::Unclear { .. } => Ok(true),
            CheckOutcome::NotFound { .. } => Ok(false),
            // Only the account's not-found codes say the provider has nothing (G9).
            CheckOutcome::Refused { code, message } => Err(Step::backoff(format!(
                "checking the reference was refused ({code}|{message}); not taken for not-found"
            ))),
            CheckOutcome::AccountProblem { detail } => Err(Step::backoff(format!(
                "account {} has a problem: {detail}",
                work.account.id
            ))),
            CheckOutcome::Transient { detail } => Err(Step::backoff(format!(
                "checking the reference failed: {detail}"
            ))),
        }
    }
}
