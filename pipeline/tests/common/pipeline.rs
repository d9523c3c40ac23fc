//! A dispatch stage under test: its own topics, database, simulator and accounts file, and
//! helpers to publish orders and read what the stage wrote.

use super::{kafka_with_topics, unique, TestDb};
use chrono::Utc;
use orderflow::core::event::{OrderCreated, OrderDispatched, OrderStateEvent, SCHEMA_VERSION};
use orderflow::dispatch::DispatchConfig;
use orderflow::kafka::stage::StageConfig;
use orderflow::kafka::topics::name;
use orderflow::kafka::{Context, KafkaConfig};
use orderflow::provider::accounts::Accounts;
use orderflow::testbed::sim::{Sim, SimConfig, SimHandle, SimStats};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Credentials of the simulated account: distinctive, so a test can look for them in logs.
pub const KOD: &str = "KOD-7f3a9e";
pub const SIFRE: &str = "SIFRE-b2c4d8";
pub const ACCOUNT: &str = "znet-test";
pub const OTHER_ACCOUNT: &str = "znet-other";
pub const DOWN_ACCOUNT: &str = "znet-down";
/// An account at the simulator with a wrong password: every call is answered with code 8
/// (credentials, IP whitelist or API permission).
pub const WRONG_CREDENTIALS_ACCOUNT: &str = "znet-wrong-credentials";

/// Account settings of most tests: the simulator shows a new order to checks at once
/// unless a test gives it a visibility lag, so an unclear placement need not wait the
/// production window of five minutes before it is placed again.
pub const DEFAULT_ACCOUNT_SETTINGS: &str = "visibility_window_ms = 0\n";

/// One `[[account]]` of an accounts file: account `id` at the simulator `base_url` with the
/// test credentials ([`KOD`], [`SIFRE`]), 8 calls at once and 200 a second, answers awaited
/// `request_timeout_ms`, then `settings` (more TOML lines).
pub fn account_entry(id: &str, base_url: &str, request_timeout_ms: u64, settings: &str) -> String {
    format!(
        "[[account]]\nid = \"{id}\"\nprovider = \"znet\"\nbase_url = \"{base_url}\"\n\
         kod = \"{KOD}\"\nsifre = \"{SIFRE}\"\nmax_concurrent = 8\nmax_per_second = 200\n\
         request_timeout_ms = {request_timeout_ms}\n{settings}"
    )
}

