//! Row mode's watcher: finds in PostgreSQL's `orders` table the rows of orders whose final
//! state event was read, so that final means the sink's write.
//!
//! A candidate (an order whose final state event was read) is looked up by primary key
//! [`FIRST_LOOK`] after it was read, past the sink's usual delay, and while its row is not
//! final yet again at doubling intervals up to [`LONGEST_WAIT`] ([`Lookups`]). Each lookup
//! is work for the PostgreSQL being measured; when every pending candidate was looked up at
//! every tick, a sink behind by `L` seconds at `R` orders/s cost about `7·R·L` lookups a
//! second, which took CPU from the sink and put it further behind (a benchmark at `max` with
//! poll given more room went from 7.7 to 47.5 lookups per order, PostgreSQL from 0.20 to
//! 0.36 ms of CPU per order). Now an order costs one lookup while the sink keeps up, and
//! about one per second of its lag when it does not. The latency of a row is its
//! `updated_at`, so when it is found does not change what is measured; only the run's end
//! waits up to [`LONGEST_WAIT`] more.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// How often the row watcher looks for candidates due a lookup.
const ROW_POLL: Duration = Duration::from_millis(100);

/// Order ids per row-watcher query.
const ROW_CHUNK: usize = 5_000;

/// How long after its final event was read a candidate is first looked up.
const FIRST_LOOK: Duration = Duration::from_millis(300);

/// The longest wait between two lookups of a candidate whose row is not final yet.
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// An order's row found final in PostgreSQL.
pub(super) struct FinalRow {
    pub(super) order_id: Uuid,
    pub(super) completed: bool,
    pub(super) updated_at: DateTime<Utc>,
}

/// Every [`ROW_POLL`], looks up the candidates due a lookup ([`Lookups`]) by primary key
/// and reports those whose row is final, each once. Returns how many ids it looked up.
pub(super) fn watch_rows(
    pool: PgPool,
    mut candidates: mpsc::UnboundedReceiver<Uuid>,
    found: mpsc::UnboundedSender<FinalRow>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut lookups = Lookups::default();
        let mut looked_up = 0usize;
        let mut tick = tokio::time::interval(ROW_POLL);
        let mut open = true;
        loop {
            tick.tick().await;
            let now = Instant::now();
            while open {
                match candidates.try_recv() {
                    Ok(id) => lookups.add(id, now),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if !open {
                return looked_up;
            }
            let due = lookups.due(now);
            for chunk in due.chunks(ROW_CHUNK) {
                looked_up += chunk.len();
                let ids: Vec<Uuid> = chunk.iter().map(|c| c.order_id).collect();
                let rows = sqlx::query_as::<_, (Uuid, String, DateTime<Utc>)>(
                    "SELECT order_id, state, updated_at FROM orders
                     WHERE order_id = ANY($1) AND state IN ('completed', 'failed')",
                )
                .bind(&ids)
                .fetch_all(&pool)
                .await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "looking up final rows failed; trying again");
                        lookups.again(chunk, now);
                        continue;
                    }
                };
                let done: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.0).collect();
                let not_final: Vec<Candidate> = chunk
                    .iter()
                    .filter(|c| !done.contains(&c.order_id))
                    .copied()
                    .collect();
                lookups.again(&not_final, now);
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
        }
    })
}

/// The candidates waiting for their row, earliest next lookup first, so that a tick costs
/// the candidates it takes, not every pending one (pure: the watcher gives it the clock).
#[derive(Debug, Default)]
struct Lookups {
    pending: BinaryHeap<Reverse<Candidate>>,
}

/// An order whose row is looked up at `next`, after waiting `wait` since the last lookup
/// (or since its final event was read). Ordered by `next` first: the derived order follows
/// the fields' order, which the heap in [`Lookups`] depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    next: Instant,
    order_id: Uuid,
    wait: Duration,
}

impl Lookups {
    /// A candidate read at `now`: first looked up [`FIRST_LOOK`] later.
    fn add(&mut self, order_id: Uuid, now: Instant) {
        self.pending.push(Reverse(Candidate {
            order_id,
            next: now + FIRST_LOOK,
            wait: FIRST_LOOK,
        }));
    }

