//! One configured account, ready to call: its caps (calls at once, calls per second: the
//! slots of [`super::caps`], the account's whole budget when the process is alone, its share
//! of it in a cluster) and circuit breaker (G6), and the [`CallPermit`] every call goes
//! through, which counts the call, feeds the breaker and keeps what the account's status
//! shows (`status`).

use super::caps::{CallSlot, Caps, RateSlot};
use super::status::{BreakerView, Snapshot, Tracker};
use super::{DEFAULT_MAX_RETRYING, DEFAULT_VISIBILITY_WINDOW_MS};
use crate::core::breaker::{Breaker, BreakerConfig, BreakerState, Ticket};
use crate::metrics::{AccountLabel, CallLabels, Metrics};
use crate::provider::{BalanceOutcome, CheckOutcome, PlaceOutcome, Placement, Provider};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How politely an account is called (G6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub max_concurrent: usize,
    pub max_per_second: f64,
    pub breaker: BreakerConfig,
}

/// A configured account, ready to call. Calls go through a [`CallPermit`] from
/// [`Account::permit`], which holds the account's caps and feeds its circuit breaker.
pub struct Account {
    pub id: String,
    pub provider: Box<dyn Provider>,
    pub request_timeout: Duration,
    /// How long a reference must stay not-found after an unclear placement before it is
    /// placed again (`visibility_window_ms`).
    pub visibility_window: Duration,
    /// The caps' slots this process holds, and its callers waiting for them.
    pub caps: Caps,
    /// Places for orders the dispatch stage retries in process (`max_retrying`).
    retrying: Arc<Semaphore>,
    max_retrying: usize,
    breaker: Mutex<Breaker>,
    limits: Limits,
    /// Answers, the last balance and the last failure, for the account's status.
    pub(super) status: Tracker,
    /// `balance_alert_below`: below this balance an alert fires.
    pub(super) balance_alert_below: Option<f64>,
    /// Where calls and the breaker's state are counted, once a stage says so.
    pub(super) metrics: std::sync::OnceLock<Arc<Metrics>>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Permission for one provider call, within the account's caps: a call slot and a rate
/// slot, both held until the call ends, the rate slot resting from then on (a call's start
/// is when the provider is asked: the work between a permit and its call, such as marking a
/// claim, happens before). The call's outcome feeds the breaker. A permit dropped without a
/// call (or whose call was cancelled) tells the breaker nothing, except that its probe, if
/// it was one, is free.
pub struct CallPermit<'a> {
    account: &'a Account,
    _slot: CallSlot<'a>,
    rate: Option<RateSlot<'a>>,
    ticket: Ticket,
    recorded: bool,
}

