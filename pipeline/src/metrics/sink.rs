//! The sink's metrics: rows per statement and how long it took.

use super::Metrics;
use prometheus_client::registry::Registry;

/// Registers these metrics of `m` in `registry`.
pub(super) fn register(registry: &mut Registry, m: &Metrics) {
    registry.register(
        "sink_batch_rows",
        "Rows written by one sink statement",
        m.sink_batch_rows.clone(),
    );
    registry.register(
        "sink_batch_seconds",
        "How long one sink statement took",
        m.sink_batch_seconds.clone(),
    );
}
