//! `orderflow order list`: the orders [`crate::db::find::list`] finds, as an aligned table
//! that fits 100 columns, or with `--json` as one JSON object per line (JSON Lines: each
//! line parses on its own, so `jq`, `grep` and `head` work on it). Never a PIN, sealed or
//! not: the query does not read it.

use super::parse_age;
use crate::cli::CliError;
use crate::core::stuck::Allowance;
use crate::db::find::{self, Filter, OrderSummary, StuckScan};
use crate::db::DbConfig;
use chrono::{DateTime, Utc};
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

/// The lifecycle states an order can be listed by.
const STATES: [&str; 6] = [
    "received",
    "dispatching",
    "dispatched",
    "processing",
    "completed",
    "failed",
];

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only orders in this state.
    #[arg(long, value_parser = STATES)]
    state: Option<String>,
    /// Only orders of this tenant (shop).
    #[arg(long)]
    tenant: Option<String>,
    /// Only orders of this provider account.
    #[arg(long)]
    account: Option<String>,
    /// Only orders received longer ago than this, e.g. 10m, 2h, 3d.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    older_than: Option<Duration>,
    /// Only stuck orders: their next step (a placement attempt, the first or next status
    /// check) is overdue by more than --stuck-grace (docs/operations.md, "Finding orders").
    #[arg(long)]
    stuck: bool,
    /// Most orders printed.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    limit: i64,
    /// Newest first (default: oldest first, so the order waiting longest leads).
    #[arg(long)]
    newest_first: bool,
    /// One JSON object per line (JSON Lines), with every field, instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    rule: StuckArgs,
    #[command(flatten)]
    db: DbConfig,
}

/// What the stuck rule needs to know of the stages' settings: the same variables, so a
/// command run with the deployment's environment judges by the deployment's schedule.
/// Also flattened into `orderflow status-page`.
#[derive(clap::Args)]
pub struct StuckArgs {
    /// How far past its due time an order's next step may be before the order is stuck.
    #[arg(long = "stuck-grace", env = "ORDERFLOW_STUCK_GRACE", default_value = "2m", value_parser = parse_age)]
    grace: Duration,
    /// The poll stage's delay from placement to the first status check.
    #[arg(long = "first-check", env = "ORDERFLOW_FIRST_CHECK", default_value = "60s", value_parser = parse_age)]
    first_check: Duration,
    /// The dispatch stage's longest wait between two placement attempts (its parking
    /// maximum), in milliseconds.
    #[arg(
        long = "dispatch-park-max-ms",
        env = "ORDERFLOW_DISPATCH_PARK_MAX_MS",
        default_value_t = 600_000
    )]
    park_max_ms: u64,
    /// How far back placed orders whose first check never started are looked for (as the
    /// reconciler does).
    #[arg(long = "reconcile-lookback", env = "ORDERFLOW_RECONCILE_LOOKBACK", default_value = "48h", value_parser = parse_age)]
    lookback: Duration,
}

impl StuckArgs {
    pub fn scan(&self) -> StuckScan {
        StuckScan {
            allowance: Allowance {
                first_check: self.first_check,
                placement_wait: Duration::from_millis(self.park_max_ms),
                grace: self.grace,
            },
            lookback: self.lookback,
        }
    }
}

