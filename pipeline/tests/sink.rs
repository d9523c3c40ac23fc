//! The sink against the real broker and PostgreSQL (issue 5: G2, G3, G5): out-of-order and
//! duplicated events, `kill -9` mid-batch, a PostgreSQL restart during a load, a replay of
//! orders.state into an empty database, and no plaintext PIN in pages, dumps or topic
//! bytes.

mod common;

use chrono::Utc;
use common::private_pg::PrivatePostgres;
use common::TestDb;
use orderflow::core::event::{Failure, OrderStateEvent, SCHEMA_VERSION};
use orderflow::core::lifecycle::{supersedes, version, FailureReason, OrderState};
use orderflow::db::orders::OrderRow;
use orderflow::db::DbConfig;
use orderflow::kafka::emit::Emitter;
use orderflow::kafka::stage::StageConfig;
use orderflow::kafka::topics::name;
use orderflow::kafka::KafkaConfig;
use orderflow::pin::PinKeys;
use orderflow::secret::Secret;
use orderflow::shutdown;
use orderflow::sink::SinkConfig;
use rdkafka::message::Message;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

type Running = (shutdown::Trigger, tokio::task::JoinHandle<()>);

fn sink_config(group: &str, batch_rows: usize) -> SinkConfig {
    SinkConfig {
        group: Some(group.into()),
        batch_rows,
        batch_linger_ms: 20,
        stage: StageConfig {
            shutdown_grace_ms: 5_000,
            ..Default::default()
        },
    }
}

fn start_sink(kafka: &KafkaConfig, pool: &PgPool, config: SinkConfig) -> Running {
    common::logs::capture();
    let (trigger, signal) = shutdown::channel();
    let (kafka, pool) = (kafka.clone(), pool.clone());
    let task = tokio::spawn(async move {
        orderflow::sink::run(config, kafka, pool, Default::default(), signal)
            .await
            .expect("the sink");
    });
    (trigger, task)
}

async fn stop((trigger, task): Running) {
    trigger.fire();
    task.await.unwrap();
}

/// A distinctive PIN per order, so scans can look for it.
fn pin_of(order: Uuid) -> String {
    let s = order.simple().to_string().to_uppercase();
    format!("PIN{}-{}-{}", &s[..6], &s[6..12], &s[12..18])
}

/// One order's whole journey as state events, versions in order: dispatching, dispatched,
/// `checks` processing events, then completed (with a sealed PIN) or failed.
fn journey(keys: &PinKeys, order: Uuid, checks: i64, completes: bool) -> Vec<OrderStateEvent> {
    let base = OrderStateEvent {
        schema_version: SCHEMA_VERSION,
        order_id: order,
        tenant_id: "shop-1".into(),
        provider_account: "znet-main".into(),
        // All 128 bits: a shorter reference collides by chance in a few thousand orders.
        provider_reference: Some(format!("9{}", order.as_u128())),
        state: OrderState::Dispatching,
        failure: None,
        pin: None,
        attempts: 0,
        next_check_at: None,
        deadline: Some(Utc::now() + chrono::Duration::hours(24)),
        version: version::DISPATCHING,
        changed_at: Utc::now(),
    };
    let mut events = vec![
        base.clone(),
        OrderStateEvent {
            state: OrderState::Dispatched,
            version: version::DISPATCHED,
            ..base.clone()
        },
    ];
    for n in 1..=checks {
        events.push(OrderStateEvent {
            state: OrderState::Processing,
            attempts: n as i32,
            next_check_at: Some(Utc::now() + chrono::Duration::seconds(30)),
            version: version::PROCESSING_BASE + n,
            ..base.clone()
        });
    }
    let last = version::PROCESSING_BASE + checks + 1;
    events.push(if completes {
        OrderStateEvent {
            state: OrderState::Completed,
            pin: Some(keys.seal(order, &Secret::new(pin_of(order)))),
            attempts: checks as i32 + 1,
            version: last,
            ..base
        }
    } else {
        OrderStateEvent {
            state: OrderState::Failed,
            failure: Some(Failure {
                reason: FailureReason::Cancelled,
                code: None,
                message: "iptal".into(),
            }),
            attempts: checks as i32 + 1,
            version: last,
            ..base
        }
    });
    events
}

