//! `creditflow run`: the processor, assembled.
//!
//! ```text
//!  JetStream input ─► reader thread ─► Dispatcher ─► shard threads ─► emitter thread ─► JetStream output
//!                         ▲                               │  │                 │
//!  tick task ─────────────┘ (publishes ticks into input)  │  └─ snapshot jobs ─► writer thread ─► files
//!                                                         └──────── watermarks ┘ (commit after acks)
//! ```
//!
//! Owns: the order of start-up and shutdown. Once per process ([`run`]): metrics and health,
//! the connection, the server check. Then either one processor owns every partition under the
//! lease on the streams ([`run_alone`]), or several share them (`cluster::run`, `cluster.enabled`);
//! either way the partitions a process owns run as a *generation* ([`generation`]: recover,
//! start the threads, serve, then on a stop or a rebalance stop reading, drain the shards,
//! snapshot every partition, publish every pending output, commit the snapshots). The files:
//! `connect.rs` (the NATS connections and the server check), `observers.rs` (what the
//! components report to the metrics and to readiness), `generation.rs`.
//!
//! Must never: start consuming before recovery has proven the snapshots and the streams agree,
//! or exit 0 while an output or a snapshot it owes is still pending.

mod connect;
pub(crate) mod generation;
mod observers;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::lease::{Holder, Lease, LeaseSettings};
use crate::metrics::{Health, Metrics};
use crate::pipeline::Layout;
use crate::recovery::RecoveryReport;
use crate::refusals::Refusals;

pub use connect::{connect, connect_plain, ConnectionEvents};
pub(crate) use observers::ShardMetrics;

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
    /// A request to the broker failed (the object store, a fence record): retried by
    /// processors sharing the partitions.
    #[error("{0}")]
    Broker(String),
    #[error("{0}")]
    Other(String),
}

impl ProcessorError {
    /// An error of the broker's that trying again may not meet (a request that timed out or
    /// found no responder while a node restarts or a leader is elected), as opposed to what
    /// the streams, the snapshots or the catalog showed, which a retry would show again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProcessorError::Recovery(crate::recovery::RecoveryError::Nats(_))
                | ProcessorError::Stream(crate::pipeline::streams::StreamError::Nats { .. })
                | ProcessorError::Broker(_)
        )
    }
}

/// What every generation of a process shares, made once at start.
pub(crate) struct Base {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    pub metrics: Metrics,
    pub health: Health,
    pub refusals: Refusals,
    /// The HTTP read API, when served: each generation attaches its desk.
    pub api: Option<Arc<crate::http_api::Api>>,
    pub client: async_nats::Client,
    /// JetStream on `client`, with the output window's ack permits.
    pub context: jetstream::Context,
    /// Counts connections (the emitter resends unacked outputs of an older one first).
    pub connection_epoch: Arc<AtomicU64>,
    /// The same count, for the reader to recreate its consumer on a reconnect.
    pub connections: tokio::sync::watch::Receiver<u64>,
    /// The server checked at start (its JetStream API level decides what may be used).
    pub server: crate::pipeline::server::Server,
}

impl Base {
    /// `error`, with what the server refused this process, if anything.
    pub fn explained(&self, error: ProcessorError) -> ProcessorError {
        connect::explain_refusals(&self.refusals, error)
    }
}

// ----------------------------------------------------------------- run

/// Runs the processor until `shutdown` resolves (then stops gracefully) or a fatal error.
///
/// The steps, in order: observe (metrics, health), connect, check the server; then one
/// processor alone under the lease on the streams, or one of several sharing the partitions
/// (`cluster.enabled`). Each runs its partitions as generations ([`generation::run`]): recover
/// (streams, snapshots, the history check), start the threads (shards, emitter, snapshot
/// encoder and writer, reader), start the tick publisher and the monitor, serve (the NATS
/// service), then wait; on the way out: stop serving, stop reading, drain, snapshot, publish,
/// join.
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
    let server = connect::check_server(&config, &client)
        .await
        .map_err(|e| connect::explain_refusals(&refusals, e))?;
    metrics.nats_server(&server);
    let context = jetstream::ContextBuilder::new()
        .timeout(config.nats.request_timeout)
        .max_ack_inflight(config.output.publish_window.max(1) + partitions as usize)
        // For this context's own publishes (the fence records and the service's commands;
        // outputs go through `pipeline::publish`): an ack dropped unawaited keeps its permit
        // until its reply or this timeout (the client's default is 30 s), bounded by the same
        // timeout as every other request.
        .ack_timeout(config.nats.request_timeout)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let base = Base {
        config,
        catalog,
        metrics,
        health,
        refusals,
        api,
        client,
        context,
        connection_epoch,
        connections,
        server,
    };
    let result = if base.config.cluster.enabled {
        crate::cluster::run(&base, &options, shutdown).await
    } else {
        run_alone(&base, &options, shutdown).await
    };
    let _ = stop_sender.send(true);
    result
}

/// One processor owning every partition, under the lease on the streams: refused while another
/// holds it; stops (non-zero) the moment it may have lost it.
async fn run_alone(
    base: &Base,
    options: &RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, ProcessorError> {
    let config = &base.config;
    // Before anything touches the streams or the snapshots: one processor at a time.
    let lease = take_lease(config, &base.client)
        .await
        .map_err(|e| base.explained(e))?;
    let fence = lease.fence();
    let (release_lease, release) = tokio::sync::oneshot::channel::<()>();
    let mut lease_task = tokio::spawn(lease.keep(async move {
        let _ = release.await;
    }));
    let layout = Arc::new(Layout::all(config.engine.partitions, config.shard_count()));

    let ran = {
        let lost = async { lease_ended((&mut lease_task).await) };
        tokio::pin!(lost);
        generation::run(
            base,
            generation::Ownership {
                layout,
                fence,
                fetch: (0..config.engine.partitions).collect(),
                epochs: Vec::new(),
                router: None,
            },
            options,
            shutdown,
            lost.as_mut(),
        )
        .await
    };
    if lease_task.is_finished() {
        // Lost while running (the generation said so), or released by nobody: either way it
        // is not ours to give back.
        return match ran {
            Err(error) => Err(error),
            Ok(_) => Err(lease_ended(lease_task.await)),
        };
    }
    // The lease is kept while the last outputs are published, and given back once nothing
    // more will be.
    let _ = release_lease.send(());
    if let Ok(Err(error)) = lease_task.await {
        return Err(error.into());
    }
    ran
}

/// Step: the lease on the input stream (`[lease]`), or a refusal naming its holder, or naming
/// the processors that share the streams' partitions (`cluster.enabled`).
async fn take_lease(config: &Config, client: &async_nats::Client) -> Result<Lease, ProcessorError> {
    let settings = LeaseSettings {
        bucket: config.lease.bucket.clone(),
        key: config.input.stream.clone(),
        ttl: config.lease.ttl,
        replicas: config.input.replicas,
    };
    let sharing = crate::cluster::members(client, &settings).await?;
    if !sharing.is_empty() {
        return Err(ProcessorError::Other(format!(
            "{} processor(s) sharing the partitions (cluster.enabled = true; instances {}) hold \
             these streams (bucket {}): refusing to run alone beside them. Stop them, or start \
             this one with cluster.enabled = true",
            sharing.len(),
            sharing.join(", "),
            settings.bucket
        )));
    }
    Ok(Lease::acquire(client.clone(), settings, Holder::this_process()).await?)
}

/// The processor's error when the lease task ended before the processor did.
pub(crate) fn lease_ended(
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
