//! Start-up of the dispatch stage: its topics checked, the accounts observed (their status
//! written, their balance checked on a schedule: `crate::account_status`), the handler
//! built, then the shared consumer loop ([`crate::kafka::stage`]) run on `orders.created`
//! and `orders.dispatch-retry` until shutdown, committing an offset only once its outcome is
//! on the broker (G2).

use super::config::DispatchConfig;
use super::error::DispatchError;
use super::handler::DispatchHandler;
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
use std::time::Duration;

/// Runs the dispatch stage until `shutdown`.
pub async fn run(
    config: DispatchConfig,
    accounts: Accounts,
    kafka: KafkaConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(), DispatchError> {
    kafka
        .check_topics_off_runtime(
            [
                name::ORDERS_CREATED,
                name::ORDERS_DISPATCH_RETRY,
                name::ORDERS_DISPATCHED,
                name::ORDERS_STATE,
                name::ORDERS_DLQ,
            ]
            .map(|topic| kafka.topic(topic))
            .to_vec(),
        )
        .await?;
    accounts.observe(Arc::clone(&metrics));
    // Before any call (the balance checks start at once): from here on the caps are the
    // cluster's, and this process holds only its share.
    let keepers = account_caps::share(
        "dispatch",
        accounts.all(),
        pool.clone(),
        Arc::clone(&metrics),
    )
    .await?;
    account_status::spawn_writer(
        "dispatch",
        accounts.all(),
        pool.clone(),
        config.account_status,
        shutdown.clone(),
    );
    account_status::spawn_balance_checks(
        accounts.all(),
        Duration::from_secs(config.balance_check_interval_secs),
        shutdown.clone(),
    );
    let handler = Arc::new(DispatchHandler::new(
        &config,
        &kafka,
        pool,
        accounts,
        Arc::clone(&metrics),
    )?);
    let options = LoopConfig {
        group: kafka.group(config.group.as_deref(), super::DEFAULT_GROUP),
        // Parked orders come back on their own topic, with an in-flight bound of their own:
        // a crowd of them coming back cannot starve new orders, nor new orders them.
        topics: vec![
            kafka.topic(name::ORDERS_CREATED),
            kafka.topic(name::ORDERS_DISPATCH_RETRY),
        ],
        max_in_flight: config.max_in_flight.max(1),
        // A shop waits for each order's answer.
        pace: Pace::Prompt,
        prefetch: stage::Prefetch::Small,
        default_batch_linger_ms: stage::config::DEFAULT_BATCH_LINGER_MS,
        stage: config.stage,
        metrics,
    };
    handler.placer.batch.open_ahead().await;
    let consumer = stage::consumer(&kafka, &options)?;
    tracing::info!(group = %options.group, topics = ?options.topics, "dispatch stage running");
    let ran = stage::run(consumer, handler, options, shutdown).await;
    keepers.stop().await;
    ran?;
    tracing::info!("dispatch stage stopped");
    Ok(())
}
