//! `accounts list` and `accounts show`: the `account_status` rows the stages wrote, one
//! [`Summary`] per account, merged with the accounts file's settings (caps, alert
//! threshold) when it is given. Only rows written within [`FRESH`] count for the breaker,
//! the processes and the answers; the balance is the last one any row knows, with its age.

use super::render::{ago, list_json, list_table, show_text};
use super::AccountsCliError;
use crate::cli::CliError;
use crate::db::account_status::{self as status_table, AccountStatus, AnswerCounts, BreakerStatus};
use crate::db::DbConfig;
use crate::provider::accounts::{AccountConfig, Accounts};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
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

/// One account as `list` and `show` present it.
#[derive(Clone, Debug)]
pub struct Summary {
    pub account: String,
    /// Listed in the accounts file; `None` when no file was given.
    pub configured: Option<bool>,
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
    configs: Option<&[AccountConfig]>,
    rows: &[AccountStatus],
    now: DateTime<Utc>,
) -> Vec<Summary> {
    let file_given = configs.is_some();
    let configs = configs.unwrap_or_default();
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
            let mut found = summary(id, config, mine, now);
            found.configured = file_given.then_some(config.is_some());
            found
        })
        .collect()
}

fn summary(
    id: &str,
    config: Option<&AccountConfig>,
    mut rows: Vec<AccountStatus>,
    now: DateTime<Utc>,
) -> Summary {
    rows.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
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
        configured: None,
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

async fn load(
    file: Option<&Path>,
    db: &DbConfig,
) -> Result<(Option<Vec<AccountConfig>>, Vec<AccountStatus>), CliError> {
    let configs = match file {
        Some(file) => Some(Accounts::read_settings(file)?),
        None => None,
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
    let all = summaries(configs.as_deref(), &rows, now);
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
    let Some(found) = summaries(configs.as_deref(), &rows, now)
        .into_iter()
        .find(|s| s.account == name)
    else {
        return Err(match file {
            Some(file) => AccountsCliError::Unknown {
                name: name.to_owned(),
                file: file.display().to_string(),
                known: configs
                    .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::accounts::render::answers_text;

    fn row(account: &str, by: &str, age_secs: i64, now: DateTime<Utc>) -> AccountStatus {
        AccountStatus {
            account: account.into(),
            written_by: by.into(),
            stage: by.split(' ').next().unwrap().into(),
            balance: None,
            balance_at: None,
            spend_per_hour: None,
            breaker: BreakerStatus::Closed,
            breaker_failures: 0,
            breaker_open_until: None,
            max_concurrent: 4,
            max_per_second: 5.0,
            breaker_failures_to_open: 5,
            breaker_open_ms: 30_000,
            in_flight: 0,
            answers: AnswerCounts::new(),
            window_secs: 300,
            last_failure: None,
            last_failure_at: None,
            updated_at: now - chrono::Duration::seconds(age_secs),
        }
    }

    #[test]
    fn fresh_rows_are_summed_and_the_newest_balance_wins() {
        let now = Utc::now();
        let mut a = row("znet-main", "dispatch h:1", 5, now);
        a.balance = Some("900.00".into());
        a.balance_at = Some(now - chrono::Duration::seconds(20));
        a.answers = [("place".into(), [("accepted".into(), 3)].into())].into();
        let mut b = row("znet-main", "poll h:2", 3, now);
        b.answers = [("check".into(), [("pending".into(), 2)].into())].into();
        // A stale row: its balance is older, its answers and breaker no longer count.
        let mut old = row("znet-main", "dispatch h:0", 600, now);
        old.balance = Some("1000.00".into());
        old.balance_at = Some(now - chrono::Duration::seconds(700));
        old.breaker = BreakerStatus::Open;
        old.answers = [("place".into(), [("accepted".into(), 50)].into())].into();
        let all = summaries(None, &[a, b, old], now);
        assert_eq!(all.len(), 1);
        let s = &all[0];
        assert_eq!(s.balance.as_ref().unwrap().0, "900.00");
        assert_eq!(s.breaker, "closed");
        assert_eq!(
            answers_text(&s.answers),
            "check pending 2; place accepted 3"
        );
        assert_eq!(s.processes.len(), 2);
        assert_eq!(s.stale, 1);
        assert_eq!(s.configured, None);
        assert_eq!(
            s.caps.as_ref().unwrap().max_concurrent,
            4,
            "caps from the rows"
        );
    }

    #[test]
    fn an_open_breaker_in_any_process_shows() {
        let now = Utc::now();
        let mut open = row("znet-main", "dispatch h:1", 1, now);
        open.breaker = BreakerStatus::Open;
        open.breaker_open_until = Some(now + chrono::Duration::seconds(25));
        let closed = row("znet-main", "dispatch h:2", 1, now);
        let s = &summaries(None, &[open, closed], now)[0];
        assert_eq!(s.breaker, "open for 25s more (1 of 2 processes)");
        let s = &summaries(None, &[row("x", "poll h:3", 1000, now)], now)[0];
        assert_eq!(s.breaker, "-", "no fresh row: nothing known");
    }

    #[test]
    fn the_file_adds_accounts_no_stage_wrote_about() {
        let now = Utc::now();
        let file = "[[account]]\nid = \"znet-new\"\nprovider = \"znet\"\n\
                    base_url = \"http://127.0.0.1:1\"\nkod_env = \"UNSET\"\nsifre_env = \"UNSET\"\n\
                    max_concurrent = 2\nbalance_alert_below = 50\n";
        let path = std::env::temp_dir().join(format!("accounts-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, file).unwrap();
        let configs = Accounts::read_settings(&path).expect("no credential needed");
        std::fs::remove_file(&path).ok();
        let all = summaries(
            Some(&configs),
            &[row("znet-old", "dispatch h:1", 1, now)],
            now,
        );
        let ids: Vec<&str> = all.iter().map(|s| s.account.as_str()).collect();
        assert_eq!(ids, ["znet-new", "znet-old"]);
        assert_eq!(all[0].configured, Some(true));
        assert_eq!(
            all[0].caps.as_ref().unwrap().max_concurrent,
            2,
            "caps from the file"
        );
        assert_eq!(all[0].balance_alert_below, Some(50.0));
        assert_eq!(all[0].processes.len(), 0);
        assert_eq!(all[1].configured, Some(false));
    }
}
