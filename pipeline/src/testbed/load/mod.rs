//! `orderflow load`: publishes a realistic stream of orders and follows each to the point
//! where the pipeline has answered it, with a live progress line and a summary.
//!
//! It plays the shop: orders of a few tenants and denominations at a steady rate (or as
//! fast as the broker takes them), a share the provider will reject and a share of broken
//! events. An order counts as answered once `orders.state` has its final state (or its
//! dispatched state, with `--until dispatched`), or `orders.dlq` has its event; what is
//! never answered is reported as missing (G2) and makes the command fail.
//!
//! Every latency is measured from the order's **intended send time**, so that a generator
//! or a producer falling behind cannot hide queueing (coordinated omission): at a rate R
//! the i-th order is due at start + i/R ([`intended_offset`]) whenever it is actually
//! sent; at `max` it is due the moment the generator first tries to hand it to the
//! producer (an attempt refused because the producer's queue is full keeps that time).
//! Given a database pool ([`run`]'s `rows`), an order is final only once its row in
//! PostgreSQL's `orders` table is, at the row's `updated_at` (the sink's write); the
//! final state event read from `orders.state` is then reported alongside. Once a second a
//! [`Snapshot`] (counts so far, and the orders waiting per tier, read from the poll
//! group's lag) feeds the progress line and [`crate::testbed::bench`].
//!
//! Here: the settings, the mix of events and the schedule's arithmetic (pure). [`run`]
//! (`run.rs`) publishes and follows; `outcomes.rs` positions the outcome watcher,
//! `rows.rs` watches PostgreSQL in row mode, `report.rs` holds [`LoadReport`] and its
//! rendering, `progress.rs` the live line.

use crate::core::event::{OrderCreated, SCHEMA_VERSION};
use crate::core::seeded::Seeded;
use crate::kafka::KafkaSetupError;
use chrono::Utc;
use rdkafka::error::KafkaError;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

mod outcomes;
mod progress;
mod report;
mod rows;
mod run;

pub use crate::poll::DepthConfig;
pub use report::{human, latency_table, percentile, LoadReport};
pub use run::run;

/// `linger.ms` of the load's producer, which stands for a shop's (its outbox relay): 5 ms,
/// as in every figure of the README; the raw Kafka ceiling sends with the same. A stage's
/// own linger is its [`crate::kafka::Pace`].
pub const SHOP_LINGER_MS: &str = "5";

#[derive(Clone, Debug, clap::Args)]
pub struct LoadConfig {
    /// Orders to publish.
    #[arg(long, default_value_t = 500)]
    pub orders: usize,
    /// Orders published per second, or `max` for as fast as the broker acknowledges them.
    #[arg(long, default_value = "50")]
    pub rate: Rate,
    /// Provider account the orders name.
    #[arg(long, default_value = "znet-demo")]
    pub account: String,
    /// Share of orders for a denomination the provider does not sell (they end rejected).
    #[arg(long, default_value_t = 0.03)]
    pub reject_share: f64,
    /// Share of events that are broken on purpose (they end in orders.dlq).
    #[arg(long, default_value_t = 0.02)]
    pub invalid_share: f64,
    /// Give up waiting for answers after this many seconds past the last publish.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
    /// What counts as an answer: a final state (completed or failed), or already the
    /// dispatched state (when no poll stage runs).
    #[arg(long, value_enum, default_value_t = Until::Final)]
    pub until: Until,
    #[command(flatten)]
    pub depth: DepthConfig,
}

/// Offered load: a steady rate, or as fast as the broker acknowledges.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "{s:?} is not a rate: give orders per second (a positive number) or `max`"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::PerSecond(r) => write!(f, "{r}"),
            Rate::Max => f.write_str("max"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    Dispatched,
    Final,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("the load generator's Kafka client failed ({0})")]
    Kafka(#[from] KafkaError),
    #[error("--{0} must be between 0 and 1")]
    Share(&'static str),
    #[error("--check-tiers is invalid: {0}")]
    Tiers(String),
    #[error(transparent)]
    Depth(#[from] crate::poll::DepthError),
}

/// How one published event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    Completed,
    Failed,
    DeadLettered,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Completed => "completed",
            Answer::Failed => "failed",
            Answer::DeadLettered => "dead-lettered",
        }
    }
}

