//! When and how a shard snapshots its partitions, and the threads that encode and write them.
//!
//! Owns: the "every N messages or T time" decision per partition; taking a *delta* of a due
//! partition on the shard (a copy of what changed since its last snapshot, `engine::delta`,
//! encoded and written by the writer: the partition never leaves), or, when no delta can be
//! taken (no baseline yet, a snapshot of it failed, incremental snapshots off), lending it to
//! the encoder thread (which encodes it and gives it straight back to its shard: the shard
//! never stops; only that partition's messages wait, queued in the shard, for the encode; the
//! questions about it that need nothing newer are answered by the encoder meanwhile, from the
//! partition it holds), and the writer thread that commits a snapshot once the emitter says its
//! outputs are durable.
//!
//! Must never: write a delta whose predecessor is not on disk (the writer checks, and asks for
//! a full snapshot of that partition next: [`FullWanted`]); block ingest on encoding or disk
//! (loans go to the encoder through a bounded
//! queue; when it is full the partition stays and is snapshotted at a later batch), lend more
//! than one partition per shard per batch, keep a lent partition any longer than its encode
//! (the encoder hands the job on and the partition back before anything else), or commit before
//! the watermark.
//!
//! The writer folds a partition's deltas into a new full file (from the files, on its own
//! thread) once they number `deltas_max` or their bytes reach `fold_percent` of the full file's,
//! so a restart reads at most about `1 + fold_percent / 100` full snapshots' bytes.
//!
//! Invariants: a job's payload is the partition exactly as of `applied_through`; the header's
//! `output_seq_floor` comes from the emitter's watermark for that same position. The final
//! snapshots at a graceful stop are encoded on the shard (nothing is left to keep flowing).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use crossbeam::channel::{Receiver, Sender, TrySendError};

use super::{Header, Kind, Store};
use crate::catalog::{Catalog, CatalogOrder, SettingFingerprint};
use crate::engine::delta::Delta;
use crate::engine::Partition;
use crate::pipeline::question::{Question, Seen};
use crate::pipeline::shard::SnapshotHook;
use crate::pipeline::sink::Sink;
use crate::pipeline::{SinkMessage, WatermarkReached};

/// What a job carries to the writer.
pub enum Payload {
    /// A full snapshot, encoded by the encoder (or at a stop, by the shard).
    Encoded(Vec<u8>),
    /// A delta taken on the shard, for the writer to encode (off the shard's thread).
    Delta(Box<Delta>),
}

/// Partitions whose next snapshot must be full: one of theirs failed (or was not committed),
/// so the state a delta would follow may not be on disk. The writer sets, policies clear.
#[derive(Debug)]
pub struct FullWanted(Vec<AtomicBool>);

impl FullWanted {
    pub fn new(partitions: u32) -> Arc<FullWanted> {
        Arc::new(FullWanted(
            (0..partitions).map(|_| AtomicBool::new(false)).collect(),
        ))
    }

    pub fn want(&self, partition: u32) {
        if let Some(flag) = self.0.get(partition as usize) {
            flag.store(true, Ordering::Release);
        }
    }

    /// Whether the partition's next snapshot must be full (an unknown partition: yes).
    pub fn wanted(&self, partition: u32) -> bool {
        self.0
            .get(partition as usize)
            .is_none_or(|flag| flag.load(Ordering::Acquire))
    }

    fn clear(&self, partition: u32) {
        if let Some(flag) = self.0.get(partition as usize) {
            flag.store(false, Ordering::Release);
        }
    }
}

/// A snapshot encoded (or whose encode failed), waiting for its watermark and its write.
pub struct SnapshotJob {
    pub header: Header,
    /// The encoded partition or the delta, or why it could not be encoded (the writer counts
    /// the failure like a failed write: one place knows every snapshot's outcome).
    pub payload: Result<Payload, String>,
    pub watermark: Receiver<WatermarkReached>,
    /// How long the shard stopped for it (the ingest pause this snapshot caused).
    pub pause: Duration,
    /// How long the partition was away from its shard (its messages waited that long).
    pub held: Duration,
}

