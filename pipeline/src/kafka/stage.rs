//! The consumer loop every stage runs on: at-least-once, work in micro-batches, offsets
//! committed only up to the contiguous prefix of durable work (G2), delays without
//! refetching (G4).
//!
//! The decisions (what to hand out, in which batches, what to pause, which offsets to
//! store) are made by the pure [`Engine`](crate::core::engine::Engine), tested without a
//! broker; this module connects it to a librdkafka consumer and to a stage's [`Handler`].
//! The loop keeps polling the consumer at all times (so the group never evicts it). A
//! message that is not due yet ([`Handler::due_at`], read from a header without decoding
//! the payload) waits in its partition's buffer while the partition keeps being fetched;
//! only a full buffer pauses it, so each delayed message is fetched about once. Due
//! messages go to the handler in batches ([`BatchArgs`]), each batch in a task of its own;
//! every message of a batch is acknowledged on its own ([`Ack`]), so one slow order holds
//! back only its partition's commit point, not its batch's. On a revoke the loop forgets
//! the revoked partitions: work still running for them finishes but moves no offset, and
//! the new owner redoes it (handlers are idempotent). A pause would survive a rebalance,
//! so revoked partitions are resumed in the rebalance callback, and assigned ones get the
//! loop's pause state. On shutdown it stops taking messages, waits a grace period for work
//! in flight, commits, and leaves the group.

use crate::core::engine::{self, Engine, Handout, Millis, Outcome, PartitionId, Token};
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::metrics::{Metrics, PartitionLabels};
use crate::shutdown::{Interrupted, Shutdown};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use prometheus_client::metrics::counter::Counter;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What a stage does with a batch of due messages. `handle` is called on the loop's task,
/// in fetch order (so a stage may enqueue in log order before returning its future); the
/// future runs in a task of its own. Each message's [`Ack`] is given once its effects are
/// durable; a message whose ack is dropped unacknowledged is redone by the next owner.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, batch: Vec<Delivery>, shutdown: Shutdown) -> BoxFuture<'static, ()>;

    /// When `message` may be handled; `None` (the default) means now. A message is never
    /// handed to [`Handler::handle`] before this time. Called once per message, before it
    /// is decoded: read a header, not the payload.
    fn due_at(&self, _message: &OwnedMessage) -> Option<DateTime<Utc>> {
        None
    }
}

/// A stage that works on one message at a time, run under the batched loop by
/// [`PerMessage`]: the messages of a batch are worked on concurrently.
pub trait MessageHandler: Send + Sync + 'static {
    /// Returns `Ok` once the message's effects are durable, or `Err(Interrupted)` if
    /// shutdown stopped it before that.
    fn handle(
        self: Arc<Self>,
        message: OwnedMessage,
        shutdown: Shutdown,
    ) -> BoxFuture<'static, Result<(), Interrupted>>;

    /// As [`Handler::due_at`].
    fn due_at(&self, _message: &OwnedMessage) -> Option<DateTime<Utc>> {
        None
    }
}

/// Runs a [`MessageHandler`] as a [`Handler`].
pub struct PerMessage<H>(pub Arc<H>);

impl<H: MessageHandler> Handler for PerMessage<H> {
    fn handle(self: Arc<Self>, batch: Vec<Delivery>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        // Each `handle` here, in order; their futures together.
        let mut running: FuturesUnordered<_> = batch
            .into_iter()
            .map(|delivery| {
                let (message, ack) = delivery.into_parts();
                let span = message_span(&message);
                let work = span.in_scope(|| Arc::clone(&self.0).handle(message, shutdown.clone()));
                async move {
                    if tracing::Instrument::instrument(work, span).await.is_ok() {
                        ack.durable();
                    }
                }
            })
            .collect();
        Box::pin(async move { while running.next().await.is_some() {} })
    }

    fn due_at(&self, message: &OwnedMessage) -> Option<DateTime<Utc>> {
        self.0.due_at(message)
    }
}

