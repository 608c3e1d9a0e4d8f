//! Recovery: from snapshots and the streams back to a running state, or a loud refusal.
//!
//! Owns: choosing each partition's snapshot (newest valid, else fallback), checking the input
//! stream still holds the history the snapshots stand on, checking the catalog did not rewrite
//! a price already in force, the position to resume reading from, and the set of output ids
//! the output stream already holds past the snapshots (so a replay re-emits none of them).
//!
//! Must never: start empty when the log has history and no snapshot can be trusted (unless
//! told to rebuild from the stream's first message), skip or re-apply silently when the stream
//! lost or rewrote history, or rely on the broker's duplicate window for exactly-once outputs
//! (an outage can outlast it; the scan below does not depend on it).
//!
//! Invariants: the returned partitions, replaying the input stream from `start_seq` (each
//! skipping what it already applied), reach exactly the state and outputs of a run that never
//! stopped; `already_emitted` holds every output id at output stream sequences above the lowest
//! snapshot floor.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use crate::catalog::Catalog;
use crate::engine::Partition;
use crate::snapshot::Store;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "no valid snapshot exists in {dir} but the input stream {stream} already holds {messages} \
         messages: refusing to start with empty balances. If this is a new deployment on an \
         existing stream, or every snapshot is lost, start once with --rebuild to rebuild the state \
         from the stream's first message."
    )]
    NoSnapshotWithHistory {
        dir: String,
        stream: String,
        messages: u64,
    },
    #[error(
        "every snapshot of partition {partition} is corrupt, so its state cannot be trusted:\n  {}\n\
         Start with --rebuild to rebuild from the stream's first message.",
        errors.join("\n  ")
    )]
    AllCorrupt { partition: u32, errors: Vec<String> },
    #[error(
        "snapshots in {dir} were taken with {found} partitions but the config says {configured}: \
         partition numbers would route accounts elsewhere. Use the same partition count, or \
         rebuild (--rebuild) into an empty snapshot directory."
    )]
    PartitionCount {
        dir: String,
        found: u32,
        configured: u32,
    },
    #[error(
        "the input stream {stream} no longer holds the history partition {partition}'s snapshot \
         stands on: {evidence}. The stream was deleted, purged, restored from an older backup or \
         rewritten; refusing to continue, since any choice would lose or double-count events."
    )]
    HistoryRewritten {
        stream: String,
        partition: u32,
        evidence: String,
    },
    #[error(
        "replay must start at sequence {needed} but the input stream {stream} begins at {first}: \
         the messages in between are gone (max_age or limits removed them)."
    )]
    HistoryMissing {
        stream: String,
        needed: u64,
        first: u64,
    },
    #[error(
        "the catalog changed what partition {partition}'s snapshot state was produced with (a price \
         version in force before its clock, or a setting), which would make replay disagree \
         with history:\n  {}\nRoll a change out without rewriting history: a new price version \
         effective after the snapshots' clocks; a new plan (added at the end) and `set_plan` / \
         `set_policy` commands for the accounts to move. To apply a changed setting knowingly, \
         start with --accept-catalog-change <key> for each key named above.",
        problems.join("\n  ")
    )]
    CatalogChanged {
        partition: u32,
        problems: Vec<String>,
    },
    #[error("--rebuild needs the whole history, but the input stream {stream} begins at sequence {first}")]
    RebuildImpossible { stream: String, first: u64 },
    #[error("writing the empty snapshots of a new input stream: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("encoding the empty snapshots of a new input stream: {0}")]
    Codec(#[from] crate::codec::CodecError),
    #[error("{0}")]
    Nats(String),
}

/// Records, for an input stream this process has just created, that every partition's state
/// before its first message is empty: one snapshot per partition at sequence 0.
///
/// Producers may publish the moment the stream exists, before recovery looks at it; without
/// these files a new deployment would see "history and no snapshot" and refuse to start, and so
/// would any restart after a crash that came before the first real snapshot. Written only into
/// an empty store: existing snapshots for a stream that had to be created again are left to
/// recovery, which refuses them (the new stream does not hold their history).
pub fn write_empty_snapshots(store: &Store, partitions: u32) -> Result<(), RecoveryError> {
    if !store.is_empty() {
        return Ok(());
    }
    for number in 0..partitions {
        let partition = Partition::new(number, partitions);
        let payload = crate::codec::encode(&partition)?;
        let header = crate::snapshot::Header {
            partition: number,
            partition_count: partitions,
            applied_through: 0,
            last_seq: 0,
            last_payload_hash: 0,
            output_seq_floor: 0,
            clock: None,
            fingerprints: Vec::new(),
            settings: Vec::new(),
            order: Default::default(),
            previous: None,
        };
        store.write(&header, &payload)?;
    }
    Ok(())
}

