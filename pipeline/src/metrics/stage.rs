//! The metrics of the consumer loop every stage runs on (`kafka::stage`) and of what every
//! stage writes: messages handled, fetched, in flight and waiting for their due time, their
//! transit to the stage and time in it, events written and dead-lettered, consumer lag, and
//! the Kafka requests sent.

use super::Metrics;
use prometheus_client::registry::Registry;

/// Registers these metrics of `m` in `registry`.
pub(super) fn register(registry: &mut Registry, m: &Metrics) {
    registry.register(
        "messages_handled",
        "Messages whose effects are durable, by topic",
        m.messages_handled.clone(),
    );
    registry.register(
        "messages_fetched",
        "Messages received from the broker, by topic (above messages_handled when \
         messages are fetched again)",
        m.messages_fetched.clone(),
    );
    registry.register(
        "messages_in_flight",
        "Messages being handled now",
        m.messages_in_flight.clone(),
    );
    registry.register(
        "message_transit_seconds",
        "From a message's record timestamp (set by its producer) to its fetch by the stage, \
         by topic; messages with a due time are not counted",
        m.message_transit_seconds.clone(),
    );
    registry.register(
        "message_handling_seconds",
        "From a message being due at the stage (fetched, or its due time reached) to its \
         effects being durable, by topic",
        m.message_handling_seconds.clone(),
    );
    registry.register(
        "messages_waiting",
        "Messages held until their due time, by topic (retry depth per tier)",
        m.messages_waiting.clone(),
    );
    registry.register(
        "oldest_waiting_due_timestamp_seconds",
        "When the oldest held message of a topic is due (Unix time; 0 when none is held)",
        m.oldest_waiting_due_timestamp_seconds.clone(),
    );
    registry.register(
        "events_written",
        "Events a stage wrote to orders.state, orders.dispatched and the tiers, by topic",
        m.events_written.clone(),
    );
    registry.register(
        "dead_lettered",
        "Events copied to orders.dlq, by stage and reason",
        m.dead_lettered.clone(),
    );
    registry.register(
        "kafka_requests",
        "Kafka requests the stage's consumer and producer sent, by client and request type \
         (Produce, Fetch, ...)",
        m.kafka_requests.clone(),
    );
    registry.register(
        "consumer_lag",
        "Messages between the committed offset and the end of a partition",
        m.consumer_lag.clone(),
    );
}
