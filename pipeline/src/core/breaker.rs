//! A circuit breaker per provider account (G6): after a run of failed calls it stops calling
//! for a while, then lets one probe through; the probe's outcome closes or reopens it.
//!
//! Pure: the caller passes the time. Orders waiting on an open breaker do not spend their
//! retry attempts; they simply wait for the breaker.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is in flight; everyone else waits for its outcome.
    HalfOpen,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
}

/// How long to wait before asking again while a probe is out.
const PROBE_WAIT: Duration = Duration::from_millis(100);

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config: BreakerConfig {
                failures_to_open: config.failures_to_open.max(1),
                ..config
            },
            state: BreakerState::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May a call start now? `Err` says how long to wait before asking again. The ticket
    /// says whether the call is the probe, whose outcome alone decides a half-open breaker.
    pub fn try_call(&mut self, now: Instant) -> Result<Ticket, Duration> {
        match self.state {
            BreakerState::Closed { .. } => Ok(Ticket { probe: false }),
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Ok(Ticket { probe: true })
            }
            BreakerState::Open { until } => Err(until - now),
            BreakerState::HalfOpen => Err(PROBE_WAIT),
        }
    }

    /// A call let through was not made, or its outcome is not known (it was cancelled): if
    /// it was the probe, the next caller probes instead.
    pub fn abandon(&mut self, now: Instant, ticket: Ticket) {
        if ticket.probe && self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open { until: now };
        }
    }

    /// Records the outcome of a call let through with `ticket`. Outcomes of calls that
    /// started before the breaker opened do not decide anything once it has.
    pub fn record(&mut self, now: Instant, ticket: Ticket, healthy: bool) {
        self.state = match (self.state, ticket.probe, healthy) {
            (BreakerState::HalfOpen, true, true) | (BreakerState::Closed { .. }, _, true) => {
                BreakerState::Closed { failures: 0 }
            }
            (BreakerState::HalfOpen, true, false) => BreakerState::Open {
                until: now + self.config.open_for,
            },
            (BreakerState::Closed { failures }, _, false) => {
                if failures + 1 < self.config.failures_to_open {
                    BreakerState::Closed {
                        failures: failures + 1,
                    }
                } else {
                    BreakerState::Open {
                        until: now + self.config.open_for,
                    }
                }
            }
            (state @ (BreakerState::Open { .. } | BreakerState::HalfOpen), _, _) => state,
        };
    }
}

/// What [`Breaker::try_call`] hands out: whether the call is the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Ticket {
    pub probe: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONFIG: BreakerConfig = BreakerConfig {
        failures_to_open: 3,
        open_for: Duration::from_secs(10),
    };

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for _ in 0..2 {
            let ticket = b.try_call(t0).unwrap();
            b.record(t0, ticket, false);
        }
        let ticket = b.try_call(t0).unwrap();
        b.record(t0, ticket, true); // a success resets the run
        for _ in 0..3 {
            let ticket = b.try_call(t0).unwrap();
            b.record(t0, ticket, false);
        }
        assert_eq!(
            b.try_call(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        let later = t0 + Duration::from_secs(10);
        let probe = b.try_call(later).unwrap();
        assert!(probe.probe, "the probe");
        assert_eq!(b.try_call(later), Err(PROBE_WAIT), "only one probe");
        // A late outcome of a call from before the opening decides nothing.
        b.record(later, Ticket { probe: false }, true);
        b.abandon(later, Ticket { probe: false });
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(later, probe, false);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        let again = later + Duration::from_secs(10);
        let probe = b.try_call(again).unwrap();
        b.abandon(again, probe);
        let probe = b.try_call(again).unwrap();
        assert!(
            probe.probe,
            "an abandoned probe is handed to the next caller"
        );
        b.record(again, probe, true);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    proptest! {
        /// Whatever happens (late outcomes, abandoned calls), at most one probe is out at a
        /// time, and nothing is let through while the breaker is open.
        #[test]
        fn at_most_one_probe_and_no_call_while_open(
            events in proptest::collection::vec((0u64..3_000, 0u8..4, any::<bool>()), 1..200)
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = Breaker::new(BreakerConfig { failures_to_open: 2, open_for: Duration::from_secs(1) });
            let mut out: Vec<Ticket> = Vec::new();
            for (ms, action, healthy) in events {
                now += Duration::from_millis(ms);
                match action {
                    0 | 1 => {
                        let before = b.state();
                        if let Ok(ticket) = b.try_call(now) {
                            if let BreakerState::Open { until } = before {
                                prop_assert!(now >= until);
                            }
                            prop_assert!(!(before == BreakerState::HalfOpen));
                            out.push(ticket);
                        }
                        prop_assert!(out.iter().filter(|t| t.probe).count() <= 1);
                    }
                    2 => if let Some(ticket) = out.pop() { b.record(now, ticket, healthy) },
                    _ => if let Some(ticket) = out.pop() { b.abandon(now, ticket) },
                }
            }
        }
    }
}
