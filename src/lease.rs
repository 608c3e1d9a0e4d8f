//! The lease: one processor at a time on a set of streams, recorded in a JetStream key-value
//! bucket.
//!
//! Owns: taking the lease ([`Lease::acquire`]), keeping it ([`Lease::keep`]: a renewal every
//! TTL/3), giving it back on a clean stop, and the [`Fence`] the publishing parts ask before
//! each publish.
//!
//! How it works: the bucket (`lease.bucket`, a stream `KV_<bucket>` with one value per key) has
//! `max_age` = the TTL, so a value nobody renews disappears TTL after it was written (nats-server
//! 2.9 has no per-key TTL; the bucket's age limit does the same for a bucket of leases that all
//! share one TTL). The key names what is held (the input stream's name; a later version may
//! hold one key per partition). Taking it is `create` (a write expecting revision 0: it fails
//! while another value lives); renewing is `update(key, value, revision)` (a write expecting
//! the revision this holder last wrote: it fails once anyone else has written). The value is a
//! JSON [`Holder`]: host, pid, start time and a random instance id, so a refusal can say who
//! holds the streams.
//!
//! A holder that is provably gone is taken over at once instead of after the TTL: same machine
//! (same boot id and pid namespace) and its process no longer exists (or is a zombie, or the pid
//! now belongs to a process started at another time). Anything that cannot be proven (another
//! machine, another container, a process that is alive but stopped) waits for the TTL.
//!
//! Must never: let a holder publish once it may have lost the lease. The holder counts its
//! lease as valid until 4/5 of the TTL after it *sent* its last successful renewal (the broker
//! measures the TTL from when it stored it, later), so it stops at least TTL/5 before the value
//! can expire and another processor take it. The [`Fence`] reads the monotonic clock itself,
//! so a holder whose renewal task is starved or whose process was stopped (SIGSTOP, a VM pause)
//! finds its lease expired the moment it runs again, before it publishes.
//!
//! Invariants: at most one live value per key; a holder's revision is the bucket's last for its
//! key whenever its fence holds. A renewal that fails with a wrong revision is reconciled by
//! reading the key: our own value (a renewal whose ack was lost) is adopted; no value (the broker
//! lost it, or it expired while nobody else took it) is created again; another holder's value
//! means the lease is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Which lease, in which bucket, for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The key-value bucket (its stream is `KV_<bucket>`).
    pub bucket: String,
    /// What is held: a valid key (`[-/_=.a-zA-Z0-9]`, no leading or trailing `.`).
    pub key: String,
    /// The bucket's `max_age`: how long an unrenewed value lives. Renewals every TTL/3.
    pub ttl: Duration,
    /// Replicas of the bucket's stream (as the input stream's).
    pub replicas: usize,
}

impl LeaseSettings {
    /// How long after sending a successful renewal the holder counts its lease as valid.
    pub fn valid_for(&self) -> Duration {
        self.ttl * 4 / 5
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Each request to the bucket gives up after this, so a renewal never waits past the next.
    fn request_timeout(&self) -> Duration {
        self.ttl / 4
    }
}

/// Who holds a lease: the value stored under the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Wall-clock start of the process, RFC 3339.
    pub started_at: String,
    /// Random, fresh for every start: tells two starts of the same pid apart.
    pub instance: String,
    /// Linux: `/proc/sys/kernel/random/boot_id` (empty elsewhere).
    #[serde(default)]
    pub boot_id: String,
    /// Linux: the `/proc/self/ns/pid` link, e.g. `pid:[4026531836]` (empty elsewhere).
    #[serde(default)]
    pub pid_namespace: String,
    /// Linux: the process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    #[serde(default)]
    pub process_start: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {}, pid {}, started {}, instance {}",
            self.host, self.pid, self.started_at, self.instance
        )
    }
}

impl Holder {
    /// This process, with a fresh instance id.
    pub fn this_process() -> Holder {
        let pid = std::process::id();
        Holder {
            host: read_trimmed("/proc/sys/kernel/hostname")
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "unknown".into()),
            pid,
            started_at: crate::pipeline::ticks::wall_clock().to_string(),
            instance: instance_id(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .map(|link| link.display().to_string())
                .unwrap_or_default(),
            process_start: process_state(pid).map_or(0, |(_, start)| start),
        }
    }

