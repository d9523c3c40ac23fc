//! `orderflow bench`: measures the running pipeline. It starts nothing itself: the
//! stages, simulator, broker and database are started by `ops/bench.sh`, which names
//! their processes (`--process name=pid`) for CPU and memory to be read from `/proc`.
//!
//! - `bench throughput`: a load of orders (at a rate or `max`) followed until each one's
//!   row in PostgreSQL is final ([`crate::testbed::load`], latencies from each order's intended
//!   send time), then the raw Kafka ceiling ([`ceiling`]) sustained over a comparable
//!   span. Reports sustained and steady orders/s, created-to-dispatched and
//!   created-to-final percentiles, CPU seconds and CPU per order and peak RSS of every
//!   process (the benchmark's own included), the stages' fetched-versus-handled messages
//!   per topic ([`scrape`]), as a table, as JSON and as an SVG chart of throughput and
//!   retry depth over time.
//! - `bench memory`: fills the tier topics with status checks due much later and shows
//!   the stages' resident memory before, during and after: the waiting lives in Kafka.
//!
//! Here: the command's arguments, errors, the shared writing of results and producing of
//! records. `throughput.rs` and `memory.rs` run the two measurements; `ceiling.rs`,
//! `procs.rs`, `scrape.rs` and `chart.rs` are their instruments.

pub mod ceiling;
pub mod chart;
mod memory;
pub mod procs;
pub mod scrape;
mod throughput;

pub use memory::MemoryReport;
use memory::{memory, Fill};
use throughput::throughput;
pub use throughput::{ProcessCost, ThroughputReport};

use crate::core::schedule;
use crate::db::{DbConfig, DbError};
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::shutdown::Shutdown;
use crate::testbed::load::{percentile, DepthConfig, LoadConfig, LoadError};
use chart::{Line, Panel};
use futures::stream::{FuturesUnordered, StreamExt};
use procs::{Usage, Watched};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Orders through the whole pipeline at a rate or as fast as possible, against the raw
    /// Kafka ceiling.
    Throughput {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        load: LoadConfig,
        /// The database the sink writes: an order is final once its row there is.
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        output: Output,
        /// A stage's metrics endpoint, `name=http://host:port/metrics`, for its fetched
        /// and handled messages per topic. Repeat for each.
        #[arg(long = "metrics")]
        metrics: Vec<scrape::Endpoint>,
        /// Skip the raw Kafka produce-and-consume measurement.
        #[arg(long)]
        no_ceiling: bool,
        /// The raw Kafka measurement lasts as long as the orders run's steady state (10 to
        /// 90 % of the orders final), but at most this many seconds (and at least one pass
        /// over as many messages as orders).
        #[arg(long, default_value_t = 60)]
        ceiling_span_cap_secs: u64,
    },
    /// Resident memory of the stages while the tier topics fill with waiting checks.
    Memory {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        depth: DepthConfig,
        #[command(flatten)]
        output: Output,
        /// Status checks to leave waiting in the tier topics.
        #[arg(long, default_value_t = 1_000_000)]
        waiting: usize,
        /// How far in the future they are due (far enough that none comes due).
        #[arg(long, default_value = "2h")]
        due_in: String,
        /// Seconds of readings before the fill and after it.
        #[arg(long, default_value_t = 20)]
        settle_secs: u64,
        /// Provider account the waiting checks name.
        #[arg(long, default_value = "znet-demo")]
        account: String,
    },
}

