//! `dispatch_claims`: the provider reference of each order and how far its placement got.
//!
//! The protocol (G1): claim the order (which fixes its reference, once), take a lease so one
//! worker at a time works on it, mark `placing` *before* each call to the provider, and
//! record the settled outcome after it. A worker that finds `placing` does not know whether
//! the last call bought something and must check the reference first. Every write after the
//! claim is conditional on still holding the lease, so a worker whose lease lapsed (it was
//! too slow, or another consumer took over after a rebalance) cannot overwrite the new
//! holder's progress.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    New,
    Placing,
    Placed,
    Rejected,
    Expired,
}

impl Phase {
    fn parse(text: &str) -> Result<Phase, sqlx::Error> {
        Ok(match text {
            "new" => Phase::New,
            "placing" => Phase::Placing,
            "placed" => Phase::Placed,
            "rejected" => Phase::Rejected,
            "expired" => Phase::Expired,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown dispatch phase {other:?}").into(),
                ))
            }
        })
    }

    pub fn is_settled(self) -> bool {
        matches!(self, Phase::Placed | Phase::Rejected | Phase::Expired)
    }
}

/// A claim as its lease holder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub order_id: Uuid,
    pub provider_account: String,
    pub provider_reference: String,
    pub phase: Phase,
    pub place_calls: i32,
    pub deadline: DateTime<Utc>,
    pub outcome_code: Option<String>,
    pub outcome_message: Option<String>,
}

/// The answer to a claim attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// This worker holds the lease until the given time.
    Held(Claim),
    /// Another worker holds it.
    Busy { until: DateTime<Utc> },
}

type ClaimRow = (
    Uuid,
    String,
    String,
    String,
    i32,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
);

fn claim_from(row: ClaimRow) -> Result<Claim, sqlx::Error> {
    let (
        order_id,
        provider_account,
        provider_reference,
        phase,
        place_calls,
        deadline,
        outcome_code,
        outcome_message,
    ) = row;
    Ok(Claim {
        order_id,
        provider_account,
        provider_reference,
        phase: Phase::parse(&phase)?,
        place_calls,
        deadline,
        outcome_code,
        outcome_message,
    })
}

/// Claims an order for `owner` for `lease`, creating its row (and so fixing its reference)
/// if this is the first time the order is seen. `deadline` is only used for a new row.
pub async fn claim(
    pool: &PgPool,
    order_id: Uuid,
    provider_account: &str,
    deadline: DateTime<Utc>,
    owner: Uuid,
    lease: Duration,
) -> Result<Claimed, sqlx::Error> {
    sqlx::query(
        "INSERT INTO dispatch_claims (order_id, provider_account, deadline) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(provider_account)
    .bind(deadline)
    .execute(pool)
    .await?;
    let held: Option<ClaimRow> = sqlx::query_as(
        "UPDATE dispatch_claims
            SET lease_owner = $2, lease_until = now() + $3 * interval '1 millisecond'
          WHERE order_id = $1 AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $2)
          RETURNING order_id, provider_account, provider_reference, phase, place_calls, deadline,
                    outcome_code, outcome_message",
    )
    .bind(order_id)
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    match held {
        Some(row) => Ok(Claimed::Held(claim_from(row)?)),
        None => {
            let until: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT lease_until FROM dispatch_claims WHERE order_id = $1")
                    .bind(order_id)
                    .fetch_one(pool)
                    .await?;
            Ok(Claimed::Busy {
                until: until.unwrap_or_else(Utc::now),
            })
        }
    }
}

/// Records that a placement call is about to be made. Returns false if the lease was lost,
/// in which case the call must not be made.
pub async fn begin_placing(
    pool: &PgPool,
    order_id: Uuid,
    owner: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE dispatch_claims
            SET phase = 'placing', place_calls = place_calls + 1, updated_at = now()
          WHERE order_id = $1 AND lease_owner = $2 AND lease_until > now()
            AND phase IN ('new', 'placing')",
    )
    .bind(order_id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a settled outcome and releases the lease. Returns false if the lease was lost.
pub async fn settle(
    pool: &PgPool,
    order_id: Uuid,
    owner: Uuid,
    phase: Phase,
    code: Option<&str>,
    message: Option<&str>,
) -> Result<bool, sqlx::Error> {
    debug_assert!(phase.is_settled());
    let phase = match phase {
        Phase::Placed => "placed",
        Phase::Rejected => "rejected",
        Phase::Expired => "expired",
        Phase::New | Phase::Placing => unreachable!("settle takes a settled phase"),
    };
    let done = sqlx::query(
        "UPDATE dispatch_claims
            SET phase = $3, outcome_code = $4, outcome_message = $5,
                lease_owner = NULL, lease_until = NULL, updated_at = now()
          WHERE order_id = $1 AND lease_owner = $2 AND phase IN ('new', 'placing')",
    )
    .bind(order_id)
    .bind(owner)
    .bind(phase)
    .bind(code)
    .bind(message)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up early (shutdown), so that the next owner need not wait for it.
pub async fn release(pool: &PgPool, order_id: Uuid, owner: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE dispatch_claims SET lease_owner = NULL, lease_until = NULL
          WHERE order_id = $1 AND lease_owner = $2",
    )
    .bind(order_id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// The claim of one order, whoever holds it.
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Claim>, sqlx::Error> {
    let row: Option<ClaimRow> = sqlx::query_as(
        "SELECT order_id, provider_account, provider_reference, phase, place_calls, deadline,
                outcome_code, outcome_message
           FROM dispatch_claims WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    row.map(claim_from).transpose()
}
