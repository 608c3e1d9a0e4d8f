//! The snapshot writer's copy of a partition (its *shadow*): the state at the partition's latest
//! snapshot, advanced by each delta taken from it, with each account kept as the bytes the
//! snapshot codec writes for it. A fold into a full snapshot then copies the accounts' bytes
//! and encodes only the rest (rings, index, timers), instead of decoding the files or encoding
//! every account again.
//!
//! Owns: following deltas (the same checks as applying them to a partition), writing a delta's
//! file bytes from the accounts it encodes once for both, and writing the full snapshot.
//!
//! Encoding by parts relies on bincode writing a struct or tuple as its fields one after
//! another and a sequence as its length then its elements: the codec's encoding of a whole is
//! the concatenation of its parts' encodings.
//!
//! Must never: write bytes that differ from the codec's for the same state
//! (`codec::encode(&partition)` and `codec::encode(&delta)`; tests/snapshot_deltas.rs compares
//! them at every cut).
//!
//! Invariants: a shadow made from a partition ([`Partition::shadow`]), or following a delta that
//! is written whole, shares those accounts until
//! they are encoded (at the first full encode, or when a delta replaces them); the partition
//! copies an account it writes while shared ([`Arc::make_mut`]), so after the first fold
//! nothing is shared and the partition's writes cost nothing extra. `hashes[slot]` is the
//! account index hash of the slot's id.

use std::sync::Arc;

use super::account::Account;
use super::compact::AccountIndex;
use super::delta::{all_placed, place, prefetch_counts, Delta, Place, CLONE_AHEAD};
use super::Partition;
use crate::codec::CodecError;

/// Starts loading the cold accounts about to be encoded: the record of the one `far` ahead,
/// the lists of the one `near` ahead (read once its record, fetched earlier, is in cache).
fn fetch_ahead(far: Option<&Account>, near: Option<&Account>) {
    if let Some(far) = far {
        far.prefetch();
    }
    if let Some(near) = near {
        near.prefetch_data();
    }
}

/// One account of a shadow.
enum Kept {
    /// Shared with the partition it was copied from, not encoded yet.
    Shared(Arc<Account>),
    /// The codec's bytes for it.
    Encoded(Box<[u8]>),
}

pub struct Shadow {
    /// Everything but the accounts (its `accounts` stay empty; its index is the shadow's).
    state: Partition,
    accounts: Vec<Kept>,
    hashes: Vec<u64>,
}

impl Partition {
    /// A shadow of this state: the accounts shared, the rest copied without lookup tables.
    pub fn shadow(&self) -> Shadow {
        Shadow {
            state: Partition {
                number: self.number,
                partition_count: self.partition_count,
                index: self.index.clone(),
                dedupe: self.dedupe.ring_copy(),
                reversals: self.reversals.ring_copy(),
                timers: self.timers.copy(),
                tick_clock: self.tick_clock,
                last_seq: self.last_seq,
                applied_through: self.applied_through,
                last_payload_hash: self.last_payload_hash,
                stats: self.stats.clone(),
                ..Partition::new(self.number, self.partition_count)
            },
            accounts: self
                .accounts
                .iter()
                .map(|account| Kept::Shared(Arc::clone(account)))
                .collect(),
            hashes: self
                .accounts
                .iter()
                .map(|account| AccountIndex::hash(account.id.as_bytes()))
                .collect(),
        }
    }
}

impl Shadow {
    pub fn number(&self) -> u32 {
        self.state.number
    }

    /// The position of the state it holds.
    pub fn applied_through(&self) -> u64 {
        self.state.applied_through
    }

