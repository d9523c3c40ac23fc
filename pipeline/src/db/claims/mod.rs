//! `dispatch_claims`: the provider reference of each order and how far its placement got.
//!
//! The protocol (G1): claim the order (which fixes its reference, once), take a lease so one
//! worker at a time works on it, mark `placing` *before* each call to the provider, and
//! record the settled outcome after it. A worker that finds `placing` does not know whether
//! the last call bought something and must check the reference first. Every write after the
//! claim is conditional on still being the lease owner, so a worker whose lease passed to
//! another (it was too slow, or another consumer took over after a rebalance) cannot
//! overwrite the new owner's progress, nor place the order alongside it.
//!
//! A `placing` order whose reference the provider does not show is placed again only after
//! it stayed not-found for the account's visibility window ([`note_not_found`]), counted
//! from the first such check after the last call (G9: new orders show with a lag).
//!
//! One order at a time here; the statements over a whole batch of orders (the dispatch
//! stage's claims, settlements and invalid answers) are in `batch`.

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
    /// The first event of the order id could not be placed as given and was answered
    /// `failed` (invalid); nothing is ever placed under the id.
    Invalid,
}

impl Phase {
    fn parse(text: &str) -> Result<Phase, sqlx::Error> {
        Ok(match text {
            "new" => Phase::New,
            "placing" => Phase::Placing,
            "placed" => Phase::Placed,
            "rejected" => Phase::Rejected,
            "expired" => Phase::Expired,
            "invalid" => Phase::Invalid,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown dispatch phase {other:?}").into(),
                ))
            }
        })
    }

    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Phase::Placed | Phase::Rejected | Phase::Expired | Phase::Invalid
        )
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
    /// The digest of the content of the event that made the claim
    /// ([`crate::core::event::OrderCreated::content_digest`]); `None` for claims made
    /// without one.
    pub content_digest: Option<String>,
    /// When a check first found nothing under the reference since the last placement call.
    pub first_not_found_at: Option<DateTime<Utc>>,
}

/// The answer to a claim attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// This worker holds the lease until the given time.
    Held(Claim),
    /// Another worker holds it.
    Busy { until: DateTime<Utc> },
}

/// A row as read; `lease_until` only matters to a worker that does not hold the claim.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    order_id: Uuid,
    provider_account: String,
    provider_reference: String,
    phase: String,
    place_calls: i32,
    deadline: DateTime<Utc>,
    outcome_code: Option<String>,
    outcome_message: Option<String>,
    lease_until: Option<DateTime<Utc>>,
    content_digest: Option<String>,
    first_not_found_at: Option<DateTime<Utc>>,
}

/// The columns of a [`ClaimRow`], spliced into queries at compile time.
macro_rules! columns {
    () => {
        "order_id, provider_account, provider_reference, phase, place_calls, deadline, \
         outcome_code, outcome_message, lease_until, content_digest, first_not_found_at"
    };
}

// After `columns!`, so that the batch statements can splice it too.
mod batch;
pub use batch::{
    claim_invalid, claim_new_batch, reopen_invalid, settle_batch, InvalidClaim, NewClaim, Outcome,
    SETTLE_BATCH,
};

impl ClaimRow {
    fn into_claim(self) -> Result<Claim, sqlx::Error> {
        Ok(Claim {
            order_id: self.order_id,
            provider_account: self.provider_account,
            provider_reference: self.provider_reference,
            phase: Phase::parse(&self.phase)?,
            place_calls: self.place_calls,
            deadline: self.deadline,
            outcome_code: self.outcome_code,
            outcome_message: self.outcome_message,
            content_digest: self.content_digest,
            first_not_found_at: self.first_not_found_at,
        })
    }
}

