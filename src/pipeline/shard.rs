//! A shard: one thread that owns a set of partitions outright and applies their messages.
//!
//! Owns: its partitions (state, positions, order), turning engine outputs into publishable
//! bytes, the decision of when to hand a partition to the snapshot writer, and answering the
//! questions about its partitions ([`super::question`]) between batches: a question waits at
//! most for the batch being applied (or, while the shard waits for room in the sink's queue,
//! not at all), and one about a partition lent to the snapshot encoder goes to the encoder.
//!
//! Must never: share a partition with another thread, block on anything but its input queue and
//! the sink's queue (both bounded, both crossbeam), or apply a message twice: after a restart,
//! a message at or before a partition's `applied_through` is skipped.
//!
//! Invariants: messages are applied in the order they arrive, which is stream order per
//! partition; a partition lent to the snapshot encoder has its messages queued meanwhile and
//! applies them, in order, before anything newer when it is back; after a batch every partition
//! at home has `applied_through` = the batch's last sequence (all of the shard's messages up to
//! there are applied); outputs of one partition leave in the order they were produced.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use bytes::Bytes;
use crossbeam::channel::{Receiver, SendTimeoutError, Sender};

use super::dispatch::ShardInput;
use super::question::{Needs, Question, ResultBook, Seen};
use super::sink::Sink;
use super::{output_subject, Inbound, Layout, Outbound, SinkMessage};
use crate::catalog::Catalog;
use crate::engine::dedupe::dedupe_key;
use crate::engine::{apply_ahead, Envelope, Hashes, Partition};
use crate::wire::input::{self, DeadLetter, Message};
use crate::wire::output::{Body, Output};
use crate::wire::subject::Route;

/// How often a shard with questions waiting for a later position looks again while idle (its
/// partitions can be caught up by the dispatcher's position without a batch of its own).
const PARKED_POLL: Duration = Duration::from_millis(1);
/// Questions queued for one lent partition at most; past it they wait at the shard.
const LENT_QUESTIONS_MAX: usize = 1024;
/// Within a batch, the questions queued are answered after every this many messages applied:
/// a large batch (a backlog drains in batches of `batch_size_max`) would otherwise make a
/// question wait for all of it. Looking costs one atomic load.
const QUESTIONS_EVERY: usize = 32;

/// A message's decoding: the message, or its dead letter.
type Decoded<'a> = Result<Message<'a>, DeadLetter>;

/// Decides when a shard's partitions are snapshotted, and takes the snapshots.
///
/// A due partition is *lent*: the hook takes it (to be encoded on another thread) and gives it
/// back through `returns`. While it is away the shard keeps applying its other partitions and
/// queues the lent one's messages, which it applies, in order, as soon as the partition is
/// back. So a snapshot never stops the shard; it delays one partition's messages by its encode
/// time.
pub trait SnapshotHook: Send {
    /// After a batch, with every partition that is at home (which has applied everything
    /// through `seq`): returns it if it stays, or `None` when the hook has taken it. Whoever
    /// holds a lent partition answers the questions that arrive on `questions` meanwhile.
    fn after_batch(
        &mut self,
        partition: Partition,
        seq: u64,
        sink: &Sink,
        questions: &Receiver<Question>,
    ) -> Option<Partition>;
    /// Where lent partitions come back.
    fn returns(&self) -> Receiver<Partition>;
    /// The shard is stopping (every partition is home): take a final snapshot of each.
    fn at_stop(&mut self, partition: &mut Partition, seq: u64, sink: &Sink);
}

/// No snapshots (the demo, tests of the pipeline alone).
pub struct NoSnapshots;

impl SnapshotHook for NoSnapshots {
    fn after_batch(
        &mut self,
        partition: Partition,
        _: u64,
        _: &Sink,
        _: &Receiver<Question>,
    ) -> Option<Partition> {
        Some(partition)
    }
    fn returns(&self) -> Receiver<Partition> {
        crossbeam::channel::never()
    }
    fn at_stop(&mut self, _: &mut Partition, _: u64, _: &Sink) {}
}

/// Per batch timing, for the apply-latency metric.
pub trait ShardObserver: Send {
    fn batch_applied(
        &mut self,
        shard: usize,
        messages: usize,
        elapsed: std::time::Duration,
        partitions: &[Option<Partition>],
    );

