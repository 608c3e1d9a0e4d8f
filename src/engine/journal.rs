//! The charge journal: a partition's most recent charges and the grants that paid them, kept
//! in memory for the statement query (disputes: "what was I charged for, and from which
//! grant?"), only when asked for.
//!
//! Owns: a ring of the last `capacity` charges (usage events and commits) of the partition,
//! oldest forgotten first, each with the ids of the grants it drew from (a grant may be pruned
//! from its account after its period; the statement still names it). The ids are copied into
//! the entry (inline up to 22 bytes), not looked up in a table per charge: a table of every
//! (account, grant) named was a cache miss per charge, a tenth of the shards' time in a drain.
//!
//! Must never: be part of a snapshot or of any output, or change what the engine decides (the
//! engine writes it and never reads it). A partition restored from a snapshot starts with an
//! empty journal, which the replay of the log after the snapshot fills again; so a statement
//! covers the charges applied since the partition was loaded, or the last `capacity` of the
//! partition, whichever is fewer (SEMANTICS §17).
//!
//! Invariants: entries are in the order applied; at most `capacity` of them.

use std::collections::VecDeque;

use crate::engine::compact::{Draws, ShortStr};
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
    /// The ids of the grants `charge.draws` drew from, in the same order.
    pub grants: GrantNames,
}

/// A charge's grant ids, one per draw; no allocation for a charge drawn from one grant.
#[derive(Clone, Debug, Default)]
pub struct GrantNames {
    first: Option<ShortStr>,
    rest: Vec<Option<ShortStr>>,
}

impl GrantNames {
    /// The ids of the grants `draws` drew from; `grant_id` names the account's grants by
    /// serial (they all exist when the charge is made).
    pub fn of<'a>(draws: &Draws, grant_id: impl Fn(u32) -> Option<&'a str>) -> GrantNames {
        let mut names = draws
            .iter()
            .map(|&(serial, _, _)| grant_id(serial).map(ShortStr::new));
        GrantNames {
            first: names.next().flatten(),
            rest: names.collect(),
        }
    }

    /// The id of the grant of draw `index`, when it was known at the charge.
    pub fn get(&self, index: usize) -> Option<&str> {
        match index {
            0 => self.first.as_ref().map(ShortStr::as_str),
            _ => self.rest.get(index - 1)?.as_ref().map(ShortStr::as_str),
        }
    }
}

/// The ring. About 250 bytes per entry (a charge drawn from one grant, ids of up to 22 bytes);
/// more for charges drawn from several grants or longer ids.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    capacity: usize,
    entries: VecDeque<JournalEntry>,
}

impl Journal {
    pub fn new(capacity: usize) -> Journal {
        Journal {
            capacity,
            entries: VecDeque::new(),
        }
    }

    /// Records a charge.
    pub fn push(&mut self, entry: JournalEntry) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
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
            grants: GrantNames::default(),
        }
    }

    #[test]
    fn the_oldest_charges_are_forgotten_first() {
        let mut journal = Journal::new(3);
        for seq in 1..=5 {
            journal.push(entry(seq, (seq % 2) as u32));
        }
        assert_eq!(journal.len(), 3);
        let odd: Vec<u64> = journal.of_account(1).map(|e| e.seq).collect();
        assert_eq!(odd, [5, 3]);
        let even: Vec<u64> = journal.of_account(0).map(|e| e.seq).collect();
        assert_eq!(even, [4]);
        let mut off = Journal::new(0);
        off.push(entry(1, 0));
        assert!(off.is_empty());
    }

    #[test]
    fn each_entry_keeps_the_ids_of_the_grants_it_drew_from() {
        let mut journal = Journal::new(4);
        let mut charged = entry(1, 0);
        for serial in [7, 3, 9] {
            charged
                .charge
                .draws
                .push((serial, Credits::ZERO, crate::decimal::Price::ZERO));
        }
        let long = "a-grant-id-longer-than-twenty-two-bytes";
        charged.grants = GrantNames::of(&charged.charge.draws, |serial| match serial {
            7 => Some("promo"),
            3 => Some(long),
            _ => None,
        });
        journal.push(charged);
        let kept = journal.of_account(0).next().unwrap();
        assert_eq!(kept.grants.get(0), Some("promo"));
        assert_eq!(kept.grants.get(1), Some(long));
        assert_eq!(kept.grants.get(2), None, "unknown at the charge");
        assert_eq!(kept.grants.get(3), None, "no such draw");
    }
}
