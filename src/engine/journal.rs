//! The charge journal: a partition's most recent charges and the grants that paid them, kept
//! in memory for the statement query (disputes: "what was I charged for, and from which
//! grant?"), only when asked for.
//!
//! Owns: a ring of the last `capacity` charges (usage events and commits) of the partition,
//! oldest forgotten first, and the ids of the grants they drew from (a grant may be pruned
//! from its account after its period; the statement still names it).
//!
//! Must never: be part of a snapshot or of any output, or change what the engine decides (the
//! engine writes it and never reads it). A partition restored from a snapshot starts with an
//! empty journal, which the replay of the log after the snapshot fills again; so a statement
//! covers the charges applied since the partition was loaded, or the last `capacity` of the
//! partition, whichever is fewer (SEMANTICS §17).
//!
//! Invariants: entries are in the order applied; at most `capacity` of them.

use std::collections::{HashMap, VecDeque};

use crate::engine::compact::ShortStr;
use crate::engine::dedupe::Charge;
use crate::time::Instant;

/// One charge as applied.
#[derive(Clone, Debug)]
pub struct JournalEntry {
    /// Stream sequence of the charging message.
    pub seq: u64,
    /// The account's slot in its partition (slots are never reused).
    pub slot: u32,
    /// The usage event's id, or the commit's.
    pub event_id: ShortStr,
    /// `usage` or `commit`.
    pub kind: &'static str,
    pub ts: Instant,
    pub charge: Charge,
}

/// The ring. About 200 bytes per entry (a charge drawn from one grant, an id of up to 22
/// bytes); more for charges drawn from several grants or longer ids. Grant ids are kept once
/// per grant, not per charge.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    capacity: usize,
    entries: VecDeque<JournalEntry>,
    /// (account slot, grant serial) → grant id, for every grant an entry drew from (and, until
    /// the next sweep, a few that no entry names any more).
    names: HashMap<(u32, u32), Box<str>>,
}

impl Journal {
    pub fn new(capacity: usize) -> Journal {
        Journal {
            capacity,
            entries: VecDeque::new(),
            names: HashMap::new(),
        }
    }

    /// Records a charge; `grant_id` names the grants of its account by serial (they all
    /// exist when the charge is made).
    pub fn push<'a>(&mut self, entry: JournalEntry, grant_id: impl Fn(u32) -> Option<&'a str>) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        for &(serial, _, _) in &entry.charge.draws {
            if let std::collections::hash_map::Entry::Vacant(vacant) =
                self.names.entry((entry.slot, serial))
            {
                if let Some(id) = grant_id(serial) {
                    vacant.insert(id.into());
                }
            }
        }
        self.entries.push_back(entry);
        // Forget the names no entry needs any more, now and then (amortized: at most one
        // sweep per `capacity` pushes once the table is twice what the entries need).
        if self.names.len() > 2 * self.capacity + 1024 {
            let needed: std::collections::HashSet<(u32, u32)> = self
                .entries
                .iter()
                .flat_map(|e| e.charge.draws.iter().map(move |d| (e.slot, d.0)))
                .collect();
            self.names.retain(|key, _| needed.contains(key));
        }
    }

    /// The id of a grant an entry drew from.
    pub fn grant_id(&self, slot: u32, serial: u32) -> Option<&str> {
        self.names.get(&(slot, serial)).map(|id| &**id)
    }

    /// The account's entries, newest first.
    pub fn of_account(&self, slot: u32) -> impl Iterator<Item = &JournalEntry> {
        self.entries.iter().rev().filter(move |e| e.slot == slot)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::{Credits, Quantity, Revenue};
    use crate::engine::compact::Draws;

    fn entry(seq: u64, slot: u32) -> JournalEntry {
        JournalEntry {
            seq,
            slot,
            event_id: ShortStr::new(&format!("e{seq}")),
            kind: "usage",
            ts: Instant(0),
            charge: Charge {
                meter: crate::catalog::MeterId(0),
                credit_type: crate::catalog::CreditTypeId(0),
                quantity: Quantity::ZERO,
                cost: Credits::ZERO,
                draws: Draws::new(),
                overage: Credits::ZERO,
                overage_money: Revenue::ZERO,
                overage_price: crate::decimal::Price::ZERO,
                period_start: Instant(0),
                reversed: false,
            },
        }
    }

    #[test]
    fn the_oldest_charges_are_forgotten_first() {
        let mut journal = Journal::new(3);
        for seq in 1..=5 {
            journal.push(entry(seq, (seq % 2) as u32), |_| None);
        }
        assert_eq!(journal.len(), 3);
        let odd: Vec<u64> = journal.of_account(1).map(|e| e.seq).collect();
        assert_eq!(odd, [5, 3]);
        let even: Vec<u64> = journal.of_account(0).map(|e| e.seq).collect();
        assert_eq!(even, [4]);
        let mut off = Journal::new(0);
        off.push(entry(1, 0), |_| None);
        assert!(off.is_empty());
    }
}
