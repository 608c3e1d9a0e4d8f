//! The reader: consumes the input stream in order and hands messages to the dispatcher.
//!
//! Owns: the JetStream consumer (an ordered pull consumer: ephemeral, no acks, recreated by
//! the client at the right sequence when it misses heartbeats), the next expected stream
//! sequence, and the watchdog that recreates a consumer that stops delivering while the stream
//! has messages for it, or at once when the connection to NATS comes back (a restarted server
//! may have lost the consumer; waiting for missed heartbeats or the stall timer took 10-15 s).
//!
//! Must never: skip a sequence (a gap in an unfiltered consumer over a stream that denies
//! deletes is lost history: the reader stops with the evidence), apply a redelivered message
//! twice (it drops any sequence below the next expected one), or rely on acks for correctness:
//! the snapshot, not the consumer, holds the position (SPEC §8; reference/reliability.md §2.3).
//!
//! Invariants: messages leave in strictly increasing, contiguous stream sequence order, starting
//! at `start_seq`; `next_seq` is one past the last message handed to the dispatcher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};

use super::dispatch::{Dispatcher, ShardGone};
use super::{pipeline_route, Inbound};
use crate::time::Instant;

#[derive(Clone, Debug)]
pub struct ReaderSettings {
    pub stream: String,
    pub input_prefix: String,
    pub partitions: u32,
    /// First stream sequence to read (one past what the snapshots hold).
    pub start_seq: u64,
    /// Recreate the consumer after this long without a message while the stream has more.
    pub stall_timeout: Duration,
    /// Messages per pull request.
    pub fetch_batch_max: usize,
    /// Bytes per pull request at most.
    pub fetch_bytes_max: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "stream {stream} skipped from sequence {expected} to {got}: messages are missing from the \
         log (deleted, purged or lost); refusing to continue, since skipping would lose billing \
         events. Investigate the stream, then restart."
    )]
    Gap {
        stream: String,
        expected: u64,
        got: u64,
    },
    #[error(transparent)]
    ShardGone(#[from] ShardGone),
}

/// What the reader reports as it runs (metrics).
pub trait IngestObserver: Send {
    fn consumer_recreated(&mut self, reason: &str);
}

pub struct NoIngestObserver;

impl IngestObserver for NoIngestObserver {
    fn consumer_recreated(&mut self, _: &str) {}
}

/// One past the last sequence handed on; shared so the monitor can compute the lag.
pub type Position = Arc<AtomicU64>;

pub struct Reader<O: IngestObserver> {
    pub context: jetstream::Context,
    pub settings: ReaderSettings,
    pub observer: O,
    pub position: Position,
    /// Counts connections to NATS (changed by the client's `Connected` event): each change
    /// after the first recreates the consumer.
    pub connections: tokio::sync::watch::Receiver<u64>,
}

/// Longest wait between attempts to open the consumer: short, so the reader is back within
/// about a second of JetStream answering again after a broker restart.
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Resolves when the connection count changes; never once its sender is gone.
pub(super) async fn next_connection(connections: &mut tokio::sync::watch::Receiver<u64>) {
    if connections.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// After a failed open: waits `backoff` (cut short by a new connection or a stop) and doubles
/// it, up to [`REOPEN_BACKOFF_MAX`]. Both readers retry their consumers this way.
pub(super) async fn reopen_pause(
    backoff: &mut Duration,
    connections: &mut tokio::sync::watch::Receiver<u64>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = next_connection(connections) => {}
        _ = stop.changed() => {}
    }
    *backoff = (*backoff * 2).min(REOPEN_BACKOFF_MAX);
}

/// What a delivered message becomes: its stream sequence and stored time read from the reply
/// subject directly (`wire::ack_subject`), its subject and payload moved out, not cloned.
/// `None` (logged) for a message without JetStream metadata.
pub(crate) fn inbound(message: jetstream::Message, settings: &ReaderSettings) -> Option<Inbound> {
    let delivery = message
        .message
        .reply
        .as_deref()
        .and_then(crate::wire::ack_subject::delivery);
    let Some(delivery) = delivery else {
        tracing::warn!(subject = %message.subject, "a message without JetStream metadata on an input consumer; ignored");
        return None;
    };
    let jetstream::Message { message, .. } = message;
    Some(Inbound {
        seq: delivery.stream_sequence,
        route: pipeline_route(
            &settings.input_prefix,
            &message.subject,
            settings.partitions,
        ),
        subject: message.subject,
        payload: message.payload,
        received: Some(Instant(delivery.published_ms)),
    })
}

