//! NATS edges: connecting, the processor's streams, reading a stream back, and the publisher
//! with a bounded window of pending acks.
//!
//! Owns: the wire contract's names (streams, subject prefixes), [`publish_loop`] (one per
//! connection), [`read_stream`] (an ephemeral, ack-less pull consumer that reads a stream in
//! sequence order).
//!
//! Must never: hold more than `window` publishes without their acks per connection (the
//! bound is what makes loadgen behave like a real producer), or swallow a publish error: each
//! is counted and reported, and fails the run.
//!
//! Invariants: messages handed to one connection are published in the order received, so a
//! partition's messages (always on the same connection) reach the stream in generation order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::{self, consumer, stream, Context};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use creditflow::wire::subject::SubjectKind;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::measure::Latency;
use crate::schedule::Nanos;
use crate::workload::Planned;

/// The processor's input stream and its partition subjects `creditflow.in.<p>.<kind>`.
pub const INPUT_STREAM: &str = "CREDITFLOW_IN";
pub const INPUT_PREFIX: &str = "creditflow.in";
/// The processor's output stream; outputs go to `creditflow.out.<p>.<type>`.
pub const OUTPUT_STREAM: &str = "CREDITFLOW_OUT";
pub const OUTPUT_PREFIX: &str = "creditflow.out";
/// Messages asked for per pull request when reading a stream back.
pub const READ_BATCH: usize = 1000;
/// A stream read that receives nothing for this long fails (the server is gone or stuck).
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The monotonic clock of a run: nanoseconds since its start.
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    start: std::time::Instant,
}

impl RunClock {
    pub fn start() -> RunClock {
        RunClock {
            start: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    pub fn instant_at(&self, offset: Nanos) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start + Duration::from_nanos(offset))
    }
}

pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("loadgen")
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// A JetStream context whose own in-flight limit is above loadgen's window (loadgen bounds
/// the window itself, so it can record each ack's latency).
pub fn jetstream(client: async_nats::Client, window: usize) -> Context {
    jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_ack_inflight(window.max(1) + 16)
        .build(client)
}

/// The stream `name` on `subjects`, created (file storage, one replica, limits retention) when
/// `create` is set and it does not exist.
pub async fn ensure_stream(
    js: &Context,
    name: &str,
    subjects: &str,
    create: bool,
    duplicate_window: Duration,
) -> anyhow::Result<stream::Stream> {
    if let Ok(stream) = js.get_stream(name).await {
        return Ok(stream);
    }
    if !create {
        bail!(
            "stream {name} does not exist; start the processor first (it creates it), or pass \
             --create-streams"
        );
    }
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![subjects.to_string()],
        storage: stream::StorageType::File,
        num_replicas: 1,
        duplicate_window,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {name}"))
}

/// Publish outcomes and ack latencies of one or more connections.
#[derive(Clone, Debug, Default)]
pub struct PublishStats {
    /// Handed to a connection.
    pub sent: u64,
    /// Acknowledged by the stream (duplicates included).
    pub acked: u64,
    /// Acks that said the broker's duplicate window dropped the message.
    pub broker_duplicates: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Highest stream sequence acknowledged.
    pub last_sequence: u64,
    /// From scheduled time to ack (open loop); from the send for `max` rate.
    pub ack_latency: Latency,
    /// The same, reset every second by the live line.
    pub interval_ack_latency: Latency,
}

pub type SharedPublishStats = Arc<Mutex<PublishStats>>;

/// What a connection sends: the message and, for `max` rate, when it left the generator (the
/// latency then starts there).
pub struct Outgoing {
    pub planned: Planned,
    pub start: Nanos,
}

/// Publishes everything `rx` yields on `js`, at most `window` without an ack, until `rx`
/// closes; then waits for the remaining acks.
pub async fn publish_loop(
    js: Context,
    subjects: Arc<PartitionSubjects>,
    mut rx: mpsc::Receiver<Outgoing>,
    window: usize,
    clock: RunClock,
    stats: SharedPublishStats,
) {
    assert!(window > 0, "a publishing window of at least one message");
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        tokio::select! {
            biased;
            Some((start, result)) = inflight.next(), if !inflight.is_empty() => {
                record_ack(&stats, clock, start, result);
            }
            next = rx.recv(), if open && inflight.len() < window => {
                let Some(outgoing) = next else {
                    open = false;
                    continue;
                };
                let Outgoing { planned, start } = outgoing;
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, planned.msg_id.as_str());
                let subject = subjects.of(planned.partition, planned.kind.subject_kind());
                match js.publish_with_headers(subject, headers, planned.payload).await {
                    Ok(ack) => inflight.push(async move { (start, ack.await) }),
                    Err(err) => record_ack(&stats, clock, start, Err(err)),
                }
            }
        }
    }
}

