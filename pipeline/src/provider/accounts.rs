//! Provider accounts: which provider, where, with which credentials and how politely.
//!
//! Read from a TOML file (`ORDERFLOW_PROVIDER_ACCOUNTS`), one `[[account]]` table each.
//! Every provider call goes through a [`CallPermit`], which holds the account's concurrency
//! cap and calls-per-second cap and waits while its circuit breaker is open (G6). The caps
//! are per process: with several dispatch processes, divide the provider's limits by their
//! number. Credentials are [`Secret`]s: printing an
//! account never shows them.
//!
//! ```toml
//! [[account]]
//! id = "znet-main"            # what orders.created names in provider_account
//! provider = "znet"
//! base_url = "https://bayi.example.com"
//! kod = "..."                 # or kod_env = "ZNET_MAIN_KOD" to read an environment variable
//! sifre_env = "ZNET_MAIN_SIFRE"
//! max_concurrent = 8
//! max_per_second = 10
//! request_timeout_ms = 10000
//! breaker_failures = 5        # consecutive failed calls that pause calls ...
//! breaker_open_ms = 30000     # ... for this long, then one probe decides
//! # What the provider's `<code>|<message>` answers mean (G9); these are the defaults.
//! permanent_codes = ["3"]         # a placement refused for good: the order fails
//! duplicate_codes = ["5"]         # a placement under a referans that already has an order
//! account_problem_codes = ["8"]   # credentials, IP whitelist or API permission
//! not_found_codes = ["4"]         # a check of a referans the provider does not know
//! visibility_window_ms = 300000   # how long a new order may stay invisible to checks
//! max_retrying = 16           # orders the dispatch stage retries at once; more are parked
//! ```
//!
//! A placement answered with a code in no list (maintenance, a rate limit, a code never
//! seen) is refused for now and tried again with backoff until the order's deadline; a
//! check answered with a code in no list says nothing about the order. After a placement
//! whose outcome is unclear, the order is placed again (under the same reference) only once
//! the reference has stayed not-found for `visibility_window_ms`, because providers show
//! new orders with a lag. Codes are digits, given as strings or numbers; one code means one
//! thing (a placement code in two lists, or a check code that is both an account problem
//! and not-found, is refused at load).
//!
//! `max_retrying` keeps one failing account from taking every order slot of a dispatch
//! process: an order that would wait to be retried takes a place of its account's budget
//! ([`Account::try_retrying`]), and one that finds none is parked on
//! `orders.dispatch-retry` instead ([`crate::dispatch`]).

use crate::core::breaker::{Breaker, BreakerConfig, BreakerState, Ticket};
use crate::core::rate::TokenBucket;
use crate::metrics::{AccountLabel, CallLabels, Metrics};
use crate::provider::{CheckOutcome, PlaceOutcome, Placement, Provider};
use crate::secret::Secret;
use crate::znet::client::ZnetClient;
use crate::znet::protocol;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(rename = "account", default)]
    accounts: Vec<AccountConfig>,
}

/// One `[[account]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The name orders use in `provider_account`, e.g. `znet-main`.
    pub id: String,
    /// Which protocol the account speaks; only `znet` exists.
    pub provider: ProviderKind,
    /// The provider's base URL, e.g. `https://bayi.example.com`.
    pub base_url: String,
    /// The dealer code, or `kod_env` naming an environment variable that holds it.
    pub kod: Option<Secret>,
    pub kod_env: Option<String>,
    /// The password, or `sifre_env` naming an environment variable that holds it.
    pub sifre: Option<Secret>,
    pub sifre_env: Option<String>,
    /// Calls in flight at once to this account.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Calls per second to this account (bursts of up to one second's worth).
    #[serde(default = "default_max_per_second")]
    pub max_per_second: f64,
    /// How long one call may take before its outcome counts as unknown.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Consecutive failed calls (timeouts, 5xx, HTML, empty or odd answers) that stop
    /// calls to this account for `breaker_open_ms`, after which one probe call decides.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// Placement codes that fail the order (a customer rejection), e.g. `["3"]`.
    #[serde(default = "default_permanent_codes")]
    pub permanent_codes: Vec<Code>,
    /// Placement codes that say the referans already has an order, e.g. `["5"]`.
    #[serde(default = "default_duplicate_codes")]
    pub duplicate_codes: Vec<Code>,
    /// Codes of any call that say the account itself is at fault, e.g. `["8"]`.
    #[serde(default = "default_account_problem_codes")]
    pub account_problem_codes: Vec<Code>,
    /// Check codes that say the provider has no order under the referans, e.g. `["4"]`.
    #[serde(default = "default_not_found_codes")]
    pub not_found_codes: Vec<Code>,
    /// How long a reference must stay not-found after an unclear placement before it is
    /// placed again, in milliseconds, e.g. `300000`.
    #[serde(default = "default_visibility_window_ms")]
    pub visibility_window_ms: u64,
    /// Orders of this account the dispatch stage retries in process at once (per process),
    /// e.g. `16`; an order that would retry beyond them is parked on
    /// `orders.dispatch-retry`.
    #[serde(default = "default_max_retrying")]
    pub max_retrying: usize,
}

