//! Settling one order with its provider: placed, rejected or expired, and never bought
//! twice (G1).
//!
//! The loop works from the order's claim in `dispatch_claims` (see [`crate::db::claims`]):
//!
//! | phase     | what the lease holder does                                               |
//! |-----------|--------------------------------------------------------------------------|
//! | `new`     | mark `placing`, place under the order's fixed reference                   |
//! | `placing` | an earlier call may have bought it: check the reference; place again (same |
//! |           | reference) only if the provider has no order under it                    |
//! | settled   | nothing: report the recorded outcome (a redelivery, a duplicate event)    |
//!
//! Transient failures and account problems wait with backoff while other orders go on; a
//! placement whose answer was lost is settled by a check, never by a new reference.

use crate::core::backoff::{random_fraction, Backoff};
use crate::core::event::OrderCreated;
use crate::db::claims::{self, Claim, Claimed, Phase};
use crate::provider::accounts::Account;
use crate::provider::{CheckOutcome, PlaceOutcome, Placement};
use crate::shutdown::{Interrupted, Shutdown};
use chrono::Utc;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// How long to wait before checking a placement whose answer was lost.
const UNKNOWN_OUTCOME_PAUSE: Duration = Duration::from_secs(1);

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
}

/// The next move after one step.
enum Step {
    Settle {
        phase: Phase,
        code: Option<String>,
        message: Option<String>,
    },
    /// Try again after `after`, or after the next backoff delay when `None`.
    Retry {
        after: Option<Duration>,
        why: String,
    },
}

pub struct Placer {
    pub pool: PgPool,
    pub backoff: Backoff,
}

impl Placer {
    /// How long a lease lasts: longer than any provider call, so a live holder never loses
    /// it mid-call; short enough that a crashed holder's orders resume soon.
    fn lease(account: &Account) -> Duration {
        account.request_timeout * 2 + Duration::from_secs(5)
    }

