//! One order's journey (`orderflow order show`, which renders it in `crate::cli::order`):
//! what the shop sees in `orders`, how placement went in `dispatch_claims`, and where its
//! status checks are in `check_chains`. The PIN stays sealed here (G5).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Everything the tables know about one order; each part is absent when its stage has not
/// seen the order (yet).
#[derive(Clone, Debug, Default, PartialEq, sqlx::FromRow)]
pub struct Journey {
    pub order_id: Uuid,
    // orders (the shop's view)
    pub tenant_id: Option<String>,
    pub state: Option<String>,
    pub status: Option<String>,
    pub external_status: Option<String>,
    pub failure_reason: Option<String>,
    pub last_error: Option<String>,
    pub pin_encrypted: Option<Vec<u8>>,
    pub attempts: Option<i32>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub version: Option<i64>,
    pub updated_at: Option<DateTime<Utc>>,
    // dispatch_claims
    pub provider_account: Option<String>,
    pub provider_reference: Option<String>,
    pub placement: Option<String>,
    pub place_calls: Option<i32>,
    pub deadline: Option<DateTime<Utc>>,
    // check_chains
    pub chain_seq: Option<i64>,
    pub chain_attempts: Option<i32>,
    pub chain_next_check_at: Option<DateTime<Utc>>,
    pub tier: Option<String>,
    pub requeued: Option<i32>,
    // What holds an unfinished order up: the placement's or the checks' failing attempts.
    pub claim_error: Option<String>,
    pub claim_failing_since: Option<DateTime<Utc>>,
    pub chain_error: Option<String>,
    pub chain_failing_since: Option<DateTime<Utc>>,
}

/// The order's journey, or `None` if no table knows it.
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Journey>, sqlx::Error> {
    let journey: Journey = sqlx::query_as(
        "SELECT k.id AS order_id,
                COALESCE(o.tenant_id, d.tenant_id) AS tenant_id, o.state, o.status,
                o.external_status, o.failure_reason, o.last_error, o.pin_encrypted, o.attempts, o.next_check_at, o.version,
                o.updated_at,
                COALESCE(d.provider_account, o.provider_account) AS provider_account,
                COALESCE(d.provider_reference, o.provider_reference) AS provider_reference,
                d.phase AS placement, d.place_calls,
                COALESCE(o.deadline, d.deadline) AS deadline,
                c.seq AS chain_seq, c.attempts AS chain_attempts,
                c.next_check_at AS chain_next_check_at, c.tier, c.requeued,
                d.last_error AS claim_error,
                CASE WHEN d.phase IN ('new', 'placing') THEN d.failing_since END
                    AS claim_failing_since,
                c.last_error AS chain_error,
                CASE WHEN c.final_state IS NULL THEN c.failing_since END AS chain_failing_since
           FROM (SELECT $1::uuid AS id) k
           LEFT JOIN orders o ON o.order_id = k.id
           LEFT JOIN dispatch_claims d ON d.order_id = k.id
           LEFT JOIN check_chains c ON c.order_id = k.id",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await?;
    let known =
        journey.state.is_some() || journey.placement.is_some() || journey.chain_seq.is_some();
    Ok(known.then_some(journey))
}
