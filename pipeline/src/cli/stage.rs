//! `orderflow dispatch|poll|reconcile|sink`: each stage's settings checked before anything
//! connects, then the shared start-up ([`start`]: the metrics server, the shutdown signal,
//! the database pool, waited for up to the stage's patience, and the watchers that keep
//! `/readyz` honest and end the stage when an outage outlasts its patience:
//! [`crate::outage`]), then the stage until shutdown.

use super::CliError;
use crate::db::DbConfig;
use crate::dispatch::{self, DispatchConfig};
use crate::kafka::KafkaConfig;
use crate::metrics::{self, Metrics, MetricsConfig};
use crate::outage::{self, GiveUp, OutageConfig};
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
    /// The stage's Kafka settings, with its patience for a cluster that does not answer.
    kafka: KafkaConfig,
    give_up: GiveUp,
}

/// The settings every stage shares besides its own.
struct Common {
    kafka: KafkaConfig,
    db: DbConfig,
    metrics: MetricsConfig,
    outage: OutageConfig,
}

/// A stage subcommand's flags: the shared settings around the stage's own (`S`), in the
/// order `--help` lists them.
#[derive(clap::Args)]
pub struct StageArgs<S: clap::Args> {
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    db: DbConfig,
    #[command(flatten)]
    stage: S,
    #[command(flatten)]
    metrics: MetricsConfig,
    #[command(flatten)]
    outage: OutageConfig,
}

impl<S: clap::Args> StageArgs<S> {
    /// The shared settings, and the stage's own.
    fn split(self) -> (Common, S) {
        let common = Common {
            kafka: self.kafka,
            db: self.db,
            metrics: self.metrics,
            outage: self.outage,
        };
        (common, self.stage)
    }
}

/// Serves the metrics (if an address is configured: `/readyz` says not ready until the
/// stage works), listens for the shutdown signals, connects to the database (waiting out
/// an outage up to the patience) and starts the watchers of the database and the cluster.
async fn start(common: Common) -> Result<Started, CliError> {
    let patience = common.outage.patience()?;
    let metrics = serve_metrics(&common.metrics).await?;
    let (trigger, mut shutdown) = shutdown::channel();
    tokio::spawn(shutdown::on_signals(trigger.clone()));
    let give_up = GiveUp::new(trigger);
    let pool = outage::connect_database(&common.db, patience, &mut shutdown).await?;
    outage::watch_database(
        pool.clone(),
        Arc::clone(&metrics),
        patience,
        give_up.clone(),
    );
    outage::watch_kafka(
        common.kafka.clone(),
        Arc::clone(&metrics),
        patience,
        give_up.clone(),
    );
    let kafka = common.kafka.with_patience(patience, shutdown.clone());
    Ok(Started {
        pool,
        metrics,
        shutdown,
        kafka,
        give_up,
    })
}

/// The stage's end: the reason a watcher stopped it, if one did (it says more than the
/// stage's own error then: a wait cut short), else how the stage ended.
fn ended<E: Into<CliError>>(give_up: &GiveUp, ran: Result<(), E>) -> Result<ExitCode, CliError> {
    match give_up.reason() {
        Some(reason) => Err(reason.into()),
        None => ran.map(|()| ExitCode::SUCCESS).map_err(Into::into),
    }
}

/// The process's metrics, served if an address is configured.
async fn serve_metrics(config: &MetricsConfig) -> Result<Arc<Metrics>, CliError> {
    let metrics = Arc::new(Metrics::new());
    metrics::serve(config, Arc::clone(&metrics)).await?;
    Ok(metrics)
}

pub async fn dispatch(args: StageArgs<DispatchConfig>) -> Result<ExitCode, CliError> {
    let (common, config) = args.split();
    config.default_deadline()?;
    let accounts = Accounts::load(&config.accounts_file, znet::connect)?;
    let s = start(common).await?;
    let ran = dispatch::run(config, accounts, s.kafka, s.pool, s.metrics, s.shutdown).await;
    ended(&s.give_up, ran)
}

pub async fn poll(args: StageArgs<PollConfig>) -> Result<ExitCode, CliError> {
    let (common, config) = args.split();
    let accounts = Accounts::load(&config.accounts_file, znet::connect)?;
    config.schedule.schedule()?;
    config.pin_keys()?;
    let s = start(common).await?;
    let ran = poll::run(config, accounts, s.kafka, s.pool, s.metrics, s.shutdown).await;
    ended(&s.give_up, ran)
}

pub async fn reconcile(args: StageArgs<ReconcileConfig>) -> Result<ExitCode, CliError> {
    let (common, config) = args.split();
    config.pass(&common.kafka)?;
    let s = start(common).await?;
    let ran = reconcile::run(config, s.kafka, s.pool, s.metrics, s.shutdown).await;
    ended(&s.give_up, ran)
}

pub async fn sink(args: StageArgs<SinkConfig>) -> Result<ExitCode, CliError> {
    let (common, config) = args.split();
    let s = start(common).await?;
    let ran = sink::run(config, s.kafka, s.pool, s.metrics, s.shutdown).await;
    ended(&s.give_up, ran)
}
