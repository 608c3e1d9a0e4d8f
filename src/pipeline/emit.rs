//! The emitter: publishes outputs to the output stream with acks awaited in a window, and tells
//! the snapshot writer when a partition's outputs up to a sequence are durable.
//!
//! Owns: the publishes in flight, their retry, and the watermarks.
//!
//! Must never: acknowledge a watermark before every output queued ahead of it is acked; give up
//! on an output (a failed publish is retried until it succeeds or the process stops); or
//! publish an output under anything but its deterministic id (`Nats-Msg-Id`), which is what
//! makes a retry that already landed harmless.
//!
//! Invariants: outputs are published in the order the shards produced them. After a failure,
//! the emitter republishes the failed output *and every output after it that is still awaiting
//! its ack*, in their original order, before anything new: with one connection the server stores
//! publishes in order, so the ones that had landed are dropped as duplicates by the stream's
//! duplicate window and the stored order is unchanged. (An output whose ack was lost and whose
//! retry comes later than the output stream's `duplicate_window` could be stored twice under the
//! same id; retries back off at most `retry_backoff_max`, far below the window, and a restart
//! never re-emits, see the recovery module.)

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use crossbeam::channel::TryRecvError;
use futures::FutureExt;

use super::sink::SinkReceiver;
use super::{Outbound, SinkMessage, WatermarkReached};

/// With room in the window, the emitter waits for the oldest ack or new outputs, whichever
/// comes first (the sink wakes it); this is only the longest it waits for either.
const ACK_POLL: Duration = Duration::from_millis(10);

/// With nothing in flight, the longest wait for new outputs before looking again.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Why a publish failed; every failure is retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PublishFailure(pub String);

/// Where outputs go. `publish` may wait (the client's own backpressure); the returned future
/// resolves to the stream sequence the output was stored at.
pub trait Publisher {
    type Ack: Future<Output = Result<u64, PublishFailure>> + Unpin;
    fn publish(&self, output: &Outbound)
        -> impl Future<Output = Result<Self::Ack, PublishFailure>>;
}

/// Metrics the emitter reports.
pub trait EmitObserver {
    fn published(&mut self, n: u64);
    fn retried(&mut self, n: u64);
    fn in_flight(&mut self, n: u64);
}

pub struct NoEmitObserver;

