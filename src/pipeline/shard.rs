//! A shard: one thread that owns a set of partitions outright and applies their messages.
//!
//! Owns: its partitions (state, positions, order), turning engine outputs into publishable
//! bytes, and the decision of when to hand a partition to the snapshot writer.
//!
//! Must never: share a partition with another thread, block on anything but its input queue and
//! the sink's queue (both bounded, both crossbeam), or apply a message twice: after a restart,
//! a message at or before a partition's `applied_through` is skipped.
//!
//! Invariants: messages are applied in the order they arrive, which is stream order per
//! partition; after a batch every partition of the shard has `applied_through` = the batch's last
//! sequence (all of the shard's messages up to there are applied); outputs leave in the order
//! they were produced.

use std::sync::Arc;
use std::time::Instant as WallInstant;

use bytes::Bytes;
use crossbeam::channel::{Receiver, Sender};

use super::dispatch::ShardInput;
use super::{input_subject, output_subject, Inbound, Outbound, SinkMessage};
use crate::catalog::Catalog;
use crate::engine::{Envelope, Partition};
use crate::wire::output::Output;

/// Called with every partition a snapshot policy picks, after the batch that made it due.
pub trait SnapshotHook: Send {
    /// Decides whether `partition` (which has applied everything through `seq`) is due, and if
    /// so takes its snapshot (encoding happens here, on the shard thread; writing elsewhere).
    fn after_batch(&mut self, partition: &Partition, seq: u64, sink: &Sender<SinkMessage>);
    /// The shard is stopping: take a final snapshot of every partition.
    fn at_stop(&mut self, partition: &Partition, seq: u64, sink: &Sender<SinkMessage>);
}

/// No snapshots (the demo, tests of the pipeline alone).
pub struct NoSnapshots;

impl SnapshotHook for NoSnapshots {
    fn after_batch(&mut self, _: &Partition, _: u64, _: &Sender<SinkMessage>) {}
    fn at_stop(&mut self, _: &Partition, _: u64, _: &Sender<SinkMessage>) {}
}

/// Per batch timing, for the apply-latency metric.
pub trait ShardObserver: Send {
    fn batch_applied(
        &mut self,
        shard: usize,
        messages: usize,
        elapsed: std::time::Duration,
        partitions: &[Partition],
    );
}

pub struct NoObserver;

impl ShardObserver for NoObserver {
    fn batch_applied(&mut self, _: usize, _: usize, _: std::time::Duration, _: &[Partition]) {}
}

pub struct Shard<S: SnapshotHook, O: ShardObserver> {
    pub number: usize,
    pub shards: usize,
    pub catalog: Arc<Catalog>,
    /// Partitions `number`, `number + shards`, … in that order.
    pub partitions: Vec<Partition>,
    pub input_prefix: String,
    pub output_prefix: String,
    pub snapshots: S,
    pub observer: O,
}

impl<S: SnapshotHook, O: ShardObserver> Shard<S, O> {
    /// Runs until `Stop` or until the input queue closes; returns the partitions.
    pub fn run(mut self, input: Receiver<ShardInput>, sink: Sender<SinkMessage>) -> Vec<Partition> {
        let subjects: Vec<String> = self
            .partitions
            .iter()
            .map(|p| input_subject(&self.input_prefix, p.number))
            .collect();
        let mut outputs: Vec<Output> = Vec::new();
        let mut last_seq = 0u64;
        while let Ok(message) = input.recv() {
            let batch = match message {
                ShardInput::Batch(batch) => batch,
                ShardInput::Stop => break,
            };
            let started = WallInstant::now();
            let mut outbound = Vec::new();
            for inbound in &batch {
                let partition = self.apply(inbound, &subjects, &mut outputs);
                for output in outputs.drain(..) {
                    outbound.push(self.outbound(partition, output));
                }
            }
            if let Some(last) = batch.last() {
                last_seq = last.seq;
                for partition in &mut self.partitions {
                    partition.applied_through = partition.applied_through.max(last.seq);
                }
            }
            if !outbound.is_empty() && sink.send(SinkMessage::Outputs(outbound)).is_err() {
                // The sink is gone: the process is failing; stop without applying more.
                break;
            }
            self.observer.batch_applied(
                self.number,
                batch.len(),
                started.elapsed(),
                &self.partitions,
            );
            for partition in &self.partitions {
                self.snapshots.after_batch(partition, last_seq, &sink);
            }
        }
        for partition in &self.partitions {
            self.snapshots
                .at_stop(partition, partition.applied_through, &sink);
        }
        let _ = sink.send(SinkMessage::ShardStopped(self.number));
        self.partitions
    }

    /// Applies one message; returns the partition that handled it (its outputs go to that
    /// partition's output subjects).
    fn apply(&mut self, inbound: &Inbound, subjects: &[String], outputs: &mut Vec<Output>) -> u32 {
        let catalog = &*self.catalog;
        let Some(number) = inbound.partition else {
            // Subjects that name no partition are dead-lettered by partition 0 (this shard
            // owns it, or the dispatcher would not have sent it here).
            let subject = format!("{}.?", self.input_prefix);
            let envelope = Envelope {
                payload: &inbound.payload,
                seq: inbound.seq,
                subject: &subject,
                received: inbound.received,
            };
            let partition = &mut self.partitions[0];
            partition.dead_letter_unrouted(&envelope, outputs);
            return partition.number;
        };
        let index = number as usize / self.shards;
        let partition = &mut self.partitions[index];
        debug_assert_eq!(
            partition.number, number,
            "partition routed to the wrong shard"
        );
        if inbound.seq <= partition.applied_through {
            // Already in the partition's snapshot: a replay after a restart.
            return number;
        }
        let envelope = Envelope {
            payload: &inbound.payload,
            seq: inbound.seq,
            subject: &subjects[index],
            received: inbound.received,
        };
        partition.apply(catalog, &envelope, Some(number), outputs);
        partition.applied_through = inbound.seq;
        number
    }

    fn outbound(&self, partition: u32, output: Output) -> Outbound {
        Outbound {
            partition,
            seq: output.seq,
            subject: output_subject(&self.output_prefix, partition, output.body.type_name()),
            id: output.id.clone(),
            payload: Bytes::from(output.to_json()),
        }
    }
}