impl CallPermit<'_> {
    /// The call starts now; its rate slot rests once the permit is dropped, after the call.
    pub(super) async fn start(&mut self) -> Instant {
        if let Some(rate) = self.rate.as_mut() {
            self.account.caps.start_call(rate).await;
        }
        Instant::now()
    }

    pub async fn place(mut self, placement: &Placement) -> PlaceOutcome {
        let started = self.start().await;
        let outcome = self.account.provider.place(placement).await;
        // A refusal with a code is an answer: the provider is up. Counting it as a failure
        // would let one product's refusals (say, out of stock) pause every other order of
        // the account; refused orders back off one by one instead.
        let healthy = matches!(
            outcome,
            PlaceOutcome::Accepted { .. }
                | PlaceOutcome::Rejected { .. }
                | PlaceOutcome::Refused { .. }
                | PlaceOutcome::Duplicate { .. }
        );
        let class = match &outcome {
            PlaceOutcome::Accepted { balance, .. } => {
                if let Some(balance) = balance {
                    self.account.reported_balance(balance);
                }
                "accepted"
            }
            PlaceOutcome::Rejected { .. } => "rejected",
            PlaceOutcome::Refused { .. } => "refused",
            PlaceOutcome::Duplicate { .. } => "duplicate",
            PlaceOutcome::AccountProblem { detail, .. } => {
                self.failed("place", "account_problem", detail)
            }
            PlaceOutcome::Transient { detail } => self.failed("place", "transient", detail),
            PlaceOutcome::Unknown { detail } => self.failed("place", "unknown", detail),
        };
        self.record("place", class, started, healthy);
        outcome
    }

    pub async fn check(mut self, reference: &str) -> CheckOutcome {
        let started = self.start().await;
        let outcome = self.account.provider.check(reference).await;
        let healthy = !matches!(
            outcome,
            CheckOutcome::AccountProblem { .. } | CheckOutcome::Transient { .. }
        );
        let class = match &outcome {
            CheckOutcome::Pending => "pending",
            CheckOutcome::Completed { .. } => "completed",
            CheckOutcome::Cancelled { .. } => "cancelled",
            CheckOutcome::Unclear { .. } => "unclear",
            CheckOutcome::NotFound { .. } => "not_found",
            CheckOutcome::Refused { .. } => "refused",
            CheckOutcome::AccountProblem { detail } => {
                self.failed("check", "account_problem", detail)
            }
            CheckOutcome::Transient { detail } => self.failed("check", "transient", detail),
        };
        self.record("check", class, started, healthy);
        outcome
    }

    /// Asks the provider for the account's balance (`bakiye_kontrol` for znet); a balance
    /// answered is the account's status and gauge from now on. The call is off the orders'
    /// path: it waited for the breaker like any call, but its outcome neither opens nor
    /// closes it (the orders' calls decide; if it held the probe, the next call probes).
    pub async fn balance(mut self) -> BalanceOutcome {
        let started = self.start().await;
        let outcome = self.account.provider.balance().await;
        let class = match &outcome {
            BalanceOutcome::Balance { balance, .. } => {
                self.account.reported_balance(balance);
                "balance"
            }
            BalanceOutcome::AccountProblem { detail } => {
                self.failed("balance", "account_problem", detail)
            }
            BalanceOutcome::Transient { detail } => self.failed("balance", "transient", detail),
        };
        let healthy = matches!(outcome, BalanceOutcome::Balance { .. });
        self.count("balance", class, started, healthy);
        outcome
    }

    /// Keeps a call's failure for the account's status; returns its class.
    fn failed(&self, call: &'static str, class: &'static str, detail: &str) -> &'static str {
        self.account.status.failed(call, detail);
        class
    }

    pub(super) fn record(
        &mut self,
        call: &'static str,
        class: &'static str,
        started: Instant,
        healthy: bool,
    ) {
        self.recorded = true;
        self.account.record(self.ticket, healthy);
        self.count(call, class, started, healthy);
    }

    /// Counts a call in the account's status and metrics.
    fn count(&self, call: &'static str, class: &'static str, started: Instant, healthy: bool) {
        self.account.status.answered(call, class);
        if let Some(metrics) = self.account.metrics.get() {
            let labels = CallLabels {
                account: self.account.id.clone(),
                call,
                outcome: if healthy { "answered" } else { "failed" },
                class,
            };
            metrics.provider_calls.get_or_create(&labels).inc();
            metrics
                .provider_call_seconds
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.account
                .breaker
                .lock()
                .expect("breaker lock")
                .abandon(Instant::now(), self.ticket);
        }
    }
}

