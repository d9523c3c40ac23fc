//! The provider accounts watched (issue 17, item 4), against the real broker, database and
//! the znet simulator: the balance exported after placements and from the scheduled
//! balance check, the `account_status` rows the dispatch stage writes, and `orderflow
//! accounts list|show|check|products` run as the binary, with one sentence and a non-zero
//! exit for what is wrong. No credential in any row or output (G5).

mod common;

use common::pipeline::{
    order, Harness, ACCOUNT, DOWN_ACCOUNT, KOD, SIFRE, WRONG_CREDENTIALS_ACCOUNT,
};
use orderflow::db::account_status::{self, AccountStatus, BreakerStatus};
use orderflow::metrics::{Metrics, MetricsConfig};
use orderflow::shutdown;
use orderflow::testbed::sim::{SimConfig, DEFAULT_BALANCE_KURUS};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the `orderflow` binary; (exit code, stdout, stderr).
fn orderflow(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .env_remove("ORDERFLOW_DATABASE_URL")
        .env_remove("ORDERFLOW_PROVIDER_ACCOUNTS")
        .output()
        .expect("running orderflow");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(KOD) && !text.contains(SIFRE),
            "a credential printed:\n{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The one line of stderr, starting with `error: `.
fn one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_owned()
}

/// The simulator's balance after `spent_kurus`, as it answers it.
fn balance_after(spent_kurus: i64) -> String {
    let left = DEFAULT_BALANCE_KURUS - spent_kurus;
    format!("{}.{:02}", left / 100, left % 100)
}

