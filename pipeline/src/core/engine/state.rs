//! The engine's bookkeeping, private to it: a partition's watermark and its messages
//! waiting for their due time, and the due messages queued per topic.

use super::{Millis, Token};
use crate::core::watermark::PartitionWatermark;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

pub(super) struct Waiting<M> {
    pub(super) due: Millis,
    pub(super) offset: i64,
    pub(super) bytes: usize,
    pub(super) message: M,
}

impl<M> PartialEq for Waiting<M> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.offset) == (other.due, other.offset)
    }
}
impl<M> Eq for Waiting<M> {}
impl<M> PartialOrd for Waiting<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<M> Ord for Waiting<M> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.offset).cmp(&(other.due, other.offset))
    }
}

pub(super) struct Part<M> {
    pub(super) generation: u64,
    pub(super) watermark: PartitionWatermark,
    /// Not yet due, earliest first.
    pub(super) waiting: BinaryHeap<Reverse<Waiting<M>>>,
    pub(super) waiting_bytes: usize,
    /// The buffer's budget was reached and it has not yet drained to half.
    pub(super) full: bool,
    /// As last told to the consumer.
    pub(super) paused: bool,
}

pub(super) struct Ready<M> {
    pub(super) token: Token,
    pub(super) message: M,
    pub(super) due: Option<Millis>,
    /// When it joined the queue.
    pub(super) ready_at: Millis,
}