/// A partition lent by its shard to the encoder, to come back through `back`.
pub struct Loan {
    pub partition: Partition,
    pub header: Header,
    pub watermark: Receiver<WatermarkReached>,
    pub back: Sender<Partition>,
    pub lent_at: WallInstant,
    pub pause: Duration,
    /// Questions about the partition while it is away (the shard sends those it can answer
    /// alone).
    pub questions: Receiver<Question>,
}

/// Reports for metrics.
pub trait SnapshotObserver: Send {
    /// How long the shard stopped to encode the partition.
    fn paused(&mut self, partition: u32, elapsed: Duration);
}

pub struct NoSnapshotObserver;

impl SnapshotObserver for NoSnapshotObserver {
    fn paused(&mut self, _: u32, _: Duration) {}
}

pub struct Policy<O: SnapshotObserver> {
    pub catalog: Arc<Catalog>,
    pub interval_messages: u64,
    pub interval: Duration,
    /// To the encoder (due partitions).
    pub loans: Sender<Loan>,
    /// To the writer (the final snapshots, encoded here).
    pub jobs: Sender<SnapshotJob>,
    pub observer: O,
    /// Lent partitions come back here (the shard selects on the receiver).
    returns: (Sender<Partition>, Receiver<Partition>),
    /// Per partition: its message count and the time at its last snapshot.
    last: HashMap<u32, (u64, WallInstant)>,
    /// The batch (by its last sequence) in which this shard already took a snapshot.
    taken_in_batch: Option<u64>,
    /// The catalog's settings and order, computed once (every header records them).
    settings: Vec<SettingFingerprint>,
    order: CatalogOrder,
    /// Incremental snapshots: set (by [`Policy::with_deltas`]) when deltas are taken.
    full_wanted: Option<Arc<FullWanted>>,
}

impl<O: SnapshotObserver> Policy<O> {
    pub fn new(
        catalog: Arc<Catalog>,
        interval_messages: u64,
        interval: Duration,
        loans: Sender<Loan>,
        jobs: Sender<SnapshotJob>,
        observer: O,
    ) -> Self {
        Policy {
            settings: catalog.setting_fingerprints(),
            order: catalog.order(),
            catalog,
            interval_messages: interval_messages.max(1),
            interval,
            loans,
            jobs,
            observer,
            returns: crossbeam::channel::unbounded(),
            last: HashMap::new(),
            taken_in_batch: None,
            full_wanted: None,
        }
    }

    /// Take deltas between full snapshots (`None`: every snapshot full); a partition's next
    /// snapshot is full while `full_wanted` says so.
    pub fn with_deltas(mut self, full_wanted: Option<Arc<FullWanted>>) -> Self {
        self.full_wanted = full_wanted;
        self
    }

    /// Whether `partition`'s snapshot now can be a delta.
    fn delta_possible(&self, partition: &Partition) -> bool {
        let Some(wanted) = &self.full_wanted else {
            return false;
        };
        partition
            .tracking_since()
            .is_some_and(|since| since < partition.applied_through)
            && !wanted.wanted(partition.number)
    }

    /// Takes a delta of `partition` here and queues it for the writer, which encodes it.
    fn take_delta(&mut self, partition: &mut Partition, sink: &Sink) {
        let started = WallInstant::now();
        let Some(delta) = partition.take_delta() else {
            return;
        };
        let mut header = self.header(partition);
        header.previous = Some(delta.previous);
        let payload = Ok(Payload::Delta(Box::new(delta)));
        self.queue(partition, header, payload, started, sink);
    }

