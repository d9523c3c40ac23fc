//! An account's caps as slots, and how the processes of a cluster share them.
//!
//! A provider account allows `max_concurrent` calls at once and `max_per_second` calls per
//! second, whatever the number of processes calling it. Both caps are slots: a **call
//! slot** is held for the length of one call, so at most `max_concurrent` calls run at once;
//! a **rate slot** is held for the length of a call too and then rests (one second, for an
//! integer rate: [`rate_slots`]), so at most `max_per_second` calls start in any one-second
//! window. The rest counts from the call's end, when the answer is back: the provider saw
//! the call before that, and sees the slot's next call after its start, so no delay between
//! this process and the provider (scheduling, the network, the provider's own queue) can
//! bring two calls of one slot closer than a second as the provider counts them. Each slot belongs to at most one process at a time (the table
//! `provider_slots`, `crate::account_caps`); a process gives a rate slot back with the
//! rest it still owes, so the next owner cannot use it early. The sums therefore hold
//! across the cluster by construction, however the slots move.
//!
//! [`Slots`] is one process's side: the slots it holds, which are busy, which it is giving
//! back, and what it wants. [`fair_shares`] decides how many slots each process should hold
//! from what each wants (max-min fair, the leftover handed out in turn so that no process
//! waits for ever when there are fewer slots than processes). Pure: the caller passes the
//! time.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// The most rate slots an account has: above this rate, each slot rests less than a
/// second, so that a benchmark's account of a million calls per second is not a million
/// rows. A slot resting d = [`MAX_RATE_SLOTS`]/r seconds starts at most ⌈1/d⌉ calls in a
/// second, so the bound there is r plus at most [`MAX_RATE_SLOTS`] (0.1 % at 10⁶/s).
pub const MAX_RATE_SLOTS: u32 = 1_000;

/// The most call slots an account may have, so the largest `max_concurrent`: each is a row
/// of `provider_slots` that the processes' keepers read and move. The benchmark ran at
/// 1,000 orders/s and at `max` with 4,096; with 100,000 the slot statements took seconds
/// and dispatch stopped, and a run with 10,000 (and 5,000 calls in flight per stage) stalled
/// (README). An account to call without a practical cap sets this.
pub const MAX_CALL_SLOTS: u32 = 4_096;

/// How many rate slots `per_second` needs and how long each rests after a call: for an
/// integer rate N up to [`MAX_RATE_SLOTS`], N slots resting one second; otherwise k =
/// min(⌈r⌉, [`MAX_RATE_SLOTS`]) slots resting k/r seconds.
pub fn rate_slots(per_second: f64) -> (u32, Duration) {
    let per_second = if per_second.is_finite() && per_second > 0.0 {
        per_second
    } else {
        1.0
    };
    let slots = per_second.ceil().clamp(1.0, f64::from(MAX_RATE_SLOTS)) as u32;
    (
        slots,
        Duration::from_secs_f64(f64::from(slots) / per_second),
    )
}

/// The two kinds of slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Held for the length of a call: the cap on calls at once.
    Call,
    /// Rests after each call it started: the cap on calls per second.
    Rate,
}

impl Kind {
    /// The word in the `provider_slots` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Rate => "rate",
        }
    }

    pub fn parse(word: &str) -> Option<Kind> {
        match word {
            "call" => Some(Kind::Call),
            "rate" => Some(Kind::Rate),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct CallSlot {
    busy: bool,
    /// Being given back: no new call takes it.
    leaving: bool,
}

#[derive(Clone, Debug, Default)]
struct RateSlot {
    /// When its last call ended.
    last_use: Option<Instant>,
    /// Taken by a caller, for a call not made yet or running.
    reserved: bool,
    /// Its call has started.
    calling: bool,
    leaving: bool,
}

/// A slot to give back, and how long it must still rest before anyone uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub kind: Kind,
    pub slot: u32,
    pub rest: Duration,
}

/// What a process wants of an account's caps now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    pub calls: u32,
    pub rates: u32,
}

