//! When an accepted order is checked next: the first check after dispatch, the retry tiers
//! after it, and when to give up (lifecycle.md, "Defaults").
//!
//! Pure: given how many checks the provider has answered, the time now and the order's
//! deadline, [`Schedule::next`] says when the next check is due and on which tier topic it
//! waits, or that the order is out of time or attempts. Each tier is a delay topic
//! (`orders.status-check.<label>`); a message waits on the tier with the longest delay that
//! does not exceed its own, so a message never waits behind one due later than itself by
//! more than the shortest tier.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// The check schedule of one provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// From the provider's acceptance to the first check.
    pub first_check: Duration,
    /// Delay before check `n + 1` after `n` answered checks is `tiers[n - 1]`, the last tier
    /// repeating. Never empty.
    pub tiers: Vec<Duration>,
    /// Answered checks after which an order that is still pending fails; `None`: only the
    /// deadline ends it.
    pub max_attempts: Option<u32>,
}

/// What follows an answered check that left the order pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Check again at `due`, waiting on tier `tier` (an index into [`Schedule::tiers`]).
    Check { due: DateTime<Utc>, tier: usize },
    /// Stop checking: the order fails.
    GiveUp(GiveUp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The deadline has passed.
    Deadline,
    /// `max_attempts` checks were answered and none was final.
    MaxAttempts,
}

/// A tier list or duration that cannot be used, in one sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

impl Default for Schedule {
    /// 60 s, then 30 s, 1 m, 2 m, 4 m, 8 m and 10 m repeated, until the deadline.
    fn default() -> Self {
        Schedule {
            first_check: Duration::from_secs(60),
            tiers: [30, 60, 120, 240, 480, 600]
                .map(Duration::from_secs)
                .to_vec(),
            max_attempts: None,
        }
    }
}

impl Schedule {
    pub fn new(
        first_check: Duration,
        tiers: Vec<Duration>,
        max_attempts: Option<u32>,
    ) -> Result<Schedule, ScheduleError> {
        if tiers.is_empty() {
            return Err(ScheduleError("the tier list is empty".into()));
        }
        if let Some(zero) = tiers.iter().find(|t| t.is_zero()) {
            return Err(ScheduleError(format!("tier {} has no delay", label(*zero))));
        }
        let mut labels: Vec<String> = tiers.iter().map(|t| label(*t)).collect();
        labels.sort();
        if labels.windows(2).any(|w| w[0] == w[1]) {
            return Err(ScheduleError("the tier list names a delay twice".into()));
        }
        if max_attempts == Some(0) {
            return Err(ScheduleError(
                "the maximum number of attempts must be at least 1".into(),
            ));
        }
        Ok(Schedule {
            first_check,
            tiers,
            max_attempts,
        })
    }

    /// The delay after `attempts` answered checks (`attempts >= 1`).
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) - 1) as usize;
        self.tiers[i.min(self.tiers.len() - 1)]
    }

    /// The next check after `attempts` answered checks, the last one answered at `now`.
    pub fn next(&self, attempts: u32, now: DateTime<Utc>, deadline: DateTime<Utc>) -> Next {
        if self.max_attempts.is_some_and(|max| attempts >= max) {
            return Next::GiveUp(GiveUp::MaxAttempts);
        }
        if now >= deadline {
            return Next::GiveUp(GiveUp::Deadline);
        }
        let due = add(now, self.delay_after(attempts)).min(deadline);
        let wait = (due - now).to_std().unwrap_or_default();
        Next::Check {
            due,
            tier: self.tier_for(wait),
        }
    }

    /// When a check that could not be made (the provider down, the breaker open) is tried
    /// again: after the shortest tier, or at the deadline if that comes first. It uses no
    /// attempt.
    pub fn retry(&self, now: DateTime<Utc>, deadline: DateTime<Utc>) -> Next {
        if now >= deadline {
            return Next::GiveUp(GiveUp::Deadline);
        }
        let shortest = self.shortest();
        let due = add(now, self.tiers[shortest]).min(deadline);
        Next::Check {
            due,
            tier: shortest,
        }
    }

    /// The tier a message due in `wait` waits on: the longest delay not above `wait`, or the
    /// shortest tier when every delay is longer.
    pub fn tier_for(&self, wait: Duration) -> usize {
        self.tiers
            .iter()
            .enumerate()
            .filter(|(_, t)| **t <= wait)
            .max_by_key(|(_, t)| **t)
            .map(|(i, _)| i)
            .unwrap_or_else(|| self.shortest())
    }

    fn shortest(&self) -> usize {
        self.tiers
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(i, _)| i)
            .expect("tiers are never empty")
    }

    /// Each tier's label, as in its topic name `orders.status-check.<label>`.
    pub fn tier_labels(&self) -> Vec<String> {
        self.tiers.iter().map(|t| label(*t)).collect()
    }
}

