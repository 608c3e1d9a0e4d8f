//! A generation: the partitions a process owns, run from recovery to a graceful stop.
//!
//! Owns: the streams' settings, recovering the owned partitions (fetching from the object store
//! first: all lacking files alone, the partitions taken over from another processor in a
//! cluster, whose local files are replaced by the bucket's), the threads and their queues, the
//! monitor, the tick publisher and the service of the generation, and the drain at its end.
//!
//! Must never: publish (outputs, ticks, snapshot mirrors) once the generation's fence no longer
//! holds, or return `Ok` while an output or a snapshot of its partitions is still pending: the
//! caller gives their leases back after it returns.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as WallInstant};

use async_nats::jetstream;
use futures::FutureExt;

use super::observers::{
    tick_outcomes, EmitMetrics, IngestMetrics, MirrorMetrics, PauseMetrics, ShardMetrics,
    WriteMetrics,
};
use super::{Base, ProcessorError, RunOptions, RunSummary, SHUTDOWN_DRAIN_MAX};
use crate::config::{Config, Discard, Storage};
use crate::engine::Partition;
use crate::lease::Fence;
use crate::metrics::{Health, Metrics};
use crate::pipeline::dispatch::{shard_queues, Dispatcher};
use crate::pipeline::emit::{Emitter, PublishFailure, Publisher};
use crate::pipeline::ingest::{Reader, ReaderSettings};
use crate::pipeline::partitioned::PartitionReader;
use crate::pipeline::publish::{AckTicket, Fences, JetStreamPublisher};
use crate::pipeline::question::{question_queues, Question, ResultBook};
use crate::pipeline::shard::Shard;
use crate::pipeline::streams::{ensure_stream, Ensured, StreamSettings};
use crate::pipeline::{Layout, Outbound};
use crate::recovery::{recover_some, write_empty_snapshots, Streams};
use crate::snapshot::policy::{run_encoder, FullWanted, Policy};
use crate::snapshot::remote::{Mirror, Remote};
use crate::snapshot::writer::{run_writer, Folding, Written};
use crate::snapshot::Store;

fn input_stream(config: &Config) -> StreamSettings {
    let input = &config.input;
    StreamSettings {
        name: input.stream.clone(),
        subjects: vec![input.subject_filter()],
        replicas: input.replicas,
        memory_storage: input.storage == Storage::Memory,
        allow_memory_storage: input.allow_memory_storage,
        max_age: input.max_age,
        max_bytes: i64::try_from(input.max_bytes).unwrap_or(i64::MAX),
        max_messages: i64::try_from(input.max_msgs).unwrap_or(i64::MAX),
        duplicate_window: input.duplicate_window,
        discard_old: input.discard == Discard::Old,
        allow_discard_old: input.allow_discard_old,
        deny_delete_and_purge: true,
    }
}

fn output_stream(config: &Config) -> StreamSettings {
    let output = &config.output;
    StreamSettings {
        name: output.stream.clone(),
        subjects: vec![output.subject_filter()],
        replicas: output.replicas,
        memory_storage: output.storage == Storage::Memory,
        allow_memory_storage: output.allow_memory_storage,
        max_age: output.max_age,
        max_bytes: i64::try_from(output.max_bytes).unwrap_or(i64::MAX),
        max_messages: i64::try_from(output.max_msgs).unwrap_or(i64::MAX),
        duplicate_window: output.duplicate_window,
        // A full output stream refuses new outputs (the emitter retries, backpressure stops
        // ingest) rather than deleting outputs downstream may not have read.
        discard_old: false,
        allow_discard_old: false,
        deny_delete_and_purge: false,
    }
}

/// Skips outputs the output stream already holds (found by recovery's scan), and publishes
/// nothing once the lease may be lost (the emitter retries the refused output until the process
/// exits).
struct SkipEmitted {
    inner: JetStreamPublisher,
    already: HashSet<String>,
    skipped: Arc<AtomicU64>,
    fence: Fence,
}

impl Publisher for SkipEmitted {
    type Ack = futures::future::Either<std::future::Ready<Result<u64, PublishFailure>>, AckTicket>;

