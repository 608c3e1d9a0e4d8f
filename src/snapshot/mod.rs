//! Snapshots: one partition's state at a stream position, on disk, durable and verifiable.
//!
//! Owns: the file format, atomic writes, retention of the last K files per partition, loading
//! with fallback, and the policy that decides when a shard snapshots a partition.
//!
//! # File format (version 13)
//!
//! A partition's snapshots are *full* (its whole state) or *deltas* (what changed since the
//! snapshot before: `engine::delta`). Files are `p<partition, 5 digits>-<applied_through, 20
//! digits>.snap` for a full snapshot and `...delta` for a delta, in the snapshot directory,
//! both framed alike. All integers little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CFSNAP01` |
//! | 8 | 4 | format version (13) |
//! | 12 | 4 | header length H (bytes of the header fields after this one, before the checksum) |
//! | 16 | H | header: bincode of [`Header`] |
//! | 16+H | 4 | CRC32C of bytes 0 .. 16+H |
//! | 20+H | 8 | payload length P |
//! | 28+H | P | payload: bincode of the `Partition`, or of an `engine::delta::Delta` (via `codec`) |
//! | 28+H+P | 4 | CRC32C of the payload |
//!
//! A delta's header names the position it follows (`previous`): the state at that position
//! (a full file there, or a delta there applied to what it follows, and so on back to a full
//! file) plus the delta is the state at the delta's position. The store folds a chain into a
//! new full file now and then ([`store`]).
//!
//! The payload is the in-memory state's serde layout, so a change to that layout is a new
//! format version. Version 13: a delta carries the timer entries removed and added since the
//! snapshot it follows, not the whole timer heap, and every snapshot writes the timer entries
//! sorted (the same state, the same bytes). Version 12: the header says which snapshot a delta follows (deltas are new).
//! Version 11: the runway state. Version 10: a partition keeps the charge records its dedupe index forgot
//! until their reversal window ends (SEMANTICS §9). Version 9: the header records the catalog's settings and names' order
//! besides its price versions. Version 8: a charge record keeps its overage price, and a credit type's
//! rare totals the debt each recently closed period settled (for reversals, SEMANTICS §9).
//! Version 7: a credit type's alert states are in its boxed rare totals.
//! Version 6: an account's policy override, holds and top-up counters are one
//! optional boxed struct and no pending flush is `i64::MAX`. Version 5: a grant's rarely set parts (held, rollover cap, expired in
//! period, scope) are one optional boxed struct and no expiry is `i64::MAX`. Version 4: a credit type's rarely moved totals (debt, expired, voided,
//! adjusted, settled, returned, breakage, removed) are one optional boxed struct. Version 3: the dedupe index is its remembered pairs in insertion order, with
//! charge records inline (version 2: a hash map and a separate order queue). Version 2: the
//! partition's account index is its open-addressing bucket array (version 1: a map of account id
//! to slot). A file of another version is refused (the loader
//! falls back to an older file, or recovery replays from the stream).
//!
//! Limits: H ≤ 1 MiB; P ≤ `codec::DECODE_BYTES_MAX`. A file that is shorter, longer, or fails
//! either checksum or the magic/version is corrupt, and the loader falls back to the previous
//! file of that partition.
//!
//! Must never: replace a snapshot except by rename after fsync; retry after a failed fsync or
//! an I/O error (EIO) from the rename (the kernel may have dropped the dirty pages, so a
//! "successful" retry could leave a file that is not on disk: the process aborts instead, and
//! recovers from the last verified snapshot); delete a partition's newest valid snapshot;
//! commit a snapshot before every output it covers is acked (the caller waits for the
//! emitter's watermark first). A rename refused for another reason (no space for the
//! directory entry, the directory gone) changed nothing: it is an ordinary failure, counted
//! and retried at the next snapshot, like a failed open or write.
//!
//! Invariants: a file under its final name is complete and fsynced, as is its directory entry;
//! the newest K full files per partition are kept, with every delta after the oldest of them,
//! never fewer than the newest valid one.

pub mod policy;
pub mod remote;
pub mod store;
pub mod writer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogOrder, SettingFingerprint, VersionFingerprint};
use crate::engine::delta::Delta;
use crate::engine::Partition;
use crate::time::Instant;

pub const MAGIC: &[u8; 8] = b"CFSNAP01";
pub const FORMAT_VERSION: u32 = 13;
/// Largest header accepted (a header holds positions and catalog fingerprints only).
pub const HEADER_BYTES_MAX: u32 = 1 << 20;

