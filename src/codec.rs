//! The snapshot codec: the one module that knows how state becomes bytes.
//!
//! Owns: the binary encoding of engine state. It uses the bincode 2 format through
//! `bincode = "=2.0.1"` (pinned: 2.x is the last release; 3.0 is a tombstone and RUSTSEC-2025-0141
//! marks the crate unmaintained, see ARCHITECTURE.md "Dependencies"). Keeping every call here
//! means swapping to a maintained bincode-compatible crate touches one file.
//!
//! Must never: be used for anything but whole-state snapshots, or decode with a size limit
//! out of proportion to the input (a corrupt length prefix must not allocate gigabytes).
//!
//! Invariants: `decode(encode(x)) == x` for every state the engine can reach; the encoding is
//! deterministic for equal values except for hash map iteration order, so callers never compare
//! encoded bytes of different processes, only decoded states.

use std::cell::Cell;

use serde::{de::DeserializeOwned, Serialize};

/// Largest snapshot payload the decoder accepts.
pub const DECODE_BYTES_MAX: usize = 16 << 30;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding state failed: {0}")]
    Encode(String),
    #[error("decoding state failed: {0}")]
    Decode(String),
    #[error("decoding state left {0} bytes unread")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<DECODE_BYTES_MAX>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Appends the encoding of `value` to `bytes` (the same bytes as [`encode`]; no allocation of
/// its own, for many small values encoded one after another).
pub fn encode_into<T: Serialize>(value: &T, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, bytes, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes `bytes`, all of them, into a `T`.
///
/// A length read from the input (a string's) is claimed against the configured limit before
/// bincode allocates for it (`vec![0; len]`), so the limit is what bounds the allocation a
/// corrupt length can cause. bincode claims the in-memory size of every value it decodes,
/// which is at most 16 times its encoded size (a one-byte varint decoded as an `i128`); so a
/// valid input of n bytes never claims more than 16n, and the limit is the smallest step of
/// 1 MiB, 16 MiB, 256 MiB, 4 GiB and [`DECODE_BYTES_MAX`] at least 16n. A corrupt length then
/// allocates at most 256 times the input (at least 1 MiB), never gigabytes for a small file
/// (found by the fuzz target `snapshot_decode`: a 12-byte payload asked for 4 GiB).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.len().saturating_mul(16) {
        n if n <= 1 << 20 => decode_within::<T, { 1 << 20 }>(bytes),
        n if n <= 1 << 24 => decode_within::<T, { 1 << 24 }>(bytes),
        n if n <= 1 << 28 => decode_within::<T, { 1 << 28 }>(bytes),
        n if n <= 1 << 32 => decode_within::<T, { 1 << 32 }>(bytes),
        _ => decode_within::<T, DECODE_BYTES_MAX>(bytes),
    }
}

thread_local! {
    /// The length of the input [`decode`] is reading on this thread (0 outside a decode).
    static DECODING: Cell<usize> = const { Cell::new(0) };
}

/// How many elements to allocate for at once when decoding a sequence of `len` (its stated
/// length), each at least `encoded_min` bytes in the encoding: `len` itself, so a large
/// sequence is allocated once instead of grown by doubling (each doubling copies the whole and
/// touches twice the memory, which in a recovery of 1M accounts was a fifth of the load's CPU),
/// but never more elements than the input being decoded could hold, so a corrupt length still
/// allocates in proportion to the input. Outside [`decode`]: at most 1 MiB of elements (serde's
/// own caution).
pub fn preallocate<T>(len: usize, encoded_min: usize) -> usize {
    let input = DECODING.with(Cell::get);
    let bound = if input == 0 {
        (1 << 20) / std::mem::size_of::<T>().max(1)
    } else {
        input / encoded_min.max(1)
    };
    len.min(bound)
}

/// Sets [`DECODING`] for one decode, and restores it when dropped (decodes can nest).
struct Decoding(usize);

impl Decoding {
    fn enter(len: usize) -> Decoding {
        Decoding(DECODING.with(|input| input.replace(len)))
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        DECODING.with(|input| input.set(self.0));
    }
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    let _decoding = Decoding::enter(bytes.len());
    let config = bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<LIMIT>();
    let (value, read) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod limit_tests {
    /// bincode claims a value's in-memory size: a million zero `i128`s are 1 MB encoded (one
    /// varint byte each) and claim 16 MB, which the limit must allow.
    #[test]
    fn values_far_larger_in_memory_than_encoded_decode() {
        let values = vec![0i128; 1_000_000];
        let bytes = super::encode(&values).unwrap();
        assert!(bytes.len() < 1_000_010);
        let back: Vec<i128> = super::decode(&bytes).unwrap();
        assert_eq!(back, values);
    }
}
