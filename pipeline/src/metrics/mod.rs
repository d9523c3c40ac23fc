//! Prometheus metrics (G7) and the small HTTP server every long-running command exposes:
//! `/metrics`, `/healthz` (the process runs) and `/readyz` (its stage is consuming).
//!
//! Metric names start with `orderflow_`; labels never carry an order id, a PIN or a
//! credential (G5), only bounded values such as a topic or an outcome word. One
//! [`Metrics`] per process, shared by its stages through an `Arc`.
//!
//! [`Metrics`] holds every metric, each field named as the metric it exports (without the
//! `orderflow_` prefix); each family registers its own (`stage`, `poll`, `provider`,
//! `sink`), and [`serve`] exposes them over HTTP.

mod poll;
mod provider;
mod serve;
mod sink;
mod stage;

pub use serve::{serve, MetricsConfig, MetricsError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

/// A Kafka client of the process and a request type of the protocol (`Produce`, `Fetch`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub client: &'static str,
    pub request: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub stage: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub account: String,
    /// `place`, `check` or `balance`.
    pub call: &'static str,
    /// `answered` or `failed` (no usable answer: timeout, 5xx, HTML, account problem).
    pub outcome: &'static str,
    /// The answer's class: for `place` accepted, rejected, refused, duplicate,
    /// account_problem, transient or unknown; for `check` pending, completed, cancelled,
    /// unclear, not_found, refused, account_problem or transient; for `balance` balance,
    /// account_problem or transient.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    pub account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    pub account: String,
    /// `call` (calls at once) or `rate` (calls per second).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

fn journey_histogram() -> Histogram {
    // 1 s .. ~36 h
    Histogram::new(exponential_buckets(1.0, 2.0, 18))
}

fn seconds_histogram() -> Histogram {
    // 5 ms .. ~40 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn millis_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric orderflow exports.
pub struct Metrics {
    registry: Registry,
    ready: AtomicBool,
    /// False while the database does not answer (set by `crate::outage::watch_database`).
    database_ok: AtomicBool,
    /// False while the Kafka cluster does not answer (set by `crate::outage::watch_kafka`).
    kafka_ok: AtomicBool,
    /// Messages a stage finished (their effects durable), by topic.
    pub messages_handled: Family<TopicLabel, Counter>,
    /// Messages a stage's consumer received from the broker, by topic (librdkafka's
    /// statistics, every 5 s): more than `handled` when messages are fetched again (what a
    /// pause dropped from the prefetch, a rebalance, a restart).
    pub messages_fetched: Family<TopicLabel, Counter>,
    /// Messages being handled right now.
    pub messages_in_flight: Gauge,
    /// From a message's record timestamp (set by its producer when it sent it) to a stage's
    /// fetch of it, by topic; messages with a due time (parked orders, status checks) are
    /// not counted.
    pub message_transit_seconds: Family<TopicLabel, Histogram, fn() -> Histogram>,
    /// From a message being due at a stage (fetched, or its due time reached) to its
    /// effects being durable, by topic: queueing for a batch and the handling itself.
    pub message_handling_seconds: Family<TopicLabel, Histogram, fn() -> Histogram>,
    /// Messages held until their due time, by (tier) topic: the retry depth per tier.
    pub messages_waiting: Family<TopicLabel, Gauge>,
    /// When the oldest held message of a topic is due, as a Unix time (0: none held);
    /// `time() - this` is how overdue it is.
    pub oldest_waiting_due_timestamp_seconds:
        Family<TopicLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// How late a delayed message was handed over after its due time, by topic.
    pub check_lateness_seconds: Family<TopicLabel, Histogram, fn() -> Histogram>,
    /// What status checks led to: completed, cancelled, pending, no_answer, deadline.
    pub check_outcomes: Family<OutcomeLabel, Counter>,
    /// Orders the reconciler enqueued again.
    pub reconciler_requeued: Counter,
    /// Orders the reconciler no longer enqueues again: their checks are only dead-lettered.
    pub reconciler_given_up: Gauge,
    /// Status checks the provider answered for an order, counted when it ends.
    pub check_attempts: Histogram,
    /// From the provider's acceptance to the final state, by outcome.
    pub dispatch_to_final_seconds: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    /// From the shop's `created_at` to the final state, by outcome.
    pub created_to_final_seconds: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    /// Events a stage wrote, by topic.
    pub events_written: Family<TopicLabel, Counter>,
    /// Events copied to the DLQ, by stage and reason.
    pub dead_lettered: Family<DeadLetterLabels, Counter>,
    /// Provider calls by account, call and outcome.
    pub provider_calls: Family<CallLabels, Counter>,
    /// Provider call duration by account, call and outcome.
    pub provider_call_seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
    /// 1 while an account's circuit breaker stops calls.
    pub provider_breaker_open: Family<AccountLabel, Gauge>,
    /// Slots of an account's caps this process holds now (its share of the cluster's).
    pub provider_slots_held: Family<SlotLabels, Gauge>,
    /// Orders the dispatch stage parked on `orders.dispatch-retry` instead of retrying
    /// them in process, by account.
    pub dispatch_parked: Family<AccountLabel, Counter>,
    /// The last balance the provider reported for an account (with a placement, or to the
    /// scheduled balance check), in the provider's currency.
    pub account_balance: Family<AccountLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// An account's `balance_alert_below` from the accounts file, when set.
    pub account_balance_alert_below: Family<AccountLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Rows per sink statement, and how long it took.
    pub sink_batch_rows: Histogram,
    pub sink_batch_seconds: Histogram,
    /// Messages behind the end of each partition (librdkafka's view: high watermark minus
    /// committed offset); see `messages_waiting` for the partitions a delay holds.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Kafka requests sent by the stage's consumer and producer, by type (librdkafka's
    /// statistics, every 5 s).
    pub kafka_requests: Family<RequestLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            ready: AtomicBool::new(false),
            database_ok: AtomicBool::new(true),
            kafka_ok: AtomicBool::new(true),
            messages_handled: Family::<TopicLabel, Counter>::default(),
            messages_fetched: Family::<TopicLabel, Counter>::default(),
            messages_in_flight: Gauge::default(),
            message_transit_seconds: Family::new_with_constructor(
                millis_histogram as fn() -> Histogram,
            ),
            message_handling_seconds: Family::new_with_constructor(
                millis_histogram as fn() -> Histogram,
            ),
            messages_waiting: Family::<TopicLabel, Gauge>::default(),
            oldest_waiting_due_timestamp_seconds: Family::default(),
            check_lateness_seconds: Family::new_with_constructor(
                millis_histogram as fn() -> Histogram,
            ),
            check_outcomes: Family::<OutcomeLabel, Counter>::default(),
            reconciler_requeued: Counter::default(),
            reconciler_given_up: Gauge::default(),
            check_attempts: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            dispatch_to_final_seconds: Family::new_with_constructor(
                journey_histogram as fn() -> Histogram,
            ),
            created_to_final_seconds: Family::new_with_constructor(
                journey_histogram as fn() -> Histogram,
            ),
            events_written: Family::<TopicLabel, Counter>::default(),
            dead_lettered: Family::<DeadLetterLabels, Counter>::default(),
            provider_calls: Family::<CallLabels, Counter>::default(),
            provider_call_seconds: Family::new_with_constructor(
                seconds_histogram as fn() -> Histogram,
            ),
            provider_breaker_open: Family::<AccountLabel, Gauge>::default(),
            provider_slots_held: Family::<SlotLabels, Gauge>::default(),
            dispatch_parked: Family::<AccountLabel, Counter>::default(),
            account_balance: Family::default(),
            account_balance_alert_below: Family::default(),
            sink_batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            sink_batch_seconds: seconds_histogram(),
            consumer_lag: Family::<PartitionLabels, Gauge>::default(),
            kafka_requests: Family::<RequestLabels, Counter>::default(),
        };
        let mut registry = Registry::with_prefix("orderflow");
        stage::register(&mut registry, &metrics);
        poll::register(&mut registry, &metrics);
        provider::register(&mut registry, &metrics);
        sink::register(&mut registry, &metrics);
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn topic(topic: &str) -> TopicLabel {
        TopicLabel {
            topic: topic.to_owned(),
        }
    }

    /// Marks the process ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the database answers, for `/readyz`.
    pub fn set_database_ok(&self, ok: bool) {
        self.database_ok.store(ok, Ordering::Relaxed);
    }

    /// Whether the Kafka cluster answers, for `/readyz`.
    pub fn set_kafka_ok(&self, ok: bool) {
        self.kafka_ok.store(ok, Ordering::Relaxed);
    }

    /// Ready: the stage works on partitions, and the database and the cluster answer.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.database_ok.load(Ordering::Relaxed)
            && self.kafka_ok.load(Ordering::Relaxed)
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new();
        m.messages_waiting
            .get_or_create(&Metrics::topic("orders.status-check.30s"))
            .set(3);
        m.check_lateness_seconds
            .get_or_create(&Metrics::topic("orders.status-check.30s"))
            .observe(0.004);
        m.check_outcomes
            .get_or_create(&OutcomeLabel { outcome: "pending" })
            .inc();
        let text = m.render();
        for name in [
            "orderflow_messages_waiting{topic=\"orders.status-check.30s\"} 3",
            "orderflow_check_lateness_seconds_bucket",
            "orderflow_check_outcomes_total{outcome=\"pending\"} 1",
            "orderflow_reconciler_requeued_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