/// `orders` journeys, each shuffled with duplicates and ended by its newest state again,
/// interleaved; and what each order's row must end as (state, version). Each order ends on
/// its newest state because that is what compaction keeps: the pipeline's stages end an
/// order that way, and the sink repairs the rare exception (see `sink` and the late event
/// in the first test).
fn workload(
    keys: &PinKeys,
    orders: usize,
    seed: u64,
) -> (Vec<OrderStateEvent>, BTreeMap<Uuid, (String, i64)>) {
    let mut rng = orderflow::core::seeded::Seeded::new(seed);
    let mut queues = Vec::new();
    let mut expected = BTreeMap::new();
    for i in 0..orders {
        let id = Uuid::new_v4();
        let mut j = journey(keys, id, (i % 4) as i64, i % 5 != 0);
        let last = j.last().unwrap().clone();
        expected.insert(id, (last.state.as_str().to_owned(), last.version));
        for _ in 0..2 {
            let copy = j[rng.below(j.len())].clone();
            j.push(copy);
        }
        for k in (1..j.len()).rev() {
            j.swap(k, rng.below(k + 1));
        }
        j.push(last);
        queues.push(std::collections::VecDeque::from(j));
    }
    // A random merge: each order's sequence keeps its order.
    let mut events = Vec::new();
    while !queues.is_empty() {
        let q = rng.below(queues.len());
        events.push(queues[q].pop_front().unwrap());
        if queues[q].is_empty() {
            queues.swap_remove(q);
        }
    }
    (events, expected)
}

async fn publish(kafka: &KafkaConfig, events: &[OrderStateEvent]) {
    let emitter = Emitter::new(kafka).unwrap();
    let sends = events.iter().map(|e| emitter.state(e));
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
}

async fn table(pool: &PgPool) -> BTreeMap<Uuid, (String, i64)> {
    sqlx::query_as::<_, (Uuid, String, i64)>("SELECT order_id, state, version FROM orders")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(id, state, version)| (id, (state, version)))
        .collect()
}

