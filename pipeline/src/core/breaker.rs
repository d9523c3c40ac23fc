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

    /// May a call start now? `Err` says how long to wait before asking again.
    pub fn try_call(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Ok(())
            }
            BreakerState::Open { until } => Err(until - now),
            BreakerState::HalfOpen => Err(PROBE_WAIT),
        }
    }

    /// A call that [`Breaker::try_call`] let through was not made, or its outcome is not
    /// known (it was cancelled): if it was the probe, the next caller probes instead.
    pub fn abandon(&mut self, now: Instant) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open { until: now };
        }
    }

    /// Records the outcome of a call that [`Breaker::try_call`] let through.
    pub fn record(&mut self, now: Instant, healthy: bool) {
        self.state = match (self.state, healthy) {
            (BreakerState::Closed { .. } | BreakerState::HalfOpen, true) => {
                BreakerState::Closed { failures: 0 }
            }
            (BreakerState::Closed { failures }, false)
                if failures + 1 < self.config.failures_to_open =>
            {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            (BreakerState::Closed { .. } | BreakerState::HalfOpen, false) => BreakerState::Open {
                until: now + self.config.open_for,
            },
            // A call that started before the breaker opened: the open period stands.
            (open @ BreakerState::Open { .. }, _) => open,
        };
    }
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
            b.try_call(t0).unwrap();
            b.record(t0, false);
        }
        b.record(t0, true); // a success resets the run
        for _ in 0..3 {
            b.try_call(t0).unwrap();
            b.record(t0, false);
        }
        assert_eq!(
            b.try_call(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.try_call(later), Ok(()), "the probe");
        assert_eq!(b.try_call(later), Err(PROBE_WAIT), "only one probe");
        b.record(later, false);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        let again = later + Duration::from_secs(10);
        b.try_call(again).unwrap();
        b.record(again, true);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    proptest! {
        /// Whatever happens, at most one call is let through while the breaker is not
        /// closed, and nothing is let through before the open period ends.
        #[test]
        fn at_most_one_probe_and_no_call_while_open(
            events in proptest::collection::vec((0u64..3_000, any::<bool>(), any::<bool>()), 1..200)
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = Breaker::new(BreakerConfig { failures_to_open: 2, open_for: Duration::from_secs(1) });
            let mut outstanding_probe = false;
            for (ms, ask, healthy) in events {
                now += Duration::from_millis(ms);
                if ask {
                    let before = b.state();
                    if b.try_call(now).is_ok() {
                        match before {
                            BreakerState::Closed { .. } => b.record(now, healthy),
                            BreakerState::Open { until } => {
                                prop_assert!(now >= until);
                                prop_assert!(!outstanding_probe);
                                outstanding_probe = true;
                            }
                            BreakerState::HalfOpen => prop_assert!(false, "a second probe"),
                        }
                    }
                } else if outstanding_probe {
                    b.record(now, healthy);
                    outstanding_probe = false;
                }
            }
        }
    }
}
