//! Benchmark of one account with many grants: `n` grant commands applied to one account (in
//! `one_account_grants` with scrambled priorities, so each lands at its own place in the burn
//! order; in `one_account_grants_in_order` all of one priority), then one usage event
//! that draws from every grant. Criterion reports the time per grant (throughput `n`): flat
//! across `n` when adding and drawing are O(log n) per grant, rising with `n` when they are
//! O(n) (the whole run then quadratic).
//!
//! Run: `cargo bench --bench grants` (`BENCH_GRANTS=1000,4000,16000` for other sizes).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use creditflow::catalog::Catalog;
use creditflow::engine::{Engine, Envelope};
use creditflow::time::Instant;

const T0: &str = "2026-09-01T00:00:00Z";

fn catalog(grants_max: usize) -> Arc<Catalog> {
    let text = std::fs::read_to_string("config/catalog.toml").expect("config/catalog.toml");
    let mut catalog = creditflow::catalog::load::from_str(&text).expect("catalog");
    catalog.rules.grants_per_account_max = grants_max;
    Arc::new(catalog)
}

/// The grant commands and the usage event, as JSON payloads. `scrambled`: priorities in a
/// scrambled order and one instant, so inserts land all over the burn order; else one priority
/// and a millisecond apart, so each grant goes after the others (grants of one priority and
/// expiry arrive in burn order: it ends with the grant instant).
fn inputs(n: usize, scrambled: bool) -> Vec<String> {
    let t0: Instant = T0.parse().expect("T0");
    let ts = |i: usize| match scrambled {
        true => t0,
        false => Instant(t0.0 + i as i64),
    };
    let mut lines: Vec<String> = (0..n)
        .map(|i| {
            let priority = if scrambled { (i * 7919) % 1000 } else { 100 };
            format!(
                r#"{{"type":"grant","id":"g{i}","account":"acct_1","ts":"{}","amount":"1","cost_basis":"0.01","expires_at":"2027-06-01T00:00:00Z","priority":{priority}}}"#,
                ts(i)
            )
        })
        .collect();
    // 0.0015 credits a call: 666 calls a grant draw from (nearly) every grant.
    let calls = n * 666;
    lines.push(format!(
        r#"{{"id":"u1","account":"acct_1","meter":"api_call","quantity":"{calls}","ts":"{}"}}"#,
        ts(n)
    ));
    lines
}

fn run(catalog: &Arc<Catalog>, lines: &[String]) -> usize {
    let mut engine = Engine::new(catalog.clone(), 1);
    let mut out = Vec::new();
    for (seq, line) in lines.iter().enumerate() {
        engine.apply(
            &Envelope {
                payload: line.as_bytes(),
                seq: seq as u64 + 1,
                subject: "creditflow.in",
                received: None,
            },
            &mut out,
        );
    }
    out.len()
}

fn sizes() -> Vec<usize> {
    std::env::var("BENCH_GRANTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 4_000, 16_000])
}

fn grants(c: &mut Criterion) {
    for (name, scrambled) in [
        ("one_account_grants", true),
        ("one_account_grants_in_order", false),
    ] {
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        for n in sizes() {
            let catalog = catalog(n);
            let lines = inputs(n, scrambled);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &lines, |b, lines| {
                b.iter(|| run(&catalog, lines))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, grants);
criterion_main!(benches);