/// The slots one process holds of one account.
///
/// Taking a slot is a lookup, not a scan of what is held: the free call slots are kept in
/// a set, and the rate slots free to reserve in a queue in the order they become ready
/// (each rests the same time after its last call, so the longest rested is the first
/// ready). Both leave out the slots being given back; an entry whose slot changed since
/// (taken, dropped, leaving) is skipped when it comes up.
#[derive(Clone, Debug)]
pub struct Slots {
    rest: Duration,
    calls: BTreeMap<u32, CallSlot>,
    /// Call slots neither busy nor leaving.
    free_calls: BTreeSet<u32>,
    rates: BTreeMap<u32, RateSlot>,
    /// Rate slots neither reserved nor leaving, by when their last call ended (never used
    /// first), then by number.
    idle_rates: VecDeque<(Option<Instant>, u32)>,
    /// Callers waiting for a call slot, and for a rate slot.
    pub waiting_calls: u32,
    pub waiting_rates: u32,
    /// After this no slot is used: the slots' lease may lapse soon after (`None`: held for
    /// good, as a process alone holds them).
    usable_until: Option<Instant>,
}

impl Slots {
    /// Holding nothing; rate slots rest `rest` after each call.
    pub fn empty(rest: Duration) -> Self {
        Slots {
            rest,
            calls: BTreeMap::new(),
            free_calls: BTreeSet::new(),
            rates: BTreeMap::new(),
            idle_rates: VecDeque::new(),
            waiting_calls: 0,
            waiting_rates: 0,
            usable_until: None,
        }
    }

    /// Holding nothing, and nothing usable until the first [`Slots::usable_until`]: a
    /// process sharing the caps with others.
    pub fn shared(rest: Duration, now: Instant) -> Self {
        Slots {
            usable_until: Some(now),
            ..Slots::empty(rest)
        }
    }

    /// The slots' lease was renewed: they may be used until `until` (the lease's end less
    /// the longest a slot stays in use).
    pub fn usable_until(&mut self, until: Instant) {
        self.usable_until = Some(until);
    }

    /// Drops every slot once they are no longer usable; `true` if so.
    fn lapse(&mut self, now: Instant) -> bool {
        let lapsed = self.usable_until.is_some_and(|until| now >= until);
        if lapsed {
            self.clear();
        }
        lapsed
    }

    /// Holding every slot of the caps: a process alone with the account (no cluster).
    pub fn all(max_concurrent: u32, per_second: f64) -> Self {
        let (rates, rest) = rate_slots(per_second);
        let mut slots = Slots::empty(rest);
        slots.add(Kind::Call, 0..max_concurrent.max(1));
        slots.add(Kind::Rate, 0..rates);
        slots
    }

    /// Slots acquired (fresh: a rate slot handed over has rested already).
    pub fn add(&mut self, kind: Kind, slots: impl IntoIterator<Item = u32>) {
        for slot in slots {
            match kind {
                Kind::Call => {
                    if let Entry::Vacant(e) = self.calls.entry(slot) {
                        e.insert(CallSlot::default());
                        self.free_calls.insert(slot);
                    }
                }
                Kind::Rate => {
                    if let Entry::Vacant(e) = self.rates.entry(slot) {
                        e.insert(RateSlot::default());
                        self.idle_rate(None, slot);
                    }
                }
            }
        }
    }

    /// Queues a rate slot free to reserve, in the order the slots become ready.
    fn idle_rate(&mut self, last_use: Option<Instant>, slot: u32) {
        let entry = (last_use, slot);
        // Binary search; a slot whose call just ended belongs at the back, where the
        // insert moves nothing.
        let at = self.idle_rates.partition_point(|e| *e < entry);
        self.idle_rates.insert(at, entry);
    }

    /// Drops every slot (the lease could not be renewed in time, or lapsed).
    pub fn clear(&mut self) {
        self.calls.clear();
        self.free_calls.clear();
        self.rates.clear();
        self.idle_rates.clear();
    }

    /// How many slots of `kind` are held (those being given back included).
    pub fn held(&self, kind: Kind) -> usize {
        match kind {
            Kind::Call => self.calls.len(),
            Kind::Rate => self.rates.len(),
        }
    }

    /// Calls running now.
    pub fn busy(&self) -> usize {
        self.calls.values().filter(|s| s.busy).count()
    }