    async fn publish(&self, output: &Outbound) -> Result<Self::Ack, PublishFailure> {
        if !self.fence.holds() {
            return Err(PublishFailure(
                "the lease on the streams may be lost: not publishing".into(),
            ));
        }
        if self.already.contains(&output.id) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(futures::future::Either::Left(std::future::ready(Ok(0))));
        }
        self.inner
            .publish(output)
            .await
            .map(futures::future::Either::Right)
    }
}

/// The partitions a generation owns and what fences them.
pub(crate) struct Ownership {
    /// The owned partitions, dealt to the shards.
    pub layout: Arc<Layout>,
    /// Holds while every owned partition's lease does: checked before every publish.
    pub fence: Fence,
    /// Partitions whose snapshots are fetched from the object store before recovery (those the
    /// directory may lack): every partition alone; with `cluster`, the ones this process did
    /// not own in its previous generation (for the others its directory is the newest copy).
    pub fetch: Vec<u32>,
    /// The epoch (lease revision) of each owned partition (`cluster`); empty alone.
    pub epochs: Vec<(u32, u64)>,
    /// Where requests for partitions owned elsewhere go (`cluster`); `None` alone.
    pub router: Option<crate::service::route::Router>,
}

/// The JetStream API level from which the server checks `Nats-Expected-Last-Subject-Sequence-
/// Subject` (nats-server 2.11): the output fence ([`fence_outputs`]).
const FENCE_API_LEVEL: u32 = 1;

/// The subject of partition `partition`'s fence record in the output stream.
pub fn fence_subject(output_prefix: &str, partition: u32) -> String {
    format!("{output_prefix}.fence.{partition}")
}

/// Fences the owned partitions' outputs (processors sharing the partitions, on a server that
/// checks the header): publishes a fence record per partition into the output stream, on
/// `<output prefix>.fence.<p>`, and returns each one's stream sequence; every output of the
/// partition is then published expecting that sequence to be the last on its fence subject
/// (`Nats-Expected-Last-Subject-Sequence` with `-Subject`). A successor publishes its own
/// record first, so anything a previous owner still sends (a publish handed to its client
/// before it was paused, written after) is refused by the server. Done before the output scan,
/// so what a previous owner stored before the record is seen by the scan.
async fn fence_outputs(
    base: &Base,
    ownership: &Ownership,
) -> Result<Option<OutputFences>, ProcessorError> {
    let config = &base.config;
    if !config.cluster.enabled || base.server.api_level < FENCE_API_LEVEL {
        return Ok(None);
    }
    let mut fences = vec![None; config.engine.partitions as usize];
    let epochs: HashMap<u32, u64> = ownership.epochs.iter().copied().collect();
    for partition in ownership.layout.owned_partitions() {
        let record = format!(
            r#"{{"type":"fence","partition":{partition},"epoch":{}}}"#,
            epochs.get(&partition).copied().unwrap_or(0)
        );
        let subject = fence_subject(&config.output.subject_prefix, partition);
        let failed = |e: String| {
            ProcessorError::Broker(format!("publishing the fence record on {subject}: {e}"))
        };
        let ack = base
            .context
            .send_publish(
                subject.clone(),
                jetstream::message::PublishMessage::build().payload(record.into()),
            )
            .await
            .map_err(|e| failed(e.to_string()))?
            .await
            .map_err(|e| failed(e.to_string()))?;
        fences[partition as usize] = Some(ack.sequence);
    }
    Ok(Some(Arc::new(fences)))
}

