//! The snapshot directory: atomic writes, retention, and loading a partition's newest state
//! (a full file, or a chain of deltas back to one) with fallback.
//!
//! Owns: writing a file (temporary file, fsync, rename, directory fsync), keeping the newest
//! `keep` full files per partition and every delta after the oldest of them, resolving a
//! delta's chain on load, and folding a chain into a new full file ([`Store::fold`]).
//!
//! Must never: see the module docs of `snapshot` (no retry after a failed fsync; never delete
//! the partition's newest valid snapshot).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{
    decode_delta_file, decode_file, frame, kind_file_name, parse_file_name, Header, Kind,
    SnapshotError,
};
use crate::engine::Partition;

/// The directory holding every partition's snapshots.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    keep: usize,
}

/// A loaded, verified snapshot: a full file, or a chain of deltas applied to one.
pub struct Loaded {
    /// The newest file's header (a delta's, when it is a chain).
    pub header: Header,
    pub partition: Partition,
    /// The newest file.
    pub path: PathBuf,
    /// Deltas applied to the full file (0: a full file alone).
    pub deltas: usize,
}

/// One snapshot file of a partition, as the directory lists it.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    pub position: u64,
    pub kind: Kind,
    pub path: PathBuf,
}

/// The chain since a partition's newest full file, from the directory's listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainSize {
    /// Bytes of the newest full file.
    pub full_bytes: u64,
    /// Deltas after it, and their bytes.
    pub deltas: usize,
    pub delta_bytes: u64,
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
                .is_some_and(|n| n.ends_with(".snap.tmp") || n.ends_with(".delta.tmp"))
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
        let (before, after) =
            frame(header, payload).map_err(|e| SnapshotError::corrupt(&self.dir, e.to_string()))?;
        let bytes = [before.as_slice(), payload, &after];
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

    /// Deletes the partition's files that retention would delete once one more full file is
    /// written (all but the newest `keep - 1` full files and the deltas after the oldest of
    /// them), except the newest state that loads, which stays with what it needs, even when it
    /// is older. Returns how many were deleted.
    fn make_room(&self, partition: u32) -> usize {
        let kept = self.keep.saturating_sub(1).max(1);
        let mut doomed = self.beyond_retention(partition, kept);
        if doomed.is_empty() {
            return 0;
        }
        let newest_valid = self.load(partition).loaded;
        if let Some(loaded) = newest_valid {
            // The newest state that loads keeps its files: its chain back to its full file.
            let needed = self.chain_of(partition, &loaded.path);
            doomed.retain(|path| !needed.contains(path));
        }
        let mut deleted = 0;
        for path in doomed {
            match fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "could not remove an old snapshot")
                }
            }
        }
        deleted
    }

    /// The files retention removes when `kept` full files are kept: older full files, and
    /// deltas at or before the oldest kept full file (nothing if fewer full files exist).
    fn beyond_retention(&self, partition: u32, kept: usize) -> Vec<PathBuf> {
        let files = self.entries(partition);
        let Some(oldest_kept) = files
            .iter()
            .filter(|f| f.kind == Kind::Full)
            .nth(kept.saturating_sub(1))
            .map(|f| f.position)
        else {
            return Vec::new();
        };
        files
            .into_iter()
            .filter(|f| match f.kind {
                Kind::Full => f.position < oldest_kept,
                Kind::Delta => f.position <= oldest_kept,
            })
            .map(|f| f.path)
            .collect()
    }

    /// The files a loaded state at `newest` was made from: the file, and for a delta the
    /// files back along `previous` to a full one (by the headers; unreadable ones end it).
    fn chain_of(&self, partition: u32, newest: &Path) -> Vec<PathBuf> {
        let files = self.entries(partition);
        let mut chain = vec![newest.to_path_buf()];
        let mut at = newest.to_path_buf();
        while let Some(previous) = read_header(&at).ok().and_then(|h| h.previous) {
            let Some(file) = find(&files, previous) else {
                break;
            };
            chain.push(file.path.clone());
            if file.kind == Kind::Full {
                break;
            }
            at = file.path.clone();
        }
        chain
    }

    /// Writes the file made of `parts`, in order.
    fn write_bytes(&self, header: &Header, parts: &[&[u8]]) -> Result<u64, SnapshotError> {
        let name = kind_file_name(header.partition, header.applied_through, Kind::of(header));
        self.write_named(&name, parts)?;
        self.prune(header.partition);
        Ok(parts.iter().map(|part| part.len() as u64).sum())
    }

    /// Puts a whole snapshot file fetched from elsewhere (`snapshot::remote`) in the directory
    /// under `name`, atomically and durably like a written one; nothing is pruned. Its contents
    /// are verified when it is loaded, like any file's. `name` must be a snapshot file's name.
    pub fn put_file(&self, name: &str, bytes: &[u8]) -> Result<(), SnapshotError> {
        if super::parse_file_name(name).is_none() {
            return Err(SnapshotError::corrupt(
                &self.dir.join(name),
                "not a snapshot file's name".to_string(),
            ));
        }
        self.write_named(name, &[bytes])
    }

    /// Temporary file, fsync, rename, fsync of the directory (see [`Store::write`]).
    fn write_named(&self, name: &str, parts: &[&[u8]]) -> Result<(), SnapshotError> {
        let final_path = self.dir.join(name);
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
        if let Err(error) = parts.iter().try_for_each(|part| file.write_all(part)) {
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
        Ok(())
    }

    /// Snapshot files of a partition, newest first (a full file before a delta at the same
    /// position).
    pub fn entries(&self, partition: u32) -> Vec<SnapshotFile> {
        let mut found: Vec<SnapshotFile> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let (p, position, kind) = parse_file_name(name.to_str()?)?;
                (p == partition).then(|| SnapshotFile {
                    position,
                    kind,
                    path: entry.path(),
                })
            })
            .collect();
        found.sort_by_key(|f| (std::cmp::Reverse(f.position), f.kind));
        found
    }

    /// The paths of [`Store::entries`].
    pub fn files(&self, partition: u32) -> Vec<PathBuf> {
        self.entries(partition)
            .into_iter()
            .map(|f| f.path)
            .collect()
    }

    /// The newest file of a partition written at `position`, if any (its path).
    pub fn file_at(&self, partition: u32, position: u64) -> Option<PathBuf> {
        find(&self.entries(partition), position).map(|f| f.path.clone())
    }

    /// The chain since the newest full file: its size, and the deltas after it.
    pub fn chain_size(&self, partition: u32) -> ChainSize {
        let files = self.entries(partition);
        let size = |path: &Path| fs::metadata(path).map_or(0, |m| m.len());
        let mut chain = ChainSize::default();
        for file in &files {
            match file.kind {
                Kind::Full => {
                    chain.full_bytes = size(&file.path);
                    break;
                }
                Kind::Delta => {
                    chain.deltas += 1;
                    chain.delta_bytes += size(&file.path);
                }
            }
        }
        chain
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

    /// Keeps the newest `keep` full files of a partition and the deltas after the oldest of
    /// them; removes the rest.
    fn prune(&self, partition: u32) {
        for path in self.beyond_retention(partition, self.keep) {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "could not remove an old snapshot");
            }
        }
    }

    /// Loads the newest state of `partition` that verifies, falling back to older ones: each
    /// file, newest first, is tried as the end of a chain (a full file alone, or a delta and
    /// what it follows, back to a full file).
    pub fn load(&self, partition: u32) -> PartitionFiles {
        self.load_using(partition, &mut Vec::new())
    }

    /// [`Store::load`], reading each file into `scratch` (its contents replaced): a caller
    /// that loads many partitions passes one buffer for all, so the files' bytes go into memory
    /// already mapped instead of fresh pages the kernel must zero first (most of a cold
    /// start's load is page faults: docs/PERFORMANCE.md "Recovery").
    pub fn load_using(&self, partition: u32, scratch: &mut Vec<u8>) -> PartitionFiles {
        let files = self.entries(partition);
        let mut corrupt = Vec::new();
        for file in &files {
            match self.load_chain(&files, file, scratch) {
                Ok(loaded) if loaded.header.partition == partition => {
                    return PartitionFiles {
                        loaded: Some(loaded),
                        corrupt,
                    }
                }
                Ok(_) => corrupt.push(SnapshotError::corrupt(
                    &file.path,
                    "holds another partition",
                )),
                Err(error) => corrupt.push(error),
            }
        }
        PartitionFiles {
            loaded: None,
            corrupt,
        }
    }

    /// The state `file` ends: the full file, or the delta applied to the state at its
    /// `previous` (a full file there preferred over a delta there), recursively.
    fn load_chain(
        &self,
        files: &[SnapshotFile],
        file: &SnapshotFile,
        scratch: &mut Vec<u8>,
    ) -> Result<Loaded, SnapshotError> {
        if file.kind == Kind::Full {
            return self.load_file_using(&file.path, scratch);
        }
        let (header, delta) = self.load_delta_file(&file.path, scratch)?;
        let mut chain = vec![delta];
        let mut previous = header.previous.unwrap_or_default();
        let mut through = &file.path;
        let mut base = loop {
            let full = files
                .iter()
                .find(|f| f.position == previous && f.kind == Kind::Full)
                .and_then(|f| self.load_file_using(&f.path, scratch).ok());
            if let Some(full) = full {
                break full;
            }
            let Some(earlier) = files
                .iter()
                .find(|f| f.position == previous && f.kind == Kind::Delta)
            else {
                return Err(SnapshotError::corrupt(
                    through,
                    format!("the snapshot it follows (position {previous}) is missing or corrupt"),
                ));
            };
            let (earlier_header, delta) =
                self.load_delta_file(&earlier.path, scratch)
                    .map_err(|error| {
                        SnapshotError::corrupt(
                            &file.path,
                            format!("a snapshot it follows is corrupt: {error}"),
                        )
                    })?;
            chain.push(delta);
            previous = earlier_header.previous.unwrap_or_default();
            through = &earlier.path;
        };
        let deltas = chain.len();
        base.partition
            .apply_deltas(chain.into_iter().rev())
            .map_err(|error| SnapshotError::corrupt(&file.path, error))?;
        Ok(Loaded {
            header,
            partition: base.partition,
            path: file.path.clone(),
            deltas,
        })
    }

    /// [`Store::load`] for partitions `0..partitions`, in order, on up to one thread per core:
    /// reading, checking and decoding a million accounts' snapshots is seconds of CPU, and
    /// partitions are independent.
    pub fn load_all(&self, partitions: u32) -> Vec<PartitionFiles> {
        self.load_some(&(0..partitions).collect::<Vec<_>>())
    }

    /// [`Store::load`] for each of `partitions`, in that order, on up to one thread per core,
    /// each thread reading its files into one buffer ([`Store::load_using`]).
    pub fn load_some(&self, partitions: &[u32]) -> Vec<PartitionFiles> {
        crate::parallel::per_core_with(partitions, Vec::new, |scratch, &partition| {
            self.load_using(partition, scratch)
        })
    }

    /// The header of the partition's newest file whose header verifies (its payload neither
    /// read nor verified): what [`Store::load`] will most likely load, known in microseconds.
    /// `None` when no file of the partition has a readable header.
    pub fn newest_header(&self, partition: u32) -> Option<Header> {
        self.entries(partition)
            .iter()
            .find_map(|file| peek_header(&file.path).ok())
    }

    /// Loads one full file.
    pub fn load_file(&self, path: &Path) -> Result<Loaded, SnapshotError> {
        self.load_file_using(path, &mut Vec::new())
    }

    /// [`Store::load_file`], the file read into `scratch`.
    fn load_file_using(&self, path: &Path, scratch: &mut Vec<u8>) -> Result<Loaded, SnapshotError> {
        read_into(path, scratch)?;
        let (header, partition) = decode_file(path, scratch)?;
        Ok(Loaded {
            header,
            partition,
            path: path.to_path_buf(),
            deltas: 0,
        })
    }

    fn load_delta_file(
        &self,
        path: &Path,
        scratch: &mut Vec<u8>,
    ) -> Result<(Header, crate::engine::delta::Delta), SnapshotError> {
        read_into(path, scratch)?;
        decode_delta_file(path, scratch)
    }

    /// Folds the partition's newest chain into a full file at its position (the same state,
    /// so loading it gives the same partition with no delta to apply). `None` when the newest
    /// state is a full file already; otherwise the new file's size. An error when the newest
    /// file does not load (nothing is written then).
    pub fn fold(&self, partition: u32) -> Result<Option<u64>, SnapshotError> {
        let files = self.load(partition);
        // A corrupt file newer than the state that loads: that state is not the newest, and
        // folding it would hide the break (the writer asks for a full snapshot instead).
        let (Some(loaded), None) = (files.loaded, files.corrupt.into_iter().next()) else {
            return Err(SnapshotError::corrupt(
                &self.dir,
                format!("partition {partition} has no newest snapshot that loads"),
            ));
        };
        if loaded.deltas == 0 {
            return Ok(None);
        }
        let header = Header {
            previous: None,
            ..loaded.header
        };
        let payload = crate::codec::encode(&loaded.partition)
            .map_err(|e| SnapshotError::corrupt(&loaded.path, e.to_string()))?;
        self.write(&header, &payload).map(Some)
    }
}

