//! The offset watermark: which offset of a partition may be committed.
//!
//! A stage works on many messages of one partition at once and they finish in any order.
//! Committing offset `n` tells Kafka that everything before `n` is done, so the position
//! to commit is the lowest offset still in flight, or one past the highest offset seen
//! when nothing is in flight (G2: offsets only cover durable work).

use std::collections::BTreeSet;

/// The watermark of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionWatermark {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: Option<i64>,
    /// The last position reported by [`PartitionWatermark::finish`].
    committed: Option<i64>,
}

impl PartitionWatermark {
    /// Records that work on `offset` has started.
    pub fn begin(&mut self, offset: i64) {
        // Before anything finishes, the group's position is the first offset begun.
        self.committed.get_or_insert(offset);
        self.in_flight.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Records that work on `offset` is durable. Returns the new commit position when it
    /// moved forward.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        if !self.in_flight.remove(&offset) {
            return None;
        }
        let position = self.position()?;
        if self.committed.is_some_and(|c| c >= position) {
            return None;
        }
        self.committed = Some(position);
        Some(position)
    }

    /// The offset the consumer group may resume from.
    pub fn position(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(&lowest) => Some(lowest),
            None => self.next,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_completion_commits_the_contiguous_prefix() {
        let mut w = PartitionWatermark::default();
        for o in 10..15 {
            w.begin(o);
        }
        assert_eq!(w.finish(12), None);
        assert_eq!(w.finish(10), Some(11));
        assert_eq!(w.finish(11), Some(13));
        assert_eq!(w.finish(14), None);
        assert_eq!(w.finish(13), Some(15));
    }

    #[test]
    fn unknown_offsets_do_not_move_the_position() {
        let mut w = PartitionWatermark::default();
        w.begin(5);
        assert_eq!(w.finish(4), None);
        assert_eq!(w.position(), Some(5));
    }

    proptest! {
        /// Whatever order work finishes in, the reported position never passes an offset
        /// still in flight, never goes back, and ends one past the last offset.
        #[test]
        fn never_commits_past_unfinished_work(
            (n, order) in (1usize..60).prop_flat_map(|n| {
                (Just(n), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
            })
        ) {
            let mut w = PartitionWatermark::default();
            for o in 0..n as i64 { w.begin(o); }
            let mut done = std::collections::BTreeSet::new();
            let mut last = -1;
            for o in order {
                done.insert(o as i64);
                if let Some(p) = w.finish(o as i64) {
                    prop_assert!(p > last);
                    prop_assert!((0..p).all(|x| done.contains(&x)));
                    last = p;
                }
            }
            prop_assert_eq!(last, n as i64);
        }
    }
}
