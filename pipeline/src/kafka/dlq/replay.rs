//! The DLQ's replay side: entries sent back to the topic and partition they came from, with
//! their original key and headers plus `orderflow.replay.of` naming the entry, at a
//! bounded rate, each recorded in `dlq_replays` once the broker has it.
//!
//! Safe to run twice: an entry recorded as replayed is skipped unless `again` is set, and
//! even a replay sent twice (a crash between the send and the record, or `again`) is only
//! a redelivery to the stages, which never buy an order twice (G1: the dispatch claim). An
//! entry is never sent when its copy was cut to fit the DLQ (it is not the original), when
//! it names no source topic, or when that topic is not one of this environment's (another
//! topic prefix).

use super::read::{Entry, Position};
use crate::core::rate::TokenBucket;
use crate::db::replays::{self, Recorded, Replay};
use crate::kafka::{headers, topics::name, KafkaConfig, KafkaSetupError};
use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How a replay runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Records sent per second, at most (positive).
    pub per_second: f64,
    /// Say what would be sent; send and record nothing.
    pub dry_run: bool,
    /// Send entries replayed before too.
    pub again: bool,
}

/// What became of one entry, or would have with `dry_run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    WouldSend,
    Skipped(Skip),
}

/// Why an entry is not sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Replayed before (`times`, last at `at`); `--again` sends it anyway.
    Replayed { times: i32, at: DateTime<Utc> },
    /// The copy was cut to fit the DLQ (what was cut): it is not the original record.
    Cut(String),
    /// The entry names no source topic.
    NoSource,
    /// The source topic is not under this environment's topic prefix.
    OtherEnvironment(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Sent => f.write_str("sent"),
            Outcome::WouldSend => f.write_str("would send (dry run)"),
            Outcome::Skipped(Skip::Replayed { times, at }) => write!(
                f,
                "skipped: replayed {times} time{} before, last at {} (--again sends it anyway)",
                if *times == 1 { "" } else { "s" },
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Outcome::Skipped(Skip::Cut(what)) => write!(
                f,
                "skipped: the copy was cut to fit the DLQ ({what}), it is not the original"
            ),
            Outcome::Skipped(Skip::NoSource) => f.write_str("skipped: no source topic"),
            Outcome::Skipped(Skip::OtherEnvironment(topic)) => write!(
                f,
                "skipped: source topic {topic} is not under this topic prefix"
            ),
        }
    }
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("reading or recording replays in the database failed ({0})")]
    Db(#[from] sqlx::Error),
    #[error("sending DLQ entry {position} back to {topic} failed: {source}")]
    Send {
        position: Position,
        topic: String,
        source: KafkaError,
    },
}

/// The SHA-256 (hex) of an entry's key and payload: what tells a replayed entry from another
/// one later written at the same position.
pub fn digest(entry: &Entry) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [&entry.key, &entry.payload] {
        match part {
            Some(bytes) => {
                hash.update([1]);
                hash.update((bytes.len() as u64).to_be_bytes());
                hash.update(bytes);
            }
            None => hash.update([0]),
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What to do with `entry`, before any rate or dry-run: `None` to send it.
pub fn skip(entry: &Entry, prefix: &str, recorded: Option<&Recorded>, again: bool) -> Option<Skip> {
    if let Some(cut) = &entry.cut {
        return Some(Skip::Cut(cut.clone()));
    }
    let Some(source) = &entry.source else {
        return Some(Skip::NoSource);
    };
    if !source.topic.starts_with(prefix) {
        return Some(Skip::OtherEnvironment(source.topic.clone()));
    }
    match recorded {
        Some(r) if !again && r.entry_digest == digest(entry) => Some(Skip::Replayed {
            times: r.replays,
            at: r.last_replayed_at,
        }),
        _ => None,
    }
}

/// The headers of a replayed record: the original ones, in order, without an earlier
/// replay marker, then the marker naming this entry.
pub fn replay_headers(entry: &Entry, marker: &str) -> OwnedHeaders {
    entry
        .headers
        .iter()
        .filter(|(k, _)| k != headers::REPLAY_OF)
        .fold(OwnedHeaders::new(), |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: value.as_deref(),
            })
        })
        .insert(Header {
            key: headers::REPLAY_OF,
            value: Some(marker),
        })
}