/// Runs the partitions of `ownership` until `stop` resolves (then stops gracefully) or a fatal
/// error; `lost` resolves when a lease is lost, which ends the generation at once with its
/// error (nothing is published once the fence no longer holds). The caller gives the leases
/// back after an `Ok`.
pub(crate) async fn run(
    base: &Base,
    ownership: Ownership,
    options: &RunOptions,
    stop: impl Future<Output = ()> + Send,
    mut lost: Pin<&mut (impl Future<Output = ProcessorError> + Send)>,
) -> Result<RunSummary, ProcessorError> {
    let config = &base.config;
    let (metrics, health) = (&base.metrics, &base.health);
    let (stop_sender, stopping) = tokio::sync::watch::channel(false);
    let stop = stop.fuse();
    tokio::pin!(stop);
    // A stop (or a lost lease) while recovering ends the generation before anything runs:
    // recovery only reads, and a fence record written already is harmless.
    let recovered = tokio::select! {
        recovered = recover_state(base, &ownership, options) => recovered,
        _ = &mut stop => {
            tracing::info!("stopped while recovering");
            return Ok(RunSummary::default());
        }
        error = &mut lost => return Err(error),
    };
    let (store, recovered, remote, fences) = recovered.map_err(|e| base.explained(e))?;
    tracing::info!(report = ?recovered.report, partitions = ?ownership.layout.owned_partitions(), "recovered");
    metrics.generation_started(ownership.layout.owned_partitions().len());
    let report = recovered.report.clone();

    let publisher = JetStreamPublisher::new(
        base.client.clone(),
        config.nats.request_timeout,
        fences.map(|sequences| Fences {
            subject_prefix: format!("{}.fence", config.output.subject_prefix),
            sequences,
        }),
    )
    .await
    .map_err(|e| ProcessorError::Other(format!("the output publisher: {e}")))?;
    let threads = start_threads(
        base,
        recovered,
        (store, remote, publisher),
        &ownership,
        &stopping,
    )?;
    let desk = Arc::new(crate::service::Desk {
        catalog: base.catalog.clone(),
        settings: desk_settings(config),
        questions: threads.questions.clone(),
        layout: ownership.layout.clone(),
        health: health.clone(),
        jetstream: None,
        router: ownership.router.clone(),
        post: None,
        metrics: None,
    });
    if let Some(api) = &base.api {
        api.attach(desk);
    }
    if let Some(interval) = config.engine.tick_interval {
        let fence = ownership.fence.clone();
        tokio::spawn(crate::pipeline::ticks::run(
            base.context.clone(),
            config.input.subject_prefix.clone(),
            ownership.layout.owned_partitions(),
            interval,
            stopping.clone(),
            tick_outcomes(
                metrics,
                health,
                &base.refusals,
                &config.input.subject_prefix,
            ),
            move || fence.holds(),
        ));
    }
    start_monitor(config, &base.context, metrics, health, &threads, &stopping);
    let service = serve(base, &threads, &ownership).await?;

    // Wait for a stop request, or for the reader to end by itself (an error).
    let Threads {
        reader,
        reader_done,
        shards: shard_handles,
        emitter,
        writer,
        mirror,
        encoder,
        skipped,
        ..
    } = threads;
    tokio::select! {
        _ = &mut stop => tracing::info!("stopping: draining shards, publishing pending outputs, snapshotting"),
        _ = reader_done => tracing::error!("the reader stopped; stopping the processor"),
        error = &mut lost => return Err(error),
    }
    health.set_ready(false, "stopping");
    // Until the next generation has recovered, this process applies nothing.
    metrics.set_partitions_owned(0);
    metrics.set_input_position(0);
    if let Some(api) = &base.api {
        api.detach();
    }
    if let Some(service) = service {
        service.stop().await;
    }
    let _ = stop_sender.send(true);
    let drained = tokio::time::timeout(
        SHUTDOWN_DRAIN_MAX,
        tokio::task::spawn_blocking(move || {
            let reader = reader.join();
            let mut partitions = Vec::new();
            for handle in shard_handles {
                partitions.push(handle.join());
            }
            // The encoder ends when the shards have (their loan senders are gone).
            let encoded = encoder.join();
            let written = writer.join();
            // The mirror ends once the writer has, after mirroring what it was told of (the
            // final snapshots a partition handed over starts from), within a bound: the files
            // are the commit and the bucket a copy, so a stalled upload must not fail the stop.
            if let Some(mirror) = mirror {
                join_mirror_within(mirror, MIRROR_STOP_MAX);
            }
            (reader, partitions, emitter.join(), written, encoded)
        }),
    );
    // The leases are kept while the last outputs are published; the caller gives them back
    // once nothing more will be.
    let joined = tokio::select! {
        drained = drained => drained,
        error = &mut lost => return Err(error),
    };
    let joined = joined
        .map_err(|_| {
            ProcessorError::Other(format!(
            "outputs could not be published within {SHUTDOWN_DRAIN_MAX:?} of the stop request; \
             exiting without committing the final snapshots (the next start replays from the last \
             committed ones and emits nothing twice)"
        ))
        })?
        .map_err(|e| ProcessorError::Other(e.to_string()))?;
    let (reader_result, shard_results, emitter_result, writer_result, encoder_result) = joined;
    encoder_result.map_err(|_| ProcessorError::Other("the snapshot encoder panicked".into()))?;
    let reader_result =
        reader_result.map_err(|_| ProcessorError::Other("the reader thread panicked".into()))?;
    let mut last_applied_seq = 0;
    for result in shard_results {
        let partitions =
            result.map_err(|_| ProcessorError::Other("a shard thread panicked".into()))?;
        for partition in partitions {
            last_applied_seq = last_applied_seq.max(partition.applied_through);
        }
    }
    let emitted = emitter_result
        .map_err(|_| ProcessorError::Other("the emitter thread panicked".into()))?
        .map_err(|e| ProcessorError::Other(e.to_string()))?;
    let written =
        writer_result.map_err(|_| ProcessorError::Other("the snapshot writer panicked".into()))?;
    reader_result?;
    if !written.last_failed.is_empty() {
        let failed: Vec<String> = written
            .last_failed
            .iter()
            .map(|(partition, error)| format!("partition {partition}: {error}"))
            .collect();
        return Err(ProcessorError::Other(format!(
            "the final snapshot failed for {} partition(s) ({}); every output was published, \
             and the next start replays from the last valid snapshots",
            failed.len(),
            failed.join("; ")
        )));
    }
    Ok(RunSummary {
        recovery: report,
        outputs_published: emitted
            .published
            .saturating_sub(skipped.load(Ordering::Relaxed)),
        snapshots_written: written.files.len(),
        last_applied_seq,
    })
}
/// The service's settings, shared by the NATS service and the HTTP read API.
fn desk_settings(config: &Config) -> crate::service::Settings {
    crate::service::Settings {
        subject_prefix: config.service.subject_prefix.clone(),
        queue_group: config.service.queue_group.clone(),
        wait_max: config.service.wait_max,
        input_prefix: config.input.subject_prefix.clone(),
        partitions: config.engine.partitions,
        publish_timeout: config.nats.request_timeout,
    }
}

