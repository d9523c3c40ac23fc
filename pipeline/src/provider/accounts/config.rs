//! The accounts file's format: one `[[account]]` table each, its fields and their
//! defaults (the example in the module above shows them). Checking what the fields hold is
//! [`super::validate`]'s.

use crate::provider::codes::{
    DEFAULT_ACCOUNT_PROBLEM_CODES, DEFAULT_DUPLICATE_CODES, DEFAULT_NOT_FOUND_CODES,
    DEFAULT_PERMANENT_CODES,
};
use crate::secret::Secret;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountsFile {
    #[serde(rename = "account", default)]
    pub(super) accounts: Vec<AccountConfig>,
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
    /// Calls in flight at once to this account, all dispatch and poll processes together.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Calls started in any one second to this account, all dispatch and poll processes
    /// together.
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
    /// A balance below which `OrderflowBalanceLow` fires, in the provider's currency, e.g.
    /// `5000`; none by default (the alert on the spending rate still fires).
    #[serde(default)]
    pub balance_alert_below: Option<f64>,
}

/// One provider error code in the accounts file: `"3"` or `3`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Code {
    Text(String),
    Number(u64),
}

impl Code {
    pub(super) fn text(&self) -> String {
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
    codes(DEFAULT_PERMANENT_CODES)
}
fn default_duplicate_codes() -> Vec<Code> {
    codes(DEFAULT_DUPLICATE_CODES)
}
fn default_account_problem_codes() -> Vec<Code> {
    codes(DEFAULT_ACCOUNT_PROBLEM_CODES)
}
fn default_not_found_codes() -> Vec<Code> {
    codes(DEFAULT_NOT_FOUND_CODES)
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
pub(super) const MAX_VISIBILITY_WINDOW_MS: u64 = 7 * 24 * 3_600_000;
