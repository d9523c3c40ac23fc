//! The DLQ's read side: a bounded scan of `orders.dlq` with a [`Filter`], for
//! `orderflow dlq list/show/replay` and for anything that wants counts per reason.
//!
//! A scan reads each partition from its first record to its end *as of the start of the
//! scan* (the high watermarks read first), so it ends even while stages keep dead-lettering;
//! it gives up with [`ReadError::Timeout`] after `within` rather than wait forever. It reads
//! without a consumer group (partitions assigned, nothing committed): any number of scans
//! may run next to the stages and to each other.

use crate::core::event::InvalidKind;
use crate::kafka::topics::name;
use crate::kafka::{headers, Context, KafkaConfig, KafkaSetupError};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a scan may take by default: the DLQ is small (a few records a day when all is
/// well), and 30 days of it is read in seconds.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(120);

/// The `orderflow.dlq.*` headers: everything else on an entry is the original record's.
const DLQ_HEADER_PREFIX: &str = "orderflow.dlq.";

/// Where an entry sits in the DLQ topic; written `PARTITION/OFFSET`, e.g. `3/17`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.partition, self.offset)
    }
}

/// A text that is not `PARTITION/OFFSET`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a DLQ position: give PARTITION/OFFSET as `dlq list` prints it, e.g. 3/17")]
pub struct BadPosition(pub String);

impl std::str::FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPosition(s.to_owned());
        let (partition, offset) = s.trim().split_once('/').ok_or_else(bad)?;
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        let offset: i64 = offset.parse().map_err(|_| bad())?;
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(Position { partition, offset })
    }
}

/// Where the original record was, as the entry's headers say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The full topic name, prefix included.
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        write!(
            f,
            "{} {}/{}",
            self.topic,
            part(self.partition.map(|p| p.to_string())),
            part(self.offset.map(|o| o.to_string()))
        )
    }
}

/// One DLQ entry: why it is there, and the original record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub position: Position,
    /// `orderflow.dlq.reason` (an [`InvalidKind`] word; kept as text so that a reason of
    /// another build still shows).
    pub reason: String,
    pub detail: String,
    pub stage: String,
    pub source: Option<Source>,
    /// When it was dead-lettered: `orderflow.dlq.at`, else the record's timestamp.
    pub at: Option<DateTime<Utc>>,
    pub sqlstate: Option<String>,
    /// What was cut to fit the broker (`payload`, `key`, `headers`), if anything: such a
    /// copy is not the original record and is never replayed.
    pub cut: Option<String>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The original record's headers in their order, the `orderflow.dlq.*` ones left out.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Entry {
    fn from_message(m: &BorrowedMessage<'_>) -> Entry {
        let mut ours: HashMap<&str, String> = HashMap::new();
        let mut original = Vec::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                if h.key.starts_with(DLQ_HEADER_PREFIX) {
                    let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    ours.entry(h.key).or_insert_with(|| value.into_owned());
                } else {
                    original.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
                }
            }
        }
        let mut take = |name: &str| ours.remove(name);
        let source = take(headers::DLQ_SOURCE_TOPIC).map(|topic| Source {
            topic,
            partition: take(headers::DLQ_SOURCE_PARTITION).and_then(|p| p.parse().ok()),
            offset: take(headers::DLQ_SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        });
        let at = take(headers::DLQ_AT)
            .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
            .map(|at| at.with_timezone(&Utc))
            .or_else(|| {
                m.timestamp()
                    .to_millis()
                    .and_then(DateTime::from_timestamp_millis)
            });
        Entry {
            position: Position {
                partition: m.partition(),
                offset: m.offset(),
            },
            reason: take(headers::DLQ_REASON).unwrap_or_default(),
            detail: take(headers::DLQ_DETAIL).unwrap_or_default(),
            stage: take(headers::DLQ_STAGE).unwrap_or_default(),
            source,
            at,
            sqlstate: take(headers::DLQ_SQLSTATE),
            cut: take(headers::DLQ_CUT),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: original,
        }
    }

    /// The order the entry is about: its key when that is an order id (every orderflow
    /// topic is keyed by order id), else the payload's `order_id`.
    pub fn order_id(&self) -> Option<Uuid> {
        let from_key = self
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.parse().ok());
        from_key.or_else(|| {
            #[derive(serde::Deserialize)]
            struct Id {
                order_id: Uuid,
            }
            let payload = self.payload.as_deref()?;
            serde_json::from_slice::<Id>(payload)
                .ok()
                .map(|p| p.order_id)
        })
    }

    /// The value of the original header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Which entries a scan keeps; the default keeps all. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Any of these reasons; empty: any reason.
    pub reasons: Vec<InvalidKind>,
    /// The full name of the topic the original record was on (prefix included).
    pub source_topic: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    pub order_id: Option<Uuid>,
}