fn record_ack(
    stats: &SharedPublishStats,
    clock: RunClock,
    start: Nanos,
    result: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) {
    let now = clock.now();
    let mut stats = stats.lock().expect("stats lock");
    match result {
        Ok(ack) => {
            stats.acked += 1;
            if ack.duplicate {
                stats.broker_duplicates += 1;
            }
            stats.last_sequence = stats.last_sequence.max(ack.sequence);
            stats.ack_latency.record_scheduled(start, now);
            stats.interval_ack_latency.record_scheduled(start, now);
        }
        Err(err) => {
            stats.errors += 1;
            if stats.first_error.is_none() {
                stats.first_error = Some(err.to_string());
            }
        }
    }
}

/// One message read back from a stream.
#[derive(Clone, Debug)]
pub struct Stored {
    pub sequence: u64,
    pub subject: String,
    pub payload: Bytes,
    /// The stream's receive time, in whole milliseconds since the epoch.
    pub received_ms: i64,
    pub msg_id: Option<String>,
}

/// The stream's timestamp of a message in whole milliseconds (floor), as the processor's
/// envelope carries it.
pub fn received_ms(info: &jetstream::message::Info<'_>) -> i64 {
    info.published.unix_timestamp_nanos().div_euclid(1_000_000) as i64
}

/// An ephemeral pull consumer without acks over `stream`, from sequence `from`.
pub async fn reader(
    js: &Context,
    stream: &str,
    from: u64,
) -> anyhow::Result<consumer::Consumer<consumer::pull::Config>> {
    let stream = js
        .get_stream(stream)
        .await
        .with_context(|| format!("opening stream {stream}"))?;
    stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: if from <= 1 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                }
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("creating a reader consumer")
}

/// Reads `stream` in sequence order from its first message up to sequence `to` (inclusive, or
/// the last message present if that was deleted), calling `each` per message.
pub async fn read_stream(
    js: &Context,
    stream_name: &str,
    to: u64,
    mut each: impl FnMut(Stored),
) -> anyhow::Result<u64> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("opening stream {stream_name}"))?;
    let state = stream.info().await?.state.clone();
    if state.messages == 0 || to == 0 || state.first_sequence > to {
        return Ok(0);
    }
    let consumer = reader(js, stream_name, 1).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(READ_BATCH)
        .messages()
        .await
        .context("reading a stream")?;
    let mut count = 0;
    loop {
        let next = tokio::time::timeout(READ_IDLE_TIMEOUT, messages.next())
            .await
            .map_err(|_| anyhow!("reading {stream_name}: nothing for {READ_IDLE_TIMEOUT:?}"))?;
        let message = next
            .ok_or_else(|| anyhow!("reading {stream_name}: the consumer ended"))?
            .map_err(|e| anyhow!("reading {stream_name}: {e}"))?;
        let info = message
            .info()
            .map_err(|e| anyhow!("a message without JetStream info: {e}"))?;
        let sequence = info.stream_sequence;
        let pending = info.pending;
        if sequence > to {
            break;
        }
        let received = received_ms(&info);
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string());
        each(Stored {
            sequence,
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
            received_ms: received,
            msg_id,
        });
        count += 1;
        if sequence >= to || pending == 0 {
            break;
        }
    }
    Ok(count)
}

/// The last sequence of `stream` now.
pub async fn last_sequence(js: &Context, stream_name: &str) -> anyhow::Result<u64> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("opening stream {stream_name}"))?;
    Ok(stream.info().await?.state.last_sequence)
}

/// Subjects `<prefix>.<p>.<kind>` for every partition and kind, made once.
pub struct PartitionSubjects(Vec<Subject>);

impl PartitionSubjects {
    pub fn of(&self, partition: u32, kind: SubjectKind) -> Subject {
        let kinds = SubjectKind::ALL.len();
        let index = SubjectKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind is in ALL");
        self.0[partition as usize * kinds + index].clone()
    }
}

pub fn partition_subjects(prefix: &str, partitions: u32) -> Arc<PartitionSubjects> {
    Arc::new(PartitionSubjects(
        (0..partitions)
            .flat_map(|p| {
                SubjectKind::ALL
                    .map(|kind| Subject::from(creditflow::wire::subject::subject(prefix, p, kind)))
            })
            .collect(),
    ))
}
