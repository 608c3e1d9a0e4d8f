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
use crate::decimal::{Credits, Fixed, Price, Quantity, Revenue};
use crate::engine::compact::Draws;
use crate::time::{Instant, Span};

/// xxh3-128 of the account id, a 0xFF separator (never valid in either id) and the id.
///
/// Hashed in one call from a stack buffer when they fit (ids usually do): the streaming hasher
/// gives the same digest but costs more to set up than the hash itself.
pub fn dedupe_key(account: &str, id: &str) -> u128 {
    const BUFFER: usize = 128;
    let len = account.len() + 1 + id.len();
    if len <= BUFFER {
        let mut buffer = [0u8; BUFFER];
        buffer[..account.len()].copy_from_slice(account.as_bytes());
        buffer[account.len()] = 0xFF;
        buffer[account.len() + 1..len].copy_from_slice(id.as_bytes());
        return xxhash_rust::xxh3::xxh3_128(&buffer[..len]);
    }
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
    /// The overage price it was billed at (a reversal of part of it, SEMANTICS §9).
    pub overage_price: Price,
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

/// One remembered pair, at its place in insertion order, as the ring stores it (80 bytes; see
/// [`Stored`]). Serialized as [`SlotForm`], exactly the bytes of `(key, Entry, replaced)`.
#[derive(Clone, Debug)]
struct Slot {
    /// The key's low and high 64 bits (two halves, so the slot is 8-aligned, not 16).
    key_low: u64,
    key_high: u64,
    ts: Instant,
    what: Stored,
    /// The same key was remembered again later (its window had passed): this slot only holds
    /// its place in the order, and no bucket points at it.
    replaced: bool,
}

impl Slot {
    fn new(key: u128, entry: Entry) -> Slot {
        Slot {
            key_low: key as u64,
            key_high: (key >> 64) as u64,
            ts: entry.ts,
            what: Stored::from(entry.what),
            replaced: false,
        }
    }

    fn key(&self) -> u128 {
        u128::from(self.key_high) << 64 | u128::from(self.key_low)
    }

    fn is_charge(&self) -> bool {
        matches!(self.what, Stored::Small(_) | Stored::Large(_))
    }

    fn entry(&self) -> Entry {
        Entry {
            ts: self.ts,
            what: self.what.remembered(),
        }
    }
}

/// What a slot remembers. Nearly every charge is drawn from one grant, with no overage and
/// amounts that fit in 64 bits: that case is kept inline in 48 bytes ([`SmallCharge`]); any
/// other charge is boxed (a full [`Charge`] inline made a slot 208 bytes).
#[derive(Clone, Debug)]
enum Stored {
    Applied,
    Rejected,
    Small(SmallCharge),
    Large(Box<Charge>),
}

/// A charge with no overage, at most one draw, and its quantity, cost and the grant's cost
/// basis in `i64` units of `10^-9` (the same units as `Fixed<9>`, narrowed). The one draw took
/// exactly the cost (cost = drawn + overage, and there is no overage), so its credits are not
/// stored again.
#[derive(Clone, Copy, Debug)]
struct SmallCharge {
    quantity: i64,
    cost: i64,
    draw_cost_basis: i64,
    period_start: Instant,
    draw_serial: u32,
    meter: MeterId,
    credit_type: CreditTypeId,
    has_draw: bool,
    reversed: bool,
}

impl From<Remembered> for Stored {
    fn from(what: Remembered) -> Stored {
        match what {
            Remembered::Applied => Stored::Applied,
            Remembered::Rejected => Stored::Rejected,
            Remembered::Charged(charge) => match SmallCharge::narrow(&charge) {
                Some(small) => Stored::Small(small),
                None => Stored::Large(Box::new(charge)),
            },
        }
    }
}

impl Stored {
    fn remembered(&self) -> Remembered {
        match self {
            Stored::Applied => Remembered::Applied,
            Stored::Rejected => Remembered::Rejected,
            Stored::Small(small) => Remembered::Charged(small.widen()),
            Stored::Large(charge) => Remembered::Charged((**charge).clone()),
        }
    }
}

impl SmallCharge {
    /// `None` unless `charge` is exactly representable.
    fn narrow(charge: &Charge) -> Option<SmallCharge> {
        let narrow = |value: i128| i64::try_from(value).ok();
        if !charge.overage.is_zero() || !charge.overage_money.is_zero() || charge.draws.len() > 1 {
            return None;
        }
        let (draw_serial, draw_cost_basis, has_draw) = match charge.draws.first() {
            // A draw of other than the whole cost does not occur without overage; such a record
            // would be kept whole (boxed) rather than lose its drawn credits.
            Some(&(_, credits, _)) if credits != charge.cost => return None,
            Some(&(serial, _, cost_basis)) => (serial, narrow(cost_basis.0)?, true),
            None => (0, 0, false),
        };
        Some(SmallCharge {
            quantity: narrow(charge.quantity.0)?,
            cost: narrow(charge.cost.0)?,
            draw_cost_basis,
            period_start: charge.period_start,
            draw_serial,
            meter: charge.meter,
            credit_type: charge.credit_type,
            has_draw,
            reversed: charge.reversed,
        })
    }

    fn widen(&self) -> Charge {
        let mut draws = Draws::new();
        if self.has_draw {
            draws.push((
                self.draw_serial,
                Fixed(i128::from(self.cost)),
                Fixed(i128::from(self.draw_cost_basis)),
            ));
        }
        Charge {
            meter: self.meter,
            credit_type: self.credit_type,
            quantity: Fixed(i128::from(self.quantity)),
            cost: Fixed(i128::from(self.cost)),
            draws,
            overage: Credits::ZERO,
            overage_money: Revenue::ZERO,
            overage_price: Price::ZERO,
            period_start: self.period_start,
            reversed: self.reversed,
        }
    }
}

/// A slot's serialized form (the layout since format version 3: the key, the entry with its
/// charge record in full, the replaced flag).
#[derive(Serialize, Deserialize)]
#[serde(rename = "Slot")]
struct SlotForm {
    key: u128,
    entry: Entry,
    replaced: bool,
}

impl Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SlotForm {
            key: self.key(),
            entry: self.entry(),
            replaced: self.replaced,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Slot, D::Error> {
        let form = SlotForm::deserialize(deserializer)?;
        let mut slot = Slot::new(form.key, form.entry);
        slot.replaced = form.replaced;
        Ok(slot)
    }
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
/// Memory: a slot is 80 bytes (the usual charge record inline, narrowed: `Stored`), a bucket
/// 16 bytes at load between 1/4 and 1/2: about 117 bytes per remembered pair (plus a 160-byte
/// boxed record for a charge with overage or several draws), at most `dedupe_entries_max` of
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
    /// What changed since the last delta's baseline (incremental snapshots); never serialized.
    changes: RingChanges,
}

/// The changes to a ring since a baseline: the back position then, and the positions before it
/// whose slot was changed in place (a replaced flag, a charge marked reversed). Slots appended
/// since are taken whole and slots forgotten at the front are told by the front position, so
/// only these in-place changes need remembering.
#[derive(Clone, Debug, Default)]
struct RingChanges {
    /// `front + ring.len()` at the baseline; `None` while no baseline is kept (nothing tracked).
    since: Option<u64>,
    touched: Vec<u64>,
}

/// What a ring became since a baseline ([`Dedupe::take_delta`]): applied to the ring as it was
/// at the baseline, it gives the ring now, slot for slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingDelta {
    /// The ring's back position at the baseline (where this delta applies).
    base_back: u64,
    /// The front position now.
    front: u64,
    /// Slots before `base_back` (and not forgotten) changed in place, ascending positions.
    changed: Vec<(u64, Slot)>,
    /// Slots from `max(base_back, front)` to the back, in order.
    appended: Vec<Slot>,
    evicted_early: u64,
}

