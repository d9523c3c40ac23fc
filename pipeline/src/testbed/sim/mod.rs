//! A znet-compatible provider simulator with fault injection (`orderflow sim-znet`, and
//! in-process for integration tests).
//!
//! Owns: the four `/servis/*.php` endpoints of `docs/design/znet-protocol.md` as our
//! parser (`crate::znet::protocol`) expects them, a small static catalog, the dealer balance,
//! referans uniqueness (one purchase per referans, ever), seeded randomness (rejections,
//! cancellations, faults, PINs), fault injection (scripted FIFO per call, then scripted
//! `<code>|<message>` answers, then the current wave of one kind, then random), a visibility
//! lag (a new order answers "not found" to checks for a while, as real providers' replicas
//! do), what the dealer account's calls look like from here (the most per second and at
//! once, for the caps) and the `/sim/*` control endpoints for out-of-process tests.
//!
//! It never logs kod, sifre or PINs (G5): debug events carry only referans, oyun, kupur and
//! outcome words.
//!
//! Here: the public types (settings, faults, counters, the handle). `state` holds the
//! mutable state and the fault order, `answers` the answer logic without IO, `server` the
//! HTTP endpoints and the `Sim` methods, `args` the `sim-znet` arguments.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod answers;
mod args;
mod server;
mod state;

pub use args::{ShareError, SimServerConfig};
use state::Inner;

// ----- public types -------------------------------------------------------------------

#[derive(Clone)]
pub struct SimConfig {
    /// Expected dealer code; a wrong kod or sifre gets the `8|...` answer.
    pub kod: String,
    pub sifre: String,
    /// Added to every `/servis` answer.
    pub latency: Duration,
    /// `pin_kontrol` answers durum 1 this many times per order, then its final state.
    pub checks_until_complete: u32,
    /// Share of purchased orders that are slow: they answer durum 1 `slow_checks` more times.
    pub slow_share: f64,
    pub slow_checks: u32,
    /// Share of valid placements answered `3|Kupur Bilgisi Bulunamadı`.
    pub rejection_rate: f64,
    /// Share of purchased orders that end cancelled (durum 3) instead of completed.
    pub cancel_rate: f64,
    /// Share of place and check calls that get a random fault from [`Fault::random_set`].
    pub fault_rate: f64,
    /// How long a `Timeout` or `LostAnswer` hangs before answering 503.
    pub lost_answer_delay: Duration,
    pub seed: u64,
    /// Kuruş (1/100 TRY).
    pub initial_balance_kurus: i64,
    /// How long a purchased order answers `4|Sipariş bulunamadı` to checks (a provider
    /// showing new orders with a lag). Placements still see it: a reused referans is refused.
    pub visibility_lag: Duration,
}

/// 1,000,000.00 TRY.
pub const DEFAULT_BALANCE_KURUS: i64 = 1_000_000 * 100;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            kod: "sim-kod".into(),
            sifre: "sim-sifre".into(),
            latency: Duration::ZERO,
            checks_until_complete: 1,
            slow_share: 0.0,
            slow_checks: 0,
            rejection_rate: 0.0,
            cancel_rate: 0.0,
            fault_rate: 0.0,
            lost_answer_delay: Duration::from_secs(30),
            seed: 1,
            initial_balance_kurus: DEFAULT_BALANCE_KURUS,
            visibility_lag: Duration::ZERO,
        }
    }
}

