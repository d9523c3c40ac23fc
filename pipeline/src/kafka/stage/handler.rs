//! What a stage implements ([`Handler`], or [`MessageHandler`] for one message at a time)
//! and what the loop hands it: [`Delivery`]s, each with the [`Ack`] that moves its offset.

use super::Done;
use crate::core::engine::{Millis, Outcome, Token};
use crate::shutdown::{Interrupted, Shutdown};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::{Message, OwnedMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a stage does with a batch of due messages. `handle` is called on the loop's task,
/// in fetch order (so a stage may enqueue in log order before returning its future); the
/// future runs in a task of its own. Each message's [`Ack`] is given once its effects are
/// durable; a message whose ack is dropped unacknowledged is redone by the next owner.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, batch: Vec<Delivery>, shutdown: Shutdown) -> BoxFuture<'static, ()>;

    /// When `message` may be handled; `None` (the default) means now. A message is never
    /// handed to [`Handler::handle`] before this time. Called once per message, before it
    /// is decoded: read a header, not the payload.
    fn due_at(&self, _message: &OwnedMessage) -> Option<DateTime<Utc>> {
        None
    }
}

/// A stage that works on one message at a time, run under the batched loop by
/// [`PerMessage`]: the messages of a batch are worked on concurrently.
pub trait MessageHandler: Send + Sync + 'static {
    /// Returns `Ok` once the message's effects are durable, or `Err(Interrupted)` if
    /// shutdown stopped it before that.
    fn handle(
        self: Arc<Self>,
        message: OwnedMessage,
        shutdown: Shutdown,
    ) -> BoxFuture<'static, Result<(), Interrupted>>;

    /// As [`Handler::due_at`].
    fn due_at(&self, _message: &OwnedMessage) -> Option<DateTime<Utc>> {
        None
    }
}

/// Runs a [`MessageHandler`] as a [`Handler`].
pub struct PerMessage<H>(pub Arc<H>);

impl<H: MessageHandler> Handler for PerMessage<H> {
    fn handle(self: Arc<Self>, batch: Vec<Delivery>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        // Each `handle` here, in order; their futures together.
        let mut running: FuturesUnordered<_> = batch
            .into_iter()
            .map(|delivery| {
                let (message, ack) = delivery.into_parts();
                let span = message_span(&message);
                let work = span.in_scope(|| Arc::clone(&self.0).handle(message, shutdown.clone()));
                async move {
                    if tracing::Instrument::instrument(work, span).await.is_ok() {
                        ack.durable();
                    }
                }
            })
            .collect();
        Box::pin(async move { while running.next().await.is_some() {} })
    }

    fn due_at(&self, message: &OwnedMessage) -> Option<DateTime<Utc>> {
        self.0.due_at(message)
    }
}

/// The span of one message's work, continuing the order's trace from the message's
/// headers, while OpenTelemetry is on; no span (and no cost) otherwise.
pub fn message_span(message: &OwnedMessage) -> tracing::Span {
    if !crate::telemetry::is_on() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "message",
        otel.name = message.topic(),
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        order_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, message.headers());
    if let Some(id) = crate::telemetry::trace_id(&span, message.headers()) {
        span.record("trace_id", id);
    }
    span
}

/// Drives `running` (a batch's per-message work) to the end, handing what finishes to
/// `settle` in groups: everything finished while earlier groups were being settled goes in
/// the next group, with at most `concurrent` groups being settled at once. So a handler
/// spends one statement and one round of sends on many messages under load, and at once
/// on a lone one; and work still running is polled while groups are settled.
pub async fn in_groups<T, W, F, Fut>(
    mut running: FuturesUnordered<W>,
    concurrent: usize,
    mut settle: F,
) where
    W: std::future::Future<Output = T>,
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut settling = FuturesUnordered::new();
    let mut waiting: Vec<T> = Vec::new();
    loop {
        if !waiting.is_empty() && settling.len() < concurrent.max(1) {
            settling.push(settle(std::mem::take(&mut waiting)));
        }
        if running.is_empty() && settling.is_empty() {
            if waiting.is_empty() {
                return;
            }
            continue;
        }
        tokio::select! {
            Some(done) = running.next(), if !running.is_empty() => {
                waiting.push(done);
                while let Some(Some(more)) = futures::FutureExt::now_or_never(running.next()) {
                    waiting.push(more);
                }
            }
            Some(()) = settling.next(), if !settling.is_empty() => {}
        }
    }
}

