//! The streaming pipeline: a log source feeds shard threads that own partitions of accounts;
//! their outputs go to a sink.
//!
//! ```text
//!  source ──► Dispatcher ──(bounded crossbeam queue per shard, batches)──► shard threads
//!  (NATS reader,            partition → shard = partition % shards          each owns its
//!   demo generator)                                                         partitions outright
//!                                   ┌───────────────────────────────────────────┘
//!                                   ▼
//!                   (one bounded crossbeam queue, output batches in shard order)
//!                                   ▼
//!                        sink (NATS emitter thread, demo counter)
//! ```
//!
//! Owns: the hand-offs between the I/O side and the shards, the shard loop, and the order
//! guarantees: messages of one partition reach its shard in stream order; outputs of one shard
//! reach the sink in the order the shard produced them.
//!
//! Must never: lock on the hot path (queues are crossbeam's bounded channels; a partition is
//! touched only by its shard thread), drop a message when a queue is full (senders block, which
//! stops the source reading, which leaves the backlog in JetStream), or let a shard see a
//! message of a partition it does not own.
//!
//! Invariants: each partition is owned by exactly one shard for the life of the process; a
//! shard applies a batch's messages in order; backpressure, not buffering, absorbs overload.

pub mod dispatch;
pub mod emit;
pub mod ingest;
pub mod partitioned;
pub mod publish;
pub mod question;
pub mod server;
pub mod shard;
pub mod sink;
pub mod streams;
pub mod ticks;

use bytes::Bytes;

use crate::time::Instant;
use crate::wire::subject::{Route, Unroutable};

/// One input message as it came off the log.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// Stream sequence.
    pub seq: u64,
    /// Where its subject sends it: a partition and the kind of messages the subject carries,
    /// or nowhere (dead-lettered by partition 0's shard). Never [`Route::Log`]: see
    /// [`pipeline_route`].
    pub route: Route,
    /// The subject it arrived on, for its dead letter (a shared buffer: cloning it copies
    /// nothing).
    pub subject: async_nats::Subject,
    pub payload: Bytes,
    /// When the stream received it.
    pub received: Option<Instant>,
}

impl Inbound {
    /// The partition its subject names, if any.
    pub fn partition(&self) -> Option<u32> {
        self.route.partition()
    }
}

/// Where a subject of the input stream sends a message in the pipeline: as
/// [`crate::wire::subject::route`], except that a subject outside the prefix (a stream an
/// operator gave more subjects) routes nowhere: only an offline log is routed by account.
pub fn pipeline_route(prefix: &str, subject: &str, partitions: u32) -> Route {
    match crate::wire::subject::route(prefix, subject, partitions) {
        Route::Log => Route::Unroutable(Unroutable::NoPartition),
        route => route,
    }
}

/// One output ready to publish: where, under which message id, and the bytes.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub partition: u32,
    /// Source stream sequence of the input that caused it.
    pub seq: u64,
    /// `<output prefix>.<partition>.<type>`.
    pub subject: String,
    /// The output's id, published as `Nats-Msg-Id`.
    pub id: String,
    pub payload: Bytes,
}

/// What a shard sends to the sink.
#[derive(Debug)]
pub enum SinkMessage {
    Outputs(Vec<Outbound>),
    /// Every output of `partition` caused by a message at or before `seq` has been sent before
    /// this marker; the sink reports back once they are all durable (acked).
    Watermark {
        partition: u32,
        seq: u64,
        done: crossbeam::channel::Sender<WatermarkReached>,
    },
    /// The shard has stopped; after all shards send it, the sink flushes and ends.
    ShardStopped(usize),
}

/// A watermark every output before which is durable. `output_seq_floor` is the highest output
/// stream sequence acked when the marker was reached: every output sent after the marker gets
/// a higher sequence (recovery scans the output stream from there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatermarkReached {
    pub partition: u32,
    pub seq: u64,
    pub output_seq_floor: u64,
}

/// The subject outputs of `partition` with type `kind` are published on.
pub fn output_subject(prefix: &str, partition: u32, kind: &str) -> String {
    format!("{prefix}.{partition}.{kind}")
}

