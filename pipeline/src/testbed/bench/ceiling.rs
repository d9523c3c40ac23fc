//! The raw Kafka ceiling, sustained: the benchmark's order events (as many distinct ones
//! as it sent orders, so they compress as the real ones do) produced with the stages'
//! producer settings as fast as the producer takes them, while a consumer reads them back,
//! on a scratch topic with as many partitions as `orders.created`. The events are sent
//! again, pass after pass, until at least `min_span` has gone by, so that the figure is
//! one the broker keeps up over a span comparable with the orders run, not a burst. No
//! stage, no database, no provider: what the broker and client alone carry on this
//! machine, to compare the pipeline with.

use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::shutdown::Shutdown;
use crate::testbed::load::SHOP_LINGER_MS;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Ceiling {
    /// Messages produced (and consumed) in all.
    pub messages: usize,
    /// Distinct events, sent again pass after pass.
    pub distinct: usize,
    /// Mean size of an event.
    pub message_bytes: usize,
    /// The span the run had to last at least.
    pub min_span_s: f64,
    /// From the first send to the last acknowledgement.
    pub produce_s: f64,
    /// From the first send to the last message read back.
    pub consume_s: f64,
    /// Messages acknowledged per second (acks=all, idempotent, lz4, as the stages).
    pub produce_per_s: f64,
    /// Messages read back per second, the consumer running alongside the producer.
    pub consume_per_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("the raw Kafka measurement failed ({0})")]
    Kafka(#[from] KafkaError),
    #[error("the raw Kafka measurement read {read} of {sent} messages (then none for {waited:?})")]
    Short {
        read: usize,
        sent: usize,
        waited: Duration,
    },
}

/// Produces `events` (key, payload), pass after pass until `min_span` is over (at least
/// once), and consumes them back, on a scratch topic deleted after.
pub async fn measure(
    kafka: &KafkaConfig,
    events: &[(String, Vec<u8>)],
    min_span: Duration,
    shutdown: &Shutdown,
) -> Result<Ceiling, CeilingError> {
    let admin: AdminClient<Context> = kafka
        .client_config()
        .create_with_context(Context::default())
        .map_err(KafkaSetupError::Client)?;
    let probe = kafka.producer()?;
    let partitions = {
        use rdkafka::producer::Producer;
        let metadata = probe.client().fetch_metadata(
            Some(&kafka.topic(name::ORDERS_CREATED)),
            kafka.connect_timeout(),
        )?;
        metadata
            .topics()
            .first()
            .map_or(1, |t| t.partitions().len().max(1)) as i32
    };
    let topic = kafka.topic(&format!(
        "orderflow.bench-ceiling.{}",
        Uuid::new_v4().simple()
    ));
    let options = AdminOptions::new().operation_timeout(Some(kafka.connect_timeout()));
    admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &options,
        )
        .await?;
    let result = run(kafka, &topic, partitions, events, min_span, shutdown).await;
    if let Err(e) = admin.delete_topics(&[&topic], &options).await {
        tracing::warn!(error = %e, topic, "the scratch topic was not deleted");
    }
    result
}

async fn run(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    events: &[(String, Vec<u8>)],
    min_span: Duration,
    shutdown: &Shutdown,
) -> Result<Ceiling, CeilingError> {
    let consumer = from_the_beginning(kafka, topic, partitions)?;
    // A topic created a moment ago may not have leaders yet: the first send waits for them.
    let producer = kafka.producer_lingering(SHOP_LINGER_MS, Context::default())?;
    let first = events.first().map_or(&[][..], |(_, p)| p.as_slice());
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic).payload(first),
            Timeout::After(kafka.connect_timeout()),
        )
        .await
        .map_err(|(e, _)| e)?;

    // The reader learns the total once the producer is done; it gives up after a minute
    // without a message.
    let (total_tx, total_rx) = tokio::sync::watch::channel(usize::MAX);
    let idle = Duration::from_secs(60);
    let reader = read_all(consumer, total_rx, idle);

    let start = Instant::now();
    let n = events.len().max(1);
    let records = (0..)
        .take_while(|i| *i < n || start.elapsed() < min_span)
        .filter_map(|i| events.get(i % n))
        .map(|(key, payload)| (topic, key.clone(), payload.clone()));
    let messages = super::produce_all(&producer, records, shutdown).await?;
    let produced = start.elapsed();
    let _ = total_tx.send(messages);
    let (read, done) = reader.await.unwrap_or((0, Instant::now()));
    drop(total_tx);
    if read < messages {
        return Err(CeilingError::Short {
            read,
            sent: messages,
            waited: idle,
        });
    }
    let consumed = done.duration_since(start);
    let bytes: usize = events.iter().map(|(_, p)| p.len()).sum();
    Ok(Ceiling {
        messages,
        distinct: events.len(),
        message_bytes: bytes / n,
        min_span_s: min_span.as_secs_f64(),
        produce_s: produced.as_secs_f64(),
        consume_s: consumed.as_secs_f64(),
        produce_per_s: messages as f64 / produced.as_secs_f64().max(1e-9),
        consume_per_s: messages as f64 / consumed.as_secs_f64().max(1e-9),
    })
}

/// A consumer of every partition of `topic`, from its beginning, in a group of its own.
fn from_the_beginning(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<StreamConsumer<Context>, CeilingError> {
    let consumer: StreamConsumer<Context> = kafka
        .client_config()
        .set(
            "group.id",
            format!("orderflow.bench-ceiling.{}", Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create_with_context(Context::default())
        .map_err(KafkaSetupError::Client)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads until it has the total the producer announces (plus the warm-up message), or
/// for `idle` reads nothing; returns the messages read, the warm-up left out, and when the
/// last one came.
fn read_all(
    consumer: StreamConsumer<Context>,
    mut total_rx: tokio::sync::watch::Receiver<usize>,
    idle: Duration,
) -> tokio::task::JoinHandle<(usize, Instant)> {
    tokio::spawn(async move {
        let mut read = 0usize;
        let mut last = Instant::now();
        // The warm-up message is read too and not counted.
        while read < total_rx.borrow().saturating_add(1) {
            tokio::select! {
                received = tokio::time::timeout(idle, consumer.recv()) => match received {
                    Ok(Ok(_)) => {
                        read += 1;
                        last = Instant::now();
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "ceiling consumer"),
                    Err(_) => break,
                },
                // The producer gave up (its error is reported): so does the reader.
                changed = total_rx.changed() => if changed.is_err() { break },
            }
        }
        (read.saturating_sub(1), last)
    })
}
