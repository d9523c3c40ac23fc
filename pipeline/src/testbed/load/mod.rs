//! `orderflow load`: publishes a realistic stream of orders and follows each to the point
//! where the pipeline has answered it, with a live progress line and a summary.
//!
//! It plays the shop: orders of a few tenants and denominations at a steady rate (or as
//! fast as the broker takes them), a share the provider will reject and a share of broken
//! events. An order counts as answered once `orders.state` has its final state (or its
//! dispatched state, with `--until dispatched`), or `orders.dlq` has its event; what is
//! never answered is reported as missing (G2) and makes the command fail.
//!
//! Every latency is measured from the order's **intended send time**, so that a generator
//! or a producer falling behind cannot hide queueing (coordinated omission): at a rate R
//! the i-th order is due at start + i/R ([`intended_offset`]) whenever it is actually
//! sent; at `max` it is due the moment the generator first tries to hand it to the
//! producer (an attempt refused because the producer's queue is full keeps that time).
//! Given a database pool ([`run`]'s `rows`), an order is final only once its row in
//! PostgreSQL's `orders` table is, at the row's `updated_at` (the sink's write); the
//! final state event read from `orders.state` is then reported alongside. Once a second a
//! [`Snapshot`] (counts so far, and the orders waiting per tier, read from the poll
//! group's lag) feeds the progress line and [`crate::testbed::bench`].

use crate::core::event::{OrderCreated, OrderStateEvent, SCHEMA_VERSION};
use crate::core::lifecycle::OrderState;
use crate::core::schedule;
use crate::core::seeded::Seeded;
use crate::kafka::lag::GroupLag;
use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::shutdown::Shutdown;
use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

#[derive(Clone, Debug, clap::Args)]
pub struct LoadConfig {
    /// Orders to publish.
    #[arg(long, default_value_t = 500)]
    pub orders: usize,
    /// Orders published per second, or `max` for as fast as the broker acknowledges them.
    #[arg(long, default_value = "50")]
    pub rate: Rate,
    /// Provider account the orders name.
    #[arg(long, default_value = "znet-demo")]
    pub account: String,
    /// Share of orders for a denomination the provider does not sell (they end rejected).
    #[arg(long, default_value_t = 0.03)]
    pub reject_share: f64,
    /// Share of events that are broken on purpose (they end in orders.dlq).
    #[arg(long, default_value_t = 0.02)]
    pub invalid_share: f64,
    /// Give up waiting for answers after this many seconds past the last publish.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
    /// What counts as an answer: a final state (completed or failed), or already the
    /// dispatched state (when no poll stage runs).
    #[arg(long, value_enum, default_value_t = Until::Final)]
    pub until: Until,
    #[command(flatten)]
    pub depth: DepthArgs,
}

/// Where the orders waiting for a status check are counted: the poll group's lag on
/// `orders.dispatched` (label `first`) and on each tier topic.
#[derive(Clone, Debug, clap::Args)]
pub struct DepthArgs {
    /// Consumer group of the poll stage.
    #[arg(long = "poll-group", env = "ORDERFLOW_POLL_GROUP", default_value = crate::poll::DEFAULT_GROUP)]
    pub poll_group: String,
    /// The poll stage's tiers, to name their topics.
    #[arg(long = "check-tiers", env = "ORDERFLOW_CHECK_TIERS", default_value = crate::poll::DEFAULT_CHECK_TIERS)]
    pub check_tiers: String,
}

impl DepthArgs {
    /// The poll group's lag reader, labels `first` then one per tier.
    pub fn lag(&self, kafka: &KafkaConfig) -> Result<GroupLag, LoadError> {
        let tiers = schedule::parse_tiers(&self.check_tiers)
            .map_err(|e| LoadError::Tiers(e.to_string()))?;
        let mut topics = vec![("first".to_owned(), kafka.topic(name::ORDERS_DISPATCHED))];
        for delay in tiers {
            let label = schedule::label(delay);
            topics.push((label.clone(), kafka.topic(&name::status_check(&label))));
        }
        Ok(GroupLag::new(kafka, &self.poll_group, topics)?)
    }
}

