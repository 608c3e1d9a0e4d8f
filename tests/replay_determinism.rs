//! Replay is a pure function of (catalog, log): the same log gives the same outputs and state,
//! whatever the partition count, and a snapshot taken midway (encoded with the snapshot codec,
//! decoded, resumed) changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use creditflow::catalog::Catalog;
use creditflow::cli::replay::{read_log, LogEntry};
use creditflow::engine::{Engine, Partition};
use creditflow::wire::output::Output;

fn catalog() -> Arc<Catalog> {
    Arc::new(
        creditflow::catalog::load::from_path(Path::new("config/catalog.toml")).expect("catalog"),
    )
}

fn sample_log() -> Vec<LogEntry> {
    // A fresh scenario rather than the shipped file, so the test also covers another seed.
    creditflow::sample::scenario(11, 24, 4000)
        .into_iter()
        .enumerate()
        .map(|(index, line)| LogEntry {
            seq: index as u64 + 1,
            subject: "creditflow.in".into(),
            payload: line.into_bytes(),
            received: None,
        })
        .collect()
}

fn run(engine: &mut Engine, log: &[LogEntry], out: &mut Vec<Output>) {
    for entry in log {
        engine.apply(&entry.envelope(), out);
    }
}

/// A fresh engine of `partitions` that has applied all of `log`, and the outputs.
fn replayed(partitions: u32, log: &[LogEntry]) -> (Engine, Vec<Output>) {
    let mut outputs = Vec::new();
    let mut engine = Engine::new(catalog(), partitions);
    run(&mut engine, log, &mut outputs);
    (engine, outputs)
}

fn json(outputs: &[Output]) -> Vec<String> {
    outputs.iter().map(Output::to_json).collect()
}

/// Outputs grouped per account (dead letters without an account under ""), order kept.
fn per_account(outputs: &[Output]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for output in outputs {
        map.entry(output.account.clone().unwrap_or_default())
            .or_default()
            .push(output.to_json());
    }
    map
}

#[test]
fn same_log_twice_gives_identical_bytes() {
    let log = sample_log();
    let (engine, first) = replayed(1, &log);
    let state_first = engine.state_view();
    let (engine, second) = replayed(1, &log);
    assert_eq!(json(&first), json(&second));
    assert_eq!(state_first, engine.state_view());
    engine.check_invariants().expect("invariants");
    assert!(
        first.len() > 1000,
        "the scenario should produce plenty of outputs"
    );
}

#[test]
fn partition_count_does_not_change_any_account() {
    let log = sample_log();
    let (engine, reference) = replayed(1, &log);
    let reference_state = engine.state_view();
    for partitions in [2, 5, 16] {
        let (engine, outputs) = replayed(partitions, &log);
        assert_eq!(
            per_account(&reference),
            per_account(&outputs),
            "{partitions} partitions"
        );
        assert_eq!(
            reference_state,
            engine.state_view(),
            "{partitions} partitions"
        );
    }
}

#[test]
fn snapshot_round_trip_midway_changes_nothing() {
    let log = sample_log();
    let (engine, uninterrupted) = replayed(4, &log);
    let expected_state = engine.state_view();

    for cut in [1, log.len() / 3, log.len() / 2, log.len() - 1] {
        let mut outputs = Vec::new();
        let mut engine = Engine::new(catalog(), 4);
        run(&mut engine, &log[..cut], &mut outputs);
        let encoded: Vec<Vec<u8>> = engine
            .partitions()
            .iter()
            .map(|p| creditflow::codec::encode(p).expect("encode"))
            .collect();
        drop(engine);
        let restored: Vec<Partition> = encoded
            .iter()
            .map(|bytes| creditflow::codec::decode(bytes).expect("decode"))
            .collect();
        let mut engine = Engine::from_partitions(catalog(), restored);
        engine.check_invariants().expect("invariants after restore");
        run(&mut engine, &log[cut..], &mut outputs);
        assert_eq!(json(&uninterrupted), json(&outputs), "cut at {cut}");
        assert_eq!(expected_state, engine.state_view(), "cut at {cut}");
    }
}

#[test]
fn the_shipped_sample_log_replays_cleanly() {
    let log = read_log(Path::new("config/sample-events.jsonl"), false).expect("sample log");
    let (engine, outputs) = replayed(1, &log);
    engine.check_invariants().expect("invariants");
    let stats = engine.stats();
    assert!(stats.usage_applied > 3000, "{stats:?}");
    assert!(stats.duplicates > 0 && stats.dead_letters > 0, "{stats:?}");
    let kinds: std::collections::BTreeSet<&str> =
        outputs.iter().map(|o| o.body.type_name()).collect();
    for kind in [
        "balance.low",
        "balance.depleted",
        "balance.recovered",
        "grant.expiring",
        "grant.expired",
        "topup.granted",
        "invoice.line",
        "revenue.period",
        "hold.expired",
        "command.result",
        "usage.rejected",
        "dead_letter",
    ] {
        assert!(kinds.contains(kind), "the sample log never produces {kind}");
    }
}

/// Applying in batches with fetching ahead (`Engine::apply_batch`, what replay and the shards
/// use) gives the same bytes, state and snapshot bytes as applying one message at a time, for
/// batch sizes from 1 up, bad input included.
#[test]
fn batches_with_fetching_ahead_change_nothing() {
    let mut log = sample_log();
    // Bad input and a subject that names no partition, among the good.
    for (at, payload) in [(7, "not json"), (500, r#"{"id":"x","account":"a b"}"#)] {
        log[at].payload = payload.as_bytes().to_vec();
    }
    log[900].subject = "creditflow.in.x".into();
    for partitions in [1, 3] {
        let (expected, one_by_one) = replayed(partitions, &log);
        for batch in [1, 2, 3, 4, 7, 64, 4096] {
            let mut batched = Vec::new();
            let mut engine = Engine::new(catalog(), partitions);
            for chunk in log.chunks(batch) {
                let envelopes: Vec<_> = chunk.iter().map(LogEntry::envelope).collect();
                engine.apply_batch(&envelopes, &mut batched);
            }
            assert_eq!(json(&batched), json(&one_by_one), "batch {batch}");
            assert_eq!(engine.state_view(), expected.state_view(), "batch {batch}");
            // The snapshot bytes too: last sequence and payload hash (hashed once per batch).
            let encoded = |engine: &Engine| -> Vec<Vec<u8>> {
                engine
                    .partitions()
                    .iter()
                    .map(|partition| creditflow::codec::encode(partition).expect("encode"))
                    .collect()
            };
            assert!(
                encoded(&engine) == encoded(&expected),
                "snapshot bytes differ, batch {batch}"
            );
        }
    }
}

/// The snapshot bytes of a fixed state are pinned. A change in how any state type serializes
/// shows here first, and must come with a new `snapshot::FORMAT_VERSION` (a snapshot of the
/// old layout would otherwise be misread, or refused only by luck) and then a new hash here. A
/// change of state (a semantics fix, a catalog edit) changes the hash too: check that it is
/// only that before updating it.
#[test]
fn snapshot_bytes_are_pinned_to_the_format_version() {
    let (engine, _) = replayed(4, &sample_log());
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    for partition in engine.partitions() {
        hasher.update(&creditflow::codec::encode(partition).expect("encode"));
    }
    let pinned = (creditflow::snapshot::FORMAT_VERSION, hasher.digest());
    assert_eq!(
        pinned,
        (13, 17_986_788_829_369_915_233),
        "snapshot bytes changed: bump snapshot::FORMAT_VERSION if the layout changed, then pin the new pair"
    );
}
