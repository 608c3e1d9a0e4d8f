//! The workload is a pure function of its spec: same seed, same messages; and the messages
//! mean what the generator says they mean when the engine replays them.

use std::sync::Arc;

use creditflow::engine::{Engine, Envelope};
use creditflow::time::Instant;
use loadgen::schedule::RateShape;
use loadgen::workload::{catalog_mix, Kind, Limit, Planned, Workload, WorkloadSpec};

fn catalog() -> Arc<creditflow::catalog::Catalog> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/catalog.toml");
    Arc::new(creditflow::catalog::load::from_path(path.as_ref()).expect("the example catalog"))
}

fn spec(seed: u64) -> WorkloadSpec {
    let catalog = catalog();
    WorkloadSpec {
        seed,
        run_id: "t1".into(),
        base_ts: "2026-11-24T10:00:00Z".parse::<Instant>().unwrap(),
        partitions: 16,
        subject_prefix: "creditflow.in".into(),
        accounts: 500,
        account_prefix: "lg".into(),
        zipf: 1.1,
        meters: catalog_mix(&catalog),
        quantity_max: 100,
        grant_amount: "20".into(),
        topup_fraction: 0.02,
        dup_fraction: 0.02,
        dup_late_fraction: 0.01,
        malformed_fraction: 0.01,
        late_fraction: 0.05,
        late_max_ms: 3_600_000,
        rate: RateShape::parse("steps:5000x1s,20000x1s").unwrap(),
        limit: Limit::Events(20_000),
        probe_interval: Some(1_000_000),
    }
}

fn generate(spec: WorkloadSpec) -> Vec<Planned> {
    Workload::new(spec).collect()
}

#[test]
fn the_same_seed_gives_the_same_messages_byte_for_byte() {
    let a = generate(spec(7));
    let b = generate(spec(7));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "two generations of seed 7 differ");
    let c = generate(spec(8));
    assert_ne!(
        a.iter().map(|p| &p.payload).collect::<Vec<_>>(),
        c.iter().map(|p| &p.payload).collect::<Vec<_>>(),
        "seed 8 gave the messages of seed 7"
    );
}

#[test]
fn messages_are_in_schedule_order_on_their_accounts_partition() {
    let messages = generate(spec(3));
    assert!(messages.windows(2).all(|w| w[0].at <= w[1].at));
    let workload: Vec<&Planned> = messages
        .iter()
        .filter(|p| !matches!(p.kind, Kind::Probe(_)))
        .collect();
    assert_eq!(workload.len(), 20_000);
    // 5000/s for a second, then 20000/s: the 20000th message is due at 1.75 s.
    assert_eq!(workload[4_999].at, 999_800_000);
    assert_eq!(workload[19_999].at, 1_749_950_000);
    for p in &messages {
        let text = std::str::from_utf8(&p.payload).unwrap();
        if let Some(at) = text.find("\"account\":\"") {
            let rest = &text[at + 11..];
            let account = &rest[..rest.find('"').unwrap()];
            assert_eq!(
                creditflow::engine::partition_of(account, 16),
                p.partition,
                "{text}"
            );
        }
    }
}

#[test]
fn the_engine_sees_the_duplicates_dead_letters_and_probes_the_generator_made() {
    let catalog = catalog();
    let mut workload = Workload::new(spec(11));
    let messages: Vec<Planned> = workload.by_ref().collect();
    let counts = workload.counts.clone();
    assert!(
        counts.duplicates > 200 && counts.late_duplicates > 100,
        "{counts:?}"
    );
    assert!(counts.malformed > 100 && counts.late_usage > 300 && counts.topups > 200);
    // One per ms up to the last workload message (1.74995 s): probes 0..=1749.
    assert_eq!(counts.probes, 1750);

    let mut engine = Engine::new(catalog, 16);
    let mut outputs = Vec::new();
    let mut probe_results = 0;
    let mut rejected = 0;
    for (index, p) in messages.iter().enumerate() {
        let subject =
            creditflow::wire::subject::subject("creditflow.in", p.partition, p.kind.subject_kind());
        let envelope = Envelope {
            payload: &p.payload,
            seq: index as u64 + 1,
            subject: &subject,
            received: None,
        };
        outputs.clear();
        engine.apply(&envelope, &mut outputs);
        for output in &outputs {
            let json = output.to_json();
            if output.id.starts_with("result:probe_") {
                assert!(json.contains("\"unknown_hold\""), "{json}");
                probe_results += 1;
            }
            if json.starts_with("{\"type\":\"usage.rejected\"") {
                rejected += 1;
            }
        }
    }
    let stats = engine.stats();
    // Without a broker in between, both kinds of duplicate reach the engine, which drops them.
    assert_eq!(stats.duplicates, counts.duplicates + counts.late_duplicates);
    assert_eq!(stats.dead_letters, counts.malformed);
    assert_eq!(probe_results, counts.probes);
    // Hot accounts on 20 credits run out (and top-ups bring them back).
    assert!(rejected > 100, "only {rejected} rejections");
    engine.check_invariants().unwrap();
}
