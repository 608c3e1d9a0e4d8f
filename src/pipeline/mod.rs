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

/// Which shard owns `partition`.
pub fn shard_of(partition: u32, shards: usize) -> usize {
    partition as usize % shards.max(1)
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
        assert_eq!(shard_of(5, 2), 1);
    }
}
