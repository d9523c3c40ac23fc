//! `orderflow dispatch|poll|reconcile|sink`: each stage's settings checked before anything
//! connects, then the shared start-up ([`start`]: the database pool, the shutdown signal,
//! the metrics server and its database gauges), then the stage until shutdown.

use super::CliError;
use crate::db::DbConfig;
use crate::dispatch::{self, DispatchConfig};
use crate::kafka::KafkaConfig;
use crate::metrics::{self, Metrics, MetricsConfig};
use crate::poll::reconcile::{self, ReconcileConfig};
use crate::poll::{self, PollConfig};
use crate::provider::accounts::Accounts;
use crate::shutdown::{self, Shutdown};
use crate::sink::{self, SinkConfig};
use crate::znet;
use sqlx::PgPool;
use std::process::ExitCode;
use std::sync::Arc;

/// What every stage runs with.
struct Started {
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

/// Connects to the database, listens for the shutdown signals, serves the metrics (if an
/// address is configured) and watches the database pool.
async fn start(db: &DbConfig, metrics: &MetricsConfig) -> Result<Started, CliError> {
    let pool = db.connect().await?;
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(shutdown::on_signals(trigger));
    let metrics = serve_metrics(metrics).await?;
    metrics::watch_database(pool.clone(), Arc::clone(&metrics));
    Ok(Started {
        pool,
        metrics,
        shutdown,
    })
}

/// The process's metrics, served if an address is configured.
async fn serve_metrics(config: &MetricsConfig) -> Result<Arc<Metrics>, CliError> {
    let metrics = Arc::new(Metrics::new());
    metrics::serve(config, Arc::clone(&metrics)).await?;
    Ok(metrics)
}

pub async fn dispatch(
    kafka: KafkaConfig,
    db: DbConfig,
    config: DispatchConfig,
    metrics: MetricsConfig,
) -> Result<ExitCode, CliError> {
    config.default_deadline()?;
    let accounts = Accounts::load(&config.accounts_file, znet::connect)?;
    let s = start(&db, &metrics).await?;
    dispatch::run(config, accounts, kafka, s.pool, s.metrics, s.shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn poll(
    kafka: KafkaConfig,
    db: DbConfig,
    config: PollConfig,
    metrics: MetricsConfig,
) -> Result<ExitCode, CliError> {
    let accounts = Accounts::load(&config.accounts_file, znet::connect)?;
    config.schedule.schedule()?;
    config.pin_keys()?;
    let s = start(&db, &metrics).await?;
    poll::run(config, accounts, kafka, s.pool, s.metrics, s.shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn reconcile(
    kafka: KafkaConfig,
    db: DbConfig,
    config: ReconcileConfig,
    metrics: MetricsConfig,
) -> Result<ExitCode, CliError> {
    config.pass(&kafka)?;
    let s = start(&db, &metrics).await?;
    reconcile::run(config, kafka, s.pool, s.metrics, s.shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn sink(
    kafka: KafkaConfig,
    db: DbConfig,
    config: SinkConfig,
    metrics: MetricsConfig,
) -> Result<ExitCode, CliError> {
    let s = start(&db, &metrics).await?;
    sink::run(config, kafka, s.pool, s.metrics, s.shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
