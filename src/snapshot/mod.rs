//! Snapshots: one partition's state at a stream position, on disk, durable and verifiable.
//!
//! Owns: the file format, atomic writes, retention of the last K files per partition, loading
//! with fallback, and the policy that decides when a shard snapshots a partition.
//!
//! # File format (version 11)
//!
//! One file per snapshot, `p<partition, 5 digits>-<applied_through, 20 digits>.snap`, in the
//! snapshot directory. All integers little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CFSNAP01` |
//! | 8 | 4 | format version (10) |
//! | 12 | 4 | header length H (bytes of the header fields after this one, before the checksum) |
//! | 16 | H | header: bincode of [`Header`] |
//! | 16+H | 4 | CRC32C of bytes 0 .. 16+H |
//! | 20+H | 8 | payload length P |
//! | 28+H | P | payload: bincode of the `Partition` (via `codec`) |
//! | 28+H+P | 4 | CRC32C of the payload |
//!
//! The payload is the in-memory state's serde layout, so a change to that layout is a new
//! format version. Version 10: a partition keeps the charge records its dedupe index forgot
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
//! the newest K files per partition are kept, never fewer than the newest valid one.

pub mod policy;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogOrder, SettingFingerprint, VersionFingerprint};
use crate::engine::Partition;
use crate::time::Instant;

pub const MAGIC: &[u8; 8] = b"CFSNAP01";
pub const FORMAT_VERSION: u32 = 11;
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

/// The file name of a partition's snapshot at a position; names sort by position.
pub fn file_name(partition: u32, applied_through: u64) -> String {
    format!("p{partition:05}-{applied_through:020}.snap")
}

fn parse_file_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix('p')?.strip_suffix(".snap")?;
    let (partition, position) = rest.split_once('-')?;
    if partition.len() != 5 || position.len() != 20 {
        return None;
    }
    Some((partition.parse().ok()?, position.parse().ok()?))
}

/// Encodes a snapshot file's bytes.
pub fn encode(header: &Header, payload: &[u8]) -> Result<Vec<u8>, crate::codec::CodecError> {
    let header_bytes = crate::codec::encode(header)?;
    let mut out = Vec::with_capacity(32 + header_bytes.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    Ok(out)
}

/// Decodes and verifies a snapshot file's bytes into its header and payload.
pub fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Header, &'a [u8]), SnapshotError> {
    let take = |from: usize, len: usize| -> Result<&'a [u8], SnapshotError> {
        bytes
            .get(from..from.saturating_add(len))
            .ok_or_else(|| SnapshotError::corrupt(path, "truncated"))
    };
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
    let header_bytes = take(16, header_len as usize)?;
    let stored_header_crc = u32::from_le_bytes(take(header_end, 4)?.try_into().unwrap_or_default());
    if crc32c::crc32c(take(0, header_end)?) != stored_header_crc {
        return Err(SnapshotError::corrupt(path, "header checksum mismatch"));
    }
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
    let header: Header = crate::codec::decode(header_bytes)
        .map_err(|e| SnapshotError::corrupt(path, e.to_string()))?;
    Ok((header, payload))
}

/// Decodes a snapshot file's bytes into its header and partition state, as the loader does:
/// framing and checksums ([`decode`]), the state, and the two agreeing. `path` only names the
/// file in errors. The fuzz target `snapshot_decode` runs this on any bytes.
pub fn decode_file(path: &Path, bytes: &[u8]) -> Result<(Header, Partition), SnapshotError> {
    let (header, payload) = decode(path, bytes)?;
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

/// The directory holding every partition's snapshots.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    keep: usize,
}

/// A loaded, verified snapshot.
pub struct Loaded {
    pub header: Header,
    pub partition: Partition,
    pub path: PathBuf,
}

/// What loading a partition found.
pub struct PartitionFiles {
    /// The newest valid snapshot, if any.
    pub loaded: Option<Loaded>,
    /// Files that failed verification (newest first), with why.
    pub corrupt: Vec<SnapshotError>,
}

/// Whether a failed rename is known to have changed nothing (the kernel refused it before
/// touching the disk): no space or quota for the entry, a read-only file system, the
/// directory gone or not a directory, no permission. Anything else (EIO above all) aborts.
fn rename_changed_nothing(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        StorageFull
            | QuotaExceeded
            | ReadOnlyFilesystem
            | NotFound
            | NotADirectory
            | PermissionDenied
    )
}