    /// Takes a free call slot, if one is held and usable.
    pub fn take_call(&mut self, now: Instant) -> Option<u32> {
        if self.lapse(now) {
            return None;
        }
        while let Some(slot) = self.free_calls.pop_first() {
            match self.calls.get_mut(&slot) {
                Some(s) if !s.busy && !s.leaving => {
                    s.busy = true;
                    return Some(slot);
                }
                _ => {}
            }
        }
        None
    }

    /// A call ended: its slot is free again (unless it was lost meanwhile, or is leaving).
    pub fn put_call(&mut self, slot: u32) {
        if let Some(s) = self.calls.get_mut(&slot) {
            if std::mem::take(&mut s.busy) && !s.leaving {
                self.free_calls.insert(slot);
            }
        }
    }

    /// Reserves a rate slot that has rested; `Err(Some(wait))` when one will have rested in
    /// `wait`, `Err(None)` when none is held for new calls.
    pub fn reserve_rate(&mut self, now: Instant) -> Result<u32, Option<Duration>> {
        if self.lapse(now) {
            return Err(None);
        }
        while let Some(&(last_use, slot)) = self.idle_rates.front() {
            match self.rates.get_mut(&slot) {
                Some(s) if !s.reserved && !s.leaving && s.last_use == last_use => {
                    if let Some(at) = last_use.map(|t| t + self.rest).filter(|at| *at > now) {
                        return Err(Some(at - now));
                    }
                    s.reserved = true;
                    self.idle_rates.pop_front();
                    return Ok(slot);
                }
                // Taken, dropped or leaving since it was queued.
                _ => {
                    self.idle_rates.pop_front();
                }
            }
        }
        Err(None)
    }

    /// The reserved slot's call starts now; `false` when the slot was lost meanwhile (the
    /// caller must not call, and reserves again).
    pub fn start_rate(&mut self, slot: u32, now: Instant) -> bool {
        if self.lapse(now) {
            return false;
        }
        match self.rates.get_mut(&slot) {
            Some(s) if s.reserved => {
                s.calling = true;
                true
            }
            _ => false,
        }
    }

    /// The slot's caller is done: its call, if it started, ended now and the slot rests from
    /// now; a reservation given up without a call leaves the slot as it was.
    pub fn end_rate(&mut self, slot: u32, now: Instant) {
        if let Some(s) = self.rates.get_mut(&slot) {
            if std::mem::take(&mut s.calling) {
                s.last_use = Some(now);
            }
            if std::mem::take(&mut s.reserved) && !s.leaving {
                let last_use = s.last_use;
                self.idle_rate(last_use, slot);
            }
        }
    }

    /// What this process wants now: its calls running and waiting; for rates, the calls it
    /// started within a rest and those reserved, or every rate slot while a caller waits
    /// for one (the fair share then decides).
    pub fn wants(&self, now: Instant, rate_cap: u32, call_cap: u32) -> Wants {
        let calls = (self.busy() as u32).saturating_add(self.waiting_calls);
        let rates = if self.waiting_rates > 0 {
            rate_cap
        } else {
            self.rates
                .values()
                .filter(|s| s.reserved || s.last_use.is_some_and(|t| now < t + self.rest))
                .count() as u32
        };
        Wants {
            calls: calls.min(call_cap),
            rates: rates.min(rate_cap),
        }
    }

    /// Aims at holding `calls` call slots and `rates` rate slots: slots above the aim stop
    /// taking new calls (the free ones first), and slots below it that were leaving stay.
    pub fn aim(&mut self, calls: usize, rates: usize) {
        aim(&mut self.calls, calls, |s| s.busy, |s| &mut s.leaving);
        // Staying: the reserved and the most recently used, which would owe the longest rest.
        aim(
            &mut self.rates,
            rates,
            |s| (s.reserved, s.last_use),
            |s| &mut s.leaving,
        );
        self.free_calls = self
            .calls
            .iter()
            .filter(|(_, s)| !s.busy && !s.leaving)
            .map(|(slot, _)| *slot)
            .collect();
        let mut idle: Vec<(Option<Instant>, u32)> = self
            .rates
            .iter()
            .filter(|(_, s)| !s.reserved && !s.leaving)
            .map(|(slot, s)| (s.last_use, *slot))
            .collect();
        idle.sort_unstable();
        self.idle_rates = idle.into();
    }