    /// One dead letter produced, of `reason` (its wire name).
    fn dead_letter(&mut self, _reason: &'static str) {}

    /// One balance alert produced, of `kind` (its output type).
    fn alert(&mut self, _kind: &'static str) {}
}

pub struct NoObserver;

/// An observer that may be absent (`demo` observes only when it serves its metrics).
impl<O: ShardObserver> ShardObserver for Option<O> {
    fn batch_applied(
        &mut self,
        shard: usize,
        messages: usize,
        elapsed: std::time::Duration,
        partitions: &[Option<Partition>],
    ) {
        if let Some(observer) = self {
            observer.batch_applied(shard, messages, elapsed, partitions);
        }
    }

    fn dead_letter(&mut self, reason: &'static str) {
        if let Some(observer) = self {
            observer.dead_letter(reason);
        }
    }

    fn alert(&mut self, kind: &'static str) {
        if let Some(observer) = self {
            observer.alert(kind);
        }
    }
}

impl ShardObserver for NoObserver {
    fn batch_applied(
        &mut self,
        _: usize,
        _: usize,
        _: std::time::Duration,
        _: &[Option<Partition>],
    ) {
    }
}

pub struct Shard<S: SnapshotHook, O: ShardObserver> {
    pub number: usize,
    /// Which partitions are whose; this shard's are `layout.of_shard(number)`.
    pub layout: Arc<Layout>,
    pub catalog: Arc<Catalog>,
    /// This shard's partitions, in the layout's order (`layout.of_shard(number)`).
    pub partitions: Vec<Partition>,
    pub output_prefix: String,
    pub snapshots: S,
    pub observer: O,
    /// Questions about this shard's partitions (the service's); `never()` without one.
    pub questions: Receiver<Question>,
    /// The dispatcher's position: every input message through it has been put on its shard's
    /// queue. A shard whose queue is empty has therefore applied everything of its own through
    /// it, which is what an idle shard's answers reflect.
    pub dispatched: Arc<AtomicU64>,
    /// The recent command results and dead letters, for the callers waiting for them.
    pub results: ResultBook,
}

/// What a shard works with while it runs: its partitions (`None` while lent to the snapshot
/// encoder), the messages of lent partitions, waiting for them in stream order, and the
/// questions waiting for a later position or for a partition to come home.
/// One message of a batch being applied: its partition's index in the shard, the message, its
/// decoding (none when it is not applied: no partition named, or already applied) and hashes.
type Work<'a> = (usize, &'a Inbound, Option<Decoded<'a>>, Option<Hashes>);

/// An empty vector of `U` in the buffer of `v` (emptied first). The standard library collects
/// a vector's `into_iter` in place when the element layouts agree, as they do here (the types
/// differ only in lifetimes), so the buffer is kept; if they ever did not, this would allocate.
fn reuse<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

struct Home {
    partitions: Vec<Option<Partition>>,
    /// The batch's work list, kept empty between batches so its buffer (a few hundred KiB at
    /// 1024 messages) is allocated once, not per batch.
    work: Vec<Work<'static>>,
    waiting: Vec<VecDeque<Inbound>>,
    lent: usize,
    /// The last sequence the shard has seen (all of its messages up to there are applied or
    /// waiting for their lent partition).
    last_seq: u64,
    /// Per partition: while it is lent, questions it can answer alone go to its holder through
    /// this channel (the loan takes a receiver; the shard answers what is left when the
    /// partition is back).
    lent_questions: Vec<(Sender<Question>, Receiver<Question>)>,
    /// Per partition: the sequence it had applied through when it was last lent.
    lent_through: Vec<u64>,
    parked: Vec<Question>,
    /// A batch is being applied: a partition is then only as far as its own `applied_through`
    /// (the dispatcher's position may be past messages still in the batch).
    applying: bool,
}

impl<S: SnapshotHook, O: ShardObserver> Shard<S, O> {
    /// Runs until `Stop` or until the input queue closes; returns the partitions.
    pub fn run(mut self, input: Receiver<ShardInput>, sink: Sink) -> Vec<Partition> {
        let count = self.partitions.len();
        let mut home = Home {
            partitions: std::mem::take(&mut self.partitions)
                .into_iter()
                .map(Some)
                .collect(),
            waiting: (0..count).map(|_| VecDeque::new()).collect(),
            lent: 0,
            last_seq: 0,
            lent_questions: (0..count)
                .map(|_| crossbeam::channel::bounded(LENT_QUESTIONS_MAX))
                .collect(),
            lent_through: vec![0; count],
            parked: Vec::new(),
            applying: false,
            work: Vec::new(),
        };
        let returns = self.snapshots.returns();
        let questions = self.questions.clone();
        let mut outputs: Vec<Output> = Vec::new();
        let mut failed = false;
        loop {
            let idle = if home.parked.is_empty() {
                Duration::from_secs(1)
            } else {
                PARKED_POLL
            };
            crossbeam::channel::select! {
                recv(input) -> message => {
                    let batch = match message {
                        Ok(ShardInput::Batch(batch)) => batch,
                        Ok(ShardInput::Stop) | Err(_) => break,
                    };
                    let applied = self.batch(&batch.messages, batch.through, &mut home, &mut outputs, &sink, &input);
                    batch.recycle();
                    if !applied {
                        failed = true;
                        break;
                    }
                }
                recv(returns) -> partition => {
                    if let Ok(partition) = partition {
                        if !self.welcome(partition, &mut home, &mut outputs, &sink, &input) {
                            failed = true;
                            break;
                        }
                    }
                }
                recv(questions) -> question => {
                    if let Ok(question) = question {
                        self.ask(question, &mut home, &input);
                    }
                }
                default(idle) => {}
            }
            self.serve(&mut home, &input);
        }
        // Every lent partition comes home before the final snapshots (the encoder never
        // keeps one: it gives each back right after encoding it).
        while home.lent > 0 && !failed {
            let Ok(partition) = returns.recv() else { break };
            if !self.welcome(partition, &mut home, &mut outputs, &sink, &input) {
                failed = true;
            }
        }
        // Questions still waiting are dropped with the shard: their askers see it stop.
        let mut partitions: Vec<Partition> = home.partitions.into_iter().flatten().collect();
        if !failed {
            for partition in &mut partitions {
                let through = partition.applied_through;
                self.snapshots.at_stop(partition, through, &sink);
            }
        }
        let _ = sink.send(SinkMessage::ShardStopped(self.number));
        partitions
    }

    /// Applies a batch (queueing the messages of lent partitions), sends its outputs, and
    /// offers each partition at home to the snapshot hook. False when the sink is gone.
    fn batch(
        &mut self,
        batch: &[Inbound],
        through: u64,
        home: &mut Home,
        outputs: &mut Vec<Output>,
        sink: &Sink,
        input: &Receiver<ShardInput>,
    ) -> bool {
        let started = WallInstant::now();
        let messages = batch.len();
        if batch.is_empty() {
            return true;
        }
        // Every message of this shard's partitions through here is in this batch or was in an
        // earlier one (the dispatcher's `through`: the batch's last sequence or later for a
        // reader of the whole stream; for one reading each partition on its own, where every
        // partition has applied through its own last message too, possibly earlier).
        let last_seq = through;
        let mut outbound = Vec::new();
        // Messages of lent partitions wait for them, in order. The rest are decoded first, then
        // applied in order with fetching ahead (engine::apply_ahead): at many accounts per
        // partition the cache misses of one message overlap the work of the one before.
        // Payload hashes once per batch and partition (engine::Partition::finish_batch).
        let increasing = batch.windows(2).all(|pair| pair[0].seq < pair[1].seq);
        if increasing {
            for partition in home.partitions.iter_mut().flatten() {
                partition.defer_payload_hashes();
            }
        }
        // Each message's hashes (account index, dedupe key) once, for every stage and the apply.
        let mut work: Vec<Work<'_>> = reuse(std::mem::take(&mut home.work));
        work.reserve(messages);
        for inbound in batch {
            let index = self.index_of(inbound);
            match &home.partitions[index] {
                Some(partition) => {
                    let decoded = (inbound.partition().is_some()
                        && inbound.seq > partition.applied_through)
                        .then(|| input::decode(&inbound.payload, &self.catalog));
                    let hashes = match &decoded {
                        Some(Ok(message)) => Hashes::of(message),
                        _ => None,
                    };
                    work.push((index, inbound, decoded, hashes));
                }
                None => home.waiting[index].push_back(inbound.clone()),
            }
        }
        home.applying = true;
        let mut applied = 0usize;
        apply_ahead(work.len(), |i, stage| match (stage, &work[i]) {
            (Some(stage), (index, _, Some(Ok(message)), Some(hashes))) => {
                if let Some(partition) = &home.partitions[*index] {
                    partition.prefetch(stage, message, hashes);
                }
            }
            (Some(_), _) => {}
            (None, (index, inbound, decoded, hashes)) => {
                let Some(partition) = &mut home.partitions[*index] else {
                    unreachable!("a partition is lent only between batches");
                };
                self.apply(
                    partition,
                    inbound,
                    decoded.as_ref(),
                    hashes.as_ref(),
                    outputs,
                );
                let number = partition.number;
                for output in outputs.drain(..) {
                    outbound.push(self.outbound(number, output));
                }
                applied += 1;
                if applied % QUESTIONS_EVERY == 0 && !self.questions.is_empty() {
                    while let Ok(question) = self.questions.try_recv() {
                        self.ask(question, home, input);
                    }
                }
            }
        });
        home.applying = false;
        home.work = reuse(work);
        if increasing {
            let payload_of = |seq: u64| {
                batch
                    .binary_search_by_key(&seq, |inbound| inbound.seq)
                    .ok()
                    .map(|i| &batch[i].payload[..])
            };
            for partition in home.partitions.iter_mut().flatten() {
                partition.finish_batch(payload_of);
            }
        }
        home.last_seq = last_seq;
        for partition in home.partitions.iter_mut().flatten() {
            partition.applied_through = partition
                .applied_through
                .max(last_seq)
                .max(partition.last_seq);
        }
        // Questions that came during the batch are answered before its outputs queue up.
        self.serve(home, input);
        if !outbound.is_empty() && !self.send(sink, SinkMessage::Outputs(outbound), home, input) {
            // The sink is gone: the process is failing; stop without applying more.
            return false;
        }
        self.observer
            .batch_applied(self.number, messages, started.elapsed(), &home.partitions);
        for (index, slot) in home.partitions.iter_mut().enumerate() {
            if let Some(partition) = slot.take() {
                let through = partition.applied_through;
                *slot = self.snapshots.after_batch(
                    partition,
                    last_seq,
                    sink,
                    &home.lent_questions[index].1,
                );
                if slot.is_none() {
                    home.lent += 1;
                    home.lent_through[index] = through;
                }
            }
        }
        true
    }

    /// Sends to the sink, answering questions while its queue is full. False when it is gone.
    fn send(
        &mut self,
        sink: &Sink,
        message: SinkMessage,
        home: &mut Home,
        input: &Receiver<ShardInput>,
    ) -> bool {
        let mut message = message;
        loop {
            match sink.send_timeout(message, PARKED_POLL) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(back)) => {
                    message = back;
                    self.serve(home, input);
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// Answers the questions queued for this shard and those parked that can be answered now.
    fn serve(&mut self, home: &mut Home, input: &Receiver<ShardInput>) {
        while let Ok(question) = self.questions.try_recv() {
            self.ask(question, home, input);
        }
        if !home.parked.is_empty() {
            for question in std::mem::take(&mut home.parked) {
                self.ask(question, home, input);
            }
        }
    }

    /// Answers `question` if its partition is at home and far enough, hands it to the holder of
    /// its lent partition if that can answer it, parks it otherwise; drops it past its deadline.
    fn ask(&mut self, question: Question, home: &mut Home, input: &Receiver<ShardInput>) {
        let place = self.layout.place(question.partition);
        debug_assert!(
            place.is_some_and(|(shard, _)| shard == self.number),
            "a question for partition {} reached shard {}",
            question.partition,
            self.number
        );
        let index = match place {
            Some((shard, index)) if shard == self.number && index < home.partitions.len() => index,
            _ => return,
        };
        if WallInstant::now() >= question.deadline {
            return;
        }
        match &home.partitions[index] {
            Some(partition) => {
                // Read the dispatcher's position before looking at the queue: a batch it sent
                // before that position is then either still queued or already applied.
                let dispatched = self.dispatched.load(Ordering::Acquire);
                let as_of_seq = if input.is_empty() && !home.applying {
                    partition.applied_through.max(dispatched)
                } else {
                    partition.applied_through
                };
                if as_of_seq >= question.min_seq {
                    (question.answer)(Seen {
                        partition,
                        as_of_seq,
                        results: Some(&self.results),
                    });
                } else {
                    home.parked.push(question);
                }
            }
            None if question.needs == Needs::State
                && question.min_seq <= home.lent_through[index] =>
            {
                if let Err(refused) = home.lent_questions[index].0.try_send(question) {
                    home.parked.push(refused.into_inner());
                }
            }
            None => home.parked.push(question),
        }
    }

    /// A lent partition is back: applies the messages that waited for it, in order.
    fn welcome(
        &mut self,
        mut partition: Partition,
        home: &mut Home,
        outputs: &mut Vec<Output>,
        sink: &Sink,
        input: &Receiver<ShardInput>,
    ) -> bool {
        let index = self.index(partition.number);
        let mut outbound = Vec::new();
        let waiting: Vec<Inbound> = home.waiting[index].drain(..).collect();
        for inbound in waiting {
            self.apply(&mut partition, &inbound, None, None, outputs);
            for output in outputs.drain(..) {
                outbound.push(self.outbound(partition.number, output));
            }
        }
        partition.applied_through = partition
            .applied_through
            .max(home.last_seq)
            .max(partition.last_seq);
        home.partitions[index] = Some(partition);
        home.lent -= 1;
        // What the encoder did not get to is answered here.
        while let Ok(question) = home.lent_questions[index].1.try_recv() {
            self.ask(question, home, input);
        }
        outbound.is_empty() || self.send(sink, SinkMessage::Outputs(outbound), home, input)
    }

    /// The index (in this shard) of the partition that handles `inbound`. Subjects that name no
    /// partition are dead-lettered by partition 0 (this shard owns it, or the dispatcher would
    /// not have sent it here).
    fn index_of(&self, inbound: &Inbound) -> usize {
        self.index(inbound.partition().unwrap_or(0))
    }

    /// The index of `partition` in this shard (the dispatcher sends only this shard's).
    fn index(&self, partition: u32) -> usize {
        match self.layout.place(partition) {
            Some((shard, index)) if shard == self.number => index,
            _ => panic!(
                "partition {partition} reached shard {}, which does not own it",
                self.number
            ),
        }
    }

    /// Applies one message to the partition that handles it; `decoded` is its decoding (by
    /// `input::decode`) and `hashes` its [`Hashes`] when the caller has them.
    fn apply(
        &self,
        partition: &mut Partition,
        inbound: &Inbound,
        decoded: Option<&Decoded<'_>>,
        hashes: Option<&Hashes>,
        outputs: &mut Vec<Output>,
    ) {
        let envelope = Envelope {
            payload: &inbound.payload,
            seq: inbound.seq,
            subject: &inbound.subject,
            received: inbound.received,
        };
        let number = match inbound.route {
            Route::Partition { number, .. } => number,
            Route::Unroutable(why) => {
                return partition.dead_letter_unrouted(&envelope, why, outputs)
            }
            Route::Log => unreachable!("the pipeline routes every subject to a partition or none"),
        };
        debug_assert_eq!(
            partition.number, number,
            "partition routed to the wrong shard"
        );
        if inbound.seq <= partition.applied_through {
            // Already in the partition's snapshot: a replay after a restart.
            return;
        }
        let decoded_now;
        let decoded = match decoded {
            Some(decoded) => decoded,
            None => {
                decoded_now = input::decode(&inbound.payload, &self.catalog);
                &decoded_now
            }
        };
        partition.apply_decoded(
            &self.catalog,
            decoded,
            &envelope,
            inbound.route,
            hashes,
            outputs,
        );
        partition.applied_through = inbound.seq;
    }

    /// The output as published; command results and dead letters are also kept for the
    /// callers waiting for them.
    fn outbound(&mut self, partition: u32, output: Output) -> Outbound {
        let outbound = Outbound {
            partition,
            seq: output.seq,
            subject: output_subject(&self.output_prefix, partition, output.body.type_name()),
            id: output.id.clone(),
            payload: Bytes::from(output.to_json()),
        };
        match (&output.body, &output.account) {
            (Body::CommandResult(result), Some(account)) => {
                let key = dedupe_key(account, &result.command_id);
                self.results
                    .result(partition, key, output.seq, outbound.payload.clone());
            }
            (Body::DeadLetter { reason, .. }, _) => {
                self.observer.dead_letter(reason);
                self.results
                    .dead_letter(output.seq, outbound.payload.clone());
            }
            (
                Body::BalanceLow { .. }
                | Body::BalanceDepleted { .. }
                | Body::RunwayLow { .. }
                | Body::BalanceRecovered { .. },
                _,
            ) => self.observer.alert(output.body.type_name()),
            _ => {}
        }
        outbound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_list_keeps_its_buffer_across_batches() {
        let mut kept: Vec<Work<'static>> = Vec::with_capacity(64);
        let buffer = kept.as_ptr() as usize;
        let inbound = Inbound {
            seq: 1,
            route: crate::wire::subject::Route::Partition {
                number: 0,
                kind: crate::wire::subject::SubjectKind::Usage,
            },
            subject: async_nats::Subject::from_static("creditflow.in.0.usage"),
            payload: bytes::Bytes::new(),
            received: None,
        };
        let mut work: Vec<Work<'_>> = reuse(std::mem::take(&mut kept));
        work.push((0, &inbound, None, None));
        assert_eq!(work.as_ptr() as usize, buffer);
        kept = reuse(work);
        assert!(kept.is_empty());
        assert_eq!(kept.as_ptr() as usize, buffer, "the same buffer, emptied");
        assert_eq!(kept.capacity(), 64);
    }
}
