//! Incremental snapshots, on the engine's side: a base snapshot plus the deltas taken after it
//! rebuild the live state byte for byte (the snapshot codec's bytes), at every cut, whatever
//! the interval between deltas, with the dedupe ring forgetting and evicting, the reversal
//! archive in use, timers firing and accounts created between cuts. A delta applied to any
//! other state is refused.

use std::path::Path;
use std::sync::Arc;

use creditflow::catalog::Catalog;
use creditflow::cli::replay::LogEntry;
use creditflow::engine::shadow::Shadow;
use creditflow::engine::{Engine, Partition};

fn catalog(rules: &[(&str, &str)]) -> Arc<Catalog> {
    let mut text = std::fs::read_to_string(Path::new("config/catalog.toml")).expect("catalog");
    for (key, value) in rules {
        let at = text
            .lines()
            .find(|line| line.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("catalog has no {key}"))
            .to_string();
        text = text.replace(&at, &format!("{key} = {value}"));
    }
    Arc::new(creditflow::catalog::load::from_str(&text).expect("catalog"))
}

fn log(seed: u64) -> Vec<LogEntry> {
    creditflow::sample::scenario(seed, 24, 3000)
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

fn bytes(partition: &Partition) -> Vec<u8> {
    creditflow::codec::encode(partition).expect("encode")
}

/// Replays `log`, taking a delta of every partition every `every` messages (through the codec,
/// as the disk would hold it) and applying it to a copy rebuilt from the base: the copy's bytes
/// equal the live partition's at each cut.
fn check(catalog: Arc<Catalog>, partitions: u32, log: &[LogEntry], every: usize) -> usize {
    let mut engine = Engine::new(catalog, partitions);
    let mut rebuilt: Vec<Partition> = Vec::new();
    // The snapshot writer's copies: accounts shared with the live partition, following the
    // deltas as taken (not through the codec). Each must stay the state of its last cut while
    // the live partition goes on writing the accounts it shares.
    let mut shadows: Vec<(Shadow, Vec<u8>)> = Vec::new();
    for partition in engine.partitions_mut() {
        partition.track_changes();
        rebuilt.push(creditflow::codec::decode(&bytes(partition)).expect("decode base"));
        shadows.push((partition.shadow(), bytes(partition)));
    }
    let mut outputs = Vec::new();
    let mut deltas = 0;
    for (cut, chunk) in log.chunks(every).enumerate() {
        let envelopes: Vec<_> = chunk.iter().map(LogEntry::envelope).collect();
        engine.apply_batch(&envelopes, &mut outputs);
        for ((live, copy), (shadow, then)) in engine
            .partitions_mut()
            .iter_mut()
            .zip(&mut rebuilt)
            .zip(&mut shadows)
        {
            assert!(
                shadow.encode().expect("encode shadow") == *then,
                "partition {}'s shadow moved with the live state before cut {cut} (every {every})",
                live.number
            );
            let delta = live.take_delta().expect("tracking");
            let encoded = creditflow::codec::encode(&delta).expect("encode delta");
            let decoded = creditflow::codec::decode(&encoded).expect("decode delta");
            copy.apply_deltas([decoded]).expect("the delta fits");
            // Appended after what the buffer holds (the writer reuses one).
            let mut followed = vec![7u8; cut % 3];
            shadow
                .follow(delta, (every % 2 == 1).then_some(&mut followed))
                .expect("the shadow follows");
            if every % 2 == 1 {
                assert!(
                    followed[cut % 3..] == encoded[..]
                        && followed[..cut % 3].iter().all(|&b| b == 7),
                    "the shadow's encoding of the delta"
                );
            }
            let now = bytes(live);
            assert!(
                bytes(copy) == now,
                "partition {} differs after cut {cut} (every {every})",
                live.number
            );
            assert!(
                shadow.encode().expect("encode shadow") == now,
                "partition {}'s shadow differs after cut {cut} (every {every})",
                live.number
            );
            if cut == 3 {
                // A copy of a state that is not empty, as a restart's writer makes.
                *shadow = live.shadow();
            }
            *then = now;
            deltas += 1;
        }
    }
    // Applied again, or to a fresh partition, a delta is refused.
    let live = &mut engine.partitions_mut()[0];
    let delta = live.take_delta().expect("tracking");
    let mut copy = rebuilt[0].clone();
    copy.apply_deltas([delta.clone()])
        .expect("an empty delta fits");
    let mut fresh = Partition::new(0, partitions);
    if delta.previous != 0 {
        assert!(fresh.apply_deltas([delta.clone()]).is_err());
    }
    let mut other = Partition::new(partitions - 1, partitions);
    if partitions > 1 {
        assert!(other.apply_deltas([delta]).is_err());
    }
    deltas
}

#[test]
fn base_plus_deltas_is_the_live_state_byte_for_byte() {
    let log = log(5);
    for every in [1, 7, 64, 500] {
        assert!(check(catalog(&[]), 3, &log, every) > 0);
    }
}

/// A small dedupe index and archive: ids forgotten early and at the window, records moving to
/// the archive and out of it, reversals marking records in place in both.
#[test]
fn deltas_follow_forgetting_eviction_and_the_archive() {
    let small = catalog(&[
        ("dedupe_window", "\"2h\""),
        ("dedupe_entries_max", "40"),
        ("reversal_window", "\"3d\""),
        ("reversal_entries_max", "25"),
    ]);
    let log = log(9);
    for every in [1, 13, 200] {
        check(small.clone(), 2, &log, every);
    }
    check(small, 1, &log, 3);
}

/// An id used again after its window while its old entry is still in memory (held there by
/// a live entry inserted before it): the old slot is marked replaced in place.
#[test]
fn an_id_used_again_after_its_window_replaces_its_old_slot() {
    let lines = [
        r#"{"type":"grant","id":"g","account":"acme","ts":"2026-01-01T00:00:00Z","amount":"100"}"#,
        r#"{"id":"late","account":"acme","meter":"api_call","quantity":"1","ts":"2026-01-01T10:00:00Z"}"#,
        r#"{"id":"u1","account":"acme","meter":"api_call","quantity":"1","ts":"2026-01-01T00:10:00Z"}"#,
        r#"{"type":"tick","id":"t1","ts":"2026-01-01T03:00:00Z"}"#,
        r#"{"id":"u1","account":"acme","meter":"api_call","quantity":"2","ts":"2026-01-01T10:05:00Z"}"#,
        r#"{"id":"u2","account":"acme","meter":"api_call","quantity":"1","ts":"2026-01-01T10:06:00Z"}"#,
    ];
    let log: Vec<LogEntry> = lines
        .iter()
        .enumerate()
        .map(|(index, line)| LogEntry {
            seq: index as u64 + 1,
            subject: "creditflow.in".into(),
            payload: line.as_bytes().to_vec(),
            received: None,
        })
        .collect();
    let catalog = catalog(&[("dedupe_window", "\"2h\"")]);
    let (engine, _) = {
        let mut engine = Engine::new(catalog.clone(), 1);
        let mut outputs = Vec::new();
        for entry in &log {
            engine.apply(&entry.envelope(), &mut outputs);
        }
        (engine, outputs)
    };
    assert_eq!(
        engine.partitions()[0].stats.duplicates,
        0,
        "u1 again is applied"
    );
    assert_eq!(engine.partitions()[0].stats.usage_applied, 4);
    for every in [1, 2, 4] {
        check(catalog.clone(), 1, &log, every);
    }
}

/// A chain: many deltas applied at once (the loader's path, one reindex at the end) give the
/// same state as applying them one by one.
#[test]
fn a_chain_applied_at_once_is_the_same() {
    let catalog = catalog(&[("dedupe_entries_max", "100")]);
    let log = log(3);
    let mut engine = Engine::new(catalog, 1);
    engine.partitions_mut()[0].track_changes();
    let mut base: Partition = creditflow::codec::decode(&bytes(&engine.partitions()[0])).unwrap();
    let mut chain = Vec::new();
    let mut outputs = Vec::new();
    for chunk in log.chunks(97) {
        let envelopes: Vec<_> = chunk.iter().map(LogEntry::envelope).collect();
        engine.apply_batch(&envelopes, &mut outputs);
        chain.push(engine.partitions_mut()[0].take_delta().unwrap());
    }
    base.apply_deltas(chain).expect("the chain fits");
    assert!(bytes(&base) == bytes(&engine.partitions()[0]));
}
