//! Unit and property tests of the engine: batches, watermarks, delays, pauses and
//! rebalances, driven by messages, completions and clock ticks.

use super::*;
use proptest::prelude::*;

const T0: usize = 0;
const T1: usize = 1;

fn p(topic: usize, partition: i32) -> PartitionId {
    PartitionId { topic, partition }
}

fn settings() -> EngineConfig {
    EngineConfig {
        batch_max: 3,
        batch_linger_ms: 5,
        max_in_flight: 4,
        // Three partitions owned in most tests: 4 messages or 1000 bytes each.
        buffer_messages: 12,
        buffer_bytes: 3000,
        queue_min: 0,
    }
}

fn engine() -> Engine<i64> {
    let mut e = Engine::new(settings(), 2);
    for id in [p(T0, 0), p(T0, 1), p(T1, 0)] {
        e.assign(id);
    }
    assert_eq!(
        e.take_pauses(),
        vec![(p(T0, 0), false), (p(T0, 1), false), (p(T1, 0), false)]
    );
    e
}

fn offsets(batch: &[Handout<i64>]) -> Vec<i64> {
    batch.iter().map(|h| h.message).collect()
}

#[test]
fn a_batch_goes_out_when_full_or_after_the_linger() {
    let mut e = engine();
    e.fetched(p(T0, 0), 0, 10, None, 0, 1000);
    e.fetched(p(T0, 0), 1, 10, None, 1, 1000);
    assert!(e.batch(1000).is_none(), "neither full nor lingered");
    assert_eq!(e.next_linger(), Some(1005));
    assert_eq!(offsets(&e.batch(1005).unwrap()), vec![0, 1]);
    for o in 2..6 {
        e.fetched(p(T0, 0), o, 10, None, o, 1010);
    }
    // The in-flight bound (4) lets two out: no waiting for the linger.
    assert_eq!(offsets(&e.batch(1010).unwrap()), vec![2, 3]);
    // The in-flight bound (4) left room for two only.
    assert!(e.batch(2000).is_none());
}

#[test]
fn under_a_backlog_a_batch_waits_for_room_for_half_the_bound() {
    let mut e = Engine::new(
        EngineConfig {
            batch_max: 8,
            max_in_flight: 8,
            ..settings()
        },
        1,
    );
    e.assign(p(T0, 0));
    for o in 0..40 {
        e.fetched(p(T0, 0), o, 10, None, o, 0);
    }
    let first = e.batch(0).unwrap();
    assert_eq!(first.len(), 8);
    // One slot free, the linger long past: no batch of one.
    e.done(first[0].token, Outcome::Durable);
    assert!(e.batch(1000).is_none());
    assert_eq!(e.next_linger(), None, "nothing to wake up for");
    for h in &first[1..4] {
        e.done(h.token, Outcome::Durable);
    }
    assert_eq!(offsets(&e.batch(1000).unwrap()), vec![8, 9, 10, 11]);
    // A short queue goes out once it lingered, if it all fits.
    let mut e = Engine::new(
        EngineConfig {
            batch_max: 8,
            max_in_flight: 8,
            ..settings()
        },
        1,
    );
    e.assign(p(T0, 0));
    for o in 0..7 {
        e.fetched(p(T0, 0), o, 10, None, o, 0);
    }
    let seven = e.batch(10).unwrap();
    e.fetched(p(T0, 0), 7, 10, None, 7, 10);
    assert!(e.batch(10).is_none());
    assert_eq!(offsets(&e.batch(15).unwrap()), vec![7]);
    drop(seven);
}

#[test]
fn offsets_are_stored_only_up_to_the_first_unfinished_message() {
    let mut e = engine();
    for o in 10..13 {
        e.fetched(p(T0, 0), o, 10, None, o, 0);
    }
    let b = e.batch(0).unwrap();
    e.done(b[2].token, Outcome::Durable);
    e.done(b[1].token, Outcome::Durable);
    assert_eq!(e.take_commits(), vec![]);
    e.done(b[0].token, Outcome::Durable);
    assert_eq!(e.take_commits(), vec![(p(T0, 0), 13)]);
}

#[test]
fn an_interrupted_message_holds_its_partition_back() {
    let mut e = engine();
    for o in 0..2 {
        e.fetched(p(T0, 0), o, 10, None, o, 0);
    }
    let b = e.batch(10).unwrap();
    e.done(b[0].token, Outcome::Interrupted);
    e.done(b[1].token, Outcome::Durable);
    assert_eq!(e.take_commits(), vec![]);
    assert_eq!(e.in_flight(), 0);
}

#[test]
fn work_of_an_earlier_ownership_moves_no_offset() {
    let mut e = engine();
    e.fetched(p(T0, 0), 0, 10, None, 0, 0);
    let old = e.batch(10).unwrap();
    e.revoke(p(T0, 0));
    e.assign(p(T0, 0));
    e.take_pauses();
    e.fetched(p(T0, 0), 0, 10, None, 0, 20);
    let new = e.batch(30).unwrap();
    e.done(old[0].token, Outcome::Durable);
    assert_eq!(e.take_commits(), vec![]);
    e.done(new[0].token, Outcome::Durable);
    assert_eq!(e.take_commits(), vec![(p(T0, 0), 1)]);
}