/// The span of one message's work, continuing the order's trace from the message's
/// headers, while OpenTelemetry is on; no span (and no cost) otherwise.
pub fn message_span(message: &OwnedMessage) -> tracing::Span {
    if !crate::telemetry::is_on() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "message",
        otel.name = message.topic(),
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        order_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, message.headers());
    if let Some(id) = crate::telemetry::trace_id(&span, message.headers()) {
        span.record("trace_id", id);
    }
    span
}

/// Drives `running` (a batch's per-message work) to the end, handing what finishes to
/// `settle` in groups: everything finished while earlier groups were being settled goes in
/// the next group, with at most `concurrent` groups being settled at once. So a handler
/// spends one statement and one round of sends on many messages under load, and at once
/// on a lone one; and work still running is polled while groups are settled.
pub async fn in_groups<T, W, F, Fut>(
    mut running: FuturesUnordered<W>,
    concurrent: usize,
    mut settle: F,
) where
    W: std::future::Future<Output = T>,
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut settling = FuturesUnordered::new();
    let mut waiting: Vec<T> = Vec::new();
    loop {
        if !waiting.is_empty() && settling.len() < concurrent.max(1) {
            settling.push(settle(std::mem::take(&mut waiting)));
        }
        if running.is_empty() && settling.is_empty() {
            if waiting.is_empty() {
                return;
            }
            continue;
        }
        tokio::select! {
            Some(done) = running.next(), if !running.is_empty() => {
                waiting.push(done);
                while let Some(Some(more)) = futures::FutureExt::now_or_never(running.next()) {
                    waiting.push(more);
                }
            }
            Some(()) = settling.next(), if !settling.is_empty() => {}
        }
    }
}

/// One message handed to a [`Handler`], with its acknowledgement.
pub struct Delivery {
    pub message: OwnedMessage,
    pub ack: Ack,
}

impl Delivery {
    pub fn into_parts(self) -> (OwnedMessage, Ack) {
        (self.message, self.ack)
    }
}

/// Tells the loop how one message ended. Dropped without [`Ack::durable`], it reports the
/// message interrupted: its offset does not move and the next owner redoes it.
pub struct Ack {
    token: Token,
    done: Option<mpsc::UnboundedSender<Done>>,
}

impl Ack {
    /// The message's effects are durable: its offset may be committed.
    pub fn durable(mut self) {
        self.send(Outcome::Durable);
    }

    fn send(&mut self, outcome: Outcome) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Done {
                token: self.token,
                outcome,
            });
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            Outcome::Panicked
        } else {
            Outcome::Interrupted
        };
        self.send(outcome);
    }
}

struct Done {
    token: Token,
    outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the handler panicked on {topic}/{partition} at offset {offset}; the message will be redone after a restart")]
    HandlerPanicked {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

/// How a stage batches its work and how much may wait for its due time (flags or
/// environment variables, shared by every stage).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct BatchArgs {
    /// Most messages handed to the stage's handler at once.
    #[arg(
        id = "stage_batch_max",
        long = "batch-max",
        env = "ORDERFLOW_BATCH_MAX",
        default_value_t = 256
    )]
    pub batch_max: usize,

    /// How long a due message may wait for its batch to fill, in milliseconds.
    #[arg(
        id = "stage_batch_linger_ms",
        long = "batch-linger-ms",
        env = "ORDERFLOW_BATCH_LINGER_MS",
        default_value_t = 5
    )]
    pub batch_linger_ms: u64,

    /// Messages waiting for their due time in this process; each partition it owns gets an
    /// even share, past which the partition is paused (and resumed below half).
    #[arg(
        id = "stage_wait_buffer_messages",
        long = "wait-buffer-messages",
        env = "ORDERFLOW_WAIT_BUFFER_MESSAGES",
        default_value_t = 100_000
    )]
    pub wait_buffer_messages: usize,

    /// Payload bytes waiting for their due time in this process, shared the same way.
    #[arg(
        id = "stage_wait_buffer_bytes",
        long = "wait-buffer-bytes",
        env = "ORDERFLOW_WAIT_BUFFER_BYTES",
        default_value_t = 32 * 1024 * 1024
    )]
    pub wait_buffer_bytes: usize,
}