/// What recovery found, for the log and the tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoveryReport {
    /// Partitions restored from a snapshot.
    pub restored: u32,
    /// Partitions that fell back past at least one corrupt snapshot.
    pub fell_back: u32,
    /// Snapshot deltas applied to full files, over all partitions.
    pub deltas_applied: usize,
    /// Partitions starting empty (never snapshotted, a rebuild, or an incomplete copy).
    pub empty: u32,
    /// Partitions whose files, fetched from the object store for this start, held no state
    /// that loads (the bucket's copy was incomplete): replayed from the stream's first message.
    pub incomplete_copies: u32,
    pub start_seq: u64,
    /// Output ids already in the output stream past the snapshots' floor.
    pub already_emitted: usize,
    pub output_scan_from: u64,
    /// Messages of the output stream read by the scan for outputs already published.
    pub outputs_scanned: u64,
}

pub struct Recovered {
    pub partitions: Vec<Partition>,
    pub start_seq: u64,
    pub already_emitted: HashSet<String>,
    pub report: RecoveryReport,
}

pub struct Streams<'a> {
    pub context: &'a jetstream::Context,
    pub input: &'a str,
    pub output: &'a str,
    /// The output stream's subject prefix (`output.subject_prefix`): an output's partition is
    /// the token after it.
    pub output_prefix: &'a str,
    /// What the server refused this connection (a request it refuses just times out).
    pub refusals: &'a crate::refusals::Refusals,
}

fn nats(error: impl std::fmt::Display) -> RecoveryError {
    RecoveryError::Nats(error.to_string())
}

/// Recovers every partition `0..partitions`.
pub async fn recover(
    streams: &Streams<'_>,
    store: &Store,
    catalog: &Catalog,
    partitions: u32,
    rebuild: bool,
    accepted_changes: &[String],
) -> Result<Recovered, RecoveryError> {
    let all: Vec<u32> = (0..partitions).collect();
    recover_some(
        streams,
        store,
        catalog,
        (&all, partitions),
        (rebuild, &BTreeSet::new()),
        accepted_changes,
    )
    .await
}

