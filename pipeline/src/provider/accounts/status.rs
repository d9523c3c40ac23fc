//! What one account's calls leave behind for its status: every answer counted by call and
//! class, the last balance the provider reported (also set on the `account_balance`
//! gauge), and the last call without a usable answer. Read as a [`Snapshot`] by the stage's
//! status writer (`crate::account_status`), off the hot path; on it, each call costs a
//! short lock and, for a placement answer with a balance, one gauge store.

use crate::core::account_status::Counts;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// A balance the provider reported.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The provider's decimal text, as answered.
    pub text: String,
    /// The same as a number, for the gauge and the spending rate only.
    pub value: f64,
    pub at: DateTime<Utc>,
    /// When, on this process's monotonic clock.
    pub instant: Instant,
}

/// One account's status as its calls left it.
#[derive(Default)]
pub(super) struct Tracker {
    answers: Mutex<Counts>,
    balance: Mutex<Option<Reading>>,
    last_failure: Mutex<Option<(String, DateTime<Utc>)>>,
    /// The account's `account_balance` gauge, made at the first balance reported once a
    /// stage observes the account.
    pub(super) balance_gauge: OnceLock<Gauge<f64, AtomicU64>>,
}

impl Tracker {
    pub(super) fn answered(&self, call: &'static str, class: &'static str) {
        *self
            .answers
            .lock()
            .expect("answers lock")
            .entry((call, class))
            .or_default() += 1;
    }

    /// A call without a usable answer; `detail` is the classifier's (never a credential,
    /// provider text scrubbed).
    pub(super) fn failed(&self, call: &'static str, detail: &str) {
        *self.last_failure.lock().expect("failure lock") =
            Some((format!("{call}: {detail}"), Utc::now()));
    }

    /// A balance the provider reported, returned as a number (NaN for text that is not
    /// one, which is kept as text only).
    pub(super) fn balance(&self, text: &str) -> f64 {
        let value = text.trim().parse::<f64>().unwrap_or(f64::NAN);
        *self.balance.lock().expect("balance lock") = Some(Reading {
            text: text.trim().to_owned(),
            value,
            at: Utc::now(),
            instant: Instant::now(),
        });
        value
    }

    pub(super) fn answers(&self) -> Counts {
        self.answers.lock().expect("answers lock").clone()
    }

    pub(super) fn last_balance(&self) -> Option<Reading> {
        self.balance.lock().expect("balance lock").clone()
    }

    pub(super) fn last_failure(&self) -> Option<(String, DateTime<Utc>)> {
        self.last_failure.lock().expect("failure lock").clone()
    }
}

/// What the account's breaker does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerView {
    /// Calls go through; `failures` consecutive calls failed so far.
    Closed { failures: u32 },
    /// Calls are stopped until then (a probe goes once it has passed).
    Open { until: DateTime<Utc> },
    /// The probe is out.
    HalfOpen,
}

/// One account's status in this process, at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub account: String,
    pub breaker: BreakerView,
    pub limits: super::Limits,
    /// Calls in flight now.
    pub in_flight: usize,
    /// Answers since the process started, by (call, class).
    pub answers: Counts,
    pub balance: Option<Reading>,
    pub last_failure: Option<(String, DateTime<Utc>)>,
}
