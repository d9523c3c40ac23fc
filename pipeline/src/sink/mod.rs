//! The sink: `orders.state` into the `orders` table, in batches, never regressing (G2, G3).
//!
//! Each message runs through [`SinkHandler`] on the shared consumer loop: decoded and
//! checked (an unusable event goes to `orders.dlq`), then handed, in the log's order, to
//! the [`Batcher`], which
//! collects up to `batch_rows` rows or waits `batch_linger`, merges the rows of one order
//! by the rule of [`crate::core::lifecycle::supersedes`], and upserts them in one
//! statement whose guard applies the same rule against the table. A message's handler
//! returns only once its batch is committed, so offsets move after the database commit. A
//! database outage is retried with backoff while nothing is acknowledged; a row the
//! database refuses (SQLSTATE class 22, 23 or 54, see [`crate::db::Refused`]) is found by
//! upserting that batch row by row, and its event is dead-lettered as `database_refused`
//! with the SQLSTATE, while the batch's other rows are written.
//!
//! Compaction keeps the last record per order, which is not always the newest state: a
//! slow worker may publish an older state after the final one, a redone check may publish
//! the final state again with a freshly sealed PIN, a broken producer may add an unusable
//! event. When an order's row is final and its last record in the log is anything but the
//! row's own event, the sink publishes the row's event again (it keeps it in
//! `orders.state_event`), marked as a copy, so the topic ends on the final state and a
//! replay into an empty database rebuilds the same table. Only a final row is republished
//! (a newer non-final state may still be further on in the log, and a copy after it would
//! make compaction drop it), and never in answer to a copy, so two sinks cannot echo each
//! other.
//!
//! Limit: the in-batch merge starts from the batch, not from the row, so a batch holding a
//! final state with a lower version than a non-final row already in the table loses the
//! batch's other events of that order. The stages number versions so that a final state
//! is an order's highest; only a broken producer can do this.

use crate::core::backoff::{random_fraction, Backoff};
use crate::core::event::{self, InvalidEvent, InvalidKind, OrderStateEvent};
use crate::core::lifecycle::{supersedes, OrderState};
use crate::db::orders::{self, OrderRow};
use crate::db::Refused;
use crate::kafka::dlq::DeadLetters;
use crate::kafka::emit::{until_sent, Emitter};
use crate::kafka::stage::{self, BatchArgs, MessageHandler, PerMessage, StageOptions};
use crate::kafka::topics::name;
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use crate::shutdown::{Interrupted, Shutdown};
use futures::future::BoxFuture;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Largest accepted state event, in bytes.
const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Settings of the sink (flags or environment variables).
#[derive(Clone, Debug, clap::Args)]
pub struct SinkConfig {
    #[command(flatten)]
    pub batch: BatchArgs,

    /// Consumer group of the sink.
    #[arg(
        long = "sink-group",
        env = "ORDERFLOW_SINK_GROUP",
        default_value = "orderflow.sink"
    )]
    pub group: String,

    /// Most rows upserted in one statement.
    #[arg(
        long = "sink-batch-rows",
        env = "ORDERFLOW_SINK_BATCH_ROWS",
        default_value_t = 1000
    )]
    pub batch_rows: usize,

    /// How long a batch waits for more rows before it is written, in milliseconds.
    #[arg(
        long = "sink-batch-linger-ms",
        env = "ORDERFLOW_SINK_BATCH_LINGER_MS",
        default_value_t = 50
    )]
    pub batch_linger_ms: u64,

    /// How long state events in flight may take to be written when the sink is asked to
    /// stop.
    #[arg(
        long = "shutdown-grace-ms",
        env = "ORDERFLOW_SHUTDOWN_GRACE_MS",
        default_value_t = 15_000
    )]
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error(transparent)]
    Stage(#[from] crate::kafka::stage::StageError),
}

/// Checks what the table's constraints would refuse, so that such an event is
/// dead-lettered with a reason instead of failing a whole batch.
pub fn check(event: &OrderStateEvent) -> Result<(), InvalidEvent> {
    let bad = |detail: &str| Err(InvalidEvent::new(InvalidKind::InvalidField, detail));
    if event.order_id.is_nil() {
        return bad("order_id must not be the nil UUID");
    }
    if event.attempts < 0 {
        return bad("attempts must not be negative");
    }
    if (event.state == OrderState::Failed) != event.failure.is_some() {
        return bad("a failure is given if and only if the state is failed");
    }
    if event.pin.is_some() && event.state != OrderState::Completed {
        return bad("only a completed order carries a PIN");
    }
    Ok(())
}