impl Account {
    pub fn new(
        id: String,
        provider: Box<dyn Provider>,
        request_timeout: Duration,
        limits: Limits,
    ) -> Self {
        Account {
            id,
            provider,
            request_timeout,
            visibility_window: Duration::from_millis(DEFAULT_VISIBILITY_WINDOW_MS),
            caps: Caps::alone(limits.max_concurrent, limits.max_per_second),
            retrying: Arc::new(Semaphore::new(DEFAULT_MAX_RETRYING)),
            max_retrying: DEFAULT_MAX_RETRYING,
            breaker: Mutex::new(Breaker::new(limits.breaker)),
            limits,
            status: Tracker::default(),
            balance_alert_below: None,
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// The same account with a balance below which an alert fires (`balance_alert_below`).
    pub fn with_balance_alert_below(self, below: Option<f64>) -> Self {
        Account {
            balance_alert_below: below,
            ..self
        }
    }

    /// Keeps a balance the provider reported, and shows it on the gauge.
    fn reported_balance(&self, text: &str) {
        let value = self.status.balance(text);
        self.show_balance(value);
    }

    /// Sets the account's `account_balance` gauge, once a stage observes the account; the
    /// gauge's handle is looked up once.
    pub(super) fn show_balance(&self, value: f64) {
        let Some(metrics) = self.metrics.get() else {
            return;
        };
        if !value.is_finite() {
            return;
        }
        let gauge = self.status.balance_gauge.get_or_init(|| {
            let label = AccountLabel {
                account: self.id.clone(),
            };
            metrics.account_balance.get_or_create(&label).clone()
        });
        gauge.set(value);
    }

    /// The caps the account is called with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The account's status in this process now: its breaker, caps, calls in flight,
    /// answers so far, last balance and last failure.
    pub fn snapshot(&self) -> Snapshot {
        let breaker = match self.breaker.lock().expect("breaker lock").state() {
            BreakerState::Closed { failures } => BreakerView::Closed { failures },
            BreakerState::Open { until } => {
                let left = until.saturating_duration_since(Instant::now());
                BreakerView::Open {
                    until: chrono::Utc::now()
                        + chrono::Duration::from_std(left).unwrap_or(chrono::Duration::zero()),
                }
            }
            BreakerState::HalfOpen => BreakerView::HalfOpen,
        };
        Snapshot {
            account: self.id.clone(),
            breaker,
            limits: self.limits,
            in_flight: self.caps.busy(),
            answers: self.status.answers(),
            balance: self.status.last_balance(),
            last_failure: self.status.last_failure(),
        }
    }

    /// The same account with another visibility window.
    pub fn with_visibility_window(self, window: Duration) -> Self {
        Account {
            visibility_window: window,
            ..self
        }
    }

    /// The same account with another `max_retrying`.
    pub fn with_max_retrying(self, max_retrying: usize) -> Self {
        let max_retrying = max_retrying.max(1);
        Account {
            retrying: Arc::new(Semaphore::new(max_retrying)),
            max_retrying,
            ..self
        }
    }

    /// A place among the orders of this account retried in process, while one is free;
    /// held until the order settles or is parked.
    pub fn try_retrying(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.retrying).try_acquire_owned().ok()
    }

    /// How many orders of this account may be retried in process at once.
    pub fn max_retrying(&self) -> usize {
        self.max_retrying
    }

    /// How long a worker holds an order's lease (a dispatch claim, a check step): longer
    /// than any call to this account, short enough that a crashed worker's orders resume
    /// soon. Renewed right before each call.
    pub fn lease(&self) -> Duration {
        self.request_timeout * 2 + Duration::from_secs(5)
    }

    /// Checks an order under `reference`, within the account's caps.
    pub async fn check(&self, reference: &str) -> CheckOutcome {
        self.permit().await.check(reference).await
    }

    /// Waits until the breaker lets a call through and the call is within both caps.
    pub async fn permit(&self) -> CallPermit<'_> {
        let slot = self
            .caps
            .call_slot(None)
            .await
            .expect("no patience, no giving up");
        let ticket = wait_until(|| {
            self.breaker
                .lock()
                .expect("breaker lock")
                .try_call(Instant::now())
        })
        .await;
        // Build the permit now, so that a cancellation while waiting for the rate cap frees
        // a probe.
        let mut permit = CallPermit {
            account: self,
            _slot: slot,
            rate: None,
            ticket,
            recorded: false,
        };
        permit.rate = Some(self.caps.rate_slot().await);
        permit
    }

    /// As [`Account::permit`], but waits at most `patience` for the concurrency cap and
    /// the breaker. `Err` says how long the caller would still have to wait (the open
    /// breaker's remaining time, or `patience` when the cap stayed full), so that a caller
    /// with other work to do (the dispatch stage) can step aside instead of holding its
    /// place while an account is down.
    pub async fn permit_within(&self, patience: Duration) -> Result<CallPermit<'_>, Duration> {
        let start = Instant::now();
        let slot = self.caps.call_slot(Some(patience)).await.ok_or(patience)?;
        let ticket = loop {
            let asked = self
                .breaker
                .lock()
                .expect("breaker lock")
                .try_call(Instant::now());
            match asked {
                Ok(ticket) => break ticket,
                Err(wait) if start.elapsed() + wait > patience => return Err(wait),
                Err(wait) => tokio::time::sleep(wait).await,
            }
        };
        let mut permit = CallPermit {
            account: self,
            _slot: slot,
            rate: None,
            ticket,
            recorded: false,
        };
        // The rate cap's waits are a fraction of a second: not worth stepping aside for.
        permit.rate = Some(self.caps.rate_slot().await);
        Ok(permit)
    }

    fn record(&self, ticket: Ticket, healthy: bool) {
        let mut breaker = self.breaker.lock().expect("breaker lock");
        let was_open = !matches!(breaker.state(), BreakerState::Closed { .. });
        breaker.record(Instant::now(), ticket, healthy);
        let is_open = !matches!(breaker.state(), BreakerState::Closed { .. });
        if let Some(metrics) = self.metrics.get() {
            let label = AccountLabel {
                account: self.id.clone(),
            };
            metrics
                .provider_breaker_open
                .get_or_create(&label)
                .set(i64::from(is_open));
        }
        if is_open && !was_open {
            tracing::warn!(account = %self.id, "provider failing: circuit breaker open, calls paused");
        } else if was_open && !is_open {
            tracing::info!(account = %self.id, "provider answering again: circuit breaker closed");
        }
    }
}

/// Asks `try_now` until it says yes, sleeping as long as each "no" says to.
async fn wait_until<T>(mut try_now: impl FnMut() -> Result<T, Duration>) -> T {
    loop {
        match try_now() {
            Ok(granted) => return granted,
            Err(wait) => tokio::time::sleep(wait).await,
        }
    }
}
