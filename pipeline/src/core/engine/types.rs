//! The engine's vocabulary, shared with the loop that drives it: time, partition and
//! message identities, how a message ended, the settings, and what is handed out.

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
pub struct EngineConfig {
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

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
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
    /// When it joined its topic's queue (fetched, or its due time reached): the start of
    /// its handling time.
    pub ready_at: Millis,
}
