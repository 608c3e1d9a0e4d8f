//! Incremental snapshots, on the engine's side: what a partition changed since a baseline
//! ([`Delta`]), taken in time proportional to the change, and applying such deltas to the
//! baseline's state to get, byte for byte, the state they were taken from.
//!
//! Owns: the change tracker (which account slots were touched; the dedupe index's and the
//! reversal archive's own trackers), taking a delta, applying a chain of them.
//!
//! Must never: miss a change. Every write to an account goes through the two places that mark
//! it (the apply of a message, the tick's timers); the dedupe ring and the archive mark their
//! own in-place changes. `tests/snapshot_deltas.rs` checks base + deltas against the live
//! state's snapshot bytes at many cut points.
//!
//! Invariants: while tracking, every account slot written since the baseline is marked, and the
//! baseline is the state as of `through`; a delta applies only to the state at its
//! `previous` position (its ring deltas check their own positions too).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::account::Account;
use super::reversals::ReversalsDelta;
use super::timers::TimersDelta;
use super::{Partition, Stats};
use crate::engine::dedupe::RingDelta;
use crate::time::Instant;

/// Which accounts changed since the baseline, and where the baseline is.
#[derive(Clone, Debug, Default)]
pub(super) struct Changes {
    /// The baseline's `applied_through`; `None` while not tracking.
    through: Option<u64>,
    /// One bit per account slot: written since the baseline.
    marked: Vec<u64>,
    /// The marked slots, in the order first marked.
    slots: Vec<u32>,
}

impl Changes {
    /// Marks `slot` as written (a no-op while not tracking): a bit test, and a push the first
    /// time in an interval.
    #[inline]
    pub(super) fn touch(&mut self, slot: u32) {
        if self.through.is_none() {
            return;
        }
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        if word >= self.marked.len() {
            self.marked.resize(word + 1, 0);
        }
        if self.marked[word] & bit == 0 {
            self.marked[word] |= bit;
            self.slots.push(slot);
        }
    }

    fn restart(&mut self, through: u64) {
        for &slot in &self.slots {
            self.marked[(slot / 64) as usize] = 0;
        }
        self.slots.clear();
        self.through = Some(through);
    }
}

/// How many changed accounts ahead of the one being copied into a delta (or encoded from
/// one) are fetched: enough to overlap a few cache misses, few enough to stay cached.
pub(super) const CLONE_AHEAD: usize = 8;

/// Starts loading an account's reference counts (the `Arc`'s header, just before the account):
/// what cloning or dropping the handle writes.
pub(super) fn prefetch_counts(account: &Arc<Account>) {
    super::compact::prefetch(
        Arc::as_ptr(account)
            .cast::<u8>()
            .wrapping_sub(2 * std::mem::size_of::<usize>()),
    );
}

/// What a partition became since a baseline: applied to the baseline's state (the state at
/// `previous`), it gives the state at `applied_through`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delta {
    pub number: u32,
    pub partition_count: u32,
    /// The `applied_through` of the state this delta applies to.
    pub previous: u64,
    pub applied_through: u64,
    last_seq: u64,
    last_payload_hash: u64,
    tick_clock: Option<Instant>,
    stats: Stats,
    /// Accounts in the partition now.
    account_count: u32,
    /// Every account written since the baseline (new ones included), by ascending slot;
    /// shared with the partition (its next write to one copies it).
    accounts: Vec<(u32, Arc<Account>)>,
    /// The timer entries removed and added since the baseline (net).
    timers: TimersDelta,
    dedupe: RingDelta,
    reversals: ReversalsDelta,
}

impl Delta {
    /// Accounts this delta carries.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Accounts in the partition at the delta's position (the changed ones among them).
    pub fn account_count(&self) -> usize {
        self.account_count as usize
    }

    /// Dedupe and archive slots this delta carries.
    pub fn remembered(&self) -> usize {
        self.dedupe.len() + self.reversals.len()
    }

    /// Timer entries this delta removes and adds.
    pub fn timers(&self) -> usize {
        self.timers.len()
    }
}

