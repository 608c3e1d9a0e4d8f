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
//! Event time advances 1 ms every `BENCH_EVENTS_PER_MS` events (default 1000: event time moves
//! as in a stream of a million events a second, so the measured window spans seconds of event
//! time and no hourly invoice flush falls in it; flushing costs about 1 µs per changed line, once
//! per account and hour). `BENCH_EVENTS_PER_MS=1` instead makes every account flush about once
//! per four events, the flush-heavy extreme.
//!
//! - `floor/*`: the same batches applied to a balance-only ledger of the same shape (one 64-byte
//!   record per account, the same dedupe bound, the engine's hashes and fetching ahead;
//!   benches/support/floor.rs): the least any engine of this shape costs on this machine, the
//!   baseline the engine's figure is a ratio against.
//!
//! Run: `cargo bench --bench engine` (set `BENCH_ACCOUNTS` to change the 1,000,000).
//!
//! The engine's compute alone, with nothing missing the cache, for same-run A/Bs that the noise
//! of a million accounts would hide: `BENCH_ACCOUNTS=1000 BENCH_DEDUPE_MAX=4096 cargo bench
//! --bench engine -- apply_batch/uniform` (the dedupe index bounded to 4096 ids instead of the
//! catalog's 2,000,000, so it stays in cache too).

use std::alloc::{GlobalAlloc, Layout};
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

