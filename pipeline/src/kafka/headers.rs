//! Names of the Kafka headers orderflow writes, in one place.

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Which event a record carries, e.g. `orders.state`.
pub const EVENT: &str = "orderflow.event";
/// The payload's `schema_version`, so a reader can route without parsing.
pub const SCHEMA_VERSION: &str = "orderflow.schema_version";
/// On an `orders.state` event the sink published again so that the compacted topic ends on
/// an order's final state (value `sink`); such a copy is never answered with another.
pub const COPY: &str = "orderflow.copy";

/// On a status check or a parked order (`orders.dispatch-retry`): when it is due, in Unix
/// milliseconds, so the consumer loop can hold it without decoding the payload.
pub const DUE_AT: &str = "orderflow.due_at";
/// On a parked order: how many times the dispatch stage has parked it, so each parking
/// waits longer.
pub const DISPATCH_PARKED: &str = "orderflow.dispatch.parked";

/// DLQ: machine-readable reason, e.g. `invalid_field` (see `InvalidKind`).
pub const DLQ_REASON: &str = "orderflow.dlq.reason";
/// DLQ: one sentence for a person.
pub const DLQ_DETAIL: &str = "orderflow.dlq.detail";
/// DLQ: the stage that gave up on the record.
pub const DLQ_STAGE: &str = "orderflow.dlq.stage";
/// DLQ: where the original record was.
pub const DLQ_SOURCE_TOPIC: &str = "orderflow.dlq.source.topic";
pub const DLQ_SOURCE_PARTITION: &str = "orderflow.dlq.source.partition";
pub const DLQ_SOURCE_OFFSET: &str = "orderflow.dlq.source.offset";
/// DLQ: when it was dead-lettered (RFC 3339).
pub const DLQ_AT: &str = "orderflow.dlq.at";
/// DLQ: the SQLSTATE of the database's refusal (reason `database_refused`).
pub const DLQ_SQLSTATE: &str = "orderflow.dlq.sqlstate";
/// DLQ: on a copy cut to fit the broker, what was cut (`payload`, `key`, `headers`,
/// comma-separated); the copy is not the original and cannot be replayed as it is.
pub const DLQ_CUT: &str = "orderflow.dlq.cut";
/// DLQ: on a cut copy, the original record's size in bytes (key, payload and headers).
pub const DLQ_ORIGINAL_BYTES: &str = "orderflow.dlq.original_bytes";

/// On a record `orderflow dlq replay` sent back to its source topic: the DLQ entry it
/// replays, `TOPIC/PARTITION/OFFSET`. The dispatch stage places an order answered `failed`
/// (invalid) only when its event carries this (docs/design/lifecycle.md, G3).
pub const REPLAY_OF: &str = "orderflow.replay.of";

/// Builds headers from name/value pairs.
pub fn build<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        })
}

/// The first value of header `name` as UTF-8 text.
pub fn get<'h, H: Headers>(headers: &'h H, name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
