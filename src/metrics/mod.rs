//! Prometheus metrics, and the liveness and readiness endpoints, served over HTTP.
//!
//! Owns: every metric the processor exports (names, help, labels, buckets), their text
//! encoding, the [`Health`] flags, and the small HTTP server for `GET /metrics`, `/healthz` and
//! `/readyz` ([`serve`]).
//!
//! Layout: this file holds [`Metrics`] (the registry, the labels, recording and encoding);
//! `health.rs` the [`Health`] flags and readiness problems; `http.rs` the server ([`serve`],
//! [`serve_listener`]) with its limits and content types; `tests.rs` the unit tests.
//!
//! Must never: sit on the hot path with a lock or an allocation (every labelled series is
//! created up front in [`Metrics::new`], so recording is one atomic operation on a handle
//! found by index), log per event, or let a slow or hostile HTTP client hold resources without
//! bound (connections are capped, headers and whole connections have deadlines, and keep-alive
//! is off so a connection serves one request).
//!
//! Names: `creditflow_*`, with the unit last (`_seconds`, `_bytes`, `_messages`, `_batches`)
//! and counters ending in `_total`. Events per second are not exported: Prometheus derives them,
//! e.g. `sum(rate(creditflow_messages_applied_total[1m]))`. Labels: `partition` (0-based, one
//! series per partition, so 4096 partitions give 4096 series per per-partition metric),
//! `shard`, and `reason` for consumer recreations.
//!
//! Invariants: a partition or shard outside those given to [`Metrics::new`], or an unknown
//! recreation reason, is a programmer error and panics; every series exists (at 0) from the
//! start, so `rate()` works from the first scrape.

mod health;
mod http;
#[cfg(test)]
mod tests;

pub use health::Health;
pub use http::{
    serve, serve_listener, CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_PROMETHEUS, HTTP_CONNECTIONS_MAX,
    HTTP_CONNECTION_LIFETIME_MS, HTTP_HEADER_READ_TIMEOUT_MS, HTTP_SHUTDOWN_GRACE_MS,
};

use crate::wire::input::DeadReason;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Reasons a consumer is recreated: no delivery while messages were pending, a NATS
/// reconnection, or an error from the consumer.
pub const CONSUMER_RECREATED_REASONS: [&str; 3] = ["stall", "reconnect", "error"];

/// The labels of `creditflow_snapshot_failures_total`: where a snapshot failed.
pub const SNAPSHOT_FAILURE_STAGES: [&str; 4] = ["encode", "write", "fold", "mirror"];

/// The labels of `creditflow_snapshots_written_total`: a whole partition, or only its changes.
pub const SNAPSHOT_KINDS: [&str; 2] = ["full", "delta"];

type GaugeU64 = Gauge<u64, AtomicU64>;
type GaugeF64 = Gauge<f64, AtomicU64>;

/// The connected nats-server, as checked at start-up (`pipeline::server`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    version: String,
    api_level: String,
    level_from: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointOutcomeLabel {
    endpoint: &'static str,
    outcome: &'static str,
}

/// The labels `outcome` of `creditflow_service_requests_total`: answered, or refused with the
/// micro protocol's error code (`other` for a code not listed).
pub const SERVICE_OUTCOMES: [&str; 7] = ["ok", "400", "404", "422", "500", "503", "other"];

/// The service's endpoints, in the order of their series: the queries, then the commands.
fn service_endpoints() -> impl Iterator<Item = &'static str> {
    crate::service::QUERIES
        .iter()
        .chain(crate::service::COMMANDS.iter())
        .copied()
}

/// The balance alerts (SEMANTICS §10.5) by output type, in this order in the metrics.
pub const ALERT_TYPES: [&str; 4] = [
    "balance.low",
    "balance.depleted",
    "balance.runway_low",
    "balance.recovered",
];

/// Alerts produced in the last hour of wall time: one-minute buckets, each stamped with its
/// minute (a bucket of an older minute counts nothing and is reused).
#[derive(Debug, Default)]
struct AlertWindow {
    buckets: Vec<(u64, [u64; ALERT_TYPES.len()])>,
}

impl AlertWindow {
    const MINUTES: u64 = 60;

