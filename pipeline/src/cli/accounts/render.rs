//! How `accounts list` and `accounts show` print [`Summary`]s: a table, one fact per line,
//! or JSON; and the plain table every `accounts` command prints.

use super::status::{Caps, Summary, FRESH};
use crate::core::account_status::lasts;
use crate::db::account_status::AnswerCounts;
use chrono::{DateTime, Utc};
use std::fmt::Write;

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
    match s.configured {
        Some(true) => line("in the file", "yes".into()),
        Some(false) => line("in the file", "no: only the stages' rows name it".into()),
        None => {}
    }
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
                "in_file": s.configured,
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

/// Left-aligned columns two spaces apart, the header first; the last column is not padded.
pub(super) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..N).map(width).collect();
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
