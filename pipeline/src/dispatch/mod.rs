//! The dispatch stage: `orders.created` → one placement per order at its provider →
//! `orders.dispatched` and `orders.state` (G1, G2, G8).
//!
//! Each message runs through [`DispatchHandler`]: decode and validate (a bad event goes to
//! `orders.dlq` with its reason), settle the placement ([`placement::Placer`]), then publish
//! the outcome. The message's offset is committed only after the outcome is on the broker,
//! by the shared consumer loop in [`crate::kafka::stage`].
//!
//! Every order gets an answer. A well-formed order that cannot be placed as given (its
//! provider account is not configured, its product is not one the provider sells) is
//! dead-lettered *and* answered `failed` (reason `invalid`) on `orders.state`, so that the
//! shop can refund without reading the DLQ; its order id is claimed as `invalid` first, so
//! the answer is final for the id, unless an operator replays the event once its account or
//! product is known (`orderflow dlq replay`: see `refuse.rs`). It is answered only when its order id was not claimed
//! before: a conflicting duplicate of an existing order (other content, another account,
//! or an unplaceable event reusing its id) is dead-lettered only, because the order it
//! collides with has an answer of its own, and a `failed` under that order id would
//! overwrite it on the compacted topic. An event whose fields cannot be read, or whose key
//! is not its order id, names no order to answer for: the DLQ only. So does an event whose
//! claim the database refuses (`database_refused`): without a claim an answer could be
//! contradicted by a later event.
//!
//! A re-send of an order whose claim is settled never puts an older state on
//! `orders.state`: once its status checks have started (the poll stage has a chain for it,
//! and publishes its later states), the re-send is answered with nothing new; before that
//! (a redelivery after a crash between settling and publishing) the settled outcome is
//! published as the first time.
//!
//! An order that cannot settle soon (its account down, refusing its credentials, its
//! breaker open) does not keep its place: past a bound it is parked on
//! `orders.dispatch-retry` ([`park`]) with a due time, which this stage also consumes, so
//! healthy orders keep flowing while it waits.
//!
//! The folder, by role:
//!
//! | file                | what it owns                                                           |
//! |---------------------|------------------------------------------------------------------------|
//! | `config.rs`         | [`DispatchConfig`]: flags, defaults and their checks                   |
//! | `error.rs`          | [`DispatchError`]: what stops the stage from starting                  |
//! | `run.rs`            | [`run()`]: topics checked, handler built, the consumer loop run        |
//! | `handler.rs`        | [`DispatchHandler`]: the `Handler` seam and the one-order path         |
//! | `batch.rs`          | the batched path: one claim statement per batch, settled in groups     |
//! | `placement.rs`      | [`placement::Placer`]: settling one order from its claim (G1)          |
//! | `placement/step.rs` | one step of that: a placement or a check, and what its answer means    |
//! | `decide.rs`         | pure decisions: placed or refused, what a conflict dead-letters        |
//! | `refuse.rs`         | what is not placed: validation, the DLQ, the `failed` (invalid) answer |
//! | `publish.rs`        | what is emitted for an outcome, and the events it is built from        |
//! | `park.rs`           | [`park`]: an order waiting on `orders.dispatch-retry` until it is due  |

mod batch;
mod config;
mod decide;
mod error;
mod handler;
pub mod park;
pub mod placement;
mod publish;
mod refuse;
mod run;

pub use config::{DispatchConfig, DEFAULT_GROUP, MAX_DEADLINE_SECS};
pub use error::DispatchError;
pub use handler::DispatchHandler;
pub use refuse::validate_event;
pub use run::run;
