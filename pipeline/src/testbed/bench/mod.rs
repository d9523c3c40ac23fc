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

pub mod ceiling;
pub mod chart;
pub mod procs;
pub mod scrape;

use crate::core::event::{StatusCheck, SCHEMA_VERSION};
use crate::core::schedule;
use crate::core::seeded::Seeded;
use crate::db::{DbConfig, DbError};
use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use crate::testbed::load::{self, percentile, DepthArgs, LoadConfig, LoadError, Observer, Snapshot};
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

/// One process's share of the run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProcessCost {
    #[serde(flatten)]
    pub usage: Usage,
    /// CPU milliseconds per order final in PostgreSQL.
    pub cpu_ms_per_order: Option<f64>,
}

/// What `bench throughput` measured; written as JSON.
#[derive(Debug, serde::Serialize)]
pub struct ThroughputReport {
    pub label: String,
    pub tag: Option<String>,
    pub orders: usize,
    pub offered_rate: String,
    /// Where latencies start: each order's intended send time.
    pub latency_origin: String,
    /// What counts as final: the order's row in PostgreSQL.
    pub final_means: String,
    pub published: usize,
    pub completed: usize,
    pub failed: usize,
    pub dead_lettered: usize,
    pub missing: usize,
    /// Final orders per second from the first intended send to the last final row.
    pub sustained_orders_per_s: f64,
    /// Final orders per second between 10 % and 90 % of them (no ramp, no tail).
    pub steady_orders_per_s: Option<f64>,
    /// Seconds since the start at which 10 % and 90 % of the orders were final.
    pub steady_window_s: Option<(f64, f64)>,
    pub seconds_to_last_final: f64,
    /// Intended send time to the producer accepting the order (the generator's lag).
    pub intended_to_producer: Percentiles,
    pub created_to_dispatched: Percentiles,
    /// To the order's row final in PostgreSQL (its updated_at).
    pub created_to_final: Percentiles,
    /// To the final state event read from orders.state (before the sink), for comparison.
    pub created_to_final_event: Percentiles,
    /// Order ids the benchmark looked up in PostgreSQL to find final rows.
    pub row_lookups: usize,
    /// Share of both cores busy during the run, whole machine.
    pub machine_cpu_busy: Option<f64>,
    pub processes: Vec<ProcessCost>,
    /// All watched processes together, CPU milliseconds per final order.
    pub total_cpu_ms_per_order: Option<f64>,
    /// The stages' messages fetched versus handled per topic during the run.
    pub topics: Vec<scrape::TopicCounts>,
    pub ceiling: Option<ceiling::Ceiling>,
    pub series: Vec<Snapshot>,
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

async fn throughput(
    kafka: &KafkaConfig,
    config: &LoadConfig,
    db: &DbConfig,
    output: &Output,
    metrics: &[scrape::Endpoint],
    ceiling_cap: Option<Duration>,
    shutdown: Shutdown,
) -> Result<String, BenchError> {
    let pool = db.connect().await?;
    eprintln!(
        "bench: {} orders through the pipeline, offered {} /s, each followed to its final row in PostgreSQL ...",
        config.orders, config.rate
    );
    // The load generator is this process: it is watched too.
    let mut watched = output.processes.clone();
    watched.push(procs::Watched {
        name: "bench (load)".into(),
        pid: std::process::id(),
        with_children: false,
    });
    let before = scrape::scrape(metrics).await;
    let mut sampling = Sampling(Sampler::new(watched));
    let report = load::run(
        kafka,
        config,
        &mut sampling,
        Some(pool.clone()),
        shutdown.clone(),
    )
    .await?;
    sampling.0.sample();
    let after = scrape::scrape(metrics).await;
    pool.close().await;
    let topics = scrape::compare(&before, &after, &kafka.topic(""));

    let count = |k: &str| report.answered.get(k).copied().unwrap_or(0);
    let finished = count("completed") + count("failed");
    let steady_window = load::steady_window(&report.answer_secs);
    let ceiling = match ceiling_cap {
        None => None,
        Some(cap) => {
            // As long as the orders run's steady state (all of it if there was none), at
            // most the cap.
            let span = steady_window
                .map_or(report.last_answer.as_secs_f64(), |(a, b)| b - a)
                .min(cap.as_secs_f64());
            let mut mix = Seeded::new(1);
            let events: Vec<(String, Vec<u8>)> = (0..config.orders.max(1))
                .map(|i| {
                    let (id, bytes) = load::make_event(&mut mix, config, i);
                    (id.to_string(), bytes)
                })
                .collect();
            eprintln!(
                "bench: raw Kafka ceiling, {} distinct order events sent again until {span:.0} s have passed ...",
                events.len()
            );
            Some(ceiling::measure(kafka, &events, Duration::from_secs_f64(span), &shutdown).await?)
        }
    };
    let processes: Vec<ProcessCost> = sampling
        .0
        .usage()
        .iter()
        .map(|u| ProcessCost {
            usage: u.clone(),
            cpu_ms_per_order: procs::ms_per_order(u.cpu_secs, finished),
        })
        .collect();
    let total_cpu: f64 = processes.iter().map(|p| p.usage.cpu_secs).sum();
    let result = ThroughputReport {
        label: output.label.clone(),
        tag: output.tag.clone(),
        orders: config.orders,
        offered_rate: config.rate.to_string(),
        latency_origin: match config.rate {
            load::Rate::Max => {
                "the generator's first attempt to hand the order to the producer".into()
            }
            load::Rate::PerSecond(r) => format!("the intended send time start + i/{r} s"),
        },
        final_means: "the order's row in PostgreSQL final (its updated_at)".into(),
        published: report.published,
        completed: count("completed"),
        failed: count("failed"),
        dead_lettered: count("dead-lettered"),
        missing: report.missing,
        sustained_orders_per_s: report.throughput(),
        steady_orders_per_s: load::steady_rate(&report.answer_secs),
        steady_window_s: steady_window,
        seconds_to_last_final: report.last_answer.as_secs_f64(),
        intended_to_producer: Percentiles::of(&report.handed_latencies),
        created_to_dispatched: Percentiles::of(&report.dispatch_latencies),
        created_to_final: Percentiles::of(&report.final_latencies),
        created_to_final_event: Percentiles::of(&report.final_event_latencies),
        row_lookups: report.row_lookups,
        machine_cpu_busy: sampling.0.machine_busy(),
        processes,
        total_cpu_ms_per_order: procs::ms_per_order(total_cpu, finished),
        topics,
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
    write_results(
        &output.out,
        "throughput",
        &result,
        &chart,
        &table,
        output.tag.as_deref(),
    )
}

fn render_throughput(r: &ThroughputReport, report: &load::LoadReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "orderflow bench throughput: {} orders offered at {}/s{}{}",
        r.orders,
        r.offered_rate,
        if r.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.label)
        },
        r.tag
            .as_ref()
            .map_or(String::new(), |t| format!(" [measured: {t}]"))
    );
    let _ = writeln!(
        out,
        "orders       published {} | completed {} | failed {} | dead-lettered {} | missing {} (final = row final in PostgreSQL)",
        r.published, r.completed, r.failed, r.dead_lettered, r.missing
    );
    let _ = writeln!(
        out,
        "sustained    {:.1} orders/s, first intended send to last final row, over {:.1} s",
        r.sustained_orders_per_s, r.seconds_to_last_final,
    );
    let _ = writeln!(
        out,
        "steady       {}",
        match (r.steady_orders_per_s, r.steady_window_s) {
            (Some(s), Some((a, b))) => format!(
                "{s:.1} orders/s (10-90 % of orders final: {a:.1} s to {b:.1} s, {:.1} s)",
                b - a
            ),
            _ => "-".into(),
        }
    );
    let _ = writeln!(out, "latency from {}:", r.latency_origin);
    load::latency_table(
        &mut out,
        "             ",
        &[
            ("intended→producer", &report.handed_latencies),
            ("created→dispatched", &report.dispatch_latencies),
            ("created→final event", &report.final_event_latencies),
            ("created→final row", &report.final_latencies),
        ],
    );
    render_processes(
        &mut out,
        &r.processes,
        r.machine_cpu_busy,
        r.total_cpu_ms_per_order,
        r.completed + r.failed,
    );
    render_topics(&mut out, &r.topics);
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            out,
            "kafka alone  {} messages of {} B ({} distinct, sent again for at least {:.0} s): produced {:.0}/s over {:.1} s, consumed alongside {:.0}/s over {:.1} s",
            c.messages, c.message_bytes, c.distinct, c.min_span_s, c.produce_per_s, c.produce_s, c.consume_per_s, c.consume_s
        );
    }
    out
}

