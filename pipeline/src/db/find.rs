//! Finding orders (`orderflow order list`, `order show --reference/--phone`, the status
//! page): one summary row per order with filters, the stuck orders, and order ids by
//! provider reference or by the keyed digest of the customer's phone. Never reads a PIN.
//!
//! Every order the pipeline received has a claim in `dispatch_claims` (dispatch claims
//! each order id before anything else, an unplaceable one too), so the claims are the list;
//! `orders` (the shop's view, written by the sink) and `check_chains` add what is known
//! beyond. An order whose `orders` row is not written yet shows the state its claim implies
//! (`received` while it is being placed, `dispatched` once placed, `failed` once refused).
//!
//! Whether an order is stuck is [`crate::core::stuck`]'s rule; [`stuck`] asks the tables
//! for the same condition so that the partial indexes answer it, then applies the rule to
//! each row it read.

use crate::core::stuck::{Allowance, Progress, Stuck};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::time::Duration;
use uuid::Uuid;

/// One order as `order list` shows it. No PIN, sealed or not.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderSummary {
    pub order_id: Uuid,
    pub tenant_id: Option<String>,
    pub provider_account: String,
    pub provider_reference: String,
    /// The lifecycle state (`orders.state`, or what the claim implies before the sink wrote
    /// the row).
    pub state: String,
    pub failure_reason: Option<String>,
    /// Status checks answered so far.
    pub attempts: i32,
    /// When the pipeline received the order (its claim was made).
    pub received_at: DateTime<Utc>,
    /// The latest change any table recorded.
    pub updated_at: DateTime<Utc>,
    /// The next status check, while the order is not final.
    pub next_check_at: Option<DateTime<Utc>>,
    pub deadline: DateTime<Utc>,
    /// The provider's `code|message` of a failure, or what holds an unfinished order up.
    pub last_error: Option<String>,
    /// Since when an unfinished order's attempts have failed without a break.
    pub failing_since: Option<DateTime<Utc>>,
    /// Where an unfinished order is; `None` once final.
    pub progress: Option<Progress>,
    /// `Some` when the order is stuck ([`crate::core::stuck`]) at `now`.
    pub stuck: Option<Stuck>,
    /// The database's time when the row was read: ages and `stuck` are relative to it.
    pub now: DateTime<Utc>,
}

/// What [`list`] looks for. Every filter that is set must hold.
#[derive(Clone, Debug)]
pub struct Filter {
    /// A lifecycle state: received, dispatching, dispatched, processing, completed, failed.
    pub state: Option<String>,
    pub tenant: Option<String>,
    pub account: Option<String>,
    /// Received longer ago than this.
    pub older_than: Option<Duration>,
    /// Only stuck orders.
    pub stuck: bool,
    /// Most rows returned.
    pub limit: i64,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            state: None,
            tenant: None,
            account: None,
            older_than: None,
            stuck: false,
            limit: 50,
            newest_first: false,
        }
    }
}

/// The stuck rule's allowances, and how far back placed orders whose first check never
/// started are looked for (as the reconciler's lookback: all placed orders are indexed
/// together, final ones included, so the scan is bounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StuckScan {
    pub allowance: Allowance,
    pub lookback: Duration,
}

impl Default for StuckScan {
    fn default() -> Self {
        StuckScan {
            allowance: Allowance::default(),
            lookback: Duration::from_secs(48 * 3600),
        }
    }
}