impl Default for BatchArgs {
    fn default() -> Self {
        BatchArgs {
            batch_max: 256,
            batch_linger_ms: 5,
            wait_buffer_messages: 100_000,
            wait_buffer_bytes: 32 * 1024 * 1024,
        }
    }
}

/// How a stage consumes.
#[derive(Clone, Debug)]
pub struct StageOptions {
    pub group: String,
    pub topics: Vec<String>,
    /// Messages worked on at once, per topic.
    pub max_in_flight: usize,
    pub batch: BatchArgs,
    /// How long work in flight may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
    pub metrics: Arc<Metrics>,
}

impl StageOptions {
    fn engine(&self) -> engine::Settings {
        engine::Settings {
            batch_max: self.batch.batch_max,
            batch_linger_ms: self.batch.batch_linger_ms.min(60_000) as i64,
            max_in_flight: self.max_in_flight,
            buffer_messages: self.batch.wait_buffer_messages,
            buffer_bytes: self.batch.wait_buffer_bytes,
            queue_min: engine::QUEUE_PER_TOPIC,
        }
    }
}

/// Records revoked and assigned partitions from inside librdkafka's rebalance callback, for
/// the loop to act on, and turns librdkafka's statistics into the lag metric.
pub struct StageContext {
    group: String,
    metrics: Arc<Metrics>,
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: Mutex<Vec<(String, i32)>>,
    /// Messages librdkafka reported received from the broker, per partition, at the last
    /// statistics: `orderflow_messages_fetched_total` grows by the difference.
    received: Mutex<std::collections::HashMap<(String, i32), u64>>,
}

impl StageContext {
    fn new(group: &str, metrics: Arc<Metrics>) -> Self {
        StageContext {
            group: group.to_owned(),
            metrics,
            revoked: Mutex::default(),
            assigned: Mutex::default(),
            received: Mutex::default(),
        }
    }
}