/// Claims an order for `owner` for `lease`, creating its row (and so fixing its reference)
/// if this is the first time the order is seen. `deadline` is only used for a new row. A
/// settled claim is returned without taking a lease: there is nothing left to do under it.
pub async fn claim(
    pool: &PgPool,
    order_id: Uuid,
    tenant_id: &str,
    provider_account: &str,
    deadline: DateTime<Utc>,
    owner: Uuid,
    lease: Duration,
) -> Result<Claimed, sqlx::Error> {
    claim_with_content(
        pool,
        order_id,
        tenant_id,
        provider_account,
        Content::default(),
        deadline,
        owner,
        lease,
    )
    .await
}

/// What a new claim records about the event that makes it, beyond its account: the
/// digest of its content ([`crate::core::event::OrderCreated::content_digest`]) and the
/// keyed digest of its first user field ([`crate::lookup`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Content<'a> {
    pub digest: Option<&'a str>,
    pub user_digest: Option<&'a str>,
}

/// [`claim`], recording `content` with a new row; an existing row keeps the digest of the
/// event that made it, for the caller to compare.
#[allow(clippy::too_many_arguments)]
pub async fn claim_with_content(
    pool: &PgPool,
    order_id: Uuid,
    tenant_id: &str,
    provider_account: &str,
    content: Content<'_>,
    deadline: DateTime<Utc>,
    owner: Uuid,
    lease: Duration,
) -> Result<Claimed, sqlx::Error> {
    // One statement, so one commit: a new order is inserted already leased to `owner`; an
    // unsettled one is leased to `owner` if its lease is free, ran out, or is `owner`'s.
    let held: Option<ClaimRow> = sqlx::query_as(concat!(
        "INSERT INTO dispatch_claims AS c (order_id, tenant_id, provider_account, deadline,
                                           content_digest, lease_owner, lease_until,
                                           user_digest)
         VALUES ($1, $2, $3, $4, $5, $6, now() + $7 * interval '1 millisecond', $8)
         ON CONFLICT (order_id) DO UPDATE
            SET lease_owner = EXCLUDED.lease_owner, lease_until = EXCLUDED.lease_until
          WHERE c.phase IN ('new', 'placing')
            AND (c.lease_until IS NULL OR c.lease_until < now() OR c.lease_owner = EXCLUDED.lease_owner)
          RETURNING ",
        columns!()
    ))
    .bind(order_id)
    .bind(tenant_id)
    .bind(provider_account)
    .bind(deadline)
    .bind(content.digest)
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .bind(content.user_digest)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = held {
        return Ok(Claimed::Held(row.into_claim()?));
    }
    let row: ClaimRow = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM dispatch_claims WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_one(pool)
    .await?;
    let until = row.lease_until.unwrap_or_else(Utc::now);
    let claim = row.into_claim()?;
    Ok(if claim.phase.is_settled() {
        Claimed::Held(claim)
    } else {
        Claimed::Busy { until }
    })
}

/// What [`begin_placing`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Go ahead. The phase before: `new` (nothing was ever sent) or `placing` (an earlier
    /// call may have landed).
    Ready(Phase),
    /// Another owner took the order over: do not call.
    LeaseLost,
    /// The order's deadline has passed: do not call.
    PastDeadline,
}

/// Records that a placement call is about to be made and renews the lease for it. A lease
/// that ran out but that nobody took over is still this owner's.
pub async fn begin_placing(
    pool: &PgPool,
    order_id: Uuid,
    owner: Uuid,
    lease: Duration,
) -> Result<Begin, sqlx::Error> {
    let before: Option<String> = sqlx::query_scalar(
        "WITH before AS (
             SELECT order_id, phase FROM dispatch_claims WHERE order_id = $1 FOR UPDATE
         )
         UPDATE dispatch_claims c
            SET phase = 'placing', place_calls = c.place_calls + 1, updated_at = now(),
                lease_until = now() + $3 * interval '1 millisecond',
                -- This call may land unseen in its turn: the wait starts again.
                first_not_found_at = NULL
           FROM before
          WHERE c.order_id = before.order_id AND c.lease_owner = $2
            AND c.phase IN ('new', 'placing') AND c.deadline > now()
          RETURNING before.phase",
    )
    .bind(order_id)
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    if let Some(before) = before {
        return Ok(Begin::Ready(Phase::parse(&before)?));
    }
    let (owned, past): (bool, bool) = sqlx::query_as(
        "SELECT lease_owner IS NOT DISTINCT FROM $2 AND phase IN ('new', 'placing'),
                deadline <= now()
           FROM dispatch_claims WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(owner)
    .fetch_one(pool)
    .await?;
    Ok(if owned && past {
        Begin::PastDeadline
    } else {
        Begin::LeaseLost
    })
}

