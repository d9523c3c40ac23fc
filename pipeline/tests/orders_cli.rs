//! `orderflow order submit`, `order list` and `order show --reference/--phone` (issue 17)
//! as an operator runs them: the binary against the real broker and database, with the
//! dispatch, poll and sink stages and the znet simulator running in this process.

mod common;

use common::pipeline::{order, Harness, ACCOUNT, DOWN_ACCOUNT};
use orderflow::core::event::{StatusCheck, SCHEMA_VERSION};
use orderflow::db::chains::{self, StepEnd};
use orderflow::kafka::stage::StageConfig;
use orderflow::kafka::topics::{self, name, TopicSpec, TopicSpecs};
use orderflow::lookup::LookupKeysArgs;
use orderflow::pin::PinKeys;
use orderflow::poll::{PollConfig, ScheduleConfig};
use orderflow::shutdown;
use orderflow::sink::SinkConfig;
use orderflow::testbed::sim::SimConfig;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

type Running = (shutdown::Trigger, tokio::task::JoinHandle<()>);

/// The check schedule of these tests: seconds instead of minutes.
const FIRST_CHECK: &str = "1s";
const TIERS: &str = "1s,2s";

/// A pipeline and the files an operator's environment would name.
struct Bed {
    h: Harness,
    pin_keys_file: PathBuf,
    lookup_keys_file: PathBuf,
}

impl Bed {
    async fn new(test: &str) -> Bed {
        let sim = SimConfig {
            checks_until_complete: 1,
            ..SimConfig::default()
        };
        let h = Harness::new(test, sim, 1_000).await;
        let template = common::test_specs()
            .topics
            .into_iter()
            .find(|t| t.name.starts_with("orders.status-check."))
            .unwrap();
        let specs = TopicSpecs {
            topics: TIERS
                .split(',')
                .map(|label| TopicSpec {
                    name: name::status_check(label),
                    ..template.clone()
                })
                .collect(),
        };
        topics::apply(&h.kafka, &specs).await.unwrap();
        let pin_keys_file = std::env::temp_dir().join(common::unique("orderflow-pin-keys-"));
        std::fs::write(&pin_keys_file, PinKeys::generate_key_line("test1")).unwrap();
        let lookup_keys_file = std::env::temp_dir().join(common::unique("orderflow-lookup-"));
        std::fs::write(&lookup_keys_file, PinKeys::generate_key_line("lookup1")).unwrap();
        Bed {
            h,
            pin_keys_file,
            lookup_keys_file,
        }
    }