    fn record(&mut self, index: usize, minute: u64) {
        if self.buckets.is_empty() {
            self.buckets = vec![(u64::MAX, [0; ALERT_TYPES.len()]); Self::MINUTES as usize];
        }
        let bucket = &mut self.buckets[(minute % Self::MINUTES) as usize];
        if bucket.0 != minute {
            *bucket = (minute, [0; ALERT_TYPES.len()]);
        }
        bucket.1[index] += 1;
    }

    /// Per type, the alerts of the 60 minutes up to and including `minute`.
    fn last_hour(&self, minute: u64) -> [u64; ALERT_TYPES.len()] {
        let mut sums = [0; ALERT_TYPES.len()];
        for (stamp, counts) in &self.buckets {
            if *stamp <= minute && minute - *stamp < Self::MINUTES {
                for (sum, count) in sums.iter_mut().zip(counts) {
                    *sum += count;
                }
            }
        }
        sums
    }
}

/// The index of `stage` in [`SNAPSHOT_FAILURE_STAGES`]; anything else panics (a fixed set of
/// labels keeps the series bounded).
fn failure_stage(stage: &str) -> usize {
    let index = SNAPSHOT_FAILURE_STAGES.iter().position(|s| *s == stage);
    let Some(index) = index else {
        panic!("unknown snapshot failure stage {stage:?}: use one of {SNAPSHOT_FAILURE_STAGES:?}");
    };
    index
}

fn wall_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The processor's metrics: cheap to clone (one `Arc`), shared by every thread.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    messages_applied: Vec<Counter>,
    dead_letters: Vec<Counter>,
    /// In the order of [`DeadReason::ALL`].
    dead_letter_reasons: Vec<Counter>,
    duplicates: Vec<Counter>,
    outputs_published: Counter,
    publish_retries: Counter,
    nats_reconnects: Counter,
    /// In the order of [`CONSUMER_RECREATED_REASONS`].
    consumer_recreated: Vec<Counter>,
    ticks_published: Counter,
    generations: Counter,
    partitions_owned: GaugeU64,
    /// In the order of [`SNAPSHOT_FAILURE_STAGES`].
    snapshot_failures: Vec<Counter>,
    /// In the order of [`SNAPSHOT_KINDS`].
    snapshots_written: Vec<Counter>,
    snapshot_consecutive_failures: GaugeU64,
    nats_server: Family<ServerLabel, GaugeU64>,
    /// In the order of [`ALERT_TYPES`].
    alerts: Vec<Counter>,
    alert_window: std::sync::Mutex<AlertWindow>,
    consumer_lag: GaugeU64,
    input_position: GaugeU64,
    queue_depth: Vec<GaugeU64>,
    publish_in_flight: GaugeU64,
    snapshot_age: Vec<GaugeF64>,
    snapshot_size: Vec<GaugeU64>,
    accounts: Vec<GaugeU64>,
    dedupe_entries: Vec<GaugeU64>,
    apply_batch_duration: Vec<Histogram>,
    apply_batch_size: Vec<Histogram>,
    snapshot_write_duration: Histogram,
    snapshot_pause_duration: Histogram,
    /// Per endpoint (in the order of [`service_endpoints`]), per outcome (of
    /// [`SERVICE_OUTCOMES`]).
    service_requests: Vec<Vec<Counter>>,
    /// Per endpoint.
    service_duration: Vec<Histogram>,
}

/// Registers a family labelled by partition and returns its series, one per partition.
fn per_partition<M>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    partitions: u32,
) -> Vec<M>
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
{
    let family = Family::<PartitionLabel, M>::default();
    let series = (0..partitions)
        .map(|partition| family.get_or_create_owned(&PartitionLabel { partition }))
        .collect();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family),
        None => registry.register(name, help, family),
    }
    series
}

/// Registers a family labelled by shard and returns its series, one per shard.
fn per_shard<M>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Unit,
    shards: usize,
    make: fn() -> M,
) -> Vec<M>
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
{
    let family = Family::<ShardLabel, M, fn() -> M>::new_with_constructor(make);
    let series = (0..shards)
        .map(|shard| {
            let shard = u64::try_from(shard).unwrap_or(u64::MAX);
            family.get_or_create_owned(&ShardLabel { shard })
        })
        .collect();
    registry.register_with_unit(name, help, unit, family);
    series
}

/// Apply latency per batch: 10 µs to about 5 s, doubling.
fn apply_batch_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// Messages per batch: 1 to 65536, doubling (`engine.batch_size_max` is 1024 by default).
fn apply_batch_size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

