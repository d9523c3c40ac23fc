//! How far a consumer group is behind on some topics: the messages between the group's
//! committed offsets and the ends of the partitions, summed per topic.
//!
//! For the poll group this is the retry depth: on `orders.dispatched` the orders waiting
//! for their first check, on each tier topic the checks waiting on that tier. They wait in
//! Kafka, not in the stage's memory, so this is read from the broker, not from a stage.
//! Reading committed offsets does not join the group.

use super::{Context, KafkaConfig, KafkaSetupError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;

/// Reads one group's lag on a fixed list of topics. Blocking: call it off the runtime.
#[derive(Clone)]
pub struct GroupLag {
    client: Arc<BaseConsumer<Context>>,
    /// (label, full topic name), in display order.
    topics: Arc<Vec<(String, String)>>,
    timeout: std::time::Duration,
}

impl GroupLag {
    /// `topics` pairs a short label (`first`, `30s`, …) with the topic's full name.
    pub fn new(
        kafka: &KafkaConfig,
        group: &str,
        topics: Vec<(String, String)>,
    ) -> Result<Self, KafkaSetupError> {
        let client: BaseConsumer<Context> = kafka
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create_with_context(Context::default())
            .map_err(KafkaSetupError::Client)?;
        Ok(GroupLag {
            client: Arc::new(client),
            topics: Arc::new(topics),
            timeout: kafka.connect_timeout(),
        })
    }

    /// The labels, in the order [`GroupLag::sample`] reports them.
    pub fn labels(&self) -> Vec<String> {
        self.topics.iter().map(|(l, _)| l.clone()).collect()
    }

    /// Messages not yet committed by the group, per topic, in label order. A partition the
    /// group never committed counts from its first retained message.
    pub fn sample(&self) -> Result<Vec<(String, i64)>, KafkaError> {
        let mut ends = TopicPartitionList::new();
        let mut bounds = Vec::new();
        for (_, topic) in self.topics.iter() {
            let metadata = self.client.fetch_metadata(Some(topic), self.timeout)?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (low, high) = self.client.fetch_watermarks(topic, p.id(), self.timeout)?;
                    ends.add_partition(topic, p.id());
                    bounds.push((topic.clone(), p.id(), low, high));
                }
            }
        }
        let committed = self.client.committed_offsets(ends, self.timeout)?;
        let mut lag: Vec<(String, i64)> = self.topics.iter().map(|(l, _)| (l.clone(), 0)).collect();
        for (topic, partition, low, high) in bounds {
            let position = match committed
                .find_partition(&topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o.max(low),
                _ => low,
            };
            if let Some(i) = self.topics.iter().position(|(_, t)| *t == topic) {
                lag[i].1 += (high - position).max(0);
            }
        }
        Ok(lag)
    }

    /// [`GroupLag::sample`] on the blocking pool; `None` when the broker did not answer.
    pub async fn sample_async(&self) -> Option<Vec<(String, i64)>> {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.sample()).await {
            Ok(Ok(lag)) => Some(lag),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading the group's lag failed");
                None
            }
            Err(_) => None,
        }
    }
}