impl RingDelta {
    /// Slots this delta carries.
    pub fn len(&self) -> usize {
        self.changed.len() + self.appended.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

    fn live_at(ts: Instant, tick_clock: Option<Instant>, window: Span) -> bool {
        match tick_clock {
            Some(clock) => ts.saturating_add(window) >= clock,
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
            self.prefetch_cluster(self.home(key as u64));
        }
    }

    /// Starts loading the cache line of bucket `at` and the line after it: probing and
    /// backward shifts run past the end of a line about a quarter of the time (4 buckets a
    /// line), and that miss was most of the cost of forgetting at scale.
    fn prefetch_cluster(&self, at: usize) {
        let bucket: *const Bucket = &self.table[at];
        crate::engine::compact::prefetch(bucket);
        crate::engine::compact::prefetch(bucket.cast::<u8>().wrapping_add(64));
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
                if self.ring[index].key() == key {
                    return Some(index);
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// The ring index of `key`'s slot if it is remembered and live.
    fn find_live(&self, key: u128, tick_clock: Option<Instant>, window: Span) -> Option<usize> {
        let index = self.find(key)?;
        Self::live_at(self.ring[index].ts, tick_clock, window).then_some(index)
    }

    /// `key` is remembered and live: the input is a duplicate.
    pub fn contains(&self, key: u128, tick_clock: Option<Instant>, window: Span) -> bool {
        self.find_live(key, tick_clock, window).is_some()
    }

    /// A copy of `key`'s live entry (its charge record widened back to a [`Charge`]).
    pub fn get(&self, key: u128, tick_clock: Option<Instant>, window: Span) -> Option<Entry> {
        let index = self.find_live(key, tick_clock, window)?;
        Some(self.ring[index].entry())
    }

    /// A copy of `key`'s entry while it is in memory, live or not. Whether a forgotten entry is
    /// still in memory depends on the entries around it: a verdict must not rest on it alone
    /// (see `reversals`).
    pub fn get_in_memory(&self, key: u128) -> Option<Entry> {
        self.find(key).map(|index| self.ring[index].entry())
    }

    /// Replaces what `key`'s live entry remembers (a charge marked reversed), keeping its `ts`
    /// and place in the order; false if there is no such entry.
    pub fn update(
        &mut self,
        key: u128,
        tick_clock: Option<Instant>,
        window: Span,
        what: Remembered,
    ) -> bool {
        match self.find_live(key, tick_clock, window) {
            Some(index) => {
                self.ring[index].what = Stored::from(what);
                self.touch(index);
                true
            }
            None => false,
        }
    }

    /// Forgets `key`'s entry, live or not, keeping its place in the order; false if there is
    /// none.
    pub fn forget_key(&mut self, key: u128) -> bool {
        let Some(index) = self.find(key) else {
            return false;
        };
        self.ring[index].replaced = true;
        self.touch(index);
        self.live -= 1;
        self.unlink(key, self.front + index as u64);
        true
    }

    /// Remembers `key`. A stale entry under the same key (window passed, not yet forgotten) is
    /// replaced: the new entry takes a new place at the back of the order.
    pub fn insert(&mut self, key: u128, entry: Entry, entries_max: usize) {
        self.insert_forgetting(key, entry, entries_max, &mut |_, _| {});
    }

    /// [`Dedupe::insert`], handing every charge record it forgets (the stale entry it
    /// replaces, the entries evicted early) to `forgotten`, with its key.
    pub fn insert_forgetting(
        &mut self,
        key: u128,
        entry: Entry,
        entries_max: usize,
        forgotten: &mut impl FnMut(u128, Entry),
    ) {
        assert!(entries_max > 0, "dedupe_entries_max is validated > 0");
        if let Some(index) = self.find(key) {
            let slot = &mut self.ring[index];
            slot.replaced = true;
            if slot.is_charge() {
                forgotten(key, slot.entry());
            }
            self.touch(index);
            self.live -= 1;
            self.unlink(key, self.front + index as u64);
        }
        while self.ring.len() >= entries_max {
            if self.pop_front(forgotten) {
                self.evicted_early += 1;
            }
            // The bucket of the entry forgotten a few inserts from now.
            if let Some(ahead) = self.ring.get(EVICTION_PREFETCH_DISTANCE) {
                self.prefetch_cluster(self.home(ahead.key_low));
            }
        }
        if (self.live + 1) * 2 > self.table.len() {
            self.grow();
        }
        let position = self.front + self.ring.len() as u64;
        self.ring.push_back(Slot::new(key, entry));
        self.live += 1;
        self.link(key as u64, position);
    }

    /// Drops entries whose window the tick clock has passed, oldest insertions first. An entry
    /// still live at the front keeps later (possibly expired) ones in memory a little longer;
    /// that changes memory only, never a verdict (see `get`).
    pub fn forget_expired(&mut self, tick_clock: Instant, window: Span) {
        self.forget_expired_into(tick_clock, window, &mut |_, _| {});
    }

    /// [`Dedupe::forget_expired`], handing every charge record it forgets to `forgotten`.
    pub fn forget_expired_into(
        &mut self,
        tick_clock: Instant,
        window: Span,
        forgotten: &mut impl FnMut(u128, Entry),
    ) {
        while let Some(front) = self.ring.front() {
            if !front.replaced && Self::live_at(front.ts, Some(tick_clock), window) {
                break;
            }
            self.pop_front(forgotten);
        }
    }

    /// The `ts` of the oldest insertion still in memory.
    pub fn front_ts(&self) -> Option<Instant> {
        self.ring.front().map(|slot| slot.ts)
    }

    /// Forgets the front slot, handing it to `forgotten` if it is a charge record; true if it
    /// was live.
    fn pop_front(&mut self, forgotten: &mut impl FnMut(u128, Entry)) -> bool {
        let Some(slot) = self.ring.pop_front() else {
            return false;
        };
        let position = self.front;
        self.front += 1;
        if slot.replaced {
            return false;
        }
        self.live -= 1;
        self.unlink(slot.key(), position);
        if slot.is_charge() {
            forgotten(slot.key(), slot.entry());
        }
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
                let (key, position) = (slot.key_low, self.front + index as u64);
                self.link(key, position);
            }
        }
    }
}

/// Incremental snapshots: the ring's changes since a baseline, and applying them.
impl Dedupe {
    /// Starts (or restarts) tracking changes from the ring as it is now.
    pub fn mark_baseline(&mut self) {
        self.changes.since = Some(self.back());
        self.changes.touched.clear();
    }

