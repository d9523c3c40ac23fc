//! `bench throughput`: a load of orders followed to their final rows, the raw Kafka
//! ceiling over a comparable span, CPU and memory of every watched process and the stages'
//! fetched-versus-handled messages; the report, its table and its chart.

use super::chart::{Line, Panel};
use super::procs::{Sampler, Usage};
use super::{
    ceiling, chart, memory_panel, procs, scrape, write_results, BenchError, Output, Percentiles,
    TREE_NOTE,
};
use crate::core::seeded::Seeded;
use crate::db::DbConfig;
use crate::kafka::KafkaConfig;
use crate::shutdown::Shutdown;
use crate::testbed::load::{self, LoadConfig, Observer, Snapshot};
use std::fmt::Write as _;
use std::time::Duration;

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
    /// Created-to-dispatched of the orders intended within the steady window: the run
    /// without its first seconds (the clients' first connections and requests, the
    /// stages' first statements) and its tail.
    pub created_to_dispatched_steady: Percentiles,
    /// Created-to-dispatched of the orders intended in each second of the run: whether
    /// the slow ones queue all along or come in stalls.
    pub created_to_dispatched_by_second: Vec<SecondPercentiles>,
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
    /// The Kafka requests the stages' clients sent during the run (`None`: not exported).
    pub requests: Option<scrape::Requests>,
    /// Per topic, its messages' transit to a stage and handling there during the run
    /// (empty: not exported).
    pub timings: Vec<scrape::Timing>,
    pub ceiling: Option<ceiling::Ceiling>,
    pub series: Vec<Snapshot>,
}

/// Latency percentiles of the orders intended within one second of the run.
#[derive(Debug, serde::Serialize)]
pub struct SecondPercentiles {
    /// Seconds since the start: the orders intended in [second, second + 1).
    pub second: u64,
    pub orders: usize,
    #[serde(flatten)]
    pub latency: Percentiles,
}

impl SecondPercentiles {
    fn of(by_intended: &[(f64, Duration)]) -> Vec<SecondPercentiles> {
        let mut seconds: std::collections::BTreeMap<u64, Vec<Duration>> = Default::default();
        for (at, d) in by_intended {
            seconds.entry(at.max(0.0) as u64).or_default().push(*d);
        }
        seconds
            .into_iter()
            .map(|(second, mut latencies)| {
                latencies.sort();
                SecondPercentiles {
                    second,
                    orders: latencies.len(),
                    latency: Percentiles::of(&latencies),
                }
            })
            .collect()
    }
}

struct Sampling(Sampler);

impl Observer for Sampling {
    fn observe(&mut self, _: &Snapshot) {
        self.0.sample();
    }
}

pub(super) async fn throughput(
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
    let scraped = std::time::Instant::now();
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
    let between = scraped.elapsed().as_secs_f64();
    pool.close().await;
    let topics = scrape::compare(&before, &after, &kafka.topic(""));
    let timings = scrape::timings(&before, &after, &kafka.topic(""));

    let ceiling = match ceiling_cap {
        None => None,
        Some(cap) => Some(measure_ceiling(kafka, config, &report, cap, &shutdown).await?),
    };
    let scrapes = Scrapes {
        before,
        after,
        seconds: between,
        topics,
        timings,
    };
    let result = assemble(config, output, &report, &sampling.0, scrapes, ceiling);
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

/// The stages' metrics read before and after the orders run, `seconds` apart, and the
/// topics' fetched-versus-handled between them.
struct Scrapes {
    before: scrape::Scrape,
    after: scrape::Scrape,
    seconds: f64,
    topics: Vec<scrape::TopicCounts>,
    timings: Vec<scrape::Timing>,
}

/// The raw Kafka ceiling, sustained as long as the orders run's steady state (all of it if
/// there was none), at most `cap`.
async fn measure_ceiling(
    kafka: &KafkaConfig,
    config: &LoadConfig,
    report: &load::LoadReport,
    cap: Duration,
    shutdown: &Shutdown,
) -> Result<ceiling::Ceiling, BenchError> {
    let span = load::steady_window(&report.answer_secs)
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
    Ok(ceiling::measure(kafka, &events, Duration::from_secs_f64(span), shutdown).await?)
}

/// Created-to-dispatched of the orders intended between the moments 10 % and 90 % of the
/// orders were final (the steady window), sorted; all of them when there is no window.
fn steady_dispatch(report: &load::LoadReport) -> Vec<Duration> {
    let window = load::steady_window(&report.answer_secs);
    let mut steady: Vec<Duration> = report
        .dispatch_by_intended
        .iter()
        .filter(|(at, _)| window.is_none_or(|(a, b)| (a..=b).contains(at)))
        .map(|&(_, d)| d)
        .collect();
    steady.sort();
    steady
}

/// The run's figures: counts, rates, percentiles and every process's cost per final order.
fn assemble(
    config: &LoadConfig,
    output: &Output,
    report: &load::LoadReport,
    sampler: &Sampler,
    scrapes: Scrapes,
    ceiling: Option<ceiling::Ceiling>,
) -> ThroughputReport {
    let count = |k: &str| report.answered.get(k).copied().unwrap_or(0);
    let finished = count("completed") + count("failed");
    let requests = scrape::requests(&scrapes.before, &scrapes.after, scrapes.seconds, finished);
    let processes: Vec<ProcessCost> = sampler
        .usage()
        .iter()
        .map(|u| ProcessCost {
            usage: u.clone(),
            cpu_ms_per_order: procs::ms_per_order(u.cpu_secs, finished),
        })
        .collect();
    let total_cpu: f64 = processes.iter().map(|p| p.usage.cpu_secs).sum();
    ThroughputReport {
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
        steady_window_s: load::steady_window(&report.answer_secs),
        seconds_to_last_final: report.last_answer.as_secs_f64(),
        intended_to_producer: Percentiles::of(&report.handed_latencies),
        created_to_dispatched: Percentiles::of(&report.dispatch_latencies),
        created_to_dispatched_steady: Percentiles::of(&steady_dispatch(report)),
        created_to_dispatched_by_second: SecondPercentiles::of(&report.dispatch_by_intended),
        created_to_final: Percentiles::of(&report.final_latencies),
        created_to_final_event: Percentiles::of(&report.final_event_latencies),
        row_lookups: report.row_lookups,
        machine_cpu_busy: sampler.machine_busy(),
        processes,
        total_cpu_ms_per_order: procs::ms_per_order(total_cpu, finished),
        topics: scrapes.topics,
        requests,
        timings: scrapes.timings,
        ceiling,
        series: report.series.clone(),
    }
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
        "orders       published {} | completed {} | failed {} | dead-lettered {} | missing {} (final = row final in PostgreSQL; {:.1} row lookups per order)",
        r.published,
        r.completed,
        r.failed,
        r.dead_lettered,
        r.missing,
        r.row_lookups as f64 / r.orders.max(1) as f64,
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
            ("  in the steady window", &steady_dispatch(report)),
            ("created→final event", &report.final_event_latencies),
            ("created→final row", &report.final_latencies),
        ],
    );
    render_seconds(&mut out, &r.created_to_dispatched_by_second);
    render_processes(
        &mut out,
        &r.processes,
        r.machine_cpu_busy,
        r.total_cpu_ms_per_order,
        r.completed + r.failed,
    );
    render_topics(&mut out, &r.topics);
    render_requests(&mut out, r.requests.as_ref());
    render_timings(&mut out, &r.timings);
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            out,
            "kafka alone  {} messages of {} B ({} distinct, sent again for at least {:.0} s): produced {:.0}/s over {:.1} s, consumed alongside {:.0}/s over {:.1} s",
            c.messages, c.message_bytes, c.distinct, c.min_span_s, c.produce_per_s, c.produce_s, c.consume_per_s, c.consume_s
        );
    }
    out
}