    /// Queues a snapshot made here (the shard stopped since `started`) for the writer, and
    /// its watermark after the batch's outputs.
    fn queue(
        &mut self,
        partition: &Partition,
        header: Header,
        payload: Result<Payload, String>,
        started: WallInstant,
        sink: &Sink,
    ) {
        let pause = started.elapsed();
        self.observer.paused(partition.number, pause);
        let (done, watermark) = crossbeam::channel::bounded(1);
        let job = SnapshotJob {
            header,
            payload,
            watermark,
            pause,
            held: pause,
        };
        if self.jobs.send(job).is_ok() {
            let position = (
                partition.number,
                partition.applied_through,
                partition.stats.messages,
            );
            self.mark(position, sink, done);
        }
    }

    fn header(&self, partition: &Partition) -> Header {
        let clock = partition.clock();
        let fingerprints = clock.map_or_else(Vec::new, |c| self.catalog.fingerprints_in_force(c));
        Header {
            partition: partition.number,
            partition_count: partition.partition_count,
            applied_through: partition.applied_through,
            last_seq: partition.last_seq,
            last_payload_hash: partition.last_payload_hash,
            output_seq_floor: 0,
            clock,
            fingerprints,
            settings: self.settings.clone(),
            order: self.order.clone(),
            previous: None,
        }
    }

    /// After the batch's outputs (already sent), so the watermark covers them.
    /// `(number, applied_through, messages)` are the snapshotted partition's.
    fn mark(
        &mut self,
        (number, applied_through, messages): (u32, u64, u64),
        sink: &Sink,
        done: Sender<WatermarkReached>,
    ) {
        let _ = sink.send(SinkMessage::Watermark {
            partition: number,
            seq: applied_through,
            done,
        });
        self.last.insert(number, (messages, WallInstant::now()));
    }

    /// Lends `partition` to the encoder; gives it back when the encoder's queue is full.
    fn lend(
        &mut self,
        mut partition: Partition,
        sink: &Sink,
        questions: &Receiver<Question>,
    ) -> Option<Partition> {
        let started = WallInstant::now();
        let header = self.header(&partition);
        if self.full_wanted.is_some() {
            // The next delta follows this snapshot.
            partition.track_changes();
        }
        let (done, watermark) = crossbeam::channel::bounded(1);
        let position = (
            partition.number,
            partition.applied_through,
            partition.stats.messages,
        );
        let loan = Loan {
            partition,
            header,
            watermark,
            back: self.returns.0.clone(),
            lent_at: started,
            // The shard's whole stop for this snapshot: the header (the queue send is a move).
            pause: started.elapsed(),
            questions: questions.clone(),
        };
        match self.loans.try_send(loan) {
            Ok(()) => {
                // The partition is away; the watermark goes after the batch's outputs.
                self.mark(position, sink, done);
                self.observer.paused(position.0, started.elapsed());
                if let Some(wanted) = &self.full_wanted {
                    wanted.clear(position.0);
                }
                None
            }
            // The encoder is behind: try again at a later batch (a full snapshot again: no
            // file will be at the baseline just set).
            Err(TrySendError::Full(loan)) | Err(TrySendError::Disconnected(loan)) => {
                let mut partition = loan.partition;
                partition.stop_tracking();
                Some(partition)
            }
        }
    }

    /// Encodes `partition` here and queues it for the writer (the final snapshots).
    fn take(&mut self, partition: &Partition, sink: &Sink) {
        let started = WallInstant::now();
        let payload = crate::codec::encode(partition)
            .map(Payload::Encoded)
            .map_err(|error| error.to_string());
        let header = self.header(partition);
        self.queue(partition, header, payload, started, sink);
    }
}

impl<O: SnapshotObserver> SnapshotHook for Policy<O> {
    fn after_batch(
        &mut self,
        partition: Partition,
        seq: u64,
        sink: &Sink,
        questions: &Receiver<Question>,
    ) -> Option<Partition> {
        if self.taken_in_batch == Some(seq) {
            return Some(partition);
        }
        let (messages_then, at) = *self
            .last
            .entry(partition.number)
            .or_insert((0, WallInstant::now()));
        let new_messages = partition.stats.messages.saturating_sub(messages_then);
        let due = new_messages >= self.interval_messages
            || (new_messages > 0 && at.elapsed() >= self.interval);
        if !due {
            return Some(partition);
        }
        if self.delta_possible(&partition) && !mostly_changed(&partition) {
            let mut partition = partition;
            self.take_delta(&mut partition, sink);
            self.taken_in_batch = Some(seq);
            return Some(partition);
        }
        if self.loans.is_full() {
            return Some(partition);
        }
        let kept = self.lend(partition, sink, questions);
        if kept.is_none() {
            self.taken_in_batch = Some(seq);
        }
        kept
    }

