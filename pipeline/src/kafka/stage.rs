//! The consumer loop every stage runs on: at-least-once, many messages in flight, offsets
//! committed only up to the contiguous prefix of finished work (G2).
//!
//! A stage supplies a [`Handler`]; the loop feeds it messages, each in its own task, and
//! records completions in a per-partition [`PartitionWatermark`]. It keeps polling the
//! consumer at all times (so the group never evicts it), pausing a topic's partitions
//! while that topic's in-flight bound is reached instead of not polling. The bound holds
//! per topic, so that a backlog on one topic (first checks) cannot starve another (the
//! later tiers): librdkafka hands partitions over in assignment order. On a revoke it
//! forgets the revoked partitions: work still running for them finishes but moves no
//! offset, and the new owner redoes it (handlers are idempotent). On shutdown it stops taking messages, waits a grace
//! period for work in flight, commits, and leaves the group.
//!
//! Delay topics (G4): a handler may say a message is not due yet ([`Handler::due_at`]).
//! The loop then holds that message and pauses only its partition until the due time, so
//! other partitions flow on and the consumer keeps being polled. Pausing drops what was
//! prefetched for the partition; resuming fetches again from the message after the held
//! one. A held message is dropped on a revoke (the new owner reads it again from the
//! committed offset). A pause would survive a rebalance, so revoked partitions are resumed
//! in the rebalance callback, and newly assigned ones get the loop's pause state.

use crate::core::watermark::PartitionWatermark;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::metrics::{Metrics, PartitionLabels};
use crate::shutdown::{Interrupted, Shutdown};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What a stage does with one message. It returns `Ok` once the message's effects are
/// durable, or `Err(Interrupted)` if shutdown stopped it before that.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        message: OwnedMessage,
        shutdown: Shutdown,
    ) -> BoxFuture<'static, Result<(), Interrupted>>;

    /// When `message` may be handled; `None` (the default) means now. A message is never
    /// handed to [`Handler::handle`] before this time.
    fn due_at(&self, _message: &OwnedMessage) -> Option<DateTime<Utc>> {
        None
    }
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

/// How a stage consumes.
#[derive(Clone, Debug)]
pub struct StageOptions {
    pub group: String,
    pub topics: Vec<String>,
    /// Messages worked on at once, per topic.
    pub max_in_flight: usize,
    /// How long work in flight may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
    pub metrics: Arc<Metrics>,
}

/// Records revoked and assigned partitions from inside librdkafka's rebalance callback, for
/// the loop to act on, and turns librdkafka's statistics into the lag metric.
pub struct StageContext {
    group: String,
    metrics: Arc<Metrics>,
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: Mutex<Vec<(String, i32)>>,
}

impl StageContext {
    fn new(group: &str, metrics: Arc<Metrics>) -> Self {
        StageContext {
            group: group.to_owned(),
            metrics,
            revoked: Mutex::default(),
            assigned: Mutex::default(),
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
        for (topic, t) in &statistics.topics {
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
        .set("statistics.interval.ms", "5000");
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

struct Done {
    topic: String,
    partition: i32,
    generation: u64,
    offset: i64,
    outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Durable,
    Interrupted,
    /// A bug: the stage stops, so that the message is redone after a restart rather than
    /// skipped.
    Panicked,
}

#[derive(Default)]
struct Tracked {
    generation: u64,
    watermark: PartitionWatermark,
}

/// Messages being handled, per topic.
#[derive(Default)]
struct InFlight(HashMap<String, usize>);

impl InFlight {
    /// Counts one more for `topic`; returns its count.
    fn started(&mut self, topic: &str) -> usize {
        match self.0.get_mut(topic) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                self.0.insert(topic.to_owned(), 1);
                1
            }
        }
    }

    /// Counts one less for `topic`; returns its count.
    fn finished(&mut self, topic: &str) -> usize {
        self.0.get_mut(topic).map_or(0, |n| {
            *n = n.saturating_sub(1);
            *n
        })
    }

    fn total(&self) -> usize {
        self.0.values().sum()
    }
}

/// Messages held until their due time, per partition, oldest first.
type Held = HashMap<(String, i32), VecDeque<(OwnedMessage, DateTime<Utc>)>>;

/// Runs `handler` over the consumer's messages until `shutdown`.
pub async fn run<H: Handler>(
    consumer: StreamConsumer<StageContext>,
    handler: Arc<H>,
    options: StageOptions,
    mut shutdown: Shutdown,
) -> Result<(), StageError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut partitions: HashMap<(String, i32), Tracked> = HashMap::new();
    let mut held: Held = HashMap::new();
    let mut next_generation = 0u64;
    let mut in_flight = InFlight::default();
    // The topics paused for reaching the in-flight bound.
    let mut paused: HashSet<String> = HashSet::new();
    let mut panicked = None;

    let tasks_shutdown = shutdown.clone();
    let stage_name = options.group.clone();
    let start = |message: OwnedMessage, partitions: &HashMap<(String, i32), Tracked>| {
        let Some(tracked) = partitions.get(&(message.topic().to_owned(), message.partition()))
        else {
            return false;
        };
        let done = Done {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            generation: tracked.generation,
            offset: message.offset(),
            outcome: Outcome::Durable,
        };
        // One span per message, continuing the order's trace from the message's headers.
        let span = tracing::info_span!(
            "message",
            otel.name = %format!("{stage_name} {}", message.topic()),
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
        // `handle` runs here, on the loop's task and in offset order; what it returns runs
        // in a task of its own.
        let handling =
            span.in_scope(|| Arc::clone(&handler).handle(message, tasks_shutdown.clone()));
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let handled =
                std::panic::AssertUnwindSafe(tracing::Instrument::instrument(handling, span));
            let outcome = match futures::FutureExt::catch_unwind(handled).await {
                Ok(Ok(())) => Outcome::Durable,
                Ok(Err(Interrupted)) => Outcome::Interrupted,
                Err(_) => Outcome::Panicked,
            };
            let _ = done_tx.send(Done { outcome, ..done });
        });
        true
    };

