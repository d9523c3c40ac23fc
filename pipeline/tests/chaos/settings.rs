//! The run's size and schedule: the env knobs (ORDERFLOW_CHAOS_ORDERS, _RATE, _KILLS), the
//! scaled-down check schedule, the fault waves, the broken account, the tick; where the
//! run writes (its figures, its scratch directory) and the clock its progress lines use.

use orderflow::testbed::sim::{Fault, SimStats};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The check schedule, scaled down: first check 1 s after dispatch, then 1 s, 2 s, 2 s, …
pub const FIRST_CHECK: &str = "1s";
pub const TIERS: &str = "1s,2s";
/// The fault kinds of the waves, in order; each wave lasts `WAVE` at `WAVE_RATE`.
pub const WAVES: [Fault; 10] = [
    Fault::ServerError,
    Fault::LostAnswer,
    Fault::Timeout,
    Fault::Html,
    Fault::EmptyBody,
    Fault::Garbage,
    Fault::Slow,
    Fault::Forbidden,
    Fault::UriTooLong,
    Fault::UnknownCode,
];
/// The provider shows a new order only this long after taking it; the accounts wait
/// `VISIBILITY_WINDOW_MS` of "not found" before placing an unclear order again.
pub const VISIBILITY_LAG: Duration = Duration::from_millis(1500);
pub const VISIBILITY_WINDOW_MS: u64 = 3000;
/// An account whose password is wrong (the provider answers code 8 to every call), beside
/// the healthy ones: its orders must wait without holding the others up, never be bought,
/// and fail at their deadline.
pub const BROKEN_ACCOUNT: &str = "znet-broken";
pub const BROKEN_ORDERS: usize = 12;
/// The broken account's orders' deadline, after the start of the load.
pub const BROKEN_DEADLINE: Duration = Duration::from_secs(45);
pub const WAVE_RATE: f64 = 0.3;
/// A wave ends once the simulator counted this many faults of its kind (or after
/// `WAVE_MAX_TICKS` ticks).
pub const WAVE_MIN: u64 = 5;
pub const WAVE_MAX_TICKS: usize = 10;
/// One chaos step: a kill and restart of the next stage, the next fault wave.
pub const TICK: Duration = Duration::from_millis(2500);

/// The run's size, from the environment.
pub struct Size {
    /// Valid orders published (`ORDERFLOW_CHAOS_ORDERS`, default 240).
    pub orders: usize,
    /// Orders per second (`ORDERFLOW_CHAOS_RATE`); by default the load is spread over
    /// about 40 s, so the chaos hits orders in flight.
    pub rate: f64,
    /// SIGKILLs per stage at least (`ORDERFLOW_CHAOS_KILLS`, default 2).
    pub kills_per_stage: u32,
}

impl Size {
    pub fn from_env() -> Size {
        let orders: usize = env_or("ORDERFLOW_CHAOS_ORDERS", 240);
        Size {
            orders,
            rate: env_or("ORDERFLOW_CHAOS_RATE", (orders as f64 / 40.0).max(5.0)),
            kills_per_stage: env_or("ORDERFLOW_CHAOS_KILLS", 2),
        }
    }

    /// The cluster run's size: by default 240 orders at 4/s (more arrive at that rate for
    /// as long as the failovers last); the same variables change it.
    pub fn cluster_from_env() -> Size {
        Size {
            orders: env_or("ORDERFLOW_CHAOS_ORDERS", 240),
            rate: env_or("ORDERFLOW_CHAOS_RATE", 4.0),
            kills_per_stage: 0,
        }
    }
}

/// The runs share two cores, and each starts its own Kafka and PostgreSQL: one at a time
/// (a tokio mutex: it is held across the whole run, and a run that failed releases it).
pub static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Time since the run began, for the progress lines on stderr.
pub struct Clock {
    started: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            started: Instant::now(),
        }
    }

    pub fn say(&self, what: &str) {
        eprintln!("chaos [{:>5.1} s] {what}", self.elapsed_s());
    }

    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Calls that reached the simulator so far: placements and checks, faulted ones included.
pub fn provider_calls(stats: &SimStats) -> u64 {
    stats
        .place_requests
        .values()
        .map(|&n| u64::from(n))
        .sum::<u64>()
        + stats.checks
        + stats.faults_injected
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn state_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("ORDERFLOW_STATE_DIR").unwrap_or_else(|_| "/var/lib/orderflow".into()),
    )
}

/// Where the figures are written: `$ORDERFLOW_STATE_DIR/chaos`, created.
pub fn run_dir() -> PathBuf {
    let run_dir = state_dir().join("chaos");
    std::fs::create_dir_all(&run_dir).unwrap();
    run_dir
}

/// The run's scratch directory (the private broker, accounts, keys, logs), created.
pub fn work_dir() -> PathBuf {
    let work = std::env::temp_dir().join(crate::common::unique("orderflow-chaos-"));
    std::fs::create_dir_all(&work).unwrap();
    work
}