fn add(at: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A duration's shortest exact label: `10m`, `30s`, `1h`, `1500ms`.
pub fn label(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// Parses `250ms`, `30s`, `10m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, ScheduleError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        ScheduleError(format!(
            "{text:?} is not a duration like 250ms, 30s, 10m or 1h"
        ))
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// Parses a comma-separated tier list such as `30s,1m,2m,4m,8m,10m`.
pub fn parse_tiers(text: &str) -> Result<Vec<Duration>, ScheduleError> {
    text.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(parse_duration)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn defaults_follow_the_lifecycle() {
        let s = Schedule::default();
        assert_eq!(s.first_check, Duration::from_secs(60));
        let delays: Vec<u64> = (1..=8).map(|n| s.delay_after(n).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(s.tier_labels(), ["30s", "1m", "2m", "4m", "8m", "10m"]);
    }

    #[test]
    fn next_check_is_on_its_own_tier_until_the_deadline_clips_it() {
        let s = Schedule::default();
        assert_eq!(
            s.next(3, at(0), at(10_000)),
            Next::Check {
                due: at(120),
                tier: 2
            }
        );
        // 100 s left: due at the deadline, on the longest tier not above 100 s (1m).
        assert_eq!(
            s.next(6, at(0), at(100)),
            Next::Check {
                due: at(100),
                tier: 1
            }
        );
        // 10 s left: due at the deadline, on the shortest tier.
        assert_eq!(
            s.next(6, at(0), at(10)),
            Next::Check {
                due: at(10),
                tier: 0
            }
        );
        assert_eq!(s.next(6, at(10), at(10)), Next::GiveUp(GiveUp::Deadline));
    }

    #[test]
    fn max_attempts_ends_the_chain() {
        let s = Schedule::new(
            Duration::from_secs(1),
            vec![Duration::from_secs(1)],
            Some(3),
        )
        .unwrap();
        assert!(matches!(s.next(2, at(0), at(1_000)), Next::Check { .. }));
        assert_eq!(
            s.next(3, at(0), at(1_000)),
            Next::GiveUp(GiveUp::MaxAttempts)
        );
    }

    #[test]
    fn retries_use_the_shortest_tier() {
        let s = Schedule::default();
        assert_eq!(
            s.retry(at(0), at(1_000)),
            Next::Check {
                due: at(30),
                tier: 0
            }
        );
        assert_eq!(
            s.retry(at(1_000), at(1_000)),
            Next::GiveUp(GiveUp::Deadline)
        );
    }

    #[test]
    fn bad_tier_lists_are_refused_in_one_sentence() {
        assert!(parse_tiers("30s,1x")
            .unwrap_err()
            .to_string()
            .contains("1x"));
        assert!(Schedule::new(Duration::ZERO, vec![], None).is_err());
        assert!(Schedule::new(Duration::ZERO, vec![Duration::ZERO], None).is_err());
        let twice = parse_tiers("60s,1m").unwrap();
        assert!(Schedule::new(Duration::ZERO, twice, None).is_err());
        assert!(Schedule::new(Duration::ZERO, vec![Duration::from_secs(1)], Some(0)).is_err());
    }

    #[test]
    fn labels_round_trip() {
        for text in ["250ms", "1500ms", "30s", "1m", "10m", "90s", "2h"] {
            assert_eq!(label(parse_duration(text).unwrap()), text);
        }
    }

    fn schedules() -> impl Strategy<Value = Schedule> {
        (
            1u64..120,
            prop::collection::btree_set(1u64..900, 1..8),
            prop::option::of(1u32..50),
        )
            .prop_map(|(first, tiers, max)| {
                let tiers = tiers.into_iter().map(Duration::from_secs).collect();
                Schedule::new(Duration::from_secs(first), tiers, max).unwrap()
            })
    }

    proptest! {
        #[test]
        fn delays_never_shrink_and_are_capped(s in schedules(), n in 1u32..100) {
            prop_assert!(s.delay_after(n) <= s.delay_after(n + 1));
            prop_assert!(s.delay_after(n) <= *s.tiers.iter().max().unwrap());
        }

        #[test]
        fn a_check_is_never_due_after_the_deadline_nor_before_now(
            s in schedules(), n in 0u32..100, now in 0i64..100_000, left in 0i64..100_000,
        ) {
            match s.next(n, at(now), at(now + left)) {
                Next::Check { due, tier } => {
                    prop_assert!(due > at(now));
                    prop_assert!(due <= at(now + left));
                    // The tier's delay never exceeds the wait, unless it is the shortest.
                    let wait = (due - at(now)).to_std().unwrap();
                    let shortest = *s.tiers.iter().min().unwrap();
                    prop_assert!(s.tiers[tier] <= wait || s.tiers[tier] == shortest);
                }
                Next::GiveUp(GiveUp::Deadline) => prop_assert!(left == 0),
                Next::GiveUp(GiveUp::MaxAttempts) => prop_assert!(s.max_attempts.is_some_and(|m| n >= m)),
            }
        }

        #[test]
        fn every_chain_ends_by_its_deadline(s in schedules(), left in 1i64..200_000) {
            // Checking whenever due, every answer "pending": the chain ends, at the deadline
            // at the latest, after a bounded number of checks.
            let deadline = at(left);
            let mut now = at(0);
            let shortest = s.tiers.iter().min().unwrap().as_secs() as i64;
            let bound = left / shortest + 2;
            let mut attempts = 1u32;
            while let Next::Check { due, .. } = s.next(attempts, now, deadline) {
                prop_assert!(due > now && due <= deadline);
                now = due;
                attempts += 1;
                prop_assert!(i64::from(attempts) <= bound);
            }
            prop_assert!(now <= deadline);
        }
    }
}
