//! Stages ride out what they can wait out: the patience setting, the start-up wait for
//! PostgreSQL, and the watchers that keep `/readyz` false while the database or the Kafka
//! cluster does not answer and end the stage once an outage outlasts the patience, or at
//! once when waiting cannot help. What is curable and how long to wait is decided by
//! [`crate::core::outage`]; the Kafka start-up wait is [`crate::kafka::KafkaConfig::check_topics_off_runtime`]'s.
//!
//! Work in flight is not touched by any of this: its writes retry until they are durable
//! ([`crate::shutdown::retry`]) and offsets move only after them (G2), so an outage only
//! pauses the stage. Giving up is a graceful shutdown (work in flight gets its grace) with
//! one sentence and a non-zero exit.

use crate::core::backoff::{random_fraction, Backoff};
use crate::core::outage::{Fault, Outage, Verdict};
use crate::core::schedule::{self, ScheduleError};
use crate::db::{DbConfig, DbError};
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Trigger};
use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a stage waits out an outage (flag or environment variable, shared by the stages).
#[derive(Clone, Debug, clap::Args)]
pub struct OutageConfig {
    /// How long a stage waits, not ready on /readyz, for the Kafka cluster or PostgreSQL to
    /// answer again (a restart, a leader election, a failover) before it exits; e.g. `90s`,
    /// `5m`. Failures waiting cannot cure (credentials refused, a database or topic that
    /// does not exist) end the stage at once.
    #[arg(
        long = "outage-patience",
        env = "ORDERFLOW_OUTAGE_PATIENCE",
        default_value = "5m"
    )]
    pub patience: String,
}

impl Default for OutageConfig {
    fn default() -> Self {
        OutageConfig {
            patience: "5m".into(),
        }
    }
}

