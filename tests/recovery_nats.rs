//! Exactly-once through crashes, against a real `nats-server` and the real binary: SIGKILL
//! torture, corrupt snapshots, rewritten history, broker restarts, an outage longer than the
//! output duplicate window. After the last restart, the final state must equal the oracle
//! (`replay` of the input stream) and the output stream must hold every expected output once
//! and nothing else.

mod common;

use std::time::Duration;

use common::*;
use creditflow::testkit::NatsServer;

const RUNTIME_MAX: Duration = Duration::from_secs(120);

fn workload(seed: u64, accounts: usize, messages: usize) -> Vec<String> {
    creditflow::sample::scenario(seed, accounts, messages)
}

/// Starts the processor, publishes `lines`, and stops it gracefully once it has applied them
/// (its final snapshots written).
fn publish_then_stop(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    setup: &Setup,
    lines: &[String],
) {
    let mut processor = setup.start(&[]);
    wait_streams(runtime, url);
    runtime.block_on(publish(url, lines, setup.partitions));
    wait_caught_up(url, setup, RUNTIME_MAX);
    assert!(terminate(&mut processor).success());
}

/// Stops the processor gracefully and checks everything against the oracle.
fn finish_and_compare(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    setup: &Setup,
    processor: &mut std::process::Child,
) {
    wait_caught_up(url, setup, RUNTIME_MAX);
    let status = terminate(processor);
    assert!(status.success(), "exit {status}; log:\n{}", setup.log());
    let through = applied_through(&setup.snapshots(), setup.partitions);
    let (engine, expected) = runtime.block_on(oracle_through(url, setup.partitions, through));
    let actual = runtime.block_on(outputs(url));
    assert_outputs_match(&actual, &expected);
    assert_eq!(
        snapshot_state(&setup.snapshots(), setup.partitions),
        engine.state_view(),
        "final state"
    );
}