/// What a snapshot records besides the state itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub partition: u32,
    pub partition_count: u32,
    /// Every message of this partition at or before this stream sequence is in the state.
    pub applied_through: u64,
    /// The last message this partition applied, and xxh3-64 of its payload: on restart the
    /// stream must still hold that message with that payload (else history was rewritten).
    pub last_seq: u64,
    pub last_payload_hash: u64,
    /// Every output this state caused is in the output stream, and any output caused after it
    /// is at an output stream sequence above this one (recovery scans from here).
    pub output_seq_floor: u64,
    /// The partition's clock: the latest event time it has seen.
    pub clock: Option<Instant>,
    /// The catalog's price versions in force at `clock`: a restart refuses a catalog that
    /// changed any of them.
    pub fingerprints: Vec<VersionFingerprint>,
    /// Every other catalog setting that decided the state (rules, currency, credit types,
    /// meters, plans): a restart refuses a catalog that changed one, naming its key.
    pub settings: Vec<SettingFingerprint>,
    /// The catalog's names in order (the state refers to them by position).
    pub order: CatalogOrder,
    /// A delta's: the `applied_through` of the snapshot it follows. `None`: a full snapshot.
    pub previous: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SnapshotError {
    fn corrupt(path: &Path, message: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Whether a snapshot file holds a partition's whole state or a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Full,
    Delta,
}

impl Kind {
    pub fn of(header: &Header) -> Kind {
        if header.previous.is_some() {
            Kind::Delta
        } else {
            Kind::Full
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Kind::Full => "snap",
            Kind::Delta => "delta",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Delta => "delta",
        }
    }
}

/// The file name of a partition's full snapshot at a position; names sort by position.
pub fn file_name(partition: u32, applied_through: u64) -> String {
    kind_file_name(partition, applied_through, Kind::Full)
}

/// The file name of a snapshot of either kind.
pub fn kind_file_name(partition: u32, applied_through: u64, kind: Kind) -> String {
    format!("p{partition:05}-{applied_through:020}.{}", kind.extension())
}

/// `(partition, position, kind)` of a snapshot file's name.
pub fn parse_file_name(name: &str) -> Option<(u32, u64, Kind)> {
    let rest = name.strip_prefix('p')?;
    let (rest, kind) = match rest.strip_suffix(".snap") {
        Some(rest) => (rest, Kind::Full),
        None => (rest.strip_suffix(".delta")?, Kind::Delta),
    };
    let (partition, position) = rest.split_once('-')?;
    if partition.len() != 5 || position.len() != 20 {
        return None;
    }
    Some((partition.parse().ok()?, position.parse().ok()?, kind))
}

/// A snapshot file's bytes around its payload: what comes before it (magic, version, header,
/// its checksum, the payload's length) and the payload's checksum after it. A file is
/// `before`, the payload, `after` ([`encode`]); the store writes the three without copying the
/// payload into one buffer first.
pub fn frame(
    header: &Header,
    payload: &[u8],
) -> Result<(Vec<u8>, [u8; 4]), crate::codec::CodecError> {
    let header_bytes = crate::codec::encode(header)?;
    let mut before = Vec::with_capacity(32 + header_bytes.len());
    before.extend_from_slice(MAGIC);
    before.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    before.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    before.extend_from_slice(&header_bytes);
    let header_crc = crc32c::crc32c(&before);
    before.extend_from_slice(&header_crc.to_le_bytes());
    before.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    Ok((before, crc32c::crc32c(payload).to_le_bytes()))
}

/// Encodes a snapshot file's bytes.
pub fn encode(header: &Header, payload: &[u8]) -> Result<Vec<u8>, crate::codec::CodecError> {
    let (before, after) = frame(header, payload)?;
    let mut out = Vec::with_capacity(before.len() + payload.len() + after.len());
    out.extend_from_slice(&before);
    out.extend_from_slice(payload);
    out.extend_from_slice(&after);
    Ok(out)
}

/// Decodes and verifies a snapshot file's bytes into its header and payload.
pub fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Header, &'a [u8]), SnapshotError> {
    let take = |from: usize, len: usize| take(path, bytes, from, len);
    let header_end = 16 + verified_header_len(path, bytes)?;
    let payload_len = u64::from_le_bytes(take(header_end + 4, 8)?.try_into().unwrap_or_default());
    if payload_len > crate::codec::DECODE_BYTES_MAX as u64 {
        return Err(SnapshotError::corrupt(path, "payload too long"));
    }
    let payload_start = header_end + 12;
    let payload = take(payload_start, payload_len as usize)?;
    let crc_at = payload_start + payload_len as usize;
    let stored_payload_crc = u32::from_le_bytes(take(crc_at, 4)?.try_into().unwrap_or_default());
    if bytes.len() != crc_at + 4 {
        return Err(SnapshotError::corrupt(path, "trailing bytes"));
    }
    if crc32c::crc32c(payload) != stored_payload_crc {
        return Err(SnapshotError::corrupt(path, "payload checksum mismatch"));
    }
    let header: Header = crate::codec::decode(&bytes[16..header_end])
        .map_err(|e| SnapshotError::corrupt(path, e.to_string()))?;
    Ok((header, payload))
}

