//! `bench memory`: fills the tier topics with status checks due much later and reads the
//! stages' resident memory before, during and after (the waiting lives in Kafka); the
//! report, its table and its chart.

use super::chart::{Line, Panel};
use super::procs::{Sampler, Usage};
use super::{chart, memory_panel, produce_all, write_results, BenchError, Output, TREE_NOTE};
use crate::core::event::{StatusCheck, SCHEMA_VERSION};
use crate::core::schedule;
use crate::kafka::lag::GroupLag;
use crate::kafka::topics::name;
use crate::kafka::KafkaConfig;
use crate::shutdown::Shutdown;
use crate::testbed::load::{DepthConfig, LoadError};
use chrono::Utc;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub(super) struct Fill {
    pub(super) waiting: usize,
    pub(super) due_in: Duration,
    pub(super) account: String,
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

/// Once a second, the watched processes and the total waiting in the tiers.
struct Readings {
    sampler: Sampler,
    waiting: Vec<(f64, f64)>,
}

pub(super) async fn memory(
    kafka: &KafkaConfig,
    depth: &DepthConfig,
    output: &Output,
    fill: &Fill,
    settle: Duration,
    mut shutdown: Shutdown,
) -> Result<String, BenchError> {
    kafka.check_reachable()?;
    let lag = depth.lag(kafka).map_err(LoadError::from)?;
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
    let reader = read_every_second(Arc::clone(&readings), lag.clone());

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

    let (published, fill_seconds) = publish_fill(kafka, &topics, fill, &shutdown).await?;
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
    let table = render_memory(&result);
    let chart = memory_chart(&result, &sampler, waiting_series);
    write_results(
        &output.out,
        "memory",
        &result,
        &chart,
        &table,
        output.tag.as_deref(),
    )
}

/// Once a second until aborted: the watched processes, and the total waiting in the tiers.
fn read_every_second(readings: Arc<Mutex<Readings>>, lag: GroupLag) -> tokio::task::JoinHandle<()> {
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
}

/// Publishes the fill, spread over the tier topics; returns how many were acknowledged and
/// how long it took in seconds.
async fn publish_fill(
    kafka: &KafkaConfig,
    topics: &[String],
    fill: &Fill,
    shutdown: &Shutdown,
) -> Result<(usize, f64), BenchError> {
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
    let published = produce_all(&producer, checks, shutdown).await?;
    Ok((published, fill_start.elapsed().as_secs_f64()))
}

/// The table `bench memory` prints: what waits where, and each process's memory.
fn render_memory(result: &MemoryReport) -> String {
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
    table
}

/// Memory per process and the checks waiting, over time.
fn memory_chart(result: &MemoryReport, sampler: &Sampler, waiting: Vec<(f64, f64)>) -> String {
    chart::svg(
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
                    points: waiting,
                }],
            },
        ],
    )
}

/// A status check of a made-up order, due at `due` (spread over a minute so partitions
/// do not all wake at once).
pub(super) fn waiting_check(account: &str, i: usize, due: chrono::DateTime<Utc>) -> StatusCheck {
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
