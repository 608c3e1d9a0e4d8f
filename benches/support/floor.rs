//! The floor: the least a ledger of the engine bench's shape costs on this machine, measured
//! beside the engine in the same run so the engine's figure has a baseline of its own.
//!
//! A balance-only ledger with nothing the issue asks beyond a balance: each account one 64-byte
//! record (the id's hash, a balance, cumulative quantity and credits of three meters, all `i64`),
//! found through an open-addressing index of `u64` buckets; each event's id remembered in an
//! open-addressing set bounded, like the engine's dedupe index, to the last `bound` ids (the
//! oldest forgotten as a new one comes). An event costs `quantity x rate` in whole integer
//! units, is rejected when the balance is short, else drawn from the balance and added to its
//! meter's totals. No decimal scales, no grants, no revenue, no invoice lines, no alerts, no
//! periods, no outputs. Accounts are told apart by their ids' 64-bit hashes and event ids by 64
//! bits of their keys (the engine compares the ids and all 128 bits): shortcuts that only
//! flatter the floor.
//!
//! It hashes ids with the engine's own functions and fetches ahead as the engine does (buckets
//! first, then the record their tag points to, at the engine's distances: 4/2, 8/5 and 16/8
//! measured the same for it), so the two differ in the work per event and the bytes touched,
//! not in the hashing or the overlap of misses.

use creditflow::engine::compact::{prefetch, AccountIndex};
use creditflow::engine::dedupe::dedupe_key;
use creditflow::engine::{apply_ahead, Ahead};

/// One account: 64 bytes, one cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Record {
    id_hash: u64,
    balance: i64,
    quantity: [i64; 3],
    credits: [i64; 3],
}

const _: () = assert!(std::mem::size_of::<Record>() == 64);

/// A usage event as the floor takes it (already decoded, as in the engine's batched bench).
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub account: &'a str,
    pub id: &'a str,
    pub meter: u8,
    pub quantity: i64,
}

/// An input with its hashes, computed with the engine's functions.
#[derive(Clone, Copy)]
struct Event {
    account_hash: u64,
    /// The low half of the engine's 128-bit dedupe key, never 0.
    key: u64,
    meter: u8,
    quantity: i64,
}

impl Event {
    fn of(input: &Input<'_>) -> Event {
        Event {
            account_hash: AccountIndex::hash(input.account.as_bytes()),
            key: (dedupe_key(input.account, input.id) as u64).max(1),
            meter: input.meter,
            quantity: input.quantity,
        }
    }
}

pub struct Floor {
    records: Vec<Record>,
    /// 0 empty, else `tag << 32 | (slot + 1)`, the tag the high half of the id's hash (as the
    /// engine's account index: a probe reads a record only when its tag matches).
    index: Vec<u64>,
    /// Remembered event keys (0 empty), linear probing, deletion by backward shift.
    seen: Vec<u64>,
    /// The remembered keys in arrival order, a ring of `bound` entries; `head` is the oldest.
    ring: Vec<u64>,
    head: usize,
    bound: usize,
    rates: [i64; 3],
    /// The batch being applied, hashed (kept to reuse its allocation).
    events: Vec<Event>,
    pub applied: u64,
    pub rejected: u64,
    pub duplicates: u64,
}

impl Floor {
    /// `accounts` ids, each with `balance`; remembering up to `bound` event ids.
    pub fn new(accounts: &[String], balance: i64, bound: usize, rates: [i64; 3]) -> Floor {
        let index_len = (accounts.len() * 2).next_power_of_two();
        let mut floor = Floor {
            records: Vec::with_capacity(accounts.len()),
            index: vec![0; index_len],
            // At most `bound + 1` keys at once (the new one before the oldest goes): never full.
            seen: vec![0; ((bound + 1) * 2).next_power_of_two()],
            ring: Vec::with_capacity(bound),
            head: 0,
            bound,
            rates,
            events: Vec::new(),
            applied: 0,
            rejected: 0,
            duplicates: 0,
        };
        for account in accounts {
            let id_hash = AccountIndex::hash(account.as_bytes());
            let mask = floor.index.len() - 1;
            let mut at = id_hash as usize & mask;
            while floor.index[at] != 0 {
                at = (at + 1) & mask;
            }
            floor.records.push(Record {
                id_hash,
                balance,
                ..Record::default()
            });
            floor.index[at] = (id_hash >> 32) << 32 | floor.records.len() as u64;
        }
        floor
    }

    /// The slot of the first record on `hash`'s probe path whose tag matches (`None` when an
    /// empty bucket comes first) and where the probe stopped.
    fn candidate(&self, hash: u64, mut at: usize) -> Option<(usize, usize)> {
        let mask = self.index.len() - 1;
        loop {
            let entry = self.index[at];
            if entry == 0 {
                return None;
            }
            if entry >> 32 == hash >> 32 {
                return Some(((entry as u32) as usize - 1, at));
            }
            at = (at + 1) & mask;
        }
    }

