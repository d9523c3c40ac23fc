//! `orderflow status-page` against a running pipeline (dispatch, poll and sink with the
//! simulator, on the real broker and database): the page's first paint and
//! `/status.json` show what PostgreSQL and Kafka hold, headless Chromium (Debian's
//! `chromium`) loads it and its script refreshes it, no secret appears on it, it answers
//! only GET, and bad arguments get one sentence and a non-zero exit.

mod common;

use common::pipeline::{order, Harness, ACCOUNT, KOD, SIFRE};
use orderflow::account_status::AccountStatusConfig;
use orderflow::kafka::headers;
use orderflow::kafka::stage::StageConfig;
use orderflow::kafka::topics::name;
use orderflow::pin::PinKeys;
use orderflow::poll::{PollConfig, ScheduleConfig};
use orderflow::shutdown;
use orderflow::sink::SinkConfig;
use orderflow::testbed::sim::SimConfig;
use rdkafka::message::{Headers, Message};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Running = (shutdown::Trigger, tokio::task::JoinHandle<()>);

/// The one tier of these tests: long, so a slow order's next check waits there for the
/// whole test, held by the poll stage and not committed (the tier's lag).
const TIER: &str = "10m";
const VALID: usize = 12;
const REJECTED: usize = 2;

/// The pipeline under test: dispatch, poll and sink in this process.
struct Pipeline {
    h: Harness,
    keys_line: String,
    keys_file: PathBuf,
    poll_group: String,
    stages: Vec<Running>,
}

impl Pipeline {
    async fn start(test: &str) -> Pipeline {
        common::logs::capture();
        // Half the orders are slow: their first check answers pending, and the next one
        // waits on the 10m tier for the rest of the test.
        let sim = SimConfig {
            checks_until_complete: 0,
            slow_share: 0.5,
            slow_checks: 1,
            seed: 17,
            ..SimConfig::default()
        };
        let h = Harness::new(test, sim, 2_000).await;
        let keys_line = PinKeys::generate_key_line("status1");
        let keys_file = std::env::temp_dir().join(common::unique("orderflow-pin-keys-"));
        std::fs::write(&keys_file, &keys_line).unwrap();
        let mut p = Pipeline {
            h,
            keys_line,
            keys_file,
            poll_group: common::unique("g-poll-"),
            stages: Vec::new(),
        };
        p.stages = vec![p.dispatch(), p.poll(), p.sink()];
        p
    }

    fn dispatch(&self) -> Running {
        let (trigger, signal) = shutdown::channel();
        let mut config = self.h.dispatch_config();
        config.account_status.interval_secs = 1;
        let (accounts, kafka, pool) = (
            self.h.accounts(),
            self.h.kafka.clone(),
            self.h.db.pool.clone(),
        );
        let task = tokio::spawn(async move {
            orderflow::dispatch::run(config, accounts, kafka, pool, Default::default(), signal)
                .await
                .expect("the dispatch stage");
        });
        (trigger, task)
    }

    fn poll(&self) -> Running {
        let (trigger, signal) = shutdown::channel();
        let config = PollConfig {
            accounts_file: self.h.accounts_file.clone(),
            group: Some(self.poll_group.clone()),
            max_in_flight: 32,
            schedule: ScheduleConfig {
                first_check: "1s".into(),
                check_tiers: TIER.into(),
                max_check_attempts: None,
            },
            pin_keys_file: Some(self.keys_file.clone()),
            stage: StageConfig {
                shutdown_grace_ms: 5_000,
                ..Default::default()
            },
            account_status: AccountStatusConfig { interval_secs: 1 },
        };
        let (accounts, kafka, pool) = (
            self.h.accounts(),
            self.h.kafka.clone(),
            self.h.db.pool.clone(),
        );
        let task = tokio::spawn(async move {
            orderflow::poll::run(config, accounts, kafka, pool, Default::default(), signal)
                .await
                .expect("the poll stage");
        });
        (trigger, task)
    }

