//! The loop: fetches, hands due messages to the handler in batches, records their
//! completions, and on shutdown drains the work in flight. What it decides is the pure
//! engine's ([`crate::core::engine`]); this file only carries messages, completions and
//! rebalances between the consumer, the engine and the handler.

use super::commit::{apply, final_commit};
use super::config::LoopConfig;
use super::consumer::StageContext;
use super::handler::{Ack, Delivery, Handler};
use super::lateness::Lateness;
use super::{Done, StageError};
use crate::core::engine::{Engine, Handout, Millis, Outcome, PartitionId};
use crate::metrics::{Metrics, PartitionLabels, TopicLabel};
use crate::shutdown::Shutdown;
use chrono::Utc;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The stage's topics and their per-topic metric handles, made once.
pub(super) struct Topics {
    pub(super) names: Vec<String>,
    handled: Vec<Counter>,
    transit: Vec<Histogram>,
    handling: Vec<Histogram>,
}

impl Topics {
    fn new(names: &[String], metrics: &Metrics) -> Self {
        fn each<M: Clone, C: Fn() -> M>(
            names: &[String],
            family: &Family<TopicLabel, M, C>,
        ) -> Vec<M> {
            names
                .iter()
                .map(|t| family.get_or_create(&Metrics::topic(t)).clone())
                .collect()
        }
        Topics {
            names: names.to_vec(),
            handled: each(names, &metrics.messages_handled),
            transit: each(names, &metrics.message_transit_seconds),
            handling: each(names, &metrics.message_handling_seconds),
        }
    }

    fn index(&self, topic: &str) -> Option<usize> {
        self.names.iter().position(|t| t == topic)
    }

    pub(super) fn id(&self, topic: &str, partition: i32) -> Option<PartitionId> {
        self.index(topic)
            .map(|topic| PartitionId { topic, partition })
    }
}

fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// A span of milliseconds in seconds, for a histogram (a clock stepping back counts as 0).
fn seconds(millis: Millis) -> f64 {
    millis.max(0) as f64 / 1000.0
}

/// Runs `handler` over the consumer's messages until `shutdown`.
pub async fn run<H: Handler>(
    consumer: StreamConsumer<StageContext>,
    handler: Arc<H>,
    options: LoopConfig,
    mut shutdown: Shutdown,
) -> Result<(), StageError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let metrics = Arc::clone(&options.metrics);
    let topics = Topics::new(&options.topics, &metrics);
    let mut engine: Engine<OwnedMessage> = Engine::new(options.engine(), topics.names.len());
    let mut panicked = None;
    let traced = crate::telemetry::is_on();
    let mut lateness = Lateness::new(topics.names.len());

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
            start(
                batch,
                &handler,
                &done_tx,
                &shutdown,
                traced,
                now,
                &mut lateness,
            );
            lateness.warn(&topics.names, std::time::Instant::now());
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
                panicked = completions(&mut engine, &topics, done, &mut done_rx);
                if panicked.is_some() {
                    break;
                }
            }
            _ = look.tick() => {
                rebalanced(&consumer, &topics, &mut engine, &metrics);
                report(&metrics, &topics, &engine);
                lateness.warn(&topics.names, std::time::Instant::now());
            }
            _ = tokio::time::sleep(sleep_for), if wake.is_some() => {
                engine.tick(now_millis());
            }
            received = consumer.recv() => {
                rebalanced(&consumer, &topics, &mut engine, &metrics);
                receive(received, &*handler, &topics, &mut engine);
            }
        }
    }

    metrics.set_ready(false);
    drain(
        &consumer,
        &topics,
        &mut engine,
        &mut done_rx,
        options.shutdown_grace(),
    )
    .await;
    final_commit(&consumer);
    panicked.map_or(Ok(()), Err)
}

