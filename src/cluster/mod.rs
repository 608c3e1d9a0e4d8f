//! Scale-out: several processors share the partitions of one deployment (`cluster.enabled`).
//!
//! ```text
//!  lease bucket (KV)                     this processor
//!  <stream>.member.<instance> ◄──────── keeper task: renews its member key and partition leases
//!  <stream>.partition.<p>     ◄────────   every ttl/3, then reads the bucket's keys (the View)
//!                                              │ view
//!                                              ▼
//!                                        cluster loop: plan (assignment) ─ give back / take ─►
//!                                          generation(owned partitions) ── runs until a new plan,
//!                                                                          a lost lease, or a stop
//! ```
//!
//! Owns: the membership and partition leases (through [`keeper`]), the spread of partitions
//! over the live processors ([`assignment`]), and the loop that runs this processor's
//! partitions as generations (`processor::generation`), ending one and starting the next
//! whenever what it owns should change: a processor joining takes its share from the others,
//! each of which ends its generation (drain, final snapshots mirrored to the object store),
//! gives the partitions over back and starts a generation with the rest; a processor stopping
//! (SIGTERM) hands all of its partitions over the same way; a dead processor's partitions are
//! free once their leases expire, and the others take them, starting from the snapshots its
//! owner last mirrored.
//!
//! Must never: publish for a partition whose lease may be lost (each generation's fence holds
//! only while all of its leases do; a lost lease ends the generation at once, with nothing
//! published after), give a lease back before the generation that owned the partition has
//! published all it owes and mirrored its final snapshot, or run beside a processor alone on
//! the same streams (each refuses to start while the other kind holds them).
//!
//! Why a stale owner cannot make a duplicate or a divergent output: outputs are deterministic
//! (the same input log gives the same outputs with the same ids, whoever applies it), so a
//! previous owner and its successor can only ever publish the same output under the same id;
//! the output stream stores an id once within its duplicate window, and a successor scans the
//! output stream from its snapshot's floor and skips what is there, whatever the window. The
//! previous owner's fence closes at 4/5 of the TTL after its last confirmed renewal, before the
//! broker can expire the lease and anyone take it; what could still reach the broker after that
//! is a publish already handed to the client before a pause (SIGSTOP, a VM freeze) and written
//! after it: the same bytes under the same id, deduplicated unless the pause outlasted the
//! duplicate window (docs/SCALE-OUT.md).

pub mod assignment;
pub mod keeper;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use futures::{FutureExt, StreamExt};

use crate::lease::{open_bucket, Fence, Holder, LeaseError, LeaseSettings};
use crate::pipeline::Layout;
use crate::processor::generation::{self, Ownership};
use crate::processor::{Base, ProcessorError, RunOptions, RunSummary};
use crate::service::route::Router;
use assignment::{plan, View};
use keeper::{Keeper, Taken};

