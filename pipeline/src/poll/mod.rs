//! The poll stage: checks each accepted order with its provider until it is final or out
//! of time (G2, G4, G6).
//!
//! It consumes `orders.dispatched` (the first check, `first_check` after dispatch) and the
//! tier topics `orders.status-check.<tier>`. The shared consumer loop holds each message
//! until it is due, pausing only its partition ([`crate::kafka::stage`]). A due message is
//! one step of its order's check chain: the step is taken in `poll_chains`
//! ([`crate::db::chains`]) so that a copy of it is dropped, the provider is asked within the
//! account's caps and breaker, and the outcome is published before the offset moves:
//!
//! | answer                        | state event            | next message                |
//! |-------------------------------|------------------------|-----------------------------|
//! | completed                     | `completed`, sealed PIN | none                        |
//! | cancelled                     | `failed` (cancelled)   | none                        |
//! | pending, unclear, not found   | `processing`, attempt+1 | next tier, or `failed` (deadline) |
//! | no answer (provider down), an | none: no attempt used  | shortest tier, or `failed` (deadline) |
//! | error code not listed as      |                        |                             |
//! | not-found for the account     |                        |                             |
//!
//! [`reconcile`] is the safety net that brings back chains that stopped.
//!
//! A step whose data the database refuses (SQLSTATE class 22, 23 or 54, see
//! [`crate::db::Refused`]) is dead-lettered as `database_refused` instead of being retried
//! forever; when a batch's statement is refused, its steps are taken one at a time so that
//! only the refused one is.

mod batch;
pub mod reconcile;

use crate::core::backoff::Backoff;
use crate::core::event::{
    self, Failure, InvalidEvent, InvalidKind, OrderDispatched, OrderStateEvent, StatusCheck,
    SCHEMA_VERSION,
};
use crate::core::lifecycle::{version, FailureReason, OrderState};
use crate::core::schedule::{self, GiveUp, Next, Schedule, ScheduleError};
use crate::db::chains::{self, Begun, StepEnd};
use crate::kafka::dlq::DeadLetters;
use crate::kafka::emit::{until_sent, Emitter};
use crate::kafka::stage::{self, BatchArgs, StageOptions};
use crate::kafka::topics::name;
use crate::kafka::KafkaConfig;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::pin::{PinKeyError, PinKeys};
use crate::provider::accounts::{Account, Accounts};
use crate::provider::CheckOutcome;
use crate::secret::Secret;
use crate::shutdown::{Interrupted, Shutdown};
use chrono::{DateTime, Utc};
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Largest accepted dispatched or status-check event, in bytes.
const MAX_EVENT_BYTES: usize = 16 * 1024;

/// The check schedule (flags or environment variables), shared by the poll stage and the
/// reconciler.
#[derive(Clone, Debug, clap::Args)]
pub struct ScheduleArgs {
    /// Delay from the provider's acceptance to an order's first status check.
    #[arg(long, env = "ORDERFLOW_FIRST_CHECK", default_value = "60s")]
    pub first_check: String,

    /// Delays between later checks, the last one repeating; each names its tier topic
    /// orders.status-check.<delay>, which must exist.
    #[arg(
        long,
        env = "ORDERFLOW_CHECK_TIERS",
        default_value = DEFAULT_CHECK_TIERS
    )]
    pub check_tiers: String,

    /// Answered checks after which a still-pending order fails (default: only the deadline
    /// ends it).
    #[arg(long, env = "ORDERFLOW_MAX_CHECK_ATTEMPTS")]
    pub max_check_attempts: Option<u32>,
}

impl ScheduleArgs {
    pub fn schedule(&self) -> Result<Schedule, ScheduleError> {
        let first = schedule::parse_duration(&self.first_check)?;
        let tiers = schedule::parse_tiers(&self.check_tiers)?;
        Schedule::new(first, tiers, self.max_check_attempts)
    }
}

/// The poll stage's consumer group unless configured otherwise.
pub const DEFAULT_GROUP: &str = "orderflow.poll";
/// The delays between checks unless configured otherwise (the last one repeats).
pub const DEFAULT_CHECK_TIERS: &str = "30s,1m,2m,4m,8m,10m";