/// The raw row; [`Row::into_summary`] applies the stuck rule.
#[derive(sqlx::FromRow)]
struct Row {
    order_id: Uuid,
    tenant_id: Option<String>,
    provider_account: String,
    provider_reference: String,
    state: String,
    failure_reason: Option<String>,
    attempts: i32,
    received_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    next_check_at: Option<DateTime<Utc>>,
    deadline: DateTime<Utc>,
    last_error: Option<String>,
    failing_since: Option<DateTime<Utc>>,
    // What the stuck rule needs.
    is_final: bool,
    phase: String,
    claim_updated_at: DateTime<Utc>,
    has_chain: bool,
    step_done: Option<bool>,
    chain_next_check_at: Option<DateTime<Utc>>,
    lease_until: Option<DateTime<Utc>>,
    chain_updated_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl Row {
    /// Where the order is, as [`crate::core::stuck`] reads it. The conditions of
    /// [`push_stuck_ids`] say the same in SQL.
    fn progress(&self) -> Option<Progress> {
        if self.is_final {
            return None;
        }
        if self.has_chain {
            return if self.step_done == Some(true) {
                self.chain_next_check_at
                    .map(|next_check_at| Progress::Waiting { next_check_at })
            } else {
                self.lease_until
                    .or(self.chain_updated_at)
                    .map(|lease_until| Progress::Checking { lease_until })
            };
        }
        match self.phase.as_str() {
            "placed" => Some(Progress::Placed {
                placed_at: self.claim_updated_at,
            }),
            "new" | "placing" => Some(Progress::Placing {
                last_attempt: self.claim_updated_at,
            }),
            _ => None,
        }
    }

    fn into_summary(self, allowance: &Allowance) -> OrderSummary {
        let progress = self.progress();
        OrderSummary {
            stuck: progress.and_then(|p| p.stuck(self.now, allowance)),
            progress,
            order_id: self.order_id,
            tenant_id: self.tenant_id,
            provider_account: self.provider_account,
            provider_reference: self.provider_reference,
            state: self.state,
            failure_reason: self.failure_reason,
            attempts: self.attempts,
            received_at: self.received_at,
            updated_at: self.updated_at,
            next_check_at: self.next_check_at,
            deadline: self.deadline,
            last_error: self.last_error,
            failing_since: self.failing_since,
            now: self.now,
        }
    }
}

/// One row per claim, with the shop's view and the check chain joined; filters go after
/// the `WHERE true`.
const SUMMARY: &str = "
SELECT d.order_id,
       COALESCE(o.tenant_id, d.tenant_id, c.tenant_id) AS tenant_id,
       d.provider_account, d.provider_reference,
       COALESCE(o.state, CASE WHEN c.final_state IS NOT NULL THEN c.final_state
                              WHEN d.phase IN ('new', 'placing') THEN 'received'
                              WHEN d.phase = 'placed' THEN 'dispatched'
                              ELSE 'failed' END) AS state,
       COALESCE(o.failure_reason, CASE d.phase WHEN 'rejected' THEN 'rejected'
                                               WHEN 'expired' THEN 'deadline'
                                               WHEN 'invalid' THEN 'invalid' END)
           AS failure_reason,
       GREATEST(o.attempts, c.attempts, 0) AS attempts,
       d.created_at AS received_at,
       GREATEST(o.updated_at, d.updated_at, c.updated_at) AS updated_at,
       (o.state IN ('completed', 'failed') OR d.phase IN ('rejected', 'expired', 'invalid')
            OR c.final_state IS NOT NULL) IS TRUE AS is_final,
       CASE WHEN c.final_state IS NULL AND o.state IS DISTINCT FROM 'completed'
                 AND o.state IS DISTINCT FROM 'failed'
            THEN COALESCE(c.next_check_at, o.next_check_at) END AS next_check_at,
       COALESCE(o.deadline, d.deadline) AS deadline,
       COALESCE(o.last_error, c.last_error, d.last_error) AS last_error,
       CASE WHEN o.state IS DISTINCT FROM 'completed' AND o.state IS DISTINCT FROM 'failed'
            THEN COALESCE(CASE WHEN d.phase IN ('new', 'placing') THEN d.failing_since END,
                          CASE WHEN c.final_state IS NULL THEN c.failing_since END)
       END AS failing_since,
       d.phase, d.updated_at AS claim_updated_at,
       c.order_id IS NOT NULL AS has_chain, c.step_done,
       c.next_check_at AS chain_next_check_at, c.lease_until,
       c.updated_at AS chain_updated_at,
       now() AS now
  FROM dispatch_claims d
  LEFT JOIN orders o ON o.order_id = d.order_id
  LEFT JOIN check_chains c ON c.order_id = d.order_id
 WHERE true";

fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

/// The ids of stuck orders, as a subquery: [`Row::progress`]'s cases, each with the
/// condition "due more than the grace ago" of [`crate::core::stuck`], over the partial
/// indexes of unsettled claims, placed claims and unfinished chains.
fn push_stuck_ids(q: &mut QueryBuilder<'_, Postgres>, scan: &StuckScan) {
    let a = &scan.allowance;
    q.push(
        " AND d.order_id IN (
            SELECT s.order_id FROM dispatch_claims s
             WHERE s.phase IN ('new', 'placing')
               AND NOT EXISTS (SELECT 1 FROM check_chains x WHERE x.order_id = s.order_id)
               AND s.updated_at < now() - ",
    )
    .push_bind(millis(a.placement_wait + a.grace))
    .push(
        " * interval '1 millisecond'
            UNION ALL
            SELECT s.order_id FROM dispatch_claims s
             WHERE s.phase = 'placed'
               AND NOT EXISTS (SELECT 1 FROM check_chains x WHERE x.order_id = s.order_id)
               AND s.updated_at < now() - ",
    )
    .push_bind(millis(a.first_check + a.grace))
    .push(" * interval '1 millisecond' AND s.updated_at > now() - ")
    .push_bind(millis(scan.lookback))
    .push(
        " * interval '1 millisecond'
            UNION ALL
            SELECT x.order_id FROM check_chains x
             WHERE x.final_state IS NULL
               AND ((x.step_done AND x.next_check_at < now() - ",
    )
    .push_bind(millis(a.grace))
    .push(
        " * interval '1 millisecond')
                 OR (NOT x.step_done AND COALESCE(x.lease_until, x.updated_at) < now() - ",
    )
    .push_bind(millis(a.grace))
    .push(
        " * interval '1 millisecond')))
          AND o.state IS DISTINCT FROM 'completed' AND o.state IS DISTINCT FROM 'failed'
          AND d.phase NOT IN ('rejected', 'expired', 'invalid')",
    );
}

/// The orders `filter` asks for, oldest received first (or newest first), at most
/// `filter.limit`. `scan` says when an order is stuck, for `filter.stuck` and for each row's
/// [`OrderSummary::stuck`].
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    scan: &StuckScan,
) -> Result<Vec<OrderSummary>, sqlx::Error> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT * FROM (");
    q.push(SUMMARY);
    if filter.stuck {
        push_stuck_ids(&mut q, scan);
    }
    if let Some(tenant) = &filter.tenant {
        q.push(" AND COALESCE(o.tenant_id, d.tenant_id, c.tenant_id) = ")
            .push_bind(tenant.clone());
    }
    if let Some(account) = &filter.account {
        q.push(" AND d.provider_account = ")
            .push_bind(account.clone());
    }
    if let Some(age) = filter.older_than {
        q.push(" AND d.created_at < now() - ")
            .push_bind(millis(age))
            .push(" * interval '1 millisecond'");
    }
    q.push(") r WHERE true");
    if let Some(state) = &filter.state {
        q.push(" AND r.state = ").push_bind(state.clone());
    }
    q.push(if filter.newest_first {
        " ORDER BY r.received_at DESC, r.order_id"
    } else {
        " ORDER BY r.received_at, r.order_id"
    });
    q.push(" LIMIT ").push_bind(filter.limit);
    let rows: Vec<Row> = q.build_query_as().fetch_all(pool).await?;
    let found = rows.into_iter().map(|r| r.into_summary(&scan.allowance));
    // The SQL and the rule say the same; should they ever not, the rule wins.
    Ok(found
        .filter(|s| !filter.stuck || s.stuck.is_some())
        .collect())
}

/// Up to `limit` stuck orders (see [`crate::core::stuck`]), the longest received first:
/// [`list`] with only `stuck` set. Each row's [`OrderSummary::stuck`] says which step it
/// waits for, since when it was due and how overdue it is.
pub async fn stuck(
    pool: &PgPool,
    scan: &StuckScan,
    limit: i64,
) -> Result<Vec<OrderSummary>, sqlx::Error> {
    let filter = Filter {
        stuck: true,
        limit,
        ..Filter::default()
    };
    list(pool, &filter, scan).await
}

/// The order a provider reference was fixed for (references are unique across
/// accounts: one sequence gives them all).
pub async fn by_reference(pool: &PgPool, reference: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT order_id FROM dispatch_claims WHERE provider_reference = $1")
        .bind(reference)
        .fetch_optional(pool)
        .await
}

/// The orders whose claim holds one of `digests` (a phone number's digests under each
/// lookup key, [`crate::lookup`]), newest first, at most `limit`.
pub async fn by_user_digest(
    pool: &PgPool,
    digests: &[String],
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT order_id FROM dispatch_claims WHERE user_digest = ANY($1)
          ORDER BY created_at DESC, order_id LIMIT $2",
    )
    .bind(digests)
    .bind(limit)
    .fetch_all(pool)
    .await
}