/// Offered load: a steady rate, or as fast as the broker acknowledges.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "{s:?} is not a rate: give orders per second (a positive number) or `max`"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::PerSecond(r) => write!(f, "{r}"),
            Rate::Max => f.write_str("max"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    Dispatched,
    Final,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("the load generator's Kafka client failed ({0})")]
    Kafka(#[from] KafkaError),
    #[error("--{0} must be between 0 and 1")]
    Share(&'static str),
    #[error("--check-tiers is invalid: {0}")]
    Tiers(String),
}

/// How one published event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    Completed,
    Failed,
    DeadLettered,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Completed => "completed",
            Answer::Failed => "failed",
            Answer::DeadLettered => "dead-lettered",
        }
    }
}

/// One order's path, every time measured from its intended send time.
#[derive(Clone, Copy, Debug)]
struct Journey {
    /// When it was meant to be sent (see [`intended_offset`]).
    intended: Instant,
    /// From the intended time to the producer accepting it into its queue.
    handed: Duration,
    /// Its dispatched state read from `orders.state`.
    dispatched: Option<Duration>,
    /// Its final state read from `orders.state`, or its event read from `orders.dlq`.
    answer: Option<(Answer, Duration)>,
    /// Its row final in PostgreSQL (row mode only): the row's `updated_at`.
    row: Option<Duration>,
}

impl Journey {
    fn answered(&self, until: Until, rows: bool) -> bool {
        if rows && until == Until::Final {
            return self.row.is_some() || matches!(self.answer, Some((Answer::DeadLettered, _)));
        }
        self.answer.is_some() || (until == Until::Dispatched && self.dispatched.is_some())
    }
}

/// When the `i`-th order (from 0) is meant to be sent, after the start: `i / rate` at a
/// fixed rate. `None` at `max`: there the intended time is the generator's first attempt
/// to hand the order to the producer.
pub fn intended_offset(rate: Rate, i: usize) -> Option<Duration> {
    match rate {
        Rate::PerSecond(r) => Some(Duration::from_secs_f64(i as f64 / r)),
        Rate::Max => None,
    }
}

/// A latency from the intended time, both given as offsets from the run's start (zero if
/// the end is somehow earlier, as a clock step could make it).
pub fn since_intended(intended: Duration, done: Duration) -> Duration {
    done.saturating_sub(intended)
}

/// Answers per second between the moments 10 % and 90 % of them arrived (no ramp, no
/// tail), from each answer's time since the start in seconds (any order).
pub fn steady_rate(answer_secs: &[f64]) -> Option<f64> {
    let window = steady_window(answer_secs)?;
    let n = answer_secs.len();
    let (a, b) = (n / 10, (n * 9) / 10);
    Some((b - a) as f64 / (window.1 - window.0))
}

/// The times (seconds since the start) at which 10 % and 90 % of the answers had arrived,
/// when they differ.
pub fn steady_window(answer_secs: &[f64]) -> Option<(f64, f64)> {
    let mut sorted = answer_secs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n < 10 {
        return None;
    }
    let (a, b) = (sorted[n / 10], sorted[((n * 9) / 10).min(n - 1)]);
    (b > a).then_some((a, b))
}

/// The run's counts at one moment, taken once a second.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Snapshot {
    /// Seconds since the first publish.
    pub at: f64,
    pub published: usize,
    /// Orders the provider accepted (dispatched, whatever came after).
    pub dispatched: usize,
    pub completed: usize,
    pub failed: usize,
    pub dead_lettered: usize,
    /// Final states read from `orders.state` (ahead of `completed` + `failed` by what the
    /// sink has yet to write, in row mode).
    pub final_events: usize,
    /// Orders waiting per tier (`first`, then each tier's delay), when the broker answered.
    pub waiting: Vec<(String, i64)>,
}