/// The tier topics of `schedule`, with the environment's prefix, in tier order.
pub fn tier_topics(kafka: &KafkaConfig, schedule: &Schedule) -> Vec<String> {
    schedule
        .tier_labels()
        .iter()
        .map(|label| kafka.topic(&name::status_check(label)))
        .collect()
}

/// Settings of the poll stage (flags or environment variables).
#[derive(Clone, Debug, clap::Args)]
pub struct PollConfig {
    #[command(flatten)]
    pub batch: BatchArgs,

    /// The provider accounts file (TOML, one [[account]] per account; see README).
    #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
    pub accounts_file: PathBuf,

    /// Consumer group of the poll stage.
    #[arg(
        long = "poll-group",
        env = "ORDERFLOW_POLL_GROUP",
        default_value = DEFAULT_GROUP
    )]
    pub group: String,

    /// Status checks worked on at once by this process, per topic it consumes (the first
    /// checks, each tier); waiting messages do not count.
    #[arg(
        long = "poll-max-in-flight",
        env = "ORDERFLOW_POLL_MAX_IN_FLIGHT",
        default_value_t = 64
    )]
    pub max_in_flight: usize,

    #[command(flatten)]
    pub schedule: ScheduleArgs,

    /// A file with the PIN keys (`key_id:base64`, newest first); or set ORDERFLOW_PIN_KEYS.
    #[arg(long = "pin-keys-file", env = "ORDERFLOW_PIN_KEYS_FILE")]
    pub pin_keys_file: Option<PathBuf>,

    /// How long checks in flight may take to finish when the stage is asked to stop.
    #[arg(
        long = "shutdown-grace-ms",
        env = "ORDERFLOW_SHUTDOWN_GRACE_MS",
        default_value_t = 15_000
    )]
    pub shutdown_grace_ms: u64,
}

impl PollConfig {
    /// The PIN keys from ORDERFLOW_PIN_KEYS or the keys file; the poll stage cannot start
    /// without one, because it must never publish a PIN in clear.
    pub fn pin_keys(&self) -> Result<PinKeys, PollError> {
        let env = std::env::var("ORDERFLOW_PIN_KEYS").ok();
        PinKeys::from_env_or_file(env.as_deref(), self.pin_keys_file.as_deref())?
            .ok_or(PollError::NoPinKeys)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Accounts(#[from] crate::provider::accounts::AccountsError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error(transparent)]
    Stage(#[from] crate::kafka::stage::StageError),
    #[error("the check schedule is invalid: {0}")]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    PinKeys(#[from] PinKeyError),
    #[error("no PIN key is configured: set ORDERFLOW_PIN_KEYS or ORDERFLOW_PIN_KEYS_FILE (`orderflow pin-key new` makes one)")]
    NoPinKeys,
}

/// What one answered (or unanswered) check leads to. Pure, so that the policy of the table
/// in this module's header is tested without a provider.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Complete {
        pin: Secret,
        attempts: i32,
    },
    Fail {
        failure: Failure,
        attempts: i32,
    },
    /// Still pending: a `processing` event, and the next check.
    Pending {
        attempts: i32,
        due: DateTime<Utc>,
        tier: usize,
    },
    /// No usable answer: check again without using an attempt.
    Retry {
        due: DateTime<Utc>,
        tier: usize,
        /// What the answer was instead, for the chain's record.
        why: String,
    },
}

impl Decision {
    /// One word for metrics: completed, cancelled, deadline, pending or no_answer.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Complete { .. } => "completed",
            Decision::Fail { failure, .. } => failure.reason.as_str(),
            Decision::Pending { .. } => "pending",
            Decision::Retry { .. } => "no_answer",
        }
    }
}

