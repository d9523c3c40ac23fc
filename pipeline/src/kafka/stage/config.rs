//! How a stage consumes. [`StageConfig`] is the one set of flags every stage flattens into
//! its own settings (batching, the wait buffer, the shutdown grace); [`LoopConfig`] is what
//! a stage hands the shared loop (its group, topics and in-flight bound besides). The
//! group and the in-flight bound stay per stage (`ORDERFLOW_DISPATCH_GROUP`, ...), so one
//! environment can configure every stage.

use crate::core::engine;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

/// How long a due message waits for its batch to fill, in milliseconds, in a stage that
/// does not say otherwise ([`LoopConfig::default_batch_linger_ms`]): little next to a
/// provider's answer.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 5;

/// How a stage batches its work and how much may wait for its due time (flags or
/// environment variables, shared by every stage).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct StageConfig {
    /// Most messages handed to the stage's handler at once.
    #[arg(
        id = "stage_batch_max",
        long = "batch-max",
        env = "ORDERFLOW_BATCH_MAX",
        default_value_t = 256
    )]
    pub batch_max: usize,

    /// How long a due message may wait for its batch to fill, in milliseconds; by default
    /// 5, and 100 in poll (a check is due seconds after its message, and a fuller batch
    /// costs fewer statements and requests per check).
    #[arg(
        id = "stage_batch_linger_ms",
        long = "batch-linger-ms",
        env = "ORDERFLOW_BATCH_LINGER_MS"
    )]
    pub batch_linger_ms: Option<u64>,

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

    /// How long work in flight may take to finish when the stage is asked to stop, in
    /// milliseconds (what does not finish is redone by the next owner of its partition).
    #[arg(
        long = "shutdown-grace-ms",
        env = "ORDERFLOW_SHUTDOWN_GRACE_MS",
        default_value_t = 15_000
    )]
    pub shutdown_grace_ms: u64,
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig {
            batch_max: 256,
            batch_linger_ms: None,
            wait_buffer_messages: 100_000,
            wait_buffer_bytes: 32 * 1024 * 1024,
            shutdown_grace_ms: 15_000,
        }
    }
}

/// How much of one partition a fetch may bring (librdkafka's `fetch.message.max.bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// 32 KB, for a stage that pauses partitions under a backlog (dispatch with a queue of
    /// orders, poll with checks waiting): a pause drops what librdkafka prefetched and the
    /// resume fetches it again, so a small fetch keeps that cheap. With 1 MB the benchmark at
    /// `max` fetched orders.created 4.8 times and poll's delayed topics 1.3 times over.
    Small,
    /// 1 MB (librdkafka's default), for a stage that holds no message for a due time and
    /// pauses only when its own work is held up (the sink, by its database). A partition whose next record batch is larger than a fetch's share of it
    /// brings nothing in that fetch (the broker returns a whole batch only for the fetch's
    /// first partition). orderflow's producers keep their batches within 32 KB
    /// (`batch.size`, [`crate::kafka::KafkaConfig::producer_with`]); before they did, the
    /// sink at 32 KB wrote its p99 row up to 12 s after the p99 event at `max` and drained
    /// its last records at 1,300 a second, and at 1 MB within 0.2 s, whatever batches it is
    /// given.
    Large,
}

impl Prefetch {
    pub(super) fn partition_bytes(self) -> &'static str {
        match self {
            Prefetch::Small => "32768",
            Prefetch::Large => "1048576",
        }
    }
}

/// How a stage consumes.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// Messages worked on at once, per topic.
    pub max_in_flight: usize,
    /// How long the broker may hold the stage's fetches.
    pub pace: crate::kafka::Pace,
    /// How much of a partition one fetch may bring.
    pub prefetch: Prefetch,
    /// How long a due message waits for its batch to fill in this stage, in milliseconds,
    /// unless `--batch-linger-ms` says otherwise.
    pub default_batch_linger_ms: u64,
    pub stage: StageConfig,
    pub metrics: Arc<Metrics>,
}

impl LoopConfig {
    /// How long work in flight may take to finish after shutdown is requested.
    pub(super) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.stage.shutdown_grace_ms)
    }

    pub(super) fn engine(&self) -> engine::EngineConfig {
        engine::EngineConfig {
            batch_max: self.stage.batch_max,
            batch_linger_ms: self
                .stage
                .batch_linger_ms
                .unwrap_or(self.default_batch_linger_ms)
                .min(60_000) as i64,
            max_in_flight: self.max_in_flight,
            buffer_messages: self.stage.wait_buffer_messages,
            buffer_bytes: self.stage.wait_buffer_bytes,
            queue_min: engine::QUEUE_PER_TOPIC,
        }
    }
}
