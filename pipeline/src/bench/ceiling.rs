//! The raw Kafka ceiling: the same number of messages as the benchmark's orders, of the
//! same size, produced with the stages' producer settings and consumed back, on a scratch
//! topic with as many partitions as `orders.created`. No stage, no database, no provider:
//! what the broker and client alone carry on this machine, to compare the pipeline with.

use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::shutdown::Shutdown;
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
    pub messages: usize,
    pub message_bytes: usize,
    /// Messages acknowledged per second (acks=all, idempotent, lz4, as the stages).
    pub produce_per_s: f64,
    /// Messages produced and read back per second, the two running at once.
    pub produce_and_consume_per_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("the raw Kafka measurement failed ({0})")]
    Kafka(#[from] KafkaError),
    #[error("the raw Kafka measurement read {read} of {sent} messages within {waited:?}")]
    Short {
        read: usize,
        sent: usize,
        waited: Duration,
    },
}

/// Produces and consumes `messages` payloads of `payload` on a scratch topic, deleted after.
pub async fn measure(
    kafka: &KafkaConfig,
    messages: usize,
    payload: &[u8],
    shutdown: &Shutdown,
) -> Result<Ceiling, CeilingError> {
    let admin: AdminClient<Context> = kafka
        .client_config()
        .create_with_context(Context)
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
    let result = run(kafka, &topic, partitions, messages, payload, shutdown).await;
    if let Err(e) = admin.delete_topics(&[&topic], &options).await {
        tracing::warn!(error = %e, topic, "the scratch topic was not deleted");
    }
    result
}

async fn run(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    messages: usize,
    payload: &[u8],
    shutdown: &Shutdown,
) -> Result<Ceiling, CeilingError> {
    let consumer: StreamConsumer<Context> = kafka
        .client_config()
        .set(
            "group.id",
            format!("orderflow.bench-ceiling.{}", Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create_with_context(Context)
        .map_err(KafkaSetupError::Client)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // A topic created a moment ago may not have leaders yet: the first send waits for them.
    let producer = kafka.producer()?;
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic).payload(payload),
            Timeout::After(kafka.connect_timeout()),
        )
        .await
        .map_err(|(e, _)| e)?;

    let budget = Duration::from_secs(120 + messages as u64 / 1000);
    let reader = tokio::spawn(async move {
        let mut read = 0usize;
        let give_up = tokio::time::Instant::now() + budget;
        while read < messages + 1 {
            match tokio::time::timeout_at(give_up, consumer.recv()).await {
                Ok(Ok(_)) => read += 1,
                Ok(Err(e)) => tracing::debug!(error = %e, "ceiling consumer"),
                Err(_) => break,
            }
        }
        (read.saturating_sub(1), Instant::now())
    });

    let start = Instant::now();
    let records = (0..messages).map(|i| (topic, i.to_string(), payload.to_vec()));
    super::produce_all(&producer, records, shutdown).await?;
    let produced = start.elapsed();
    let (read, done) = reader.await.unwrap_or((0, Instant::now()));
    if read < messages {
        return Err(CeilingError::Short {
            read,
            sent: messages,
            waited: budget,
        });
    }
    let both = done.duration_since(start);
    Ok(Ceiling {
        messages,
        message_bytes: payload.len(),
        produce_per_s: messages as f64 / produced.as_secs_f64().max(1e-9),
        produce_and_consume_per_s: messages as f64 / both.as_secs_f64().max(1e-9),
    })
}
