//! The dispatcher: routes each input message to the shard that owns its partition, in batches.
//!
//! Owns: the per-shard batch being filled, the sending ends of the shard queues, and the
//! emptied batch buffers the shards hand back (a batch's buffer is ~100 KiB at the default
//! 1024 messages: allocating a fresh one per batch cost page faults on both threads).
//!
//! Must never: reorder two messages of one partition (a partition maps to one shard, and a
//! shard's batches are sent in order), or drop a message: when a shard's queue is full, `push`
//! and `flush` block until it has room, which is how backpressure reaches the source.
//!
//! Invariants: a batch holds at most `batch_size_max` messages; `flush` leaves no message
//! waiting in the dispatcher, after which its position ([`Dispatcher::dispatched`]) is the
//! last sequence pushed: every message through it is on its shard's queue or already taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::channel::{Receiver, Sender};

use super::{Inbound, Layout};

/// What a shard thread receives.
#[derive(Debug)]
pub enum ShardInput {
    Batch(Batch),
    /// Apply everything received so far, flush outputs, snapshot if asked, and stop.
    Stop,
}

/// Messages for one shard, in stream order per partition, with the way back for their buffer.
#[derive(Debug)]
pub struct Batch {
    pub messages: Vec<Inbound>,
    /// Every message at or before this stream sequence of the partitions this process owns
    /// has been handed to its shard: it is in this batch or an earlier one, so after this batch
    /// the shard's partitions have applied everything of theirs through it.
    pub through: u64,
    back: Sender<Vec<Inbound>>,
}

impl Batch {
    /// Empties the buffer and hands it back to the dispatcher (dropped when it has enough).
    pub fn recycle(mut self) {
        self.messages.clear();
        let _ = self.back.try_send(self.messages);
    }
}

/// Emptied buffers kept for reuse at most, per shard.
const SPARE_PER_SHARD: usize = 8;

pub struct Dispatcher {
    senders: Vec<Sender<ShardInput>>,
    /// Which shard owns which partition; messages of partitions this process does not own
    /// are passed over (another processor applies them: `cluster`).
    layout: Arc<Layout>,
    pending: Vec<Vec<Inbound>>,
    spare: (Sender<Vec<Inbound>>, Receiver<Vec<Inbound>>),
    batch_size_max: usize,
    /// The highest sequence pushed so far.
    pushed: u64,
    /// Every message of the owned partitions through this sequence has been pushed: `pushed`
    /// for a source that reads the stream in order ([`Dispatcher::push`]), what the source says
    /// for one that reads each partition on its own ([`Dispatcher::complete_through`]).
    through: u64,
    /// The source reads each partition on its own (messages of two partitions may come out of
    /// stream order): `through` is the source's, not `pushed`.
    partitioned: bool,
    dispatched: Arc<AtomicU64>,
}

/// Bounded queues for `shards` shards, each holding at most `queue_batches_max` batches.
pub fn shard_queues(
    shards: usize,
    queue_batches_max: usize,
) -> (Vec<Sender<ShardInput>>, Vec<Receiver<ShardInput>>) {
    (0..shards)
        .map(|_| crossbeam::channel::bounded(queue_batches_max.max(1)))
        .unzip()
}

impl Dispatcher {
    pub fn new(
        senders: Vec<Sender<ShardInput>>,
        batch_size_max: usize,
        layout: Arc<Layout>,
    ) -> Dispatcher {
        let shards = senders.len();
        assert_eq!(shards, layout.shards(), "one queue per shard of the layout");
        Dispatcher {
            senders,
            layout,
            pending: (0..shards)
                .map(|_| Vec::with_capacity(batch_size_max))
                .collect(),
            batch_size_max: batch_size_max.max(1),
            spare: crossbeam::channel::bounded(shards * SPARE_PER_SHARD),
            pushed: 0,
            through: 0,
            partitioned: false,
            dispatched: Arc::default(),
        }
    }

