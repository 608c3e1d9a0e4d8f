//! Benchmarks of the service's requests, on the example catalog: reading `balance` and
//! `authorize` requests on the service's thread (before any shard is asked), directly into
//! what they need and through the general read (a JSON tree of the fields, then, for
//! `authorize`, the usage message written out and checked by the input decoder) that refuses
//! with each field's error; and writing a balance reply, as a shard does for each answer, for
//! an account with a grant, usage of every meter and an alert crossed.
//!
//! Run: `cargo bench --bench requests`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use creditflow::engine::{Engine, Envelope};
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
    // An account with a grant, usage of several meters, and some of its credits spent.
    let mut engine = Engine::new(std::sync::Arc::new(catalog.clone()), 1);
    let mut out = Vec::new();
    let mut messages = vec![(
        "creditflow.in.0.cmd",
        r#"{"id":"g1","type":"grant","account":"lg_4711","ts":"2026-09-01T10:00:00Z","amount":"200","credit_type":"credits"}"#.to_string(),
    )];
    let usage = [
        ("api_call", "3", ""),
        (
            "llm_token",
            "1200",
            r#","dims":{"model":"small","region":"us"}"#,
        ),
        ("gpu_second", "30", ""),
        ("storage_gb_hour", "12.5", ""),
    ];
    for n in 0..40 {
        let (meter, quantity, dims) = usage[n % usage.len()];
        messages.push((
            "creditflow.in.0.usage",
            format!(
                r#"{{"id":"u{n}","account":"lg_4711","meter":"{meter}","quantity":"{quantity}","ts":"2026-09-01T11:{:02}:00Z"{dims}}}"#,
                n % 60
            ),
        ));
    }
    for (seq, (subject, payload)) in messages.iter().enumerate() {
        let envelope = Envelope {
            payload: payload.as_bytes(),
            seq: seq as u64 + 1,
            subject,
            received: None,
        };
        engine.apply(&envelope, &mut out);
    }
    let partition = &engine.partitions()[0];
    let account = partition.account("lg_4711").expect("the account");
    let reply = creditflow::service::reply::balance(&catalog, partition, account, 41);
    assert!(
        reply.len() > 1000,
        "a balance reply of {} bytes: {reply}",
        reply.len()
    );
    group.bench_function("balance/reply", |b| {
        b.iter(|| creditflow::service::reply::balance(&catalog, partition, account, black_box(41)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
