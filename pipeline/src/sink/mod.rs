//! The sink: `orders.state` into the `orders` table, in batches, never regressing (G2, G3).
//!
//! Each message runs through [`SinkHandler`] on the shared consumer loop: decoded and
//! checked (an unusable event goes to `orders.dlq`), then handed, in the log's order, to
//! the [`Batcher`], which collects up to `batch_rows` rows or what arrives within
//! `batch_linger` of the first one, merges the rows of one order by the rule of
//! [`crate::core::lifecycle::replaces`], and upserts them in one statement whose guard
//! applies the same rule against the table. A message's handler
//! returns only once its batch is committed, so offsets move after the database commit. A
//! database outage is retried with backoff while nothing is acknowledged; a row the
//! database refuses (SQLSTATE class 22, 23 or 54, see [`crate::db::Refused`]) is found by
//! upserting that batch row by row, and its event is dead-lettered as `database_refused`
//! with the SQLSTATE, while the batch's other rows are written.
//!
//! Compaction keeps the last record per order, which is not always the newest state: a
//! slow worker may publish an older state after the final one, a redone check may publish
//! the final state again with a freshly sealed PIN, a broken producer may add an unusable
//! event. When an order's row is final and its last record in the log is anything but the
//! row's own event, the sink publishes the row's event again (it keeps it in
//! `orders.state_event`), marked as a copy, so the topic ends on the final state and a
//! replay into an empty database rebuilds the same table. Only a final row is republished
//! (a newer non-final state may still be further on in the log, and a copy after it would
//! make compaction drop it), and never in answer to a copy, so two sinks cannot echo each
//! other.
//!
//! Limit: the in-batch merge starts from the batch, not from the row, so a batch holding a
//! final state with a lower version than a non-final row already in the table loses the
//! batch's other events of that order. The stages number versions so that a final state
//! is an order's highest; only a broken producer can do this.
//!
//! The folder, by role:
//!
//! | file         | owns                                                                |
//! |--------------|---------------------------------------------------------------------|
//! | `config.rs`  | [`SinkConfig`]                                                      |
//! | `error.rs`   | [`SinkError`], the sink's start-up errors                           |
//! | `decide.rs`  | [`check`] and the in-batch merge: which event wins per order; pure  |
//! | `handler.rs` | [`SinkHandler`]: decode, check, enqueue, acknowledge or dead-letter |
//! | `write.rs`   | [`Batcher`]: batches, upserts, refused rows found row by row        |
//! | `repair.rs`  | ending an order's log on its final row again                        |
//! | `run.rs`     | [`run`]: start-up and the consumer loop                             |

mod config;
mod decide;
mod error;
mod handler;
mod repair;
mod run;
mod write;

pub use config::{SinkConfig, DEFAULT_GROUP};
pub use decide::check;
pub use error::SinkError;
pub use handler::SinkHandler;
pub use run::run;
pub use write::Batcher;
