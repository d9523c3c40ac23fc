//! The `dispatch_claims` statements over a batch of orders, one statement (so one commit)
//! each: claiming new orders, settling placed ones, claiming an invalid event's order id,
//! and reopening such a claim for a replayed event.
//! They keep the protocol of the module above (G1).

use super::{get, Claim, ClaimRow, Phase};
use crate::db::BatchConnections;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// One order of a batch claim.
#[derive(Clone, Debug)]
pub struct NewClaim<'a> {
    pub order_id: Uuid,
    pub tenant_id: &'a str,
    pub provider_account: &'a str,
    pub content_digest: &'a str,
    /// The keyed digest of the first user field ([`crate::lookup`]), when keys are set.
    pub user_digest: Option<&'a str>,
    pub deadline: DateTime<Utc>,
    pub lease: Duration,
}

/// Claims the orders of a batch that were never claimed before, in one statement (so one
/// commit): each new row fixes the order's reference and is leased to `owner`, and an order
/// still before its deadline is marked `placing` with its first call counted, so the caller
/// may place it at once while its lease lasts (G1: the mark is durable before any call of
/// the batch). Orders that already have a claim are left alone and not returned: they go
/// through [`claim_with_content`] one by one. Rows are inserted in order-id order.
pub async fn claim_new_batch(
    batch: &BatchConnections,
    orders: &[NewClaim<'_>],
    owner: Uuid,
) -> Result<Vec<Claim>, sqlx::Error> {
    let mut sorted: Vec<&NewClaim> = orders.iter().collect();
    sorted.sort_by_key(|o| o.order_id);
    sorted.dedup_by_key(|o| o.order_id);
    let ids: Vec<Uuid> = sorted.iter().map(|o| o.order_id).collect();
    let tenants: Vec<&str> = sorted.iter().map(|o| o.tenant_id).collect();
    let accounts: Vec<&str> = sorted.iter().map(|o| o.provider_account).collect();
    let digests: Vec<&str> = sorted.iter().map(|o| o.content_digest).collect();
    let deadlines: Vec<DateTime<Utc>> = sorted.iter().map(|o| o.deadline).collect();
    let leases: Vec<f64> = sorted.iter().map(|o| o.lease.as_millis() as f64).collect();
    let users: Vec<Option<&str>> = sorted.iter().map(|o| o.user_digest).collect();
    let mut conn = batch.acquire().await?;
    let answer = sqlx::query_as(concat!(
        "INSERT INTO dispatch_claims AS c (order_id, tenant_id, provider_account, deadline,
                                           content_digest, lease_owner, lease_until, phase,
                                           place_calls, user_digest)
         SELECT t.order_id, t.tenant_id, t.provider_account, t.deadline, t.digest, $7,
                now() + t.lease_ms * interval '1 millisecond',
                CASE WHEN t.deadline > now() THEN 'placing' ELSE 'new' END,
                CASE WHEN t.deadline > now() THEN 1 ELSE 0 END,
                t.user_digest
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                       $6::float8[], $8::text[])
                AS t(order_id, tenant_id, provider_account, deadline, digest, lease_ms,
                     user_digest)
          ORDER BY t.order_id
         ON CONFLICT (order_id) DO NOTHING
         RETURNING ",
        columns!()
    ))
    .bind(&ids)
    .bind(&tenants)
    .bind(&accounts)
    .bind(&deadlines)
    .bind(&digests)
    .bind(&leases)
    .bind(owner)
    .bind(&users)
    .fetch_all(conn.connection())
    .await;
    let rows: Vec<ClaimRow> = conn.release(answer)?;
    rows.into_iter().map(ClaimRow::into_claim).collect()
}

/// One settled outcome of a batch.
#[derive(Clone, Debug)]
pub struct Outcome<'a> {
    pub order_id: Uuid,
    pub phase: Phase,
    pub code: Option<&'a str>,
    pub message: Option<&'a str>,
}

/// The statement of [`settle_batch`] (`$1` the owner; `$2` to `$5` the order ids, phases,
/// codes and messages), public so that a test can ask PostgreSQL for its plan.
///
/// The phase condition is written `IS TRUE` so that it does not imply the predicate of
/// `dispatch_claims_unsettled_idx`. As a bare `phase IN (...)` it let the planner, which
/// believes unsettled claims few, read that whole partial index for every batch, with the
/// entries of every claim settled since the table's last vacuum still in it: 102 million
/// index entries read in one 60,000-order benchmark (2026-12-03, `pg_stat_user_indexes`),
/// each batch's scan longer than the one before until autovacuum came.
pub const SETTLE_BATCH: &str = "UPDATE dispatch_claims c
        SET phase = t.phase, outcome_code = t.code, outcome_message = t.message,
            lease_owner = NULL, lease_until = NULL, updated_at = now()
       FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[])
            AS t(order_id, phase, code, message)
      WHERE c.order_id = t.order_id AND c.lease_owner = $1
        AND (c.phase IN ('new', 'placing')) IS TRUE
        -- An index condition, so no plan scans the whole table per batch.
        AND c.order_id = ANY($2)
      RETURNING c.order_id, c.provider_account, c.provider_reference, c.phase,
                c.place_calls, c.deadline, c.outcome_code, c.outcome_message,
                c.lease_until, c.content_digest, c.first_not_found_at";

