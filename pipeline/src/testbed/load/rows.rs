//! Row mode's watcher: finds in PostgreSQL's `orders` table the rows of orders whose final
//! state event was read, so that final means the sink's write.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// How often the row watcher asks PostgreSQL which candidate orders are final.
const ROW_POLL: Duration = Duration::from_millis(150);

/// Order ids per row-watcher query.
const ROW_CHUNK: usize = 5_000;

/// An order's row found final in PostgreSQL.
pub(super) struct FinalRow {
    pub(super) order_id: Uuid,
    pub(super) completed: bool,
    pub(super) updated_at: DateTime<Utc>,
}

/// Every [`ROW_POLL`], looks up the candidates (orders whose final state event was read
/// from `orders.state`, so their row is due) by primary key and reports those whose row is
/// final, each once. Returns how many ids it looked up in all.
pub(super) fn watch_rows(
    pool: PgPool,
    mut candidates: mpsc::UnboundedReceiver<Uuid>,
    found: mpsc::UnboundedSender<FinalRow>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut pending: Vec<Uuid> = Vec::new();
        let mut looked_up = 0usize;
        let mut tick = tokio::time::interval(ROW_POLL);
        let mut open = true;
        loop {
            tick.tick().await;
            while open {
                match candidates.try_recv() {
                    Ok(id) => pending.push(id),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if !open {
                return looked_up;
            }
            let mut still = Vec::with_capacity(pending.len());
            for chunk in pending.chunks(ROW_CHUNK) {
                looked_up += chunk.len();
                let rows = sqlx::query_as::<_, (Uuid, String, DateTime<Utc>)>(
                    "SELECT order_id, state, updated_at FROM orders
                     WHERE order_id = ANY($1) AND state IN ('completed', 'failed')",
                )
                .bind(chunk)
                .fetch_all(&pool)
                .await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "looking up final rows failed; trying again");
                        still.extend_from_slice(chunk);
                        continue;
                    }
                };
                let done: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.0).collect();
                still.extend(chunk.iter().filter(|id| !done.contains(id)));
                for (order_id, state, updated_at) in rows {
                    let row = FinalRow {
                        order_id,
                        completed: state == "completed",
                        updated_at,
                    };
                    if found.send(row).is_err() {
                        return looked_up;
                    }
                }
            }
            pending = still;
        }
    })
}