    fn returns(&self) -> Receiver<Partition> {
        self.returns.1.clone()
    }

    fn at_stop(&mut self, partition: &mut Partition, _seq: u64, sink: &Sink) {
        let changed = self
            .last
            .get(&partition.number)
            .is_none_or(|(messages, _)| partition.stats.messages > *messages);
        if changed && partition.stats.messages > 0 {
            if self.delta_possible(partition) {
                self.take_delta(partition, sink);
            } else {
                self.take(partition, sink);
            }
        }
    }
}

/// Whether so many of the partition's accounts changed since its last snapshot (more than
/// [`DELTA_ACCOUNTS_SMALL`] and more than a quarter: a state being built, a drain) that a
/// delta would stop the shard for about as long as lending the partition holds its messages:
/// the copy on the shard costs per account about what the encoder's encode does, and stops
/// every partition of the shard, not one. A full snapshot is lent instead.
fn mostly_changed(partition: &Partition) -> bool {
    let (changed, accounts) = partition.changed_accounts();
    changed > DELTA_ACCOUNTS_SMALL && changed > accounts / 4
}

/// A delta of at most this many accounts is always taken (a millisecond or two of copying).
const DELTA_ACCOUNTS_SMALL: usize = 4096;

/// How often the encoder, answering questions while it encodes, looks whether the encode is
/// done (a question is answered as soon as it arrives).
const ENCODE_POLL: Duration = Duration::from_millis(1);

/// Encodes lent partitions until the loan queue closes: each job goes on to the writer and the
/// partition straight back to its shard. While a partition is encoded (on a thread of its own,
/// reading it), this thread answers the questions about it from the same state.
pub fn run_encoder(loans: Receiver<Loan>, jobs: Sender<SnapshotJob>) {
    while let Ok(loan) = loans.recv() {
        let Loan {
            partition,
            header,
            watermark,
            back,
            lent_at,
            pause,
            questions,
        } = loan;
        // Whatever happens, the partition goes back: its shard is waiting for it.
        let encoded = std::thread::scope(|scope| {
            let encoding = scope.spawn(|| crate::codec::encode(&partition));
            while !encoding.is_finished() {
                if let Ok(question) = questions.recv_timeout(ENCODE_POLL) {
                    (question.answer)(Seen {
                        partition: &partition,
                        as_of_seq: header.applied_through,
                        results: None,
                    });
                }
            }
            encoding.join()
        })
        .unwrap_or_else(|_| {
            Err(crate::codec::CodecError::Encode(
                "the encoder panicked".into(),
            ))
        });
        let held = lent_at.elapsed();
        // The job first, then the partition: a later snapshot of it (taken once it is back)
        // must reach the writer after this one. A failed encode goes too, to be counted.
        let _ = jobs.send(SnapshotJob {
            header,
            payload: encoded
                .map(Payload::Encoded)
                .map_err(|error| error.to_string()),
            watermark,
            pause,
            held,
        });
        // The shard may be gone (the process is failing); the partition is dropped then.
        let _ = back.send(partition);
    }
}

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

/// When the writer folds a partition's deltas into a full file.
#[derive(Clone, Debug)]
pub struct Folding {
    /// After this many deltas since the full file (>= 1).
    pub deltas_max: usize,
    /// Or once the deltas' bytes reach this fraction of the full file's.
    pub ratio: f64,
    /// Partitions whose next snapshot must be full (set here when one of theirs fails).
    pub full_wanted: Arc<FullWanted>,
}

