//! The Kafka requests a stage's clients send, by client (producer, consumer) and request
//! type (`Produce`, `Fetch`, ...), from librdkafka's statistics (every 5 s):
//! `orderflow_kafka_requests_total`.
//!
//! On a small cluster the broker's CPU follows its requests more than its records, and a
//! client's requests follow its rate, its partitions and its settings (librdkafka sends one
//! partition per produce request; a prompt fetch is answered per record or two). The
//! benchmark divides the events written by the produce requests to show how full they are.

use crate::metrics::{Metrics, RequestLabels};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counts one client's requests into a process's metrics. librdkafka reports running
/// totals per broker connection; the counter grows by what is new since the last report.
#[derive(Clone, Debug)]
pub struct RequestCounter {
    metrics: Arc<Metrics>,
    client: &'static str,
    /// The last total per (broker, request type).
    seen: Arc<Mutex<HashMap<(String, String), i64>>>,
}

impl RequestCounter {
    pub fn new(metrics: Arc<Metrics>, client: &'static str) -> Self {
        RequestCounter {
            metrics,
            client,
            seen: Arc::default(),
        }
    }

    /// Adds what `statistics` reports beyond the previous report.
    pub fn record(&self, statistics: &rdkafka::Statistics) {
        let totals = statistics.brokers.iter().flat_map(|(broker, b)| {
            b.req
                .iter()
                .map(move |(request, n)| (broker.as_str(), request.as_str(), *n))
        });
        let mut seen = self.seen.lock().expect("requests lock");
        for (request, added) in news(&mut seen, totals) {
            let labels = RequestLabels {
                client: self.client,
                request,
            };
            self.metrics
                .kafka_requests
                .get_or_create(&labels)
                .inc_by(added);
        }
    }
}

/// Per request type, what `totals` (broker, request type, running total) add to `seen`,
/// which they then replace. A total below the last one (a connection made again) counts
/// whole.
fn news<'a>(
    seen: &mut HashMap<(String, String), i64>,
    totals: impl Iterator<Item = (&'a str, &'a str, i64)>,
) -> HashMap<String, u64> {
    let mut added: HashMap<String, u64> = HashMap::new();
    for (broker, request, total) in totals {
        let last = seen
            .entry((broker.to_owned(), request.to_owned()))
            .or_insert(0);
        let new = if total >= *last { total - *last } else { total };
        *last = total;
        if new > 0 {
            *added.entry(request.to_owned()).or_default() += new as u64;
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_new_since_the_last_report_counts() {
        let mut seen = HashMap::new();
        let first = news(
            &mut seen,
            [
                ("b1", "Produce", 10),
                ("b2", "Produce", 5),
                ("b1", "Fetch", 0),
            ]
            .into_iter(),
        );
        assert_eq!(first.get("Produce"), Some(&15));
        assert_eq!(first.get("Fetch"), None, "nothing sent: no series");
        let second = news(
            &mut seen,
            [
                ("b1", "Produce", 12),
                ("b2", "Produce", 5),
                ("b1", "Fetch", 3),
            ]
            .into_iter(),
        );
        assert_eq!(second.get("Produce"), Some(&2));
        assert_eq!(second.get("Fetch"), Some(&3));
        // b1's connection was made again: its totals start over.
        let third = news(&mut seen, [("b1", "Produce", 4)].into_iter());
        assert_eq!(third.get("Produce"), Some(&4));
    }
}
