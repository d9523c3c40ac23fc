//! `orderflow bench`: measures the running pipeline. It starts nothing itself: the
//! stages, simulator, broker and database are started by `ops/bench.sh`, which names
//! their processes (`--process name=pid`) for CPU and memory to be read from `/proc`.
//!
//! - `bench throughput`: the raw Kafka ceiling ([`ceiling`]) first, then a load of orders
//!   (at a rate or `max`) followed to their final states ([`crate::load`]). Reports
//!   sustained orders/s, created-to-dispatched and created-to-final percentiles, CPU and
//!   peak RSS per process, as a table, as JSON and as an SVG chart of throughput and
//!   retry depth over time.
//! - `bench memory`: fills the tier topics with status checks due much later and shows
//!   the stages' resident memory before, during and after: the waiting lives in Kafka.

pub mod ceiling;
pub mod chart;
pub mod procs;

use crate::core::event::{StatusCheck, SCHEMA_VERSION};
use crate::core::schedule;
use crate::core::seeded::Seeded;
use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::load::{self, percentile, DepthArgs, LoadConfig, LoadError, Observer, Snapshot};
use crate::shutdown::Shutdown;
use chart::{Line, Panel};
use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use procs::{Sampler, Usage, Watched};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Clone, Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Orders through the whole pipeline at a rate or as fast as possible, against the raw
    /// Kafka ceiling.
    Throughput {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        load: LoadConfig,
        #[command(flatten)]
        output: Output,
        /// Skip the raw Kafka produce-and-consume measurement.
        #[arg(long)]
        no_ceiling: bool,
    },
    /// Resident memory of the stages while the tier topics fill with waiting checks.
    Memory {
        #[command(flatten)]
        kafka: KafkaConfig,
        #[command(flatten)]
        depth: DepthArgs,
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

/// What `bench throughput` measured; written as JSON.
#[derive(Debug, serde::Serialize)]
pub struct ThroughputReport {
    pub label: String,
    pub orders: usize,
    pub offered_rate: String,
    pub published: usize,
    pub completed: usize,
    pub failed: usize,
    pub dead_lettered: usize,
    pub missing: usize,
    /// Answered orders per second from the first publish to the last answer.
    pub sustained_orders_per_s: f64,
    /// Answered orders per second between 10 % and 90 % of the answers (no ramp, no tail).
    pub steady_orders_per_s: Option<f64>,
    pub seconds_to_last_answer: f64,
    pub created_to_dispatched: Percentiles,
    pub created_to_final: Percentiles,
    /// Share of both cores busy during the run, whole machine.
    pub machine_cpu_busy: Option<f64>,
    pub processes: Vec<Usage>,
    pub ceiling: Option<ceiling::Ceiling>,
    pub series: Vec<Snapshot>,
}

/// Answers per second between the snapshots where 10 % and 90 % of `total` were answered.
pub fn steady_rate(series: &[Snapshot], total: usize) -> Option<f64> {
    let answered = |s: &Snapshot| s.completed + s.failed + s.dead_lettered;
    let at = |share: f64| {
        series
            .iter()
            .find(|s| answered(s) as f64 >= share * total as f64)
    };
    let (a, b) = (at(0.1)?, at(0.9)?);
    (b.at > a.at).then(|| (answered(b) - answered(a)) as f64 / (b.at - a.at))
}

struct Sampling(Sampler);

impl Observer for Sampling {
    fn observe(&mut self, _: &Snapshot) {
        self.0.sample();
    }
}

pub async fn run(command: BenchCommand, shutdown: Shutdown) -> Result<String, BenchError> {
    match command {
        BenchCommand::Throughput {
            kafka,
            load,
            output,
            no_ceiling,
        } => throughput(&kafka, &load, &output, no_ceiling, shutdown).await,
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

async fn throughput(
    kafka: &KafkaConfig,
    config: &LoadConfig,
    output: &Output,
    no_ceiling: bool,
    shutdown: Shutdown,
) -> Result<String, BenchError> {
    let ceiling = if no_ceiling {
        None
    } else {
        let (_, example) = load::make_event(&mut Seeded::new(1), config, 0);
        eprintln!(
            "bench: raw Kafka ceiling, {} messages of {} bytes ...",
            config.orders,
            example.len()
        );
        Some(ceiling::measure(kafka, config.orders, &example, &shutdown).await?)
    };
    eprintln!(
        "bench: {} orders through the pipeline, offered {} /s ...",
        config.orders, config.rate
    );
    let mut sampling = Sampling(Sampler::new(output.processes.clone()));
    let report = load::run(kafka, config, &mut sampling, shutdown).await?;
    sampling.0.sample();
    let count = |k: &str| report.answered.get(k).copied().unwrap_or(0);
    let result = ThroughputReport {
        label: output.label.clone(),
        orders: config.orders,
        offered_rate: config.rate.to_string(),
        published: report.published,
        completed: count("completed"),
        failed: count("failed"),
        dead_lettered: count("dead-lettered"),
        missing: report.missing,
        sustained_orders_per_s: report.throughput(),
        steady_orders_per_s: steady_rate(&report.series, report.answered_total()),
        seconds_to_last_answer: report.last_answer.as_secs_f64(),
        created_to_dispatched: Percentiles::of(&report.dispatch_latencies),
        created_to_final: Percentiles::of(&report.final_latencies),
        machine_cpu_busy: sampling.0.machine_busy(),
        processes: sampling.0.usage().to_vec(),
        ceiling,
        series: report.series.clone(),
    };
    let table = render_throughput(&result, &report);
    let chart = chart::svg(
        &format!(
            "orderflow bench throughput: {} orders, {}",
            result.orders, result.label
        ),
        &[
            throughput_panel(&result.series, config.rate != load::Rate::Max),
            depth_panel(&result.series),
            memory_panel(sampling.0.usage()),
        ],
    );
    write_results(&output.out, "throughput", &result, &chart, &table)
}

fn render_throughput(r: &ThroughputReport, report: &load::LoadReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "orderflow bench throughput: {} orders offered at {}/s{}",
        r.orders,
        r.offered_rate,
        if r.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.label)
        }
    );
    let _ = writeln!(
        out,
        "orders       published {} | completed {} | failed {} | dead-lettered {} | missing {}",
        r.published, r.completed, r.failed, r.dead_lettered, r.missing
    );
    let _ = writeln!(
        out,
        "sustained    {:.1} orders/s to an answer over {:.1} s; steady (10-90 %) {}",
        r.sustained_orders_per_s,
        r.seconds_to_last_answer,
        r.steady_orders_per_s
            .map_or("-".into(), |s| format!("{s:.1} orders/s"))
    );
    load::latency_table(
        &mut out,
        "latency      ",
        &[
            ("created→dispatched", &report.dispatch_latencies),
            ("created→final", &report.final_latencies),
        ],
    );
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            out,
            "kafka alone  {} messages of {} B: produced {:.0}/s, produced and consumed {:.0}/s",
            c.messages, c.message_bytes, c.produce_per_s, c.produce_and_consume_per_s
        );
    }
    render_processes(&mut out, &r.processes, r.machine_cpu_busy);
    out
}

