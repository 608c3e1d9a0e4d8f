//! Benchmarks of reading the service's query requests on its thread (before any shard is
//! asked), on the example catalog: `balance` and `authorize` read directly into what they
//! need, against the general read (a JSON tree of the fields, then, for `authorize`, the usage
//! message written out and checked by the input decoder) that refuses with each field's error.
//!
//! Run: `cargo bench --bench requests`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use creditflow::service::request::{account_query, authorize_query, usage_request, Fields};
use creditflow::time::Instant;

fn bench(c: &mut Criterion) {
    let text = std::fs::read_to_string("config/catalog.toml").expect("config/catalog.toml");
    let catalog = creditflow::catalog::load::from_str(&text).expect("catalog");
    let now: Instant = "2026-09-01T12:00:00.000Z".parse().expect("now");
    let balance = br#"{"account":"lg_4711"}"#;
    let authorize =
        br#"{"account":"lg_4711","meter":"llm_token","quantity":"37","dims":{"model":"small","region":"us"}}"#;
    let mut group = c.benchmark_group("requests");
    group.bench_function("balance/direct", |b| {
        b.iter(|| account_query(black_box(balance)).expect("read"))
    });
    group.bench_function("balance/fields", |b| {
        b.iter(|| {
            let fields = Fields::parse(black_box(balance), &["account", "min_seq"]).expect("read");
            (
                fields.account().expect("account"),
                fields.min_seq().expect("min_seq"),
            )
        })
    });
    group.bench_function("authorize/direct", |b| {
        b.iter(|| authorize_query(black_box(authorize), now, &catalog).expect("read"))
    });
    group.bench_function("authorize/fields", |b| {
        b.iter(|| {
            let fields = Fields::parse(
                black_box(authorize),
                &["account", "meter", "quantity", "dims", "ts", "min_seq"],
            )
            .expect("read");
            let account = fields.account().expect("account");
            let min_seq = fields.min_seq().expect("min_seq");
            let (_, usage) =
                usage_request(&fields, &account, &["min_seq"], now, &catalog).expect("usage");
            (account, min_seq, usage)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