    /// The stream sequence through which every message has been handed to its shard's queue,
    /// updated at every flush (shards read it to know how far an empty queue means they are).
    pub fn dispatched(&self) -> Arc<AtomicU64> {
        self.dispatched.clone()
    }

    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Batches waiting in each shard's queue (for metrics).
    pub fn queue_depths(&self) -> Vec<usize> {
        self.senders.iter().map(Sender::len).collect()
    }

    /// Adds one message; sends its shard's batch when full. `Err` when a shard has gone. A
    /// message of a partition this process does not own is passed over (it still moves the
    /// position: nothing of ours is before it).
    pub fn push(&mut self, message: Inbound) -> Result<(), ShardGone> {
        self.pushed = self.pushed.max(message.seq);
        if !self.partitioned {
            // In stream order: everything before this message has been pushed.
            self.through = self.pushed;
        }
        // A subject that names no partition is dead-lettered by partition 0's shard.
        let Some(shard) = self.layout.shard(message.partition().unwrap_or(0)) else {
            return Ok(());
        };
        self.pending[shard].push(message);
        if self.pending[shard].len() >= self.batch_size_max {
            self.send(shard)?;
        }
        Ok(())
    }

    /// For a source that reads each partition on its own: every message of the owned
    /// partitions through `seq` has been pushed (never moves back).
    pub fn complete_through(&mut self, seq: u64) {
        self.partitioned = true;
        self.through = self.through.max(seq);
    }

    /// Sends every non-empty batch (the source calls this when no message is immediately
    /// available, so a quiet stream does not leave messages waiting for a full batch).
    pub fn flush(&mut self) -> Result<(), ShardGone> {
        for shard in 0..self.senders.len() {
            if !self.pending[shard].is_empty() {
                self.send(shard)?;
            }
        }
        self.dispatched.store(self.through, Ordering::Release);
        Ok(())
    }

    /// True when no message waits in the dispatcher.
    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(Vec::is_empty)
    }

    fn send(&mut self, shard: usize) -> Result<(), ShardGone> {
        let fresh = self
            .spare
            .1
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.batch_size_max));
        let messages = std::mem::replace(&mut self.pending[shard], fresh);
        let batch = Batch {
            messages,
            through: self.through,
            back: self.spare.0.clone(),
        };
        self.senders[shard]
            .send(ShardInput::Batch(batch))
            .map_err(|_| ShardGone(shard))
    }

    /// Flushes, then tells every shard to stop.
    pub fn stop(mut self) -> Result<(), ShardGone> {
        self.flush()?;
        for (shard, sender) in self.senders.iter().enumerate() {
            sender
                .send(ShardInput::Stop)
                .map_err(|_| ShardGone(shard))?;
        }
        Ok(())
    }
}

