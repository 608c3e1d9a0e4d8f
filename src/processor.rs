//! `creditflow run`: the processor, assembled.
//!
//! ```text
//!  JetStream input ─► reader thread ─► Dispatcher ─► shard threads ─► emitter thread ─► JetStream output
//!                         ▲                               │  │                 │
//!  tick task ─────────────┘ (publishes ticks into input)  │  └─ snapshot jobs ─► writer thread ─► files
//!                                                         └──────── watermarks ┘ (commit after acks)
//! ```
//!
//! Owns: the order of start-up (connect, check streams, recover, start threads) and shutdown
//! (stop reading, drain the shards, snapshot every partition, publish every pending output,
//! commit the snapshots, exit 0), and the metrics observers of every component.
//!
//! Must never: start consuming before recovery has proven the snapshots and the streams agree,
//! or exit 0 while an output or a snapshot it owes is still pending.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as WallInstant};

use async_nats::jetstream;

use crate::catalog::Catalog;
use crate::config::{Config, Discard, NatsAuth, Storage};
use crate::engine::Partition;
use crate::lease::{Fence, Holder, Lease, LeaseSettings};
use crate::metrics::{Health, Metrics};
use crate::pipeline::dispatch::{shard_queues, Dispatcher};
use crate::pipeline::emit::{EmitObserver, Emitter, JetStreamPublisher, PublishFailure, Publisher};
use crate::pipeline::ingest::{IngestObserver, Reader, ReaderSettings};
use crate::pipeline::question::{question_queues, Question, ResultBook};
use crate::pipeline::shard::{Shard, ShardObserver};
use crate::pipeline::streams::{ensure_stream, Ensured, StreamSettings};
use crate::pipeline::Outbound;
use crate::recovery::{recover, write_empty_snapshots, RecoveryReport, Streams};
use crate::refusals::Refusals;
use crate::snapshot::policy::{
    run_encoder, run_writer, FailedStage, Folding, FullWanted, Policy, SnapshotObserver,
    WriterObserver, Written,
};
use crate::snapshot::remote::Remote;
use crate::snapshot::{Kind, Store};