/// SIGKILL at random instants (including mid-snapshot: snapshots are frequent) at least 20
/// times while a producer publishes 200,000 messages; ticks are on.
#[test]
fn sigkill_torture() {
    let kills: usize = std::env::var("TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let messages: usize = std::env::var("TORTURE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    eprintln!("sigkill_torture: seed {seed}, {kills} kills, {messages} messages");
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 8;
    // Ticks on: the processor publishes into its own input stream while it is killed.
    let setup = Setup::with_metrics(
        &url,
        partitions,
        2,
        // Folds by count only (a delta of this small state is about as big as the full file,
        // so by size every delta would be folded at once): kills land on long chains, and
        // on folds every 32 snapshots.
        "[snapshot]\ninterval_events = 3000\ninterval = \"200ms\"\nkeep = 3\nfold_percent = 1000\n[engine]\ntick_interval = \"250ms\"\n",
        true,
    );
    let runtime = runtime();
    let mut processor = setup.start(&[]);
    wait_streams(&runtime, &url);
    let lines = workload(seed, 60, messages);
    let producer = {
        let url = url.clone();
        let lines = lines.clone();
        runtime.spawn(async move { publish_resilient(&url, &lines, partitions, 12_000).await })
    };
    let mut rng = creditflow::sample::Rng::new(seed);
    let mut early = 0;
    // Recoveries logged before the current process started.
    let mut baseline = 0;
    for kill in 0..kills {
        if kill % 4 == 3 {
            // Aimed at start-up: connecting, checking streams, loading snapshots, scanning.
            std::thread::sleep(Duration::from_millis(rng.below(150)));
            early += 1;
        } else {
            // Aimed at processing (and, snapshots being frequent, at snapshot writes).
            let recovered = baseline;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while setup.log().matches("recovered").count() <= recovered {
                if std::time::Instant::now() > deadline {
                    let log = setup.log();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    panic!(
                        "no recovery within 60 s after restart {kill}; log tail:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(100 + rng.below(1000)));
        }
        processor.kill().expect("SIGKILL");
        let _ = processor.wait();
        if kill % 5 == 4 {
            // Sometimes stay down a while, so a backlog builds up.
            std::thread::sleep(Duration::from_millis(500 + rng.below(1000)));
        }
        baseline = setup.log().matches("recovered").count();
        processor = setup.start(&[]);
    }
    runtime.block_on(producer).expect("producer");
    finish_and_compare(&runtime, &url, &setup, &mut processor);
    let recoveries = setup.log().matches("recovered").count();
    assert!(
        recoveries > kills - early,
        "{recoveries} recoveries for {kills} kills ({early} during start-up)"
    );
    // Snapshots are deltas between full files (snapshot.deltas_max): recoveries applied them.
    let log = setup.log();
    let chains = log
        .match_indices("deltas_applied: ")
        .filter(|(at, found)| !log[at + found.len()..].starts_with('0'))
        .count();
    assert!(chains > 0, "no recovery applied a delta chain");
}

/// Corrupt snapshots: a truncated or bit-flipped newest file falls back to the previous one;
/// with every file corrupt, the start is refused (and `--rebuild` recovers from the stream).
#[test]
fn corrupt_snapshots_fall_back_or_refuse() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 4;
    let setup = Setup::with_metrics(
        &url,
        partitions,
        2,
        "[snapshot]\ninterval_events = 500\ninterval = \"100ms\"\n",
        true,
    );
    let runtime = runtime();
    let lines = workload(5, 20, 6000);
    publish_then_stop(&runtime, &url, &setup, &lines[..3000]);

    // Truncate the newest snapshot of partition 0 and flip a bit in partition 1's.
    let store = creditflow::snapshot::Store::open(&setup.snapshots(), 3).unwrap();
    assert!(
        store.files(0).len() >= 2 && store.files(1).len() >= 2,
        "several snapshots kept"
    );
    assert!(
        (0..partitions).any(|p| store
            .entries(p)
            .iter()
            .any(|f| f.kind == creditflow::snapshot::Kind::Delta)),
        "deltas between full snapshots"
    );
    let newest = store.files(0)[0].clone();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let newest = store.files(1)[0].clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&newest, &bytes).unwrap();

    let mut processor = setup.start(&[]);
    runtime.block_on(publish(&url, &lines[3000..], partitions));
    finish_and_compare(&runtime, &url, &setup, &mut processor);
    assert!(setup.log().contains("falling back"), "{}", setup.log());

    // Every snapshot of a partition corrupt: refuse to start, loudly.
    for path in store.files(2) {
        std::fs::write(&path, b"not a snapshot").unwrap();
    }
    let mut processor = setup.start(&[]);
    let status = processor.wait().unwrap();
    assert!(!status.success(), "must refuse to start");
    assert!(
        setup
            .log()
            .contains("every snapshot of partition 2 is corrupt"),
        "{}",
        setup.log()
    );

    // --rebuild starts from the stream's first message and reaches the same state.
    for partition in 0..partitions {
        for path in store.files(partition) {
            std::fs::remove_file(path).unwrap();
        }
    }
    let mut processor = setup.start(&["--rebuild"]);
    finish_and_compare(&runtime, &url, &setup, &mut processor);
}

/// The newest snapshot of a partition corrupt in its payload (its header reads well), with the
/// processor down longer than the output stream's duplicate window: the output stream is
/// scanned while the snapshots load, from the floor the newest headers name; the partition
/// falls back to an older snapshot with a lower floor, and the outputs between the two floors,
/// which its replay regenerates, must be found by a second scan, or they are stored twice.
#[test]
fn a_fallback_below_the_newest_headers_floor_emits_nothing_twice() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 2;
    let setup = Setup::with_metrics(
        &url,
        partitions,
        2,
        "[output]\nduplicate_window = \"1s\"\n[snapshot]\ninterval_events = 400\ninterval = \"1h\"\ndeltas_max = 0\n",
        true,
    );
    let runtime = runtime();
    let lines = workload(12, 20, 6000);
    publish_then_stop(&runtime, &url, &setup, &lines[..3000]);

    // Flip a bit of partition 1's newest payload, near its end: the header stays valid.
    let store = creditflow::snapshot::Store::open(&setup.snapshots(), 3).unwrap();
    let files = store.files(1);
    assert!(files.len() >= 2, "an older snapshot to fall back to");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = bytes.len() - 8;
    bytes[at] ^= 0x10;
    std::fs::write(&files[0], &bytes).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let mut processor = setup.start(&[]);
    runtime.block_on(publish(&url, &lines[3000..], partitions));
    finish_and_compare(&runtime, &url, &setup, &mut processor);
    let log = setup.log();
    assert!(log.contains("falling back"), "{log}");
    assert!(
        log.contains("the output stream scanned from its floor too"),
        "the gap between the floors was scanned:\n{log}"
    );
}

/// No snapshot at all but a stream with history: refuse (never start silently empty); start
/// once told to rebuild.
#[test]
fn no_snapshot_with_history_is_refused() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 2;
    let setup = Setup::with_metrics(&url, partitions, 1, "", true);
    let runtime = runtime();
    let mut processor = setup.start(&[]);
    wait_streams(&runtime, &url);
    runtime.block_on(publish(&url, &workload(6, 5, 200), partitions));
    assert!(terminate(&mut processor).success(), "{}", setup.log());
    std::fs::remove_dir_all(setup.snapshots()).unwrap();
    let mut processor = setup.start(&[]);
    assert!(!processor.wait().unwrap().success());
    assert!(
        setup
            .log()
            .contains("refusing to start with empty balances"),
        "{}",
        setup.log()
    );

    // Told to rebuild, it replays from the stream's first message and ends at the oracle's
    // state, every output stored once.
    let mut processor = setup.start(&["--rebuild"]);
    finish_and_compare(&runtime, &url, &setup, &mut processor);
}