/// Decides what follows `outcome`, the answer to `check` received at `now`.
pub fn decide(
    check: &StatusCheck,
    outcome: CheckOutcome,
    now: DateTime<Utc>,
    schedule: &Schedule,
) -> Decision {
    let answered = check.attempts.saturating_add(1);
    let give_up = |give_up: GiveUp, attempts: i32, detail: String| Decision::Fail {
        failure: Failure {
            reason: FailureReason::Deadline,
            code: None,
            message: match give_up {
                GiveUp::Deadline => format!("not final by the deadline ({detail})"),
                GiveUp::MaxAttempts => format!("still pending after {attempts} checks ({detail})"),
            },
        },
        attempts,
    };
    let pending = |detail: String| match schedule.next(answered as u32, now, check.deadline) {
        Next::Check { due, tier } => Decision::Pending {
            attempts: answered,
            due,
            tier,
        },
        Next::GiveUp(why) => give_up(why, answered, detail),
    };
    match outcome {
        CheckOutcome::Completed { pin } => Decision::Complete {
            pin,
            attempts: answered,
        },
        CheckOutcome::Cancelled { message } => Decision::Fail {
            failure: Failure {
                reason: FailureReason::Cancelled,
                code: None,
                message,
            },
            attempts: answered,
        },
        CheckOutcome::Pending => pending("the provider still processes it".into()),
        CheckOutcome::Unclear { detail } => pending(detail),
        CheckOutcome::NotFound { code, message } => {
            pending(format!("the provider did not find it: {code}|{message}"))
        }
        // A code the account does not list as not-found says nothing about the order (G9).
        CheckOutcome::Refused { code, message } => {
            let detail = format!("the provider refused the check: {code}|{message}");
            match schedule.retry(now, check.deadline) {
                Next::Check { due, tier } => Decision::Retry {
                    due,
                    tier,
                    why: detail,
                },
                Next::GiveUp(why) => give_up(why, check.attempts, detail),
            }
        }
        CheckOutcome::Transient { detail } => match schedule.retry(now, check.deadline) {
            Next::Check { due, tier } => Decision::Retry {
                due,
                tier,
                why: format!("no usable answer: {detail}"),
            },
            Next::GiveUp(why) => give_up(why, check.attempts, detail),
        },
        CheckOutcome::AccountProblem { detail } => match schedule.retry(now, check.deadline) {
            Next::Check { due, tier } => Decision::Retry {
                due,
                tier,
                why: format!("account {} has a problem: {detail}", check.provider_account),
            },
            Next::GiveUp(why) => give_up(why, check.attempts, detail),
        },
    }
}

/// Handles one dispatched or status-check message.
pub struct PollHandler {
    accounts: Accounts,
    pool: PgPool,
    schedule: Schedule,
    keys: PinKeys,
    emitter: Emitter,
    dead_letters: DeadLetters,
    dispatched_topic: String,
    tier_topics: Vec<String>,
    tier_labels: Vec<String>,
    /// Each consumed topic with the longest a message of it waits ([`hold_at_most`]).
    hold: Vec<(String, Duration)>,
    backoff: Backoff,
    metrics: Arc<Metrics>,
}