    /// Removes the leaving slots that are not in use and returns them, each with the rest
    /// it still owes: give them back in that order.
    pub fn release(&mut self, now: Instant) -> Vec<Release> {
        let mut out = Vec::new();
        self.calls.retain(|slot, s| {
            let go = s.leaving && !s.busy;
            if go {
                out.push(Release {
                    kind: Kind::Call,
                    slot: *slot,
                    rest: Duration::ZERO,
                });
            }
            !go
        });
        let rest = self.rest;
        self.rates.retain(|slot, s| {
            let go = s.leaving && !s.reserved;
            if go {
                out.push(Release {
                    kind: Kind::Rate,
                    slot: *slot,
                    rest: s.last_use.map_or(Duration::ZERO, |t| {
                        (t + rest).saturating_duration_since(now)
                    }),
                });
            }
            !go
        });
        out
    }

    /// Every slot, to give back at shutdown, each with the rest it still owes; a call slot
    /// still busy (a call outliving its stage) and a rate slot still reserved rest `busy`,
    /// the longest they may stay in use. None is used after this.
    pub fn release_all(&mut self, now: Instant, busy: Duration) -> Vec<Release> {
        let mut out: Vec<Release> = Vec::new();
        self.free_calls.clear();
        self.idle_rates.clear();
        for (slot, s) in std::mem::take(&mut self.calls) {
            out.push(Release {
                kind: Kind::Call,
                slot,
                rest: if s.busy { busy } else { Duration::ZERO },
            });
        }
        for (slot, s) in std::mem::take(&mut self.rates) {
            let rest = if s.reserved {
                busy
            } else {
                s.last_use.map_or(Duration::ZERO, |t| {
                    (t + self.rest).saturating_duration_since(now)
                })
            };
            out.push(Release {
                kind: Kind::Rate,
                slot,
                rest,
            });
        }
        out
    }
}

/// Marks slots above `target` as leaving and keeps those up to it, those with the highest
/// `stay` first, so that the ones leaving can go soonest.
fn aim<S, K: Ord>(
    slots: &mut BTreeMap<u32, S>,
    target: usize,
    stay: impl Fn(&S) -> K,
    leaving: impl Fn(&mut S) -> &mut bool,
) {
    let mut order: Vec<(std::cmp::Reverse<K>, u32)> = slots
        .iter()
        .map(|(slot, s)| (std::cmp::Reverse(stay(s)), *slot))
        .collect();
    order.sort();
    for (rank, (_, slot)) in order.into_iter().enumerate() {
        if let Some(s) = slots.get_mut(&slot) {
            *leaving(s) = rank >= target;
        }
    }
}

/// How far a process's holding may stray from its share before slots move: an eighth of
/// the share (none below eight slots, where one slot matters). Shares follow wants that
/// change from one look to the next; without this band, a benchmark's thousand rate slots
/// moved back and forth between its two stages at about 600 a second.
pub fn band(share: u32) -> u32 {
    share / 8
}

/// How many slots to aim at holding: the share, or what is held while that is within the
/// [`band`] above it.
pub fn keep(share: u32, held: u32) -> u32 {
    if held > share && held - share <= band(share) {
        held
    } else {
        share
    }
}

/// How many free slots to take now: what is missing of the share, once more than the
/// [`band`] is missing.
pub fn take(share: u32, held: u32) -> u32 {
    let missing = share.saturating_sub(held);
    if missing > band(share) {
        missing
    } else {
        0
    }
}

/// How many of `cap` slots each process should hold, from what each wants (same order):
/// max-min fair (nobody gets more than it wants; nobody gets less than another unless it
/// wants less), everything handed out while someone wants more, and the units that do not
/// divide evenly given one each in turn starting from process `turn % wants.len()`, so that
/// with fewer slots than processes each waits its turn instead of for ever.
pub fn fair_shares(cap: u32, wants: &[u32], turn: usize) -> Vec<u32> {
    let n = wants.len();
    let mut shares = vec![0u32; n];
    if n == 0 {
        return shares;
    }
    let mut left = cap;
    loop {
        let hungry: Vec<usize> = (0..n).filter(|&i| shares[i] < wants[i]).collect();
        if hungry.is_empty() || left == 0 {
            return shares;
        }
        let each = left / hungry.len() as u32;
        if each == 0 {
            for k in 0..n {
                let i = (turn + k) % n;
                if left == 0 {
                    break;
                }
                if shares[i] < wants[i] {
                    shares[i] += 1;
                    left -= 1;
                }
            }
            return shares;
        }
        for i in hungry {
            let more = each.min(wants[i] - shares[i]);
            shares[i] += more;
            left -= more;
        }
    }
}