/// The sequence of each owned partition's fence record, by partition (`fence_outputs`).
type OutputFences = Arc<Vec<Option<u64>>>;

/// What recovery gives the threads: the store, the partitions, the bucket, and the outputs'
/// fences (when fenced).
type Recovery = (
    Store,
    crate::recovery::Recovered,
    Option<Remote>,
    Option<OutputFences>,
);

/// Step: the streams checked or created, the snapshots loaded and proven against the streams.
async fn recover_state(
    base: &Base,
    ownership: &Ownership,
    options: &RunOptions,
) -> Result<Recovery, ProcessorError> {
    let (config, context) = (&base.config, &base.context);
    let partitions = config.engine.partitions;
    let owned = ownership.layout.owned_partitions();
    let (_, input_ensured) = ensure_stream(context, &input_stream(config)).await?;
    ensure_stream(context, &output_stream(config)).await?;
    let store = Store::open(&config.snapshot.dir, config.snapshot.keep)?;
    let remote = match &config.snapshot.object_store {
        Some(bucket) => Some(
            Remote::open(
                // A context of its own: the mirror's chunk publishes must not take the output
                // window's ack permits (nor wait behind a window the emitter holds full).
                &jetstream::ContextBuilder::new()
                    .timeout(config.nats.request_timeout)
                    .build(base.client.clone()),
                bucket,
                config.input.replicas,
                config.nats.request_timeout,
            )
            .await
            .map_err(ProcessorError::Broker)?,
        ),
        None => None,
    };
    let shared = config.cluster.enabled;
    // Partitions that got files from the bucket: a copy that does not load is replayed.
    let mut copied = std::collections::BTreeSet::new();
    if input_ensured == Ensured::Created {
        write_empty_snapshots(&store, partitions)?;
        if let (true, Some(remote)) = (shared, &remote) {
            // Every partition's empty state, for whichever processor takes it.
            let (remote, store) = (remote.clone(), store.clone());
            tokio::task::spawn_blocking(move || {
                (0..partitions).try_for_each(|p| remote.mirror(&store, p).map(|_| ()))
            })
            .await
            .map_err(|e| ProcessorError::Other(e.to_string()))?
            .map_err(ProcessorError::Other)?;
        }
    } else if let Some(remote) = &remote {
        // A stream just created has no history: objects left from another are not fetched.
        // Files this process kept of a partition it owned before stay: the state at a stream
        // position is the same whoever computed it, so any file that verifies is good, and a
        // delta only names the position it follows (a chain may mix files of several owners);
        // recovery loads the newest that verifies.
        let wanted = |p: u32| ownership.fetch.contains(&p);
        let fetched = remote
            .fetch(&store, partitions, wanted)
            .await
            .map_err(ProcessorError::Broker)?;
        tracing::info!(
            bucket = remote.name(),
            files = fetched.files,
            bytes = fetched.bytes,
            unreadable = fetched.unreadable,
            "snapshots fetched from the object store"
        );
        copied = fetched.partitions;
    }
    let fences = fence_outputs(base, ownership).await?;
    let recovered = recover_some(
        &Streams {
            context,
            input: &config.input.stream,
            output: &config.output.stream,
            output_prefix: &config.output.subject_prefix,
            refusals: &base.refusals,
        },
        &store,
        &base.catalog,
        (&owned, partitions),
        (options.rebuild, &copied),
        &options.accept_catalog_changes,
    )
    .await?;
    Ok((store, recovered, remote, fences))
}

