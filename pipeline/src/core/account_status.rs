//! What a provider account's status row is computed from, without IO: the answers of the
//! last few minutes out of ever-growing counters ([`AnswerWindow`]), and the spending rate
//! out of balance readings ([`SpendRate`]). The caller passes the time.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Answers so far by (call, class), e.g. `("place", "accepted")`.
pub type Counts = BTreeMap<(&'static str, &'static str), u64>;

/// The answers of the last `window`, from snapshots of counters that only grow (the
/// account's count of every answer since the process started).
#[derive(Clone, Debug)]
pub struct AnswerWindow {
    window: Duration,
    snapshots: VecDeque<(Instant, Counts)>,
}

impl AnswerWindow {
    pub fn new(window: Duration) -> Self {
        AnswerWindow {
            window,
            snapshots: VecDeque::new(),
        }
    }

    /// Takes the counters as they are `now`, and returns what was added since the oldest
    /// snapshot within the window (the previous one, if none is), and how long ago that
    /// snapshot was: the answers of about the last `window`. The first call has nothing
    /// to compare with and returns nothing over no time. Classes with no answer in the
    /// span are left out.
    pub fn push(&mut self, now: Instant, counts: Counts) -> (Counts, Duration) {
        while self.snapshots.len() >= 2
            && self
                .snapshots
                .front()
                .is_some_and(|(at, _)| *at + self.window < now)
        {
            self.snapshots.pop_front();
        }
        let recent = match self.snapshots.front() {
            None => (Counts::new(), Duration::ZERO),
            Some((at, base)) => (
                counts
                    .iter()
                    .filter_map(|(key, &n)| {
                        let added = n.saturating_sub(base.get(key).copied().unwrap_or(0));
                        (added > 0).then_some((*key, added))
                    })
                    .collect(),
                now.saturating_duration_since(*at),
            ),
        };
        self.snapshots.push_back((now, counts));
        recent
    }
}

/// The least time between the first and the last reading for a spending rate.
pub const MIN_SPAN: Duration = Duration::from_secs(60);

/// Money spent per hour over the last `span` of balance readings. Only drops count: a
/// rise is a top-up, not negative spending, so a top-up does not hide the rate.
#[derive(Clone, Debug)]
pub struct SpendRate {
    span: Duration,
    readings: VecDeque<(Instant, f64)>,
}

impl SpendRate {
    pub fn new(span: Duration) -> Self {
        SpendRate {
            span,
            readings: VecDeque::new(),
        }
    }

    /// Adds a reading taken at `at`; readings older than `span` before it are forgotten.
    pub fn push(&mut self, at: Instant, balance: f64) {
        if !balance.is_finite() {
            return;
        }
        if let Some(&(last, _)) = self.readings.back() {
            if at < last {
                return;
            }
        }
        self.readings.push_back((at, balance));
        while self
            .readings
            .front()
            .is_some_and(|&(first, _)| first + self.span < at)
        {
            self.readings.pop_front();
        }
    }

    /// Spending per hour over the readings kept; `None` with fewer than two readings or
    /// less than [`MIN_SPAN`] between the first and the last (a rate from a few seconds of
    /// placements is mostly noise).
    pub fn per_hour(&self) -> Option<f64> {
        let (first, _) = *self.readings.front()?;
        let (last, _) = *self.readings.back()?;
        let elapsed = last.duration_since(first).as_secs_f64();
        if elapsed < MIN_SPAN.as_secs_f64() {
            return None;
        }
        let spent: f64 = self
            .readings
            .iter()
            .zip(self.readings.iter().skip(1))
            .map(|((_, before), (_, after))| (before - after).max(0.0))
            .sum();
        Some(spent / elapsed * 3600.0)
    }
}