/// One order's path, every time measured from its intended send time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Journey {
    /// When it was meant to be sent (see [`intended_offset`]).
    pub(super) intended: Instant,
    /// From the intended time to the producer accepting it into its queue.
    pub(super) handed: Duration,
    /// Its dispatched state read from `orders.state`.
    pub(super) dispatched: Option<Duration>,
    /// Its final state read from `orders.state`, or its event read from `orders.dlq`.
    pub(super) answer: Option<(Answer, Duration)>,
    /// Its row final in PostgreSQL (row mode only): the row's `updated_at`.
    pub(super) row: Option<Duration>,
}

impl Journey {
    pub(super) fn answered(&self, until: Until, rows: bool) -> bool {
        if rows && until == Until::Final {
            return self.row.is_some() || matches!(self.answer, Some((Answer::DeadLettered, _)));
        }
        self.answer.is_some() || (until == Until::Dispatched && self.dispatched.is_some())
    }
}

/// When the `i`-th order (from 0) is meant to be sent, after the start: `i / rate` at a
/// fixed rate. `None` at `max`: there the intended time is the generator's first attempt
/// to hand the order to the producer.
pub fn intended_offset(rate: Rate, i: usize) -> Option<Duration> {
    match rate {
        Rate::PerSecond(r) => Some(Duration::from_secs_f64(i as f64 / r)),
        Rate::Max => None,
    }
}

/// A latency from the intended time, both given as offsets from the run's start (zero if
/// the end is somehow earlier, as a clock step could make it).
pub fn since_intended(intended: Duration, done: Duration) -> Duration {
    done.saturating_sub(intended)
}

/// Answers per second between the moments 10 % and 90 % of them arrived (no ramp, no
/// tail), from each answer's time since the start in seconds (any order).
pub fn steady_rate(answer_secs: &[f64]) -> Option<f64> {
    let window = steady_window(answer_secs)?;
    let n = answer_secs.len();
    let (a, b) = (n / 10, (n * 9) / 10);
    Some((b - a) as f64 / (window.1 - window.0))
}

/// The times (seconds since the start) at which 10 % and 90 % of the answers had arrived,
/// when they differ.
pub fn steady_window(answer_secs: &[f64]) -> Option<(f64, f64)> {
    let mut sorted = answer_secs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n < 10 {
        return None;
    }
    let (a, b) = (sorted[n / 10], sorted[((n * 9) / 10).min(n - 1)]);
    (b > a).then_some((a, b))
}

/// The run's counts at one moment, taken once a second.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Snapshot {
    /// Seconds since the first publish.
    pub at: f64,
    pub published: usize,
    /// Orders the provider accepted (dispatched, whatever came after).
    pub dispatched: usize,
    pub completed: usize,
    pub failed: usize,
    pub dead_lettered: usize,
    /// Final states read from `orders.state` (ahead of `completed` + `failed` by what the
    /// sink has yet to write, in row mode).
    pub final_events: usize,
    /// Orders waiting per tier (`first`, then each tier's delay), when the broker answered.
    pub waiting: Vec<(String, i64)>,
}

/// Told every snapshot as it is taken (the benchmark samples processes alongside).
pub trait Observer {
    fn observe(&mut self, snapshot: &Snapshot);
}

impl Observer for () {
    fn observe(&mut self, _: &Snapshot) {}
}

/// One event to publish: its key and bytes.
pub(crate) fn make_event(mix: &mut Seeded, config: &LoadConfig, i: usize) -> (Uuid, Vec<u8>) {
    let order_id = Uuid::new_v4();
    let roll = mix.fraction();
    if roll < config.invalid_share {
        let broken = match i % 3 {
            0 => b"{\"schema_version\":1,\"order_id\":".to_vec(),
            1 => format!(
                "{{\"schema_version\":1,\"order_id\":\"{order_id}\",\"tenant_id\":\"shop-1\"}}"
            )
            .into_bytes(),
            _ => format!("{{\"schema_version\":1,\"order_id\":\"not-a-uuid-{i}\"}}").into_bytes(),
        };
        return (order_id, broken);
    }
    let kupur = if roll < config.invalid_share + config.reject_share {
        "999"
    } else {
        ["25", "50", "100"][i % 3]
    };
    let order = OrderCreated {
        schema_version: SCHEMA_VERSION,
        order_id,
        tenant_id: format!("shop-{}", 1 + i % 3),
        provider_account: config.account.clone(),
        product: BTreeMap::from([
            ("oyun".into(), "412".into()),
            ("kupur".into(), kupur.into()),
        ]),
        user_identifier: format!("555{:07}", i),
        user_extra: format!("oyuncu#{i}"),
        created_at: Utc::now(),
        deadline: None,
    };
    (order_id, order.encode())
}

#[cfg(test)]
mod tests;