impl ClientContext for StageContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        Context.log(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        Context.error(error, reason)
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut received = self.received.lock().expect("received lock");
        for (topic, t) in &statistics.topics {
            // Fetched from the broker, what a pause dropped and a resume fetched again
            // included: against `messages_handled`, the refetch amplification.
            let mut fetched = 0;
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let seen = received.entry((topic.clone(), *partition)).or_insert(0);
                // librdkafka's count starts again when the partition is assigned again.
                fetched += p.msgs.checked_sub(*seen).unwrap_or(p.msgs);
                *seen = p.msgs;
            }
            if fetched > 0 {
                self.metrics
                    .fetched
                    .get_or_create(&Metrics::topic(topic))
                    .inc_by(fetched);
            }
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; a negative lag is unknown.
                if *partition < 0 || !p.desired || p.consumer_lag < 0 {
                    continue;
                }
                let labels = PartitionLabels {
                    group: self.group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                };
                self.metrics
                    .consumer_lag
                    .get_or_create(&labels)
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Our pause ends with our ownership: librdkafka keeps an application pause
            // across a revoke, and a partition assigned back to us must not come back
            // paused with nothing left to resume it.
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "resuming revoked partitions failed");
            }
            let mut revoked = self.revoked.lock().expect("revoked lock");
            for e in tpl.elements() {
                revoked.push((e.topic().to_owned(), e.partition()));
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut assigned = self.assigned.lock().expect("assigned lock");
            for e in tpl.elements() {
                assigned.push((e.topic().to_owned(), e.partition()));
            }
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

/// Creates a consumer for a stage: offsets stored by the loop only, committed in the
/// background and on shutdown or revoke.
pub fn consumer(
    kafka: &KafkaConfig,
    options: &StageOptions,
) -> Result<StreamConsumer<StageContext>, KafkaSetupError> {
    let mut config = kafka.client_config();
    config
        .set("group.id", &options.group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", "5000")
        // Batches: the broker answers a fetch as soon as it has data, and waits at most
        // 100 ms when it has none, so a due message is not held back by an idle fetch.
        .set("fetch.wait.max.ms", "100")
        // librdkafka's own prefetch, small per partition: a pause drops it and the resume
        // fetches it again, so it bounds what a pause costs. With 10,000 (and up to 1 MB
        // per partition and fetch) the benchmark measured orders.created fetched 28 times
        // over; the loop's own queue (engine::QUEUE_PER_TOPIC) holds the work instead.
        .set("queued.min.messages", "100")
        .set("fetch.message.max.bytes", "32768")
        .set("queued.max.messages.kbytes", "16384")
        // A full prefetch queue delays the next fetch by 50 ms rather than the default
        // second, which showed as dispatch stalling for about a second at a time.
        .set("fetch.queue.backoff.ms", "50");
    // Again, so configured timeouts (session.timeout.ms on a managed cluster) win over
    // these defaults; the settings above that G2 depends on cannot be configured.
    kafka.apply_properties(&mut config)?;
    let consumer: StreamConsumer<StageContext> = config
        .create_with_context(StageContext::new(
            &options.group,
            Arc::clone(&options.metrics),
        ))
        .map_err(KafkaSetupError::Client)?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(KafkaSetupError::Client)?;
    Ok(consumer)
}

/// The stage's topics and their per-topic metric handles, made once.
struct Topics {
    names: Vec<String>,
    handled: Vec<Counter>,
    lateness: Vec<prometheus_client::metrics::histogram::Histogram>,
}

impl Topics {
    fn new(names: &[String], metrics: &Metrics) -> Self {
        let each = |family: &prometheus_client::metrics::family::Family<
            crate::metrics::TopicLabel,
            Counter,
        >| {
            names
                .iter()
                .map(|t| family.get_or_create(&Metrics::topic(t)).clone())
                .collect()
        };
        Topics {
            names: names.to_vec(),
            handled: each(&metrics.handled),
            lateness: names
                .iter()
                .map(|t| metrics.lateness.get_or_create(&Metrics::topic(t)).clone())
                .collect(),
        }
    }

    fn index(&self, topic: &str) -> Option<usize> {
        self.names.iter().position(|t| t == topic)
    }

    fn id(&self, topic: &str, partition: i32) -> Option<PartitionId> {
        self.index(topic)
            .map(|topic| PartitionId { topic, partition })
    }
}

fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// Runs `handler` over the consumer's messages until `shutdown`.
pub async fn run<H: Handler>(
    consumer: StreamConsumer<StageContext>,
    handler: Arc<H>,
    options: StageOptions,
    mut shutdown: Shutdown,
) -> Result<(), StageError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let metrics = Arc::clone(&options.metrics);
    let topics = Topics::new(&options.topics, &metrics);
    let mut engine: Engine<OwnedMessage> = Engine::new(options.engine(), topics.names.len());
    let mut panicked = None;
    let traced = crate::telemetry::is_on();

    // Rebalance callbacks run inside `recv()` without making it return: look at what they
    // recorded at least once a second, so an idle stage also resumes and reports readiness.
    let mut look = tokio::time::interval(Duration::from_secs(1));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Rebalances first: nothing is paused or stored for a partition librdkafka has
        // revoked since (its callbacks run inside `recv()`, on this task).
        rebalanced(&consumer, &topics, &mut engine, &metrics);
        apply(&consumer, &topics, &mut engine);
        let now = now_millis();
        if let Some(batch) = engine.batch(now) {
            start(batch, &handler, &topics, &done_tx, &shutdown, traced, now);
            continue;
        }
        let wake = [engine.next_due(), engine.next_linger()]
            .into_iter()
            .flatten()
            .min();
        let sleep_for = wake.map_or(Duration::from_secs(3600), |at| {
            Duration::from_millis((at - now).max(0) as u64)
        });
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(done) = done_rx.recv() => {
                if let Some(e) = finished(&mut engine, &topics, done) {
                    panicked = Some(e);
                    break;
                }
                // Take every completion already there in one go.
                while let Ok(done) = done_rx.try_recv() {
                    if let Some(e) = finished(&mut engine, &topics, done) {
                        panicked = Some(e);
                        break;
                    }
                }
                if panicked.is_some() {
                    break;
                }
            }
            _ = look.tick() => {
                rebalanced(&consumer, &topics, &mut engine, &metrics);
                report(&metrics, &topics, &engine);
            }
            _ = tokio::time::sleep(sleep_for), if wake.is_some() => {
                engine.tick(now_millis());
            }
            received = consumer.recv() => {
                rebalanced(&consumer, &topics, &mut engine, &metrics);
                let message = match received {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                let Some(id) = topics.id(message.topic(), message.partition()) else {
                    continue;
                };
                let due = handler.due_at(&message).map(|d| d.timestamp_millis());
                let bytes = message.payload().map_or(0, <[u8]>::len);
                engine.fetched(id, message.offset(), bytes, due, message, now_millis());
            }
        }
    }

    metrics.set_ready(false);
    // Shutdown: let work in flight finish (handlers step aside at safe points), then commit.
    // Waiting messages were never started; the next owner reads them again.
    let deadline = tokio::time::Instant::now() + options.shutdown_grace;
    while engine.in_flight() > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(done)) => {
                let _ = finished(&mut engine, &topics, done);
                apply(&consumer, &topics, &mut engine);
            }
            Ok(None) | Err(_) => break,
        }
    }
    if engine.in_flight() > 0 {
        tracing::warn!(
            in_flight = engine.in_flight(),
            "work still in flight after the shutdown grace; it will be redone by the next owner"
        );
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "final commit failed; uncommitted work will be redone")
        }
    }
    consumer.unsubscribe();
    panicked.map_or(Ok(()), Err)
}

