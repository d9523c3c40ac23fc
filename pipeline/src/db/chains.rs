//! The `check_chains` table: one status-check chain per order (G2, G4).
//!
//! Every `orders.status-check.*` message is one step of its order's chain, numbered by
//! `seq`. A poll worker works on a step only after [`begin_step`] gave it the step: the
//! chain must be just before it (or a worker that crashed left it unfinished and its lease
//! ran out). So a duplicate message, a redelivery after a crash or a re-enqueue by the
//! reconciler continues the chain once; the copy that comes second finds the step taken
//! and is dropped as stale. [`finish_step`] records the step's outcome after its events
//! are on the broker. The reconciler asks [`overdue`] which chains stopped moving.

use super::BatchConnections;
use crate::core::event::{StatusCheck, SCHEMA_VERSION};
use crate::core::lifecycle::{version, OrderState};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// What [`begin_step`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begun {
    /// The step is this worker's, under a lease.
    Mine,
    /// The chain is past this step, or has ended: the message is a leftover copy.
    Stale,
    /// Another worker holds this step (or an earlier one) until `until`; ask again then.
    Busy { until: DateTime<Utc> },
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepEnd {
    /// The tier topic's label the next step waits on; `None` when the chain ended.
    pub tier: Option<String>,
    pub attempts: i32,
    pub version: i64,
    /// When the next step is due; `None` when the chain ended.
    pub next_check_at: Option<DateTime<Utc>>,
    /// `Completed` or `Failed` when the chain ended.
    pub final_state: Option<OrderState>,
    /// Why the check got no usable answer, when it got none: kept on the chain with the
    /// time such answers began (`failing_since`), for `orderflow order show`.
    pub error: Option<String>,
}

fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

/// Gives step `check.seq` of its order's chain to `owner` for `lease`, creating the chain
/// on its first step.
pub async fn begin_step(
    pool: &PgPool,
    check: &StatusCheck,
    owner: Uuid,
    lease: Duration,
) -> Result<Begun, sqlx::Error> {
    // One statement, so one commit: a first step creates the chain already taken; a later
    // one takes it only if its predecessor is done (or its worker's lease ran out), or if it
    // is this very step and no one else holds it.
    let taken = sqlx::query(
        "INSERT INTO check_chains AS c (order_id, tenant_id, provider_account, provider_reference,
                                       dispatched_at, deadline, seq, step_done, attempts, version,
                                       next_check_at, lease_owner, lease_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, false, $8, $9, $10, $11,
                 now() + $12 * interval '1 millisecond')
         ON CONFLICT (order_id) DO UPDATE
            SET seq = EXCLUDED.seq, step_done = false, lease_owner = EXCLUDED.lease_owner,
                lease_until = EXCLUDED.lease_until, updated_at = now()
          WHERE c.final_state IS NULL
            AND ((c.seq < EXCLUDED.seq AND (c.step_done OR c.lease_until IS NULL OR c.lease_until < now()))
              OR (c.seq = EXCLUDED.seq AND NOT c.step_done
                  AND (c.lease_until IS NULL OR c.lease_until < now()
                       OR c.lease_owner = EXCLUDED.lease_owner)))",
    )
    .bind(check.order_id)
    .bind(&check.tenant_id)
    .bind(&check.provider_account)
    .bind(&check.provider_reference)
    .bind(check.dispatched_at)
    .bind(check.deadline)
    .bind(check.seq)
    .bind(check.attempts)
    .bind(check.version)
    .bind(check.due_at)
    .bind(owner)
    .bind(millis(lease))
    .execute(pool)
    .await?;
    if taken.rows_affected() == 1 {
        return Ok(Begun::Mine);
    }
    let (seq, step_done, final_state, lease_until): (
        i64,
        bool,
        Option<String>,
        Option<DateTime<Utc>>,
    ) = sqlx::query_as(
        "SELECT seq, step_done, final_state, lease_until FROM check_chains WHERE order_id = $1",
    )
    .bind(check.order_id)
    .fetch_one(pool)
    .await?;
    Ok(
        if final_state.is_some() || seq > check.seq || (seq == check.seq && step_done) {
            Begun::Stale
        } else {
            Begun::Busy {
                until: lease_until.unwrap_or_else(Utc::now),
            }
        },
    )
}