    let metrics = Arc::clone(&options.metrics);
    // Rebalance callbacks run inside `recv()` without making it return: look at what they
    // recorded at least once a second, so an idle stage also resumes and reports readiness.
    let mut look = tokio::time::interval(Duration::from_secs(1));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        report(&metrics, &options.topics, &held, in_flight.total());
        let next_due = held
            .values()
            .filter_map(|queue| queue.front().map(|(_, due)| *due))
            .min();
        let wake = tokio::time::Instant::now() + next_due.map_or(Duration::from_secs(3600), until);
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(done) = done_rx.recv() => {
                let of_topic = in_flight.finished(&done.topic);
                if done.outcome == Outcome::Panicked {
                    tracing::error!(topic = %done.topic, partition = done.partition, offset = done.offset, "a handler panicked; stopping the stage");
                    panicked = Some(StageError::HandlerPanicked { topic: done.topic, partition: done.partition, offset: done.offset });
                    break;
                }
                rebalanced(&consumer, &mut partitions, &mut held, &mut next_generation, &paused, &metrics);
                if done.outcome == Outcome::Durable {
                    metrics.handled.get_or_create(&Metrics::topic(&done.topic)).inc();
                }
                // Resume at half the bound, not just under it: a resume refetches what the
                // pause dropped, and the work still in flight covers that round trip.
                if of_topic <= options.max_in_flight / 2 && paused.remove(&done.topic) {
                    set_paused(&consumer, &done.topic, false, &held);
                }
                complete(&consumer, &mut partitions, done);
            }
            _ = look.tick() => {
                rebalanced(&consumer, &mut partitions, &mut held, &mut next_generation, &paused, &metrics);
            }
            _ = tokio::time::sleep_until(wake), if next_due.is_some() => {
                rebalanced(&consumer, &mut partitions, &mut held, &mut next_generation, &paused, &metrics);
                let now = Utc::now();
                for (key, queue) in held.iter_mut() {
                    while queue.front().is_some_and(|(_, due)| *due <= now) {
                        let (message, due) = queue.pop_front().expect("front checked");
                        let late = (now - due).to_std().unwrap_or_default();
                        metrics.lateness.get_or_create(&Metrics::topic(message.topic())).observe(late.as_secs_f64());
                        if late > Duration::from_secs(1) {
                            tracing::warn!(topic = message.topic(), partition = message.partition(), late_ms = late.as_millis() as u64, "a delayed message was handed over late");
                        }
                        in_flight.started(&key.0);
                        if !start(message, &partitions) {
                            in_flight.finished(&key.0);
                        }
                    }
                    if queue.is_empty() && !paused.contains(&key.0) {
                        pause_one(&consumer, key, false);
                    }
                }
                held.retain(|_, queue| !queue.is_empty());
                for (topic, n) in &in_flight.0 {
                    if *n >= options.max_in_flight && paused.insert(topic.clone()) {
                        set_paused(&consumer, topic, true, &held);
                    }
                }
            }
            received = consumer.recv() => {
                rebalanced(&consumer, &mut partitions, &mut held, &mut next_generation, &paused, &metrics);
                let message = match received {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                let key = (message.topic().to_owned(), message.partition());
                let tracked = partitions.entry(key.clone()).or_insert_with(|| {
                    next_generation += 1;
                    Tracked { generation: next_generation, ..Default::default() }
                });
                tracked.watermark.begin(message.offset());
                let due = handler.due_at(&message).filter(|due| *due > Utc::now());
                if let Some(due) = due.or_else(|| held.contains_key(&key).then(Utc::now)) {
                    // Not due yet (or behind a held message of its partition): hold it and
                    // pause its partition only.
                    if !held.contains_key(&key) {
                        pause_one(&consumer, &key, true);
                    }
                    held.entry(key).or_default().push_back((message, due));
                    continue;
                }
                let of_topic = in_flight.started(&key.0);
                if !start(message, &partitions) {
                    in_flight.finished(&key.0);
                } else if of_topic >= options.max_in_flight {
                    // Pausing again while over the bound also pauses partitions assigned
                    // since the last pause (a rebalance hands them over unpaused).
                    set_paused(&consumer, &key.0, true, &held);
                    paused.insert(key.0);
                }
            }
        }
    }

    metrics.set_ready(false);
    // Shutdown: let work in flight finish (handlers step aside at safe points), then commit.
    // Held messages were never started; the next owner reads them again.
    let deadline = tokio::time::Instant::now() + options.shutdown_grace;
    while in_flight.total() > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(done)) => {
                in_flight.finished(&done.topic);
                complete(&consumer, &mut partitions, done);
            }
            Ok(None) | Err(_) => break,
        }
    }
    if in_flight.total() > 0 {
        tracing::warn!(
            in_flight = in_flight.total(),
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

/// Sets the stage's gauges: work in flight, and per topic the messages held and when the
/// oldest of them is due.
fn report(metrics: &Metrics, topics: &[String], held: &Held, in_flight: usize) {
    metrics.in_flight.set(in_flight as i64);
    for topic in topics {
        let queues = held.iter().filter(|((t, _), _)| t == topic);
        let (count, oldest) =
            queues.fold((0usize, None::<DateTime<Utc>>), |(n, oldest), (_, q)| {
                let front = q.front().map(|(_, due)| *due);
                (n + q.len(), oldest.into_iter().chain(front).min())
            });
        let label = Metrics::topic(topic);
        metrics.waiting.get_or_create(&label).set(count as i64);
        let due = oldest.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        metrics.oldest_due.get_or_create(&label).set(due);
    }
}

/// The time from now until `due` (zero if it has passed).
fn until(due: DateTime<Utc>) -> Duration {
    (due - Utc::now()).to_std().unwrap_or_default()
}

fn complete(
    consumer: &StreamConsumer<StageContext>,
    partitions: &mut HashMap<(String, i32), Tracked>,
    done: Done,
) {
    if done.outcome != Outcome::Durable {
        return; // not durable: the offset stays where it is and the message is redone
    }
    let Some(tracked) = partitions.get_mut(&(done.topic.clone(), done.partition)) else {
        return;
    };
    if tracked.generation != done.generation {
        return;
    }
    if let Some(position) = tracked.watermark.finish(done.offset) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&done.topic, done.partition, Offset::Offset(position))
            .is_ok()
        {
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::debug!(error = %e, topic = %done.topic, partition = done.partition, "offset not stored (partition no longer assigned)");
            }
        }
    }
}

