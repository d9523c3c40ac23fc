//! `orderflow dlq list|show|replay` against the real broker, database and the znet
//! simulator (issue 17 item 1): orders of an account that is not configured are
//! dead-lettered and answered `failed` (invalid); once the account is added, a replay
//! places each exactly once and each completes; a second replay skips everything, and
//! neither a dry run nor `--again` buys anything.

mod common;

use common::pipeline::{order, Harness, DEFAULT_ACCOUNT_SETTINGS, KOD, SIFRE};
use orderflow::core::event::{InvalidEvent, InvalidKind, OrderCreated};
use orderflow::db::claims::{self, Phase};
use orderflow::db::orders;
use orderflow::kafka::dlq::read::{self, Filter};
use orderflow::kafka::dlq::DeadLetters;
use orderflow::kafka::headers;
use orderflow::kafka::stage::StageConfig;
use orderflow::kafka::topics::{self, name, TopicSpec, TopicSpecs};
use orderflow::kafka::KafkaConfig;
use orderflow::pin::PinKeys;
use orderflow::poll::{PollConfig, ScheduleConfig};
use orderflow::shutdown;
use orderflow::sink::SinkConfig;
use orderflow::testbed::sim::SimConfig;
use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::Timestamp;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

type Running = (shutdown::Trigger, tokio::task::JoinHandle<()>);

/// An account the accounts file lacks until the test adds it.
const LATE_ACCOUNT: &str = "znet-late";

async fn stop((trigger, task): Running) {
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the stage stops")
        .unwrap();
}

fn start_dispatch(h: &Harness, group: &str) -> Running {
    common::logs::capture();
    let (trigger, signal) = shutdown::channel();
    let mut config = h.dispatch_config();
    config.group = Some(group.into());
    let (accounts, kafka, pool) = (h.accounts(), h.kafka.clone(), h.db.pool.clone());
    let task = tokio::spawn(async move {
        orderflow::dispatch::run(config, accounts, kafka, pool, Default::default(), signal)
            .await
            .expect("the dispatch stage");
    });
    (trigger, task)
}

fn start_poll(h: &Harness, keys_file: &Path, group: &str) -> Running {
    let (trigger, signal) = shutdown::channel();
    let config = PollConfig {
        accounts_file: h.accounts_file.clone(),
        group: Some(group.into()),
        max_in_flight: 32,
        schedule: ScheduleConfig {
            first_check: "1s".into(),
            check_tiers: "1s".into(),
            max_check_attempts: None,
        },
        pin_keys_file: Some(keys_file.to_path_buf()),
        stage: StageConfig {
            shutdown_grace_ms: 5_000,
            ..Default::default()
        },
        account_status: Default::default(),
    };
    let (accounts, kafka, pool) = (h.accounts(), h.kafka.clone(), h.db.pool.clone());
    let task = tokio::spawn(async move {
        orderflow::poll::run(config, accounts, kafka, pool, Default::default(), signal)
            .await
            .expect("the poll stage");
    });
    (trigger, task)
}

fn start_sink(h: &Harness) -> Running {
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
    let (kafka, pool) = (h.kafka.clone(), h.db.pool.clone());
    let task = tokio::spawn(async move {
        orderflow::sink::run(config, kafka, pool, Default::default(), signal)
            .await
            .expect("the sink");
    });
    (trigger, task)
}

/// The 1 s check tier the poll stage of this test uses, next to the spec's topics.
async fn add_check_tier(kafka: &KafkaConfig) {
    let template = common::test_specs()
        .topics
        .into_iter()
        .find(|t| t.name.starts_with("orders.status-check."))
        .unwrap();
    let specs = TopicSpecs {
        topics: vec![TopicSpec {
            name: name::status_check("1s"),
            ..template
        }],
    };
    topics::apply(kafka, &specs).await.unwrap();
}

