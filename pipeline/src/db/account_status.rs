//! The `account_status` table: what each stage process sees of each provider account (its
//! balance, circuit breaker, caps and recent answers), written every few seconds by the
//! dispatch and poll stages (`crate::account_status`) and read by `orderflow accounts` and
//! the status page ([`read`], [`read_account`]). One row per account and process; a
//! process that stops leaves its row to age, and rows a day old are deleted by the
//! writers. Rows never hold a credential (G5).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::BTreeMap;

/// A circuit breaker's state as a row records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerStatus {
    /// Calls go through.
    Closed,
    /// Calls are stopped until `breaker_open_until`.
    Open,
    /// One probe call is out; its outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerStatus {
    /// The word stored in the table (and shown by `orderflow accounts`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerStatus::Closed => "closed",
            BreakerStatus::Open => "open",
            BreakerStatus::HalfOpen => "half_open",
        }
    }

    fn parse(word: &str) -> BreakerStatus {
        match word {
            "open" => BreakerStatus::Open,
            "half_open" => BreakerStatus::HalfOpen,
            // The table's check allows nothing else.
            _ => BreakerStatus::Closed,
        }
    }
}

/// Answers by call (`place`, `check`, `balance`) and class (as in
/// `orderflow_provider_calls_total`: `accepted`, `pending`, `account_problem`, ...).
pub type AnswerCounts = BTreeMap<String, BTreeMap<String, u64>>;

/// One process's view of one provider account.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountStatus {
    /// The account's id in the accounts file (what orders name in `provider_account`).
    pub account: String,
    /// Which process wrote the row: `<stage> <host>:<pid>`.
    pub written_by: String,
    /// `dispatch` or `poll`.
    pub stage: String,
    /// The last balance the provider reported to this process, as the provider's decimal
    /// text, and when.
    pub balance: Option<String>,
    pub balance_at: Option<DateTime<Utc>>,
    /// Money spent per hour over the last hour of balance readings (drops only; a top-up is
    /// no spending); `None` until two readings exist.
    pub spend_per_hour: Option<f64>,
    pub breaker: BreakerStatus,
    /// Consecutive failed calls while the breaker is closed.
    pub breaker_failures: u32,
    /// While open: until when.
    pub breaker_open_until: Option<DateTime<Utc>>,
    /// The caps the process calls the account with (G6).
    pub max_concurrent: u32,
    pub max_per_second: f64,
    pub breaker_failures_to_open: u32,
    pub breaker_open_ms: u64,
    /// Calls in flight in this process when the row was written.
    pub in_flight: u32,
    /// Answers over the last `window_secs`.
    pub answers: AnswerCounts,
    pub window_secs: u32,
    /// The last call without a usable answer (an account problem, a timeout, a 5xx), in
    /// the stage's words with provider text scrubbed, and when.
    pub last_failure: Option<String>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl AccountStatus {
    /// Whether the row was written within `max_age` of `now`: its process is likely alive.
    pub fn is_fresh(&self, now: DateTime<Utc>, max_age: chrono::Duration) -> bool {
        now - self.updated_at <= max_age
    }
}

