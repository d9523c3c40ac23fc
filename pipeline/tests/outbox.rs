//! The transactional outbox (docs/outbox.md) with its real parts: a shop database of the
//! test's own (PostgreSQL, wal_level=logical) made from docs/examples/outbox.sql, Debezium's
//! PostgreSQL connector with its outbox event router on a Kafka Connect worker run by
//! ops/connect/connect.sh, the shared broker, and the dispatch stage with the simulator.
//! A shop writer saves orders with their outbox rows in one transaction at a steady rate,
//! from before the worker first starts until after it has been killed with SIGKILL twice
//! mid-stream and restarted: every saved order arrives on orders.created, no rolled-back
//! one does, and each is placed exactly once however often it arrived (G1, G2).

mod common;

use common::pipeline::{order, Harness};
use common::private_pg::PrivatePostgres;
use common::repo_root;
use orderflow::core::event::OrderCreated;
use orderflow::core::lifecycle::OrderState;
use orderflow::kafka::topics::name;
use orderflow::shutdown;
use orderflow::testbed::sim::SimConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The shop writer saves orders, one transaction each, at [`RATE`] per second, from before
/// the worker's first start until [`AFTER_LAST_RESTART`] after the second restart has
/// resumed publishing, so both kills land while it writes however slow the machine; at
/// least [`MIN_ORDERS`], at most [`MAX_ORDERS`] (the test fails if it gets there).
const RATE: u64 = 15;
const MIN_ORDERS: usize = 300;
const MAX_ORDERS: usize = 2_000;
const AFTER_LAST_RESTART: Duration = Duration::from_secs(3);
/// Every so many transactions is rolled back instead of committed: its order was never
/// saved, so its event must never be published.
const ROLLED_BACK_EVERY: usize = 25;
/// Every so many orders carries a W3C trace context in the outbox's `traceparent` column.
const TRACED_EVERY: usize = 10;
/// The connector's database password: distinctive, so the test can look for it.
const CDC_PASSWORD: &str = "cdc-pw-5e1f0c77";

fn traceparent(i: usize) -> String {
    format!(
        "00-{:032x}-{:016x}-01",
        0x0af7_6519_16cd_43dd_u128 + i as u128,
        i + 1
    )
}

/// A Kafka Connect worker of this test's own, driven through ops/connect/connect.sh; it is
/// stopped, and its directory removed (kept with its log when the test fails), when dropped.
struct Worker {
    env: Vec<(String, String)>,
    dir: PathBuf,
    port: u16,
}

impl Worker {
    fn new(h: &Harness, shop: &PrivatePostgres, slot: &str) -> Worker {
        let port = common::free_port();
        let state = std::env::var("ORDERFLOW_STATE_DIR").unwrap_or("/var/lib/orderflow".into());
        let env = vec![
            ("ORDERFLOW_KAFKA_BROKERS".into(), h.kafka.brokers.clone()),
            (
                "ORDERFLOW_TOPIC_PREFIX".into(),
                h.kafka.topic_prefix.clone(),
            ),
            ("CONNECT_PORT".into(), port.to_string()),
            (
                "OUTBOX_DATABASE_URL".into(),
                format!(
                    "postgres://orderflow_cdc:{CDC_PASSWORD}@127.0.0.1:{}/shop",
                    shop.port
                ),
            ),
            ("OUTBOX_SLOT".into(), slot.into()),
        ];
        let dir = Path::new(&state).join(format!("connect/worker-{port}"));
        Worker { env, dir, port }
    }

    /// [`Worker::run`] without holding up the runtime's other tasks (the shop writer, the
    /// reader, dispatch), its output trimmed.
    fn script(&self, verb: &str) -> String {
        tokio::task::block_in_place(|| self.run(verb))
            .trim()
            .to_owned()
    }