fn render_processes(out: &mut String, processes: &[Usage], busy: Option<f64>) {
    if let Some(busy) = busy {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _ = writeln!(
            out,
            "machine      {:.0} % of {cores} cores busy",
            busy * 100.0
        );
    }
    if processes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "process      {:<16}{:>10}{:>12}{:>12}{:>12}",
        "", "CPU cores", "RSS first", "RSS peak", "RSS last"
    );
    for p in processes {
        let mb = |kb: u64| format!("{:.1} MB", kb as f64 / 1024.0);
        let _ = writeln!(
            out,
            "             {:<16}{:>10.2}{:>12}{:>12}{:>12}",
            p.name,
            p.cpu_cores,
            mb(p.rss_first_kb),
            mb(p.rss_peak_kb),
            mb(p.rss_last_kb)
        );
    }
    if processes.iter().any(|p| p.tree) {
        let _ = writeln!(out, "{TREE_NOTE}");
    }
}

/// Orders per second created, dispatched and final; `created` only for an offered rate (at
/// `max` it is one spike that would flatten the others).
fn throughput_panel(series: &[Snapshot], with_created: bool) -> Panel {
    let rate = |f: fn(&Snapshot) -> usize| {
        series
            .windows(2)
            .map(|w| {
                (
                    w[1].at,
                    (f(&w[1]).saturating_sub(f(&w[0]))) as f64 / (w[1].at - w[0].at).max(1e-9),
                )
            })
            .collect()
    };
    Panel {
        title: "throughput".into(),
        unit: "orders/s".into(),
        lines: with_created
            .then(|| Line {
                name: "created".into(),
                points: rate(|s| s.published),
            })
            .into_iter()
            .chain([
                Line {
                    name: "dispatched".into(),
                    points: rate(|s| s.dispatched),
                },
                Line {
                    name: "final".into(),
                    points: rate(|s| s.completed + s.failed),
                },
            ])
            .collect(),
    }
}