    fn start_dispatch(&self) -> Running {
        common::logs::capture();
        let (trigger, signal) = shutdown::channel();
        let mut config = self.h.dispatch_config();
        config.lookup = LookupKeysArgs {
            file: Some(self.lookup_keys_file.clone()),
        };
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

    fn start_poll(&self) -> Running {
        let (trigger, signal) = shutdown::channel();
        let config = PollConfig {
            accounts_file: self.h.accounts_file.clone(),
            group: Some(common::unique("g-poll-")),
            max_in_flight: 32,
            schedule: ScheduleConfig {
                first_check: FIRST_CHECK.into(),
                check_tiers: TIERS.into(),
                max_check_attempts: None,
            },
            pin_keys_file: Some(self.pin_keys_file.clone()),
            stage: StageConfig {
                shutdown_grace_ms: 5_000,
                ..Default::default()
            },
            account_status: Default::default(),
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

    fn start_sink(&self) -> Running {
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

    /// The environment an operator's shell has: where the broker, topics and database are,
    /// and the lookup keys.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "ORDERFLOW_KAFKA_BROKERS".into(),
                self.h.kafka.brokers.clone(),
            ),
            (
                "ORDERFLOW_TOPIC_PREFIX".into(),
                self.h.kafka.topic_prefix.clone(),
            ),
            ("ORDERFLOW_DATABASE_URL".into(), self.h.db.url.clone()),
            (
                "ORDERFLOW_LOOKUP_KEYS_FILE".into(),
                self.lookup_keys_file.display().to_string(),
            ),
            ("ORDERFLOW_FIRST_CHECK".into(), FIRST_CHECK.into()),
        ]
    }

    async fn run(&self, args: &[&str]) -> Out {
        orderflow(args, &self.env()).await
    }

    async fn finish(self) {
        std::fs::remove_file(&self.pin_keys_file).ok();
        std::fs::remove_file(&self.lookup_keys_file).ok();
        self.h.finish().await;
    }
}

async fn stop((trigger, task): Running) {
    trigger.fire();
    task.await.unwrap();
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary as an operator would, with only `env` of orderflow's variables set.
async fn orderflow(args: &[&str], env: &[(String, String)]) -> Out {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ORDERFLOW_")) {
        command.env_remove(key);
    }
    let out = command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("ORDERFLOW_LOG", "warn")
        .output()
        .await
        .expect("running orderflow");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The one line a failed command prints.
fn one_sentence(out: &Out) -> &str {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "expected one line: {out:?}");
    assert!(lines[0].starts_with("error: "), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    lines[0]
}

/// The order id of `order submit`'s first line.
fn submitted(out: &Out) -> Uuid {
    let first = out.stdout.lines().next().unwrap_or_default();
    let id = first
        .strip_prefix("order ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no order id in {out:?}"));
    id.parse().unwrap()
}

/// Each JSON line of `order list --json`.
fn json_lines(out: &Out) -> Vec<serde_json::Value> {
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ids(lines: &[serde_json::Value]) -> Vec<Uuid> {
    lines
        .iter()
        .map(|l| l["order_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Waits until `order list --json` with `args` lists `want` (in any order).
async fn wait_listed(
    bed: &Bed,
    args: &[&str],
    want: &[Uuid],
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let mut all = vec!["order", "list", "--json"];
        all.extend_from_slice(args);
        let out = bed.run(&all).await;
        assert_eq!(out.code, 0, "{out:?}");
        let lines = json_lines(&out);
        let listed = ids(&lines);
        if want.iter().all(|w| listed.contains(w)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{want:?} not listed by {args:?}: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `submit --wait` follows an order through the real stages to its final state and prints
/// its journey; a rejected order exits 3, one that cannot finish in time exits 4; `show`
/// finds the order by its provider reference and by any spelling of the customer's phone.
#[tokio::test(flavor = "multi_thread")]
async fn submit_waits_for_the_final_state_and_show_finds_it_by_reference_and_phone() {
    let bed = Bed::new("orders-submit").await;
    let (dispatch, poll, sink) = (bed.start_dispatch(), bed.start_poll(), bed.start_sink());

    let out = bed
        .run(&[
            "order",
            "submit",
            "--tenant",
            "shop-1",
            "--account",
            ACCOUNT,
            "--product",
            "oyun=412",
            "--product",
            "kupur=50",
            "--user-identifier",
            "+90 555 123 45 67",
            "--user-extra",
            "oyuncu#7",
            "--wait",
            "--timeout",
            "60s",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let id = submitted(&out);
    let topic = bed.h.kafka.topic(name::ORDERS_CREATED);
    assert!(
        out.stdout.lines().next().unwrap().contains(&topic),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("completed (shop: approved / done)"),
        "{out:?}"
    );
    assert!(out.stdout.contains("sealed with key test1"), "{out:?}");
    assert!(
        out.stderr.contains("completed"),
        "the states followed: {out:?}"
    );
    // The phone number is not stored, only its digest.
    let digest: Option<String> =
        sqlx::query_scalar("SELECT user_digest FROM dispatch_claims WHERE order_id = $1")
            .bind(id)
            .fetch_one(&bed.h.db.pool)
            .await
            .unwrap();
    let digest = digest.expect("a digest with the claim");
    assert!(digest.starts_with("lookup1:") && !digest.contains("5551234567"));

    // By the provider reference the journey names.
    let reference = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("reference"))
        .map(str::trim)
        .expect("a reference line")
        .to_owned();
    let shown = bed.run(&["order", "show", "--reference", &reference]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(shown.stdout.contains(&id.to_string()), "{shown:?}");

    // By the phone, spelled otherwise; a second order of the same customer is shown too.
    let file = std::env::temp_dir().join(common::unique("orderflow-order-"));
    let mut second = order("25");
    second.user_identifier = "0555 123 45 67".into();
    std::fs::write(&file, second.encode()).unwrap();
    let out = bed
        .run(&[
            "order",
            "submit",
            "--file",
            file.to_str().unwrap(),
            "--wait",
        ])
        .await;
    std::fs::remove_file(&file).ok();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(submitted(&out), second.order_id);
    let shown = bed.run(&["order", "show", "--phone", "5551234567"]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown.stdout.starts_with("2 orders, newest first"),
        "{shown:?}"
    );
    let first_at = shown.stdout.find(&second.order_id.to_string()).unwrap();
    assert!(
        first_at < shown.stdout.find(&id.to_string()).unwrap(),
        "{shown:?}"
    );
    let nobody = bed.run(&["order", "show", "--phone", "5550000000"]).await;
    assert_eq!(nobody.code, 1);
    assert_eq!(
        one_sentence(&nobody),
        "error: no order with this phone number is known to this database"
    );

    // A product the provider does not sell is rejected: exit code 3.
    let out = bed
        .run(&[
            "order",
            "submit",
            "--tenant",
            "shop-1",
            "--account",
            ACCOUNT,
            "--product",
            "oyun=412",
            "--product",
            "kupur=999",
            "--wait",
            "--timeout",
            "60s",
        ])
        .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("failure         rejected"), "{out:?}");

    // An account whose provider cannot be reached does not finish in 2 s: exit code 4.
    let out = bed
        .run(&[
            "order",
            "submit",
            "--tenant",
            "shop-1",
            "--account",
            DOWN_ACCOUNT,
            "--product",
            "oyun=412",
            "--product",
            "kupur=50",
            "--wait",
            "--timeout",
            "2s",
        ])
        .await;
    assert_eq!(out.code, 4, "{out:?}");
    // The states it saw, then the one sentence that says why it gave up.
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: order ") && last.contains("is not final after 2s"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("held up by"),
        "its journey so far: {out:?}"
    );

    stop(sink).await;
    stop(poll).await;
    stop(dispatch).await;
    bed.finish().await;
}

/// `order list` with each filter, its table and JSON lines, and `--stuck` for each step an
/// order can be stuck at: a placement (dispatch stopped mid-way), a first check that never
/// started (poll not running) and a next check far overdue (its poll worker gone).
#[tokio::test(flavor = "multi_thread")]
async fn list_filters_by_state_account_tenant_age_and_stuck() {
    let bed = Bed::new("orders-list").await;
    let (dispatch, sink) = (bed.start_dispatch(), bed.start_sink());
    // Placed but never checked: poll is not running.
    let mut orders = vec![order("25"), order("50"), order("100")];
    orders[2].tenant_id = "shop-2".into();
    for o in &orders {
        bed.h.publish(o).await;
    }
    let placed: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let listed = wait_listed(
        &bed,
        &["--state", "dispatched"],
        &placed,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(listed.len(), 3);
    for line in &listed {
        assert_eq!(line["provider_account"], ACCOUNT);
        assert!(line.get("pin").is_none() && line.get("pin_encrypted").is_none());
    }
    // One order whose next check is an hour overdue: its chain's step is done, and no
    // poll worker is there to take the next.
    let behind = &orders[0];
    let reference = listed
        .iter()
        .find(|l| l["order_id"] == behind.order_id.to_string())
        .unwrap()["provider_reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = chrono::Utc::now();
    let check = StatusCheck {
        schema_version: SCHEMA_VERSION,
        order_id: behind.order_id,
        tenant_id: behind.tenant_id.clone(),
        provider_account: ACCOUNT.into(),
        provider_reference: reference,
        dispatched_at: now - chrono::Duration::hours(2),
        deadline: now + chrono::Duration::hours(20),
        seq: 1,
        attempts: 0,
        due_at: now - chrono::Duration::hours(1),
        version: 3,
        created_at: None,
    };
    let owner = Uuid::new_v4();
    let pool = &bed.h.db.pool;
    chains::begin_step(pool, &check, owner, Duration::from_secs(30))
        .await
        .unwrap();
    let end = StepEnd {
        tier: Some("2s".into()),
        attempts: 1,
        version: 3,
        next_check_at: Some(now - chrono::Duration::hours(1)),
        final_state: None,
        error: None,
    };
    assert!(chains::finish_step(pool, behind.order_id, 1, owner, &end)
        .await
        .unwrap());

    // With the deployment's first check (60 s) only the overdue chain is stuck...
    let out = bed
        .run(&["order", "list", "--stuck", "--first-check", "60s", "--json"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let stuck = json_lines(&out);
    assert_eq!(ids(&stuck), [behind.order_id], "{out:?}");
    assert_eq!(stuck[0]["stuck"]["step"], "next_check");
    assert!(stuck[0]["stuck"]["overdue_seconds"].as_u64().unwrap() >= 3600);
    // ...with the tests' (1 s, from ORDERFLOW_FIRST_CHECK) the others are too, their first
    // check never having started (once 1 s plus the 1 s grace have passed).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = bed
        .run(&["order", "list", "--stuck", "--stuck-grace", "1s", "--json"])
        .await;
    let stuck = json_lines(&out);
    let mut all = placed.clone();
    all.sort();
    let mut got = ids(&stuck);
    got.sort();
    assert_eq!(got, all, "{out:?}");
    let steps: Vec<&str> = stuck
        .iter()
        .map(|l| l["stuck"]["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps.iter().filter(|s| **s == "first_check").count(),
        2,
        "{out:?}"
    );

    // Stuck in placement: an order for an unreachable provider, its dispatch stopped
    // while it was being placed.
    let down = {
        let mut o = order("50");
        o.provider_account = DOWN_ACCOUNT.into();
        o
    };
    bed.h.publish(&down).await;
    wait_listed(
        &bed,
        &["--account", DOWN_ACCOUNT],
        &[down.order_id],
        Duration::from_secs(30),
    )
    .await;
    stop(dispatch).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = bed
        .run(&[
            "order",
            "list",
            "--stuck",
            "--stuck-grace",
            "1s",
            "--dispatch-park-max-ms",
            "0",
            "--account",
            DOWN_ACCOUNT,
            "--json",
        ])
        .await;
    let stuck = json_lines(&out);
    assert_eq!(ids(&stuck), [down.order_id], "{out:?}");
    assert_eq!(stuck[0]["stuck"]["step"], "placement");
    // Announced (the harness's dispatch publishes `dispatching`), never placed.
    assert_eq!(stuck[0]["state"], "dispatching");
    // With the dispatch stage's own parking maximum (10 min) it is not stuck yet.
    let out = bed
        .run(&[
            "order",
            "list",
            "--stuck",
            "--account",
            DOWN_ACCOUNT,
            "--json",
        ])
        .await;
    assert!(json_lines(&out).is_empty(), "{out:?}");

    // Filters: account, tenant, state, age; order and limit.
    let by_account = json_lines(
        &bed.run(&["order", "list", "--account", ACCOUNT, "--json"])
            .await,
    );
    assert_eq!(ids(&by_account).len(), 3);
    let shop2 = json_lines(
        &bed.run(&["order", "list", "--tenant", "shop-2", "--json"])
            .await,
    );
    assert_eq!(ids(&shop2), [orders[2].order_id]);
    let none = json_lines(
        &bed.run(&["order", "list", "--state", "completed", "--json"])
            .await,
    );
    assert!(none.is_empty());
    let young = bed
        .run(&["order", "list", "--older-than", "1h", "--json"])
        .await;
    assert!(json_lines(&young).is_empty(), "{young:?}");
    assert!(young.stderr.contains("no order matches"), "{young:?}");
    let older = json_lines(
        &bed.run(&["order", "list", "--older-than", "1s", "--json"])
            .await,
    );
    assert_eq!(older.len(), 4);
    let oldest = json_lines(&bed.run(&["order", "list", "--limit", "1", "--json"]).await);
    let newest = json_lines(
        &bed.run(&["order", "list", "--limit", "1", "--newest-first", "--json"])
            .await,
    );
    assert_eq!(ids(&newest), [down.order_id]);
    assert_ne!(ids(&oldest), ids(&newest));

    // The table: a header, one line per order, none wider than 100 columns.
    let table = bed.run(&["order", "list"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{table:?}");
    assert!(lines[0].starts_with("ORDER "), "{table:?}");
    assert!(lines.iter().all(|l| l.chars().count() <= 100), "{table:?}");
    let behind_line = lines
        .iter()
        .find(|l| l.starts_with(&behind.order_id.to_string()))
        .unwrap();
    assert!(behind_line.contains("stuck 1h"), "{behind_line}");

    stop(sink).await;
    bed.finish().await;
}

/// Bad arguments and invalid orders: one sentence and a non-zero exit, before anything is
/// published or read.
#[tokio::test(flavor = "multi_thread")]
async fn bad_arguments_are_one_sentence_and_a_non_zero_exit() {
    // Nothing listens on port 1: had a command tried to connect, it would say so instead.
    let env = vec![
        (
            "ORDERFLOW_KAFKA_BROKERS".to_owned(),
            "127.0.0.1:1".to_owned(),
        ),
        (
            "ORDERFLOW_DATABASE_URL".to_owned(),
            "postgres://orderflow:orderflow@127.0.0.1:1/orderflow".to_owned(),
        ),
    ];
    let cases: [(&[&str], i32, &str); 10] = [
        (&["order", "list", "--older-than", "10x"], 2, "\"10x\" is not a duration like 90s, 10m, 2h or 3d"),
        (&["order", "list", "--state", "lost"], 2, "invalid value 'lost' for '--state <STATE>'"),
        (&["order", "list", "--limit", "0"], 2, "invalid value '0' for '--limit <LIMIT>'"),
        (&["order", "show"], 2, "the following required arguments were not provided: <ID|--reference <REFERENCE>|--phone <PHONE>>"),
        (&["order", "show", "not-a-uuid"], 2, "invalid value 'not-a-uuid' for '[ID]'"),
        (&["order", "show", "--phone", "555 123 45 67"], 1, "order show --phone needs the lookup keys"),
        (&["order", "submit", "--tenant", "shop-1"], 2, "the following required arguments were not provided: --account <ACCOUNT>"),
        (&["order", "submit", "--tenant", "shop-1", "--account", "a", "--product", "oyun"], 2, "\"oyun\" is not KEY=VALUE"),
        (&["order", "submit", "--tenant", " ", "--account", "znet-main"], 1, "the order is not valid (invalid_field): tenant_id must not be blank"),
        (&["order", "submit", "--file", "/nonexistent/order.json"], 1, "cannot read the order file /nonexistent/order.json"),
    ];
    for (args, code, says) in cases {
        let out = orderflow(args, &env).await;
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        let line = one_sentence(&out);
        assert!(line.contains(says), "{args:?}: {line}");
    }
    // A file that is not an order is refused with the stage's own reason.
    let file = std::env::temp_dir().join(common::unique("orderflow-order-"));
    std::fs::write(
        &file,
        br#"{"schema_version": 1, "order_id": "6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f"}"#,
    )
    .unwrap();
    let out = orderflow(&["order", "submit", "--file", file.to_str().unwrap()], &env).await;
    std::fs::remove_file(&file).ok();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        one_sentence(&out).contains("the order is not valid (invalid_field): missing field"),
        "{out:?}"
    );
    // With the accounts file, an unknown account is refused as the stage refuses it.
    let accounts = std::env::temp_dir().join(common::unique("orderflow-accounts-"));
    std::fs::write(
        &accounts,
        "[[account]]\nid = \"znet-main\"\nprovider = \"znet\"\nbase_url = \"http://127.0.0.1:1\"\n\
         kod = \"k\"\nsifre = \"s\"\n",
    )
    .unwrap();
    let out = orderflow(
        &[
            "order",
            "submit",
            "--tenant",
            "shop-1",
            "--account",
            "znet-other",
            "--provider-accounts",
            accounts.to_str().unwrap(),
        ],
        &env,
    )
    .await;
    let no_product = orderflow(
        &[
            "order",
            "submit",
            "--tenant",
            "shop-1",
            "--account",
            "znet-main",
            "--provider-accounts",
            accounts.to_str().unwrap(),
        ],
        &env,
    )
    .await;
    std::fs::remove_file(&accounts).ok();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        one_sentence(&out).contains(
            "(unknown_provider_account): provider_account \"znet-other\" is not configured"
        ),
        "{out:?}"
    );
    assert!(
        one_sentence(&no_product).contains("(invalid_product): znet needs product.oyun"),
        "{no_product:?}"
    );
}