/// Replays `entries` (in their order) as `options` say, calling `report` with each entry's
/// outcome as it is reached. Stops at the first send or record that fails: what was sent
/// before is recorded.
pub async fn replay(
    kafka: &KafkaConfig,
    pool: &PgPool,
    entries: &[Entry],
    options: Options,
    mut report: impl FnMut(&Entry, &Outcome),
) -> Result<Vec<Outcome>, ReplayError> {
    let dlq_topic = kafka.topic(name::ORDERS_DLQ);
    let positions: Vec<(i32, i64)> = entries
        .iter()
        .map(|e| (e.position.partition, e.position.offset))
        .collect();
    let recorded: HashMap<(i32, i64), Recorded> = replays::recorded(pool, &dlq_topic, &positions)
        .await?
        .into_iter()
        .map(|r| ((r.dlq_partition, r.dlq_offset), r))
        .collect();
    let producer = if options.dry_run {
        None
    } else {
        Some(kafka.producer()?)
    };
    let mut bucket = TokenBucket::new(options.per_second, 1, Instant::now());
    let mut outcomes = Vec::with_capacity(entries.len());
    for entry in entries {
        let p = entry.position;
        let outcome = match skip(
            entry,
            &kafka.topic_prefix,
            recorded.get(&(p.partition, p.offset)),
            options.again,
        ) {
            Some(skip) => Outcome::Skipped(skip),
            None => match &producer {
                None => Outcome::WouldSend,
                Some(producer) => {
                    while let Err(wait) = bucket.try_take(Instant::now()) {
                        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                    }
                    send(producer, &dlq_topic, entry).await?;
                    record(pool, &dlq_topic, entry).await?;
                    Outcome::Sent
                }
            },
        };
        report(entry, &outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Sends `entry` back to its source topic and partition, and waits until the broker has it.
async fn send(
    producer: &rdkafka::producer::FutureProducer<crate::kafka::Context>,
    dlq_topic: &str,
    entry: &Entry,
) -> Result<(), ReplayError> {
    let source = entry.source.as_ref().expect("checked by skip");
    let marker = format!("{dlq_topic}/{}", entry.position);
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(&source.topic).headers(replay_headers(entry, &marker));
    // The partition it was on keeps it behind the same order's earlier records.
    if let Some(partition) = source.partition {
        record = record.partition(partition);
    }
    if let Some(key) = &entry.key {
        record = record.key(key);
    }
    if let Some(payload) = &entry.payload {
        record = record.payload(payload);
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map(|_| ())
        .map_err(|(source_error, _)| ReplayError::Send {
            position: entry.position,
            topic: source.topic.clone(),
            source: source_error,
        })
}

async fn record(pool: &PgPool, dlq_topic: &str, entry: &Entry) -> Result<(), ReplayError> {
    let source = entry.source.as_ref().expect("checked by skip");
    let digest = digest(entry);
    replays::record(
        pool,
        &Replay {
            dlq_topic,
            partition: entry.position.partition,
            offset: entry.position.offset,
            entry_digest: &digest,
            reason: &entry.reason,
            source_topic: &source.topic,
            order_id: entry.order_id(),
        },
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::dlq::read::Source;
    use rdkafka::message::Headers;

    fn entry() -> Entry {
        Entry {
            position: Position {
                partition: 1,
                offset: 9,
            },
            reason: "unknown_provider_account".into(),
            detail: String::new(),
            stage: "dispatch".into(),
            source: Some(Source {
                topic: "env.orders.created".into(),
                partition: Some(1),
                offset: Some(30),
            }),
            at: None,
            sqlstate: None,
            cut: None,
            key: Some(b"k".to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: vec![
                ("traceparent".into(), Some(b"00-ab".to_vec())),
                (
                    headers::REPLAY_OF.into(),
                    Some(b"env.orders.dlq/0/1".to_vec()),
                ),
            ],
        }
    }

    fn recorded(digest: String) -> Recorded {
        Recorded {
            dlq_partition: 1,
            dlq_offset: 9,
            entry_digest: digest,
            replays: 1,
            last_replayed_at: Utc::now(),
        }
    }

    #[test]
    fn an_entry_replayed_before_is_skipped_unless_asked() {
        let e = entry();
        assert_eq!(skip(&e, "env.", None, false), None);
        let before = recorded(digest(&e));
        assert!(matches!(
            skip(&e, "env.", Some(&before), false),
            Some(Skip::Replayed { times: 1, .. })
        ));
        assert_eq!(skip(&e, "env.", Some(&before), true), None);
        // Another entry at a position recorded before (the topic made anew) is not skipped.
        let other = recorded("0".repeat(64));
        assert_eq!(skip(&e, "env.", Some(&other), false), None);
    }

    #[test]
    fn cut_unsourced_and_foreign_entries_are_never_sent() {
        let mut cut = entry();
        cut.cut = Some("payload".into());
        assert_eq!(
            skip(&cut, "env.", None, true),
            Some(Skip::Cut("payload".into()))
        );
        let mut unsourced = entry();
        unsourced.source = None;
        assert_eq!(skip(&unsourced, "env.", None, true), Some(Skip::NoSource));
        assert_eq!(
            skip(&entry(), "prod.", None, true),
            Some(Skip::OtherEnvironment("env.orders.created".into()))
        );
    }

    #[test]
    fn the_digest_tells_key_from_payload() {
        let mut a = entry();
        let mut b = entry();
        a.key = Some(b"ab".to_vec());
        a.payload = Some(b"c".to_vec());
        b.key = Some(b"a".to_vec());
        b.payload = Some(b"bc".to_vec());
        assert_ne!(digest(&a), digest(&b));
        b.key = None;
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn a_replay_keeps_the_original_headers_and_one_marker() {
        let out = replay_headers(&entry(), "env.orders.dlq/1/9");
        let pairs: Vec<(String, Option<Vec<u8>>)> = out
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("traceparent".to_owned(), Some(b"00-ab".to_vec())),
                (
                    headers::REPLAY_OF.to_owned(),
                    Some(b"env.orders.dlq/1/9".to_vec())
                ),
            ]
        );
    }
}