/// A service request's time in the processor: 10 µs to about 5 s, doubling.
fn service_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// Snapshot write and pause times: 1 ms to about 33 s, doubling.
fn snapshot_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn messages_unit() -> Unit {
    Unit::Other("messages".to_string())
}

impl Metrics {
    /// Every metric, with one series per partition (`0..partitions`) and per shard
    /// (`0..shards`) created at 0.
    pub fn new(partitions: u32, shards: usize) -> Metrics {
        assert!(partitions >= 1, "metrics for no partition");
        assert!(shards >= 1, "metrics for no shard");
        let mut registry = Registry::with_prefix("creditflow");
        let r = &mut registry;

        // Counters. Prometheus appends nothing: the encoder adds `_total` to counters.
        let messages_applied = per_partition(
            r,
            "messages_applied",
            "Messages applied by the engine (events and commands, dead letters and duplicates \
             included); events per second is rate() of this",
            None,
            partitions,
        );
        let dead_letters = per_partition(
            r,
            "dead_letters",
            "Messages refused as dead letters (undecodable or invalid)",
            None,
            partitions,
        );
        let by_reason = Family::<ReasonLabel, Counter>::default();
        let dead_letter_reasons = DeadReason::ALL
            .iter()
            .map(|reason| {
                by_reason.get_or_create_owned(&ReasonLabel {
                    reason: reason.name(),
                })
            })
            .collect();
        r.register(
            "dead_letter_reasons",
            "Dead letters by reason (SEMANTICS 2.1), as this process produced them: since its \
             start, the log tail replayed at start included",
            by_reason,
        );
        let by_type = Family::<TypeLabel, Counter>::default();
        let alerts = ALERT_TYPES
            .iter()
            .map(|r#type| by_type.get_or_create_owned(&TypeLabel { r#type }))
            .collect();
        r.register(
            "alerts",
            "Balance alerts by output type, as this process produced them: since its start, the \
             log tail replayed at start included",
            by_type,
        );
        let duplicates = per_partition(
            r,
            "duplicates",
            "Messages recognised as duplicates by the dedupe index and not applied again",
            None,
            partitions,
        );
        let outputs_published = Counter::default();
        r.register(
            "outputs_published",
            "Outputs published to the output stream and acknowledged",
            outputs_published.clone(),
        );
        let publish_retries = Counter::default();
        r.register(
            "publish_retries",
            "Output publishes retried after a failure or a missing ack",
            publish_retries.clone(),
        );
        let nats_reconnects = Counter::default();
        r.register(
            "nats_reconnects",
            "Reconnections of the NATS client",
            nats_reconnects.clone(),
        );
        let recreated = Family::<ReasonLabel, Counter>::default();
        let consumer_recreated = CONSUMER_RECREATED_REASONS
            .iter()
            .map(|reason| recreated.get_or_create_owned(&ReasonLabel { reason }))
            .collect();
        r.register(
            "consumer_recreated",
            "Input consumers recreated, by reason (stall, reconnect, error)",
            recreated,
        );
        let ticks_published = Counter::default();
        r.register(
            "ticks_published",
            "Tick commands published into the input stream",
            ticks_published.clone(),
        );
        let generations = Counter::default();
        r.register(
            "generations",
            "Times this processor started running its partitions: once alone; with cluster.\
             enabled, again after every change of the partitions it owns",
            generations.clone(),
        );
        let partitions_owned = GaugeU64::default();
        r.register(
            "partitions_owned",
            "Partitions this processor owns now (all of them alone; its share with cluster.enabled)",
            partitions_owned.clone(),
        );

        let failures = Family::<StageLabel, Counter>::default();
        let snapshot_failures = SNAPSHOT_FAILURE_STAGES
            .iter()
            .map(|stage| failures.get_or_create_owned(&StageLabel { stage }))
            .collect();
        r.register(
            "snapshot_failures",
            "Snapshots that could not be encoded, written or folded, by stage (encode, write, \
             fold); the last valid snapshot is kept",
            failures,
        );
        let written = Family::<KindLabel, Counter>::default();
        let snapshots_written = SNAPSHOT_KINDS
            .iter()
            .map(|kind| written.get_or_create_owned(&KindLabel { kind }))
            .collect();
        r.register(
            "snapshots_written",
            "Snapshot files written, by kind: full (a whole partition, or deltas folded into \
             one) or delta (only what changed since the snapshot before)",
            written,
        );

        // Gauges.
        let snapshot_consecutive_failures = GaugeU64::default();
        r.register(
            "snapshot_consecutive_failures",
            "Snapshot failures since the last snapshot written (0 when the last one succeeded)",
            snapshot_consecutive_failures.clone(),
        );
        let nats_server = Family::<ServerLabel, GaugeU64>::default();
        r.register(
            "nats_server_info",
            "The nats-server connected to at start-up (1): its version and JetStream API level, \
             and whether the level is the server's answer or its version's lowest",
            nats_server.clone(),
        );
        let consumer_lag = GaugeU64::default();
        r.register_with_unit(
            "consumer_lag",
            "Input stream's last sequence minus the last applied sequence",
            messages_unit(),
            consumer_lag.clone(),
        );
        let input_position = GaugeU64::default();
        r.register(
            "input_position",
            "Stream sequence of the last input message read and handed to the shards",
            input_position.clone(),
        );
        let queue_depth = per_shard(
            r,
            "queue_depth",
            "Batches waiting in the shard's queue",
            Unit::Other("batches".to_string()),
            shards,
            GaugeU64::default,
        );
        let publish_in_flight = GaugeU64::default();
        r.register_with_unit(
            "publish_in_flight",
            "Output publishes sent and awaiting their ack",
            messages_unit(),
            publish_in_flight.clone(),
        );
        let snapshot_age = per_partition(
            r,
            "snapshot_age",
            "Time since the partition's last snapshot was written",
            Some(Unit::Seconds),
            partitions,
        );
        let snapshot_size = per_partition(
            r,
            "snapshot_size",
            "Size of the partition's last snapshot file",
            Some(Unit::Bytes),
            partitions,
        );
        let accounts = per_partition(
            r,
            "accounts",
            "Accounts held by the partition",
            None,
            partitions,
        );
        let dedupe_entries = per_partition(
            r,
            "dedupe_entries",
            "Message ids remembered by the partition's dedupe index",
            None,
            partitions,
        );

        // Histograms.
        let apply_batch_duration = per_shard(
            r,
            "apply_batch_duration",
            "Time for a shard to apply one batch",
            Unit::Seconds,
            shards,
            apply_batch_duration_histogram,
        );
        let apply_batch_size = per_shard(
            r,
            "apply_batch_size",
            "Messages per applied batch (the sum is the messages a shard applied)",
            messages_unit(),
            shards,
            apply_batch_size_histogram,
        );
        let snapshot_write_duration = snapshot_duration_histogram();
        r.register_with_unit(
            "snapshot_write_duration",
            "Time to write a snapshot to disk (encode, write, fsync, rename)",
            Unit::Seconds,
            snapshot_write_duration.clone(),
        );
        let snapshot_pause_duration = snapshot_duration_histogram();
        r.register_with_unit(
            "snapshot_pause_duration",
            "Time ingest stopped for a snapshot",
            Unit::Seconds,
            snapshot_pause_duration.clone(),
        );

        let requests = Family::<EndpointOutcomeLabel, Counter>::default();
        let service_requests = service_endpoints()
            .map(|endpoint| {
                SERVICE_OUTCOMES
                    .iter()
                    .map(|&outcome| {
                        requests.get_or_create_owned(&EndpointOutcomeLabel { endpoint, outcome })
                    })
                    .collect()
            })
            .collect();
        r.register(
            "service_requests",
            "Requests this processor's service endpoints answered, by endpoint and outcome (ok, \
             or the reply's error code); a request forwarded to its partition's owner is \
             counted where it arrived",
            requests,
        );
        let durations = Family::<EndpointLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            service_duration_histogram,
        );
        let service_duration = service_endpoints()
            .map(|endpoint| durations.get_or_create_owned(&EndpointLabel { endpoint }))
            .collect();
        r.register_with_unit(
            "service_request_duration",
            "A request's time in this processor: from its delivery to its endpoint until its \
             reply is handed to the service's connection (the broker's part of the round trip \
             is not in it)",
            Unit::Seconds,
            durations,
        );

        Metrics {
            inner: Arc::new(Inner {
                registry,
                messages_applied,
                dead_letters,
                dead_letter_reasons,
                duplicates,
                outputs_published,
                publish_retries,
                nats_reconnects,
                consumer_recreated,
                ticks_published,
                generations,
                partitions_owned,
                snapshot_failures,
                snapshots_written,
                snapshot_consecutive_failures,
                nats_server,
                alerts,
                alert_window: std::sync::Mutex::new(AlertWindow::default()),
                consumer_lag,
                input_position,
                queue_depth,
                publish_in_flight,
                snapshot_age,
                snapshot_size,
                accounts,
                dedupe_entries,
                apply_batch_duration,
                apply_batch_size,
                snapshot_write_duration,
                snapshot_pause_duration,
                service_requests,
                service_duration,
            }),
        }
    }

