//! Questions for the shards: how the service reads a partition's state without sharing it.
//!
//! Owns: the [`Question`] a shard answers between batches (or the snapshot encoder answers
//! while it holds the partition), the bounded queue per shard that carries them, and the
//! [`ResultBook`] in which a shard keeps the recent command results and dead letters a
//! command's caller waits for.
//!
//! Must never: let a question touch a partition anywhere but on the thread that holds it (the
//! question travels to the state, never the state to the question), block the asker (it
//! `try_send`s; a full queue is an answer: busy), or keep a question whose asker has given up
//! (each has a deadline; a parked question past it is dropped, which its asker sees as a closed
//! channel).
//!
//! Invariants: a question is answered at most once, with a state that has applied every
//! message of its partition through `min_seq` (or never: dropped at its deadline, or when the
//! shard stops); the `as_of_seq` it is given is a sequence through which the partition has
//! applied every message of its own.

use std::collections::{HashMap, VecDeque};
use std::time::Instant as WallInstant;

use bytes::Bytes;
use crossbeam::channel::{Receiver, Sender};

use crate::engine::Partition;

/// What a question sees when it is answered.
pub struct Seen<'a> {
    pub partition: &'a Partition,
    /// Every message of the partition through this stream sequence has been applied.
    pub as_of_seq: u64,
    /// The shard's recent command results and dead letters; `None` where they are not at hand
    /// (the snapshot encoder), which only questions that do not need them are answered at.
    pub results: Option<&'a ResultBook>,
}

/// What a question needs besides the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// The partition alone: may be answered by the snapshot encoder while it holds it.
    State,
    /// The shard's [`ResultBook`] too (a command waiting for its result).
    Results,
}

/// A question about one partition. `answer` replies to the asker itself (through a channel it
/// captured); dropping it unanswered closes that channel, which the asker reports.
pub struct Question {
    pub partition: u32,
    /// Answer only once the partition has applied every message through this sequence.
    pub min_seq: u64,
    pub needs: Needs,
    /// Past this the asker has given up: a question still parked then is dropped.
    pub deadline: WallInstant,
    pub answer: Box<dyn FnOnce(Seen<'_>) + Send>,
}

impl std::fmt::Debug for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Question")
            .field("partition", &self.partition)
            .field("min_seq", &self.min_seq)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

/// Bounded queues of questions, one per shard.
pub fn question_queues(
    shards: usize,
    capacity: usize,
) -> (Vec<Sender<Question>>, Vec<Receiver<Question>>) {
    (0..shards)
        .map(|_| crossbeam::channel::bounded(capacity.max(1)))
        .unzip()
}

/// A shard's memory of the command results and dead letters it produced recently, for the
/// callers waiting for them: the last `results_max` results (by partition and dedupe key of
/// account and command id) and the last `dead_max` dead letters (by stream sequence). Not part
/// of any snapshot: after a restart it holds what the replay since the snapshots produced.
#[derive(Debug, Default)]
pub struct ResultBook {
    results_max: usize,
    dead_max: usize,
    results: HashMap<(u32, u128), (u64, Bytes)>,
    /// Insertion order of `results`, to forget the oldest.
    order: VecDeque<(u32, u128)>,
    dead: VecDeque<(u64, Bytes)>,
}

impl ResultBook {
    pub fn new(results_max: usize, dead_max: usize) -> ResultBook {
        ResultBook {
            results_max,
            dead_max,
            ..ResultBook::default()
        }
    }

    /// Records the `command.result` of the command `key` (its dedupe key) of `partition`,
    /// caused by the message at `seq`.
    pub fn result(&mut self, partition: u32, key: u128, seq: u64, json: Bytes) {
        if self.results_max == 0 {
            return;
        }
        if self.results.insert((partition, key), (seq, json)).is_none() {
            self.order.push_back((partition, key));
            if self.order.len() > self.results_max {
                if let Some(oldest) = self.order.pop_front() {
                    self.results.remove(&oldest);
                }
            }
        }
    }

    pub fn dead_letter(&mut self, seq: u64, json: Bytes) {
        if self.dead_max == 0 {
            return;
        }
        if self.dead.len() == self.dead_max {
            self.dead.pop_front();
        }
        self.dead.push_back((seq, json));
    }

    /// The `command.result` of the command `key` of `partition` and the sequence of the
    /// message that caused it, if still remembered.
    pub fn find_result(&self, partition: u32, key: u128) -> Option<&(u64, Bytes)> {
        self.results.get(&(partition, key))
    }

    /// The dead letter of the message at `seq`, if it was one and is still remembered.
    pub fn find_dead_letter(&self, seq: u64) -> Option<&Bytes> {
        self.dead
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .map(|(_, j)| j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_forgets_the_oldest() {
        let mut book = ResultBook::new(2, 2);
        for n in 1..=3u64 {
            book.result(0, u128::from(n), n, Bytes::from(format!("r{n}")));
            book.dead_letter(n, Bytes::from(format!("d{n}")));
        }
        assert!(book.find_result(0, 1).is_none());
        assert_eq!(book.find_result(0, 3).map(|r| r.0), Some(3));
        assert!(book.find_result(1, 3).is_none(), "another partition");
        assert!(book.find_dead_letter(1).is_none());
        assert_eq!(book.find_dead_letter(2).map(|b| &b[..]), Some(&b"d2"[..]));
        // The same command again (a retry applied once) does not push another out.
        book.result(0, 3, 9, Bytes::from("r3'"));
        assert_eq!(book.find_result(0, 2).map(|r| r.0), Some(2));
    }
}