    /// Runs `connect.sh VERB`, failing the test with its output if it fails.
    fn run(&self, verb: &str) -> String {
        let out = self.try_run(verb);
        assert!(
            out.status.success(),
            "connect.sh {verb} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn try_run(&self, verb: &str) -> std::process::Output {
        Command::new("bash")
            .arg(repo_root().join("ops/connect/connect.sh"))
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running ops/connect/connect.sh")
    }

    /// GET `path` on the worker's REST API, as text.
    async fn rest(&self, path: &str) -> String {
        reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .and_then(|r| r.error_for_status())
            .expect("the worker's REST API")
            .text()
            .await
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.try_run("stop");
        if std::thread::panicking() {
            eprintln!(
                "the worker's log is kept: {}",
                self.dir.join("worker.log").display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One message read from orders.created.
struct Arrival {
    key: Option<String>,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

/// Reads orders.created from the start, for as long as the test runs.
fn read_arrivals(h: &Harness) -> Arc<Mutex<Vec<Arrival>>> {
    let consumer: StreamConsumer = h
        .kafka
        .client_config()
        .set("group.id", common::unique("g-outbox-reader-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&h.kafka.topic(name::ORDERS_CREATED)])
        .unwrap();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let sink = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok(m) = consumer.recv().await else {
                continue;
            };
            let header = |name: &str| {
                m.headers().and_then(|hs| {
                    hs.iter()
                        .find(|hd| hd.key == name)
                        .and_then(|hd| hd.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            let arrival = Arrival {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                traceparent: header("traceparent"),
            };
            sink.lock().unwrap().push(arrival);
        }
    });
    arrivals
}

fn arrived(arrivals: &Mutex<Vec<Arrival>>) -> usize {
    arrivals.lock().unwrap().len()
}

/// Waits until at least `more` messages have arrived beyond `from`.
async fn wait_for_arrivals(arrivals: &Mutex<Vec<Arrival>>, from: usize, more: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while arrived(arrivals) < from + more {
        assert!(
            Instant::now() < deadline,
            "{what}: {} messages on orders.created after 90 s, expected {}",
            arrived(arrivals),
            from + more
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the shop wrote: the committed orders (with whether they carry a trace context) and
/// the ids of the rolled-back ones.
struct Written {
    committed: Vec<(OrderCreated, Option<String>)>,
    rolled_back: Vec<Uuid>,
}

/// The shop: each order is saved in its own table and its event in the outbox, in one
/// transaction, as docs/outbox.md shows.
async fn write_orders(pool: sqlx::PgPool, stop: Arc<AtomicBool>) -> Written {
    let mut written = Written {
        committed: Vec::new(),
        rolled_back: Vec::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    for i in 0..MAX_ORDERS {
        if i >= MIN_ORDERS && stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let o = order(["25", "50", "100"][i % 3]);
        let trace = (i % TRACED_EVERY == 0).then(|| traceparent(i));
        let payload = String::from_utf8(o.encode()).unwrap();
        let mut tx = pool.begin().await.expect("a shop transaction");
        sqlx::query("INSERT INTO shop_orders (id, kupur) VALUES ($1, $2)")
            .bind(o.order_id)
            .bind(&o.product["kupur"])
            .execute(&mut *tx)
            .await
            .expect("saving the order");
        sqlx::query(
            "INSERT INTO orderflow_outbox (id, topic, order_id, payload, traceparent) \
             VALUES ($1, 'orders.created', $2, $3::text::jsonb, $4)",
        )
        .bind(Uuid::new_v4())
        .bind(o.order_id)
        .bind(&payload)
        .bind(&trace)
        .execute(&mut *tx)
        .await
        .expect("writing the outbox row");
        if i % ROLLED_BACK_EVERY == ROLLED_BACK_EVERY - 1 {
            tx.rollback().await.unwrap();
            written.rolled_back.push(o.order_id);
        } else {
            tx.commit().await.expect("committing the order");
            written.committed.push((o, trace));
        }
    }
    written
}

#[tokio::test(flavor = "multi_thread")]
async fn every_saved_order_arrives_once_placed_through_connect_kills() {
    let started = Instant::now();
    let h = Harness::new("outbox", SimConfig::default(), 5_000).await;

    // The shop's database, set up from the documented SQL file.
    let shop = PrivatePostgres::start_with(&["wal_level=logical"]);
    shop.psql(
        "postgres",
        &format!("CREATE ROLE orderflow_cdc LOGIN REPLICATION PASSWORD '{CDC_PASSWORD}'"),
    );
    shop.psql("postgres", "CREATE DATABASE shop");
    shop.psql(
        "shop",
        "CREATE TABLE shop_orders (id uuid PRIMARY KEY, kupur text NOT NULL)",
    );
    let slot = common::unique("orderflow_outbox_");
    let setup = shop.psql_file(
        "shop",
        &repo_root().join("docs/examples/outbox.sql"),
        &[("slot", &slot), ("cdc_role", "orderflow_cdc")],
    );
    assert!(setup.contains(&format!("slot {slot} created")), "{setup}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&shop.url("shop"))
        .await
        .expect("connecting to the shop database");

    // Dispatch runs throughout, reading orders.created as the connector fills it.
    common::logs::capture();
    let (trigger, signal) = shutdown::channel();
    let (accounts, kafka, db) = (h.accounts(), h.kafka.clone(), h.db.pool.clone());
    let config = h.dispatch_config();
    let dispatch = tokio::spawn(async move {
        orderflow::dispatch::run(config, accounts, kafka, db, Default::default(), signal)
            .await
            .expect("the dispatch stage");
    });
    let arrivals = read_arrivals(&h);

    // The shop writes from before the worker first starts: those orders wait in the slot.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_orders(pool.clone(), stop_writing.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let worker = Worker::new(&h, &shop, &slot);
    eprintln!("{}", worker.script("start"));
    eprintln!("{}", worker.script("register"));
    wait_for_arrivals(&arrivals, 0, 40, "first start").await;

    // Two SIGKILLs mid-stream, each followed by a restart; the worker takes its connector
    // back from its configuration topic, without being registered again.
    for kill in 1..=2 {
        eprintln!("{}", worker.script("kill"));
        let at = arrived(&arrivals);
        assert!(
            !writer.is_finished(),
            "kill {kill} came after the shop stopped writing"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("{}", worker.script("start"));
        wait_for_arrivals(&arrivals, at, 30, &format!("restart {kill}")).await;
    }
    // Where the log was after the last restart: the slot's confirmed position must pass it.
    let mark = shop.psql("shop", "SELECT pg_current_wal_lsn()");
    tokio::time::sleep(AFTER_LAST_RESTART).await;
    stop_writing.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(
        written.committed.len() + written.rolled_back.len() < MAX_ORDERS,
        "the writer ran out of orders before the restarts were done"
    );
    let committed: BTreeMap<Uuid, &(OrderCreated, Option<String>)> = written
        .committed
        .iter()
        .map(|w| (w.0.order_id, w))
        .collect();

    // Every saved order arrives; nothing else does.
    let deadline = Instant::now() + Duration::from_secs(90);
    let seen = loop {
        let seen: BTreeSet<Uuid> = arrivals
            .lock()
            .unwrap()
            .iter()
            .filter_map(|a| serde_json::from_slice::<OrderCreated>(&a.payload).ok())
            .map(|o| o.order_id)
            .collect();
        if committed.keys().all(|id| seen.contains(id)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<_> = committed.keys().filter(|id| !seen.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} saved orders never arrived, e.g. {:?}",
        missing.len(),
        committed.len(),
        &missing[..missing.len().min(5)]
    );
    for id in &written.rolled_back {
        assert!(!seen.contains(id), "rolled-back order {id} was published");
    }
    assert_eq!(seen.len(), committed.len(), "only saved orders arrive");

    // The connector confirms what it published to the slot, so the server can let go of
    // the log behind it (a slot never confirmed would keep every byte of it).
    let confirmed = format!(
        "SELECT confirmed_flush_lsn >= '{}'::pg_lsn FROM pg_replication_slots \
         WHERE slot_name = '{slot}'",
        mark.trim()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while shop.psql("shop", &confirmed).trim() != "t" {
        assert!(
            Instant::now() < deadline,
            "the slot's confirmed position has not passed {} within 30 s of the last event",
            mark.trim()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Each message is the event the shop wrote, keyed by its order id, with its trace.
    let (messages, duplicates) = {
        let arrivals = arrivals.lock().unwrap();
        for a in arrivals.iter() {
            let event: OrderCreated =
                serde_json::from_slice(&a.payload).expect("the value is the event's JSON");
            let (written, trace) = committed[&event.order_id];
            assert_eq!(&event, written, "the event as the shop wrote it");
            assert_eq!(a.key, Some(event.order_id.to_string()), "keyed by order id");
            assert_eq!(&a.traceparent, trace, "the trace context as a header");
        }
        (arrivals.len(), arrivals.len() - seen.len())
    };

    // Each order is placed exactly once, however often it arrived (G1), and nothing went
    // to the dead-letter topic: the connector's headers are harmless to dispatch.
    let ids: Vec<Uuid> = committed.keys().copied().collect();
    let states = h.settled_states(&ids, Duration::from_secs(120)).await;
    let stats = h.stats();
    for id in &ids {
        let end = states
            .get(id)
            .and_then(|s| s.iter().max_by_key(|s| s.version))
            .unwrap_or_else(|| panic!("order {id} has no state"));
        assert_eq!(end.state, OrderState::Dispatched, "order {id}");
        let reference = end.provider_reference.clone().unwrap();
        assert_eq!(stats.placements.get(&reference), Some(&1), "order {id}");
    }
    assert_eq!(
        stats.purchases.len(),
        ids.len(),
        "one purchase per saved order"
    );
    let dead = common::pipeline::read_to_end(&h.kafka, name::ORDERS_DLQ).await;
    assert!(dead.is_empty(), "{} events dead-lettered", dead.len());

    // G5: the database password is in neither the worker's log nor its REST API.
    let status = worker.script("connector");
    assert!(status.contains("RUNNING"), "{status}");
    let config = worker.rest("/connectors/orderflow-outbox/config").await;
    assert!(config.contains("database.password"), "{config}");
    assert!(
        !config.contains(CDC_PASSWORD),
        "the REST API shows the password"
    );
    let log = worker.log();
    assert!(
        log.contains("Kafka Connect started"),
        "the log is the worker's"
    );
    assert!(
        !log.contains(CDC_PASSWORD),
        "the worker logged the password"
    );

    eprintln!(
        "outbox: {} orders saved ({} rolled back), {messages} messages on orders.created \
         ({duplicates} duplicates after 2 SIGKILLs), all placed once; {:.0} s",
        ids.len(),
        written.rolled_back.len(),
        started.elapsed().as_secs_f64()
    );
    drop(worker);
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(30), dispatch)
        .await
        .expect("the stage stops")
        .unwrap();
    pool.close().await;
    h.finish().await;
}