    fn sink(&self) -> Running {
        let (trigger, signal) = shutdown::channel();
        let config = SinkConfig {
            group: Some(common::unique("g-sink-")),
            batch_rows: 100,
            batch_linger_ms: 20,
            stage: StageConfig {
                shutdown_grace_ms: 5_000,
                ..Default::default()
            },
        };
        let (kafka, pool) = (self.h.kafka.clone(), self.h.db.pool.clone());
        let task = tokio::spawn(async move {
            orderflow::sink::run(config, kafka, pool, Default::default(), signal)
                .await
                .expect("the sink");
        });
        (trigger, task)
    }

    /// The environment of an `orderflow status-page` child: this pipeline's database,
    /// topics, poll group and tier. The accounts file and the PIN keys are in it too, as
    /// they would be on a host that runs the stages: the page must not read them.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ORDERFLOW_DATABASE_URL", self.h.db.url.clone()),
            ("ORDERFLOW_KAFKA_BROKERS", self.h.kafka.brokers.clone()),
            ("ORDERFLOW_TOPIC_PREFIX", self.h.kafka.topic_prefix.clone()),
            ("ORDERFLOW_POLL_GROUP", self.poll_group.clone()),
            ("ORDERFLOW_CHECK_TIERS", TIER.into()),
            (
                "ORDERFLOW_PROVIDER_ACCOUNTS",
                self.h.accounts_file.display().to_string(),
            ),
            ("ORDERFLOW_PIN_KEYS", self.keys_line.clone()),
            ("ORDERFLOW_LOG", "info".into()),
        ]
    }

    async fn stop(self) {
        for (trigger, task) in self.stages {
            trigger.fire();
            task.await.unwrap();
        }
        std::fs::remove_file(&self.keys_file).ok();
        self.h.finish().await;
    }
}

/// What the database and the broker hold once the pipeline has settled.
#[derive(Debug, PartialEq)]
struct Truth {
    completed: i64,
    rejected: i64,
    processing: i64,
    /// Slow orders' next checks in the tier topic (none committed: all wait 10 min).
    in_tier_topic: i64,
    /// Entries of orders.dlq per reason, from their headers.
    dead_letters: BTreeMap<String, u64>,
    /// The order made stuck by [`make_one_stuck`].
    stuck: uuid::Uuid,
}

/// Waits until every published order has its row, the slow ones in `processing` with
/// their next check on the tier topic, and returns what the stores hold.
async fn settled(p: &Pipeline, orders: i64) -> Truth {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let count = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&p.h.db.pool)
                .await
                .unwrap()
        };
        let truth = Truth {
            completed: count("SELECT count(*) FROM orders WHERE state = 'completed'").await,
            rejected: count("SELECT count(*) FROM orders WHERE failure_reason = 'rejected'").await,
            processing: count("SELECT count(*) FROM orders WHERE state = 'processing'").await,
            in_tier_topic: common::pipeline::read_to_end(&p.h.kafka, &name::status_check(TIER))
                .await
                .len() as i64,
            dead_letters: dead_letters(p).await,
            stuck: uuid::Uuid::nil(),
        };
        let chains_on_tier: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM check_chains WHERE final_state IS NULL AND tier = $1",
        )
        .bind(TIER)
        .fetch_one(&p.h.db.pool)
        .await
        .unwrap();
        let accounts_seen: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT stage) FROM account_status WHERE account = $1",
        )
        .bind(ACCOUNT)
        .fetch_one(&p.h.db.pool)
        .await
        .unwrap();
        let all_in = truth.completed + truth.rejected + truth.processing == orders;
        if all_in
            && truth.processing == truth.in_tier_topic
            && chains_on_tier == truth.processing
            && !truth.dead_letters.is_empty()
            && accounts_seen == 2
        {
            return truth;
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline did not settle within 90 s: {truth:?}, {chains_on_tier} chains on {TIER}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The DLQ's entries per reason, read from the topic's headers.
async fn dead_letters(p: &Pipeline) -> BTreeMap<String, u64> {
    let mut per_reason = BTreeMap::new();
    for m in common::pipeline::read_to_end(&p.h.kafka, name::ORDERS_DLQ).await {
        let reason = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == headers::DLQ_REASON))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        *per_reason.entry(reason).or_default() += 1;
    }
    per_reason
}