/// One decoded event waiting for its batch.
struct Pending {
    row: OrderRow,
    /// The event as JSON, kept with the row it sets.
    event: String,
    rank: (i64, OrderState),
    /// Where the event came from, so a batch merges one order's events in their order.
    at: (i32, i64),
    /// A copy the sink itself published: never answered with another copy.
    copy: bool,
    /// `Ok` once committed, or why the database refused the row.
    done: oneshot::Sender<Result<(), Refused>>,
}

/// Ends the log of an order on its final row again (see the module header).
#[derive(Clone)]
struct Repairer {
    pool: PgPool,
    emitter: Emitter,
    backoff: Backoff,
}

impl Repairer {
    /// For each order whose row is final: unless `last(order)` is the row's own event (or
    /// a sink's copy), publish the row's event again. `last` gives the JSON of the order's
    /// last record, or `None` when that record could not be written at all.
    async fn repair(
        &self,
        last: &HashMap<Uuid, Option<serde_json::Value>>,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let ids: Vec<Uuid> = last.keys().copied().collect();
        let rows = crate::shutdown::retry("reading rows back", &self.backoff, shutdown, || {
            orders::current(&self.pool, &ids)
        })
        .await?;
        for (id, _, state, event) in rows {
            let (Ok(state), Some(event)) = (state.parse::<OrderState>(), event) else {
                continue;
            };
            let Ok(row_event) = serde_json::from_str::<serde_json::Value>(&event) else {
                continue;
            };
            if !state.is_final() || last[&id].as_ref() == Some(&row_event) {
                continue;
            }
            let Ok(row_event) = serde_json::from_value::<OrderStateEvent>(row_event) else {
                continue;
            };
            self.publish_copy(&row_event, shutdown).await?;
        }
        Ok(())
    }

    /// Publishes an order's final state again, as the sink's copy, so that the log ends on
    /// it (another record came after it).
    async fn publish_copy(
        &self,
        event: &OrderStateEvent,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        tracing::debug!(order_id = %event.order_id, "another record came after the final state; publishing the final state again");
        until_sent(
            "publishing an order's final state again",
            &self.backoff,
            shutdown,
            || self.emitter.state_copy(event),
        )
        .await
    }

    /// [`Repairer::repair`] for the orders of `batch`, each judged by its last event in the
    /// log; a sink's copy as the last event is left alone. `written` holds the orders whose
    /// row the batch's statement wrote, with the event that won: those are judged without
    /// reading the row back; only the others are read.
    async fn repair_batch(
        &self,
        batch: &[Pending],
        written: &HashMap<Uuid, &Pending>,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let mut last: HashMap<Uuid, &Pending> = HashMap::new();
        for p in batch {
            last.entry(p.row.order_id)
                .and_modify(|current| {
                    if p.at > current.at {
                        *current = p;
                    }
                })
                .or_insert(p);
        }
        let mut unknown: HashMap<Uuid, Option<serde_json::Value>> = HashMap::new();
        for (id, p) in last {
            if p.copy {
                continue;
            }
            let Some(winner) = written.get(&id) else {
                unknown.insert(id, serde_json::from_str(&p.event).ok());
                continue;
            };
            if !winner.rank.1.is_final() || winner.event == p.event {
                continue;
            }
            let Ok(event) = serde_json::from_str::<OrderStateEvent>(&winner.event) else {
                continue;
            };
            self.publish_copy(&event, shutdown).await?;
        }
        if unknown.is_empty() {
            return Ok(());
        }
        self.repair(&unknown, shutdown).await
    }
}

/// The event that won for each order whose row the statement wrote (`written`): the one
/// [`merge`] chose.
fn winners<'a>(batch: &'a [Pending], written: &[Uuid]) -> HashMap<Uuid, &'a Pending> {
    let written: std::collections::HashSet<&Uuid> = written.iter().collect();
    pick(batch.iter().filter(|p| written.contains(&p.row.order_id)))
        .into_iter()
        .collect()
}

/// Per order, the event that wins when `events` are applied in their log order, by the same
/// rule as the table's guard; by order id.
fn pick<'a>(
    events: impl Iterator<Item = &'a Pending>,
) -> std::collections::BTreeMap<Uuid, &'a Pending> {
    let mut order: Vec<&Pending> = events.collect();
    order.sort_by_key(|p| p.at);
    let mut best = std::collections::BTreeMap::new();
    for p in order {
        best.entry(p.row.order_id)
            .and_modify(|current: &mut &Pending| {
                if supersedes(p.rank, current.rank) {
                    *current = p;
                }
            })
            .or_insert(p);
    }
    best
}

/// Writes rows in batches; see the module header.
pub struct Batcher {
    metrics: Arc<Metrics>,
    pool: PgPool,
    repairer: Repairer,
    rows: usize,
    linger: Duration,
    backoff: Backoff,
}

