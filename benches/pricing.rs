//! Benchmarks of pricing alone, on the example catalog (`config/catalog.toml`): one event's
//! price, and `max_quantity` (the most of a meter a budget pays for, which every `authorize`
//! answer computes), for each kind of price the catalog has: a unit rate, a unit rate chosen by
//! dimensions, graduated tiers and volume tiers.
//!
//! Run: `cargo bench --bench pricing`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use creditflow::catalog::pricing::{max_quantity, price, PriceRequest};
use creditflow::decimal::{Credits, Fixed, Quantity};
use creditflow::time::Instant;

fn bench(c: &mut Criterion) {
    let text = std::fs::read_to_string("config/catalog.toml").expect("config/catalog.toml");
    let catalog = creditflow::catalog::load::from_str(&text).expect("catalog");
    let ts: Instant = "2026-09-01T12:00:00.000Z".parse().expect("ts");
    let dims = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // (meter, quantity, cumulative this period, dims)
    let cases = [
        ("api_call", "1", "120", dims(&[])),
        (
            "llm_token",
            "1200",
            "50000",
            dims(&[("model", "small"), ("region", "us")]),
        ),
        ("gpu_second", "30", "3000", dims(&[])),
        ("storage_gb_hour", "12.5", "800", dims(&[])),
    ];
    let budget: Credits = Fixed(1_234_567_890_000); // 1,234.56789 credits
    let mut group = c.benchmark_group("pricing");
    for (meter, quantity, cumulative, dims) in &cases {
        let quantity: Quantity = quantity.parse().expect("quantity");
        let request = PriceRequest {
            meter: catalog.meter_id(meter).expect("meter"),
            quantity,
            dims,
            ts,
            cumulative: cumulative.parse().expect("cumulative"),
        };
        group.bench_function(BenchmarkId::new("price", meter), |b| {
            b.iter(|| black_box(price(&catalog, black_box(&request)).is_ok()))
        });
        let decimals = quantity.to_dec().normalized().scale();
        group.bench_function(BenchmarkId::new("max_quantity", meter), |b| {
            b.iter(|| {
                black_box(max_quantity(&catalog, black_box(&request), decimals, budget).is_ok())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