/// The row as stored.
#[derive(sqlx::FromRow)]
struct Row {
    account: String,
    written_by: String,
    stage: String,
    balance: Option<String>,
    balance_at: Option<DateTime<Utc>>,
    spend_per_hour: Option<f64>,
    breaker: String,
    breaker_failures: i32,
    breaker_open_until: Option<DateTime<Utc>>,
    max_concurrent: i32,
    max_per_second: f64,
    breaker_failures_to_open: i32,
    breaker_open_ms: i64,
    in_flight: i32,
    answers: String,
    window_secs: i32,
    last_failure: Option<String>,
    last_failure_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

fn unsigned(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn signed(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl From<Row> for AccountStatus {
    fn from(r: Row) -> Self {
        AccountStatus {
            account: r.account,
            written_by: r.written_by,
            stage: r.stage,
            balance: r.balance,
            balance_at: r.balance_at,
            spend_per_hour: r.spend_per_hour,
            breaker: BreakerStatus::parse(&r.breaker),
            breaker_failures: unsigned(r.breaker_failures),
            breaker_open_until: r.breaker_open_until,
            max_concurrent: unsigned(r.max_concurrent),
            max_per_second: r.max_per_second,
            breaker_failures_to_open: unsigned(r.breaker_failures_to_open),
            breaker_open_ms: u64::try_from(r.breaker_open_ms).unwrap_or(0),
            in_flight: unsigned(r.in_flight),
            // Written by `write` from the same type: it parses.
            answers: serde_json::from_str(&r.answers).unwrap_or_default(),
            window_secs: unsigned(r.window_secs),
            last_failure: r.last_failure,
            last_failure_at: r.last_failure_at,
            updated_at: r.updated_at,
        }
    }
}

const SELECT: &str = "SELECT account, written_by, stage, balance, balance_at, spend_per_hour,
        breaker, breaker_failures, breaker_open_until, max_concurrent, max_per_second,
        breaker_failures_to_open, breaker_open_ms, in_flight, answers::text AS answers,
        window_secs, last_failure, last_failure_at, updated_at
   FROM account_status";

/// Every row, by account, then the newest first.
pub async fn read(pool: &PgPool) -> Result<Vec<AccountStatus>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{SELECT} ORDER BY account, updated_at DESC, written_by"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(AccountStatus::from).collect())
}

/// The rows of one account, the newest first.
pub async fn read_account(pool: &PgPool, account: &str) -> Result<Vec<AccountStatus>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{SELECT} WHERE account = $1 ORDER BY updated_at DESC, written_by"
    ))
    .bind(account)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(AccountStatus::from).collect())
}

/// Writes one process's rows (inserted or replaced), in one transaction; `updated_at` is
/// the database's clock. Rows older than `forget_after` (any process's) are deleted in the
/// same transaction.
pub async fn write(
    pool: &PgPool,
    rows: &[AccountStatus],
    forget_after: std::time::Duration,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for s in rows {
        sqlx::query(
            "INSERT INTO account_status (account, written_by, stage, balance, balance_at,
                spend_per_hour, breaker, breaker_failures, breaker_open_until, max_concurrent,
                max_per_second, breaker_failures_to_open, breaker_open_ms, in_flight, answers,
                window_secs, last_failure, last_failure_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb,
                $16, $17, $18, now())
             ON CONFLICT (account, written_by) DO UPDATE SET
                stage = EXCLUDED.stage, balance = EXCLUDED.balance,
                balance_at = EXCLUDED.balance_at, spend_per_hour = EXCLUDED.spend_per_hour,
                breaker = EXCLUDED.breaker, breaker_failures = EXCLUDED.breaker_failures,
                breaker_open_until = EXCLUDED.breaker_open_until,
                max_concurrent = EXCLUDED.max_concurrent,
                max_per_second = EXCLUDED.max_per_second,
                breaker_failures_to_open = EXCLUDED.breaker_failures_to_open,
                breaker_open_ms = EXCLUDED.breaker_open_ms, in_flight = EXCLUDED.in_flight,
                answers = EXCLUDED.answers, window_secs = EXCLUDED.window_secs,
                last_failure = EXCLUDED.last_failure,
                last_failure_at = EXCLUDED.last_failure_at, updated_at = now()",
        )
        .bind(&s.account)
        .bind(&s.written_by)
        .bind(&s.stage)
        .bind(&s.balance)
        .bind(s.balance_at)
        .bind(s.spend_per_hour)
        .bind(s.breaker.as_str())
        .bind(signed(s.breaker_failures))
        .bind(s.breaker_open_until)
        .bind(signed(s.max_concurrent))
        .bind(s.max_per_second)
        .bind(signed(s.breaker_failures_to_open))
        .bind(i64::try_from(s.breaker_open_ms).unwrap_or(i64::MAX))
        .bind(signed(s.in_flight))
        .bind(serde_json::to_string(&s.answers).unwrap_or_else(|_| "{}".into()))
        .bind(signed(s.window_secs))
        .bind(&s.last_failure)
        .bind(s.last_failure_at)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM account_status WHERE updated_at < now() - $1::interval")
        .bind(format!("{} seconds", forget_after.as_secs()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