/// Runs `orderflow dlq ARGS` against the test's broker, prefix and database; exit code,
/// stdout, stderr. The output is echoed, for the docs' samples.
fn dlq(kafka: &KafkaConfig, db_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .arg("dlq")
        .args(args)
        .env("ORDERFLOW_KAFKA_BROKERS", &kafka.brokers)
        .env("ORDERFLOW_TOPIC_PREFIX", &kafka.topic_prefix)
        .env("ORDERFLOW_DATABASE_URL", db_url)
        .env("ORDERFLOW_LOG", "warn")
        .output()
        .expect("running orderflow dlq");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("$ orderflow dlq {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Waits until `done` holds, checking every 200 ms, for at most `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < give_up, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every order's row, once each is in `state` (or fails after `within`).
async fn rows_reach(h: &Harness, orders: &[OrderCreated], state: &str, within: Duration) {
    let pool = &h.db.pool;
    eventually(&format!("every order {state}"), within, || async {
        for o in orders {
            match orders::get(pool, o.order_id).await.unwrap() {
                Some(row) if row.state == state => {}
                _ => return false,
            }
        }
        true
    })
    .await;
}

/// Records on `topic` (without prefix) now, over all partitions.
async fn records_on(kafka: &KafkaConfig, topic: &str) -> usize {
    common::pipeline::read_to_end(kafka, topic).await.len()
}

/// Issue 17 item 1, the issue's test: dead-letter orders of an unknown account, add the
/// account, replay, and every order completes once.
#[tokio::test(flavor = "multi_thread")]
async fn replayed_orders_of_an_account_added_later_complete_exactly_once() {
    let h = Harness::new("dlq-replay", SimConfig::default(), 5_000).await;
    add_check_tier(&h.kafka).await;
    let keys_file = std::env::temp_dir().join(common::unique("orderflow-pin-keys-"));
    std::fs::write(&keys_file, PinKeys::generate_key_line("test1")).unwrap();
    let (dispatch_group, poll_group) = (common::unique("g-dispatch-"), common::unique("g-poll-"));
    let dispatch = start_dispatch(&h, &dispatch_group);
    let sink = start_sink(&h);

    // Orders for an account the accounts file does not have: each is dead-lettered and
    // answered failed (invalid), and nothing is sent to the provider.
    let late: Vec<OrderCreated> = (0..4)
        .map(|i| {
            let mut o = order(["25", "50", "100"][i % 3]);
            o.provider_account = LATE_ACCOUNT.into();
            o
        })
        .collect();
    for o in &late {
        h.publish(o).await;
    }
    rows_reach(&h, &late, "failed", Duration::from_secs(60)).await;
    for o in &late {
        let row = orders::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
        assert_eq!(row.failure_reason.as_deref(), Some("invalid"));
    }
    assert!(h.stats().place_requests.is_empty(), "nothing was sent");
    let filter = Filter {
        reasons: vec![InvalidKind::UnknownProviderAccount],
        ..Filter::default()
    };
    let counts = read::counts_per_reason(&h.kafka, &filter, read::DEFAULT_WITHIN)
        .await
        .unwrap();
    assert_eq!(
        counts.get("unknown_provider_account"),
        Some(&4),
        "{counts:?}"
    );

    let (code, out, _) = dlq(
        &h.kafka,
        &h.db.url,
        &["list", "--source-topic", "orders.created"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": 4 entries matching source topic"), "{out}");
    assert!(out.contains("unknown_provider_account       4"), "{out}");
    let first = out
        .lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    let (code, out, _) = dlq(&h.kafka, &h.db.url, &["show", first]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stage         dispatch"), "{out}");
    assert!(
        out.contains(&format!("\"provider_account\": \"{LATE_ACCOUNT}\"")),
        "{out}"
    );

    // The account is added; the dispatch stage restarts with it, the poll stage starts.
    stop(dispatch).await;
    let account = format!(
        "[[account]]\nid = \"{LATE_ACCOUNT}\"\nprovider = \"znet\"\nbase_url = \"{}\"\n\
         kod = \"{KOD}\"\nsifre = \"{SIFRE}\"\nmax_concurrent = 8\nmax_per_second = 200\n\
         request_timeout_ms = 5000\n{DEFAULT_ACCOUNT_SETTINGS}",
        h.sim_url
    );
    let mut file = std::fs::read_to_string(&h.accounts_file).unwrap();
    file.push_str(&account);
    std::fs::write(&h.accounts_file, file).unwrap();
    let dispatch = start_dispatch(&h, &dispatch_group);
    let poll = start_poll(&h, &keys_file, &poll_group);

    // A dry run sends and records nothing.
    let created_before = records_on(&h.kafka, name::ORDERS_CREATED).await;
    let (code, out, _) = dlq(&h.kafka, &h.db.url, &["replay", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 would be sent, 0 skipped"), "{out}");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM dlq_replays")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
    assert_eq!(
        records_on(&h.kafka, name::ORDERS_CREATED).await,
        created_before
    );

    // The replay: every order is placed once and completes.
    let (code, out, _) = dlq(
        &h.kafka,
        &h.db.url,
        &[
            "replay",
            "--reason",
            "unknown_provider_account",
            "--rate",
            "20",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 sent, 0 skipped"), "{out}");
    assert!(out.contains("answered failed (invalid)"), "{out}");
    rows_reach(&h, &late, "completed", Duration::from_secs(90)).await;
    let each_once = |h: &Harness| {
        let stats = h.stats();
        assert_eq!(stats.purchases.len(), late.len(), "{stats:?}");
        assert!(stats.placements.values().all(|n| *n == 1), "{stats:?}");
        assert!(stats.purchases.values().all(|n| *n == 1), "{stats:?}");
    };
    each_once(&h);
    for o in &late {
        let claim = claims::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
        assert_eq!((claim.phase, claim.place_calls), (Phase::Placed, 1));
        let row = orders::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
        assert!(row.pin_encrypted.is_some() && row.failure_reason.is_none());
        assert_eq!(row.provider_reference, Some(claim.provider_reference));
    }

    // Twice: everything is skipped. Again with --again: sent, and nothing is bought.
    let (code, out, _) = dlq(&h.kafka, &h.db.url, &["replay"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 sent, 4 skipped"), "{out}");
    assert!(out.contains("skipped: replayed 1 time before"), "{out}");
    let created = records_on(&h.kafka, name::ORDERS_CREATED).await;
    assert_eq!(created, created_before + 4, "one replay per entry");
    let (code, out, _) = dlq(&h.kafka, &h.db.url, &["replay", "--again"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 sent, 0 skipped"), "{out}");
    common::pipeline::assert_committed_to_end(
        &h.kafka,
        &dispatch_group,
        name::ORDERS_CREATED,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    each_once(&h);
    rows_reach(&h, &late, "completed", Duration::from_secs(5)).await;
    let replays: Vec<i32> = sqlx::query_scalar("SELECT replays FROM dlq_replays")
        .fetch_all(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(replays, [2, 2, 2, 2]);

    stop(poll).await;
    stop(dispatch).await;
    stop(sink).await;
    let logs = common::logs::text();
    assert!(
        !logs.contains(KOD) && !logs.contains(SIFRE),
        "a credential was logged"
    );
    std::fs::remove_file(&keys_file).ok();
    h.finish().await;
}

/// A DLQ record as a stage would write it: `payload` from `source` (without prefix).
async fn dead_letter(
    kafka: &KafkaConfig,
    source: &str,
    key: Option<String>,
    payload: &[u8],
    kind: InvalidKind,
) {
    let letters = DeadLetters::new(
        kafka.producer().unwrap(),
        kafka.topic(name::ORDERS_DLQ),
        "sink",
        Arc::new(orderflow::metrics::Metrics::new()),
    );
    let original = OwnedMessage::new(
        Some(payload.to_vec()),
        key.map(String::into_bytes),
        kafka.topic(source),
        Timestamp::now(),
        0,
        17,
        Some(OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "x-auth-token",
            value: Some("tok-Zq7SECRET"),
        })),
    );
    letters
        .send(&original, &InvalidEvent::new(kind, "a test entry"))
        .await
        .unwrap();
}

/// `list` filters by reason, source topic, order and time window and counts per reason;
/// `show` prints one entry with every secret-named field masked.
#[tokio::test(flavor = "multi_thread")]
async fn list_filters_and_counts_and_show_masks_secrets() {
    let kafka = common::kafka_with_topics("dlq-list").await;
    let db_url = "postgres://orderflow:orderflow@127.0.0.1:1/unused";
    let started = chrono::Utc::now();
    let state_order = Uuid::new_v4();
    let state = format!(
        r#"{{"schema_version":1,"order_id":"{state_order}","state":"completed","version":-4,
            "pin":"v1:k1:SEALEDzq7SECRET","provider":{{"password":"pw-Zq7SECRET"}}}}"#
    );
    dead_letter(
        &kafka,
        name::ORDERS_STATE,
        Some(state_order.to_string()),
        state.as_bytes(),
        InvalidKind::InvalidField,
    )
    .await;
    for _ in 0..2 {
        let o = order("50");
        dead_letter(
            &kafka,
            name::ORDERS_CREATED,
            Some(o.order_id.to_string()),
            &o.encode(),
            InvalidKind::UnknownProviderAccount,
        )
        .await;
    }
    dead_letter(
        &kafka,
        name::ORDERS_CREATED,
        None,
        b"{not json",
        InvalidKind::UnreadableJson,
    )
    .await;

    let (code, out, _) = dlq(&kafka, db_url, &["list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": 4 entries"), "{out}");
    for line in [
        "invalid_field                  1",
        "unknown_provider_account       2",
        "unreadable_json                1",
        "total                          4",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    let (_, out, _) = dlq(
        &kafka,
        db_url,
        &[
            "list",
            "--reason",
            "unknown_provider_account,unreadable_json",
        ],
    );
    assert!(out.contains(": 3 entries"), "{out}");
    let (_, out, _) = dlq(&kafka, db_url, &["list", "--source-topic", "orders.state"]);
    assert!(
        out.contains(": 1 entry ") && out.contains(&state_order.to_string()),
        "{out}"
    );
    let (_, out, _) = dlq(
        &kafka,
        db_url,
        &["list", "--order-id", &state_order.to_string()],
    );
    assert!(out.contains(": 1 entry "), "{out}");
    let (_, out, _) = dlq(&kafka, db_url, &["list", "--since", "10m"]);
    assert!(out.contains(": 4 entries"), "{out}");
    let before = (started - chrono::Duration::minutes(1)).to_rfc3339();
    let (_, out, _) = dlq(&kafka, db_url, &["list", "--until", &before]);
    assert!(out.contains(": 0 entries"), "{out}");

    // The entry of orders.state, in full: its position from the list.
    let entries = read::entries(
        &kafka,
        &Filter {
            order_id: Some(state_order),
            ..Filter::default()
        },
        read::DEFAULT_WITHIN,
    )
    .await
    .unwrap();
    assert_eq!(entries.len(), 1);
    let position = entries[0].position.to_string();
    let (code, out, _) = dlq(&kafka, db_url, &["show", &position]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Zq7SECRET"), "a secret shown:\n{out}");
    for shown in [
        "reason        invalid_field",
        "stage         sink",
        "source        orders.state 0/17",
        "x-auth-token=***",
        "\"pin\": \"***\"",
        "\"password\": \"***\"",
        "\"state\": \"completed\"",
    ] {
        assert!(out.contains(shown), "{shown} missing:\n{out}");
    }
    let (code, _, stderr) = dlq(&kafka, db_url, &["show", "5/999999"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("the DLQ has no entry at 5/999999"),
        "{stderr}"
    );
    assert!(entries[0].header(headers::REPLAY_OF).is_none());
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0]
}

/// Bad arguments get one sentence and a non-zero exit, before anything is contacted.
#[test]
fn bad_arguments_are_one_sentence_and_a_non_zero_exit() {
    let kafka = KafkaConfig::for_tests("127.0.0.1:1", "unused.");
    let db = "postgres://orderflow:orderflow@127.0.0.1:1/unused";
    for (args, says) in [
        (
            vec!["list", "--reason", "unknown-account"],
            "\"unknown-account\" is not a DLQ reason (one of: oversized,",
        ),
        (
            vec!["list", "--since", "yesterday"],
            "--since takes an RFC 3339 time",
        ),
        (
            vec!["replay", "--since", "1h", "--until", "2h"],
            "the time window is empty",
        ),
        (
            vec!["list", "--order-id", "42"],
            "--order-id takes an order id",
        ),
        (vec!["show", "3"], "\"3\" is not a DLQ position"),
        (
            vec!["replay", "--rate", "0"],
            "--rate takes a positive number",
        ),
    ] {
        let (code, _, stderr) = dlq(&kafka, db, &args);
        assert_ne!(code, 0, "{args:?}");
        let line = one_error_line(&stderr);
        assert!(line.contains(says), "{args:?}: {line}");
    }
}
