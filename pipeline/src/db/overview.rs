//! Counts for the status page (`crate::status`): how many orders reached a final state in
//! the last 1, 5 and 15 minutes, how many are being placed, and how many open check chains
//! wait on each tier.
//!
//! None of them reads a whole table, whose size grows with every order ever taken, and
//! none adds an index that would keep an `orders` row's rewrite from being a HOT update
//! (20261202000004_orders_hot_updates.sql): when an order became final is known from where
//! it ended, each with a partial index: `check_chains.ended_at` for an order that ended
//! after placement (`check_chains_ended_idx`), a claim's `updated_at` for one that failed
//! before (`dispatch_claims_ended_idx`); its state and failure reason then come from its
//! `orders` row (by primary key), as the shop sees them. Claims being placed and open chains
//! are few, and `dispatch_claims_unsettled_idx` and `check_chains_overdue_idx` hold exactly
//! them.

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

/// Orders that ended in the last 15 minutes and whose final row the sink has written, per
/// state and failure reason, completed first.
pub async fn finished_recently(pool: &PgPool) -> Result<Vec<Finished>, sqlx::Error> {
    sqlx::query_as(
        "WITH ended AS (
             SELECT order_id, ended_at AS at FROM check_chains
              WHERE ended_at IS NOT NULL AND ended_at > now() - interval '15 minutes'
             UNION ALL
             SELECT order_id, updated_at FROM dispatch_claims
              WHERE phase IN ('rejected', 'expired', 'invalid')
                AND updated_at > now() - interval '15 minutes')
         SELECT o.state, o.failure_reason AS reason,
                count(*) FILTER (WHERE e.at > now() - interval '1 minute') AS last_1m,
                count(*) FILTER (WHERE e.at > now() - interval '5 minutes') AS last_5m,
                count(*) AS last_15m
           FROM ended e JOIN orders o ON o.order_id = e.order_id
          WHERE o.state IN ('completed', 'failed')
          GROUP BY o.state, o.failure_reason
          ORDER BY o.state = 'failed', o.failure_reason",
    )
    .fetch_all(pool)
    .await
}

/// Orders whose placement is not settled yet: a claim made (`new`) or a placement call
/// under way or to be retried (`placing`).
pub async fn being_placed(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dispatch_claims WHERE phase IN ('new', 'placing')")
        .fetch_one(pool)
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