/// How long `balance` lasts at `per_hour`; `None` when nothing is being spent.
pub fn lasts(balance: f64, per_hour: f64) -> Option<Duration> {
    if per_hour <= 0.0 || !per_hour.is_finite() || !balance.is_finite() {
        return None;
    }
    Some(Duration::from_secs_f64(
        (balance.max(0.0) / per_hour * 3600.0).min(1e12),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(pairs: &[(&'static str, &'static str, u64)]) -> Counts {
        pairs.iter().map(|&(c, k, n)| ((c, k), n)).collect()
    }

    #[test]
    fn the_window_counts_only_recent_answers() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = AnswerWindow::new(s(60));
        let first = w.push(t0, counts(&[("place", "accepted", 5)]));
        assert_eq!(first, (Counts::new(), Duration::ZERO), "no baseline yet");
        let both = |a, p| counts(&[("place", "accepted", a), ("check", "pending", p)]);
        let at_30 = w.push(t0 + s(30), both(8, 2));
        assert_eq!(at_30, (both(3, 2), s(30)));
        // At 70 s the snapshot of 0 s is beyond the window: the baseline is that of 30 s.
        let at_70 = w.push(t0 + s(70), both(9, 2));
        assert_eq!(at_70, (counts(&[("place", "accepted", 1)]), s(40)));
        // Nothing within the window: the previous snapshot is the baseline.
        let at_200 = w.push(t0 + s(200), both(9, 2));
        assert_eq!(at_200, (Counts::new(), s(130)));
    }

    #[test]
    fn spending_ignores_top_ups() {
        let t0 = Instant::now();
        let mut r = SpendRate::new(Duration::from_secs(3600));
        assert_eq!(r.per_hour(), None);
        r.push(t0, 1000.0);
        assert_eq!(r.per_hour(), None, "one reading");
        r.push(t0 + Duration::from_secs(30), 990.0);
        assert_eq!(r.per_hour(), None, "too short a span");
        r.push(t0 + Duration::from_secs(900), 900.0);
        r.push(t0 + Duration::from_secs(1000), 5000.0); // a top-up
        r.push(t0 + Duration::from_secs(1800), 4900.0);
        let rate = r.per_hour().unwrap();
        assert!((rate - 400.0).abs() < 1e-9, "{rate}");
        // An hour later the first readings are forgotten.
        r.push(t0 + Duration::from_secs(5400), 4900.0);
        assert_eq!(r.per_hour(), Some(0.0));
        assert_eq!(lasts(4900.0, 0.0), None);
        assert_eq!(lasts(1000.0, 500.0), Some(Duration::from_secs(7200)));
    }

    proptest! {
        /// The window never reports more answers than were counted, nor a class unseen.
        #[test]
        fn the_window_is_bounded_by_the_counters(steps in proptest::collection::vec((0u64..100, 0u64..5, 0u64..5), 1..50)) {
            let t0 = Instant::now();
            let mut w = AnswerWindow::new(Duration::from_secs(60));
            let (mut now, mut a, mut b) = (t0, 0u64, 0u64);
            for (secs, add_a, add_b) in steps {
                now += Duration::from_secs(secs);
                a += add_a;
                b += add_b;
                let (recent, _) = w.push(now, counts(&[("place", "accepted", a), ("check", "pending", b)]));
                prop_assert!(recent.get(&("place", "accepted")).copied().unwrap_or(0) <= a);
                prop_assert!(recent.get(&("check", "pending")).copied().unwrap_or(0) <= b);
                prop_assert!(recent.len() <= 2);
            }
        }

        /// Spending is never negative, whatever the readings.
        #[test]
        fn spending_is_never_negative(readings in proptest::collection::vec((0u64..600, -1e6f64..1e6), 0..40)) {
            let mut now = Instant::now();
            let mut r = SpendRate::new(Duration::from_secs(3600));
            for (secs, balance) in readings {
                now += Duration::from_secs(secs);
                r.push(now, balance);
                if let Some(rate) = r.per_hour() {
                    prop_assert!(rate >= 0.0 && rate.is_finite());
                }
            }
        }
    }
}
