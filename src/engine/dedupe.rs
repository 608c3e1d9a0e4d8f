//! The dedupe index of one partition: which `(account, id)` pairs were already applied, and for
//! charged usage, how they were paid (so `reverse` can undo them).
//!
//! Owns: remembered ids, their charge records, and the forgetting of both.
//!
//! Must never: decide a verdict from anything but the pair, its `ts` and the tick clock (an
//! entry whose `ts + dedupe_window` the tick clock has passed is treated as absent, whether or not
//! it has been dropped from memory yet), except when `dedupe_entries_max` forces early eviction.
//!
//! Invariants: the ring holds the remembered pairs in insertion order, at most
//! `dedupe_entries_max` of them after every insert; every slot not `replaced` has exactly one
//! bucket, reachable by linear probing from its key's home bucket without crossing an empty
//! one, and no other bucket is occupied; the table is at most half full.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::catalog::{CreditTypeId, MeterId};
use crate::decimal::{Credits, Quantity, Revenue};
use crate::engine::compact::Draws;
use crate::time::{Instant, Span};

/// xxh3-128 of the account id, a 0xFF separator (never valid in either id) and the id.
pub fn dedupe_key(account: &str, id: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    hasher.update(account.as_bytes());
    hasher.update(&[0xFF]);
    hasher.update(id.as_bytes());
    hasher.digest128()
}

/// How a charged event was paid: enough to undo it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub meter: MeterId,
    pub credit_type: CreditTypeId,
    /// Billed quantity (after increments).
    pub quantity: Quantity,
    /// Credits charged (drawn + overage; excludes a commit's unpaid part).
    pub cost: Credits,
    /// (grant serial, credits drawn, that grant's cost basis).
    pub draws: Draws,
    /// Credits that went into overage debt.
    pub overage: Credits,
    /// Exact money billed for the overage part.
    pub overage_money: Revenue,
    /// Start of the period the charge was booked in.
    pub period_start: Instant,
    pub reversed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Remembered {
    /// A command, or an event that was not charged (rejected).
    Applied,
    Rejected,
    /// Inline, not boxed: an allocation per charged event, freed when its entry is forgotten
    /// (a cold line by then), cost more than the bytes it saved on commands.
    Charged(Charge),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub ts: Instant,
    pub what: Remembered,
}

/// One remembered pair, at its place in insertion order.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Slot {
    key: u128,
    entry: Entry,
    /// The same key was remembered again later (its window had passed): this slot only holds
    /// its place in the order, and no bucket points at it.
    replaced: bool,
}

/// A table bucket: the low 64 bits of a key (its home bucket is their low bits) and
/// `position + 1` of its slot; `position == 0` is an empty bucket.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    key: u64,
    position: u64,
}

/// Remembered pairs in insertion order (a ring) and an open-addressing table over them.
///
/// The table is linear probing over 16-byte buckets, at most half full, with backward-shift
/// deletion (no tombstones). A lookup reads one bucket line and, only when 64 key bits match,
/// the slot (to compare all 128). Forgetting takes the ring's front, which is sequential
/// memory, and deletes its bucket. The bucket of an insert and of the next entries to be
/// forgotten can be prefetched ([`Dedupe::prefetch`]), so at scale the index costs overlapped
/// cache misses rather than a chain of them.
///
/// Memory: a slot is about 190 bytes (a charge record inline), a bucket 16 bytes at load
/// between 1/4 and 1/2: about 240 bytes per remembered pair, at most `dedupe_entries_max` of
/// them (the ring and table keep their high-water capacity).
///
/// Serialized as the ring only (front position, every slot in order, the early-eviction
/// count); the table is rebuilt on load, so a snapshot's bytes depend only on the state.
#[derive(Clone, Debug, Default)]
pub struct Dedupe {
    ring: VecDeque<Slot>,
    /// Insertion number of `ring[0]`; `ring[i]` is at position `front + i`.
    front: u64,
    /// Slots that are not replaced (what `len` reports).
    live: usize,
    table: Vec<Bucket>,
    /// Entries dropped before their window ended because `dedupe_entries_max` was reached.
    pub evicted_early: u64,
}

/// How far ahead of the front the bucket of an entry about to be forgotten is prefetched.
const EVICTION_PREFETCH_DISTANCE: usize = 8;