/// One provider error code in the accounts file: `"3"` or `3`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Code {
    Text(String),
    Number(u64),
}

impl Code {
    fn text(&self) -> String {
        match self {
            Code::Text(text) => text.trim().to_owned(),
            Code::Number(n) => n.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Znet,
}

fn default_max_concurrent() -> usize {
    8
}
fn default_max_per_second() -> f64 {
    10.0
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    30_000
}
fn codes(list: &[&str]) -> Vec<Code> {
    list.iter().map(|c| Code::Text((*c).to_owned())).collect()
}
fn default_permanent_codes() -> Vec<Code> {
    codes(protocol::DEFAULT_PERMANENT_CODES)
}
fn default_duplicate_codes() -> Vec<Code> {
    codes(protocol::DEFAULT_DUPLICATE_CODES)
}
fn default_account_problem_codes() -> Vec<Code> {
    codes(protocol::DEFAULT_ACCOUNT_PROBLEM_CODES)
}
fn default_not_found_codes() -> Vec<Code> {
    codes(protocol::DEFAULT_NOT_FOUND_CODES)
}
/// Five minutes: far longer than the seconds a provider's replica or cache usually lags,
/// and short against the 24 h deadline, so waiting it out costs little while placing too
/// early could buy twice under a provider that does not refuse a reused referans.
pub const DEFAULT_VISIBILITY_WINDOW_MS: u64 = 300_000;
fn default_visibility_window_ms() -> u64 {
    DEFAULT_VISIBILITY_WINDOW_MS
}
/// Sixteen: two waves of the default `max_concurrent`, enough for a short hiccup to be
/// retried in process, and a fraction of the stage's default in-flight bound (64), so one
/// failing account leaves most slots to the others.
pub const DEFAULT_MAX_RETRYING: usize = 16;
fn default_max_retrying() -> usize {
    DEFAULT_MAX_RETRYING
}
/// A longer window would outlast any order's deadline; it is surely a typo.
const MAX_VISIBILITY_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

/// The account's code lists, checked: digits only, and one meaning per code.
fn code_lists(c: &AccountConfig) -> Result<protocol::Codes, String> {
    let list = |codes: &[Code], name: &str| -> Result<Vec<String>, String> {
        codes
            .iter()
            .map(|code| {
                let text = code.text();
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    Err(format!(
                        "account {}: {name} holds {text:?}, but provider codes are digits",
                        c.id
                    ))
                } else {
                    Ok(text)
                }
            })
            .collect()
    };
    let codes = protocol::Codes {
        permanent: list(&c.permanent_codes, "permanent_codes")?,
        duplicate: list(&c.duplicate_codes, "duplicate_codes")?,
        account_problem: list(&c.account_problem_codes, "account_problem_codes")?,
        not_found: list(&c.not_found_codes, "not_found_codes")?,
    };
    let pairs: [(&[String], &str, &[String], &str); 4] = [
        (
            &codes.permanent,
            "permanent_codes",
            &codes.duplicate,
            "duplicate_codes",
        ),
        (
            &codes.permanent,
            "permanent_codes",
            &codes.account_problem,
            "account_problem_codes",
        ),
        (
            &codes.duplicate,
            "duplicate_codes",
            &codes.account_problem,
            "account_problem_codes",
        ),
        (
            &codes.not_found,
            "not_found_codes",
            &codes.account_problem,
            "account_problem_codes",
        ),
    ];
    for (a, a_name, b, b_name) in pairs {
        if let Some(code) = a.iter().find(|code| b.contains(code)) {
            return Err(format!(
                "account {}: code {code} is in both {a_name} and {b_name}; a code means one thing",
                c.id
            ));
        }
    }
    Ok(codes)
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read the provider accounts file {path} ({source})")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the provider accounts file {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

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
    concurrency: Arc<Semaphore>,
    /// Places for orders the dispatch stage retries in process (`max_retrying`).
    retrying: Arc<Semaphore>,
    max_retrying: usize,
    bucket: Mutex<TokenBucket>,
    breaker: Mutex<Breaker>,
    /// Where calls and the breaker's state are counted, once a stage says so.
    metrics: std::sync::OnceLock<Arc<Metrics>>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Permission for one provider call, within the account's caps; held for the length of the
/// call, whose outcome feeds the breaker. A permit dropped without a call (or whose call was
/// cancelled) tells the breaker nothing, except that its probe, if it was one, is free.
pub struct CallPermit<'a> {
    account: &'a Account,
    _slot: OwnedSemaphorePermit,
    ticket: Ticket,
    recorded: bool,
}

impl CallPermit<'_> {
    pub async fn place(mut self, placement: &Placement) -> PlaceOutcome {
        let started = Instant::now();
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
        let class = match outcome {
            PlaceOutcome::Accepted { .. } => "accepted",
            PlaceOutcome::Rejected { .. } => "rejected",
            PlaceOutcome::Refused { .. } => "refused",
            PlaceOutcome::Duplicate { .. } => "duplicate",
            PlaceOutcome::AccountProblem { .. } => "account_problem",
            PlaceOutcome::Transient { .. } => "transient",
            PlaceOutcome::Unknown { .. } => "unknown",
        };
        self.record("place", class, started, healthy);
        outcome
    }

