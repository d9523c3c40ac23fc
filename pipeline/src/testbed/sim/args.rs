//! The simulator's command-line arguments (`orderflow sim-znet`) and their check into a
//! [`SimConfig`]. The accepted credentials come from flags or variables that `--help` names
//! without their values (G5).

use super::{SimConfig, DEFAULT_BALANCE_KURUS};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Args)]
pub struct SimServerConfig {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "ORDERFLOW_SIM_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Dealer code the simulator accepts.
    // A credential like the password: `--help` names the variable, never its value (G5).
    #[arg(
        long,
        env = "ORDERFLOW_SIM_KOD",
        default_value = "sim-kod",
        hide_env_values = true
    )]
    pub kod: String,
    /// Password the simulator accepts.
    #[arg(
        long,
        env = "ORDERFLOW_SIM_SIFRE",
        default_value = "sim-sifre",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub sifre: String,
    /// Delay added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Status checks answered "processing" before an order completes.
    #[arg(long, default_value_t = 1)]
    pub checks_until_complete: u32,
    /// Share of accepted orders that are slow: they need --slow-checks more checks (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub slow_share: f64,
    /// Extra "processing" answers a slow order gets.
    #[arg(long, default_value_t = 3)]
    pub slow_checks: u32,
    /// The dealer account's opening balance, in lira.
    #[arg(long, default_value_t = DEFAULT_BALANCE_KURUS / 100)]
    pub balance_lira: i64,
    /// Share of placements rejected with `3|Kupur Bilgisi Bulunamadı` (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub rejection_rate: f64,
    /// Share of accepted orders that end cancelled (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub cancel_rate: f64,
    /// Share of calls answered with a random fault: 5xx, timeout, HTML, empty body, garbage,
    /// or an accepted placement whose answer is lost (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// How long a lost answer or a timeout hangs, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub lost_answer_delay_ms: u64,
    /// Seed of the simulator's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long a new order answers "not found" to checks, in milliseconds (a provider
    /// showing new orders with a lag).
    #[arg(long, default_value_t = 0)]
    pub visibility_lag_ms: u64,
}

/// A share flag outside 0..=1.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} must be between 0 and 1, got {value}")]
pub struct ShareError {
    pub flag: &'static str,
    pub value: f64,
}

impl SimServerConfig {
    /// The simulator's settings; every share must be between 0 and 1.
    pub fn config(&self) -> Result<SimConfig, ShareError> {
        Ok(SimConfig {
            kod: self.kod.clone(),
            sifre: self.sifre.clone(),
            latency: Duration::from_millis(self.latency_ms),
            checks_until_complete: self.checks_until_complete,
            slow_share: unit_share("slow-share", self.slow_share)?,
            slow_checks: self.slow_checks,
            initial_balance_kurus: self.balance_lira.saturating_mul(100),
            rejection_rate: unit_share("rejection-rate", self.rejection_rate)?,
            cancel_rate: unit_share("cancel-rate", self.cancel_rate)?,
            fault_rate: unit_share("fault-rate", self.fault_rate)?,
            lost_answer_delay: Duration::from_millis(self.lost_answer_delay_ms),
            seed: self.seed,
            visibility_lag: Duration::from_millis(self.visibility_lag_ms),
        })
    }
}

fn unit_share(flag: &'static str, value: f64) -> Result<f64, ShareError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ShareError { flag, value })
    }
}
