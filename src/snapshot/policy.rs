//! When and how a shard snapshots its partitions, and the threads that encode and write them.
//!
//! Owns: the "every N messages or T time" decision per partition, lending a due partition to
//! the encoder thread (which encodes it and gives it straight back to its shard: the shard
//! never stops; only that partition's messages wait, queued in the shard, for the encode; the
//! questions about it that need nothing newer are answered by the encoder meanwhile, from the
//! partition it holds), and the writer thread that commits a snapshot once the emitter says its
//! outputs are durable.
//!
//! Must never: block ingest on encoding or disk (loans go to the encoder through a bounded
//! queue; when it is full the partition stays and is snapshotted at a later batch), lend more
//! than one partition per shard per batch, keep a lent partition any longer than its encode
//! (the encoder hands the job on and the partition back before anything else), or commit before
//! the watermark.
//!
//! Invariants: a job's payload is the partition exactly as of `applied_through`; the header's
//! `output_seq_floor` comes from the emitter's watermark for that same position. The final
//! snapshots at a graceful stop are encoded on the shard (nothing is left to keep flowing).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use crossbeam::channel::{Receiver, Sender, TrySendError};

use super::{Header, Store};
use crate::catalog::{Catalog, CatalogOrder, SettingFingerprint};
use crate::engine::Partition;
use crate::pipeline::question::{Question, Seen};
use crate::pipeline::shard::SnapshotHook;
use crate::pipeline::sink::Sink;
use crate::pipeline::{SinkMessage, WatermarkReached};

/// A snapshot encoded (or whose encode failed), waiting for its watermark and its write.
pub struct SnapshotJob {
    pub header: Header,
    /// The encoded partition, or why it could not be encoded (the writer counts the failure
    /// like a failed write: one place knows every snapshot's outcome).
    pub payload: Result<Vec<u8>, String>,
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
        partition: Partition,
        sink: &Sink,
        questions: &Receiver<Question>,
    ) -> Option<Partition> {
        let started = WallInstant::now();
        let header = self.header(&partition);
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
                None
            }
            // The encoder is behind: try again at a later batch.
            Err(TrySendError::Full(loan)) | Err(TrySendError::Disconnected(loan)) => {
                Some(loan.partition)
            }
        }
    }

    /// Encodes `partition` here and queues it for the writer (the final snapshots).
    fn take(&mut self, partition: &Partition, sink: &Sink) {
        let started = WallInstant::now();
        let payload = crate::codec::encode(partition).map_err(|error| error.to_string());
        let header = self.header(partition);
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
        if !due || self.loans.is_full() {
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

    fn at_stop(&mut self, partition: &Partition, _seq: u64, sink: &Sink) {
        let changed = self
            .last
            .get(&partition.number)
            .is_none_or(|(messages, _)| partition.stats.messages > *messages);
        if changed && partition.stats.messages > 0 {
            self.take(partition, sink);
        }
    }
}

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
            payload: encoded.map_err(|error| error.to_string()),
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
    fn written(&mut self, partition: u32, bytes: u64, elapsed: Duration);
    /// A snapshot of `partition` could not be encoded or written; `consecutive` counts the
    /// failures since the last snapshot (of any partition) was written.
    fn failed(&mut self, partition: u32, stage: FailedStage, error: &str, consecutive: u64);
}

/// Where a snapshot failed (the label of `creditflow_snapshot_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedStage {
    Encode,
    Write,
}

impl FailedStage {
    pub fn label(self) -> &'static str {
        match self {
            FailedStage::Encode => "encode",
            FailedStage::Write => "write",
        }
    }
}

pub struct NoWriterObserver;

impl WriterObserver for NoWriterObserver {
    fn written(&mut self, _: u32, _: u64, _: Duration) {}
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

/// Writes jobs in order until the job queue closes. A job whose watermark never comes (the
/// emitter stopped without making its outputs durable) is dropped, not committed.
pub fn run_writer(
    store: Store,
    jobs: Receiver<SnapshotJob>,
    mut observer: impl WriterObserver + 'static,
) -> Written {
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
        let payload = match std::mem::replace(&mut job.payload, Ok(Vec::new())) {
            Ok(payload) => payload,
            Err(error) => {
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
            tracing::warn!(
                partition,
                "a snapshot's outputs were not confirmed durable; it is not committed"
            );
            continue;
        };
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
                    applied_through = job.header.applied_through,
                    bytes,
                    pause_ms = job.pause.as_secs_f64() * 1e3,
                    held_ms = job.held.as_secs_f64() * 1e3,
                    write_ms = elapsed.as_secs_f64() * 1e3,
                    "snapshot written"
                );
                consecutive = 0;
                observer.written(partition, bytes, elapsed);
                written.files.push(
                    store
                        .dir()
                        .join(super::file_name(partition, job.header.applied_through)),
                );
                None
            }
            Err(error) => fail(
                &mut observer,
                &mut consecutive,
                partition,
                FailedStage::Write,
                error.to_string(),
            ),
        };
        last.insert(partition, outcome);
    }
    let mut last_failed: Vec<(u32, String)> = last
        .into_iter()
        .filter_map(|(partition, outcome)| Some((partition, outcome?)))
        .collect();
    last_failed.sort_by_key(|(partition, _)| *partition);
    written.last_failed = last_failed;
    written
}