/// What a delta carries besides its accounts.
pub(super) struct DeltaRest {
    pub applied_through: u64,
    pub last_seq: u64,
    pub last_payload_hash: u64,
    pub tick_clock: Option<Instant>,
    pub stats: Stats,
    pub timers: TimersDelta,
    pub dedupe: RingDelta,
    pub reversals: ReversalsDelta,
}

impl Delta {
    /// The delta's accounts, and the rest of what it carries ([`Partition::check_follows`]
    /// first: this drops what it follows).
    pub(super) fn split(self) -> (Vec<(u32, Arc<Account>)>, DeltaRest) {
        (
            self.accounts,
            DeltaRest {
                applied_through: self.applied_through,
                last_seq: self.last_seq,
                last_payload_hash: self.last_payload_hash,
                tick_clock: self.tick_clock,
                stats: self.stats,
                timers: self.timers,
                dedupe: self.dedupe,
                reversals: self.reversals,
            },
        )
    }

    /// The fields the codec writes before the accounts, in its order: the encoding of a delta
    /// is `head`, the accounts as a sequence, then [`DeltaRest::tail`] ([`super::shadow`]
    /// writes it from accounts it encodes once for both uses).
    pub(super) fn head(&self) -> impl Serialize + '_ {
        (
            self.number,
            self.partition_count,
            self.previous,
            self.applied_through,
            self.last_seq,
            self.last_payload_hash,
            &self.tick_clock,
            &self.stats,
            self.account_count,
        )
    }
}

impl DeltaRest {
    /// The fields the codec writes after a delta's accounts, in its order.
    pub(super) fn tail(&self) -> impl Serialize + '_ {
        (&self.timers, &self.dedupe, &self.reversals)
    }
}

impl Partition {
    /// Starts (or restarts) tracking changes from the state as it is now, the state at
    /// `applied_through`: the next [`Partition::take_delta`] is relative to it. Called when a
    /// full snapshot of this state is taken, and on a state loaded from snapshots.
    pub fn track_changes(&mut self) {
        self.changes.restart(self.applied_through);
        self.dedupe.mark_baseline();
        self.reversals.mark_baseline();
        self.timers.mark_baseline();
    }

    /// Stops tracking (until [`Partition::track_changes`]): a delta could not be kept.
    pub fn stop_tracking(&mut self) {
        self.changes = Changes::default();
        self.dedupe.stop_tracking();
        self.reversals.stop_tracking();
        self.timers.stop_tracking();
    }

    /// Accounts written since the baseline (new ones included), and accounts in the partition.
    pub fn changed_accounts(&self) -> (usize, usize) {
        (self.changes.slots.len(), self.accounts.len())
    }

    /// The baseline's position, while a delta can be taken.
    pub fn tracking_since(&self) -> Option<u64> {
        self.changes.through
    }

    /// Takes what changed since the baseline and makes the state now the new baseline; `None`
    /// while not tracking. Costs a copy of the accounts written, the dedupe and archive slots
    /// changed or added, and sorting the timer entries pushed and popped: never the whole
    /// partition.
    pub fn take_delta(&mut self) -> Option<Delta> {
        let previous = self.changes.through?;
        let mut slots = std::mem::take(&mut self.changes.slots);
        slots.sort_unstable();
        // Each clone writes the account's reference count, a line not in cache: the counts
        // of the accounts a few slots on are fetched meanwhile.
        let accounts = slots
            .iter()
            .enumerate()
            .map(|(i, &slot)| {
                if let Some(&ahead) = slots.get(i + CLONE_AHEAD) {
                    prefetch_counts(&self.accounts[ahead as usize]);
                }
                (slot, Arc::clone(&self.accounts[slot as usize]))
            })
            .collect();
        self.changes.slots = slots;
        let dedupe = self.dedupe.take_delta()?;
        let reversals = self.reversals.take_delta()?;
        let timers = self.timers.take_delta()?;
        self.changes.restart(self.applied_through);
        Some(Delta {
            number: self.number,
            partition_count: self.partition_count,
            previous,
            applied_through: self.applied_through,
            last_seq: self.last_seq,
            last_payload_hash: self.last_payload_hash,
            tick_clock: self.tick_clock,
            stats: self.stats.clone(),
            account_count: self.accounts.len() as u32,
            accounts,
            timers,
            dedupe,
            reversals,
        })
    }

