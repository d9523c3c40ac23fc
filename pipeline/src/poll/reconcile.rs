//! The reconciler: a safety net that brings back orders whose status checks stopped.
//!
//! Every `every`, one pass asks `check_chains` and `dispatch_claims` for up to `batch` orders
//! that are not final and whose next check is overdue by more than `grace` (a tier message
//! lost to an operator's mistake, a poll worker that died mid-step, an `orders.dispatched`
//! message that never arrived), and enqueues each one's next step again, due now, on the
//! shortest tier. If the original message was only late, both copies carry the same step
//! number and the chain continues once ([`crate::db::chains`]); an order on schedule is
//! never touched.
//!
//! A chain whose step the poll stage dead-letters (its account no longer configured, a step
//! it refuses) would come back every pass, each copy dead-lettered again. The poll stage
//! counts those on the chain; after `max_dead_letters` without the chain moving, the
//! reconciler leaves it alone, logs it and counts it in `orderflow_reconciler_given_up`. The
//! order's answer is then its dead-lettered check in `orders.dlq` (G2, G8): replayed after
//! a fix, the chain moves again (which resets the count). Nothing here fails the order: the
//! provider may still deliver it, and only a check can say (G9).

use crate::core::schedule::{self, ScheduleError};
use crate::db::chains;
use crate::kafka::emit::Emitter;
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use crate::poll::{tier_topics, ScheduleConfig};
use crate::shutdown::{Interrupted, Shutdown};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, clap::Args)]
pub struct ReconcileConfig {
    /// Time between passes.
    #[arg(
        long = "reconcile-every",
        env = "ORDERFLOW_RECONCILE_EVERY",
        default_value = "5m"
    )]
    pub every: String,

    /// How overdue a check must be before the reconciler enqueues it again.
    #[arg(
        long = "reconcile-grace",
        env = "ORDERFLOW_RECONCILE_GRACE",
        default_value = "2m"
    )]
    pub grace: String,

    /// Most orders enqueued again in one pass.
    #[arg(
        long = "reconcile-batch",
        env = "ORDERFLOW_RECONCILE_BATCH",
        default_value_t = 100
    )]
    pub batch: u32,

    /// How far back placed orders without any check are looked for.
    #[arg(
        long = "reconcile-lookback",
        env = "ORDERFLOW_RECONCILE_LOOKBACK",
        default_value = "48h"
    )]
    pub lookback: String,

    /// Dead-lettered steps after which a chain is no longer re-enqueued (the count restarts
    /// when the chain moves).
    #[arg(
        long = "reconcile-max-dead-letters",
        env = "ORDERFLOW_RECONCILE_MAX_DEAD_LETTERS",
        default_value_t = 3
    )]
    pub max_dead_letters: u32,

    /// Run one pass and exit.
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub schedule: ScheduleConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error("the reconciler's settings are invalid: {0}")]
    Settings(#[from] ScheduleError),
    #[error("the database cannot be read: {0}")]
    Database(#[from] sqlx::Error),
    #[error("an overdue order cannot be enqueued: {0}")]
    Publish(#[from] rdkafka::error::KafkaError),
}

/// One pass's settings, parsed.
#[derive(Clone, Debug)]
pub struct Pass {
    pub grace: Duration,
    pub first_check: Duration,
    pub lookback: Duration,
    pub batch: u32,
    pub max_dead_letters: i32,
    /// The shortest tier's topic, with the environment's prefix.
    pub topic: String,
}

impl ReconcileConfig {
    pub fn pass(&self, kafka: &KafkaConfig) -> Result<Pass, ScheduleError> {
        let schedule = self.schedule.schedule()?;
        let shortest = schedule.tier_for(Duration::ZERO);
        Ok(Pass {
            grace: schedule::parse_duration(&self.grace)?,
            first_check: schedule.first_check,
            lookback: schedule::parse_duration(&self.lookback)?,
            batch: self.batch.max(1),
            max_dead_letters: i32::try_from(self.max_dead_letters.max(1)).unwrap_or(i32::MAX),
            topic: tier_topics(kafka, &schedule)[shortest].clone(),
        })
    }
}

impl Pass {
    /// Enqueues overdue orders once; returns how many.
    pub async fn run(&self, pool: &PgPool, emitter: &Emitter) -> Result<usize, ReconcileError> {
        let found = chains::overdue(
            pool,
            self.grace,
            self.first_check,
            self.lookback,
            i64::from(self.batch),
            self.max_dead_letters,
        )
        .await?;
        for requeue in &found {
            emitter.status_check(&self.topic, &requeue.check).await?;
            chains::mark_requeued(pool, requeue).await?;
            tracing::info!(
                order_id = %requeue.check.order_id,
                seq = requeue.check.seq,
                first_check = requeue.first,
                "re-enqueued an order whose check is overdue"
            );
        }
        Ok(found.len())
    }

    /// How many chains the reconciler gave up on ([`chains::given_up`]); logs a few.
    pub async fn given_up(&self, pool: &PgPool) -> Result<i64, ReconcileError> {
        let (count, sample) = chains::given_up(pool, self.max_dead_letters, 5).await?;
        if count > 0 {
            tracing::warn!(
                chains = count,
                orders = ?sample,
                max_dead_letters = self.max_dead_letters,
                "not re-enqueueing orders whose status check the poll stage keeps dead-lettering; \
                 see orders.dlq, fix and replay"
            );
        }
        Ok(count)
    }
}

/// Runs passes every `config.every` until `shutdown` (or once). A failed pass is logged
/// and the next one tries again.
pub async fn run(
    config: ReconcileConfig,
    kafka: KafkaConfig,
    pool: PgPool,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) -> Result<(), ReconcileError> {
    let every = schedule::parse_duration(&config.every)?;
    let pass = config.pass(&kafka)?;
    kafka
        .check_topics_off_runtime(vec![pass.topic.clone()])
        .await?;
    let emitter = Emitter::new(&kafka)?.counted(Arc::clone(&metrics));
    tracing::info!(every = %config.every, grace = %config.grace, batch = pass.batch, "reconciler running");
    loop {
        match pass.given_up(&pool).await {
            Ok(n) => {
                metrics.reconciler_given_up.set(n);
            }
            Err(e) if config.once => return Err(e),
            Err(e) => tracing::warn!(error = %e, "counting the chains given up failed"),
        }
        match pass.run(&pool, &emitter).await {
            Ok(n) => {
                metrics.reconciler_requeued.inc_by(n as u64);
                metrics.set_ready(true);
                tracing::info!(requeued = n, "reconciler pass done")
            }
            Err(e) if config.once => return Err(e),
            Err(e) => tracing::warn!(error = %e, "reconciler pass failed; trying again next pass"),
        }
        if config.once {
            return Ok(());
        }
        if let Err(Interrupted) = shutdown.sleep(every).await {
            tracing::info!("reconciler stopped");
            return Ok(());
        }
    }
}