impl Filter {
    pub fn matches(&self, entry: &Entry) -> bool {
        let reason =
            self.reasons.is_empty() || self.reasons.iter().any(|r| r.as_str() == entry.reason);
        let topic = self.source_topic.as_ref().is_none_or(|topic| {
            entry
                .source
                .as_ref()
                .is_some_and(|source| source.topic == *topic)
        });
        let since = self
            .since
            .is_none_or(|since| entry.at.is_some_and(|at| at >= since));
        let until = self
            .until
            .is_none_or(|until| entry.at.is_some_and(|at| at < until));
        let order = self.order_id.is_none_or(|id| entry.order_id() == Some(id));
        reason && topic && since && until && order
    }
}

/// Entries per reason, by reason.
pub type ReasonCounts = BTreeMap<String, u64>;

/// Why the DLQ could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("the Kafka cluster at {brokers} has no topic {topic}; create the topics with `orderflow topics apply` (with the same --topic-prefix)")]
    NoTopic { brokers: String, topic: String },
    #[error("reading {topic} failed: {source}")]
    Kafka { topic: String, source: KafkaError },
    #[error("reading {topic} did not reach the end of partitions {left} within {within:?}{}", .last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout {
        topic: String,
        left: String,
        within: Duration,
        /// The last error the client reported meanwhile, as text.
        last: Option<String>,
    },
}

/// Every entry `filter` keeps, in partition then offset order.
pub async fn entries(
    kafka: &KafkaConfig,
    filter: &Filter,
    within: Duration,
) -> Result<Vec<Entry>, ReadError> {
    let mut all = fold(kafka, filter, within, Vec::new(), |all, entry| {
        all.push(entry)
    })
    .await?;
    all.sort_by_key(|e| e.position);
    Ok(all)
}

/// How many entries `filter` keeps, per reason: what a status page shows.
pub async fn counts_per_reason(
    kafka: &KafkaConfig,
    filter: &Filter,
    within: Duration,
) -> Result<ReasonCounts, ReadError> {
    fold(
        kafka,
        filter,
        within,
        ReasonCounts::new(),
        |counts, entry| *counts.entry(entry.reason).or_default() += 1,
    )
    .await
}

/// Folds `step` over every entry `filter` keeps, partitions read side by side (so in
/// offset order within a partition only), on a blocking thread.
pub async fn fold<T, F>(
    kafka: &KafkaConfig,
    filter: &Filter,
    within: Duration,
    init: T,
    step: F,
) -> Result<T, ReadError>
where
    T: Send + 'static,
    F: FnMut(&mut T, Entry) + Send + 'static,
{
    let (kafka, filter) = (kafka.clone(), filter.clone());
    tokio::task::spawn_blocking(move || scan(&kafka, &filter, within, init, step))
        .await
        .expect("a DLQ scan does not panic")
}

/// The entry at `position`, if the DLQ holds one there.
pub async fn one(
    kafka: &KafkaConfig,
    position: Position,
    within: Duration,
) -> Result<Option<Entry>, ReadError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let reader = Reader::open(&kafka)?;
        let Some(&(low, high)) = reader.marks.get(&position.partition) else {
            return Ok(None);
        };
        if position.offset < low || position.offset >= high {
            return Ok(None);
        }
        let mut found = None;
        let marks = HashMap::from([(position.partition, (position.offset, position.offset + 1))]);
        reader.read(&marks, within, |entry| found = Some(entry))?;
        Ok(found)
    })
    .await
    .expect("a DLQ read does not panic")
}

fn scan<T, F>(
    kafka: &KafkaConfig,
    filter: &Filter,
    within: Duration,
    mut acc: T,
    mut step: F,
) -> Result<T, ReadError>
where
    F: FnMut(&mut T, Entry),
{
    let reader = Reader::open(kafka)?;
    reader.read(&reader.marks, within, |entry| {
        if filter.matches(&entry) {
            step(&mut acc, entry)
        }
    })?;
    Ok(acc)
}

/// A consumer on the DLQ topic and each partition's (low, high) watermarks when opened.
struct Reader {
    consumer: BaseConsumer<Context>,
    topic: String,
    marks: HashMap<i32, (i64, i64)>,
}

impl Reader {
    fn open(kafka: &KafkaConfig) -> Result<Reader, ReadError> {
        kafka.properties().map_err(KafkaSetupError::from)?;
        let topic = kafka.topic(name::ORDERS_DLQ);
        let consumer: BaseConsumer<Context> = kafka
            .client_config()
            // Required by the client, never joined: partitions are assigned, nothing is
            // committed.
            .set("group.id", "orderflow-dlq-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Context::default())
            .map_err(KafkaSetupError::Client)?;
        let waited = kafka.connect_timeout();
        let kafka_error = |source| ReadError::Kafka {
            topic: topic.clone(),
            source,
        };
        let metadata = consumer.fetch_metadata(Some(&topic), waited).map_err(|e| {
            ReadError::Setup(KafkaSetupError::Unreachable {
                brokers: kafka.brokers.clone(),
                waited,
                reason: e.to_string(),
            })
        })?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(ReadError::NoTopic {
                brokers: kafka.brokers.clone(),
                topic,
            });
        }
        let mut marks = HashMap::new();
        for p in partitions {
            let mark = consumer
                .fetch_watermarks(&topic, p, waited)
                .map_err(kafka_error)?;
            marks.insert(p, mark);
        }
        Ok(Reader {
            consumer,
            topic,
            marks,
        })
    }

