//! The consumer loop's decisions, without a broker: which fetched message is handed to the
//! handler and when, in which batches, which partitions are paused, and which offsets may
//! be stored (G2, G4). The `kafka::stage` loop drives it with a real consumer; the tests
//! below drive it with messages, completions, rebalances and clock ticks.
//!
//! - **Watermark per partition.** Every fetched message begins in its partition's
//!   [`PartitionWatermark`]; an offset is stored only when every earlier message of the
//!   partition is durable. A completion from a partition's earlier ownership (another
//!   generation) moves nothing.
//! - **Delays without refetching.** A message not yet due waits in its partition's buffer,
//!   in due order, and is handed over once due; the partition keeps being fetched. Only
//!   when the buffer's budget (messages or bytes: the stage's budget shared evenly by the
//!   partitions it owns, so memory stays bounded however many it owns) is full is the
//!   partition paused, and it is resumed once the buffer is below half of it, so each
//!   delayed message is fetched about once (a pause makes librdkafka drop what it
//!   prefetched for the partition).
//! - **Micro-batches.** Due messages queue per topic and go out in batches of up to
//!   `batch_max`, or when the oldest has waited `batch_linger_ms`, within a bound of
//!   `max_in_flight` messages handed out and not finished per topic (so one topic's
//!   backlog cannot starve another's). Under a backlog, a topic near its bound waits
//!   until half the bound (at most a batch) is free, rather than sending out each
//!   freed slot alone. A topic whose queue reaches [`QUEUE_PER_TOPIC`]
//!   messages (or [`QUEUE_PER_IN_FLIGHT`] times `max_in_flight`, if more) is paused until
//!   the queue is back to half: a pause costs a refetch of what the consumer had
//!   prefetched, so pauses must be rare and the queue long.
//!
//! Time is Unix milliseconds, given by the caller.

use crate::core::watermark::PartitionWatermark;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// How many due messages a topic may queue, per message it may have in flight, before
/// it is paused.
pub const QUEUE_PER_IN_FLIGHT: usize = 8;

/// The least number of due messages a topic may queue before it is paused.
pub const QUEUE_PER_TOPIC: usize = 16_384;

/// Unix time in milliseconds.
pub type Millis = i64;

/// A partition of one of the stage's topics (by index in the stage's topic list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: usize,
    pub partition: i32,
}

/// Names one handed-out message, for its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub partition: PartitionId,
    pub generation: u64,
    pub offset: i64,
}

/// How the handler finished with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its effects are durable: its offset may be stored.
    Durable,
    /// Stopped before that (shutdown): the next owner redoes it.
    Interrupted,
    /// A bug: the stage stops, so that the message is redone after a restart.
    Panicked,
}

/// The loop's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Most messages in one batch.
    pub batch_max: usize,
    /// How long a due message may wait for its batch to fill.
    pub batch_linger_ms: i64,
    /// Messages handed out and not finished, per topic.
    pub max_in_flight: usize,
    /// Messages waiting for their due time in the whole stage; each owned partition's
    /// share of it is its budget, past which it is paused.
    pub buffer_messages: usize,
    /// Payload bytes waiting for their due time in the whole stage, shared the same way.
    pub buffer_bytes: usize,
    /// The least number of due messages a topic may queue before it is paused
    /// ([`QUEUE_PER_TOPIC`] by default).
    pub queue_min: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_max: 256,
            batch_linger_ms: 5,
            max_in_flight: 1024,
            buffer_messages: 100_000,
            buffer_bytes: 32 * 1024 * 1024,
            queue_min: QUEUE_PER_TOPIC,
        }
    }
}

/// One message handed to the handler.
#[derive(Debug, PartialEq, Eq)]
pub struct Handout<M> {
    pub token: Token,
    pub message: M,
    /// When it was due (for lateness), if it waited.
    pub due: Option<Millis>,
}

struct Waiting<M> {
    due: Millis,
    offset: i64,
    bytes: usize,
    message: M,
}

impl<M> PartialEq for Waiting<M> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.offset) == (other.due, other.offset)
    }
}
impl<M> Eq for Waiting<M> {}
impl<M> PartialOrd for Waiting<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<M> Ord for Waiting<M> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.offset).cmp(&(other.due, other.offset))
    }
}

