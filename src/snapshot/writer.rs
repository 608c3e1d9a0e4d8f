//! The snapshot writer: the thread that commits each partition's snapshots once the emitter
//! says their outputs are durable, and folds deltas into full files.
//!
//! Owns: encoding deltas (off the shards' threads), the watermark wait, writing, and each
//! partition's *shadow*: a copy of its state at its latest snapshot, kept by following every delta
//! taken ([`Partition::shadow`](crate::engine::Partition::shadow), [`Shadow::follow`]; seeded with
//! the recovered partitions and with each full snapshot the encoder makes). A fold is one encode of
//! the shadow, never a decode of the files, and a snapshot that a delta cannot carry (its
//! predecessor is not on disk, or it changed most of the partition) is written as a full file from
//! the shadow, so the shard never has to lend the partition for it.
//!
//! Must never: write a delta whose predecessor is not on disk, or commit before the watermark.
//! Without a shadow at the right position (a delta that did not follow, or snapshots
//! without deltas) it falls back to what needs none: a fold from the files, and asking the
//! shard for a full snapshot next ([`FullWanted`]) when a delta cannot be written.
//!
//! Invariants: a shadow is the partition's state at the position of the latest snapshot job
//! the writer received for it (whether or not that job's file reached the disk).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use crossbeam::channel::Receiver;

use super::policy::{FullWanted, Payload, SnapshotJob};
use super::{Kind, Store};
use crate::engine::delta::Delta;
use crate::engine::shadow::Shadow;

/// What the writer reports.
pub trait WriterObserver: Send {
    /// A snapshot file was committed (a fold's too: `Kind::Full`).
    fn written(&mut self, partition: u32, kind: Kind, bytes: u64, elapsed: Duration);
    /// A snapshot of `partition` could not be encoded or written; `consecutive` counts the
    /// failures since the last snapshot (of any partition) was written.
    fn failed(&mut self, partition: u32, stage: FailedStage, error: &str, consecutive: u64);
}

/// Where a snapshot failed (the label of `creditflow_snapshot_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedStage {
    Encode,
    Write,
    /// Folding deltas into a full file (nothing is lost: the deltas stay).
    Fold,
}

impl FailedStage {
    pub fn label(self) -> &'static str {
        match self {
            FailedStage::Encode => "encode",
            FailedStage::Write => "write",
            FailedStage::Fold => "fold",
        }
    }
}

pub struct NoWriterObserver;

impl WriterObserver for NoWriterObserver {
    fn written(&mut self, _: u32, _: Kind, _: u64, _: Duration) {}
    fn failed(&mut self, _: u32, _: FailedStage, _: &str, _: u64) {}
}

/// What the writer did, once its job queue closed.
#[derive(Debug, Default)]
pub struct Written {
    /// The files committed, in order.
    pub files: Vec<PathBuf>,
    /// Partitions whose last snapshot attempt failed (encode or write), with the error: at a
    /// graceful stop these are the final snapshots that did not reach the disk.
    pub last_failed: Vec<(u32, String)>,
}

/// Incremental snapshots: when the writer folds a partition's deltas into a full file, and the
/// shadows it follows them with.
pub struct Folding {
    /// After this many deltas since the full file (>= 1).
    pub deltas_max: usize,
    /// Or once the deltas' bytes reach this fraction of the full file's.
    pub ratio: f64,
    /// Partitions whose next snapshot must be full (set here when one of theirs fails and no
    /// shadow can stand in).
    pub full_wanted: Arc<FullWanted>,
    /// Each partition's state at its latest snapshot ([`crate::engine::Partition::shadow`] of the partitions as
    /// recovered, tracking changes from there).
    pub shadows: HashMap<u32, Shadow>,
}

impl Folding {
    fn due(&self, chain: super::store::ChainSize) -> bool {
        chain.deltas >= self.deltas_max
            || chain.delta_bytes as f64 >= self.ratio * chain.full_bytes as f64
    }
}

/// Whether a delta changed so much of its partition (more than [`DELTA_ACCOUNTS_SMALL`]
/// accounts and more than a quarter of them: a state being built, a drain) that its file would
/// be about as large as the full one and folded straight away: the writer then writes the full
/// file from the shadow instead, one encode instead of two.
fn mostly_changed(delta: &Delta) -> bool {
    delta.accounts() > DELTA_ACCOUNTS_SMALL && delta.accounts() > delta.account_count() / 4
}

