//! An account's caps in one process: the slots it holds ([`crate::core::caps::Slots`])
//! behind a lock, callers waiting for a call slot or a rested rate slot, and what a keeper
//! (`crate::account_caps`) needs to share them with the other processes: what this process
//! wants, which slots to give back, the slots it got.
//!
//! Alone (no keeper, as `orderflow accounts check` and unit tests use an account), the
//! process holds every slot. A stage hands its accounts to the keeper, which starts from
//! none and holds what the cluster's fair shares give it.

use crate::core::caps::{rate_slots, Kind, Release, Slots, Wants};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct Caps {
    slots: Mutex<Slots>,
    /// A slot was freed, added or handed back: waiting callers look again.
    freed: Notify,
    /// A caller started waiting: the keeper may look sooner than its next tick.
    wanted: Arc<Notify>,
    max_concurrent: u32,
    rate_slots: u32,
    /// How long a rate slot rests after a call.
    rest: Duration,
}

impl std::fmt::Debug for Caps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caps").finish_non_exhaustive()
    }
}

/// A call slot, put back when dropped.
pub(super) struct CallSlot<'a> {
    caps: &'a Caps,
    slot: u32,
}

impl Drop for CallSlot<'_> {
    fn drop(&mut self) {
        self.caps.lock().put_call(self.slot);
        self.caps.freed.notify_waiters();
    }
}

/// A rate slot reserved for a call; when dropped, the call (if it started) has ended and
/// the slot rests from then on, or, unused, it is simply free again.
pub(super) struct RateSlot<'a> {
    caps: &'a Caps,
    slot: u32,
}

impl Drop for RateSlot<'_> {
    fn drop(&mut self) {
        self.caps.lock().end_rate(self.slot, Instant::now());
        self.caps.freed.notify_waiters();
    }
}

/// Counts a waiting caller for as long as it waits (also when its wait is cancelled).
struct Waiting<'a> {
    caps: &'a Caps,
    kind: Kind,
}

impl<'a> Waiting<'a> {
    fn new(caps: &'a Caps, kind: Kind) -> Self {
        {
            let mut slots = caps.lock();
            match kind {
                Kind::Call => slots.waiting_calls += 1,
                Kind::Rate => slots.waiting_rates += 1,
            }
        }
        caps.wanted.notify_one();
        Waiting { caps, kind }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut slots = self.caps.lock();
        match self.kind {
            Kind::Call => slots.waiting_calls = slots.waiting_calls.saturating_sub(1),
            Kind::Rate => slots.waiting_rates = slots.waiting_rates.saturating_sub(1),
        }
    }
}

impl Caps {
    /// Every slot of the caps, held by this process alone.
    pub fn alone(max_concurrent: usize, per_second: f64) -> Self {
        let max_concurrent = u32::try_from(max_concurrent.max(1)).unwrap_or(u32::MAX);
        Caps {
            slots: Mutex::new(Slots::all(max_concurrent, per_second)),
            freed: Notify::new(),
            wanted: Arc::new(Notify::new()),
            max_concurrent,
            rate_slots: rate_slots(per_second).0,
            rest: rate_slots(per_second).1,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account's slots of each kind, for the whole cluster.
    pub fn total(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Call => self.max_concurrent,
            Kind::Rate => self.rate_slots,
        }
    }

    /// Waits for a call slot, at most `patience` (`None`: as long as it takes).
    pub(super) async fn call_slot(&self, patience: Option<Duration>) -> Option<CallSlot<'_>> {
        let give_up = patience.map(|p| tokio::time::Instant::now() + p);
        let mut waiting = None;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let taken = self.lock().take_call(Instant::now());
            if let Some(slot) = taken {
                return Some(CallSlot { caps: self, slot });
            }
            waiting.get_or_insert_with(|| Waiting::new(self, Kind::Call));
            match give_up {
                Some(at) => tokio::time::timeout_at(at, freed).await.ok()?,
                None => freed.await,
            }
        }
    }

    /// Waits for a rate slot that has rested, and reserves it.
    pub(super) async fn rate_slot(&self) -> RateSlot<'_> {
        let mut waiting = None;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let reserved = self.lock().reserve_rate(Instant::now());
            match reserved {
                Ok(slot) => return RateSlot { caps: self, slot },
                Err(soonest) => {
                    waiting.get_or_insert_with(|| Waiting::new(self, Kind::Rate));
                    match soonest {
                        Some(wait) => {
                            let _ = tokio::time::timeout(wait, freed).await;
                        }
                        None => freed.await,
                    }
                }
            }
        }
    }

    /// The reserved rate slot's call starts now. Waits for another slot if it was lost
    /// meanwhile (the process dropped it: its lease could not be renewed).
    pub(super) async fn start_call<'a>(&'a self, reserved: &mut RateSlot<'a>) {
        loop {
            let started = self.lock().start_rate(reserved.slot, Instant::now());
            if started {
                return;
            }
            *reserved = self.rate_slot().await;
        }
    }

    /// Calls running now in this process.
    pub fn busy(&self) -> usize {
        self.lock().busy()
    }

    /// How many slots of each kind this process holds now.
    pub fn held(&self) -> (usize, usize) {
        let slots = self.lock();
        (slots.held(Kind::Call), slots.held(Kind::Rate))
    }

    // ----- for the keeper ------------------------------------------------------------------

    /// Notified when a caller starts waiting.
    pub fn wanted(&self) -> Arc<Notify> {
        Arc::clone(&self.wanted)
    }

    /// Gives up every slot: from now on only the keeper hands this process slots, usable
    /// while it renews their lease.
    pub fn share(&self) {
        *self.lock() = Slots::shared(self.rest, Instant::now());
    }

    /// The slots' lease was renewed: usable until `until`.
    pub fn usable_until(&self, until: Instant) {
        self.lock().usable_until(until);
    }

    /// What this process wants now.
    pub fn wants(&self, now: Instant) -> Wants {
        self.lock().wants(now, self.rate_slots, self.max_concurrent)
    }

    /// Aims at holding `calls` call slots and `rates` rate slots, and returns those to give
    /// back now.
    pub fn aim(&self, calls: u32, rates: u32, now: Instant) -> Vec<Release> {
        let mut slots = self.lock();
        slots.aim(calls as usize, rates as usize);
        slots.release(now)
    }

    /// Slots the table gave this process.
    pub fn add(&self, kind: Kind, got: &[u32]) {
        if got.is_empty() {
            return;
        }
        self.lock().add(kind, got.iter().copied());
        self.freed.notify_waiters();
    }

    /// Drops every slot: this process's lease lapsed (or went unrenewed too long), so they
    /// are no longer its own. A call running on one goes on; its slot is not used again.
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// Every slot, to give back at shutdown; one still in use rests `busy`.
    pub fn release_all(&self, now: Instant, busy: Duration) -> Vec<Release> {
        self.lock().release_all(now, busy)
    }
}
