//! `orderflow status-page`: serves the read-only status page ([`crate::status`]) until
//! SIGTERM or Ctrl-C. It connects to PostgreSQL and Kafka like the stages do, and reads
//! no accounts file, PIN key or other secret.

use super::order::StuckArgs;
use super::CliError;
use crate::db::DbConfig;
use crate::kafka::KafkaConfig;
use crate::shutdown;
use crate::status::{self, StatusPageConfig};
use std::process::ExitCode;

pub async fn run(
    kafka: KafkaConfig,
    db: DbConfig,
    config: StatusPageConfig,
    stuck: StuckArgs,
) -> Result<ExitCode, CliError> {
    config.check(&kafka)?;
    let pool = db.connect().await?;
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(shutdown::on_signals(trigger));
    status::run(config, kafka, pool, stuck.scan(), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
