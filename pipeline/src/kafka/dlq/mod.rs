//! The dead-letter queue, `orders.dlq` (G8), by role:
//!
//! | file        | what it owns                                                                |
//! |-------------|-----------------------------------------------------------------------------|
//! | `write.rs`  | [`DeadLetters`]: a stage's copy of a record it cannot use, with its reason   |
//! | `read.rs`   | [`read`]: a bounded scan of the DLQ with a [`read::Filter`], counts per reason |
//! | `replay.rs` | [`replay`]: entries sent back to their source topic, each recorded once      |
//!
//! An entry is the original record (key, payload, headers) with `orderflow.dlq.*` headers
//! saying why, by which stage and from where; `orderflow dlq` (`cli/dlq/`, docs/dlq.md)
//! lists, shows and replays them.

pub mod read;
pub mod replay;
mod write;

pub use write::{fit, Copy, DeadLetters, MAX_COPY_BYTES};