#[test]
fn a_leftover_of_a_revoked_partition_is_dropped_and_an_assign_starts_afresh() {
    let mut e = engine();
    e.fetched(p(T0, 0), 40, 10, None, 40, 0);
    e.revoke(p(T0, 0));
    // Delivered after the revoke: not ours, not handed out, no offset.
    e.fetched(p(T0, 0), 41, 10, None, 41, 0);
    assert!(e.batch(100).is_none());
    // Assigned again: the consumer fetches from the committed offset (30), and every
    // durable message moves the stored offset, whatever the earlier ownership saw.
    e.assign(p(T0, 0));
    for o in 30..33 {
        e.fetched(p(T0, 0), o, 10, None, o, 200);
    }
    for h in e.batch(200).unwrap() {
        e.done(h.token, Outcome::Durable);
    }
    let commits = e.take_commits();
    assert_eq!(commits.last(), Some(&(p(T0, 0), 33)), "{commits:?}");
}

#[test]
fn no_pause_is_said_to_a_partition_after_its_revoke() {
    let mut e = engine();
    for o in 0..4 {
        e.fetched(p(T0, 0), o, 10, Some(100 + o), o, 0);
    }
    e.revoke(p(T0, 0));
    assert_eq!(e.take_pauses(), vec![], "the buffer's pause is not said");
}

#[test]
fn a_revoke_drops_what_waits_and_what_is_queued() {
    let mut e = engine();
    e.fetched(p(T0, 0), 0, 10, Some(500), 0, 0);
    e.fetched(p(T0, 0), 1, 10, None, 1, 0);
    e.fetched(p(T0, 1), 0, 10, None, 100, 0);
    e.revoke(p(T0, 0));
    assert_eq!(e.waiting(T0), (0, None));
    assert_eq!(offsets(&e.batch(10).unwrap()), vec![100]);
    e.tick(1000);
    assert!(e.batch(2000).is_none());
}

#[test]
fn a_message_not_yet_due_waits_without_pausing_its_partition() {
    let mut e = engine();
    e.fetched(p(T0, 0), 0, 10, Some(100), 0, 0);
    e.fetched(p(T0, 0), 1, 10, Some(50), 1, 0);
    e.fetched(p(T0, 0), 2, 10, None, 2, 0);
    assert_eq!(e.take_pauses(), vec![], "fetching goes on");
    assert_eq!(e.next_due(), Some(50));
    assert_eq!(e.waiting(T0), (2, Some(50)));
    // The one behind them that is due goes first, ready since its fetch.
    let b = e.batch(5).unwrap();
    assert_eq!(offsets(&b), vec![2]);
    assert_eq!((b[0].due, b[0].ready_at), (None, 0));
    e.tick(60);
    let b = e.batch(65).unwrap();
    assert_eq!(offsets(&b), vec![1]);
    // Ready since the tick that found it due, not since its fetch.
    assert_eq!((b[0].due, b[0].ready_at), (Some(50), 60));
    e.tick(100);
    assert_eq!(offsets(&e.batch(105).unwrap()), vec![0]);
}

#[test]
fn nothing_is_handed_out_before_it_is_due() {
    let mut e = engine();
    e.fetched(p(T0, 0), 0, 10, Some(100), 0, 0);
    e.tick(99);
    assert!(e.batch(99).is_none());
    assert!(
        e.batch(10_000).is_none(),
        "a tick moves it, not the clock alone"
    );
    e.tick(100);
    assert!(e.batch(105).is_some());
}

#[test]
fn a_full_buffer_pauses_its_partition_until_it_is_below_half() {
    let mut e = engine();
    for o in 0..4 {
        e.fetched(p(T0, 0), o, 10, Some(100 + o), o, 0);
    }
    assert_eq!(e.take_pauses(), vec![(p(T0, 0), true)]);
    assert!(e.is_paused(p(T0, 0)));
    e.tick(101); // two left: at half
    assert_eq!(e.take_pauses(), vec![(p(T0, 0), false)]);
}

#[test]
fn the_byte_budget_pauses_too() {
    let mut e = engine();
    e.fetched(p(T1, 0), 0, 600, Some(100), 0, 0);
    assert_eq!(e.take_pauses(), vec![]);
    e.fetched(p(T1, 0), 1, 600, Some(100), 1, 0);
    assert_eq!(e.take_pauses(), vec![(p(T1, 0), true)]);
}