/// Gives a received message to the engine with its due time (read by the handler from a
/// header); a consumer error is logged, a message of a topic the stage does not own skipped.
fn receive<H: Handler>(
    received: Result<BorrowedMessage<'_>, KafkaError>,
    handler: &H,
    topics: &Topics,
    engine: &mut Engine<OwnedMessage>,
) {
    let message = match received {
        Ok(m) => m.detach(),
        Err(e) => {
            tracing::warn!(error = %e, "consumer error");
            return;
        }
    };
    let Some(id) = topics.id(message.topic(), message.partition()) else {
        return;
    };
    let due = handler.due_at(&message).map(|d| d.timestamp_millis());
    let now = now_millis();
    if due.is_none() {
        if let Some(produced) = message.timestamp().to_millis() {
            topics.transit[id.topic].observe(seconds(now - produced));
        }
    }
    let bytes = message.payload().map_or(0, <[u8]>::len);
    engine.fetched(id, message.offset(), bytes, due, message, now);
}

/// Records `first` and every completion already there, in one go; returns the error that
/// stops the stage on a panic.
fn completions(
    engine: &mut Engine<OwnedMessage>,
    topics: &Topics,
    first: Done,
    done_rx: &mut mpsc::UnboundedReceiver<Done>,
) -> Option<StageError> {
    // One clock read for every completion taken in this go.
    let now = now_millis();
    if let Some(e) = finished(engine, topics, first, now) {
        return Some(e);
    }
    while let Ok(done) = done_rx.try_recv() {
        if let Some(e) = finished(engine, topics, done, now) {
            return Some(e);
        }
    }
    None
}

/// Shutdown: lets work in flight finish within `grace` (handlers step aside at safe
/// points), storing the offsets it releases. Waiting messages were never started; the next
/// owner reads them again.
async fn drain(
    consumer: &StreamConsumer<StageContext>,
    topics: &Topics,
    engine: &mut Engine<OwnedMessage>,
    done_rx: &mut mpsc::UnboundedReceiver<Done>,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    while engine.in_flight() > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(done)) => {
                let _ = finished(engine, topics, done, now_millis());
                apply(consumer, topics, engine);
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
}

/// Hands `batch` to the handler: `handle` on this task, its future in a task of its own;
/// counts the late ones into `lateness`.
fn start<H: Handler>(
    batch: Vec<Handout<OwnedMessage>>,
    handler: &Arc<H>,
    done_tx: &mpsc::UnboundedSender<Done>,
    shutdown: &Shutdown,
    traced: bool,
    now: Millis,
    lateness: &mut Lateness,
) {
    let first = batch[0].token;
    let mut deliveries = Vec::with_capacity(batch.len());
    for h in batch {
        let late = h
            .due
            .map(|due| Duration::from_millis((now - due).max(0) as u64));
        if let Some(late) = late {
            lateness.record(h.token.partition.topic, late);
        }
        deliveries.push(Delivery {
            message: h.message,
            ack: Ack {
                token: h.token,
                ready_at: h.ready_at,
                done: Some(done_tx.clone()),
            },
            late,
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
                ready_at: now,
            });
        }
    });
}

/// Records a completion at `now`; returns the error that stops the stage on a panic.
fn finished(
    engine: &mut Engine<OwnedMessage>,
    topics: &Topics,
    done: Done,
    now: Millis,
) -> Option<StageError> {
    let token = done.token;
    engine.done(token, done.outcome);
    match done.outcome {
        Outcome::Durable => {
            let t = token.partition.topic;
            topics.handled[t].inc();
            topics.handling[t].observe(seconds(now - done.ready_at));
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

/// Sets the stage's gauges: work in flight, and per topic the messages waiting for their
/// due time and when the earliest of them is due.
fn report(metrics: &Metrics, topics: &Topics, engine: &Engine<OwnedMessage>) {
    metrics.messages_in_flight.set(engine.in_flight() as i64);
    for (t, name) in topics.names.iter().enumerate() {
        let (count, earliest) = engine.waiting(t);
        let label = Metrics::topic(name);
        metrics
            .messages_waiting
            .get_or_create(&label)
            .set(count as i64);
        let due = earliest.map_or(0.0, |ms| ms as f64 / 1000.0);
        metrics
            .oldest_waiting_due_timestamp_seconds
            .get_or_create(&label)
            .set(due);
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
