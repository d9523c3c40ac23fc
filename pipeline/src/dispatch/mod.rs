//! The dispatch stage: `orders.created` → one placement per order at its provider →
//! `orders.dispatched` and `orders.state` (G1, G2, G8).
//!
//! Each message runs through [`DispatchHandler`]: decode and validate (a bad event goes to
//! `orders.dlq` with its reason), settle the placement ([`placement::Placer`]), then publish
//! the outcome. The message's offset is committed only after the outcome is on the broker,
//! by the shared consumer loop in [`crate::kafka::stage`].
//!
//! An order that cannot settle soon (its account down, refusing its credentials, its
//! breaker open) does not keep its place: past a bound it is parked on
//! `orders.dispatch-retry` ([`park`]) with a due time, which this stage also consumes, so
//! healthy orders keep flowing while it waits.

mod batch;
pub mod park;
pub mod placement;

use crate::core::backoff::{random_fraction, Backoff};
use crate::core::event::{
    Failure, InvalidEvent, InvalidKind, OrderCreated, OrderDispatched, OrderStateEvent,
    SCHEMA_VERSION,
};
use crate::core::lifecycle::{version, FailureReason, OrderState};
use crate::db::claims::Claim;
use crate::kafka::dlq::DeadLetters;
use crate::kafka::emit::{until_sent, Emitter};
use crate::kafka::stage::{self, BatchArgs, StageOptions};
use crate::kafka::topics::name;
use crate::kafka::KafkaConfig;
use crate::metrics::{AccountLabel, Metrics};
use crate::provider::accounts::Accounts;
use crate::shutdown::{Interrupted, Shutdown};
use chrono::Utc;
use park::ParkBackoff;
use placement::{Parked, Placer, Settled};
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long the `dispatching` state may hold a placement up.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

/// Settings of the dispatch stage (flags or environment variables).
#[derive(Clone, Debug, clap::Args)]
pub struct DispatchConfig {
    #[command(flatten)]
    pub batch: BatchArgs,

    /// The provider accounts file (TOML, one [[account]] per account; see README).
    #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
    pub accounts_file: PathBuf,

    /// Consumer group of the dispatch stage.
    #[arg(
        long = "dispatch-group",
        env = "ORDERFLOW_DISPATCH_GROUP",
        default_value = "orderflow.dispatch"
    )]
    pub group: String,

    /// Orders worked on at once by this process, per topic it consumes (orders.created,
    /// orders.dispatch-retry); parked orders waiting for their due time do not count.
    #[arg(
        long = "dispatch-max-in-flight",
        env = "ORDERFLOW_DISPATCH_MAX_IN_FLIGHT",
        default_value_t = 64
    )]
    pub max_in_flight: usize,

    /// Largest accepted orders.created event, in bytes; larger ones are dead-lettered.
    #[arg(long = "max-event-bytes", env = "ORDERFLOW_MAX_EVENT_BYTES", default_value_t = crate::core::event::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,

    /// An order's deadline, in seconds after dispatch, unless its event sets one.
    #[arg(
        long = "order-deadline-secs",
        env = "ORDERFLOW_ORDER_DEADLINE_SECS",
        default_value_t = 86_400
    )]
    pub deadline_secs: u64,

    /// First delay before retrying a failed provider call, in milliseconds; it doubles up to
    /// the maximum.
    #[arg(
        long = "dispatch-retry-min-ms",
        env = "ORDERFLOW_DISPATCH_RETRY_MIN_MS",
        default_value_t = 1_000
    )]
    pub retry_min_ms: u64,

    /// Longest delay between retries of a failed provider call, in milliseconds.
    #[arg(
        long = "dispatch-retry-max-ms",
        env = "ORDERFLOW_DISPATCH_RETRY_MAX_MS",
        default_value_t = 60_000
    )]
    pub retry_max_ms: u64,

    /// How long one order may be retried in this process, its waits included, before it is
    /// parked on orders.dispatch-retry (freeing its place) instead of waiting again.
    #[arg(
        long = "dispatch-park-after-ms",
        env = "ORDERFLOW_DISPATCH_PARK_AFTER_MS",
        default_value_t = 10_000
    )]
    pub park_after_ms: u64,

    /// How long an order parked for the first time waits on orders.dispatch-retry, in
    /// milliseconds; each further parking doubles it, up to the maximum.
    #[arg(
        long = "dispatch-park-min-ms",
        env = "ORDERFLOW_DISPATCH_PARK_MIN_MS",
        default_value_t = 5_000
    )]
    pub park_min_ms: u64,

    /// Longest wait of a parked order, in milliseconds.
    #[arg(
        long = "dispatch-park-max-ms",
        env = "ORDERFLOW_DISPATCH_PARK_MAX_MS",
        default_value_t = 600_000
    )]
    pub park_max_ms: u64,

    /// Publish the informational `dispatching` state before placing (off: it costs a send
    /// on the critical path, and `dispatched` follows within the provider's answer time).
    #[arg(
        long = "dispatch-announce",
        env = "ORDERFLOW_DISPATCH_ANNOUNCE",
        default_value_t = false
    )]
    pub announce: bool,

    /// How long orders in flight may take to finish when the stage is asked to stop.
    #[arg(
        long = "shutdown-grace-ms",
        env = "ORDERFLOW_SHUTDOWN_GRACE_MS",
        default_value_t = 15_000
    )]
    pub shutdown_grace_ms: u64,
}

