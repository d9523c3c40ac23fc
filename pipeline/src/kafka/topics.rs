//! Topic specs (`topics/topics.toml`) and `orderflow topics apply`.
//!
//! The spec is the source of truth for partitions, cleanup policy and retention. Applying
//! creates what is missing and compares what exists: a topic whose partition count or any
//! setting named in its spec differs is reported as drift, never silently accepted and
//! never silently changed (shrinking partitions or flipping a compacted topic to delete
//! are decisions for a person).

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
    #[serde(default = "one")]
    pub replication_factor: i32,
    /// Topic-level settings, compared on every apply, e.g. `cleanup.policy = "compact"`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn one() -> i32 {
    1
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
            if t.partitions < 1 || t.replication_factor < 1 {
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

/// Creates the topics of `specs` that are missing and reports drift in the others.
pub async fn apply(kafka: &KafkaConfig, specs: &TopicSpecs) -> Result<ApplyReport, TopicsError> {
    kafka.check_reachable()?;
    let admin: AdminClient<Context> = kafka
        .client_config()
        .create_with_context(Context)
        .map_err(|e| TopicsError::Setup(KafkaSetupError::Client(e)))?;
    let timeout = kafka.connect_timeout();
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(TopicsError::Admin)?;
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect();

    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let mut report = ApplyReport::default();
    let mut missing = Vec::new();
    for spec in &specs.topics {
        let full = kafka.topic(&spec.name);
        match existing.get(&full) {
            None => missing.push((full, spec)),
            Some(&partitions) => {
                compare(&admin, &opts, &full, partitions, spec, &mut report).await?
            }
        }
    }

    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|(full, spec)| {
            spec.config.iter().fold(
                NewTopic::new(
                    full,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
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
                    let partitions = partitions_of(&admin, &topic, timeout).await?;
                    compare(&admin, &opts, &topic, partitions, spec, &mut report).await?;
                }
                Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
            }
        }
    }
    Ok(report)
}

/// Adds the topic's drift to the report, or lists it as unchanged.
async fn compare(
    admin: &AdminClient<Context>,
    opts: &AdminOptions,
    topic: &str,
    partitions: i32,
    spec: &TopicSpec,
    report: &mut ApplyReport,
) -> Result<(), TopicsError> {
    let before = report.drift.len();
    if partitions != spec.partitions {
        report.drift.push(Drift {
            topic: topic.to_owned(),
            setting: "partitions".into(),
            expected: spec.partitions.to_string(),
            actual: partitions.to_string(),
        });
    }
    report
        .drift
        .extend(config_drift(admin, opts, topic, spec).await?);
    if report.drift.len() == before {
        report.unchanged.push(topic.to_owned());
    }
    Ok(())
}

/// The partition count of one existing topic, waiting briefly for metadata to catch up.
async fn partitions_of(
    admin: &AdminClient<Context>,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<i32, TopicsError> {
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
            return Ok(t.partitions().len() as i32);
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
        .create_with_context(Context)
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