/// Records how step `seq` ended, once its events are on the broker. Returns false if the
/// step was no longer `owner`'s (its lease ran out and another worker took it over; the
/// next step then has two copies, and the second is dropped as stale).
pub async fn finish_step(
    pool: &PgPool,
    order_id: Uuid,
    seq: i64,
    owner: Uuid,
    end: &StepEnd,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE check_chains
            SET step_done = true, attempts = $4, version = $5, next_check_at = $6,
                final_state = $7, tier = $8, lease_owner = NULL, lease_until = NULL,
                ended_at = CASE WHEN $7::text IS NULL THEN NULL ELSE now() END,
                dead_lettered = 0, updated_at = now(), last_error = COALESCE($9, last_error),
                failing_since = CASE WHEN $9::text IS NULL THEN NULL
                                     ELSE COALESCE(failing_since, now()) END
          WHERE order_id = $1 AND seq = $2 AND lease_owner = $3 AND NOT step_done",
    )
    .bind(order_id)
    .bind(seq)
    .bind(owner)
    .bind(end.attempts)
    .bind(end.version)
    .bind(end.next_check_at)
    .bind(end.final_state.map(OrderState::as_str))
    .bind(&end.tier)
    .bind(&end.error)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Lets another worker take step `seq` at once (this one stopped before finishing it).
pub async fn release(
    pool: &PgPool,
    order_id: Uuid,
    seq: i64,
    owner: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE check_chains SET lease_until = now()
          WHERE order_id = $1 AND seq = $2 AND lease_owner = $3 AND NOT step_done",
    )
    .bind(order_id)
    .bind(seq)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// One chain as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ChainRow {
    pub order_id: Uuid,
    pub seq: i64,
    pub step_done: bool,
    pub attempts: i32,
    pub version: i64,
    pub next_check_at: Option<DateTime<Utc>>,
    pub final_state: Option<String>,
    pub requeued: i32,
    pub dead_lettered: i32,
}

pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<ChainRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, seq, step_done, attempts, version, next_check_at, final_state, requeued,
                dead_lettered
           FROM check_chains WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// What the reconciler should do for one order.
#[derive(Clone, Debug, PartialEq)]
pub struct Requeue {
    /// The step to enqueue again, due now.
    pub check: StatusCheck,
    /// The chain did not exist yet: the order's first check never started.
    pub first: bool,
}

#[derive(sqlx::FromRow)]
struct OverdueRow {
    order_id: Uuid,
    tenant_id: String,
    provider_account: String,
    provider_reference: String,
    dispatched_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
    seq: i64,
    attempts: i32,
    version: i64,
}