    fn slot_of(&self, hash: u64) -> Option<usize> {
        let mask = self.index.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let (slot, found) = self.candidate(hash, at)?;
            if self.records[slot].id_hash == hash {
                return Some(slot);
            }
            at = (found + 1) & mask;
        }
    }

    /// Remembers `key`; false when it was already remembered.
    fn remember(&mut self, key: u64) -> bool {
        let mask = self.seen.len() - 1;
        let mut at = key as usize & mask;
        loop {
            match self.seen[at] {
                0 => break,
                k if k == key => return false,
                _ => at = (at + 1) & mask,
            }
        }
        self.seen[at] = key;
        if self.ring.len() < self.bound {
            self.ring.push(key);
        } else {
            let oldest = std::mem::replace(&mut self.ring[self.head], key);
            self.head = (self.head + 1) % self.bound;
            self.forget(oldest);
        }
        true
    }

    /// Removes `key` from the set, shifting back the entries probed past it.
    fn forget(&mut self, key: u64) {
        let mask = self.seen.len() - 1;
        let mut at = key as usize & mask;
        while self.seen[at] != key {
            at = (at + 1) & mask;
        }
        let mut hole = at;
        loop {
            at = (at + 1) & mask;
            let k = self.seen[at];
            if k == 0 {
                break;
            }
            let home = k as usize & mask;
            // `k` may fill the hole when its home is not strictly between the hole and `at`.
            if (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.seen[hole] = k;
                hole = at;
            }
        }
        self.seen[hole] = 0;
    }

    fn apply(&mut self, event: &Event) {
        if !self.remember(event.key) {
            self.duplicates += 1;
            return;
        }
        let Some(slot) = self.slot_of(event.account_hash) else {
            self.rejected += 1;
            return;
        };
        let meter = usize::from(event.meter % 3);
        let cost = event.quantity * self.rates[meter];
        let record = &mut self.records[slot];
        if record.balance < cost {
            self.rejected += 1;
            return;
        }
        record.balance -= cost;
        record.quantity[meter] += event.quantity;
        record.credits[meter] += cost;
        self.applied += 1;
    }

    /// Applies `inputs` in order as the engine's `apply_messages` does: hashes first, then
    /// fetching ahead with the engine's own schedule (`engine::apply_ahead`): the buckets (the
    /// account's, the event id's, and that of the id the ring forgets at this event), then the
    /// record their tag points to.
    pub fn apply_batch(&mut self, inputs: &[Input<'_>]) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        events.extend(inputs.iter().map(Event::of));
        // Event i of the batch forgets the ring's entry i places after the oldest now (when
        // the ring is full and no event before it is a duplicate; a prefetch is only a hint).
        let head = self.head;
        apply_ahead(events.len(), |i, stage| {
            let event = &events[i];
            match stage {
                Some(Ahead::Buckets) => {
                    prefetch(&self.index[event.account_hash as usize & (self.index.len() - 1)]);
                    prefetch(&self.seen[event.key as usize & (self.seen.len() - 1)]);
                    if self.ring.len() == self.bound {
                        let oldest = self.ring[(head + i) % self.bound];
                        prefetch(&self.seen[oldest as usize & (self.seen.len() - 1)]);
                    }
                }
                Some(Ahead::Account) => {
                    let hash = event.account_hash;
                    if let Some((slot, _)) =
                        self.candidate(hash, hash as usize & (self.index.len() - 1))
                    {
                        prefetch(&self.records[slot]);
                    }
                }
                // The record is the account's only data.
                Some(Ahead::AccountData) => {}
                None => self.apply(event),
            }
        });
        self.events = events;
    }

    /// The sum of the balances and of the credits drawn (the bench checks nothing was lost).
    pub fn totals(&self) -> (i64, i64) {
        self.records.iter().fold((0, 0), |(b, c), r| {
            (b + r.balance, c + r.credits.iter().sum::<i64>())
        })
    }
}

/// Panics unless the floor dedupes as the engine does: a remembered id is a duplicate, one
/// forgotten past the bound is new again, and credits are conserved (run before the figures).
pub fn self_check() {
    let accounts: Vec<String> = (0..4).map(|i| format!("a{i}")).collect();
    let mut floor = Floor::new(&accounts, 100, 8, [1, 2, 3]);
    let ids: Vec<String> = (0..64).map(|i| format!("e{i}")).collect();
    let input = |i: usize| Input {
        account: &accounts[i % 4],
        id: &ids[i],
        meter: (i % 3) as u8,
        quantity: 1,
    };
    let first: Vec<Input> = (0..8).map(input).collect();
    floor.apply_batch(&first);
    assert_eq!((floor.applied, floor.duplicates), (8, 0));
    floor.apply_batch(&first[3..5]);
    assert_eq!(
        (floor.applied, floor.duplicates),
        (8, 2),
        "remembered ids are duplicates"
    );
    let more: Vec<Input> = (8..64).map(input).collect();
    floor.apply_batch(&more);
    floor.apply_batch(&first);
    assert_eq!(floor.duplicates, 2, "ids past the bound are forgotten");
    assert_eq!(floor.applied, 72);
    let (balances, drawn) = floor.totals();
    assert_eq!(balances + drawn, 400, "credits conserved");
    assert_eq!(
        drawn,
        (0..64).chain(0..8).map(|i| (i % 3) as i64 + 1).sum::<i64>()
    );
    let unknown = [Input {
        account: "nobody",
        id: "x",
        meter: 0,
        quantity: 1,
    }];
    floor.apply_batch(&unknown);
    assert_eq!(floor.rejected, 1, "an unknown account is rejected");
}