impl<O: IngestObserver> Reader<O> {
    /// Reads until `stop` resolves, then flushes the dispatcher and stops the shards. Runs on a
    /// thread of its own (dispatching blocks when the shards are behind).
    pub async fn run(
        mut self,
        mut dispatcher: Dispatcher,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), IngestError> {
        let mut next_seq = self.settings.start_seq.max(1);
        self.position.store(next_seq, Ordering::Release);
        let mut backoff = Duration::from_millis(100);
        self.connections.borrow_and_update();
        'consumers: loop {
            if *stop.borrow() {
                break;
            }
            let mut messages = match self.open(next_seq).await {
                Ok(messages) => {
                    backoff = Duration::from_millis(100);
                    messages
                }
                Err(error) => {
                    tracing::warn!(%error, next_seq, "cannot open the input consumer; retrying");
                    reopen_pause(&mut backoff, &mut self.connections, &mut stop).await;
                    continue;
                }
            };
            loop {
                // Take what is ready without waiting; when nothing is, send partial batches on,
                // so a quiet stream never leaves messages waiting for a full batch.
                let item = match messages.next().now_or_never() {
                    Some(item) => item,
                    None => {
                        dispatcher.flush()?;
                        tokio::select! {
                            item = messages.next() => item,
                            _ = tokio::time::sleep(self.settings.stall_timeout) => {
                                if self.stalled(next_seq).await {
                                    tracing::warn!(next_seq, "input consumer stalled with messages pending; recreating it");
                                    self.observer.consumer_recreated("stall");
                                    continue 'consumers;
                                }
                                continue;
                            }
                            _ = next_connection(&mut self.connections) => {
                                tracing::info!(next_seq, "reconnected to NATS; recreating the input consumer");
                                self.observer.consumer_recreated("reconnect");
                                continue 'consumers;
                            }
                            _ = stop.changed() => break 'consumers,
                        }
                    }
                };
                let message = match item {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::warn!(%error, next_seq, "input consumer failed; recreating it");
                        self.observer.consumer_recreated("error");
                        continue 'consumers;
                    }
                    None => {
                        self.observer.consumer_recreated("ended");
                        continue 'consumers;
                    }
                };
                let Some(inbound) = inbound(message, &self.settings) else {
                    continue;
                };
                let seq = inbound.seq;
                if seq < next_seq {
                    // A redelivery (the ordered consumer was recreated behind us).
                    continue;
                }
                if seq > next_seq {
                    return Err(IngestError::Gap {
                        stream: self.settings.stream.clone(),
                        expected: next_seq,
                        got: seq,
                    });
                }
                dispatcher.push(inbound)?;
                next_seq = seq + 1;
                self.position.store(next_seq, Ordering::Release);
                if *stop.borrow() {
                    break 'consumers;
                }
            }
        }
        dispatcher.stop()?;
        Ok(())
    }

    async fn open(
        &self,
        start: u64,
    ) -> Result<jetstream::consumer::pull::Ordered, Box<dyn std::error::Error + Send + Sync>> {
        let stream = self.context.get_stream(&self.settings.stream).await?;
        let deliver_policy = if start <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            }
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                max_batch: self.settings.fetch_batch_max as i64,
                max_bytes: i64::try_from(self.settings.fetch_bytes_max).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await?;
        Ok(consumer.messages().await?)
    }

    /// True when the stream holds messages at or after `next_seq`.
    async fn stalled(&self, next_seq: u64) -> bool {
        match self.context.get_stream(&self.settings.stream).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => info.state.last_sequence >= next_seq,
                Err(_) => false,
            },
            Err(_) => false,
        }
    }
}