/// The threads of a running processor, and what the other steps need of them.
struct Threads {
    reader: std::thread::JoinHandle<Result<(), ProcessorError>>,
    reader_done: tokio::sync::oneshot::Receiver<()>,
    shards: Vec<std::thread::JoinHandle<Vec<Partition>>>,
    emitter: std::thread::JoinHandle<std::io::Result<crate::pipeline::emit::EmitReport>>,
    writer: std::thread::JoinHandle<Written>,
    /// The object store mirror, when configured (ends once the writer has).
    mirror: Option<std::thread::JoinHandle<()>>,
    encoder: std::thread::JoinHandle<()>,
    /// Outputs the emitter skipped as already in the output stream.
    skipped: Arc<AtomicU64>,
    /// One past the last input sequence read.
    position: Arc<AtomicU64>,
    /// The questions queue of each shard.
    questions: Vec<crossbeam::channel::Sender<Question>>,
    written_at: Arc<Mutex<HashMap<u32, WallInstant>>>,
}

/// The snapshot writer's copies of the partitions that go on from their recovered state with
/// deltas ([`Partition::shadow`]; the accounts shared), made on a thread per core. Without
/// incremental snapshots nothing is tracked and no copy is kept.
fn shadows_of(
    partitions: &mut [Partition],
    deltas: bool,
) -> HashMap<u32, crate::engine::shadow::Shadow> {
    if !deltas {
        partitions.iter_mut().for_each(Partition::stop_tracking);
        return HashMap::new();
    }
    crate::parallel::per_core(partitions, |p| {
        p.tracking_since().map(|_| (p.number, p.shadow()))
    })
    .into_iter()
    .flatten()
    .collect()
}