impl DispatchConfig {
    fn backoff(&self) -> Backoff {
        Backoff {
            min: Duration::from_millis(self.retry_min_ms.max(1)),
            max: Duration::from_millis(self.retry_max_ms.max(self.retry_min_ms).max(1)),
        }
    }

    fn park_backoff(&self) -> ParkBackoff {
        ParkBackoff(Backoff {
            min: Duration::from_millis(self.park_min_ms.max(1)),
            max: Duration::from_millis(self.park_max_ms.max(self.park_min_ms).max(1)),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Accounts(#[from] crate::provider::accounts::AccountsError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error(transparent)]
    Stage(#[from] crate::kafka::stage::StageError),
}

/// Handles one `orders.created` message.
pub struct DispatchHandler {
    accounts: Accounts,
    placer: Placer,
    emitter: Emitter,
    dead_letters: DeadLetters,
    max_event_bytes: usize,
    default_deadline: chrono::Duration,
    announce: bool,
    /// `orders.dispatch-retry` with the environment's prefix.
    retry_topic: String,
    park_backoff: ParkBackoff,
    metrics: Arc<Metrics>,
}

impl DispatchHandler {
    pub fn new(
        config: &DispatchConfig,
        kafka: &KafkaConfig,
        pool: PgPool,
        accounts: Accounts,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DispatchError> {
        let emitter = Emitter::new(kafka)?.counted(Arc::clone(&metrics));
        let dead_letters = DeadLetters::new(
            emitter.producer().clone(),
            kafka.topic(name::ORDERS_DLQ),
            "dispatch",
            Arc::clone(&metrics),
        );
        Ok(DispatchHandler {
            accounts,
            placer: Placer {
                pool,
                backoff: config.backoff(),
                park_after: Duration::from_millis(config.park_after_ms),
            },
            emitter,
            dead_letters,
            max_event_bytes: config.max_event_bytes,
            default_deadline: chrono::Duration::seconds(
                config.deadline_secs.min(i64::MAX as u64) as i64
            ),
            announce: config.announce,
            retry_topic: kafka.topic(name::ORDERS_DISPATCH_RETRY),
            park_backoff: config.park_backoff(),
            metrics,
        })
    }

    /// The account of a validated order.
    fn account(&self, order: &OrderCreated) -> &Arc<crate::provider::accounts::Account> {
        self.accounts
            .get(&order.provider_account)
            .expect("validated before")
    }

    async fn process(
        &self,
        message: &OwnedMessage,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let order = match self.validate(message) {
            Ok(order) => order,
            Err(why) => return self.dead_letter(message, why, shutdown).await,
        };
        tracing::Span::current().record("order_id", tracing::field::display(order.order_id));
        let account = self
            .accounts
            .get(&order.provider_account)
            .expect("validated above");
        let emitter = &self.emitter;
        // A parked order was announced before it was first placed.
        let announce = self.announce && message.topic() != self.retry_topic;
        let settled = self
            .placer
            .settle(
                &order,
                account,
                self.default_deadline,
                |claim: &Claim| {
                    let event = state_event(&order, claim, OrderState::Dispatching, None, version::DISPATCHING);
                    // Informational: wait for it briefly, never hold the placement up for
                    // long. A record already handed to the producer still goes out, ahead
                    // of this order's later events.
                    async move {
                        if !announce {
                            return;
                        }
                        match tokio::time::timeout(ANNOUNCE_WAIT, emitter.state(&event)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!(order_id = %event.order_id, error = %e, "publishing the dispatching state failed"),
                            Err(_) => tracing::warn!(order_id = %event.order_id, "the dispatching state is not acknowledged yet; placing anyway"),
                        }
                    }
                },
                shutdown,
            )
                        .await?;
        if let Settled::Parked(parked) = &settled {
            return self.park(message, &order, parked, shutdown).await;
        }
        if let Settled::AccountConflict(claim) = &settled {
            let why = InvalidEvent::new(
                InvalidKind::AccountConflict,
                format!(
                    "order {} was placed with provider_account {:?}, this event names {:?}",
                    order.order_id, claim.provider_account, order.provider_account
                ),
            );
            return self.dead_letter(message, why, shutdown).await;
        }
        if let Settled::ContentConflict(_) = &settled {
            // The detail names no field value: user fields may be personal data.
            let why = InvalidEvent::new(
                InvalidKind::ConflictingDuplicate,
                format!(
                    "order {} was first received with other content (tenant, product or \
                     user fields); the first event wins and this one is not placed",
                    order.order_id
                ),
            );
            return self.dead_letter(message, why, shutdown).await;
        }
        self.publish(&order, &settled, shutdown).await
    }

    /// Parks the order: its record goes to the retry topic, due after a wait that grows
    /// with each parking; the original is acknowledged (by the caller) once the copy is on
    /// the broker.
    async fn park(
        &self,
        message: &OwnedMessage,
        order: &OrderCreated,
        parked: &Parked,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let times = park::times_parked(message).saturating_add(1);
        let now = Utc::now();
        let due = self.park_backoff.due(times, parked, now, random_fraction());
        let producer = self.emitter.producer();
        until_sent("parking an order", &self.placer.backoff, shutdown, || {
            park::send(producer, &self.retry_topic, message, due, times)
        })
        .await?;
        self.metrics
            .dispatch_parked
            .get_or_create(&AccountLabel {
                account: order.provider_account.clone(),
            })
            .inc();
        tracing::info!(
            order_id = %order.order_id, account = %order.provider_account, times_parked = times,
            due_in_ms = park::millis_until(due, now), "order parked on {}: {}",
            name::ORDERS_DISPATCH_RETRY, parked.why
        );
        Ok(())
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        why: InvalidEvent,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        tracing::warn!(
            topic = message.topic(), partition = message.partition(), offset = message.offset(),
            reason = why.kind.as_str(), detail = %why.detail, "event dead-lettered"
        );
        until_sent(
            "dead-lettering an event",
            &self.placer.backoff,
            shutdown,
            || self.dead_letters.send(message, &why),
        )
        .await
    }

    fn validate(&self, message: &OwnedMessage) -> Result<OrderCreated, InvalidEvent> {
        let order =
            OrderCreated::decode(message.payload().unwrap_or_default(), self.max_event_bytes)?;
        let account = self.accounts.get(&order.provider_account).ok_or_else(|| {
            InvalidEvent::new(
                InvalidKind::UnknownProviderAccount,
                format!(
                    "provider_account {:?} is not configured",
                    order.provider_account
                ),
            )
        })?;
        account
            .provider
            .validate_product(&order.product)
            .map_err(|why| InvalidEvent::new(InvalidKind::InvalidProduct, why))?;
        // The key decides the partition, and so the order of one order's events.
        if let Some(key) = message.key() {
            if key != order.order_id.to_string().as_bytes() {
                return Err(InvalidEvent::new(
                    InvalidKind::InvalidField,
                    "the message key is not the event's order_id",
                ));
            }
        }
        Ok(order)
    }

    async fn publish(
        &self,
        order: &OrderCreated,
        settled: &Settled,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        match settled {
            Settled::Placed(claim) => {
                tracing::debug!(order_id = %order.order_id, reference = %claim.provider_reference, "order placed");
                let state = state_event(
                    order,
                    claim,
                    OrderState::Dispatched,
                    None,
                    version::DISPATCHED,
                );
                let dispatched = OrderDispatched {
                    schema_version: SCHEMA_VERSION,
                    order_id: order.order_id,
                    tenant_id: order.tenant_id.clone(),
                    provider_account: claim.provider_account.clone(),
                    provider_reference: claim.provider_reference.clone(),
                    dispatched_at: state.changed_at,
                    deadline: claim.deadline,
                    version: version::DISPATCHED,
                    created_at: Some(order.created_at),
                };
                until_sent(
                    "publishing a dispatched order",
                    &self.placer.backoff,
                    shutdown,
                    || async {
                        let (a, b) = futures::join!(
                            self.emitter.state(&state),
                            self.emitter.dispatched(&dispatched)
                        );
                        a.and(b)
                    },
                )
                .await
            }
            Settled::Rejected {
                claim,
                code,
                message,
            } => {
                tracing::info!(order_id = %order.order_id, reference = %claim.provider_reference, code = %code, "order rejected by the provider");
                let failure = Failure {
                    reason: FailureReason::Rejected,
                    code: Some(code.clone()),
                    message: message.clone(),
                };
                let state = state_event(
                    order,
                    claim,
                    OrderState::Failed,
                    Some(failure),
                    version::DISPATCHED,
                );
                until_sent(
                    "publishing a rejected order",
                    &self.placer.backoff,
                    shutdown,
                    || self.emitter.state(&state),
                )
                .await
            }
            Settled::AccountConflict(_) | Settled::ContentConflict(_) | Settled::Parked(_) => {
                unreachable!("dead-lettered or parked before publishing")
            }
            Settled::Expired(claim) => {
                tracing::info!(order_id = %order.order_id, reference = %claim.provider_reference, "order expired before placement");
                // The code is the provider's last refusal, when it kept refusing (G9: not a
                // rejection, but the shop may want to know why).
                let failure = Failure {
                    reason: FailureReason::Deadline,
                    code: claim.outcome_code.clone(),
                    message: claim
                        .outcome_message
                        .clone()
                        .unwrap_or_else(|| "deadline passed".into()),
                };
                let state = state_event(
                    order,
                    claim,
                    OrderState::Failed,
                    Some(failure),
                    version::DISPATCHED,
                );
                until_sent(
                    "publishing an expired order",
                    &self.placer.backoff,
                    shutdown,
                    || self.emitter.state(&state),
                )
                .await
            }
        }
    }
}

fn state_event(
    order: &OrderCreated,
    claim: &Claim,
    state: OrderState,
    failure: Option<Failure>,
    version: i64,
) -> OrderStateEvent {
    OrderStateEvent {
        schema_version: SCHEMA_VERSION,
        order_id: order.order_id,
        tenant_id: order.tenant_id.clone(),
        provider_account: claim.provider_account.clone(),
        provider_reference: Some(claim.provider_reference.clone()),
        state,
        failure,
        pin: None,
        attempts: 0,
        next_check_at: None,
        deadline: Some(claim.deadline),
        version,
        changed_at: Utc::now(),
    }
}

/// Runs the dispatch stage until `shutdown`.
pub async fn run(
    config: DispatchConfig,
    accounts: Accounts,
    kafka: KafkaConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(), DispatchError> {
    kafka
        .check_topics_off_runtime(
            [
                name::ORDERS_CREATED,
                name::ORDERS_DISPATCH_RETRY,
                name::ORDERS_DISPATCHED,
                name::ORDERS_STATE,
                name::ORDERS_DLQ,
            ]
            .map(|topic| kafka.topic(topic))
            .to_vec(),
        )
        .await?;
    accounts.observe(Arc::clone(&metrics));
    let handler = Arc::new(DispatchHandler::new(
        &config,
        &kafka,
        pool,
        accounts,
        Arc::clone(&metrics),
    )?);
    let options = StageOptions {
        group: config.group.clone(),
        // Parked orders come back on their own topic, with an in-flight bound of their own:
        // a crowd of them coming back cannot starve new orders, nor new orders them.
        topics: vec![
            kafka.topic(name::ORDERS_CREATED),
            kafka.topic(name::ORDERS_DISPATCH_RETRY),
        ],
        max_in_flight: config.max_in_flight.max(1),
        batch: config.batch,
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        metrics,
    };
    let consumer = stage::consumer(&kafka, &options)?;
    tracing::info!(group = %options.group, topics = ?options.topics, "dispatch stage running");
    stage::run(consumer, handler, options, shutdown).await?;
    tracing::info!("dispatch stage stopped");
    Ok(())
}
