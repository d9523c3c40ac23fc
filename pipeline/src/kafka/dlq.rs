//! The dead-letter queue, `orders.dlq` (G8).
//!
//! A record a stage cannot use is copied there byte for byte (key, payload and headers)
//! with `orderflow.dlq.*` headers saying why, by which stage, and where it came from, so it
//! can be inspected and replayed after a fix. Only events without secrets are ever
//! dead-lettered: `orders.created` carries no PIN or credential (G5).

use crate::core::event::InvalidEvent;
use crate::kafka::headers;
use crate::kafka::Context;
use crate::metrics::{DeadLetterLabels, Metrics};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::sync::Arc;

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer<Context>,
    topic: String,
    stage: &'static str,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    pub fn new(
        producer: FutureProducer<Context>,
        topic: String,
        stage: &'static str,
        metrics: Arc<Metrics>,
    ) -> Self {
        DeadLetters {
            producer,
            topic,
            stage,
            metrics,
        }
    }

    /// Copies `message` to the DLQ with `why`, and returns once the broker has it.
    pub async fn send<M: Message>(
        &self,
        message: &M,
        why: &InvalidEvent,
    ) -> Result<(), KafkaError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let at = chrono::Utc::now().to_rfc3339();
        let mut out = message
            .headers()
            .map(|h| {
                h.iter()
                    .fold(rdkafka::message::OwnedHeaders::new(), |acc, header| {
                        acc.insert(Header {
                            key: header.key,
                            value: header.value,
                        })
                    })
            })
            .unwrap_or_default();
        for (key, value) in [
            (headers::DLQ_REASON, why.kind.as_str()),
            (headers::DLQ_DETAIL, why.detail.as_str()),
            (headers::DLQ_STAGE, self.stage),
            (headers::DLQ_SOURCE_TOPIC, message.topic()),
            (headers::DLQ_SOURCE_PARTITION, partition.as_str()),
            (headers::DLQ_SOURCE_OFFSET, offset.as_str()),
            (headers::DLQ_AT, at.as_str()),
        ] {
            out = out.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(out);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)?;
        self.metrics
            .dead_lettered
            .get_or_create(&DeadLetterLabels {
                stage: self.stage,
                reason: why.kind.as_str(),
            })
            .inc();
        Ok(())
    }
}