/// Makes one slow order's next check overdue by an hour, as if its tier message had been
/// lost: the stuck rule then calls it stuck (the poll stage holds the message for 10 min
/// and no reconciler runs, so nothing moves it during the test).
async fn make_one_stuck(p: &Pipeline) -> uuid::Uuid {
    sqlx::query_scalar(
        "UPDATE check_chains SET next_check_at = now() - interval '1 hour'
          WHERE order_id = (SELECT order_id FROM check_chains
                             WHERE final_state IS NULL ORDER BY order_id LIMIT 1)
         RETURNING order_id",
    )
    .fetch_one(&p.h.db.pool)
    .await
    .unwrap()
}

/// A running `orderflow status-page` and its address.
struct Page {
    _child: common::ChildGuard,
    url: String,
}

/// Starts the command on a free port and reads the address from its log.
fn start_page(env: &[(&'static str, String)]) -> Page {
    let mut child = common::ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["status-page", "--listen", "127.0.0.1:0"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting orderflow status-page"),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("status-page: {line}");
            if let Some(at) = line.find("url=http://") {
                if !sent {
                    let url = line[at + 4..].split_whitespace().next().unwrap().to_owned();
                    sent = tx.send(url).is_ok();
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the status page logs its address within 30 s");
    Page { _child: child, url }
}

/// The cells of the row `key` in panel `panel` of a page (server-rendered or Chromium's
/// DOM: both use the same markup).
fn cells(html: &str, panel: &str, key: &str) -> Option<Vec<String>> {
    let section = html.split(&format!("id=\"panel-{panel}\"")).nth(1)?;
    let section = section.split("</section>").next()?;
    let row = section.split(&format!("<tr data-key=\"{key}\">")).nth(1)?;
    let row = row.split("</tr>").next()?;
    Some(
        row.split("<td")
            .skip(1)
            .map(|td| {
                let text = td.split_once('>').unwrap().1;
                text.split("</td>").next().unwrap().to_owned()
            })
            .collect(),
    )
}

fn tile(html: &str, id: &str) -> Option<String> {
    let after = html.split(&format!("id=\"tile-{id}\"")).nth(1)?;
    let value = after.split("<div class=\"value\">").nth(1)?;
    Some(value.split("</div>").next()?.to_owned())
}

/// The numbers a page must show for `truth`, checked on `html`.
fn assert_shows(html: &str, truth: &Truth, what: &str) {
    let completed = cells(html, "finished", "completed")
        .unwrap_or_else(|| panic!("{what}: no completed row in:\n{html}"));
    assert_eq!(
        completed[3],
        truth.completed.to_string(),
        "{what}: completed in the last 15 min"
    );
    let rejected = cells(html, "finished", "failed-rejected")
        .unwrap_or_else(|| panic!("{what}: no failed-rejected row"));
    assert_eq!(rejected[3], truth.rejected.to_string(), "{what}: rejected");
    let checking =
        cells(html, "open", "checking").unwrap_or_else(|| panic!("{what}: no checking row"));
    assert_eq!(
        checking[1],
        truth.processing.to_string(),
        "{what}: checking"
    );
    let placing =
        cells(html, "open", "placing").unwrap_or_else(|| panic!("{what}: no placing row"));
    assert_eq!(placing[1], "0", "{what}: being placed");
    let first = cells(html, "open", "first").unwrap_or_else(|| panic!("{what}: no first row"));
    assert_eq!(
        first[1], "0",
        "{what}: every first check is done and committed"
    );
    let tier = cells(html, "tiers", TIER).unwrap_or_else(|| panic!("{what}: no {TIER} row"));
    assert_eq!(
        tier[1],
        truth.in_tier_topic.to_string(),
        "{what}: waiting in Kafka on {TIER}"
    );
    assert_eq!(
        tier[2],
        truth.processing.to_string(),
        "{what}: open chains on {TIER}"
    );
    assert!(
        cells(html, "tiers", "first").is_some(),
        "{what}: no first row"
    );
    for (reason, n) in &truth.dead_letters {
        let row = cells(html, "dead-letters", reason)
            .unwrap_or_else(|| panic!("{what}: no dead-letter row {reason}"));
        assert_eq!(row[1], n.to_string(), "{what}: dead letters {reason}");
    }
    let stuck = cells(html, "stuck", &truth.stuck.to_string())
        .unwrap_or_else(|| panic!("{what}: the stuck order is not listed"));
    assert_eq!(stuck[2], "processing", "{what}: {stuck:?}");
    assert_eq!(stuck[3], "next check", "{what}: {stuck:?}");
    assert_eq!(
        tile(html, "stuck").as_deref(),
        Some("1"),
        "{what}: the stuck tile"
    );
    let account = cells(html, "accounts", &format!("{ACCOUNT}-dispatch"))
        .unwrap_or_else(|| panic!("{what}: no {ACCOUNT} row of the dispatch stage"));
    assert!(
        account[2].parse::<f64>().is_ok(),
        "{what}: the balance the simulator reported: {account:?}"
    );
    assert_eq!(account[3], "closed", "{what}: the breaker: {account:?}");
    let polled = cells(html, "accounts", &format!("{ACCOUNT}-poll"))
        .unwrap_or_else(|| panic!("{what}: no {ACCOUNT} row of the poll stage"));
    assert!(polled[6].contains("check: completed"), "{what}: {polled:?}");
    assert_eq!(
        tile(html, "open").as_deref(),
        Some(truth.processing.to_string().as_str()),
        "{what}: the open tile"
    );
}

/// No credential, PIN, PIN key or database password on what the page serves (G5).
fn assert_no_secret(text: &str, p: &Pipeline, what: &str) {
    assert!(
        !text.contains(KOD) && !text.contains(SIFRE),
        "{what}: a credential"
    );
    assert!(!common::logs::has_pin_shape(text), "{what}: a PIN");
    let key = p.keys_line.split_once(':').unwrap().1;
    assert!(!text.contains(key), "{what}: the PIN key");
    assert!(!text.contains(&p.h.db.url), "{what}: the database URL");
    assert!(
        !text.contains("orderflow:orderflow@"),
        "{what}: the password"
    );
    assert!(!text.contains("pin_encrypted"), "{what}: a PIN column");
}

/// Debian's Chromium, or `None` (the test then says why it does not run it) when it is not
/// installed and this is not CI, where `.ci/run` installs it.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; .ci/run installs Debian's package `chromium`"
        );
        eprintln!("SKIPPED the browser part: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// Headless Chromium's DOM of `url` after the page's script has had `budget_ms` of
/// (virtual) time to refresh it.
fn dump_dom(chromium: &Path, url: &str, budget_ms: u64) -> String {
    let profile = std::env::temp_dir().join(common::unique("orderflow-chromium-"));
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .output()
        .expect("running chromium");
    std::fs::remove_dir_all(&profile).ok();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("a UTF-8 DOM")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_the_running_pipeline_in_a_browser_and_no_secret() {
    let p = Pipeline::start("status-page").await;
    let mut orders = Vec::new();
    for i in 0..VALID {
        let o = order(["25", "50", "100"][i % 3]);
        p.h.publish(&o).await;
        orders.push(o);
    }
    for _ in 0..REJECTED {
        // A denomination the simulator does not sell: rejected, failed at once.
        p.h.publish(&order("999")).await;
    }
    // A broken event: dead-lettered by dispatch.
    p.h.publish_raw(Some("broken"), b"{not json").await;
    let mut truth = settled(&p, (VALID + REJECTED) as i64).await;
    // Every first check is done and its offset committed: nothing waits for one.
    common::pipeline::assert_committed_to_end(
        &p.h.kafka,
        &p.poll_group,
        name::ORDERS_DISPATCHED,
        Duration::from_secs(60),
    )
    .await;
    truth.stuck = make_one_stuck(&p).await;
    assert!(
        truth.processing > 0 && truth.completed > 0,
        "the seed gives both slow and quick orders: {truth:?}"
    );

    let page = start_page(&p.env());
    let http = reqwest::Client::new();

    // The first paint: the numbers are in the HTML, without any script.
    let first = http.get(&page.url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let csp = first.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = first.text().await.unwrap();
    assert_shows(&html, &truth, "first paint");
    assert_no_secret(&html, &p, "first paint");
    assert!(html.contains("data-source=\"server\""));

    // The JSON the script refreshes from.
    let json = http
        .get(format!("{}status.json", page.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_no_secret(&json, &p, "status.json");
    let view: serde_json::Value = serde_json::from_str(&json).unwrap();
    let snapshot = &view["snapshot"];
    let lag = snapshot["tier_lag"]["ok"]
        .as_array()
        .expect("Kafka answered");
    let on_tier = lag.iter().find(|t| t["tier"] == TIER).unwrap();
    assert_eq!(on_tier["waiting"], truth.in_tier_topic);
    assert_eq!(snapshot["being_placed"]["ok"], 0, "{json}");
    let chains = snapshot["tier_chains"]["ok"]
        .as_array()
        .expect("PostgreSQL answered");
    assert!(
        chains
            .iter()
            .any(|c| c["tier"] == TIER && c["chains"] == truth.processing),
        "{json}"
    );

    // Read-only: nothing but GET.
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let answer = http
            .request(method.clone(), &page.url)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 405, "{method}");
    }
    assert_eq!(
        http.get(format!("{}admin", page.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // A browser: the page loads, and its script has redrawn it from status.json.
    if let Some(chromium) = chromium() {
        let url = page.url.clone();
        let dom = tokio::task::spawn_blocking(move || dump_dom(&chromium, &url, 12_000))
            .await
            .unwrap();
        assert!(
            dom.contains("data-source=\"live\""),
            "the script did not refresh the page:\n{dom}"
        );
        assert_shows(&dom, &truth, "Chromium's DOM");
        assert_no_secret(&dom, &p, "Chromium's DOM");
    }

    drop(page);
    p.stop().await;
}

fn orderflow(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .env_remove("ORDERFLOW_STATUS_PAGE_LISTEN")
        .envs(env.iter().copied())
        .output()
        .expect("running orderflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_get_one_sentence_and_a_non_zero_exit() {
    let (code, stderr) = orderflow(&["status-page", "--listen", "nonsense"], &[]);
    assert_eq!(code, 2, "{stderr}");
    let first = stderr.lines().next().unwrap();
    assert!(
        first.contains("\"nonsense\" is not an address to listen on")
            && first.contains("127.0.0.1:9480"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (code, stderr) = orderflow(
        &["status-page"],
        &[("ORDERFLOW_STATUS_PAGE_COLLECT_EVERY_MS", "10")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--collect-every-ms"), "{stderr}");

    let (code, stderr) = orderflow(&["status-page", "--check-tiers", "soon"], &[]);
    assert_ne!(code, 0, "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("--check-tiers is invalid"), "{stderr}");
}

/// A port already taken is one sentence naming it, and a non-zero exit.
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_one_sentence() {
    let db = common::TestDb::new_migrated().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let brokers = common::brokers();
    let (code, stderr) = orderflow(
        &["status-page", "--listen", &addr],
        &[
            ("ORDERFLOW_DATABASE_URL", &db.url),
            ("ORDERFLOW_KAFKA_BROKERS", &brokers),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("error: cannot serve the status page on {addr}")),
        "{stderr}"
    );
    db.drop_now().await;
}
