//! Counts over `orders` and `check_chains` for the status page (`crate::status`): how
//! many orders reached a final state in the last 1, 5 and 15 minutes, how many are open
//! per state, and how many open check chains wait on each tier.
//!
//! None of them scans a whole table, whose size grows with every order ever taken: a final
//! row never changes again (G3), so its `updated_at` is when it became final, and
//! `orders_finished_at_idx` (partial, final rows only) finds the last 15 minutes' rows;
//! open orders and open chains are few, and `orders_next_check_at_idx` and
//! `check_chains_overdue_idx` (partial, open rows only) hold exactly them.

use serde::Serialize;
use sqlx::PgPool;

/// Orders that reached one final state (and, for `failed`, one reason) recently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Finished {
    /// `completed` or `failed`.
    pub state: String,
    /// Why a failed order failed (`rejected`, `cancelled`, `deadline`, `invalid`); `None`
    /// for completed orders.
    pub reason: Option<String>,
    pub last_1m: i64,
    pub last_5m: i64,
    pub last_15m: i64,
}

/// Open (not final) orders in one state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Open {
    pub state: String,
    pub orders: i64,
}

/// Orders that became final in the last 15 minutes, per state and failure reason,
/// completed first.
pub async fn finished_recently(pool: &PgPool) -> Result<Vec<Finished>, sqlx::Error> {
    sqlx::query_as(
        "SELECT state, failure_reason AS reason,
                count(*) FILTER (WHERE updated_at > now() - interval '1 minute') AS last_1m,
                count(*) FILTER (WHERE updated_at > now() - interval '5 minutes') AS last_5m,
                count(*) AS last_15m
           FROM orders
          WHERE state IN ('completed', 'failed')
            AND updated_at > now() - interval '15 minutes'
          GROUP BY state, failure_reason
          ORDER BY state = 'failed', failure_reason",
    )
    .fetch_all(pool)
    .await
}

/// Open orders per state, in the lifecycle's order.
pub async fn open_by_state(pool: &PgPool) -> Result<Vec<Open>, sqlx::Error> {
    sqlx::query_as(
        "SELECT state, count(*) AS orders
           FROM orders
          WHERE state NOT IN ('completed', 'failed')
          GROUP BY state
          ORDER BY array_position(ARRAY['received', 'dispatching', 'dispatched', 'processing'], state)",
    )
    .fetch_all(pool)
    .await
}

/// Open check chains whose next check waits on one tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TierChains {
    /// The tier topic's label (`30s`, `1m`, ...); `first` for a chain whose first check is
    /// being made (no tier recorded yet).
    pub tier: String,
    pub chains: i64,
}

/// Open check chains per tier their next check waits on.
pub async fn open_chains_per_tier(pool: &PgPool) -> Result<Vec<TierChains>, sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(tier, 'first') AS tier, count(*) AS chains
           FROM check_chains
          WHERE final_state IS NULL
          GROUP BY 1",
    )
    .fetch_all(pool)
    .await
}
