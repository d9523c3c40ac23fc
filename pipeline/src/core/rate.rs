//! A token bucket: at most `rate` calls per second, with bursts of up to `burst`.
//!
//! Pure: the caller passes the current time, so the rules are testable without clocks.
//! The provider accounts use it to stay under each account's calls-per-second cap (G6).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// `rate` calls per second (must be positive), bursts of up to `burst` (at least 1).
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        assert!(rate > 0.0, "a token bucket needs a positive rate");
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes a token if one is available; otherwise says how long until one is.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now.max(self.updated);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(99) && wait <= Duration::from_millis(100));
        assert!(b.try_take(t0 + wait).is_ok());
    }

    proptest! {
        /// Over any window, the calls let through never exceed burst + rate × window.
        #[test]
        fn never_exceeds_the_cap(rate in 1.0f64..100.0, burst in 1u32..10,
                                 steps in proptest::collection::vec(0u64..50, 1..300)) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let mut now = t0;
            let mut taken = 0u32;
            for ms in steps {
                now += Duration::from_millis(ms);
                if b.try_take(now).is_ok() { taken += 1; }
            }
            let window = now.duration_since(t0).as_secs_f64();
            prop_assert!(f64::from(taken) <= f64::from(burst) + rate * window + 1e-6);
        }
    }
}