/// Where results go and which processes are watched.
#[derive(Clone, Debug, clap::Args)]
pub struct Output {
    /// A process to watch: `name=pid`, or `name=pid+` to count its children too
    /// (PostgreSQL). Repeat for each.
    #[arg(long = "process")]
    pub processes: Vec<Watched>,
    /// Directory for the JSON report and the SVG chart.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Words describing the setup (provider latency, tiers, build), kept in the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Names the measured build (a commit): the JSON is also kept as
    /// `<mode>-<tag>-<unix time>.json`, so that runs are not overwritten.
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Ceiling(#[from] ceiling::CeilingError),
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("the benchmark's Kafka client failed ({0})")]
    Kafka(#[from] KafkaError),
    #[error("cannot write the results to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--due-in is invalid: {0}")]
    DueIn(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Percentiles {
    pub p50_ms: Option<u128>,
    pub p95_ms: Option<u128>,
    pub p99_ms: Option<u128>,
    pub max_ms: Option<u128>,
}

impl Percentiles {
    fn of(sorted: &[Duration]) -> Self {
        let ms = |p| percentile(sorted, p).map(|d| d.as_millis());
        Percentiles {
            p50_ms: ms(50.0),
            p95_ms: ms(95.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
        }
    }
}

pub async fn run(command: BenchCommand, shutdown: Shutdown) -> Result<String, BenchError> {
    match command {
        BenchCommand::Throughput {
            kafka,
            load,
            db,
            output,
            metrics,
            no_ceiling,
            ceiling_span_cap_secs,
        } => {
            let ceiling_cap = (!no_ceiling).then(|| Duration::from_secs(ceiling_span_cap_secs));
            throughput(&kafka, &load, &db, &output, &metrics, ceiling_cap, shutdown).await
        }
        BenchCommand::Memory {
            kafka,
            depth,
            output,
            waiting,
            due_in,
            settle_secs,
            account,
        } => {
            let due_in =
                schedule::parse_duration(&due_in).map_err(|e| BenchError::DueIn(e.to_string()))?;
            let fill = Fill {
                waiting,
                due_in,
                account,
            };
            memory(
                &kafka,
                &depth,
                &output,
                &fill,
                Duration::from_secs(settle_secs),
                shutdown,
            )
            .await
        }
    }
}

fn memory_panel(processes: &[Usage]) -> Panel {
    Panel {
        title: "resident memory".into(),
        unit: "MB".into(),
        lines: processes
            .iter()
            .map(|p| Line {
                name: p.name.clone(),
                points: p.rss_series.clone(),
            })
            .collect(),
    }
}

fn write_results<T: serde::Serialize>(
    dir: &Path,
    stem: &str,
    report: &T,
    chart: &str,
    table: &str,
    tag: Option<&str>,
) -> Result<String, BenchError> {
    let write = |file: &str, bytes: &[u8]| {
        let path = dir.join(file);
        std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&path, bytes))
            .map_err(|source| BenchError::Write { path, source })
    };
    let json = serde_json::to_vec_pretty(report).expect("reports serialize");
    write(&format!("{stem}.json"), &json)?;
    write(&format!("{stem}.svg"), chart.as_bytes())?;
    write(&format!("{stem}.txt"), table.as_bytes())?;
    let mut kept = String::new();
    if let Some(tag) = tag {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = kept_name(stem, tag, now);
        write(&name, &json)?;
        kept = format!(" (kept as {}/{name})", dir.display());
    }
    Ok(format!(
        "{table}results      {0}/{stem}.txt, {0}/{stem}.json{kept}, {0}/{stem}.svg\n",
        dir.display()
    ))
}

/// `<stem>-<tag>-<unix time>.json`, the tag reduced to letters, digits, `.`, `_` and `-`.
fn kept_name(stem: &str, tag: &str, unix: u64) -> String {
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{stem}-{tag}-{unix}.json")
}

/// Under a table of processes when one of them was counted with its children.
const TREE_NOTE: &str = "             (a process with its children, as PostgreSQL's backends: summed PSS, so shared memory counts once)";

/// Sends every `(topic, key, payload)` as fast as the broker acknowledges, with at most
/// 10,000 unacknowledged; stops early on shutdown. Returns how many were acknowledged.
pub(crate) async fn produce_all<'t>(
    producer: &FutureProducer<Context>,
    records: impl Iterator<Item = (&'t str, String, Vec<u8>)>,
    shutdown: &Shutdown,
) -> Result<usize, KafkaError> {
    let mut sends = FuturesUnordered::new();
    let mut acked = 0;
    for (topic, key, payload) in records {
        if shutdown.is_set() {
            break;
        }
        if sends.len() >= 10_000 {
            if let Some(sent) = sends.next().await {
                let _: () = sent?;
                acked += 1;
            }
        }
        let producer = producer.clone();
        sends.push(async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&payload),
                    Timeout::After(Duration::from_secs(60)),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
    }
    while let Some(sent) = sends.next().await {
        sent?;
        acked += 1;
    }
    Ok(acked)
}

#[cfg(test)]
mod tests {
    use super::memory::waiting_check;
    use super::*;
    use crate::core::event::StatusCheck;
    use chrono::Utc;

    #[test]
    fn a_kept_copy_is_named_by_tag_and_time() {
        assert_eq!(
            kept_name("throughput", "879454d", 1_790_000_000),
            "throughput-879454d-1790000000.json"
        );
        assert_eq!(kept_name("memory", "a/b c", 5), "memory-a_b_c-5.json");
    }

    #[test]
    fn waiting_checks_are_due_after_the_fill() {
        let due = Utc::now() + chrono::Duration::hours(2);
        let check = waiting_check("a", 7, due);
        assert!(check.due_at >= due && check.deadline > check.due_at);
        let bytes = serde_json::to_vec(&check).unwrap();
        let back: StatusCheck = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.order_id, check.order_id);
    }
}
