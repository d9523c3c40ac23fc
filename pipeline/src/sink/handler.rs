//! The sink's handler: decodes each `orders.state` message, checks it, hands it to the
//! batcher in the log's order, and acknowledges it once its batch is committed; an unusable
//! event or a refused row is dead-lettered, then its order's log repaired (G2, G3, G8).

use super::decide::check;
use super::repair::Repairer;
use super::write::Pending;
use crate::core::backoff::Backoff;
use crate::core::event::{self, InvalidEvent, OrderStateEvent};
use crate::core::lifecycle::Rank;
use crate::db::orders::OrderRow;
use crate::db::Refused;
use crate::kafka::dlq::DeadLetters;
use crate::kafka::stage::MessageHandler;
use crate::shutdown::{Interrupted, Shutdown};
use futures::future::BoxFuture;
use rdkafka::message::{Message, OwnedMessage};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Largest accepted state event, in bytes.
const MAX_EVENT_BYTES: usize = 64 * 1024;

/// What became of a message when it was handed over.
enum Queued {
    /// Waiting for its batch.
    Batched(oneshot::Receiver<Result<(), Refused>>),
    Unusable(InvalidEvent),
    Tombstone,
    /// The batcher has stopped.
    Closed,
}

/// Handles one `orders.state` message.
pub struct SinkHandler {
    pub(super) batcher: mpsc::UnboundedSender<Pending>,
    pub(super) dead_letters: DeadLetters,
    pub(super) repairer: Repairer,
    pub(super) backoff: Backoff,
}

impl SinkHandler {
    /// Decodes `message` and hands it to the batcher. [`Handler::handle`] runs on the
    /// consumer loop's task, in offset order, so the batcher receives events in the log's
    /// order (`max_in_flight` bounds the queue).
    fn enqueue(&self, message: &OwnedMessage) -> Queued {
        let Some(payload) = message.payload() else {
            return Queued::Tombstone;
        };
        let decoded = event::decode::<OrderStateEvent>(payload, MAX_EVENT_BYTES)
            .and_then(|e| check(&e).map(|()| e));
        let event = match decoded {
            Ok(event) => event,
            Err(why) => return Queued::Unusable(why),
        };
        tracing::Span::current().record("order_id", tracing::field::display(event.order_id));
        let copy = message
            .headers()
            .is_some_and(|h| crate::kafka::headers::get(h, crate::kafka::headers::COPY).is_some());
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            row: OrderRow::from_event(&event),
            // Kept as it came (it decoded, so it is JSON).
            event: String::from_utf8_lossy(payload).into_owned(),
            rank: Rank {
                version: event.version,
                state: event.state,
                placed: event.provider_reference.is_some(),
            },
            at: (message.partition(), message.offset()),
            copy,
            done,
            queued: tokio::time::Instant::now(),
        };
        match self.batcher.send(pending) {
            Ok(()) => Queued::Batched(committed),
            Err(_) => Queued::Closed,
        }
    }

    async fn finish(
        &self,
        message: &OwnedMessage,
        queued: Queued,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let why = match queued {
            // orderflow never deletes an order's state: nothing to write.
            Queued::Tombstone => return Ok(()),
            Queued::Unusable(why) => why,
            Queued::Closed => return stopped(shutdown),
            Queued::Batched(committed) => match committed.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(refused)) => InvalidEvent::database_refused(
                    format!("the orders table refused the row: {refused}"),
                    refused.sqlstate,
                ),
                Err(_) => return stopped(shutdown),
            },
        };
        self.dead_letters
            .put(message, &why, &self.backoff, shutdown)
            .await?;
        // The dead-lettered record may now be its order's last one in the log.
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        if let Some(id) = key.and_then(|k| k.parse::<Uuid>().ok()) {
            self.repairer
                .repair(&HashMap::from([(id, None)]), shutdown)
                .await?;
        }
        Ok(())
    }
}

/// The batcher dropped a message's row: expected at shutdown, a bug otherwise (the stage
/// stops on a handler's panic instead of moving on without the row).
fn stopped(shutdown: &Shutdown) -> Result<(), Interrupted> {
    if shutdown.is_set() {
        return Err(Interrupted);
    }
    panic!("the sink's batch writer stopped while the sink runs");
}

impl MessageHandler for SinkHandler {
    fn handle(
        self: Arc<Self>,
        message: OwnedMessage,
        mut shutdown: Shutdown,
    ) -> BoxFuture<'static, Result<(), Interrupted>> {
        let queued = self.enqueue(&message);
        Box::pin(async move { self.finish(&message, queued, &mut shutdown).await })
    }
}
