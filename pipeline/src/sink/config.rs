//! The sink's settings: consumer group, batch size and linger, shutdown grace.

use crate::kafka::stage::StageConfig;

/// The sink's consumer group unless configured otherwise (after the topic prefix).
pub const DEFAULT_GROUP: &str = "orderflow.sink";

/// Settings of the sink (flags or environment variables).
#[derive(Clone, Debug, clap::Args)]
pub struct SinkConfig {
    #[command(flatten)]
    pub stage: StageConfig,

    /// Consumer group of the sink; default `orderflow.sink` after the topic prefix
    /// (ORDERFLOW_TOPIC_PREFIX), e.g. `staging.orderflow.sink`.
    #[arg(long = "sink-group", env = "ORDERFLOW_SINK_GROUP")]
    pub group: Option<String>,

    /// Most rows upserted in one statement.
    #[arg(
        long = "sink-batch-rows",
        env = "ORDERFLOW_SINK_BATCH_ROWS",
        default_value_t = 1000
    )]
    pub batch_rows: usize,

    /// How long a batch waits for more rows after its first row arrived, in milliseconds;
    /// a batch whose first row waited that long already (while the batch before it was
    /// written) is written at once.
    #[arg(
        long = "sink-batch-linger-ms",
        env = "ORDERFLOW_SINK_BATCH_LINGER_MS",
        default_value_t = 50
    )]
    pub batch_linger_ms: u64,
}