impl Dedupe {
    /// Live remembered pairs.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Heap bytes held by the ring and the table (charge records with more than one draw hold
    /// a little more).
    pub fn heap_bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<Slot>()
            + self.table.capacity() * std::mem::size_of::<Bucket>()
    }

    fn live_at(entry: &Entry, tick_clock: Option<Instant>, window: Span) -> bool {
        match tick_clock {
            Some(clock) => entry.ts.saturating_add(window) >= clock,
            None => true,
        }
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    fn home(&self, key: u64) -> usize {
        key as usize & self.mask()
    }

    /// Starts loading the bucket `key` would be found in; changes nothing.
    pub fn prefetch(&self, key: u128) {
        if !self.table.is_empty() {
            crate::engine::compact::prefetch(&self.table[self.home(key as u64)]);
        }
    }

    /// The ring index of `key`'s slot, if remembered (in memory, live or not).
    fn find(&self, key: u128) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.mask();
        let low = key as u64;
        let mut at = self.home(low);
        loop {
            let bucket = self.table[at];
            if bucket.position == 0 {
                return None;
            }
            if bucket.key == low {
                let index = (bucket.position - 1 - self.front) as usize;
                if self.ring[index].key == key {
                    return Some(index);
                }
            }
            at = (at + 1) & mask;
        }
    }

    pub fn get(&self, key: u128, tick_clock: Option<Instant>, window: Span) -> Option<&Entry> {
        let index = self.find(key)?;
        let entry = &self.ring[index].entry;
        Self::live_at(entry, tick_clock, window).then_some(entry)
    }

    pub fn get_mut(
        &mut self,
        key: u128,
        tick_clock: Option<Instant>,
        window: Span,
    ) -> Option<&mut Entry> {
        let index = self.find(key)?;
        let entry = &mut self.ring[index].entry;
        Self::live_at(entry, tick_clock, window).then_some(entry)
    }

    /// Remembers `key`. A stale entry under the same key (window passed, not yet forgotten) is
    /// replaced: the new entry takes a new place at the back of the order.
    pub fn insert(&mut self, key: u128, entry: Entry, entries_max: usize) {
        assert!(entries_max > 0, "dedupe_entries_max is validated > 0");
        if let Some(index) = self.find(key) {
            self.ring[index].replaced = true;
            self.live -= 1;
            self.unlink(key, self.front + index as u64);
        }
        while self.ring.len() >= entries_max {
            if self.pop_front() {
                self.evicted_early += 1;
            }
            // The bucket of the entry forgotten a few inserts from now.
            if let Some(ahead) = self.ring.get(EVICTION_PREFETCH_DISTANCE) {
                crate::engine::compact::prefetch(&self.table[self.home(ahead.key as u64)]);
            }
        }
        if (self.live + 1) * 2 > self.table.len() {
            self.grow();
        }
        let position = self.front + self.ring.len() as u64;
        self.ring.push_back(Slot {
            key,
            entry,
            replaced: false,
        });
        self.live += 1;
        self.link(key as u64, position);
    }

    /// Drops entries whose window the tick clock has passed, oldest insertions first. An entry
    /// still live at the front keeps later (possibly expired) ones in memory a little longer;
    /// that changes memory only, never a verdict (see `get`).
    pub fn forget_expired(&mut self, tick_clock: Instant, window: Span) {
        while let Some(front) = self.ring.front() {
            if !front.replaced && Self::live_at(&front.entry, Some(tick_clock), window) {
                break;
            }
            self.pop_front();
        }
    }

    /// Forgets the front slot; true if it was live.
    fn pop_front(&mut self) -> bool {
        let Some(slot) = self.ring.pop_front() else {
            return false;
        };
        let position = self.front;
        self.front += 1;
        if slot.replaced {
            return false;
        }
        self.live -= 1;
        self.unlink(slot.key, position);
        true
    }

    fn link(&mut self, key: u64, position: u64) {
        let mask = self.mask();
        let mut at = self.home(key);
        while self.table[at].position != 0 {
            at = (at + 1) & mask;
        }
        self.table[at] = Bucket {
            key,
            position: position + 1,
        };
    }

    /// Deletes the bucket of the slot at `position`, shifting later buckets of its cluster back
    /// so every key stays reachable from its home without tombstones.
    fn unlink(&mut self, key: u128, position: u64) {
        let mask = self.mask();
        let mut hole = self.home(key as u64);
        while self.table[hole].position != position + 1 {
            assert!(self.table[hole].position != 0, "a live slot has a bucket");
            hole = (hole + 1) & mask;
        }
        let mut next = (hole + 1) & mask;
        loop {
            let bucket = self.table[next];
            if bucket.position == 0 {
                break;
            }
            let home = self.home(bucket.key);
            // The bucket may move back into the hole if the hole is not before its home.
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.table[hole] = bucket;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.table[hole] = Bucket::default();
    }

    /// Doubles the table (at least 16 buckets) and relinks every live slot.
    fn grow(&mut self) {
        let capacity = (self.table.len() * 2).max(16);
        self.rebuild(capacity);
    }

    fn rebuild(&mut self, capacity: usize) {
        self.table = vec![Bucket::default(); capacity];
        for index in 0..self.ring.len() {
            let slot = &self.ring[index];
            if !slot.replaced {
                let (key, position) = (slot.key as u64, self.front + index as u64);
                self.link(key, position);
            }
        }
    }
}