    /// Advances the shadow by the next delta taken from its partition, appending the delta's
    /// own encoding (`codec::encode(&delta)`, from the same account bytes) to `out` when
    /// given. An error means the delta does not follow this state; the shadow must be dropped
    /// then (and `out` holds a part of an encoding).
    pub fn follow(&mut self, delta: Delta, mut out: Option<&mut Vec<u8>>) -> Result<(), String> {
        self.state.check_follows(&delta, self.accounts.len())?;
        let text = |e: CodecError| e.to_string();
        // Written as a delta: each account is encoded once, into `out`, and kept as those
        // bytes. Otherwise (the state is written whole next) the accounts stay shared and are
        // encoded then, in one pass.
        if let Some(bytes) = out.as_deref_mut() {
            crate::codec::encode_into(&delta.head(), bytes).map_err(text)?;
            crate::codec::encode_into(&(delta.accounts() as u64), bytes).map_err(text)?;
        }
        let count = delta.account_count();
        let (accounts, rest) = delta.split();
        let mut accounts = accounts.into_iter();
        while let Some((slot, account)) = accounts.next() {
            // The accounts are cold: their records are fetched a few ahead, their lists (read
            // once the record is in cache) half as far.
            let ahead = accounts.as_slice();
            let far = ahead.get(CLONE_AHEAD - 1).map(|(_, far)| far);
            if let Some(far) = far {
                prefetch_counts(far);
            }
            fetch_ahead(
                far.map(|far| &**far),
                ahead.get(CLONE_AHEAD / 2 - 1).map(|(_, near)| &**near),
            );
            let hash = AccountIndex::hash(account.id.as_bytes());
            let kept = match out.as_deref_mut() {
                Some(bytes) => {
                    crate::codec::encode_into(&slot, bytes).map_err(text)?;
                    let from = bytes.len();
                    crate::codec::encode_into(&*account, bytes).map_err(text)?;
                    Kept::Encoded(Box::from(&bytes[from..]))
                }
                None => Kept::Shared(account),
            };
            match place(slot, self.accounts.len(), count)? {
                Place::Replace(at) => {
                    if self.hashes[at] != hash {
                        return Err(format!("a delta renames the account in slot {slot}"));
                    }
                    self.accounts[at] = kept;
                }
                Place::Append => {
                    self.accounts.push(kept);
                    self.hashes.push(hash);
                    let hashes = &self.hashes;
                    self.state
                        .index
                        .insert_hashed(hash, slot, |slot| hashes[slot as usize]);
                }
            }
        }
        all_placed(count, self.accounts.len())?;
        if let Some(bytes) = out {
            crate::codec::encode_into(&rest.tail(), bytes).map_err(text)?;
        }
        self.state.apply_rest(rest, count)
    }

    /// The full snapshot of the state it holds (`codec::encode` of that partition, byte for
    /// byte). Accounts still shared are encoded now and kept as bytes from then on.
    pub fn encode(&mut self) -> Result<Vec<u8>, CodecError> {
        let mut bytes = Vec::new();
        self.encode_into(&mut bytes)?;
        Ok(bytes)
    }

    /// [`Shadow::encode`], appended to `bytes` (a buffer reused from one write to the next:
    /// growing a fresh one to tens of megabytes costs more than encoding into it).
    pub fn encode_into(&mut self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        let state = &self.state;
        bytes.reserve(self.accounts.len() * 256);
        crate::codec::encode_into(&(state.number, state.partition_count), bytes)?;
        crate::codec::encode_into(&(self.accounts.len() as u64), bytes)?;
        for at in 0..self.accounts.len() {
            // Accounts still shared were written by the partition, not read here yet: fetched
            // a few ahead, as in `follow`.
            let shared = |at: usize| match self.accounts.get(at) {
                Some(Kept::Shared(account)) => Some(&**account),
                _ => None,
            };
            fetch_ahead(shared(at + CLONE_AHEAD), shared(at + CLONE_AHEAD / 2));
            let kept = &mut self.accounts[at];
            match kept {
                Kept::Shared(account) => {
                    let from = bytes.len();
                    crate::codec::encode_into(&**account, bytes)?;
                    *kept = Kept::Encoded(Box::from(&bytes[from..]));
                }
                Kept::Encoded(account) => bytes.extend_from_slice(account),
            }
        }
        let tail = (
            &state.index,
            &state.dedupe,
            &state.reversals,
            &state.timers,
            &state.tick_clock,
            state.last_seq,
            state.applied_through,
            state.last_payload_hash,
            &state.stats,
        );
        crate::codec::encode_into(&tail, bytes)
    }
}
