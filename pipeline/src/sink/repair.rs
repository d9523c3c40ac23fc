//! Ending an order's log on its final row again (see the module header, [`super`]): after
//! a batch, for each order whose row is final and whose last record in the log is not the
//! row's own event, the row's event is published again, marked as a copy (G2, G3).

use super::write::Pending;
use crate::core::backoff::Backoff;
use crate::core::event::OrderStateEvent;
use crate::core::lifecycle::OrderState;
use crate::db::orders;
use crate::kafka::emit::{until_sent, Emitter};
use crate::shutdown::{Interrupted, Shutdown};
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

/// Ends the log of an order on its final row again (see the module header).
#[derive(Clone)]
pub(super) struct Repairer {
    pub(super) pool: PgPool,
    pub(super) emitter: Emitter,
    pub(super) backoff: Backoff,
}

impl Repairer {
    /// For each order whose row is final: unless `last(order)` is the row's own event (or
    /// a sink's copy), publish the row's event again. `last` gives the JSON of the order's
    /// last record, or `None` when that record could not be written at all.
    pub(super) async fn repair(
        &self,
        last: &HashMap<Uuid, Option<serde_json::Value>>,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let ids: Vec<Uuid> = last.keys().copied().collect();
        let rows = crate::shutdown::retry("reading rows back", &self.backoff, shutdown, || {
            orders::current(&self.pool, &ids)
        })
        .await?;
        for (id, _, state, event) in rows {
            let (Ok(state), Some(event)) = (state.parse::<OrderState>(), event) else {
                continue;
            };
            let Ok(row_event) = serde_json::from_str::<serde_json::Value>(&event) else {
                continue;
            };
            if !state.is_final() || last[&id].as_ref() == Some(&row_event) {
                continue;
            }
            let Ok(row_event) = serde_json::from_value::<OrderStateEvent>(row_event) else {
                continue;
            };
            self.publish_copy(&row_event, shutdown).await?;
        }
        Ok(())
    }

    /// Publishes an order's final state again, as the sink's copy, so that the log ends on
    /// it (another record came after it).
    async fn publish_copy(
        &self,
        event: &OrderStateEvent,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        tracing::debug!(order_id = %event.order_id, "another record came after the final state; publishing the final state again");
        until_sent(
            "publishing an order's final state again",
            &self.backoff,
            shutdown,
            || self.emitter.state_copy(event),
        )
        .await
    }

    /// [`Repairer::repair`] for the orders of `batch`, each judged by its last event in the
    /// log; a sink's copy as the last event is left alone. `written` holds the orders whose
    /// row the batch's statement wrote, with the event that won: those are judged without
    /// reading the row back; only the others are read.
    pub(super) async fn repair_batch(
        &self,
        batch: &[Pending],
        written: &HashMap<Uuid, &Pending>,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let mut last: HashMap<Uuid, &Pending> = HashMap::new();
        for p in batch {
            last.entry(p.row.order_id)
                .and_modify(|current| {
                    if p.at > current.at {
                        *current = p;
                    }
                })
                .or_insert(p);
        }
        let mut unknown: HashMap<Uuid, Option<serde_json::Value>> = HashMap::new();
        for (id, p) in last {
            if p.copy {
                continue;
            }
            let Some(winner) = written.get(&id) else {
                unknown.insert(id, serde_json::from_str(&p.event).ok());
                continue;
            };
            if !winner.rank.state.is_final() || winner.event == p.event {
                continue;
            }
            let Ok(event) = serde_json::from_str::<OrderStateEvent>(&winner.event) else {
                continue;
            };
            self.publish_copy(&event, shutdown).await?;
        }
        if unknown.is_empty() {
            return Ok(());
        }
        self.repair(&unknown, shutdown).await
    }
}