/// How long a graceful stop may take to drain the shards and publish every pending output.
/// Past it the process exits non-zero without committing its final snapshots: nothing is lost,
/// the next start replays from the last committed snapshots.
pub const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Rebuild the state from the stream's first message instead of refusing to start without
    /// a valid snapshot.
    pub rebuild: bool,
    /// Catalog settings (TOML keys, `rules.grants_per_account_max`) whose change since the
    /// snapshots the operator accepts knowingly (`run --accept-catalog-change`).
    pub accept_catalog_changes: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub recovery: RecoveryReport,
    pub outputs_published: u64,
    pub snapshots_written: usize,
    pub last_applied_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("connecting to NATS at {urls}: {message}")]
    Connect { urls: String, message: String },
    #[error(transparent)]
    Stream(#[from] crate::pipeline::streams::StreamError),
    #[error(transparent)]
    Recovery(#[from] crate::recovery::RecoveryError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Ingest(#[from] crate::pipeline::ingest::IngestError),
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
    #[error("{0}")]
    Other(String),
}

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

/// The connection options of `[nats]` (servers aside): name, timeouts, reconnecting forever
/// with backoff, authentication and TLS.
async fn connect_options(
    config: &Config,
    name: &str,
) -> Result<async_nats::ConnectOptions, ProcessorError> {
    let nats = &config.nats;
    let fail = |message: String| ProcessorError::Connect {
        urls: nats.urls.join(","),
        message,
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(nats.connect_timeout)
        .request_timeout(Some(nats.request_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .require_tls(nats.tls_required);
    let delay_max = nats.reconnect_delay_max;
    options = options.reconnect_delay_callback(move |attempts| {
        Duration::from_millis(50 * 2u64.saturating_pow(attempts.min(16) as u32)).min(delay_max)
    });
    options = match &nats.auth {
        NatsAuth::None => options,
        NatsAuth::Token(token) => options.token(token.clone()),
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::NkeySeedFile(path) => {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
            options.nkey(seed.trim().to_string())
        }
        NatsAuth::CredsFile(path) => options
            .credentials_file(path)
            .await
            .map_err(|e| fail(format!("reading {}: {e}", path.display())))?,
    };
    if let Some(ca) = &nats.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert_file, &nats.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

/// Connects `options` to the configured servers.
async fn connect_to(
    config: &Config,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, ProcessorError> {
    let nats = &config.nats;
    let fail = |message: String| ProcessorError::Connect {
        urls: nats.urls.join(","),
        message,
    };
    let addresses: Vec<async_nats::ServerAddr> = nats
        .urls
        .iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| fail(format!("{u}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    options
        .connect(addresses)
        .await
        .map_err(|e| fail(e.to_string()))
}

/// The kind of readiness problem failing ticks raise.
const TICKS_FAILING: &str = "ticks";

/// Tick intervals that may fail in a row before the processor says it is not ready (at once
/// when the server refused the tick subject: that does not heal by itself).
const TICK_FAILURES_UNREADY: u64 = 3;

/// What the tick publisher's intervals do to the metrics and readiness: without ticks no
/// period ends and no grant expires, so failing ticks make `/readyz` 503 naming the error.
fn tick_outcomes(
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

/// `error`, with what the NATS server refused this process when it refused anything: the
/// timeouts a missing permission or wrong credentials cause say nothing of the cause.
fn explain_refusals(refusals: &Refusals, error: ProcessorError) -> ProcessorError {
    let message = error.to_string();
    let annotated = refusals.annotate(&message);
    if annotated == message {
        error
    } else {
        ProcessorError::Other(annotated)
    }
}

/// What the processor's connection reports to the rest of it, from the client's events.
#[derive(Clone)]
pub struct ConnectionEvents {
    pub metrics: Metrics,
    pub health: Health,
    /// Counts connections (the emitter resends unacked outputs of an older one first).
    pub epoch: Arc<AtomicU64>,
    /// The same count, for the reader to recreate its consumer on a reconnect.
    pub connections: Arc<tokio::sync::watch::Sender<u64>>,
    /// What the server refused (permissions, credentials), to explain the timeouts they cause.
    pub refusals: Refusals,
}

/// Connects with the configured authentication and TLS; reconnects forever, reporting to
/// `events`.
pub async fn connect(
    config: &Config,
    events: ConnectionEvents,
) -> Result<async_nats::Client, ProcessorError> {
    let options = connect_options(config, &config.nats.name)
        .await?
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                if let Some(refusal) = events.refusals.record(&event) {
                    tracing::error!(
                        refusal = refusal.text(),
                        "the NATS server refused a request; a permissions violation means \
                         the processor's user lacks that permission (config/nats-server.conf \
                         lists what it needs), an authorization violation that its credentials \
                         are wrong"
                    );
                    return;
                }
                match event {
                    async_nats::Event::Connected => {
                        let count = events.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                        events.connections.send_replace(count);
                        tracing::info!("connected to NATS");
                        events.metrics.nats_reconnects();
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting");
                        events.health.set_ready(false, "disconnected from NATS");
                    }
                    async_nats::Event::ServerError(error) => {
                        tracing::error!(%error, "the NATS server reported an error");
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        });
    connect_to(config, options).await
}

/// A second connection with the same settings, named `name` (the service's: its requests
/// never queue behind the input stream's deliveries).
pub async fn connect_plain(
    config: &Config,
    name: &str,
) -> Result<async_nats::Client, ProcessorError> {
    let options = connect_options(config, name)
        .await?
        .event_callback(|event| async move {
            tracing::info!(event = %event, "NATS event (service connection)");
        });
    connect_to(config, options).await
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
    type Ack = std::pin::Pin<Box<dyn Future<Output = Result<u64, PublishFailure>> + Send>>;

    async fn publish(&self, output: &Outbound) -> Result<Self::Ack, PublishFailure> {
        if !self.fence.holds() {
            return Err(PublishFailure(
                "the lease on the streams may be lost: not publishing".into(),
            ));
        }
        if self.already.contains(&output.id) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Box::pin(std::future::ready(Ok(0))));
        }
        self.inner.publish(output).await
    }
}

// ----------------------------------------------------------------- metrics observers

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

struct EmitMetrics(Metrics);

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

struct IngestMetrics(Metrics);

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

struct PauseMetrics(Metrics);

impl SnapshotObserver for PauseMetrics {
    fn paused(&mut self, _partition: u32, elapsed: Duration) {
        self.0.observe_snapshot_pause(elapsed.as_secs_f64());
    }
}

struct WriteMetrics {
    metrics: Metrics,
    health: Health,
    written_at: Arc<Mutex<HashMap<u32, WallInstant>>>,
    /// `snapshot.failures_unready`.
    failures_unready: u64,
    /// `snapshot.object_store`: the bucket mirroring the directory, and the directory.
    mirror: Option<(Remote, Store)>,
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
        if let Some((remote, store)) = &self.mirror {
            let started = std::time::Instant::now();
            match remote.mirror(store, partition) {
                Ok(done) => tracing::info!(
                    partition,
                    uploaded = done.uploaded,
                    deleted = done.deleted,
                    mirror_ms = started.elapsed().as_millis() as u64,
                    bucket = remote.name(),
                    "snapshots mirrored"
                ),
                Err(error) => {
                    tracing::warn!(partition, %error, "mirroring the snapshots failed; retried after the next one");
                    self.metrics.snapshot_mirror_failed();
                }
            }
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

// ----------------------------------------------------------------- run

/// Runs the processor until `shutdown` resolves (then stops gracefully) or a fatal error.
///
/// The steps, in order: observe (metrics, health), connect, recover (streams, snapshots, the
/// history check), start the threads (shards, emitter, snapshot encoder and writer, reader),
/// start the tick publisher and the monitor, serve (the NATS service), then wait; on the way
/// out: stop serving, stop reading, drain, snapshot, publish, join.
pub async fn run(
    config: Config,
    catalog: Arc<Catalog>,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, ProcessorError> {
    let partitions = config.engine.partitions;
    let shards = config.shard_count();
    let metrics = Metrics::new(partitions, shards);
    let health = Health::new();
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let api = serve_metrics(&config, &metrics, &health, &stop).await?;

    let connection_epoch = Arc::new(AtomicU64::new(0));
    let (connections_sender, connections) = tokio::sync::watch::channel(0u64);
    let refusals = Refusals::default();
    let client = connect(
        &config,
        ConnectionEvents {
            metrics: metrics.clone(),
            health: health.clone(),
            epoch: connection_epoch.clone(),
            connections: Arc::new(connections_sender),
            refusals: refusals.clone(),
        },
    )
    .await?;
    let explained = |error: ProcessorError| explain_refusals(&refusals, error);
    let server = check_server(&config, &client).await.map_err(explained)?;
    metrics.nats_server(&server);
    // Before anything touches the streams or the snapshots: one processor at a time.
    let lease = take_lease(&config, &client).await.map_err(explained)?;
    let fence = lease.fence();
    let (release_lease, release) = tokio::sync::oneshot::channel::<()>();
    let mut lease_task = tokio::spawn(lease.keep(async move {
        let _ = release.await;
    }));
    let context = jetstream::ContextBuilder::new()
        .timeout(config.nats.request_timeout)
        .max_ack_inflight(config.output.publish_window.max(1) + partitions as usize)
        // An ack dropped unawaited keeps its permit until its reply or this timeout (the
        // client's default is 30 s); the emitter polls acks before dropping them, and this
        // bounds any other case by the same timeout as every other request.
        .ack_timeout(config.nats.request_timeout)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let (store, recovered, remote) =
        recover_state(&config, &catalog, &context, &options, &refusals)
            .await
            .map_err(explained)?;
    tracing::info!(report = ?recovered.report, "recovered");
    let report = recovered.report.clone();

    let threads = start_threads(
        &config,
        &catalog,
        recovered,
        (store, remote),
        &context,
        (&metrics, &health),
        (connection_epoch, connections),
        &stop,
        fence.clone(),
    )?;
    if let Some(api) = &api {
        api.attach(Arc::new(crate::service::Desk {
            catalog: catalog.clone(),
            settings: desk_settings(&config),
            questions: threads.questions.clone(),
            health: health.clone(),
            jetstream: None,
        }));
    }
    if let Some(interval) = config.engine.tick_interval {
        let fence = fence.clone();
        tokio::spawn(crate::pipeline::ticks::run(
            context.clone(),
            config.input.subject_prefix.clone(),
            partitions,
            interval,
            stop.clone(),
            tick_outcomes(&metrics, &health, &refusals, &config.input.subject_prefix),
            move || fence.holds(),
        ));
    }
    start_monitor(&config, &context, &metrics, &health, &threads, &stop);
    let service = serve(&config, &catalog, &health, &threads).await?;

    // Wait for a stop request, or for the reader to end by itself (an error).
    let Threads {
        reader,
        reader_done,
        shards: shard_handles,
        emitter,
        writer,
        encoder,
        skipped,
        ..
    } = threads;
    tokio::select! {
        _ = shutdown => tracing::info!("stopping: draining shards, publishing pending outputs, snapshotting"),
        _ = reader_done => tracing::error!("the reader stopped; stopping the processor"),
        ended = &mut lease_task => return Err(lease_ended(ended)),
    }
    health.set_ready(false, "stopping");
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
            (reader, partitions, emitter.join(), writer.join(), encoded)
        }),
    );
    // The lease is kept while the last outputs are published, and given back once nothing
    // more will be.
    let joined = tokio::select! {
        drained = drained => drained,
        ended = &mut lease_task => return Err(lease_ended(ended)),
    };
    let _ = release_lease.send(());
    if let Ok(Err(error)) = lease_task.await {
        return Err(error.into());
    }
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

/// Step: the server checked (version, JetStream on, API level; `pipeline::server`), or a
/// refusal saying why creditflow cannot run against it.
async fn check_server(
    config: &Config,
    client: &async_nats::Client,
) -> Result<crate::pipeline::server::Server, ProcessorError> {
    // The client stores the server's INFO just before it starts handling the connection (after
    // the connected event): a flush answered proves it has.
    let flushed = tokio::time::timeout(config.nats.request_timeout, client.flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        return Err(ProcessorError::Other(
            "the NATS server did not answer a flush after connecting".into(),
        ));
    }
    let info = client.server_info();
    let context = jetstream::ContextBuilder::new()
        .timeout(config.nats.request_timeout)
        .build(client.clone());
    let reported = crate::pipeline::server::reported_api_level(&context).await;
    let server = crate::pipeline::server::Server::check(&info.version, info.jetstream, reported)
        .map_err(ProcessorError::Other)?;
    tracing::info!(
        version = %server.version,
        api_level = server.api_level,
        level_from = server.level_from.name(),
        "NATS server checked"
    );
    Ok(server)
}

/// Step: the lease on the input stream (`[lease]`), or a refusal naming its holder.
async fn take_lease(config: &Config, client: &async_nats::Client) -> Result<Lease, ProcessorError> {
    let settings = LeaseSettings {
        bucket: config.lease.bucket.clone(),
        key: config.input.stream.clone(),
        ttl: config.lease.ttl,
        replicas: config.input.replicas,
    };
    Ok(Lease::acquire(client.clone(), settings, Holder::this_process()).await?)
}

/// The processor's error when the lease task ended before the processor did.
fn lease_ended(
    ended: Result<Result<(), crate::lease::LeaseError>, tokio::task::JoinError>,
) -> ProcessorError {
    match ended {
        Ok(Err(error)) => error.into(),
        Ok(Ok(())) => ProcessorError::Other("the lease was released while running".into()),
        Err(error) => ProcessorError::Other(format!("the lease task failed: {error}")),
    }
}

/// Step: the metrics and health server, when configured, with the HTTP read API when
/// `metrics.api` (answering 503 until [`crate::http_api::Api::attach`]).
async fn serve_metrics(
    config: &Config,
    metrics: &Metrics,
    health: &Health,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Arc<crate::http_api::Api>>, ProcessorError> {
    let Some(listen) = config.metrics.listen else {
        return Ok(None);
    };
    let api = config
        .metrics
        .api
        .then(|| crate::http_api::Api::new(config.metrics.token.clone(), metrics.clone()));
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "metrics listen on a non-loopback address");
    }
    let mut stop_metrics = stop.clone();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ProcessorError::Other(format!("metrics: binding {listen}: {e}")))?;
    // The bound address (the configured port may be 0: any free port).
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%address, "metrics listening");
    let server = crate::metrics::serve_listener(
        listener,
        metrics.clone(),
        health.clone(),
        api.clone(),
        async move {
            let _ = stop_metrics.changed().await;
        },
    );
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "metrics server failed");
        }
    });
    Ok(api)
}

/// The service's settings, shared by the NATS service and the HTTP read API.
fn desk_settings(config: &Config) -> crate::service::Settings {
    crate::service::Settings {
        subject_prefix: config.service.subject_prefix.clone(),
        queue_group: config.service.queue_group.clone(),
        wait_max: config.service.wait_max,
        input_prefix: config.input.subject_prefix.clone(),
        partitions: config.engine.partitions,
        shards: config.shard_count(),
        publish_timeout: config.nats.request_timeout,
    }
}

/// Step: the streams checked or created, the snapshots loaded and proven against the streams.
async fn recover_state(
    config: &Config,
    catalog: &Catalog,
    context: &jetstream::Context,
    options: &RunOptions,
    refusals: &Refusals,
) -> Result<(Store, crate::recovery::Recovered, Option<Remote>), ProcessorError> {
    let partitions = config.engine.partitions;
    let (_, input_ensured) = ensure_stream(context, &input_stream(config)).await?;
    ensure_stream(context, &output_stream(config)).await?;
    let store = Store::open(&config.snapshot.dir, config.snapshot.keep)?;
    let remote = match &config.snapshot.object_store {
        Some(bucket) => Some(
            Remote::open(
                context,
                bucket,
                config.input.replicas,
                config.nats.request_timeout,
            )
            .await
            .map_err(ProcessorError::Other)?,
        ),
        None => None,
    };
    if input_ensured == Ensured::Created {
        write_empty_snapshots(&store, partitions)?;
    } else if let Some(remote) = &remote {
        // A stream just created has no history: objects left from another are not fetched.
        let fetched = remote
            .fetch(&store, partitions)
            .await
            .map_err(ProcessorError::Other)?;
        tracing::info!(
            bucket = remote.name(),
            files = fetched.files,
            bytes = fetched.bytes,
            "snapshots fetched from the object store"
        );
    }
    let recovered = recover(
        &Streams {
            context,
            input: &config.input.stream,
            output: &config.output.stream,
            refusals,
        },
        &store,
        catalog,
        partitions,
        options.rebuild,
        &options.accept_catalog_changes,
    )
    .await?;
    Ok((store, recovered, remote))
}

/// The threads of a running processor, and what the other steps need of them.
struct Threads {
    reader: std::thread::JoinHandle<Result<(), ProcessorError>>,
    reader_done: tokio::sync::oneshot::Receiver<()>,
    shards: Vec<std::thread::JoinHandle<Vec<Partition>>>,
    emitter: std::thread::JoinHandle<std::io::Result<crate::pipeline::emit::EmitReport>>,
    writer: std::thread::JoinHandle<Written>,
    encoder: std::thread::JoinHandle<()>,
    /// Outputs the emitter skipped as already in the output stream.
    skipped: Arc<AtomicU64>,
    /// One past the last input sequence read.
    position: Arc<AtomicU64>,
    /// The questions queue of each shard.
    questions: Vec<crossbeam::channel::Sender<Question>>,
    written_at: Arc<Mutex<HashMap<u32, WallInstant>>>,
}

/// Step: the shards (with the recovered partitions), the emitter, the snapshot encoder and
/// writer, and the reader, connected by their bounded queues.
#[allow(clippy::too_many_arguments)]
fn start_threads(
    config: &Config,
    catalog: &Arc<Catalog>,
    recovered: crate::recovery::Recovered,
    (store, remote): (Store, Option<Remote>),
    context: &jetstream::Context,
    (metrics, health): (&Metrics, &Health),
    (connection_epoch, connections): (Arc<AtomicU64>, tokio::sync::watch::Receiver<u64>),
    stop: &tokio::sync::watch::Receiver<bool>,
    fence: Fence,
) -> Result<Threads, ProcessorError> {
    let partitions = config.engine.partitions;
    let shards = config.shard_count();
    let spawn_failed =
        |what: &str, e: std::io::Error| ProcessorError::Other(format!("spawning the {what}: {e}"));
    let (shard_senders, shard_receivers) = shard_queues(shards, config.engine.queue_batches_max);
    let dispatcher = Dispatcher::new(shard_senders, config.engine.batch_size_max);
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
    let folding = (config.snapshot.deltas_max > 0).then(|| Folding {
        deltas_max: config.snapshot.deltas_max,
        ratio: f64::from(config.snapshot.fold_percent) / 100.0,
        full_wanted: full_wanted.clone(),
    });

    let deltas_wanted = folding.as_ref().map(|f| f.full_wanted.clone());
    let writer = {
        let observer = WriteMetrics {
            metrics: metrics.clone(),
            health: health.clone(),
            written_at: written_at.clone(),
            failures_unready: config.snapshot.failures_unready,
            mirror: remote.map(|remote| (remote, store.clone())),
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
    let mut by_shard: Vec<Vec<Partition>> = (0..shards).map(|_| Vec::new()).collect();
    for mut partition in recovered.partitions {
        partition.keep_journal(statement_entries);
        by_shard[crate::pipeline::shard_of(partition.number, shards)].push(partition);
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
            shards,
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
                inner: JetStreamPublisher {
                    context: context.clone(),
                },
                already: recovered.already_emitted,
                skipped: skipped.clone(),
                fence,
            },
            observer: EmitMetrics(metrics.clone()),
            window: config.output.publish_window.max(1),
            retry_backoff_max: config.output.publish_retry_backoff_max,
            shards,
            connection_epoch,
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
        let reader = Reader {
            context: context.clone(),
            settings: ReaderSettings {
                stream: config.input.stream.clone(),
                input_prefix: config.input.subject_prefix.clone(),
                partitions,
                start_seq: recovered.start_seq,
                stall_timeout: config.input.stall_timeout,
                fetch_batch_max: config.input.fetch_batch_max,
                fetch_bytes_max: config.input.fetch_bytes_max,
            },
            observer: IngestMetrics(metrics.clone()),
            position: position.clone(),
            connections,
        };
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
                            .block_on(reader.run(dispatcher, stop))
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
        encoder,
        skipped,
        position,
        questions: question_senders,
        written_at,
    })
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
    config: &Config,
    catalog: &Arc<Catalog>,
    health: &Health,
    threads: &Threads,
) -> Result<Option<ServiceThread>, ProcessorError> {
    if !config.service.enabled {
        return Ok(None);
    }
    let (started_sender, started) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let prefix = config.service.subject_prefix.clone();
    let config = config.clone();
    let catalog = catalog.clone();
    let health = health.clone();
    let questions = threads.questions.clone();
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
                        connect_plain(&config, &format!("{}-service", config.nats.name)).await?;
                    let jetstream = jetstream::ContextBuilder::new()
                        .timeout(config.nats.request_timeout)
                        .build(client.clone());
                    let desk = crate::service::Desk {
                        catalog,
                        settings: desk_settings(&config),
                        questions,
                        health,
                        jetstream: Some(jetstream),
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