/// `shares` (from [`fair_shares`]) with what nobody wants of `cap` split evenly among
/// all the processes (the units that do not divide evenly, one each in turn from process
/// `turn % shares.len()`): room for a burst above a process's recent wants, taken without
/// waiting for its keeper's next look, and given back at that look once another process
/// wants it (the fair shares then leave nothing over).
pub fn with_room(cap: u32, shares: &[u32], turn: usize) -> Vec<u32> {
    let n = shares.len();
    let mut out = shares.to_vec();
    if n == 0 {
        return out;
    }
    let left = cap.saturating_sub(shares.iter().sum());
    let each = left / n as u32;
    let odd = (left % n as u32) as usize;
    for k in 0..n {
        let i = (turn + k) % n;
        out[i] += each + u32::from(k < odd);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn integer_and_fractional_rates() {
        assert_eq!(rate_slots(40.0), (40, SECOND));
        let (n, rest) = rate_slots(2.5);
        assert_eq!(n, 3);
        assert_eq!(rest, Duration::from_secs_f64(1.2));
        assert_eq!(rate_slots(0.5), (1, Duration::from_secs(2)));
        assert_eq!(rate_slots(1000.0), (1000, SECOND));
        assert_eq!(rate_slots(1_000_000.0), (1000, Duration::from_millis(1)));
    }

    #[test]
    fn a_rate_slot_rests_after_its_call_ends() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Slots::all(2, 2.0);
        let a = s.reserve_rate(t0).unwrap();
        let b = s.reserve_rate(t0).unwrap();
        assert_eq!(s.reserve_rate(t0), Err(None), "both reserved");
        assert!(s.start_rate(a, t0));
        s.end_rate(b, t0);
        let b = s.reserve_rate(t0).unwrap();
        assert!(s.start_rate(b, t0));
        s.end_rate(a, t0 + ms(50));
        s.end_rate(b, t0 + ms(80));
        assert_eq!(s.reserve_rate(t0 + ms(100)), Err(Some(ms(950))));
        assert_eq!(s.reserve_rate(t0 + ms(1050)), Ok(a));
        assert_eq!(s.reserve_rate(t0 + ms(1050)), Err(Some(ms(30))));
    }

    #[test]
    fn call_slots_are_taken_and_put_back() {
        let t0 = Instant::now();
        let mut s = Slots::all(2, 10.0);
        let a = s.take_call(t0).unwrap();
        let _b = s.take_call(t0).unwrap();
        assert_eq!(s.take_call(t0), None);
        s.put_call(a);
        assert_eq!(s.take_call(t0), Some(a));
        assert_eq!(s.busy(), 2);
    }

    #[test]
    fn slots_above_the_aim_leave_once_idle_with_the_rest_they_owe() {
        let t0 = Instant::now();
        let mut s = Slots::all(3, 3.0);
        let busy = s.take_call(t0).unwrap();
        let r = s.reserve_rate(t0).unwrap();
        assert!(s.start_rate(r, t0));
        s.end_rate(r, t0);
        s.aim(1, 1);
        // The busy call slot stays; the two idle ones go now.
        let out = s.release(t0);
        assert_eq!(out.iter().filter(|r| r.kind == Kind::Call).count(), 2);
        assert!(out.iter().all(|r| r.slot != busy || r.kind != Kind::Call));
        // The used rate slot stays: the two never used go, owing no rest.
        let rates: Vec<_> = out.iter().filter(|r| r.kind == Kind::Rate).collect();
        assert_eq!(rates.len(), 2);
        assert!(rates
            .iter()
            .all(|x| x.slot != r && x.rest == Duration::ZERO));
        s.aim(0, 0);
        // The used rate slot goes with the rest it owes; the call slot waits for its call.
        let out = s.release(t0 + Duration::from_millis(300));
        assert_eq!(
            out,
            vec![Release {
                kind: Kind::Rate,
                slot: r,
                rest: SECOND - Duration::from_millis(300)
            }]
        );
        s.put_call(busy);
        let out = s.release(t0 + Duration::from_millis(300));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].kind, out[0].slot), (Kind::Call, busy));
    }

    #[test]
    fn shared_slots_are_used_only_while_their_lease_is_renewed() {
        let t0 = Instant::now();
        let mut s = Slots::shared(SECOND, t0);
        s.add(Kind::Call, [0, 1]);
        s.add(Kind::Rate, [3]);
        assert_eq!(s.take_call(t0), None, "not usable before the first renewal");
        assert_eq!(s.held(Kind::Call), 0);
        s.add(Kind::Call, [0, 1]);
        s.add(Kind::Rate, [3]);
        s.usable_until(t0 + SECOND);
        let call = s.take_call(t0).unwrap();
        let rate = s.reserve_rate(t0).unwrap();
        assert!(
            !s.start_rate(rate, t0 + SECOND),
            "the lease was not renewed in time"
        );
        assert_eq!(s.held(Kind::Call) + s.held(Kind::Rate), 0);
        s.put_call(call);
        assert_eq!(
            s.busy(),
            0,
            "a call ending on a dropped slot leaves nothing behind"
        );
    }

    #[test]
    fn at_shutdown_every_slot_goes_back_with_what_it_owes() {
        let t0 = Instant::now();
        let mut s = Slots::all(2, 2.0);
        let _busy = s.take_call(t0).unwrap();
        let used = s.reserve_rate(t0).unwrap();
        assert!(s.start_rate(used, t0));
        s.end_rate(used, t0);
        let reserved = s.reserve_rate(t0).unwrap();
        let later = t0 + Duration::from_millis(50);
        let mut out = s.release_all(later, 3 * SECOND);
        out.sort_by_key(|r| (r.kind, r.rest));
        assert_eq!(
            out,
            vec![
                Release {
                    kind: Kind::Call,
                    slot: 1,
                    rest: Duration::ZERO
                },
                Release {
                    kind: Kind::Call,
                    slot: 0,
                    rest: 3 * SECOND
                },
                Release {
                    kind: Kind::Rate,
                    slot: used,
                    rest: SECOND - Duration::from_millis(50)
                },
                Release {
                    kind: Kind::Rate,
                    slot: reserved,
                    rest: 3 * SECOND
                },
            ]
        );
        assert_eq!(s.take_call(later), None);
    }

    #[test]
    fn wants_follow_the_callers() {
        let t0 = Instant::now();
        let mut s = Slots::all(4, 10.0);
        assert_eq!(s.wants(t0, 10, 4), Wants::default());
        s.take_call(t0);
        s.waiting_calls = 7;
        let r = s.reserve_rate(t0).unwrap();
        s.start_rate(r, t0);
        s.end_rate(r, t0);
        assert_eq!(s.wants(t0, 10, 4), Wants { calls: 4, rates: 1 });
        s.waiting_rates = 1;
        assert_eq!(s.wants(t0, 10, 4).rates, 10);
        s.waiting_rates = 0;
        assert_eq!(s.wants(t0 + 2 * SECOND, 10, 4).rates, 0);
    }

    #[test]
    fn shares_when_slots_are_fewer_than_processes() {
        assert_eq!(
            fair_shares(4, &[9, 9, 9, 9, 9, 9], 0),
            vec![1, 1, 1, 1, 0, 0]
        );
        assert_eq!(
            fair_shares(4, &[9, 9, 9, 9, 9, 9], 4),
            vec![1, 1, 0, 0, 1, 1]
        );
        assert_eq!(fair_shares(40, &[40, 5, 40], 0), vec![18, 5, 17]);
        assert_eq!(fair_shares(40, &[0, 0], 1), vec![0, 0]);
        assert_eq!(fair_shares(40, &[], 1), Vec::<u32>::new());
        assert_eq!(with_room(40, &[18, 5, 17], 0), vec![18, 5, 17]);
        assert_eq!(with_room(512, &[30, 2], 0), vec![270, 242]);
        assert_eq!(with_room(5, &[0, 0], 1), vec![2, 3]);
        assert_eq!(with_room(5, &[], 1), Vec::<u32>::new());
    }

    proptest! {
        #[test]
        fn holdings_move_only_outside_the_band(share in 0u32..2000, held in 0u32..2000) {
            let kept = keep(share, held);
            prop_assert!(kept >= share && kept <= share + band(share));
            prop_assert!(kept == share || kept == held);
            let taken = take(share, held);
            prop_assert!(taken == 0 || held + taken == share);
            if share < 8 {
                prop_assert_eq!(kept, share, "small shares are exact");
                prop_assert_eq!(taken, share.saturating_sub(held));
            }
        }

        /// Never more than the cap, nobody above its want, everything handed out while
        /// someone wants more, and max-min fair.
        #[test]
        fn fair_shares_hold_their_rules(cap in 0u32..100,
                                        wants in proptest::collection::vec(0u32..60, 0..10),
                                        turn in 0usize..20) {
            let shares = fair_shares(cap, &wants, turn);
            let total: u32 = shares.iter().sum();
            prop_assert!(total <= cap);
            for (s, w) in shares.iter().zip(&wants) {
                prop_assert!(s <= w);
            }
            let wanted: u32 = wants.iter().sum();
            prop_assert_eq!(total, cap.min(wanted));
            for i in 0..wants.len() {
                if shares[i] < wants[i] {
                    for j in 0..wants.len() {
                        prop_assert!(shares[j] <= shares[i] + 1,
                            "{i} wants more but {j} has {} against {}", shares[j], shares[i]);
                    }
                }
            }
        }

        /// With room: everything handed out, nobody below its fair share, and the room
        /// split evenly (to within one slot).
        #[test]
        fn room_is_the_unwanted_rest_split_evenly(cap in 0u32..100,
                                                  wants in proptest::collection::vec(0u32..60, 1..10),
                                                  turn in 0usize..20) {
            let fair = fair_shares(cap, &wants, turn);
            let shares = with_room(cap, &fair, turn);
            prop_assert_eq!(shares.iter().sum::<u32>(), cap);
            let extra: Vec<u32> = shares.iter().zip(&fair).map(|(s, f)| s - f).collect();
            let (lo, hi) = (extra.iter().min().unwrap(), extra.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "room {extra:?}");
            if wants.iter().sum::<u32>() >= cap {
                prop_assert_eq!(shares, fair, "no room while the cap is wanted whole");
            }
        }

        /// Taking a slot from the set and the queue answers what a scan of every held
        /// slot would: a call slot whenever one is free and not leaving; the rate slot
        /// reserved is ready, one is reserved whenever one is ready, and otherwise the wait
        /// is the soonest of those free to reserve.
        #[test]
        fn taking_a_slot_answers_as_a_scan_would(
            calls in 1u32..8, per_second in 1u32..8,
            steps in proptest::collection::vec((0u8..8, 0u32..8, 0u64..400), 1..300),
        ) {
            let t0 = Instant::now();
            let mut s = Slots::all(calls, f64::from(per_second));
            let (mut busy, mut reserved): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
            let mut now = t0;
            for (action, n, ms) in steps {
                now += Duration::from_millis(ms);
                match action {
                    0 | 1 => {
                        let free = s.calls.values().any(|c| !c.busy && !c.leaving);
                        let took = s.take_call(now);
                        prop_assert_eq!(took.is_some(), free);
                        if let Some(slot) = took {
                            prop_assert!(!busy.contains(&slot));
                            busy.push(slot);
                        }
                    }
                    2 => {
                        if !busy.is_empty() {
                            let slot = busy.swap_remove(n as usize % busy.len());
                            s.put_call(slot);
                        }
                    }
                    3 | 4 => {
                        let waits: Vec<(u32, Duration)> = s
                            .rates
                            .iter()
                            .filter(|(_, r)| !r.reserved && !r.leaving)
                            .map(|(slot, r)| {
                                let ready = r.last_use.map_or(now, |t| t + s.rest);
                                (*slot, ready.saturating_duration_since(now))
                            })
                            .collect();
                        match s.reserve_rate(now) {
                            Ok(slot) => {
                                prop_assert!(waits.contains(&(slot, Duration::ZERO)));
                                reserved.push(slot);
                            }
                            Err(wait) => {
                                prop_assert_eq!(wait, waits.iter().map(|w| w.1).min());
                                prop_assert!(wait != Some(Duration::ZERO));
                            }
                        }
                    }
                    5 => {
                        if !reserved.is_empty() {
                            let slot = reserved.swap_remove(n as usize % reserved.len());
                            // Every other reservation is given up without a call.
                            if ms % 2 == 0 {
                                prop_assert!(s.start_rate(slot, now));
                            }
                            s.end_rate(slot, now);
                        }
                    }
                    6 => s.aim(n as usize, (n as usize + ms as usize) % 8),
                    _ => {
                        for r in s.release(now) {
                            prop_assert!(!busy.contains(&r.slot) || r.kind != Kind::Call);
                            prop_assert!(!reserved.contains(&r.slot) || r.kind != Kind::Rate);
                        }
                        s.add(Kind::Call, 0..calls);
                        s.add(Kind::Rate, 0..rate_slots(f64::from(per_second)).0);
                    }
                }
            }
        }

        /// Processes sharing one account's slots through a table, with random wants, calls,
        /// aims and hand-overs: at no moment are more than `cap` calls running, and no
        /// one-second window holds more than `per_second` call starts.
        #[test]
        fn a_cluster_never_exceeds_the_caps(
            per_second in 1u32..12, cap in 1u32..6, processes in 1usize..6,
            steps in proptest::collection::vec((0usize..6, 0u8..6, 0u64..120), 1..400),
        ) {
            let t0 = Instant::now();
            let (rate_n, rest) = rate_slots(f64::from(per_second));
            // The table: who holds each slot, and until when a returned rate slot rests.
            let mut owner_call: Vec<Option<usize>> = vec![None; cap as usize];
            let mut owner_rate: Vec<Option<usize>> = vec![None; rate_n as usize];
            let mut resting_until: Vec<Instant> = vec![t0; rate_n as usize];
            let mut procs: Vec<Slots> = (0..processes).map(|_| Slots::empty(rest)).collect();
            let mut running: Vec<Vec<(u32, u32)>> = vec![Vec::new(); processes];
            let mut starts: Vec<Instant> = Vec::new();
            let mut now = t0;
            for (who, action, ms) in steps {
                now += Duration::from_millis(ms);
                let p = who % processes;
                match action {
                    // Acquire free slots from the table.
                    0 => {
                        for (slot, owner) in owner_call.iter_mut().enumerate() {
                            if owner.is_none() {
                                *owner = Some(p);
                                procs[p].add(Kind::Call, [slot as u32]);
                            }
                        }
                        for (slot, owner) in owner_rate.iter_mut().enumerate() {
                            if owner.is_none() && resting_until[slot] <= now {
                                *owner = Some(p);
                                procs[p].add(Kind::Rate, [slot as u32]);
                            }
                        }
                    }
                    // Start a call.
                    1 | 2 => {
                        if let Some(call) = procs[p].take_call(now) {
                            match procs[p].reserve_rate(now) {
                                Ok(rate) => {
                                    prop_assert!(procs[p].start_rate(rate, now));
                                    starts.push(now);
                                    running[p].push((call, rate));
                                }
                                Err(_) => procs[p].put_call(call),
                            }
                        }
                    }
                    // End a call.
                    3 => {
                        if let Some((call, rate)) = running[p].pop() {
                            procs[p].put_call(call);
                            procs[p].end_rate(rate, now);
                        }
                    }
                    // Aim lower or higher, and give back what leaves.
                    _ => {
                        let aim = (ms % 4) as usize;
                        procs[p].aim(aim, aim * 2);
                        for r in procs[p].release(now) {
                            match r.kind {
                                Kind::Call => owner_call[r.slot as usize] = None,
                                Kind::Rate => {
                                    owner_rate[r.slot as usize] = None;
                                    resting_until[r.slot as usize] = now + r.rest;
                                }
                            }
                        }
                    }
                }
                let total: usize = running.iter().map(Vec::len).sum();
                prop_assert!(total <= cap as usize, "{total} calls at once");
                let recent = starts.iter().filter(|t| now.duration_since(**t) < SECOND).count();
                prop_assert!(recent <= per_second as usize, "{recent} starts within a second");
            }
        }
    }
}
