//! The provider calls' metrics, by account: calls and their duration, the circuit
//! breaker, the slots of its caps this process holds, the orders the dispatch stage parked because of their account, and the
//! account's balance.

use super::Metrics;
use prometheus_client::registry::Registry;

/// Registers these metrics of `m` in `registry`.
pub(super) fn register(registry: &mut Registry, m: &Metrics) {
    registry.register(
        "provider_calls",
        "Provider calls by account, call (place, check, balance) and outcome (answered, failed)",
        m.provider_calls.clone(),
    );
    registry.register(
        "provider_call_seconds",
        "Provider call duration by account, call and outcome",
        m.provider_call_seconds.clone(),
    );
    registry.register(
        "provider_breaker_open",
        "1 while the account's circuit breaker stops calls, else 0",
        m.provider_breaker_open.clone(),
    );
    registry.register(
        "provider_slots_held",
        "Slots of the account's caps this process holds now, by kind: call (calls at once) \
         and rate (calls per second); the account's caps are shared by every dispatch and \
         poll process",
        m.provider_slots_held.clone(),
    );
    registry.register(
        "dispatch_parked",
        "Orders parked on orders.dispatch-retry (their provider account kept failing, \
         or had too many orders retrying), by account",
        m.dispatch_parked.clone(),
    );
    registry.register(
        "account_balance",
        "The last balance the provider reported for the account (with a placement or to \
         the scheduled balance check)",
        m.account_balance.clone(),
    );
    registry.register(
        "account_balance_alert_below",
        "The account's balance_alert_below setting: OrderflowBalanceLow fires below it",
        m.account_balance_alert_below.clone(),
    );
}