fn render_processes(
    out: &mut String,
    processes: &[ProcessCost],
    busy: Option<f64>,
    total_ms: Option<f64>,
    orders: usize,
) {
    if let Some(busy) = busy {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _ = writeln!(
            out,
            "machine      {:.0} % of {cores} cores busy (everything on the machine)",
            busy * 100.0
        );
    }
    if processes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "process      {:<16}{:>10}{:>14}{:>10}{:>12}",
        "", "CPU s", "CPU ms/order", "cores", "RSS peak"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for p in processes {
        let u = &p.usage;
        let _ = writeln!(
            out,
            "             {:<16}{:>10.1}{:>14}{:>10.2}{:>12}",
            u.name,
            u.cpu_secs,
            ms(p.cpu_ms_per_order),
            u.cpu_cores,
            format!("{:.1} MB", u.rss_peak_kb as f64 / 1024.0)
        );
    }
    let _ = writeln!(
        out,
        "             {:<16}{:>10.1}{:>14}   (over {orders} final orders)",
        "total",
        processes.iter().map(|p| p.usage.cpu_secs).sum::<f64>(),
        ms(total_ms)
    );
    if processes.iter().any(|p| p.usage.tree) {
        let _ = writeln!(out, "{TREE_NOTE}");
    }
}

fn render_topics(out: &mut String, topics: &[scrape::TopicCounts]) {
    if topics.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "messages     {:<30}{:>12}{:>12}{:>10}",
        "topic (stages' consumers)", "fetched", "handled", "ratio"
    );
    for t in topics {
        let _ = writeln!(
            out,
            "             {:<30}{:>12}{:>12}{:>10}",
            t.topic,
            t.fetched.map_or("n/a".to_owned(), |f| format!("{f:.0}")),
            format!("{:.0}", t.handled),
            t.amplification
                .map_or("n/a".to_owned(), |a| format!("{a:.2}"))
        );
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
    write_results(
        &output.out,
        "memory",
        &result,
        &chart,
        &table,
        output.tag.as_deref(),
    )
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