/// How long a processor waits before starting its partitions again after the broker failed.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs this processor as one of several sharing the partitions, until `shutdown` resolves
/// (then it hands its partitions over and stops) or a fatal error.
pub(crate) async fn run(
    base: &Base,
    options: &RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, ProcessorError> {
    let config = &base.config;
    let partitions = config.engine.partitions;
    let settings = LeaseSettings {
        bucket: config.lease.bucket.clone(),
        key: config.input.stream.clone(),
        ttl: config.lease.ttl,
        replicas: config.input.replicas,
    };
    let context = jetstream::ContextBuilder::new()
        .timeout(config.nats.request_timeout.min(settings.ttl / 4))
        .build(base.client.clone());
    let store = open_bucket_retrying(&context, &settings)
        .await
        .map_err(|e| base.explained(e.into()))?;
    refuse_beside_one_alone(&store, &settings).await?;
    let holder = Holder::this_process();
    let me = holder.instance.clone();
    let keeper = Keeper::start(store, settings, holder.clone(), partitions)
        .await
        .map_err(|e| base.explained(e.into()))?;
    tracing::info!(instance = %me, host = %holder.host, "joined the processors sharing the partitions");
    let router = Router::new(&config.service.subject_prefix).on(base.client.clone());

    let shutdown = shutdown.fuse();
    tokio::pin!(shutdown);
    let stopping = AtomicBool::new(false);
    let mut mine: BTreeMap<u32, Taken> = BTreeMap::new();
    let mut summary = RunSummary::default();
    let mut first = true;
    // What the previous generation owned: the partitions whose newest snapshots are here.
    let mut before: BTreeSet<u32> = BTreeSet::new();
    let mut view_changes = keeper.view.clone();
    let ended = loop {
        if stopping.load(Ordering::Acquire) {
            break Ok(());
        }
        // Partitions lost since the last look are no longer ours.
        let lost = keeper.lost.borrow().clone();
        mine.retain(|p, _| !lost.contains(p));
        let view = keeper.view.borrow().clone().unwrap_or_default();
        let owned: BTreeSet<u32> = mine.keys().copied().collect();
        let step = plan(&view, &me, &owned, partitions);
        if !step.release.is_empty() {
            tracing::info!(partitions = ?step.release, "handing partitions over");
            for partition in &step.release {
                mine.remove(partition);
            }
            keeper.release(step.release.clone()).await;
        }
        if !step.take.is_empty() {
            let taken = keeper.take(step.take.clone()).await;
            if !taken.is_empty() {
                tracing::info!(
                    partitions = ?taken.iter().map(|t| t.partition).collect::<Vec<_>>(),
                    "took partitions"
                );
            }
            mine.extend(taken.into_iter().map(|t| (t.partition, t)));
        }
        let owned: Vec<u32> = mine.keys().copied().collect();
        if owned.is_empty() {
            base.health.set_ready(
                false,
                "this processor owns no partition yet (the others hold them all)",
            );
            tokio::select! {
                _ = &mut shutdown => stopping.store(true, Ordering::Release),
                _ = view_changes.changed() => {}
            }
            continue;
        }
        let layout = Arc::new(Layout::owned(&owned, partitions, config.shard_count()));
        let fence = Fence::all(mine.values().map(|t| &t.fence));
        let set: BTreeSet<u32> = owned.iter().copied().collect();
        let epochs: Vec<(u32, u64)> = mine.values().map(|t| (t.partition, t.epoch)).collect();
        let fetch: Vec<u32> = set.difference(&before).copied().collect();
        tracing::info!(partitions = ?owned, epochs = ?epochs, "running the owned partitions");
        let options = RunOptions {
            rebuild: options.rebuild && first,
            ..options.clone()
        };
        first = false;
        let stop = async {
            tokio::select! {
                _ = &mut shutdown => stopping.store(true, Ordering::Release),
                _ = rebalance_due(&keeper, &me, &set, partitions) => {
                    tracing::info!("the partitions' spread changed; ending this generation");
                }
            }
        };
        let ran = {
            let lost = lost_any(&keeper, &set);
            tokio::pin!(lost);
            generation::run(
                base,
                Ownership {
                    layout,
                    fence,
                    fetch,
                    epochs,
                    router: Some(router.clone()),
                },
                &options,
                stop,
                lost.as_mut(),
            )
            .await
        };
        match ran {
            Ok(ran) => {
                // A generation stopped before it had recovered leaves the directory as it
                // found it, fetched in part: fetch those partitions again next time.
                if ran.recovery.restored + ran.recovery.empty > 0 {
                    before = set;
                }
                summary.recovery = ran.recovery;
                summary.outputs_published += ran.outputs_published;
                summary.snapshots_written += ran.snapshots_written;
                summary.last_applied_seq = summary.last_applied_seq.max(ran.last_applied_seq);
            }
            // The broker failed a request before the generation ran (a node restarting, a
            // leader being elected): the partitions are still ours; try again in a moment.
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "starting the owned partitions failed; retrying");
                tokio::select! {
                    _ = &mut shutdown => stopping.store(true, Ordering::Release),
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
            // A lost lease ends the process: the generation that owned it can publish nothing
            // more, so it cannot be drained (its outputs would wait for ever); restarted (by its
            // supervisor) the processor rejoins and takes its share from the bucket.
            Err(error) => break Err(error),
        }
    };
    base.health.set_ready(false, "stopping");
    keeper.leave().await;
    base.metrics.set_partitions_owned(0);
    ended.map(|()| summary)
}

/// Resolves once the bucket shows that this processor, owning `set`, should own something
/// else.
async fn rebalance_due(keeper: &Keeper, me: &str, set: &BTreeSet<u32>, partitions: u32) {
    let mut view = keeper.view.clone();
    loop {
        if view.changed().await.is_err() {
            return std::future::pending().await;
        }
        let current: Option<View> = view.borrow_and_update().clone();
        if let Some(current) = current {
            if !plan(&current, me, set, partitions).is_empty() {
                return;
            }
        }
    }
}

/// Resolves with the error once a partition of `set` has lost its lease.
async fn lost_any(keeper: &Keeper, set: &BTreeSet<u32>) -> ProcessorError {
    let mut lost = keeper.lost.clone();
    let found = lost
        .wait_for(|lost| lost.iter().any(|p| set.contains(p)))
        .await
        .map(|lost| lost.intersection(set).copied().collect::<Vec<_>>());
    match found {
        Ok(partitions) => ProcessorError::Lease(LeaseError::Lost(format!(
            "the lease of partition(s) {partitions:?}"
        ))),
        Err(_) => std::future::pending().await,
    }
}

/// Tries at most to open the lease bucket at start.
const OPEN_TRIES: u32 = 3;

/// Opens the lease bucket, up to [`OPEN_TRIES`] times [`RETRY_AFTER`] apart: processors
/// starting together create it at once, and a busy broker can let one request of the lease's
/// short timeout (a quarter of the TTL) time out. A lasting refusal is reported after the last.
async fn open_bucket_retrying(
    context: &jetstream::Context,
    settings: &LeaseSettings,
) -> Result<kv::Store, LeaseError> {
    let mut tries = 1;
    loop {
        match open_bucket(context, settings).await {
            Ok(store) => return Ok(store),
            Err(error) if tries < OPEN_TRIES => {
                tracing::warn!(%error, tries, "opening the lease bucket failed; trying again");
                tries += 1;
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The live members sharing the partitions of the streams `settings.key` (instance ids),
/// read from the lease bucket (created when missing).
pub(crate) async fn members(
    client: &async_nats::Client,
    settings: &LeaseSettings,
) -> Result<Vec<String>, ProcessorError> {
    let context = jetstream::ContextBuilder::new()
        .timeout(settings.ttl / 4)
        .build(client.clone());
    let store = open_bucket(&context, settings).await?;
    let prefix = keeper::member_key(&settings.key, "");
    let listed = async {
        let mut keys = store.keys().await.map_err(|e| e.to_string())?;
        let mut members = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(instance) = key.strip_prefix(&prefix) {
                members.push(instance.to_string());
            }
        }
        Ok::<_, String>(members)
    };
    match tokio::time::timeout(settings.ttl, listed).await {
        Ok(Ok(members)) => Ok(members),
        Ok(Err(error)) => Err(ProcessorError::Other(format!(
            "lease bucket {}: listing its keys: {error}",
            settings.bucket
        ))),
        Err(_) => Err(ProcessorError::Other(format!(
            "lease bucket {}: listing its keys timed out (the processor's NATS user may lack \
             $JS.API.CONSUMER.CREATE.KV_{} in config/nats-server.conf)",
            settings.bucket, settings.bucket
        ))),
    }
}

/// Refuses to start while a processor alone holds the streams (its lease is the key
/// `<input.stream>` itself).
async fn refuse_beside_one_alone(
    store: &kv::Store,
    settings: &LeaseSettings,
) -> Result<(), ProcessorError> {
    let entry = store
        .entry(&settings.key)
        .await
        .map_err(|e| ProcessorError::Other(format!("lease bucket {}: {e}", settings.bucket)))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let holder = serde_json::from_slice::<Holder>(&entry.value).map_or_else(
                |_| String::from_utf8_lossy(&entry.value).into_owned(),
                |h| h.to_string(),
            );
            Err(ProcessorError::Other(format!(
                "a processor alone (cluster.enabled = false) holds the streams ({holder}; bucket \
                 {}, key {}): refusing to share them with it. Stop it, or start it with \
                 cluster.enabled = true",
                settings.bucket, settings.key
            )))
        }
        _ => Ok(()),
    }
}
