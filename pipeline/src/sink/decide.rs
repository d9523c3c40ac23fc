//! The sink's pure decisions (G3): which events the table can take ([`check`]), and which
//! event wins per order when a batch's events are applied in their log order, by the same
//! rule as the table's guard ([`crate::core::lifecycle::replaces`]).

use super::write::Pending;
use crate::core::event::{InvalidEvent, InvalidKind, OrderStateEvent};
use crate::core::lifecycle::{replaces, OrderState};
use crate::db::orders::OrderRow;
use std::collections::HashMap;
use uuid::Uuid;

/// Checks what the table's constraints would refuse, so that such an event is
/// dead-lettered with a reason instead of failing a whole batch.
pub fn check(event: &OrderStateEvent) -> Result<(), InvalidEvent> {
    let bad = |detail: &str| Err(InvalidEvent::new(InvalidKind::InvalidField, detail));
    if event.order_id.is_nil() {
        return bad("order_id must not be the nil UUID");
    }
    if event.attempts < 0 {
        return bad("attempts must not be negative");
    }
    if (event.state == OrderState::Failed) != event.failure.is_some() {
        return bad("a failure is given if and only if the state is failed");
    }
    if event.pin.is_some() && event.state != OrderState::Completed {
        return bad("only a completed order carries a PIN");
    }
    Ok(())
}

/// One row per order, with its event: the one that wins when the batch's events are applied
/// in their order, by the same rule as the table's guard. Sorted by order id, so that two
/// writers lock rows in the same order.
pub(super) fn merge(batch: &[Pending]) -> (Vec<OrderRow>, Vec<String>) {
    pick(batch.iter())
        .into_values()
        .map(|p| (p.row.clone(), p.event.clone()))
        .unzip()
}

/// The event that won for each order whose row the statement wrote (`written`): the one
/// [`merge`] chose.
pub(super) fn winners<'a>(batch: &'a [Pending], written: &[Uuid]) -> HashMap<Uuid, &'a Pending> {
    let written: std::collections::HashSet<&Uuid> = written.iter().collect();
    pick(batch.iter().filter(|p| written.contains(&p.row.order_id)))
        .into_iter()
        .collect()
}

/// Per order, the event that wins when `events` are applied in their log order, by the same
/// rule as the table's guard; by order id.
fn pick<'a>(
    events: impl Iterator<Item = &'a Pending>,
) -> std::collections::BTreeMap<Uuid, &'a Pending> {
    let mut order: Vec<&Pending> = events.collect();
    order.sort_by_key(|p| p.at);
    let mut best = std::collections::BTreeMap::new();
    for p in order {
        best.entry(p.row.order_id)
            .and_modify(|current: &mut &Pending| {
                if replaces(p.rank, current.rank) {
                    *current = p;
                }
            })
            .or_insert(p);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::SCHEMA_VERSION;
    use tokio::sync::oneshot;

    fn event(order_id: Uuid, state: OrderState, version: i64) -> OrderStateEvent {
        OrderStateEvent {
            schema_version: SCHEMA_VERSION,
            order_id,
            tenant_id: "shop-1".into(),
            provider_account: "znet-main".into(),
            provider_reference: None,
            state,
            failure: None,
            pin: None,
            attempts: 0,
            next_check_at: None,
            deadline: None,
            version,
            changed_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }

    fn pending(event: &OrderStateEvent, offset: i64) -> Pending {
        Pending {
            row: OrderRow::from_event(event),
            event: format!("{}@{offset}", event.version),
            rank: crate::core::lifecycle::Rank {
                version: event.version,
                state: event.state,
                placed: event.provider_reference.is_some(),
            },
            at: (0, offset),
            copy: false,
            done: oneshot::channel().0,
            queued: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn an_event_the_table_would_refuse_is_unusable() {
        let id = Uuid::new_v4();
        assert!(check(&event(id, OrderState::Processing, 1)).is_ok());
        assert!(check(&event(Uuid::nil(), OrderState::Processing, 1)).is_err());
        let mut negative = event(id, OrderState::Processing, 1);
        negative.attempts = -1;
        assert!(check(&negative).is_err());
        // Failed without a failure.
        assert!(check(&event(id, OrderState::Failed, 1)).is_err());
    }

    #[test]
    fn the_merge_keeps_per_order_the_event_the_table_guard_would_keep() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let batch = [
            pending(&event(a, OrderState::Processing, 3), 1),
            // An older state after a newer one loses.
            pending(&event(a, OrderState::Processing, 2), 2),
            pending(&event(b, OrderState::Processing, 2), 3),
            // A final state at an equal version wins; nothing replaces it afterwards.
            pending(&event(b, OrderState::Completed, 2), 4),
            pending(&event(b, OrderState::Processing, 5), 5),
        ];
        let (rows, events) = merge(&batch);
        let mut expected = vec![(a, "3@1"), (b, "2@4")];
        expected.sort();
        let got: Vec<(Uuid, &str)> = rows
            .iter()
            .map(|r| r.order_id)
            .zip(events.iter().map(String::as_str))
            .collect();
        assert_eq!(got, expected, "one row per order, by order id");
        let won = winners(&batch, &[b]);
        assert_eq!(won.len(), 1);
        assert_eq!(won[&b].event, "2@4");
    }
}