    pub async fn check(mut self, reference: &str) -> CheckOutcome {
        let started = Instant::now();
        let outcome = self.account.provider.check(reference).await;
        let healthy = !matches!(
            outcome,
            CheckOutcome::AccountProblem { .. } | CheckOutcome::Transient { .. }
        );
        let class = match outcome {
            CheckOutcome::Pending => "pending",
            CheckOutcome::Completed { .. } => "completed",
            CheckOutcome::Cancelled { .. } => "cancelled",
            CheckOutcome::Unclear { .. } => "unclear",
            CheckOutcome::NotFound { .. } => "not_found",
            CheckOutcome::Refused { .. } => "refused",
            CheckOutcome::AccountProblem { .. } => "account_problem",
            CheckOutcome::Transient { .. } => "transient",
        };
        self.record("check", class, started, healthy);
        outcome
    }

    fn record(&mut self, call: &'static str, class: &'static str, started: Instant, healthy: bool) {
        self.recorded = true;
        self.account.record(self.ticket, healthy);
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
            concurrency: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            retrying: Arc::new(Semaphore::new(DEFAULT_MAX_RETRYING)),
            max_retrying: DEFAULT_MAX_RETRYING,
            bucket: Mutex::new(TokenBucket::new(
                limits.max_per_second,
                limits.max_per_second.ceil() as u32,
                Instant::now(),
            )),
            breaker: Mutex::new(Breaker::new(limits.breaker)),
            metrics: std::sync::OnceLock::new(),
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
        let slot = Arc::clone(&self.concurrency)
            .acquire_owned()
            .await
            .expect("the account semaphore is never closed");
        let ticket = wait_until(|| {
            self.breaker
                .lock()
                .expect("breaker lock")
                .try_call(Instant::now())
        })
        .await;
        // Build the permit now, so that a cancellation while waiting for the rate cap frees
        // a probe.
        let permit = CallPermit {
            account: self,
            _slot: slot,
            ticket,
            recorded: false,
        };
        wait_until(|| {
            self.bucket
                .lock()
                .expect("rate bucket lock")
                .try_take(Instant::now())
        })
        .await;
        permit
    }