fn depth_panel(series: &[Snapshot]) -> Panel {
    let labels: Vec<String> = series
        .iter()
        .find(|s| !s.waiting.is_empty())
        .map(|s| s.waiting.iter().map(|(l, _)| l.clone()).collect())
        .unwrap_or_default();
    Panel {
        title: "retry depth: orders waiting per tier".into(),
        unit: "orders".into(),
        lines: labels
            .iter()
            .map(|label| Line {
                name: label.clone(),
                points: series
                    .iter()
                    .filter_map(|s| {
                        s.waiting
                            .iter()
                            .find(|(l, _)| l == label)
                            .map(|(_, n)| (s.at, *n as f64))
                    })
                    .collect(),
            })
            .collect(),
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
    Ok(format!(
        "{table}results      {0}/{stem}.txt, {0}/{stem}.json, {0}/{stem}.svg\n",
        dir.display()
    ))
}

/// Under a table of processes when one of them was counted with its children.
const TREE_NOTE: &str = "             (a process with its children, as PostgreSQL's backends: summed PSS, so shared memory counts once)";

struct Fill {
    waiting: usize,
    due_in: Duration,
    account: String,
}

/// What `bench memory` measured; written as JSON.
#[derive(Debug, serde::Serialize)]
pub struct MemoryReport {
    pub label: String,
    pub waiting_published: usize,
    pub fill_seconds: f64,
    /// The poll group's lag per tier at the end: where the waiting checks are.
    pub waiting_at_end: Vec<(String, i64)>,
    pub processes: Vec<Usage>,
    /// RSS (kB) per process just before the fill started.
    pub rss_before_fill_kb: Vec<(String, u64)>,
}

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

/// Once a second, the watched processes and the total waiting in the tiers.
struct Readings {
    sampler: Sampler,
    waiting: Vec<(f64, f64)>,
}

async fn memory(
    kafka: &KafkaConfig,
    depth: &DepthArgs,
    output: &Output,
    fill: &Fill,
    settle: Duration,
    mut shutdown: Shutdown,
) -> Result<String, BenchError> {
    kafka.check_reachable()?;
    let lag = depth.lag(kafka)?;
    let tiers =
        schedule::parse_tiers(&depth.check_tiers).map_err(|e| LoadError::Tiers(e.to_string()))?;
    let topics: Vec<String> = tiers
        .iter()
        .map(|d| kafka.topic(&name::status_check(&schedule::label(*d))))
        .collect();
    let readings = Arc::new(Mutex::new(Readings {
        sampler: Sampler::new(output.processes.clone()),
        waiting: Vec::new(),
    }));
    let reader = {
        let (readings, lag) = (Arc::clone(&readings), lag.clone());
        let started = Instant::now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let waiting = lag.sample_async().await;
                let mut r = readings.lock().expect("readings lock");
                r.sampler.sample();
                if let Some(w) = waiting {
                    let total = w.iter().map(|(_, n)| *n as f64).sum();
                    r.waiting.push((started.elapsed().as_secs_f64(), total));
                }
            }
        })
    };

    eprintln!(
        "bench: {} s of readings before the fill ...",
        settle.as_secs()
    );
    let _ = shutdown.sleep(settle).await;
    let before: Vec<(String, u64)> = readings
        .lock()
        .expect("readings lock")
        .sampler
        .usage()
        .iter()
        .map(|u| (u.name.clone(), u.rss_last_kb))
        .collect();

    eprintln!(
        "bench: publishing {} status checks due in {:?} to {} tier topics ...",
        fill.waiting,
        fill.due_in,
        topics.len()
    );
    let producer = kafka.producer()?;
    let fill_start = Instant::now();
    let due =
        Utc::now() + chrono::Duration::from_std(fill.due_in).unwrap_or(chrono::Duration::hours(2));
    let checks = (0..fill.waiting).map(|i| {
        let check = waiting_check(&fill.account, i, due);
        let payload = serde_json::to_vec(&check).expect("checks serialize");
        (
            topics[i % topics.len()].as_str(),
            check.order_id.to_string(),
            payload,
        )
    });
    let published = produce_all(&producer, checks, &shutdown).await?;
    let fill_seconds = fill_start.elapsed().as_secs_f64();

    eprintln!(
        "bench: {published} published in {fill_seconds:.1} s; {} s of readings after ...",
        settle.as_secs()
    );
    let _ = shutdown.sleep(settle).await;
    reader.abort();
    let _ = reader.await; // the task's share of the readings is dropped
    let Readings {
        sampler,
        waiting: waiting_series,
    } = Arc::into_inner(readings)
        .expect("the reading task has ended")
        .into_inner()
        .expect("readings lock");
    let waiting_at_end = lag.sample_async().await.unwrap_or_default();
    let result = MemoryReport {
        label: output.label.clone(),
        waiting_published: published,
        fill_seconds,
        waiting_at_end,
        processes: sampler.usage().to_vec(),
        rss_before_fill_kb: before,
    };

    let mut table = String::new();
    let _ = writeln!(
        table,
        "orderflow bench memory: {} status checks left waiting in the tiers (published in {:.1} s)",
        result.waiting_published, result.fill_seconds
    );
    let _ = write!(table, "waiting      poll group's lag:");
    for (tier, n) in &result.waiting_at_end {
        let _ = write!(table, " {tier}:{n}");
    }
    let _ = writeln!(
        table,
        " (total {})",
        result.waiting_at_end.iter().map(|(_, n)| n).sum::<i64>()
    );
    let _ = writeln!(
        table,
        "memory       {:<16}{:>14}{:>14}{:>14}",
        "", "before fill", "peak", "at end"
    );
    for p in &result.processes {
        let before = result
            .rss_before_fill_kb
            .iter()
            .find(|(n, _)| *n == p.name)
            .map_or(0, |(_, kb)| *kb);
        let mb = |kb: u64| format!("{:.1} MB", kb as f64 / 1024.0);
        let _ = writeln!(
            table,
            "             {:<16}{:>14}{:>14}{:>14}",
            p.name,
            mb(before),
            mb(p.rss_peak_kb),
            mb(p.rss_last_kb)
        );
    }
    if result.processes.iter().any(|p| p.tree) {
        let _ = writeln!(table, "{TREE_NOTE}");
    }
    let chart = chart::svg(
        &format!(
            "orderflow bench memory: {} checks waiting",
            result.waiting_published
        ),
        &[
            memory_panel(sampler.usage()),
            Panel {
                title: "waiting in the tier topics".into(),
                unit: "checks".into(),
                lines: vec![Line {
                    name: "all tiers".into(),
                    points: waiting_series,
                }],
            },
        ],
    );
    write_results(&output.out, "memory", &result, &chart, &table)
}

