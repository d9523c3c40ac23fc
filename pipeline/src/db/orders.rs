//! The `orders` table: the latest state of each order, as the shop reads it.
//!
//! Writes go through [`upsert`] or [`upsert_batch`], whose guard makes the table converge
//! on the highest version of each order and leaves final rows alone (G3), whatever order
//! or how many times state events arrive (the rule is [`crate::core::lifecycle::replaces`],
//! whose one exception lets an order answered `failed` (invalid) move on once a replay of
//! it was placed). The PIN is stored as it travels: sealed under
//! the shop's key (G5), never in clear.

use crate::core::event::OrderStateEvent;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// One row of `orders` (the generated shop columns included on reads).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub tenant_id: String,
    pub provider_account: String,
    pub provider_reference: Option<String>,
    pub state: String,
    pub failure_reason: Option<String>,
    pub pin_encrypted: Option<Vec<u8>>,
    pub attempts: i32,
    pub next_check_at: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub version: i64,
}

impl OrderRow {
    /// The row for a state event, its sealed PIN included.
    pub fn from_event(event: &OrderStateEvent) -> Self {
        OrderRow {
            order_id: event.order_id,
            tenant_id: event.tenant_id.clone(),
            provider_account: event.provider_account.clone(),
            provider_reference: event.provider_reference.clone(),
            state: event.state.as_str().to_owned(),
            failure_reason: event.failure.as_ref().map(|f| f.reason.as_str().to_owned()),
            pin_encrypted: event.pin.as_ref().map(|p| p.as_str().as_bytes().to_vec()),
            attempts: event.attempts,
            next_check_at: event.next_check_at,
            deadline: event.deadline,
            last_error: event.failure.as_ref().map(|f| match &f.code {
                Some(code) => format!("{code}|{}", f.message),
                None => f.message.clone(),
            }),
            version: event.version,
        }
    }
}

/// The guard of both upserts, in SQL: see [`crate::core::lifecycle::replaces`] (the version
/// rule, and the invalid answer replaced only by the events of an order placed after all).
macro_rules! upsert_tail {
    () => {
        "ON CONFLICT (order_id) DO UPDATE SET
            provider_reference = COALESCE(EXCLUDED.provider_reference, orders.provider_reference),
            state = EXCLUDED.state,
            failure_reason = EXCLUDED.failure_reason,
            pin_encrypted = EXCLUDED.pin_encrypted,
            attempts = EXCLUDED.attempts,
            next_check_at = EXCLUDED.next_check_at,
            deadline = COALESCE(EXCLUDED.deadline, orders.deadline),
            last_error = EXCLUDED.last_error,
            version = EXCLUDED.version,
            state_event = EXCLUDED.state_event,
            updated_at = now()
        WHERE CASE
            WHEN orders.state = 'failed' AND orders.provider_reference IS NULL
                THEN EXCLUDED.provider_reference IS NOT NULL
            WHEN EXCLUDED.provider_reference IS NULL AND orders.provider_reference IS NOT NULL
                THEN false
            ELSE orders.state NOT IN ('completed', 'failed')
                 AND (orders.version < EXCLUDED.version
                      OR (orders.version = EXCLUDED.version
                          AND EXCLUDED.state IN ('completed', 'failed')))
        END"
    };
}

/// Inserts or updates an order's row. Returns false when the row was left as it was because
/// it is final or already at this or a later version. At an equal version a final state
/// wins: a status check redone after a crash may end an order where its first try, whose
/// event is already out, found it pending.
pub async fn upsert(pool: &PgPool, row: &OrderRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(concat!(
        "INSERT INTO orders (order_id, tenant_id, provider_account, provider_reference, state,
                            failure_reason, pin_encrypted, attempts, next_check_at, deadline,
                            last_error, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ",
        upsert_tail!()
    ))
    .bind(row.order_id)
    .bind(&row.tenant_id)
    .bind(&row.provider_account)
    .bind(&row.provider_reference)
    .bind(&row.state)
    .bind(&row.failure_reason)
    .bind(&row.pin_encrypted)
    .bind(row.attempts)
    .bind(row.next_check_at)
    .bind(row.deadline)
    .bind(&row.last_error)
    .bind(row.version)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Upserts many rows in one statement; at most one row per order (merge first), each with
/// the JSON of the state event it comes from. Returns the orders whose row it wrote; the
/// guard kept the others as they were (their row supersedes the one given).
pub async fn upsert_batch(
    batch: &super::BatchConnections,
    rows: &[OrderRow],
    events: &[String],
) -> Result<Vec<Uuid>, sqlx::Error> {
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    let mut conn = batch.acquire().await?;
    let answer = sqlx::query(concat!(
        "INSERT INTO orders (order_id, tenant_id, provider_account, provider_reference, state,
                            failure_reason, pin_encrypted, attempts, next_check_at, deadline,
                            last_error, version, state_event)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::bytea[], $8::int4[], $9::timestamptz[],
                              $10::timestamptz[], $11::text[], $12::int8[],
                              $13::text[]::jsonb[]) ",
        upsert_tail!(),
        " RETURNING order_id"
    ))
    .bind(column!(order_id))
    .bind(column!(tenant_id))
    .bind(column!(provider_account))
    .bind(column!(provider_reference))
    .bind(column!(state))
    .bind(column!(failure_reason))
    .bind(column!(pin_encrypted))
    .bind(column!(attempts))
    .bind(column!(next_check_at))
    .bind(column!(deadline))
    .bind(column!(last_error))
    .bind(column!(version))
    .bind(events)
    .fetch_all(conn.connection())
    .await;
    let done: Vec<sqlx::postgres::PgRow> = conn.release(answer)?;
    Ok(done.into_iter().map(|row| row.get(0)).collect())
}

/// Each order's current (version, state) and the JSON of the event that set it.
pub async fn current(
    pool: &PgPool,
    order_ids: &[Uuid],
) -> Result<Vec<(Uuid, i64, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, version, state, state_event::text FROM orders
          WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await
}

/// The row of one order, if any.
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as::<_, OrderRow>(
        "SELECT order_id, tenant_id, provider_account, provider_reference, state, failure_reason,
                pin_encrypted, attempts, next_check_at, deadline, last_error, version
         FROM orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// The shop's `(status, external_status)` of one order.
pub async fn shop_status(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT status, external_status FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await
}
