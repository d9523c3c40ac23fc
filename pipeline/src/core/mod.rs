//! The pure core: event contracts, the order lifecycle, the check schedule, the offset
//! watermark, the consumer loop's state machine, backoff, what an outage waits for, the
//! rate limiter, the circuit breaker, an account's caps as slots shared by a cluster
//! (`caps`), and an account's recent answers and spending rate. Nothing here does IO, so
//! all of it is covered by unit and property tests.

pub mod account_status;
pub mod backoff;
pub mod breaker;
pub mod caps;
pub mod engine;
pub mod event;
pub mod lifecycle;
pub mod outage;
pub mod rate;
pub mod schedule;
pub mod sealed_pin;
pub mod seeded;
pub mod stuck;
pub mod watermark;
