//! Writing the pipeline's own events: `orders.state`, `orders.dispatched` and the
//! status-check tiers `orders.status-check.*`.
//!
//! Keyed by order id, JSON, with `orderflow.event` and `orderflow.schema_version` headers.
//! `send` returns once the broker has the record, so a caller can make an offset commit
//! wait for it (G2).

use crate::core::backoff::Backoff;
use crate::core::event::{OrderDispatched, OrderStateEvent, StatusCheck, SCHEMA_VERSION};
use crate::kafka::headers;
use crate::kafka::topics::name;
use crate::kafka::{Context, KafkaConfig, KafkaSetupError, Pace};
use crate::shutdown::{Interrupted, Shutdown};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::Serialize;

#[derive(Clone)]
pub struct Emitter {
    /// Counts what is written, once a stage says where ([`Emitter::counted`]).
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    counters: std::sync::Arc<
        std::sync::Mutex<
            std::collections::HashMap<String, prometheus_client::metrics::counter::Counter>,
        >,
    >,
    producer: FutureProducer<Context>,
    /// The producer's context, kept to count its requests ([`Emitter::counted`]).
    context: Context,
    state_topic: String,
    dispatched_topic: String,
}

impl Emitter {
    /// An emitter whose records linger as a [`Pace::Prompt`] stage's.
    pub fn new(kafka: &KafkaConfig) -> Result<Self, KafkaSetupError> {
        Self::paced(kafka, Pace::Prompt)
    }

    /// An emitter whose records linger as `pace` says (see [`Pace`]).
    pub fn paced(kafka: &KafkaConfig, pace: Pace) -> Result<Self, KafkaSetupError> {
        let context = Context::default();
        Ok(Emitter {
            metrics: None,
            counters: Default::default(),
            producer: kafka.producer_with(pace, context.clone())?,
            context,
            state_topic: kafka.topic(name::ORDERS_STATE),
            dispatched_topic: kafka.topic(name::ORDERS_DISPATCHED),
        })
    }

    /// Counts every event written in `metrics` (`orderflow_events_written_total`), and the
    /// producer's requests (`orderflow_kafka_requests_total`).
    pub fn counted(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.context
            .count_requests(crate::kafka::requests::RequestCounter::new(
                std::sync::Arc::clone(&metrics),
                "producer",
            ));
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, topic: &str) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        // The counter handle of each topic, made once (a label is a String).
        let mut counters = self.counters.lock().expect("counters lock");
        if let Some(counter) = counters.get(topic) {
            counter.inc();
            return;
        }
        let counter = metrics
            .events_written
            .get_or_create(&crate::metrics::Metrics::topic(topic))
            .clone();
        counter.inc();
        counters.insert(topic.to_owned(), counter);
    }

    pub fn producer(&self) -> &FutureProducer<Context> {
        &self.producer
    }

    pub async fn state(&self, event: &OrderStateEvent) -> Result<(), KafkaError> {
        self.send(
            &self.state_topic,
            name::ORDERS_STATE,
            &event.order_id.to_string(),
            event,
        )
        .await
    }

    /// Publishes an order's final state again, marked as the sink's copy
    /// ([`headers::COPY`]).
    pub async fn state_copy(&self, event: &OrderStateEvent) -> Result<(), KafkaError> {
        let key = event.order_id.to_string();
        let payload = serde_json::to_vec(event).expect("events always serialize");
        let version = SCHEMA_VERSION.to_string();
        let record = FutureRecord::to(&self.state_topic)
            .key(&key)
            .payload(&payload)
            .headers(headers::build([
                (headers::EVENT, name::ORDERS_STATE),
                (headers::SCHEMA_VERSION, version.as_str()),
                (headers::COPY, "sink"),
            ]));
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    pub async fn dispatched(&self, event: &OrderDispatched) -> Result<(), KafkaError> {
        self.send(
            &self.dispatched_topic,
            name::ORDERS_DISPATCHED,
            &event.order_id.to_string(),
            event,
        )
        .await
    }

    /// Writes a status check to a tier topic (already prefixed), keyed by order id.
    pub async fn status_check(
        &self,
        tier_topic: &str,
        check: &StatusCheck,
    ) -> Result<(), KafkaError> {
        let due = check.due_at.timestamp_millis().to_string();
        self.send_with(
            tier_topic,
            name::STATUS_CHECK_EVENT,
            &check.order_id.to_string(),
            check,
            Some((headers::DUE_AT, due.as_str())),
        )
        .await
    }

    async fn send<T: Serialize>(
        &self,
        topic: &str,
        event: &str,
        key: &str,
        value: &T,
    ) -> Result<(), KafkaError> {
        self.send_with(topic, event, key, value, None).await
    }

    async fn send_with<T: Serialize>(
        &self,
        topic: &str,
        event: &str,
        key: &str,
        value: &T,
        extra: Option<(&str, &str)>,
    ) -> Result<(), KafkaError> {
        let payload = serde_json::to_vec(value).expect("events always serialize");
        let version = SCHEMA_VERSION.to_string();
        let pairs = [
            (headers::EVENT, event),
            (headers::SCHEMA_VERSION, version.as_str()),
        ];
        let record =
            FutureRecord::to(topic)
                .key(key)
                .payload(&payload)
                .headers(crate::telemetry::inject(headers::build(
                    pairs.into_iter().chain(extra),
                )));
        self.producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)?;
        self.count(topic);
        Ok(())
    }
}

/// Retries a Kafka write until the broker has it, waiting `backoff` between tries: a
/// message's offset must not move before its effects are out (G2).
pub async fn until_sent<F, Fut>(
    what: &str,
    backoff: &Backoff,
    shutdown: &mut Shutdown,
    send: F,
) -> Result<(), Interrupted>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), KafkaError>>,
{
    crate::shutdown::retry(what, backoff, shutdown, send).await
}