/// Polls `get` until it returns `Some`, for at most `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut get: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = get().await {
            return found;
        }
        assert!(start.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn row_of(h: &Harness, account: &str) -> Vec<AccountStatus> {
    account_status::read_account(&h.db.pool, account)
        .await
        .expect("reading account_status")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dispatch_stage_exports_the_balance_and_writes_each_accounts_status() {
    common::logs::capture();
    let h = Harness::new("accounts-status", SimConfig::default(), 2_000).await;
    let metrics = Arc::new(Metrics::new());
    let addr = orderflow::metrics::serve(
        &MetricsConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
        },
        Arc::clone(&metrics),
    )
    .await
    .unwrap()
    .expect("a metrics address");
    let mut config = h.dispatch_config();
    config.account_status.interval_secs = 1;
    config.balance_check_interval_secs = 3600;
    let (trigger, signal) = shutdown::channel();
    let (accounts, kafka, pool) = (h.accounts(), h.kafka.clone(), h.db.pool.clone());
    let task = tokio::spawn(async move {
        orderflow::dispatch::run(config, accounts, kafka, pool, metrics, signal)
            .await
            .expect("the dispatch stage");
    });

    // The scheduled check reports the opening balance before any order.
    let scrape = |name: &'static str| {
        let url = format!("http://{addr}/metrics");
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            let prefix = format!("orderflow_account_balance{{account=\"{name}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse::<f64>().unwrap()))
        }
    };
    let opening = eventually(Duration::from_secs(30), "the opening balance", || {
        scrape(ACCOUNT)
    })
    .await;
    assert_eq!(opening, DEFAULT_BALANCE_KURUS as f64 / 100.0);

    // Each placement answer carries the balance left: 3 × 24.25 spent. The orders go one
    // after another: answers to placements in flight together may be applied out of order
    // (the gauge then shows an earlier answer's balance until the next placement or
    // scheduled check), which this test is not about.
    let orders: Vec<_> = (0..3).map(|_| order("25")).collect();
    for (n, o) in orders.iter().enumerate() {
        h.publish(o).await;
        assert_eq!(
            h.dispatched(n + 1, Duration::from_secs(60)).await.len(),
            n + 1
        );
    }
    let expected = balance_after(3 * 24_25);
    let after = eventually(
        Duration::from_secs(10),
        "the balance after placements",
        || async { scrape(ACCOUNT).await.filter(|b| *b < opening) },
    )
    .await;
    assert_eq!(
        format!("{after:.2}"),
        expected,
        "the gauge follows the placements"
    );
    assert_eq!(h.stats().balance_kurus, DEFAULT_BALANCE_KURUS - 3 * 24_25);
    // Accounts whose balance is unknown have no gauge at all, rather than a 0.
    assert_eq!(scrape(DOWN_ACCOUNT).await, None);

    // The status row: balance, breaker, caps and the answers of the last minutes.
    let row = eventually(
        Duration::from_secs(15),
        "the account's status row",
        || async {
            row_of(&h, ACCOUNT).await.into_iter().find(|r| {
                r.balance.as_deref() == Some(expected.as_str())
                    && r.answers.get("place").and_then(|c| c.get("accepted")) == Some(&3)
            })
        },
    )
    .await;
    assert_eq!(row.stage, "dispatch");
    assert!(
        row.written_by.starts_with("dispatch "),
        "{}",
        row.written_by
    );
    assert_eq!(row.breaker, BreakerStatus::Closed);
    assert_eq!((row.max_concurrent, row.max_per_second), (8, 200.0));
    assert!(row.balance_at.is_some());
    // The wrong password and the unreachable account: what their balance check answered.
    let wrong = eventually(
        Duration::from_secs(15),
        "the wrong account's row",
        || async {
            row_of(&h, WRONG_CREDENTIALS_ACCOUNT)
                .await
                .into_iter()
                .next()
        },
    )
    .await;
    assert_eq!(wrong.balance, None);
    assert_eq!(
        wrong
            .answers
            .get("balance")
            .and_then(|c| c.get("account_problem")),
        Some(&1),
        "{:?}",
        wrong.answers
    );
    assert!(wrong
        .last_failure
        .as_deref()
        .unwrap()
        .starts_with("balance: "));
    let down = row_of(&h, DOWN_ACCOUNT).await.remove(0);
    assert_eq!(
        down.answers.get("balance").and_then(|c| c.get("transient")),
        Some(&1)
    );
    let every_row = account_status::read(&h.db.pool).await.unwrap();
    assert_eq!(every_row.len(), 4, "one row per account of this process");
    let shown = format!("{every_row:?}");
    assert!(!shown.contains(KOD) && !shown.contains(SIFRE), "{shown}");

    // `accounts list` and `show` read the rows with the file's caps.
    let db = h.db.url.clone();
    let file = h.accounts_file.display().to_string();
    let (code, stdout, stderr) = orderflow(&[
        "accounts",
        "list",
        "--database-url",
        &db,
        "--provider-accounts",
        &file,
    ]);
    assert_eq!(code, 0, "{stderr}");
    println!("{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{ACCOUNT} ")))
        .expect("the account's line");
    for part in [
        expected.as_str(),
        "closed",
        "8 at once, 200/s",
        "dispatch 1",
        "place accepted 3",
        "balance balance 1",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    assert!(stdout.lines().next().unwrap().starts_with("ACCOUNT "));
    let (code, stdout, _) = orderflow(&[
        "accounts",
        "list",
        "--json",
        "--database-url",
        &db,
        "--provider-accounts",
        &file,
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let listed = json.as_array().unwrap();
    assert_eq!(listed.len(), 4);
    let mine = listed.iter().find(|a| a["account"] == ACCOUNT).unwrap();
    assert_eq!(mine["balance"], expected.as_str());
    assert_eq!(mine["answers"]["place"]["accepted"], 3);
    assert_eq!(mine["caps"]["max_concurrent"], 8);
    let (code, stdout, stderr) = orderflow(&[
        "accounts",
        "show",
        WRONG_CREDENTIALS_ACCOUNT,
        "--database-url",
        &db,
    ]);
    assert_eq!(code, 0, "{stderr}");
    println!("{stdout}");
    assert!(
        stdout.contains("last failure    balance: empty answer"),
        "{stdout}"
    );
    assert!(stdout.contains("breaker         closed"), "{stdout}");

    trigger.fire();
    task.await.unwrap();
    let logs = common::logs::text();
    assert!(
        !logs.contains(KOD) && !logs.contains(SIFRE),
        "a credential logged"
    );
    h.finish().await;
}

/// What the poll stage runs (`account_status::spawn_writer("poll", ...)`): its checks are
/// counted in its own row; a row not written for a day is deleted by the next write.
#[tokio::test(flavor = "multi_thread")]
async fn a_poll_process_row_counts_its_checks_and_day_old_rows_are_forgotten() {
    let h = Harness::with_kafka(common::kafka("accounts-rows"), SimConfig::default(), 2_000).await;
    sqlx::query(
        "INSERT INTO account_status (account, written_by, stage, breaker, breaker_failures,
            max_concurrent, max_per_second, breaker_failures_to_open, breaker_open_ms,
            in_flight, window_secs, updated_at)
         VALUES ('znet-gone', 'poll gone:1', 'poll', 'closed', 0, 1, 1, 5, 30000, 0, 0,
            now() - interval '25 hours')",
    )
    .execute(&h.db.pool)
    .await
    .unwrap();
    let accounts = h.accounts();
    let account = accounts.get(ACCOUNT).unwrap();
    for reference in ["100", "101"] {
        account.check(reference).await;
    }
    let (trigger, signal) = shutdown::channel();
    orderflow::account_status::spawn_writer(
        "poll",
        accounts.all(),
        h.db.pool.clone(),
        orderflow::account_status::AccountStatusConfig { interval_secs: 1 },
        signal,
    );
    // The first pass is the window's baseline; checks after it are counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    account.check("102").await;
    let row = eventually(Duration::from_secs(10), "the poll row", || async {
        row_of(&h, ACCOUNT)
            .await
            .into_iter()
            .find(|r| r.answers.get("check").and_then(|c| c.get("not_found")) == Some(&1))
    })
    .await;
    trigger.fire();
    assert_eq!(row.stage, "poll");
    assert!(row.written_by.starts_with("poll "));
    assert_eq!(row.balance, None, "poll processes see no balance");
    assert!(row.window_secs >= 1);
    let accounts_seen: Vec<String> = account_status::read(&h.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.account)
        .collect();
    assert!(
        !accounts_seen.contains(&"znet-gone".to_owned()),
        "{accounts_seen:?}"
    );
    assert_eq!(accounts_seen.len(), 4);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_check_asks_each_account_for_its_balance_and_fails_for_wrong_ones() {
    let h = Harness::with_kafka(common::kafka("accounts-check"), SimConfig::default(), 2_000).await;
    let file = h.accounts_file.display().to_string();

    let (code, stdout, stderr) =
        orderflow(&["accounts", "check", ACCOUNT, "--provider-accounts", &file]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    println!("{stdout}");
    let opening = balance_after(0);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(ACCOUNT) && l.contains(" ok ") && l.contains(&opening)),
        "{stdout}"
    );

    let (code, stdout, stderr) = orderflow(&["accounts", "check", "--provider-accounts", &file]);
    println!("{stdout}{stderr}");
    assert_eq!(code, 1);
    let line = one_error_line(&stderr);
    assert_eq!(
        line,
        format!(
            "error: 2 of 4 accounts failed the check: {DOWN_ACCOUNT} (no answer), \
             {WRONG_CREDENTIALS_ACCOUNT} (account problem)"
        )
    );
    let result = |id: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("{id} missing:\n{stdout}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(result(ACCOUNT), "ok");
    assert_eq!(result(WRONG_CREDENTIALS_ACCOUNT), "account_problem");
    assert_eq!(result(DOWN_ACCOUNT), "no_answer");
    assert_eq!(h.stats().purchases.len(), 0, "a check buys nothing");

    let (code, _, stderr) = orderflow(&["accounts", "check", "nope", "--provider-accounts", &file]);
    assert_eq!(code, 1);
    let line = one_error_line(&stderr);
    assert!(
        line.starts_with("error: no account nope is configured in "),
        "{line}"
    );
    assert!(
        line.contains(ACCOUNT),
        "names the accounts there are: {line}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_products_lists_the_simulators_catalog() {
    let h = Harness::with_kafka(
        common::kafka("accounts-products"),
        SimConfig::default(),
        2_000,
    )
    .await;
    let file = h.accounts_file.display().to_string();

    let (code, stdout, stderr) = orderflow(&[
        "accounts",
        "products",
        ACCOUNT,
        "--provider-accounts",
        &file,
    ]);
    assert_eq!(code, 0, "{stderr}");
    println!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("PRODUCT "), "{stdout}");
    assert_eq!(lines.len(), 6, "a header and the simulator's five products");
    assert!(
        lines.iter().any(|l| l.starts_with("kupur=25 oyun=412")
            && l.contains("24.25")
            && l.contains("Steam Cüzdan Kodu 25 TL")),
        "{stdout}"
    );

    let (code, stdout, _) = orderflow(&[
        "accounts",
        "products",
        ACCOUNT,
        "--json",
        "--provider-accounts",
        &file,
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let products = json.as_array().unwrap();
    assert_eq!(products.len(), 5);
    assert_eq!(products[0]["product"]["oyun"], "412");
    assert_eq!(products[0]["product"]["kupur"], "25");
    assert_eq!(products[0]["price"], "24.25");

    let (code, stdout, stderr) = orderflow(&[
        "accounts",
        "products",
        WRONG_CREDENTIALS_ACCOUNT,
        "--provider-accounts",
        &file,
    ]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    let line = one_error_line(&stderr);
    assert_eq!(
        line,
        format!(
            "error: account {WRONG_CREDENTIALS_ACCOUNT}: the product list could not be fetched \
             (account problem: catalog refused: Yetkisiz erişim)"
        )
    );
    h.finish().await;
}

#[tokio::test]
async fn bad_accounts_arguments_are_one_sentence() {
    // An account no file lists and no stage wrote about.
    let db = common::TestDb::new_migrated().await;
    let (code, _, stderr) = orderflow(&["accounts", "show", "nope", "--database-url", &db.url]);
    db.drop_now().await;
    assert_eq!(code, 1);
    assert!(
        one_error_line(&stderr).starts_with("error: no account nope is known"),
        "{stderr}"
    );
    // A file that is not there.
    let (code, _, stderr) = orderflow(&[
        "accounts",
        "list",
        "--provider-accounts",
        "/nonexistent/accounts.toml",
    ]);
    assert_eq!(code, 1);
    assert!(
        one_error_line(&stderr).contains("provider accounts file /nonexistent/accounts.toml"),
        "{stderr}"
    );
    // No accounts file for a command that calls the provider.
    let (code, _, stderr) = orderflow(&["accounts", "check"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--provider-accounts"), "{stderr}");
    // An unreachable database.
    let (code, _, stderr) = orderflow(&[
        "accounts",
        "list",
        "--database-url",
        "postgres://orderflow:s3cret@127.0.0.1:1/orderflow",
    ]);
    assert_eq!(code, 1);
    let line = one_error_line(&stderr);
    assert!(
        line.contains("cannot connect to PostgreSQL") && !line.contains("s3cret"),
        "{line}"
    );
}
