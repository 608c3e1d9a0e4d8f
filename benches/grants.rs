//! Benchmark of one account with many grants: `n` grant commands applied to one account (each
//! with its own priority, so each lands at its own place in the burn order), then one usage event
//! that draws from every grant. Criterion reports the time per grant (throughput `n`): flat
//! across `n` when adding and drawing are O(log n) per grant, rising with `n` when they are
//! O(n) (the whole run then quadratic).
//!
//! Run: `cargo bench --bench grants` (`BENCH_GRANTS=1000,4000,16000` for other sizes).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use creditflow::catalog::Catalog;
use creditflow::engine::{Engine, Envelope};

const T0: &str = "2026-09-01T00:00:00Z";

fn catalog(grants_max: usize) -> Arc<Catalog> {
    let text = std::fs::read_to_string("config/catalog.toml").expect("config/catalog.toml");
    let mut catalog = creditflow::catalog::load::from_str(&text).expect("catalog");
    catalog.rules.grants_per_account_max = grants_max;
    Arc::new(catalog)
}

/// The grant commands and the usage event, as JSON payloads.
fn inputs(n: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..n)
        .map(|i| {
            // Priorities in a scrambled order: inserts land all over the burn order.
            let priority = (i * 7919) % 1000;
            format!(
                r#"{{"type":"grant","id":"g{i}","account":"acct_1","ts":"{T0}","amount":"1","cost_basis":"0.01","expires_at":"2027-06-01T00:00:00Z","priority":{priority}}}"#
            )
        })
        .collect();
    // 0.0015 credits a call: 666 calls a grant draw from (nearly) every grant.
    let calls = n * 666;
    lines.push(format!(
        r#"{{"id":"u1","account":"acct_1","meter":"api_call","quantity":"{calls}","ts":"{T0}"}}"#
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
    let mut group = c.benchmark_group("one_account_grants");
    group.sample_size(10);
    for n in sizes() {
        let catalog = catalog(n);
        let lines = inputs(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &lines, |b, lines| {
            b.iter(|| run(&catalog, lines))
        });
    }
    group.finish();
}

criterion_group!(benches, grants);
criterion_main!(benches);