    /// The candidates due a lookup at `now`, taken out: those not found final come back
    /// through [`Lookups::again`].
    fn due(&mut self, now: Instant) -> Vec<Candidate> {
        let mut due = Vec::new();
        while self.pending.peek().is_some_and(|Reverse(c)| c.next <= now) {
            due.extend(self.pending.pop().map(|Reverse(c)| c));
        }
        due
    }

    /// Candidates looked up at `now` whose row was not final (or whose lookup failed):
    /// looked up again after twice their last wait, at most [`LONGEST_WAIT`].
    fn again(&mut self, looked_up: &[Candidate], now: Instant) {
        self.pending.extend(looked_up.iter().map(|c| {
            let wait = (c.wait * 2).min(LONGEST_WAIT);
            Reverse(Candidate {
                order_id: c.order_id,
                next: now + wait,
                wait,
            })
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instants at which `lookups` looks `id` up, ticking every [`ROW_POLL`] for
    /// `span` from `start` and finding the row final at the first lookup at or after `final_at`.
    fn looks(
        lookups: &mut Lookups,
        start: Instant,
        span: Duration,
        final_at: Instant,
    ) -> Vec<Duration> {
        let mut at = Vec::new();
        let mut now = start;
        while now <= start + span {
            let due = lookups.due(now);
            at.extend(due.iter().map(|_| now - start));
            let missed: Vec<Candidate> = due.into_iter().filter(|_| now < final_at).collect();
            lookups.again(&missed, now);
            now += ROW_POLL;
        }
        at
    }

    #[test]
    fn a_row_already_final_is_looked_up_once_after_the_first_wait() {
        let start = Instant::now();
        let mut lookups = Lookups::default();
        lookups.add(Uuid::new_v4(), start);
        let at = looks(&mut lookups, start, Duration::from_secs(10), start);
        assert_eq!(at, vec![FIRST_LOOK]);
        assert!(lookups.pending.is_empty());
    }

    #[test]
    fn a_lagging_row_is_looked_up_at_doubling_waits_up_to_the_longest() {
        let start = Instant::now();
        let mut lookups = Lookups::default();
        lookups.add(Uuid::new_v4(), start);
        // Final 10 s later: lookups at 0.3 and 0.9 s, then every second up to 10.9 s.
        let at = looks(
            &mut lookups,
            start,
            Duration::from_secs(20),
            start + Duration::from_secs(10),
        );
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            vec![300, 900, 1900, 2900, 3900, 4900, 5900, 6900, 7900, 8900, 9900, 10900]
        );
        assert!(lookups.pending.is_empty());
    }

    /// Several candidates: a tick takes exactly those due, earliest first, however they
    /// were added (their ids sort the other way round than their times here).
    #[test]
    fn only_the_candidates_due_are_taken_earliest_first() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let ids: Vec<Uuid> = (0..4u128).map(|i| Uuid::from_u128(100 - i)).collect();
        let mut lookups = Lookups::default();
        // Read at 0, 100, 200 and 300 ms, so first looked up at 300 to 600 ms.
        for i in [2, 0, 3, 1] {
            lookups.add(ids[i], ms(100 * i as u64));
        }
        let taken = |due: Vec<Candidate>| due.iter().map(|c| c.order_id).collect::<Vec<_>>();
        assert!(lookups.due(ms(299)).is_empty());
        let first = lookups.due(ms(450));
        assert_eq!(taken(first.clone()), ids[..2]);
        // The first one again, 600 ms after this lookup: after the other two.
        lookups.again(&first[..1], ms(450));
        assert_eq!(taken(lookups.due(ms(1_049))), ids[2..]);
        assert_eq!(taken(lookups.due(ms(1_050))), ids[..1]);
        assert!(lookups.pending.is_empty());
    }

    #[test]
    fn a_lagging_row_costs_about_one_lookup_per_second_of_lag_not_one_per_tick() {
        let start = Instant::now();
        for (lag_s, most) in [(0, 1), (1, 3), (5, 7), (60, 62)] {
            let mut lookups = Lookups::default();
            lookups.add(Uuid::new_v4(), start);
            let at = looks(
                &mut lookups,
                start,
                Duration::from_secs(lag_s + 10),
                start + Duration::from_secs(lag_s),
            );
            assert!(at.len() <= most, "lag {lag_s} s: {} lookups", at.len());
        }
    }
}
