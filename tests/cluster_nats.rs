//! Processors sharing the partitions (`cluster.enabled`), as real processes against a real
//! nats-server (and a real 3-node cluster): a processor killed with SIGKILL has its partitions
//! taken over by the others, one added mid-run takes its share, one paused past its lease's TTL
//! publishes nothing when it runs again and rejoins, a broker node killed and restarted changes
//! nothing. Each ends with the final state equal to the oracle (`replay` of the input stream)
//! and the output stream holding every expected output exactly once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use creditflow::engine::{Engine, Partition};
use creditflow::testkit::{NatsCluster, NatsServer};

const SETTLE_MAX: Duration = Duration::from_secs(120);
const BUCKET: &str = "cf_cluster_snapshots";

/// A processor that shares the partitions: lease TTL 6 s (renewals and looks every 2 s; a
/// processor that confirms none for 4.8 s exits, which a debug build starved of CPU by the
/// other tests did at 3 s under a load average of 6-7), snapshots mirrored to the bucket every
/// half second.
fn member(urls: &[String], partitions: u32, extra: &str) -> Setup {
    member_with_ttl(urls, partitions, "6s", extra)
}

/// [`member`] with another lease TTL.
fn member_with_ttl(urls: &[String], partitions: u32, ttl: &str, extra: &str) -> Setup {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    Setup::with_metrics(
        &urls[0],
        partitions,
        1,
        &format!(
            "[nats]\nurls = [{}]\n[cluster]\nenabled = true\n[lease]\nttl = \"{ttl}\"\n\
             [snapshot]\nobject_store = \"{BUCKET}\"\ninterval = \"500ms\"\n\
             interval_events = 2000\n{extra}",
            quoted.join(", ")
        ),
        true,
    )
}

/// The nats-server version a processor logged at its (first) start.
fn server_version_of(setup: &Setup) -> creditflow::pipeline::server::Version {
    setup
        .log()
        .split("NATS server checked version=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(creditflow::pipeline::server::Version::parse)
        .expect("the processor logs the server's version")
}

fn gauge_of(setup: &Setup, name: &str) -> Option<u64> {
    setup.metrics_port().and_then(|port| gauge(port, name))
}

/// The input stream's last sequence. Tried again for up to a minute: while a killed node's
/// streams elect new leaders, JetStream requests time out.
fn last_sequence(runtime: &tokio::runtime::Runtime, url: &str) -> u64 {
    runtime.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let jetstream = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = async {
                let mut stream = jetstream.get_stream("CREDITFLOW_IN").await?;
                Ok::<_, async_nats::Error>(stream.info().await?.state.last_sequence)
            };
            match info.await {
                Ok(last) => return last,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("the input stream's info: {error}; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => panic!("the input stream's info: {error}"),
            }
        }
    })
}

/// Waits until the running processors own every partition between them (each exactly its
/// even share when `even`), and each that owns any has read the input stream through its end.
fn wait_settled(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    running: &[&Setup],
    partitions: u32,
    even: bool,
) {
    wait_settled_supervised(runtime, url, running, partitions, even, &mut || {});
}

