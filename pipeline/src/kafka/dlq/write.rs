//! The DLQ's write side: what a stage does with a record it cannot use (G8).
//!
//! A record a stage cannot use is copied there byte for byte (key, payload and headers)
//! with `orderflow.dlq.*` headers saying why, by which stage, and where it came from, so it
//! can be inspected and replayed after a fix. Only events without secrets are ever
//! dead-lettered: `orders.created` carries no PIN or credential, and `orders.state` only a
//! sealed PIN (G5).
//!
//! A copy that would be larger than the broker takes (the producer's `message.max.bytes`,
//! 1,000,000 bytes by default, and the topic's `max.message.bytes`) is cut to
//! [`MAX_COPY_BYTES`] and marked with `orderflow.dlq.cut` and the original size: a copy the
//! broker refuses would be retried forever and hold its partition up.

use crate::core::backoff::Backoff;
use crate::core::event::InvalidEvent;
use crate::kafka::emit::until_sent;
use crate::kafka::headers;
use crate::kafka::Context;
use crate::metrics::{DeadLetterLabels, Metrics};
use crate::shutdown::{Interrupted, Shutdown};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::sync::Arc;

/// Largest DLQ copy, in bytes of key, payload and headers: under the producer's default
/// `message.max.bytes` (1,000,000) with room for the record's own overhead.
pub const MAX_COPY_BYTES: usize = 900 * 1024;

/// Longest `orderflow.dlq.detail`, in bytes: one sentence for a person.
const MAX_DETAIL_BYTES: usize = 1024;

/// What of the original record goes into the copy, once cut to fit.
#[derive(Debug, PartialEq, Eq)]
pub struct Copy<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// The original headers kept, in their order.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    /// What was cut (`payload`, `key`, `headers`), empty when nothing was.
    pub cut: Vec<&'static str>,
    /// The original record's size: key, payload, header names and values.
    pub original_bytes: usize,
}