#[path = "support/floor.rs"]
mod floor;

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
/// account is one grant and its lines; dedupe at its default bound
/// (or `BENCH_DEDUPE_MAX`).
fn catalog() -> Arc<Catalog> {
    let text = std::fs::read_to_string("config/catalog.toml").expect("config/catalog.toml");
    let mut catalog = creditflow::catalog::load::from_str(&text).expect("catalog");
    if let Some(bound) = std::env::var("BENCH_DEDUPE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v: &usize| v > 0)
    {
        catalog.rules.dedupe_entries_max = bound;
    }
    Arc::new(catalog)
}

fn accounts() -> usize {
    std::env::var("BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn events_per_ms() -> u64 {
    static EVENTS_PER_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EVENTS_PER_MS.get_or_init(|| {
        std::env::var("BENCH_EVENTS_PER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(1000)
    })
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

/// The account ids of a sequence of choices, laid out one after another in the order they are
/// applied, as the account ids of a stream's events are in the payloads just received and
/// decoded. (Read from the table of a million ids instead, each event's id would be a cache
/// miss of the bench, not of the engine: in the pipeline the id is in the decoded payload.)
struct Picks {
    text: String,
    ends: Vec<u32>,
}

impl Picks {
    fn new(ids: &[String], choices: Vec<u32>) -> Picks {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(choices.len());
        for account in choices {
            text.push_str(&ids[account as usize]);
            ends.push(text.len() as u32);
        }
        Picks { text, ends }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |j| self.ends[j] as usize);
        &self.text[start..self.ends[i] as usize]
    }
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
    let (mut engine, ids) = populated(catalog, n);
    // One usage event per account and meter, so each account holds invoice lines for three
    // meters (what the issue measures). Their remembered ids are counted with the dedupe index,
    // which is bounded by its window, not by the number of accounts.
    let meters = meters(catalog);
    let mut seq = n as u64;
    apply_usages(
        &mut engine,
        &ids,
        &meters,
        &mut seq,
        (0..n).flat_map(|account| [account; 3]),
    );
    let after = LIVE.load(Ordering::Relaxed);
    let dedupe_bytes: usize = engine
        .partitions()
        .iter()
        .map(|p| p.dedupe_heap_bytes())
        .sum();
    let ids_bytes: usize = ids.iter().map(|s| s.capacity()).sum::<usize>() + ids.capacity() * 24;
    let engine_bytes = after - before - ids_bytes;
    // The dedupe index's share (one remembered id per grant), from its own capacities.
    println!(
        "memory: {n} accounts (one grant, invoice lines of three meters): {} bytes of engine heap per account, \
         of which {} are the dedupe index (the grant's and the usage events' remembered ids, bounded by \
         its window); {} bytes per account without it",
        engine_bytes / n,
        dedupe_bytes / n,
        (engine_bytes - dedupe_bytes) / n
    );
    // Where it goes, from the containers' capacities.
    let mut heap = creditflow::engine::HeapBreakdown::default();
    for partition in engine.partitions() {
        let part = partition.heap_breakdown();
        heap.records += part.records;
        heap.types += part.types;
        heap.alerts += part.alerts;
        heap.grants += part.grants;
        heap.lines += part.lines;
        heap.index += part.index;
        heap.timers += part.timers;
        heap.dedupe += part.dedupe;
        heap.other += part.other;
    }
    println!(
        "memory per account by part: records {}, type states {} (+ alerts {}), grants {}, lines {}, \
         account index {}, timers {}, dedupe {}, other {}; sum {}",
        heap.records / n,
        heap.types / n,
        heap.alerts / n,
        heap.grants / n,
        heap.lines / n,
        heap.index / n,
        heap.timers / n,
        heap.dedupe / n,
        heap.other / n,
        heap.total() / n
    );
    drop(engine);
}

/// A decoded usage event of `account` with id `id` (its meter chosen by `seq`).
fn usage_message<'a>(
    account: &'a str,
    meters: &'a [(creditflow::catalog::MeterId, Vec<(String, String)>); 3],
    seq: u64,
    id: &'a str,
) -> Message<'a> {
    let (meter, dims) = &meters[seq as usize % 3];
    Message::Usage(Usage {
        id: Cow::Borrowed(id),
        account: Cow::Borrowed(account),
        meter: *meter,
        quantity: Fixed(3_000_000_000),
        ts: Instant(T0.0 + (seq / events_per_ms()) as i64),
        dims: Cow::Borrowed(dims.as_slice()),
    })
}

/// Applies one already decoded usage event of `account` (its meter chosen by `seq`).
fn apply_usage(
    engine: &mut Engine,
    account: &str,
    meters: &[(creditflow::catalog::MeterId, Vec<(String, String)>); 3],
    seq: u64,
    id_buffer: &mut String,
    out: &mut Vec<creditflow::wire::output::Output>,
) {
    id_buffer.clear();
    use std::fmt::Write;
    let _ = write!(id_buffer, "e{seq}");
    let message = usage_message(account, meters, seq, id_buffer);
    let envelope = Envelope {
        payload: b"",
        seq,
        subject: "creditflow.in",
        received: None,
    };
    engine.apply_message(&message, &envelope, out);
    out.clear();
}

/// Applies one usage event for each account `accounts` yields, numbering them from `seq` + 1.
fn apply_usages(
    engine: &mut Engine,
    ids: &[String],
    meters: &[(creditflow::catalog::MeterId, Vec<(String, String)>); 3],
    seq: &mut u64,
    accounts: impl Iterator<Item = usize>,
) {
    let mut out = Vec::new();
    let mut id_buffer = String::new();
    for account in accounts {
        *seq += 1;
        apply_usage(
            engine,
            &ids[account],
            meters,
            *seq,
            &mut id_buffer,
            &mut out,
        );
    }
}

/// Events per batch in the batched groups.
const BATCH: usize = 256;

/// Runs `iters` events in batches of [`BATCH`]: numbers them from `seq` + 1, takes their
/// accounts in turn from `picks` and formats their ids, then has `apply(first, accounts, ids)`
/// apply a batch and return the time its apply alone took; returns the sum.
fn batched(
    iters: u64,
    picks: &Picks,
    cursor: &mut usize,
    seq: &mut u64,
    mut apply: impl FnMut(u64, &[&str], &[String]) -> Duration,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let size = BATCH.min((iters - done) as usize);
        let first = *seq + 1;
        let event_ids: Vec<String> = (0..size as u64)
            .map(|k| format!("e{}", first + k))
            .collect();
        let accounts: Vec<&str> = (0..size)
            .map(|_| {
                *cursor = (*cursor + 1) % picks.len();
                picks.get(*cursor)
            })
            .collect();
        *seq += size as u64;
        elapsed += apply(first, &accounts, &event_ids);
        done += size as u64;
    }
    elapsed
}