    /// Applies deltas in order, each to the state the one before made. An error means the
    /// chain does not fit this state (a delta of another partition or position, or corrupt);
    /// the partition is then in no defined state and must be dropped.
    pub fn apply_deltas(&mut self, deltas: impl IntoIterator<Item = Delta>) -> Result<(), String> {
        let mut applied = false;
        for delta in deltas {
            self.apply_delta_unindexed(delta)?;
            applied = true;
        }
        if applied {
            self.dedupe.reindex();
            self.reversals.reindex();
        }
        Ok(())
    }

    fn apply_delta_unindexed(&mut self, delta: Delta) -> Result<(), String> {
        self.check_follows(&delta, self.accounts.len())?;
        // Accounts are replaced: their latest clock is found again when asked.
        self.accounts_clock = None;
        let count = delta.account_count();
        let (accounts, rest) = delta.split();
        for (slot, account) in accounts {
            match place(slot, self.accounts.len(), count)? {
                Place::Replace(at) => {
                    if self.accounts[at].id != account.id {
                        return Err(format!("a delta renames the account in slot {slot}"));
                    }
                    self.accounts[at] = account;
                }
                Place::Append => {
                    if self.slot(&account.id).is_some() {
                        return Err(format!("a delta adds account {} twice", &*account.id));
                    }
                    self.accounts.push(account);
                    let accounts = &self.accounts;
                    self.index
                        .insert(accounts[slot as usize].id.as_bytes(), slot, |slot| {
                            accounts[slot as usize].id.as_bytes()
                        });
                }
            }
        }
        all_placed(count, self.accounts.len())?;
        self.apply_rest(rest, count)
    }

    /// Whether `delta` follows this state, which has `accounts` accounts (a partition's, or a
    /// shadow's whose own `accounts` stay empty).
    pub(super) fn check_follows(&self, delta: &Delta, accounts: usize) -> Result<(), String> {
        let (number, partition_count) = (delta.number, delta.partition_count);
        if (number, partition_count) != (self.number, self.partition_count) {
            return Err(format!(
                "a delta of partition {number} of {partition_count} applied to partition {} of {}",
                self.number, self.partition_count
            ));
        }
        if delta.previous != self.applied_through {
            return Err(format!(
                "a delta following position {} applied to the state at {}",
                delta.previous, self.applied_through
            ));
        }
        if delta.applied_through < delta.previous {
            return Err("a delta moves the position backwards".into());
        }
        if delta.account_count() < accounts {
            return Err("a delta removes accounts".into());
        }
        Ok(())
    }

    /// Applies what a delta carries besides its accounts (the partition has `count` now).
    pub(super) fn apply_rest(&mut self, rest: DeltaRest, count: usize) -> Result<(), String> {
        if let Some(&(_, slot)) = rest.timers.added.iter().find(|t| t.1 as usize >= count) {
            return Err(format!(
                "a delta's timer names slot {slot}, past the accounts"
            ));
        }
        self.dedupe.apply_delta_unindexed(rest.dedupe)?;
        self.reversals.apply_delta_unindexed(rest.reversals)?;
        self.timers.apply(rest.timers)?;
        self.applied_through = rest.applied_through;
        self.last_seq = rest.last_seq;
        self.last_payload_hash = rest.last_payload_hash;
        self.tick_clock = rest.tick_clock;
        self.stats = rest.stats;
        Ok(())
    }
}

/// Where a delta's account goes in a state of `len` accounts that will have `count`.
pub(super) enum Place {
    Replace(usize),
    Append,
}

/// A delta's accounts come by ascending slot: each replaces one there or is the next new one.
pub(super) fn place(slot: u32, len: usize, count: usize) -> Result<Place, String> {
    let at = slot as usize;
    if at < len {
        Ok(Place::Replace(at))
    } else if at == len && at < count {
        Ok(Place::Append)
    } else {
        Err(format!("a delta's account slot {slot} is out of order"))
    }
}

/// After a delta's accounts: the state has the delta's account count.
pub(super) fn all_placed(count: usize, len: usize) -> Result<(), String> {
    if len == count {
        Ok(())
    } else {
        Err(format!("a delta of {count} accounts left {len}"))
    }
}
