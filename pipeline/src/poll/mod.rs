//! The poll stage: checks each accepted order with its provider until it is final or out
//! of time (G2, G4, G6).
//!
//! It consumes `orders.dispatched` (the first check, `first_check` after dispatch) and the
//! tier topics `orders.status-check.<tier>`. The shared consumer loop holds each message
//! until it is due, pausing only its partition ([`crate::kafka::stage`]). A due message is
//! one step of its order's check chain: the step is taken in `check_chains`
//! ([`crate::db::chains`]) so that a copy of it is dropped, the provider is asked within the
//! account's caps and breaker, and the outcome is published before the offset moves:
//!
//! | answer                        | state event            | next message                |
//! |-------------------------------|------------------------|-----------------------------|
//! | completed                     | `completed`, sealed PIN | none                        |
//! | cancelled                     | `failed` (cancelled)   | none                        |
//! | pending, unclear, not found   | `processing`, attempt+1 | next tier, or `failed` (deadline) |
//! | no answer (provider down), an | none: no attempt used  | shortest tier, or `failed` (deadline) |
//! | error code not listed as      |                        |                             |
//! | not-found for the account     |                        |                             |
//!
//! [`reconcile`] is the safety net that brings back chains that stopped.
//!
//! A step whose data the database refuses (SQLSTATE class 22, 23 or 54, see
//! [`crate::db::Refused`]) is dead-lettered as `database_refused` instead of being retried
//! forever; when a batch's statement is refused, its steps are taken one at a time so that
//! only the refused one is.

//!
//! The folder, by role:
//!
//! | file           | owns                                                              |
//! |----------------|-------------------------------------------------------------------|
//! | `config.rs`    | [`PollConfig`], [`ScheduleConfig`], [`DepthConfig`], defaults, tiers |
//! | `error.rs`     | [`PollError`], the stage's start-up errors                        |
//! | `decide.rs`    | [`decide`]: the table above, pure                                 |
//! | `effects.rs`   | what a decision makes: state event, next step, chain record; pure |
//! | `due.rs`       | [`due_at`], [`hold_at_most`]: when a message is due; pure         |
//! | `handler.rs`   | [`PollHandler`]: decoding, publishing, dead-lettering, metrics    |
//! | `step.rs`      | the one-step path (one message, one check step)                   |
//! | `batch.rs`     | the batched path, and the consumer loop's `Handler`               |
//! | `run.rs`       | [`run`]: start-up and the consumer loop                           |
//! | `reconcile.rs` | [`reconcile`]: the safety net                                     |

mod batch;
mod config;
mod decide;
mod due;
mod effects;
mod error;
mod handler;
pub mod reconcile;
mod run;
mod step;

pub use config::{
    tier_topics, DepthConfig, DepthError, PollConfig, ScheduleConfig, DEFAULT_CHECK_TIERS,
    DEFAULT_GROUP,
};
pub use decide::{decide, Decision};
pub use due::{due_at, hold_at_most};
pub use error::PollError;
pub use handler::PollHandler;
pub use run::run;