    /// True only when `self` provably ran on this machine, in this pid namespace, and its
    /// process is gone. Anything unknown counts as alive.
    pub fn is_gone_from(&self, here: &Holder) -> bool {
        if self.boot_id.is_empty()
            || self.pid_namespace.is_empty()
            || self.boot_id != here.boot_id
            || self.pid_namespace != here.pid_namespace
            || self.instance == here.instance
        {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(error) => error.kind() == std::io::ErrorKind::NotFound,
            Ok(text) => match parse_stat(&text) {
                // A zombie has exited; a pid started at another time is another process.
                Some((state, start)) => {
                    state == 'Z' || (self.process_start != 0 && start != self.process_start)
                }
                None => false,
            },
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

/// 128 random bits in hex, from the standard library's randomly seeded hasher keys.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let part = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.finish()
    };
    format!(
        "{:016x}{:016x}",
        part(u64::from(std::process::id())),
        part(1)
    )
}

/// (state, start time in ticks) of `pid` from `/proc/<pid>/stat`.
fn process_state(pid: u32) -> Option<(char, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid (comm) state ... starttime ...`: the command may hold spaces and parentheses, so the
/// fields are counted from the last `)`; state is field 3, start time field 22.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another processor holds the lease on these streams ({holder}; bucket {bucket}, key {key}, \
         written {age_ms} ms ago): refusing to start. Stop it first; if it is gone, its lease \
         expires {ttl:?} after its last renewal (lease.ttl)"
    )]
    Held {
        bucket: String,
        key: String,
        holder: String,
        age_ms: u64,
        ttl: Duration,
    },
    #[error("the lease on these streams is lost ({0}); stopped applying and publishing")]
    Lost(String),
    #[error("lease bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
}

/// What the publishing parts ask before each publish: does this process still hold the lease
/// (every one of its leases, for a fence made by [`Fence::all`])? Cheap (an atomic load and a
/// monotonic clock read per lease) and correct even when the renewal task has not run for a
/// while.
#[derive(Clone, Debug)]
pub struct Fence(Arc<[Arc<FenceState>]>);

#[derive(Debug)]
struct FenceState {
    base: WallInstant,
    /// Milliseconds after `base` until which the lease counts as held.
    valid_until_ms: AtomicU64,
    lost: AtomicBool,
}

impl FenceState {
    fn holds(&self, now: WallInstant) -> bool {
        !self.lost.load(Ordering::Acquire)
            && self.millis(now) < self.valid_until_ms.load(Ordering::Acquire)
    }

    fn millis(&self, at: WallInstant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }
}

impl Fence {
    fn new() -> Fence {
        Fence(Arc::new([Arc::new(FenceState {
            base: WallInstant::now(),
            valid_until_ms: AtomicU64::new(0),
            lost: AtomicBool::new(false),
        })]))
    }

    /// A fence that always holds (a process that runs without a lease: tests, the demo).
    pub fn always() -> Fence {
        let fence = Fence::new();
        fence.0[0].valid_until_ms.store(u64::MAX, Ordering::Release);
        fence
    }

    /// A fence that holds while every one of `fences` does (a processor owning several
    /// partitions, each under its own lease, publishes only while it holds them all).
    pub fn all<'a>(fences: impl IntoIterator<Item = &'a Fence>) -> Fence {
        Fence(
            fences
                .into_iter()
                .flat_map(|fence| fence.0.iter().cloned())
                .collect(),
        )
    }

    pub fn holds(&self) -> bool {
        let now = WallInstant::now();
        self.0.iter().all(|state| state.holds(now))
    }

    /// Valid until `valid_for` after `sent` (never moves back).
    fn extend(&self, sent: WallInstant, valid_for: Duration) {
        for state in self.0.iter() {
            let until = state.millis(sent + valid_for);
            state.valid_until_ms.fetch_max(until, Ordering::AcqRel);
        }
    }

    fn lose(&self) {
        for state in self.0.iter() {
            state.lost.store(true, Ordering::Release);
        }
    }
}

/// A lease held by this process.
pub struct Lease {
    store: kv::Store,
    settings: LeaseSettings,
    holder: Holder,
    value: Bytes,
    revision: u64,
    /// The revision the lease was taken at.
    epoch: u64,
    fence: Fence,
}

impl Lease {
    /// A lease of `holder` in `store` not taken yet (revision and epoch 0, a fresh fence): what
    /// [`Lease::acquire`] and [`Lease::try_take`] then try to write.
    fn unheld(
        store: kv::Store,
        settings: LeaseSettings,
        holder: Holder,
    ) -> Result<Lease, LeaseError> {
        let value =
            Bytes::from(serde_json::to_vec(&holder).map_err(|e| bucket_error(&settings, e))?);
        Ok(Lease {
            store,
            settings,
            holder,
            value,
            revision: 0,
            epoch: 0,
            fence: Fence::new(),
        })
    }

    /// Takes the lease, or says who holds it. Creates the bucket when it does not exist; refuses
    /// one whose `max_age` is not `settings.ttl` (every processor of a bucket must share one TTL).
    pub async fn acquire(
        client: async_nats::Client,
        settings: LeaseSettings,
        holder: Holder,
    ) -> Result<Lease, LeaseError> {
        let context = jetstream::ContextBuilder::new()
            .timeout(settings.request_timeout())
            .build(client);
        let store = open_bucket(&context, &settings).await?;
        let lease = Lease::unheld(store, settings, holder)?;
        // Twice at most: the value seen may expire or be deleted between the write and the read.
        for _ in 0..2 {
            let sent = WallInstant::now();
            match lease
                .store
                .create(&lease.settings.key, lease.value.clone())
                .await
            {
                Ok(revision) => return Ok(lease.held(revision, sent)),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(error) => return Err(bucket_error(&lease.settings, error)),
            }
            let Some((current, revision, age)) = lease.current().await? else {
                continue;
            };
            match current {
                Ok(current) if current.is_gone_from(&lease.holder) => {
                    tracing::warn!(holder = %current, "the lease's holder has exited on this machine; taking the lease over");
                    let sent = WallInstant::now();
                    match lease
                        .store
                        .update(&lease.settings.key, lease.value.clone(), revision)
                        .await
                    {
                        Ok(revision) => return Ok(lease.held(revision, sent)),
                        // Someone else was faster: look again.
                        Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                        Err(error) => return Err(bucket_error(&lease.settings, error)),
                    }
                }
                current => {
                    return Err(LeaseError::Held {
                        bucket: lease.settings.bucket.clone(),
                        key: lease.settings.key.clone(),
                        holder: current.map_or_else(|text| text, |h| h.to_string()),
                        age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                        ttl: lease.settings.ttl,
                    })
                }
            }
        }
        let entry = lease.current().await?;
        Err(LeaseError::Held {
            bucket: lease.settings.bucket.clone(),
            key: lease.settings.key.clone(),
            holder: entry.map_or_else(
                || "changing hands".to_string(),
                |(h, _, _)| h.map_or_else(|text| text, |h| h.to_string()),
            ),
            age_ms: 0,
            ttl: lease.settings.ttl,
        })
    }

    /// Takes the lease in the open bucket `store` if nobody holds it: `None` when a live value
    /// is there (a partition's lease between processors sharing the partitions: the holder is
    /// not looked at, a free partition is simply another one).
    pub async fn try_take(
        store: kv::Store,
        settings: LeaseSettings,
        holder: Holder,
    ) -> Result<Option<Lease>, LeaseError> {
        let lease = Lease::unheld(store, settings, holder)?;
        let sent = WallInstant::now();
        match tokio::time::timeout(
            lease.settings.request_timeout(),
            lease.store.create(&lease.settings.key, lease.value.clone()),
        )
        .await
        {
            Ok(Ok(revision)) => Ok(Some(lease.held(revision, sent))),
            Ok(Err(error)) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Ok(Err(error)) => Err(bucket_error(&lease.settings, error)),
            Err(_) => Err(bucket_error(&lease.settings, "taking the lease timed out")),
        }
    }

    /// The revision at which this holder took the lease (a renewal writes a new one): the
    /// fencing epoch of its tenure, higher than every earlier holder's.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn held(mut self, revision: u64, sent: WallInstant) -> Lease {
        self.epoch = revision;
        self.revision = revision;
        self.fence.extend(sent, self.settings.valid_for());
        tracing::info!(
            holder = %self.holder,
            bucket = %self.settings.bucket,
            key = %self.settings.key,
            revision,
            ttl = ?self.settings.ttl,
            "lease taken"
        );
        self
    }

    /// The live value under the key: its holder (or its text if it is not one), revision and
    /// age. `None` when there is none (never written, expired, deleted).
    ///
    /// Read from the bucket stream's leader (`STREAM.MSG.GET`), never from a replica: the
    /// client's `entry` uses Direct Get, which any replica may answer, and a replica behind the
    /// leader (a node restarted in a cluster, catching up) can hold a previous holder's value,
    /// which would read as "taken over" and end a lease that is still ours (the 3-node test
    /// saw it).
    async fn current(&self) -> Result<Option<(Result<Holder, String>, u64, Duration)>, LeaseError> {
        use jetstream::stream::LastRawMessageErrorKind;
        let subject = format!("$KV.{}.{}", self.settings.bucket, self.settings.key);
        let message = match self
            .store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => message,
            Err(error) => {
                let none = match error.kind() {
                    LastRawMessageErrorKind::NoMessageFound => true,
                    LastRawMessageErrorKind::JetStream(e) => {
                        e.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                    }
                    _ => false,
                };
                return if none {
                    Ok(None)
                } else {
                    Err(bucket_error(&self.settings, error))
                };
            }
        };
        // A delete or a purge leaves a marker message with this header.
        if message.headers.get("KV-Operation").is_some() {
            return Ok(None);
        }
        let holder = serde_json::from_slice::<Holder>(&message.payload)
            .map_err(|_| String::from_utf8_lossy(&message.payload).into_owned());
        let age = time_since(message.time.unix_timestamp_nanos());
        Ok(Some((holder, message.sequence, age)))
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// What the publishing parts check before each publish.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Renews every TTL/3 until `release` resolves (then gives the lease back and returns
    /// `Ok`), or until the lease is lost: another holder's value under the key, or no renewal
    /// confirmed for [`LeaseSettings::valid_for`]. On loss the fence stops holding first.
    pub async fn keep(
        mut self,
        release: impl std::future::Future<Output = ()>,
    ) -> Result<(), LeaseError> {
        let mut release = std::pin::pin!(release);
        let mut timer = tokio::time::interval(self.settings.renew_every());
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            tokio::select! {
                _ = timer.tick() => {}
                _ = &mut release => {
                    self.release().await;
                    return Ok(());
                }
            }
            if let Err(error) = self.renew().await {
                tracing::error!(%error, "lease lost");
                return Err(error);
            }
        }
    }

    /// One renewal (what [`Lease::keep`] does every TTL/3); `Err` once the lease is lost, the
    /// fence already closed.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let renewed = self.renew_once().await;
        if renewed.is_err() {
            self.fence.lose();
        }
        renewed
    }

    async fn renew_once(&mut self) -> Result<(), LeaseError> {
        if !self.fence.holds() {
            return Err(self.expired());
        }
        let sent = WallInstant::now();
        let result = tokio::time::timeout(
            self.settings.request_timeout(),
            self.store
                .update(&self.settings.key, self.value.clone(), self.revision),
        )
        .await;
        match result {
            Ok(Ok(revision)) => {
                self.revision = revision;
                self.fence.extend(sent, self.settings.valid_for());
                Ok(())
            }
            Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.reconcile().await
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "renewing the lease failed; retrying at the next renewal");
                self.still_valid()
            }
            Err(_) => {
                tracing::warn!(
                    timeout = ?self.settings.request_timeout(),
                    "renewing the lease timed out; retrying at the next renewal"
                );
                self.still_valid()
            }
        }
    }

    fn still_valid(&self) -> Result<(), LeaseError> {
        if self.fence.holds() {
            Ok(())
        } else {
            Err(self.expired())
        }
    }

    fn expired(&self) -> LeaseError {
        LeaseError::Lost(format!(
            "no renewal confirmed by the broker for {:?} of its {:?} TTL",
            self.settings.valid_for(),
            self.settings.ttl
        ))
    }

    /// After a renewal refused for its revision: whose value is there now?
    async fn reconcile(&mut self) -> Result<(), LeaseError> {
        match self.current().await {
            Ok(Some((Ok(current), revision, _))) if current.instance == self.holder.instance => {
                // Our own write, whose ack was lost: adopt its revision.
                self.revision = revision;
                Ok(())
            }
            Ok(Some((current, _, _))) => Err(LeaseError::Lost(format!(
                "taken over by {}",
                current.map_or_else(|text| text, |h| h.to_string())
            ))),
            Ok(None) => {
                // No value: the broker lost it, or it expired and nobody else took it.
                let sent = WallInstant::now();
                match self
                    .store
                    .create(&self.settings.key, self.value.clone())
                    .await
                {
                    Ok(revision) => {
                        tracing::warn!(
                            "the lease's value had disappeared from the bucket; written again"
                        );
                        self.revision = revision;
                        self.fence.extend(sent, self.settings.valid_for());
                        Ok(())
                    }
                    Err(error) => {
                        tracing::warn!(%error, "writing the lease again failed");
                        self.still_valid()
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "reading the lease failed");
                self.still_valid()
            }
        }
    }

    /// Gives the lease back (a delete expecting our revision), so the next start need not wait
    /// for the TTL. Best effort: a failure leaves the value to expire.
    pub async fn release(&self) {
        self.fence.lose();
        match self
            .store
            .delete_expect_revision(&self.settings.key, Some(self.revision))
            .await
        {
            Ok(()) => tracing::info!(key = %self.settings.key, "lease released"),
            Err(error) => {
                tracing::warn!(%error, "releasing the lease failed; it expires after its TTL")
            }
        }
    }
}

fn bucket_error(settings: &LeaseSettings, error: impl std::fmt::Display) -> LeaseError {
    LeaseError::Bucket {
        bucket: settings.bucket.clone(),
        message: error.to_string(),
    }
}

/// Wall-clock time since `at_unix_nanos`, zero if that is in the future.
fn time_since(at_unix_nanos: i128) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Duration::from_nanos(u64::try_from(now - at_unix_nanos).unwrap_or(0))
}

/// The bucket, created when missing; its TTL checked.
pub async fn open_bucket(
    context: &jetstream::Context,
    settings: &LeaseSettings,
) -> Result<kv::Store, LeaseError> {
    let stream_name = format!("KV_{}", settings.bucket);
    let store = match context.get_stream(&stream_name).await {
        Ok(_) => context
            .get_key_value(&settings.bucket)
            .await
            .map_err(|e| bucket_error(settings, e))?,
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            // The bucket's stream as `create_key_value` would make it. That call first asks for
            // the account's JetStream info, whose reply from nats-server 2.9 this client cannot
            // parse; the stream is all a bucket is.
            context
                .create_stream(jetstream::stream::Config {
                    name: stream_name.clone(),
                    description: Some("creditflow: which processor holds which streams".into()),
                    subjects: vec![format!("$KV.{}.>", settings.bucket)],
                    max_messages_per_subject: 1,
                    max_age: settings.ttl,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: settings.replicas,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: jetstream::stream::DiscardPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(|e| bucket_error(settings, e))?;
            context
                .get_key_value(&settings.bucket)
                .await
                .map_err(|e| bucket_error(settings, e))?
        }
        Err(error) => return Err(bucket_error(settings, error)),
    };
    let max_age = store.stream.cached_info().config.max_age;
    if max_age != settings.ttl {
        return Err(LeaseError::Bucket {
            bucket: settings.bucket.clone(),
            message: format!(
                "its max_age is {max_age:?} but lease.ttl is {:?}: every processor using the \
                 bucket must have the same lease.ttl (or delete the bucket while none runs)",
                settings.ttl
            ),
        });
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_from_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 \
                    987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987_654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_not_gone_and_a_dead_pid_on_this_machine_is() {
        let here = Holder::this_process();
        assert!(here.instance.len() == 32 && here.instance != Holder::this_process().instance);
        let mut earlier = here.clone();
        earlier.instance = "0".repeat(32);
        // Alive (this very process, same start time).
        assert!(!earlier.is_gone_from(&here));
        if here.boot_id.is_empty() {
            return; // not Linux: nothing can be proven gone
        }
        // The same pid started at another time is another process.
        earlier.process_start += 1;
        assert!(earlier.is_gone_from(&here));
        // Another machine or pid namespace: never provably gone.
        let mut elsewhere = earlier.clone();
        elsewhere.boot_id = "another-boot".into();
        assert!(!elsewhere.is_gone_from(&here));
        let mut other_namespace = earlier.clone();
        other_namespace.pid_namespace = "pid:[1]".into();
        assert!(!other_namespace.is_gone_from(&here));
    }

    #[test]
    fn the_fence_holds_until_its_deadline_and_never_after_loss() {
        let fence = Fence::new();
        assert!(!fence.holds());
        fence.extend(WallInstant::now(), Duration::from_secs(60));
        assert!(fence.holds());
        fence.extend(WallInstant::now(), Duration::ZERO);
        assert!(fence.holds(), "a deadline never moves back");
        fence.lose();
        assert!(!fence.holds());
        assert!(Fence::always().holds());
    }

    #[test]
    fn a_fence_of_several_holds_while_each_does() {
        let (one, two) = (Fence::new(), Fence::new());
        one.extend(WallInstant::now(), Duration::from_secs(60));
        two.extend(WallInstant::now(), Duration::from_secs(60));
        let both = Fence::all([&one, &two]);
        assert!(both.holds());
        two.lose();
        assert!(!both.holds(), "one lost is enough");
        assert!(one.holds());
        assert!(Fence::all([]).holds(), "nothing to lose");
    }
}
