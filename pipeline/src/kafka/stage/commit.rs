//! What the loop tells the consumer: the engine's pause changes, the offsets it released
//! (stored, then committed in the background: G2), and the last commit on shutdown.

use super::consumer::StageContext;
use super::run::Topics;
use crate::core::engine::{Engine, PartitionId};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};

/// Applies the engine's pause changes and stores the offsets it released.
pub(super) fn apply(
    consumer: &StreamConsumer<StageContext>,
    topics: &Topics,
    engine: &mut Engine<OwnedMessage>,
) {
    let pauses = engine.take_pauses();
    if !pauses.is_empty() {
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for (id, paused) in pauses {
            let list = if paused { &mut pause } else { &mut resume };
            list.add_partition(&topics.names[id.topic], id.partition);
        }
        for (list, paused) in [(pause, true), (resume, false)] {
            if list.count() == 0 {
                continue;
            }
            let result = if paused {
                consumer.pause(&list)
            } else {
                consumer.resume(&list)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, paused, "changing the pause state failed");
            }
        }
    }
    let commits = engine.take_commits();
    if !commits.is_empty() {
        // One entry per partition, its latest position. A list naming a partition twice
        // is wrong here: rust-rdkafka sets the offset of the first entry it finds, and the
        // second keeps an invalid offset that librdkafka then stores over the real one
        // (measured: groups whose committed offsets stopped short of the end).
        let mut latest: std::collections::BTreeMap<PartitionId, i64> = Default::default();
        for (id, position) in commits {
            latest.insert(id, position);
        }
        let mut tpl = TopicPartitionList::new();
        for (id, position) in latest {
            let _ = tpl.add_partition_offset(
                &topics.names[id.topic],
                id.partition,
                Offset::Offset(position),
            );
        }
        // librdkafka stores what it can and says no only when none of them could be
        // stored (the partitions were revoked meanwhile: their next owner redoes them).
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "offsets not stored (partitions no longer assigned)");
        }
    }
}

/// Commits what was stored, then leaves the group.
pub(super) fn final_commit(consumer: &StreamConsumer<StageContext>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "final commit failed; uncommitted work will be redone")
        }
    }
    consumer.unsubscribe();
}
