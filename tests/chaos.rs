//! The reliability suite (issue 8): the whole pipeline under load while it is attacked,
//! then checked against G1–G9 with figures that are counted, never assumed.
//!
//! One test, `chaos_under_load_keeps_every_guarantee`, runs on a broker and a PostgreSQL
//! server of its own (so it may restart them without touching other tests): two dispatch
//! and two poll processes, the sink and the reconciler as `orderflow` child processes, and
//! the znet simulator in this process. While valid orders flow in it
//! - SIGKILLs every stage again and again (round robin) and starts it again;
//! - restarts the broker once and PostgreSQL once;
//! - makes the provider fail in waves, one kind at a time (5xx, timeouts, HTML, empty
//!   bodies, garbage, slow answers, answers lost after the order was accepted);
//! - sends hostile events to orders.created (malformed JSON, wrong types, a huge payload,
//!   bad and nil UUIDs, NUL bytes, deep nesting, unknown accounts, an unsupported
//!   version, a key that is not the order id, an unknown product, the same order id under
//!   another account, and with other content), plus exact re-sends of valid orders.
//!
//! Then it checks: every valid order is final in PostgreSQL and matches the simulator's
//! truth (PIN, cancellation, rejection); nothing was bought twice (the simulator's
//! purchases per reference); nothing was lost; orders.dlq holds exactly the hostile
//! events, each with its expected reason; no final state regressed (the whole orders.state
//! log per order against the lifecycle rule, and the table watched during the run); no PIN
//! or credential appears in any stage's log, any scraped /metrics page, the exported
//! traces, the DLQ's records, orders.state or a pg_dump. It prints a table of figures and
//! writes it to `$ORDERFLOW_STATE_DIR/chaos/figures.txt` (default /var/lib/orderflow).
//!
//! Size: `ORDERFLOW_CHAOS_ORDERS` valid orders (default 240, about 2–3 minutes on two cores),
//! published at `ORDERFLOW_CHAOS_RATE` per second (default: spread over about 40 s);
//! `ORDERFLOW_CHAOS_KILLS` sets the kills per stage (default 2). `ops/chaos.sh` runs the
//! larger size: 20000 orders at 200/s, 3 kills per stage (about 11 minutes; `--orders`,
//! `--rate`, `--kills` change it). See docs/reliability.md.

mod common;

use chrono::Utc;
use common::pipeline::{order, read_to_end, ACCOUNT, KOD, OTHER_ACCOUNT, SIFRE};
use common::private_pg::PrivatePostgres;
use common::ChildGuard;
use orderflow::core::event::{OrderCreated, OrderStateEvent};
use orderflow::core::lifecycle::{supersedes, OrderState};
use orderflow::db::DbConfig;
use orderflow::kafka::headers;
use orderflow::kafka::topics::{self, name, TopicSpec, TopicSpecs};
use orderflow::kafka::KafkaConfig;
use orderflow::pin::{PinKeys, SealedPin};
use orderflow::testbed::sim::{Fault, FaultWave, Sim, SimConfig, SimStats};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The check schedule, scaled down: first check 1 s after dispatch, then 1 s, 2 s, 2 s, …
const FIRST_CHECK: &str = "1s";
const TIERS: &str = "1s,2s";
/// The fault kinds of the waves, in order; each wave lasts `WAVE` at `WAVE_RATE`.
const WAVES: [Fault; 10] = [
    Fault::ServerError,
    Fault::LostAnswer,
    Fault::Timeout,
    Fault::Html,
    Fault::EmptyBody,
    Fault::Garbage,
    Fault::Slow,
    Fault::Forbidden,
    Fault::UriTooLong,
    Fault::UnknownCode,
];
/// The provider shows a new order only this long after taking it; the accounts wait
/// `VISIBILITY_WINDOW_MS` of "not found" before placing an unclear order again.
const VISIBILITY_LAG: Duration = Duration::from_millis(1500);
const VISIBILITY_WINDOW_MS: u64 = 3000;
/// An account whose password is wrong (the provider answers code 8 to every call), beside
/// the healthy ones: its orders must wait without holding the others up, never be bought,
/// and fail at their deadline.
const BROKEN_ACCOUNT: &str = "znet-broken";
const BROKEN_ORDERS: usize = 12;
/// The broken account's orders' deadline, after the start of the load.
const BROKEN_DEADLINE: Duration = Duration::from_secs(45);
const WAVE_RATE: f64 = 0.3;
/// A wave ends once the simulator counted this many faults of its kind (or after
/// `WAVE_MAX_TICKS` ticks).
const WAVE_MIN: u64 = 5;
const WAVE_MAX_TICKS: usize = 10;
/// One chaos step: a kill and restart of the next stage, the next fault wave.
const TICK: Duration = Duration::from_millis(2500);