impl EmitObserver for NoEmitObserver {
    fn published(&mut self, _: u64) {}
    fn retried(&mut self, _: u64) {}
    fn in_flight(&mut self, _: u64) {}
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmitReport {
    pub published: u64,
    pub retries: u64,
    /// Highest output stream sequence acked.
    pub last_output_seq: u64,
}

enum Slot<A> {
    Publish {
        output: Outbound,
        ack: Option<A>,
        /// The connection epoch it was last sent in.
        epoch: u64,
    },
    Watermark {
        partition: u32,
        seq: u64,
        floor: u64,
        done: crossbeam::channel::Sender<WatermarkReached>,
    },
}

pub struct Emitter<P: Publisher, O: EmitObserver> {
    pub publisher: P,
    pub observer: O,
    /// Publishes awaiting their ack at most.
    pub window: usize,
    pub retry_backoff_max: Duration,
    /// How many shards send to this emitter (it ends after that many `ShardStopped`).
    pub shards: usize,
    /// Bumped by the NATS client's `Connected` event. Outputs sent in an older epoch whose ack
    /// has not come may have been lost with the old connection: they are resent, in order,
    /// before anything new, so a quick reconnect cannot let later outputs overtake them.
    pub connection_epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<P: Publisher, O: EmitObserver> Emitter<P, O> {
    /// Runs until every shard has stopped and everything is acked, or the input closes.
    pub async fn run(mut self, input: SinkReceiver) -> EmitReport {
        let mut report = EmitReport::default();
        let mut slots: VecDeque<Slot<P::Ack>> = VecDeque::new();
        let mut publishes = 0usize;
        let mut stopped = 0usize;
        let mut closed = false;
        loop {
            // Take new work while there is room in the window.
            while publishes < self.window && !closed {
                match input.try_recv() {
                    Ok(message) => {
                        self.accept(
                            message,
                            &mut slots,
                            &mut publishes,
                            &mut stopped,
                            &mut report,
                        )
                        .await;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => closed = true,
                }
            }
            self.observer.in_flight(publishes as u64);
            if slots.is_empty() {
                if closed || stopped >= self.shards {
                    return report;
                }
                // Nothing in flight: wait for work (a closed queue is seen by `try_recv`).
                let _ = tokio::time::timeout(IDLE_POLL, input.queued()).await;
                continue;
            }
            // With room in the window, wait for the oldest ack or new outputs: outputs that
            // arrive meanwhile are sent at once instead of queueing behind an ack round trip.
            let wait = (publishes < self.window).then_some(&input);
            self.settle_front(&mut slots, &mut publishes, &mut report, wait)
                .await;
        }
    }

    /// Settles the oldest slot: a watermark is reported reached; a publish has its ack awaited
    /// (on failure it and everything after it is republished in order, then awaited again).
    /// With `wait`, an ack that has not come when new outputs are queued there (or within
    /// [`ACK_POLL`]) is left pending.
    async fn settle_front(
        &mut self,
        slots: &mut VecDeque<Slot<P::Ack>>,
        publishes: &mut usize,
        report: &mut EmitReport,
        wait: Option<&SinkReceiver>,
    ) {
        let Some(front) = slots.front_mut() else {
            return;
        };
        match front {
            Slot::Watermark { .. } => {
                if let Some(Slot::Watermark {
                    partition,
                    seq,
                    floor,
                    done,
                }) = slots.pop_front()
                {
                    // The receiver may be gone (the process is stopping); nothing to do then.
                    let _ = done.send(WatermarkReached {
                        partition,
                        seq,
                        output_seq_floor: floor,
                    });
                }
            }
            Slot::Publish { ack, .. } => {
                // An ack already there is taken without arming a timer (in a backlog most
                // are: the window keeps the server busy).
                let ready = match (ack.as_mut(), wait) {
                    (Some(pending), Some(_)) => pending.now_or_never(),
                    _ => None,
                };
                let result = match (ack.as_mut(), wait, ready) {
                    (_, _, Some(result)) => result,
                    (Some(pending), None, None) => pending.await,
                    (Some(pending), Some(input), None) => {
                        tokio::select! {
                            biased;
                            result = pending => result,
                            _ = input.queued() => return,
                            _ = tokio::time::sleep(ACK_POLL) => return,
                        }
                    }
                    (None, _, None) => Err(PublishFailure("not sent".into())),
                };
                // Completed: never poll it again.
                *ack = None;
                match result {
                    Ok(sequence) => {
                        report.last_output_seq = report.last_output_seq.max(sequence);
                        report.published += 1;
                        self.observer.published(1);
                        slots.pop_front();
                        *publishes -= 1;
                    }
                    Err(failure) => {
                        tracing::warn!(error = %failure, "output publish failed; republishing in order");
                        self.republish(slots, report).await;
                    }
                }
            }
        }
    }

    async fn accept(
        &mut self,
        message: SinkMessage,
        slots: &mut VecDeque<Slot<P::Ack>>,
        publishes: &mut usize,
        stopped: &mut usize,
        report: &mut EmitReport,
    ) {
        match message {
            SinkMessage::Outputs(outputs) => {
                for output in outputs {
                    // The window bounds the acks awaited, also within one large batch (a
                    // backlog can make thousands of outputs at once): the client holds a
                    // permit per unawaited ack and would wait forever for one more.
                    while *publishes >= self.window {
                        self.settle_front(slots, publishes, report, None).await;
                    }
                    let epoch = self.epoch();
                    let stale = slots.iter().any(
                        |slot| matches!(slot, Slot::Publish { epoch: sent, .. } if *sent < epoch),
                    );
                    if stale {
                        self.resend(slots, &mut report.retries).await;
                    }
                    // A failed send is retried in order with the ones after it (see `run`).
                    let ack = self.publisher.publish(&output).await.ok();
                    slots.push_back(Slot::Publish { output, ack, epoch });
                    *publishes += 1;
                }
            }
            SinkMessage::Watermark {
                partition,
                seq,
                done,
            } => slots.push_back(Slot::Watermark {
                partition,
                seq,
                floor: report.last_output_seq,
                done,
            }),
            SinkMessage::ShardStopped(_) => *stopped += 1,
        }
    }

    /// Republishes every publish still awaiting its ack, in order, backing off between rounds
    /// until the first of them succeeds.
    async fn republish(&mut self, slots: &mut VecDeque<Slot<P::Ack>>, report: &mut EmitReport) {
        let mut backoff = Duration::from_millis(50);
        loop {
            tokio::time::sleep(backoff).await;
            if self.resend(slots, &mut report.retries).await {
                return;
            }
            backoff = (backoff * 2).min(self.retry_backoff_max);
        }
    }

    fn epoch(&self) -> u64 {
        self.connection_epoch
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends every publish still awaiting its ack again, in order; true when all were sent.
    async fn resend(&mut self, slots: &mut VecDeque<Slot<P::Ack>>, retries: &mut u64) -> bool {
        let epoch = self.epoch();
        for slot in slots.iter_mut() {
            if let Slot::Publish {
                output,
                ack,
                epoch: sent,
            } = slot
            {
                *retries += 1;
                self.observer.retried(1);
                // Its permit back first: a full window is resent with no permit to spare.
                discard(ack);
                match self.publisher.publish(output).await {
                    Ok(new_ack) => {
                        *ack = Some(new_ack);
                        *sent = epoch;
                    }
                    Err(_) => return false,
                }
            }
        }
        true
    }
}

/// Drops an ack the emitter will no longer wait for, polling it once first. An ack may hold
/// something until it is polled: async-nats's JetStream publish (the emitter's publisher before
/// `pipeline::publish`) released a polled ack's permit when it was dropped, but handed an
/// unpolled one to a task that waited up to `ack_timeout` for its reply, which after a lost
/// connection never comes (a broker restart test hung so in CI). `pipeline::publish`'s ticket
/// lets its slot go when dropped either way; the poll costs nothing there.
fn discard<A: Future + Unpin>(ack: &mut Option<A>) {
    if let Some(mut pending) = ack.take() {
        let _ = (&mut pending).now_or_never();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what was stored; the attempts listed in `fail_attempts` are lost (their ack
    /// says "timed out"); after the last of them the connection comes back (epoch + 1), as
    /// async-nats reports with its `Connected` event.
    #[derive(Clone, Default)]
    struct FakeStream {
        stored: Arc<Mutex<Vec<String>>>,
        attempts: Arc<Mutex<usize>>,
        fail_attempts: Arc<Mutex<Vec<usize>>>,
        epoch: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Publisher for FakeStream {
        type Ack = std::future::Ready<Result<u64, PublishFailure>>;
        async fn publish(&self, output: &Outbound) -> Result<Self::Ack, PublishFailure> {
            let attempt = {
                let mut attempts = self.attempts.lock().unwrap();
                *attempts += 1;
                *attempts
            };
            let fail = self.fail_attempts.lock().unwrap().clone();
            if fail.contains(&attempt) {
                if fail.iter().max() == Some(&attempt) {
                    self.epoch
                        .fetch_add(1, std::sync::atomic::Ordering::Release);
                }
                return Ok(std::future::ready(Err(PublishFailure("timed out".into()))));
            }
            let mut stored = self.stored.lock().unwrap();
            // The broker's duplicate window: the same id is stored once.
            if !stored.contains(&output.id) {
                stored.push(output.id.clone());
            }
            let sequence = stored.iter().position(|id| *id == output.id).unwrap() as u64 + 1;
            Ok(std::future::ready(Ok(sequence)))
        }
    }

    fn outbound(n: u32) -> Outbound {
        Outbound {
            partition: 0,
            seq: u64::from(n),
            subject: "creditflow.out.0.x".into(),
            id: format!("o{n}"),
            payload: bytes::Bytes::new(),
        }
    }

    fn run(stream: FakeStream, messages: Vec<SinkMessage>) -> EmitReport {
        let stream_epoch = stream.epoch.clone();
        let (sender, receiver) = crate::pipeline::sink::sink_queue(1024);
        for message in messages {
            sender.send(message).unwrap();
        }
        sender.send(SinkMessage::ShardStopped(0)).unwrap();
        let emitter = Emitter {
            publisher: stream,
            observer: NoEmitObserver,
            window: 3,
            retry_backoff_max: Duration::from_millis(10),
            shards: 1,
            connection_epoch: stream_epoch,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(emitter.run(receiver))
    }

    #[test]
    fn a_lost_connection_is_replayed_in_order() {
        // The connection drops at attempt 2: o2 and o3 (in flight behind it) are lost.
        let stream = FakeStream::default();
        stream.fail_attempts.lock().unwrap().extend([2, 3]);
        let report = run(
            stream.clone(),
            vec![SinkMessage::Outputs((1..=5).map(outbound).collect())],
        );
        let stored = stream.stored.lock().unwrap().clone();
        assert_eq!(stored, ["o1", "o2", "o3", "o4", "o5"]);
        assert_eq!(report.published, 5);
        assert!(report.retries >= 2);
    }

    #[test]
    fn a_timed_out_publish_that_landed_later_is_stored_once() {
        // Only o2's ack is lost; o3 went out behind it. Every id is stored exactly once.
        let stream = FakeStream::default();
        stream.fail_attempts.lock().unwrap().push(2);
        let report = run(
            stream.clone(),
            vec![SinkMessage::Outputs((1..=5).map(outbound).collect())],
        );
        let mut stored = stream.stored.lock().unwrap().clone();
        stored.sort();
        assert_eq!(stored, ["o1", "o2", "o3", "o4", "o5"]);
        assert_eq!(report.published, 5);
    }

    /// Like the NATS client: a publish needs a permit, and an ack holds its permit until it is
    /// polled; with no permit left a publish would wait forever (here: the test fails). An ack
    /// dropped without ever being polled keeps its permit (async-nats hands it to a task that
    /// waits up to `ack_timeout` for the reply, which after a lost connection never comes).
    #[derive(Clone)]
    struct Permits {
        inner: FakeStream,
        outstanding: Arc<std::sync::atomic::AtomicUsize>,
        capacity: usize,
    }

    struct PermitAck {
        result: Option<Result<u64, PublishFailure>>,
        outstanding: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Future for PermitAck {
        type Output = Result<u64, PublishFailure>;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            self.outstanding
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            std::task::Poll::Ready(self.result.take().expect("polled once"))
        }
    }

    impl Publisher for Permits {
        type Ack = PermitAck;
        async fn publish(&self, output: &Outbound) -> Result<Self::Ack, PublishFailure> {
            let held = self
                .outstanding
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert!(
                held < self.capacity,
                "publish with {held} unawaited acks: the client would wait forever"
            );
            let result = self.inner.publish(output).await?.await;
            Ok(PermitAck {
                result: Some(result),
                outstanding: self.outstanding.clone(),
            })
        }
    }

    #[test]
    fn a_batch_larger_than_the_window_waits_for_acks_between_publishes() {
        let stream = FakeStream::default();
        let permits = Permits {
            inner: stream.clone(),
            outstanding: Arc::default(),
            capacity: 3,
        };
        let (sender, receiver) = crate::pipeline::sink::sink_queue(1024);
        sender
            .send(SinkMessage::Outputs((1..=50).map(outbound).collect()))
            .unwrap();
        sender.send(SinkMessage::ShardStopped(0)).unwrap();
        let emitter = Emitter {
            publisher: permits,
            observer: NoEmitObserver,
            window: 3,
            retry_backoff_max: Duration::from_millis(10),
            shards: 1,
            connection_epoch: Arc::default(),
        };
        let report = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(emitter.run(receiver));
        assert_eq!(report.published, 50);
        assert_eq!(stream.stored.lock().unwrap().len(), 50);
    }

    #[test]
    fn a_reconnect_with_a_full_window_resends_without_running_out_of_permits() {
        // o2's ack is lost with the connection; the emitter resends o1 and o2 (whose acks it
        // never polled) with the window full. The client has one spare permit, as in
        // production (window + partitions); discarding an ack must release its permit.
        let stream = FakeStream::default();
        stream.fail_attempts.lock().unwrap().push(2);
        let permits = Permits {
            inner: stream.clone(),
            outstanding: Arc::default(),
            capacity: 4,
        };
        let epoch = stream.epoch.clone();
        let (sender, receiver) = crate::pipeline::sink::sink_queue(1024);
        sender
            .send(SinkMessage::Outputs((1..=50).map(outbound).collect()))
            .unwrap();
        sender.send(SinkMessage::ShardStopped(0)).unwrap();
        let emitter = Emitter {
            publisher: permits,
            observer: NoEmitObserver,
            window: 3,
            retry_backoff_max: Duration::from_millis(10),
            shards: 1,
            connection_epoch: epoch,
        };
        let report = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(emitter.run(receiver));
        assert_eq!(report.published, 50);
        let stored = stream.stored.lock().unwrap().clone();
        let expected: Vec<String> = (1..=50).map(|n| format!("o{n}")).collect();
        assert_eq!(stored, expected);
        assert!(report.retries >= 2);
    }

    #[test]
    fn a_watermark_waits_for_every_output_before_it() {
        let stream = FakeStream::default();
        let (done_sender, done) = crossbeam::channel::unbounded();
        let report = run(
            stream,
            vec![
                SinkMessage::Outputs(vec![outbound(1), outbound(2)]),
                SinkMessage::Watermark {
                    partition: 0,
                    seq: 2,
                    done: done_sender,
                },
                SinkMessage::Outputs(vec![outbound(3)]),
            ],
        );
        let reached = done.try_recv().expect("watermark reached");
        assert_eq!((reached.partition, reached.seq), (0, 2));
        // The floor is a lower bound for what comes after the marker: o3 landed at 3.
        assert!(reached.output_seq_floor < 3);
        assert_eq!(report.last_output_seq, 3);
    }

    /// Publishes with the ack of `o1` held back until `o2` has been published, recording the
    /// (paused) clock at each publish.
    #[derive(Clone, Default)]
    struct HeldFirstAck {
        published: Arc<Mutex<Vec<(String, tokio::time::Instant)>>>,
        first_ack: Arc<Mutex<Option<tokio::sync::oneshot::Sender<u64>>>>,
    }

    impl Publisher for HeldFirstAck {
        type Ack = std::pin::Pin<Box<dyn Future<Output = Result<u64, PublishFailure>> + Send>>;
        async fn publish(&self, output: &Outbound) -> Result<Self::Ack, PublishFailure> {
            self.published
                .lock()
                .unwrap()
                .push((output.id.clone(), tokio::time::Instant::now()));
            if output.id == "o1" {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                *self.first_ack.lock().unwrap() = Some(sender);
                return Ok(Box::pin(async move {
                    receiver
                        .await
                        .map_err(|_| PublishFailure("ack dropped".into()))
                }));
            }
            if let Some(first) = self.first_ack.lock().unwrap().take() {
                let _ = first.send(1);
            }
            Ok(Box::pin(std::future::ready(Ok(2))))
        }
    }

    #[test]
    fn an_output_queued_while_an_ack_is_awaited_is_sent_at_once() {
        // o1's ack comes only after o2 is published; o2 is queued 5 ms (paused clock) after o1.
        // The emitter must send o2 when it is queued, not when a poll timer next fires.
        let publisher = HeldFirstAck::default();
        let published = publisher.published.clone();
        let (sender, receiver) = crate::pipeline::sink::sink_queue(16);
        let emitter = Emitter {
            publisher,
            observer: NoEmitObserver,
            window: 8,
            retry_backoff_max: Duration::from_millis(10),
            shards: 1,
            connection_epoch: Arc::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let report = runtime.block_on(async move {
            let start = tokio::time::Instant::now();
            let shard = tokio::spawn(async move {
                sender
                    .send(SinkMessage::Outputs(vec![outbound(1)]))
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                sender
                    .send(SinkMessage::Outputs(vec![outbound(2)]))
                    .unwrap();
                sender.send(SinkMessage::ShardStopped(0)).unwrap();
            });
            let report = emitter.run(receiver).await;
            shard.await.unwrap();
            let published: Vec<(String, Duration)> = published
                .lock()
                .unwrap()
                .iter()
                .map(|(id, at)| (id.clone(), *at - start))
                .collect();
            assert_eq!(
                published,
                [
                    ("o1".to_string(), Duration::ZERO),
                    ("o2".to_string(), Duration::from_millis(5))
                ]
            );
            report
        });
        assert_eq!(report.published, 2);
    }
}
