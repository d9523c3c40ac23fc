//! `accounts list` and `accounts show`: the `account_status` rows the stages wrote, one
//! [`Summary`] per account, merged with the accounts file's settings (caps, alert
//! threshold) when it is given. Only rows written within [`FRESH`] count for the breaker,
//! the processes and the answers; the balance is the last one any row knows, with its age.

use super::provider::table;
use super::AccountsCliError;
use crate::cli::CliError;
use crate::core::account_status::lasts;
use crate::db::account_status::{self as status_table, AccountStatus, AnswerCounts, BreakerStatus};
use crate::db::DbConfig;
use crate::provider::accounts::{AccountConfig, Accounts};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

/// A row written longer ago than this is stale: its process stopped or cannot reach the
/// database (the stages write every 10 s by default).
pub const FRESH: chrono::Duration = chrono::Duration::minutes(2);

/// The caps an account is called with (G6).
#[derive(Clone, Debug, PartialEq)]
pub struct Caps {
    pub max_concurrent: u64,
    pub max_per_second: f64,
    pub breaker_failures: u64,
    pub breaker_open_ms: u64,
}

impl Caps {
    fn text(&self) -> String {
        format!(
            "{} at once, {}/s, breaker after {} failures for {} s",
            self.max_concurrent,
            self.max_per_second,
            self.breaker_failures,
            self.breaker_open_ms / 1000
        )
    }
}

/// One account as `list` and `show` present it.
#[derive(Clone, Debug)]
pub struct Summary {
    pub account: String,
    /// Listed in the accounts file (when one was given).
    pub configured: bool,
    /// From the accounts file, else from the freshest row.
    pub caps: Option<Caps>,
    pub balance_alert_below: Option<f64>,
    /// The last balance any process reported, when, by whom, and its spending rate.
    pub balance: Option<(String, DateTime<Utc>, String)>,
    pub spend_per_hour: Option<f64>,
    /// `closed`, `open until ...`, `half_open`, or `-` without a fresh row.
    pub breaker: String,
    /// Processes with a fresh row, and how many rows are stale.
    pub processes: Vec<String>,
    pub stale: usize,
    /// Answers of the fresh rows, summed, over about `window_secs`.
    pub answers: AnswerCounts,
    pub window_secs: u32,
    pub last_failure: Option<(String, DateTime<Utc>)>,
    /// The account's rows, the newest first.
    pub rows: Vec<AccountStatus>,
}

/// One summary per account the file or the rows know, by id.
pub fn summaries(
    configs: &[AccountConfig],
    rows: &[AccountStatus],
    now: DateTime<Utc>,
) -> Vec<Summary> {
    let ids: BTreeSet<&str> = configs
        .iter()
        .map(|c| c.id.as_str())
        .chain(rows.iter().map(|r| r.account.as_str()))
        .collect();
    ids.into_iter()
        .map(|id| {
            let config = configs.iter().find(|c| c.id == id);
            let mine: Vec<AccountStatus> =
                rows.iter().filter(|r| r.account == id).cloned().collect();
            summary(id, config, mine, now)
        })
        .collect()
}

fn summary(
    id: &str,
    config: Option<&AccountConfig>,
    mut rows: Vec<AccountStatus>,
    now: DateTime<Utc>,
) -> Summary {
    rows.sort_by(|a, b| b.updated_at.cmp(&a.updated_at));
    let fresh: Vec<&AccountStatus> = rows.iter().filter(|r| r.is_fresh(now, FRESH)).collect();
    let caps = match (config, fresh.first()) {
        (Some(c), _) => Some(Caps {
            max_concurrent: c.max_concurrent as u64,
            max_per_second: c.max_per_second,
            breaker_failures: u64::from(c.breaker_failures),
            breaker_open_ms: c.breaker_open_ms,
        }),
        (None, Some(r)) => Some(Caps {
            max_concurrent: u64::from(r.max_concurrent),
            max_per_second: r.max_per_second,
            breaker_failures: u64::from(r.breaker_failures_to_open),
            breaker_open_ms: r.breaker_open_ms,
        }),
        (None, None) => None,
    };
    let newest_balance = rows
        .iter()
        .filter(|r| r.balance.is_some() && r.balance_at.is_some())
        .max_by_key(|r| r.balance_at);
    let mut answers = AnswerCounts::new();
    for row in &fresh {
        for (call, classes) in &row.answers {
            for (class, n) in classes {
                *answers
                    .entry(call.clone())
                    .or_default()
                    .entry(class.clone())
                    .or_default() += n;
            }
        }
    }
    Summary {
        account: id.to_owned(),
        configured: config.is_some(),
        caps,
        balance_alert_below: config.and_then(|c| c.balance_alert_below),
        balance: newest_balance
            .and_then(|r| Some((r.balance.clone()?, r.balance_at?, r.written_by.clone()))),
        spend_per_hour: newest_balance.and_then(|r| r.spend_per_hour),
        breaker: breaker(&fresh, now),
        processes: fresh.iter().map(|r| r.written_by.clone()).collect(),
        stale: rows.len() - fresh.len(),
        answers,
        window_secs: fresh.iter().map(|r| r.window_secs).max().unwrap_or(0),
        last_failure: rows
            .iter()
            .filter_map(|r| Some((r.last_failure.clone()?, r.last_failure_at?)))
            .max_by_key(|(_, at)| *at),
        rows,
    }
}

