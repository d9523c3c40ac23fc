//! The poll stage's one-step path: one message, one check step, taken alone in
//! `check_chains` (a copy of a taken step is dropped, a step another worker holds is waited
//! for), checked within its account's caps and breaker, its outcome published before the
//! step is recorded as done (G2, G4, G6). The batched path (`batch.rs`) falls back to it
//! for steps it cannot take together.

use super::handler::refused_step;
use super::{decide, PollHandler};
use crate::core::event::StatusCheck;
use crate::db::chains::{self, Begun};
use crate::provider::accounts::Account;
use crate::shutdown::{Interrupted, Shutdown};
use chrono::Utc;
use rdkafka::message::OwnedMessage;
use std::time::Duration;
use uuid::Uuid;

impl PollHandler {
    pub(super) async fn process(
        &self,
        message: &OwnedMessage,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let check = match self.decode(message) {
            Ok(check) => check,
            Err(why) => return self.dead_letter(message, why, shutdown).await,
        };
        tracing::Span::current().record("order_id", tracing::field::display(check.order_id));
        let account = self
            .accounts
            .get(&check.provider_account)
            .expect("checked when decoding");
        let owner = Uuid::new_v4();
        let lease = account.lease();
        loop {
            let begun = crate::db::retry_unless_refused(
                "taking a check step",
                &self.backoff,
                shutdown,
                || chains::begin_step(&self.pool, &check, owner, lease),
            )
            .await?;
            let begun = match begun {
                Ok(begun) => begun,
                Err(refused) => {
                    let why = refused_step(&check, "taking", refused);
                    return self.dead_letter(message, why, shutdown).await;
                }
            };
            match begun {
                Begun::Mine => break,
                Begun::Stale => {
                    tracing::debug!(order_id = %check.order_id, seq = check.seq, "a copy of a check step that is already taken; dropped");
                    return Ok(());
                }
                Begun::Busy { until } => {
                    let wait = (until - Utc::now()).to_std().unwrap_or_default();
                    shutdown
                        .sleep(wait.clamp(Duration::from_millis(100), lease))
                        .await?;
                }
            }
        }
        let stepped = self.step(message, &check, account, owner, shutdown).await;
        if stepped.is_err() {
            // Let the next owner take the step at once instead of waiting the lease out.
            let _ = chains::release(&self.pool, check.order_id, check.seq, owner).await;
        }
        stepped
    }

    /// Checks the order and publishes what follows, then records the step as done.
    async fn step(
        &self,
        message: &OwnedMessage,
        check: &StatusCheck,
        account: &Account,
        owner: Uuid,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let permit = tokio::select! {
            permit = account.permit() => permit,
            _ = shutdown.wait() => return Err(Interrupted),
        };
        // The wait for the caps or an open breaker may have outlasted the lease: renew it,
        // and step aside if another worker took the step over meanwhile.
        let renewed =
            crate::shutdown::retry("renewing a check step", &self.backoff, shutdown, || {
                chains::begin_step(&self.pool, check, owner, account.lease())
            })
            .await?;
        if renewed != Begun::Mine {
            tracing::debug!(order_id = %check.order_id, seq = check.seq, "the check step was taken over while waiting for the provider");
            return Ok(());
        }
        let outcome = tokio::select! {
            outcome = permit.check(&check.provider_reference) => outcome,
            _ = shutdown.wait() => return Err(Interrupted),
        };
        let decision = decide(check, outcome, Utc::now(), &self.schedule);
        self.observe(check, &decision);
        let (state, next, end) = self.effects(check, decision);
        self.publish(state.as_ref(), next.as_ref(), shutdown)
            .await?;
        let finished = crate::db::retry_unless_refused(
            "recording a check step",
            &self.backoff,
            shutdown,
            || chains::finish_step(&self.pool, check.order_id, check.seq, owner, &end),
        )
        .await?;
        let finished = match finished {
            Ok(finished) => finished,
            Err(refused) => {
                let why = refused_step(check, "recording", refused);
                return self.dead_letter(message, why, shutdown).await;
            }
        };
        if !finished {
            tracing::warn!(order_id = %check.order_id, seq = check.seq, "the check step was taken over by another worker; its next step will run once");
        }
        Ok(())
    }
}