impl Batcher {
    /// Runs until every sender is dropped or `shutdown`. At shutdown it writes what it was
    /// already handed, so that handlers in flight finish within the stage's grace period.
    async fn run(self, mut inbox: mpsc::UnboundedReceiver<Pending>, mut shutdown: Shutdown) {
        loop {
            let first = tokio::select! {
                item = inbox.recv() => item,
                _ = shutdown.wait() => None,
            };
            let Some(first) = first else {
                inbox.close();
                let mut rest = Vec::new();
                while let Ok(item) = inbox.try_recv() {
                    rest.push(item);
                }
                while !rest.is_empty() {
                    let batch: Vec<Pending> = rest.drain(..rest.len().min(self.rows)).collect();
                    if self.write(batch, &mut shutdown).await.is_err() {
                        return;
                    }
                }
                return;
            };
            let mut batch = vec![first];
            let linger = tokio::time::sleep(self.linger);
            tokio::pin!(linger);
            while batch.len() < self.rows {
                tokio::select! {
                    item = inbox.recv() => match item {
                        Some(item) => batch.push(item),
                        None => break,
                    },
                    _ = &mut linger => break,
                }
            }
            if self.write(batch, &mut shutdown).await.is_err() {
                return;
            }
        }
    }

    async fn write(&self, batch: Vec<Pending>, shutdown: &mut Shutdown) -> Result<(), Interrupted> {
        let (rows, events) = merge(&batch);
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            match orders::upsert_batch(&self.pool, &rows, &events).await {
                Ok(written) => {
                    let changed = written.len();
                    self.metrics.sink_batch_rows.observe(rows.len() as f64);
                    self.metrics
                        .sink_batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(
                        events = batch.len(),
                        rows = rows.len(),
                        changed,
                        "batch written"
                    );
                    let written = winners(&batch, &written);
                    self.repairer
                        .repair_batch(&batch, &written, shutdown)
                        .await?;
                    for item in batch {
                        let _ = item.done.send(Ok(()));
                    }
                    return Ok(());
                }
                Err(e) if Refused::of(&e).is_some() => {
                    tracing::warn!(error = %e, rows = rows.len(), "the database refused a batch; writing it row by row to find the refused rows");
                    return self.write_one_by_one(batch, shutdown).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "writing a batch failed; retrying");
                    shutdown
                        .sleep(self.backoff.delay(attempt, random_fraction()))
                        .await?;
                    attempt += 1;
                }
            }
        }
    }

    /// A batch the database refused: find the rows it refuses, one by one, in log order.
    async fn write_one_by_one(
        &self,
        mut batch: Vec<Pending>,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        batch.sort_by_key(|p| p.at);
        let mut outcomes = Vec::with_capacity(batch.len());
        for item in &batch {
            let mut attempt = 0;
            let outcome = loop {
                match orders::upsert_batch(
                    &self.pool,
                    std::slice::from_ref(&item.row),
                    std::slice::from_ref(&item.event),
                )
                .await
                {
                    Ok(_) => break Ok(()),
                    Err(e) => match Refused::of(&e) {
                        Some(refused) => break Err(refused),
                        None => {
                            tracing::warn!(error = %e, "writing a row failed; retrying");
                            shutdown
                                .sleep(self.backoff.delay(attempt, random_fraction()))
                                .await?;
                            attempt += 1;
                        }
                    },
                }
            };
            outcomes.push(outcome);
        }
        // A refused event that came last after a final row must not stay the last record.
        self.repairer
            .repair_batch(&batch, &HashMap::new(), shutdown)
            .await?;
        for (item, outcome) in batch.into_iter().zip(outcomes) {
            let _ = item.done.send(outcome);
        }
        Ok(())
    }
}

/// One row per order, with its event: the one that wins when the batch's events are applied
/// in their order, by the same rule as the table's guard. Sorted by order id, so that two
/// writers lock rows in the same order.
fn merge(batch: &[Pending]) -> (Vec<OrderRow>, Vec<String>) {
    pick(batch.iter())
        .into_values()
        .map(|p| (p.row.clone(), p.event.clone()))
        .unzip()
}

/// What became of a message when it was handed over.
enum Queued {
    /// Waiting for its batch.
    Batched(oneshot::Receiver<Result<(), Refused>>),
    Unusable(InvalidEvent),
    Tombstone,
    /// The batcher has stopped.
    Closed,
}

/// Handles one `orders.state` message.
pub struct SinkHandler {
    batcher: mpsc::UnboundedSender<Pending>,
    dead_letters: DeadLetters,
    repairer: Repairer,
    backoff: Backoff,
}

