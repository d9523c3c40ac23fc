//! One step of settling an order ([`super::Placer`]), the provider calls among them: a
//! placement under the claim's reference, or a check of what the provider knows under it,
//! and what each answer means for the order ([`Step`]: an outcome to record, or a wait
//! before the next step). Only the account's permanent codes, answered to the first call
//! under the reference, reject an order; after an unclear call nothing the provider
//! refuses fails it (G1, G9).

use super::{Placer, Work};
use crate::db::claims::{self, Begin, Claim, Phase};
use crate::provider::{CheckOutcome, PlaceOutcome, Placement};
use chrono::Utc;
use std::time::Duration;

/// The next move after one step.
pub(super) enum Step {
    Settle {
        phase: Phase,
        code: Option<String>,
        message: Option<String>,
    },
    Retry(Retry),
}

/// Try again after `after`, or after the next backoff delay when `None`; never later than
/// `within`.
pub(super) struct Retry {
    pub(super) after: Option<Duration>,
    pub(super) within: Option<Duration>,
    pub(super) why: String,
    /// Whether `why` is what `order show` should name as holding the order up; not for a
    /// wait on the account's breaker, whose cause the failed calls before it already
    /// recorded.
    pub(super) noted: bool,
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
        Step::Retry(Retry {
            after: None,
            within: None,
            why,
            noted: true,
        })
    }

    fn at_once(why: &str) -> Step {
        Step::Retry(Retry {
            after: Some(Duration::ZERO),
            within: None,
            why: why.into(),
            noted: true,
        })
    }
}

impl Placer {
    /// Places the order under its reference. Only called when nothing under that reference
    /// is known to the provider (`new`, or a check just said so).
    pub(super) async fn place(&self, work: &Work<'_>, claim: &Claim) -> Step {
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
        self.placed_answer(work, claim, before, outcome).await
    }

    /// What the answer to a placement call means. `before` is the claim's phase before the
    /// call: `new` when nothing had been sent under the reference yet, so that the answer
    /// is the provider's first word on it.
    async fn placed_answer(
        &self,
        work: &Work<'_>,
        claim: &Claim,
        before: Phase,
        outcome: PlaceOutcome,
    ) -> Step {
        let order = work.order;
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
        Step::Retry(Retry {
            after: Some(wait.max(Duration::from_millis(1))),
            within: None,
            noted: false,
            why: format!(
                "account {} takes no call for now (its circuit breaker is open or its calls \
                 are all busy)",
                work.account.id
            ),
        })
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
    pub(super) async fn resolve(&self, work: &Work<'_>, claim: &Claim) -> Step {
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
                    Ok(Some(unseen)) => Step::Retry(Retry {
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
                    }),
                    Ok(None) => Step::at_once("another worker took the order over; claiming again"),
                    Err(e) => Step::backoff(format!("recording the not-found answer failed: {e}")),
                }
            }
            // The provider cannot be asked (an account problem, no answer) and the deadline
            // passed more than a visibility window ago: no purchase is known, and waiting on
            // would leave the order without an answer for ever (G2). It fails at the deadline
            // like a check chain that never got an answer, saying that the placement is
            // unresolved, so that support can look the reference up.
            Err(Step::Retry(Retry { why, .. }))
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