/// Recovers the partitions `owned` of a deployment of `partitions` (a processor sharing the
/// partitions with others recovers only its own: `cluster`). The already-emitted ids are
/// those of the owned partitions' outputs.
///
/// `copied` names the partitions whose files this start fetched from the object store
/// ([`crate::snapshot::remote`]). The bucket is a copy of another processor's directory, and a
/// copy can be incomplete (a delta whose predecessor the bucket lacks: an object store that
/// lost objects when a node died, or a listing that missed them); when nothing of such a
/// partition loads, it is replayed from the stream's first message (slower, never wrong)
/// instead of refused as corrupt, provided the stream still holds that message.
pub async fn recover_some(
    streams: &Streams<'_>,
    store: &Store,
    catalog: &Catalog,
    (owned, partitions): (&[u32], u32),
    (rebuild, copied): (bool, &BTreeSet<u32>),
    accepted_changes: &[String],
) -> Result<Recovered, RecoveryError> {
    let mut input = streams
        .context
        .get_stream(streams.input)
        .await
        .map_err(nats)?;
    let input_state = input.info().await.map_err(nats)?.state.clone();
    let history = input_state.messages > 0 || input_state.last_sequence > 0;
    // A partition copied from the bucket can be replayed while the stream still holds its
    // first message.
    let from_first = !history || input_state.first_sequence <= 1;
    let replayable = |partition: u32| copied.contains(&partition) && from_first;
    let mut report = RecoveryReport::default();

    if rebuild {
        if history && input_state.first_sequence > 1 {
            return Err(RecoveryError::RebuildImpossible {
                stream: streams.input.to_string(),
                first: input_state.first_sequence,
            });
        }
        report.empty = owned.len() as u32;
        report.start_seq = 1;
        let scanned = scan_outputs(streams, 0, None, (owned, partitions)).await?;
        let already_emitted = already_emitted(scanned, 0, &mut report);
        return Ok(Recovered {
            partitions: owned
                .iter()
                .map(|p| Partition::new(*p, partitions))
                .collect(),
            start_seq: 1,
            already_emitted,
            report,
        });
    }

    // The output stream is scanned while the snapshots load (on their own threads), from the
    // floor their newest headers name: the floor of what loads, unless a corrupt file makes a
    // partition fall back to an older one, whose lower floor is then scanned up to it after.
    let guess = owned
        .iter()
        .map(|&p| store.newest_header(p).map_or(0, |h| h.output_seq_floor))
        .min()
        .unwrap_or(0);
    let started = std::time::Instant::now();
    let loading = {
        let (store, owned) = (store.clone(), owned.to_vec());
        tokio::task::spawn_blocking(move || {
            let files = store.load_some(&owned);
            (files, started.elapsed())
        })
    };
    let scanned = scan_outputs(streams, guess, None, (owned, partitions)).await;
    let scan_ms = started.elapsed().as_secs_f64() * 1e3;
    // A load that panicked panics here, as it did on this thread (it is never cancelled).
    let (files, loaded_in) = loading
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let load_ms = loaded_in.as_secs_f64() * 1e3;
    let checking = std::time::Instant::now();
    let nothing = files
        .iter()
        .all(|f| f.loaded.is_none() && f.corrupt.is_empty());
    // (Partitions whose every object in the bucket was unreadable have no files either; they
    // replay like an incomplete copy.)
    if nothing && history && !owned.is_empty() && !owned.iter().all(|&p| replayable(p)) {
        return Err(RecoveryError::NoSnapshotWithHistory {
            dir: store.dir().display().to_string(),
            stream: streams.input.to_string(),
            messages: input_state.messages,
        });
    }

    let mut restored = Vec::with_capacity(owned.len());
    let mut floor = u64::MAX;
    for (&number, files) in owned.iter().zip(files) {
        match files.loaded {
            Some(loaded) => {
                if loaded.header.partition_count != partitions {
                    return Err(RecoveryError::PartitionCount {
                        dir: store.dir().display().to_string(),
                        found: loaded.header.partition_count,
                        configured: partitions,
                    });
                }
                for error in &files.corrupt {
                    tracing::warn!(%error, partition = number, "corrupt snapshot skipped; falling back to an older one");
                }
                if !files.corrupt.is_empty() {
                    report.fell_back += 1;
                }
                check_history(&input, streams.input, number, &loaded.header).await?;
                if let Some(clock) = loaded.header.clock {
                    // Prices, then every other setting: all problems of the partition at once.
                    let mut problems = catalog
                        .check_history_at(&loaded.header.fingerprints, clock)
                        .err()
                        .unwrap_or_default();
                    let settings = catalog
                        .check_settings(&loaded.header.settings, &loaded.header.order)
                        .err()
                        .unwrap_or_default();
                    for problem in settings {
                        let key = problem.split(':').next().unwrap_or_default();
                        // The order cannot be accepted: the state would mean other names.
                        let acceptable = !key.ends_with("(order)");
                        if acceptable && accepted_changes.iter().any(|accepted| accepted == key) {
                            tracing::warn!(partition = number, %problem, "catalog setting changed since the snapshot; accepted (--accept-catalog-change)");
                        } else {
                            problems.push(problem);
                        }
                    }
                    if !problems.is_empty() {
                        return Err(RecoveryError::CatalogChanged {
                            partition: number,
                            problems,
                        });
                    }
                }
                floor = floor.min(loaded.header.output_seq_floor);
                report.restored += 1;
                report.deltas_applied += loaded.deltas;
                let mut partition = loaded.partition;
                if files.corrupt.is_empty() {
                    // The chain goes on from the file loaded: the next snapshot can be a delta.
                    partition.track_changes();
                }
                restored.push(partition);
            }
            // A copy from the bucket that does not load is replayed when the stream still
            // holds its first message; files this process wrote that do not load are refused.
            None if !files.corrupt.is_empty() && !replayable(number) => {
                return Err(RecoveryError::AllCorrupt {
                    partition: number,
                    errors: files.corrupt.iter().map(ToString::to_string).collect(),
                })
            }
            None => {
                if !files.corrupt.is_empty() {
                    let errors: Vec<String> =
                        files.corrupt.iter().map(ToString::to_string).collect();
                    tracing::warn!(
                        partition = number,
                        ?errors,
                        "the object store's copy of this partition does not load (incomplete); \
                         replaying the partition from the stream's first message"
                    );
                    report.incomplete_copies += 1;
                }
                // Never snapshotted (or an incomplete copy): it replays from the stream's first
                // message, and its first snapshot can be a delta of the empty state (written
                // whole).
                floor = 0;
                report.empty += 1;
                let mut partition = Partition::new(number, partitions);
                partition.track_changes();
                restored.push(partition);
            }
        }
    }
    let start_seq = restored
        .iter()
        .map(|p| p.applied_through)
        .min()
        .unwrap_or(0)
        + 1;
    if history && input_state.first_sequence > start_seq {
        return Err(RecoveryError::HistoryMissing {
            stream: streams.input.to_string(),
            needed: start_seq,
            first: input_state.first_sequence,
        });
    }
    report.start_seq = start_seq;
    let check_ms = checking.elapsed().as_secs_f64() * 1e3;
    let floor = if floor == u64::MAX { 0 } else { floor };
    let mut scanned = scanned?;
    if floor < guess {
        let before = scanned.len();
        scanned.extend(scan_outputs(streams, floor, Some(guess), (owned, partitions)).await?);
        tracing::info!(
            from = floor + 1,
            through = guess,
            scanned = scanned.len() - before,
            "a partition fell back to an older snapshot: the output stream scanned from its floor too"
        );
    }
    let already_emitted = already_emitted(scanned, floor, &mut report);
    tracing::info!(
        load_ms,
        scan_ms,
        check_ms,
        scanned = report.outputs_scanned,
        "recovery's steps timed (snapshots loaded and output stream scanned at the same time; history and catalog checked)"
    );
    Ok(Recovered {
        partitions: restored,
        start_seq,
        already_emitted,
        report,
    })
}