/// Undoes [`begin_placing`] when the call certainly never reached the provider and nothing
/// had been sent before it, so that the order's deadline can still end it cleanly.
pub async fn unmark_placing(pool: &PgPool, order_id: Uuid, owner: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE dispatch_claims SET phase = 'new', updated_at = now()
          WHERE order_id = $1 AND lease_owner = $2 AND phase = 'placing'",
    )
    .bind(order_id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that a check of a `placing` order's reference found nothing, unless an earlier
/// check since the last placement call did already, and renews the lease. Returns how long
/// the reference has been not-found (by the database's clock, so every worker counts
/// alike), or `None` if the lease passed to another owner.
pub async fn note_not_found(
    pool: &PgPool,
    order_id: Uuid,
    owner: Uuid,
    lease: Duration,
) -> Result<Option<Duration>, sqlx::Error> {
    let for_ms: Option<f64> = sqlx::query_scalar(
        "UPDATE dispatch_claims
            SET first_not_found_at = COALESCE(first_not_found_at, now()),
                lease_until = now() + $3 * interval '1 millisecond'
          WHERE order_id = $1 AND lease_owner = $2 AND phase = 'placing'
          RETURNING (extract(epoch FROM now() - COALESCE(first_not_found_at, now())) * 1000)::float8",
    )
    .bind(order_id)
    .bind(owner)
    .bind(lease.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    Ok(for_ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64)))
}

/// Records why an attempt on a claim this owner holds failed, and since when attempts have
/// failed (kept until the claim settles), for `orderflow order show`.
pub async fn note_error(
    pool: &PgPool,
    order_id: Uuid,
    owner: Uuid,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE dispatch_claims
            SET last_error = $3, failing_since = COALESCE(failing_since, now())
          WHERE order_id = $1 AND lease_owner = $2",
    )
    .bind(order_id)
    .bind(owner)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a settled outcome and releases the lease. Returns false if the lease passed to
/// another owner.
pub async fn settle(
    pool: &PgPool,
    order_id: Uuid,
    owner: Uuid,
    phase: Phase,
    code: Option<&str>,
    message: Option<&str>,
) -> Result<Option<Claim>, sqlx::Error> {
    let phase = match phase {
        Phase::Placed => "placed",
        Phase::Rejected => "rejected",
        Phase::Expired => "expired",
        Phase::New | Phase::Placing | Phase::Invalid => {
            unreachable!("settle takes the outcome of a placement")
        }
    };
    let row: Option<ClaimRow> = sqlx::query_as(concat!(
        "UPDATE dispatch_claims
            SET phase = $3, outcome_code = $4, outcome_message = $5,
                lease_owner = NULL, lease_until = NULL, updated_at = now()
          WHERE order_id = $1 AND lease_owner = $2 AND phase IN ('new', 'placing')
          RETURNING ",
        columns!()
    ))
    .bind(order_id)
    .bind(owner)
    .bind(phase)
    .bind(code)
    .bind(message)
    .fetch_optional(pool)
    .await?;
    row.map(ClaimRow::into_claim).transpose()
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
    let row: Option<ClaimRow> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM dispatch_claims WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    row.map(ClaimRow::into_claim).transpose()
}