/// One line: the spread of each second's created→dispatched p99, so a reader sees whether
/// a high p99 is steady queueing or a few stalled seconds.
fn render_seconds(out: &mut String, seconds: &[SecondPercentiles]) {
    let mut p99: Vec<(u128, u64)> = seconds
        .iter()
        .filter_map(|s| s.latency.p99_ms.map(|p| (p, s.second)))
        .collect();
    if p99.len() < 3 {
        return;
    }
    p99.sort();
    let (median, (worst, at)) = (p99[p99.len() / 2].0, p99[p99.len() - 1]);
    let _ = writeln!(
        out,
        "             created→dispatched p99 of each second's orders: lowest {} ms, median {median} ms, highest {worst} ms (second {at}); per second in the JSON",
        p99[0].0
    );
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

fn render_timings(out: &mut String, timings: &[scrape::Timing]) {
    if timings.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "time in      {:<30}{:>16}{:>17}   (ms: transit from the producer to the stage's fetch; handling from due to durable)",
        "topic (stages' consumers)", "transit p50/99", "handling p50/99"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    for t in timings {
        let _ = writeln!(
            out,
            "             {:<30}{:>16}{:>17}",
            t.topic,
            format!("{}/{}", ms(t.transit_p50_ms), ms(t.transit_p99_ms)),
            format!("{}/{}", ms(t.handling_p50_ms), ms(t.handling_p99_ms)),
        );
    }
}

fn render_requests(out: &mut String, requests: Option<&scrape::Requests>) {
    let Some(r) = requests.filter(|r| !r.by_type.is_empty()) else {
        return;
    };
    let _ = writeln!(
        out,
        "requests     {:<30}{:>12}{:>12}{:>10}",
        "type (stages' Kafka clients)", "sent", "per s", "per order"
    );
    // The protocol's bookkeeping (heartbeats, commits, metadata) in one line.
    let (shown, rest): (Vec<_>, Vec<_>) = r.by_type.iter().partition(|t| t.per_order >= 0.01);
    for t in shown {
        let carried = match (t.request.as_str(), r.events_per_produce) {
            ("Produce", Some(e)) => format!("   ({e:.1} events each)"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "             {:<30}{:>12.0}{:>12.0}{:>10.2}{carried}",
            t.request, t.count, t.per_s, t.per_order
        );
    }
    if !rest.is_empty() {
        let _ = writeln!(
            out,
            "             {:<30}{:>12.0}{:>12.0}{:>10}",
            format!("{} other types", rest.len()),
            rest.iter().map(|t| t.count).sum::<f64>(),
            rest.iter().map(|t| t.per_s).sum::<f64>(),
            "<0.01"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_latencies_leave_out_the_orders_intended_before_and_after_the_window() {
        // Twenty answers one second apart: 10 % at 2 s, 90 % at 18 s.
        let answer_secs: Vec<f64> = (0..20).map(f64::from).collect();
        let ms = Duration::from_millis;
        let report = load::LoadReport {
            answer_secs,
            dispatch_by_intended: vec![
                (0.5, ms(900)), // the start: left out
                (2.0, ms(30)),
                (10.0, ms(10)),
                (18.0, ms(20)),
                (19.5, ms(700)), // the tail: left out
            ],
            ..load::LoadReport::default()
        };
        assert_eq!(steady_dispatch(&report), [ms(10), ms(20), ms(30)]);
        // Too few answers for a window: every order counts.
        let few = load::LoadReport {
            dispatch_by_intended: report.dispatch_by_intended.clone(),
            ..load::LoadReport::default()
        };
        assert_eq!(steady_dispatch(&few).len(), 5);
    }
}