/// [`wait_settled`], calling `supervise` before each look (to restart what has exited).
fn wait_settled_supervised(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    running: &[&Setup],
    partitions: u32,
    even: bool,
    supervise: &mut dyn FnMut(),
) {
    let last = last_sequence(runtime, url);
    let deadline = Instant::now() + SETTLE_MAX;
    loop {
        supervise();
        let owned: Vec<Option<u64>> = running
            .iter()
            .map(|s| gauge_of(s, "creditflow_partitions_owned"))
            .collect();
        let total: u64 = owned.iter().flatten().sum();
        let n = running.len() as u64;
        let fair = |o: &Option<u64>| {
            !even
                || o.is_some_and(|o| {
                    o == u64::from(partitions) / n || o == u64::from(partitions) / n + 1
                })
        };
        let read = running.iter().zip(&owned).all(|(setup, owned)| {
            *owned == Some(0)
                || gauge_of(setup, "creditflow_input_position").is_some_and(|p| p >= last)
        });
        if total == u64::from(partitions) && owned.iter().all(fair) && read {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = running
                .iter()
                .map(|s| {
                    let log = s.log();
                    let tail: Vec<&str> = log.lines().rev().take(25).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                })
                .collect();
            let kept = keep_logs(running);
            panic!(
                "not settled within {SETTLE_MAX:?}: owned {owned:?} of {partitions}, input through \
                 {last} (whole logs in {kept})\n{}",
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The newest snapshot of each partition among the processors' directories: after a graceful
/// stop, the one its last owner wrote when it stopped.
fn newest_state(dirs: &[&Path], partitions: u32) -> Vec<String> {
    let restored: Vec<Partition> = (0..partitions)
        .map(|p| {
            dirs.iter()
                .filter_map(|dir| {
                    creditflow::snapshot::Store::open(dir, 3)
                        .expect("snapshot store")
                        .load(p)
                        .loaded
                })
                .max_by_key(|loaded| loaded.header.applied_through)
                .map_or_else(|| Partition::new(p, partitions), |l| l.partition)
        })
        .collect();
    Engine::from_partitions(catalog(), restored).state_view()
}

/// SIGTERM to every processor at once; each must exit 0 (else every log is kept in
/// `target/cluster-test-logs/` for the post-mortem).
fn stop_all(processors: &mut [(&Setup, &mut Child)]) {
    for (_, child) in processors.iter() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }
    let mut failed = Vec::new();
    for (index, (setup, child)) in processors.iter_mut().enumerate() {
        let status = terminate(child);
        if !status.success() {
            failed.push(format!("processor {index}: exit {status}"));
        }
        let _ = setup;
    }
    if !failed.is_empty() {
        let kept = keep_logs(&processors.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        panic!("{}; logs in {kept}", failed.join(", "));
    }
}

/// Copies the processors' logs to `target/cluster-test-logs/<time>/` (the temporary
/// directories go with the test); returns that directory.
fn keep_logs(setups: &[&Setup]) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/cluster-test-logs")
        .join(format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        ));
    let _ = std::fs::create_dir_all(&dir);
    for (index, setup) in setups.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("processor-{index}.log")), setup.log());
    }
    dir.display().to_string()
}

/// Keeps every processor's log and the names of its snapshot files (`keep_logs`) when the test
/// panics, including those of processors the test killed (`wait_settled` sees only the running
/// ones).
struct KeepOnPanic<'a>(&'a [Setup]);

impl Drop for KeepOnPanic<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let kept = keep_logs(&self.0.iter().collect::<Vec<_>>());
        for (index, setup) in self.0.iter().enumerate() {
            let mut names: Vec<String> = std::fs::read_dir(setup.dir.path().join("snapshots"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let _ = std::fs::write(
                std::path::Path::new(&kept).join(format!("processor-{index}.files")),
                names.join("\n"),
            );
        }
        eprintln!("every processor's log and snapshot files kept in {kept}");
    }
}

/// Everything the processors did against the oracle: the state in their last snapshots and
/// the output stream, every expected output exactly once.
fn compare(runtime: &tokio::runtime::Runtime, url: &str, setups: &[&Setup], partitions: u32) {
    let (engine, expected) = runtime.block_on(oracle(url, partitions));
    let actual = runtime.block_on(outputs(url));
    assert_outputs_match(&actual, &expected);
    let dirs: Vec<std::path::PathBuf> = setups.iter().map(|s| s.snapshots()).collect();
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    assert_eq!(
        newest_state(&dirs, partitions),
        engine.state_view(),
        "final state"
    );
}

/// Per processor, how many times its log says it took partitions.
fn takes(setup: &Setup) -> usize {
    setup.log().matches("took partitions").count()
}

