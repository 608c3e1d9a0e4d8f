//! Benchmarks of the engine alone (no NATS, one thread): 1M accounts with one grant each, usage
//! of three meters, accounts chosen uniformly or with Zipf skew.
//!
//! Stages measured separately, so ARCHITECTURE.md can give ns per event per stage:
//! - `decode`: JSON bytes → a validated `Message` (wire::input::decode);
//! - `apply/*`: an already decoded usage event applied to the engine (pricing, dedupe, burn,
//!   invoice line, alerts, timers);
//! - `decode_apply/*`: both, from JSON bytes;
//! - memory: heap bytes per account, measured with a counting allocator, printed first.
//!
//! Run: `cargo bench --bench engine` (set `BENCH_ACCOUNTS` to change the 1,000,000).

use std::alloc::{GlobalAlloc, Layout};
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use creditflow::catalog::Catalog;
use creditflow::decimal::Fixed;
use creditflow::engine::{Engine, Envelope};
use creditflow::time::Instant;
use creditflow::wire::input::{Message, Usage};

/// mimalloc (the production allocator) with a count of live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The example catalog's pricing and plans, with a payg default plan (reject, one alert) so an
/// account is one grant and its lines; dedupe at its default bound.
fn catalog() -> Arc<Catalog> {
    let text = std::fs::read_to_string("config/catalog.toml").expect("config/catalog.toml");
    Arc::new(creditflow::catalog::load::from_str(&text).expect("catalog"))
}

fn accounts() -> usize {
    std::env::var("BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

const T0: Instant = Instant(1_788_220_800_000); // 2026-09-01T00:00:00Z

/// An engine with `n` accounts, each with one grant (applied through the real input path).
fn populated(catalog: &Arc<Catalog>, n: usize) -> (Engine, Vec<String>) {
    let mut engine = Engine::new(catalog.clone(), 1);
    let ids: Vec<String> = (0..n).map(|i| format!("acct_{i:07}")).collect();
    let mut out = Vec::new();
    for (seq, id) in ids.iter().enumerate() {
        let payload = format!(
            r#"{{"type":"grant","id":"g","account":"{id}","ts":"{T0}","amount":"1000000","cost_basis":"0.01"}}"#
        );
        engine.apply(
            &Envelope {
                payload: payload.as_bytes(),
                seq: seq as u64 + 1,
                subject: "creditflow.in",
                received: None,
            },
            &mut out,
        );
        out.clear();
    }
    (engine, ids)
}

/// Account choices: uniform, or Zipf with exponent 1 (inverse CDF over precomputed weights).
fn choices(n: usize, zipf: bool, count: usize) -> Vec<u32> {
    let mut rng = creditflow::sample::Rng::new(42);
    if !zipf {
        return (0..count).map(|_| rng.below(n as u64) as u32).collect();
    }
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0f64;
    for rank in 1..=n {
        total += 1.0 / rank as f64;
        cdf.push(total);
    }
    (0..count)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
            cdf.partition_point(|&c| c < u).min(n - 1) as u32
        })
        .collect()
}

/// Three meters, priced differently: a unit rate, a dimensional rate, a volume tier.
fn meters(catalog: &Catalog) -> [(creditflow::catalog::MeterId, Vec<(String, String)>); 3] {
    [
        (catalog.meter_id("api_call").unwrap(), Vec::new()),
        (
            catalog.meter_id("llm_token").unwrap(),
            vec![
                ("model".to_string(), "small".to_string()),
                ("region".to_string(), "us".to_string()),
            ],
        ),
        (catalog.meter_id("storage_gb_hour").unwrap(), Vec::new()),
    ]
}

fn memory_report(catalog: &Arc<Catalog>) {
    let n = accounts();
    let before = LIVE.load(Ordering::Relaxed);
    let (engine, ids) = populated(catalog, n);
    let after = LIVE.load(Ordering::Relaxed);
    let dedupe: usize = engine.partitions().iter().map(|p| p.dedupe_len()).sum();
    let ids_bytes: usize = ids.iter().map(|s| s.capacity()).sum::<usize>() + ids.capacity() * 24;
    let engine_bytes = after - before - ids_bytes;
    // The dedupe index's share: its map entries and order queue (one remembered id per grant).
    let dedupe_bytes = estimate_dedupe_bytes(dedupe);
    println!(
        "memory: {n} accounts (one grant, lines for three meters after use): {} bytes of engine heap per account, \
         of which about {} are the grant command's dedupe entry; {} bytes per account without it",
        engine_bytes / n,
        dedupe_bytes / n,
        (engine_bytes - dedupe_bytes) / n
    );
    drop(engine);
}