/// Waits until the table holds exactly `expected`, or fails with the difference.
async fn converges(pool: &PgPool, expected: &BTreeMap<Uuid, (String, i64)>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = table(pool).await;
        if &now == expected {
            return;
        }
        if Instant::now() > deadline {
            let wrong: Vec<_> = expected
                .iter()
                .filter(|(id, want)| now.get(id) != Some(want))
                .take(5)
                .map(|(id, want)| (id, want, now.get(id)))
                .collect();
            for line in common::logs::text().lines().filter(|l| {
                l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("batch written")
                    || l.contains("sink running")
                    || l.contains("assigned")
                    || l.contains("librdkafka")
                    || l.contains("stage")
            }) {
                eprintln!("{line}");
            }
            panic!(
                "{} of {} rows differ after {within:?}, e.g. (order, expected, found) {wrong:?}",
                expected
                    .iter()
                    .filter(|(id, w)| now.get(id) != Some(w))
                    .count(),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn keys() -> PinKeys {
    key_line().1
}

fn key_line() -> (String, PinKeys) {
    let line = PinKeys::generate_key_line("sink1");
    let keys = PinKeys::parse(&line).unwrap();
    (line, keys)
}

fn order_show(db: &TestDb, args: &[&str], pin_keys: Option<&str>) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .args(["order", "show"])
        .args(args)
        .env("ORDERFLOW_DATABASE_URL", &db.url)
        .env_remove("ORDERFLOW_PIN_KEYS_FILE")
        .env_remove("ORDERFLOW_PIN_KEYS");
    if let Some(line) = pin_keys {
        command.env("ORDERFLOW_PIN_KEYS", line);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Out-of-order and duplicated events end in the right row, a final row never regresses,
/// and replaying orders.state into an empty database rebuilds the same table.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_events_converge_and_a_replay_rebuilds_the_same_table() {
    let kafka = common::kafka_with_topics("sink-order").await;
    let db = TestDb::new_migrated().await;
    let (line, keys) = key_line();
    let (events, mut expected) = workload(&keys, 300, 7);
    // A final row never regresses: a later, higher-versioned non-final event is ignored.
    let (first, (state, _)) = expected
        .iter()
        .next()
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    let mut late = events.iter().find(|e| e.order_id == first).unwrap().clone();
    late.state = OrderState::Processing;
    late.failure = None;
    late.pin = None;
    late.version = 99;
    let sink = start_sink(
        &kafka,
        &db.pool,
        sink_config(&common::unique("g-sink-"), 100),
    );
    publish(&kafka, &events).await;
    converges(&db.pool, &expected, Duration::from_secs(60)).await;
    publish(&kafka, &[late]).await;
    // The sink answers the late record with a copy of the final state, so the log (what
    // compaction keeps: the last record per order) ends on every order's newest state.
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let mut last: BTreeMap<Uuid, (String, i64)> = BTreeMap::new();
        for m in common::pipeline::read_to_end(&kafka, name::ORDERS_STATE).await {
            let e = common::pipeline::decode_state(&m);
            last.insert(e.order_id, (e.state.as_str().to_owned(), e.version));
        }
        if last[&first].0 == state || Instant::now() > deadline {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        last == expected,
        "the log does not end on each order's newest state"
    );
    assert_eq!(
        table(&db.pool).await[&first].0,
        state,
        "a final row regressed"
    );
    expected.get_mut(&first).unwrap().0 = state;
    stop(sink).await;

    // Every completed row carries its sealed PIN, which opens to the right code.
    let pins: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT order_id, pin_encrypted FROM orders WHERE state = 'completed'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!pins.is_empty());
    for (id, sealed) in &pins {
        let sealed =
            orderflow::pin::SealedPin::parse(std::str::from_utf8(sealed).unwrap()).unwrap();
        assert_eq!(keys.open(*id, &sealed).unwrap().expose(), pin_of(*id));
    }

    // `orderflow order show`: the journey with the PIN masked, shown only with --reveal and
    // the key; an unknown order is one sentence.
    let id = pins[0].0.to_string();
    let (ok, text, _) = order_show(&db, &[&id], None);
    assert!(
        ok && text.contains("completed (shop: approved / done)"),
        "{text}"
    );
    assert!(
        text.contains("sealed with key sink1") && !text.contains(&pin_of(pins[0].0)),
        "{text}"
    );
    let (ok, text, _) = order_show(&db, &[&id, "--reveal"], Some(&line));
    assert!(ok && text.contains(&pin_of(pins[0].0)), "{text}");
    let (ok, _, err) = order_show(&db, &[&id, "--reveal"], None);
    assert!(!ok && err.contains("no PIN key is configured"), "{err}");
    let (ok, _, err) = order_show(&db, &[&Uuid::new_v4().to_string()], None);
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("no order"),
        "{err}"
    );

    // A replay from the beginning into an empty database: the same table.
    let replay = TestDb::new_migrated().await;
    let sink = start_sink(
        &kafka,
        &replay.pool,
        sink_config(&common::unique("g-replay-"), 1000),
    );
    converges(&replay.pool, &expected, Duration::from_secs(60)).await;
    stop(sink).await;
    let rows = |pool: PgPool| async move {
        let rows: Vec<OrderRow> = sqlx::query_as(
            "SELECT order_id, tenant_id, provider_account, provider_reference, state,
                    failure_reason, pin_encrypted, attempts, next_check_at, deadline,
                    last_error, version
               FROM orders ORDER BY order_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let shop: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT order_id, status, external_status FROM orders ORDER BY order_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        (rows, shop)
    };
    let (a, b) = (rows(db.pool.clone()).await, rows(replay.pool.clone()).await);
    assert_eq!(a.0.len(), 300);
    assert!(a == b, "the replayed table differs");
    db.drop_now().await;
    replay.drop_now().await;
}

/// An unreadable or impossible state event goes to the DLQ; the sink carries on.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_state_events_are_dead_lettered() {
    let kafka = common::kafka_with_topics("sink-dlq").await;
    let db = TestDb::new_migrated().await;
    let keys = keys();
    let good = journey(&keys, Uuid::new_v4(), 1, true);
    let mut impossible = journey(&keys, Uuid::new_v4(), 0, true).pop().unwrap();
    impossible.state = OrderState::Processing; // a PIN on a non-completed order
    let impossible_id = impossible.order_id;
    let producer = kafka.producer().unwrap();
    let topic = kafka.topic(name::ORDERS_STATE);
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key("x")
                .payload("{\"schema_version\": 1, \"order_id\": 7}"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    publish(&kafka, &[impossible]).await;
    publish(&kafka, &good).await;
    let sink = start_sink(
        &kafka,
        &db.pool,
        sink_config(&common::unique("g-sink-"), 50),
    );
    let id = good[0].order_id;
    let expected = BTreeMap::from([(id, ("completed".to_owned(), good.last().unwrap().version))]);
    converges(&db.pool, &expected, Duration::from_secs(30)).await;
    let dlq =
        common::pipeline::read_all(&kafka, name::ORDERS_DLQ, 2, Duration::from_secs(20)).await;
    assert_eq!(dlq.len(), 2, "both unusable events are dead-lettered");
    let clear = pin_of(impossible_id);
    for m in &dlq {
        use rdkafka::message::Headers;
        let mut bytes = m.payload().unwrap_or_default().to_vec();
        for h in m.headers().into_iter().flat_map(|h| h.iter()) {
            bytes.extend_from_slice(h.value.unwrap_or_default());
        }
        assert!(
            !contains(&bytes, clear.as_bytes()),
            "a DLQ copy holds a clear PIN"
        );
    }
    stop(sink).await;
    db.drop_now().await;
}

/// `kill -9` of the sink mid-batch, then a restart: every order ends in its right row.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_batch_then_restart_loses_nothing() {
    let kafka = common::kafka_with_topics("sink-kill").await;
    let db = TestDb::new_migrated().await;
    let keys = keys();
    let (events, expected) = workload(&keys, 3000, 11);
    publish(&kafka, &events).await;
    let group = common::unique("g-sink-kill-");
    let logs = std::env::temp_dir().join(common::unique("orderflow-sink-logs-"));
    std::fs::create_dir_all(&logs).unwrap();
    let spawn = |n: u32| {
        let log = std::fs::File::create(logs.join(format!("sink-{n}.log"))).unwrap();
        common::ChildGuard(
            std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
                .arg("sink")
                .env("ORDERFLOW_KAFKA_BROKERS", &kafka.brokers)
                .env("ORDERFLOW_TOPIC_PREFIX", &kafka.topic_prefix)
                .env("ORDERFLOW_DATABASE_URL", &db.url)
                .env("ORDERFLOW_SINK_GROUP", &group)
                .env("ORDERFLOW_SINK_BATCH_ROWS", "200")
                .env("ORDERFLOW_LOG", "info")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting orderflow sink"),
        )
    };
    let mut first = spawn(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while table(&db.pool).await.len() < 500 {
        assert!(
            Instant::now() < deadline,
            "the sink wrote nothing within 60 s"
        );
        assert!(first.try_wait().unwrap().is_none(), "the sink exited early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before = table(&db.pool).await;
    assert!(
        before != expected,
        "the kill came too late to prove anything"
    );
    let mut second = spawn(2);
    converges(&db.pool, &expected, Duration::from_secs(90)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    for n in [1, 2] {
        let text = std::fs::read_to_string(logs.join(format!("sink-{n}.log"))).unwrap();
        assert!(!text.contains("panicked"), "sink {n} panicked:\n{text}");
        assert!(!text.contains("PIN"), "sink {n} logged a PIN");
    }
    std::fs::remove_dir_all(&logs).ok();
    db.drop_now().await;
}

/// PostgreSQL restarted (down for seconds) while the sink writes a load: nothing is lost.
/// Then the raw database files, a dump and the topic's bytes hold no plaintext PIN.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_during_a_load_loses_nothing_and_no_pin_is_in_clear() {
    let kafka = common::kafka_with_topics("sink-pgrestart").await;
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    pg.psql("postgres", "CREATE DATABASE orderflow");
    let pool = DbConfig::for_tests(&pg.url("orderflow"))
        .connect()
        .await
        .unwrap();
    orderflow::db::migrate(&pool).await.unwrap();
    let keys = keys();
    let (events, expected) = workload(&keys, 2000, 13);
    let sink = start_sink(
        &kafka,
        &pool,
        sink_config(&common::unique("g-sink-pg-"), 100),
    );
    let (head, tail) = events.split_at(events.len() / 3);
    publish(&kafka, head).await;
    // Restart while the sink is writing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while table(&pool).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sink wrote nothing within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    publish(&kafka, tail).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    converges(&pool, &expected, Duration::from_secs(90)).await;
    stop(sink).await;

    // G5 at rest: no completed order's PIN appears in the database's files, a dump, or the
    // bytes of the test's orders.state partitions on the broker.
    pg.psql("orderflow", "CHECKPOINT");
    let completed: Vec<Uuid> = expected
        .iter()
        .filter(|(_, (s, _))| s == "completed")
        .map(|(id, _)| *id)
        .collect();
    assert!(completed.len() > 1000);
    let pins: Vec<String> = completed.iter().map(|id| pin_of(*id)).collect();
    let mut haystacks: Vec<(String, Vec<u8>)> = vec![("pg_dump".into(), pg.dump("orderflow"))];
    for file in walk(&pg.dir) {
        haystacks.push((
            file.display().to_string(),
            std::fs::read(&file).unwrap_or_default(),
        ));
    }
    // The topic's records as any client reads them (segments on disk are lz4-compressed,
    // so their bytes would prove nothing): keys, payloads and header values.
    // (Compaction may have left only the latest record of many orders.)
    let records = common::pipeline::read_to_end(&kafka, name::ORDERS_STATE).await;
    assert!(records.len() >= expected.len(), "{} records", records.len());
    let mut topic_bytes = Vec::new();
    for r in &records {
        use rdkafka::message::Headers;
        topic_bytes.extend_from_slice(r.key().unwrap_or_default());
        topic_bytes.extend_from_slice(r.payload().unwrap_or_default());
        if let Some(headers) = r.headers() {
            for h in headers.iter() {
                topic_bytes.extend_from_slice(h.value.unwrap_or_default());
            }
        }
    }
    haystacks.push(("orders.state records".into(), topic_bytes));
    let pins: std::collections::HashSet<&[u8]> = pins.iter().map(|p| p.as_bytes()).collect();
    let len = pin_of(Uuid::nil()).len();
    for (place, bytes) in &haystacks {
        // Every PIN starts with "PIN" and has one length: look at each "PIN" once.
        let found = bytes
            .windows(len)
            .filter(|w| w.starts_with(b"PIN"))
            .any(|w| pins.contains(w));
        assert!(!found, "a PIN in clear in {place}");
    }
    // The scan can see clear text: a completed order's reference (a plain column) is in
    // the raw table files, and its id in the topic's records.
    let reference: String =
        sqlx::query_scalar("SELECT provider_reference FROM orders WHERE order_id = $1")
            .bind(completed[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    let heap = pg.dir.join(
        pg.psql("orderflow", "SELECT pg_relation_filepath('orders')")
            .trim(),
    );
    let heap = haystacks
        .iter()
        .find(|(place, _)| std::path::Path::new(place) == heap)
        .expect("the orders table's file among the scanned ones");
    assert!(
        contains(&heap.1, reference.as_bytes()),
        "the raw file scan sees no clear text"
    );
    assert!(contains(
        &haystacks.last().unwrap().1,
        completed[0].to_string().as_bytes()
    ));
    pool.close().await;
    drop(pg);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Scaled-down `min.compaction.lag.ms` of the compaction test: the sink's outage there
/// (`OUTAGE`) is shorter, as a real sink's outage must be shorter than the spec's lag.
const TEST_COMPACTION_LAG: Duration = Duration::from_secs(20);
const OUTAGE: Duration = Duration::from_secs(8);

/// Issue 15 item 5: a late, older state produced after an order's final one never becomes
/// what compaction leaves. orders.state is created with the spec's settings but cleaning
/// fast (segments roll every 500 ms, any dirt is cleaned, the lag scaled down); the sink is
/// down for a while after both records land, then reads them, writes the final row and
/// publishes its copy; once the cleaner went over it all, a fresh consumer reading from the
/// beginning finds the order's final state as its only record.
///
/// Without the lag (`min.compaction.lag.ms = 0`, the old setting) the cleaner drops the
/// final record during the outage, because a later record of the order (the late one) is
/// in a cleanable segment: the sink then never sees the final state, writes the late one,
/// and the topic ends on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_stale_record_never_outlives_the_final_state_in_the_compacted_topic() {
    let kafka = common::kafka("sink-compact");
    let mut specs = common::test_specs();
    let lag = TEST_COMPACTION_LAG.as_millis().to_string();
    for t in &mut specs.topics {
        if t.name == name::ORDERS_STATE {
            // One partition, so that the filler records roll the order's segments.
            t.partitions = 1;
            for (key, value) in [
                ("segment.ms", "500"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("min.compaction.lag.ms", lag.as_str()),
                ("delete.retention.ms", "1000"),
                ("file.delete.delay.ms", "1000"),
            ] {
                t.config.insert(key.into(), value.into());
            }
        }
    }
    let report = orderflow::kafka::topics::apply(&kafka, &specs)
        .await
        .expect("applying the topics");
    assert!(report.is_clean(), "{report:?}");
    let db = TestDb::new_migrated().await;
    let keys = keys();
    let order = Uuid::new_v4();
    let events = journey(&keys, order, 2, true);
    let final_state = events.last().unwrap().clone();
    let late = events[2].clone(); // processing, an older version
    assert!(!late.state.is_final() && late.version < final_state.version);
    publish(&kafka, &events).await;
    publish(&kafka, &[late]).await;

    // Other orders keep the partition busy, so segments roll and become cleanable.
    let filling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let filler = {
        let (kafka, keys, filling) = (kafka.clone(), keys.clone(), filling.clone());
        tokio::spawn(async move {
            while filling.load(std::sync::atomic::Ordering::Relaxed) {
                let other = journey(&keys, Uuid::new_v4(), 0, true).pop().unwrap();
                publish(&kafka, &[other]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // The sink is down meanwhile (shorter than the lag, as in production).
    tokio::time::sleep(OUTAGE).await;
    let sink = start_sink(
        &kafka,
        &db.pool,
        sink_config(&common::unique("g-sink-compact-"), 100),
    );

    // Wait until the cleaner has gone over the copy: the order has one record left.
    let deadline = Instant::now() + TEST_COMPACTION_LAG + Duration::from_secs(60);
    let records = loop {
        let records: Vec<OrderStateEvent> =
            common::pipeline::read_to_end(&kafka, name::ORDERS_STATE)
                .await
                .iter()
                .map(common::pipeline::decode_state)
                .filter(|e| e.order_id == order)
                .collect();
        if records.len() == 1 || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    filling.store(false, std::sync::atomic::Ordering::Relaxed);
    filler.await.unwrap();
    let kept: Vec<(OrderState, i64)> = records.iter().map(|e| (e.state, e.version)).collect();
    assert_eq!(
        kept.last(),
        Some(&(OrderState::Completed, final_state.version)),
        "a fresh consumer of orders.state does not end on the final state; \
         the order's records left by compaction: {kept:?}"
    );
    assert_eq!(
        kept.len(),
        1,
        "compaction did not run within the test's time: {kept:?}"
    );
    assert_eq!(
        table(&db.pool).await.get(&order),
        Some(&("completed".to_owned(), final_state.version)),
        "the sink did not write the final state"
    );
    stop(sink).await;
    db.drop_now().await;
}

/// The spec's orders.state settings behind the test above: a lag long enough for a sink
/// outage, measured with the broker's clock.
#[test]
fn the_state_topic_gives_the_sink_days_to_repair() {
    let specs = orderflow::kafka::topics::TopicSpecs::load(None).unwrap();
    let state = specs
        .topics
        .iter()
        .find(|t| t.name == name::ORDERS_STATE)
        .unwrap();
    let lag: u64 = state.config["min.compaction.lag.ms"].parse().unwrap();
    assert!(lag >= 24 * 3600 * 1000, "{lag}");
    assert_eq!(state.config["message.timestamp.type"], "LogAppendTime");
}

#[test]
fn the_expected_rows_follow_the_supersedes_rule() {
    // The workload's expectation (the journey's last event) is what the rule picks.
    let keys = keys();
    let events = journey(&keys, Uuid::new_v4(), 3, true);
    let best = events
        .iter()
        .map(|e| (e.version, e.state))
        .reduce(|a, b| if supersedes(b, a) { b } else { a })
        .unwrap();
    assert_eq!(
        best,
        (events.last().unwrap().version, OrderState::Completed)
    );
}

/// Issue 15 item 3: a state event holding what the table cannot take is refused at
/// decoding (a reference too long for the btree index, a time PostgreSQL cannot hold), a
/// row the database refuses anyway (here a rule of the test's own) is dead-lettered as
/// `database_refused` with its SQLSTATE, the batch's other rows are written, and the
/// group's committed offset moves past them within seconds.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_state_events_are_dead_lettered_and_the_group_moves_past_them() {
    let kafka = common::kafka_with_topics("sink-poison").await;
    let db = TestDb::new_migrated().await;
    sqlx::query(
        "ALTER TABLE orders ADD CONSTRAINT test_refused_tenant
           CHECK (tenant_id <> 'refused-by-db')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let keys = keys();
    let dispatched = |id: Uuid| journey(&keys, id, 0, true)[1].clone();
    let mut long_reference = dispatched(Uuid::new_v4());
    // Hex of distinct UUIDs: too long for an index entry even compressed.
    long_reference.provider_reference = Some(
        (0..200)
            .map(|_| Uuid::new_v4().simple().to_string())
            .collect(),
    );
    let mut ancient = dispatched(Uuid::new_v4());
    let mut ancient_json = serde_json::to_value(&ancient).unwrap();
    ancient_json["deadline"] = serde_json::json!("-5000-01-01T00:00:00Z");
    ancient.tenant_id = "unused".into();
    let mut refused = dispatched(Uuid::new_v4());
    refused.tenant_id = "refused-by-db".into();
    let good = journey(&keys, Uuid::new_v4(), 1, true);

    publish(&kafka, &[long_reference.clone(), refused.clone()]).await;
    let producer = kafka.producer().unwrap();
    let ancient_key = ancient.order_id.to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&kafka.topic(name::ORDERS_STATE))
                .key(&ancient_key)
                .payload(&serde_json::to_vec(&ancient_json).unwrap()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    publish(&kafka, &good).await;
    let group = common::unique("g-sink-");
    let sink = start_sink(&kafka, &db.pool, sink_config(&group, 50));
    let id = good[0].order_id;
    let expected = BTreeMap::from([(id, ("completed".to_owned(), good.last().unwrap().version))]);
    converges(&db.pool, &expected, Duration::from_secs(30)).await;
    let dlq =
        common::pipeline::read_all(&kafka, name::ORDERS_DLQ, 3, Duration::from_secs(20)).await;
    assert_eq!(dlq.len(), 3, "each hostile event is dead-lettered once");
    use orderflow::kafka::headers;
    let header = |id: Uuid, name: &str| {
        let m = dlq
            .iter()
            .find(|m| m.key() == Some(id.to_string().as_bytes()))
            .unwrap_or_else(|| panic!("{id} not in the DLQ"));
        headers::get(m.headers().unwrap(), name).map(str::to_owned)
    };
    assert_eq!(
        header(long_reference.order_id, headers::DLQ_REASON).as_deref(),
        Some("invalid_field")
    );
    assert_eq!(
        header(ancient.order_id, headers::DLQ_REASON).as_deref(),
        Some("invalid_field")
    );
    assert_eq!(
        header(refused.order_id, headers::DLQ_REASON).as_deref(),
        Some("database_refused")
    );
    assert_eq!(
        header(refused.order_id, headers::DLQ_SQLSTATE).as_deref(),
        Some("23514")
    );
    common::pipeline::assert_committed_to_end(
        &kafka,
        &group,
        name::ORDERS_STATE,
        Duration::from_secs(10),
    )
    .await;
    stop(sink).await;
    db.drop_now().await;
}