/// Where each partition lives in this process: its shard and its index among that shard's
/// partitions, or nowhere (another processor owns it: `cluster`).
///
/// The partitions a process owns, in increasing order, are dealt to the shards in turn: the
/// i-th goes to shard `i % shards` at index `i / shards`. Owning every partition that is
/// partition `p` on shard `p % shards` at index `p / shards`; owning a subset keeps the shards
/// as even as the whole set does (dealing by partition number would not: the even partitions
/// of two shards would all be shard 0's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shards: usize,
    /// Per partition number: (shard, index in the shard).
    places: Vec<Option<(usize, usize)>>,
}

impl Layout {
    /// Every partition of `partitions`, over `shards` shards.
    pub fn all(partitions: u32, shards: usize) -> Layout {
        Layout::owned(&(0..partitions).collect::<Vec<_>>(), partitions, shards)
    }

    /// The partitions `owned` (each `< partitions`; any order, no repeats) over `shards`
    /// shards.
    pub fn owned(owned: &[u32], partitions: u32, shards: usize) -> Layout {
        let shards = shards.max(1);
        let mut sorted = owned.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut places = vec![None; partitions as usize];
        for (i, partition) in sorted.into_iter().enumerate() {
            assert!(
                partition < partitions,
                "partition {partition} of {partitions}"
            );
            places[partition as usize] = Some((i % shards, i / shards));
        }
        Layout { shards, places }
    }

    /// The shard and index of `partition`, if this process owns it.
    pub fn place(&self, partition: u32) -> Option<(usize, usize)> {
        self.places.get(partition as usize).copied().flatten()
    }

    /// The shard that owns `partition`, if this process does.
    pub fn shard(&self, partition: u32) -> Option<usize> {
        self.place(partition).map(|(shard, _)| shard)
    }

    pub fn owns(&self, partition: u32) -> bool {
        self.place(partition).is_some()
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The partition count of the deployment (owned or not).
    pub fn partitions(&self) -> u32 {
        self.places.len() as u32
    }

    /// The partitions this process owns, in increasing order.
    pub fn owned_partitions(&self) -> Vec<u32> {
        (0..self.partitions()).filter(|p| self.owns(*p)).collect()
    }

    /// The partitions of `shard`, in index order.
    pub fn of_shard(&self, shard: usize) -> Vec<u32> {
        let mut of: Vec<(usize, u32)> = (0..self.partitions())
            .filter_map(|p| match self.place(p) {
                Some((s, index)) if s == shard => Some((index, p)),
                _ => None,
            })
            .collect();
        of.sort_unstable();
        of.into_iter().map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_partitions_strictly() {
        use crate::wire::subject::SubjectKind;
        assert_eq!(
            pipeline_route("creditflow.in", "creditflow.in.7.usage", 16),
            Route::Partition {
                number: 7,
                kind: SubjectKind::Usage
            }
        );
        for subject in [
            "creditflow.in.16.usage",
            "creditflow.in.x.cmd",
            "creditflow.in.7",
            "creditflow.in",
            "creditflow.input.1.usage",
        ] {
            assert!(
                matches!(
                    pipeline_route("creditflow.in", subject, 16),
                    Route::Unroutable(_)
                ),
                "{subject}"
            );
        }
        assert_eq!(
            output_subject("creditflow.out", 3, "invoice.line"),
            "creditflow.out.3.invoice.line"
        );
    }

    #[test]
    fn a_layout_deals_owned_partitions_to_the_shards_in_turn() {
        let all = Layout::all(16, 2);
        assert_eq!(
            all.place(5),
            Some((1, 2)),
            "every partition: p % shards, p / shards"
        );
        assert_eq!(all.of_shard(0), [0, 2, 4, 6, 8, 10, 12, 14]);
        let some = Layout::owned(&[9, 3, 1, 7], 16, 2);
        assert_eq!(some.owned_partitions(), [1, 3, 7, 9]);
        assert_eq!(some.of_shard(0), [1, 7]);
        assert_eq!(some.of_shard(1), [3, 9]);
        assert_eq!(some.place(7), Some((0, 1)));
        assert_eq!(some.place(2), None);
        assert_eq!(some.place(99), None, "past the partition count");
        assert!(!Layout::owned(&[], 4, 2).owns(0));
    }
}
