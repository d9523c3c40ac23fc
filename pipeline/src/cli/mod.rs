//! The `orderflow` command's subcommands, one module each: [`topics`], [`migrate`], the
//! four stages ([`stage`]: dispatch, poll, reconcile, sink, with their shared start-up),
//! [`order`] (`order show`, `list` and `submit`), [`dlq`] (list, show and replay the
//! dead-letter queue), [`accounts`] (the provider accounts' status, credentials check
//! and product list), [`pin_key`], [`status_page`] (the read-only status page), and,
//! with the `testbed` feature, the test bed's `load`, `bench` and `sim-znet` (`testbed`).
//!
//! Owns the clap types ([`Cli`], [`Command`]) and hands each command to its module. The
//! binary (`src/main.rs`) only parses, sets up logging and the runtime, and prints a
//! [`CliError`] as one sentence. Configuration comes from flags or the environment
//! variables named in `--help`, which never prints a secret's value (G5).

pub mod accounts;
pub mod dlq;
mod error;
pub mod migrate;
pub mod order;
pub mod pin_key;
pub mod stage;
pub mod status_page;
#[cfg(feature = "testbed")]
pub mod testbed;
pub mod topics;

pub use error::CliError;

use crate::db::DbConfig;
use crate::dispatch::DispatchConfig;
use crate::kafka::KafkaConfig;
use crate::poll::reconcile::ReconcileConfig;
use crate::poll::PollConfig;
use crate::sink::SinkConfig;
use crate::status::StatusPageConfig;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "orderflow",
    version,
    about = "Places digital-goods orders with providers exactly once and tracks them to a final state."
)]
pub struct Cli {
    /// Log filter, e.g. `info` or `orderflow=debug,librdkafka=warn`.
    #[arg(
        long,
        global = true,
        env = "ORDERFLOW_LOG",
        default_value = "info,sqlx=warn"
    )]
    pub log: String,

    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "ORDERFLOW_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Manage Kafka topics from their specs in topics/.
    Topics {
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// Apply the database migrations that are not applied yet.
    Migrate {
        #[command(flatten)]
        db: DbConfig,
    },
    /// Run the dispatch stage: place each order of orders.created with its provider.
    Dispatch(stage::StageArgs<DispatchConfig>),
    /// Run the poll stage: check each dispatched order with its provider until it is final.
    Poll(stage::StageArgs<PollConfig>),
    /// Run the reconciler: re-enqueue orders whose status check is overdue.
    Reconcile(stage::StageArgs<ReconcileConfig>),
    /// Run the sink: write the latest state of every order from orders.state into PostgreSQL.
    Sink(stage::StageArgs<SinkConfig>),
    /// Find orders, show one's journey, or submit one by hand.
    Order {
        #[command(subcommand)]
        command: order::OrderCommand,
    },
    /// Inspect the dead-letter queue (orders.dlq) and replay its entries after a fix.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// See the provider accounts: balance, breaker, caps and recent answers; check their
    /// credentials; list their products.
    Accounts {
        #[command(subcommand)]
        command: accounts::AccountsCommand,
    },
    /// Manage the keys that seal PIN codes.
    PinKey {
        #[command(subcommand)]
        command: pin_key::PinKeyCommand,
    },
    /// Serve a read-only status page: throughput, open orders, retry depth per tier, stuck
    /// orders, dead letters by reason and the provider accounts (on 127.0.0.1 by default).
    StatusPage {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        page: StatusPageConfig,
        #[command(flatten)]
        stuck: order::StuckArgs,
    },
    /// Publish a realistic load of orders and follow each until the pipeline answers it.
    #[cfg(feature = "testbed")]
    Load {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        load: crate::testbed::load::LoadConfig,
    },
    /// Measure the running pipeline: throughput and latency against the raw Kafka ceiling,
    /// or memory while checks wait in the tiers (ops/bench.sh starts what it measures).
    #[cfg(feature = "testbed")]
    Bench {
        #[command(subcommand)]
        command: crate::testbed::bench::BenchCommand,
    },
    /// Serve a znet-compatible provider simulator with fault injection (for tests and the demo).
    #[cfg(feature = "testbed")]
    SimZnet(crate::testbed::sim::SimServerConfig),
}

impl Command {
    /// The subcommand's name, as traces name the service.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Topics { .. } => "topics",
            Command::Migrate { .. } => "migrate",
            Command::Dispatch(_) => "dispatch",
            Command::Poll(_) => "poll",
            Command::Reconcile(_) => "reconcile",
            Command::Sink(_) => "sink",
            Command::Order { .. } => "order",
            Command::Accounts { .. } => "accounts",
            Command::Dlq { .. } => "dlq",
            Command::PinKey { .. } => "pin-key",
            Command::StatusPage { .. } => "status-page",
            #[cfg(feature = "testbed")]
            Command::Load { .. } => "load",
            #[cfg(feature = "testbed")]
            Command::Bench { .. } => "bench",
            #[cfg(feature = "testbed")]
            Command::SimZnet(_) => "sim-znet",
        }
    }
}

/// Runs the command to its end; the exit code says how it ended when it did not fail.
pub async fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Topics { command } => topics::run(command).await,
        Command::Migrate { db } => migrate::run(db).await,
        Command::Dispatch(args) => stage::dispatch(args).await,
        Command::Poll(args) => stage::poll(args).await,
        Command::Reconcile(args) => stage::reconcile(args).await,
        Command::Sink(args) => stage::sink(args).await,
        Command::Order { command } => order::run(command).await,
        Command::Accounts { command } => accounts::run(command).await,
        Command::Dlq { command } => dlq::run(command).await,
        Command::PinKey { command } => pin_key::run(command),
        Command::StatusPage {
            kafka,
            db,
            page,
            stuck,
        } => status_page::run(kafka, db, page, stuck).await,
        #[cfg(feature = "testbed")]
        Command::Load { kafka, load } => testbed::load(kafka, load).await,
        #[cfg(feature = "testbed")]
        Command::Bench { command } => testbed::bench(command).await,
        #[cfg(feature = "testbed")]
        Command::SimZnet(args) => testbed::sim_znet(args).await,
    }
}
