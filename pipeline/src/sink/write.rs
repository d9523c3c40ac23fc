//! Writing rows in batches (G2, G3): the [`Batcher`] collects up to `batch_rows` events, or
//! what came within `batch_linger` of the first one's arrival ([`gather`]), upserts one
//! merged row per order in one statement, retries an outage with backoff, finds the rows
//! the database refuses by writing a refused batch row by row, then answers each event's
//! handler. The handler acknowledges only after that answer, so offsets move after the
//! commit.

use super::decide::{merge, winners};
use super::repair::Repairer;
use crate::core::backoff::{random_fraction, Backoff};
use crate::core::lifecycle::Rank;
use crate::db::orders::{self, OrderRow};
use crate::db::BatchConnections;
use crate::db::Refused;
use crate::metrics::Metrics;
use crate::shutdown::{Interrupted, Shutdown};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// One decoded event waiting for its batch.
pub(super) struct Pending {
    pub(super) row: OrderRow,
    /// The event as JSON, kept with the row it sets.
    pub(super) event: String,
    pub(super) rank: Rank,
    /// Where the event came from, so a batch merges one order's events in their order.
    pub(super) at: (i32, i64),
    /// A copy the sink itself published: never answered with another copy.
    pub(super) copy: bool,
    /// `Ok` once committed, or why the database refused the row.
    pub(super) done: oneshot::Sender<Result<(), Refused>>,
    /// When it was handed to the batcher: its batch's linger counts from here.
    pub(super) queued: Instant,
}

/// Writes rows in batches; see the module header.
pub struct Batcher {
    pub(super) metrics: Arc<Metrics>,
    /// The upserts' connections ([`crate::db::BatchConnections`]).
    pub(super) batch: BatchConnections,
    pub(super) repairer: Repairer,
    pub(super) rows: usize,
    pub(super) linger: Duration,
    pub(super) backoff: Backoff,
}

impl Batcher {
    /// Runs until every sender is dropped or `shutdown`. At shutdown it writes what it was
    /// already handed, so that handlers in flight finish within the stage's grace period.
    pub(super) async fn run(
        self,
        mut inbox: mpsc::UnboundedReceiver<Pending>,
        mut shutdown: Shutdown,
    ) {
        loop {
            let first = tokio::select! {
                item = inbox.recv() => item,
                _ = shutdown.wait() => None,
            };
            let Some(first) = first else {
                inbox.close();
                let mut rest = Vec::new();
                while let Ok(item) = inbox.try_recv() {
                    rest.push(item);
                }
                while !rest.is_empty() {
                    let batch: Vec<Pending> = rest.drain(..rest.len().min(self.rows)).collect();
                    if self.write(batch, &mut shutdown).await.is_err() {
                        return;
                    }
                }
                return;
            };
            let since = first.queued;
            let batch = gather(&mut inbox, first, since, self.rows, self.linger).await;
            if self.write(batch, &mut shutdown).await.is_err() {
                return;
            }
        }
    }

    async fn write(&self, batch: Vec<Pending>, shutdown: &mut Shutdown) -> Result<(), Interrupted> {
        let (rows, events) = merge(&batch);
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            match orders::upsert_batch(&self.batch, &rows, &events).await {
                Ok(written) => {
                    let changed = written.len();
                    self.metrics.sink_batch_rows.observe(rows.len() as f64);
                    self.metrics
                        .sink_batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(
                        events = batch.len(),
                        rows = rows.len(),
                        changed,
                        "batch written"
                    );
                    let written = winners(&batch, &written);
                    self.repairer
                        .repair_batch(&batch, &written, shutdown)
                        .await?;
                    for item in batch {
                        let _ = item.done.send(Ok(()));
                    }
                    return Ok(());
                }
                Err(e) if Refused::of(&e).is_some() => {
                    tracing::warn!(error = %e, rows = rows.len(), "the database refused a batch; writing it row by row to find the refused rows");
                    return self.write_one_by_one(batch, shutdown).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "writing a batch failed; retrying");
                    shutdown
                        .sleep(self.backoff.delay(attempt, random_fraction()))
                        .await?;
                    attempt += 1;
                }
            }
        }
    }

    /// A batch the database refused: find the rows it refuses, one by one, in log order.
    async fn write_one_by_one(
        &self,
        mut batch: Vec<Pending>,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        batch.sort_by_key(|p| p.at);
        let mut outcomes = Vec::with_capacity(batch.len());
        for item in &batch {
            let mut attempt = 0;
            let outcome = loop {
                match orders::upsert_batch(
                    &self.batch,
                    std::slice::from_ref(&item.row),
                    std::slice::from_ref(&item.event),
                )
                .await
                {
                    Ok(_) => break Ok(()),
                    Err(e) => match Refused::of(&e) {
                        Some(refused) => break Err(refused),
                        None => {
                            tracing::warn!(error = %e, "writing a row failed; retrying");
                            shutdown
                                .sleep(self.backoff.delay(attempt, random_fraction()))
                                .await?;
                            attempt += 1;
                        }
                    },
                }
            };
            outcomes.push(outcome);
        }
        // A refused event that came last after a final row must not stay the last record.
        self.repairer
            .repair_batch(&batch, &HashMap::new(), shutdown)
            .await?;
        for (item, outcome) in batch.into_iter().zip(outcomes) {
            let _ = item.done.send(outcome);
        }
        Ok(())
    }
}