/// A status check of a made-up order, due at `due` (spread over a minute so partitions
/// do not all wake at once).
fn waiting_check(account: &str, i: usize, due: chrono::DateTime<Utc>) -> StatusCheck {
    let now = Utc::now();
    StatusCheck {
        schema_version: SCHEMA_VERSION,
        order_id: Uuid::new_v4(),
        tenant_id: format!("shop-{}", 1 + i % 3),
        provider_account: account.to_owned(),
        provider_reference: format!("{}", 900_000_000 + i),
        dispatched_at: now,
        deadline: due + chrono::Duration::hours(24),
        seq: 2,
        attempts: 1,
        due_at: due + chrono::Duration::milliseconds((i % 60_000) as i64),
        version: 3,
        created_at: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: f64, answered: usize) -> Snapshot {
        Snapshot {
            at,
            completed: answered,
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_steady_rate_leaves_out_ramp_and_tail() {
        // 10 % at 2 s, 90 % at 10 s: 80 answers in 8 s.
        let series = [
            snap(1.0, 5),
            snap(2.0, 10),
            snap(6.0, 50),
            snap(10.0, 90),
            snap(30.0, 100),
        ];
        assert_eq!(steady_rate(&series, 100), Some(10.0));
        assert_eq!(steady_rate(&series[..2], 100), None);
        assert_eq!(steady_rate(&[], 0), None);
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
