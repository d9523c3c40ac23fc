//! Exponential backoff with jitter, for retrying work that failed for a reason that may
//! pass (a provider outage, a database restart).
//!
//! Pure: the caller supplies the random fraction, so the bounds are property-tested.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): `min · 2^attempt`, capped at
    /// `max`, of which a random half is kept (`jitter` in 0..1), so that orders failing
    /// together do not come back together.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max)
            .max(self.min);
        let jitter = jitter.clamp(0.0, 1.0);
        ceiling.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// A random fraction in 0..1 without a random-number crate: the standard library seeds
/// every `RandomState` afresh.
pub fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: Backoff = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };

    #[test]
    fn grows_then_caps() {
        assert_eq!(B.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(B.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(B.delay(30, 1.0), Duration::from_secs(10));
        assert_eq!(B.delay(0, 0.0), Duration::from_millis(50));
    }

    proptest! {
        #[test]
        fn always_within_half_min_and_max(attempt in 0u32..1000, jitter in -1.0f64..2.0) {
            let d = B.delay(attempt, jitter);
            prop_assert!(d >= B.min / 2 && d <= B.max);
        }

        #[test]
        fn random_fractions_are_fractions(_x in 0..100u8) {
            let f = random_fraction();
            prop_assert!((0.0..1.0).contains(&f));
        }
    }
}
