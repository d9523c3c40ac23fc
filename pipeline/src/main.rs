//! The `orderflow` command: one subcommand per job. Configuration comes from flags or the
//! environment variables named in `--help`; errors end the process with one sentence on
//! stderr and a non-zero exit code.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use orderflow::testbed::bench::{self, BenchCommand};
use orderflow::core::schedule;
use orderflow::db::{self, journey, DbConfig};
use orderflow::dispatch::{self, DispatchConfig};
use orderflow::kafka::topics::{self, TopicSpecs};
use orderflow::kafka::KafkaConfig;
use orderflow::testbed::load::{self, LoadConfig};
use orderflow::metrics::{self, Metrics, MetricsConfig};
use orderflow::pin::PinKeys;
use orderflow::poll::reconcile::{self, ReconcileConfig};
use orderflow::poll::PollConfig;
use orderflow::provider::accounts::Accounts;
use orderflow::shutdown;
use orderflow::sink::SinkConfig;
use orderflow::testbed::sim::{Sim, SimConfig, DEFAULT_BALANCE_KURUS};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "orderflow",
    version,
    about = "Places digital-goods orders with providers exactly once and tracks them to a final state."
)]
struct Cli {
    /// Log filter, e.g. `info` or `orderflow=debug,librdkafka=warn`.
    #[arg(
        long,
        global = true,
        env = "ORDERFLOW_LOG",
        default_value = "info,sqlx=warn"
    )]
    log: String,

    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "ORDERFLOW_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage Kafka topics from their specs in topics/.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Apply the database migrations that are not applied yet.
    Migrate {
        #[command(flatten)]
        db: DbConfig,
    },
    /// Run the dispatch stage: place each order of orders.created with its provider.
    Dispatch {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        dispatch: DispatchConfig,
        #[command(flatten)]
        metrics: MetricsConfig,
    },
    /// Run the poll stage: check each dispatched order with its provider until it is final.
    Poll {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        poll: PollConfig,
        #[command(flatten)]
        metrics: MetricsConfig,
    },
    /// Run the reconciler: re-enqueue orders whose status check is overdue.
    Reconcile {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        reconcile: ReconcileConfig,
        #[command(flatten)]
        metrics: MetricsConfig,
    },
    /// Run the sink: write the latest state of every order from orders.state into PostgreSQL.
    Sink {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        sink: SinkConfig,
        #[command(flatten)]
        metrics: MetricsConfig,
    },
    /// Look up orders.
    Order {
        #[command(subcommand)]
        command: OrderCommand,
    },
    /// Manage the keys that seal PIN codes.
    PinKey {
        #[command(subcommand)]
        command: PinKeyCommand,
    },
    /// Publish a realistic load of orders and follow each until the pipeline answers it.
    Load {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        load: LoadConfig,
    },
    /// Measure the running pipeline: throughput and latency against the raw Kafka ceiling,
    /// or memory while checks wait in the tiers (ops/bench.sh starts what it measures).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Serve a znet-compatible provider simulator with fault injection (for tests and the demo).
    SimZnet(SimArgs),
}

#[derive(Subcommand)]
enum TopicsCommand {
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
    },
    /// Delete every topic under --topic-prefix (required), e.g. a demo's or a benchmark's.
    Delete {
        #[command(flatten)]
        kafka: KafkaConfig,
    },
}

#[derive(Subcommand)]
enum OrderCommand {
    /// Print an order's journey: state, attempts, tier, next check, deadline, provider
    /// reference, last error, and its PIN masked.
    Show {
        /// The order id.
        id: uuid::Uuid,
        /// Show the PIN in clear (needs the PIN keys).
        #[arg(long)]
        reveal: bool,
        /// A file with the PIN keys; or set ORDERFLOW_PIN_KEYS.
        #[arg(long = "pin-keys-file", env = "ORDERFLOW_PIN_KEYS_FILE")]
        pin_keys_file: Option<PathBuf>,
        #[command(flatten)]
        db: DbConfig,
    },
}