/// Step: the shards (with the recovered partitions), the emitter, the snapshot encoder and
/// writer, and the reader, connected by their bounded queues.
fn start_threads(
    base: &Base,
    recovered: crate::recovery::Recovered,
    (store, remote, publisher): (Store, Option<Remote>, JetStreamPublisher),
    ownership: &Ownership,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Threads, ProcessorError> {
    let (config, catalog, context) = (&base.config, &base.catalog, &base.context);
    let (metrics, health) = (&base.metrics, &base.health);
    let partitions = config.engine.partitions;
    let layout = ownership.layout.clone();
    let shards = layout.shards();
    let fence = ownership.fence.clone();
    let spawn_failed =
        |what: &str, e: std::io::Error| ProcessorError::Other(format!("spawning the {what}: {e}"));
    let (shard_senders, shard_receivers) = shard_queues(shards, config.engine.queue_batches_max);
    let dispatcher = Dispatcher::new(shard_senders, config.engine.batch_size_max, layout.clone());
    let (question_senders, question_receivers) =
        question_queues(shards, config.service.questions_max);
    let sink_capacity = shards * config.engine.queue_batches_max.max(1) + 16;
    let (sink_sender, sink_receiver) = crate::pipeline::sink::sink_queue(sink_capacity);
    // Encoded snapshots wait for their watermark at the writer; unbounded, since at most one
    // per partition per interval is ever queued (while outputs cannot be acked, the shards
    // block on the sink and take no more).
    let (job_sender, job_receiver) = crossbeam::channel::unbounded();
    let (loan_sender, loan_receiver) = crossbeam::channel::bounded(shards * 2);
    let written_at: Arc<Mutex<HashMap<u32, WallInstant>>> = Arc::default();
    let full_wanted = FullWanted::new(partitions);
    let mut recovered = recovered;
    let deltas = config.snapshot.deltas_max > 0;
    let copying = WallInstant::now();
    let shadows = shadows_of(&mut recovered.partitions, deltas);
    if !shadows.is_empty() {
        tracing::info!(
            partitions = shadows.len(),
            copy_ms = copying.elapsed().as_secs_f64() * 1e3,
            "the snapshot writer's copies of the partitions are made (before the shards start)"
        );
    }
    let folding = deltas.then(|| Folding {
        deltas_max: config.snapshot.deltas_max,
        ratio: f64::from(config.snapshot.fold_percent) / 100.0,
        full_wanted: full_wanted.clone(),
        shadows,
    });

    let deltas_wanted = folding.as_ref().map(|f| f.full_wanted.clone());
    // The mirror to the object store runs beside the writer: a slow bucket must not hold the
    // snapshots (or a graceful stop) behind its uploads.
    let (mirror, mirror_thread) = match remote {
        Some(remote) => {
            let bucket = remote.name().to_string();
            let fence = fence.clone();
            let (mirror, thread) = Mirror::start(
                remote,
                store.clone(),
                MirrorMetrics {
                    metrics: metrics.clone(),
                    bucket,
                },
                move || fence.holds(),
            )
            .map_err(|e| spawn_failed("snapshot mirror", e))?;
            (Some(mirror), Some(thread))
        }
        None => (None, None),
    };
    let writer = {
        let observer = WriteMetrics {
            metrics: metrics.clone(),
            health: health.clone(),
            written_at: written_at.clone(),
            failures_unready: config.snapshot.failures_unready,
            mirror,
        };
        std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || run_writer(store, job_receiver, observer, folding))
            .map_err(|e| spawn_failed("snapshot writer", e))?
    };
    let encoder = {
        let jobs = job_sender.clone();
        std::thread::Builder::new()
            .name("snapshot-encoder".into())
            .spawn(move || run_encoder(loan_receiver, jobs))
            .map_err(|e| spawn_failed("snapshot encoder", e))?
    };

    let statement_entries = if config.service.enabled {
        config.service.statement_entries_max
    } else {
        0
    };
    // Each owned partition's first sequence to read, for a reader of the partitions alone.
    let starts: Vec<(u32, u64)> = recovered
        .partitions
        .iter()
        .map(|p| (p.number, p.applied_through + 1))
        .collect();
    let mut by_shard: Vec<Vec<Partition>> = (0..shards).map(|_| Vec::new()).collect();
    for mut partition in recovered.partitions {
        partition.keep_journal(statement_entries);
        let Some((shard, index)) = layout.place(partition.number) else {
            unreachable!("recovery returns the owned partitions only");
        };
        assert_eq!(
            index,
            by_shard[shard].len(),
            "partitions recovered in order"
        );
        by_shard[shard].push(partition);
    }
    let mut shard_handles = Vec::new();
    for (number, ((partitions_of_shard, receiver), questions)) in by_shard
        .into_iter()
        .zip(shard_receivers)
        .zip(question_receivers)
        .enumerate()
    {
        let shard = Shard {
            number,
            layout: layout.clone(),
            catalog: catalog.clone(),
            partitions: partitions_of_shard,
            output_prefix: config.output.subject_prefix.clone(),
            snapshots: Policy::new(
                catalog.clone(),
                config.snapshot.interval_events,
                config.snapshot.interval,
                loan_sender.clone(),
                job_sender.clone(),
                PauseMetrics(metrics.clone()),
            )
            .with_deltas(deltas_wanted.clone()),
            observer: ShardMetrics::new(metrics.clone()),
            questions,
            dispatched: dispatcher.dispatched(),
            results: ResultBook::new(config.service.results_max, DEAD_LETTERS_KEPT),
        };
        let sink = sink_sender.clone();
        shard_handles.push(
            std::thread::Builder::new()
                .name(format!("shard-{number}"))
                .spawn(move || shard.run(receiver, sink))
                .map_err(|e| spawn_failed(&format!("shard {number}"), e))?,
        );
    }
    drop(sink_sender);
    drop(job_sender);
    drop(loan_sender);

    let skipped = Arc::new(AtomicU64::new(0));
    let emitter = {
        let emitter = Emitter {
            publisher: SkipEmitted {
                inner: publisher,
                already: recovered.already_emitted,
                skipped: skipped.clone(),
                fence,
            },
            observer: EmitMetrics(metrics.clone()),
            window: config.output.publish_window.max(1),
            retry_backoff_max: config.output.publish_retry_backoff_max,
            shards,
            connection_epoch: base.connection_epoch.clone(),
        };
        std::thread::Builder::new()
            .name("emitter".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(emitter.run(sink_receiver)))
            })
            .map_err(|e| spawn_failed("emitter", e))?
    };

    let position = Arc::new(AtomicU64::new(recovered.start_seq));
    let (reader_done_sender, reader_done) = tokio::sync::oneshot::channel();
    let reader = {
        let settings = ReaderSettings {
            stream: config.input.stream.clone(),
            input_prefix: config.input.subject_prefix.clone(),
            partitions,
            start_seq: recovered.start_seq,
            stall_timeout: config.input.stall_timeout,
            fetch_batch_max: config.input.fetch_batch_max,
            fetch_bytes_max: config.input.fetch_bytes_max,
        };
        // Sharing the partitions, a processor reads only its own, unless it owns partition 0,
        // which dead-letters the messages on subjects that name no partition: it reads the
        // whole stream (`pipeline::partitioned`).
        let alone = !config.cluster.enabled || layout.owns(0);
        let whole = alone.then(|| Reader {
            context: context.clone(),
            settings: settings.clone(),
            observer: IngestMetrics(metrics.clone()),
            position: position.clone(),
            connections: base.connections.clone(),
        });
        let own = (!alone).then(|| PartitionReader {
            context: context.clone(),
            settings,
            starts,
            observer: IngestMetrics(metrics.clone()),
            position: position.clone(),
            connections: base.connections.clone(),
        });
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| ProcessorError::Other(e.to_string()))
                    .and_then(|runtime| {
                        runtime
                            .block_on(async move {
                                match (whole, own) {
                                    (Some(reader), _) => reader.run(dispatcher, stop).await,
                                    (None, Some(reader)) => reader.run(dispatcher, stop).await,
                                    (None, None) => unreachable!("one reader or the other"),
                                }
                            })
                            .map_err(ProcessorError::from)
                    });
                let _ = reader_done_sender.send(());
                result
            })
            .map_err(|e| spawn_failed("reader", e))?
    };
    Ok(Threads {
        reader,
        reader_done,
        shards: shard_handles,
        emitter,
        writer,
        mirror: mirror_thread,
        encoder,
        skipped,
        position,
        questions: question_senders,
        written_at,
    })
}

