//! The snapshot writer's copy of a partition (its *shadow*): the state at the partition's latest
//! snapshot, advanced by each delta taken from it, with each account kept as the bytes the
//! snapshot codec writes for it. A fold into a full snapshot then copies the accounts' bytes
//! and encodes only the rest (rings, index, timers), instead of decoding the files or encoding
//! every account again.
//!
//! Owns: following deltas (the same checks as applying them to a partition), writing a delta's
//! file bytes from the accounts it encodes once for both, and writing the full snapshot.
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

use serde::Serialize;

use super::account::Account;
use super::compact::AccountIndex;
use super::delta::{Delta, DeltaParts};
use super::Partition;
use crate::codec::CodecError;

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
                timers: self.timers.clone(),
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

    /// Advances the shadow by the next delta taken from its partition, and returns the delta's
    /// own encoding (`codec::encode(&delta)`, from the same account bytes) when `encoded`. An
    /// error means the delta does not follow this state; the shadow must be dropped then.
    pub fn follow(&mut self, delta: Delta, encoded: bool) -> Result<Option<Vec<u8>>, String> {
        let encode = |value: &dyn erased::Encode| value.encode().map_err(|e| e.to_string());
        let mut bytes = Vec::new();
        if encoded {
            let (head, accounts, _) = delta.head_and_tail();
            bytes = encode(&head)?;
            bytes.extend(encode(&(accounts.len() as u64))?);
        }
        let mut scratch = Vec::new();
        let count = delta.account_count();
        let tail = if encoded {
            let (_, _, tail) = delta.head_and_tail();
            encode(&tail)?
        } else {
            Vec::new()
        };
        let DeltaParts {
            number,
            partition_count,
            previous,
            applied_through,
            account_count,
            accounts,
            rest,
        } = delta.split();
        self.state.check_follows(
            (number, partition_count, previous, applied_through),
            self.accounts.len(),
            account_count,
        )?;
        for (slot, account) in accounts {
            let hash = AccountIndex::hash(account.id.as_bytes());
            // Written as a delta: encoded once here for both. Otherwise (the state is written
            // whole next) encoded then, in one pass.
            let kept = if encoded {
                scratch.clear();
                crate::codec::encode_into(&*account, &mut scratch).map_err(|e| e.to_string())?;
                crate::codec::encode_into(&slot, &mut bytes).map_err(|e| e.to_string())?;
                bytes.extend_from_slice(&scratch);
                Kept::Encoded(Box::from(scratch.as_slice()))
            } else {
                Kept::Shared(account)
            };
            let slot_index = slot as usize;
            if slot_index < self.accounts.len() {
                if self.hashes[slot_index] != hash {
                    return Err(format!("a delta renames the account in slot {slot}"));
                }
                self.accounts[slot_index] = kept;
            } else if slot_index == self.accounts.len() && slot_index < count {
                self.accounts.push(kept);
                self.hashes.push(hash);
                let hashes = &self.hashes;
                self.state
                    .index
                    .insert_hashed(hash, slot, |slot| hashes[slot as usize]);
            } else {
                return Err(format!("a delta's account slot {slot} is out of order"));
            }
        }
        if self.accounts.len() != count {
            return Err(format!(
                "a delta of {count} accounts left {}",
                self.accounts.len()
            ));
        }
        self.state.apply_rest(rest, count)?;
        Ok(encoded.then(|| {
            bytes.extend(tail);
            bytes
        }))
    }

    /// The full snapshot of the state it holds (`codec::encode` of that partition, byte for
    /// byte). Accounts still shared are encoded now and kept as bytes from then on.
    pub fn encode(&mut self) -> Result<Vec<u8>, CodecError> {
        use erased::Encode;
        let state = &self.state;
        let mut bytes = (state.number, state.partition_count).encode()?;
        bytes.extend((self.accounts.len() as u64).encode()?);
        bytes.reserve(self.accounts.len() * 256);
        for kept in &mut self.accounts {
            match kept {
                Kept::Shared(account) => {
                    let from = bytes.len();
                    crate::codec::encode_into(&**account, &mut bytes)?;
                    *kept = Kept::Encoded(Box::from(&bytes[from..]));
                }
                Kept::Encoded(account) => bytes.extend_from_slice(account),
            }
        }
        bytes.extend(
            (
                &state.index,
                &state.dedupe,
                &state.reversals,
                &state.timers,
                &state.tick_clock,
                state.last_seq,
                state.applied_through,
                state.last_payload_hash,
                &state.stats,
            )
                .encode()?,
        );
        Ok(bytes)
    }
}

/// A value encoded on its own by the codec: bincode writes a struct or tuple as its fields one
/// after another and a sequence as its length then its elements, so the codec's encoding of a
/// whole is the concatenation of its parts' encodings.
mod erased {
    use super::{CodecError, Serialize};

    pub trait Encode {
        fn encode(&self) -> Result<Vec<u8>, CodecError>;
    }

    impl<T: Serialize> Encode for T {
        fn encode(&self) -> Result<Vec<u8>, CodecError> {
            crate::codec::encode(self)
        }
    }
}
