//! The snapshot codec: the one module that knows how state becomes bytes.
//!
//! Owns: the binary encoding of engine state. It uses the bincode 2 format through
//! `bincode = "=2.0.1"` (pinned: 2.x is the last release; 3.0 is a tombstone and RUSTSEC-2025-0141
//! marks the crate unmaintained, see ARCHITECTURE.md "Dependencies"). Keeping every call here
//! means swapping to a maintained bincode-compatible crate touches one file.
//!
//! Must never: be used for anything but whole-state snapshots, or decode without a size limit
//! (a corrupt length prefix must not allocate gigabytes).
//!
//! Invariants: `decode(encode(x)) == x` for every state the engine can reach; the encoding is
//! deterministic for equal values except for hash map iteration order, so callers never compare
//! encoded bytes of different processes, only decoded states.

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

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - read));
    }
    Ok(value)
}