    /// As [`Account::permit`], but waits at most `patience` for the concurrency cap and
    /// the breaker. `Err` says how long the caller would still have to wait (the open
    /// breaker's remaining time, or `patience` when the cap stayed full), so that a caller
    /// with other work to do (the dispatch stage) can step aside instead of holding its
    /// place while an account is down.
    pub async fn permit_within(&self, patience: Duration) -> Result<CallPermit<'_>, Duration> {
        let start = Instant::now();
        let slot = tokio::time::timeout(patience, Arc::clone(&self.concurrency).acquire_owned())
            .await
            .map_err(|_| patience)?
            .expect("the account semaphore is never closed");
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
        let permit = CallPermit {
            account: self,
            _slot: slot,
            ticket,
            recorded: false,
        };
        // The rate cap's waits are a fraction of a second: not worth stepping aside for.
        wait_until(|| {
            self.bucket
                .lock()
                .expect("rate bucket lock")
                .try_take(Instant::now())
        })
        .await;
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
                .breaker_open
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

/// Every configured account by id.
#[derive(Debug, Default)]
pub struct Accounts {
    by_id: HashMap<String, Arc<Account>>,
}

impl Accounts {
    pub fn from_accounts(accounts: impl IntoIterator<Item = Account>) -> Self {
        Accounts {
            by_id: accounts
                .into_iter()
                .map(|a| (a.id.clone(), Arc::new(a)))
                .collect(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, AccountsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AccountsError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, |name| std::env::var(name).ok()).map_err(|reason| {
            AccountsError::Invalid {
                path: shown,
                reason,
            }
        })
    }

    /// Parses an accounts file; `env` looks up `*_env` variables.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let file: AccountsFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if file.accounts.is_empty() {
            return Err("it lists no [[account]]".into());
        }
        let mut accounts = Vec::new();
        for c in file.accounts {
            if accounts.iter().any(|a: &Account| a.id == c.id) {
                return Err(format!("account {} is listed twice", c.id));
            }
            let secret = |value: Option<Secret>,
                          var: Option<String>,
                          what: &str|
             -> Result<Secret, String> {
                match (value, var) {
                    (Some(v), None) if !v.is_empty() => Ok(v),
                    (None, Some(var)) => env(&var)
                        .filter(|v| !v.is_empty())
                        .map(Secret::new)
                        .ok_or_else(|| {
                            format!(
                                "account {}: environment variable {var} ({what}) is not set",
                                c.id
                            )
                        }),
                    (Some(_), Some(_)) => Err(format!(
                        "account {}: give {what} or {what}_env, not both",
                        c.id
                    )),
                    _ => Err(format!(
                        "account {}: {what} (or {what}_env) is required",
                        c.id
                    )),
                }
            };
            let kod = secret(c.kod.clone(), c.kod_env.clone(), "kod")?;
            let sifre = secret(c.sifre.clone(), c.sifre_env.clone(), "sifre")?;
            if !(c.base_url.starts_with("http://") || c.base_url.starts_with("https://")) {
                return Err(format!(
                    "account {}: base_url must start with http:// or https://",
                    c.id
                ));
            }
            if c.max_concurrent == 0
                || c.max_retrying == 0
                || c.max_per_second.is_nan()
                || c.max_per_second <= 0.0
                || c.request_timeout_ms == 0
            {
                return Err(format!(
                    "account {}: max_concurrent, max_retrying, max_per_second and request_timeout_ms must be positive",
                    c.id
                ));
            }
            let codes = code_lists(&c)?;
            if c.visibility_window_ms > MAX_VISIBILITY_WINDOW_MS {
                return Err(format!(
                    "account {}: visibility_window_ms must be at most {MAX_VISIBILITY_WINDOW_MS} (7 days)",
                    c.id
                ));
            }
            let timeout = Duration::from_millis(c.request_timeout_ms);
            let provider: Box<dyn Provider> = match c.provider {
                ProviderKind::Znet => Box::new(
                    ZnetClient::new(&c.base_url, kod, sifre, timeout)
                        .map_err(|e| format!("account {}: {}", c.id, e.without_url()))?
                        .with_codes(codes),
                ),
            };
            let limits = Limits {
                max_concurrent: c.max_concurrent,
                max_per_second: c.max_per_second,
                breaker: BreakerConfig {
                    failures_to_open: c.breaker_failures,
                    open_for: Duration::from_millis(c.breaker_open_ms),
                },
            };
            let window = Duration::from_millis(c.visibility_window_ms);
            accounts.push(
                Account::new(c.id, provider, timeout, limits)
                    .with_visibility_window(window)
                    .with_max_retrying(c.max_retrying),
            );
        }
        Ok(Self::from_accounts(accounts))
    }

