//! Benchmark of a snapshot's parts on one partition the size of a million accounts' sixteenth
//! (62,500 accounts, each with an opening grant and usage), `BENCH_CHANGED` of them (7,500:
//! 12%) written since the last snapshot:
//! - `take_delta`: what the shard does for a delta (copies the changed accounts, the rings'
//!   changes, the timer heap);
//! - `encode_delta`: encoding that delta (the writer's work);
//! - `encode_full`: encoding the whole partition (what a full snapshot costs the encoder);
//! - `fold`: decoding the full file's payload, applying the delta, encoding the result (the
//!   writer's fold of a one-delta chain, without the disk).
//!
//! Run: `cargo bench --bench snapshots` (`BENCH_ACCOUNTS`, `BENCH_CHANGED` for other sizes).

use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use criterion::{criterion_group, criterion_main, Criterion};

use creditflow::catalog::Catalog;
use creditflow::engine::{Engine, Envelope, Partition};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Feed {
    engine: Engine,
    seq: u64,
    round: u64,
    out: Vec<creditflow::wire::output::Output>,
}

impl Feed {
    fn apply(&mut self, line: &str) {
        self.seq += 1;
        self.out.clear();
        self.engine.apply(
            &Envelope {
                payload: line.as_bytes(),
                seq: self.seq,
                subject: "creditflow.in",
                received: None,
            },
            &mut self.out,
        );
    }

    /// Usage on `changed` accounts spread over the partition (a different set each round).
    fn change(&mut self, accounts: usize, changed: usize) {
        self.round += 1;
        let step = accounts / changed.max(1);
        for k in 0..changed {
            let account = (k * step + self.round as usize) % accounts;
            let line = format!(
                r#"{{"id":"u{}-{k}","account":"a_{account}","meter":"api_call","quantity":"3","ts":"2026-09-01T00:00:{:02}Z"}}"#,
                self.round,
                self.round % 60
            );
            self.apply(&line);
        }
    }

    fn partition(&mut self) -> &mut Partition {
        &mut self.engine.partitions_mut()[0]
    }
}

fn build(accounts: usize) -> Feed {
    let text = std::fs::read_to_string("config/catalog.toml").expect("config/catalog.toml");
    let catalog: Arc<Catalog> =
        Arc::new(creditflow::catalog::load::from_str(&text).expect("catalog"));
    let mut feed = Feed {
        engine: Engine::new(catalog, 1),
        seq: 0,
        round: 0,
        out: Vec::new(),
    };
    for i in 0..accounts {
        feed.apply(&format!(
            r#"{{"type":"grant","id":"g{i}","account":"a_{i}","ts":"2026-09-01T00:00:00Z","amount":"100","expires_at":"2027-06-01T00:00:00Z"}}"#
        ));
        feed.apply(&format!(
            r#"{{"id":"first{i}","account":"a_{i}","meter":"api_call","quantity":"1","ts":"2026-09-01T00:00:00Z"}}"#
        ));
    }
    feed
}

fn bench(c: &mut Criterion) {
    let accounts = env("BENCH_ACCOUNTS", 62_500);
    let changed = env("BENCH_CHANGED", 7_500);
    let mut feed = build(accounts);
    feed.partition().track_changes();
    let mut group = c.benchmark_group(format!("snapshot_{accounts}_accounts_{changed}_changed"));
    group.sample_size(10);
    group.bench_function("take_delta", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                feed.change(accounts, changed);
                let started = WallInstant::now();
                let delta = feed.partition().take_delta().expect("tracking");
                spent += started.elapsed();
                assert_eq!(delta.accounts(), changed);
            }
            spent
        })
    });
    feed.change(accounts, changed);
    let delta = feed.partition().take_delta().expect("tracking");
    group.bench_function("encode_delta", |b| {
        b.iter(|| creditflow::codec::encode(&delta).expect("encode").len())
    });
    let full = creditflow::codec::encode(&*feed.partition()).expect("encode");
    eprintln!(
        "full payload {} bytes ({} per account); a delta of {changed} accounts {} bytes",
        full.len(),
        full.len() / accounts,
        creditflow::codec::encode(&delta).expect("encode").len()
    );
    group.bench_function("encode_full", |b| {
        b.iter(|| {
            creditflow::codec::encode(&*feed.partition())
                .expect("encode")
                .len()
        })
    });
    // The fold of a one-delta chain: the full state before the delta, the delta, the result.
    feed.change(accounts, changed);
    let base = creditflow::codec::encode(&*feed.partition()).expect("encode");
    feed.partition().track_changes();
    feed.change(accounts, changed);
    let delta = feed.partition().take_delta().expect("tracking");
    let delta_bytes = creditflow::codec::encode(&delta).expect("encode");
    group.bench_function("fold", |b| {
        b.iter(|| {
            let mut state: Partition = creditflow::codec::decode(&base).expect("decode");
            let delta = creditflow::codec::decode(&delta_bytes).expect("decode");
            state.apply_deltas([delta]).expect("applies");
            creditflow::codec::encode(&state).expect("encode").len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
