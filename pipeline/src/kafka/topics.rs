//! Topic specs (`topics/topics.toml`) and `orderflow topics apply`.
//!
//! The spec is the source of truth for partitions, cleanup policy and retention. Applying
//! creates what is missing and compares what exists: a topic whose partition count,
//! replication factor or any setting named in its spec differs is reported as drift, never
//! silently accepted and never silently changed (shrinking partitions or flipping a
//! compacted topic to delete are decisions for a person).
//!
//! Replication is the environment's, not the file's: one broker on a laptop, three in
//! production. [`Replication`] comes from `ORDERFLOW_TOPIC_REPLICATION` and
//! `ORDERFLOW_TOPIC_MIN_ISR` when set, and otherwise from the cluster applied to: three
//! replicas and `min.insync.replicas` 2 on three brokers or more, one and one on a single
//! broker (a spec file may still pin a topic's `replication_factor`).

use crate::kafka::{Context, KafkaConfig, KafkaSetupError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The spec shipped with this build, used when no other file is named.
pub const BUILTIN_SPEC: &str = include_str!("../../../topics/topics.toml");

/// Stable names of the topics in the spec, for code that produces or consumes them.
pub mod name {
    pub const ORDERS_CREATED: &str = "orders.created";
    pub const ORDERS_DISPATCHED: &str = "orders.dispatched";
    pub const ORDERS_STATE: &str = "orders.state";
    pub const ORDERS_DLQ: &str = "orders.dlq";
    /// Orders the dispatch stage parked until a due time, byte for byte as received.
    pub const ORDERS_DISPATCH_RETRY: &str = "orders.dispatch-retry";
    /// The `orderflow.event` header of status-check messages, whatever their tier.
    pub const STATUS_CHECK_EVENT: &str = "orders.status-check";

    /// The tier topic whose messages wait `label` (see `core::schedule::label`).
    pub fn status_check(label: &str) -> String {
        format!("{STATUS_CHECK_EVENT}.{label}")
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpecs {
    #[serde(rename = "topic")]
    pub topics: Vec<TopicSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic's name without the environment prefix, e.g. `orders.created`.
    pub name: String,
    /// What the topic carries; documentation only.
    #[serde(default)]
    pub description: String,
    pub partitions: i32,
    /// Replicas of each partition; when absent, the environment's ([`Replication`]).
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Topic-level settings, compared on every apply, e.g. `cleanup.policy = "compact"`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// The topic setting that says how many replicas must have a record before a producer
/// with `acks=all` (every orderflow producer) is told it is written.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// How the topics of one environment are replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    /// Replicas of every partition.
    pub factor: i32,
    /// `min.insync.replicas`: below this many in-sync replicas a partition refuses writes
    /// (acks=all) rather than keep a record on fewer copies.
    pub min_insync: i32,
}

impl Replication {
    /// What a cluster of `brokers` brokers gets when nothing is configured: three replicas
    /// and min ISR 2 (one broker may be away and writes go on, a record is on two brokers
    /// before it counts), fewer replicas on a smaller cluster, min ISR 1 below three.
    pub fn for_cluster(brokers: usize) -> Replication {
        let factor = brokers.clamp(1, 3) as i32;
        Replication {
            factor,
            min_insync: if factor >= 3 { 2 } else { 1 },
        }
    }

    /// The configured settings, each defaulting to [`Replication::for_cluster`]'s; refused
    /// when the cluster cannot hold them or they contradict each other.
    pub fn resolve(
        factor: Option<i32>,
        min_insync: Option<i32>,
        brokers: usize,
    ) -> Result<Replication, TopicsError> {
        let auto = Replication::for_cluster(brokers);
        let factor = factor.unwrap_or(auto.factor);
        let min_insync = min_insync.unwrap_or(if factor >= 3 { 2 } else { 1 });
        if factor < 1 || min_insync < 1 {
            return Err(TopicsError::Replication(format!(
                "the replication factor ({factor}) and min.insync.replicas ({min_insync}) must be at least 1"
            )));
        }
        if min_insync > factor {
            return Err(TopicsError::Replication(format!(
                "min.insync.replicas ({min_insync}) is more than the replication factor ({factor}), so no write could ever succeed"
            )));
        }
        if factor as usize > brokers {
            return Err(TopicsError::Replication(format!(
                "the cluster has {brokers} broker(s), too few for {factor} replicas of each partition"
            )));
        }
        Ok(Replication { factor, min_insync })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("cannot read the topic specs at {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the topic specs are invalid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("the Kafka admin request failed: {0}")]
    Admin(KafkaError),
    #[error("the cluster refused to create topic {topic} with {replicas} replicas ({code}); set ORDERFLOW_TOPIC_REPLICATION to what the cluster can hold")]
    ReplicationRefused {
        topic: String,
        replicas: i32,
        code: RDKafkaErrorCode,
    },
    #[error("deleting topics needs a non-empty --topic-prefix (ORDERFLOW_TOPIC_PREFIX), so that it cannot delete an environment's topics without one")]
    NoPrefix,
    #[error("deleting topic {topic} failed: {code}")]
    Delete {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("creating topic {topic} failed: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("the topics' replication is invalid: {0} (ORDERFLOW_TOPIC_REPLICATION, ORDERFLOW_TOPIC_MIN_ISR)")]
    Replication(String),
    #[error("reading the settings of topic {topic} failed: {code}")]
    Describe {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

impl TopicSpecs {
    pub fn parse(text: &str) -> Result<TopicSpecs, TopicsError> {
        let specs: TopicSpecs =
            toml::from_str(text).map_err(|e| TopicsError::Invalid(e.message().to_owned()))?;
        specs.validate()?;
        Ok(specs)
    }

    pub fn load(path: Option<&Path>) -> Result<TopicSpecs, TopicsError> {
        match path {
            None => Self::parse(BUILTIN_SPEC),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TopicsError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse(&text)
            }
        }
    }

    fn validate(&self) -> Result<(), TopicsError> {
        let mut seen = std::collections::HashSet::new();
        for t in &self.topics {
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(TopicsError::Invalid(format!(
                    "{:?} is not a valid topic name",
                    t.name
                )));
            }
            if !seen.insert(&t.name) {
                return Err(TopicsError::Invalid(format!(
                    "topic {} is listed twice",
                    t.name
                )));
            }
            if t.partitions < 1 || t.replication_factor.is_some_and(|r| r < 1) {
                return Err(TopicsError::Invalid(format!(
                    "topic {} needs at least one partition and one replica",
                    t.name
                )));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// These specs plus a tier topic for each of `labels` (`5s`, `30s`, …) not specified
    /// yet, with the settings of the first tier topic in the file: a schedule with other
    /// delays (ORDERFLOW_CHECK_TIERS) gets its topics without editing the file.
    pub fn with_tiers(mut self, labels: &[String]) -> TopicSpecs {
        let Some(template) = self
            .topics
            .iter()
            .find(|t| t.name.starts_with(name::STATUS_CHECK_EVENT))
            .cloned()
        else {
            return self;
        };
        for label in labels {
            let wanted = name::status_check(label);
            if self.get(&wanted).is_none() {
                self.topics.push(TopicSpec {
                    name: wanted,
                    description: format!("Status checks on the {label} tier."),
                    ..template.clone()
                });
            }
        }
        self
    }
}

impl TopicSpecs {
    /// These specs with `replication`: every topic's replication factor (over one a spec
    /// file pinned) and `min.insync.replicas`.
    pub fn with_replication(mut self, replication: Replication) -> TopicSpecs {
        for t in &mut self.topics {
            t.replication_factor = Some(replication.factor);
            t.config.insert(
                MIN_INSYNC_REPLICAS.into(),
                replication.min_insync.to_string(),
            );
        }
        self
    }

    /// These specs with the replication of `default` where a topic names none: the factor
    /// where the spec has no `replication_factor`, `min.insync.replicas` where its config
    /// has none (a pinned factor below the default's minimum gets min ISR 1).
    fn filled(&self, default: Replication) -> TopicSpecs {
        let mut specs = self.clone();
        for t in &mut specs.topics {
            let factor = *t.replication_factor.get_or_insert(default.factor);
            t.config
                .entry(MIN_INSYNC_REPLICAS.into())
                .or_insert_with(|| default.min_insync.min(factor).to_string());
        }
        specs
    }
}

/// One way an existing topic differs from its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub topic: String,
    pub setting: String,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topic {} has {} = {}, the spec says {}",
            self.topic, self.setting, self.actual, self.expected
        )
    }
}

/// What `apply` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    pub drift: Vec<Drift>,
}

impl ApplyReport {
    pub fn is_clean(&self) -> bool {
        self.drift.is_empty()
    }
}

/// Creates the topics of `specs` that are missing and reports drift in the others. A topic
/// whose spec names no replication gets [`Replication::for_cluster`] of the cluster applied
/// to (see [`TopicSpecs::with_replication`] for a configured one).
pub async fn apply(kafka: &KafkaConfig, specs: &TopicSpecs) -> Result<ApplyReport, TopicsError> {
    kafka.check_reachable()?;
    let admin: AdminClient<Context> = kafka
        .client_config()
        .create_with_context(Context::default())
        .map_err(|e| TopicsError::Setup(KafkaSetupError::Client(e)))?;
    let timeout = kafka.connect_timeout();
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(TopicsError::Admin)?;
    let brokers = metadata.brokers().len();
    let specs = &specs.filled(Replication::for_cluster(brokers));
    if let Some(t) = specs
        .topics
        .iter()
        .find(|t| t.replication_factor.unwrap_or(1) as usize > brokers)
    {
        return Err(TopicsError::Replication(format!(
            "topic {} is to have {} replicas, but the cluster has {brokers} broker(s)",
            t.name,
            t.replication_factor.unwrap_or(1)
        )));
    }
    let existing: BTreeMap<String, Layout> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), Layout::of(t)))
        .collect();

    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let mut report = ApplyReport::default();
    let mut missing = Vec::new();
    for spec in &specs.topics {
        let full = kafka.topic(&spec.name);
        match existing.get(&full) {
            None => missing.push((full, spec)),
            Some(layout) => compare(&admin, &opts, &full, layout, spec, &mut report).await?,
        }
    }

    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|(full, spec)| {
            spec.config.iter().fold(
                NewTopic::new(
                    full,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor.unwrap_or(1)),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    if !new_topics.is_empty() {
        for result in admin
            .create_topics(&new_topics, &opts)
            .await
            .map_err(TopicsError::Admin)?
        {
            match result {
                Ok(topic) => report.created.push(topic),
                // The broker's metadata lagged, or another `apply` created it meanwhile.
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let spec = missing
                        .iter()
                        .find(|(full, _)| *full == topic)
                        .map(|(_, spec)| *spec)
                        .expect("only missing topics are created");
                    let layout = layout_of(&admin, &topic, timeout).await?;
                    compare(&admin, &opts, &topic, &layout, spec, &mut report).await?;
                }
                Err((topic, code @ RDKafkaErrorCode::InvalidReplicationFactor)) => {
                    let replicas = missing
                        .iter()
                        .find(|(full, _)| *full == topic)
                        .and_then(|(_, spec)| spec.replication_factor)
                        .unwrap_or(1);
                    return Err(TopicsError::ReplicationRefused {
                        topic,
                        replicas,
                        code,
                    });
                }
                Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
            }
        }
    }
    Ok(report)
}

/// What the cluster's metadata says of an existing topic: its partitions and how many
/// replicas each has (the fewest and the most, which differ only after a partial
/// reassignment).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    partitions: i32,
    replicas: (i32, i32),
}

impl Layout {
    fn of(t: &rdkafka::metadata::MetadataTopic) -> Layout {
        let counts = t.partitions().iter().map(|p| p.replicas().len() as i32);
        Layout {
            partitions: t.partitions().len() as i32,
            replicas: (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0)),
        }
    }
}

/// The drift of a topic's layout from its spec: partitions, then the replication factor.
fn layout_drift(topic: &str, layout: &Layout, spec: &TopicSpec) -> Vec<Drift> {
    let mut drift = Vec::new();
    if layout.partitions != spec.partitions {
        drift.push(Drift {
            topic: topic.to_owned(),
            setting: "partitions".into(),
            expected: spec.partitions.to_string(),
            actual: layout.partitions.to_string(),
        });
    }
    let expected = spec.replication_factor.unwrap_or(1);
    let (fewest, most) = layout.replicas;
    if (fewest, most) != (expected, expected) {
        drift.push(Drift {
            topic: topic.to_owned(),
            setting: "replication factor".into(),
            expected: expected.to_string(),
            actual: if fewest == most {
                most.to_string()
            } else {
                format!("{fewest} to {most}")
            },
        });
    }
    drift
}

/// How many brokers the cluster's metadata lists.
pub async fn broker_count(kafka: &KafkaConfig) -> Result<usize, TopicsError> {
    kafka.check_reachable()?;
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let probe: rdkafka::consumer::BaseConsumer<Context> = kafka
            .client_config()
            .create_with_context(Context::default())
            .map_err(|e| TopicsError::Setup(KafkaSetupError::Client(e)))?;
        let metadata =
            rdkafka::consumer::Consumer::fetch_metadata(&probe, None, kafka.connect_timeout())
                .map_err(TopicsError::Admin)?;
        Ok(metadata.brokers().len())
    })
    .await
    .expect("the metadata request does not panic")
}