/// Told every snapshot as it is taken (the benchmark samples processes alongside).
pub trait Observer {
    fn observe(&mut self, snapshot: &Snapshot);
}

impl Observer for () {
    fn observe(&mut self, _: &Snapshot) {}
}

/// What the run measured.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub published: usize,
    /// Answered orders per answer (`dispatched` counts only with `--until dispatched`).
    pub answered: BTreeMap<String, usize>,
    pub missing: usize,
    pub elapsed: Duration,
    /// Created-to-answer latencies of answered orders, sorted.
    pub latencies: Vec<Duration>,
    /// Created-to-dispatched latencies of accepted orders, sorted.
    pub dispatch_latencies: Vec<Duration>,
    /// Created-to-final latencies of orders that reached completed or failed, sorted: to
    /// the final row in PostgreSQL in row mode, else to the final state event.
    pub final_latencies: Vec<Duration>,
    /// Created-to-final-state-event (read from `orders.state`) latencies, sorted.
    pub final_event_latencies: Vec<Duration>,
    /// From the intended time to the producer accepting the order, sorted: how far the
    /// generator (or the producer's queue) fell behind.
    pub handed_latencies: Vec<Duration>,
    /// When each answered order was answered, seconds since the start.
    pub answer_secs: Vec<f64>,
    /// Whether final meant the row in PostgreSQL.
    pub rows: bool,
    /// Order ids the row watcher looked up in PostgreSQL, all queries together.
    pub row_lookups: usize,
    /// From the start (the first order's intended time) to the last answer.
    pub last_answer: Duration,
    /// One snapshot per second.
    pub series: Vec<Snapshot>,
}

/// The `p`th percentile (0–100) of sorted durations, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)])
}

/// A duration for people: `850 ms`, `12.3 s`.
pub fn human(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_secs(10) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
    }
}

impl LoadReport {
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        percentile(&self.latencies, p)
    }

    pub fn answered_total(&self) -> usize {
        self.answered.values().sum()
    }

    /// Answered orders per second, from the first publish to the last answer.
    pub fn throughput(&self) -> f64 {
        self.answered_total() as f64 / self.last_answer.as_secs_f64().max(1e-9)
    }

    /// The summary table printed at the end of a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "published      {} orders (the run took {:.1} s)",
            self.published,
            self.elapsed.as_secs_f64(),
        );
        for (answer, n) in &self.answered {
            let _ = writeln!(out, "  {answer:<15}{n}");
        }
        let _ = writeln!(out, "  missing        {}", self.missing);
        let _ = writeln!(
            out,
            "throughput     {:.1} answered orders/s (first publish to last answer, {:.1} s)",
            self.throughput(),
            self.last_answer.as_secs_f64()
        );
        latency_table(
            &mut out,
            "latency        ",
            &[
                ("intended→producer", &self.handed_latencies),
                ("created→dispatched", &self.dispatch_latencies),
                ("created→final", &self.final_latencies),
                ("created→answer", &self.latencies),
            ],
        );
        out
    }
}

/// Rows of p50, p95, p99 and max under a header line that starts with `lead`; each row is
/// a name and its sorted latencies.
pub fn latency_table(out: &mut String, lead: &str, rows: &[(&str, &[Duration])]) {
    let _ = writeln!(
        out,
        "{lead}{:<22}{:>10}{:>10}{:>10}{:>10}",
        "", "p50", "p95", "p99", "max"
    );
    let indent = " ".repeat(lead.chars().count());
    for (what, sorted) in rows {
        let _ = writeln!(
            out,
            "{indent}{what:<22}{:>10}{:>10}{:>10}{:>10}",
            human(percentile(sorted, 50.0)),
            human(percentile(sorted, 95.0)),
            human(percentile(sorted, 99.0)),
            human(percentile(sorted, 100.0)),
        );
    }
}

