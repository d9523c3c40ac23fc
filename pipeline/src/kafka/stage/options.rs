//! How a stage consumes: its batching and wait-buffer flags ([`BatchArgs`], shared by
//! every stage) and the rest of its settings ([`StageOptions`]).

use crate::core::engine;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

/// How a stage batches its work and how much may wait for its due time (flags or
/// environment variables, shared by every stage).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct BatchArgs {
    /// Most messages handed to the stage's handler at once.
    #[arg(
        id = "stage_batch_max",
        long = "batch-max",
        env = "ORDERFLOW_BATCH_MAX",
        default_value_t = 256
    )]
    pub batch_max: usize,

    /// How long a due message may wait for its batch to fill, in milliseconds.
    #[arg(
        id = "stage_batch_linger_ms",
        long = "batch-linger-ms",
        env = "ORDERFLOW_BATCH_LINGER_MS",
        default_value_t = 5
    )]
    pub batch_linger_ms: u64,

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
}

impl Default for BatchArgs {
    fn default() -> Self {
        BatchArgs {
            batch_max: 256,
            batch_linger_ms: 5,
            wait_buffer_messages: 100_000,
            wait_buffer_bytes: 32 * 1024 * 1024,
        }
    }
}

/// How a stage consumes.
#[derive(Clone, Debug)]
pub struct StageOptions {
    pub group: String,
    pub topics: Vec<String>,
    /// Messages worked on at once, per topic.
    pub max_in_flight: usize,
    pub batch: BatchArgs,
    /// How long work in flight may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
    pub metrics: Arc<Metrics>,
}

impl StageOptions {
    pub(super) fn engine(&self) -> engine::Settings {
        engine::Settings {
            batch_max: self.batch.batch_max,
            batch_linger_ms: self.batch.batch_linger_ms.min(60_000) as i64,
            max_in_flight: self.max_in_flight,
            buffer_messages: self.batch.wait_buffer_messages,
            buffer_bytes: self.batch.wait_buffer_bytes,
            queue_min: engine::QUEUE_PER_TOPIC,
        }
    }
}