    /// The ring alone, for a copy that is only ever encoded and advanced by deltas (the
    /// snapshot writer's shadow, `engine::delta`): no lookup table, nothing tracked.
    pub fn ring_copy(&self) -> Dedupe {
        // With the ring's room too: the copy then grows as the ring does, not by a doubling
        // (a copy of the whole) at the first delta it follows.
        let mut ring = VecDeque::with_capacity(self.ring.capacity());
        ring.extend(self.ring.iter().cloned());
        Dedupe {
            ring,
            front: self.front,
            live: self.live,
            table: Vec::new(),
            evicted_early: self.evicted_early,
            changes: RingChanges::default(),
        }
    }

    /// Stops tracking (nothing is remembered for a delta any more).
    pub fn stop_tracking(&mut self) {
        self.changes = RingChanges::default();
    }

    fn back(&self) -> u64 {
        self.front + self.ring.len() as u64
    }

    /// Remembers that the slot at ring index `index` changed in place, if it is older than the
    /// baseline (a newer one is taken whole).
    fn touch(&mut self, index: usize) {
        if let Some(since) = self.changes.since {
            let position = self.front + index as u64;
            if position < since {
                self.changes.touched.push(position);
            }
        }
    }

    /// What changed since the baseline, and a new baseline here; `None` without a baseline.
    pub fn take_delta(&mut self) -> Option<RingDelta> {
        let base_back = self.changes.since?;
        let mut touched = std::mem::take(&mut self.changes.touched);
        touched.sort_unstable();
        touched.dedup();
        let front = self.front;
        let changed = touched
            .iter()
            .filter(|&&position| position >= front && position < base_back)
            .map(|&position| (position, self.ring[(position - front) as usize].clone()))
            .collect();
        let from = (base_back.max(front) - front) as usize;
        let appended = self.ring.range(from..).cloned().collect();
        touched.clear();
        self.changes.touched = touched;
        self.changes.since = Some(self.back());
        Some(RingDelta {
            base_back,
            front,
            changed,
            appended,
            evicted_early: self.evicted_early,
        })
    }

