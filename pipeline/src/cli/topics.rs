//! `orderflow topics apply|delete`: creates the topics of the specs (reporting drift, exit 3)
//! or deletes every topic under a prefix.

use super::CliError;
use crate::core::schedule;
use crate::kafka::topics::{self, Replication, TopicSpecs};
use crate::kafka::KafkaConfig;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create missing topics; report (and exit 3 on) topics whose settings differ from the spec.
    Apply {
        #[command(flatten)]
        kafka: KafkaConfig,
        /// A topic spec file to use instead of the one built in (topics/topics.toml).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// The poll stage's tiers: a topic is created for each delay the spec lacks, with
        /// the settings of its tier topics.
        #[arg(long = "check-tiers", env = "ORDERFLOW_CHECK_TIERS")]
        check_tiers: Option<String>,
        /// Replicas of every partition; by default 3 on a cluster of three brokers or
        /// more, and as many as there are brokers on a smaller one.
        #[arg(long = "replication-factor", env = "ORDERFLOW_TOPIC_REPLICATION")]
        replication_factor: Option<i32>,
        /// Every topic's min.insync.replicas (the in-sync replicas a write needs); by
        /// default 2 with three replicas or more, 1 below.
        #[arg(long = "min-insync-replicas", env = "ORDERFLOW_TOPIC_MIN_ISR")]
        min_insync_replicas: Option<i32>,
    },
    /// Delete every topic under --topic-prefix (required), e.g. a demo's or a benchmark's.
    Delete {
        #[command(flatten)]
        kafka: KafkaConfig,
    },
}

pub async fn run(command: TopicsCommand) -> Result<ExitCode, CliError> {
    match command {
        TopicsCommand::Delete { kafka } => delete(kafka).await,
        TopicsCommand::Apply {
            kafka,
            spec,
            check_tiers,
            replication_factor,
            min_insync_replicas,
        } => {
            let replication = (replication_factor, min_insync_replicas);
            apply(kafka, spec, check_tiers, replication).await
        }
    }
}

async fn delete(kafka: KafkaConfig) -> Result<ExitCode, CliError> {
    let deleted = topics::delete_prefixed(&kafka).await?;
    println!(
        "deleted {} topics under {:?}",
        deleted.len(),
        kafka.topic_prefix
    );
    Ok(ExitCode::SUCCESS)
}

async fn apply(
    kafka: KafkaConfig,
    spec: Option<PathBuf>,
    check_tiers: Option<String>,
    (factor, min_insync): (Option<i32>, Option<i32>),
) -> Result<ExitCode, CliError> {
    let mut specs = TopicSpecs::load(spec.as_deref())?;
    if let Some(tiers) = check_tiers {
        let delays = schedule::parse_tiers(&tiers).map_err(CliError::CheckTiers)?;
        let labels: Vec<String> = delays.into_iter().map(schedule::label).collect();
        specs = specs.with_tiers(&labels);
    }
    let brokers = topics::broker_count(&kafka).await?;
    let replication = Replication::resolve(factor, min_insync, brokers)?;
    if factor.is_some() || min_insync.is_some() {
        specs = specs.with_replication(replication);
    }
    println!(
        "replication: {} replicas, min.insync.replicas {} ({}; {brokers} broker(s))",
        replication.factor,
        replication.min_insync,
        if factor.is_some() || min_insync.is_some() {
            "configured"
        } else {
            "from the cluster's size, where the spec names none"
        }
    );
    let report = topics::apply(&kafka, &specs).await?;
    for name in &report.created {
        println!("created   {name}");
    }
    for name in &report.unchanged {
        println!("unchanged {name}");
    }
    for drift in &report.drift {
        println!("DRIFT     {drift}");
    }
    println!(
        "{} created, {} unchanged, {} settings differ from the spec",
        report.created.len(),
        report.unchanged.len(),
        report.drift.len()
    );
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