impl PollHandler {
    pub fn new(
        kafka: &KafkaConfig,
        pool: PgPool,
        accounts: Accounts,
        schedule: Schedule,
        keys: PinKeys,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PollError> {
        let emitter = Emitter::new(kafka)?.counted(Arc::clone(&metrics));
        let dead_letters = DeadLetters::new(
            emitter.producer().clone(),
            kafka.topic(name::ORDERS_DLQ),
            "poll",
            Arc::clone(&metrics),
        );
        let topics = tier_topics(kafka, &schedule);
        let mut hold = vec![(kafka.topic(name::ORDERS_DISPATCHED), schedule.first_check)];
        for (topic, delay) in topics.iter().zip(&schedule.tiers) {
            hold.push((topic.clone(), *delay));
        }
        Ok(PollHandler {
            accounts,
            pool,
            hold,
            tier_topics: topics,
            tier_labels: schedule.tier_labels(),
            schedule,
            keys,
            emitter,
            dead_letters,
            dispatched_topic: kafka.topic(name::ORDERS_DISPATCHED),
            backoff: Backoff {
                min: Duration::from_millis(200),
                max: Duration::from_secs(10),
            },
            metrics,
        })
    }

    /// How long a message of `topic` waits at most: its delay (the longest, should two
    /// tiers share a topic), or the longest of all for a topic this stage does not know.
    fn hold_of(&self, topic: &str) -> Duration {
        let known = self
            .hold
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, d)| *d);
        known
            .max()
            .or_else(|| self.hold.iter().map(|(_, d)| *d).max())
            .unwrap_or_default()
    }

    /// Counts a dead-lettered message on its order's chain (by the message key), so that the
    /// reconciler stops re-enqueueing a step that is only ever dead-lettered
    /// ([`chains::record_dead_letter`]). Best effort: if the count is lost, the reconciler
    /// sends one copy more.
    async fn count_dead_letter(&self, message: &OwnedMessage) {
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        let Some(order_id) = key.and_then(|k| k.parse::<Uuid>().ok()) else {
            return;
        };
        if let Err(e) = chains::record_dead_letter(&self.pool, order_id).await {
            tracing::warn!(%order_id, error = %e, "counting a dead-lettered check on its chain failed");
        }
    }

    /// The check a message asks for: the first one for a dispatched order.
    fn decode(&self, message: &OwnedMessage) -> Result<StatusCheck, InvalidEvent> {
        let payload = message.payload().unwrap_or_default();
        let check = if message.topic() == self.dispatched_topic {
            let dispatched: OrderDispatched = event::decode(payload, MAX_EVENT_BYTES)?;
            StatusCheck::first(&dispatched, self.schedule.first_check)
        } else {
            event::decode(payload, MAX_EVENT_BYTES)?
        };
        if check.seq < 1 || check.attempts < 0 {
            return Err(InvalidEvent::new(
                InvalidKind::InvalidField,
                "seq must be at least 1 and attempts at least 0",
            ));
        }
        has_successor(&check)?;
        if message.key() != Some(check.order_id.to_string().as_bytes()) {
            return Err(InvalidEvent::new(
                InvalidKind::InvalidField,
                "the message key is not the event's order_id",
            ));
        }
        if self.accounts.get(&check.provider_account).is_none() {
            return Err(InvalidEvent::new(
                InvalidKind::UnknownProviderAccount,
                format!(
                    "provider_account {:?} is not configured",
                    check.provider_account
                ),
            ));
        }
        Ok(check)
    }

    async fn process(
        &self,
        message: &OwnedMessage,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let check = match self.decode(message) {
            Ok(check) => check,
            Err(why) => return self.dead_letter(message, why, shutdown).await,
        };
        tracing::Span::current().record("order_id", tracing::field::display(check.order_id));
        let account = self
            .accounts
            .get(&check.provider_account)
            .expect("checked when decoding");
        let owner = Uuid::new_v4();
        let lease = account.lease();
        loop {
            let begun = crate::db::retry_unless_refused(
                "taking a check step",
                &self.backoff,
                shutdown,
                || chains::begin_step(&self.pool, &check, owner, lease),
            )
            .await?;
            let begun = match begun {
                Ok(begun) => begun,
                Err(refused) => {
                    let why = refused_step(&check, "taking", refused);
                    return self.dead_letter(message, why, shutdown).await;
                }
            };
            match begun {
                Begun::Mine => break,
                Begun::Stale => {
                    tracing::debug!(order_id = %check.order_id, seq = check.seq, "a copy of a check step that is already taken; dropped");
                    return Ok(());
                }
                Begun::Busy { until } => {
                    let wait = (until - Utc::now()).to_std().unwrap_or_default();
                    shutdown
                        .sleep(wait.clamp(Duration::from_millis(100), lease))
                        .await?;
                }
            }
        }
        let stepped = self.step(message, &check, account, owner, shutdown).await;
        if stepped.is_err() {
            // Let the next owner take the step at once instead of waiting the lease out.
            let _ = chains::release(&self.pool, check.order_id, check.seq, owner).await;
        }
        stepped
    }

    /// Checks the order and publishes what follows, then records the step as done.
    async fn step(
        &self,
        message: &OwnedMessage,
        check: &StatusCheck,
        account: &Account,
        owner: Uuid,
        shutdown: &mut Shutdown,
    ) -> Result<(), Interrupted> {
        let permit = tokio::select! {
            permit = account.permit() => permit,
            _ = shutdown.wait() => return Err(Interrupted),
        };
        // The wait for the caps or an open breaker may have outlasted the lease: renew it,
        // and step aside if another worker took the step over meanwhile.
        let renewed =
            crate::shutdown::retry("renewing a check step", &self.backoff, shutdown, || {
                chains::begin_step(&self.pool, check, owner, account.lease())
            })
            .await?;
        if renewed != Begun::Mine {
            tracing::debug!(order_id = %check.order_id, seq = check.seq, "the check step was taken over while waiting for the provider");
            return Ok(());
        }
        let outcome = tokio::select! {
            outcome = permit.check(&check.provider_reference) => outcome,
            _ = shutdown.wait() => return Err(Interrupted),
        };
        let decision = decide(check, outcome, Utc::now(), &self.schedule);
        self.observe(check, &decision);
        let (state, next, end) = self.effects(check, decision);
        until_sent(
            "publishing a check's outcome",
            &self.backoff,
            shutdown,
            || async {
                let state_sent = async {
                    match &state {
                        Some(state) => self.emitter.state(state).await,
                        None => Ok(()),
                    }
                };
                let next_sent = async {
                    match &next {
                        Some((topic, next)) => self.emitter.status_check(topic, next).await,
                        None => Ok(()),
                    }
                };
                let (a, b) = futures::join!(state_sent, next_sent);
                a.and(b)
            },
        )
        .await?;
        let finished = crate::db::retry_unless_refused(
            "recording a check step",
            &self.backoff,
            shutdown,
            || chains::finish_step(&self.pool, check.order_id, check.seq, owner, &end),
        )
        .await?;
        let finished = match finished {
            Ok(finished) => finished,
            Err(refused) => {
                let why = refused_step(check, "recording", refused);
                return self.dead_letter(message, why, shutdown).await;
            }
        };
        if !finished {
            tracing::warn!(order_id = %check.order_id, seq = check.seq, "the check step was taken over by another worker; its next step will run once");
        }
        Ok(())
    }

    /// Copies `message` to the DLQ with `why`, once the broker has it.
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
        until_sent("dead-lettering an event", &self.backoff, shutdown, || {
            self.dead_letters.send(message, &why)
        })
        .await?;
        // The reconciler gives up on a chain whose steps keep being dead-lettered.
        self.count_dead_letter(message).await;
        Ok(())
    }

    /// Counts what a check led to, and how long the order took when it ended.
    fn observe(&self, check: &StatusCheck, decision: &Decision) {
        let outcome = OutcomeLabel {
            outcome: decision.outcome(),
        };
        self.metrics.check_outcomes.get_or_create(&outcome).inc();
        if let Decision::Complete { attempts, .. } | Decision::Fail { attempts, .. } = decision {
            self.metrics.check_attempts.observe(f64::from(*attempts));
            let took = (Utc::now() - check.dispatched_at)
                .to_std()
                .unwrap_or_default();
            self.metrics
                .dispatch_to_final_seconds
                .get_or_create(&outcome)
                .observe(took.as_secs_f64());
            if let Some(created) = check.created_at {
                let took = (Utc::now() - created).to_std().unwrap_or_default();
                self.metrics
                    .created_to_final_seconds
                    .get_or_create(&outcome)
                    .observe(took.as_secs_f64());
            }
        }
    }

    /// The state event, the next message and the chain's record that `decision` makes.
    fn effects(
        &self,
        check: &StatusCheck,
        decision: Decision,
    ) -> (
        Option<OrderStateEvent>,
        Option<(String, StatusCheck)>,
        StepEnd,
    ) {
        let now = Utc::now();
        let version = version::after(check.version);
        let state = |state: OrderState, attempts: i32| OrderStateEvent {
            schema_version: SCHEMA_VERSION,
            order_id: check.order_id,
            tenant_id: check.tenant_id.clone(),
            provider_account: check.provider_account.clone(),
            provider_reference: Some(check.provider_reference.clone()),
            state,
            failure: None,
            pin: None,
            attempts,
            next_check_at: None,
            deadline: Some(check.deadline),
            version,
            changed_at: now,
        };
        let next = |attempts: i32, version: i64, due: DateTime<Utc>, tier: usize| {
            let next = StatusCheck {
                // `decode` refused a check without a successor, so this never saturates.
                seq: check.seq.saturating_add(1),
                attempts,
                due_at: due,
                version,
                ..check.clone()
            };
            (self.tier_topics[tier].clone(), next)
        };
        let id = check.order_id;
        match decision {
            Decision::Complete { pin, attempts } => {
                tracing::debug!(order_id = %id, reference = %check.provider_reference, attempts, "order completed");
                let event = OrderStateEvent {
                    pin: Some(self.keys.seal(id, &pin)),
                    ..state(OrderState::Completed, attempts)
                };
                (
                    Some(event),
                    None,
                    ended(attempts, version, OrderState::Completed),
                )
            }
            Decision::Fail { failure, attempts } => {
                tracing::info!(order_id = %id, reference = %check.provider_reference, attempts, reason = failure.reason.as_str(), detail = %failure.message, "order failed");
                let event = OrderStateEvent {
                    failure: Some(failure),
                    ..state(OrderState::Failed, attempts)
                };
                (
                    Some(event),
                    None,
                    ended(attempts, version, OrderState::Failed),
                )
            }
            Decision::Pending {
                attempts,
                due,
                tier,
            } => {
                tracing::debug!(order_id = %id, attempts, due = %due, "order pending");
                let event = OrderStateEvent {
                    next_check_at: Some(due),
                    ..state(OrderState::Processing, attempts)
                };
                let end = StepEnd {
                    attempts,
                    version,
                    next_check_at: Some(due),
                    final_state: None,
                    tier: Some(self.tier_labels[tier].clone()),
                    error: None,
                };
                (Some(event), Some(next(attempts, version, due, tier)), end)
            }
            Decision::Retry { due, tier, why } => {
                tracing::debug!(order_id = %id, due = %due, %why, "no usable answer from the provider; checking again without using an attempt");
                let end = StepEnd {
                    attempts: check.attempts,
                    version: check.version,
                    next_check_at: Some(due),
                    final_state: None,
                    tier: Some(self.tier_labels[tier].clone()),
                    error: Some(why),
                };
                (
                    None,
                    Some(next(check.attempts, check.version, due, tier)),
                    end,
                )
            }
        }
    }
}