/// How long a graceful stop waits for the mirror to upload the final snapshots.
const MIRROR_STOP_MAX: Duration = Duration::from_secs(15);

/// Joins the mirror thread, or leaves it after `max` with a warning: a successor then fetches
/// the older snapshots the bucket holds and replays from them (slower, never wrong), and the
/// thread ends with the process or after its own bounded upload.
fn join_mirror_within(mirror: std::thread::JoinHandle<()>, max: Duration) {
    let deadline = WallInstant::now() + max;
    while !mirror.is_finished() {
        if WallInstant::now() >= deadline {
            tracing::warn!(
                waited = ?max,
                "the final snapshots are not all mirrored to the object store; stopping without \
                 them (a successor recovers from the older ones there and replays the rest)"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = mirror.join();
}

/// Dead letters each shard keeps for the callers of commands (a command is checked before it
/// is published, so only a refusal that needs the account's state reaches the log).
const DEAD_LETTERS_KEPT: usize = 4096;

/// Step: the monitor: consumer lag, snapshot age, readiness once caught up.
fn start_monitor(
    config: &Config,
    context: &jetstream::Context,
    metrics: &Metrics,
    health: &Health,
    threads: &Threads,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    let context = context.clone();
    let input_name = config.input.stream.clone();
    let metrics = metrics.clone();
    let health = health.clone();
    let position = threads.position.clone();
    let written_at = threads.written_at.clone();
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = timer.tick() => {}
                _ = stop.changed() => return,
            }
            if let Ok(mut stream) = context.get_stream(&input_name).await {
                if let Ok(info) = stream.info().await {
                    let next = position.load(Ordering::Acquire);
                    metrics.set_input_position(next.saturating_sub(1));
                    let lag = (info.state.last_sequence + 1).saturating_sub(next);
                    metrics.set_consumer_lag(lag);
                    if lag == 0 {
                        health.set_ready(true, "caught up");
                    }
                }
            }
            if let Ok(written) = written_at.lock() {
                for (partition, at) in written.iter() {
                    metrics.set_snapshot_age_seconds(*partition, at.elapsed().as_secs_f64());
                }
            }
        }
    });
}

