//! Running the poll stage: checks its topics exist, builds the [`PollHandler`] and hands
//! it to the shared consumer loop ([`crate::kafka::stage`]) until shutdown.

use super::{tier_topics, PollConfig, PollError, PollHandler};
use crate::account_caps;
use crate::account_status;
use crate::kafka::stage::{self, LoopConfig};
use crate::kafka::topics::name;
use crate::kafka::{KafkaConfig, Pace};
use crate::metrics::Metrics;
use crate::provider::accounts::Accounts;
use crate::shutdown::Shutdown;
use sqlx::PgPool;
use std::sync::Arc;

/// Runs the poll stage until `shutdown`.
pub async fn run(
    config: PollConfig,
    accounts: Accounts,
    kafka: KafkaConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(), PollError> {
    let schedule = config.schedule.schedule()?;
    let keys = config.pin_keys()?;
    let mut topics = vec![kafka.topic(name::ORDERS_DISPATCHED)];
    topics.extend(tier_topics(&kafka, &schedule));
    let mut needed = topics.clone();
    needed.extend([
        kafka.topic(name::ORDERS_STATE),
        kafka.topic(name::ORDERS_DLQ),
    ]);
    kafka.check_topics_off_runtime(needed).await?;
    accounts.observe(Arc::clone(&metrics));
    // Before any call (the balance checks start at once): from here on the caps are the
    // cluster's, and this process holds only its share.
    let keepers =
        account_caps::share("poll", accounts.all(), pool.clone(), Arc::clone(&metrics)).await?;
    account_status::spawn_writer(
        "poll",
        accounts.all(),
        pool.clone(),
        config.account_status,
        shutdown.clone(),
    );
    let handler = Arc::new(PollHandler::new(
        &kafka,
        pool,
        accounts,
        schedule,
        keys,
        Arc::clone(&metrics),
    )?);
    let options = LoopConfig {
        group: kafka.group(config.group.as_deref(), super::DEFAULT_GROUP),
        topics,
        max_in_flight: config.max_in_flight.max(1),
        // Every check is due a while after its message was written.
        pace: Pace::Patient,
        prefetch: stage::Prefetch::Small,
        default_batch_linger_ms: super::config::BATCH_LINGER_MS,
        stage: config.stage,
        metrics,
    };
    handler.batch.open_ahead().await;
    let consumer = stage::consumer(&kafka, &options)?;
    tracing::info!(group = %options.group, topics = ?options.topics, "poll stage running");
    let ran = stage::run(consumer, handler, options, shutdown).await;
    keepers.stop().await;
    ran?;
    tracing::info!("poll stage stopped");
    Ok(())
}