/// A processor (one shard, metrics on) mirroring its snapshots to `bucket`, with `snapshot`
/// (TOML lines) added to its `[snapshot]` section.
fn with_bucket(url: &str, partitions: u32, bucket: &str, snapshot: &str) -> Setup {
    let extra = format!("[snapshot]\nobject_store = \"{bucket}\"\n{snapshot}");
    Setup::with_metrics(url, partitions, 1, &extra, true)
}

/// The object store bucket `bucket` on the server at `url`.
async fn bucket_of(url: &str, bucket: &str) -> async_nats::jetstream::object_store::ObjectStore {
    let client = async_nats::connect(url).await.unwrap();
    async_nats::jetstream::new(client)
        .get_object_store(bucket)
        .await
        .expect("the bucket")
}

/// Runs a processor over a workload published in rounds, so that snapshots (full files and
/// deltas) are taken between them, and stops it once it has caught up.
fn snapshotted_in_rounds(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    setup: &Setup,
    partitions: u32,
) {
    let lines = workload(8, 6, 600);
    let mut processor = KillOnDrop(setup.start(&[]));
    wait_streams(runtime, url);
    for round in lines.chunks(100) {
        runtime.block_on(publish(url, round, partitions));
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_caught_up(url, setup, RUNTIME_MAX);
    assert!(terminate(&mut processor).success(), "{}", setup.log());
}

/// The bucket the two damaged-bucket tests below use, and their partitions.
const DAMAGED_BUCKET: &str = "cf_snapshots";
const DAMAGED_PARTITIONS: u32 = 2;

/// A server, and a processor mirroring to [`DAMAGED_BUCKET`] (snapshots every 100 ms or 40
/// events; `nats` is TOML for its `[nats]` section) that has run a workload in rounds and
/// stopped: the bucket holds full files and deltas of every partition.
fn snapshotted_to_bucket(nats: &str) -> (NatsServer, Setup, tokio::runtime::Runtime) {
    let server = NatsServer::start();
    let url = server.url();
    let setup = with_bucket(
        &url,
        DAMAGED_PARTITIONS,
        DAMAGED_BUCKET,
        &format!("interval = \"100ms\"\ninterval_events = 40\n[nats]\n{nats}"),
    );
    let runtime = runtime();
    snapshotted_in_rounds(&runtime, &url, &setup, DAMAGED_PARTITIONS);
    (server, setup, runtime)
}

/// A processor whose snapshot directory is lost starts from what it fetches from the bucket;
/// its state is compared with the oracle's and every output checked stored once. Its log.
fn restarted_from_the_bucket(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    setup: &Setup,
) -> String {
    std::fs::remove_dir_all(setup.snapshots()).unwrap();
    let mut processor = setup.start(&[]);
    finish_and_compare(runtime, url, setup, &mut processor);
    setup.log()
}

/// The names of the objects in `store`.
async fn object_names(
    store: &async_nats::jetstream::object_store::ObjectStore,
) -> std::collections::BTreeSet<String> {
    use futures::StreamExt;
    let mut list = store.list().await.unwrap();
    let mut names = std::collections::BTreeSet::new();
    while let Some(info) = list.next().await {
        names.insert(info.unwrap().name);
    }
    names
}

/// With `snapshot.object_store` the snapshots are mirrored to a bucket: the bucket holds the
/// directory's files exactly, and a processor whose directory is gone (a lost disk, another
/// machine) fetches them and starts from them, where without the bucket it is refused (above);
/// its state is the oracle's.
#[test]
fn a_lost_snapshot_directory_is_restored_from_the_object_store() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 2;
    let bucket = "cf_snapshots";
    let setup = with_bucket(&url, partitions, bucket, "");
    let runtime = runtime();
    let mut processor = KillOnDrop(setup.start(&[]));
    wait_streams(&runtime, &url);
    runtime.block_on(publish(&url, &workload(6, 5, 300), partitions));
    wait_caught_up(&url, &setup, Duration::from_secs(60));
    assert!(terminate(&mut processor).success(), "{}", setup.log());
    let files: std::collections::BTreeSet<String> = std::fs::read_dir(setup.snapshots())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(files.len() >= partitions as usize, "{files:?}");
    let objects = runtime.block_on(async { object_names(&bucket_of(&url, bucket).await).await });
    assert_eq!(objects, files, "the bucket mirrors the directory");

    std::fs::remove_dir_all(setup.snapshots()).unwrap();
    let mut processor = KillOnDrop(setup.start(&[]));
    wait_caught_up(&url, &setup, Duration::from_secs(60));
    assert!(terminate(&mut processor).success(), "{}", setup.log());
    let log = setup.log();
    assert!(
        log.contains("snapshots fetched from the object store"),
        "{log}"
    );
    assert!(
        !log.contains("refusing to start with empty balances"),
        "{log}"
    );
    let (engine, _) = runtime.block_on(oracle(&url, partitions));
    assert_eq!(
        snapshot_state(&setup.snapshots(), partitions),
        engine.state_view(),
        "the state restored from the bucket, then run on"
    );
}