struct Part<M> {
    generation: u64,
    watermark: PartitionWatermark,
    /// Not yet due, earliest first.
    waiting: BinaryHeap<Reverse<Waiting<M>>>,
    waiting_bytes: usize,
    /// The buffer's budget was reached and it has not yet drained to half.
    full: bool,
    /// As last told to the consumer.
    paused: bool,
}

struct Ready<M> {
    token: Token,
    message: M,
    due: Option<Millis>,
    since: Millis,
}

/// The loop's state: see the module documentation.
pub struct Engine<M> {
    settings: Settings,
    parts: HashMap<PartitionId, Part<M>>,
    next_generation: u64,
    /// Due and not handed out, per topic, in fetch order.
    ready: Vec<VecDeque<Ready<M>>>,
    in_flight: Vec<usize>,
    /// The topic's queue reached its bound and has not yet drained to half.
    backlogged: Vec<bool>,
    /// Next topic a batch starts from, so topics take turns.
    turn: usize,
    pauses: Vec<(PartitionId, bool)>,
    commits: Vec<(PartitionId, i64)>,
}

impl<M> Engine<M> {
    pub fn new(settings: Settings, topics: usize) -> Self {
        let settings = Settings {
            batch_max: settings.batch_max.max(1),
            max_in_flight: settings.max_in_flight.max(1),
            buffer_messages: settings.buffer_messages.max(1),
            buffer_bytes: settings.buffer_bytes.max(1),
            batch_linger_ms: settings.batch_linger_ms.max(0),
            ..settings
        };
        Engine {
            settings,
            parts: HashMap::new(),
            next_generation: 0,
            ready: (0..topics).map(|_| VecDeque::new()).collect(),
            in_flight: vec![0; topics],
            backlogged: vec![false; topics],
            turn: 0,
            pauses: Vec::new(),
            commits: Vec::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The partition is ours (again): a new ownership, with a watermark of its own (the
    /// consumer fetches from the committed offset), whatever an earlier one left. Its pause
    /// state is set to the loop's (the consumer may still carry a pause from before).
    pub fn assign(&mut self, id: PartitionId) {
        let backlogged = self.backlogged[id.topic];
        self.parts.remove(&id);
        self.pauses.retain(|(p, _)| *p != id);
        self.ready[id.topic].retain(|r| r.token.partition != id);
        let part = self.part(id);
        part.paused = backlogged;
        self.pauses.push((id, backlogged));
    }

    /// The partition is no longer ours: what waits or is queued for it is dropped (the new
    /// owner reads it again from the committed offset), and its work in flight will move
    /// no offset.
    pub fn revoke(&mut self, id: PartitionId) {
        self.parts.remove(&id);
        // A pause said to a partition that is no longer ours makes librdkafka keep its old
        // position as where to fetch from when it is assigned again, past the committed
        // offset: what this ownership had not finished would never be fetched again.
        self.pauses.retain(|(p, _)| *p != id);
        self.ready[id.topic].retain(|r| r.token.partition != id);
        self.update_backlog(id.topic);
    }

    fn part(&mut self, id: PartitionId) -> &mut Part<M> {
        let next_generation = &mut self.next_generation;
        self.parts.entry(id).or_insert_with(|| {
            *next_generation += 1;
            Part {
                generation: *next_generation,
                watermark: PartitionWatermark::default(),
                waiting: BinaryHeap::new(),
                waiting_bytes: 0,
                full: false,
                paused: false,
            }
        })
    }

    /// A message arrived from the consumer: due at `due` (or now, when `None`). A message of
    /// a partition not assigned (a leftover of a revoked ownership) is dropped: the owner
    /// reads it from the committed offset.
    pub fn fetched(
        &mut self,
        id: PartitionId,
        offset: i64,
        bytes: usize,
        due: Option<Millis>,
        message: M,
        now: Millis,
    ) {
        let (max_messages, max_bytes) = self.budget();
        let Some(part) = self.parts.get_mut(&id) else {
            return;
        };
        part.watermark.begin(offset);
        let token = Token {
            partition: id,
            generation: part.generation,
            offset,
        };
        match due {
            Some(due) if due > now => {
                part.waiting.push(Reverse(Waiting {
                    due,
                    offset,
                    bytes,
                    message,
                }));
                part.waiting_bytes += bytes;
                if part.waiting.len() >= max_messages || part.waiting_bytes >= max_bytes {
                    part.full = true;
                }
                self.set_pause(id);
            }
            _ => {
                self.ready[id.topic].push_back(Ready {
                    token,
                    message,
                    due,
                    since: now,
                });
                self.update_backlog(id.topic);
            }
        }
    }

    /// Moves the messages that are due by `now` from the buffers to the queues.
    pub fn tick(&mut self, now: Millis) {
        let (max_messages, max_bytes) = self.budget();
        let mut touched = Vec::new();
        for (&id, part) in self.parts.iter_mut() {
            let mut moved = false;
            while part.waiting.peek().is_some_and(|w| w.0.due <= now) {
                let Reverse(w) = part.waiting.pop().expect("peeked");
                part.waiting_bytes -= w.bytes;
                self.ready[id.topic].push_back(Ready {
                    token: Token {
                        partition: id,
                        generation: part.generation,
                        offset: w.offset,
                    },
                    message: w.message,
                    due: Some(w.due),
                    since: now,
                });
                moved = true;
            }
            if moved {
                if part.full
                    && part.waiting.len() <= max_messages / 2
                    && part.waiting_bytes <= max_bytes / 2
                {
                    part.full = false;
                }
                touched.push(id);
            }
        }
        touched.sort_unstable();
        for id in touched {
            self.set_pause(id);
            self.update_backlog(id.topic);
        }
    }

    /// Due messages a topic may queue before it is paused.
    fn queue_bound(&self) -> usize {
        (self.settings.max_in_flight * QUEUE_PER_IN_FLIGHT).max(self.settings.queue_min)
    }

    /// Each owned partition's share of the stage's waiting budget: (messages, bytes).
    fn budget(&self) -> (usize, usize) {
        let n = self.parts.len().max(1);
        (
            (self.settings.buffer_messages / n).max(1),
            (self.settings.buffer_bytes / n).max(1),
        )
    }

    /// The earliest due time of a waiting message.
    pub fn next_due(&self) -> Option<Millis> {
        self.parts
            .values()
            .filter_map(|p| p.waiting.peek().map(|w| w.0.due))
            .min()
    }

    /// When the oldest handable queued message has waited `batch_linger_ms`, if any is
    /// queued and may be handed out.
    pub fn next_linger(&self) -> Option<Millis> {
        (0..self.ready.len())
            .filter(|&t| self.worth_a_batch(t))
            .filter_map(|t| self.ready[t].front().map(|r| r.since))
            .min()
            .map(|since| since + self.settings.batch_linger_ms)
    }

    /// Room under topic `t`'s in-flight bound.
    fn room(&self, t: usize) -> usize {
        self.settings
            .max_in_flight
            .saturating_sub(self.in_flight[t])
    }

    /// The batch worth waiting for while work is in flight: half the in-flight bound (at
    /// most a batch). Under a backlog, room under the bound frees one completion at a
    /// time; handing each freed slot out at once made batches of one to five messages
    /// (measured: 4 orders per settling statement at 280 orders/s), and every batch
    /// costs statements and sends of its own.
    fn refill(&self) -> usize {
        self.settings
            .batch_max
            .min((self.settings.max_in_flight / 2).max(1))
    }

    /// Whether topic `t`'s queue may go out once it has lingered: there is room for all
    /// of it, or for a refill's worth.
    fn worth_a_batch(&self, t: usize) -> bool {
        let queued = self.ready[t].len();
        queued > 0 && self.room(t).min(queued) >= self.refill().min(queued)
    }

    /// A batch for the handler, if one is full or has waited long enough.
    pub fn batch(&mut self, now: Millis) -> Option<Vec<Handout<M>>> {
        let topics = self.ready.len();
        let handable: usize = (0..topics)
            .map(|t| self.ready[t].len().min(self.room(t)))
            .sum();
        if handable == 0 {
            return None;
        }
        // Full: a whole batch is there to go, or a refill's worth of a topic whose
        // in-flight bound leaves no room for a whole batch.
        let full = handable >= self.settings.batch_max
            || (0..topics).any(|t| {
                self.room(t) < self.settings.batch_max
                    && self.ready[t].len().min(self.room(t)) >= self.refill()
            });
        let lingered = self.next_linger().is_some_and(|at| at <= now);
        if !full && !lingered {
            return None;
        }
        let want = handable.min(self.settings.batch_max);
        let mut batch = Vec::with_capacity(want);
        // Topics take turns, one message at a time, so each gets its share of a batch.
        let mut idle = 0;
        while batch.len() < want && idle < topics {
            let t = self.turn % topics;
            self.turn = self.turn.wrapping_add(1);
            if self.in_flight[t] < self.settings.max_in_flight {
                if let Some(r) = self.ready[t].pop_front() {
                    self.in_flight[t] += 1;
                    batch.push(Handout {
                        token: r.token,
                        message: r.message,
                        due: r.due,
                    });
                    idle = 0;
                    continue;
                }
            }
            idle += 1;
        }
        for t in 0..topics {
            self.update_backlog(t);
        }
        Some(batch)
    }

    /// The handler finished with a handed-out message.
    pub fn done(&mut self, token: Token, outcome: Outcome) {
        let t = token.partition.topic;
        self.in_flight[t] = self.in_flight[t].saturating_sub(1);
        if outcome != Outcome::Durable {
            return; // the offset stays where it is and the message is redone
        }
        let Some(part) = self.parts.get_mut(&token.partition) else {
            return;
        };
        if part.generation != token.generation {
            return;
        }
        if let Some(position) = part.watermark.finish(token.offset) {
            self.commits.push((token.partition, position));
        }
    }

    /// Pause-state changes to apply to the consumer, in order.
    pub fn take_pauses(&mut self) -> Vec<(PartitionId, bool)> {
        std::mem::take(&mut self.pauses)
    }

    /// Offsets that may be stored (the position to resume from), in order.
    pub fn take_commits(&mut self) -> Vec<(PartitionId, i64)> {
        std::mem::take(&mut self.commits)
    }

    /// Messages handed out and not finished, over all topics.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().sum()
    }

    /// Messages of `topic` waiting for their due time, and the earliest due time.
    pub fn waiting(&self, topic: usize) -> (usize, Option<Millis>) {
        self.parts.iter().filter(|(id, _)| id.topic == topic).fold(
            (0, None),
            |(n, earliest), (_, p)| {
                let front = p.waiting.peek().map(|w| w.0.due);
                (n + p.waiting.len(), earliest.into_iter().chain(front).min())
            },
        )
    }

    /// Due messages of `topic` not handed out yet.
    pub fn queued(&self, topic: usize) -> usize {
        self.ready[topic].len()
    }

    /// Whether `id` is paused, as last told to the consumer.
    pub fn is_paused(&self, id: PartitionId) -> bool {
        self.parts.get(&id).is_some_and(|p| p.paused)
    }

    fn update_backlog(&mut self, topic: usize) {
        let queued = self.ready[topic].len();
        let bound = self.queue_bound();
        let was = self.backlogged[topic];
        let now = if was {
            queued > bound / 2
        } else {
            queued >= bound
        };
        if now == was {
            return;
        }
        self.backlogged[topic] = now;
        let mut ids: Vec<PartitionId> = self
            .parts
            .keys()
            .filter(|id| id.topic == topic)
            .copied()
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.set_pause(id);
        }
    }

    fn set_pause(&mut self, id: PartitionId) {
        let backlogged = self.backlogged[id.topic];
        if let Some(part) = self.parts.get_mut(&id) {
            let want = part.full || backlogged;
            if want != part.paused {
                part.paused = want;
                self.pauses.push((id, want));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: usize = 0;
    const T1: usize = 1;

    fn p(topic: usize, partition: i32) -> PartitionId {
        PartitionId { topic, partition }
    }

    fn settings() -> Settings {
        Settings {
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
            Settings {
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
            Settings {
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
        // The one behind them that is due goes first.
        assert_eq!(offsets(&e.batch(5).unwrap()), vec![2]);
        e.tick(60);
        let b = e.batch(65).unwrap();
        assert_eq!(offsets(&b), vec![1]);
        assert_eq!(b[0].due, Some(50));
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
            Settings {
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
}