/// One event to publish: its key and bytes.
pub(crate) fn make_event(mix: &mut Seeded, config: &LoadConfig, i: usize) -> (Uuid, Vec<u8>) {
    let order_id = Uuid::new_v4();
    let roll = mix.fraction();
    if roll < config.invalid_share {
        let broken = match i % 3 {
            0 => b"{\"schema_version\":1,\"order_id\":".to_vec(),
            1 => format!(
                "{{\"schema_version\":1,\"order_id\":\"{order_id}\",\"tenant_id\":\"shop-1\"}}"
            )
            .into_bytes(),
            _ => format!("{{\"schema_version\":1,\"order_id\":\"not-a-uuid-{i}\"}}").into_bytes(),
        };
        return (order_id, broken);
    }
    let kupur = if roll < config.invalid_share + config.reject_share {
        "999"
    } else {
        ["25", "50", "100"][i % 3]
    };
    let order = OrderCreated {
        schema_version: SCHEMA_VERSION,
        order_id,
        tenant_id: format!("shop-{}", 1 + i % 3),
        provider_account: config.account.clone(),
        product: BTreeMap::from([
            ("oyun".into(), "412".into()),
            ("kupur".into(), kupur.into()),
        ]),
        user_identifier: format!("555{:07}", i),
        user_extra: format!("oyuncu#{i}"),
        created_at: Utc::now(),
        deadline: None,
    };
    (order_id, order.encode())
}

/// Orders handed to the producer per turn of the loop, so that the outcome topics are
/// read while a large backlog is being sent.
const SEND_BATCH: usize = 1_000;

/// How often the row watcher asks PostgreSQL which candidate orders are final.
const ROW_POLL: Duration = Duration::from_millis(150);

/// Order ids per row-watcher query.
const ROW_CHUNK: usize = 5_000;

/// An order's row found final in PostgreSQL.
struct FinalRow {
    order_id: Uuid,
    completed: bool,
    updated_at: DateTime<Utc>,
}

/// Every [`ROW_POLL`], looks up the candidates (orders whose final state event was read
/// from `orders.state`, so their row is due) by primary key and reports those whose row is
/// final, each once. Returns how many ids it looked up in all.
fn watch_rows(
    pool: PgPool,
    mut candidates: mpsc::UnboundedReceiver<Uuid>,
    found: mpsc::UnboundedSender<FinalRow>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut pending: Vec<Uuid> = Vec::new();
        let mut looked_up = 0usize;
        let mut tick = tokio::time::interval(ROW_POLL);
        let mut open = true;
        loop {
            tick.tick().await;
            while open {
                match candidates.try_recv() {
                    Ok(id) => pending.push(id),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if !open {
                return looked_up;
            }
            let mut still = Vec::with_capacity(pending.len());
            for chunk in pending.chunks(ROW_CHUNK) {
                looked_up += chunk.len();
                let rows = sqlx::query_as::<_, (Uuid, String, DateTime<Utc>)>(
                    "SELECT order_id, state, updated_at FROM orders
                     WHERE order_id = ANY($1) AND state IN ('completed', 'failed')",
                )
                .bind(chunk)
                .fetch_all(&pool)
                .await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "looking up final rows failed; trying again");
                        still.extend_from_slice(chunk);
                        continue;
                    }
                };
                let done: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.0).collect();
                still.extend(chunk.iter().filter(|id| !done.contains(id)));
                for (order_id, state, updated_at) in rows {
                    let row = FinalRow {
                        order_id,
                        completed: state == "completed",
                        updated_at,
                    };
                    if found.send(row).is_err() {
                        return looked_up;
                    }
                }
            }
            pending = still;
        }
    })
}

