//! The poll stage's metrics: how late a status check was handed over, what checks led
//! to, the reconciler's work, and an order's times to its final state.

use super::Metrics;
use prometheus_client::registry::Registry;

/// Registers these metrics of `m` in `registry`.
pub(super) fn register(registry: &mut Registry, m: &Metrics) {
    registry.register(
        "check_lateness_seconds",
        "How long after its due time a delayed message was handed over, by topic",
        m.check_lateness_seconds.clone(),
    );
    registry.register(
        "check_outcomes",
        "What status checks led to: completed, cancelled, pending, no_answer, deadline",
        m.check_outcomes.clone(),
    );
    registry.register(
        "reconciler_requeued",
        "Orders the reconciler enqueued again because their check was overdue",
        m.reconciler_requeued.clone(),
    );
    registry.register(
        "reconciler_given_up",
        "Orders not final whose status check the poll stage keeps dead-lettering; the \
         reconciler no longer enqueues them again",
        m.reconciler_given_up.clone(),
    );
    registry.register(
        "check_attempts",
        "Status checks the provider answered for an order, observed when it ends",
        m.check_attempts.clone(),
    );
    registry.register(
        "dispatch_to_final_seconds",
        "From the provider's acceptance to the final state, by outcome",
        m.dispatch_to_final_seconds.clone(),
    );
    registry.register(
        "created_to_final_seconds",
        "From the shop's created_at to the final state, by outcome",
        m.created_to_final_seconds.clone(),
    );
}
