//! The reversal archive of one partition: charge records kept after the dedupe index forgets
//! them, until their event's `ts + reversal_window`, so that `reverse` settles disputes older
//! than the dedupe window (SEMANTICS §9).
//!
//! Owns: archived charge records, their forgetting, and the lookup a reversal makes through the
//! dedupe index and the archive together.
//!
//! Must never: let a verdict depend on when a record moved from the dedupe index to the archive
//! (that depends on the order of the partition's inputs, so on the partition count): a record
//! is found by its key, its `ts` and the tick clock only, wherever it is kept, except when
//! `reversal_entries_max` forces early eviction.
//!
//! Invariants: the archive holds only charge records (`Remembered::Charged`); a key has at most
//! one record in the dedupe index and one in the archive, and the dedupe index's is the newer.

use serde::{Deserialize, Serialize};

use crate::catalog::Rules;
use crate::engine::dedupe::{Dedupe, Entry, Remembered};
use crate::time::Instant;

/// Where a reversal found its event's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// In the dedupe index, live: any kind of entry (a command's id is no event, §9).
    Remembered,
    /// In the dedupe index past its window, a charge still within the reversal window.
    Kept,
    /// In the archive.
    Archived,
}

/// Charge records past the dedupe window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reversals {
    archive: Dedupe,
    /// The latest `ts` of a record forgotten early (`reversal_entries_max`): a missing event at
    /// or before it may have been one of them.
    evicted_through: Option<Instant>,
}

impl Reversals {
    /// Whether records outlive the dedupe index at all.
    pub fn enabled(rules: &Rules) -> bool {
        rules.reversal_window > rules.dedupe_window
    }

    /// Records kept in the archive.
    pub fn len(&self) -> usize {
        self.archive.len()
    }

    pub fn is_empty(&self) -> bool {
        self.archive.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.archive.heap_bytes()
    }

    /// Records forgotten before their window ended.
    pub fn evicted_early(&self) -> u64 {
        self.archive.evicted_early
    }

    /// Takes a charge record the dedupe index forgot, unless its reversal window has passed.
    pub fn keep(&mut self, key: u128, entry: Entry, tick_clock: Option<Instant>, rules: &Rules) {
        debug_assert!(matches!(entry.what, Remembered::Charged(_)));
        if !Self::enabled(rules) {
            return;
        }
        // A newer record under the same key (an id used again after the dedupe window)
        // replaces the older one, also when its own window has passed: a reversal acts on the
        // latest charge of the id or on none.
        self.archive.forget_key(key);
        if !live(entry.ts, tick_clock, rules) {
            return;
        }
        let evicted = &mut self.evicted_through;
        self.archive.insert_forgetting(
            key,
            entry,
            rules.reversal_entries_max,
            &mut |_, gone: Entry| *evicted = Some(evicted.map_or(gone.ts, |t| t.max(gone.ts))),
        );
    }

    /// Drops records whose reversal window the tick clock has passed.
    pub fn forget_expired(&mut self, tick_clock: Instant, rules: &Rules) {
        self.archive
            .forget_expired(tick_clock, rules.reversal_window);
    }

    /// The record a `reverse` of `key` acts on, and where it was found: the dedupe index's
    /// live entry whatever it is; else the latest charge of the key (in log order) if its
    /// reversal window is open. The latest charge is the dedupe index's entry when that is a
    /// charge (live or not, while in memory), else the archive's: the archive holds the latest
    /// charge the dedupe index forgot, and the index holds only the key's latest entry.
    pub fn lookup(
        &self,
        dedupe: &Dedupe,
        key: u128,
        tick_clock: Option<Instant>,
        rules: &Rules,
    ) -> Option<(Entry, Found)> {
        if let Some(entry) = dedupe.get(key, tick_clock, rules.dedupe_window) {
            return Some((entry, Found::Remembered));
        }
        if !Self::enabled(rules) {
            return None;
        }
        if let Some(entry) = dedupe.get_in_memory(key) {
            if matches!(entry.what, Remembered::Charged(_)) {
                return live(entry.ts, tick_clock, rules).then_some((entry, Found::Kept));
            }
        }
        self.archive
            .get(key, tick_clock, rules.reversal_window)
            .map(|entry| (entry, Found::Archived))
    }

    /// Writes back what a reversal changed in the record it found.
    pub fn write_back(
        &mut self,
        dedupe: &mut Dedupe,
        key: u128,
        tick_clock: Option<Instant>,
        rules: &Rules,
        found: Found,
        what: Remembered,
    ) {
        let written = match found {
            Found::Remembered => dedupe.update(key, tick_clock, rules.dedupe_window, what),
            Found::Kept => dedupe.update(key, tick_clock, rules.reversal_window, what),
            Found::Archived => self
                .archive
                .update(key, tick_clock, rules.reversal_window, what),
        };
        debug_assert!(written, "a record just found is written back");
    }

    /// The reason a `reverse` whose event is not found is rejected with: with the event's
    /// `ts` given, `reversal_window_passed` when the tick clock has passed `ts +
    /// reversal_window`, `reversal_record_evicted` when records that recent were forgotten
    /// early; otherwise (and without it) `unknown_event`.
    pub fn missing_reason(
        &self,
        event_ts: Option<Instant>,
        tick_clock: Option<Instant>,
        rules: &Rules,
    ) -> &'static str {
        match event_ts {
            Some(ts) if !live(ts, tick_clock, rules) => "reversal_window_passed",
            Some(ts) if self.evicted_through.is_some_and(|through| ts <= through) => {
                "reversal_record_evicted"
            }
            _ => "unknown_event",
        }
    }
}