/// Up to `limit` orders whose chain stopped: a finished step whose successor is overdue by
/// more than `grace`, or a step whose worker's lease ran out more than `grace` ago; and
/// placed orders with no chain `first_check + grace` after their placement (their
/// `orders.dispatched` message was lost). Orders placed more than `lookback` ago are not
/// looked for, nor chains whose steps the poll stage dead-lettered `max_dead_letters` times
/// since the chain last moved ([`given_up`]). Each comes back as the step to enqueue again.
pub async fn overdue(
    pool: &PgPool,
    grace: Duration,
    first_check: Duration,
    lookback: Duration,
    limit: i64,
    max_dead_letters: i32,
) -> Result<Vec<Requeue>, sqlx::Error> {
    let now = Utc::now();
    let stalled: Vec<OverdueRow> = sqlx::query_as(
        "SELECT order_id, tenant_id, provider_account, provider_reference, dispatched_at,
                deadline, CASE WHEN step_done THEN seq + 1 ELSE seq END AS seq, attempts, version
           FROM check_chains
          WHERE final_state IS NULL
            AND ((step_done AND next_check_at < now() - $1 * interval '1 millisecond')
              OR (NOT step_done AND lease_until < now() - $1 * interval '1 millisecond'))
            AND (requeued_at IS NULL OR requeued_at < now() - $1 * interval '1 millisecond')
            AND dead_lettered < $3
          ORDER BY requeued, next_check_at
          LIMIT $2",
    )
    .bind(millis(grace))
    .bind(limit)
    .bind(max_dead_letters)
    .fetch_all(pool)
    .await?;
    let mut found: Vec<Requeue> = stalled
        .into_iter()
        .map(|r| Requeue {
            check: r.into_check(now),
            first: false,
        })
        .collect();
    let room = limit - found.len() as i64;
    if room > 0 {
        let unstarted: Vec<OverdueRow> = sqlx::query_as(
            "SELECT c.order_id, COALESCE(c.tenant_id, '') AS tenant_id, c.provider_account,
                    c.provider_reference, c.updated_at AS dispatched_at, c.deadline,
                    1::bigint AS seq, 0 AS attempts, $4::bigint AS version
               FROM dispatch_claims c
               LEFT JOIN check_chains p ON p.order_id = c.order_id
              WHERE c.phase = 'placed' AND p.order_id IS NULL
                AND c.updated_at < now() - $1 * interval '1 millisecond'
                AND c.updated_at > now() - $2 * interval '1 millisecond'
              ORDER BY c.updated_at
              LIMIT $3",
        )
        .bind(millis(first_check + grace))
        .bind(millis(lookback))
        .bind(room)
        .bind(version::DISPATCHED)
        .fetch_all(pool)
        .await?;
        found.extend(unstarted.into_iter().map(|r| Requeue {
            check: r.into_check(now),
            first: true,
        }));
    }
    Ok(found)
}

impl OverdueRow {
    fn into_check(self, now: DateTime<Utc>) -> StatusCheck {
        StatusCheck {
            schema_version: SCHEMA_VERSION,
            order_id: self.order_id,
            tenant_id: self.tenant_id,
            provider_account: self.provider_account,
            provider_reference: self.provider_reference,
            dispatched_at: self.dispatched_at,
            deadline: self.deadline,
            seq: self.seq,
            attempts: self.attempts,
            due_at: now,
            version: self.version,
            // Not kept in the chain: a re-enqueued order is left out of created-to-final.
            created_at: None,
        }
    }
}