/// A failure that must stop the process: see the module docs (no retry after fsync errors).
fn fatal(what: &str, path: &Path, error: &std::io::Error) -> ! {
    tracing::error!(%error, path = %path.display(), "snapshot {what} failed; aborting (never retry a failed fsync or rename)");
    eprintln!(
        "creditflow: snapshot {what} of {} failed: {error}; aborting",
        path.display()
    );
    std::process::abort();
}

impl Store {
    /// Opens (creating if missing) the snapshot directory, owner-only (0700): snapshots hold
    /// every account's balances and grants.
    pub fn open(dir: &Path, keep: usize) -> Result<Store, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        // A crash mid-write leaves a temporary file; it was never renamed, so never trusted.
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".snap.tmp"))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            keep: keep.max(2),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a snapshot atomically: temporary file, fsync, rename, fsync of the directory.
    /// Returns the file's size. Any I/O failure on the way to durability aborts the process.
    ///
    /// On a full disk the files retention would delete after this write are deleted first
    /// (never the partition's newest valid snapshot; [`Store::make_room`]) and the write is
    /// tried once more; if it fails again the error is returned and nothing else is deleted.
    pub fn write(&self, header: &Header, payload: &[u8]) -> Result<u64, SnapshotError> {
        let bytes = encode(header, payload)
            .map_err(|e| SnapshotError::corrupt(&self.dir, e.to_string()))?;
        match self.write_bytes(header, &bytes) {
            Err(SnapshotError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                let freed = self.make_room(header.partition);
                tracing::warn!(
                    partition = header.partition,
                    freed,
                    "the snapshot directory's disk is full; deleted what retention allows and \
                     trying once more"
                );
                self.write_bytes(header, &bytes)
            }
            other => other,
        }
    }

    /// Deletes the partition's files that retention would delete once one more is written
    /// (all but the newest `keep - 1`), except the newest one that verifies, which stays even
    /// when it is older. Returns how many were deleted.
    fn make_room(&self, partition: u32) -> usize {
        let files = self.files(partition);
        let kept = self.keep.saturating_sub(1).max(1);
        let kept_valid = files[..kept.min(files.len())]
            .iter()
            .any(|path| self.load_file(path).is_ok());
        let mut newest_valid_kept = kept_valid;
        let mut deleted = 0;
        for path in files.iter().skip(kept) {
            if !newest_valid_kept && self.load_file(path).is_ok() {
                newest_valid_kept = true;
                continue;
            }
            match fs::remove_file(path) {
                Ok(()) => deleted += 1,
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "could not remove an old snapshot")
                }
            }
        }
        deleted
    }

    fn write_bytes(&self, header: &Header, bytes: &[u8]) -> Result<u64, SnapshotError> {
        let name = file_name(header.partition, header.applied_through);
        let final_path = self.dir.join(&name);
        let temp_path = self.dir.join(format!("{name}.tmp"));
        // Owner-only (0600), like the directory; the rename keeps the mode.
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = match options.open(&temp_path) {
            Ok(file) => file,
            // Nothing was written yet: this is an ordinary error (disk full, permissions).
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: temp_path,
                    source,
                })
            }
        };
        if let Err(error) = file.write_all(bytes) {
            let _ = fs::remove_file(&temp_path);
            return Err(SnapshotError::Io {
                path: temp_path,
                source: error,
            });
        }
        if let Err(error) = file.sync_all() {
            fatal("fsync", &temp_path, &error);
        }
        drop(file);
        if let Err(error) = fs::rename(&temp_path, &final_path) {
            if !rename_changed_nothing(&error) {
                fatal("rename", &final_path, &error);
            }
            let _ = fs::remove_file(&temp_path);
            return Err(SnapshotError::Io {
                path: final_path,
                source: error,
            });
        }
        match File::open(&self.dir).and_then(|d| d.sync_all()) {
            Ok(()) => {}
            Err(error) => fatal("directory fsync", &self.dir, &error),
        }
        self.prune(header.partition);
        Ok(bytes.len() as u64)
    }

    /// Snapshot files of a partition, newest first.
    pub fn files(&self, partition: u32) -> Vec<PathBuf> {
        let mut found: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let (p, position) = parse_file_name(name.to_str()?)?;
                (p == partition).then(|| (position, entry.path()))
            })
            .collect();
        found.sort_by_key(|b| std::cmp::Reverse(b.0));
        found.into_iter().map(|(_, path)| path).collect()
    }

    /// True if the directory holds any snapshot file at all.
    pub fn is_empty(&self) -> bool {
        !fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .and_then(parse_file_name)
                    .is_some()
            })
    }

    /// Keeps the newest `keep` files of a partition; removes older ones and stray temp files.
    fn prune(&self, partition: u32) {
        for path in self.files(partition).into_iter().skip(self.keep) {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "could not remove an old snapshot");
            }
        }
    }

    /// Loads the newest snapshot of `partition` that verifies, falling back to older ones.
    pub fn load(&self, partition: u32) -> PartitionFiles {
        let mut corrupt = Vec::new();
        for path in self.files(partition) {
            match self.load_file(&path) {
                Ok(loaded) if loaded.header.partition == partition => {
                    return PartitionFiles {
                        loaded: Some(loaded),
                        corrupt,
                    }
                }
                Ok(_) => corrupt.push(SnapshotError::corrupt(&path, "holds another partition")),
                Err(error) => corrupt.push(error),
            }
        }
        PartitionFiles {
            loaded: None,
            corrupt,
        }
    }

    /// [`Store::load`] for partitions `0..partitions`, in order, on up to one thread per core:
    /// reading, checking and decoding a million accounts' snapshots is seconds of CPU, and
    /// partitions are independent.
    pub fn load_all(&self, partitions: u32) -> Vec<PartitionFiles> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(partitions as usize)
            .max(1);
        let next = std::sync::atomic::AtomicU32::new(0);
        let mut loaded: Vec<(u32, PartitionFiles)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let number = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if number >= partitions {
                                return mine;
                            }
                            mine.push((number, self.load(number)));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| match handle.join() {
                    Ok(mine) => mine,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        loaded.sort_by_key(|(number, _)| *number);
        loaded.into_iter().map(|(_, files)| files).collect()
    }

    pub fn load_file(&self, path: &Path) -> Result<Loaded, SnapshotError> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| SnapshotError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let (header, partition) = decode_file(path, &bytes)?;
        Ok(Loaded {
            header,
            partition,
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(partition: u32, applied_through: u64) -> Header {
        Header {
            partition,
            partition_count: 4,
            applied_through,
            last_seq: applied_through,
            last_payload_hash: 7,
            output_seq_floor: 3,
            clock: Some(Instant(1)),
            fingerprints: Vec::new(),
            settings: Vec::new(),
            order: Default::default(),
        }
    }

    fn payload(partition: u32, applied_through: u64) -> Vec<u8> {
        let mut p = Partition::new(partition, 4);
        p.applied_through = applied_through;
        crate::codec::encode(&p).unwrap()
    }

    #[test]
    fn round_trip_and_file_names_sort_by_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        for position in [5, 50, 500, 5000] {
            store
                .write(&header(1, position), &payload(1, position))
                .unwrap();
        }
        let files = store.files(1);
        assert_eq!(files.len(), 3, "only the newest 3 are kept");
        let loaded = store.load(1).loaded.unwrap();
        assert_eq!(loaded.header.applied_through, 5000);
        assert_eq!(loaded.partition.applied_through, 5000);
        assert!(store.load(2).loaded.is_none());
        assert_eq!(parse_file_name(&file_name(12, 34)), Some((12, 34)));
    }

    /// A full disk (the temporary file is /dev/full, which refuses every write with ENOSPC):
    /// the write is tried once more after making room, and succeeds.
    #[test]
    fn a_full_disk_makes_room_and_tries_once_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        for position in [10, 20, 30] {
            store
                .write(&header(0, position), &payload(0, position))
                .unwrap();
        }
        let temp = dir.path().join(format!("{}.tmp", file_name(0, 40)));
        std::os::unix::fs::symlink("/dev/full", &temp).unwrap();
        let written = store.write(&header(0, 40), &payload(0, 40));
        assert!(written.is_ok(), "{written:?}");
        let positions: Vec<u64> = store
            .files(0)
            .iter()
            .filter_map(|p| parse_file_name(p.file_name()?.to_str()?).map(|(_, at)| at))
            .collect();
        assert_eq!(positions, [40, 30, 20]);
        assert_eq!(store.load(0).loaded.unwrap().header.applied_through, 40);
        assert!(!temp.exists(), "no temporary file left");
    }

    /// Making room deletes what retention would delete after one more write, but never the
    /// partition's newest valid snapshot, even when every newer file is corrupt.
    #[test]
    fn making_room_keeps_the_newest_valid_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        for position in [10, 20, 30] {
            store
                .write(&header(0, position), &payload(0, position))
                .unwrap();
        }
        store.write(&header(1, 10), &payload(1, 10)).unwrap();
        // The two newest of partition 0 corrupt: only the oldest is valid.
        for position in [20, 30] {
            fs::write(dir.path().join(file_name(0, position)), b"torn").unwrap();
        }
        assert_eq!(store.make_room(0), 0, "the only valid one stays");
        assert_eq!(store.files(0).len(), 3);
        assert_eq!(store.load(0).loaded.unwrap().header.applied_through, 10);
        // With the newest valid again, the oldest is what retention allows to go.
        store.write(&header(0, 40), &payload(0, 40)).unwrap();
        assert_eq!(store.files(0).len(), 3);
        assert_eq!(store.make_room(0), 1);
        let left: Vec<u64> = store
            .files(0)
            .iter()
            .filter_map(|p| parse_file_name(p.file_name()?.to_str()?).map(|(_, at)| at))
            .collect();
        assert_eq!(left, [40, 30]);
        assert_eq!(store.files(1).len(), 1, "other partitions untouched");
    }

    /// A rename the kernel refuses without touching the disk (the directory replaced by a
    /// file) is an ordinary error, not an abort; the error says where.
    #[test]
    fn a_vanished_directory_is_an_ordinary_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshots");
        let store = Store::open(&path, 2).unwrap();
        store.write(&header(0, 1), &payload(0, 1)).unwrap();
        fs::rename(&path, dir.path().join("away")).unwrap();
        fs::write(&path, b"a file").unwrap();
        let error = store.write(&header(0, 2), &payload(0, 2)).unwrap_err();
        assert!(error.to_string().contains("snapshots"), "{error}");
        assert!(rename_changed_nothing(&std::io::Error::from_raw_os_error(
            28
        )));
        assert!(!rename_changed_nothing(&std::io::Error::from_raw_os_error(
            5
        )));
    }

    #[test]
    fn every_corruption_is_detected_and_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 5).unwrap();
        store.write(&header(0, 10), &payload(0, 10)).unwrap();
        store.write(&header(0, 20), &payload(0, 20)).unwrap();
        let newest = store.files(0)[0].clone();
        let good = fs::read(&newest).unwrap();
        // Truncation at every length, and a flip of every bit of a sample of positions.
        for cut in [0, 1, 7, 8, 15, 16, good.len() / 2, good.len() - 1] {
            assert!(decode(&newest, &good[..cut]).is_err(), "truncated at {cut}");
        }
        for position in (0..good.len()).step_by(7) {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[position] ^= 1 << bit;
                assert!(
                    decode(&newest, &bad).is_err(),
                    "bit {bit} of byte {position}"
                );
            }
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&newest, &longer).is_err());
        // A corrupt newest file falls back to the previous one.
        let mut bad = good.clone();
        let middle = bad.len() / 2;
        bad[middle] ^= 0x10;
        fs::write(&newest, &bad).unwrap();
        let files = store.load(0);
        assert_eq!(files.loaded.unwrap().header.applied_through, 10);
        assert_eq!(files.corrupt.len(), 1);
        // All corrupt: nothing loads.
        for path in store.files(0) {
            fs::write(&path, b"garbage").unwrap();
        }
        let files = store.load(0);
        assert!(files.loaded.is_none());
        assert_eq!(files.corrupt.len(), 2);
    }

    #[test]
    fn loading_all_partitions_in_parallel_gives_each_its_own_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 5).unwrap();
        // Partition 0 and 3 hold two snapshots (3's newest corrupt), 1 one, 2 none.
        for (partition, position) in [(0, 10), (0, 20), (1, 7), (3, 30), (3, 40)] {
            store
                .write(&header(partition, position), &payload(partition, position))
                .unwrap();
        }
        let newest_of_3 = store.files(3)[0].clone();
        fs::write(&newest_of_3, b"garbage").unwrap();
        let all = store.load_all(4);
        assert_eq!(all.len(), 4);
        let summary: Vec<(Option<(u32, u64)>, usize)> = all
            .iter()
            .map(|files| {
                (
                    files
                        .loaded
                        .as_ref()
                        .map(|l| (l.header.partition, l.partition.applied_through)),
                    files.corrupt.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some((0, 20)), 0),
                (Some((1, 7)), 0),
                (None, 0),
                (Some((3, 30)), 1)
            ]
        );
    }
}
