//! Fetching ahead: while one input is applied, the memory of the inputs after it is loaded, in
//! three dependent stages (the index and dedupe buckets, the account record, the record's data),
//! so a batch's cache misses overlap its work ([`apply_ahead`]); and the hashes computed once per
//! message for those stages and the apply ([`Hashes`]).
//!
//! Must never: change state. Each stage is a hint ([`Partition::prefetch`] reads and changes
//! nothing), so where and whether it runs never reaches an output.

use super::compact::AccountIndex;
use super::dedupe::dedupe_key;
#[cfg(doc)]
use super::Partition;
use crate::wire::input::Message;

/// The stages of fetching ahead, each depending on the memory the one before loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ahead {
    /// [`Partition::prefetch_buckets`].
    Buckets,
    /// [`Partition::prefetch_account`].
    Account,
    /// [`Partition::prefetch_account_data`].
    AccountData,
}

/// What finding a message's account and its dedupe entry hash: computed once per message and
/// passed to each stage of fetching ahead and to the apply, rather than rehashed by each (four
/// account-id hashes and two dedupe keys per message before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashes {
    /// [`AccountIndex::hash`] of the account id.
    pub account: u64,
    /// [`dedupe_key`] of the account id and the message id.
    pub dedupe: u128,
}

impl Hashes {
    /// `None` for a message without an account (a tick).
    pub fn of(message: &Message<'_>) -> Option<Hashes> {
        let account = message.account()?;
        Some(Hashes {
            account: AccountIndex::hash(account.as_bytes()),
            dedupe: dedupe_key(account, message.id()),
        })
    }

    /// Debug builds: asserts these are `message`'s hashes (a caller passed the right ones).
    pub(super) fn debug_check(&self, message: &Message<'_>) {
        debug_assert_eq!(Some(*self), Hashes::of(message), "another message's hashes");
    }
}

/// How many inputs ahead of the apply each stage of fetching ahead runs: stage 1 (buckets),
/// stage 2 (the record), stage 3 (the record's data). Each stage reads what the one before
/// loaded, so consecutive stages are apart by at least one apply, and by more when an apply
/// is not much longer than a miss: an apply with everything in cache takes ~0.25 µs and a
/// dependent miss ~0.25 µs on the development hosts (`scripts/memory-latency`). Measured at
/// 1M accounts (batched apply, same-run runs on 2 cores): 3/2/1 449-487 ns, 4/3/2 456-497,
/// 6/4/2 420-467, 8/5/2 405-449, 10/6/2 480-486, 12/8/4 457-471, 16/10/4 461-469: farther
/// does not help, as the misses in flight are bounded by the core's fill buffers.
pub const AHEAD_DISTANCES: [usize; 3] = [AHEAD_BUCKETS, AHEAD_ACCOUNT, AHEAD_DATA];
const AHEAD_BUCKETS: usize = 8;
const AHEAD_ACCOUNT: usize = 5;
const AHEAD_DATA: usize = 2;

/// Applies inputs `0..count` in order with fetching ahead: `step(i, Some(stage))` asks for a
/// stage of input i's prefetch, `step(i, None)` applies input i. Stage 1 runs
/// [`AHEAD_DISTANCES`]`[0]` inputs ahead of the apply, stage 2 `[1]`, stage 3 `[2]`, so each
/// stage finds what the one before loaded.
pub fn apply_ahead(count: usize, mut step: impl FnMut(usize, Option<Ahead>)) {
    const _: () = assert!(AHEAD_BUCKETS > AHEAD_ACCOUNT && AHEAD_ACCOUNT > AHEAD_DATA);
    for i in 0..count + AHEAD_BUCKETS {
        if i < count {
            step(i, Some(Ahead::Buckets));
        }
        let at = |distance: usize| {
            let j = i.checked_sub(AHEAD_BUCKETS - distance)?;
            (j < count).then_some(j)
        };
        if let Some(j) = at(AHEAD_ACCOUNT) {
            step(j, Some(Ahead::Account));
        }
        if let Some(j) = at(AHEAD_DATA) {
            step(j, Some(Ahead::AccountData));
        }
        if let Some(j) = at(0) {
            step(j, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input gets its three stages, in order, before it is applied; inputs are applied
    /// in order; each stage runs ahead of its apply by its distance.
    #[test]
    fn apply_ahead_runs_every_stage_before_each_apply() {
        for count in 0..8 {
            let mut steps = Vec::new();
            apply_ahead(count, |i, stage| steps.push((i, stage)));
            let applied: Vec<usize> = steps
                .iter()
                .filter(|s| s.1.is_none())
                .map(|s| s.0)
                .collect();
            assert_eq!(applied, (0..count).collect::<Vec<_>>());
            for i in 0..count {
                let at = |stage: Option<Ahead>| steps.iter().position(|&s| s == (i, stage));
                let order = [
                    at(Some(Ahead::Buckets)),
                    at(Some(Ahead::Account)),
                    at(Some(Ahead::AccountData)),
                    at(None),
                ];
                assert!(order.iter().all(Option::is_some), "count {count} input {i}");
                assert!(
                    order.windows(2).all(|w| w[0] < w[1]),
                    "count {count} input {i}"
                );
            }
            assert_eq!(steps.len(), count * 4);
        }
    }

    /// Each stage of input i + d runs after the apply of input i − 1 and before the apply of
    /// input i, where d is the stage's distance (when input i + d exists).
    #[test]
    fn apply_ahead_keeps_each_stage_its_distance_ahead() {
        let count = 20;
        let mut steps = Vec::new();
        apply_ahead(count, |i, stage| steps.push((i, stage)));
        let at = |i: usize, stage: Option<Ahead>| {
            steps
                .iter()
                .position(|&s| s == (i, stage))
                .expect("every step runs")
        };
        let stages = [Ahead::Buckets, Ahead::Account, Ahead::AccountData];
        for (stage, distance) in stages.into_iter().zip(AHEAD_DISTANCES) {
            for i in 1..count - distance {
                let ahead = at(i + distance, Some(stage));
                assert!(
                    at(i - 1, None) < ahead && ahead < at(i, None),
                    "{stage:?} of {i}"
                );
            }
        }
    }
}
