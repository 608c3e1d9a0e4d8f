//! The streaming pipeline against a real `nats-server -js`: a published log yields exactly the
//! outputs and final state that `replay` gives for the same log (the oracle), for several shard
//! and partition counts; bad input among good input is dead-lettered one for one.

mod common;

use std::time::Duration;

use common::*;

fn sample(seed: u64, accounts: usize, messages: usize) -> Vec<String> {
    creditflow::sample::scenario(seed, accounts, messages)
}

/// Runs the processor over `lines` on a fresh server, checks its outputs and final state against
/// the oracle, and returns the output ids (sorted), that state, and how many snapshots the
/// processor wrote (its run summary's `snapshots_written`).
fn run_and_compare(
    partitions: u32,
    shards: usize,
    extra_config: &str,
    lines: &[String],
) -> (Vec<String>, Vec<String>, u64) {
    let server = creditflow::testkit::NatsServer::start();
    let url = server.url();
    let setup = Setup::new(&url, partitions, shards, extra_config);
    let runtime = runtime();
    let mut processor = setup.start(&[]);
    // The processor creates the streams; publish once the input stream exists.
    wait_until("the input stream", Duration::from_secs(30), || {
        runtime.block_on(async {
            let client = async_nats::connect(&url).await.expect("connect");
            async_nats::jetstream::new(client)
                .get_stream("CREDITFLOW_IN")
                .await
                .is_ok()
        })
    });
    runtime.block_on(publish(&url, lines, partitions));
    let (engine, expected) = runtime.block_on(oracle(&url, partitions));
    let expected_count = expected.len() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let have = runtime.block_on(stream_len(&url, "CREDITFLOW_OUT"));
        if have >= expected_count {
            break;
        }
        if std::time::Instant::now() > deadline {
            let input = runtime.block_on(stream_len(&url, "CREDITFLOW_IN"));
            panic!(
                "timed out waiting for every output: {have} of {expected_count} outputs, \
                 {input} input messages; processor log:\n{}",
                setup.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = terminate(&mut processor);
    assert!(status.success(), "exit {status}; log:\n{}", setup.log());
    let actual = runtime.block_on(outputs(&url));
    assert_outputs_match(&actual, &expected);
    let state = snapshot_state(&setup.snapshots(), partitions);
    assert_eq!(state, engine.state_view(), "final state");
    let mut ids: Vec<String> = actual.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    let log = setup.log();
    let written = log
        .rsplit("snapshots_written: ")
        .next()
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no run summary in the log:\n{log}"));
    (ids, state, written)
}

#[test]
fn one_shard_one_partition_matches_replay() {
    run_and_compare(1, 1, "", &sample(21, 12, 1500));
}

#[test]
fn two_shards_eight_partitions_match_replay() {
    run_and_compare(8, 2, "", &sample(22, 20, 3000));
}

#[test]
fn four_shards_sixteen_partitions_match_replay() {
    run_and_compare(16, 4, "", &sample(23, 30, 3000));
}

/// One log through 1, 2 and 4 shards with snapshots never, every 200 events and every 20 ms:
/// the same output ids and the same final state each time (ticks off, so the input stream is
/// the published log alone in every run).
#[test]
fn shard_counts_and_snapshot_intervals_change_nothing() {
    let lines = sample(24, 24, 3000);
    let runs = [
        (1, "[engine]\ntick_interval = \"0\"\n[snapshot]\ninterval_events = 100000000\ninterval = \"1h\"\n"),
        (2, "[engine]\ntick_interval = \"0\"\n[snapshot]\ninterval_events = 200\n"),
        (4, "[engine]\ntick_interval = \"0\"\n[snapshot]\ninterval = \"20ms\"\n"),
    ];
    let results: Vec<_> = runs
        .iter()
        .map(|(shards, config)| run_and_compare(8, *shards, config, &lines))
        .collect();
    for (run, result) in results.iter().enumerate().skip(1) {
        assert_eq!(result.0, results[0].0, "output ids, run {run}");
        assert_eq!(result.1, results[0].1, "final state, run {run}");
    }
    assert!(!results[0].0.is_empty());
    // Only the final snapshots without intervals; more with them.
    assert_eq!(results[0].2, 8);
    let written: Vec<u64> = results.iter().map(|r| r.2).collect();
    assert!(
        written[1] > 8 && written[2] > 8,
        "snapshots written: {written:?}"
    );
}

/// 1,000 malformed messages of many kinds among 100,000 valid ones: exactly 1,000 dead letters,
/// each with its reason, and balances equal to the oracle's.
#[test]
fn a_thousand_bad_messages_among_a_hundred_thousand_good_ones() {
    let mut rng = creditflow::sample::Rng::new(99);
    let mut lines = Vec::with_capacity(101_000);
    let accounts = 200;
    for i in 0..accounts {
        lines.push(format!(
            r#"{{"type":"grant","id":"g{i}","account":"a{i}","ts":"2026-10-01T00:00:00Z","amount":"1000000"}}"#
        ));
    }
    let bad_kinds = [
        "not json at all".to_string(),
        r#"{"id":"x","account":"a1","meter":"teleport","quantity":"1","ts":"2026-10-01T00:00:00Z"}"#.to_string(),
        r#"{"id":"x","account":"a1","meter":"api_call","quantity":"-1","ts":"2026-10-01T00:00:00Z"}"#.to_string(),
        r#"{"id":"x","account":"a 1","meter":"api_call","quantity":"1","ts":"2026-10-01T00:00:00Z"}"#.to_string(),
        r#"{"type":"refund","id":"x","account":"a1","ts":"2026-10-01T00:00:00Z"}"#.to_string(),
        r#"{"id":"x","account":"a1","meter":"api_call","quantity":"1"}"#.to_string(),
        r#"{"id":"x","account":"a1","meter":"api_call","quantity":"1","ts":"2026-10-01T00:00:00Z","extra":1}"#.to_string(),
        r#"{"id":"x","account":"a1","meter":"api_call","quantity":"1","ts":"2030-01-01T00:00:00Z"}"#.to_string(),
        "[]".to_string(),
        r#"{"id":"x","account":"a1","meter":"llm_token","quantity":"10","ts":"2026-10-01T00:00:00Z"}"#.to_string(),
    ];
    let mut bad = 0;
    let mut good = 0;
    while good < 100_000 || bad < 1_000 {
        if bad < 1_000 && (good >= 100_000 || rng.below(101) == 0) {
            // Unique ids so no bad message is a duplicate of another.
            let line = bad_kinds[bad % bad_kinds.len()]
                .replace("\"id\":\"x\"", &format!("\"id\":\"bad{bad}\""));
            lines.push(line);
            bad += 1;
        } else {
            let account = rng.below(accounts);
            lines.push(format!(
                r#"{{"id":"e{good}","account":"a{account}","meter":"api_call","quantity":"{}","ts":"2026-10-01T{:02}:{:02}:00Z"}}"#,
                1 + rng.below(9),
                good / 6000 % 24,
                good / 100 % 60
            ));
            good += 1;
        }
    }
    let partitions = 8;
    let server = creditflow::testkit::NatsServer::start();
    let url = server.url();
    let setup = Setup::new(&url, partitions, 2, "");
    let runtime = runtime();
    let mut processor = setup.start(&[]);
    wait_until("the input stream", Duration::from_secs(30), || {
        runtime.block_on(async {
            let client = async_nats::connect(&url).await.expect("connect");
            async_nats::jetstream::new(client)
                .get_stream("CREDITFLOW_IN")
                .await
                .is_ok()
        })
    });
    runtime.block_on(publish(&url, &lines, partitions));
    let (engine, expected) = runtime.block_on(oracle(&url, partitions));
    wait_until("every output", Duration::from_secs(300), || {
        runtime.block_on(stream_len(&url, "CREDITFLOW_OUT")) >= expected.len() as u64
    });
    let status = terminate(&mut processor);
    assert!(status.success(), "exit {status}; log:\n{}", setup.log());
    let actual = runtime.block_on(outputs(&url));
    assert_outputs_match(&actual, &expected);
    let dead: Vec<serde_json::Value> = actual
        .iter()
        .map(|(_, p)| serde_json::from_str::<serde_json::Value>(p).unwrap())
        .filter(|o| o["type"] == "dead_letter")
        .collect();
    assert_eq!(dead.len(), 1_000, "one dead letter per bad message");
    let reasons: std::collections::BTreeSet<&str> =
        dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert!(reasons.len() >= 8, "many kinds of reasons: {reasons:?}");
    assert!(dead
        .iter()
        .all(|d| !d["detail"].as_str().unwrap_or("").is_empty()));
    assert_eq!(
        snapshot_state(&setup.snapshots(), partitions),
        engine.state_view(),
        "final state"
    );
    // The processor never restarted: one start in its log.
    assert_eq!(
        setup.log().matches("starting").count(),
        1,
        "{}",
        setup.log()
    );
}
