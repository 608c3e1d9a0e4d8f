//! A partition's timers: when each account's next time-based transition is due, as a min-heap
//! of `(due, slot)` entries that the ticks pop in order.
//!
//! Owns: the heap, its canonical encoding (the entries sorted), and tracking its changes for
//! incremental snapshots: while tracking, every entry pushed and popped since the baseline is
//! logged, and a delta carries their net difference ([`TimersDelta`]) instead of the whole heap.
//!
//! Must never: let the heap's layout reach an output or a snapshot. What the ticks pop depends
//! only on the multiset of entries (equal entries are indistinguishable), so the state is that
//! multiset: a snapshot writes it sorted, and a heap rebuilt from any order behaves the same.
//!
//! Invariants: while tracking, the heap equals the baseline's entries plus `pushed` minus
//! `popped` (as multisets), so the baseline minus [`TimersDelta::removed`] plus
//! [`TimersDelta::added`] is the heap now.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::Instant;

/// When an account (by slot) has its next transition due.
pub type Timer = (Instant, u32);

#[derive(Clone, Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    /// `None` while not tracking.
    log: Option<Log>,
}

/// Entries pushed and popped since the baseline, in the order done.
#[derive(Clone, Debug, Default)]
struct Log {
    pushed: Vec<Timer>,
    popped: Vec<Timer>,
}

/// What the timers became since a baseline: entries to remove from it and entries to add, each
/// sorted, none in both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimersDelta {
    pub removed: Vec<Timer>,
    pub added: Vec<Timer>,
}