pub async fn run(args: ListArgs) -> Result<ExitCode, CliError> {
    let filter = Filter {
        state: args.state,
        tenant: args.tenant,
        account: args.account,
        older_than: args.older_than,
        stuck: args.stuck,
        limit: args.limit,
        newest_first: args.newest_first,
    };
    let pool = args.db.connect().await?;
    let found = find::list(&pool, &filter, &args.rule.scan()).await?;
    let text = if args.json {
        found.iter().map(|o| json(o) + "\n").collect()
    } else {
        table(&found)
    };
    super::emit(&text)?;
    if found.is_empty() {
        eprintln!("no order matches");
    } else if found.len() as i64 == args.limit {
        eprintln!("{} orders shown, there may be more (--limit)", found.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// The widest a table line gets.
pub const WIDTH: usize = 100;

/// `text` cut to `width` characters, the last one `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An age in its largest whole unit: `45s`, `12m`, `5h`, `3d`.
pub fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The last column: why the order needs a look, if it does.
fn note(o: &OrderSummary) -> String {
    if let Some(stuck) = &o.stuck {
        let overdue = chrono::Duration::from_std(stuck.overdue).unwrap_or_default();
        return format!("stuck {}", age(overdue));
    }
    if let Some(reason) = &o.failure_reason {
        return reason.clone();
    }
    match o.failing_since {
        Some(since) => format!("held {}", age(o.now - since)),
        None => String::new(),
    }
}

/// The orders as an aligned table with a header, every line at most [`WIDTH`] columns.
pub fn table(orders: &[OrderSummary]) -> String {
    // ORDER, STATE, AGE, TENANT, ACCOUNT, REFERENCE; NOTE takes what is left.
    const WIDTHS: [usize; 6] = [36, 10, 4, 8, 11, 9];
    let note_width = WIDTH - WIDTHS.iter().map(|w| w + 2).sum::<usize>();
    let line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(WIDTHS) {
            text.push_str(&format!("{:<width$}  ", fit(cell, width)));
        }
        text.push_str(&fit(cells[6], note_width));
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line([
        "ORDER",
        "STATE",
        "AGE",
        "TENANT",
        "ACCOUNT",
        "REFERENCE",
        "NOTE",
    ]);
    for o in orders {
        out.push_str(&line([
            &o.order_id.to_string(),
            &o.state,
            &age(o.now - o.received_at),
            o.tenant_id.as_deref().unwrap_or("-"),
            &o.provider_account,
            &o.provider_reference,
            &note(o),
        ]));
    }
    out
}

/// One line of `--json`: fields in the table's order first, times in RFC 3339.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    order_id: Uuid,
    state: &'a str,
    age_seconds: i64,
    tenant_id: Option<&'a str>,
    provider_account: &'a str,
    provider_reference: &'a str,
    failure_reason: Option<&'a str>,
    stuck: Option<JsonStuck>,
    attempts: i32,
    received_at: String,
    updated_at: String,
    next_check_at: Option<String>,
    deadline: String,
    last_error: Option<&'a str>,
    failing_since: Option<String>,
}

#[derive(serde::Serialize)]
struct JsonStuck {
    step: &'static str,
    due_at: String,
    overdue_seconds: u64,
}

/// One order as one line of JSON: the table's fields and the rest.
pub fn json(o: &OrderSummary) -> String {
    let time = |at: DateTime<Utc>| at.to_rfc3339();
    let line = JsonLine {
        order_id: o.order_id,
        state: &o.state,
        age_seconds: (o.now - o.received_at).num_seconds(),
        tenant_id: o.tenant_id.as_deref(),
        provider_account: &o.provider_account,
        provider_reference: &o.provider_reference,
        failure_reason: o.failure_reason.as_deref(),
        stuck: o.stuck.map(|s| JsonStuck {
            step: s.step.as_str(),
            due_at: time(s.due),
            overdue_seconds: s.overdue.as_secs(),
        }),
        attempts: o.attempts,
        received_at: time(o.received_at),
        updated_at: time(o.updated_at),
        next_check_at: o.next_check_at.map(time),
        deadline: time(o.deadline),
        last_error: o.last_error.as_deref(),
        failing_since: o.failing_since.map(time),
    };
    serde_json::to_string(&line).expect("a JSON line always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stuck::{Progress, Step, Stuck};

    fn summary(now: DateTime<Utc>) -> OrderSummary {
        OrderSummary {
            order_id: Uuid::new_v4(),
            tenant_id: Some("a-tenant-with-a-long-name".into()),
            provider_account: "znet-main-account-long".into(),
            provider_reference: "100000042".into(),
            state: "processing".into(),
            failure_reason: None,
            attempts: 3,
            received_at: now - chrono::Duration::minutes(75),
            updated_at: now - chrono::Duration::minutes(5),
            next_check_at: Some(now - chrono::Duration::minutes(4)),
            deadline: now + chrono::Duration::hours(20),
            last_error: Some("account znet-main has a problem: 8|Bağlantı Hatası".into()),
            failing_since: Some(now - chrono::Duration::minutes(30)),
            progress: Some(Progress::Waiting {
                next_check_at: now - chrono::Duration::minutes(4),
            }),
            stuck: Some(Stuck {
                step: Step::NextCheck,
                due: now - chrono::Duration::minutes(4),
                overdue: Duration::from_secs(240),
            }),
            now,
        }
    }

    #[test]
    fn the_table_fits_a_terminal_and_says_why_an_order_needs_a_look() {
        let now = Utc::now();
        let stuck = summary(now);
        let failing = OrderSummary {
            stuck: None,
            ..summary(now)
        };
        let failed = OrderSummary {
            state: "failed".into(),
            failure_reason: Some("rejected".into()),
            stuck: None,
            failing_since: None,
            ..summary(now)
        };
        let text = table(&[stuck.clone(), failing, failed]);
        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "{} wide: {line}", line.len());
        }
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ORDER") && lines[0].ends_with("NOTE"));
        assert!(lines[1].starts_with(&stuck.order_id.to_string()));
        assert!(lines[1].contains("processing  1h    a-tenan…  znet-main-…  100000042  stuck 4m"));
        assert!(lines[2].ends_with("held 30m"), "{}", lines[2]);
        assert!(lines[3].ends_with("rejected"), "{}", lines[3]);
    }

    #[test]
    fn a_json_line_has_every_field_and_no_pin() {
        let now = Utc::now();
        let o = summary(now);
        let line = json(&o);
        assert!(!line.contains('\n'));
        assert!(line.starts_with(&format!("{{\"order_id\":\"{}\",\"state\"", o.order_id)));
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["order_id"], o.order_id.to_string());
        assert_eq!(back["age_seconds"], 75 * 60);
        assert_eq!(back["stuck"]["step"], "next_check");
        assert_eq!(back["stuck"]["overdue_seconds"], 240);
        assert!(back.get("pin").is_none() && back.get("pin_encrypted").is_none());
        let fine: serde_json::Value =
            serde_json::from_str(&json(&OrderSummary { stuck: None, ..o })).unwrap();
        assert!(fine["stuck"].is_null());
    }

    #[test]
    fn ages_use_their_largest_unit() {
        let s = chrono::Duration::seconds;
        assert_eq!(age(s(45)), "45s");
        assert_eq!(age(s(12 * 60 + 59)), "12m");
        assert_eq!(age(s(5 * 3600)), "5h");
        assert_eq!(age(s(3 * 86_400 + 5)), "3d");
        assert_eq!(age(s(-3)), "0s");
    }
}