/// [`settle`] for many orders leased to `owner`, in one statement ([`SETTLE_BATCH`],
/// hash-joined to the batch: [`crate::db::batch_connections::PLANNER_SETTINGS`]). Returns
/// the claims it recorded; an order missing from the answer passed to another owner.
pub async fn settle_batch(
    batch: &BatchConnections,
    owner: Uuid,
    outcomes: &[Outcome<'_>],
) -> Result<Vec<Claim>, sqlx::Error> {
    let mut sorted: Vec<&Outcome> = outcomes.iter().collect();
    sorted.sort_by_key(|o| o.order_id);
    let ids: Vec<Uuid> = sorted.iter().map(|o| o.order_id).collect();
    let phases: Vec<&str> = sorted
        .iter()
        .map(|o| match o.phase {
            Phase::Placed => "placed",
            Phase::Rejected => "rejected",
            Phase::Expired => "expired",
            Phase::New | Phase::Placing | Phase::Invalid => {
                unreachable!("settle takes the outcome of a placement")
            }
        })
        .collect();
    let codes: Vec<Option<&str>> = sorted.iter().map(|o| o.code).collect();
    let messages: Vec<Option<&str>> = sorted.iter().map(|o| o.message).collect();
    let mut conn = batch.acquire().await?;
    let answer = sqlx::query_as(SETTLE_BATCH)
        .bind(owner)
        .bind(&ids)
        .bind(&phases)
        .bind(&codes)
        .bind(&messages)
        .fetch_all(conn.connection())
        .await;
    let rows: Vec<ClaimRow> = conn.release(answer)?;
    rows.into_iter().map(ClaimRow::into_claim).collect()
}

/// What [`claim_invalid`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidClaim {
    /// The order id is claimed as `invalid` by an event with this content (just now, or by
    /// an earlier copy of it): answer it `failed` (invalid).
    Answer(Claim),
    /// The order id was claimed before by another event: it has an answer of its own.
    Taken(Claim),
}

/// Claims an order id whose event cannot be placed as given, as `invalid` with `message`
/// as its outcome, unless the id is claimed already. Nothing is ever placed under such a
/// claim; it holds the id so that a later event with it is a conflict (see the migration
/// `dispatch_claim_invalid`).
pub async fn claim_invalid(
    pool: &PgPool,
    order_id: Uuid,
    tenant_id: &str,
    provider_account: &str,
    content_digest: &str,
    message: &str,
) -> Result<InvalidClaim, sqlx::Error> {
    let inserted: Option<ClaimRow> = sqlx::query_as(concat!(
        "INSERT INTO dispatch_claims AS c (order_id, tenant_id, provider_account, deadline,
                                           content_digest, phase, outcome_code, outcome_message)
         VALUES ($1, $2, $3, now(), $4, 'invalid', 'invalid', $5)
         ON CONFLICT (order_id) DO NOTHING
         RETURNING ",
        columns!()
    ))
    .bind(order_id)
    .bind(tenant_id)
    .bind(provider_account)
    .bind(content_digest)
    .bind(message)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = inserted {
        return Ok(InvalidClaim::Answer(row.into_claim()?));
    }
    let claim = get(pool, order_id).await?.ok_or(sqlx::Error::RowNotFound)?;
    Ok(
        if claim.phase == Phase::Invalid && claim.content_digest.as_deref() == Some(content_digest)
        {
            InvalidClaim::Answer(claim)
        } else {
            InvalidClaim::Taken(claim)
        },
    )
}

/// Turns an order id claimed as `invalid` back into a `new` claim, to be placed, for a
/// replayed event (`orderflow.replay.of`) of the same order: the same account and content
/// as the event that made the claim, which was never placed (no placement call, so no
/// purchase: G1 holds). The one way out of `invalid` (docs/design/lifecycle.md, G3's
/// exception). Returns whether it did; any other claim is left as it is, and the event then
/// goes the usual way (a settled claim answers with its outcome, a conflict is
/// dead-lettered).
pub async fn reopen_invalid(
    pool: &PgPool,
    order_id: Uuid,
    provider_account: &str,
    content_digest: &str,
    deadline: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE dispatch_claims
            SET phase = 'new', deadline = $4, outcome_code = NULL, outcome_message = NULL,
                lease_owner = NULL, lease_until = NULL, updated_at = now()
          WHERE order_id = $1 AND phase = 'invalid' AND place_calls = 0
            AND provider_account = $2 AND content_digest = $3",
    )
    .bind(order_id)
    .bind(provider_account)
    .bind(content_digest)
    .bind(deadline)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
