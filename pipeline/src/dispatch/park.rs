//! Parking: an order the dispatch stage gives up on for now leaves the stage's in-flight
//! places and its partition's commit point, and waits on `orders.dispatch-retry` instead
//! (G2, G4).
//!
//! The `orders.created` record is copied there byte for byte (key, payload, headers), with
//! [`headers::DUE_AT`] saying when to try it again and [`headers::DISPATCH_PARKED`] how
//! many times it was parked, so each parking waits longer ([`ParkBackoff`]), up to a cap.
//! The dispatch stage consumes the topic too: the consumer loop holds a parked order until
//! it is due without a slot ([`crate::kafka::stage::Handler::due_at`]), then it goes the
//! one-order path, which finds its claim as it was left. The copy is on the broker
//! (acks=all) before the original is acknowledged; a crash in between only leaves two
//! copies, which the claim makes harmless (G1).
//!
//! [`DispatchHandler::park`] is the stage's side: it copies the record, counts the parking
//! and logs when the order is due.

use super::handler::DispatchHandler;
use crate::core::backoff::{random_fraction, Backoff};
use crate::core::event::OrderCreated;
use crate::dispatch::placement::Parked;
use crate::kafka::emit::until_sent;
use crate::kafka::headers;
use crate::kafka::topics::name;
use crate::kafka::Context;
use crate::metrics::AccountLabel;
use crate::shutdown::{Interrupted, Shutdown};
use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

/// How long a parked order waits: `min · 2^(parkings - 1)`, jittered, up to `max`; never
/// less than the wait it was parked in; never past its deadline while that is ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkBackoff(pub Backoff);

impl ParkBackoff {
    /// When an order parked for the `times`-th time (1 for the first) is due again.
    pub fn due(
        &self,
        times: u32,
        parked: &Parked,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> DateTime<Utc> {
        let delay = self
            .0
            .delay(times.saturating_sub(1), jitter)
            .max(parked.wait)
            .min(self.0.max);
        let due = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        match parked.deadline {
            // Back by the deadline, which ends it there (expired, or checked: G9). Once the
            // deadline has passed, the order still waits its delay: an order past its
            // deadline whose account keeps failing must not come back at once, forever.
            Some(deadline) if deadline > now => due.min(deadline),
            _ => due,
        }
    }
}

/// How many times `message` was parked before (0 for an `orders.created` record).
pub fn times_parked(message: &OwnedMessage) -> u32 {
    message
        .headers()
        .and_then(|h| headers::get(h, headers::DISPATCH_PARKED))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// When a parked order is due, from its header; `None` for anything else.
pub fn due_at(message: &OwnedMessage) -> Option<DateTime<Utc>> {
    let due = headers::get(message.headers()?, headers::DUE_AT)?;
    DateTime::from_timestamp_millis(due.parse().ok()?)
}

/// Copies `message` to `topic` (the retry topic), due at `due`, parked `times` times;
/// returns once the broker has it.
pub async fn send(
    producer: &FutureProducer<Context>,
    topic: &str,
    message: &OwnedMessage,
    due: DateTime<Utc>,
    times: u32,
) -> Result<(), KafkaError> {
    let due = due.timestamp_millis().to_string();
    let times = times.to_string();
    // The original's headers (its trace context among them), but only the new due time and
    // count.
    let mut out = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter() {
            if h.key != headers::DUE_AT && h.key != headers::DISPATCH_PARKED {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
    }
    for (key, value) in [
        (headers::DUE_AT, due.as_str()),
        (headers::DISPATCH_PARKED, times.as_str()),
    ] {
        out = out.insert(Header {
            key,
            value: Some(value),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(out);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Timeout::Never)
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// How long until `due`, for the log.
pub fn millis_until(due: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    (due - now)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .min(u128::from(u64::MAX)) as u64
}

impl DispatchHandler {
    /// Parks the order: its record goes to the retry topic, due after a wait that grows
    /// with each parking; the original is acknowledged (by the caller) once the copy is on
    /// the broker.
    pub(super) async fn park(
        &self,
        message: &OwnedMessage,
        order: &OrderCreated,
        parked: &Parked,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let times = times_parked(message).saturating_add(1);
        let now = Utc::now();
        let due = self.park_backoff.due(times, parked, now, random_fraction());
        let producer = self.emitter.producer();
        until_sent("parking an order", &self.placer.backoff, shutdown, || {
            send(producer, &self.retry_topic, message, due, times)
        })
        .await?;
        self.metrics
            .dispatch_parked
            .get_or_create(&AccountLabel {
                account: order.provider_account.clone(),
            })
            .inc();
        tracing::info!(
            order_id = %order.order_id, account = %order.provider_account, times_parked = times,
            due_in_ms = millis_until(due, now), "order parked on {}: {}",
            name::ORDERS_DISPATCH_RETRY, parked.why
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: ParkBackoff = ParkBackoff(Backoff {
        min: Duration::from_secs(5),
        max: Duration::from_secs(600),
    });

    fn parked(wait_ms: u64, deadline: Option<DateTime<Utc>>) -> Parked {
        Parked {
            why: "test".into(),
            wait: Duration::from_millis(wait_ms),
            deadline,
        }
    }

    #[test]
    fn each_parking_waits_longer_up_to_the_cap() {
        let now = Utc::now();
        let p = parked(0, None);
        let after = |times| (P.due(times, &p, now, 1.0) - now).num_seconds();
        assert_eq!(
            [after(1), after(2), after(3), after(10), after(60)],
            [5, 10, 20, 600, 600]
        );
        // An open breaker's remaining 30 s is waited in full, but never past the cap.
        let breaker = parked(30_000, None);
        assert_eq!((P.due(1, &breaker, now, 1.0) - now).num_seconds(), 30);
        let window = parked(3_600_000, None);
        assert_eq!((P.due(1, &window, now, 1.0) - now).num_seconds(), 600);
    }

    #[test]
    fn a_parked_order_is_back_by_its_deadline_but_not_at_once_after_it() {
        let now = Utc::now();
        let soon = now + chrono::Duration::seconds(2);
        assert_eq!(P.due(3, &parked(0, Some(soon)), now, 1.0), soon);
        let past = now - chrono::Duration::seconds(2);
        let due = P.due(3, &parked(0, Some(past)), now, 1.0);
        assert_eq!((due - now).num_seconds(), 20);
    }

    proptest! {
        #[test]
        fn never_before_its_wait_nor_after_the_cap(
            times in 0u32..100, wait_ms in 0u64..10_000_000, jitter in 0.0f64..1.0,
        ) {
            let now = Utc::now();
            let p = parked(wait_ms, None);
            let delay = (P.due(times, &p, now, jitter) - now).to_std().unwrap();
            prop_assert!(delay >= p.wait.min(P.0.max));
            prop_assert!(delay <= P.0.max);
            prop_assert!(delay >= P.0.min / 2);
        }
    }
}