/// A dedupe entry's heap cost: key (16) + entry (ts 8 + enum 16) in a hashbrown table at about
/// 7/8 load with one control byte, plus 16 bytes in the insertion-order queue.
fn estimate_dedupe_bytes(entries: usize) -> usize {
    entries * ((16 + 24 + 1) * 8 / 7 + 16)
}

fn bench(c: &mut Criterion) {
    let catalog = catalog();
    memory_report(&catalog);
    let n = accounts();
    let (mut engine, ids) = populated(&catalog, n);
    let meters = meters(&catalog);
    let mut seq = n as u64;
    let mut out = Vec::with_capacity(1024);

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(20);
    for (name, zipf) in [("uniform", false), ("zipf", true)] {
        let picks = choices(n, zipf, 1 << 22);
        let mut cursor = 0usize;
        let mut id_buffer = String::with_capacity(24);
        group.bench_function(BenchmarkId::new(name, format!("{n}_accounts")), |b| {
            b.iter_custom(|iters| {
                let started = WallInstant::now();
                for _ in 0..iters {
                    seq += 1;
                    cursor = (cursor + 1) % picks.len();
                    let account = picks[cursor] as usize;
                    let (meter, dims) = &meters[seq as usize % 3];
                    id_buffer.clear();
                    use std::fmt::Write;
                    let _ = write!(id_buffer, "e{seq}");
                    let message = Message::Usage(Usage {
                        id: Cow::Borrowed(id_buffer.as_str()),
                        account: Cow::Borrowed(ids[account].as_str()),
                        meter: *meter,
                        quantity: Fixed(3_000_000_000),
                        // 1 ms of event time per event: hourly invoice flushes happen in the run.
                        ts: Instant(T0.0 + seq as i64),
                        dims: Cow::Borrowed(dims.as_slice()),
                    });
                    let envelope = Envelope {
                        payload: b"",
                        seq,
                        subject: "creditflow.in",
                        received: None,
                    };
                    engine.apply_message(&message, &envelope, &mut out);
                    out.clear();
                }
                started.elapsed()
            })
        });
    }
    group.finish();

    // JSON decode alone, and decode + apply from bytes.
    let payloads: Vec<String> = choices(n, false, 1 << 16)
        .into_iter()
        .enumerate()
        .map(|(i, account)| match i % 3 {
            0 => format!(r#"{{"id":"d{i}","account":"{}","meter":"api_call","quantity":"3","ts":"2026-09-01T00:00:00.000Z"}}"#, ids[account as usize]),
            1 => format!(r#"{{"id":"d{i}","account":"{}","meter":"llm_token","quantity":"1200","ts":"2026-09-01T00:00:00.000Z","dims":{{"model":"small","region":"us"}}}}"#, ids[account as usize]),
            _ => format!(r#"{{"id":"d{i}","account":"{}","meter":"storage_gb_hour","quantity":"12.5","ts":"2026-09-01T00:00:00.000Z"}}"#, ids[account as usize]),
        })
        .collect();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    let mut cursor = 0usize;
    group.bench_function("usage_json", |b| {
        b.iter(|| {
            cursor = (cursor + 1) % payloads.len();
            let message = creditflow::wire::input::decode(payloads[cursor].as_bytes(), &catalog);
            std::hint::black_box(message.is_ok())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("decode_apply");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(20);
    let mut counter = 0u64;
    group.bench_function(BenchmarkId::new("uniform", format!("{n}_accounts")), |b| {
        b.iter_custom(|iters| {
            // Fresh ids each pass, formatted outside the timed loop.
            let batch: Vec<String> = (0..iters)
                .map(|_| {
                    counter += 1;
                    let template = &payloads[counter as usize % payloads.len()];
                    template.replacen("\"id\":\"d", &format!("\"id\":\"x{counter}-"), 1)
                })
                .collect();
            let started = WallInstant::now();
            for payload in &batch {
                seq += 1;
                let envelope = Envelope {
                    payload: payload.as_bytes(),
                    seq,
                    subject: "creditflow.in",
                    received: None,
                };
                engine.apply(&envelope, &mut out);
                out.clear();
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