impl OutageConfig {
    pub fn patience(&self) -> Result<Duration, OutageError> {
        schedule::parse_duration(&self.patience).map_err(OutageError::Patience)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutageError {
    #[error("ORDERFLOW_OUTAGE_PATIENCE is invalid: {0}")]
    Patience(ScheduleError),
    /// A watcher ended the stage; the sentence says why.
    #[error("{0}")]
    GaveUp(String),
}

/// Ends a stage that cannot wait any longer: keeps the first reason and fires shutdown.
#[derive(Clone, Debug)]
pub struct GiveUp {
    reason: Arc<OnceLock<String>>,
    trigger: Trigger,
}

impl GiveUp {
    pub fn new(trigger: Trigger) -> GiveUp {
        GiveUp {
            reason: Arc::default(),
            trigger,
        }
    }

    /// Stops the stage for `reason` (the first reason given wins).
    pub fn now(&self, reason: String) {
        tracing::error!("{reason}");
        let _ = self.reason.set(reason);
        self.trigger.fire();
    }

    /// Why the stage was stopped, if a watcher stopped it.
    pub fn reason(&self) -> Option<OutageError> {
        self.reason.get().cloned().map(OutageError::GaveUp)
    }
}

/// Waits between two tries of something that is away: 1 s, doubling to 10 s, jittered.
const RETRY: Backoff = Backoff {
    min: Duration::from_secs(1),
    max: Duration::from_secs(10),
};

/// Connects to PostgreSQL, waiting out an outage for up to `patience` (the metrics server
/// already says not ready meanwhile). A failure waiting cannot cure, an outage longer than
/// the patience, or shutdown during the wait, returns the last error.
pub async fn connect_database(
    db: &DbConfig,
    patience: Duration,
    shutdown: &mut Shutdown,
) -> Result<PgPool, DbError> {
    let mut outage = Outage::default();
    let mut attempt = 0;
    loop {
        let error = match db.connect().await {
            Ok(pool) => {
                if let Some(down) = outage.answered(Instant::now()) {
                    tracing::info!(waited_s = down.as_secs(), "PostgreSQL answers");
                }
                return Ok(pool);
            }
            Err(e) => e,
        };
        match outage.failed(error.fault(), Instant::now(), patience) {
            Verdict::GiveUp { down } if down > Duration::ZERO => {
                return Err(DbError::OutlastedPatience {
                    waited: down,
                    last: Box::new(error),
                })
            }
            Verdict::GiveUp { .. } => return Err(error),
            Verdict::Wait { down, left } => tracing::warn!(
                error = %error,
                down_s = down.as_secs(),
                patience_left_s = left.as_secs(),
                "PostgreSQL does not answer; waiting for it (not ready)"
            ),
        }
        if shutdown
            .sleep(RETRY.delay(attempt, random_fraction()))
            .await
            .is_err()
        {
            return Err(error);
        }
        attempt += 1;
    }
}

/// How often the watchers ask, and how long an answer may take.
const WATCH_EVERY: Duration = Duration::from_secs(2);
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Asks the database `SELECT 1` every 2 s: `/readyz` is false while it does not answer
/// within 2 s; an outage longer than `patience`, or an answer waiting cannot cure (the
/// role's password changed), ends the stage through `give_up`.
pub fn watch_database(pool: PgPool, metrics: Arc<Metrics>, patience: Duration, give_up: GiveUp) {
    tokio::spawn(async move {
        let mut outage = Outage::default();
        let mut every = tokio::time::interval(WATCH_EVERY);
        loop {
            every.tick().await;
            let answer =
                tokio::time::timeout(ANSWER_WITHIN, sqlx::query("SELECT 1").execute(&pool)).await;
            let failure = match answer {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some((crate::db::fault_of(&e), e.to_string())),
                Err(_) => Some((Fault::Transient, "no answer within 2 s".to_owned())),
            };
            let ended = match failure {
                None => outage.answered(Instant::now()),
                Some((fault, error)) => {
                    let was_down = outage.is_down();
                    match outage.failed(fault, Instant::now(), patience) {
                        Verdict::GiveUp { down } => {
                            give_up.now(format!(
                                "PostgreSQL has not answered for {} s, longer than the stage's patience ({} s, ORDERFLOW_OUTAGE_PATIENCE), or refused it for good: {}",
                                down.as_secs(),
                                patience.as_secs(),
                                crate::secret::scrub(&error)
                            ));
                            return;
                        }
                        Verdict::Wait { .. } if !was_down => tracing::warn!(
                            error = %crate::secret::scrub(&error),
                            patience_s = patience.as_secs(),
                            "PostgreSQL does not answer; not ready until it does"
                        ),
                        Verdict::Wait { .. } => {}
                    }
                    None
                }
            };
            if let Some(down) = ended {
                tracing::warn!(
                    down_ms = down.as_millis() as u64,
                    "PostgreSQL answers again"
                );
            }
            metrics.set_database_ok(!outage.is_down());
        }
    });
}

/// Asks the Kafka cluster for its metadata every 2 s: `/readyz` is false while no broker
/// answers within 2 s (a leader election or one broker away does not count: another
/// broker answers); an outage longer than `patience` ends the stage through `give_up`.
pub fn watch_kafka(kafka: KafkaConfig, metrics: Arc<Metrics>, patience: Duration, give_up: GiveUp) {
    tokio::spawn(async move {
        let probe = match kafka.probe() {
            Ok(probe) => Arc::new(probe),
            Err(e) => {
                give_up.now(e.to_string());
                return;
            }
        };
        let mut outage = Outage::default();
        let mut every = tokio::time::interval(WATCH_EVERY);
        loop {
            every.tick().await;
            let asked = Arc::clone(&probe);
            let answer = tokio::task::spawn_blocking(move || {
                rdkafka::consumer::Consumer::fetch_metadata(&*asked, None, ANSWER_WITHIN)
            })
            .await
            .expect("the metadata request does not panic");
            let refused = crate::kafka::refusal();
            match (answer, refused) {
                (_, Some(reason)) => {
                    give_up.now(format!(
                        "the Kafka cluster at {} refused this client ({reason}); waiting cannot help",
                        kafka.brokers
                    ));
                    return;
                }
                (Ok(_), None) => {
                    if let Some(down) = outage.answered(Instant::now()) {
                        tracing::warn!(
                            down_ms = down.as_millis() as u64,
                            "the Kafka cluster answers again"
                        );
                    }
                }
                (Err(e), None) => {
                    let was_down = outage.is_down();
                    match outage.failed(Fault::Transient, Instant::now(), patience) {
                        Verdict::GiveUp { down } => {
                            give_up.now(format!(
                                "the Kafka cluster at {} has not answered for {} s, longer than the stage's patience ({} s, ORDERFLOW_OUTAGE_PATIENCE): {e}",
                                kafka.brokers,
                                down.as_secs(),
                                patience.as_secs()
                            ));
                            return;
                        }
                        Verdict::Wait { .. } if !was_down => tracing::warn!(
                            error = %e,
                            patience_s = patience.as_secs(),
                            "the Kafka cluster does not answer; not ready until it does"
                        ),
                        Verdict::Wait { .. } => {}
                    }
                }
            }
            metrics.set_kafka_ok(!outage.is_down());
        }
    });
}