/// Refuses a check whose next step or next state event could not be numbered: `seq` and
/// `version` come from the message, and one at `i64::MAX` would overflow `seq + 1` here and
/// in `poll_chains` (where the error would fail every reconciler pass, not just this order).
fn has_successor(check: &StatusCheck) -> Result<(), InvalidEvent> {
    if check.seq == i64::MAX || check.version == i64::MAX {
        return Err(InvalidEvent::new(
            InvalidKind::InvalidField,
            "seq and version must be below 9223372036854775807 (they are counted up)",
        ));
    }
    Ok(())
}

/// The DLQ reason of a step whose data the database refused while `doing` it.
fn refused_step(check: &StatusCheck, doing: &str, refused: crate::db::Refused) -> InvalidEvent {
    InvalidEvent::database_refused(
        format!(
            "{doing} step {} of order {}'s check chain failed: {refused}",
            check.seq, check.order_id
        ),
        refused.sqlstate,
    )
}

fn ended(attempts: i32, version: i64, state: OrderState) -> StepEnd {
    StepEnd {
        attempts,
        version,
        next_check_at: None,
        final_state: Some(state),
        tier: None,
        error: None,
    }
}

/// When a message is due, read without decoding its payload: a status check carries it in
/// a header; a dispatched order is due `first_check` after the broker's timestamp (its
/// producer stamps it when dispatch publishes it). `None` when neither is there (a message
/// of an older version): the payload decides then.
pub fn due_at(
    message: &OwnedMessage,
    dispatched_topic: &str,
    first_check: Duration,
) -> Option<DateTime<Utc>> {
    if message.topic() == dispatched_topic {
        let stamped = message.timestamp().to_millis()?;
        let first = i64::try_from(first_check.as_millis()).ok()?;
        return DateTime::from_timestamp_millis(stamped.checked_add(first)?);
    }
    let headers = message.headers()?;
    let due = crate::kafka::headers::get(headers, crate::kafka::headers::DUE_AT)?;
    DateTime::from_timestamp_millis(due.parse().ok()?)
}

