//! The dispatch stage's settings ([`DispatchConfig`], flags or environment variables) and
//! their checks: the default deadline stays within [`MAX_DEADLINE_SECS`], so that every date
//! computed from it stays in range; the retry and parking waits are never zero.

use super::error::DispatchError;
use super::park::ParkBackoff;
use crate::account_status::AccountStatusConfig;
use crate::core::backoff::Backoff;
use crate::kafka::stage::StageConfig;
use std::path::PathBuf;
use std::time::Duration;

/// The dispatch stage's consumer group unless configured otherwise (after the topic prefix).
pub const DEFAULT_GROUP: &str = "orderflow.dispatch";

/// Settings of the dispatch stage (flags or environment variables).
#[derive(Clone, Debug, clap::Args)]
pub struct DispatchConfig {
    #[command(flatten)]
    pub stage: StageConfig,

    /// The provider accounts file (TOML, one [[account]] per account; see README).
    #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
    pub accounts_file: PathBuf,

    /// Consumer group of the dispatch stage; default `orderflow.dispatch` after the topic prefix
    /// (ORDERFLOW_TOPIC_PREFIX), e.g. `staging.orderflow.dispatch`.
    #[arg(long = "dispatch-group", env = "ORDERFLOW_DISPATCH_GROUP")]
    pub group: Option<String>,

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

    /// The keys that digest each order's first user field (the customer's phone), for
    /// `order show --phone`; none: no digest is stored.
    #[command(flatten)]
    pub lookup: crate::lookup::LookupKeysArgs,
    /// How often each provider account's balance is asked for (znet: bakiye_kontrol), in
    /// seconds; 0: never (the balance still comes with every placement).
    #[arg(
        long = "balance-check-interval-secs",
        env = "ORDERFLOW_BALANCE_CHECK_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub balance_check_interval_secs: u64,

    #[command(flatten)]
    pub account_status: AccountStatusConfig,
}

/// The longest default deadline: 30 days. Far past the 24 h the old system used, and small
/// enough that every date computed from it stays in range (a value near `u64::MAX` would
/// overflow the time arithmetic).
pub const MAX_DEADLINE_SECS: u64 = 30 * 24 * 3600;

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

    /// The backoff between retries of a failed provider call.
    pub(super) fn backoff(&self) -> Backoff {
        Backoff {
            min: Duration::from_millis(self.retry_min_ms.max(1)),
            max: Duration::from_millis(self.retry_max_ms.max(self.retry_min_ms).max(1)),
        }
    }

    /// How long a parked order waits on `orders.dispatch-retry`.
    pub(super) fn park_backoff(&self) -> ParkBackoff {
        ParkBackoff(Backoff {
            min: Duration::from_millis(self.park_min_ms.max(1)),
            max: Duration::from_millis(self.park_max_ms.max(self.park_min_ms).max(1)),
        })
    }
}
