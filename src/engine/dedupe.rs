//! The dedupe index of one partition: which `(account, id)` pairs were already applied, and for
//! charged usage, how they were paid (so `reverse` can undo them).
//!
//! Owns: remembered ids, their charge records, and the forgetting of both.
//!
//! Must never: decide a verdict from anything but the pair, its `ts` and the tick clock (an
//! entry whose `ts + dedupe_window` the tick clock has passed is treated as absent, whether or not
//! it has been dropped from memory yet), except when `dedupe_entries_max` forces early eviction.
//!
//! Invariants: `order` holds exactly the keys of `entries`, oldest insertion first; the map has at
//! most `dedupe_entries_max` entries after every insert.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

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

/// The keys are already uniform hashes: use their low bits as the table hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

pub type KeyMap<V> = HashMap<u128, V, BuildHasherDefault<KeyHasher>>;

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
    Charged(Box<Charge>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub ts: Instant,
    pub what: Remembered,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Dedupe {
    entries: KeyMap<Entry>,
    order: VecDeque<u128>,
    /// Entries dropped before their window ended because `dedupe_entries_max` was reached.
    pub evicted_early: u64,
}

impl Dedupe {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn live(entry: &Entry, tick_clock: Option<Instant>, window: Span) -> bool {
        match tick_clock {
            Some(clock) => entry.ts.saturating_add(window) >= clock,
            None => true,
        }
    }

    pub fn get(&self, key: u128, tick_clock: Option<Instant>, window: Span) -> Option<&Entry> {
        self.entries
            .get(&key)
            .filter(|entry| Self::live(entry, tick_clock, window))
    }

    pub fn get_mut(
        &mut self,
        key: u128,
        tick_clock: Option<Instant>,
        window: Span,
    ) -> Option<&mut Entry> {
        self.entries
            .get_mut(&key)
            .filter(|entry| Self::live(entry, tick_clock, window))
    }

    /// Remembers `key`. A stale entry under the same key (window passed) is replaced.
    pub fn insert(&mut self, key: u128, entry: Entry, entries_max: usize) {
        if self.entries.insert(key, entry).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > entries_max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.entries.remove(&oldest).is_some() {
                self.evicted_early += 1;
            }
        }
    }

    /// Drops entries whose window the tick clock has passed, oldest insertions first. An entry
    /// still live at the front keeps later (possibly expired) ones in memory a little longer;
    /// that changes memory only, never a verdict (see `get`).
    pub fn forget_expired(&mut self, tick_clock: Instant, window: Span) {
        while let Some(&front) = self.order.front() {
            match self.entries.get(&front) {
                Some(entry) if Self::live(entry, Some(tick_clock), window) => break,
                Some(_) => {
                    self.entries.remove(&front);
                    self.order.pop_front();
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
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
}
