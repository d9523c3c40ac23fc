//! Phases 5 and 6, after the chaos: the conflicting copies of claimed orders, then the
//! drain (every valid order in orders.created final in PostgreSQL, within a limit), then
//! everything stopped (SIGTERM flushes the traces).

use crate::background::{Background, Seen};
use crate::bed::Bed;
use crate::common::pipeline::read_to_end;
use crate::hostile::{conflicts_of, Hostile};
use crate::load::{send, Load};
use crate::settings::{Clock, Size};
use orderflow::core::event::OrderCreated;
use orderflow::kafka::topics::name;
use rdkafka::message::Message;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The conflicting copies, once their originals are claimed (so "first" is well defined):
/// the same id under another account, and with other content. They join the hostile
/// events the DLQ must hold.
pub async fn send_conflicts(bed: &Bed, load: &mut Load) {
    let rounds = load.rounds;
    let valid = &load.valid;
    let originals: Vec<&OrderCreated> = valid
        .iter()
        .step_by(valid.len().div_ceil(rounds).max(1))
        .take(rounds)
        .collect();
    for o in &originals {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let claimed: Result<Option<(Uuid,)>, _> =
                sqlx::query_as("SELECT order_id FROM dispatch_claims WHERE order_id = $1")
                    .bind(o.order_id)
                    .fetch_optional(&bed.pool)
                    .await;
            if matches!(claimed, Ok(Some(_))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {} never claimed",
                o.order_id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let conflicts: Vec<Hostile> = originals.iter().flat_map(|o| conflicts_of(o)).collect();
    {
        let producer = bed.kafka.producer().unwrap();
        let topic = bed.kafka.topic(name::ORDERS_CREATED);
        let retries = Mutex::new(0);
        for h in &conflicts {
            send(&producer, &topic, h.key.as_deref(), &h.payload, &retries).await;
        }
    }
    load.hostile.extend(conflicts);
}

/// What the drain saw.
pub struct Drained {
    /// The valid orders that are in orders.created: those G2 covers.
    pub ids: Vec<Uuid>,
    /// Valid orders the publisher's delivery report called delivered that the log does not
    /// hold (never in the pipeline's reach): named in the figures, apart from the lost.
    pub never_in_log: Vec<Uuid>,
    /// Seconds from the end of the chaos to the last order final (or the limit).
    pub drain_s: f64,
}

/// Waits until every valid order in orders.created is final in PostgreSQL (or the limit).
pub async fn until_final(bed: &Bed, clock: &Clock, load: &Load, size: &Size) -> Drained {
    let drain_started = Instant::now();
    let (ids, never_in_log) = in_the_log(bed, clock, load).await;
    let drain_limit = Duration::from_secs(240 + size.orders as u64 / 20);
    let mut last_report = Instant::now();
    let final_count = loop {
        let n: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE order_id = ANY($1) AND state IN ('completed', 'failed')",
        )
        .bind(&ids)
        .fetch_one(&bed.pool)
        .await;
        let n = n.unwrap_or(0) as usize;
        if n == ids.len() || drain_started.elapsed() > drain_limit {
            break n;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            clock.say(&format!("draining: {n} of {} final", ids.len()));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drain_s = drain_started.elapsed().as_secs_f64();
    clock.say(&format!(
        "drained in {drain_s:.1} s: {final_count} of {} final",
        ids.len()
    ));
    Drained {
        ids,
        never_in_log,
        drain_s,
    }
}

/// G2 begins where the broker took the event: the valid orders that are in
/// `orders.created`, and apart those the publisher's delivery report called delivered but
/// that are not in the log (seen twice under the broker restart).
async fn in_the_log(bed: &Bed, clock: &Clock, load: &Load) -> (Vec<Uuid>, Vec<Uuid>) {
    let in_log: HashSet<Uuid> = read_to_end(&bed.kafka, name::ORDERS_CREATED)
        .await
        .iter()
        .filter_map(|m| std::str::from_utf8(m.key()?).ok()?.parse().ok())
        .collect();
    let never_in_log: Vec<Uuid> = load
        .valid
        .iter()
        .map(|o| o.order_id)
        .filter(|id| !in_log.contains(id))
        .collect();
    if !never_in_log.is_empty() {
        clock.say(&format!(
            "{} valid orders reported delivered to the publisher are not in orders.created: {:?}",
            never_in_log.len(),
            never_in_log
        ));
    }
    let ids: Vec<Uuid> = load
        .valid
        .iter()
        .map(|o| o.order_id)
        .filter(|id| in_log.contains(id))
        .collect();
    (ids, never_in_log)
}

/// Late copies of events (a redone step) may still be on their way to the DLQ and the
/// table: gives them a moment, then stops the background tasks and the stages (SIGTERM
/// flushes the traces).
pub async fn stop_everything(bed: &Bed, background: Background) -> Seen {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = background.stop().await;
    let stages = Arc::clone(&bed.stages);
    tokio::task::spawn_blocking(move || {
        for stage in stages.lock().unwrap().iter_mut() {
            stage.stop();
        }
    })
    .await
    .unwrap();
    seen
}