/// The input stream must still hold the snapshot's last message, with the same payload, and
/// must not end before the snapshot's position.
async fn check_history(
    input: &jetstream::stream::Stream,
    stream_name: &str,
    partition: u32,
    header: &crate::snapshot::Header,
) -> Result<(), RecoveryError> {
    let rewritten = |evidence: String| RecoveryError::HistoryRewritten {
        stream: stream_name.to_string(),
        partition,
        evidence,
    };
    let last_sequence = input.cached_info().state.last_sequence;
    if last_sequence < header.applied_through {
        return Err(rewritten(format!(
            "the snapshot has applied everything through sequence {} but the stream ends at {last_sequence}",
            header.applied_through
        )));
    }
    if header.last_seq == 0 {
        return Ok(());
    }
    match input.get_raw_message(header.last_seq).await {
        Ok(message) => {
            let hash = xxhash_rust::xxh3::xxh3_64(&message.payload);
            if hash != header.last_payload_hash {
                return Err(rewritten(format!(
                    "sequence {} now holds a different message (payload hash {hash:016x}, the snapshot recorded {:016x})",
                    header.last_seq, header.last_payload_hash
                )));
            }
            Ok(())
        }
        Err(error) => {
            use async_nats::jetstream::stream::RawMessageErrorKind;
            let missing = match error.kind() {
                RawMessageErrorKind::NoMessageFound => true,
                RawMessageErrorKind::JetStream(e) => {
                    e.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND
                }
                _ => false,
            };
            if missing {
                Err(rewritten(format!(
                    "sequence {} (the last message the snapshot applied) is gone: {error}",
                    header.last_seq
                )))
            } else {
                // Not evidence about the history: a timeout here is what a missing permission
                // looks like (the server drops the request), so say which one it needs.
                Err(RecoveryError::Nats(format!(
                    "reading sequence {} of stream {} to check its history failed: {error}. \
                     If it timed out, the processor's NATS user may lack publish permission on \
                     $JS.API.STREAM.MSG.GET.{} (config/nats-server.conf lists what it needs); \
                     the history itself was not found wrong",
                    header.last_seq,
                    input.cached_info().config.name,
                    input.cached_info().config.name
                )))
            }
        }
    }
}