/// Adds the topic's drift to the report, or lists it as unchanged.
async fn compare(
    admin: &AdminClient<Context>,
    opts: &AdminOptions,
    topic: &str,
    layout: &Layout,
    spec: &TopicSpec,
    report: &mut ApplyReport,
) -> Result<(), TopicsError> {
    let before = report.drift.len();
    report.drift.extend(layout_drift(topic, layout, spec));
    report
        .drift
        .extend(config_drift(admin, opts, topic, spec).await?);
    if report.drift.len() == before {
        report.unchanged.push(topic.to_owned());
    }
    Ok(())
}

/// The layout of one existing topic, waiting briefly for metadata to catch up.
async fn layout_of(
    admin: &AdminClient<Context>,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<Layout, TopicsError> {
    for _ in 0..50 {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), timeout)
            .map_err(TopicsError::Admin)?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if let Some(t) = found {
            return Ok(Layout::of(t));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(TopicsError::Describe {
        topic: topic.to_owned(),
        code: RDKafkaErrorCode::UnknownTopicOrPartition,
    })
}

async fn config_drift(
    admin: &AdminClient<Context>,
    opts: &AdminOptions,
    topic: &str,
    spec: &TopicSpec,
) -> Result<Vec<Drift>, TopicsError> {
    if spec.config.is_empty() {
        return Ok(Vec::new());
    }
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], opts)
        .await
        .map_err(TopicsError::Admin)?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| TopicsError::Describe {
            topic: topic.to_owned(),
            code: RDKafkaErrorCode::UnknownTopic,
        })?
        .map_err(|code| TopicsError::Describe {
            topic: topic.to_owned(),
            code,
        })?;
    let actual: BTreeMap<&str, &str> = resource
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
        .collect();
    Ok(spec
        .config
        .iter()
        .filter_map(|(key, expected)| {
            let actual = actual.get(key.as_str()).copied().unwrap_or("(not set)");
            (actual != expected).then(|| Drift {
                topic: topic.to_owned(),
                setting: key.clone(),
                expected: expected.clone(),
                actual: actual.to_owned(),
            })
        })
        .collect())
}

