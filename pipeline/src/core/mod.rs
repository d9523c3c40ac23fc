//! The pure core: event contracts, the order lifecycle, the offset watermark and the rate
//! limiter. Nothing here does IO, so all of it is covered by unit and property tests.

pub mod backoff;
pub mod event;
pub mod lifecycle;
pub mod rate;
pub mod watermark;
