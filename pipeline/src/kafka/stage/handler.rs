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
