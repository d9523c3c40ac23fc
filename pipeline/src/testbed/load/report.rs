//! What a load run measured ([`LoadReport`]), its percentiles and its rendering: the
//! summary `orderflow load` prints and the latency table the benchmark reuses.

use super::Snapshot;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What the run measured.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub published: usize,
    /// Answered orders per answer (`dispatched` counts only with `--until dispatched`).
    pub answered: BTreeMap<String, usize>,
    pub missing: usize,
    pub elapsed: Duration,
    /// Created-to-answer latencies of answered orders, sorted.
    pub latencies: Vec<Duration>,
    /// Created-to-dispatched latencies of accepted orders, sorted (those of
    /// `dispatch_by_intended`).
    pub dispatch_latencies: Vec<Duration>,
    /// Each accepted order's intended send time (seconds since the start) and its
    /// created-to-dispatched latency, in no order: where in the run the slow ones were.
    pub dispatch_by_intended: Vec<(f64, Duration)>,
    /// Created-to-final latencies of orders that reached completed or failed, sorted: to
    /// the final row in PostgreSQL in row mode, else to the final state event.
    pub final_latencies: Vec<Duration>,
    /// Created-to-final-state-event (read from `orders.state`) latencies, sorted.
    pub final_event_latencies: Vec<Duration>,
    /// From the intended time to the producer accepting the order, sorted: how far the
    /// generator (or the producer's queue) fell behind.
    pub handed_latencies: Vec<Duration>,
    /// When each answered order was answered, seconds since the start.
    pub answer_secs: Vec<f64>,
    /// Whether final meant the row in PostgreSQL.
    pub rows: bool,
    /// Order ids the row watcher looked up in PostgreSQL, all queries together.
    pub row_lookups: usize,
    /// From the start (the first order's intended time) to the last answer.
    pub last_answer: Duration,
    /// One snapshot per second.
    pub series: Vec<Snapshot>,
}

/// The `p`th percentile (0–100) of sorted durations, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)])
}

/// A duration for people: `850 ms`, `12.3 s`.
pub fn human(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_secs(10) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
    }
}

impl LoadReport {
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        percentile(&self.latencies, p)
    }

    pub fn answered_total(&self) -> usize {
        self.answered.values().sum()
    }

    /// Answered orders per second, from the first publish to the last answer.
    pub fn throughput(&self) -> f64 {
        self.answered_total() as f64 / self.last_answer.as_secs_f64().max(1e-9)
    }

    /// The summary table printed at the end of a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "published      {} orders (the run took {:.1} s)",
            self.published,
            self.elapsed.as_secs_f64(),
        );
        for (answer, n) in &self.answered {
            let _ = writeln!(out, "  {answer:<15}{n}");
        }
        let _ = writeln!(out, "  missing        {}", self.missing);
        let _ = writeln!(
            out,
            "throughput     {:.1} answered orders/s (first publish to last answer, {:.1} s)",
            self.throughput(),
            self.last_answer.as_secs_f64()
        );
        latency_table(
            &mut out,
            "latency        ",
            &[
                ("intended→producer", &self.handed_latencies),
                ("created→dispatched", &self.dispatch_latencies),
                ("created→final", &self.final_latencies),
                ("created→answer", &self.latencies),
            ],
        );
        out
    }
}

/// Rows of p50, p95, p99 and max under a header line that starts with `lead`; each row is
/// a name and its sorted latencies.
pub fn latency_table(out: &mut String, lead: &str, rows: &[(&str, &[Duration])]) {
    let _ = writeln!(
        out,
        "{lead}{:<22}{:>10}{:>10}{:>10}{:>10}",
        "", "p50", "p95", "p99", "max"
    );
    let indent = " ".repeat(lead.chars().count());
    for (what, sorted) in rows {
        let _ = writeln!(
            out,
            "{indent}{what:<22}{:>10}{:>10}{:>10}{:>10}",
            human(percentile(sorted, 50.0)),
            human(percentile(sorted, 95.0)),
            human(percentile(sorted, 99.0)),
            human(percentile(sorted, 100.0)),
        );
    }
}
