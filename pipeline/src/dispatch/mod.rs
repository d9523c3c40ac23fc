//! The dispatch stage: `orders.created` → one placement per order at its provider →
//! `orders.dispatched` and `orders.state` (G1, G2, G8).
//!
//! Each message runs through [`DispatchHandler`]: decode and validate (a bad event goes to
//! `orders.dlq` with its reason), settle the placement ([`placement::Placer`]), then publish
//! the outcome. The message's offset is committed only after the outcome is on the broker,
//! by the shared consumer loop in [`crate::kafka::stage`].
//!
//! Every order gets an answer. A well-formed order that cannot be placed as given (its
//! provider account is not configured, its product is not one the provider sells) is
//! dead-lettered *and* answered `failed` (reason `invalid`) on `orders.state`, so that the
//! shop can refund without reading the DLQ; its order id is claimed as `invalid` first, so
//! the answer is final for the id. It is answered only when its order id was not claimed
//! before: a conflicting duplicate of an existing order (other content, another account,
//! or an unplaceable event reusing its id) is dead-lettered only, because the order it
//! collides with has an answer of its own, and a `failed` under that order id would
//! overwrite it on the compacted topic. An event whose fields cannot be read, or whose key
//! is not its order id, names no order to answer for: the DLQ only. So does an event whose
//! claim the database refuses (`database_refused`): without a claim an answer could be
//! contradicted by a later event.
//!
//! A re-send of an order whose claim is settled never puts an older state on
//! `orders.state`: once its status checks have started (the poll stage has a chain for it,
//! and publishes its later states), the re-send is answered with nothing new; before that
//! (a redelivery after a crash between settling and publishing) the settled outcome is
//! published as the first time.
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
use crate::db::claims::{self, Claim, InvalidClaim};
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

    /// An order's deadline, in seconds after dispatch, unless its event sets one; at most
    /// 2592000 (30 days).
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

/// The longest default deadline: 30 days. Far past the 24 h the old system used, and small
/// enough that every date computed from it stays in range (a value near `u64::MAX` would
/// overflow the time arithmetic).
pub const MAX_DEADLINE_SECS: u64 = 30 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(
        "ORDERFLOW_ORDER_DEADLINE_SECS (--order-deadline-secs) is {0}, but it must be from 1 \
         to at most {MAX_DEADLINE_SECS} seconds (30 days)"
    )]
    DeadlineOutOfRange(u64),
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