    /// Reads each partition of `marks` from its low to just before its high mark, handing
    /// each entry to `visit`; fails if that takes longer than `within`.
    fn read(
        &self,
        marks: &HashMap<i32, (i64, i64)>,
        within: Duration,
        mut visit: impl FnMut(Entry),
    ) -> Result<(), ReadError> {
        let mut left: BTreeMap<i32, i64> = marks
            .iter()
            .filter(|(_, (low, high))| high > low)
            .map(|(p, (_, high))| (*p, *high))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        let kafka_error = |source| ReadError::Kafka {
            topic: self.topic.clone(),
            source,
        };
        let mut assignment = TopicPartitionList::new();
        for (p, (low, _)) in marks.iter().filter(|(p, _)| left.contains_key(p)) {
            assignment
                .add_partition_offset(&self.topic, *p, Offset::Offset(*low))
                .map_err(kafka_error)?;
        }
        self.consumer.assign(&assignment).map_err(kafka_error)?;
        let give_up = Instant::now() + within;
        let mut last = None;
        while !left.is_empty() {
            if Instant::now() >= give_up {
                return Err(ReadError::Timeout {
                    topic: self.topic.clone(),
                    left: left
                        .keys()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    within,
                    last,
                });
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    left.remove(&p);
                }
                // librdkafka retries by itself; the deadline bounds how long.
                Some(Err(e)) => last = Some(e.to_string()),
                Some(Ok(m)) => {
                    let Some(&high) = left.get(&m.partition()) else {
                        continue;
                    };
                    if m.offset() < high {
                        visit(Entry::from_message(&m));
                    }
                    if m.offset() >= high - 1 {
                        left.remove(&m.partition());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let id = Uuid::new_v4();
        Entry {
            position: Position {
                partition: 2,
                offset: 7,
            },
            reason: "unknown_provider_account".into(),
            detail: "provider_account \"x\" is not configured".into(),
            stage: "dispatch".into(),
            source: Some(Source {
                topic: "p.orders.created".into(),
                partition: Some(2),
                offset: Some(40),
            }),
            at: Some(DateTime::from_timestamp(1_800_000_000, 0).unwrap()),
            sqlstate: None,
            cut: None,
            key: Some(id.to_string().into_bytes()),
            payload: Some(format!("{{\"order_id\":\"{id}\"}}").into_bytes()),
            headers: vec![("traceparent".into(), Some(b"00-ab".to_vec()))],
        }
    }

    #[test]
    fn positions_read_back_and_bad_ones_say_the_format() {
        let p: Position = "3/17".parse().unwrap();
        assert_eq!((p.partition, p.offset), (3, 17));
        assert_eq!(p.to_string(), "3/17");
        for bad in ["3", "a/1", "1/-2", "-1/0", "1/2/3", ""] {
            let e = bad.parse::<Position>().unwrap_err().to_string();
            assert!(e.contains("PARTITION/OFFSET"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_order_id_comes_from_the_key_or_else_the_payload() {
        let mut e = entry();
        let id = e.order_id().expect("from the key");
        e.key = None;
        assert_eq!(e.order_id(), Some(id), "from the payload");
        e.payload = Some(b"not json".to_vec());
        assert_eq!(e.order_id(), None);
    }

    #[test]
    fn every_condition_of_a_filter_must_hold() {
        let e = entry();
        let at = e.at.unwrap();
        assert!(Filter::default().matches(&e));
        let reason = |kind| Filter {
            reasons: vec![InvalidKind::InvalidField, kind],
            ..Filter::default()
        };
        assert!(reason(InvalidKind::UnknownProviderAccount).matches(&e));
        assert!(!reason(InvalidKind::InvalidProduct).matches(&e));
        let topic = |t: &str| Filter {
            source_topic: Some(t.into()),
            ..Filter::default()
        };
        assert!(topic("p.orders.created").matches(&e));
        assert!(!topic("p.orders.state").matches(&e));
        let window = |since, until| Filter {
            since,
            until,
            ..Filter::default()
        };
        let second = chrono::Duration::seconds(1);
        assert!(window(Some(at), Some(at + second)).matches(&e));
        assert!(!window(Some(at + second), None).matches(&e));
        assert!(!window(None, Some(at)).matches(&e), "until is exclusive");
        let order = |id| Filter {
            order_id: Some(id),
            ..Filter::default()
        };
        assert!(order(e.order_id().unwrap()).matches(&e));
        assert!(!order(Uuid::new_v4()).matches(&e));
        let mut undated = e.clone();
        undated.at = None;
        assert!(!window(Some(at), None).matches(&undated));
        assert!(Filter::default().matches(&undated));
    }
}