/// Records that `requeue` was enqueued again, so that the next pass waits another grace
/// period before looking at the order. Only the reconciler's own columns change: a worker
/// may already be on the re-enqueued step, and its lease stays as it is.
pub async fn mark_requeued(pool: &PgPool, requeue: &Requeue) -> Result<(), sqlx::Error> {
    let c = &requeue.check;
    if requeue.first {
        sqlx::query(
            "INSERT INTO check_chains (order_id, tenant_id, provider_account, provider_reference,
                                      dispatched_at, deadline, seq, step_done, attempts,
                                      version, next_check_at, requeued, requeued_at)
             VALUES ($1, $2, $3, $4, $5, $6, 0, true, 0, $7, now(), 1, now())
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(c.order_id)
        .bind(&c.tenant_id)
        .bind(&c.provider_account)
        .bind(&c.provider_reference)
        .bind(c.dispatched_at)
        .bind(c.deadline)
        .bind(c.version)
        .execute(pool)
        .await?;
    } else {
        sqlx::query(
            "UPDATE check_chains
                SET requeued = requeued + 1, requeued_at = now(), updated_at = now()
              WHERE order_id = $1",
        )
        .bind(c.order_id)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Counts a message of `order_id`'s chain that the poll stage dead-lettered (unreadable, or
/// refused: an account no longer configured, a step that cannot be numbered). A done step
/// resets the count. Whatever message it was (a re-enqueued step, a broken copy with the
/// order's key), the chain did not move: enough of them and the reconciler stops sending
/// more ([`given_up`]).
pub async fn record_dead_letter(pool: &PgPool, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE check_chains SET dead_lettered = dead_lettered + 1, updated_at = now()
          WHERE order_id = $1 AND final_state IS NULL",
    )
    .bind(order_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The chains [`overdue`] leaves out because the poll stage dead-lettered their steps
/// `max_dead_letters` times without the chain moving: how many, and up to `sample` of their
/// orders (the latest first), for the reconciler's log and metric.
pub async fn given_up(
    pool: &PgPool,
    max_dead_letters: i32,
    sample: i64,
) -> Result<(i64, Vec<Uuid>), sqlx::Error> {
    // `dead_lettered > 0` said as such so that the partial index applies.
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) OVER () FROM check_chains
          WHERE dead_lettered > 0 AND final_state IS NULL AND dead_lettered >= $1
          ORDER BY updated_at DESC
          LIMIT $2",
    )
    .bind(max_dead_letters)
    .bind(sample)
    .fetch_all(pool)
    .await?;
    let count = rows.first().map_or(0, |(_, n)| *n);
    Ok((count, rows.into_iter().map(|(id, _)| id).collect()))
}

/// [`begin_step`] for the steps of a batch (one per order), in one statement: returns the
/// orders whose step is now `owner`'s. The others (a copy, a step another worker holds)
/// go through [`begin_step`] one by one, which says which. Rows are taken in order-id
/// order.
pub async fn begin_steps(
    batch: &BatchConnections,
    steps: &[(&StatusCheck, Duration)],
    owner: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut sorted: Vec<&(&StatusCheck, Duration)> = steps.iter().collect();
    sorted.sort_by_key(|(c, _)| c.order_id);
    sorted.dedup_by_key(|(c, _)| c.order_id);
    let col = |f: fn(&StatusCheck) -> String| -> Vec<String> {
        sorted.iter().map(|(c, _)| f(c)).collect()
    };
    let ids: Vec<Uuid> = sorted.iter().map(|(c, _)| c.order_id).collect();
    let tenants = col(|c| c.tenant_id.clone());
    let accounts = col(|c| c.provider_account.clone());
    let references = col(|c| c.provider_reference.clone());
    let dispatched: Vec<DateTime<Utc>> = sorted.iter().map(|(c, _)| c.dispatched_at).collect();
    let deadlines: Vec<DateTime<Utc>> = sorted.iter().map(|(c, _)| c.deadline).collect();
    let seqs: Vec<i64> = sorted.iter().map(|(c, _)| c.seq).collect();
    let attempts: Vec<i32> = sorted.iter().map(|(c, _)| c.attempts).collect();
    let versions: Vec<i64> = sorted.iter().map(|(c, _)| c.version).collect();
    let dues: Vec<DateTime<Utc>> = sorted.iter().map(|(c, _)| c.due_at).collect();
    let leases: Vec<f64> = sorted.iter().map(|(_, l)| millis(*l)).collect();
    // The conditions of `begin_step`, row by row.
    let mut conn = batch.acquire().await?;
    let answer = sqlx::query_scalar(
        "INSERT INTO check_chains AS c (order_id, tenant_id, provider_account, provider_reference,
                                       dispatched_at, deadline, seq, step_done, attempts, version,
                                       next_check_at, lease_owner, lease_until)
         SELECT t.order_id, t.tenant_id, t.provider_account, t.provider_reference,
                t.dispatched_at, t.deadline, t.seq, false, t.attempts, t.version, t.due_at, $12,
                now() + t.lease_ms * interval '1 millisecond'
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                       $6::timestamptz[], $7::int8[], $8::int4[], $9::int8[],
                       $10::timestamptz[], $11::float8[])
                AS t(order_id, tenant_id, provider_account, provider_reference, dispatched_at,
                     deadline, seq, attempts, version, due_at, lease_ms)
          ORDER BY t.order_id
         ON CONFLICT (order_id) DO UPDATE
            SET seq = EXCLUDED.seq, step_done = false, lease_owner = EXCLUDED.lease_owner,
                lease_until = EXCLUDED.lease_until, updated_at = now()
          WHERE c.final_state IS NULL
            AND ((c.seq < EXCLUDED.seq AND (c.step_done OR c.lease_until IS NULL OR c.lease_until < now()))
              OR (c.seq = EXCLUDED.seq AND NOT c.step_done
                  AND (c.lease_until IS NULL OR c.lease_until < now()
                       OR c.lease_owner = EXCLUDED.lease_owner)))
         RETURNING c.order_id",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&accounts)
    .bind(&references)
    .bind(&dispatched)
    .bind(&deadlines)
    .bind(&seqs)
    .bind(&attempts)
    .bind(&versions)
    .bind(&dues)
    .bind(&leases)
    .bind(owner)
    .fetch_all(conn.connection())
    .await;
    conn.release(answer)
}