/// Fits a record into `max` bytes next to `reserved` bytes of DLQ headers. The key and the
/// original headers are kept whole while they take at most an eighth of the room each (a
/// key is an order id, headers are trace context); the payload gets the rest.
pub fn fit<'a>(
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    original: Vec<(&'a str, Option<&'a [u8]>)>,
    reserved: usize,
    max: usize,
) -> Copy<'a> {
    let header_bytes = |h: &(&str, Option<&[u8]>)| h.0.len() + h.1.map_or(0, <[u8]>::len);
    let original_bytes = key.map_or(0, <[u8]>::len)
        + payload.map_or(0, <[u8]>::len)
        + original.iter().map(header_bytes).sum::<usize>();
    let room = max.saturating_sub(reserved);
    if original_bytes <= room {
        return Copy {
            key,
            payload,
            headers: original,
            cut: Vec::new(),
            original_bytes,
        };
    }
    let mut cut = Vec::new();
    let share = room / 8;
    let key = match key {
        Some(k) if k.len() > share => {
            cut.push("key");
            Some(&k[..share])
        }
        k => k,
    };
    let mut headers = Vec::with_capacity(original.len());
    let mut used = 0;
    for h in original {
        if used + header_bytes(&h) > share {
            if !cut.contains(&"headers") {
                cut.push("headers");
            }
            continue;
        }
        used += header_bytes(&h);
        headers.push(h);
    }
    let left = room.saturating_sub(key.map_or(0, <[u8]>::len) + used);
    let payload = match payload {
        Some(p) if p.len() > left => {
            cut.insert(0, "payload");
            Some(&p[..left])
        }
        p => p,
    };
    Copy {
        key,
        payload,
        headers,
        cut,
        original_bytes,
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn shorten(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer<Context>,
    topic: String,
    stage: &'static str,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    pub fn new(
        producer: FutureProducer<Context>,
        topic: String,
        stage: &'static str,
        metrics: Arc<Metrics>,
    ) -> Self {
        DeadLetters {
            producer,
            topic,
            stage,
            metrics,
        }
    }

    /// Logs that `message` is dead-lettered (position and reason, never its content) and
    /// copies it to the DLQ with `why`, retrying with `backoff` until the broker has it or
    /// shutdown interrupts. What every stage does with an event it cannot take (G8).
    pub async fn put<M: Message>(
        &self,
        message: &M,
        why: &InvalidEvent,
        backoff: &Backoff,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        tracing::warn!(
            topic = message.topic(), partition = message.partition(), offset = message.offset(),
            reason = why.kind.as_str(), detail = %why.detail, "event dead-lettered"
        );
        until_sent("dead-lettering an event", backoff, shutdown, || {
            self.send(message, why)
        })
        .await
    }

    /// Copies `message` to the DLQ with `why`, and returns once the broker has it.
    pub async fn send<M: Message>(
        &self,
        message: &M,
        why: &InvalidEvent,
    ) -> Result<(), KafkaError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let at = chrono::Utc::now().to_rfc3339();
        let mut ours: Vec<(&str, &str)> = vec![
            (headers::DLQ_REASON, why.kind.as_str()),
            (headers::DLQ_DETAIL, shorten(&why.detail, MAX_DETAIL_BYTES)),
            (headers::DLQ_STAGE, self.stage),
            (headers::DLQ_SOURCE_TOPIC, message.topic()),
            (headers::DLQ_SOURCE_PARTITION, partition.as_str()),
            (headers::DLQ_SOURCE_OFFSET, offset.as_str()),
            (headers::DLQ_AT, at.as_str()),
        ];
        if let Some(sqlstate) = &why.sqlstate {
            ours.push((headers::DLQ_SQLSTATE, sqlstate.as_str()));
        }
        let original: Vec<(&str, Option<&[u8]>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        // The cut and size headers are counted in, whether they are needed or not.
        let reserved = ours.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + headers::DLQ_CUT.len()
            + headers::DLQ_ORIGINAL_BYTES.len()
            + 64;
        let copy = fit(
            message.key(),
            message.payload(),
            original,
            reserved,
            MAX_COPY_BYTES,
        );
        let cut = copy.cut.join(",");
        let original_bytes = copy.original_bytes.to_string();
        if !copy.cut.is_empty() {
            tracing::warn!(
                topic = message.topic(), partition = message.partition(), offset = message.offset(),
                original_bytes = copy.original_bytes, cut = %cut,
                "the record is too large for the DLQ; its copy is cut"
            );
            ours.push((headers::DLQ_CUT, cut.as_str()));
            ours.push((headers::DLQ_ORIGINAL_BYTES, original_bytes.as_str()));
        }
        let mut out = copy
            .headers
            .into_iter()
            .fold(OwnedHeaders::new(), |acc, (key, value)| {
                acc.insert(Header { key, value })
            });
        for (key, value) in ours {
            out = out.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(out);
        if let Some(key) = copy.key {
            record = record.key(key);
        }
        if let Some(payload) = copy.payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)?;
        self.metrics
            .dead_lettered
            .get_or_create(&DeadLetterLabels {
                stage: self.stage,
                reason: why.kind.as_str(),
            })
            .inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_record_that_fits_is_copied_whole() {
        let copy = fit(
            Some(b"k"),
            Some(b"payload"),
            vec![("traceparent", Some(b"00-ab".as_slice()))],
            100,
            1000,
        );
        assert!(copy.cut.is_empty());
        assert_eq!(copy.payload, Some(b"payload".as_slice()));
        assert_eq!(copy.headers.len(), 1);
        assert_eq!(copy.original_bytes, 1 + 7 + 11 + 5);
    }

    #[test]
    fn a_large_payload_is_cut_and_the_key_and_headers_kept() {
        let payload = vec![b'x'; 2_000_000];
        let copy = fit(
            Some(b"6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f"),
            Some(&payload),
            vec![("traceparent", Some(b"00-ab".as_slice()))],
            500,
            MAX_COPY_BYTES,
        );
        assert_eq!(copy.cut, vec!["payload"]);
        assert_eq!(copy.key.unwrap().len(), 36);
        assert_eq!(copy.headers.len(), 1);
        assert_eq!(copy.original_bytes, 2_000_000 + 36 + 16);
        assert_eq!(
            copy.payload.unwrap().len() + 36 + 16 + 500,
            MAX_COPY_BYTES,
            "the payload takes the rest of the room"
        );
    }

    proptest! {
        /// Whatever the record, the copy fits the broker; what is cut is said.
        #[test]
        fn every_copy_fits(
            key_len in 0usize..400_000,
            payload_len in 0usize..3_000_000,
            headers in proptest::collection::vec((1usize..50, 0usize..200_000), 0..8),
            reserved in 0usize..2_000,
        ) {
            let key = vec![b'k'; key_len];
            let payload = vec![b'p'; payload_len];
            let names: Vec<String> = headers.iter().map(|(n, _)| "h".repeat(*n)).collect();
            let values: Vec<Vec<u8>> = headers.iter().map(|(_, v)| vec![b'v'; *v]).collect();
            let original: Vec<(&str, Option<&[u8]>)> = names
                .iter()
                .zip(&values)
                .map(|(n, v)| (n.as_str(), Some(v.as_slice())))
                .collect();
            let copy = fit(Some(&key), Some(&payload), original, reserved, MAX_COPY_BYTES);
            let size = copy.key.map_or(0, <[u8]>::len)
                + copy.payload.map_or(0, <[u8]>::len)
                + copy.headers.iter().map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len)).sum::<usize>();
            prop_assert!(size + reserved <= MAX_COPY_BYTES.max(reserved));
            prop_assert_eq!(copy.cut.is_empty(), size == copy.original_bytes);
        }
    }
}
