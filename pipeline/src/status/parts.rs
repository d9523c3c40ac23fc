//! The parts of a [`super::Snapshot`] that come from other modules' readers, as the page
//! shows them: stuck orders (`db::find::stuck`), dead letters per reason
//! (`kafka::dlq::read::counts_per_reason`) and the provider accounts
//! (`db::account_status::read`). Each keeps only what a person needs to see, and nothing
//! secret: no PIN, no credential, no payload (G5).

use crate::db::account_status::AccountStatus;
use crate::db::find::OrderSummary;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A stuck order: which step it waits for and how overdue that step is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StuckOrder {
    pub order_id: Uuid,
    pub provider_account: String,
    pub state: String,
    /// `placement`, `first_check`, `next_check` or `check`.
    pub step: &'static str,
    pub due: DateTime<Utc>,
    pub overdue_secs: u64,
    /// What holds it up, as its tables say (provider text scrubbed by the stages).
    pub last_error: Option<String>,
}

impl StuckOrder {
    /// `None` for a row the stuck rule does not call stuck.
    pub fn of(order: &OrderSummary) -> Option<StuckOrder> {
        let stuck = order.stuck?;
        Some(StuckOrder {
            order_id: order.order_id,
            provider_account: order.provider_account.clone(),
            state: order.state.clone(),
            step: stuck.step.as_str(),
            due: stuck.due,
            overdue_secs: stuck.overdue.as_secs(),
            last_error: order.last_error.clone(),
        })
    }
}

/// The stuck orders found, the longest received first, at most `limit` of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StuckOrders {
    pub orders: Vec<StuckOrder>,
    /// True when there may be more than shown.
    pub more: bool,
}

/// Entries in `orders.dlq` per reason, as read at `read_at` (the DLQ is read less often
/// than the rest: see `collect.rs`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DlqCounts {
    pub per_reason: BTreeMap<String, u64>,
    pub read_at: DateTime<Utc>,
}

/// One stage process's view of one provider account.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccountView {
    pub account: String,
    /// `dispatch` or `poll`.
    pub stage: String,
    /// `<stage> <host>:<pid>`.
    pub written_by: String,
    /// The last balance the provider reported, as its decimal text.
    pub balance: Option<String>,
    pub balance_at: Option<DateTime<Utc>>,
    pub spend_per_hour: Option<f64>,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    pub breaker_open_until: Option<DateTime<Utc>>,
    pub max_concurrent: u32,
    pub max_per_second: f64,
    pub in_flight: u32,
    /// Answers over the last `window_secs`, by call and class.
    pub answers: BTreeMap<String, BTreeMap<String, u64>>,
    pub window_secs: u32,
    pub last_failure: Option<String>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Written within the last minute: its process is likely alive.
    pub fresh: bool,
}

impl AccountView {
    pub fn of(row: &AccountStatus, now: DateTime<Utc>) -> AccountView {
        AccountView {
            account: row.account.clone(),
            stage: row.stage.clone(),
            written_by: row.written_by.clone(),
            balance: row.balance.clone(),
            balance_at: row.balance_at,
            spend_per_hour: row.spend_per_hour,
            breaker: row.breaker.as_str(),
            breaker_open_until: row.breaker_open_until,
            max_concurrent: row.max_concurrent,
            max_per_second: row.max_per_second,
            in_flight: row.in_flight,
            answers: row.answers.clone(),
            window_secs: row.window_secs,
            last_failure: row.last_failure.clone(),
            last_failure_at: row.last_failure_at,
            updated_at: row.updated_at,
            fresh: row.is_fresh(now, chrono::Duration::seconds(60)),
        }
    }
}
