//! What the processor's components report, turned into metrics and readiness: the shards,
//! the emitter, the reader, the snapshot encoder and writer (with the object store mirror),
//! and the tick publisher.
//!
//! Must never: block the component that reports (each call is a few atomic updates; the
//! writer's snapshots are mirrored to the object store on a thread of their own).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as WallInstant};

use crate::engine::Partition;
use crate::metrics::{Health, Metrics};
use crate::pipeline::emit::EmitObserver;
use crate::pipeline::ingest::IngestObserver;
use crate::pipeline::shard::ShardObserver;
use crate::refusals::Refusals;
use crate::snapshot::policy::SnapshotObserver;
use crate::snapshot::remote::{Mirror, MirrorObserver, Mirrored};
use crate::snapshot::writer::{FailedStage, WriterObserver};
use crate::snapshot::Kind;

/// The kind of readiness problem failing ticks raise.
const TICKS_FAILING: &str = "ticks";

/// Tick intervals that may fail in a row before the processor says it is not ready (at once
/// when the server refused the tick subject: that does not heal by itself).
const TICK_FAILURES_UNREADY: u64 = 3;

/// What the tick publisher's intervals do to the metrics and readiness: without ticks no
/// period ends and no grant expires, so failing ticks make `/readyz` 503 naming the error.
pub(super) fn tick_outcomes(
    metrics: &Metrics,
    health: &Health,
    refusals: &Refusals,
    input_prefix: &str,
) -> impl Fn(Result<(), String>) + Send + 'static {
    let (metrics, health, refusals) = (metrics.clone(), health.clone(), refusals.clone());
    let prefix = format!("{input_prefix}.");
    let failed = AtomicU64::new(0);
    move |outcome| match outcome {
        Ok(()) => {
            failed.store(0, Ordering::Relaxed);
            metrics.ticks_published();
            health.set_problem(TICKS_FAILING, None);
        }
        Err(error) => {
            let failures = failed.fetch_add(1, Ordering::Relaxed) + 1;
            let refused = refusals.permission(&prefix).filter(|r| r.contains(".tick"));
            if failures >= TICK_FAILURES_UNREADY || refused.is_some() {
                let why = match refused {
                    Some(refused) => format!(
                        "the NATS server refused it ({refused}): the processor's user needs \
                         publish permission on the tick subjects (config/nats-server.conf)"
                    ),
                    None => refusals.annotate(error),
                };
                health.set_problem(
                    TICKS_FAILING,
                    Some(format!(
                        "ticks failed {failures} interval(s) in a row, so no period can end: {why}"
                    )),
                );
            }
        }
    }
}

/// A shard's observer that records into the Prometheus metrics (also used by `demo --serve`).
pub(crate) struct ShardMetrics {
    metrics: Metrics,
    seen: HashMap<u32, crate::engine::Stats>,
}

impl ShardMetrics {
    pub(crate) fn new(metrics: Metrics) -> ShardMetrics {
        ShardMetrics {
            metrics,
            seen: HashMap::new(),
        }
    }
}

impl ShardObserver for ShardMetrics {
    fn batch_applied(
        &mut self,
        shard: usize,
        messages: usize,
        elapsed: Duration,
        partitions: &[Option<Partition>],
    ) {
        self.metrics
            .observe_apply_batch(shard, elapsed.as_secs_f64(), messages);
        for partition in partitions.iter().flatten() {
            let seen = self.seen.entry(partition.number).or_default();
            let now = &partition.stats;
            if now.messages > seen.messages {
                self.metrics
                    .messages_applied(partition.number, now.messages - seen.messages);
                self.metrics
                    .dead_letters(partition.number, now.dead_letters - seen.dead_letters);
                self.metrics
                    .duplicates(partition.number, now.duplicates - seen.duplicates);
                self.metrics
                    .set_accounts(partition.number, partition.accounts().len() as u64);
                self.metrics
                    .set_dedupe_entries(partition.number, partition.dedupe_len() as u64);
                *seen = now.clone();
            }
        }
    }

    fn dead_letter(&mut self, reason: &'static str) {
        self.metrics.dead_letter_reason(reason);
    }

    fn alert(&mut self, kind: &'static str) {
        self.metrics.alert(kind);
    }
}

pub(super) struct EmitMetrics(pub Metrics);

impl EmitObserver for EmitMetrics {
    fn published(&mut self, n: u64) {
        self.0.outputs_published(n);
    }
    fn retried(&mut self, n: u64) {
        self.0.publish_retries(n);
    }
    fn in_flight(&mut self, n: u64) {
        self.0.set_publish_in_flight(n);
    }
}

pub(super) struct IngestMetrics(pub Metrics);

impl IngestObserver for IngestMetrics {
    fn consumer_recreated(&mut self, reason: &str) {
        let reason = match reason {
            "stall" => "stall",
            "reconnect" => "reconnect",
            _ => "error",
        };
        self.0.consumer_recreated(reason);
    }
}

pub(super) struct PauseMetrics(pub Metrics);

impl SnapshotObserver for PauseMetrics {
    fn paused(&mut self, _partition: u32, elapsed: Duration) {
        self.0.observe_snapshot_pause(elapsed.as_secs_f64());
    }
}

pub(super) struct WriteMetrics {
    pub metrics: Metrics,
    pub health: Health,
    pub written_at: Arc<Mutex<HashMap<u32, WallInstant>>>,
    /// `snapshot.failures_unready`.
    pub failures_unready: u64,
    /// `snapshot.object_store`: the thread mirroring the directory to the bucket, told of
    /// each partition whose files changed.
    pub mirror: Option<Mirror>,
}

/// What the mirror thread reports: each mirror logged, each failure counted.
pub(super) struct MirrorMetrics {
    pub metrics: Metrics,
    pub bucket: String,
}

impl MirrorObserver for MirrorMetrics {
    fn mirrored(&mut self, partition: u32, done: &Mirrored, elapsed: Duration) {
        tracing::info!(
            partition,
            uploaded = done.uploaded,
            deleted = done.deleted,
            mirror_ms = elapsed.as_millis() as u64,
            bucket = %self.bucket,
            "snapshots mirrored"
        );
    }

    fn failed(&mut self, partition: u32, error: &str) {
        tracing::warn!(partition, %error, "mirroring the snapshots failed; retried after the next one");
        self.metrics.snapshot_mirror_failed();
    }
}

/// The kind of readiness problem failing snapshots raise.
const SNAPSHOTS_FAILING: &str = "snapshots";

impl WriterObserver for WriteMetrics {
    fn written(&mut self, partition: u32, kind: Kind, bytes: u64, elapsed: Duration) {
        self.metrics.observe_snapshot_write(elapsed.as_secs_f64());
        self.metrics.set_snapshot_size_bytes(partition, bytes);
        self.metrics.snapshot_written(kind.label());
        self.health.set_problem(SNAPSHOTS_FAILING, None);
        if let Ok(mut written) = self.written_at.lock() {
            written.insert(partition, WallInstant::now());
        }
        if let Some(mirror) = &self.mirror {
            mirror.mark(partition);
        }
    }

    fn failed(&mut self, partition: u32, stage: FailedStage, error: &str, consecutive: u64) {
        self.metrics.snapshot_failed(stage.label(), consecutive);
        if consecutive >= self.failures_unready {
            self.health.set_problem(
                SNAPSHOTS_FAILING,
                Some(format!(
                    "{consecutive} snapshots failed in a row (last: partition {partition}, \
                     {error})"
                )),
            );
        }
    }
}