#[test]
fn a_topic_whose_queue_reaches_its_bound_is_paused_until_half() {
    let mut e = engine();
    let bound = 4 * QUEUE_PER_IN_FLIGHT as i64;
    for o in 0..bound - 1 {
        e.fetched(p(T0, 0), o, 10, None, o, 0);
    }
    assert_eq!(e.take_pauses(), vec![], "below the bound");
    e.fetched(p(T0, 0), bound - 1, 10, None, bound - 1, 0);
    // At the bound: both partitions of the topic are paused, not T1's.
    assert_eq!(e.take_pauses(), vec![(p(T0, 0), true), (p(T0, 1), true)]);
    // Work the queue down to half: then the topic is resumed.
    while e.queued(T0) as i64 > bound / 2 {
        assert!(e.is_paused(p(T0, 0)));
        for h in e.batch(0).unwrap() {
            e.done(h.token, Outcome::Durable);
        }
    }
    assert_eq!(e.take_pauses(), vec![(p(T0, 0), false), (p(T0, 1), false)]);
    // A partition assigned while the topic is paused takes the topic's state.
    for o in bound..2 * bound {
        e.fetched(p(T0, 1), o, 10, None, o, 0);
    }
    e.take_pauses();
    e.assign(p(T0, 2));
    assert_eq!(e.take_pauses(), vec![(p(T0, 2), true)]);
}

#[test]
fn a_backlog_on_one_topic_does_not_starve_another() {
    let mut e = Engine::new(
        EngineConfig {
            batch_max: 4,
            max_in_flight: 100,
            ..settings()
        },
        2,
    );
    e.assign(p(T0, 0));
    e.assign(p(T1, 0));
    for o in 0..50 {
        e.fetched(p(T0, 0), o, 10, None, o, 0);
    }
    e.fetched(p(T1, 0), 0, 10, None, 1000, 0);
    let b = e.batch(0).unwrap();
    assert!(offsets(&b).contains(&1000), "{:?}", offsets(&b));
}

#[derive(Clone, Debug)]
enum Step {
    Fetch { partition: i32, due_in: Option<i64> },
    Tick(i64),
    Batch,
    Finish { nth: usize, durable: bool },
    Rebalance { partition: i32 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2i32, proptest::option::of(0..50i64))
            .prop_map(|(partition, due_in)| Step::Fetch { partition, due_in }),
        (0..40i64).prop_map(Step::Tick),
        Just(Step::Batch),
        (0..8usize, proptest::bool::weighted(0.9))
            .prop_map(|(nth, durable)| Step::Finish { nth, durable }),
        (0..2i32).prop_map(|partition| Step::Rebalance { partition }),
    ]
}

proptest! {
    /// Whatever happens, a stored offset never passes a message that is not durable in
    /// the current ownership, nothing is handed out before its due time, and nothing is
    /// handed out twice in one ownership.
    #[test]
    fn stored_offsets_cover_only_durable_messages(steps in proptest::collection::vec(step(), 1..200)) {
        let mut e: Engine<(i64, i64)> = Engine::new(settings(), 1);
        let mut now = 0i64;
        let mut next_offset = [0i64; 2];
        let mut out: Vec<Handout<(i64, i64)>> = Vec::new();
        // Per partition, the offsets durable in the current ownership, and where it began.
        let mut durable: [std::collections::BTreeSet<i64>; 2] = Default::default();
        let mut since = [0i64; 2];
        let mut handed: [std::collections::BTreeSet<i64>; 2] = Default::default();
        e.assign(p(0, 0));
        e.assign(p(0, 1));
        for s in steps {
            match s {
                Step::Fetch { partition, due_in } => {
                    let o = next_offset[partition as usize];
                    next_offset[partition as usize] += 1;
                    let due = due_in.map(|d| now + d);
                    e.fetched(p(0, partition), o, 10, due, (o, due.unwrap_or(now)), now);
                }
                Step::Tick(d) => { now += d; e.tick(now); }
                Step::Batch => {
                    if let Some(b) = e.batch(now) {
                        for h in b {
                            prop_assert!(h.message.1 <= now, "handed out before due");
                            let part = h.token.partition.partition as usize;
                            prop_assert!(handed[part].insert(h.token.offset), "handed out twice");
                            out.push(h);
                        }
                    }
                }
                Step::Finish { nth, durable: d } => {
                    if !out.is_empty() {
                        let h = out.remove(nth % out.len());
                        let part = h.token.partition.partition as usize;
                        let current = e.parts.get(&h.token.partition).map(|p| p.generation);
                        if d && current == Some(h.token.generation) {
                            durable[part].insert(h.token.offset);
                        }
                        e.done(h.token, if d { Outcome::Durable } else { Outcome::Interrupted });
                    }
                }
                Step::Rebalance { partition } => {
                    e.revoke(p(0, partition));
                    e.assign(p(0, partition));
                    // The new owner resumes from the last stored position.
                    let part = partition as usize;
                    durable[part].clear();
                    handed[part].clear();
                    since[part] = next_offset[part];
                }
            }
            for (id, position) in e.take_commits() {
                let part = id.partition as usize;
                for o in since[part]..position {
                    prop_assert!(durable[part].contains(&o), "offset {position} stored past {o}");
                }
            }
            e.take_pauses();
        }
    }
}
