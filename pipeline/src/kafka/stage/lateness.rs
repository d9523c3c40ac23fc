//! Warnings about delayed messages handed over late, per topic and at most every
//! [`LATE_WARNING_EVERY`], for the stage loop (`run`): how many and the latest since the
//! last warning, not a line per message.

use std::time::{Duration, Instant};

/// Lateness past which a delayed message handed over is worth a warning.
const LATE: Duration = Duration::from_secs(1);

/// At most one lateness warning per topic this often.
const LATE_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Delayed messages handed over more than [`LATE`] after their due time, warned about once
/// per topic at most every [`LATE_WARNING_EVERY`] with how many and the latest of them: in
/// overload every message is late, and a line each was 76,764 lines (13.2 MB) from poll in
/// one 100,000-order benchmark at `max`. The lateness of every check is poll's histogram
/// (`orderflow_check_lateness_seconds`).
#[derive(Debug)]
pub(super) struct Lateness {
    topics: Vec<LateSince>,
}

/// One topic's late messages since its last warning.
#[derive(Debug, Default)]
struct LateSince {
    count: u64,
    worst: Duration,
    warned_at: Option<Instant>,
}

impl Lateness {
    pub(super) fn new(topics: usize) -> Self {
        Lateness {
            topics: (0..topics).map(|_| LateSince::default()).collect(),
        }
    }

    /// Counts a message of `topic` handed over `late`, if that is more than [`LATE`].
    pub(super) fn record(&mut self, topic: usize, late: Duration) {
        if late <= LATE {
            return;
        }
        if let Some(t) = self.topics.get_mut(topic) {
            t.count += 1;
            t.worst = t.worst.max(late);
        }
    }

    /// The warnings due at `now`, as (topic, messages, latest), each topic's count reset:
    /// a topic's first late messages at once, later ones [`LATE_WARNING_EVERY`] after its
    /// previous warning.
    fn due(&mut self, now: Instant) -> Vec<(usize, u64, Duration)> {
        let mut due = Vec::new();
        for (i, t) in self.topics.iter_mut().enumerate() {
            let waited = t
                .warned_at
                .is_none_or(|at| now.duration_since(at) >= LATE_WARNING_EVERY);
            if t.count > 0 && waited {
                due.push((i, t.count, t.worst));
                *t = LateSince {
                    warned_at: Some(now),
                    ..LateSince::default()
                };
            }
        }
        due
    }

    /// Logs the warnings due at `now`; `topics` names the topics by index.
    pub(super) fn warn(&mut self, topics: &[String], now: Instant) {
        for (topic, messages, worst) in self.due(now) {
            tracing::warn!(
                topic = topics[topic].as_str(),
                messages,
                latest_ms = worst.as_millis() as u64,
                "delayed messages were handed over more than 1 s late (since the last such warning)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_late_messages_are_warned_about_at_once_then_at_most_every_ten_seconds() {
        let start = Instant::now();
        let mut lateness = Lateness::new(2);
        lateness.record(0, Duration::from_millis(1500));
        lateness.record(0, Duration::from_millis(3000));
        assert_eq!(
            lateness.due(start),
            vec![(0, 2, Duration::from_millis(3000))]
        );
        // A storm of late messages right after: counted, not warned about one by one.
        for _ in 0..1000 {
            lateness.record(0, Duration::from_secs(2));
        }
        assert!(lateness.due(start + Duration::from_secs(1)).is_empty());
        assert!(lateness.due(start + Duration::from_secs(9)).is_empty());
        assert_eq!(
            lateness.due(start + LATE_WARNING_EVERY),
            vec![(0, 1000, Duration::from_secs(2))]
        );
        // Nothing late since: nothing to say.
        assert!(lateness.due(start + LATE_WARNING_EVERY * 3).is_empty());
    }

    #[test]
    fn a_message_at_most_a_second_late_is_not_counted_and_topics_are_apart() {
        let start = Instant::now();
        let mut lateness = Lateness::new(2);
        lateness.record(0, LATE);
        lateness.record(1, Duration::from_millis(1001));
        lateness.record(7, Duration::from_secs(5)); // not a topic of the stage: ignored
        assert_eq!(
            lateness.due(start),
            vec![(1, 1, Duration::from_millis(1001))]
        );
        lateness.record(0, Duration::from_secs(4));
        assert_eq!(
            lateness.due(start + Duration::from_secs(1)),
            vec![(0, 1, Duration::from_secs(4))]
        );
    }
}