/// A bucket whose copy of a partition does not load (here every full file of partition 0 is
/// gone from it, so its deltas follow states it lacks; on a three-node cluster this happened
/// when a node was killed): a processor whose directory is lost fetches what is there and,
/// since nothing of partition 0 loads, replays that partition from the stream's first message
/// instead of refusing to start. Its state is the oracle's and every output is stored once.
#[test]
fn an_incomplete_copy_in_the_object_store_is_replayed_from_the_first_message() {
    let (server, setup, runtime) = snapshotted_to_bucket("");
    let url = server.url();
    let removed = runtime.block_on(async {
        let store = bucket_of(&url, DAMAGED_BUCKET).await;
        let names = object_names(&store).await;
        let deltas = names
            .iter()
            .filter(|n| n.starts_with("p00000-") && n.ends_with(".delta"))
            .count();
        assert!(
            deltas > 0,
            "partition 0 has deltas in the bucket: {names:?}"
        );
        let full: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with("p00000-") && n.ends_with(".snap"))
            .collect();
        for name in &full {
            store.delete(name).await.expect("delete");
        }
        full
    });
    assert!(!removed.is_empty());

    let log = restarted_from_the_bucket(&runtime, &url, &setup);
    assert!(
        log.contains("the object store's copy of this partition does not load"),
        "{log}"
    );
    assert!(log.contains("incomplete_copies: 1"), "{log}");
}