    /// Counts every account's calls and breaker state in `metrics` from now on.
    pub fn observe(&self, metrics: Arc<Metrics>) {
        for account in self.by_id.values() {
            let _ = account.metrics.set(Arc::clone(&metrics));
            let label = AccountLabel {
                account: account.id.clone(),
            };
            metrics.breaker_open.get_or_create(&label).set(0);
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Account>> {
        self.by_id.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[account]]
        id = "znet-main"
        provider = "znet"
        base_url = "http://127.0.0.1:1"
        kod = "K-123"
        sifre_env = "TEST_SIFRE"
        max_per_second = 5
    "#;

    #[test]
    fn parses_and_reads_secrets_from_the_environment() {
        let accounts =
            Accounts::parse(FILE, |v| (v == "TEST_SIFRE").then(|| "S-456".into())).unwrap();
        let a = accounts.get("znet-main").unwrap();
        assert_eq!(a.request_timeout, Duration::from_secs(10));
        assert!(!format!("{a:?}").contains("K-123"));
    }

    #[test]
    fn errors_name_the_problem_without_the_secret() {
        let err = Accounts::parse(FILE, |_| None).unwrap_err();
        assert!(
            err.contains("TEST_SIFRE") && err.contains("not set"),
            "{err}"
        );
        let err =
            Accounts::parse(&FILE.replace("http://", "ftp://"), |_| Some("x".into())).unwrap_err();
        assert!(err.contains("base_url") && !err.contains("K-123"), "{err}");
        let err =
            Accounts::parse(&FILE.replace("znet\"", "other\""), |_| Some("x".into())).unwrap_err();
        assert!(err.contains("unknown variant"), "{err}");
        assert!(Accounts::parse("", |_| None)
            .unwrap_err()
            .contains("no [[account]]"));
    }

    #[test]
    fn code_lists_have_documented_defaults_and_are_checked() {
        let accounts = Accounts::parse(FILE, |_| Some("x".into())).unwrap();
        let a = accounts.get("znet-main").unwrap();
        assert_eq!(a.visibility_window, Duration::from_secs(300));
        assert_eq!(a.max_retrying(), DEFAULT_MAX_RETRYING);
        let with = |extra: &str| Accounts::parse(&format!("{FILE}{extra}"), |_| Some("x".into()));
        let a = with("permanent_codes = [\"3\", 77]\nvisibility_window_ms = 2000\n").unwrap();
        assert_eq!(
            a.get("znet-main").unwrap().visibility_window,
            Duration::from_secs(2)
        );
        let err = with("not_found_codes = [\"4\", \"8\"]\n").unwrap_err();
        assert!(
            err.contains("code 8") && err.contains("not_found_codes"),
            "{err}"
        );
        let err = with("permanent_codes = [\"3\", \"5\"]\n").unwrap_err();
        assert!(err.contains("duplicate_codes"), "{err}");
        let err = with("permanent_codes = [\"E3\"]\n").unwrap_err();
        assert!(err.contains("digits"), "{err}");
        let err = with("visibility_window_ms = 999999999999\n").unwrap_err();
        assert!(err.contains("visibility_window_ms"), "{err}");
        let a = with("max_retrying = 2\n").unwrap();
        let a = a.get("znet-main").unwrap();
        let (first, second) = (a.try_retrying(), a.try_retrying());
        assert!(first.is_some() && second.is_some());
        assert!(
            a.try_retrying().is_none(),
            "a third order is parked instead"
        );
        drop(first);
        assert!(a.try_retrying().is_some(), "a place is free again");
        let err = with("max_retrying = 0\n").unwrap_err();
        assert!(err.contains("max_retrying"), "{err}");
        let err = with("not_found_code = [\"4\"]\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[tokio::test]
    async fn the_rate_cap_spaces_calls() {
        let accounts = Accounts::parse(FILE, |_| Some("x".into())).unwrap();
        let a = accounts.get("znet-main").unwrap();
        let start = Instant::now();
        for _ in 0..7 {
            a.permit()
                .await
                .record("check", "pending", Instant::now(), true);
        }
        // A burst of 5, then 2 more at 5 per second.
        assert!(
            start.elapsed() >= Duration::from_millis(350),
            "{:?}",
            start.elapsed()
        );
    }

    /// A provider that never answers usefully, counting the calls it gets.
    struct Down(Arc<std::sync::atomic::AtomicU32>);

    impl Provider for Down {
        fn validate_product(
            &self,
            _: &std::collections::BTreeMap<String, String>,
        ) -> Result<(), String> {
            Ok(())
        }
        fn place<'a>(&'a self, _: &'a Placement) -> futures::future::BoxFuture<'a, PlaceOutcome> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async {
                PlaceOutcome::Unknown {
                    detail: "HTTP 503".into(),
                }
            })
        }
        fn check<'a>(&'a self, _: &'a str) -> futures::future::BoxFuture<'a, CheckOutcome> {
            Box::pin(async {
                CheckOutcome::Transient {
                    detail: "HTTP 503".into(),
                }
            })
        }
        fn balance(&self) -> futures::future::BoxFuture<'_, crate::provider::BalanceOutcome> {
            unimplemented!("not called")
        }
    }

    #[tokio::test]
    async fn a_failing_provider_is_left_alone_while_the_breaker_is_open() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let down = Box::new(Down(Arc::clone(&calls)));
        let limits = Limits {
            max_concurrent: 4,
            max_per_second: 1000.0,
            breaker: BreakerConfig {
                failures_to_open: 3,
                open_for: Duration::from_millis(400),
            },
        };
        let account = Account::new("a".into(), down, Duration::from_secs(1), limits);
        let placement = Placement {
            reference: "1".into(),
            product: Default::default(),
            user_identifier: String::new(),
            user_extra: String::new(),
        };
        let start = Instant::now();
        let mut attempts = 0;
        while start.elapsed() < Duration::from_millis(1_000) {
            account.permit().await.place(&placement).await;
            attempts += 1;
        }
        let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
        // 3 calls open it; then one probe per 400 ms: at most 3 more within a second.
        assert!((4..=6).contains(&calls), "{calls} calls");
        assert_eq!(
            attempts, calls,
            "every attempt waited for the breaker, none was refused"
        );
    }

    #[tokio::test]
    async fn a_caller_in_a_hurry_is_told_how_long_an_open_breaker_stays_open() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let limits = Limits {
            max_concurrent: 1,
            max_per_second: 1000.0,
            breaker: BreakerConfig {
                failures_to_open: 1,
                open_for: Duration::from_secs(30),
            },
        };
        let account = Account::new(
            "a".into(),
            Box::new(Down(Arc::clone(&calls))),
            Duration::from_secs(1),
            limits,
        );
        let placement = Placement {
            reference: "1".into(),
            product: Default::default(),
            user_identifier: String::new(),
            user_extra: String::new(),
        };
        let patience = Duration::from_millis(200);
        let permit = account.permit_within(patience).await.expect("closed");
        // The cap is full while the permit is held: the wait is the caller's patience.
        let started = Instant::now();
        assert_eq!(account.permit_within(patience).await.err(), Some(patience));
        assert!(started.elapsed() >= patience);
        permit.place(&placement).await;
        let started = Instant::now();
        let wait = account.permit_within(patience).await.err().expect("open");
        assert!(wait > Duration::from_secs(29), "{wait:?}");
        assert!(
            started.elapsed() < patience,
            "told at once, not after waiting"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