/// Calls that reached the simulator so far: placements and checks, faulted ones included.
fn provider_calls(stats: &SimStats) -> u64 {
    stats
        .place_requests
        .values()
        .map(|&n| u64::from(n))
        .sum::<u64>()
        + stats.checks
        + stats.faults_injected
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn state_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("ORDERFLOW_STATE_DIR").unwrap_or_else(|_| "/var/lib/orderflow".into()),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ----- a broker of the test's own ---------------------------------------------------------

/// A Kafka broker started by ops/kafka/broker.sh in a directory and on ports of its own, so
/// the test can restart it; stopped and removed on drop, the test failing included. Its log
/// cleaner is off, so orders.state keeps every record for the regression check.
struct PrivateBroker {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
}

impl PrivateBroker {
    fn start(dir: PathBuf) -> PrivateBroker {
        // The jars of the shared broker, if there, spare a Maven run.
        let shared = state_dir().join("kafka/lib");
        std::fs::create_dir_all(dir.join("kafka")).unwrap();
        if shared.join(".pom.sha256").exists() {
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&shared)
                .arg(dir.join("kafka/lib"))
                .status()
                .unwrap();
            assert!(copied.success(), "copying the broker's jars");
        }
        let broker = PrivateBroker {
            dir,
            port: free_port(),
            controller_port: free_port(),
        };
        broker.script("start");
        broker
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, action: &str) {
        let out = Command::new("bash")
            .arg(repo().join("ops/kafka/broker.sh"))
            .arg(action)
            .env("ORDERFLOW_STATE_DIR", &self.dir)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_EXTRA_PROPERTIES", "log.cleaner.enable=false")
            .env("KAFKA_START_TIMEOUT", "120")
            .env_remove("KAFKA_FRESH")
            .output()
            .expect("running ops/kafka/broker.sh");
        assert!(
            out.status.success(),
            "broker.sh {action} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("ops/kafka/broker.sh"))
            .arg("stop")
            .env("ORDERFLOW_STATE_DIR", &self.dir)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .output();
        // A failed run keeps the broker's logs and data, to tell a record that never
        // reached the log from one a consumer skipped.
        if std::thread::panicking() {
            eprintln!(
                "chaos: the private broker's data and log are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ----- the stages -------------------------------------------------------------------------

/// One `orderflow` process of the pipeline: every incarnation appends to one log file and
/// serves /metrics on one port.
struct Stage {
    name: String,
    command: &'static str,
    env: Vec<(String, String)>,
    metrics_port: u16,
    log: PathBuf,
    child: Option<ChildGuard>,
    kills: u32,
    /// Incarnations that ended by themselves (say, started while the broker was down).
    exits: u32,
}

impl Stage {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg(self.command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "ORDERFLOW_METRICS_LISTEN",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting orderflow");
        self.child = Some(ChildGuard(child));
    }

    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                self.kills += 1;
            } else {
                self.exits += 1;
            }
            child.wait().unwrap();
        }
    }

    /// Starts again an incarnation that ended by itself.
    fn supervise(&mut self) {
        let ended = match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_some(),
            None => false,
        };
        if ended {
            self.exits += 1;
            self.spawn();
        }
    }

    /// SIGTERM, so traces are flushed; SIGKILL after 20 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

type Stages = Arc<Mutex<Vec<Stage>>>;

/// An order's row: id, state, failure reason, reference, sealed PIN, last error, version.
type Row = (
    Uuid,
    String,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    i64,
);

// ----- hostile input ----------------------------------------------------------------------

/// An event that must end in orders.dlq with `reason`.
#[derive(Clone)]
struct Hostile {
    what: &'static str,
    key: Option<String>,
    payload: Vec<u8>,
    reason: &'static str,
}

/// One round of hostile events; `n` makes their keys unique.
fn hostile_round(n: usize) -> Vec<Hostile> {
    let valid = serde_json::to_value(order("50")).unwrap();
    let with = |path: &str, value: serde_json::Value| {
        let mut v = valid.clone();
        *v.pointer_mut(path).unwrap() = value;
        serde_json::to_vec(&v).unwrap()
    };
    let mut huge = valid.clone();
    huge["user_extra"] = serde_json::Value::String("x".repeat(200_000));
    let deep = format!("{}1{}", "[".repeat(3000), "]".repeat(3000));
    let mut deep_event = serde_json::to_string(&valid).unwrap();
    deep_event.insert_str(1, &format!("\"nested\":{deep},"));
    let key = |what: &str| Some(format!("hostile-{n}-{what}"));
    let h = |what: &'static str, payload: Vec<u8>, reason: &'static str| Hostile {
        what,
        key: key(what),
        payload,
        reason,
    };
    vec![
        h(
            "malformed",
            b"{\"order_id\": \"6f1d".to_vec(),
            "unreadable_json",
        ),
        h(
            "not-utf8",
            vec![0xff, 0xfe, 0x7b, 0x00, 0xc3, 0x28],
            "unreadable_json",
        ),
        h(
            "raw-nul-bytes",
            b"{\"order_id\":\0\0\0}".to_vec(),
            "unreadable_json",
        ),
        h(
            "nul-in-a-field",
            with("/tenant_id", serde_json::json!("shop\u{0}1")),
            "invalid_field",
        ),
        h(
            "wrong-type",
            with("/tenant_id", serde_json::json!(42)),
            "invalid_field",
        ),
        h(
            "product-wrong-type",
            with("/product", serde_json::json!({"oyun": 412, "kupur": [50]})),
            "invalid_field",
        ),
        h(
            "bad-uuid",
            with("/order_id", serde_json::json!("6f1d2c3e-zzzz")),
            "invalid_field",
        ),
        h(
            "nil-uuid",
            with("/order_id", serde_json::json!(Uuid::nil())),
            "invalid_field",
        ),
        h("huge", serde_json::to_vec(&huge).unwrap(), "oversized"),
        h("deep-nesting", deep_event.into_bytes(), "unreadable_json"),
        h(
            "unknown-account",
            with("/provider_account", serde_json::json!("znet-nobody")),
            "unknown_provider_account",
        ),
        h(
            "unsupported-version",
            with("/schema_version", serde_json::json!(2)),
            "unsupported_version",
        ),
        h("not-an-object", b"[1,2,3]".to_vec(), "invalid_field"),
        h("empty", Vec::new(), "unreadable_json"),
        h(
            "unknown-product",
            with("/product", serde_json::json!({"oyun": "412"})),
            "invalid_product",
        ),
        // A valid event under a key that is not its order id.
        h(
            "key-is-not-the-order-id",
            serde_json::to_vec(&valid).unwrap(),
            "invalid_field",
        ),
    ]
}

/// The same order id as `original`, under another account or with other content.
fn conflicts_of(original: &OrderCreated) -> Vec<Hostile> {
    let key = Some(original.order_id.to_string());
    let mut elsewhere = original.clone();
    elsewhere.provider_account = OTHER_ACCOUNT.into();
    let mut other = original.clone();
    let kupur = if original.product["kupur"] == "25" {
        "100"
    } else {
        "25"
    };
    other.product.insert("kupur".into(), kupur.into());
    vec![
        Hostile {
            what: "same-id-other-account",
            key: key.clone(),
            payload: elsewhere.encode(),
            reason: "account_conflict",
        },
        Hostile {
            what: "same-id-other-content",
            key,
            payload: other.encode(),
            reason: "conflicting_duplicate",
        },
    ]
}

// ----- publishing -------------------------------------------------------------------------

#[derive(Default)]
struct Published {
    valid: usize,
    exact_resends: usize,
    hostile: usize,
    /// Sends the broker refused or timed out, retried.
    retries: usize,
}

/// Sends one record, again and again until the broker has it (within 5 minutes).
async fn send(
    producer: &rdkafka::producer::FutureProducer<orderflow::kafka::Context>,
    topic: &str,
    key: Option<&str>,
    payload: &[u8],
    retries: &Mutex<usize>,
) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        match producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err((e, _)) => {
                assert!(
                    Instant::now() < deadline,
                    "publishing failed for 5 min: {e}"
                );
                *retries.lock().unwrap() += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

enum Item {
    Valid(OrderCreated),
    Resend(OrderCreated),
    Hostile(Hostile),
}

/// Publishes `items` at `rate` per second, up to 256 in flight.
async fn publish_all(kafka: &KafkaConfig, items: Vec<Item>, rate: f64) -> Published {
    use futures::StreamExt;
    let producer = kafka.producer().unwrap();
    let topic = kafka.topic(name::ORDERS_CREATED);
    let retries = Mutex::new(0);
    let start = tokio::time::Instant::now();
    let mut published = Published::default();
    for item in &items {
        match item {
            Item::Valid(_) => published.valid += 1,
            Item::Resend(_) => published.exact_resends += 1,
            Item::Hostile(_) => published.hostile += 1,
        }
    }
    futures::stream::iter(items.into_iter().enumerate())
        .map(|(i, item)| {
            let (producer, topic, retries) = (&producer, &topic, &retries);
            async move {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                match &item {
                    Item::Valid(o) | Item::Resend(o) => {
                        send(
                            producer,
                            topic,
                            Some(&o.order_id.to_string()),
                            &o.encode(),
                            retries,
                        )
                        .await
                    }
                    Item::Hostile(h) => {
                        send(producer, topic, h.key.as_deref(), &h.payload, retries).await
                    }
                }
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
    published.retries = *retries.lock().unwrap();
    published
}

// ----- watching the table -----------------------------------------------------------------

/// Reads the final rows every second and counts any that changed afterwards (G3), and
/// returns when `stop` is set.
async fn watch_final_rows(pool: PgPool, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<String> {
    let mut seen: HashMap<Uuid, (String, i64)> = HashMap::new();
    let mut regressions = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let rows: Result<Vec<(Uuid, String, i64)>, _> =
            sqlx::query_as("SELECT order_id, state, version FROM orders")
                .fetch_all(&pool)
                .await;
        if let Ok(rows) = rows {
            let now: HashMap<Uuid, (String, i64)> =
                rows.into_iter().map(|(id, s, v)| (id, (s, v))).collect();
            for (id, before) in &seen {
                if now.get(id) != Some(before) {
                    regressions.push(format!(
                        "order {id}: final row {before:?} became {:?}",
                        now.get(id)
                    ));
                }
            }
            seen = now
                .into_iter()
                .filter(|(_, (s, _))| s == "completed" || s == "failed")
                .collect();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    regressions
}

// ----- secret scanning --------------------------------------------------------------------

/// Finds any of `pins` (all of one length) or of `words` in `bytes`; returns what it found,
/// by kind, never the value.
/// The simulator's PINs are `XXXX-XXXX-XXXX-XXXX`: only windows with dashes there are
/// looked up.
fn find_secrets(
    bytes: &[u8],
    pins: &HashSet<Vec<u8>>,
    pin_len: usize,
    words: &[&[u8]],
) -> Vec<&'static str> {
    let mut found = Vec::new();
    let dashed = |w: &[u8]| w[4] == b'-' && w[9] == b'-' && w[14] == b'-';
    if bytes.len() >= pin_len
        && bytes
            .windows(pin_len)
            .any(|w| dashed(w) && pins.contains(w))
    {
        found.push("a PIN");
    }
    if words.iter().any(|word| contains(bytes, word)) {
        found.push("a provider credential");
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|&b| b == needle[0]) {
        if haystack[from + at..].starts_with(needle) {
            return true;
        }
        from += at + 1;
    }
    false
}

fn record_bytes(m: &OwnedMessage) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(m.key().unwrap_or_default());
    bytes.push(b'\n');
    bytes.extend_from_slice(m.payload().unwrap_or_default());
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            bytes.push(b'\n');
            bytes.extend_from_slice(h.key.as_bytes());
            bytes.extend_from_slice(h.value.unwrap_or_default());
        }
    }
    bytes
}

// ----- the lifecycle check ----------------------------------------------------------------

/// What is wrong with one order's orders.state log (in log order) and its row, by the
/// lifecycle rule: final events that disagree, a log that does not end on the final state,
/// a row that is not what the rule picks, states out of lifecycle order by version.
fn lifecycle_problems(events: &[OrderStateEvent], row: Option<&(String, i64)>) -> Vec<String> {
    let mut problems = Vec::new();
    let finals: Vec<&OrderStateEvent> = events.iter().filter(|e| e.state.is_final()).collect();
    if let Some(first) = finals.first() {
        let reason = |e: &OrderStateEvent| e.failure.as_ref().map(|f| f.reason);
        if finals
            .iter()
            .any(|e| e.state != first.state || reason(e) != reason(first))
        {
            problems.push("final events disagree".to_owned());
        }
    }
    let best =
        events
            .iter()
            .map(|e| (e.version, e.state))
            .reduce(|a, b| if supersedes(b, a) { b } else { a });
    if let (Some(best), Some(last)) = (best, events.last()) {
        if best.1.is_final() && (last.version, last.state) != best {
            problems.push(format!(
                "the log ends on {:?}, not on its final state {best:?}",
                (last.version, last.state)
            ));
        }
        if let Some((state, version)) = row {
            if (state.as_str(), *version) != (best.1.as_str(), best.0) {
                problems.push(format!("the row holds {state}/{version}, the log {best:?}"));
            }
        }
    }
    let mut by_version: Vec<(i64, bool, OrderState)> = events
        .iter()
        .map(|e| (e.version, e.state.is_final(), e.state))
        .collect();
    by_version.sort_by_key(|(v, f, _)| (*v, *f));
    for w in by_version.windows(2) {
        let (from, to) = (w[0].2, w[1].2);
        if from != to && !from.may_become(to) {
            problems.push(format!(
                "{from} at version {} then {to} at version {}",
                w[0].0, w[1].0
            ));
        }
    }
    problems
}

// ----- the test ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_under_load_keeps_every_guarantee() {
    let orders_n: usize = env_or("ORDERFLOW_CHAOS_ORDERS", 240);
    // By default the load is spread over about 40 s, so the chaos hits orders in flight.
    let rate: f64 = env_or("ORDERFLOW_CHAOS_RATE", (orders_n as f64 / 40.0).max(5.0));
    let kills_per_stage: u32 = env_or("ORDERFLOW_CHAOS_KILLS", 2);
    let started = Instant::now();
    let run_dir = state_dir().join("chaos");
    std::fs::create_dir_all(&run_dir).unwrap();
    let work = std::env::temp_dir().join(common::unique("orderflow-chaos-"));
    std::fs::create_dir_all(&work).unwrap();
    let say = |what: &str| eprintln!("chaos [{:>5.1} s] {what}", started.elapsed().as_secs_f64());

    // The broker and the database of the test's own.
    let broker_dir = work.join("broker");
    let broker = tokio::task::spawn_blocking(move || PrivateBroker::start(broker_dir))
        .await
        .unwrap();
    let broker = Arc::new(broker);
    say(&format!("private broker on {}", broker.brokers()));
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    pg.psql("postgres", "CREATE DATABASE orderflow");
    let db_url = pg.url("orderflow");
    let pool = DbConfig::for_tests(&db_url).connect().await.unwrap();
    orderflow::db::migrate(&pool).await.unwrap();
    let pg = Arc::new(pg);
    say(&format!("private PostgreSQL on port {}", pg.port));

    let kafka =
        KafkaConfig::for_tests(&broker.brokers(), &format!("{}.", common::unique("chaos-")));
    let mut specs = TopicSpecs::load(None).unwrap();
    let template = specs
        .topics
        .iter()
        .find(|t| t.name.starts_with("orders.status-check."))
        .unwrap()
        .clone();
    specs.topics.extend(TIERS.split(',').map(|label| TopicSpec {
        name: name::status_check(label),
        ..template.clone()
    }));
    specs.topics.retain(|t| {
        !t.name.starts_with("orders.status-check.")
            || TIERS.split(',').any(|l| t.name == name::status_check(l))
    });
    let report = topics::apply(&kafka, &specs).await.unwrap();
    assert!(report.is_clean(), "{report:?}");

    // The provider: 3 % rejected, 3 % cancelled, one "processing" answer before the end;
    // faults only in waves. A lost or timed-out answer hangs 1.5 s, the client gives up
    // after 1 s; a slow answer takes 0.75 s.
    let sim = Sim::new(SimConfig {
        kod: KOD.into(),
        sifre: SIFRE.into(),
        latency: Duration::from_millis(10),
        checks_until_complete: 1,
        rejection_rate: 0.03,
        cancel_rate: 0.03,
        lost_answer_delay: Duration::from_millis(1500),
        visibility_lag: VISIBILITY_LAG,
        seed: 8,
        initial_balance_kurus: 1_000_000_000_000,
        ..SimConfig::default()
    });
    let (_sim_stop, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim_handle = sim
        .clone()
        .serve("127.0.0.1:0".parse().unwrap(), async move {
            let _ = sim_stopped.await;
        })
        .await
        .unwrap();
    let sim_url = format!("http://{}", sim_handle.addr);
    let accounts_file = work.join("accounts.toml");
    let account = |id: &str, sifre: &str| {
        format!(
            "[[account]]\nid = \"{id}\"\nprovider = \"znet\"\nbase_url = \"{sim_url}\"\n\
             kod = \"{KOD}\"\nsifre = \"{sifre}\"\nmax_concurrent = 8\nmax_per_second = 200\n\
             request_timeout_ms = 1000\nbreaker_failures = 5\nbreaker_open_ms = 1000\n\
             visibility_window_ms = {VISIBILITY_WINDOW_MS}\n"
        )
    };
    std::fs::write(
        &accounts_file,
        account(ACCOUNT, SIFRE)
            + &account(OTHER_ACCOUNT, SIFRE)
            + &account(BROKEN_ACCOUNT, "yanlis-sifre"),
    )
    .unwrap();
    let key_line = PinKeys::generate_key_line("chaos1");
    let keys = PinKeys::parse(&key_line).unwrap();
    let keys_file = work.join("pin-keys");
    std::fs::write(&keys_file, &key_line).unwrap();

    // An OTLP/HTTP receiver that keeps every export.
    let traces: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let store = Arc::clone(&traces);
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    // The stages.
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let env: Vec<(String, String)> = [
        ("ORDERFLOW_KAFKA_BROKERS", kafka.brokers.clone()),
        ("ORDERFLOW_TOPIC_PREFIX", kafka.topic_prefix.clone()),
        ("ORDERFLOW_DATABASE_URL", db_url.clone()),
        ("ORDERFLOW_PROVIDER_ACCOUNTS", accounts_file.display().to_string()),
        ("ORDERFLOW_PIN_KEYS_FILE", keys_file.display().to_string()),
        ("ORDERFLOW_DISPATCH_GROUP", common::unique("g-chaos-dispatch-")),
        ("ORDERFLOW_POLL_GROUP", common::unique("g-chaos-poll-")),
        ("ORDERFLOW_SINK_GROUP", common::unique("g-chaos-sink-")),
        ("ORDERFLOW_DISPATCH_RETRY_MIN_MS", "200".into()),
        ("ORDERFLOW_DISPATCH_RETRY_MAX_MS", "2000".into()),
        // Orders parked during a provider wave come back within seconds of its end.
        ("ORDERFLOW_DISPATCH_PARK_MIN_MS", "500".into()),
        ("ORDERFLOW_DISPATCH_PARK_MAX_MS", "5000".into()),
        ("ORDERFLOW_FIRST_CHECK", FIRST_CHECK.into()),
        ("ORDERFLOW_CHECK_TIERS", TIERS.into()),
        ("ORDERFLOW_RECONCILE_EVERY", "2s".into()),
        ("ORDERFLOW_RECONCILE_GRACE", "10s".into()),
        ("ORDERFLOW_RECONCILE_LOOKBACK", "1h".into()),
        ("ORDERFLOW_SHUTDOWN_GRACE_MS", "3000".into()),
        ("ORDERFLOW_DATABASE_MAX_CONNECTIONS", "4".into()),
        (
            "ORDERFLOW_LOG",
            "debug,librdkafka=info,rdkafka=info,sqlx=warn,h2=info,hyper=info,hyper_util=info,reqwest=info,tower=info"
                .into(),
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "500".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let stages: Stages = Arc::new(Mutex::new(
        [
            // Round-robin kills: no group loses two members in a row.
            ("dispatch-1", "dispatch"),
            ("poll-1", "poll"),
            ("sink", "sink"),
            ("dispatch-2", "dispatch"),
            ("poll-2", "poll"),
            ("reconcile", "reconcile"),
        ]
        .into_iter()
        .map(|(name, command)| Stage {
            name: name.into(),
            command,
            env: env.clone(),
            metrics_port: free_port(),
            log: logs.join(format!("{name}.log")),
            child: None,
            kills: 0,
            exits: 0,
        })
        .collect(),
    ));
    for stage in stages.lock().unwrap().iter_mut() {
        stage.spawn();
    }
    say("six stages started");

    // Background: restart stages that ended by themselves; scrape /metrics; watch rows.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let supervisor = {
        let (stages, stop) = (Arc::clone(&stages), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for stage in stages.lock().unwrap().iter_mut() {
                    stage.supervise();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let scrapes: Arc<Mutex<Vec<String>>> = Arc::default();
    let scraper = {
        let (stages, stop, scrapes) =
            (Arc::clone(&stages), Arc::clone(&stop), Arc::clone(&scrapes));
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ports: Vec<u16> = stages
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.child.is_some())
                    .map(|s| s.metrics_port)
                    .collect();
                for port in ports {
                    let url = format!("http://127.0.0.1:{port}/metrics");
                    if let Ok(resp) = client.get(&url).send().await {
                        if let Ok(body) = resp.text().await {
                            scrapes.lock().unwrap().push(body);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let watcher = tokio::spawn(watch_final_rows(pool.clone(), Arc::clone(&stop)));

    // The load: valid orders, every 20th sent twice, a round of hostile events per 80; the
    // broken account's orders among the first, with a deadline inside the chaos.
    let broken_deadline = Utc::now() + chrono::Duration::from_std(BROKEN_DEADLINE).unwrap();
    let mut valid: Vec<OrderCreated> = (0..orders_n)
        .map(|i| {
            let mut o = order(["25", "50", "100"][i % 3]);
            o.user_extra = format!("oyuncu#{i}");
            if i % 4 == 1 && i / 4 < BROKEN_ORDERS {
                o.provider_account = BROKEN_ACCOUNT.into();
                o.deadline = Some(broken_deadline);
            }
            o
        })
        .collect();
    let broken: HashSet<uuid::Uuid> = valid
        .iter()
        .filter(|o| o.provider_account == BROKEN_ACCOUNT)
        .map(|o| o.order_id)
        .collect();
    let rounds = orders_n.div_ceil(80).max(1);
    let mut hostile: Vec<Hostile> = (0..rounds).flat_map(hostile_round).collect();
    let mut items: Vec<Item> = Vec::new();
    let mut pending_hostile = hostile.clone().into_iter();
    for (i, o) in valid.iter().enumerate() {
        items.push(Item::Valid(o.clone()));
        if i % 20 == 10 {
            items.push(Item::Resend(o.clone()));
        }
        if i % 5 == 2 {
            if let Some(h) = pending_hostile.next() {
                items.push(Item::Hostile(h));
            }
        }
    }
    items.extend(pending_hostile.map(Item::Hostile));
    let publisher = {
        let kafka = kafka.clone();
        tokio::spawn(async move { publish_all(&kafka, items, rate).await })
    };
    say(&format!(
        "publishing {orders_n} valid orders at {rate}/s with {} hostile events",
        hostile.len()
    ));

    // The chaos: one tick at a time, a stage killed and started again; one fault wave after
    // the other, each until the simulator injected enough of its kind; the broker restarted
    // at tick 4, PostgreSQL at tick 12; until the load is out, both restarts are done, every
    // stage was killed often enough and every wave came. Should the load be out before
    // the last wave, a few more valid orders per tick keep the provider busy.
    let mut tick = 0usize;
    let mut broker_restart: Option<tokio::task::JoinHandle<f64>> = None;
    let mut pg_restart: Option<tokio::task::JoinHandle<f64>> = None;
    let (mut broker_down_s, mut pg_down_s) = (None, None);
    let (mut wave_index, mut wave_ticks, mut top_ups) = (0usize, 0usize, 0usize);
    // Faults of the current wave's kind counted before it began.
    let mut wave_base = 0u64;
    let mut last_traffic = provider_calls(&sim.stats());
    let top_up_producer = kafka.producer().unwrap();
    let chaos_deadline = Instant::now() + Duration::from_secs(600 + orders_n as u64 / 5);
    loop {
        assert!(
            Instant::now() < chaos_deadline,
            "the chaos phase did not end"
        );
        let stage_count = stages.lock().unwrap().len();
        {
            let index = tick % stage_count;
            let mut all = stages.lock().unwrap();
            all[index].sigkill();
            say(&format!("SIGKILL {}", all[index].name));
        }
        // The waves come round again for as long as the chaos lasts.
        sim.set_wave(Some(FaultWave {
            fault: WAVES[wave_index % WAVES.len()],
            rate: WAVE_RATE,
        }));
        if publisher.is_finished() && wave_index < WAVES.len() {
            let topic = kafka.topic(name::ORDERS_CREATED);
            for _ in 0..12 {
                let mut o = order(["25", "50", "100"][valid.len() % 3]);
                o.user_extra = format!("oyuncu#{}", valid.len());
                send(
                    &top_up_producer,
                    &topic,
                    Some(&o.order_id.to_string()),
                    &o.encode(),
                    &Mutex::new(0),
                )
                .await;
                valid.push(o);
                top_ups += 1;
            }
        }
        if tick == 4 && broker_restart.is_none() {
            let broker = Arc::clone(&broker);
            say("restarting the broker");
            broker_restart = Some(tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                broker.script("stop");
                broker.script("start");
                t.elapsed().as_secs_f64()
            }));
        }
        if tick == 12 && pg_restart.is_none() {
            let pg = Arc::clone(&pg);
            say("restarting PostgreSQL");
            pg_restart = Some(tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                pg.stop();
                std::thread::sleep(Duration::from_secs(3));
                pg.start_again();
                t.elapsed().as_secs_f64()
            }));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        {
            let index = tick % stage_count;
            stages.lock().unwrap()[index].spawn();
        }
        tokio::time::sleep(TICK).await;
        if let Some(task) = broker_restart.as_ref().filter(|t| t.is_finished()) {
            let _ = task;
            broker_down_s = Some(broker_restart.take().unwrap().await.unwrap());
            say("broker back");
        }
        if let Some(task) = pg_restart.as_ref().filter(|t| t.is_finished()) {
            let _ = task;
            pg_down_s = Some(pg_restart.take().unwrap().await.unwrap());
            say("PostgreSQL back");
        }
        tick += 1;
        {
            let fault = WAVES[wave_index % WAVES.len()];
            // Ticks without traffic do not count: while the broker restarts, or while a
            // group rebalances after a kill (a killed member holds the rebalance until its
            // session times out), the provider sees no calls and no wave can show.
            let traffic = provider_calls(&sim.stats());
            wave_ticks += usize::from(broker_restart.is_none() && traffic > last_traffic);
            last_traffic = traffic;
            let count = |fault: Fault| {
                sim.stats()
                    .faults_by_kind
                    .get(fault.as_str())
                    .copied()
                    .unwrap_or(0)
            };
            let injected = count(fault) - wave_base;
            if injected >= WAVE_MIN || wave_ticks >= WAVE_MAX_TICKS {
                say(&format!(
                    "wave of {} over: {injected} injected",
                    fault.as_str()
                ));
                wave_index += 1;
                wave_ticks = 0;
                wave_base = count(WAVES[wave_index % WAVES.len()]);
            }
        }
        let killed_enough = stages
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.kills >= kills_per_stage);
        if publisher.is_finished()
            && broker_down_s.is_some()
            && pg_down_s.is_some()
            && killed_enough
            && wave_index >= WAVES.len()
        {
            break;
        }
    }
    sim.set_wave(None);
    let mut published = publisher.await.unwrap();
    published.valid += top_ups;
    say(&format!(
        "chaos over after {tick} ticks; the provider is healthy again"
    ));

    // The conflicting copies, once their originals are claimed (so "first" is well
    // defined): the same id under another account, and with other content.
    let originals: Vec<&OrderCreated> = valid
        .iter()
        .step_by(valid.len().div_ceil(rounds).max(1))
        .take(rounds)
        .collect();
    for o in &originals {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let claimed: Result<Option<(Uuid,)>, _> =
                sqlx::query_as("SELECT order_id FROM dispatch_claims WHERE order_id = $1")
                    .bind(o.order_id)
                    .fetch_optional(&pool)
                    .await;
            if matches!(claimed, Ok(Some(_))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {} never claimed",
                o.order_id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let conflicts: Vec<Hostile> = originals.iter().flat_map(|o| conflicts_of(o)).collect();
    {
        let producer = kafka.producer().unwrap();
        let topic = kafka.topic(name::ORDERS_CREATED);
        let retries = Mutex::new(0);
        for h in &conflicts {
            send(&producer, &topic, h.key.as_deref(), &h.payload, &retries).await;
        }
    }
    hostile.extend(conflicts);

    // Drain: every valid order final in PostgreSQL.
    let drain_started = Instant::now();
    // G2 begins where the broker took the event: the valid orders that are in
    // `orders.created`. One the publisher's delivery report called delivered but that is not
    // in the log (seen twice under the broker restart, never in the pipeline's reach) is
    // counted and named in the figures, apart from the lost.
    let in_log: HashSet<Uuid> = read_to_end(&kafka, name::ORDERS_CREATED)
        .await
        .iter()
        .filter_map(|m| std::str::from_utf8(m.key()?).ok()?.parse().ok())
        .collect();
    let never_in_log: Vec<Uuid> = valid
        .iter()
        .map(|o| o.order_id)
        .filter(|id| !in_log.contains(id))
        .collect();
    if !never_in_log.is_empty() {
        say(&format!(
            "{} valid orders reported delivered to the publisher are not in orders.created: {:?}",
            never_in_log.len(),
            never_in_log
        ));
    }
    let ids: Vec<Uuid> = valid
        .iter()
        .map(|o| o.order_id)
        .filter(|id| in_log.contains(id))
        .collect();
    let drain_limit = Duration::from_secs(240 + orders_n as u64 / 20);
    let mut last_report = Instant::now();
    let final_count = loop {
        let n: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE order_id = ANY($1) AND state IN ('completed', 'failed')",
        )
        .bind(&ids)
        .fetch_one(&pool)
        .await;
        let n = n.unwrap_or(0) as usize;
        if n == ids.len() || drain_started.elapsed() > drain_limit {
            break n;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            say(&format!("draining: {n} of {} final", ids.len()));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drain_s = drain_started.elapsed().as_secs_f64();
    say(&format!(
        "drained in {drain_s:.1} s: {final_count} of {} final",
        ids.len()
    ));
    // Late copies of events (a redone step) may still be on their way to the DLQ and the
    // table; give them a moment, then stop everything (SIGTERM flushes the traces).
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    supervisor.await.unwrap();
    scraper.await.unwrap();
    let live_regressions = watcher.await.unwrap();
    {
        let stages = Arc::clone(&stages);
        tokio::task::spawn_blocking(move || {
            for stage in stages.lock().unwrap().iter_mut() {
                stage.stop();
            }
        })
        .await
        .unwrap();
    }
    let stats = sim.stats();

    // ---- the checks ------------------------------------------------------------------
    let mut failures: Vec<String> = Vec::new();

    // Lost and the simulator's truth.
    let rows: Vec<Row> =
        sqlx::query_as(
            "SELECT order_id, state, failure_reason, provider_reference, pin_encrypted, last_error, version
               FROM orders WHERE order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&pool)
        .await
        .unwrap();
    let rows: HashMap<Uuid, _> = rows.into_iter().map(|r| (r.0, r)).collect();
    let finals: Vec<_> = rows
        .values()
        .filter(|r| r.1 == "completed" || r.1 == "failed")
        .collect();
    let lost = ids.len() - finals.len();
    if lost > 0 {
        let some: Vec<_> = ids
            .iter()
            .filter(|id| {
                rows.get(id)
                    .is_none_or(|r| r.1 != "completed" && r.1 != "failed")
            })
            .take(5)
            .map(|id| (id, rows.get(id).map(|r| r.1.clone())))
            .collect();
        failures.push(format!("{lost} valid orders not final, e.g. {some:?}"));
    }
    let mut mismatches = Vec::new();
    let (mut completed, mut cancelled, mut rejected, mut expired) = (0, 0, 0, 0);
    for (id, state, reason, reference, pin, error, _) in
        &finals.iter().map(|r| (*r).clone()).collect::<Vec<_>>()
    {
        let Some(reference) = reference else {
            mismatches.push(format!("{id}: final without a reference"));
            continue;
        };
        let bought = stats.purchases.get(reference).copied().unwrap_or(0) == 1;
        match (state.as_str(), reason.as_deref(), sim.cancelled(reference)) {
            ("completed", None, Some(false)) => {
                let opened = pin
                    .as_ref()
                    .and_then(|p| SealedPin::parse(std::str::from_utf8(p).ok()?).ok())
                    .and_then(|sealed| keys.open(*id, &sealed).ok());
                let truth = sim.pin_of(reference);
                if opened.as_ref().map(|p| p.expose()) != truth.as_ref().map(|p| p.expose()) {
                    mismatches.push(format!("{id}: the delivered PIN is not the provider's"));
                }
                completed += 1;
            }
            ("failed", Some("cancelled"), Some(true)) => cancelled += 1,
            // The broken account's orders: never bought, failed at their deadline.
            ("failed", Some("deadline"), None) if !bought && broken.contains(id) => expired += 1,
            ("failed", Some("rejected"), None)
                if !bought
                    && stats.placements.get(reference).copied().unwrap_or(0) >= 1
                    && error.as_deref().is_some_and(|e| e.starts_with("3|")) =>
            {
                rejected += 1
            }
            other => mismatches.push(format!(
                "{id}: row {other:?} (bought: {bought}) disagrees with the provider"
            )),
        }
    }
    if !mismatches.is_empty() {
        failures.push(format!(
            "{} orders disagree with the simulator: {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        ));
    }

    // Duplicate placements: every purchase belongs to exactly one order's reference.
    let references: HashSet<&String> = rows.values().filter_map(|r| r.3.as_ref()).collect();
    let purchases: u32 = stats.purchases.values().sum();
    let owned = stats
        .purchases
        .keys()
        .filter(|r| references.contains(r))
        .count() as u32;
    let duplicate_placements = purchases - owned;
    if duplicate_placements > 0 {
        failures.push(format!(
            "{duplicate_placements} purchases under references no final order holds (bought twice)"
        ));
    }
    let resent_references = stats.placements.values().filter(|&&n| n > 1).count();

    // Regressions: the whole orders.state log per order, and the rows watched live.
    let state_log = read_to_end(&kafka, name::ORDERS_STATE).await;
    let mut by_order: BTreeMap<Uuid, Vec<OrderStateEvent>> = BTreeMap::new();
    for m in &state_log {
        let event: OrderStateEvent = serde_json::from_slice(m.payload().unwrap_or_default())
            .expect("orders.state holds state events only");
        by_order.entry(event.order_id).or_default().push(event);
    }
    let mut regressions: Vec<String> = live_regressions.clone();
    for id in &ids {
        let events = by_order.get(id).map(Vec::as_slice).unwrap_or_default();
        if events
            .iter()
            .filter_map(|e| e.provider_reference.as_ref())
            .collect::<HashSet<_>>()
            .len()
            > 1
        {
            regressions.push(format!("{id}: more than one reference in its events"));
        }
        let row = rows.get(id).map(|r| (r.1.clone(), r.6));
        for problem in lifecycle_problems(events, row.as_ref()) {
            regressions.push(format!("{id}: {problem}"));
        }
    }
    let stray_orders = by_order.keys().filter(|id| !ids.contains(id)).count();
    if stray_orders > 0 {
        regressions.push(format!(
            "{stray_orders} orders in orders.state that were never valid orders"
        ));
    }
    if !regressions.is_empty() {
        failures.push(format!(
            "{} regressions: {:?}",
            regressions.len(),
            &regressions[..regressions.len().min(5)]
        ));
    }

    // The DLQ: exactly the hostile events, each with its reason.
    let dlq = read_to_end(&kafka, name::ORDERS_DLQ).await;
    let created_topic = kafka.topic(name::ORDERS_CREATED);
    let mut matched: HashMap<usize, usize> = HashMap::new();
    let by_content: HashMap<(Option<&str>, &[u8]), usize> = hostile
        .iter()
        .enumerate()
        .map(|(i, h)| ((h.key.as_deref(), h.payload.as_slice()), i))
        .collect();
    let mut dlq_problems = Vec::new();
    for m in &dlq {
        let hs = m.headers();
        let header = |name: &str| {
            hs.and_then(|h| headers::get(h, name))
                .unwrap_or_default()
                .to_owned()
        };
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let payload = m.payload().unwrap_or_default();
        let Some(&i) = by_content.get(&(key.as_deref(), payload)) else {
            dlq_problems.push(format!(
                "a DLQ record that is no hostile event (key {key:?}, reason {})",
                header(headers::DLQ_REASON)
            ));
            continue;
        };
        let h = &hostile[i];
        if header(headers::DLQ_REASON) != h.reason
            || header(headers::DLQ_DETAIL).is_empty()
            || header(headers::DLQ_STAGE) != "dispatch"
            || header(headers::DLQ_SOURCE_TOPIC) != created_topic
        {
            dlq_problems.push(format!(
                "{}: reason {:?} (expected {}), stage {:?}",
                h.what,
                header(headers::DLQ_REASON),
                h.reason,
                header(headers::DLQ_STAGE)
            ));
        }
        *matched.entry(i).or_default() += 1;
    }
    for (i, h) in hostile.iter().enumerate() {
        if !matched.contains_key(&i) {
            dlq_problems.push(format!("{} (key {:?}) is not in the DLQ", h.what, h.key));
        }
    }
    let dlq_copies: usize = matched.values().map(|n| n - 1).sum();
    if !dlq_problems.is_empty() {
        failures.push(format!(
            "{} DLQ problems: {:?}",
            dlq_problems.len(),
            &dlq_problems[..dlq_problems.len().min(8)]
        ));
    }

    // Secrets: every PIN the provider issued and both credentials, in every log, every
    // scraped metrics page, the exported traces, the DLQ's and orders.state's records and
    // a dump of the database.
    let pins: HashSet<Vec<u8>> = stats
        .purchases
        .keys()
        .filter_map(|r| sim.pin_of(r))
        .map(|p| p.expose().as_bytes().to_vec())
        .collect();
    let pin_len = pins.iter().map(Vec::len).next().unwrap_or(19);
    let words: [&[u8]; 2] = [KOD.as_bytes(), SIFRE.as_bytes()];
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for stage in stages.lock().unwrap().iter() {
        haystacks.push((
            format!("log {}", stage.name),
            std::fs::read(&stage.log).unwrap(),
        ));
    }
    let scraped = scrapes.lock().unwrap().clone();
    haystacks.push(("metrics".into(), scraped.join("\n").into_bytes()));
    let exported = traces.lock().unwrap().clone();
    haystacks.push(("traces".into(), exported.concat()));
    haystacks.push((
        "orders.dlq".into(),
        dlq.iter().flat_map(record_bytes).collect(),
    ));
    haystacks.push((
        "orders.state".into(),
        state_log.iter().flat_map(record_bytes).collect(),
    ));
    let pg_for_dump = Arc::clone(&pg);
    let dump = tokio::task::spawn_blocking(move || pg_for_dump.dump("orderflow"))
        .await
        .unwrap();
    haystacks.push(("pg_dump".into(), dump));
    let mut leaks = Vec::new();
    for (place, bytes) in &haystacks {
        for what in find_secrets(bytes, &pins, pin_len, &words) {
            leaks.push(format!("{what} in {place}"));
        }
        if place.starts_with("log ") {
            let text = String::from_utf8_lossy(bytes);
            if common::logs::has_pin_shape(&text) {
                leaks.push(format!("something PIN-shaped in {place}"));
            }
            if text.contains("panicked") {
                leaks.push(format!("a panic in {place}"));
            }
        }
    }
    if !leaks.is_empty() {
        failures.push(format!("secrets or panics: {leaks:?}"));
    }
    // Positive controls: the scan finds a PIN and a credential put into a copy of each
    // haystack, and each haystack holds the clear text it should (so it was not empty or
    // unreadable): an order id in the logs, the state topic and the dump, a metric name in
    // the scrapes, a service name in the traces, a hostile key in the DLQ.
    let some_pin = pins
        .iter()
        .next()
        .expect("the provider issued PINs")
        .clone();
    let some_id = ids[0].to_string();
    for (place, bytes) in &haystacks {
        let mut planted = bytes.clone();
        planted.extend_from_slice(b" x");
        planted.extend_from_slice(&some_pin);
        planted.extend_from_slice(b" ");
        assert_eq!(
            find_secrets(&planted, &pins, pin_len, &words),
            vec!["a PIN"],
            "control: {place}"
        );
        let mut planted = bytes.clone();
        planted.extend_from_slice(SIFRE.as_bytes());
        assert!(
            find_secrets(&planted, &pins, pin_len, &words).contains(&"a provider credential"),
            "control: {place}"
        );
    }
    let clear: Vec<(&str, Vec<u8>)> = vec![
        ("log dispatch-1", b"order_id".to_vec()),
        ("log sink", b"sink".to_vec()),
        ("metrics", b"orderflow_".to_vec()),
        ("traces", b"orderflow-dispatch".to_vec()),
        ("orders.dlq", b"hostile-0-malformed".to_vec()),
        ("orders.state", some_id.clone().into_bytes()),
        ("pg_dump", some_id.clone().into_bytes()),
    ];
    for (place, token) in clear {
        let bytes = &haystacks.iter().find(|(p, _)| p == place).unwrap().1;
        if !contains(bytes, &token) {
            failures.push(format!(
                "control: {place} does not hold {:?}",
                String::from_utf8_lossy(&token)
            ));
        }
    }

    // ---- the figures -----------------------------------------------------------------
    let (kills, exits, kills_by_stage) = {
        let all = stages.lock().unwrap();
        let kills: u32 = all.iter().map(|s| s.kills).sum();
        let exits: u32 = all.iter().map(|s| s.exits).sum();
        let kills_by_stage = all
            .iter()
            .map(|s| format!("{} {}", s.name, s.kills))
            .collect::<Vec<_>>()
            .join(", ");
        (kills, exits, kills_by_stage)
    };
    let faults_by_kind = stats
        .faults_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let hostile_reasons: BTreeMap<&str, usize> =
        hostile.iter().fold(BTreeMap::new(), |mut m, h| {
            *m.entry(h.reason).or_default() += 1;
            m
        });
    let figures = vec![
        ("valid orders published", format!("{}", published.valid)),
        ("exact re-sends (harmless)", format!("{}", published.exact_resends)),
        ("hostile events sent", format!("{}", hostile.len())),
        ("final in PostgreSQL", format!("{} (completed {completed}, cancelled {cancelled}, rejected {rejected}, failed at the deadline on the broken account {expired} of {})", finals.len(), broken.len())),
        ("SIGKILLs", format!("{kills} ({kills_by_stage})")),
        ("stage exits on their own", format!("{exits}")),
        ("broker restarts", format!("1 ({:.1} s stop to ready)", broker_down_s.unwrap_or(0.0))),
        ("PostgreSQL restarts", format!("1 ({:.1} s down)", pg_down_s.unwrap_or(0.0))),
        ("faults injected", format!("{} ({faults_by_kind})", stats.faults_injected)),
        ("publish retries", format!("{}", published.retries)),
        ("lost", format!("{lost}")),
        ("delivered to the publisher, not in orders.created", format!("{} {:?}", never_in_log.len(), never_in_log)),
        ("duplicate placements", format!("{duplicate_placements} ({purchases} purchases; {resent_references} references re-sent and refused as duplicates)")),
        ("regressions", format!("{}", regressions.len())),
        ("disagreements with the provider", format!("{}", mismatches.len())),
        ("DLQ entries", format!("{} ({} hostile events matched, {dlq_copies} redelivered copies; {hostile_reasons:?})", dlq.len(), matched.len())),
        ("secrets found", format!("{} (scanned {} logs, {} metrics pages, {} trace exports, {} DLQ and {} state records, a pg_dump, for {} PINs and 2 credentials)", leaks.len(), 6, scraped.len(), exported.len(), dlq.len(), state_log.len(), pins.len())),
        ("time to drain", format!("{drain_s:.1} s (after the chaos ended)")),
        ("total run time", format!("{:.1} s", started.elapsed().as_secs_f64())),
    ];
    let mut table = format!(
        "orderflow chaos run {} ({orders_n} orders at {rate}/s, {kills_per_stage} kills per stage)\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    for (name, value) in &figures {
        table.push_str(&format!("| {name:<32} | {value} |\n"));
    }
    println!("{table}");
    eprintln!("{table}");
    std::fs::write(run_dir.join("figures.txt"), &table).unwrap();
    let _ = std::fs::write(
        run_dir.join(format!(
            "figures-{}.txt",
            Utc::now().format("%Y%m%dT%H%M%S")
        )),
        &table,
    );
    eprintln!(
        "chaos: figures written to {}; logs in {}",
        run_dir.join("figures.txt").display(),
        logs.display()
    );

    if kills < kills_per_stage * 6 {
        failures.push(format!("only {kills} kills"));
    }
    if !WAVES
        .iter()
        .all(|f| stats.faults_by_kind.contains_key(f.as_str()))
    {
        failures.push(format!(
            "not every fault kind was injected: {faults_by_kind}"
        ));
    }
    assert!(
        failures.is_empty(),
        "the chaos run broke guarantees:\n{}",
        failures.join("\n")
    );

    pool.close().await;
    std::fs::remove_dir_all(&work).ok();
}