/// Credentials are shown as `***`.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("kod", &"***")
            .field("sifre", &"***")
            .field("latency", &self.latency)
            .field("checks_until_complete", &self.checks_until_complete)
            .field("slow_share", &self.slow_share)
            .field("slow_checks", &self.slow_checks)
            .field("rejection_rate", &self.rejection_rate)
            .field("cancel_rate", &self.cancel_rate)
            .field("fault_rate", &self.fault_rate)
            .field("lost_answer_delay", &self.lost_answer_delay)
            .field("seed", &self.seed)
            .field("initial_balance_kurus", &self.initial_balance_kurus)
            .field("visibility_lag", &self.visibility_lag)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// HTTP 503 with a short HTML body; no effect.
    ServerError,
    /// Hangs `lost_answer_delay`, then 503; no effect (dropped before processing).
    Timeout,
    /// HTTP 200 with an HTML page (like a wrong base URL); no effect.
    Html,
    /// HTTP 200, empty body; no effect.
    EmptyBody,
    /// HTTP 200, a non-protocol text body; no effect.
    Garbage,
    /// The call IS processed, but the answer is lost: hangs `lost_answer_delay`, then 503.
    LostAnswer,
    /// The call IS processed and answered normally, but only after half of
    /// `lost_answer_delay` (slower than usual; within a client's timeout if that is longer).
    /// Never drawn by `fault_rate`: scripts and waves only.
    Slow,
    /// HTTP 403 with an HTML page, as a web application firewall in front of the provider
    /// answers; no effect. Scripts and waves only.
    Forbidden,
    /// HTTP 414 (the URL is too long for the front end); no effect. Scripts and waves only.
    UriTooLong,
    /// HTTP 200 with an error code no account lists (`99|...`, maintenance); no effect.
    /// Scripts and waves only.
    UnknownCode,
}

/// A wave of one kind of fault: while set, each place and check call gets `fault` with
/// probability `rate` (after scripted faults, before `fault_rate`'s random ones).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
pub struct FaultWave {
    pub fault: Fault,
    pub rate: f64,
}

impl Fault {
    /// The snake_case word used by the `/sim/*` endpoints and [`SimStats::faults_by_kind`].
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::ServerError => "server_error",
            Fault::Timeout => "timeout",
            Fault::Html => "html",
            Fault::EmptyBody => "empty_body",
            Fault::Garbage => "garbage",
            Fault::LostAnswer => "lost_answer",
            Fault::Slow => "slow",
            Fault::Forbidden => "forbidden",
            Fault::UriTooLong => "uri_too_long",
            Fault::UnknownCode => "unknown_code",
        }
    }

    /// The faults `fault_rate` draws from, uniformly.
    pub fn random_set() -> &'static [Fault] {
        &[
            Fault::ServerError,
            Fault::Timeout,
            Fault::Html,
            Fault::EmptyBody,
            Fault::Garbage,
            Fault::LostAnswer,
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SimCall {
    Place,
    Check,
    Balance,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SimStats {
    /// How many placement calls each referans received that reached the order logic
    /// (duplicates included, faults with "no effect" excluded).
    pub placements: BTreeMap<String, u32>,
    /// Every placement request per referans, faulted ones included: which references a
    /// client used, and how often.
    pub place_requests: BTreeMap<String, u32>,
    /// How many purchases each referans produced (never more than 1).
    pub purchases: BTreeMap<String, u32>,
    /// Authenticated check calls that reached the order logic (lost answers included).
    pub checks: u64,
    pub faults_injected: u64,
    /// `faults_injected` by kind ([`Fault::as_str`], and `outage` for calls refused by an
    /// outage).
    #[serde(default)]
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Placements answered with a rejection code (2, 3 or 6), duplicates (5) excluded.
    pub rejected: u64,
    /// Calls answered with a scripted `<code>|<message>` (no effect).
    #[serde(default)]
    pub scripted_answers: u64,
    /// Checks answered "not found" because the order was not visible yet.
    #[serde(default)]
    pub unseen_checks: u64,
    /// Calls of the simulated dealer account (the simulator's `kod`) to place, check and
    /// balance, counted as they arrive, faulted ones included.
    #[serde(default)]
    pub account_calls: u64,
    /// The most of those calls that arrived within one second (any window of one second,
    /// not calendar seconds): what a provider capping calls per second would see.
    #[serde(default)]
    pub peak_calls_per_second: u64,
    /// The most of those calls in progress at once, from arrival to answer.
    #[serde(default)]
    pub peak_in_flight: u64,
    pub balance_kurus: i64,
}

pub struct SimHandle {
    /// `base_url = format!("http://{addr}")`.
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// The simulator; cheap to clone.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

#[cfg(test)]
mod tests;