#[derive(Subcommand)]
enum PinKeyCommand {
    /// Print a new random key as `key_id:base64`; put it first in ORDERFLOW_PIN_KEYS (or the
    /// keys file) to seal new PINs with it, and keep the older keys after it to open old ones.
    New {
        /// The key's id: letters, digits, `_` or `-`, up to 32.
        #[arg(long, default_value = "k1")]
        id: String,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "ORDERFLOW_SIM_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Dealer code the simulator accepts.
    // A credential like the password: `--help` names the variable, never its value (G5).
    #[arg(
        long,
        env = "ORDERFLOW_SIM_KOD",
        default_value = "sim-kod",
        hide_env_values = true
    )]
    kod: String,
    /// Password the simulator accepts.
    #[arg(
        long,
        env = "ORDERFLOW_SIM_SIFRE",
        default_value = "sim-sifre",
        hide_default_value = true,
        hide_env_values = true
    )]
    sifre: String,
    /// Delay added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Status checks answered "processing" before an order completes.
    #[arg(long, default_value_t = 1)]
    checks_until_complete: u32,
    /// Share of accepted orders that are slow: they need --slow-checks more checks (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    /// Extra "processing" answers a slow order gets.
    #[arg(long, default_value_t = 3)]
    slow_checks: u32,
    /// The dealer account's opening balance, in lira.
    #[arg(long, default_value_t = DEFAULT_BALANCE_KURUS / 100)]
    balance_lira: i64,
    /// Share of placements rejected with `3|Kupur Bilgisi Bulunamadı` (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    rejection_rate: f64,
    /// Share of accepted orders that end cancelled (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    cancel_rate: f64,
    /// Share of calls answered with a random fault: 5xx, timeout, HTML, empty body, garbage,
    /// or an accepted placement whose answer is lost (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// How long a lost answer or a timeout hangs, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    lost_answer_delay_ms: u64,
    /// Seed of the simulator's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long a new order answers "not found" to checks, in milliseconds (a provider
    /// showing new orders with a lag).
    #[arg(long, default_value_t = 0)]
    visibility_lag_ms: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let tracing = match init_logging(&cli.log, &cli.log_format, command_name(&cli.command)) {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("error: {}", one_sentence(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    let code = match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_sentence(&e));
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    // Flushes the last spans, if tracing is on.
    drop(tracing);
    code
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Topics { .. } => "topics",
        Command::Migrate { .. } => "migrate",
        Command::Dispatch { .. } => "dispatch",
        Command::Poll { .. } => "poll",
        Command::Reconcile { .. } => "reconcile",
        Command::Sink { .. } => "sink",
        Command::Order { .. } => "order",
        Command::PinKey { .. } => "pin-key",
        Command::Load { .. } => "load",
        Command::Bench { .. } => "bench",
        Command::SimZnet(_) => "sim-znet",
    }
}