/// The breaker across the fresh rows: the worst state, and in how many processes.
fn breaker(fresh: &[&AccountStatus], now: DateTime<Utc>) -> String {
    if fresh.is_empty() {
        return "-".into();
    }
    let open: Vec<&&AccountStatus> = fresh
        .iter()
        .filter(|r| r.breaker != BreakerStatus::Closed)
        .collect();
    let Some(worst) = open.first() else {
        return "closed".into();
    };
    let state = match (worst.breaker, worst.breaker_open_until) {
        (BreakerStatus::Open, Some(until)) if until > now => {
            format!("open for {} more", ago(until - now))
        }
        (BreakerStatus::Open, _) => "open, probe due".into(),
        _ => "half_open".into(),
    };
    format!("{state} ({} of {} processes)", open.len(), fresh.len())
}

/// A duration as `12s`, `4m`, `3h` or `2d`.
pub fn ago(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `place accepted 12 refused 1; check pending 3`.
pub fn answers_text(answers: &AnswerCounts) -> String {
    if answers.is_empty() {
        return "-".into();
    }
    answers
        .iter()
        .map(|(call, classes)| {
            let classes: Vec<String> = classes.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!("{call} {}", classes.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `dispatch 2, poll 2`, and the stale rows.
fn processes_text(s: &Summary) -> String {
    let mut by_stage = std::collections::BTreeMap::<&str, usize>::new();
    for row in s
        .rows
        .iter()
        .filter(|r| s.processes.contains(&r.written_by))
    {
        *by_stage.entry(row.stage.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = by_stage.iter().map(|(st, n)| format!("{st} {n}")).collect();
    if parts.is_empty() {
        parts.push("none".into());
    }
    if s.stale > 0 {
        parts.push(format!("{} stale", s.stale));
    }
    parts.join(", ")
}

fn balance_text(s: &Summary, now: DateTime<Utc>) -> (String, String) {
    match &s.balance {
        Some((text, at, _)) => {
            let low = match (text.parse::<f64>(), s.balance_alert_below) {
                (Ok(v), Some(below)) if v < below => " (low)",
                _ => "",
            };
            (format!("{text}{low}"), format!("{} ago", ago(now - *at)))
        }
        None => ("-".into(), "-".into()),
    }
}

fn spend_text(s: &Summary) -> String {
    let Some(per_hour) = s.spend_per_hour else {
        return "-".into();
    };
    let left = s
        .balance
        .as_ref()
        .and_then(|(text, _, _)| text.parse::<f64>().ok())
        .and_then(|b| lasts(b, per_hour));
    match left {
        Some(left) => format!(
            "{per_hour:.2}/h, lasts {}",
            ago(chrono::Duration::from_std(left).unwrap_or(chrono::Duration::MAX))
        ),
        None => format!("{per_hour:.2}/h"),
    }
}

/// The `list` table.
pub fn list_table(summaries: &[Summary], now: DateTime<Utc>) -> String {
    let window = summaries.iter().map(|s| s.window_secs).max().unwrap_or(0);
    let rows: Vec<[String; 8]> = summaries
        .iter()
        .map(|s| {
            let (balance, at) = balance_text(s, now);
            [
                s.account.clone(),
                balance,
                at,
                spend_text(s),
                s.breaker.clone(),
                s.caps
                    .as_ref()
                    .map(Caps::text)
                    .unwrap_or_else(|| "-".into()),
                processes_text(s),
                answers_text(&s.answers),
            ]
        })
        .collect();
    let answers = format!(
        "ANSWERS (LAST {})",
        ago(chrono::Duration::seconds(window.into()))
    );
    table(
        &[
            "ACCOUNT",
            "BALANCE",
            "AS OF",
            "SPENDING",
            "BREAKER",
            "CAPS",
            "PROCESSES",
            &answers,
        ],
        &rows,
    )
}

/// `show`: one fact per line, then each process's row.
pub fn show_text(s: &Summary, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<16}{value}");
    };
    line("account", s.account.clone());
    line(
        "in the file",
        if s.configured {
            "yes"
        } else {
            "no (or no file given)"
        }
        .into(),
    );
    let (balance, at) = balance_text(s, now);
    let by = s
        .balance
        .as_ref()
        .map(|(_, _, by)| format!(", from {by}"))
        .unwrap_or_default();
    line(
        "balance",
        if s.balance.is_some() {
            format!("{balance} ({at}{by})")
        } else {
            balance
        },
    );
    line("spending", spend_text(s));
    if let Some(below) = s.balance_alert_below {
        line("alert below", below.to_string());
    }
    line("breaker", s.breaker.clone());
    line(
        "caps",
        s.caps
            .as_ref()
            .map(Caps::text)
            .unwrap_or_else(|| "-".into()),
    );
    line(
        "answers",
        format!(
            "{} (last {})",
            answers_text(&s.answers),
            ago(chrono::Duration::seconds(s.window_secs.into()))
        ),
    );
    line(
        "last failure",
        s.last_failure
            .as_ref()
            .map(|(text, at)| format!("{text} ({} ago)", ago(now - *at)))
            .unwrap_or_else(|| "-".into()),
    );
    line("processes", processes_text(s));
    for r in &s.rows {
        let fresh = if r.is_fresh(now, FRESH) {
            ""
        } else {
            " (stale)"
        };
        let _ = writeln!(
            out,
            "  {}{fresh}: updated {} ago, breaker {}, in flight {}, balance {}, answers {}",
            r.written_by,
            ago(now - r.updated_at),
            r.breaker.as_str(),
            r.in_flight,
            r.balance.as_deref().unwrap_or("-"),
            answers_text(&r.answers),
        );
    }
    out
}

/// The summaries as JSON, for scripts.
pub fn list_json(summaries: &[Summary]) -> String {
    let list: Vec<serde_json::Value> = summaries
        .iter()
        .map(|s| {
            serde_json::json!({
                "account": s.account,
                "configured": s.configured,
                "balance": s.balance.as_ref().map(|(text, _, _)| text),
                "balance_at": s.balance.as_ref().map(|(_, at, _)| at.to_rfc3339()),
                "spend_per_hour": s.spend_per_hour,
                "balance_alert_below": s.balance_alert_below,
                "breaker": s.breaker,
                "caps": s.caps.as_ref().map(|c| serde_json::json!({
                    "max_concurrent": c.max_concurrent, "max_per_second": c.max_per_second,
                    "breaker_failures": c.breaker_failures, "breaker_open_ms": c.breaker_open_ms,
                })),
                "processes": s.processes,
                "stale_rows": s.stale,
                "answers": s.answers,
                "window_secs": s.window_secs,
                "last_failure": s.last_failure.as_ref().map(|(text, _)| text),
            })
        })
        .collect();
    serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
}

async fn load(
    file: Option<&Path>,
    db: &DbConfig,
) -> Result<(Vec<AccountConfig>, Vec<AccountStatus>), CliError> {
    let configs = match file {
        Some(file) => Accounts::read_settings(file)?,
        None => Vec::new(),
    };
    let pool = db.connect().await?;
    let rows = status_table::read(&pool).await?;
    Ok((configs, rows))
}

pub(super) async fn list(
    file: Option<&Path>,
    json: bool,
    db: &DbConfig,
) -> Result<ExitCode, CliError> {
    let (configs, rows) = load(file, db).await?;
    let now = Utc::now();
    let all = summaries(&configs, &rows, now);
    if json {
        println!("{}", list_json(&all));
    } else {
        print!("{}", list_table(&all, now));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn show(
    name: &str,
    file: Option<&Path>,
    db: &DbConfig,
) -> Result<ExitCode, CliError> {
    let (configs, rows) = load(file, db).await?;
    let now = Utc::now();
    let Some(found) = summaries(&configs, &rows, now)
        .into_iter()
        .find(|s| s.account == name)
    else {
        return Err(match file {
            Some(file) => AccountsCliError::Unknown {
                name: name.to_owned(),
                file: file.display().to_string(),
                known: configs
                    .iter()
                    .map(|c| c.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            None => AccountsCliError::NotKnown(name.to_owned()),
        }
        .into());
    };
    print!("{}", show_text(&found, now));
    Ok(ExitCode::SUCCESS)
}
