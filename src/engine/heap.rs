//! Where a partition's heap goes ([`Partition::heap_breakdown`]): the figures behind the memory
//! per account that `cargo bench --bench engine` prints and the metrics report.

use std::sync::Arc;

use super::account::Account;
use super::{compact, Partition};

/// Heap bytes of a partition by what holds them ([`Partition::heap_breakdown`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapBreakdown {
    /// The account records themselves (`Vec<Account>`).
    pub records: usize,
    /// Per credit type state.
    pub types: usize,
    /// Alert states within it (names included).
    pub alerts: usize,
    /// Grants, their ids and scopes.
    pub grants: usize,
    /// Invoice lines of the open period.
    pub lines: usize,
    /// The account index.
    pub index: usize,
    /// The timer heap.
    pub timers: usize,
    /// The dedupe index.
    pub dedupe: usize,
    /// Charge records kept for reversals past the dedupe window.
    pub reversals: usize,
    /// Long account ids, policy overrides, holds.
    pub other: usize,
}

impl HeapBreakdown {
    pub fn total(&self) -> usize {
        self.records
            + self.types
            + self.alerts
            + self.grants
            + self.lines
            + self.index
            + self.timers
            + self.dedupe
            + self.reversals
            + self.other
    }
}

impl Partition {
    /// Where this partition's heap goes, from the capacities of its containers (what a
    /// counting allocator sees, before the allocator's own rounding).
    pub fn heap_breakdown(&self) -> HeapBreakdown {
        use std::mem::size_of;
        let mut heap = HeapBreakdown {
            // The slots (a pointer each), and each account behind its Arc's two counts.
            records: self.accounts.capacity() * size_of::<Arc<Account>>()
                + self.accounts.len() * (size_of::<Account>() + 2 * size_of::<usize>()),
            index: self.index.heap_bytes(),
            timers: self.timers.heap_bytes(),
            dedupe: self.dedupe.heap_bytes(),
            reversals: self.reversals.heap_bytes(),
            ..HeapBreakdown::default()
        };
        for account in &self.accounts {
            if let compact::ShortStr::Heap(id) = &account.id {
                heap.other += id.len();
            }
            heap.other += account.rare_heap_bytes();
            heap.types += size_of_val(&*account.types);
            for state in &account.types {
                heap.types += state.rare_heap_bytes();
                heap.alerts += state.alert_heap_bytes();
            }
            heap.grants += size_of_val(&*account.grants)
                + account
                    .grants
                    .iter()
                    .map(|g| g.id.len() + g.rare_heap_bytes())
                    .sum::<usize>();
            heap.lines += size_of_val(&*account.lines);
        }
        heap
    }
}
