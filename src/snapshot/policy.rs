//! When and how a shard snapshots its partitions, and the thread that writes them.
//!
//! Owns: the "every N messages or T time" decision per partition, the encoding on the shard
//! thread (the only ingest pause a snapshot causes: one partition's encode), and the writer
//! thread that commits a snapshot once the emitter says its outputs are durable.
//!
//! Must never: block ingest on disk (jobs go to the writer through a bounded queue; when it is
//! full, the snapshot is simply taken at a later batch), snapshot more than one partition per
//! shard per batch (so pauses stay one partition long), or commit before the watermark.
//!
//! Invariants: a job's payload is the partition exactly as of `applied_through`; the header's
//! `output_seq_floor` comes from the emitter's watermark for that same position.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use crossbeam::channel::{Receiver, Sender, TrySendError};

use super::{Header, Store};
use crate::catalog::Catalog;
use crate::engine::Partition;
use crate::pipeline::shard::SnapshotHook;
use crate::pipeline::{SinkMessage, WatermarkReached};

/// A snapshot encoded by a shard, waiting for its watermark and its write.
pub struct SnapshotJob {
    pub header: Header,
    pub payload: Vec<u8>,
    pub watermark: Receiver<WatermarkReached>,
    /// How long the shard stopped to encode it (the ingest pause this snapshot caused).
    pub pause: Duration,
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
    pub jobs: Sender<SnapshotJob>,
    pub observer: O,
    /// Per partition: its message count and the time at its last snapshot.
    last: HashMap<u32, (u64, WallInstant)>,
    /// The batch (by its last sequence) in which this shard already took a snapshot.
    taken_in_batch: Option<u64>,
}

impl<O: SnapshotObserver> Policy<O> {
    pub fn new(
        catalog: Arc<Catalog>,
        interval_messages: u64,
        interval: Duration,
        jobs: Sender<SnapshotJob>,
        observer: O,
    ) -> Self {
        Policy {
            catalog,
            interval_messages: interval_messages.max(1),
            interval,
            jobs,
            observer,
            last: HashMap::new(),
            taken_in_batch: None,
        }
    }

    fn take(&mut self, partition: &Partition, sink: &Sender<SinkMessage>, blocking: bool) {
        let started = WallInstant::now();
        let payload = match crate::codec::encode(partition) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, partition = partition.number, "encoding a snapshot failed");
                return;
            }
        };
        let clock = partition.clock();
        let fingerprints = clock.map_or_else(Vec::new, |c| self.catalog.fingerprints_in_force(c));
        let header = Header {
            partition: partition.number,
            partition_count: partition.partition_count,
            applied_through: partition.applied_through,
            last_seq: partition.last_seq,
            last_payload_hash: partition.last_payload_hash,
            output_seq_floor: 0,
            clock,
            fingerprints,
        };
        let pause = started.elapsed();
        self.observer.paused(partition.number, pause);
        let (done, watermark) = crossbeam::channel::bounded(1);
        let job = SnapshotJob {
            header,
            payload,
            watermark,
            pause,
        };
        let sent = if blocking {
            self.jobs.send(job).is_ok()
        } else {
            match self.jobs.try_send(job) {
                Ok(()) => true,
                // The writer is behind: try again at a later batch.
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            }
        };
        if sent {
            // After the batch's outputs (already sent), so the watermark covers them.
            let _ = sink.send(SinkMessage::Watermark {
                partition: partition.number,
                seq: partition.applied_through,
                done,
            });
            self.last.insert(
                partition.number,
                (partition.stats.messages, WallInstant::now()),
            );
        }
    }
}

impl<O: SnapshotObserver> SnapshotHook for Policy<O> {
    fn after_batch(&mut self, partition: &Partition, seq: u64, sink: &Sender<SinkMessage>) {
        if self.taken_in_batch == Some(seq) {
            return;
        }
        let (messages_then, at) = *self
            .last
            .entry(partition.number)
            .or_insert((0, WallInstant::now()));
        let new_messages = partition.stats.messages.saturating_sub(messages_then);
        let due = new_messages >= self.interval_messages
            || (new_messages > 0 && at.elapsed() >= self.interval);
        if due && !self.jobs.is_full() {
            self.take(partition, sink, false);
            self.taken_in_batch = Some(seq);
        }
    }

    fn at_stop(&mut self, partition: &Partition, _seq: u64, sink: &Sender<SinkMessage>) {
        let changed = self
            .last
            .get(&partition.number)
            .is_none_or(|(messages, _)| partition.stats.messages > *messages);
        if changed && partition.stats.messages > 0 {
            self.take(partition, sink, true);
        }
    }
}

/// What the writer reports.
pub trait WriterObserver: Send {
    fn written(&mut self, partition: u32, bytes: u64, elapsed: Duration);
}

pub struct NoWriterObserver;

impl WriterObserver for NoWriterObserver {
    fn written(&mut self, _: u32, _: u64, _: Duration) {}
}

/// Writes jobs in order until the job queue closes. A job whose watermark never comes (the
/// emitter stopped without making its outputs durable) is dropped, not committed.
pub fn run_writer(
    store: Store,
    jobs: Receiver<SnapshotJob>,
    mut observer: impl WriterObserver,
) -> Vec<PathBuf> {
    let mut written = Vec::new();
    while let Ok(mut job) = jobs.recv() {
        let Ok(reached) = job.watermark.recv() else {
            tracing::warn!(
                partition = job.header.partition,
                "a snapshot's outputs were not confirmed durable; it is not committed"
            );
            continue;
        };
        debug_assert_eq!(
            (reached.partition, reached.seq),
            (job.header.partition, job.header.applied_through)
        );
        job.header.output_seq_floor = reached.output_seq_floor;
        let started = WallInstant::now();
        match store.write(&job.header, &job.payload) {
            Ok(bytes) => {
                let elapsed = started.elapsed();
                tracing::info!(
                    partition = job.header.partition,
                    applied_through = job.header.applied_through,
                    bytes,
                    pause_ms = job.pause.as_secs_f64() * 1e3,
                    write_ms = elapsed.as_secs_f64() * 1e3,
                    "snapshot written"
                );
                observer.written(job.header.partition, bytes, elapsed);
                written.push(store.dir().join(super::file_name(
                    job.header.partition,
                    job.header.applied_through,
                )));
            }
            Err(error) => {
                tracing::error!(%error, "writing a snapshot failed; the next one will try again")
            }
        }
    }
    written
}
