//! Prometheus metrics (G7) and the small HTTP server every long-running command exposes:
//! `/metrics`, `/healthz` (the process runs) and `/readyz` (its stage is consuming).
//!
//! Metric names start with `orderflow_`; labels never carry an order id, a PIN or a
//! credential (G5), only bounded values such as a topic or an outcome word. One
//! [`Metrics`] per process, shared by its stages through an `Arc`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
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
    /// `place` or `check`.
    pub call: &'static str,
    /// `answered` or `failed` (no usable answer: timeout, 5xx, HTML, account problem).
    pub outcome: &'static str,
    /// The answer's class: for `place` accepted, rejected, refused, duplicate,
    /// account_problem, transient or unknown; for `check` pending, completed, cancelled,
    /// unclear, not_found, refused, account_problem or transient.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    pub account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

fn journey_histogram() -> Histogram {
    // 1 s .. ~36 h
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 18,
    ))
}

fn seconds_histogram() -> Histogram {
    // 5 ms .. ~40 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 14,
    ))
}

fn lateness_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// Every metric orderflow exports.
pub struct Metrics {
    registry: Registry,
    ready: AtomicBool,
    /// False while the database does not answer (set by [`watch_database`]).
    database_ok: AtomicBool,
    /// Messages a stage finished (their effects durable), by topic.
    pub handled: Family<TopicLabel, Counter>,
    /// Messages a stage's consumer received from the broker, by topic (librdkafka's
    /// statistics, every 5 s): more than `handled` when messages are fetched again (what a
    /// pause dropped from the prefetch, a rebalance, a restart).
    pub fetched: Family<TopicLabel, Counter>,
    /// Messages being handled right now.
    pub in_flight: Gauge,
    /// Messages held until their due time, by (tier) topic: the retry depth per tier.
    pub waiting: Family<TopicLabel, Gauge>,
    /// When the oldest held message of a topic is due, as a Unix time (0: none held);
    /// `time() - this` is how overdue it is.
    pub oldest_due: Family<TopicLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// How late a delayed message was handed over after its due time, by topic.
    pub lateness: Family<TopicLabel, Histogram, fn() -> Histogram>,
    /// What status checks led to: completed, cancelled, pending, no_answer, deadline.
    pub check_outcomes: Family<OutcomeLabel, Counter>,
    /// Orders the reconciler enqueued again.
    pub requeued: Counter,
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
    pub breaker_open: Family<AccountLabel, Gauge>,
    /// Orders the dispatch stage parked on `orders.dispatch-retry` instead of retrying
    /// them in process, by account.
    pub dispatch_parked: Family<AccountLabel, Counter>,
    /// Rows per sink statement, and how long it took.
    pub sink_batch_rows: Histogram,
    pub sink_batch_seconds: Histogram,
    /// Messages behind the end of each partition (librdkafka's view: high watermark minus
    /// committed offset); see `messages_waiting` for the partitions a delay holds.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
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
        let mut registry = Registry::with_prefix("orderflow");
        let handled = Family::<TopicLabel, Counter>::default();
        let fetched = Family::<TopicLabel, Counter>::default();
        let in_flight = Gauge::default();
        let waiting = Family::<TopicLabel, Gauge>::default();
        let oldest_due = Family::default();
        let lateness = Family::new_with_constructor(lateness_histogram as fn() -> Histogram);
        let check_outcomes = Family::<OutcomeLabel, Counter>::default();
        let requeued = Counter::default();
        let reconciler_given_up = Gauge::default();
        let check_attempts = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 10),
        );
        let dispatch_to_final_seconds =
            Family::new_with_constructor(journey_histogram as fn() -> Histogram);
        let created_to_final_seconds =
            Family::new_with_constructor(journey_histogram as fn() -> Histogram);
        let events_written = Family::<TopicLabel, Counter>::default();
        let dead_lettered = Family::<DeadLetterLabels, Counter>::default();
        let provider_calls = Family::<CallLabels, Counter>::default();
        let provider_call_seconds =
            Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let breaker_open = Family::<AccountLabel, Gauge>::default();
        let dispatch_parked = Family::<AccountLabel, Counter>::default();
        let sink_batch_rows = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 14),
        );
        let sink_batch_seconds = seconds_histogram();
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "messages_handled",
            "Messages whose effects are durable, by topic",
            handled.clone(),
        );
        registry.register(
            "messages_fetched",
            "Messages received from the broker, by topic (above messages_handled when \
             messages are fetched again)",
            fetched.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages being handled now",
            in_flight.clone(),
        );
        registry.register(
            "messages_waiting",
            "Messages held until their due time, by topic (retry depth per tier)",
            waiting.clone(),
        );
        registry.register(
            "oldest_waiting_due_timestamp_seconds",
            "When the oldest held message of a topic is due (Unix time; 0 when none is held)",
            oldest_due.clone(),
        );
        registry.register(
            "check_lateness_seconds",
            "How long after its due time a delayed message was handed over, by topic",
            lateness.clone(),
        );
        registry.register(
            "check_outcomes",
            "What status checks led to: completed, cancelled, pending, no_answer, deadline",
            check_outcomes.clone(),
        );
        registry.register(
            "reconciler_requeued",
            "Orders the reconciler enqueued again because their check was overdue",
            requeued.clone(),
        );
        registry.register(
            "reconciler_given_up",
            "Orders not final whose status check the poll stage keeps dead-lettering; the \
             reconciler no longer enqueues them again",
            reconciler_given_up.clone(),
        );
        registry.register(
            "check_attempts",
            "Status checks the provider answered for an order, observed when it ends",
            check_attempts.clone(),
        );
        registry.register(
            "dispatch_to_final_seconds",
            "From the provider's acceptance to the final state, by outcome",
            dispatch_to_final_seconds.clone(),
        );
        registry.register(
            "created_to_final_seconds",
            "From the shop's created_at to the final state, by outcome",
            created_to_final_seconds.clone(),
        );
        registry.register(
            "events_written",
            "Events a stage wrote to orders.state, orders.dispatched and the tiers, by topic",
            events_written.clone(),
        );
        registry.register(
            "dead_lettered",
            "Events copied to orders.dlq, by stage and reason",
            dead_lettered.clone(),
        );
        registry.register(
            "provider_calls",
            "Provider calls by account, call (place, check) and outcome (answered, failed)",
            provider_calls.clone(),
        );
        registry.register(
            "provider_call_seconds",
            "Provider call duration by account, call and outcome",
            provider_call_seconds.clone(),
        );
        registry.register(
            "provider_breaker_open",
            "1 while the account's circuit breaker stops calls, else 0",
            breaker_open.clone(),
        );
        registry.register(
            "dispatch_parked",
            "Orders parked on orders.dispatch-retry (their provider account kept failing, \
             or had too many orders retrying), by account",
            dispatch_parked.clone(),
        );
        registry.register(
            "sink_batch_rows",
            "Rows written by one sink statement",
            sink_batch_rows.clone(),
        );
        registry.register(
            "sink_batch_seconds",
            "How long one sink statement took",
            sink_batch_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages between the committed offset and the end of a partition",
            consumer_lag.clone(),
        );
        Metrics {
            registry,
            ready: AtomicBool::new(false),
            database_ok: AtomicBool::new(true),
            handled,
            fetched,
            in_flight,
            waiting,
            oldest_due,
            lateness,
            check_outcomes,
            requeued,
            reconciler_given_up,
            check_attempts,
            dispatch_to_final_seconds,
            created_to_final_seconds,
            events_written,
            dead_lettered,
            provider_calls,
            provider_call_seconds,
            breaker_open,
            dispatch_parked,
            sink_batch_rows,
            sink_batch_seconds,
            consumer_lag,
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

    /// Ready: the stage works on partitions and the database answers.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.database_ok.load(Ordering::Relaxed)
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// Where to serve metrics; the flag is shared by every long-running command.
#[derive(Clone, Debug, clap::Args)]
pub struct MetricsConfig {
    /// Address of the /metrics, /healthz and /readyz endpoints (for example
    /// 127.0.0.1:9464); none when unset.
    #[arg(long = "metrics-listen", env = "ORDERFLOW_METRICS_LISTEN")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr} ({source})")]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Serves the endpoints in the background, if an address is configured; returns the bound
/// address.
pub async fn serve(
    config: &MetricsConfig,
    metrics: Arc<Metrics>,
) -> Result<Option<SocketAddr>, MetricsError> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError { addr, source })?;
    let (for_metrics, for_ready) = (Arc::clone(&metrics), metrics);
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    for_metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if for_ready.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(Some(bound))
}

/// Asks the database `SELECT 1` every 5 s and keeps `/readyz` false while it does not
/// answer within 2 s.
pub fn watch_database(pool: sqlx::PgPool, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            let answered = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(&pool),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            let was = metrics.database_ok.swap(answered, Ordering::Relaxed);
            if was != answered {
                tracing::warn!(
                    answered,
                    "database reachability changed; /readyz follows it"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new();
        m.waiting
            .get_or_create(&Metrics::topic("orders.status-check.30s"))
            .set(3);
        m.lateness
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