/// Three processors share 12 partitions; one is killed (SIGKILL) while usage flows and its
/// partitions resume on the other two; a fourth joins and takes its share.
#[test]
fn a_killed_processors_partitions_move_and_a_new_one_takes_its_share() {
    let server = NatsServer::start();
    let url = server.url();
    let urls = vec![url.clone()];
    let partitions = 12;
    let runtime = runtime();
    let setups: Vec<Setup> = (0..4).map(|_| member(&urls, partitions, "")).collect();
    let mut a = KillOnDrop(setups[0].start(&[]));
    wait_streams(&runtime, &url);
    let mut b = KillOnDrop(setups[1].start(&[]));
    let mut c = KillOnDrop(setups[2].start(&[]));
    let lines = creditflow::sample::scenario(21, 80, 24_000);
    let (first, second) = lines.split_at(16_000);
    let producer = {
        let (url, first) = (url.clone(), first.to_vec());
        runtime.spawn(async move { publish_resilient(&url, &first, partitions, 4_000).await })
    };
    wait_settled(
        &runtime,
        &url,
        &[&setups[0], &setups[1], &setups[2]],
        partitions,
        true,
    );
    std::thread::sleep(Duration::from_millis(1500));
    b.kill().expect("SIGKILL");
    let _ = b.wait();
    let killed = Instant::now();
    runtime.block_on(producer).expect("producer");
    wait_settled(&runtime, &url, &[&setups[0], &setups[2]], partitions, true);
    eprintln!(
        "the killed processor's partitions were served again after {:?}",
        killed.elapsed()
    );

    let mut d = KillOnDrop(setups[3].start(&[]));
    runtime.block_on(publish(&url, second, partitions));
    wait_settled(
        &runtime,
        &url,
        &[&setups[0], &setups[2], &setups[3]],
        partitions,
        true,
    );
    assert!(takes(&setups[3]) >= 1, "the new processor took partitions");
    stop_all(&mut [
        (&setups[0], &mut a.0),
        (&setups[2], &mut c.0),
        (&setups[3], &mut d.0),
    ]);
    compare(
        &runtime,
        &url,
        &setups.iter().collect::<Vec<_>>(),
        partitions,
    );
}

/// A processor stopped (SIGSTOP) past its lease's TTL while usage flows: the other takes its
/// partitions; when it runs again (SIGCONT) it publishes nothing for them, finds its leases
/// lost and exits non-zero, and started again (as its supervisor would) it rejoins and takes
/// its share. On a server that checks the output fence (2.11 and later) the output stream's
/// duplicate window is 1 s, so anything it still sent would be stored twice unless the server
/// refused it; before 2.11 the window (2 minutes) is the fence.
#[test]
fn a_paused_processor_publishes_nothing_for_what_it_lost_and_rejoins() {
    let server = NatsServer::start();
    let url = server.url();
    let urls = vec![url.clone()];
    let partitions = 8;
    let runtime = runtime();
    let fenced = creditflow::testkit::nats_server_version() >= (2, 11);
    let extra = if fenced {
        "[output]\nduplicate_window = \"1s\"\n"
    } else {
        ""
    };
    let setups: Vec<Setup> = (0..2).map(|_| member(&urls, partitions, extra)).collect();
    let mut a = KillOnDrop(setups[0].start(&[]));
    wait_streams(&runtime, &url);
    let mut b = KillOnDrop(setups[1].start(&[]));
    let lines = creditflow::sample::scenario(22, 60, 30_000);
    let producer = {
        let (url, lines) = (url.clone(), lines.clone());
        runtime.spawn(async move { publish_resilient(&url, &lines, partitions, 3_000).await })
    };
    wait_settled(&runtime, &url, &[&setups[0], &setups[1]], partitions, true);
    let pid = b.id().to_string();
    let signal = |name: &str| {
        std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill");
    };
    signal("-STOP");
    wait_until(
        "the other processor owns every partition",
        SETTLE_MAX,
        || gauge_of(&setups[0], "creditflow_partitions_owned") == Some(u64::from(partitions)),
    );
    std::thread::sleep(Duration::from_secs(2));
    signal("-CONT");
    let status = b.wait().expect("wait");
    assert!(
        !status.success(),
        "the paused one exits once it finds its leases lost"
    );
    let log = setups[1].log();
    assert!(log.contains("lease lost"), "{log}");
    let mut b = KillOnDrop(setups[1].start(&[]));
    runtime.block_on(producer).expect("producer");
    wait_settled(&runtime, &url, &[&setups[0], &setups[1]], partitions, true);
    stop_all(&mut [(&setups[0], &mut a.0), (&setups[1], &mut b.0)]);
    compare(
        &runtime,
        &url,
        &setups.iter().collect::<Vec<_>>(),
        partitions,
    );
}