/// Decodes and verifies the header of a snapshot file from the file's first bytes (at least
/// [`header_prefix_len`] of them), without reading or verifying its payload: what a file says
/// it holds, before it is loaded.
pub fn decode_header(path: &Path, prefix: &[u8]) -> Result<Header, SnapshotError> {
    let header_end = 16 + verified_header_len(path, prefix)?;
    crate::codec::decode(&prefix[16..header_end])
        .map_err(|e| SnapshotError::corrupt(path, e.to_string()))
}

/// How many of a file's first bytes [`decode_header`] needs, from its first 16.
pub fn header_prefix_len(first: &[u8; 16]) -> usize {
    let header_len = u32::from_le_bytes([first[12], first[13], first[14], first[15]]);
    16 + header_len.min(HEADER_BYTES_MAX) as usize + 4
}

/// `len` bytes of a file's `bytes` from `from`, or "truncated".
fn take<'a>(
    path: &Path,
    bytes: &'a [u8],
    from: usize,
    len: usize,
) -> Result<&'a [u8], SnapshotError> {
    bytes
        .get(from..from.saturating_add(len))
        .ok_or_else(|| SnapshotError::corrupt(path, "truncated"))
}

/// Checks the magic, the version and the header's checksum; the header's length.
fn verified_header_len(path: &Path, bytes: &[u8]) -> Result<usize, SnapshotError> {
    let take = |from: usize, len: usize| take(path, bytes, from, len);
    if take(0, 8)? != MAGIC {
        return Err(SnapshotError::corrupt(
            path,
            "not a creditflow snapshot (magic)",
        ));
    }
    let version = u32::from_le_bytes(take(8, 4)?.try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(SnapshotError::corrupt(
            path,
            format!("format version {version}, expected {FORMAT_VERSION}"),
        ));
    }
    let header_len = u32::from_le_bytes(take(12, 4)?.try_into().unwrap_or_default());
    if header_len > HEADER_BYTES_MAX {
        return Err(SnapshotError::corrupt(path, "header too long"));
    }
    let header_end = 16 + header_len as usize;
    take(16, header_len as usize)?;
    let stored_header_crc = u32::from_le_bytes(take(header_end, 4)?.try_into().unwrap_or_default());
    if crc32c::crc32c(take(0, header_end)?) != stored_header_crc {
        return Err(SnapshotError::corrupt(path, "header checksum mismatch"));
    }
    Ok(header_len as usize)
}

/// Decodes a snapshot file's bytes into its header and partition state, as the loader does:
/// framing and checksums ([`decode`]), the state, and the two agreeing. `path` only names the
/// file in errors. The fuzz target `snapshot_decode` runs this on any bytes.
pub fn decode_file(path: &Path, bytes: &[u8]) -> Result<(Header, Partition), SnapshotError> {
    let (header, payload) = decode(path, bytes)?;
    if header.previous.is_some() {
        return Err(SnapshotError::corrupt(
            path,
            "a delta where a full snapshot was expected",
        ));
    }
    let partition: Partition =
        crate::codec::decode(payload).map_err(|e| SnapshotError::corrupt(path, e.to_string()))?;
    if partition.number != header.partition || partition.applied_through != header.applied_through {
        return Err(SnapshotError::corrupt(
            path,
            "payload does not match its header",
        ));
    }
    Ok((header, partition))
}

/// [`decode_file`] for a delta: framing and checksums, the delta, and the two agreeing.
pub fn decode_delta_file(path: &Path, bytes: &[u8]) -> Result<(Header, Delta), SnapshotError> {
    let (header, payload) = decode(path, bytes)?;
    let Some(previous) = header.previous else {
        return Err(SnapshotError::corrupt(
            path,
            "a full snapshot where a delta was expected",
        ));
    };
    let delta: Delta =
        crate::codec::decode(payload).map_err(|e| SnapshotError::corrupt(path, e.to_string()))?;
    if delta.number != header.partition
        || delta.applied_through != header.applied_through
        || delta.previous != previous
        || previous >= header.applied_through
    {
        return Err(SnapshotError::corrupt(
            path,
            "payload does not match its header",
        ));
    }
    Ok((header, delta))
}

pub use store::{Loaded, PartitionFiles, Store};

/// A header for tests: partition `partition` of 4 at `applied_through`, full.
#[cfg(test)]
pub(crate) fn test_header(partition: u32, applied_through: u64) -> Header {
    Header {
        partition,
        partition_count: 4,
        applied_through,
        last_seq: applied_through,
        last_payload_hash: 7,
        output_seq_floor: 3,
        clock: Some(Instant(1)),
        previous: None,
        fingerprints: Vec::new(),
        settings: Vec::new(),
        order: Default::default(),
    }
}