/// An object the bucket lists but cannot deliver (its data gone: a replicated bucket that lost
/// it with a node): the fetch skips it instead of failing the start for ever, and recovery
/// falls back to the partition's files that load (or replays it). Here the data of each of
/// partition 0's newest two objects is purged; the state is the oracle's and every output is
/// stored once.
#[test]
fn an_object_whose_data_is_gone_is_skipped_and_the_partition_recovered() {
    // A short request timeout: a read that waits for data that never comes gives up sooner.
    let (server, setup, runtime) = snapshotted_to_bucket("request_timeout = \"1s\"\n");
    let url = server.url();
    let bucket = DAMAGED_BUCKET;
    let purged = runtime.block_on(async {
        let store = bucket_of(&url, bucket).await;
        let names: Vec<String> = object_names(&store)
            .await
            .into_iter()
            .filter(|n| n.starts_with("p00000-"))
            .collect();
        assert!(names.len() >= 3, "partition 0's objects: {names:?}");
        let client = async_nats::connect(&url).await.unwrap();
        let stream = async_nats::jetstream::new(client)
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .expect("the bucket's stream");
        // Names sort by position: the newest two.
        let newest: Vec<String> = names.iter().rev().take(2).cloned().collect();
        for name in &newest {
            let nuid = store.info(name).await.expect("object info").nuid;
            stream
                .purge()
                .filter(format!("$O.{bucket}.C.{nuid}"))
                .await
                .expect("purge the object's data");
        }
        newest
    });
    assert_eq!(purged.len(), 2);

    let log = restarted_from_the_bucket(&runtime, &url, &setup);
    assert!(
        log.contains("an object listed in the snapshot bucket cannot be read"),
        "{log}"
    );
    assert!(log.contains("unreadable=2"), "{log}");
}

/// The input stream recreated with different history after a snapshot: refuse, with evidence.
#[test]
fn rewritten_history_is_refused() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 2;
    let setup = Setup::new(&url, partitions, 1, "");
    let runtime = runtime();
    let mut processor = setup.start(&[]);
    wait_streams(&runtime, &url);
    runtime.block_on(publish(&url, &workload(7, 5, 500), partitions));
    wait_until("a final snapshot", Duration::from_secs(60), || {
        runtime.block_on(stream_len(&url, "CREDITFLOW_OUT")) > 0
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(terminate(&mut processor).success());
    // Replace the stream: same name and settings, other messages.
    runtime.block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let context = async_nats::jetstream::new(client);
        let config = context
            .get_stream("CREDITFLOW_IN")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        context.delete_stream("CREDITFLOW_IN").await.unwrap();
        context.create_stream(config).await.unwrap();
    });
    runtime.block_on(publish(&url, &workload(8, 5, 600), partitions));
    let mut processor = setup.start(&[]);
    assert!(!processor.wait().unwrap().success(), "must refuse");
    let log = setup.log();
    assert!(log.contains("no longer holds the history"), "{log}");
    assert!(
        log.contains("different message") || log.contains("ends at"),
        "the evidence: {log}"
    );
}

/// nats-server SIGKILLed and restarted several times mid-run: the processor recovers by itself,
/// recreating its input consumer on each reconnect (how fast: scripts/bench-broker-restart).
#[test]
fn broker_restarts_are_survived_without_help() {
    let mut server = NatsServer::start();
    let url = server.url();
    let partitions = 4;
    let setup = Setup::with_metrics(
        &url,
        partitions,
        2,
        "[input]\nstall_timeout = \"2s\"\n",
        true,
    );
    let runtime = runtime();
    let mut processor = setup.start(&[]);
    wait_streams(&runtime, &url);
    let lines = workload(9, 30, 30_000);
    let producer = {
        let url = url.clone();
        let lines = lines.clone();
        runtime.spawn(async move { publish_resilient(&url, &lines, partitions, 3_000).await })
    };
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1500));
        server.kill();
        std::thread::sleep(Duration::from_millis(700));
        server.restart();
    }
    runtime.block_on(producer).expect("producer");
    assert!(
        processor.try_wait().unwrap().is_none(),
        "the processor kept running:\n{}",
        setup.log()
    );
    // It acted on the reconnects rather than waiting for the stall timer or missed heartbeats.
    let port = setup.metrics_port().expect("metrics port");
    let reconnects = gauge(
        port,
        "creditflow_consumer_recreated_total{reason=\"reconnect\"}",
    )
    .unwrap_or(0);
    assert!(
        reconnects >= 1,
        "no consumer recreated on reconnect:\n{}",
        setup.log()
    );
    finish_and_compare(&runtime, &url, &setup, &mut processor);
    assert_eq!(
        setup.log().matches("recovered").count(),
        1,
        "no restart of the processor"
    );
}