impl SinkHandler {
    /// Decodes `message` and hands it to the batcher. [`Handler::handle`] runs on the
    /// consumer loop's task, in offset order, so the batcher receives events in the log's
    /// order (`max_in_flight` bounds the queue).
    fn enqueue(&self, message: &OwnedMessage) -> Queued {
        let Some(payload) = message.payload() else {
            return Queued::Tombstone;
        };
        let decoded = event::decode::<OrderStateEvent>(payload, MAX_EVENT_BYTES)
            .and_then(|e| check(&e).map(|()| e));
        let event = match decoded {
            Ok(event) => event,
            Err(why) => return Queued::Unusable(why),
        };
        tracing::Span::current().record("order_id", tracing::field::display(event.order_id));
        let copy = message
            .headers()
            .is_some_and(|h| crate::kafka::headers::get(h, crate::kafka::headers::COPY).is_some());
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            row: OrderRow::from_event(&event),
            // Kept as it came (it decoded, so it is JSON).
            event: String::from_utf8_lossy(payload).into_owned(),
            rank: (event.version, event.state),
            at: (message.partition(), message.offset()),
            copy,
            done,
        };
        match self.batcher.send(pending) {
            Ok(()) => Queued::Batched(committed),
            Err(_) => Queued::Closed,
        }
    }

    async fn finish(
        &self,
        message: &OwnedMessage,
        queued: Queued,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let why = match queued {
            // orderflow never deletes an order's state: nothing to write.
            Queued::Tombstone => return Ok(()),
            Queued::Unusable(why) => why,
            Queued::Closed => return stopped(shutdown),
            Queued::Batched(committed) => match committed.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(refused)) => InvalidEvent::database_refused(
                    format!("the orders table refused the row: {refused}"),
                    refused.sqlstate,
                ),
                Err(_) => return stopped(shutdown),
            },
        };
        tracing::warn!(
            topic = message.topic(), partition = message.partition(), offset = message.offset(),
            reason = why.kind.as_str(), detail = %why.detail, "event dead-lettered"
        );
        until_sent("dead-lettering an event", &self.backoff, shutdown, || {
            self.dead_letters.send(message, &why)
        })
        .await?;
        // The dead-lettered record may now be its order's last one in the log.
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        if let Some(id) = key.and_then(|k| k.parse::<Uuid>().ok()) {
            self.repairer
                .repair(&HashMap::from([(id, None)]), shutdown)
                .await?;
        }
        Ok(())
    }
}

/// The batcher dropped a message's row: expected at shutdown, a bug otherwise (the stage
/// stops on a handler's panic instead of moving on without the row).
fn stopped(shutdown: &Shutdown) -> Result<(), Interrupted> {
    if shutdown.is_set() {
        return Err(Interrupted);
    }
    panic!("the sink's batch writer stopped while the sink runs");
}

impl MessageHandler for SinkHandler {
    fn handle(
        self: Arc<Self>,
        message: OwnedMessage,
        mut shutdown: Shutdown,
    ) -> BoxFuture<'static, Result<(), Interrupted>> {
        let queued = self.enqueue(&message);
        Box::pin(async move { self.finish(&message, queued, &mut shutdown).await })
    }
}

/// Runs the sink until `shutdown`.
pub async fn run(
    config: SinkConfig,
    kafka: KafkaConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(), SinkError> {
    let topic = kafka.topic(name::ORDERS_STATE);
    kafka
        .check_topics_off_runtime(vec![topic.clone(), kafka.topic(name::ORDERS_DLQ)])
        .await?;
    let rows = config.batch_rows.max(1);
    let backoff = Backoff {
        min: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };
    let (inbox, batches) = mpsc::unbounded_channel();
    let repairer = Repairer {
        pool: pool.clone(),
        emitter: Emitter::new(&kafka)?,
        backoff,
    };
    let batcher = Batcher {
        metrics: Arc::clone(&metrics),
        pool,
        repairer: repairer.clone(),
        rows,
        linger: Duration::from_millis(config.batch_linger_ms),
        backoff,
    };
    let writer = tokio::spawn(batcher.run(batches, shutdown.clone()));
    let producer = kafka.producer()?;
    let handler = Arc::new(SinkHandler {
        batcher: inbox,
        repairer,
        dead_letters: DeadLetters::new(
            producer,
            kafka.topic(name::ORDERS_DLQ),
            "sink",
            Arc::clone(&metrics),
        ),
        backoff,
    });
    let options = StageOptions {
        group: config.group.clone(),
        topics: vec![topic],
        // Enough in flight to fill two batches while one is written.
        max_in_flight: rows * 2,
        batch: config.batch,
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        metrics,
    };
    let consumer = stage::consumer(&kafka, &options)?;
    tracing::info!(group = %options.group, topic = %options.topics[0], rows, "sink running");
    let ran = stage::run(consumer, Arc::new(PerMessage(handler)), options, shutdown).await;
    writer.abort();
    ran?;
    tracing::info!("sink stopped");
    Ok(())
}