/// Three processors on a 3-node JetStream cluster (streams and buckets with 3 replicas): a
/// node killed (SIGKILL) mid-run and restarted changes nothing; then a processor is killed and
/// its partitions move.
#[test]
fn a_three_node_cluster_survives_a_node_and_a_processor() {
    let mut cluster = NatsCluster::start(3);
    cluster.wait_jetstream(Duration::from_secs(60));
    let urls = cluster.urls();
    // The test's own clients go through node 0 (node 1 is the one killed); the processors know
    // all three.
    let url = urls[0].clone();
    let partitions = 9;
    let runtime = runtime();
    // The lease bucket has 3 replicas too: its writes fail while a dead node's leadership is
    // elected anew (4 to 9 s in nats-server), so the TTL outlasts that (lease.ttl >= 20 s with
    // replicas, checked by the config).
    let extra = "[input]\nreplicas = 3\n[output]\nreplicas = 3\n";
    let setups: Vec<Setup> = (0..3)
        .map(|_| member_with_ttl(&urls, partitions, "24s", extra))
        .collect();
    let _keep = KeepOnPanic(&setups);
    let mut processors: Vec<KillOnDrop> = Vec::new();
    processors.push(KillOnDrop(setups[0].start(&[])));
    wait_streams(&runtime, &url);
    processors.push(KillOnDrop(setups[1].start(&[])));
    processors.push(KillOnDrop(setups[2].start(&[])));
    let lines = creditflow::sample::scenario(23, 60, 20_000);
    let producer = {
        let (url, lines) = (url.clone(), lines.clone());
        runtime.spawn(async move { publish_resilient(&url, &lines, partitions, 2_500).await })
    };
    let running: Vec<&Setup> = setups.iter().collect();
    // Before 2.9.21 two processors can take one lease at once (nats-server#4320); the one that
    // finds the lease taken at its next renewal stops and exits 1, as a lost lease always
    // does, for its supervisor to start it again. The test is that supervisor there, and only
    // there: on a later server a processor that exits fails the test.
    let hazard =
        server_version_of(&setups[0]) < creditflow::pipeline::server::CONDITIONAL_WRITES_SERIALIZED;
    // Where each processor's log begins for its latest start.
    let mut log_starts = vec![0; setups.len()];
    let mut supervise = |processors: &mut [KillOnDrop]| {
        for (index, child) in processors.iter_mut().enumerate() {
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            let whole = setups[index].log();
            let log = &whole[log_starts[index]..];
            assert!(
                hazard && log.contains("the lease on these streams is lost"),
                "processor {index} exited ({status}) on a server that serializes conditional \
                 writes, or not for a lost lease:\n{log}"
            );
            eprintln!(
                "processor {index} lost a lease taken twice (nats-server#4320); started again"
            );
            log_starts[index] = whole.len();
            *child = KillOnDrop(setups[index].start(&[]));
        }
    };
    wait_settled_supervised(&runtime, &url, &running, partitions, true, &mut || {
        supervise(&mut processors)
    });
    cluster.node(1).kill();
    std::thread::sleep(Duration::from_secs(2));
    cluster.node(1).restart();
    std::thread::sleep(Duration::from_secs(1));
    processors[2].kill().expect("SIGKILL");
    let _ = processors[2].wait();
    runtime.block_on(producer).expect("producer");
    wait_settled_supervised(&runtime, &url, &running[..2], partitions, true, &mut || {
        supervise(&mut processors[..2])
    });
    let (first, rest) = processors.split_at_mut(1);
    stop_all(&mut [(&setups[0], &mut first[0].0), (&setups[1], &mut rest[0].0)]);
    compare(&runtime, &url, &running, partitions);
    // Before 2.9.21 a replicated lease bucket can grant one lease twice (nats-server#4320):
    // each processor says so at start, and only then.
    for setup in &setups {
        let version = server_version_of(setup);
        let warned = setup.log().contains("nats-io/nats-server#4320");
        assert_eq!(
            warned,
            version < creditflow::pipeline::server::CONDITIONAL_WRITES_SERIALIZED,
            "server {version}: the lease hazard warned {warned}"
        );
    }
}