/// Snapshots that cannot be written (the directory replaced by a file) are counted, make
/// `/readyz` say so after `failures_unready` in a row and recover when the directory is back;
/// a graceful stop whose final snapshot fails exits non-zero; the last valid snapshots are
/// kept, and the next start recovers from them to the oracle's state, emitting nothing twice.
#[test]
fn failing_snapshots_are_visible_and_the_last_valid_one_is_kept() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 2;
    let setup = Setup::with_metrics(
        &url,
        partitions,
        1,
        "[snapshot]\ninterval_events = 300\ninterval = \"100ms\"\nfailures_unready = 2\n",
        true,
    );
    let runtime = runtime();
    let mut processor = KillOnDrop(setup.start(&[]));
    wait_streams(&runtime, &url);
    let lines = workload(21, 40, 8_000);
    let parts: Vec<&[String]> = lines.chunks(2_000).collect();
    let port = || setup.metrics_port().expect("metrics port");
    let failures =
        |port: u16| gauge(port, "creditflow_snapshot_failures_total{stage=\"write\"}").unwrap_or(0);
    let dir = setup.snapshots();
    let saved = setup.dir.path().join("snapshots.saved");
    let break_dir = || {
        std::fs::rename(&dir, &saved).expect("move the snapshot directory away");
        std::fs::write(&dir, b"not a directory").expect("a file in its place");
    };
    let repair_dir = || {
        std::fs::remove_file(&dir).expect("remove the file");
        std::fs::rename(&saved, &dir).expect("put the directory back");
    };

    runtime.block_on(publish(&url, parts[0], partitions));
    wait_caught_up(&url, &setup, RUNTIME_MAX);
    wait_until("a snapshot written", RUNTIME_MAX, || {
        applied_through(&dir, partitions) > 0
    });
    wait_until("ready", RUNTIME_MAX, || {
        readyz(port()).is_some_and(|(status, _)| status == 200)
    });
    assert_eq!(failures(port()), 0);

    break_dir();
    runtime.block_on(publish(&url, parts[1], partitions));
    wait_until("not ready, naming the snapshots", RUNTIME_MAX, || {
        readyz(port())
            .is_some_and(|(status, body)| status == 503 && body.contains("snapshots failed"))
    });
    let (_, body) = readyz(port()).expect("readyz");
    assert!(body.contains("partition"), "{body}");
    assert!(failures(port()) >= 2, "failures counted");
    assert!(
        gauge(port(), "creditflow_snapshot_consecutive_failures").unwrap_or(0) >= 2,
        "the current run of failures"
    );

    repair_dir();
    runtime.block_on(publish(&url, parts[2], partitions));
    wait_until(
        "ready again once a snapshot is written",
        RUNTIME_MAX,
        || readyz(port()).is_some_and(|(status, _)| status == 200),
    );
    assert_eq!(
        gauge(port(), "creditflow_snapshot_consecutive_failures"),
        Some(0)
    );
    wait_caught_up(&url, &setup, RUNTIME_MAX);

    break_dir();
    // What the directory held when it went away; nothing reaches it after.
    let kept_through = applied_through(&saved, partitions);
    assert!(kept_through > 0);
    let before = failures(port());
    runtime.block_on(publish(&url, parts[3], partitions));
    wait_caught_up(&url, &setup, RUNTIME_MAX);
    wait_until("a snapshot of the last part failed", RUNTIME_MAX, || {
        failures(port()) > before
    });
    let status = terminate(&mut processor);
    assert!(!status.success(), "a failed final snapshot exits non-zero");
    assert!(
        setup.log().contains("the final snapshot failed"),
        "the reason is logged:\n{}",
        setup.log()
    );

    repair_dir();
    assert_eq!(
        applied_through(&dir, partitions),
        kept_through,
        "the last valid snapshots are kept"
    );
    let mut processor = KillOnDrop(setup.start(&[]));
    finish_and_compare(&runtime, &url, &setup, &mut processor);
}