/// Deletes every topic whose name starts with the configured prefix (a benchmark's or a
/// demo's scratch environment); refuses without a prefix. Returns the names deleted.
pub async fn delete_prefixed(kafka: &KafkaConfig) -> Result<Vec<String>, TopicsError> {
    if kafka.topic_prefix.is_empty() {
        return Err(TopicsError::NoPrefix);
    }
    kafka.check_reachable()?;
    let admin: AdminClient<Context> = kafka
        .client_config()
        .create_with_context(Context::default())
        .map_err(|e| TopicsError::Setup(KafkaSetupError::Client(e)))?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, kafka.connect_timeout())
        .map_err(TopicsError::Admin)?;
    let doomed: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with(&kafka.topic_prefix))
        .collect();
    if doomed.is_empty() {
        return Ok(doomed);
    }
    let names: Vec<&str> = doomed.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(kafka.connect_timeout()));
    for result in admin
        .delete_topics(&names, &options)
        .await
        .map_err(TopicsError::Admin)?
    {
        if let Err((topic, code)) = result {
            if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(TopicsError::Delete { topic, code });
            }
        }
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_not_in_the_file_get_topics_like_the_first_tier() {
        let specs = TopicSpecs::load(None).unwrap();
        let before = specs.topics.len();
        let template = specs.get(&name::status_check("30s")).unwrap().clone();
        let specs = specs.with_tiers(&["2s".into(), "30s".into(), "5s".into()]);
        assert_eq!(specs.topics.len(), before + 2, "30s is in the file already");
        let added = specs.get(&name::status_check("2s")).unwrap();
        assert_eq!(
            (added.partitions, &added.config),
            (template.partitions, &template.config)
        );
        assert!(specs.get(&name::status_check("5s")).is_some());
    }

    #[test]
    fn the_builtin_spec_has_every_topic_of_the_lifecycle() {
        let specs = TopicSpecs::parse(BUILTIN_SPEC).unwrap();
        for name in [
            name::ORDERS_CREATED,
            name::ORDERS_DISPATCHED,
            name::ORDERS_STATE,
            name::ORDERS_DLQ,
            name::ORDERS_DISPATCH_RETRY,
        ] {
            assert!(specs.get(name).is_some(), "{name}");
        }
        let tiers = specs
            .topics
            .iter()
            .filter(|t| t.name.starts_with("orders.status-check."))
            .count();
        assert_eq!(tiers, 6);
        let state = specs.get(name::ORDERS_STATE).unwrap();
        assert_eq!(state.config["cleanup.policy"], "compact");
    }

    #[test]
    fn replication_follows_the_cluster_unless_configured() {
        let one = Replication::for_cluster(1);
        assert_eq!((one.factor, one.min_insync), (1, 1));
        let two = Replication::for_cluster(2);
        assert_eq!((two.factor, two.min_insync), (2, 1));
        for brokers in [3, 5, 12] {
            let r = Replication::for_cluster(brokers);
            assert_eq!((r.factor, r.min_insync), (3, 2), "{brokers} brokers");
        }
        let set = Replication::resolve(Some(3), Some(2), 3).unwrap();
        assert_eq!((set.factor, set.min_insync), (3, 2));
        // A factor set alone gets its own min ISR, not the cluster's.
        let alone = Replication::resolve(Some(2), None, 3).unwrap();
        assert_eq!((alone.factor, alone.min_insync), (2, 1));
        let too_many = Replication::resolve(Some(3), None, 1)
            .unwrap_err()
            .to_string();
        assert!(
            too_many.contains("1 broker(s), too few for 3 replicas"),
            "{too_many}"
        );
        let contradiction = Replication::resolve(Some(2), Some(3), 3)
            .unwrap_err()
            .to_string();
        assert!(
            contradiction.contains("no write could ever succeed"),
            "{contradiction}"
        );
        assert!(Replication::resolve(Some(0), None, 3).is_err());
    }

    #[test]
    fn replication_is_filled_where_the_spec_names_none_and_set_everywhere_when_configured() {
        let specs = TopicSpecs::parse(
            "[[topic]]\nname='a'\npartitions=1\n[[topic]]\nname='b'\npartitions=1\nreplication_factor=1\n",
        )
        .unwrap();
        let filled = specs.filled(Replication::for_cluster(3));
        let a = filled.get("a").unwrap();
        assert_eq!(a.replication_factor, Some(3));
        assert_eq!(a.config[MIN_INSYNC_REPLICAS], "2");
        // A pinned factor stays, with a min ISR it can meet.
        let b = filled.get("b").unwrap();
        assert_eq!(b.replication_factor, Some(1));
        assert_eq!(b.config[MIN_INSYNC_REPLICAS], "1");
        let set = specs.with_replication(Replication {
            factor: 3,
            min_insync: 2,
        });
        assert!(set
            .topics
            .iter()
            .all(|t| t.replication_factor == Some(3) && t.config[MIN_INSYNC_REPLICAS] == "2"));
    }

    #[test]
    fn a_topic_replicated_otherwise_than_its_spec_is_drift() {
        let spec = TopicSpec {
            name: "orders.state".into(),
            description: String::new(),
            partitions: 3,
            replication_factor: Some(3),
            config: BTreeMap::new(),
        };
        let same = Layout {
            partitions: 3,
            replicas: (3, 3),
        };
        assert!(layout_drift("t", &same, &spec).is_empty());
        let single = Layout {
            partitions: 3,
            replicas: (1, 1),
        };
        let drift = layout_drift("t", &single, &spec);
        assert_eq!(drift.len(), 1);
        assert_eq!(
            drift[0].to_string(),
            "topic t has replication factor = 1, the spec says 3"
        );
        let uneven = Layout {
            partitions: 4,
            replicas: (2, 3),
        };
        let drift = layout_drift("t", &uneven, &spec);
        assert_eq!(drift.len(), 2);
        assert_eq!(drift[1].actual, "2 to 3");
    }

    #[test]
    fn invalid_specs_say_why() {
        let dup = "[[topic]]\nname='a'\npartitions=1\n[[topic]]\nname='a'\npartitions=1\n";
        assert!(TopicSpecs::parse(dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let zero = "[[topic]]\nname='a'\npartitions=0\n";
        assert!(TopicSpecs::parse(zero)
            .unwrap_err()
            .to_string()
            .contains("partition"));
        let unknown = "[[topic]]\nname='a'\npartitions=1\nretention='1d'\n";
        assert!(TopicSpecs::parse(unknown)
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
    }
}