    /// Applies a delta taken from this ring's state: slot for slot the ring it was taken from.
    /// The lookup table and the live count are left stale until [`Dedupe::reindex`] (a chain of deltas is applied
    /// before it is rebuilt once). An error leaves the ring unusable (the caller drops it).
    pub fn apply_delta_unindexed(&mut self, delta: RingDelta) -> Result<(), String> {
        let back = self.back();
        if delta.base_back != back {
            return Err(format!(
                "a dedupe delta from position {} applied to a ring ending at {back}",
                delta.base_back
            ));
        }
        if delta.front < self.front {
            return Err("a dedupe delta moves the front backwards".into());
        }
        for (position, slot) in delta.changed {
            if position < delta.front || position >= back {
                return Err(format!(
                    "a dedupe delta changes position {position}, outside the ring"
                ));
            }
            self.ring[(position - self.front) as usize] = slot;
        }
        while self.front < delta.front && !self.ring.is_empty() {
            self.ring.pop_front();
            self.front += 1;
        }
        self.front = delta.front;
        if self
            .front
            .checked_add((self.ring.len() + delta.appended.len()) as u64)
            .is_none()
        {
            return Err("dedupe positions overflow".into());
        }
        self.ring.extend(delta.appended);
        self.evicted_early = delta.evicted_early;
        Ok(())
    }