impl Folding {
    fn due(&self, chain: super::store::ChainSize) -> bool {
        chain.deltas >= self.deltas_max
            || chain.delta_bytes as f64 >= self.ratio * chain.full_bytes as f64
    }
}

/// Writes jobs in order until the job queue closes. A job whose watermark never comes (the
/// emitter stopped without making its outputs durable) is dropped, not committed. A delta is
/// encoded here, and written only if the snapshot it follows is on disk; after it, the chain
/// is folded when `folding` says so. Any failure of a partition's snapshot makes its next one
/// full (`folding.full_wanted`).
pub fn run_writer(
    store: Store,
    jobs: Receiver<SnapshotJob>,
    mut observer: impl WriterObserver + 'static,
    folding: Option<Folding>,
) -> Written {
    let want_full = |partition: u32| {
        if let Some(folding) = &folding {
            folding.full_wanted.want(partition);
        }
    };
    let mut written = Written::default();
    // The outcome of each partition's latest attempt: None = written, Some = why not.
    let mut last: HashMap<u32, Option<String>> = HashMap::new();
    let mut consecutive = 0u64;
    let fail = |observer: &mut dyn WriterObserver,
                consecutive: &mut u64,
                partition: u32,
                stage: FailedStage,
                error: String| {
        *consecutive += 1;
        tracing::error!(
            %error,
            partition,
            stage = stage.label(),
            consecutive = *consecutive,
            "a snapshot failed; the last valid one is kept and the next one will try again"
        );
        observer.failed(partition, stage, &error, *consecutive);
        Some(error)
    };
    while let Ok(mut job) = jobs.recv() {
        let partition = job.header.partition;
        let kind = Kind::of(&job.header);
        // A delta's contents, for the log: accounts, dedupe and archive slots, timers.
        let mut carried = (0, 0, 0);
        let encode_started = WallInstant::now();
        let encoded = match std::mem::replace(&mut job.payload, Err(String::new())) {
            Ok(Payload::Encoded(bytes)) => Ok(bytes),
            Ok(Payload::Delta(delta)) => {
                carried = (delta.accounts(), delta.remembered(), delta.timers());
                crate::codec::encode(&*delta).map_err(|error| error.to_string())
            }
            Err(error) => Err(error),
        };
        let encode_ms = encode_started.elapsed().as_secs_f64() * 1e3;
        let payload = match encoded {
            Ok(payload) => payload,
            Err(error) => {
                want_full(partition);
                let outcome = fail(
                    &mut observer,
                    &mut consecutive,
                    partition,
                    FailedStage::Encode,
                    format!("encoding: {error}"),
                );
                last.insert(partition, outcome);
                continue;
            }
        };
        let Ok(reached) = job.watermark.recv() else {
            want_full(partition);
            tracing::warn!(
                partition,
                "a snapshot's outputs were not confirmed durable; it is not committed"
            );
            continue;
        };
        if let Some(previous) = job.header.previous {
            if store.file_at(partition, previous).is_none() {
                want_full(partition);
                let outcome = fail(
                    &mut observer,
                    &mut consecutive,
                    partition,
                    FailedStage::Write,
                    format!(
                        "a delta follows the snapshot at {previous}, which was not written; \
                         the next snapshot of the partition is full"
                    ),
                );
                last.insert(partition, outcome);
                continue;
            }
        }
        debug_assert_eq!(
            (reached.partition, reached.seq),
            (partition, job.header.applied_through)
        );
        job.header.output_seq_floor = reached.output_seq_floor;
        let started = WallInstant::now();
        let outcome = match store.write(&job.header, &payload) {
            Ok(bytes) => {
                let elapsed = started.elapsed();
                tracing::info!(
                    partition,
                    kind = kind.label(),
                    applied_through = job.header.applied_through,
                    bytes,
                    pause_ms = job.pause.as_secs_f64() * 1e3,
                    held_ms = job.held.as_secs_f64() * 1e3,
                    encode_ms,
                    accounts = carried.0,
                    remembered = carried.1,
                    timers = carried.2,
                    write_ms = elapsed.as_secs_f64() * 1e3,
                    "snapshot written"
                );
                consecutive = 0;
                observer.written(partition, kind, bytes, elapsed);
                written.files.push(store.dir().join(super::kind_file_name(
                    partition,
                    job.header.applied_through,
                    kind,
                )));
                None
            }
            Err(error) => {
                want_full(partition);
                fail(
                    &mut observer,
                    &mut consecutive,
                    partition,
                    FailedStage::Write,
                    error.to_string(),
                )
            }
        };
        let written_now = outcome.is_none();
        last.insert(partition, outcome);
        if let (Some(folding), Kind::Delta, true) = (&folding, kind, written_now) {
            let chain = store.chain_size(partition);
            if folding.due(chain) {
                let started = WallInstant::now();
                match store.fold(partition) {
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
                        observer.written(partition, Kind::Full, bytes, elapsed);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        // The chain may be broken on disk: start a new one.
                        want_full(partition);
                        fail(
                            &mut observer,
                            &mut consecutive,
                            partition,
                            FailedStage::Fold,
                            error.to_string(),
                        );
                    }
                }
            }
        }
    }
    let mut last_failed: Vec<(u32, String)> = last
        .into_iter()
        .filter_map(|(partition, outcome)| Some((partition, outcome?)))
        .collect();
    last_failed.sort_by_key(|(partition, _)| *partition);
    written.last_failed = last_failed;
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{kind_file_name, test_header};
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
            held: Duration::ZERO,
        }
    }

    fn write_all(
        store: &Store,
        jobs: Vec<SnapshotJob>,
        deltas_max: usize,
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
            ratio: 100.0,
            full_wanted: full_wanted.clone(),
        };
        let written = run_writer(store.clone(), receive, reports.clone(), Some(folding));
        (written, reports, full_wanted)
    }

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

    /// Deltas are written after the file they follow and folded after `deltas_max` of them.
    #[test]
    fn deltas_are_written_then_folded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let mut live = start(&store, 2, 10);
        let jobs = vec![delta_job(&mut live, 20), delta_job(&mut live, 30)];
        let (written, reports, full_wanted) = write_all(&store, jobs, 2);
        let names: Vec<PathBuf> = [20, 30]
            .iter()
            .map(|&at| dir.path().join(kind_file_name(2, at, Kind::Delta)))
            .collect();
        assert_eq!(written.files, names);
        assert!(written.last_failed.is_empty());
        let lines: Vec<String> = reports
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        assert_eq!(lines, ["written delta", "written delta", "written full"]);
        assert!(!full_wanted.wanted(2));
        let loaded = store.load(2).loaded.unwrap();
        assert_eq!((loaded.deltas, loaded.header.applied_through), (0, 30));
        assert_eq!(loaded.header.output_seq_floor, 5, "the watermark's floor");
    }

    /// A delta whose predecessor never reached the disk is not written, and the partition's
    /// next snapshot must be full; other partitions are untouched.
    #[test]
    fn a_delta_after_a_missing_snapshot_is_refused_and_a_full_one_wanted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let mut one = start(&store, 1, 10);
        let mut three = start(&store, 3, 10);
        // Partition 1's snapshot at 20 was lost (its job never came): 30 follows it.
        one.applied_through = 20;
        one.take_delta().unwrap();
        let jobs = vec![delta_job(&mut one, 30), delta_job(&mut three, 15)];
        let (written, reports, full_wanted) = write_all(&store, jobs, 8);
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
            *reports.0.lock().unwrap(),
            [
                (1, "failed write".to_string()),
                (3, "written delta".to_string())
            ]
        );
        assert!(full_wanted.wanted(1));
        assert!(!full_wanted.wanted(3));
        assert_eq!(store.load(1).loaded.unwrap().header.applied_through, 10);
    }
}