    fn partition<M>(series: &[M], partition: u32) -> &M {
        let index = usize::try_from(partition).unwrap_or(usize::MAX);
        assert!(
            index < series.len(),
            "partition {partition} out of range: metrics were made for {} partitions",
            series.len()
        );
        &series[index]
    }

    fn shard<M>(series: &[M], shard: usize) -> &M {
        assert!(
            shard < series.len(),
            "shard {shard} out of range: metrics were made for {} shards",
            series.len()
        );
        &series[shard]
    }

    // Counters.

    pub fn messages_applied(&self, partition: u32, n: u64) {
        Self::partition(&self.inner.messages_applied, partition).inc_by(n);
    }

    pub fn dead_letters(&self, partition: u32, n: u64) {
        Self::partition(&self.inner.dead_letters, partition).inc_by(n);
    }

    pub fn duplicates(&self, partition: u32, n: u64) {
        Self::partition(&self.inner.duplicates, partition).inc_by(n);
    }

    pub fn outputs_published(&self, n: u64) {
        self.inner.outputs_published.inc_by(n);
    }

    pub fn publish_retries(&self, n: u64) {
        self.inner.publish_retries.inc_by(n);
    }

    /// One dead letter of `reason` (a [`DeadReason`] name; another name panics).
    pub fn dead_letter_reason(&self, reason: &str) {
        let index = DeadReason::ALL.iter().position(|r| r.name() == reason);
        let Some(index) = index else {
            panic!("unknown dead-letter reason {reason:?}");
        };
        self.inner.dead_letter_reasons[index].inc();
    }