/// What the archive became since a baseline (incremental snapshots).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReversalsDelta {
    archive: crate::engine::dedupe::RingDelta,
    evicted_through: Option<Instant>,
}

impl ReversalsDelta {
    pub fn len(&self) -> usize {
        self.archive.len()
    }

    pub fn is_empty(&self) -> bool {
        self.archive.is_empty()
    }
}

impl Reversals {
    /// The archive's ring alone ([`crate::engine::dedupe::Dedupe::ring_copy`]).
    pub fn ring_copy(&self) -> Reversals {
        Reversals {
            archive: self.archive.ring_copy(),
            evicted_through: self.evicted_through,
        }
    }

    pub fn mark_baseline(&mut self) {
        self.archive.mark_baseline();
    }

    pub fn stop_tracking(&mut self) {
        self.archive.stop_tracking();
    }

    pub fn take_delta(&mut self) -> Option<ReversalsDelta> {
        Some(ReversalsDelta {
            archive: self.archive.take_delta()?,
            evicted_through: self.evicted_through,
        })
    }

    /// See [`Dedupe::apply_delta_unindexed`]; [`Reversals::reindex`] afterwards.
    pub fn apply_delta_unindexed(&mut self, delta: ReversalsDelta) -> Result<(), String> {
        self.archive.apply_delta_unindexed(delta.archive)?;
        self.evicted_through = delta.evicted_through;
        Ok(())
    }

    pub fn reindex(&mut self) {
        self.archive.reindex();
    }
}

/// Whether the reversal window of an event at `ts` is still open at the tick clock.
fn live(ts: Instant, tick_clock: Option<Instant>, rules: &Rules) -> bool {
    tick_clock.is_none_or(|clock| ts.saturating_add(rules.reversal_window) >= clock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::{Credits, Fixed, Price, Revenue};
    use crate::engine::compact::Draws;
    use crate::engine::dedupe::Charge;
    use crate::time::Span;

    const HOUR: i64 = 3_600_000;

    fn rules(entries_max: usize) -> Rules {
        Rules {
            dedupe_window: Span(HOUR),
            reversal_window: Span(10 * HOUR),
            reversal_entries_max: entries_max,
            ..Rules::default()
        }
    }

    fn charge(ts: i64) -> Entry {
        Entry {
            ts: Instant(ts),
            what: Remembered::Charged(Charge {
                meter: crate::catalog::MeterId(0),
                credit_type: crate::catalog::CreditTypeId(0),
                quantity: Fixed(1_000_000_000),
                cost: Fixed(5),
                draws: Draws::new(),
                overage: Credits::ZERO,
                overage_money: Revenue::ZERO,
                overage_price: Price::ZERO,
                period_start: Instant(0),
                reversed: false,
            }),
        }
    }

    /// Where a record is kept never changes the answer: in the dedupe index past its window,
    /// or moved to the archive, it is found until ts + reversal_window, and not after.
    #[test]
    fn a_record_is_found_by_its_window_wherever_it_is_kept() {
        let rules = rules(100);
        let mut dedupe = Dedupe::default();
        let mut reversals = Reversals::default();
        dedupe.insert(1, charge(0), rules.dedupe_entries_max);
        let at = |h: i64| Some(Instant(h * HOUR));
        let found = |d: &Dedupe, r: &Reversals, clock| r.lookup(d, 1, clock, &rules).map(|f| f.1);
        assert_eq!(found(&dedupe, &reversals, at(1)), Some(Found::Remembered));
        assert_eq!(found(&dedupe, &reversals, at(2)), Some(Found::Kept));
        let mut moved = Vec::new();
        dedupe.forget_expired_into(Instant(2 * HOUR), rules.dedupe_window, &mut |k, e| {
            moved.push((k, e));
        });
        for (key, entry) in moved {
            reversals.keep(key, entry, at(2), &rules);
        }
        assert!(dedupe.is_empty());
        assert_eq!(found(&dedupe, &reversals, at(2)), Some(Found::Archived));
        assert_eq!(found(&dedupe, &reversals, at(10)), Some(Found::Archived));
        assert_eq!(
            found(&dedupe, &reversals, Some(Instant(10 * HOUR + 1))),
            None
        );
        assert_eq!(
            reversals.missing_reason(Some(Instant(0)), Some(Instant(10 * HOUR + 1)), &rules),
            "reversal_window_passed"
        );
        assert_eq!(
            reversals.missing_reason(None, Some(Instant(10 * HOUR + 1)), &rules),
            "unknown_event"
        );
    }

    #[test]
    fn early_eviction_is_reported_for_events_that_recent() {
        let rules = rules(2);
        let mut reversals = Reversals::default();
        for (key, ts) in [(1, 0), (2, HOUR), (3, 2 * HOUR)] {
            reversals.keep(key, charge(ts), Some(Instant(3 * HOUR)), &rules);
        }
        assert_eq!(reversals.len(), 2);
        assert_eq!(reversals.evicted_early(), 1);
        let clock = Some(Instant(3 * HOUR));
        assert_eq!(
            reversals.missing_reason(Some(Instant(0)), clock, &rules),
            "reversal_record_evicted"
        );
        assert_eq!(
            reversals.missing_reason(Some(Instant(HOUR)), clock, &rules),
            "unknown_event"
        );
    }

    #[test]
    fn nothing_is_archived_when_the_windows_are_equal() {
        let rules = Rules {
            reversal_window: Span(HOUR),
            ..rules(100)
        };
        let mut reversals = Reversals::default();
        reversals.keep(1, charge(0), Some(Instant(2 * HOUR)), &rules);
        assert!(reversals.is_empty());
    }
}