/// The statement of [`finish_steps`] (`$1` the owner; `$2` to `$9` the order ids, steps,
/// attempts, versions, next check times, final states, tiers and errors), public so that
/// a test can ask PostgreSQL for its plan.
pub const FINISH_STEPS: &str = "UPDATE check_chains c
        SET step_done = true, attempts = t.attempts, version = t.version,
            next_check_at = t.next_check_at, final_state = t.final_state, tier = t.tier,
            ended_at = CASE WHEN t.final_state IS NULL THEN NULL ELSE now() END,
            lease_owner = NULL, lease_until = NULL, dead_lettered = 0, updated_at = now(),
            last_error = COALESCE(t.error, c.last_error),
            failing_since = CASE WHEN t.error IS NULL THEN NULL
                                 ELSE COALESCE(c.failing_since, now()) END
       FROM UNNEST($2::uuid[], $3::int8[], $4::int4[], $5::int8[], $6::timestamptz[],
                   $7::text[], $8::text[], $9::text[])
            AS t(order_id, seq, attempts, version, next_check_at, final_state, tier, error)
      WHERE c.order_id = t.order_id AND c.seq = t.seq AND c.lease_owner = $1
        AND NOT c.step_done
        -- Said again as an index condition: joined to UNNEST alone, the planner may
        -- scan the whole table for every batch (measured: 53 million rows read for
        -- 25,000 orders).
        AND c.order_id = ANY($2)
      RETURNING c.order_id";

/// [`finish_step`] for many steps of `owner`, in one statement ([`FINISH_STEPS`],
/// hash-joined to the batch: [`super::batch_connections::PLANNER_SETTINGS`]). Returns the
/// orders whose step it recorded; one missing was taken over by another worker.
pub async fn finish_steps(
    batch: &BatchConnections,
    owner: Uuid,
    steps: &[(Uuid, i64, &StepEnd)],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut sorted: Vec<&(Uuid, i64, &StepEnd)> = steps.iter().collect();
    sorted.sort_by_key(|(id, ..)| *id);
    let ids: Vec<Uuid> = sorted.iter().map(|(id, ..)| *id).collect();
    let seqs: Vec<i64> = sorted.iter().map(|(_, seq, _)| *seq).collect();
    let attempts: Vec<i32> = sorted.iter().map(|(.., e)| e.attempts).collect();
    let versions: Vec<i64> = sorted.iter().map(|(.., e)| e.version).collect();
    let next: Vec<Option<DateTime<Utc>>> = sorted.iter().map(|(.., e)| e.next_check_at).collect();
    let finals: Vec<Option<&str>> = sorted
        .iter()
        .map(|(.., e)| e.final_state.map(OrderState::as_str))
        .collect();
    let tiers: Vec<Option<&str>> = sorted.iter().map(|(.., e)| e.tier.as_deref()).collect();
    let errors: Vec<Option<&str>> = sorted.iter().map(|(.., e)| e.error.as_deref()).collect();
    let mut conn = batch.acquire().await?;
    let answer = sqlx::query_scalar(FINISH_STEPS)
        .bind(owner)
        .bind(&ids)
        .bind(&seqs)
        .bind(&attempts)
        .bind(&versions)
        .bind(&next)
        .bind(&finals)
        .bind(&tiers)
        .bind(&errors)
        .fetch_all(conn.connection())
        .await;
    conn.release(answer)
}