/// The serialized form: the ring in order; the table is derived.
#[derive(Serialize, Deserialize)]
struct DedupeForm {
    front: u64,
    slots: Vec<Slot>,
    evicted_early: u64,
}

impl Serialize for Dedupe {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // Field by field, so the ring is not copied to serialize it.
        struct Ring<'a>(&'a VecDeque<Slot>);
        impl Serialize for Ring<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter())
            }
        }
        let mut form = serializer.serialize_struct("DedupeForm", 3)?;
        form.serialize_field("front", &self.front)?;
        form.serialize_field("slots", &Ring(&self.ring))?;
        form.serialize_field("evicted_early", &self.evicted_early)?;
        form.end()
    }
}

impl<'de> Deserialize<'de> for Dedupe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Dedupe, D::Error> {
        let form = DedupeForm::deserialize(deserializer)?;
        let live = form.slots.iter().filter(|s| !s.replaced).count();
        if form.front.checked_add(form.slots.len() as u64).is_none() {
            return Err(serde::de::Error::custom("dedupe positions overflow"));
        }
        let mut dedupe = Dedupe {
            ring: form.slots.into(),
            front: form.front,
            live,
            table: Vec::new(),
            evicted_early: form.evicted_early,
        };
        let capacity = (live * 2).next_power_of_two().max(16);
        dedupe.rebuild(capacity);
        Ok(dedupe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_account_from_id() {
        assert_ne!(dedupe_key("ab", "c"), dedupe_key("a", "bc"));
        assert_eq!(dedupe_key("a", "b"), dedupe_key("a", "b"));
    }

    #[test]
    fn window_is_judged_by_ts_and_tick_clock() {
        let mut dedupe = Dedupe::default();
        let window = Span(1_000);
        let entry = |ts| Entry {
            ts: Instant(ts),
            what: Remembered::Applied,
        };
        dedupe.insert(1, entry(10_000), 10);
        dedupe.insert(2, entry(5_000), 10); // backdated, inserted later
        assert!(dedupe.get(2, Some(Instant(6_000)), window).is_some());
        assert!(dedupe.get(2, Some(Instant(6_001)), window).is_none());
        dedupe.forget_expired(Instant(6_001), window);
        // Entry 1 is still live and sits in front, so entry 2 stays in memory but is not live.
        assert_eq!(dedupe.len(), 2);
        assert!(dedupe.get(2, Some(Instant(6_001)), window).is_none());
        dedupe.forget_expired(Instant(11_001), window);
        assert!(dedupe.is_empty());
    }

    #[test]
    fn entries_max_evicts_oldest_and_counts() {
        let mut dedupe = Dedupe::default();
        for key in 0..5u128 {
            dedupe.insert(
                key,
                Entry {
                    ts: Instant(0),
                    what: Remembered::Applied,
                },
                3,
            );
        }
        assert_eq!(dedupe.len(), 3);
        assert_eq!(dedupe.evicted_early, 2);
        assert!(dedupe.get(0, None, Span(1)).is_none());
        assert!(dedupe.get(4, None, Span(1)).is_some());
    }

    /// The obviously correct version: a list in insertion order, searched from the back.
    #[derive(Default)]
    struct Reference {
        order: Vec<(u128, i64, bool)>,
        evicted_early: u64,
    }

    impl Reference {
        fn find(&self, key: u128) -> Option<usize> {
            self.order.iter().position(|s| s.0 == key && !s.2)
        }
        fn get(&self, key: u128, clock: Option<i64>, window: i64) -> Option<i64> {
            let ts = self.order[self.find(key)?].1;
            clock.is_none_or(|c| ts + window >= c).then_some(ts)
        }
        fn insert(&mut self, key: u128, ts: i64, max: usize) {
            if let Some(index) = self.find(key) {
                self.order[index].2 = true;
            }
            while self.order.len() >= max {
                if !self.order.remove(0).2 {
                    self.evicted_early += 1;
                }
            }
            self.order.push((key, ts, false));
        }
        fn forget(&mut self, clock: i64, window: i64) {
            while let Some(&(_, ts, replaced)) = self.order.first() {
                if !replaced && ts + window >= clock {
                    break;
                }
                self.order.remove(0);
            }
        }
        fn len(&self) -> usize {
            self.order.iter().filter(|s| !s.2).count()
        }
    }

    /// Random inserts, lookups and forgetting over few keys whose low bits collide often (long
    /// probe clusters, wrap-around, backward shifts), against the reference, with a snapshot
    /// round trip now and then.
    #[test]
    fn matches_a_reference_list_under_collisions_eviction_and_round_trips() {
        let mut rng = crate::sample::Rng::new(7);
        for case in 0..200 {
            let mut dedupe = Dedupe::default();
            let mut reference = Reference::default();
            let max = 1 + rng.below(40) as usize;
            let window = 50;
            let mut clock: Option<i64> = None;
            for step in 0..400 {
                // Keys differ in their high bits; their low bits fall in a few homes.
                let key = (u128::from(rng.below(60)) << 64) | u128::from(rng.below(4) * 16);
                match rng.below(10) {
                    0..=4 => {
                        let ts = clock.unwrap_or(0) + rng.below(40) as i64 - 20;
                        if dedupe.get(key, clock.map(Instant), Span(window)).is_none() {
                            let entry = Entry {
                                ts: Instant(ts),
                                what: Remembered::Applied,
                            };
                            dedupe.insert(key, entry, max);
                            reference.insert(key, ts, max);
                        }
                    }
                    5 | 6 => {
                        let now = clock.unwrap_or(0) + rng.below(30) as i64;
                        clock = Some(now);
                        dedupe.forget_expired(Instant(now), Span(window));
                        reference.forget(now, window);
                    }
                    7 => {
                        let bytes = crate::codec::encode(&dedupe).unwrap();
                        dedupe = crate::codec::decode(&bytes).unwrap();
                        assert_eq!(crate::codec::encode(&dedupe).unwrap(), bytes);
                    }
                    _ => {}
                }
                let expected = reference.get(key, clock, window);
                let actual = dedupe
                    .get(key, clock.map(Instant), Span(window))
                    .map(|e| e.ts.0);
                assert_eq!(actual, expected, "case {case} step {step} key {key:x}");
                assert_eq!(dedupe.len(), reference.len(), "case {case} step {step}");
                assert_eq!(dedupe.evicted_early, reference.evicted_early);
                for &(key, ts, replaced) in &reference.order {
                    if !replaced {
                        assert_eq!(
                            dedupe.get(key, None, Span(window)).map(|e| e.ts.0),
                            Some(ts)
                        );
                    }
                }
                let occupied = dedupe.table.iter().filter(|b| b.position != 0).count();
                assert_eq!(occupied, dedupe.len(), "one bucket per live slot");
            }
        }
    }

    #[test]
    fn a_charge_survives_a_round_trip_and_can_be_marked_reversed() {
        let mut dedupe = Dedupe::default();
        let charge = Charge {
            meter: MeterId(1),
            credit_type: CreditTypeId(0),
            quantity: Quantity::ZERO,
            cost: Credits::ZERO,
            draws: Draws::new(),
            overage: Credits::ZERO,
            overage_money: Revenue::ZERO,
            period_start: Instant(0),
            reversed: false,
        };
        let key = dedupe_key("acct", "evt");
        let entry = Entry {
            ts: Instant(5),
            what: Remembered::Charged(charge),
        };
        dedupe.insert(key, entry, 10);
        let mut dedupe: Dedupe =
            crate::codec::decode(&crate::codec::encode(&dedupe).unwrap()).unwrap();
        match &mut dedupe.get_mut(key, None, Span(1)).unwrap().what {
            Remembered::Charged(charge) => charge.reversed = true,
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &dedupe.get(key, None, Span(1)).unwrap().what,
            Remembered::Charged(c) if c.reversed
        ));
    }
}
