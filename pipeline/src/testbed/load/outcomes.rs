//! The outcome watcher's consumer: positioned at the current end of `orders.state` and
//! `orders.dlq` (no group offsets), so a load run sees only what it causes.

use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError, Pace};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;
use uuid::Uuid;

use super::LoadError;

/// A consumer positioned at the current end of orders.state and orders.dlq, so it sees
/// only what this run causes.
pub(super) async fn watch_from_now(
    kafka: &KafkaConfig,
) -> Result<StreamConsumer<Context>, LoadError> {
    let consumer: StreamConsumer<Context> = kafka
        .client_config()
        .set("group.id", format!("orderflow.load.{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        // Its fetches gathered as a prompt stage's are ([`Pace::Prompt`]): with
        // librdkafka's defaults the broker answered as soon as one state event was there,
        // and this watcher is not the system measured. It sees an event up to the pace's
        // 5 ms later, which only ever lengthens the latencies it reports.
        .set("fetch.min.bytes", crate::kafka::FETCH_MIN_BYTES)
        .set("fetch.wait.max.ms", Pace::Prompt.fetch_wait_max_ms())
        .create_with_context(Context::default())
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