    /// Rebuilds the lookup table and the live count from the ring (after
    /// [`Dedupe::apply_delta_unindexed`], which leaves both stale: a snapshot writer's copy
    /// follows deltas without either, and a chain is indexed once at its end).
    pub fn reindex(&mut self) {
        self.live = self.ring.iter().filter(|slot| !slot.replaced).count();
        let capacity = (self.live * 2).next_power_of_two().max(16);
        self.rebuild(capacity);
    }
}

/// The serialized form: the ring in order; the table is derived.
#[derive(Deserialize)]
struct DedupeForm {
    front: u64,
    slots: RingForm,
    evicted_early: u64,
}

/// The ring's slots as decoded: allocated once for all of them, with room to grow into (the
/// next power of two, what the ring would grow to), so neither the decode nor the first inserts
/// after a recovery copy the ring (grown by doubling, the decode of a million accounts' rings
/// spent a fifth of its CPU copying them and touching fresh memory for the copies).
struct RingForm(VecDeque<Slot>);

/// The fewest bytes a slot's encoding takes (a key, a `ts` and a verdict of one byte each at
/// least, and the replaced flag).
const SLOT_ENCODED_MIN: usize = 4;

impl<'de> Deserialize<'de> for RingForm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RingForm, D::Error> {
        struct Slots;
        impl<'de> serde::de::Visitor<'de> for Slots {
            type Value = RingForm;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of dedupe slots")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RingForm, A::Error> {
                let stated = seq.size_hint().unwrap_or(0);
                let room = crate::codec::preallocate::<Slot>(stated, SLOT_ENCODED_MIN);
                let mut slots =
                    Vec::with_capacity(room.checked_next_power_of_two().unwrap_or(room));
                while let Some(slot) = seq.next_element()? {
                    slots.push(slot);
                }
                Ok(RingForm(slots.into()))
            }
        }
        deserializer.deserialize_seq(Slots)
    }
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
        let slots = form.slots.0;
        let live = slots.iter().filter(|s| !s.replaced).count();
        if form.front.checked_add(slots.len() as u64).is_none() {
            return Err(serde::de::Error::custom("dedupe positions overflow"));
        }
        let mut dedupe = Dedupe {
            ring: slots,
            front: form.front,
            live,
            table: Vec::new(),
            evicted_early: form.evicted_early,
            changes: RingChanges::default(),
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
        // The one-call path gives the streaming hasher's digest at every length, across the
        // buffer's bound (snapshots hold these keys).
        for account_len in [0, 1, 7, 63, 64, 126, 127, 128, 200] {
            for id_len in [0, 1, 16, 63, 64, 65, 127, 300] {
                let account = "a".repeat(account_len);
                let id = "e".repeat(id_len);
                let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
                hasher.update(account.as_bytes());
                hasher.update(&[0xFF]);
                hasher.update(id.as_bytes());
                assert_eq!(
                    dedupe_key(&account, &id),
                    hasher.digest128(),
                    "{account_len} + {id_len}"
                );
            }
        }
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

    fn charge(draws: &[(u32, i128, i128)], overage: i128, quantity: i128) -> Charge {
        let drawn: i128 = draws.iter().map(|d| d.1).sum();
        Charge {
            meter: MeterId(1),
            credit_type: CreditTypeId(2),
            quantity: Fixed(quantity),
            cost: Fixed(drawn + overage),
            draws: draws
                .iter()
                .map(|&(serial, credits, basis)| (serial, Fixed(credits), Fixed(basis)))
                .collect::<Vec<_>>()
                .into(),
            overage: Fixed(overage),
            overage_money: Fixed(overage * 1_000_000_000 / 2),
            overage_price: Fixed(if overage == 0 { 0 } else { 500_000_000 }),
            period_start: Instant(1_700_000_000_000),
            reversed: false,
        }
    }

    /// Every shape of charge comes back exactly as it went in, whether kept small or boxed, and
    /// serializes as the full record would (the layout since format version 3).
    #[test]
    fn charges_small_and_large_come_back_exactly_and_serialize_in_full() {
        let big = i128::from(i64::MAX) + 1;
        let cases = [
            (charge(&[], 0, 0), true),
            (
                charge(&[(3, 1_500_000_000, 250_000_000)], 0, 3_000_000_000),
                true,
            ),
            (charge(&[(3, -7, -1)], 0, -7), true),
            (charge(&[(3, 1, 1), (4, 2, 2)], 0, 3), false),
            (charge(&[(3, 1, 1)], 5, 3), false),
            (charge(&[(3, big, 1)], 0, 3), false),
            (charge(&[(3, 1, big)], 0, 3), false),
            (charge(&[(3, 1, 1)], 0, big), false),
            (charge(&[(3, i128::from(i64::MIN), 1)], 0, 1), true),
            // A single draw of other than the whole cost keeps its own credits (boxed).
            (
                Charge {
                    cost: Fixed(9),
                    ..charge(&[(3, 1, 1)], 0, 3)
                },
                false,
            ),
        ];
        for (case, (charge, small)) in cases.into_iter().enumerate() {
            for reversed in [false, true] {
                let charge = Charge {
                    reversed,
                    ..charge.clone()
                };
                let entry = Entry {
                    ts: Instant(-5),
                    what: Remembered::Charged(charge.clone()),
                };
                let slot = Slot::new(u128::MAX - 3, entry.clone());
                assert_eq!(matches!(slot.what, Stored::Small(_)), small, "case {case}");
                assert_eq!(slot.entry().what, entry.what, "case {case}");
                assert_eq!(slot.key(), u128::MAX - 3);
                let full = SlotForm {
                    key: u128::MAX - 3,
                    entry,
                    replaced: false,
                };
                let bytes = crate::codec::encode(&slot).unwrap();
                assert_eq!(bytes, crate::codec::encode(&full).unwrap(), "case {case}");
                let back: Slot = crate::codec::decode(&bytes).unwrap();
                assert_eq!(back.entry().what, Remembered::Charged(charge.clone()));
            }
        }
        for what in [Remembered::Applied, Remembered::Rejected] {
            let slot = Slot::new(
                9,
                Entry {
                    ts: Instant(1),
                    what: what.clone(),
                },
            );
            assert_eq!(slot.entry().what, what);
        }
    }

    #[test]
    fn a_slot_is_80_bytes() {
        assert_eq!(std::mem::size_of::<SmallCharge>(), 48);
        assert_eq!(std::mem::size_of::<Slot>(), 80);
    }

    #[test]
    fn a_charge_survives_a_round_trip_and_can_be_marked_reversed() {
        let mut dedupe = Dedupe::default();
        let key = dedupe_key("acct", "evt");
        let entry = Entry {
            ts: Instant(5),
            what: Remembered::Charged(charge(&[(1, 10, 2)], 0, 10)),
        };
        dedupe.insert(key, entry, 10);
        let mut dedupe: Dedupe =
            crate::codec::decode(&crate::codec::encode(&dedupe).unwrap()).unwrap();
        let mut what = dedupe.get(key, None, Span(1)).unwrap().what;
        match &mut what {
            Remembered::Charged(charge) => charge.reversed = true,
            other => panic!("{other:?}"),
        }
        assert!(dedupe.update(key, None, Span(1), what));
        assert!(!dedupe.update(key + 1, None, Span(1), Remembered::Applied));
        assert!(matches!(
            dedupe.get(key, None, Span(1)).unwrap().what,
            Remembered::Charged(c) if c.reversed
        ));
        assert_eq!(dedupe.get(key, None, Span(1)).unwrap().ts, Instant(5));
    }

    /// A ring's stated length is allocated for at once, but never beyond what the input could
    /// hold: a corrupt length in a few bytes is a decode error, not an allocation of 2^60 slots.
    #[test]
    fn a_corrupt_ring_length_allocates_in_proportion_to_the_input() {
        let mut dedupe = Dedupe::default();
        for k in 0..5u128 {
            let entry = Entry {
                ts: Instant(k as i64),
                what: Remembered::Applied,
            };
            dedupe.insert_forgetting(k, entry, 100, &mut |_, _| {});
        }
        let bytes = crate::codec::encode(&dedupe).unwrap();
        let decoded: Dedupe = crate::codec::decode(&bytes).unwrap();
        assert_eq!(crate::codec::encode(&decoded).unwrap(), bytes);
        assert!(
            decoded.ring.capacity() >= 8,
            "room to grow: {}",
            decoded.ring.capacity()
        );
        // front 0, then a slot count of 2^60 - 1 (bincode's 0xFD: eight bytes follow).
        let mut corrupt = vec![0u8, 0xFD];
        corrupt.extend_from_slice(&(u64::MAX >> 4).to_le_bytes());
        corrupt.extend_from_slice(&bytes[2..]);
        assert!(crate::codec::decode::<Dedupe>(&corrupt).is_err());
        assert_eq!(
            crate::codec::preallocate::<Slot>(1 << 40, 4),
            1_048_576 / 80
        );
    }
}