/// One batch: `first`, everything already waiting behind it, then what arrives until
/// `linger` after `since` (when `first` was queued), at most `rows` in all. A batch whose
/// first row has waited out the linger already, while the previous batch was written, is
/// written at once with what is there: the linger is there to gather rows while the writer
/// is idle, not to add a wait to every batch when the sink has a backlog.
pub(super) async fn gather<T>(
    inbox: &mut mpsc::UnboundedReceiver<T>,
    first: T,
    since: Instant,
    rows: usize,
    linger: Duration,
) -> Vec<T> {
    let mut batch = vec![first];
    let deadline = tokio::time::sleep_until(since + linger);
    tokio::pin!(deadline);
    while batch.len() < rows {
        match inbox.try_recv() {
            Ok(item) => {
                batch.push(item);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        tokio::select! {
            biased;
            item = inbox.recv() => match item {
                Some(item) => batch.push(item),
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tokio's clock is paused in these tests and moves only when every task waits, so the
    // times asserted are exact whatever the machine's load.

    const LINGER: Duration = Duration::from_millis(200);

    /// A batch whose first row waited out the linger takes what is there and goes,
    /// without waiting at all.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_written_without_lingering() {
        let (tx, mut inbox) = mpsc::unbounded_channel();
        let since = Instant::now();
        tokio::time::advance(LINGER * 2).await;
        for i in 1..=5 {
            tx.send(i).unwrap();
        }
        let called = Instant::now();
        let batch = gather(&mut inbox, 0, since, 100, LINGER).await;
        assert_eq!(batch, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(called.elapsed(), Duration::ZERO, "lingered again");
        drop(tx);
    }

    /// A first row that waited part of the linger waits only the rest.
    #[tokio::test(start_paused = true)]
    async fn a_batch_lingers_from_its_first_rows_arrival() {
        let (tx, mut inbox) = mpsc::unbounded_channel::<u32>();
        let since = Instant::now();
        tokio::time::advance(Duration::from_millis(150)).await;
        let called = Instant::now();
        let batch = gather(&mut inbox, 0, since, 100, LINGER).await;
        assert_eq!(batch, vec![0]);
        assert_eq!(called.elapsed(), Duration::from_millis(50));
        drop(tx);
    }

    /// A fresh first row waits the whole linger for company, and takes what came meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_fresh_batch_lingers_for_more() {
        let (tx, mut inbox) = mpsc::unbounded_channel();
        let started = Instant::now();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(1).unwrap();
            tx
        });
        let batch = gather(&mut inbox, 0, started, 100, LINGER).await;
        assert_eq!(batch, vec![0, 1]);
        assert_eq!(started.elapsed(), LINGER);
        drop(later.await.unwrap());
    }

    /// At most `rows`, at once; the rest stays for the next batch, in order.
    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_leaves_the_rest() {
        let (tx, mut inbox) = mpsc::unbounded_channel();
        for i in 1..10 {
            tx.send(i).unwrap();
        }
        let called = Instant::now();
        let batch = gather(&mut inbox, 0, called, 4, LINGER).await;
        assert_eq!(batch, vec![0, 1, 2, 3]);
        assert_eq!(called.elapsed(), Duration::ZERO);
        assert_eq!(inbox.try_recv().unwrap(), 4);
        drop(tx);
    }

    /// When every sender is gone, what came is the batch, at once.
    #[tokio::test(start_paused = true)]
    async fn a_closed_inbox_ends_the_batch() {
        let (tx, mut inbox) = mpsc::unbounded_channel();
        tx.send(1).unwrap();
        drop(tx);
        let called = Instant::now();
        let batch = gather(&mut inbox, 0, called, 100, LINGER).await;
        assert_eq!(batch, vec![0, 1]);
        assert_eq!(called.elapsed(), Duration::ZERO);
    }
}