    /// Works on `order` until its placement is settled. `announce` is called once, before the
    /// first placement call, so the caller can publish `dispatching`.
    pub async fn settle<F, Fut>(
        &self,
        order: &OrderCreated,
        account: &Account,
        default_deadline: chrono::Duration,
        mut announce: F,
        shutdown: &mut Shutdown,
    ) -> Result<Settled, Interrupted>
    where
        F: FnMut(&Claim) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let deadline = order
            .deadline
            .unwrap_or_else(|| Utc::now() + default_deadline);
        // Each settling is its own lease owner, so two copies of one order in this process
        // take turns just as copies in two processes do.
        let owner = Uuid::new_v4();
        let mut failures = 0u32;
        let mut announced = false;
        loop {
            if shutdown.is_set() {
                let _ = claims::release(&self.pool, order.order_id, owner).await;
                return Err(Interrupted);
            }
            let claimed = claims::claim(
                &self.pool,
                order.order_id,
                &account.id,
                deadline,
                owner,
                Self::lease(account),
            )
            .await;
            let claim = match claimed {
                Ok(Claimed::Held(claim)) => claim,
                Ok(Claimed::Busy { until }) => {
                    let wait = (until - Utc::now()).to_std().unwrap_or_default();
                    shutdown
                        .sleep(wait.clamp(Duration::from_millis(100), Duration::from_secs(1)))
                        .await?;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(order_id = %order.order_id, error = %e, "claiming the order failed; retrying");
                    shutdown
                        .sleep(self.backoff.delay(failures, random_fraction()))
                        .await?;
                    failures += 1;
                    continue;
                }
            };
            let step = match claim.phase {
                Phase::Placed => return Ok(Settled::Placed(claim)),
                Phase::Expired => return Ok(Settled::Expired(claim)),
                Phase::Rejected => {
                    let code = claim.outcome_code.clone().unwrap_or_default();
                    let message = claim.outcome_message.clone().unwrap_or_default();
                    return Ok(Settled::Rejected {
                        claim,
                        code,
                        message,
                    });
                }
                Phase::New => {
                    if !announced {
                        announce(&claim).await;
                        announced = true;
                    }
                    self.place(order, account, &claim, owner).await
                }
                Phase::Placing => self.resolve(order, account, &claim, owner).await,
            };
            match step {
                Step::Settle {
                    phase,
                    code,
                    message,
                } => {
                    match claims::settle(
                        &self.pool,
                        order.order_id,
                        owner,
                        phase,
                        code.as_deref(),
                        message.as_deref(),
                    )
                    .await
                    {
                        // Either way, the next claim reads the recorded outcome.
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(order_id = %order.order_id, error = %e, "recording the outcome failed; retrying");
                            shutdown
                                .sleep(self.backoff.delay(failures, random_fraction()))
                                .await?;
                            failures += 1;
                        }
                    }
                }
                Step::Retry { after, why } => {
                    let after = after.unwrap_or_else(|| {
                        failures += 1;
                        self.backoff.delay(failures - 1, random_fraction())
                    });
                    tracing::info!(order_id = %order.order_id, reference = %claim.provider_reference, retry_in_ms = after.as_millis() as u64, "{why}");
                    shutdown.sleep(after).await?;
                }
            }
        }
    }

    fn retry(why: String) -> Step {
        Step::Retry { after: None, why }
    }

    /// Places the order under its reference. Only called when nothing under that reference
    /// can exist at the provider (`new`, or a check just said so).
    async fn place(
        &self,
        order: &OrderCreated,
        account: &Account,
        claim: &Claim,
        owner: Uuid,
    ) -> Step {
        if Utc::now() > claim.deadline {
            return Step::Settle {
                phase: Phase::Expired,
                code: None,
                message: Some("the deadline passed before the provider took the order".into()),
            };
        }
        match claims::begin_placing(&self.pool, order.order_id, owner).await {
            Ok(true) => {}
            Ok(false) => {
                return Step::Retry {
                    after: Some(Duration::ZERO),
                    why: "lease lost before placing; claiming again".into(),
                }
            }
            Err(e) => return Self::retry(format!("marking the placement failed: {e}")),
        }
        let placement = Placement {
            reference: claim.provider_reference.clone(),
            product: order.product.clone(),
            user_identifier: order.user_identifier.clone(),
            user_extra: order.user_extra.clone(),
        };
        let outcome = account.place(&placement).await;
        match outcome {
            PlaceOutcome::Accepted { .. } => Step::Settle {
                phase: Phase::Placed,
                code: None,
                message: None,
            },
            PlaceOutcome::Rejected { code, message } => Step::Settle {
                phase: Phase::Rejected,
                code: Some(code),
                message: Some(message),
            },
            PlaceOutcome::AccountProblem { detail } => {
                Self::retry(format!("account {} has a problem: {detail}", account.id))
            }
            PlaceOutcome::Transient { detail } => Self::retry(format!(
                "placement failed before reaching the provider: {detail}"
            )),
            PlaceOutcome::Unknown { detail } => Step::Retry {
                after: Some(UNKNOWN_OUTCOME_PAUSE),
                why: format!("placement outcome unknown ({detail}); checking the reference next"),
            },
        }
    }

    /// Settles a `placing` order: whatever the provider knows under the reference decides.
    async fn resolve(
        &self,
        order: &OrderCreated,
        account: &Account,
        claim: &Claim,
        owner: Uuid,
    ) -> Step {
        match self.check(account, claim).await {
            Ok(true) => Step::Settle {
                phase: Phase::Placed,
                code: None,
                message: None,
            },
            Ok(false) => match self.place(order, account, claim, owner).await {
                // Between the check and this placement an earlier call may still have landed,
                // and a provider refuses a reused reference: look once more before failing.
                Step::Settle {
                    phase: Phase::Rejected,
                    code,
                    message,
                } => match self.check(account, claim).await {
                    Ok(true) => Step::Settle {
                        phase: Phase::Placed,
                        code: None,
                        message: None,
                    },
                    Ok(false) => Step::Settle {
                        phase: Phase::Rejected,
                        code,
                        message,
                    },
                    Err(step) => step,
                },
                step => step,
            },
            Err(step) => step,
        }
    }

    /// Whether the provider has an order under the claim's reference; `Err` when it could not
    /// say.
    async fn check(&self, account: &Account, claim: &Claim) -> Result<bool, Step> {
        let outcome = account.check(&claim.provider_reference).await;
        match outcome {
            CheckOutcome::Pending
            | CheckOutcome::Completed { .. }
            | CheckOutcome::Cancelled { .. } => Ok(true),
            CheckOutcome::NotFound { .. } => Ok(false),
            CheckOutcome::AccountProblem { detail } => Err(Self::retry(format!(
                "account {} has a problem: {detail}",
                account.id
            ))),
            CheckOutcome::Transient { detail } => Err(Self::retry(format!(
                "checking the reference failed: {detail}"
            ))),
        }
    }
}
