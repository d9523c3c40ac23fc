//! An `[[account]]` table checked before anything is built from it: credentials found,
//! a base URL, positive caps, code lists of digits with one meaning per code (G9), and a
//! visibility window no deadline outlasts. Pure except for the `env` look-up it is given.

use super::config::{AccountConfig, Code, MAX_VISIBILITY_WINDOW_MS};
use super::{Endpoint, Limits};
use crate::core::breaker::BreakerConfig;
use crate::core::caps::MAX_CALL_SLOTS;
use crate::provider::codes::Codes;
use crate::secret::Secret;
use std::time::Duration;

/// What one checked `[[account]]` table builds.
pub(super) struct Checked {
    pub id: String,
    /// What the provider's client is built from.
    pub endpoint: Endpoint,
    pub limits: Limits,
    pub visibility_window: Duration,
    pub max_retrying: usize,
    pub balance_alert_below: Option<f64>,
}

/// Checks one table, in the order its errors are reported; `env` looks up `*_env`
/// variables.
pub(super) fn check(
    c: AccountConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Checked, String> {
    let kod = secret(&c.id, c.kod.clone(), c.kod_env.clone(), "kod", env)?;
    let sifre = secret(&c.id, c.sifre.clone(), c.sifre_env.clone(), "sifre", env)?;
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
    if c.max_concurrent > MAX_CALL_SLOTS as usize {
        return Err(format!(
            "account {}: max_concurrent is {}, more than the {MAX_CALL_SLOTS} calls at once an account can be given (each is a slot the processes share)",
            c.id, c.max_concurrent
        ));
    }
    let codes = code_lists(&c)?;
    if c.visibility_window_ms > MAX_VISIBILITY_WINDOW_MS {
        return Err(format!(
            "account {}: visibility_window_ms must be at most {MAX_VISIBILITY_WINDOW_MS} (7 days)",
            c.id
        ));
    }
    if c.balance_alert_below
        .is_some_and(|b| !b.is_finite() || b < 0.0)
    {
        return Err(format!(
            "account {}: balance_alert_below must be a number of at least 0",
            c.id
        ));
    }
    let limits = Limits {
        max_concurrent: c.max_concurrent,
        max_per_second: c.max_per_second,
        breaker: BreakerConfig {
            failures_to_open: c.breaker_failures,
            open_for: Duration::from_millis(c.breaker_open_ms),
        },
    };
    Ok(Checked {
        endpoint: Endpoint {
            kind: c.provider,
            base_url: c.base_url,
            kod,
            sifre,
            timeout: Duration::from_millis(c.request_timeout_ms),
            codes,
        },
        limits,
        visibility_window: Duration::from_millis(c.visibility_window_ms),
        max_retrying: c.max_retrying,
        balance_alert_below: c.balance_alert_below,
        id: c.id,
    })
}

/// A credential given in the file (`value`) or in the environment variable `var` names,
/// one of the two and not empty.
fn secret(
    id: &str,
    value: Option<Secret>,
    var: Option<String>,
    what: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Secret, String> {
    match (value, var) {
        (Some(v), None) if !v.is_empty() => Ok(v),
        (None, Some(var)) => env(&var)
            .filter(|v| !v.is_empty())
            .map(Secret::new)
            .ok_or_else(|| format!("account {id}: environment variable {var} ({what}) is not set")),
        (Some(_), Some(_)) => Err(format!("account {id}: give {what} or {what}_env, not both")),
        _ => Err(format!("account {id}: {what} (or {what}_env) is required")),
    }
}

/// The account's code lists, checked: digits only, and one meaning per code.
fn code_lists(c: &AccountConfig) -> Result<Codes, String> {
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
    let codes = Codes {
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