/// A simulator served on a free port of 127.0.0.1 until this drops.
pub struct Served {
    /// `http://127.0.0.1:port`, an account's `base_url`.
    pub url: String,
    pub handle: SimHandle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `sim` (a clone: the caller keeps its view of the simulator's state).
pub async fn serve(sim: &Sim) -> Served {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = sim
        .clone()
        .serve("127.0.0.1:0".parse().unwrap(), async move {
            let _ = stopped.await;
        })
        .await
        .expect("starting the simulator");
    Served {
        url: format!("http://{}", handle.addr),
        handle,
        _stop: stop,
    }
}

pub struct Harness {
    pub kafka: KafkaConfig,
    pub db: TestDb,
    pub sim: Sim,
    pub sim_url: String,
    pub accounts_file: PathBuf,
    /// One producer for every publish of the test, made at the first.
    producer: std::sync::OnceLock<FutureProducer<Context>>,
    _served: Served,
}

impl Harness {
    /// Everything a dispatch stage needs; `request_timeout_ms` is the account's.
    pub async fn new(test: &str, sim: SimConfig, request_timeout_ms: u64) -> Harness {
        Self::with_kafka(kafka_with_topics(test).await, sim, request_timeout_ms).await
    }

    /// [`Harness::new`] with more `[[account]]` settings for the accounts (TOML lines);
    /// they replace [`DEFAULT_ACCOUNT_SETTINGS`].
    pub async fn with_settings(
        test: &str,
        sim: SimConfig,
        request_timeout_ms: u64,
        settings: &str,
    ) -> Harness {
        Self::build(
            kafka_with_topics(test).await,
            sim,
            request_timeout_ms,
            settings,
        )
        .await
    }

    /// [`Harness::new`] on topics created by the caller.
    pub async fn with_kafka(
        kafka: KafkaConfig,
        sim: SimConfig,
        request_timeout_ms: u64,
    ) -> Harness {
        Self::build(kafka, sim, request_timeout_ms, DEFAULT_ACCOUNT_SETTINGS).await
    }

    async fn build(
        kafka: KafkaConfig,
        sim: SimConfig,
        request_timeout_ms: u64,
        settings: &str,
    ) -> Harness {
        let db = TestDb::new_migrated().await;
        let sim = Sim::new(SimConfig {
            kod: KOD.into(),
            sifre: SIFRE.into(),
            ..sim
        });
        let served = serve(&sim).await;
        let sim_url = served.url.clone();
        let accounts_file =
            std::env::temp_dir().join(format!("{}.toml", unique("orderflow-accounts-")));
        // Two accounts at one simulator: orders name the first; the second exists to be named
        // by mistake.
        let account = |id: &str| account_entry(id, &sim_url, request_timeout_ms, settings);
        // A third account whose provider cannot be reached: nothing listens on port 1.
        let down = account(DOWN_ACCOUNT).replace(&sim_url, "http://127.0.0.1:1");
        let wrong = account(WRONG_CREDENTIALS_ACCOUNT).replace(
            &format!("sifre = \"{SIFRE}\""),
            "sifre = \"not-the-password\"",
        );
        std::fs::write(
            &accounts_file,
            account(ACCOUNT) + &account(OTHER_ACCOUNT) + &down + &wrong,
        )
        .unwrap();
        Harness {
            kafka,
            db,
            sim,
            sim_url,
            accounts_file,
            producer: std::sync::OnceLock::new(),
            _served: served,
        }
    }

    /// Drops the test's database and accounts file (left in place when a test fails first).
    pub async fn finish(self) {
        std::fs::remove_file(&self.accounts_file).ok();
        self.db.drop_now().await;
    }

    pub fn accounts(&self) -> Accounts {
        Accounts::load(&self.accounts_file, orderflow::znet::connect)
            .expect("the test accounts file")
    }

    pub fn dispatch_config(&self) -> DispatchConfig {
        DispatchConfig {
            accounts_file: self.accounts_file.clone(),
            group: Some(unique("g-dispatch-")),
            max_in_flight: 32,
            max_event_bytes: 4096,
            deadline_secs: 3600,
            retry_min_ms: 200,
            retry_max_ms: 2_000,
            // Parked orders come back within seconds, so a test need not wait minutes.
            park_after_ms: 10_000,
            park_min_ms: 1_000,
            park_max_ms: 5_000,
            stage: StageConfig {
                shutdown_grace_ms: 5_000,
                ..Default::default()
            },
            // The happy-path test follows the informational state too.
            announce: true,
            lookup: Default::default(),
            balance_check_interval_secs: 300,
            account_status: Default::default(),
        }
    }

    /// The environment for an `orderflow dispatch` child process.
    pub fn dispatch_env(&self, group: &str) -> Vec<(String, String)> {
        vec![
            ("ORDERFLOW_KAFKA_BROKERS".into(), self.kafka.brokers.clone()),
            (
                "ORDERFLOW_TOPIC_PREFIX".into(),
                self.kafka.topic_prefix.clone(),
            ),
            ("ORDERFLOW_DATABASE_URL".into(), self.db.url.clone()),
            (
                "ORDERFLOW_PROVIDER_ACCOUNTS".into(),
                self.accounts_file.display().to_string(),
            ),
            ("ORDERFLOW_DISPATCH_GROUP".into(), group.into()),
            ("ORDERFLOW_DISPATCH_MAX_IN_FLIGHT".into(), "32".into()),
            ("ORDERFLOW_DISPATCH_RETRY_MIN_MS".into(), "200".into()),
            ("ORDERFLOW_DISPATCH_RETRY_MAX_MS".into(), "2000".into()),
            ("ORDERFLOW_DISPATCH_PARK_MIN_MS".into(), "1000".into()),
            ("ORDERFLOW_DISPATCH_PARK_MAX_MS".into(), "5000".into()),
            (
                "ORDERFLOW_LOG".into(),
                "debug,librdkafka=info,sqlx=warn,h2=info,hyper=info,reqwest=info,rdkafka=info"
                    .into(),
            ),
        ]
    }

    pub fn stats(&self) -> SimStats {
        self.sim.stats()
    }

    /// Publishes raw bytes to orders.created.
    pub async fn publish_raw(&self, key: Option<&str>, payload: &[u8]) {
        let producer = self.producer.get_or_init(|| self.kafka.producer().unwrap());
        let topic = self.kafka.topic(name::ORDERS_CREATED);
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    pub async fn publish(&self, order: &OrderCreated) {
        self.publish_raw(Some(&order.order_id.to_string()), &order.encode())
            .await;
    }

    /// Reads `topic` from the start until `done` holds for what was read, or `within` passes.
    pub async fn read_until(
        &self,
        topic: &str,
        within: Duration,
        done: impl FnMut(&[OwnedMessage]) -> bool,
    ) -> Vec<OwnedMessage> {
        read_until(&self.kafka, topic, within, done).await
    }

    /// The state events per order, once every order in `orders` has a final or dispatched
    /// state (or `within` passes).
    pub async fn settled_states(
        &self,
        orders: &[Uuid],
        within: Duration,
    ) -> BTreeMap<Uuid, Vec<OrderStateEvent>> {
        let messages = self
            .read_until(name::ORDERS_STATE, within, |seen| {
                let settled: std::collections::HashSet<Uuid> = seen
                    .iter()
                    .map(decode_state)
                    .filter(|s| s.version >= 2)
                    .map(|s| s.order_id)
                    .collect();
                orders.iter().all(|o| settled.contains(o))
            })
            .await;
        let mut by_order: BTreeMap<Uuid, Vec<OrderStateEvent>> = BTreeMap::new();
        for m in &messages {
            let s = decode_state(m);
            by_order.entry(s.order_id).or_default().push(s);
        }
        by_order
    }

    pub async fn dispatched(&self, count: usize, within: Duration) -> Vec<OrderDispatched> {
        self.read_until(name::ORDERS_DISPATCHED, within, |seen| seen.len() >= count)
            .await
            .iter()
            .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
            .collect()
    }
}

/// Reads `topic` (without prefix) from the start until `done` holds for what was read, or
/// `within` passes.
pub async fn read_until(
    kafka: &KafkaConfig,
    topic: &str,
    within: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", unique("g-reader-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&kafka.topic(topic)]).unwrap();
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while !done(&seen) && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            seen.push(m.detach());
        }
    }
    seen
}

