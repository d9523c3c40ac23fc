//! The stage's librdkafka consumer: its settings (offsets stored by the loop only, G2),
//! and its context, which records rebalances for the loop and turns librdkafka's
//! statistics into the fetched-messages, lag and request metrics.

use super::config::LoopConfig;
use crate::kafka::requests::RequestCounter;
use crate::kafka::{KafkaConfig, KafkaSetupError};
use crate::metrics::{Metrics, PartitionLabels};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use std::sync::{Arc, Mutex};

/// Records revoked and assigned partitions from inside librdkafka's rebalance callback, for
/// the loop to act on, and turns librdkafka's statistics into the lag metric.
pub struct StageContext {
    pub(super) group: String,
    metrics: Arc<Metrics>,
    pub(super) revoked: Mutex<Vec<(String, i32)>>,
    pub(super) assigned: Mutex<Vec<(String, i32)>>,
    /// Messages librdkafka reported received from the broker, per partition, at the last
    /// statistics: `orderflow_messages_fetched_total` grows by the difference.
    received: Mutex<std::collections::HashMap<(String, i32), u64>>,
    requests: RequestCounter,
}

impl StageContext {
    fn new(group: &str, metrics: Arc<Metrics>) -> Self {
        StageContext {
            group: group.to_owned(),
            requests: RequestCounter::new(Arc::clone(&metrics), "consumer"),
            metrics,
            revoked: Mutex::default(),
            assigned: Mutex::default(),
            received: Mutex::default(),
        }
    }
}

impl ClientContext for StageContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::kafka::log_line(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::report_error(error, reason)
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.requests.record(&statistics);
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
                    .messages_fetched
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
    options: &LoopConfig,
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
        // Batches: the broker holds a caught-up fetch as long as the stage's pace allows
        // (5 ms where someone waits, 100 ms where nobody does), so that a fetch carries
        // what arrived meanwhile instead of a record or two ([`crate::kafka::Pace`]).
        .set("fetch.min.bytes", crate::kafka::FETCH_MIN_BYTES)
        .set("fetch.wait.max.ms", options.pace.fetch_wait_max_ms())
        // librdkafka's own prefetch, small: a pause drops it and the resume fetches it
        // again, so it bounds what a pause costs. With 10,000 (and up to 1 MB per
        // partition and fetch) the benchmark measured orders.created fetched 28 times
        // over; the loop's own queue (engine::QUEUE_PER_TOPIC) holds the work instead. How
        // much of a partition one fetch brings is the stage's (`config::Prefetch`).
        .set("queued.min.messages", "100")
        .set(
            "fetch.message.max.bytes",
            options.prefetch.partition_bytes(),
        )
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
