//! When a poll message is due, and the latest it may be held (G4): read from its headers
//! or broker timestamp without decoding its payload, and bounded by its topic's delay so
//! that a producer's clock or a hostile due time cannot hold a partition for hours. Pure.

use chrono::{DateTime, Utc};
use rdkafka::message::{Message, OwnedMessage};
use std::time::Duration;

/// When a message is due, read without decoding its payload: a status check carries it in
/// a header; a dispatched order is due `first_check` after the broker's timestamp (its
/// producer stamps it when dispatch publishes it). `None` when neither is there (a message
/// of an older version): the payload decides then.
pub fn due_at(
    message: &OwnedMessage,
    dispatched_topic: &str,
    first_check: Duration,
) -> Option<DateTime<Utc>> {
    if message.topic() == dispatched_topic {
        let stamped = message.timestamp().to_millis()?;
        let first = i64::try_from(first_check.as_millis()).ok()?;
        return DateTime::from_timestamp_millis(stamped.checked_add(first)?);
    }
    let headers = message.headers()?;
    let due = crate::kafka::headers::get(headers, crate::kafka::headers::DUE_AT)?;
    DateTime::from_timestamp_millis(due.parse().ok()?)
}

/// The latest a message may be held: `delay` (its topic's: the first check's on
/// `orders.dispatched`, its tier's on a tier topic) after it reached the broker. An honest
/// message is due by then anyway (its producer set `due` to its own clock plus that delay);
/// the bound keeps a producer whose clock runs ahead, or a hostile due time, from holding
/// a partition for hours (G4). The broker's timestamp is the producer's clock too unless
/// the topic says `LogAppendTime`, so one ahead of `received` (when this consumer got the
/// message) counts as `received`; so does a message without one.
pub fn hold_at_most(
    due: DateTime<Utc>,
    stamped: Option<i64>,
    received: DateTime<Utc>,
    delay: Duration,
) -> DateTime<Utc> {
    let reached = stamped
        .and_then(DateTime::from_timestamp_millis)
        .map_or(received, |at| at.min(received));
    let latest = chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| reached.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    due.min(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_held_at_most_its_delay_past_the_broker_timestamp() {
        let received = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let at = |secs: i64| received + chrono::Duration::seconds(secs);
        let ms = |secs: i64| Some(at(secs).timestamp_millis());
        let tier = Duration::from_secs(30);
        // An honest message: stamped a little before it was received, due its delay after.
        assert_eq!(hold_at_most(at(25), ms(-5), received, tier), at(25));
        // A producer whose clock runs two hours ahead: due and stamp both ahead; it waits
        // the tier's delay from when it arrived, not two hours.
        assert_eq!(hold_at_most(at(7230), ms(7200), received, tier), at(30));
        // A due time far past its stamp (a hostile or broken producer).
        assert_eq!(hold_at_most(at(86_400), ms(-5), received, tier), at(25));
        // No timestamp: counted from its arrival.
        assert_eq!(hold_at_most(at(86_400), None, received, tier), at(30));
        // Already due: unchanged.
        assert_eq!(hold_at_most(at(-60), ms(-90), received, tier), at(-60));
        // Extreme values neither panic nor wrap.
        let max = DateTime::<Utc>::MAX_UTC;
        assert_eq!(
            hold_at_most(max, Some(i64::MAX), received, Duration::MAX),
            max
        );
        assert_eq!(hold_at_most(max, Some(i64::MIN), received, tier), at(30));
    }
}