/// A processor alone refuses to start beside processors that share the streams, and the other
/// way round, each naming the other.
#[test]
fn a_processor_alone_and_sharing_ones_refuse_each_other() {
    let server = NatsServer::start();
    let url = server.url();
    let partitions = 4;
    let runtime = runtime();
    let sharing = member(std::slice::from_ref(&url), partitions, "");
    let mut shared = KillOnDrop(sharing.start(&[]));
    wait_streams(&runtime, &url);
    wait_until("a partition owned", SETTLE_MAX, || {
        gauge_of(&sharing, "creditflow_partitions_owned") == Some(u64::from(partitions))
    });
    let alone = Setup::with_metrics(
        &url,
        partitions,
        1,
        &format!("[snapshot]\nobject_store = \"{BUCKET}\"\n[lease]\nttl = \"6s\"\n"),
        true,
    );
    let mut refused = alone.start(&[]);
    let status = refused.wait().expect("wait");
    assert!(!status.success());
    assert!(
        alone.log().contains("refusing to run alone beside them"),
        "{}",
        alone.log()
    );
    assert!(terminate(&mut shared).success(), "{}", sharing.log());

    let mut alone_running = KillOnDrop(alone.start(&[]));
    wait_until("the lone processor's metrics", SETTLE_MAX, || {
        gauge_of(&alone, "creditflow_partitions_owned") == Some(u64::from(partitions))
    });
    let mut refused = sharing.start(&[]);
    let status = refused.wait().expect("wait");
    assert!(!status.success());
    assert!(
        sharing.log().contains("refusing to share them with it"),
        "{}",
        sharing.log()
    );
    assert!(terminate(&mut alone_running).success(), "{}", alone.log());
}