/// A delta of at most this many accounts is always written as a delta.
const DELTA_ACCOUNTS_SMALL: usize = 4096;

/// Writes jobs in order until the job queue closes. A job whose watermark never comes (the
/// emitter stopped without making its outputs durable) is dropped, not committed. A delta is
/// encoded here, and written only if the snapshot it follows is on disk (otherwise the state
/// is written whole from the shadow); after it, the chain is folded when `folding` says so.
pub fn run_writer(
    store: Store,
    jobs: Receiver<SnapshotJob>,
    observer: impl WriterObserver + 'static,
    folding: Option<Folding>,
) -> Written {
    let mut writer = Writer {
        store,
        observer,
        folding,
        written: Written::default(),
        last: HashMap::new(),
        consecutive: 0,
        buffer: Vec::new(),
    };
    while let Ok(job) = jobs.recv() {
        writer.write(job);
    }
    let mut last_failed: Vec<(u32, String)> = writer
        .last
        .into_iter()
        .filter_map(|(partition, outcome)| Some((partition, outcome?)))
        .collect();
    last_failed.sort_by_key(|(partition, _)| *partition);
    writer.written.last_failed = last_failed;
    writer.written
}

struct Writer<O> {
    store: Store,
    observer: O,
    folding: Option<Folding>,
    written: Written,
    /// The outcome of each partition's latest attempt: None = written, Some = why not.
    last: HashMap<u32, Option<String>>,
    /// Failures since the last snapshot (of any partition) was written.
    consecutive: u64,
    /// The bytes of the file written last, kept for the next one's encode: a fresh buffer
    /// grown to megabytes costs more (page faults, copies as it doubles) than the encode.
    buffer: Vec<u8>,
}

/// A buffer larger than this is not kept from one write to the next.
const BUFFER_KEPT_MAX: usize = 64 << 20;

/// What a job's file will hold.
enum Contents {
    /// Encoded already (a full snapshot, or a delta encoded here), or why not.
    Bytes(Result<Vec<u8>, String>),
    /// The partition's shadow, encoded at the write.
    Shadow,
}

