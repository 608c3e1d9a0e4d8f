//! Snapshots mirrored to a JetStream object store bucket (`snapshot.object_store`), so that a
//! processor on another machine, or one whose disk was lost, starts from them instead of
//! rebuilding from the whole stream.
//!
//! The local directory stays the working store ([`Store`]): every file is written, verified,
//! folded and retired there exactly as without a bucket. The bucket is a mirror of it: after
//! each snapshot the writer thread makes the partition's objects equal the partition's files
//! (uploads the files the bucket lacks, then deletes the objects the directory no longer has),
//! and at start every snapshot object the directory lacks is fetched into it before anything
//! is loaded. So a fetched file goes through the same checks as one written here: its checksum,
//! its header, the history checks against the stream; a torn or corrupt object is a corrupt
//! file, and recovery falls back as it would on disk. Object names are the files' names.
//!
//! Must never: delete an object before the file that replaces it is uploaded (the upload comes
//! first, so at every instant the bucket holds a loadable chain if the directory did); block
//! the shards (the mirror runs on the writer thread, after the file is durable locally).
//!
//! A mirror that fails is logged and counted (`creditflow_snapshot_failures_total{stage=
//! "mirror"}`) and tried again after the partition's next snapshot; the local snapshot stands.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{parse_file_name, Store};

/// How many times a fetch asks for an object the bucket refuses at once.
const READ_ATTEMPTS: u32 = 3;
/// How long a fetch waits before asking again.
const READ_AGAIN_AFTER: Duration = Duration::from_millis(250);

/// A bucket mirroring the snapshot directory.
#[derive(Clone)]
pub struct Remote {
    bucket: jetstream::object_store::ObjectStore,
    context: jetstream::Context,
    name: String,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
}

/// What [`Remote::fetch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub files: usize,
    pub bytes: u64,
    /// The partitions that got at least one file from the bucket, or failed to get one.
    pub partitions: std::collections::BTreeSet<u32>,
    /// Objects listed in the bucket that could not be read (skipped: their partitions' copies
    /// are incomplete).
    pub unreadable: usize,
}

/// What [`Remote::mirror`] did for one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirrored {
    pub uploaded: usize,
    pub deleted: usize,
}