/// The SIGKILL torture with three processors sharing 12 partitions: while a producer publishes,
/// one of them (at random) is killed with SIGKILL, or stopped with SIGTERM (it hands its
/// partitions over), and started again, many times; ticks are on. At the end the state equals
/// the oracle and every output is stored once.
#[test]
fn sigkill_torture_with_three_processors() {
    let rounds: usize = std::env::var("CLUSTER_TORTURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("CLUSTER_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    eprintln!("sigkill_torture_with_three_processors: seed {seed}, {rounds} rounds");
    let server = NatsServer::start();
    let url = server.url();
    let urls = vec![url.clone()];
    let partitions = 12;
    let runtime = runtime();
    let extra = "[engine]\ntick_interval = \"300ms\"\n";
    let setups: Vec<Setup> = (0..3).map(|_| member(&urls, partitions, extra)).collect();
    let mut processors: Vec<KillOnDrop> = vec![KillOnDrop(setups[0].start(&[]))];
    wait_streams(&runtime, &url);
    processors.push(KillOnDrop(setups[1].start(&[])));
    processors.push(KillOnDrop(setups[2].start(&[])));
    let lines = creditflow::sample::scenario(seed, 80, 40_000);
    let producer = {
        let (url, lines) = (url.clone(), lines.clone());
        runtime.spawn(async move { publish_resilient(&url, &lines, partitions, 2_500).await })
    };
    let mut rng = creditflow::sample::Rng::new(seed);
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(500 + rng.below(2000)));
        let victim = rng.below(3) as usize;
        if round % 3 == 2 {
            let status = common::terminate_explained(&mut processors[victim], || {
                let log = setups[victim].log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                format!(
                    "; log tail:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            });
            assert!(
                status.success(),
                "exit {status}; log:\n{}",
                setups[victim].log()
            );
        } else {
            processors[victim].kill().expect("SIGKILL");
            let _ = processors[victim].wait();
        }
        processors[victim] = KillOnDrop(setups[victim].start(&[]));
    }
    runtime.block_on(producer).expect("producer");
    let running: Vec<&Setup> = setups.iter().collect();
    wait_settled(&runtime, &url, &running, partitions, true);
    let (first, rest) = processors.split_at_mut(1);
    let (second, third) = rest.split_at_mut(1);
    stop_all(&mut [
        (&setups[0], &mut first[0].0),
        (&setups[1], &mut second[0].0),
        (&setups[2], &mut third[0].0),
    ]);
    compare_at_positions(&runtime, &url, &running, partitions);
}

/// As [`compare`], when ticks go on while the processors stop: each processor stops at its own
/// position, so each partition is compared with the oracle through its last owner's position
/// (its newest snapshot's), and so are the outputs its inputs caused.
fn compare_at_positions(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    setups: &[&Setup],
    partitions: u32,
) {
    let dirs: Vec<std::path::PathBuf> = setups.iter().map(|s| s.snapshots()).collect();
    let positions: Vec<u64> = (0..partitions)
        .map(|p| {
            dirs.iter()
                .filter_map(|dir| {
                    creditflow::snapshot::Store::open(dir, 3)
                        .expect("snapshot store")
                        .load(p)
                        .loaded
                        .map(|l| l.header.applied_through)
                })
                .max()
                .unwrap_or(0)
        })
        .collect();
    let log = runtime.block_on(common::exported_log(url));
    let partition_at: BTreeMap<u64, u32> = log
        .iter()
        .map(|entry| {
            let route =
                creditflow::pipeline::pipeline_route("creditflow.in", &entry.subject, partitions);
            (entry.seq, route.partition().unwrap_or(0))
        })
        .collect();
    let mut expected_partitions: Vec<Option<Partition>> = vec![None; partitions as usize];
    let mut expected_outputs = Vec::new();
    let distinct: std::collections::BTreeSet<u64> = positions.iter().copied().collect();
    for position in distinct {
        let through: Vec<_> = log.iter().filter(|e| e.seq <= position).cloned().collect();
        let (engine, outputs) =
            creditflow::cli::replay::run_log(catalog(), partitions, &through, None);
        let mut states = engine.into_partitions();
        for p in 0..partitions {
            if positions[p as usize] == position {
                expected_partitions[p as usize] = Some(std::mem::replace(
                    &mut states[p as usize],
                    Partition::new(p, partitions),
                ));
            }
        }
        expected_outputs.extend(outputs.into_iter().filter(|o| {
            let p = partition_at.get(&o.seq).copied().unwrap_or(0);
            positions[p as usize] == position
        }));
    }
    let actual = runtime.block_on(outputs(url));
    assert_outputs_match(&actual, &expected_outputs);
    let expected = Engine::from_partitions(
        catalog(),
        expected_partitions.into_iter().flatten().collect(),
    );
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    assert_eq!(
        newest_state(&dirs, partitions),
        expected.state_view(),
        "final state"
    );
}

/// Two processors sharing 4 partitions answer the service for every account, whichever gets
/// the request (one forwards to the other): every balance equals the oracle's state view, a
/// command for another processor's account is applied once (a retry is a duplicate), a typed
/// error comes back through the forwarding, and either one's HTTP totals count every account.
#[test]
fn the_service_answers_every_account_from_any_processor() {
    let server = NatsServer::start();
    let url = server.url();
    let urls = vec![url.clone()];
    let partitions = 4;
    let runtime = runtime();
    let setups: Vec<Setup> = (0..2).map(|_| member(&urls, partitions, "")).collect();
    let mut a = KillOnDrop(setups[0].start(&[]));
    wait_streams(&runtime, &url);
    let mut b = KillOnDrop(setups[1].start(&[]));
    let lines = creditflow::sample::scenario(5, 30, 4000);
    runtime.block_on(publish(&url, &lines, partitions));
    wait_settled(&runtime, &url, &[&setups[0], &setups[1]], partitions, true);
    let client = runtime
        .block_on(async_nats::connect(&url))
        .expect("connect");
    let accounts: Vec<String> = (1..=30).map(|i| format!("acct_{i:02}")).collect();
    // Settled is owned and read; the services register right after that: wait until every
    // account is answered (a request before gets "no responders", an immediate error).
    wait_until("the services answer", SETTLE_MAX, || {
        accounts.iter().all(|account| {
            runtime
                .block_on(service_request(
                    &client,
                    "creditflow.svc.query.balance",
                    serde_json::json!({ "account": account }).to_string(),
                ))
                .is_ok()
        })
    });

    // Commands, forwarded or not, each applied once.
    for account in &accounts[..10] {
        let grant =
            serde_json::json!({"account": account, "id": format!("svc-{account}"), "amount": "5"});
        let first = runtime
            .block_on(service_request(
                &client,
                "creditflow.svc.command.grant",
                grant.to_string(),
            ))
            .unwrap_or_else(|e| panic!("grant for {account}: {e:?}"));
        let again = runtime
            .block_on(service_request(
                &client,
                "creditflow.svc.command.grant",
                grant.to_string(),
            ))
            .unwrap_or_else(|e| panic!("retried grant for {account}: {e:?}"));
        let again: serde_json::Value = serde_json::from_str(&again).expect("json");
        assert_eq!(again["duplicate"], true, "{first}\n{again}");
    }
    let last = last_sequence(&runtime, &url);
    let (engine, _) = runtime.block_on(oracle(&url, partitions));
    let views: BTreeMap<String, String> = engine
        .state_view()
        .into_iter()
        .map(|view| {
            let value: serde_json::Value = serde_json::from_str(&view).expect("view");
            (
                value["account"].as_str().expect("account").to_string(),
                view,
            )
        })
        .collect();
    assert_eq!(views.len(), 30);
    for account in &accounts {
        // Several times each: the queue group sends them to either processor.
        for _ in 0..3 {
            let reply = runtime
                .block_on(service_request(
                    &client,
                    "creditflow.svc.query.balance",
                    serde_json::json!({"account": account, "min_seq": last}).to_string(),
                ))
                .unwrap_or_else(|e| panic!("balance of {account}: {e:?}"));
            let at = reply.find(",\"available\":[").expect("a balance reply");
            assert_eq!(format!("{}}}", &reply[..at]), views[account], "{account}");
        }
    }
    for _ in 0..6 {
        let refused = runtime.block_on(service_request(
            &client,
            "creditflow.svc.query.balance",
            serde_json::json!({"account": "acct_nobody"}).to_string(),
        ));
        assert!(
            matches!(&refused, Err((404, status)) if status.starts_with("unknown_account")),
            "{refused:?}"
        );
    }
    for setup in &setups {
        let port = setup.metrics_port().expect("metrics port");
        let totals = http_get(port, "/api/v1/totals");
        let value: serde_json::Value =
            serde_json::from_str(&totals).unwrap_or_else(|e| panic!("{e}: {totals}"));
        assert_eq!(value["accounts"], 30, "{totals}");
    }
    stop_all(&mut [(&setups[0], &mut a.0), (&setups[1], &mut b.0)]);
    compare(
        &runtime,
        &url,
        &setups.iter().collect::<Vec<_>>(),
        partitions,
    );
}

/// The body of `GET path` on the processor's metrics server.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// The output fence, through the processor's own publisher against the real server: once a
/// later owner has written its fence record for a partition, an output expecting the earlier
/// record is refused by nats-server 2.11 and later (API level 1). An older server does not know
/// `Nats-Expected-Last-Subject-Sequence-Subject` and may hold the expectation against the
/// output's own subject, refusing even the owner's own output (2.9.10 did in some runs): the
/// processor fences only on a server that reports API level 1 (before it, the output duplicate
/// window is the fence: docs/SCALE-OUT.md).
#[test]
fn a_previous_owners_output_is_refused_once_a_successor_fenced_the_partition() {
    use creditflow::pipeline::emit::Publisher;
    use creditflow::pipeline::publish::{Fences, JetStreamPublisher};
    let server = NatsServer::start();
    let runtime = runtime();
    let checks = creditflow::testkit::nats_server_version() >= (2, 11);
    runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let context = async_nats::jetstream::new(client.clone());
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: "CREDITFLOW_OUT".into(),
                subjects: vec!["creditflow.out.>".into()],
                ..Default::default()
            })
            .await
            .expect("stream");
        let fence = |owner: &'static str| {
            let context = context.clone();
            async move {
                context
                    .publish(
                        "creditflow.out.fence.3",
                        format!(r#"{{"type":"fence","partition":3,"owner":"{owner}"}}"#).into(),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("fence record")
                    .sequence
            }
        };
        let publisher = |sequence: u64| {
            JetStreamPublisher::new(
                client.clone(),
                Duration::from_secs(10),
                Some(Fences {
                    subject_prefix: "creditflow.out.fence".into(),
                    sequences: std::sync::Arc::new(vec![None, None, None, Some(sequence)]),
                }),
            )
        };
        let output = |id: &str| creditflow::pipeline::Outbound {
            partition: 3,
            seq: 1,
            subject: "creditflow.out.3.dead_letter".into(),
            id: id.to_string(),
            payload: bytes::Bytes::from_static(b"{}"),
        };
        if !checks {
            // What an older server does with the header is no contract (2.9.10 refused the
            // owner's own output in some runs and stored it in others): the processor never
            // sends it there, and scripts/test runs this test again against 2.12.8.
            eprintln!("nats-server before 2.11: the output fence is not used; nothing to check");
            return;
        }
        let first = fence("first").await;
        let previous = publisher(first).await.expect("publisher");
        let stored = previous.publish(&output("o1")).await.expect("sent").await;
        assert!(stored.is_ok(), "the owner's own output: {stored:?}");
        let _second = fence("second").await;
        let late = previous.publish(&output("o2")).await.expect("sent").await;
        let refused = late.expect_err("a previous owner's output after the successor's record");
        assert!(refused.0.contains("wrong last sequence"), "{}", refused.0);
    });
}