/// The partition of an output published on `<prefix>.<partition>.<type>`.
fn output_partition(subject: &str, prefix: &str) -> Option<u32> {
    subject
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// How long the output scan waits for its next message before giving up.
const SCAN_WAIT_MAX: Duration = Duration::from_secs(30);

/// The scan's next message; an error at once when the server refuses the scan's requests (a
/// pull request the user may not make is dropped, and the scan would wait for nothing).
async fn next_scanned(
    messages: &mut jetstream::consumer::pull::Ordered,
    streams: &Streams<'_>,
) -> Result<Option<Result<jetstream::Message, impl std::fmt::Display>>, RecoveryError> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(next) = tokio::time::timeout(Duration::from_millis(250), messages.next()).await {
            return Ok(next);
        }
        if let Some(refused) = streams.refusals.permission(streams.output) {
            return Err(nats(format!(
                "scanning the output stream {} for outputs already published: the NATS server \
                 refused it ({refused}); the processor's user needs that permission \
                 (config/nats-server.conf lists them)",
                streams.output
            )));
        }
        if started.elapsed() >= SCAN_WAIT_MAX {
            return Err(nats(format!(
                "timed out scanning the output stream {} (no message in {SCAN_WAIT_MAX:?})",
                streams.output
            )));
        }
    }
}

/// The ids of the outputs `scanned` after output stream sequence `floor` (the emitter skips
/// them when the replay produces them again), with the scan's figures in `report`.
fn already_emitted(
    scanned: Vec<(u64, Option<String>)>,
    floor: u64,
    report: &mut RecoveryReport,
) -> HashSet<String> {
    report.output_scan_from = floor + 1;
    report.outputs_scanned = scanned.len() as u64;
    let ids: HashSet<String> = scanned
        .into_iter()
        .filter(|&(sequence, _)| sequence > floor)
        .filter_map(|(_, id)| id)
        .collect();
    report.already_emitted = ids.len();
    ids
}

/// The output stream's messages after sequence `floor` (through `until`, when given, else
/// through its last message when the scan starts): each one's sequence, and its id when it is
/// an output of the partitions `owned` (an output's partition is its subject's token after the
/// output prefix: the stream's subjects are `<prefix>.<partition>.<type>`, so the token before
/// the last ones of a subject whose partition this process does not own is skipped).
async fn scan_outputs(
    streams: &Streams<'_>,
    floor: u64,
    until: Option<u64>,
    (owned, partitions): (&[u32], u32),
) -> Result<Vec<(u64, Option<String>)>, RecoveryError> {
    let mut mine = vec![false; partitions as usize];
    for &p in owned {
        mine[p as usize] = true;
    }
    let every = owned.len() == partitions as usize;
    let mut scanned = Vec::new();
    let mut output = streams
        .context
        .get_stream(streams.output)
        .await
        .map_err(nats)?;
    let stored = output.info().await.map_err(nats)?.state.last_sequence;
    let last = until.map_or(stored, |until| until.min(stored));
    if last <= floor {
        return Ok(scanned);
    }
    let consumer = output
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?;
    loop {
        let next = next_scanned(&mut messages, streams).await?;
        let Some(message) = next else { break };
        let message = message.map_err(nats)?;
        let sequence = message.info().map_err(nats)?.stream_sequence;
        if sequence > last {
            break;
        }
        let ours = every
            || output_partition(&message.subject, streams.output_prefix)
                .is_some_and(|p| mine.get(p as usize).copied().unwrap_or(false));
        let id = ours
            .then_some(&message)
            .and_then(|message| message.headers.as_ref())
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|id| id.as_str().to_string());
        scanned.push((sequence, id));
        if sequence >= last {
            break;
        }
    }
    Ok(scanned)
}

#[cfg(test)]
mod tests {
    use super::output_partition;

    #[test]
    fn an_outputs_partition_is_the_token_after_the_prefix() {
        let prefix = "creditflow.out";
        assert_eq!(
            output_partition("creditflow.out.7.invoice.line", prefix),
            Some(7)
        );
        assert_eq!(
            output_partition("creditflow.out.12.dead_letter", prefix),
            Some(12)
        );
        assert_eq!(output_partition("creditflow.outx.1.a", prefix), None);
        assert_eq!(output_partition("other.1.a", prefix), None);
    }
}