/// One message handed to a [`Handler`], with its acknowledgement.
pub struct Delivery {
    pub message: OwnedMessage,
    pub ack: Ack,
    /// How long after its due time the loop handed it over; `None` for a message that had
    /// no due time. A stage that delays messages exports it as it sees fit (the poll stage:
    /// `orderflow_check_lateness_seconds`).
    pub late: Option<Duration>,
}

impl Delivery {
    pub fn into_parts(self) -> (OwnedMessage, Ack) {
        (self.message, self.ack)
    }
}

/// Tells the loop how one message ended. Dropped without [`Ack::durable`], it reports the
/// message interrupted: its offset does not move and the next owner redoes it.
pub struct Ack {
    pub(super) token: Token,
    pub(super) ready_at: Millis,
    pub(super) done: Option<mpsc::UnboundedSender<Done>>,
}

impl Ack {
    /// The message's effects are durable: its offset may be committed.
    pub fn durable(mut self) {
        self.send(Outcome::Durable);
    }

    fn send(&mut self, outcome: Outcome) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Done {
                token: self.token,
                outcome,
                ready_at: self.ready_at,
            });
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            Outcome::Panicked
        } else {
            Outcome::Interrupted
        };
        self.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::{sleep, Instant};

    /// Work that ends `after` ms from now with `value`.
    fn work(value: u32, after: u64) -> BoxFuture<'static, u32> {
        Box::pin(async move {
            sleep(Duration::from_millis(after)).await;
            value
        })
    }

    /// Runs `in_groups` over work ending at `ends` (ms), each group taking `settling` ms to
    /// settle: the groups in the order they were handed over, each with the ms it was
    /// handed over at, and the ms `in_groups` returned at.
    async fn groups(ends: &[u64], concurrent: usize, settling: u64) -> (Vec<(u64, Vec<u32>)>, u64) {
        let start = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let running: FuturesUnordered<_> = ends
            .iter()
            .enumerate()
            .map(|(i, &end)| work(i as u32, end))
            .collect();
        in_groups(running, concurrent, |mut group| {
            group.sort();
            let at = start.elapsed().as_millis() as u64;
            seen.lock().unwrap().push((at, group));
            sleep(Duration::from_millis(settling))
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        (seen, start.elapsed().as_millis() as u64)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_message_is_settled_at_once() {
        let (seen, ended) = groups(&[10], 2, 3).await;
        assert_eq!(seen, vec![(10, vec![0])]);
        assert_eq!(ended, 13, "returns once its group is settled");
    }

    #[tokio::test(start_paused = true)]
    async fn what_finishes_while_the_places_are_taken_goes_in_one_group() {
        // One place, groups settled in 5 ms: 0 is settled alone at 1; 1, 2 and 3 finish
        // meanwhile and go together at 6; 4 finishes later and goes alone.
        let (seen, ended) = groups(&[1, 2, 3, 4, 20], 1, 5).await;
        assert_eq!(seen, vec![(1, vec![0]), (6, vec![1, 2, 3]), (20, vec![4])]);
        assert_eq!(ended, 25);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_bound_is_settled_at_once() {
        let settling = Arc::new(Mutex::new((0usize, 0usize))); // (now, most)
        let running: FuturesUnordered<_> = (0..8).map(|i| work(i, u64::from(i))).collect();
        let groups = Arc::new(Mutex::new(0));
        in_groups(running, 2, |_group| {
            let settling = Arc::clone(&settling);
            *groups.lock().unwrap() += 1;
            async move {
                {
                    let mut s = settling.lock().unwrap();
                    s.0 += 1;
                    s.1 = s.1.max(s.0);
                }
                sleep(Duration::from_millis(3)).await;
                settling.lock().unwrap().0 -= 1;
            }
        })
        .await;
        assert_eq!(settling.lock().unwrap().1, 2);
        assert!(*groups.lock().unwrap() < 8, "every message settled alone");
    }
}
