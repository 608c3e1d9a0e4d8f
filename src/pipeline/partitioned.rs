//! The partitioned reader: consumes only the partitions this process owns, one ordered consumer
//! per partition (filter `<prefix>.<p>.*`), for processors sharing the partitions (`cluster`):
//! a processor that read the whole stream would pay for every other processor's messages too.
//!
//! Owns: the consumers, each partition's next expected sequence and its *complete* position
//! (every message of the partition at or before it has been handed to the dispatcher), the
//! probes that move an idle partition's complete position to the stream's end, and the
//! watchdog that recreates the consumers when the connection comes back or when a probe finds a
//! message a consumer has not delivered for `stall_timeout`.
//!
//! How the position is kept: a partition's messages come in stream order on its consumer, so
//! once message `s` of partition `p` is handed on, every message of `p` up to `s` is; the
//! partitions interleave out of stream order, so what holds for all of them is the least of
//! their complete positions, which the dispatcher gets (`Dispatcher::complete_through`) and
//! the shards advance `applied_through` to. A partition whose consumer has delivered nothing
//! for a while is probed: the stream's last sequence `L` is read, then the first message of
//! the partition at or after its next expected sequence is asked of the stream's leader
//! (`STREAM.MSG.GET` with `next_by_subj`; a replica's Direct Get may run behind): none means
//! the partition is complete through `L`, one at `n` means through `n - 1`.
//!
//! Must never: skip a message of an owned partition (a consumer recreated after an error starts
//! at the partition's next expected sequence; a partition whose next message is older than the
//! stream's first is history lost: the reader stops with the evidence, like the whole-stream
//! reader on a gap), apply one twice (a sequence below the next expected one is dropped), or
//! claim a partition complete past a message it has not handed on.
//!
//! Messages on subjects that name no owned partition are never read here; the processor that
//! owns partition 0 reads the whole stream instead (`ingest::Reader`), so it dead-letters the
//! subjects that name no partition, as a processor alone does.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant as WallInstant};

use async_nats::jetstream::{self, consumer};
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};

use super::dispatch::Dispatcher;
use super::ingest::{
    inbound, next_connection, reopen_pause, IngestError, IngestObserver, Position, ReaderSettings,
};

/// How often an idle reader probes the partitions that may be behind the stream's end.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// Where one owned partition is.
#[derive(Clone, Copy, Debug)]
struct Place {
    /// One past the last sequence handed on.
    next: u64,
    /// Every message of the partition at or before this sequence has been handed on.
    complete: u64,
    /// When a probe last found a message of the partition that had not been delivered (the
    /// stall watchdog's evidence).
    behind_since: Option<WallInstant>,
    /// A message was handed on since the last probe: the partition is moving by itself.
    moving: bool,
}

type Delivered = (
    u32,
    Result<jetstream::Message, consumer::pull::OrderedError>,
);

pub struct PartitionReader<O: IngestObserver> {
    pub context: jetstream::Context,
    pub settings: ReaderSettings,
    /// Each owned partition and the first sequence to read for it (one past its snapshot's
    /// position).
    pub starts: Vec<(u32, u64)>,
    pub observer: O,
    /// One past the least complete position (the monitor's lag).
    pub position: Position,
    pub connections: tokio::sync::watch::Receiver<u64>,
}