/// The service's thread and how to stop it.
struct ServiceThread {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl ServiceThread {
    /// Unsubscribes every endpoint and waits for the thread to end.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Step: the NATS service, when enabled: on a thread of its own with a single-threaded runtime
/// and a connection of its own. A request's path is then one thread on each side of the shard
/// (NATS in, the handler, the question, the answer, the reply out): the processor's
/// multi-threaded I/O runtime spread it over two workers, and the wake-ups between them cost
/// more than the answer (perf at 5,000 requests/s: most of the service's CPU in the
/// scheduler).
async fn serve(
    base: &Base,
    threads: &Threads,
    ownership: &Ownership,
) -> Result<Option<ServiceThread>, ProcessorError> {
    let config = &base.config;
    if !config.service.enabled {
        return Ok(None);
    }
    let (started_sender, started) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let prefix = config.service.subject_prefix.clone();
    let config = config.clone();
    let catalog = base.catalog.clone();
    let health = base.health.clone();
    let metrics = base.metrics.clone();
    let questions = threads.questions.clone();
    let layout = ownership.layout.clone();
    let router = ownership.router.clone();
    let thread = std::thread::Builder::new()
        .name("service".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started_sender.send(Err(ProcessorError::Other(e.to_string())));
                    return;
                }
            };
            runtime.block_on(async move {
                let running = async {
                    let client =
                        super::connect_plain(&config, &format!("{}-service", config.nats.name))
                            .await?;
                    let jetstream = jetstream::ContextBuilder::new()
                        .timeout(config.nats.request_timeout)
                        .build(client.clone());
                    // The post's task lives as long as the runtime (it ends with the thread).
                    let (post, _delivering) =
                        crate::service::post::Post::start(Some(metrics.clone()));
                    let desk = crate::service::Desk {
                        catalog,
                        settings: desk_settings(&config),
                        questions,
                        layout,
                        health,
                        jetstream: Some(jetstream),
                        // Requests for other processors' partitions leave on this connection.
                        router: router.map(|r| r.on(client.clone())),
                        post: Some(post),
                        metrics: Some(metrics),
                    };
                    crate::service::start(client, Arc::new(desk))
                        .await
                        .map_err(|e| ProcessorError::Other(e.to_string()))
                }
                .await;
                match running {
                    Ok(running) => {
                        let _ = started_sender.send(Ok(()));
                        let _ = stopped.await;
                        running.stop().await;
                    }
                    Err(error) => {
                        let _ = started_sender.send(Err(error));
                    }
                }
            });
        })
        .map_err(|e| ProcessorError::Other(format!("spawning the service thread: {e}")))?;
    match started.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(ProcessorError::Other("the service thread ended".into())),
    }
    tracing::info!(
        name = crate::service::NAME,
        %prefix,
        "service started"
    );
    Ok(Some(ServiceThread { stop, thread }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_mirror_is_left_after_the_bound_and_a_finished_one_joined() {
        let (release, stalled) = std::sync::mpsc::channel::<()>();
        let mirror = std::thread::spawn(move || {
            let _ = stalled.recv();
        });
        let started = WallInstant::now();
        join_mirror_within(mirror, Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50));
        // The stalled thread is still running: the stop went on without it.
        release.send(()).expect("the stalled mirror still waits");

        let finished = std::thread::spawn(|| {});
        let started = WallInstant::now();
        join_mirror_within(finished, Duration::from_secs(600));
        assert!(started.elapsed() < Duration::from_secs(600));
    }
}
