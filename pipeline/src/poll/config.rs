//! The poll stage's settings: the check schedule (shared with the reconciler), the consumer
//! group, how many checks run at once, the PIN keys' source and the shutdown grace.

use super::PollError;
use crate::account_status::AccountStatusConfig;
use crate::core::schedule::{self, Schedule, ScheduleError};
use crate::kafka::lag::GroupLag;
use crate::kafka::stage::StageConfig;
use crate::kafka::topics::name;
use crate::kafka::{KafkaConfig, KafkaSetupError};
use crate::pin::PinKeys;
use std::path::PathBuf;

/// The check schedule (flags or environment variables), shared by the poll stage and the
/// reconciler.
#[derive(Clone, Debug, clap::Args)]
pub struct ScheduleConfig {
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

impl ScheduleConfig {
    pub fn schedule(&self) -> Result<Schedule, ScheduleError> {
        let first = schedule::parse_duration(&self.first_check)?;
        let tiers = schedule::parse_tiers(&self.check_tiers)?;
        Schedule::new(first, tiers, self.max_check_attempts)
    }
}

/// The poll stage's consumer group unless configured otherwise (after the topic prefix).
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

/// Where the orders waiting for a status check are counted: the poll group's lag on
/// `orders.dispatched` (label `first`) and on each tier topic. Read by `orderflow
/// status-page`, `load` and `bench`, which name the poll stage's group and tiers.
#[derive(Clone, Debug, clap::Args)]
pub struct DepthConfig {
    /// Consumer group of the poll stage; default `orderflow.poll` after the topic prefix.
    #[arg(long = "poll-group", env = "ORDERFLOW_POLL_GROUP")]
    pub poll_group: Option<String>,
    /// The poll stage's tiers, to name their topics.
    #[arg(long = "check-tiers", env = "ORDERFLOW_CHECK_TIERS", default_value = DEFAULT_CHECK_TIERS)]
    pub check_tiers: String,
}

/// Why the poll group's lag cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DepthError {
    #[error("--check-tiers is invalid: {0}")]
    Tiers(ScheduleError),
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
}

impl DepthConfig {
    /// (label, full topic name): `first` for `orders.dispatched`, then one per tier.
    pub fn topics(&self, kafka: &KafkaConfig) -> Result<Vec<(String, String)>, DepthError> {
        let tiers = schedule::parse_tiers(&self.check_tiers).map_err(DepthError::Tiers)?;
        let mut topics = vec![("first".to_owned(), kafka.topic(name::ORDERS_DISPATCHED))];
        for delay in tiers {
            let label = schedule::label(delay);
            topics.push((label.clone(), kafka.topic(&name::status_check(&label))));
        }
        Ok(topics)
    }

    /// The poll stage's consumer group: the one set, or the default after the topic prefix.
    pub fn group(&self, kafka: &KafkaConfig) -> String {
        kafka.group(self.poll_group.as_deref(), DEFAULT_GROUP)
    }

    /// The poll group's lag reader, labels `first` then one per tier.
    pub fn lag(&self, kafka: &KafkaConfig) -> Result<GroupLag, DepthError> {
        Ok(GroupLag::new(
            kafka,
            &self.group(kafka),
            self.topics(kafka)?,
        )?)
    }
}

/// How long a due check waits for its batch to fill unless `--batch-linger-ms` says
/// otherwise, in milliseconds. A check is due seconds after its message (30 s at the
/// shortest tier in production), so a tenth of a second more costs it nothing, while at a
/// paced rate a batch of 5 ms held a check or two: every batch costs a statement to take
/// its steps and one per group of answers, and its outputs' produce requests.
pub(super) const BATCH_LINGER_MS: u64 = 100;

/// Settings of the poll stage (flags or environment variables).
#[derive(Clone, Debug, clap::Args)]
pub struct PollConfig {
    #[command(flatten)]
    pub stage: StageConfig,

    /// The provider accounts file (TOML, one [[account]] per account; see README).
    #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
    pub accounts_file: PathBuf,

    /// Consumer group of the poll stage; default `orderflow.poll` after the topic prefix
    /// (ORDERFLOW_TOPIC_PREFIX), e.g. `staging.orderflow.poll`.
    #[arg(long = "poll-group", env = "ORDERFLOW_POLL_GROUP")]
    pub group: Option<String>,

    /// Status checks worked on at once by this process, per topic it consumes (the first
    /// checks, each tier); waiting messages do not count.
    #[arg(
        long = "poll-max-in-flight",
        env = "ORDERFLOW_POLL_MAX_IN_FLIGHT",
        default_value_t = 64
    )]
    pub max_in_flight: usize,

    #[command(flatten)]
    pub schedule: ScheduleConfig,

    /// A file with the PIN keys (`key_id:base64`, newest first); or set ORDERFLOW_PIN_KEYS.
    #[arg(long = "pin-keys-file", env = "ORDERFLOW_PIN_KEYS_FILE")]
    pub pin_keys_file: Option<PathBuf>,

    #[command(flatten)]
    pub account_status: AccountStatusConfig,
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