/// A group of `name` with two benchmarks, accounts chosen uniformly and with Zipf skew, each
/// applying batches through `apply` ([`batched`]).
fn batched_groups(
    c: &mut Criterion,
    name: &str,
    ids: &[String],
    seq: &mut u64,
    mut apply: impl FnMut(u64, &[&str], &[String]) -> Duration,
) {
    let n = ids.len();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(20);
    for (choice, zipf) in [("uniform", false), ("zipf", true)] {
        let picks = Picks::new(ids, choices(n, zipf, 1 << 22));
        let mut cursor = 0usize;
        group.bench_function(BenchmarkId::new(choice, format!("{n}_accounts")), |b| {
            b.iter_custom(|iters| batched(iters, &picks, &mut cursor, seq, &mut apply))
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let catalog = catalog();
    memory_report(&catalog);
    let n = accounts();
    let (mut engine, ids) = populated(&catalog, n);
    let meters = meters(&catalog);
    let mut seq = n as u64;
    let mut out = Vec::with_capacity(1024);
    let mut id_buffer = String::with_capacity(24);

    // Steady state: the dedupe index at its bound (`dedupe_entries_max`), as in a deployment
    // that has run for a window. Growing it (fresh pages, ring doubling) is a one-time cost
    // that would otherwise dominate the first measurements.
    let warm_up = catalog.rules.dedupe_entries_max;
    let started = WallInstant::now();
    apply_usages(
        &mut engine,
        &ids,
        &meters,
        &mut seq,
        (0..warm_up).map(|i| i % n),
    );
    println!(
        "warm-up: {warm_up} usage events in {:.1} s (dedupe index filled to its bound)",
        started.elapsed().as_secs_f64()
    );

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(20);
    for (name, zipf) in [("uniform", false), ("zipf", true)] {
        let picks = Picks::new(&ids, choices(n, zipf, 1 << 22));
        let mut cursor = 0usize;
        group.bench_function(BenchmarkId::new(name, format!("{n}_accounts")), |b| {
            b.iter_custom(|iters| {
                let started = WallInstant::now();
                for _ in 0..iters {
                    seq += 1;
                    cursor = (cursor + 1) % picks.len();
                    apply_usage(
                        &mut engine,
                        picks.get(cursor),
                        &meters,
                        seq,
                        &mut id_buffer,
                        &mut out,
                    );
                }
                started.elapsed()
            })
        });
    }
    group.finish();

    // The same, in batches of 256 applied with fetching ahead (`Engine::apply_messages`): the
    // misses of one event overlap the work of the one before.
    batched_groups(
        c,
        "apply_batch",
        &ids,
        &mut seq,
        |first, accounts, event_ids| {
            let messages: Vec<Message> = (0..accounts.len())
                .map(|k| usage_message(accounts[k], &meters, first + k as u64, &event_ids[k]))
                .collect();
            let envelopes: Vec<Envelope> = (0..accounts.len() as u64)
                .map(|k| Envelope {
                    payload: b"",
                    seq: first + k,
                    subject: "creditflow.in",
                    received: None,
                })
                .collect();
            let started = WallInstant::now();
            engine.apply_messages(&messages, &envelopes, &mut out);
            let elapsed = started.elapsed();
            out.clear();
            elapsed
        },
    );

    // The floor: the same batches (same accounts, ids, meters and quantities) applied to a
    // balance-only ledger (benches/support/floor.rs), its dedupe set at the engine's bound.
    {
        let bound = catalog.rules.dedupe_entries_max;
        floor::self_check();
        const BALANCE: i64 = 1_000_000_000_000;
        let mut ledger = floor::Floor::new(&ids, BALANCE, bound, [1, 2, 3]);
        let warm_ids: Vec<String> = (0..bound).map(|k| format!("w{k}")).collect();
        for chunk in warm_ids.chunks(BATCH).enumerate() {
            let (c, chunk) = chunk;
            let inputs: Vec<floor::Input> = chunk
                .iter()
                .enumerate()
                .map(|(k, id)| floor::Input {
                    account: &ids[(c * BATCH + k) % n],
                    id,
                    meter: (k % 3) as u8,
                    quantity: 3,
                })
                .collect();
            ledger.apply_batch(&inputs);
        }
        drop(warm_ids);
        batched_groups(c, "floor", &ids, &mut seq, |first, accounts, event_ids| {
            let inputs: Vec<floor::Input> = (0..accounts.len())
                .map(|k| floor::Input {
                    account: accounts[k],
                    id: &event_ids[k],
                    meter: ((first + k as u64) % 3) as u8,
                    quantity: 3,
                })
                .collect();
            let started = WallInstant::now();
            ledger.apply_batch(&inputs);
            started.elapsed()
        });
        // Nothing lost, nothing rejected, nothing counted twice: the check keeps the floor's
        // work from being optimized away and its figure honest.
        let (balances, drawn) = ledger.totals();
        assert_eq!(
            balances + drawn,
            BALANCE * n as i64,
            "the floor lost credits"
        );
        assert_eq!(
            ledger.rejected + ledger.duplicates,
            0,
            "the floor rejected events"
        );
        println!("floor: {} events applied", ledger.applied);
    }

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
            let envelopes: Vec<Envelope> = batch
                .iter()
                .map(|payload| {
                    seq += 1;
                    Envelope {
                        payload: payload.as_bytes(),
                        seq,
                        subject: "creditflow.in",
                        received: None,
                    }
                })
                .collect();
            // As replay and the shards do: decode a batch, then apply it fetching ahead.
            let started = WallInstant::now();
            for chunk in envelopes.chunks(BATCH) {
                engine.apply_batch(chunk, &mut out);
                out.clear();
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
