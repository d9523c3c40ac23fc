//! Watching the provider accounts from the stages, off the orders' path: every few seconds
//! each dispatch and poll process writes what it sees of each account (balance, breaker,
//! caps, the answers of the last minutes) to the `account_status` table
//! ([`spawn_writer`]), which `orderflow accounts` and the status page read; and each
//! dispatch process asks each account for its balance on a schedule
//! ([`spawn_balance_checks`]), so the balance is known (and exported as
//! `orderflow_account_balance`) also while no order is placed.
//!
//! Both are background tasks that end at shutdown. A failed write is logged and tried again
//! at the next pass; a balance check waits for the account's caps and breaker like any call,
//! one at a time per account, and is skipped while the breaker is open.

use crate::core::account_status::{AnswerWindow, SpendRate};
use crate::db::account_status::{self as table, AccountStatus, AnswerCounts, BreakerStatus};
use crate::provider::accounts::{Account, BreakerView, Snapshot};
use crate::provider::BalanceOutcome;
use crate::shutdown::Shutdown;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a stage writes its view of the accounts (flags or environment variables).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct AccountStatusConfig {
    /// How often this process writes what it sees of each provider account (balance,
    /// breaker, caps, recent answers) to the account_status table, in seconds; 0: never.
    #[arg(
        long = "account-status-interval-secs",
        env = "ORDERFLOW_ACCOUNT_STATUS_INTERVAL_SECS",
        default_value_t = 10
    )]
    pub interval_secs: u64,
}

impl Default for AccountStatusConfig {
    fn default() -> Self {
        AccountStatusConfig { interval_secs: 10 }
    }
}

/// The answers a row counts: those of about the last five minutes.
pub const ANSWER_WINDOW: Duration = Duration::from_secs(300);
/// The balance readings the spending rate is computed over.
pub const SPEND_SPAN: Duration = Duration::from_secs(3600);
/// Rows not written for this long (their process is gone) are deleted.
pub const FORGET_AFTER: Duration = Duration::from_secs(86_400);

/// Which process writes: `<stage> <host>:<pid>`.
pub fn written_by(stage: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{stage} {host}:{}", std::process::id())
}

/// Writes this process's view of `accounts` every `config.interval_secs` until shutdown
/// (nothing when 0). `stage` is `dispatch` or `poll`.
pub fn spawn_writer(
    stage: &'static str,
    accounts: Vec<Arc<Account>>,
    pool: PgPool,
    config: AccountStatusConfig,
    mut shutdown: Shutdown,
) {
    if config.interval_secs == 0 || accounts.is_empty() {
        return;
    }
    let interval = Duration::from_secs(config.interval_secs);
    let writer = written_by(stage);
    tokio::spawn(async move {
        let mut views: Vec<View> = accounts.into_iter().map(View::new).collect();
        loop {
            let rows: Vec<AccountStatus> = views
                .iter_mut()
                .map(|view| view.row(stage, &writer, Instant::now()))
                .collect();
            if let Err(error) = table::write(&pool, &rows, FORGET_AFTER).await {
                tracing::warn!(%error, "writing the account status failed; trying again at the next pass");
            }
            if shutdown.sleep(interval).await.is_err() {
                return;
            }
        }
    });
}

/// One account as the writer follows it: its answer window and spending rate.
struct View {
    account: Arc<Account>,
    answers: AnswerWindow,
    spend: SpendRate,
    /// The last reading added to `spend`, so each counts once.
    last_reading: Option<Instant>,
}

impl View {
    fn new(account: Arc<Account>) -> View {
        View {
            account,
            answers: AnswerWindow::new(ANSWER_WINDOW),
            spend: SpendRate::new(SPEND_SPAN),
            last_reading: None,
        }
    }

    fn row(&mut self, stage: &str, written_by: &str, now: Instant) -> AccountStatus {
        let snapshot = self.account.snapshot();
        let (recent, span) = self.answers.push(now, snapshot.answers.clone());
        if let Some(reading) = &snapshot.balance {
            if self.last_reading != Some(reading.instant) && reading.value.is_finite() {
                self.spend.push(reading.instant, reading.value);
                self.last_reading = Some(reading.instant);
            }
        }
        let mut answers = AnswerCounts::new();
        for ((call, class), n) in recent {
            answers
                .entry(call.to_owned())
                .or_default()
                .insert(class.to_owned(), n);
        }
        row(
            snapshot,
            answers,
            span,
            self.spend.per_hour(),
            stage,
            written_by,
        )
    }
}

/// The row for one snapshot.
fn row(
    s: Snapshot,
    answers: AnswerCounts,
    span: Duration,
    spend_per_hour: Option<f64>,
    stage: &str,
    written_by: &str,
) -> AccountStatus {
    let (breaker, breaker_failures, breaker_open_until) = match s.breaker {
        BreakerView::Closed { failures } => (BreakerStatus::Closed, failures, None),
        BreakerView::Open { until } => (BreakerStatus::Open, 0, Some(until)),
        BreakerView::HalfOpen => (BreakerStatus::HalfOpen, 0, None),
    };
    let (balance, balance_at) = match s.balance {
        Some(r) => (Some(r.text), Some(r.at)),
        None => (None, None),
    };
    let (last_failure, last_failure_at) = match s.last_failure {
        Some((text, at)) => (Some(text), Some(at)),
        None => (None, None),
    };
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    AccountStatus {
        account: s.account,
        written_by: written_by.to_owned(),
        stage: stage.to_owned(),
        balance,
        balance_at,
        spend_per_hour,
        breaker,
        breaker_failures,
        breaker_open_until,
        max_concurrent: to_u32(s.limits.max_concurrent),
        max_per_second: s.limits.max_per_second,
        breaker_failures_to_open: s.limits.breaker.failures_to_open,
        breaker_open_ms: u64::try_from(s.limits.breaker.open_for.as_millis()).unwrap_or(u64::MAX),
        in_flight: to_u32(s.in_flight),
        answers,
        window_secs: u32::try_from(span.as_secs()).unwrap_or(u32::MAX),
        last_failure,
        last_failure_at,
        // The database's clock decides when the row is written.
        updated_at: chrono::Utc::now(),
    }
}

/// Asks each account for its balance now and then every `interval` until shutdown
/// (nothing when zero), one call at a time per account.
pub fn spawn_balance_checks(accounts: Vec<Arc<Account>>, interval: Duration, shutdown: Shutdown) {
    if interval.is_zero() {
        return;
    }
    for account in accounts {
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = check_balance(&account) => {}
                    _ = shutdown.wait() => return,
                }
                if shutdown.sleep(interval).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One balance check of `account`, within its caps; skipped while its breaker is open.
async fn check_balance(account: &Account) {
    let permit = match account.permit_within(account.request_timeout).await {
        Ok(permit) => permit,
        Err(wait) => {
            tracing::debug!(account = %account.id, wait_ms = wait.as_millis() as u64, "balance check skipped: the account's breaker is open or its calls are all taken");
            return;
        }
    };
    match permit.balance().await {
        BalanceOutcome::Balance { balance, .. } => {
            tracing::debug!(account = %account.id, %balance, "balance checked");
        }
        BalanceOutcome::AccountProblem { detail } => {
            tracing::warn!(account = %account.id, %detail, "balance check: the provider says the account is at fault");
        }
        BalanceOutcome::Transient { detail } => {
            tracing::warn!(account = %account.id, %detail, "balance check: no usable answer");
        }
    }
}