impl<O: WriterObserver> Writer<O> {
    fn write(&mut self, mut job: SnapshotJob) {
        let partition = job.header.partition;
        // A delta's contents, for the log: accounts, dedupe and archive slots, timers.
        let mut carried = (0, 0, 0);
        let encode_started = WallInstant::now();
        // This thread's CPU for the job: its encode (before the write) and its write.
        let cpu = super::policy::Stopwatch::start();
        let contents = match std::mem::replace(&mut job.payload, Err(String::new())) {
            Ok(Payload::Encoded { bytes, shadow }) => {
                self.keep_shadow(partition, shadow.map(|s| *s));
                Contents::Bytes(Ok(bytes))
            }
            Ok(Payload::Delta(delta)) => {
                carried = (delta.accounts(), delta.remembered(), delta.timers());
                if self.shadow_at(partition, delta.previous).is_some() {
                    let whole = mostly_changed(&delta);
                    match self.follow(partition, *delta, !whole) {
                        Some(bytes) if !whole => Contents::Bytes(Ok(bytes)),
                        Some(_) => Contents::Shadow,
                        None => Contents::Bytes(Err("the delta did not follow".into())),
                    }
                } else {
                    // A shadow elsewhere (if any) is not this partition's state any more.
                    self.keep_shadow(partition, None);
                    let mut bytes = std::mem::take(&mut self.buffer);
                    bytes.clear();
                    Contents::Bytes(
                        crate::codec::encode_into(&*delta, &mut bytes)
                            .map(|()| bytes)
                            .map_err(|error| error.to_string()),
                    )
                }
            }
            Err(error) => Contents::Bytes(Err(error)),
        };
        let mut encode_ms = encode_started.elapsed().as_secs_f64() * 1e3;
        let Ok(reached) = job.watermark.recv() else {
            self.want_full(partition);
            tracing::warn!(
                partition,
                "a snapshot's outputs were not confirmed durable; it is not committed"
            );
            return;
        };
        let position = job.header.applied_through;
        debug_assert_eq!((reached.partition, reached.seq), (partition, position));
        job.header.output_seq_floor = reached.output_seq_floor;
        let written_whole = self.shadow_at(partition, position).is_some();
        // A delta is written as one only after what it follows; otherwise the shadow stands in.
        let contents = match contents {
            Contents::Bytes(Ok(bytes))
                if job.header.previous.is_none_or(|previous| {
                    self.store.file_at(partition, previous).is_some() || !written_whole
                }) =>
            {
                Contents::Bytes(Ok(bytes))
            }
            Contents::Bytes(Err(error)) if !written_whole => Contents::Bytes(Err(error)),
            _ => Contents::Shadow,
        };
        let payload = match contents {
            Contents::Shadow => {
                job.header.previous = None;
                let started = WallInstant::now();
                let encoded = self.encode_shadow(partition);
                encode_ms += started.elapsed().as_secs_f64() * 1e3;
                encoded
            }
            Contents::Bytes(bytes) => bytes.map_err(|error| format!("encoding: {error}")),
        };
        let payload = match payload {
            Ok(payload) => payload,
            Err(error) => {
                self.want_full(partition);
                self.fail(partition, FailedStage::Encode, error);
                return;
            }
        };
        if let Some(previous) = job.header.previous {
            if self.store.file_at(partition, previous).is_none() {
                self.want_full(partition);
                self.fail(
                    partition,
                    FailedStage::Write,
                    format!(
                        "a delta follows the snapshot at {previous}, which was not written; \
                         the next snapshot of the partition is full"
                    ),
                );
                return;
            }
        }
        let kind = Kind::of(&job.header);
        let started = WallInstant::now();
        let encode_cpu = cpu.elapsed().1;
        let written = self.store.write(&job.header, &payload);
        self.keep_buffer(payload);
        let write_cpu = cpu.elapsed().1.saturating_sub(encode_cpu);
        match written {
            Ok(bytes) => {
                let elapsed = started.elapsed();
                tracing::info!(
                    partition,
                    kind = kind.label(),
                    applied_through = position,
                    bytes,
                    pause_ms = job.pause.as_secs_f64() * 1e3,
                    pause_cpu_ms = job.pause_cpu.as_secs_f64() * 1e3,
                    held_ms = job.held.as_secs_f64() * 1e3,
                    encode_ms,
                    encode_cpu_ms = encode_cpu.as_secs_f64() * 1e3,
                    write_cpu_ms = write_cpu.as_secs_f64() * 1e3,
                    accounts = carried.0,
                    remembered = carried.1,
                    timers = carried.2,
                    write_ms = elapsed.as_secs_f64() * 1e3,
                    "snapshot written"
                );
                self.consecutive = 0;
                self.observer.written(partition, kind, bytes, elapsed);
                self.written.files.push(
                    self.store
                        .dir()
                        .join(super::kind_file_name(partition, position, kind)),
                );
                self.last.insert(partition, None);
                if kind == Kind::Delta {
                    self.fold_if_due(partition, &job.header);
                }
            }
            Err(error) => {
                // With a shadow the next delta finds no predecessor and is written whole.
                if !written_whole {
                    self.want_full(partition);
                }
                self.fail(partition, FailedStage::Write, error.to_string());
            }
        }
    }

    /// The partition's shadow, if it is the state at `position`.
    fn shadow_at(&self, partition: u32, position: u64) -> Option<&Shadow> {
        self.folding
            .as_ref()?
            .shadows
            .get(&partition)
            .filter(|shadow| shadow.applied_through() == position)
    }

    fn keep_shadow(&mut self, partition: u32, shadow: Option<Shadow>) {
        if let Some(folding) = &mut self.folding {
            match shadow {
                Some(shadow) => folding.shadows.insert(partition, shadow),
                None => folding.shadows.remove(&partition),
            };
        }
    }

    /// Advances the partition's shadow (at the state `delta` follows) by `delta`, returning the
    /// delta's encoding when `encoded`; a shadow it does not follow is dropped (`None`).
    fn follow(&mut self, partition: u32, delta: Delta, encoded: bool) -> Option<Vec<u8>> {
        let folding = self.folding.as_mut()?;
        let shadow = folding.shadows.get_mut(&partition)?;
        let mut bytes = std::mem::take(&mut self.buffer);
        bytes.clear();
        match shadow.follow(delta, encoded.then_some(&mut bytes)) {
            Ok(()) => Some(bytes),
            Err(error) => {
                tracing::warn!(
                    partition,
                    %error,
                    "the snapshot writer's copy of the partition is dropped; folds read the files"
                );
                folding.shadows.remove(&partition);
                None
            }
        }
    }

