//! The simulator's mutable state behind one lock: orders by referans, scripted faults and
//! answers, the fault wave, the outage switch, check times, the account's recent calls and
//! the counters; and the order
//! in which a call's fault is chosen (scripted, then the wave's, then random).

use super::{Fault, FaultWave, SimCall, SimConfig, SimStats};
use crate::core::seeded::Seeded;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

pub(super) struct Inner {
    pub(super) config: SimConfig,
    pub(super) state: Mutex<State>,
    /// Becomes true at shutdown, so hanging answers end and graceful shutdown finishes.
    pub(super) stopping: watch::Sender<bool>,
}

pub(super) struct State {
    pub(super) rng: Seeded,
    pub(super) orders: HashMap<String, Order>,
    pub(super) scripts: HashMap<SimCall, VecDeque<Fault>>,
    /// Bodies for the next calls of an endpoint, after scripted faults.
    pub(super) answers: HashMap<SimCall, VecDeque<String>>,
    pub(super) visibility_lag: Duration,
    /// While set, every place and check call answers 503 and has no effect.
    pub(super) outage: bool,
    pub(super) wave: Option<FaultWave>,
    /// When each referans was checked (calls that reached the order logic).
    pub(super) check_times: HashMap<String, Vec<DateTime<Utc>>>,
    /// When the dealer account's calls of the last second arrived, and how many are in
    /// progress.
    pub(super) arrivals: VecDeque<std::time::Instant>,
    pub(super) in_flight: u64,
    pub(super) stats: SimStats,
}

pub(super) struct Order {
    pub(super) bought_at: std::time::Instant,
    pub(super) checks_seen: u32,
    /// Checks answered "processing" before the final state.
    pub(super) pending_checks: u32,
    pub(super) cancelled: bool,
    pub(super) pin: String,
}

impl State {
    /// A scripted fault for `call` first, else the current wave's, else a random one (place
    /// and check only).
    pub(super) fn next_fault(&mut self, call: SimCall, fault_rate: f64) -> Option<Fault> {
        let scripted = self.scripts.get_mut(&call).and_then(VecDeque::pop_front);
        let fault = scripted.or_else(|| {
            if call == SimCall::Balance {
                return None;
            }
            let wave = self
                .wave
                .filter(|w| self.rng.chance(w.rate))
                .map(|w| w.fault);
            wave.or_else(|| {
                self.rng.chance(fault_rate).then(|| {
                    let set = Fault::random_set();
                    set[self.rng.below(set.len())]
                })
            })
        });
        if let Some(fault) = fault {
            self.count_fault(fault.as_str());
        }
        fault
    }

    /// A call of the dealer account arrives: counted in the last second's window and in
    /// progress until [`State::call_ended`].
    pub(super) fn call_arrived(&mut self, now: std::time::Instant) {
        while self
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(now);
        self.in_flight += 1;
        let stats = &mut self.stats;
        stats.account_calls += 1;
        stats.peak_calls_per_second = stats.peak_calls_per_second.max(self.arrivals.len() as u64);
        stats.peak_in_flight = stats.peak_in_flight.max(self.in_flight);
    }

    pub(super) fn call_ended(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub(super) fn count_fault(&mut self, kind: &str) {
        self.stats.faults_injected += 1;
        *self
            .stats
            .faults_by_kind
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    pub(super) fn pin(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let group = |rng: &mut Seeded| -> String {
            (0..4)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())] as char)
                .collect()
        };
        let groups: Vec<String> = (0..4).map(|_| group(&mut self.rng)).collect();
        groups.join("-")
    }
}