/// Every record of `topic` (without prefix) up to its current end, what compaction left
/// of it included. The last record of a partition is in its active segment, which is never
/// compacted, so the end is always reached.
pub async fn read_to_end(kafka: &KafkaConfig, topic: &str) -> Vec<OwnedMessage> {
    let topic = kafka.topic(topic);
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", unique("g-reader-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let mut ends = std::collections::HashMap::new();
    for p in metadata.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(&topic, p.id(), Duration::from_secs(10))
            .unwrap();
        if high > 0 {
            ends.insert(p.id(), high - 1);
        }
    }
    consumer.subscribe(&[&topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{topic} not read to its end within 60 s"
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            if ends.get(&m.partition()) == Some(&m.offset()) {
                ends.remove(&m.partition());
            }
            seen.push(m.detach());
        }
    }
    seen
}

/// At least `count` messages of `topic`, or what arrived within `within`.
pub async fn read_all(
    kafka: &KafkaConfig,
    topic: &str,
    count: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    read_until(kafka, topic, within, |seen| seen.len() >= count).await
}

/// A stage process's log file: not empty, no credential, nothing PIN-shaped, no panic (G5).
pub fn assert_clean_log(path: &std::path::Path) {
    let name = path.display();
    let text = std::fs::read_to_string(path).unwrap();
    assert!(!text.is_empty(), "{name}: nothing logged");
    assert!(
        !text.contains(KOD) && !text.contains(SIFRE),
        "{name}: a credential logged"
    );
    assert!(!super::logs::has_pin_shape(&text), "{name}: a PIN logged");
    assert!(!text.contains("panicked"), "{name}: a panic");
}

pub fn decode_state(m: &OwnedMessage) -> OrderStateEvent {
    let s: OrderStateEvent =
        serde_json::from_slice(m.payload().expect("a payload")).expect("a state event");
    assert_eq!(
        m.key(),
        Some(s.order_id.to_string().as_bytes()),
        "state events are keyed by order id"
    );
    s
}

/// A valid order for the simulator's catalog (oyun 412, kupur 25/50/100).
pub fn order(kupur: &str) -> OrderCreated {
    OrderCreated {
        schema_version: SCHEMA_VERSION,
        order_id: Uuid::new_v4(),
        tenant_id: "shop-1".into(),
        provider_account: ACCOUNT.into(),
        product: BTreeMap::from([
            ("oyun".into(), "412".into()),
            ("kupur".into(), kupur.into()),
        ]),
        user_identifier: "5551234567".into(),
        user_extra: "oyuncu#42".into(),
        created_at: Utc::now(),
        deadline: None,
    }
}

/// Waits until consumer group `group` has committed, on every partition of `topic` (without
/// prefix), the offset past the last record there now: the group has moved past whatever
/// was published before the call. Fails after `within` with what it saw.
pub async fn assert_committed_to_end(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    within: Duration,
) {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::{Offset, TopicPartitionList};
    let topic = kafka.topic(topic);
    let config = kafka.client_config();
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        // Not subscribed: it only asks the group coordinator, never joins the group.
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let mut ends = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(&topic, p.id(), Duration::from_secs(10))
                .unwrap();
            ends.add_partition_offset(&topic, p.id(), Offset::Offset(high))
                .unwrap();
        }
        let deadline = Instant::now() + within;
        loop {
            let committed = consumer
                .committed_offsets(ends.clone(), Duration::from_secs(10))
                .unwrap();
            let behind: Vec<(i32, Offset, Offset)> = ends
                .elements()
                .iter()
                .filter_map(|end| {
                    let Offset::Offset(high) = end.offset() else {
                        return None;
                    };
                    let at = committed
                        .find_partition(&topic, end.partition())
                        .map(|c| c.offset())
                        .unwrap_or(Offset::Invalid);
                    let past = matches!(at, Offset::Offset(o) if o >= high);
                    (high > 0 && !past).then_some((end.partition(), at, end.offset()))
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "group {group} has not committed past the end of {topic} within {within:?}: \
                 (partition, committed, end) {behind:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
}
