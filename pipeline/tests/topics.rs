//! `orderflow topics apply` against the real broker.

mod common;

use orderflow::kafka::topics::{self, TopicSpecs};

#[tokio::test]
async fn applying_twice_changes_nothing_the_second_time() {
    let kafka = common::kafka("apply");
    let specs = TopicSpecs::load(None).unwrap();

    let first = topics::apply(&kafka, &specs).await.unwrap();
    assert_eq!(first.created.len(), specs.topics.len(), "{first:?}");
    assert!(first.is_clean(), "{first:?}");

    let second = topics::apply(&kafka, &specs).await.unwrap();
    assert!(second.created.is_empty(), "{second:?}");
    assert!(second.is_clean(), "{second:?}");
    assert_eq!(second.unchanged.len(), specs.topics.len());
    assert!(second
        .unchanged
        .iter()
        .all(|t| t.starts_with(&kafka.topic_prefix)));
}

#[tokio::test]
async fn a_topic_that_differs_from_its_spec_is_reported() {
    let kafka = common::kafka("drift");
    let mut specs = TopicSpecs::load(None).unwrap();
    specs.topics.retain(|t| t.name == "orders.state");
    topics::apply(&kafka, &specs).await.unwrap();

    // The same topic, now expected with more partitions and another policy.
    let mut changed = specs.clone();
    changed.topics[0].partitions += 2;
    changed.topics[0]
        .config
        .insert("cleanup.policy".into(), "delete".into());
    let report = topics::apply(&kafka, &changed).await.unwrap();

    assert!(report.created.is_empty());
    let settings: Vec<&str> = report.drift.iter().map(|d| d.setting.as_str()).collect();
    assert_eq!(settings, ["partitions", "cleanup.policy"], "{report:?}");
    assert_eq!(report.drift[1].actual, "compact");
    assert!(report.drift[1].to_string().contains("the spec says delete"));
}

#[tokio::test]
async fn the_compacted_state_topic_is_created_compacted() {
    let kafka = common::kafka_with_topics("compact").await;
    let mut only_state = common::test_specs();
    only_state.topics.retain(|t| t.name == "orders.state");
    only_state.topics[0]
        .config
        .insert("cleanup.policy".into(), "compact".into());
    let report = topics::apply(&kafka, &only_state).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}