impl Remote {
    /// Opens the bucket, creating it (file storage, `replicas`) when missing. `timeout` bounds
    /// every request of the mirror. Must be called inside the runtime that the writer thread's
    /// mirrors will use.
    pub async fn open(
        context: &jetstream::Context,
        bucket: &str,
        replicas: usize,
        timeout: Duration,
    ) -> Result<Remote, String> {
        let store = match context.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => context
                .create_object_store(jetstream::object_store::Config {
                    bucket: bucket.to_string(),
                    description: Some("creditflow snapshots (snapshot.object_store)".into()),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("object store {bucket}: creating it: {e}"))?,
        };
        Ok(Remote {
            bucket: store,
            context: context.clone(),
            name: bucket.to_string(),
            timeout,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bucket's snapshot objects of `partition` (or of all), name → size.
    ///
    /// Read from the objects' metadata messages (one per object, the last of its subject)
    /// through an ordered consumer that stops after the messages pending when it was created,
    /// or at the bucket's last sequence when it began: the client's `list` reads until
    /// nothing is pending, which never happens while other processors keep writing to the
    /// bucket (processors sharing the partitions each mirror theirs), so it never ended.
    async fn objects(&self, partition: Option<u32>) -> Result<BTreeMap<String, u64>, String> {
        let fail = |e: String| format!("object store {}: listing: {e}", self.name);
        let mut stream = self
            .bucket_stream()
            .await
            .map_err(|e| fail(e.to_string()))?;
        // Objects written after this are not waited for: the listing ends at the first
        // metadata message at or past the bucket's last sequence now (a newer version of an
        // object, rolled up over the one that was pending, can only come later), or when
        // nothing more is pending.
        let last = stream
            .info()
            .await
            .map_err(|e| fail(e.to_string()))?
            .state
            .last_sequence;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("$O.{}.M.>", self.name),
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut left = consumer.cached_info().num_pending;
        let mut found = BTreeMap::new();
        if left == 0 {
            return Ok(found);
        }
        let mut messages = consumer.messages().await.map_err(|e| fail(e.to_string()))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| fail(e.to_string()))?;
            let info = message.info().map_err(|e| fail(e.to_string()))?;
            let (pending, sequence) = (info.pending, info.stream_sequence);
            let info: jetstream::object_store::ObjectInfo =
                serde_json::from_slice(&message.payload).map_err(|e| fail(e.to_string()))?;
            if !info.deleted {
                if let Some((p, _, _)) = parse_file_name(&info.name) {
                    if partition.is_none_or(|only| only == p) {
                        found.insert(info.name, info.size as u64);
                    }
                }
            }
            left = left.saturating_sub(1);
            if left == 0 || pending == 0 || sequence >= last {
                break;
            }
        }
        Ok(found)
    }

    /// The bucket's stream (`OBJ_<bucket>`).
    async fn bucket_stream(
        &self,
    ) -> Result<jetstream::stream::Stream, jetstream::context::GetStreamError> {
        self.context.get_stream(format!("OBJ_{}", self.name)).await
    }

    /// Fetches into `store` every snapshot object of a partition `< partitions` and `wanted`
    /// that the directory does not have (by name), before recovery loads the directory.
    ///
    /// An object listed that cannot be read (a replicated bucket that lost it with a node: its
    /// metadata answered, its data not found or never arriving) is skipped with a warning, and
    /// its partition counts as fetched: recovery then loads the newest of its files that does
    /// load (an older snapshot, the rest replayed from the stream) or, when none does, replays
    /// it from the stream's first message. Retrying the whole start would not help: a bucket
    /// that lost objects does not get them back (the start used to retry for ever). A read refused
    /// at once is asked for again a few times; after a read that times out, the partition's
    /// later objects are skipped unread (each would wait as long).
    pub async fn fetch(
        &self,
        store: &Store,
        partitions: u32,
        wanted: impl Fn(u32) -> bool,
    ) -> Result<Fetched, String> {
        let mut fetched = Fetched::default();
        // Partitions an object of which timed out: their later objects are skipped unread.
        let mut given_up = std::collections::BTreeSet::new();
        let objects = self.bounded("listing", 8, self.objects(None)).await?;
        for (name, _) in objects {
            let Some((partition, _, _)) = parse_file_name(&name) else {
                continue;
            };
            if partition >= partitions || !wanted(partition) || store.dir().join(&name).exists() {
                continue;
            }
            if given_up.contains(&partition) {
                fetched.unreadable += 1;
                continue;
            }
            let read = || async {
                let mut object = self
                    .bucket
                    .get(&name)
                    .await
                    .map_err(|e| format!("object store {}: getting {name}: {e}", self.name))?;
                let mut bytes = Vec::new();
                object
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(|e| format!("object store {}: reading {name}: {e}", self.name))?;
                Ok::<_, String>(bytes)
            };
            // A read can wait for chunks that are gone (a replica behind the leader answered
            // the object's metadata): bounded. One refused at once ("not found" from a replica
            // that is behind) is asked again a few times first.
            let mut attempt = 1;
            let read = loop {
                match tokio::time::timeout(self.timeout * 4, read()).await {
                    Err(_) => {
                        // The partition's other objects would most likely wait as long.
                        given_up.insert(partition);
                        break Err(format!("object store {}: {name}: timed out", self.name));
                    }
                    Ok(Err(error)) if attempt < READ_ATTEMPTS => {
                        tracing::debug!(%error, attempt, "reading a snapshot object again");
                        attempt += 1;
                        tokio::time::sleep(READ_AGAIN_AFTER).await;
                    }
                    Ok(read) => break read,
                }
            };
            let bytes = match read {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(
                        partition,
                        %error,
                        "an object listed in the snapshot bucket cannot be read; the partition's \
                         copy is incomplete: recovery loads what does load, or replays it"
                    );
                    fetched.unreadable += 1;
                    fetched.partitions.insert(partition);
                    continue;
                }
            };
            store
                .put_file(&name, &bytes)
                .map_err(|e| format!("object store {}: storing {name}: {e}", self.name))?;
            fetched.files += 1;
            fetched.bytes += bytes.len() as u64;
            fetched.partitions.insert(partition);
        }
        Ok(fetched)
    }

