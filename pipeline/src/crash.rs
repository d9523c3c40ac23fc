//! Crash points for the kill tests: with `ORDERFLOW_CRASH_AT=<point>` in its environment, a
//! process aborts (as a SIGKILL would end it: no cleanup, no flush) when it reaches that
//! point, so a test can prove that a crash exactly there loses nothing and buys nothing
//! twice. Unset, a point costs one comparison. The points are named `<stage>.<moment>`:
//!
//! - `dispatch.after_claim`: a batch's claim is committed (orders marked `placing`), no
//!   call made;
//! - `dispatch.after_calls`: the provider answered a group of a batch's placements, none
//!   settled yet.

use std::sync::OnceLock;

static AT: OnceLock<Option<String>> = OnceLock::new();

/// Aborts the process if `ORDERFLOW_CRASH_AT` names `point`.
pub fn point(point: &str) {
    let at = AT.get_or_init(|| std::env::var("ORDERFLOW_CRASH_AT").ok());
    if at.as_deref() == Some(point) {
        eprintln!("orderflow: crashing at {point} (ORDERFLOW_CRASH_AT)");
        std::process::abort();
    }
}