impl<O: IngestObserver> PartitionReader<O> {
    /// Reads until `stop` resolves, then flushes the dispatcher and stops the shards.
    pub async fn run(
        mut self,
        mut dispatcher: Dispatcher,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), IngestError> {
        let mut places: BTreeMap<u32, Place> = self
            .starts
            .iter()
            .map(|&(partition, start)| {
                let start = start.max(1);
                (
                    partition,
                    Place {
                        next: start,
                        complete: start - 1,
                        behind_since: None,
                        moving: false,
                    },
                )
            })
            .collect();
        self.publish_position(&places, &mut dispatcher);
        let mut backoff = Duration::from_millis(100);
        self.connections.borrow_and_update();
        'consumers: loop {
            if *stop.borrow() {
                break;
            }
            let mut messages = match self.open(&places).await {
                Ok(messages) => {
                    backoff = Duration::from_millis(100);
                    messages
                }
                Err(Opened::HistoryLost(error)) => return Err(error),
                Err(Opened::Failed(error)) => {
                    tracing::warn!(%error, "cannot open the partitions' consumers; retrying");
                    reopen_pause(&mut backoff, &mut self.connections, &mut stop).await;
                    continue;
                }
            };
            let mut last_probe = WallInstant::now();
            loop {
                // Busy or not, the partitions that hand nothing on are probed every
                // PROBE_EVERY: the least complete position must not wait for a quiet stream.
                if last_probe.elapsed() >= PROBE_EVERY {
                    last_probe = WallInstant::now();
                    if self.probe(&mut places).await {
                        tracing::warn!("a partition's consumer stalled with messages pending; recreating the consumers");
                        self.observer.consumer_recreated("stall");
                        continue 'consumers;
                    }
                    self.publish_position(&places, &mut dispatcher);
                }
                let item = match messages.next().now_or_never() {
                    Some(item) => item,
                    None => {
                        self.publish_position(&places, &mut dispatcher);
                        dispatcher.flush()?;
                        let probe_in = PROBE_EVERY.saturating_sub(last_probe.elapsed());
                        tokio::select! {
                            item = messages.next() => item,
                            _ = tokio::time::sleep(probe_in) => continue,
                            _ = next_connection(&mut self.connections) => {
                                tracing::info!("reconnected to NATS; recreating the partitions' consumers");
                                self.observer.consumer_recreated("reconnect");
                                continue 'consumers;
                            }
                            _ = stop.changed() => break 'consumers,
                        }
                    }
                };
                let (partition, message) = match item {
                    Some((partition, Ok(message))) => (partition, message),
                    Some((partition, Err(error))) => {
                        tracing::warn!(%error, partition, "a partition's consumer failed; recreating the consumers");
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
                let Some(place) = places.get_mut(&partition) else {
                    continue;
                };
                let seq = inbound.seq;
                if seq < place.next {
                    // A redelivery (a consumer recreated behind us).
                    continue;
                }
                place.next = seq + 1;
                place.complete = place.complete.max(seq);
                place.behind_since = None;
                place.moving = true;
                dispatcher.push(inbound)?;
                if *stop.borrow() {
                    break 'consumers;
                }
            }
        }
        self.publish_position(&places, &mut dispatcher);
        dispatcher.stop()?;
        Ok(())
    }

    /// Hands the least complete position to the dispatcher and the monitor.
    fn publish_position(&self, places: &BTreeMap<u32, Place>, dispatcher: &mut Dispatcher) {
        let through = places.values().map(|p| p.complete).min().unwrap_or(0);
        dispatcher.complete_through(through);
        self.position.store(through + 1, Ordering::Release);
    }

    /// One consumer per partition, each from its next expected sequence, merged.
    async fn open(
        &self,
        places: &BTreeMap<u32, Place>,
    ) -> Result<SelectAll<BoxStream<'static, Delivered>>, Opened> {
        let failed = |e: &dyn std::fmt::Display| Opened::Failed(e.to_string());
        let mut stream = self
            .context
            .get_stream(&self.settings.stream)
            .await
            .map_err(|e| failed(&e))?;
        let first = stream
            .info()
            .await
            .map_err(|e| failed(&e))?
            .state
            .first_sequence;
        let mut merged = SelectAll::new();
        for (&partition, place) in places {
            // Everything before `complete` is known handed on or absent; a stream that now
            // begins after the next message that could be ours lost history.
            let needed = place.complete + 1;
            if first > needed && first > 1 {
                return Err(Opened::HistoryLost(IngestError::Gap {
                    stream: self.settings.stream.clone(),
                    expected: needed,
                    got: first,
                }));
            }
            let deliver_policy = if place.next <= 1 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: place.next,
                }
            };
            let created = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: partition_filter(&self.settings.input_prefix, partition),
                    deliver_policy,
                    max_batch: self.settings.fetch_batch_max as i64,
                    max_bytes: i64::try_from(self.settings.fetch_bytes_max).unwrap_or(i64::MAX),
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(&e))?;
            let messages = created.messages().await.map_err(|e| failed(&e))?;
            merged.push(messages.map(move |item| (partition, item)).boxed());
        }
        Ok(merged)
    }

    /// Moves each partition that may be behind the stream's end to what the stream's leader
    /// says: complete through the end when it holds no message of the partition not yet
    /// handed on, else through the one before the first such message. True when a message a
    /// consumer has not delivered has waited for `stall_timeout` (the consumers are recreated).
    async fn probe(&self, places: &mut BTreeMap<u32, Place>) -> bool {
        let Ok(mut stream) = self.context.get_stream(&self.settings.stream).await else {
            return false;
        };
        let Ok(info) = stream.info().await else {
            return false;
        };
        let last = info.state.last_sequence;
        let mut stalled = false;
        for (&partition, place) in places.iter_mut() {
            if place.complete >= last || std::mem::take(&mut place.moving) {
                continue;
            }
            let filter = partition_filter(&self.settings.input_prefix, partition);
            match stream
                .get_first_raw_message_by_subject(&filter, place.next)
                .await
            {
                Ok(found) => {
                    place.complete = place.complete.max(found.sequence.saturating_sub(1));
                    let since = *place.behind_since.get_or_insert_with(WallInstant::now);
                    stalled |= since.elapsed() >= self.settings.stall_timeout;
                }
                Err(error) if no_message(&error) => {
                    place.complete = place.complete.max(last);
                    place.behind_since = None;
                }
                Err(error) => {
                    tracing::debug!(%error, partition, "probing a partition failed; the next probe tries again");
                }
            }
        }
        stalled
    }
}

/// Why the consumers could not be opened.
enum Opened {
    /// The stream begins after a message an owned partition still needs.
    HistoryLost(IngestError),
    /// A request failed: try again.
    Failed(String),
}

/// The subjects of one partition's messages in the input stream.
pub fn partition_filter(input_prefix: &str, partition: u32) -> String {
    format!("{input_prefix}.{partition}.*")
}

fn no_message(error: &jetstream::stream::RawMessageError) -> bool {
    use jetstream::stream::RawMessageErrorKind;
    match error.kind() {
        RawMessageErrorKind::NoMessageFound => true,
        RawMessageErrorKind::JetStream(e) => {
            e.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::partition_filter;

    #[test]
    fn a_partitions_filter_takes_its_three_kinds() {
        assert_eq!(partition_filter("creditflow.in", 7), "creditflow.in.7.*");
    }
}