    /// One alert produced, of `kind` (one of [`ALERT_TYPES`]; anything else is not counted).
    pub fn alert(&self, kind: &str) {
        let Some(index) = ALERT_TYPES.iter().position(|t| *t == kind) else {
            return;
        };
        self.inner.alerts[index].inc();
        if let Ok(mut window) = self.inner.alert_window.lock() {
            window.record(index, wall_minute());
        }
    }

    /// Per alert type ([`ALERT_TYPES`]), the alerts produced in the last hour of wall time.
    pub fn alerts_last_hour(&self) -> [u64; ALERT_TYPES.len()] {
        self.inner
            .alert_window
            .lock()
            .map_or([0; ALERT_TYPES.len()], |w| w.last_hour(wall_minute()))
    }

    pub fn nats_reconnects(&self) {
        self.inner.nats_reconnects.inc();
    }

    /// The server checked at start-up: one series at 1.
    pub fn nats_server(&self, server: &crate::pipeline::server::Server) {
        self.inner.nats_server.clear();
        self.inner
            .nats_server
            .get_or_create(&ServerLabel {
                version: server.version.to_string(),
                api_level: server.api_level.to_string(),
                level_from: server.level_from.name().to_string(),
            })
            .set(1);
    }

    /// `reason` is one of [`CONSUMER_RECREATED_REASONS`]; anything else panics (a fixed set of
    /// labels keeps the series bounded).
    pub fn consumer_recreated(&self, reason: &str) {
        let index = CONSUMER_RECREATED_REASONS.iter().position(|r| *r == reason);
        let Some(index) = index else {
            panic!("unknown consumer recreation reason {reason:?}: use one of {CONSUMER_RECREATED_REASONS:?}");
        };
        self.inner.consumer_recreated[index].inc();
    }

    /// A generation starts with `partitions` owned.
    pub fn generation_started(&self, partitions: usize) {
        self.inner.generations.inc();
        self.inner.partitions_owned.set(partitions as u64);
    }

    pub fn set_partitions_owned(&self, partitions: usize) {
        self.inner.partitions_owned.set(partitions as u64);
    }

    pub fn ticks_published(&self) {
        self.inner.ticks_published.inc();
    }