/// The latest a message may be held: `delay` (its topic's: the first check's on
/// `orders.dispatched`, its tier's on a tier topic) after it reached the broker. An honest
/// message is due by then anyway (its producer set `due` to its own clock plus that delay);
/// the bound keeps a producer whose clock runs ahead, or a hostile due time, from holding
/// a partition for hours (G4). The broker's timestamp is the producer's clock too unless
/// the topic says `LogAppendTime`, so one ahead of `received` (when this consumer got the
/// message) counts as `received`; so does a message without one.
pub fn hold_at_most(
    due: DateTime<Utc>,
    stamped: Option<i64>,
    received: DateTime<Utc>,
    delay: Duration,
) -> DateTime<Utc> {
    let reached = stamped
        .and_then(DateTime::from_timestamp_millis)
        .map_or(received, |at| at.min(received));
    let latest = chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| reached.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    due.min(latest)
}

/// Runs the poll stage until `shutdown`.
pub async fn run(
    config: PollConfig,
    accounts: Accounts,
    kafka: KafkaConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(), PollError> {
    let schedule = config.schedule.schedule()?;
    let keys = config.pin_keys()?;
    let mut topics = vec![kafka.topic(name::ORDERS_DISPATCHED)];
    topics.extend(tier_topics(&kafka, &schedule));
    let mut needed = topics.clone();
    needed.extend([
        kafka.topic(name::ORDERS_STATE),
        kafka.topic(name::ORDERS_DLQ),
    ]);
    kafka.check_topics_off_runtime(needed).await?;
    accounts.observe(Arc::clone(&metrics));
    let handler = Arc::new(PollHandler::new(
        &kafka,
        pool,
        accounts,
        schedule,
        keys,
        Arc::clone(&metrics),
    )?);
    let options = StageOptions {
        group: config.group.clone(),
        topics,
        max_in_flight: config.max_in_flight.max(1),
        batch: config.batch,
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        metrics,
    };
    let consumer = stage::consumer(&kafka, &options)?;
    tracing::info!(group = %options.group, topics = ?options.topics, "poll stage running");
    stage::run(consumer, handler, options, shutdown).await?;
    tracing::info!("poll stage stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(attempts: i32, deadline_in: i64) -> (StatusCheck, DateTime<Utc>) {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let check = StatusCheck {
            schema_version: SCHEMA_VERSION,
            order_id: Uuid::new_v4(),
            tenant_id: "shop-1".into(),
            provider_account: "znet-main".into(),
            provider_reference: "100000042".into(),
            dispatched_at: now,
            deadline: now + chrono::Duration::seconds(deadline_in),
            seq: 3,
            attempts,
            due_at: now,
            version: 4,
            created_at: None,
        };
        (check, now)
    }

    #[test]
    fn a_message_is_held_at_most_its_delay_past_the_broker_timestamp() {
        let received = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let at = |secs: i64| received + chrono::Duration::seconds(secs);
        let ms = |secs: i64| Some(at(secs).timestamp_millis());
        let tier = Duration::from_secs(30);
        // An honest message: stamped a little before it was received, due its delay after.
        assert_eq!(hold_at_most(at(25), ms(-5), received, tier), at(25));
        // A producer whose clock runs two hours ahead: due and stamp both ahead; it waits
        // the tier's delay from when it arrived, not two hours.
        assert_eq!(hold_at_most(at(7230), ms(7200), received, tier), at(30));
        // A due time far past its stamp (a hostile or broken producer).
        assert_eq!(hold_at_most(at(86_400), ms(-5), received, tier), at(25));
        // No timestamp: counted from its arrival.
        assert_eq!(hold_at_most(at(86_400), None, received, tier), at(30));
        // Already due: unchanged.
        assert_eq!(hold_at_most(at(-60), ms(-90), received, tier), at(-60));
        // Extreme values neither panic nor wrap.
        let max = DateTime::<Utc>::MAX_UTC;
        assert_eq!(
            hold_at_most(max, Some(i64::MAX), received, Duration::MAX),
            max
        );
        assert_eq!(hold_at_most(max, Some(i64::MIN), received, tier), at(30));
    }

    #[test]
    fn a_check_whose_successor_cannot_be_numbered_is_refused() {
        let (mut c, now) = check(i32::MAX, 3600);
        assert!(has_successor(&c).is_ok());
        // Attempts saturate instead of overflowing.
        let d = decide(&c, CheckOutcome::Pending, now, &Schedule::default());
        assert!(
            matches!(
                d,
                Decision::Pending {
                    attempts: i32::MAX,
                    ..
                }
            ),
            "{d:?}"
        );
        c.seq = i64::MAX;
        assert!(has_successor(&c).is_err());
        c.seq = 3;
        c.version = i64::MAX;
        assert!(has_successor(&c).is_err());
    }

    #[test]
    fn a_pending_answer_uses_an_attempt_and_moves_up_a_tier() {
        let (c, now) = check(2, 3600);
        let s = Schedule::default();
        assert_eq!(
            decide(&c, CheckOutcome::Pending, now, &s),
            Decision::Pending {
                attempts: 3,
                due: now + chrono::Duration::seconds(120),
                tier: 2
            }
        );
    }

    #[test]
    fn no_answer_uses_no_attempt() {
        let (c, now) = check(2, 3600);
        let d = decide(
            &c,
            CheckOutcome::Transient {
                detail: "503".into(),
            },
            now,
            &Schedule::default(),
        );
        assert_eq!(
            d,
            Decision::Retry {
                due: now + chrono::Duration::seconds(30),
                tier: 0,
                why: "no usable answer: 503".into(),
            }
        );
    }

    #[test]
    fn an_unlisted_error_code_is_no_answer_not_not_found() {
        let (c, now) = check(2, 3600);
        let d = decide(
            &c,
            CheckOutcome::Refused {
                code: "12".into(),
                message: "Sistem meşgul".into(),
            },
            now,
            &Schedule::default(),
        );
        assert_eq!(
            d,
            Decision::Retry {
                due: now + chrono::Duration::seconds(30),
                tier: 0,
                why: "the provider refused the check: 12|Sistem meşgul".into(),
            },
            "no attempt used"
        );
    }

    #[test]
    fn final_answers_end_the_chain() {
        let (c, now) = check(0, 3600);
        let s = Schedule::default();
        let pin = Secret::new("ABCD-1234");
        assert_eq!(
            decide(&c, CheckOutcome::Completed { pin: pin.clone() }, now, &s),
            Decision::Complete { pin, attempts: 1 }
        );
        let Decision::Fail { failure, .. } = decide(
            &c,
            CheckOutcome::Cancelled {
                message: "stok yok".into(),
            },
            now,
            &s,
        ) else {
            panic!("not failed")
        };
        assert_eq!(failure.reason, FailureReason::Cancelled);
    }

    #[test]
    fn at_the_deadline_pending_and_no_answer_both_fail() {
        let (c, now) = check(5, 0);
        let s = Schedule::default();
        for outcome in [
            CheckOutcome::Pending,
            CheckOutcome::Transient {
                detail: "timeout".into(),
            },
        ] {
            let Decision::Fail { failure, .. } = decide(&c, outcome, now, &s) else {
                panic!("not failed")
            };
            assert_eq!(failure.reason, FailureReason::Deadline);
        }
        // A completed answer still wins at the deadline.
        assert!(matches!(
            decide(
                &c,
                CheckOutcome::Completed {
                    pin: Secret::new("X")
                },
                now,
                &s
            ),
            Decision::Complete { .. }
        ));
    }
}