impl DispatchConfig {
    /// The deadline of an order whose event sets none, checked to be in range.
    pub fn default_deadline(&self) -> Result<chrono::Duration, DispatchError> {
        let secs = self.deadline_secs;
        if !(1..=MAX_DEADLINE_SECS).contains(&secs) {
            return Err(DispatchError::DeadlineOutOfRange(secs));
        }
        // In range by the check above.
        Ok(chrono::Duration::seconds(secs as i64))
    }
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
            default_deadline: config.default_deadline()?,
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
            Err(refusal) => return self.refuse(message, refusal, shutdown).await,
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
        if let Settled::Refused(refused) = settled {
            let why = InvalidEvent::database_refused(
                format!("claiming order {} failed: {refused}", order.order_id),
                refused.sqlstate,
            );
            return self.dead_letter(message, why, shutdown).await;
        }
        self.publish(&order, &settled, shutdown).await
    }

    /// Dead-letters an event that is not placed and, if it is an order that cannot be
    /// placed as given, answers it `failed` (invalid) unless its order id is claimed
    /// already (see the module header).
    async fn refuse(
        &self,
        message: &OwnedMessage,
        refusal: Refusal,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        match refusal {
            Refusal::Unusable(why) => self.dead_letter(message, why, shutdown).await,
            Refusal::Unplaceable(order, why) => {
                self.answer_invalid(&order, &why, shutdown).await?;
                self.dead_letter(message, why, shutdown).await
            }
        }
    }

    /// Claims `order`'s id as `invalid` and publishes `failed` (invalid) for it, unless the
    /// id was claimed before by another event.
    async fn answer_invalid(
        &self,
        order: &OrderCreated,
        why: &InvalidEvent,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        // The shop's own values (an account id, a product check's sentence), no secret; cut
        // so the event stays within what the sink takes.
        let text: String = format!("the order cannot be placed as given: {}", why.detail)
            .chars()
            .take(1000)
            .collect();
        let digest = order.content_digest();
        let claimed = crate::db::retry_unless_refused(
            "claiming an order that cannot be placed",
            &self.placer.backoff,
            shutdown,
            || {
                claims::claim_invalid(
                    &self.placer.pool,
                    order.order_id,
                    &order.tenant_id,
                    &order.provider_account,
                    &digest,
                    &text,
                )
            },
        )
        .await?;
        let claim = match claimed {
            Ok(InvalidClaim::Answer(claim)) => claim,
            Ok(InvalidClaim::Taken(_)) => {
                tracing::info!(order_id = %order.order_id, "the order id is claimed by another event, which has its own answer; not answering this one");
                return Ok(());
            }
            Err(refused) => {
                tracing::warn!(order_id = %order.order_id, error = %refused, "the database refused to claim the order id; dead-lettering without an answer");
                return Ok(());
            }
        };
        let state = invalid_event(order, &claim);
        until_sent(
            "publishing an order that cannot be placed",
            &self.placer.backoff,
            shutdown,
            || self.emitter.state(&state),
        )
        .await
    }

    /// Whether the poll stage has started the order's status checks: then its later states
    /// are on `orders.state` or on their way, and `dispatched` would be an older one.
    async fn checks_started(
        &self,
        order: &OrderCreated,
        shutdown: &mut Shutdown,
    ) -> Result<bool, Interrupted> {
        let chain = crate::shutdown::retry(
            "reading an order's check chain",
            &self.placer.backoff,
            shutdown,
            || crate::db::chains::get(&self.placer.pool, order.order_id),
        )
        .await?;
        Ok(chain.is_some())
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

    /// The order a message asks for, or why it is not placed.
    fn validate(&self, message: &OwnedMessage) -> Result<OrderCreated, Refusal> {
        let order =
            OrderCreated::decode(message.payload().unwrap_or_default(), self.max_event_bytes)
                .map_err(Refusal::Unusable)?;
        // The key decides the partition, and so the order of one order's events: an event
        // under another key is not answered under its order id.
        let keyed = message
            .key()
            .is_none_or(|key| key == order.order_id.to_string().as_bytes());
        match (self.placeable(&order), keyed) {
            (Ok(()), true) => Ok(order),
            (Ok(()), false) => Err(Refusal::Unusable(InvalidEvent::new(
                InvalidKind::InvalidField,
                "the message key is not the event's order_id",
            ))),
            (Err(why), true) => Err(Refusal::Unplaceable(Box::new(order), why)),
            (Err(why), false) => Err(Refusal::Unusable(why)),
        }
    }

    /// Whether the order's account is configured and sells its product.
    fn placeable(&self, order: &OrderCreated) -> Result<(), InvalidEvent> {
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
            .map_err(|why| InvalidEvent::new(InvalidKind::InvalidProduct, why))
    }

    async fn publish(
        &self,
        order: &OrderCreated,
        settled: &Settled,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let settled = match settled {
            Settled::Earlier(recorded) => {
                if matches!(**recorded, Settled::Placed(_))
                    && self.checks_started(order, shutdown).await?
                {
                    tracing::debug!(order_id = %order.order_id, "a re-send of an order whose checks have started; its states come from the poll stage");
                    return Ok(());
                }
                &**recorded
            }
            settled => settled,
        };
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
            Settled::Invalid(claim) => {
                let state = invalid_event(order, claim);
                until_sent(
                    "publishing an order that cannot be placed",
                    &self.placer.backoff,
                    shutdown,
                    || self.emitter.state(&state),
                )
                .await
            }
            Settled::AccountConflict(_)
            | Settled::ContentConflict(_)
            | Settled::Refused(_)
            | Settled::Parked(_) => {
                unreachable!("dead-lettered or parked before publishing")
            }
            Settled::Earlier(_) => unreachable!("a recorded outcome is never an earlier one"),
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

/// Why an event is not placed.
enum Refusal {
    /// The DLQ only: the event names no order it could be answered for.
    Unusable(InvalidEvent),
    /// A well-formed order that cannot be placed as given: the DLQ, and `failed` (invalid)
    /// unless its order id is claimed already.
    Unplaceable(Box<OrderCreated>, InvalidEvent),
}

/// `failed` (invalid) for an order whose id is claimed as `invalid`. No reference: nothing
/// was ever sent to the provider.
fn invalid_event(order: &OrderCreated, claim: &Claim) -> OrderStateEvent {
    OrderStateEvent {
        schema_version: SCHEMA_VERSION,
        order_id: order.order_id,
        tenant_id: order.tenant_id.clone(),
        provider_account: claim.provider_account.clone(),
        provider_reference: None,
        state: OrderState::Failed,
        failure: Some(Failure {
            reason: FailureReason::Invalid,
            code: None,
            message: claim
                .outcome_message
                .clone()
                .unwrap_or_else(|| "the order cannot be placed as given".into()),
        }),
        pin: None,
        attempts: 0,
        next_check_at: None,
        deadline: None,
        version: version::DISPATCHED,
        changed_at: Utc::now(),
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
