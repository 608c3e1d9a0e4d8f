//! When and how a shard snapshots its partitions, and the encoder thread.
//!
//! Owns: the "every N messages or T time" decision per partition; taking a *delta* of a due
//! partition on the shard (what changed since its last snapshot, `engine::delta`: the changed
//! accounts shared, not copied; encoded and written by the writer, `writer`: the partition
//! never leaves), or, when no delta can be taken (a state loaded beside corrupt files, a
//! snapshot the writer could not stand in for, incremental snapshots off), lending it to the
//! encoder thread (which encodes it and gives it straight back to its shard: the shard never
//! stops; only that partition's messages wait, queued in the shard, for the encode; the
//! questions about it that need nothing newer are answered by the encoder meanwhile, from the
//! partition it holds).
//!
//! Must never: block ingest on encoding or disk (loans go to the encoder through a bounded
//! queue; when it is full the partition stays and is snapshotted at a later batch), lend more
//! than one partition per shard per batch, or keep a lent partition any longer than its encode
//! and the writer's copy of it (the encoder hands the job on and the partition back before
//! anything else).
//!
//! Invariants: a job's payload is the partition exactly as of `applied_through`; the header's
//! `output_seq_floor` comes from the emitter's watermark for that same position. The final
//! snapshots at a graceful stop are encoded on the shard (nothing is left to keep flowing).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use crossbeam::channel::{Receiver, Sender, TrySendError};

use super::Header;
use crate::catalog::{Catalog, CatalogOrder, SettingFingerprint};
use crate::engine::delta::Delta;
use crate::engine::Partition;
use crate::pipeline::question::{Question, Seen};
use crate::pipeline::shard::SnapshotHook;
use crate::pipeline::sink::Sink;
use crate::pipeline::{SinkMessage, WatermarkReached};
use crate::time::Instant;

/// What a job carries to the writer.
pub enum Payload {
    /// A full snapshot, encoded by the encoder (or at a stop, by the shard), with the copy of
    /// the partition the writer follows its next deltas with (`writer`: none at a stop).
    Encoded {
        bytes: Vec<u8>,
        shadow: Option<Box<crate::engine::shadow::Shadow>>,
    },
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
    /// Of `pause`, how long the shard's thread ran (the rest it waited for a core).
    pub pause_cpu: Duration,
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
    pub pause_cpu: Duration,
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
        let started = Stopwatch::start();
        let Some(delta) = partition.take_delta() else {
            return;
        };
        let clock = partition.clock_now();
        let mut header = self.header(partition, clock);
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
        started: Stopwatch,
        sink: &Sink,
    ) {
        let (pause, pause_cpu) = started.elapsed();
        self.observer.paused(partition.number, pause);
        let (done, watermark) = crossbeam::channel::bounded(1);
        let job = SnapshotJob {
            header,
            payload,
            watermark,
            pause,
            pause_cpu,
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

    /// The snapshot header of `partition`, whose [`Partition::clock`] is `clock`.
    fn header(&self, partition: &Partition, clock: Option<Instant>) -> Header {
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
        let stopwatch = Stopwatch::start();
        let started = stopwatch.wall;
        let clock = partition.clock_now();
        let header = self.header(&partition, clock);
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
            pause: stopwatch.elapsed().0,
            pause_cpu: stopwatch.elapsed().1,
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
        let started = Stopwatch::start();
        let payload = crate::codec::encode(partition)
            .map(|bytes| Payload::Encoded {
                bytes,
                shadow: None,
            })
            .map_err(|error| error.to_string());
        let header = self.header(partition, partition.clock());
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
        if self.delta_possible(&partition) {
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

/// Wall and thread CPU time since a start: of a shard's stop, how much it ran and how much it
/// waited for a core.
pub(crate) struct Stopwatch {
    wall: WallInstant,
    cpu: Duration,
}

impl Stopwatch {
    pub(crate) fn start() -> Self {
        Stopwatch {
            wall: WallInstant::now(),
            cpu: thread_cpu(),
        }
    }

    /// Wall time and this thread's CPU time since the start.
    pub(crate) fn elapsed(&self) -> (Duration, Duration) {
        (self.wall.elapsed(), thread_cpu().saturating_sub(self.cpu))
    }
}

/// The calling thread's CPU time (zero where the clock cannot be read).
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the call writes only it.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if result != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
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
            pause_cpu,
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
        // The writer follows the partition's next deltas from this state.
        let shadow = encoded
            .is_ok()
            .then(|| partition.tracking_since())
            .flatten()
            .map(|_| Box::new(partition.shadow()));
        let held = lent_at.elapsed();
        // The job first, then the partition: a later snapshot of it (taken once it is back)
        // must reach the writer after this one. A failed encode goes too, to be counted.
        let _ = jobs.send(SnapshotJob {
            header,
            payload: encoded
                .map(|bytes| Payload::Encoded { bytes, shadow })
                .map_err(|error| error.to_string()),
            watermark,
            pause,
            pause_cpu,
            held,
        });
        // The shard may be gone (the process is failing); the partition is dropped then.
        let _ = back.send(partition);
    }
}