    /// A snapshot failed at `stage` (one of [`SNAPSHOT_FAILURE_STAGES`]; anything else
    /// panics), the `consecutive`-th since the last one written.
    pub fn snapshot_failed(&self, stage: &str, consecutive: u64) {
        self.inner.snapshot_failures[failure_stage(stage)].inc();
        self.inner.snapshot_consecutive_failures.set(consecutive);
    }

    /// Mirroring a partition's snapshots to the object store failed (`snapshot::remote`): the
    /// local snapshot stands, so the run of snapshot failures is not touched.
    pub fn snapshot_mirror_failed(&self) {
        self.inner.snapshot_failures[failure_stage("mirror")].inc();
    }

    /// A snapshot file of `kind` (one of [`SNAPSHOT_KINDS`]; anything else panics) was
    /// written: the run of failures, if any, is over.
    pub fn snapshot_written(&self, kind: &str) {
        let Some(index) = SNAPSHOT_KINDS.iter().position(|k| *k == kind) else {
            panic!("unknown snapshot kind {kind:?}: use one of {SNAPSHOT_KINDS:?}");
        };
        self.inner.snapshots_written[index].inc();
        self.inner.snapshot_consecutive_failures.set(0);
    }

    // Gauges.

    /// The input stream's last sequence minus the last applied sequence.
    /// The last input sequence read and handed to the shards.
    pub fn set_input_position(&self, sequence: u64) {
        self.inner.input_position.set(sequence);
    }

    pub fn set_consumer_lag(&self, messages: u64) {
        self.inner.consumer_lag.set(messages);
    }

    pub fn set_queue_depth(&self, shard: usize, batches: u64) {
        Self::shard(&self.inner.queue_depth, shard).set(batches);
    }

    pub fn set_publish_in_flight(&self, n: u64) {
        self.inner.publish_in_flight.set(n);
    }

    pub fn set_snapshot_age_seconds(&self, partition: u32, seconds: f64) {
        Self::partition(&self.inner.snapshot_age, partition).set(seconds);
    }

    pub fn set_snapshot_size_bytes(&self, partition: u32, bytes: u64) {
        Self::partition(&self.inner.snapshot_size, partition).set(bytes);
    }

    pub fn set_accounts(&self, partition: u32, n: u64) {
        Self::partition(&self.inner.accounts, partition).set(n);
    }

    pub fn set_dedupe_entries(&self, partition: u32, n: u64) {
        Self::partition(&self.inner.dedupe_entries, partition).set(n);
    }

    // Histograms.

    /// One applied batch: its latency, and its size (whose sum counts the shard's messages).
    pub fn observe_apply_batch(&self, shard: usize, seconds: f64, messages: usize) {
        Self::shard(&self.inner.apply_batch_duration, shard).observe(seconds);
        // Batch sizes are far below 2^53, so the conversion is exact.
        Self::shard(&self.inner.apply_batch_size, shard).observe(messages as f64);
    }

    /// One request of the service endpoint `endpoint` (a name of `QUERIES` or `COMMANDS`)
    /// answered: `code` is its error code (`None`: answered), `seconds` its time in the
    /// processor. An unknown endpoint is a programmer error and panics.
    pub fn service_request(&self, endpoint: &str, code: Option<u16>, seconds: f64) {
        let index = service_endpoints()
            .position(|e| e == endpoint)
            .unwrap_or_else(|| panic!("no service endpoint {endpoint}"));
        // In the order of SERVICE_OUTCOMES.
        let outcome = match code {
            None => 0,
            Some(400) => 1,
            Some(404) => 2,
            Some(422) => 3,
            Some(500) => 4,
            Some(503) => 5,
            Some(_) => 6,
        };
        self.inner.service_requests[index][outcome].inc();
        self.inner.service_duration[index].observe(seconds);
    }

    pub fn observe_snapshot_write(&self, seconds: f64) {
        self.inner.snapshot_write_duration.observe(seconds);
    }

    /// How long ingest stopped for a snapshot.
    pub fn observe_snapshot_pause(&self, seconds: f64) {
        self.inner.snapshot_pause_duration.observe(seconds);
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry)
        {
            // Writing into a String cannot fail, and every name and label here is ours.
            panic!("encoding metrics failed: {error}");
        }
        text
    }

    /// Every metric in the OpenMetrics text format, ending with `# EOF`.
    pub fn render_openmetrics(&self) -> String {
        let mut text = String::new();
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
        {
            panic!("encoding metrics failed: {error}");
        }
        text
    }
}