/// Hands `batch` to the handler: `handle` on this task, its future in a task of its own.
#[allow(clippy::too_many_arguments)]
fn start<H: Handler>(
    batch: Vec<Handout<OwnedMessage>>,
    handler: &Arc<H>,
    topics: &Topics,
    done_tx: &mpsc::UnboundedSender<Done>,
    shutdown: &Shutdown,
    traced: bool,
    now: Millis,
) {
    let first = batch[0].token;
    let mut deliveries = Vec::with_capacity(batch.len());
    for h in batch {
        if let Some(due) = h.due {
            let late = (now - due).max(0) as f64 / 1000.0;
            topics.lateness[h.token.partition.topic].observe(late);
            if late > 1.0 {
                tracing::warn!(
                    topic = h.message.topic(),
                    partition = h.message.partition(),
                    late_ms = (late * 1000.0) as u64,
                    "a delayed message was handed over late"
                );
            }
        }
        deliveries.push(Delivery {
            message: h.message,
            ack: Ack {
                token: h.token,
                done: Some(done_tx.clone()),
            },
        });
    }
    let handling = if traced {
        // With OpenTelemetry on, one span per batch; the handlers continue each order's
        // trace from its message's headers.
        let span = tracing::info_span!("batch", size = deliveries.len());
        span.in_scope(|| Arc::clone(handler).handle(deliveries, shutdown.clone()))
    } else {
        Arc::clone(handler).handle(deliveries, shutdown.clone())
    };
    let done_tx = done_tx.clone();
    tokio::spawn(async move {
        let handled = std::panic::AssertUnwindSafe(handling);
        if futures::FutureExt::catch_unwind(handled).await.is_err() {
            let _ = done_tx.send(Done {
                token: first,
                outcome: Outcome::Panicked,
            });
        }
    });
}