/// Publishes the load and follows it until every event is answered or the wait ends.
/// With `rows`, an order is final once its row in PostgreSQL is (see the module's notes).
pub async fn run(
    kafka: &KafkaConfig,
    config: &LoadConfig,
    observer: &mut dyn Observer,
    rows: Option<PgPool>,
    mut shutdown: Shutdown,
) -> Result<LoadReport, LoadError> {
    for (flag, share) in [
        ("reject-share", config.reject_share),
        ("invalid-share", config.invalid_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            return Err(LoadError::Share(flag));
        }
    }
    kafka.check_reachable()?;
    let lag = config.depth.lag(kafka)?;
    let watcher = watch_from_now(kafka).await?;
    let producer = kafka.producer()?;
    let created = kafka.topic(name::ORDERS_CREATED);
    let state_topic = kafka.topic(name::ORDERS_STATE);
    let row_mode = rows.is_some();

    // The depth per tier is read off the loop: a few dozen broker round trips a second.
    let (depth_tx, depth_rx) = tokio::sync::watch::channel(Vec::new());
    let depth_task = tokio::spawn(async move {
        loop {
            if let Some(depth) = lag.sample_async().await {
                if depth_tx.send(depth).is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
    });
    let (candidate_tx, candidate_rx) = mpsc::unbounded_channel();
    let (row_tx, mut row_rx) = mpsc::unbounded_channel();
    let row_task = rows.map(|pool| watch_rows(pool, candidate_rx, row_tx));

    // The monotonic clock times the run; the wall clock, read at the same moment, maps a
    // row's `updated_at` (PostgreSQL's clock, this machine's) onto it.
    let start = Instant::now();
    let start_wall = Utc::now();
    let mut journeys: HashMap<Uuid, Journey> = HashMap::new();
    let mut acked = 0usize;
    let mut counts = Snapshot::default();
    let mut answered = 0usize;
    let mut answer_secs = Vec::new();
    let mut last_answer = Duration::ZERO;
    let mut series = Vec::new();
    let mut sends = FuturesUnordered::new();
    let mut mix = Seeded::new(0x5EED);
    let mut next_publish = 0usize;
    // An order the producer refused (its queue full), retried with its first attempt's time.
    let mut refused: Option<(Uuid, Vec<u8>, Instant)> = None;
    let mut retry_at = tokio::time::Instant::now();
    let mut progress_tick = tokio::time::interval(Duration::from_secs(1));
    let mut wait_until: Option<tokio::time::Instant> = None;
    let progress = Progress::new();

    loop {
        if next_publish == config.orders
            && refused.is_none()
            && sends.is_empty()
            && answered == journeys.len()
        {
            break;
        }
        let waiting = async {
            match wait_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // When the generator next has an order to hand over.
        let next_send = if refused.is_some() {
            Some(retry_at)
        } else if next_publish < config.orders {
            Some(match intended_offset(config.rate, next_publish) {
                Some(offset) => tokio::time::Instant::from_std(start + offset),
                None => tokio::time::Instant::now(),
            })
        } else {
            None
        };
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = waiting => break,
            _ = tokio::time::sleep_until(next_send.unwrap_or_else(tokio::time::Instant::now)), if next_send.is_some() => {
                for _ in 0..SEND_BATCH {
                    let (id, bytes, intended) = match refused.take() {
                        Some(r) => r,
                        None => {
                            if next_publish == config.orders {
                                break;
                            }
                            let intended = match intended_offset(config.rate, next_publish) {
                                Some(offset) => start + offset,
                                None => Instant::now(),
                            };
                            if intended > Instant::now() {
                                break;
                            }
                            let (id, bytes) = make_event(&mut mix, config, next_publish);
                            next_publish += 1;
                            (id, bytes, intended)
                        }
                    };
                    let key = id.to_string();
                    let handed = producer
                        .send_result(FutureRecord::to(&created).key(&key).payload(&bytes))
                        .map_err(|(e, _)| e);
                    match handed {
                        Ok(delivery) => {
                            journeys.insert(id, Journey {
                                intended,
                                handed: intended.elapsed(),
                                dispatched: None,
                                answer: None,
                                row: None,
                            });
                            sends.push(delivery);
                        }
                        Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                            refused = Some((id, bytes, intended));
                            retry_at = tokio::time::Instant::now() + Duration::from_millis(2);
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                counts.published = journeys.len();
            }
            Some(sent) = sends.next() => {
                match sent {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(e.into()),
                    Err(_) => return Err(KafkaError::Canceled.into()),
                }
                acked += 1;
                if next_publish == config.orders && refused.is_none() && sends.is_empty() {
                    wait_until = Some(tokio::time::Instant::now() + Duration::from_secs(config.wait_secs));
                }
            }
            Some(row) = row_rx.recv() => {
                let Some(journey) = journeys.get_mut(&row.order_id) else { continue };
                if journey.row.is_some() {
                    continue;
                }
                let was_answered = journey.answered(config.until, row_mode);
                // Offsets from the start: the row's write on the wall clock, the intended time.
                let done = (row.updated_at - start_wall).to_std().unwrap_or(Duration::ZERO);
                journey.row = Some(since_intended(journey.intended - start, done));
                if row.completed {
                    counts.completed += 1;
                } else {
                    counts.failed += 1;
                }
                if !was_answered && journey.answered(config.until, row_mode) {
                    answered += 1;
                    answer_secs.push(done.as_secs_f64());
                    last_answer = last_answer.max(done);
                }
            }
            received = watcher.recv() => {
                let message = match received {
                    Ok(m) => m,
                    Err(e) => { tracing::warn!(error = %e, "watching the outcome topics failed"); continue; }
                };
                let Some(id) = message.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| k.parse::<Uuid>().ok()) else { continue };
                // Events of orders this run did not publish are someone else's.
                let Some(journey) = journeys.get_mut(&id) else { continue };
                let was_answered = journey.answered(config.until, row_mode);
                let since = journey.intended.elapsed();
                if message.topic() == state_topic {
                    match message.payload().and_then(|p| serde_json::from_slice::<OrderStateEvent>(p).ok()).map(|s| s.state) {
                        Some(OrderState::Dispatched) if journey.dispatched.is_none() => {
                            journey.dispatched = Some(since);
                            counts.dispatched += 1;
                        }
                        Some(state @ (OrderState::Completed | OrderState::Failed)) if journey.answer.is_none() => {
                            let answer = if state == OrderState::Completed { Answer::Completed } else { Answer::Failed };
                            journey.answer = Some((answer, since));
                            counts.final_events += 1;
                            if row_mode {
                                // Its row is due: the row watcher looks for it from now on.
                                let _ = candidate_tx.send(id);
                            } else {
                                match answer {
                                    Answer::Completed => counts.completed += 1,
                                    _ => counts.failed += 1,
                                }
                            }
                        }
                        _ => {}
                    }
                } else if journey.answer.is_none() {
                    journey.answer = Some((Answer::DeadLettered, since));
                    counts.dead_lettered += 1;
                }
                if !was_answered && journey.answered(config.until, row_mode) {
                    answered += 1;
                    let at = start.elapsed();
                    answer_secs.push(at.as_secs_f64());
                    last_answer = last_answer.max(at);
                }
            }
            _ = progress_tick.tick() => {
                counts.at = start.elapsed().as_secs_f64();
                counts.waiting = depth_rx.borrow().clone();
                progress.show(&counts, journeys.len() - answered, false);
                observer.observe(&counts);
                series.push(counts.clone());
            }
        }
    }
    // The last answers may come after the last tick: one more snapshot closes the series.
    counts.at = start.elapsed().as_secs_f64();
    counts.waiting = depth_rx.borrow().clone();
    observer.observe(&counts);
    series.push(counts.clone());
    progress.show(&counts, journeys.len() - answered, true);
    progress.done();
    depth_task.abort();
    drop(candidate_tx);
    let row_lookups = match row_task {
        Some(task) => task.await.unwrap_or(0),
        None => 0,
    };

    let mut report = LoadReport {
        published: acked,
        elapsed: start.elapsed(),
        last_answer,
        series,
        answer_secs,
        rows: row_mode,
        row_lookups,
        ..LoadReport::default()
    };
    for journey in journeys.values() {
        report.handed_latencies.push(journey.handed);
        if let Some(d) = journey.dispatched {
            report.dispatch_latencies.push(d);
        }
        if let Some((answer, d)) = journey.answer {
            if answer != Answer::DeadLettered {
                report.final_event_latencies.push(d);
                if !row_mode {
                    report.final_latencies.push(d);
                }
            }
        }
        if let Some(d) = journey.row {
            report.final_latencies.push(d);
        }
        let answer = match (row_mode, journey.answer, journey.row) {
            (true, Some((Answer::DeadLettered, d)), _) => Some((Answer::DeadLettered, d)),
            (true, Some((answer, _)), Some(d)) => Some((answer, d)),
            (true, _, _) => None,
            (false, answer, _) => answer,
        };
        match (answer, journey.dispatched) {
            (Some((answer, d)), _) => {
                *report
                    .answered
                    .entry(answer.as_str().to_owned())
                    .or_default() += 1;
                report.latencies.push(d);
            }
            (None, Some(d)) if config.until == Until::Dispatched => {
                *report.answered.entry("dispatched".to_owned()).or_default() += 1;
                report.latencies.push(d);
            }
            _ => report.missing += 1,
        }
    }
    report.latencies.sort();
    report.dispatch_latencies.sort();
    report.final_latencies.sort();
    report.final_event_latencies.sort();
    report.handed_latencies.sort();
    Ok(report)
}

/// A consumer positioned at the current end of orders.state and orders.dlq, so it sees
/// only what this run causes.
async fn watch_from_now(kafka: &KafkaConfig) -> Result<StreamConsumer<Context>, LoadError> {
    let consumer: StreamConsumer<Context> = kafka
        .client_config()
        .set("group.id", format!("orderflow.load.{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create_with_context(Context)
        .map_err(KafkaSetupError::Client)?;
    // Right after `topics apply` a partition may not have a leader yet: ask again a while.
    let mut attempts = 0;
    let tpl = loop {
        match end_offsets(kafka, &consumer) {
            Ok(tpl) => break tpl,
            Err(e) if attempts < 20 => {
                tracing::debug!(error = %e, "end offsets not available yet");
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The current end of every partition of orders.state and orders.dlq.
fn end_offsets(
    kafka: &KafkaConfig,
    consumer: &StreamConsumer<Context>,
) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for topic in [
        kafka.topic(name::ORDERS_STATE),
        kafka.topic(name::ORDERS_DLQ),
    ] {
        let metadata = consumer.fetch_metadata(Some(&topic), kafka.connect_timeout())?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, p.id(), kafka.connect_timeout())?;
                tpl.add_partition_offset(&topic, p.id(), Offset::Offset(high))?;
            }
        }
    }
    Ok(tpl)
}

/// The live progress line: rewritten in place on a terminal, a line every 5 s otherwise.
struct Progress {
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// `last` shows the line whatever the time (the closing one).
    fn show(&self, now: &Snapshot, open: usize, last: bool) {
        let secs = now.at.round() as u64;
        if !self.tty && !last && secs % 5 != 0 {
            return;
        }
        let mut line = format!(
            "[{secs:>4}s] created {} | dispatched {} | completed {} | failed {} | dead-lettered {} | open {open}",
            now.published, now.dispatched, now.completed, now.failed, now.dead_lettered,
        );
        if !now.waiting.is_empty() {
            line.push_str(" | waiting");
            for (tier, n) in &now.waiting {
                let _ = write!(line, " {tier}:{n}");
            }
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(invalid: f64, reject: f64) -> LoadConfig {
        LoadConfig {
            orders: 1000,
            rate: Rate::PerSecond(1.0),
            account: "a".into(),
            reject_share: reject,
            invalid_share: invalid,
            wait_secs: 1,
            until: Until::Final,
            depth: DepthArgs {
                poll_group: crate::poll::DEFAULT_GROUP.into(),
                check_tiers: crate::poll::DEFAULT_CHECK_TIERS.into(),
            },
        }
    }

    #[test]
    fn the_mix_follows_the_shares() {
        let c = config(0.1, 0.2);
        let mut mix = Seeded::new(7);
        let (mut invalid, mut rejected) = (0, 0);
        for i in 0..1000 {
            let (_, bytes) = make_event(&mut mix, &c, i);
            match OrderCreated::decode(&bytes, 1 << 20) {
                Err(_) => invalid += 1,
                Ok(o) if o.product["kupur"] == "999" => rejected += 1,
                Ok(_) => {}
            }
        }
        assert!((70..130).contains(&invalid), "{invalid}");
        assert!((150..250).contains(&rejected), "{rejected}");
    }

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let report = LoadReport {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..LoadReport::default()
        };
        assert_eq!(report.percentile(50.0), Some(Duration::from_millis(51)));
        assert_eq!(report.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(LoadReport::default().percentile(50.0), None);
    }

    #[test]
    fn the_intended_schedule_is_fixed_by_the_rate() {
        let at = |i| intended_offset(Rate::PerSecond(250.0), i);
        assert_eq!(at(0), Some(Duration::ZERO));
        assert_eq!(at(1), Some(Duration::from_millis(4)));
        assert_eq!(at(1000), Some(Duration::from_secs(4)));
        // At `max` no schedule: the first attempt to hand the order over is its time.
        assert_eq!(intended_offset(Rate::Max, 7), None);
    }

    #[test]
    fn latencies_count_from_the_intended_time_so_a_stalled_generator_shows() {
        // Ten orders due at 100/s (every 10 ms); the generator stalls and sends them all
        // at 1 s, and each completes 5 ms after it was sent. Measured from the send the
        // latency would be 5 ms for all; from the intended time it is 915..1005 ms.
        let done = Duration::from_millis(1005);
        let mut latencies: Vec<Duration> = (0..10)
            .map(|i| since_intended(intended_offset(Rate::PerSecond(100.0), i).unwrap(), done))
            .collect();
        latencies.sort();
        assert_eq!(latencies[0], Duration::from_millis(915));
        assert_eq!(
            percentile(&latencies, 50.0),
            Some(Duration::from_millis(965))
        );
        assert_eq!(
            percentile(&latencies, 100.0),
            Some(Duration::from_millis(1005))
        );
        // An end before the intended time (a clock step) counts as zero, not a panic.
        assert_eq!(
            since_intended(Duration::from_secs(2), Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_steady_rate_leaves_out_ramp_and_tail() {
        // 100 answers: 10 in the first 5 s (ramp), then one every 0.1 s, then a slow tail.
        let mut secs: Vec<f64> = (0..10).map(|i| i as f64 * 0.5).collect();
        secs.extend((0..80).map(|i| 5.0 + i as f64 * 0.1));
        secs.extend((0..10).map(|i| 20.0 + i as f64 * 3.0));
        secs.reverse(); // any order
        let (a, b) = steady_window(&secs).unwrap();
        assert_eq!((a, b), (5.0, 20.0));
        assert_eq!(steady_rate(&secs), Some(80.0 / 15.0));
        assert_eq!(steady_rate(&secs[..5]), None);
        assert_eq!(steady_rate(&[1.0; 20]), None);
    }

    #[test]
    fn a_rate_is_positive_or_max() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("250".parse::<Rate>(), Ok(Rate::PerSecond(250.0)));
        for bad in ["0", "-3", "NaN", "inf", "fast"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains("positive number") && e.contains("max"), "{e}");
        }
    }
}