impl TimersDelta {
    pub fn len(&self) -> usize {
        self.removed.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Timers {
    #[inline]
    pub fn peek(&self) -> Option<Timer> {
        self.heap.peek().map(|entry| entry.0)
    }

    #[inline]
    pub fn pop(&mut self) -> Option<Timer> {
        let entry = self.heap.pop()?.0;
        if let Some(log) = &mut self.log {
            log.popped.push(entry);
        }
        Some(entry)
    }

    #[inline]
    pub fn push(&mut self, entry: Timer) {
        self.heap.push(Reverse(entry));
        if let Some(log) = &mut self.log {
            log.pushed.push(entry);
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Bytes of heap this holds (capacities, the logs included).
    pub fn heap_bytes(&self) -> usize {
        let entries = self.heap.capacity()
            + self
                .log
                .as_ref()
                .map_or(0, |log| log.pushed.capacity() + log.popped.capacity());
        entries * std::mem::size_of::<Timer>()
    }

    /// The same entries, not tracking (a snapshot writer's copy).
    pub fn copy(&self) -> Timers {
        Timers {
            heap: self.heap.clone(),
            log: None,
        }
    }

    /// The entries now are the baseline of the next delta.
    pub fn mark_baseline(&mut self) {
        match &mut self.log {
            Some(log) => {
                log.pushed.clear();
                log.popped.clear();
            }
            None => self.log = Some(Log::default()),
        }
    }

    pub fn stop_tracking(&mut self) {
        self.log = None;
    }

    /// The net change since the baseline, which the entries now replace; `None` while not
    /// tracking. Costs sorting what was pushed and popped since the baseline, never the heap.
    pub fn take_delta(&mut self) -> Option<TimersDelta> {
        let log = self.log.as_mut()?;
        let (mut pushed, mut popped) = (
            std::mem::take(&mut log.pushed),
            std::mem::take(&mut log.popped),
        );
        pushed.sort_unstable();
        popped.sort_unstable();
        let mut delta = TimersDelta::default();
        let (mut p, mut q) = (pushed.iter().peekable(), popped.iter().peekable());
        loop {
            match (p.peek(), q.peek()) {
                (Some(&&a), Some(&&b)) if a == b => {
                    p.next();
                    q.next();
                }
                (Some(&&a), Some(&&b)) if a < b => {
                    delta.added.push(a);
                    p.next();
                }
                (_, Some(&&b)) => {
                    delta.removed.push(b);
                    q.next();
                }
                (Some(&&a), None) => {
                    delta.added.push(a);
                    p.next();
                }
                (None, None) => break,
            }
        }
        // The logs' buffers are kept for the next interval.
        pushed.clear();
        popped.clear();
        log.pushed = pushed;
        log.popped = popped;
        Some(delta)
    }

    /// Applies a delta taken from the state these entries are (its baseline); not logged, as a
    /// state being rebuilt is not tracked. An error means it removes an entry that is not
    /// here: the delta does not follow this state.
    pub fn apply(&mut self, delta: TimersDelta) -> Result<(), String> {
        if !delta.removed.is_empty() {
            let mut removing: BTreeMap<Timer, usize> = BTreeMap::new();
            for &entry in &delta.removed {
                *removing.entry(entry).or_default() += 1;
            }
            let mut entries = std::mem::take(&mut self.heap).into_vec();
            entries.retain(|entry| match removing.get_mut(&entry.0) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    false
                }
                _ => true,
            });
            if let Some((&(due, slot), _)) = removing.iter().find(|(_, &left)| left > 0) {
                return Err(format!(
                    "a delta removes a timer (slot {slot} at {}) the state does not have",
                    due.0
                ));
            }
            self.heap = BinaryHeap::from(entries);
        }
        self.heap.extend(delta.added.into_iter().map(Reverse));
        Ok(())
    }
}

impl Serialize for Timers {
    /// The entries sorted: the same state always has the same bytes, whatever the heap's
    /// layout.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<Timer> = self.heap.iter().map(|entry| entry.0).collect();
        sorted.sort_unstable();
        sorted.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Timers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<Timer>::deserialize(deserializer)?;
        Ok(Timers {
            heap: entries.into_iter().map(Reverse).collect(),
            log: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(timers: &Timers) -> Vec<Timer> {
        let mut entries: Vec<Timer> = timers.heap.iter().map(|entry| entry.0).collect();
        entries.sort_unstable();
        entries
    }

    /// A small deterministic generator (no clock, no randomness crate needed).
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn a_chain_of_deltas_rebuilds_the_entries_from_any_baseline() {
        for seed in 0..50 {
            let mut rng = Lcg(seed);
            let mut live = Timers::default();
            for _ in 0..rng.below(30) {
                live.push((Instant(rng.below(40) as i64), rng.below(5) as u32));
            }
            live.mark_baseline();
            let mut follower = live.copy();
            for _interval in 0..6 {
                for _ in 0..rng.below(40) {
                    // Duplicates on purpose: few distinct entries.
                    if rng.below(3) == 0 {
                        live.pop();
                    } else {
                        live.push((Instant(rng.below(40) as i64), rng.below(5) as u32));
                    }
                }
                let delta = live.take_delta().unwrap();
                let mut overlap = delta.removed.clone();
                overlap.retain(|entry| delta.added.contains(entry));
                assert!(overlap.is_empty(), "an entry both removed and added");
                follower.apply(delta).unwrap();
                assert_eq!(sorted(&follower), sorted(&live), "seed {seed}");
                // Popping both gives the same order.
                let (mut a, mut b) = (follower.copy(), live.copy());
                while let Some(x) = a.pop() {
                    assert_eq!(Some(x), b.pop());
                }
                assert!(b.pop().is_none());
            }
        }
    }

    #[test]
    fn a_delta_that_removes_what_is_not_there_is_refused() {
        let mut timers = Timers::default();
        timers.push((Instant(5), 1));
        let delta = TimersDelta {
            removed: vec![(Instant(5), 1), (Instant(5), 1)],
            added: vec![],
        };
        let error = timers.apply(delta).unwrap_err();
        assert!(error.contains("slot 1 at 5"), "{error}");
    }

    #[test]
    fn the_encoding_is_the_sorted_entries_whatever_the_layout() {
        let pushed = |entries: [Timer; 4]| {
            let mut timers = Timers::default();
            entries.into_iter().for_each(|entry| timers.push(entry));
            timers
        };
        let (a, b) = (
            pushed([
                (Instant(3), 1),
                (Instant(1), 2),
                (Instant(2), 0),
                (Instant(1), 2),
            ]),
            pushed([
                (Instant(1), 2),
                (Instant(2), 0),
                (Instant(1), 2),
                (Instant(3), 1),
            ]),
        );
        let bytes = crate::codec::encode(&a).unwrap();
        assert_eq!(bytes, crate::codec::encode(&b).unwrap());
        let decoded: Timers = crate::codec::decode(&bytes).unwrap();
        assert_eq!(sorted(&decoded), sorted(&a));
    }

    #[test]
    fn not_tracking_takes_no_delta_and_logs_nothing() {
        let mut timers = Timers::default();
        timers.push((Instant(1), 0));
        assert!(timers.take_delta().is_none());
        assert_eq!(timers.heap_bytes(), timers.heap.capacity() * 16);
        timers.mark_baseline();
        timers.pop();
        timers.push((Instant(2), 0));
        timers.push((Instant(1), 0));
        let delta = timers.take_delta().unwrap();
        assert_eq!(delta.added, vec![(Instant(2), 0)]);
        assert!(delta.removed.is_empty());
    }
}