/// A shard thread ended (it panicked or stopped): its queue has no receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard {0} is gone")]
pub struct ShardGone(pub usize);

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequences a shard's queue received, in order, until the dispatcher stopped.
    fn seqs(receiver: &Receiver<ShardInput>) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Ok(ShardInput::Batch(batch)) = receiver.recv() {
            seqs.extend(batch.messages.iter().map(|m| m.seq));
        }
        seqs
    }

    fn message(seq: u64, partition: u32) -> Inbound {
        Inbound {
            seq,
            route: crate::wire::subject::Route::Partition {
                number: partition,
                kind: crate::wire::subject::SubjectKind::Usage,
            },
            subject: async_nats::Subject::from_static("creditflow.in.0.usage"),
            payload: bytes::Bytes::new(),
            received: None,
        }
    }

    fn layout(shards: usize) -> Arc<Layout> {
        Arc::new(Layout::all(8, shards))
    }

    #[test]
    fn messages_of_partitions_owned_elsewhere_are_passed_over() {
        let (senders, receivers) = shard_queues(2, 8);
        let owned = Arc::new(Layout::owned(&[1, 2], 4, 2));
        let mut dispatcher = Dispatcher::new(senders, 8, owned);
        let position = dispatcher.dispatched();
        for (seq, partition) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
            dispatcher.push(message(seq, partition)).unwrap();
        }
        dispatcher.flush().unwrap();
        assert_eq!(
            position.load(Ordering::Acquire),
            4,
            "the position passes them too"
        );
        dispatcher.stop().unwrap();
        assert_eq!(
            seqs(&receivers[0]),
            [2],
            "partition 1 is the first owned: shard 0"
        );
        assert_eq!(seqs(&receivers[1]), [3]);
    }

    #[test]
    fn batches_go_to_the_owning_shard_in_order() {
        let (senders, receivers) = shard_queues(2, 8);
        let mut dispatcher = Dispatcher::new(senders, 2, layout(2));
        for (seq, partition) in [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)] {
            dispatcher.push(message(seq, partition)).unwrap();
        }
        dispatcher.stop().unwrap();
        assert_eq!(seqs(&receivers[0]), [1, 3, 5]);
        assert_eq!(seqs(&receivers[1]), [2, 4]);
    }

    #[test]
    fn the_position_moves_only_once_everything_before_it_is_queued() {
        let (senders, receivers) = shard_queues(2, 8);
        let mut dispatcher = Dispatcher::new(senders, 4, layout(2));
        let position = dispatcher.dispatched();
        dispatcher.push(message(1, 0)).unwrap();
        dispatcher.push(message(2, 1)).unwrap();
        assert_eq!(
            position.load(Ordering::Acquire),
            0,
            "both still wait in the dispatcher"
        );
        dispatcher.flush().unwrap();
        assert_eq!(position.load(Ordering::Acquire), 2);
        assert!(receivers.iter().all(|r| r.len() == 1));
    }

    #[test]
    fn a_full_queue_blocks_instead_of_dropping() {
        let (senders, receivers) = shard_queues(1, 1);
        let mut dispatcher = Dispatcher::new(senders, 1, layout(1));
        dispatcher.push(message(1, 0)).unwrap();
        let handle = std::thread::spawn(move || {
            dispatcher.push(message(2, 0)).unwrap();
            dispatcher
        });
        // The second push waits until the first batch is taken.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!handle.is_finished());
        assert!(
            matches!(receivers[0].recv().unwrap(), ShardInput::Batch(b) if b.messages[0].seq == 1)
        );
        let dispatcher = handle.join().unwrap();
        assert!(
            matches!(receivers[0].recv().unwrap(), ShardInput::Batch(b) if b.messages[0].seq == 2)
        );
        drop(dispatcher);
    }

    #[test]
    fn an_emptied_batch_buffer_is_reused_for_a_later_batch() {
        let (senders, receivers) = shard_queues(1, 8);
        let mut dispatcher = Dispatcher::new(senders, 4, layout(1));
        dispatcher.push(message(1, 0)).unwrap();
        dispatcher.flush().unwrap();
        let ShardInput::Batch(first) = receivers[0].recv().unwrap() else {
            panic!("a batch")
        };
        let buffer = first.messages.as_ptr();
        first.recycle();
        // The buffer that replaced the first batch's in the dispatcher is filled next; the
        // recycled one is taken at the send after.
        dispatcher.push(message(2, 0)).unwrap();
        dispatcher.flush().unwrap();
        dispatcher.push(message(3, 0)).unwrap();
        dispatcher.flush().unwrap();
        let _second = receivers[0].recv().unwrap();
        let ShardInput::Batch(third) = receivers[0].recv().unwrap() else {
            panic!("a batch")
        };
        assert_eq!(
            third.messages.as_ptr(),
            buffer,
            "the first batch's buffer came back"
        );
        assert_eq!(third.messages.len(), 1);
        assert_eq!(third.messages[0].seq, 3);
    }
}