/// Acts on rebalances since the last look: forgets revoked partitions (their work in
/// flight moves no offset, their held messages are dropped) and sets the pause state of
/// newly assigned ones, which may still carry a pause from before.
fn rebalanced(
    consumer: &StreamConsumer<StageContext>,
    partitions: &mut HashMap<(String, i32), Tracked>,
    held: &mut Held,
    next_generation: &mut u64,
    paused: &HashSet<String>,
    metrics: &Metrics,
) {
    let revoked = std::mem::take(&mut *consumer.context().revoked.lock().expect("revoked lock"));
    let changed = !revoked.is_empty();
    for key in revoked {
        if partitions.remove(&key).is_some() {
            *next_generation += 1;
        }
        held.remove(&key);
        // The new owner reports this partition's lag; a stale value here would add to it.
        metrics.consumer_lag.remove(&PartitionLabels {
            group: consumer.context().group.clone(),
            topic: key.0,
            partition: key.1,
        });
    }
    let assigned = std::mem::take(&mut *consumer.context().assigned.lock().expect("assigned lock"));
    if changed || !assigned.is_empty() {
        // Ready while this consumer has partitions to work on.
        let owns = consumer.assignment().is_ok_and(|a| a.count() > 0);
        metrics.set_ready(owns);
    }
    for key in assigned {
        if !held.contains_key(&key) {
            pause_one(consumer, &key, paused.contains(&key.0));
        }
    }
}

fn pause_one(
    consumer: &StreamConsumer<StageContext>,
    (topic, partition): &(String, i32),
    pause: bool,
) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, *partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, topic, partition, pause, "changing a partition's pause state failed");
    }
}

/// Pauses every assigned partition, or resumes every one that holds no message.
/// Pauses or resumes the assigned partitions of `topic`; a resume leaves the partitions
/// that hold a message paused.
fn set_paused(consumer: &StreamConsumer<StageContext>, topic: &str, pause: bool, held: &Held) {
    let result = consumer.assignment().and_then(|assigned| {
        let mut these = TopicPartitionList::new();
        for e in assigned.elements().iter().filter(|e| e.topic() == topic) {
            if pause || !held.contains_key(&(e.topic().to_owned(), e.partition())) {
                these.add_partition(e.topic(), e.partition());
            }
        }
        if pause {
            consumer.pause(&these)
        } else {
            consumer.resume(&these)
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, pause, "changing the pause state failed");
    }
}