    /// `work`, failed after `multiple` times the request timeout (a stalled read or listing
    /// must not hold a start or the writer for ever).
    async fn bounded<T>(
        &self,
        what: &str,
        multiple: u32,
        work: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        tokio::time::timeout(self.timeout * multiple, work)
            .await
            .unwrap_or_else(|_| Err(format!("object store {}: {what}: timed out", self.name)))
    }

    /// Makes the bucket's objects of `partition` equal its files in `store`: uploads each file
    /// the bucket lacks (or holds at another size), then deletes each object with no file.
    /// Blocking: for the writer thread (never a runtime thread).
    pub fn mirror(&self, store: &Store, partition: u32) -> Result<Mirrored, String> {
        let files = store.entries(partition);
        // A multiple of the request timeout: a listing, and an upload per file (a stalled
        // broker must not hold the writer, and a graceful stop, for minutes).
        let multiple = 4 + 2 * files.len() as u32;
        let work = async {
            let objects = self.objects(Some(partition)).await?;
            let mut done = Mirrored::default();
            let mut names = std::collections::BTreeSet::new();
            for file in &files {
                let Some(name) = file.path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                names.insert(name.to_string());
                let size = std::fs::metadata(&file.path).map(|m| m.len()).ok();
                if size.is_some() && objects.get(name) == size.as_ref() {
                    continue;
                }
                let bytes = std::fs::read(&file.path)
                    .map_err(|e| format!("reading {}: {e}", file.path.display()))?;
                self.bucket
                    .put(name, &mut bytes.as_slice())
                    .await
                    .map_err(|e| format!("object store {}: putting {name}: {e}", self.name))?;
                done.uploaded += 1;
            }
            for name in objects.keys().filter(|name| !names.contains(*name)) {
                match self.bucket.delete(name).await {
                    Ok(()) => done.deleted += 1,
                    // Gone already (a replica's listing can run behind the bucket's leader):
                    // what the delete was for.
                    Err(error)
                        if error.kind() == jetstream::object_store::DeleteErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(format!(
                            "object store {}: deleting {name}: {error}",
                            self.name
                        ))
                    }
                }
            }
            Ok(done)
        };
        self.runtime
            .block_on(self.bounded("mirroring", multiple, work))
    }
}

/// What the mirror thread reports (metrics).
pub trait MirrorObserver: Send {
    fn mirrored(&mut self, partition: u32, done: &Mirrored, elapsed: std::time::Duration);
    fn failed(&mut self, partition: u32, error: &str);
}

/// The mirror thread's handle: [`Mirror::mark`] a partition whose files changed; it is
/// mirrored soon, once however many times it was marked meanwhile (a partition snapshotted
/// twice while its first upload runs is uploaded once more, not twice), so the writer never
/// waits for the bucket and the uploads never queue behind each other. Dropping every handle
/// ends the thread once what was marked is mirrored.
#[derive(Clone)]
pub struct Mirror {
    marks: crossbeam::channel::Sender<u32>,
}

impl Mirror {
    /// Starts the thread mirroring `store` to `remote` while `may_write` holds (a processor
    /// that may have lost a partition must not change what its successor reads).
    pub fn start(
        remote: Remote,
        store: Store,
        mut observer: impl MirrorObserver + 'static,
        may_write: impl Fn() -> bool + Send + 'static,
    ) -> std::io::Result<(Mirror, std::thread::JoinHandle<()>)> {
        let (marks, marked) = crossbeam::channel::unbounded::<u32>();
        let thread = std::thread::Builder::new()
            .name("snapshot-mirror".into())
            .spawn(move || {
                let mut pending = std::collections::BTreeSet::new();
                loop {
                    if pending.is_empty() {
                        match marked.recv() {
                            Ok(partition) => {
                                pending.insert(partition);
                            }
                            Err(_) => return,
                        }
                    }
                    pending.extend(marked.try_iter());
                    let Some(partition) = pending.pop_first() else {
                        continue;
                    };
                    if !may_write() {
                        continue;
                    }
                    let started = std::time::Instant::now();
                    match remote.mirror(&store, partition) {
                        Ok(done) => observer.mirrored(partition, &done, started.elapsed()),
                        Err(error) => observer.failed(partition, &error),
                    }
                }
            })?;
        Ok((Mirror { marks }, thread))
    }

    /// The files of `partition` changed: mirror them.
    pub fn mark(&self, partition: u32) {
        let _ = self.marks.send(partition);
    }
}