/// Records a completion; returns the error that stops the stage on a panic.
fn finished(engine: &mut Engine<OwnedMessage>, topics: &Topics, done: Done) -> Option<StageError> {
    let token = done.token;
    engine.done(token, done.outcome);
    match done.outcome {
        Outcome::Durable => {
            topics.handled[token.partition.topic].inc();
            None
        }
        Outcome::Interrupted => None,
        Outcome::Panicked => {
            let topic = topics.names[token.partition.topic].clone();
            tracing::error!(%topic, partition = token.partition.partition, offset = token.offset, "a handler panicked; stopping the stage");
            Some(StageError::HandlerPanicked {
                topic,
                partition: token.partition.partition,
                offset: token.offset,
            })
        }
    }
}

/// Applies the engine's pause changes and stores the offsets it released.
fn apply(
    consumer: &StreamConsumer<StageContext>,
    topics: &Topics,
    engine: &mut Engine<OwnedMessage>,
) {
    let pauses = engine.take_pauses();
    if !pauses.is_empty() {
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for (id, paused) in pauses {
            let list = if paused { &mut pause } else { &mut resume };
            list.add_partition(&topics.names[id.topic], id.partition);
        }
        for (list, paused) in [(pause, true), (resume, false)] {
            if list.count() == 0 {
                continue;
            }
            let result = if paused {
                consumer.pause(&list)
            } else {
                consumer.resume(&list)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, paused, "changing the pause state failed");
            }
        }
    }
    let commits = engine.take_commits();
    if !commits.is_empty() {
        // One entry per partition, its latest position. A list naming a partition twice
        // is wrong here: rust-rdkafka sets the offset of the first entry it finds, and the
        // second keeps an invalid offset that librdkafka then stores over the real one
        // (measured: groups whose committed offsets stopped short of the end).
        let mut latest: std::collections::BTreeMap<PartitionId, i64> = Default::default();
        for (id, position) in commits {
            latest.insert(id, position);
        }
        let mut tpl = TopicPartitionList::new();
        for (id, position) in latest {
            let _ = tpl.add_partition_offset(
                &topics.names[id.topic],
                id.partition,
                Offset::Offset(position),
            );
        }
        // librdkafka stores what it can and says no only when none of them could be
        // stored (the partitions were revoked meanwhile: their next owner redoes them).
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "offsets not stored (partitions no longer assigned)");
        }
    }
}

/// Sets the stage's gauges: work in flight, and per topic the messages waiting for their
/// due time and when the earliest of them is due.
fn report(metrics: &Metrics, topics: &Topics, engine: &Engine<OwnedMessage>) {
    metrics.in_flight.set(engine.in_flight() as i64);
    for (t, name) in topics.names.iter().enumerate() {
        let (count, earliest) = engine.waiting(t);
        let label = Metrics::topic(name);
        metrics.waiting.get_or_create(&label).set(count as i64);
        let due = earliest.map_or(0.0, |ms| ms as f64 / 1000.0);
        metrics.oldest_due.get_or_create(&label).set(due);
    }
}

/// Acts on rebalances since the last look: revoked partitions are forgotten (their work in
/// flight moves no offset, what waits for them is dropped), assigned ones get the loop's
/// pause state.
fn rebalanced(
    consumer: &StreamConsumer<StageContext>,
    topics: &Topics,
    engine: &mut Engine<OwnedMessage>,
    metrics: &Metrics,
) {
    let context = consumer.context();
    let revoked = std::mem::take(&mut *context.revoked.lock().expect("revoked lock"));
    let assigned = std::mem::take(&mut *context.assigned.lock().expect("assigned lock"));
    if revoked.is_empty() && assigned.is_empty() {
        return;
    }
    for (topic, partition) in revoked {
        if let Some(id) = topics.id(&topic, partition) {
            engine.revoke(id);
        }
        // The new owner reports this partition's lag; a stale value here would add to it.
        metrics.consumer_lag.remove(&PartitionLabels {
            group: context.group.clone(),
            topic,
            partition,
        });
    }
    for (topic, partition) in assigned {
        if let Some(id) = topics.id(&topic, partition) {
            engine.assign(id);
        }
    }
    // Ready while this consumer has partitions to work on.
    let owns = consumer.assignment().is_ok_and(|a| a.count() > 0);
    metrics.set_ready(owns);
}