/// The processor down (killed) longer than the output stream's duplicate window: the broker
/// can no longer drop re-published outputs, so only the recovery scan prevents duplicates.
#[test]
fn an_outage_longer_than_the_duplicate_window_emits_nothing_twice() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 4;
    // Rare snapshots: the replay after the kill regenerates many outputs already published.
    let setup = Setup::with_metrics(
        &url,
        partitions,
        2,
        "[output]\nduplicate_window = \"1s\"\n[snapshot]\ninterval_events = 100000000\ninterval = \"1h\"\n",
        true,
    );
    let runtime = runtime();
    let mut processor = setup.start(&[]);
    wait_streams(&runtime, &url);
    let lines = workload(10, 20, 8000);
    runtime.block_on(publish(&url, &lines[..4000], partitions));
    wait_caught_up(&url, &setup, RUNTIME_MAX);
    processor.kill().unwrap();
    let _ = processor.wait();
    std::thread::sleep(Duration::from_secs(3));
    // No snapshot was taken since the start (the first would come at stop); the empty ones
    // written when the processor created the input stream let it restart without help, from
    // the stream's first message.
    let mut processor = setup.start(&[]);
    runtime.block_on(publish(&url, &lines[4000..], partitions));
    finish_and_compare(&runtime, &url, &setup, &mut processor);
    let log = setup.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("already_emitted"))
        .unwrap_or_default();
    assert!(
        !line.contains("already_emitted: 0,"),
        "the scan found the published outputs: {line}"
    );
}

/// A catalog setting that decided the snapshots' state changed before a restart (SEMANTICS
/// §15): refused, naming the key, unless the operator accepts that key knowingly; reordering
/// plans (the state refers to them by position) is refused even then.
#[test]
fn a_catalog_change_that_rewrites_history_is_refused_naming_the_key() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 2;
    let catalogs = tempfile::tempdir().expect("temp dir");
    let catalog = catalogs.path().join("catalog.toml");
    let original = std::fs::read_to_string(catalog_path()).expect("catalog");
    std::fs::write(&catalog, &original).unwrap();
    let setup = Setup::with_metrics(
        &url,
        partitions,
        1,
        &format!("[engine]\ncatalog = {:?}\n", catalog.display().to_string()),
        true,
    );
    let runtime = runtime();
    let mut processor = setup.start(&[]);
    wait_streams(&runtime, &url);
    runtime.block_on(publish(&url, &workload(9, 5, 300), partitions));
    wait_caught_up(&url, &setup, RUNTIME_MAX);
    assert!(terminate(&mut processor).success(), "{}", setup.log());

    // flush_interval 1h → 1m: refused, the key named.
    let changed = original.replacen("flush_interval = \"1h\"", "flush_interval = \"1m\"", 1);
    assert_ne!(changed, original, "the catalog has a flush_interval of 1h");
    std::fs::write(&catalog, &changed).unwrap();
    let mut processor = KillOnDrop(setup.start(&[]));
    assert!(!processor.0.wait().unwrap().success(), "must refuse");
    let log = setup.log();
    assert!(log.contains("rules.flush_interval: changed"), "{log}");
    assert!(log.contains("--accept-catalog-change"), "{log}");

    // Plans reordered (payg moved after starter): refused even with the key accepted.
    let reordered = changed.replacen("name = \"payg\"", "name = \"__payg__\"", 1);
    let reordered = reordered
        .replacen("name = \"starter\"", "name = \"payg\"", 1)
        .replacen("name = \"__payg__\"", "name = \"starter\"", 1);
    std::fs::write(&catalog, &reordered).unwrap();
    let mut processor =
        KillOnDrop(setup.start(&["--accept-catalog-change", "rules.flush_interval"]));
    assert!(!processor.0.wait().unwrap().success(), "must refuse");
    let log = setup.log();
    assert!(log.contains("plans (order)"), "{log}");

    // The flush interval accepted knowingly: it starts and catches up.
    std::fs::write(&catalog, &changed).unwrap();
    let mut processor = setup.start(&["--accept-catalog-change", "rules.flush_interval"]);
    runtime.block_on(publish(&url, &workload(10, 5, 50), partitions));
    wait_caught_up(&url, &setup, RUNTIME_MAX);
    assert!(terminate(&mut processor).success(), "{}", setup.log());
    assert!(setup.log().contains("accepted (--accept-catalog-change)"));
}