/// Logs to stderr (text or JSON), and traces over OTLP when the environment asks for them.
fn init_logging(
    filter: &str,
    format: &str,
    command: &str,
) -> anyhow::Result<Option<orderflow::telemetry::Tracing>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("the log filter {filter:?} is invalid"))?;
    let (otel, tracing) = match orderflow::telemetry::layer(command)? {
        Some((layer, tracing)) => (Some(layer), Some(tracing)),
        None => (None, None),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let subscriber = tracing_subscriber::registry().with(otel).with(filter);
    if format == "json" {
        subscriber.with(fmt.json()).init();
    } else {
        subscriber.with(fmt).init();
    }
    Ok(tracing)
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Topics {
            command: TopicsCommand::Delete { kafka },
        } => {
            let deleted = topics::delete_prefixed(&kafka).await?;
            println!(
                "deleted {} topics under {:?}",
                deleted.len(),
                kafka.topic_prefix
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics {
            command:
                TopicsCommand::Apply {
                    kafka,
                    spec,
                    check_tiers,
                },
        } => {
            let mut specs = TopicSpecs::load(spec.as_deref())?;
            if let Some(tiers) = check_tiers {
                let delays = schedule::parse_tiers(&tiers)
                    .map_err(|e| anyhow::anyhow!("ORDERFLOW_CHECK_TIERS is invalid: {e}"))?;
                let labels: Vec<String> = delays.into_iter().map(schedule::label).collect();
                specs = specs.with_tiers(&labels);
            }
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
        Command::Migrate { db } => {
            let pool = db.connect().await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dispatch {
            kafka,
            db,
            dispatch,
            metrics,
        } => {
            dispatch.default_deadline()?;
            let accounts = Accounts::load(&dispatch.accounts_file)?;
            let pool = db.connect().await?;
            let (trigger, shutdown) = shutdown::channel();
            tokio::spawn(shutdown::on_signals(trigger));
            let metrics = serve_metrics(&metrics).await?;
            metrics::watch_database(pool.clone(), Arc::clone(&metrics));
            dispatch::run(dispatch, accounts, kafka, pool, metrics, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Poll {
            kafka,
            db,
            poll,
            metrics,
        } => {
            let accounts = Accounts::load(&poll.accounts_file)?;
            poll.schedule.schedule()?;
            poll.pin_keys()?;
            let pool = db.connect().await?;
            let (trigger, shutdown) = shutdown::channel();
            tokio::spawn(shutdown::on_signals(trigger));
            let metrics = serve_metrics(&metrics).await?;
            metrics::watch_database(pool.clone(), Arc::clone(&metrics));
            orderflow::poll::run(poll, accounts, kafka, pool, metrics, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile {
            kafka,
            db,
            reconcile,
            metrics,
        } => {
            reconcile.pass(&kafka)?;
            let pool = db.connect().await?;
            let (trigger, shutdown) = shutdown::channel();
            tokio::spawn(shutdown::on_signals(trigger));
            let metrics = serve_metrics(&metrics).await?;
            metrics::watch_database(pool.clone(), Arc::clone(&metrics));
            reconcile::run(reconcile, kafka, pool, metrics, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sink {
            kafka,
            db,
            sink,
            metrics,
        } => {
            let pool = db.connect().await?;
            let (trigger, shutdown) = shutdown::channel();
            tokio::spawn(shutdown::on_signals(trigger));
            let metrics = serve_metrics(&metrics).await?;
            metrics::watch_database(pool.clone(), Arc::clone(&metrics));
            orderflow::sink::run(sink, kafka, pool, metrics, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Order {
            command:
                OrderCommand::Show {
                    id,
                    reveal,
                    pin_keys_file,
                    db,
                },
        } => {
            let keys = if reveal {
                let env = std::env::var("ORDERFLOW_PIN_KEYS").ok();
                let keys = PinKeys::from_env_or_file(env.as_deref(), pin_keys_file.as_deref())?;
                Some(keys.ok_or(journey::RevealError::NoKey)?)
            } else {
                None
            };
            let pool = db.connect().await?;
            let Some(found) = journey::get(&pool, id).await? else {
                anyhow::bail!("no order {id} is known to this database");
            };
            print!(
                "{}",
                journey::render(&found, chrono::Utc::now(), keys.as_ref())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::PinKey {
            command: PinKeyCommand::New { id },
        } => {
            let line = PinKeys::generate_key_line(&id);
            PinKeys::parse(&line)?;
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Load { kafka, load } => {
            let (trigger, shutdown) = shutdown::channel();
            tokio::spawn(shutdown::on_signals(trigger));
            let report = load::run(&kafka, &load, &mut (), None, shutdown).await?;
            print!("{}", report.render());
            Ok(if report.missing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            })
        }
        Command::Bench { command } => {
            let (trigger, shutdown) = shutdown::channel();
            tokio::spawn(shutdown::on_signals(trigger));
            print!("{}", bench::run(command, shutdown).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::SimZnet(args) => {
            let config = SimConfig {
                kod: args.kod,
                sifre: args.sifre,
                latency: Duration::from_millis(args.latency_ms),
                checks_until_complete: args.checks_until_complete,
                slow_share: unit_share("slow-share", args.slow_share)?,
                slow_checks: args.slow_checks,
                initial_balance_kurus: args.balance_lira.saturating_mul(100),
                rejection_rate: unit_share("rejection-rate", args.rejection_rate)?,
                cancel_rate: unit_share("cancel-rate", args.cancel_rate)?,
                fault_rate: unit_share("fault-rate", args.fault_rate)?,
                lost_answer_delay: Duration::from_millis(args.lost_answer_delay_ms),
                seed: args.seed,
                visibility_lag: Duration::from_millis(args.visibility_lag_ms),
            };
            let (trigger, mut shutdown) = shutdown::channel();
            tokio::spawn(shutdown::on_signals(trigger));
            let handle = Sim::new(config)
                .serve(args.listen, async move { shutdown.wait().await })
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            println!("znet simulator listening on http://{}", handle.addr);
            handle
                .task
                .await
                .context("the simulator stopped unexpectedly")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The process's metrics, served if an address is configured.
async fn serve_metrics(config: &MetricsConfig) -> anyhow::Result<Arc<Metrics>> {
    let metrics = Arc::new(Metrics::new());
    metrics::serve(config, Arc::clone(&metrics)).await?;
    Ok(metrics)
}

/// The error and its causes on one line, leaving out causes that an outer message already
/// quotes.
fn one_sentence(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn unit_share(flag: &str, value: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&value),
        "--{flag} must be between 0 and 1, got {value}"
    );
    Ok(value)
}