    /// The shadow's full encoding, in the kept buffer (give it back with [`Writer::keep_buffer`]).
    fn encode_shadow(&mut self, partition: u32) -> Result<Vec<u8>, String> {
        let shadow = self
            .folding
            .as_mut()
            .and_then(|folding| folding.shadows.get_mut(&partition))
            .ok_or_else(|| format!("no copy of partition {partition} to write whole"))?;
        let mut bytes = std::mem::take(&mut self.buffer);
        bytes.clear();
        shadow
            .encode_into(&mut bytes)
            .map_err(|error| format!("encoding: {error}"))?;
        Ok(bytes)
    }

    /// Keeps a written file's buffer for the next encode, unless it is very large.
    fn keep_buffer(&mut self, bytes: Vec<u8>) {
        if bytes.capacity() <= BUFFER_KEPT_MAX {
            self.buffer = bytes;
        }
    }

    /// After a delta of `partition` was written (`header` is its): folds its chain into a full
    /// file at the same position when it is due, from the shadow (or from the files).
    fn fold_if_due(&mut self, partition: u32, header: &super::Header) {
        let Some(folding) = &self.folding else {
            return;
        };
        let chain = self.store.chain_size(partition);
        if !folding.due(chain) {
            return;
        }
        let started = WallInstant::now();
        let folded = if self.shadow_at(partition, header.applied_through).is_some() {
            let full = super::Header {
                previous: None,
                ..header.clone()
            };
            self.encode_shadow(partition)
                .and_then(|payload| {
                    let written = self.store.write(&full, &payload);
                    self.keep_buffer(payload);
                    written.map_err(|error| error.to_string())
                })
                .map(Some)
        } else {
            self.store
                .fold(partition)
                .map_err(|error| error.to_string())
        };
        match folded {
            Ok(Some(bytes)) => {
                let elapsed = started.elapsed();
                tracing::info!(
                    partition,
                    deltas = chain.deltas,
                    delta_bytes = chain.delta_bytes,
                    bytes,
                    fold_ms = elapsed.as_secs_f64() * 1e3,
                    "snapshot deltas folded into a full snapshot"
                );
                self.observer.written(partition, Kind::Full, bytes, elapsed);
            }
            Ok(None) => {}
            Err(error) => {
                // The chain may be broken on disk: start a new one.
                self.want_full(partition);
                self.fail(partition, FailedStage::Fold, error);
            }
        }
    }

    fn want_full(&self, partition: u32) {
        if let Some(folding) = &self.folding {
            folding.full_wanted.want(partition);
        }
    }

