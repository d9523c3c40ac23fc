//! Provider accounts: which provider, where, with which credentials and how politely.
//!
//! Read from a TOML file (`ORDERFLOW_PROVIDER_ACCOUNTS`), one `[[account]]` table each.
//! Every provider call goes through a [`CallPermit`], which holds the account's concurrency
//! cap and calls-per-second cap and waits while its circuit breaker is open (G6). The caps
//! are the account's, whatever the number of processes: a stage shares them with every
//! other dispatch and poll process through PostgreSQL (`crate::account_caps`), a process
//! alone holds them whole ([`caps`]). Credentials are [`Secret`]s: printing an account never
//! shows them.
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
//! balance_alert_below = 5000  # OrderflowBalanceLow fires below this balance (none by default)
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
//! `orders.dispatch-retry` instead (by the dispatch stage).
//!
//! The file's format is [`config`]'s, its checks [`validate`]'s, an account's call permits
//! [`account`]'s, the slots of its caps this process holds [`caps`]', what its calls leave
//! for its status (answers, balance, last failure) [`status`]'s. Which client speaks an
//! account's provider is not decided here: whoever loads the file passes `connect` (for
//! znet, `znet::connect`), so this module depends on no provider.

mod account;
pub mod caps;
pub mod config;
mod status;
mod validate;

pub use account::{Account, CallPermit, Limits};
pub use config::{
    AccountConfig, Code, ProviderKind, DEFAULT_MAX_RETRYING, DEFAULT_VISIBILITY_WINDOW_MS,
};
pub use status::{BreakerView, Reading, Snapshot};

use crate::metrics::{AccountLabel, Metrics};
use crate::provider::codes::Codes;
use crate::provider::Provider;
use crate::secret::Secret;
use config::AccountsFile;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What a provider's client is built from: one checked `[[account]]` table.
#[derive(Debug)]
pub struct Endpoint {
    /// Which protocol the account speaks.
    pub kind: ProviderKind,
    /// The provider's base URL, starting with `http://` or `https://`.
    pub base_url: String,
    pub kod: Secret,
    pub sifre: Secret,
    /// How long one call may take.
    pub timeout: Duration,
    /// What the account's error codes mean.
    pub codes: Codes,
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

    /// Reads and parses the accounts file at `path`; `connect` as for [`Accounts::parse`].
    pub fn load(
        path: &Path,
        connect: impl Fn(Endpoint) -> Result<Box<dyn Provider>, String>,
    ) -> Result<Self, AccountsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AccountsError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, |name| std::env::var(name).ok(), connect).map_err(|reason| {
            AccountsError::Invalid {
                path: shown,
                reason,
            }
        })
    }

    /// The accounts file's tables as written, credentials not looked up: for commands that
    /// only show the settings (`orderflow accounts list`). Ids are checked to be unique.
    pub fn read_settings(path: &Path) -> Result<Vec<AccountConfig>, AccountsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AccountsError::Read {
            path: shown.clone(),
            source,
        })?;
        let invalid = |reason: String| AccountsError::Invalid {
            path: shown.clone(),
            reason,
        };
        let file: AccountsFile =
            toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?;
        let mut accounts = file.accounts;
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(twice) = accounts.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(invalid(format!("account {} is listed twice", twice[0].id)));
        }
        Ok(accounts)
    }

    /// Parses an accounts file; `env` looks up `*_env` variables, and `connect` builds the
    /// client of each account's provider (for znet, `znet::connect`).
    pub fn parse(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        connect: impl Fn(Endpoint) -> Result<Box<dyn Provider>, String>,
    ) -> Result<Self, String> {
        let file: AccountsFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if file.accounts.is_empty() {
            return Err("it lists no [[account]]".into());
        }
        let mut accounts = Vec::new();
        for c in file.accounts {
            if accounts.iter().any(|a: &Account| a.id == c.id) {
                return Err(format!("account {} is listed twice", c.id));
            }
            let checked = validate::check(c, &env)?;
            let timeout = checked.endpoint.timeout;
            let provider =
                connect(checked.endpoint).map_err(|e| format!("account {}: {e}", checked.id))?;
            accounts.push(
                Account::new(checked.id, provider, timeout, checked.limits)
                    .with_visibility_window(checked.visibility_window)
                    .with_max_retrying(checked.max_retrying)
                    .with_balance_alert_below(checked.balance_alert_below),
            );
        }
        Ok(Self::from_accounts(accounts))
    }

    /// Counts every account's calls, breaker state and balance in `metrics` from now on.
    pub fn observe(&self, metrics: Arc<Metrics>) {
        for account in self.by_id.values() {
            let _ = account.metrics.set(Arc::clone(&metrics));
            let label = AccountLabel {
                account: account.id.clone(),
            };
            metrics.provider_breaker_open.get_or_create(&label).set(0);
            if let Some(below) = account.balance_alert_below {
                metrics
                    .account_balance_alert_below
                    .get_or_create(&label)
                    .set(below);
            }
            // The balance gauge appears with the first balance the provider reports: a 0
            // before that would read as an empty account.
            if let Some(reading) = account.status.last_balance() {
                account.show_balance(reading.value);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Account>> {
        self.by_id.get(id)
    }

    /// Every account, by id.
    pub fn all(&self) -> Vec<Arc<Account>> {
        let mut all: Vec<_> = self.by_id.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

#[cfg(test)]
mod tests;
