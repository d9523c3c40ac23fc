//! Writing rows in batches (G2, G3): the [`Batcher`] collects up to `batch_rows` events or
//! waits `batch_linger`, upserts one merged row per order in one statement, retries an
//! outage with backoff, finds the rows the database refuses by writing a refused batch row
//! by row, then answers each event's handler. The handler acknowledges only after that
//! answer, so offsets move after the commit.

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
            let mut batch = vec![first];
            let linger = tokio::time::sleep(self.linger);
            tokio::pin!(linger);
            while batch.len() < self.rows {
                tokio::select! {
                    item = inbox.recv() => match item {
                        Some(item) => batch.push(item),
                        None => break,
                    },
                    _ = &mut linger => break,
                }
            }
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
