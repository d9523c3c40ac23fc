//! Running the sink: checks its topics exist, starts the batch writer, and hands the
//! [`SinkHandler`] to the shared consumer loop ([`crate::kafka::stage`]) until shutdown.

use super::repair::Repairer;
use super::write::Batcher;
use super::{SinkConfig, SinkError, SinkHandler};
use crate::core::backoff::Backoff;
use crate::kafka::dlq::DeadLetters;
use crate::kafka::emit::Emitter;
use crate::kafka::stage::{self, LoopConfig, PerMessage};
use crate::kafka::topics::name;
use crate::kafka::{KafkaConfig, Pace};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
    let batch = crate::db::BatchConnections::beside(&pool);
    batch.open_ahead().await;
    let batcher = Batcher {
        metrics: Arc::clone(&metrics),
        batch,
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
    let options = LoopConfig {
        group: kafka.group(config.group.as_deref(), super::DEFAULT_GROUP),
        topics: vec![topic],
        // Enough in flight to fill two batches while one is written.
        max_in_flight: rows * 2,
        // Rows for reading later, not answers someone waits for.
        pace: Pace::Patient,
        // Nothing waits here for a due time, and its queue pauses a partition only when
        // the database holds it back: whole record batches, whatever their size.
        prefetch: stage::Prefetch::Large,
        default_batch_linger_ms: stage::config::DEFAULT_BATCH_LINGER_MS,
        stage: config.stage,
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
