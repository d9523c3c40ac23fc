//! The `orders` table: the latest state of each order, as the shop reads it.
//!
//! Writes go through [`upsert`], whose guard makes the table converge on the highest
//! version of each order and leaves final rows alone (G3), whatever order or how many times
//! state events arrive.

use crate::core::event::OrderStateEvent;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
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
    /// The row for a state event; `pin_encrypted` is already encrypted by the caller.
    pub fn from_event(event: &OrderStateEvent, pin_encrypted: Option<Vec<u8>>) -> Self {
        OrderRow {
            order_id: event.order_id,
            tenant_id: event.tenant_id.clone(),
            provider_account: event.provider_account.clone(),
            provider_reference: event.provider_reference.clone(),
            state: event.state.as_str().to_owned(),
            failure_reason: event.failure.as_ref().map(|f| f.reason.as_str().to_owned()),
            pin_encrypted,
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

/// Inserts or updates an order's row. Returns false when the row was left as it was because
/// it is final or already at this or a later version. At an equal version a final state
/// wins: a status check redone after a crash may end an order where its first try, whose
/// event is already out, found it pending.
pub async fn upsert(pool: &PgPool, row: &OrderRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        r#"
        INSERT INTO orders (order_id, tenant_id, provider_account, provider_reference, state,
                            failure_reason, pin_encrypted, attempts, next_check_at, deadline,
                            last_error, version)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        ON CONFLICT (order_id) DO UPDATE SET
            provider_reference = COALESCE(EXCLUDED.provider_reference, orders.provider_reference),
            state = EXCLUDED.state,
            failure_reason = EXCLUDED.failure_reason,
            pin_encrypted = EXCLUDED.pin_encrypted,
            attempts = EXCLUDED.attempts,
            next_check_at = EXCLUDED.next_check_at,
            deadline = COALESCE(EXCLUDED.deadline, orders.deadline),
            last_error = EXCLUDED.last_error,
            version = EXCLUDED.version,
            updated_at = now()
        WHERE orders.state NOT IN ('completed', 'failed')
          AND (orders.version < EXCLUDED.version
               OR (orders.version = EXCLUDED.version
                   AND EXCLUDED.state IN ('completed', 'failed')))
        "#,
    )
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