/// A file's header from its first bytes only (framing and the header's checksum checked; the
/// payload neither read nor verified).
fn peek_header(path: &Path) -> Result<Header, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut first = [0u8; 16];
    file.read_exact(&mut first).map_err(io)?;
    let mut prefix = first.to_vec();
    prefix.resize(super::header_prefix_len(&first), 0);
    file.read_exact(&mut prefix[16..]).map_err(io)?;
    super::decode_header(path, &prefix)
}

fn read(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::new();
    read_into(path, &mut bytes)?;
    Ok(bytes)
}

/// Replaces `bytes` with the file's contents (its capacity kept: grown only for a larger file).
fn read_into(path: &Path, bytes: &mut Vec<u8>) -> Result<(), SnapshotError> {
    bytes.clear();
    File::open(path)
        .and_then(|mut f| f.read_to_end(bytes))
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(())
}

/// A file's header, the whole file verified (framing and both checksums; the payload is not
/// decoded).
fn read_header(path: &Path) -> Result<Header, SnapshotError> {
    let bytes = read(path)?;
    super::decode(path, &bytes).map(|(header, _)| header)
}

/// The file at `position`, a full one before a delta.
fn find(files: &[SnapshotFile], position: u64) -> Option<&SnapshotFile> {
    files.iter().find(|f| f.position == position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{decode, file_name, test_header as header};

    fn payload(partition: u32, applied_through: u64) -> Vec<u8> {
        let mut p = Partition::new(partition, 4);
        p.applied_through = applied_through;
        crate::codec::encode(&p).unwrap()
    }

    /// The newest header is read from the file's first bytes: a payload corrupt after them
    /// does not hide it (the load then falls back; recovery scans from the lower floor too);
    /// a file whose header is corrupt is passed over for the next.
    #[test]
    fn the_newest_header_is_read_without_the_payload() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        assert!(store.newest_header(1).is_none(), "no file");
        for (position, floor) in [(50, 7), (500, 70)] {
            let header = Header {
                output_seq_floor: floor,
                ..header(1, position)
            };
            store.write(&header, &payload(1, position)).unwrap();
        }
        let newest = store.files(1)[0].clone();
        let mut bytes = fs::read(&newest).unwrap();
        let at = bytes.len() - 6;
        bytes[at] ^= 0x01;
        fs::write(&newest, &bytes).unwrap();
        assert_eq!(store.newest_header(1).unwrap().output_seq_floor, 70);
        assert_eq!(store.load(1).loaded.unwrap().header.output_seq_floor, 7);
        bytes[20] ^= 0x01;
        fs::write(&newest, &bytes).unwrap();
        assert_eq!(store.newest_header(1).unwrap().output_seq_floor, 7);
        fs::write(&newest, b"CFSNAP").unwrap();
        assert_eq!(store.newest_header(1).unwrap().applied_through, 50);
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
        assert_eq!(
            parse_file_name(&file_name(12, 34)),
            Some((12, 34, Kind::Full))
        );
    }

    /// A full file at `positions[0]` and deltas at the rest, as the writer makes them: each
    /// delta's header names the position before. Returns the live partition.
    fn write_chain(store: &Store, partition: u32, positions: &[u64]) -> Partition {
        let mut live = Partition::new(partition, 4);
        live.applied_through = positions[0];
        store
            .write(
                &header(partition, positions[0]),
                &crate::codec::encode(&live).unwrap(),
            )
            .unwrap();
        live.track_changes();
        for &position in &positions[1..] {
            live.applied_through = position;
            live.last_seq = position;
            let delta = live.take_delta().unwrap();
            let mut header = header(partition, position);
            header.previous = Some(delta.previous);
            store
                .write(&header, &crate::codec::encode(&delta).unwrap())
                .unwrap();
        }
        live
    }

    fn listing(store: &Store, partition: u32) -> Vec<(u64, Kind)> {
        store
            .entries(partition)
            .iter()
            .map(|f| (f.position, f.kind))
            .collect()
    }

    /// A chain loads as the live state; a corrupt delta ends it at the one before; a chain
    /// whose full file is gone does not load at all (the older full file does).
    #[test]
    fn a_delta_chain_loads_and_a_corrupt_link_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let live = write_chain(&store, 0, &[10, 20, 30, 40]);
        let loaded = store.load(0).loaded.unwrap();
        assert_eq!(loaded.deltas, 3);
        assert_eq!(loaded.header.applied_through, 40);
        assert_eq!(
            crate::codec::encode(&loaded.partition).unwrap(),
            crate::codec::encode(&live).unwrap()
        );
        assert_eq!(
            store.chain_size(0),
            ChainSize {
                full_bytes: fs::metadata(dir.path().join(file_name(0, 10)))
                    .unwrap()
                    .len(),
                deltas: 3,
                delta_bytes: [20, 30, 40]
                    .iter()
                    .map(|&at| {
                        let name = kind_file_name(0, at, Kind::Delta);
                        fs::metadata(dir.path().join(name)).unwrap().len()
                    })
                    .sum(),
            }
        );

        // The middle delta torn: the newest delta cannot load, nor the torn one; 20 can.
        fs::write(dir.path().join(kind_file_name(0, 30, Kind::Delta)), b"torn").unwrap();
        let files = store.load(0);
        let loaded = files.loaded.unwrap();
        assert_eq!((loaded.header.applied_through, loaded.deltas), (20, 1));
        assert_eq!(files.corrupt.len(), 2, "{:?}", files.corrupt);
        assert!(
            files.corrupt[0]
                .to_string()
                .contains("a snapshot it follows is corrupt"),
            "{}",
            files.corrupt[0]
        );

        // The full file gone: no delta loads, and nothing else is there.
        fs::remove_file(dir.path().join(file_name(0, 10))).unwrap();
        let files = store.load(0);
        assert!(files.loaded.is_none());
        assert!(files
            .corrupt
            .iter()
            .any(|e| e.to_string().contains("is missing")));
        // A full file refuses to be read as a delta, and a delta as a full file.
        let delta = dir.path().join(kind_file_name(0, 20, Kind::Delta));
        assert!(store.load_file(&delta).is_err());
        assert!(store
            .load_delta_file(&dir.path().join(file_name(0, 10)), &mut Vec::new())
            .is_err());
    }

    /// Folding writes a full file at the chain's position holding the same state; the next
    /// delta follows it, and retention then counts it as a full file.
    #[test]
    fn folding_makes_a_full_file_of_the_same_state_and_retention_follows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        let live = write_chain(&store, 1, &[10, 20, 30]);
        assert!(store.fold(0).is_err(), "partition 0 has no snapshot");
        let bytes = store.fold(1).unwrap().expect("a chain to fold");
        assert_eq!(store.fold(1).unwrap(), None, "folded already");
        let loaded = store.load(1).loaded.unwrap();
        assert_eq!((loaded.deltas, loaded.header.applied_through), (0, 30));
        assert_eq!(loaded.header.previous, None);
        assert_eq!(
            fs::metadata(dir.path().join(file_name(1, 30)))
                .unwrap()
                .len(),
            bytes
        );
        assert_eq!(
            crate::codec::encode(&loaded.partition).unwrap(),
            crate::codec::encode(&live).unwrap()
        );
        assert_eq!(
            listing(&store, 1),
            [
                (30, Kind::Full),
                (30, Kind::Delta),
                (20, Kind::Delta),
                (10, Kind::Full)
            ]
        );
        assert_eq!(store.chain_size(1).deltas, 0);

        // A third full file (keep = 2): the oldest full file and the deltas up to the
        // oldest kept one go.
        write_chain(&store, 1, &[50, 60]);
        assert_eq!(
            listing(&store, 1),
            [(60, Kind::Delta), (50, Kind::Full), (30, Kind::Full)]
        );
        assert_eq!(store.load(1).loaded.unwrap().header.applied_through, 60);
    }

    /// A full disk keeps the chain the newest valid state needs, even when retention alone
    /// would drop its full file.
    #[test]
    fn making_room_keeps_the_newest_valid_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        write_chain(&store, 0, &[10, 20]);
        write_chain(&store, 0, &[30, 40]);
        // The newest chain's delta corrupt and its full file too: only 10 + 20 load.
        fs::write(dir.path().join(kind_file_name(0, 40, Kind::Delta)), b"torn").unwrap();
        fs::write(dir.path().join(file_name(0, 30)), b"torn").unwrap();
        assert_eq!(store.load(0).loaded.unwrap().header.applied_through, 20);
        assert_eq!(store.make_room(0), 0, "the chain 10 + 20 stays");
        assert_eq!(store.load(0).loaded.unwrap().header.applied_through, 20);
        assert_eq!(store.entries(0).len(), 4);
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
            .filter_map(|p| parse_file_name(p.file_name()?.to_str()?).map(|(_, at, _)| at))
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
            .filter_map(|p| parse_file_name(p.file_name()?.to_str()?).map(|(_, at, _)| at))
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

    /// One buffer read into for many files: what it held before (a larger file's bytes) never
    /// reaches a decode, so a chain and a single full file load as they do with fresh buffers.
    #[test]
    fn a_reused_read_buffer_loads_what_fresh_buffers_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 5).unwrap();
        let live = write_chain(&store, 0, &[10, 20, 30, 40]);
        store.write(&header(1, 7), &payload(1, 7)).unwrap();
        let mut scratch = vec![0xff_u8; 1 << 20];
        for partition in [0, 1, 0] {
            let reused = store.load_using(partition, &mut scratch).loaded.unwrap();
            let fresh = store.load(partition).loaded.unwrap();
            assert_eq!(reused.header, fresh.header);
            assert_eq!(reused.deltas, fresh.deltas);
            assert_eq!(
                crate::codec::encode(&reused.partition).unwrap(),
                crate::codec::encode(&fresh.partition).unwrap()
            );
        }
        assert!(
            scratch.capacity() >= 1 << 20,
            "the buffer is kept, not replaced"
        );
        let loaded = store.load_using(0, &mut scratch).loaded.unwrap();
        assert_eq!(
            crate::codec::encode(&loaded.partition).unwrap(),
            crate::codec::encode(&live).unwrap()
        );
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