    fn fail(&mut self, partition: u32, stage: FailedStage, error: String) {
        self.consecutive += 1;
        tracing::error!(
            %error,
            partition,
            stage = stage.label(),
            consecutive = self.consecutive,
            "a snapshot failed; the last valid one is kept and the next one will try again"
        );
        self.observer
            .failed(partition, stage, &error, self.consecutive);
        if stage != FailedStage::Fold {
            self.last.insert(partition, Some(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Partition;
    use crate::pipeline::WatermarkReached;
    use crate::snapshot::{kind_file_name, test_header};
    use crate::wire::subject::Route;
    use std::sync::Mutex;

    /// What the writer reported, as `(partition, "written full" | "failed write" ...)`.
    #[derive(Clone, Default)]
    struct Reports(Arc<Mutex<Vec<(u32, String)>>>);

    impl WriterObserver for Reports {
        fn written(&mut self, partition: u32, kind: Kind, _: u64, _: Duration) {
            let line = format!("written {}", kind.label());
            self.0.lock().unwrap().push((partition, line));
        }
        fn failed(&mut self, partition: u32, stage: FailedStage, _: &str, _: u64) {
            let line = format!("failed {}", stage.label());
            self.0.lock().unwrap().push((partition, line));
        }
    }

    impl Reports {
        fn lines(&self) -> Vec<(u32, String)> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A job for the delta `live` has accumulated, `live` moved to `position` first; its
    /// watermark already reached.
    fn delta_job(live: &mut Partition, position: u64) -> SnapshotJob {
        live.applied_through = position;
        let delta = live.take_delta().expect("tracking");
        let mut header = test_header(live.number, position);
        header.previous = Some(delta.previous);
        let (reached, watermark) = crossbeam::channel::bounded(1);
        reached
            .send(WatermarkReached {
                partition: live.number,
                seq: position,
                output_seq_floor: 5,
            })
            .unwrap();
        SnapshotJob {
            header,
            payload: Ok(Payload::Delta(Box::new(delta))),
            watermark,
            pause: Duration::ZERO,
            pause_cpu: Duration::ZERO,
            held: Duration::ZERO,
        }
    }

    fn write_all(
        store: &Store,
        jobs: Vec<SnapshotJob>,
        deltas_max: usize,
        shadows: Vec<Shadow>,
    ) -> (Written, Reports, Arc<FullWanted>) {
        let (send, receive) = crossbeam::channel::unbounded();
        for job in jobs {
            send.send(job).unwrap();
        }
        drop(send);
        let reports = Reports::default();
        let full_wanted = FullWanted::new(4);
        let folding = Folding {
            deltas_max,
            ratio: f64::INFINITY,
            full_wanted: full_wanted.clone(),
            shadows: shadows.into_iter().map(|s| (s.number(), s)).collect(),
        };
        let written = run_writer(store.clone(), receive, reports.clone(), Some(folding));
        (written, reports, full_wanted)
    }

    /// A partition with a full file at `position` on disk, tracking changes from there.
    fn start(store: &Store, partition: u32, position: u64) -> Partition {
        let mut live = Partition::new(partition, 4);
        live.applied_through = position;
        let payload = crate::codec::encode(&live).unwrap();
        store
            .write(&test_header(partition, position), &payload)
            .unwrap();
        live.track_changes();
        live
    }

    /// Applies the sample scenario's opening lines for `accounts` accounts to `live` (those of
    /// other partitions become dead letters).
    fn grow(live: &mut Partition, accounts: usize, seed: u64) {
        let catalog = crate::catalog::load::from_str(
            &std::fs::read_to_string("config/catalog.toml").unwrap(),
        )
        .unwrap();
        let from = live.last_seq;
        let mut outputs = Vec::new();
        for (index, line) in crate::sample::scenario(seed, accounts, 0)
            .iter()
            .enumerate()
        {
            let entry = crate::cli::replay::LogEntry {
                seq: from + index as u64 + 1,
                subject: "creditflow.in".into(),
                payload: line.as_bytes().to_vec(),
                received: None,
            };
            live.apply(&catalog, &entry.envelope(), Route::Log, &mut outputs);
        }
    }

    fn bytes(partition: &Partition) -> Vec<u8> {
        crate::codec::encode(partition).unwrap()
    }

    /// An empty store keeping 3 full files, in a directory removed when the guard drops.
    fn fresh_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        (dir, store)
    }

    /// Deltas are written after the file they follow and folded after `deltas_max` of them,
    /// from the shadow or, without one, from the files; the full file holds the live state.
    #[test]
    fn deltas_are_written_then_folded() {
        for with_shadow in [true, false] {
            let (dir, store) = fresh_store();
            let mut live = start(&store, 2, 10);
            let shadows = if with_shadow {
                vec![live.shadow()]
            } else {
                vec![]
            };
            grow(&mut live, 30, 1);
            let first = delta_job(&mut live, 20);
            grow(&mut live, 30, 2);
            let jobs = vec![first, delta_job(&mut live, 30)];
            let (written, reports, full_wanted) = write_all(&store, jobs, 2, shadows);
            let names: Vec<PathBuf> = [20, 30]
                .iter()
                .map(|&at| dir.path().join(kind_file_name(2, at, Kind::Delta)))
                .collect();
            assert_eq!(written.files, names);
            assert!(written.last_failed.is_empty());
            let lines: Vec<String> = reports.lines().into_iter().map(|(_, l)| l).collect();
            assert_eq!(lines, ["written delta", "written delta", "written full"]);
            assert!(!full_wanted.wanted(2));
            let loaded = store.load(2).loaded.unwrap();
            assert_eq!((loaded.deltas, loaded.header.applied_through), (0, 30));
            assert_eq!(loaded.header.output_seq_floor, 5, "the watermark's floor");
            assert!(
                bytes(&loaded.partition) == bytes(&live),
                "shadow {with_shadow}"
            );
        }
    }

    /// A delta whose predecessor never reached the disk: with a shadow, the state is written
    /// whole in its place; without one it is not written, and the partition's next snapshot
    /// must be full. Other partitions are untouched.
    #[test]
    fn a_delta_after_a_missing_snapshot_is_written_whole_from_the_shadow() {
        for with_shadow in [true, false] {
            let (dir, store) = fresh_store();
            let mut one = start(&store, 1, 10);
            let mut three = start(&store, 3, 10);
            // Partition 1's snapshot at 20 was lost (its file never written): 30 follows it.
            grow(&mut one, 20, 3);
            let lost = delta_job(&mut one, 20);
            let shadows = if with_shadow {
                let mut before = Partition::new(1, 4);
                before.applied_through = 10;
                let mut shadow = before.shadow();
                let Ok(Payload::Delta(delta)) = lost.payload else {
                    unreachable!()
                };
                shadow.follow(*delta, None).unwrap();
                vec![shadow]
            } else {
                vec![]
            };
            grow(&mut one, 20, 4);
            let jobs = vec![delta_job(&mut one, 30), delta_job(&mut three, 15)];
            let (written, reports, full_wanted) = write_all(&store, jobs, 8, shadows);
            if with_shadow {
                assert_eq!(
                    written.files,
                    [
                        dir.path().join(kind_file_name(1, 30, Kind::Full)),
                        dir.path().join(kind_file_name(3, 15, Kind::Delta)),
                    ]
                );
                assert!(written.last_failed.is_empty());
                assert_eq!(
                    reports.lines(),
                    [
                        (1, "written full".to_string()),
                        (3, "written delta".to_string())
                    ]
                );
                assert!(!full_wanted.wanted(1));
                let loaded = store.load(1).loaded.unwrap();
                assert_eq!((loaded.deltas, loaded.header.applied_through), (0, 30));
                assert!(bytes(&loaded.partition) == bytes(&one));
            } else {
                assert_eq!(
                    written.files,
                    [dir.path().join(kind_file_name(3, 15, Kind::Delta))]
                );
                assert_eq!(written.last_failed.len(), 1);
                assert_eq!(written.last_failed[0].0, 1);
                assert!(
                    written.last_failed[0].1.contains("not written"),
                    "{:?}",
                    written.last_failed
                );
                assert_eq!(
                    reports.lines(),
                    [
                        (1, "failed write".to_string()),
                        (3, "written delta".to_string())
                    ]
                );
                assert!(full_wanted.wanted(1));
                assert_eq!(store.load(1).loaded.unwrap().header.applied_through, 10);
            }
            assert!(!full_wanted.wanted(3));
        }
    }

    /// A partition never snapshotted tracks from its empty state: its first delta, with no
    /// file before it, is written whole; a delta of most of a partition is too (one encode,
    /// no fold after it); a small one after them is a delta.
    #[test]
    fn the_first_delta_and_a_delta_of_most_accounts_are_written_whole() {
        let (dir, store) = fresh_store();
        let mut live = Partition::new(0, 1);
        live.track_changes();
        let shadows = vec![live.shadow()];
        grow(&mut live, 50, 5);
        let first = delta_job(&mut live, 100);
        grow(&mut live, DELTA_ACCOUNTS_SMALL + 100, 6);
        let most = delta_job(&mut live, 20_000);
        let (changed, accounts) = {
            let Ok(Payload::Delta(delta)) = &most.payload else {
                unreachable!()
            };
            (delta.accounts(), delta.account_count())
        };
        assert!(changed > DELTA_ACCOUNTS_SMALL && changed > accounts / 4);
        grow(&mut live, 3, 7);
        let small = delta_job(&mut live, 20_010);
        let (written, reports, _) = write_all(&store, vec![first, most, small], 8, shadows);
        assert_eq!(
            written.files,
            [
                dir.path().join(kind_file_name(0, 100, Kind::Full)),
                dir.path().join(kind_file_name(0, 20_000, Kind::Full)),
                dir.path().join(kind_file_name(0, 20_010, Kind::Delta)),
            ]
        );
        assert_eq!(reports.lines().len(), 3, "no fold: {:?}", reports.lines());
        let loaded = store.load(0).loaded.unwrap();
        assert_eq!((loaded.deltas, loaded.header.applied_through), (1, 20_010));
        assert!(bytes(&loaded.partition) == bytes(&live));
    }
}
