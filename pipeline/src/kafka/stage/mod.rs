//! The consumer loop every stage runs on: at-least-once, work in micro-batches, offsets
//! committed only up to the contiguous prefix of durable work (G2), delays without
//! refetching (G4).
//!
//! The decisions (what to hand out, in which batches, what to pause, which offsets to
//! store) are made by the pure [`Engine`](crate::core::engine::Engine), tested without a
//! broker; this module connects it to a librdkafka consumer and to a stage's [`Handler`].
//! The loop keeps polling the consumer at all times (so the group never evicts it). A
//! message that is not due yet ([`Handler::due_at`], read from a header without decoding
//! the payload) waits in its partition's buffer while the partition keeps being fetched;
//! only a full buffer pauses it, so each delayed message is fetched about once. Due
//! messages go to the handler in batches ([`StageConfig`]), each batch in a task of its own;
//! every message of a batch is acknowledged on its own ([`Ack`]), so one slow order holds
//! back only its partition's commit point, not its batch's. On a revoke the loop forgets
//! the revoked partitions: work still running for them finishes but moves no offset, and
//! the new owner redoes it (handlers are idempotent). A pause would survive a rebalance,
//! so revoked partitions are resumed in the rebalance callback, and assigned ones get the
//! loop's pause state. On shutdown it stops taking messages, waits a grace period for work
//! in flight, commits, and leaves the group.
//!
//! The files: [`handler`] is what a stage implements and what it is handed, [`config`]
//! how it consumes, [`consumer`] the librdkafka consumer and its rebalance and statistics
//! callbacks, `run` the loop itself, `commit` what the loop tells the consumer (pauses
//! and offsets to store), and `lateness` its warnings about delayed messages handed over
//! late.

mod commit;
pub mod config;
pub mod consumer;
pub mod handler;
mod lateness;
mod run;

pub use config::{LoopConfig, Prefetch, StageConfig};
pub use consumer::{consumer, StageContext};
pub use handler::{in_groups, message_span, Ack, Delivery, Handler, MessageHandler, PerMessage};
pub use run::run;

use crate::core::engine::{Millis, Outcome, Token};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the handler panicked on {topic}/{partition} at offset {offset}; the message will be redone after a restart")]
    HandlerPanicked {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

/// A message's end, sent by its [`Ack`] to the loop.
struct Done {
    token: Token,
    outcome: Outcome,
    /// When the message joined its topic's queue ([`crate::core::engine::Handout`]).
    ready_at: Millis,
}
