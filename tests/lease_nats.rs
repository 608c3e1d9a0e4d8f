//! One processor at a time on a set of streams, against a real `nats-server` and the real
//! binary: a second processor (with or without `--rebuild`) refuses to start naming the holder;
//! a holder that is stopped (SIGSTOP) loses its lease after the TTL to the next processor, and
//! when it runs again it exits non-zero instead of publishing; a holder killed with SIGKILL on
//! this machine is replaced at once; a holder on another machine is replaced after the TTL; a
//! clean stop gives the lease back.

mod common;

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use common::*;

const TTL: &str = "2s";
const BUCKET: &str = "creditflow_leases";
const KEY: &str = "CREDITFLOW_IN";

fn setup(url: &str) -> Setup {
    Setup::new(url, 2, 1, &format!("[lease]\nttl = \"{TTL}\"\n"))
}

/// Waits for `child` to exit, at most `timeout`.
fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

/// The holder's instance id from a processor's "lease taken" log line.
fn instance_in(log: &str) -> Option<String> {
    let line = log.lines().rfind(|l| l.contains("lease taken"))?;
    let start = line.find("instance ")? + "instance ".len();
    Some(
        line[start..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect(),
    )
}

fn wait_for_lease(setup: &Setup, child: &mut Child) -> String {
    wait_until("the lease taken", Duration::from_secs(60), || {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the processor exited ({status}):\n{}", setup.log());
        }
        instance_in(&setup.log()).is_some()
    });
    instance_in(&setup.log()).expect("instance")
}

/// Starts a processor that must refuse: its exit status is non-zero and its log names `holder`.
fn assert_refused(setup: &Setup, args: &[&str], holder: &[&str]) {
    let mut child = KillOnDrop(setup.start(args));
    let status = exit_within(&mut child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("a second processor kept running:\n{}", setup.log()));
    let log = setup.log();
    assert!(!status.success(), "{log}");
    let refusal = log
        .lines()
        .rfind(|l| l.contains("another processor holds the lease on these streams"))
        .unwrap_or_else(|| panic!("no refusal in:\n{log}"));
    for part in holder {
        assert!(refusal.contains(part), "{part:?} not in {refusal}");
    }
    assert!(
        !setup.snapshots().exists(),
        "the refused processor touched its snapshot directory"
    );
}

/// Starts processors of `setup` one after another until one takes the lease (each refused one
/// exits at once); gives up 30 s after `since`.
fn start_when_free(setup: &Setup, since: Instant) -> KillOnDrop {
    loop {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the lease never came free:\n{}",
            setup.log()
        );
        let mut child = KillOnDrop(setup.start(&[]));
        loop {
            if instance_in(&setup.log()).is_some() {
                return child;
            }
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn lease_bucket(url: &str) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(url).await.expect("connect");
    async_nats::jetstream::new(client)
        .get_key_value(BUCKET)
        .await
        .expect("the lease bucket")
}

#[test]
fn a_second_processor_refuses_until_the_holder_is_gone() {
    let server = creditflow::testkit::NatsServer::start();
    let url = server.url();
    let runtime = runtime();

    // A holds the lease; B refuses naming A, with and without --rebuild.
    let a_setup = setup(&url);
    let mut a = KillOnDrop(a_setup.start(&[]));
    let a_instance = wait_for_lease(&a_setup, &mut a);
    let a_pid = format!("pid {}", a.id());
    let holder = [a_pid.as_str(), a_instance.as_str()];
    let b_setup = setup(&url);
    assert_refused(&b_setup, &[], &holder);
    assert_refused(&b_setup, &["--rebuild"], &holder);

    // A stopped, not dead: B still refuses (nothing proves A gone); after the TTL the lease
    // expires and B takes it.
    signal(&a, "STOP");
    // Measured from the signal: what B's refusal below takes (a whole start, up to the lease
    // bucket's listing) counts toward A's remaining time.
    let stopped_at = Instant::now();
    assert_refused(&b_setup, &[], &holder);
    let mut b = start_when_free(&b_setup, stopped_at);
    let b_instance = wait_for_lease(&b_setup, &mut b);
    // A renewed at most TTL/3 before it was stopped, so its value lived at least 2/3 of the TTL
    // after the stop.
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(1333),
        "B took the lease {:?} after A stopped, before A's last renewal could expire",
        stopped_at.elapsed()
    );
    // A runs again: its lease is gone, so it exits non-zero instead of publishing.
    signal(&a, "CONT");
    let status = exit_within(&mut a, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("A kept running after losing its lease:\n{}", a_setup.log()));
    assert!(!status.success());
    assert!(
        a_setup.log().contains("the lease on these streams is lost"),
        "{}",
        a_setup.log()
    );
    assert!(
        b.try_wait().unwrap().is_none(),
        "B stopped:\n{}",
        b_setup.log()
    );

    // B killed on this machine: provably gone, so C takes over at once (no TTL to wait).
    b.kill().unwrap();
    b.wait().unwrap();
    let c_setup = setup(&url);
    let mut c = KillOnDrop(c_setup.start(&[]));
    let c_instance = wait_for_lease(&c_setup, &mut c);
    assert_ne!(c_instance, b_instance);
    assert!(
        c_setup.log().contains("taking the lease over"),
        "{}",
        c_setup.log()
    );

    // A clean stop gives the lease back (SIGTERM is handled once the processor is serving).
    wait_until("C serving", Duration::from_secs(60), || {
        c_setup.log().contains("service started")
    });
    assert!(terminate(&mut c).success(), "{}", c_setup.log());
    assert!(
        c_setup.log().contains("lease released"),
        "{}",
        c_setup.log()
    );
    let entry = runtime.block_on(async { lease_bucket(&url).await.entry(KEY).await.unwrap() });
    assert!(
        entry
            .as_ref()
            .is_none_or(|e| e.operation != async_nats::jetstream::kv::Operation::Put),
        "the lease is still held after a clean stop: {entry:?}"
    );

    // A holder on another machine cannot be proven gone: D refuses until its TTL has passed.
    let foreign = serde_json::json!({
        "host": "elsewhere", "pid": 4242, "started_at": "2026-12-01T00:00:00.000Z",
        "instance": "feedfacefeedfacefeedfacefeedface", "boot_id": "another-machine",
        "pid_namespace": "pid:[1]", "process_start": 1
    });
    let written_at = Instant::now();
    runtime.block_on(async {
        lease_bucket(&url)
            .await
            .create(KEY, foreign.to_string().into())
            .await
            .expect("write a foreign holder")
    });
    let d_setup = setup(&url);
    assert_refused(
        &d_setup,
        &[],
        &[
            "host elsewhere",
            "pid 4242",
            "feedfacefeedfacefeedfacefeedface",
        ],
    );
    let mut d = start_when_free(&d_setup, written_at);
    wait_for_lease(&d_setup, &mut d);
    assert!(
        written_at.elapsed() >= Duration::from_secs(2),
        "D took a foreign lease {:?} after it was written, within its TTL",
        written_at.elapsed()
    );
    wait_until("D serving", Duration::from_secs(60), || {
        d_setup.log().contains("service started")
    });
    assert!(terminate(&mut d).success(), "{}", d_setup.log());
}
