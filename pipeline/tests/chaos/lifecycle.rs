//! G3 and G6 in phase 7: no final state regressed, checked on the whole orders.state log
//! per order (against the lifecycle rule and the row it left) and on the rows the watcher
//! saw change during the run.

use crate::checks::Row;
use orderflow::core::event::OrderStateEvent;
use orderflow::core::lifecycle::{supersedes, OrderState};
use rdkafka::message::{Message, OwnedMessage};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// Every regression: those the watcher saw, then, per valid order, more than one reference
/// in its events or a problem of [`lifecycle_problems`], and state events of orders that
/// were never valid.
pub fn no_regression(
    state_log: &[OwnedMessage],
    ids: &[Uuid],
    rows: &HashMap<Uuid, Row>,
    live_regressions: Vec<String>,
    failures: &mut Vec<String>,
) -> Vec<String> {
    let mut by_order: BTreeMap<Uuid, Vec<OrderStateEvent>> = BTreeMap::new();
    for m in state_log {
        let event: OrderStateEvent = serde_json::from_slice(m.payload().unwrap_or_default())
            .expect("orders.state holds state events only");
        by_order.entry(event.order_id).or_default().push(event);
    }
    let mut regressions: Vec<String> = live_regressions;
    for id in ids {
        let events = by_order.get(id).map(Vec::as_slice).unwrap_or_default();
        if events
            .iter()
            .filter_map(|e| e.provider_reference.as_ref())
            .collect::<HashSet<_>>()
            .len()
            > 1
        {
            regressions.push(format!("{id}: more than one reference in its events"));
        }
        let row = rows.get(id).map(|r| (r.1.clone(), r.6));
        for problem in lifecycle_problems(events, row.as_ref()) {
            regressions.push(format!("{id}: {problem}"));
        }
    }
    let stray_orders = by_order.keys().filter(|id| !ids.contains(id)).count();
    if stray_orders > 0 {
        regressions.push(format!(
            "{stray_orders} orders in orders.state that were never valid orders"
        ));
    }
    if !regressions.is_empty() {
        failures.push(format!(
            "{} regressions: {:?}",
            regressions.len(),
            &regressions[..regressions.len().min(5)]
        ));
    }
    regressions
}

/// What is wrong with one order's orders.state log (in log order) and its row, by the
/// lifecycle rule: final events that disagree, a log that does not end on the final state,
/// a row that is not what the rule picks, states out of lifecycle order by version.
fn lifecycle_problems(events: &[OrderStateEvent], row: Option<&(String, i64)>) -> Vec<String> {
    let mut problems = Vec::new();
    let finals: Vec<&OrderStateEvent> = events.iter().filter(|e| e.state.is_final()).collect();
    if let Some(first) = finals.first() {
        let reason = |e: &OrderStateEvent| e.failure.as_ref().map(|f| f.reason);
        if finals
            .iter()
            .any(|e| e.state != first.state || reason(e) != reason(first))
        {
            problems.push("final events disagree".to_owned());
        }
    }
    let best =
        events
            .iter()
            .map(|e| (e.version, e.state))
            .reduce(|a, b| if supersedes(b, a) { b } else { a });
    if let (Some(best), Some(last)) = (best, events.last()) {
        if best.1.is_final() && (last.version, last.state) != best {
            problems.push(format!(
                "the log ends on {:?}, not on its final state {best:?}",
                (last.version, last.state)
            ));
        }
        if let Some((state, version)) = row {
            if (state.as_str(), *version) != (best.1.as_str(), best.0) {
                problems.push(format!("the row holds {state}/{version}, the log {best:?}"));
            }
        }
    }
    let mut by_version: Vec<(i64, bool, OrderState)> = events
        .iter()
        .map(|e| (e.version, e.state.is_final(), e.state))
        .collect();
    by_version.sort_by_key(|(v, f, _)| (*v, *f));
    for w in by_version.windows(2) {
        let (from, to) = (w[0].2, w[1].2);
        if from != to && !from.may_become(to) {
            problems.push(format!(
                "{from} at version {} then {to} at version {}",
                w[0].0, w[1].0
            ));
        }
    }
    problems
}
