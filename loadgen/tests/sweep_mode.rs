//! `loadgen sweep` against a real nats-server and the fake processor (the engine behind the
//! wire contract): the ceiling is measured first, every level runs the broker alone and the
//! processor at the same offered rate, and the table, JSON and SVG hold one point per level.

mod common;

use async_nats::jetstream;
use clap::Parser;
use common::{fake_processor, CATALOG};
use creditflow::testkit::NatsServer;
use loadgen::cli::{Cli, Command};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_measures_both_sides_at_each_level_and_draws_them() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let argv = [
        "loadgen",
        "sweep",
        "--quiet",
        "--verify",
        "--nats-url",
        &url,
        "--catalog",
        CATALOG,
        "--partitions",
        "4",
        "--accounts",
        "100",
        "--levels",
        "20,60",
        "--ceiling-events",
        "3000",
        "--duration",
        "1s",
        "--probe-interval",
        "10ms",
        "--drain-timeout",
        "60s",
        "--out",
        out.to_str().unwrap(),
    ];
    let Command::Sweep(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not a sweep")
    };
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    common::create_processor_streams(&js).await;
    let processor = tokio::spawn(fake_processor(url.clone()));

    let (sweep, passed) = loadgen::sweep::sweep_command(args, "sweep").await.unwrap();
    assert!(passed, "{}", sweep.to_markdown());
    assert!(sweep.ceiling_per_s > 0.0);
    assert_eq!(sweep.points.len(), 2);
    for (point, percent) in sweep.points.iter().zip([20.0, 60.0]) {
        assert_eq!(point.percent, percent);
        assert!(
            (point.offered_per_s - sweep.ceiling_per_s * percent / 100.0).abs() < 1e-6,
            "{point:?}"
        );
        for side in [&point.broker, &point.processor] {
            assert!(side.e2e.count >= 90, "{point:?}");
            assert!(side.e2e.p50_ms > 0.0 && side.e2e.p99_ms >= side.e2e.p50_ms);
            assert_eq!(side.probes_unanswered, 0);
        }
        assert_eq!(point.broker.verify_passed, None);
        assert_eq!(point.processor.verify_passed, Some(true));
    }

    let table = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 3, "a header and one row per level:\n{table}");
    assert!(rows[1].starts_with("| 20% |") && rows[2].starts_with("| 60% |"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(json["points"].as_array().unwrap().len(), 2);
    let svg = std::fs::read_to_string(out.join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        4,
        "p50 and p99 of each side"
    );
    assert_eq!(
        svg.matches("<circle").count(),
        8,
        "one mark per level and series"
    );
    for legend in ["broker alone p50", "processor p99"] {
        assert!(svg.contains(legend));
    }
    for side in ["raw", "run"] {
        for level in ["20", "60"] {
            assert!(out.join(format!("{side}-{level}.json")).exists());
        }
    }
    processor.abort();
}
