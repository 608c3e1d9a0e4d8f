//! `loadgen raw` against a real nats-server: the broker's ceiling has non-zero rates, the
//! reader sees everything stored, and the report, JSON and plot are written.

use clap::Parser;
use creditflow::testkit::NatsServer;
use loadgen::cli::{Cli, Command};

const CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/catalog.toml");

fn raw_args(url: &str, extra: &[&str]) -> loadgen::cli::RawArgs {
    let mut argv = vec![
        "loadgen",
        "raw",
        "--quiet",
        "--nats-url",
        url,
        "--catalog",
        CATALOG,
        "--seed",
        "5",
        "--accounts",
        "300",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("valid flags").command {
        Command::Raw(args) => args,
        other => panic!("parsed {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_measures_publish_and_consume_rates_of_a_real_broker() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("raw.json");
    let plot = dir.path().join("raw.svg");

    // As fast as possible: the ceilings.
    let args = raw_args(&server.url(), &["--rate", "max", "--events", "5000"]);
    let (report, passed) = loadgen::cli::raw_command(args, "raw max").await.unwrap();
    assert!(passed, "{}", report.to_text());
    assert_eq!(report.sent, 5000);
    assert_eq!(report.acked, 5000);
    assert_eq!(report.stored + report.broker_duplicates, 5000);
    assert!(
        report.broker_duplicates > 0,
        "the broker window caught no duplicate"
    );
    assert!(report.publish_per_s > 0.0);
    assert_eq!(report.consumed, Some(report.stored));
    assert_eq!(report.drain_messages, Some(report.stored));
    assert!(report.drain_per_s.unwrap() > 0.0);
    assert!(report.e2e_latency.is_none(), "no probes at max rate");

    // At a fixed rate with probes: end-to-end latency through the broker alone.
    let args = raw_args(
        &server.url(),
        &[
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--report-json",
            json.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    let (report, passed) = loadgen::cli::raw_command(args, "raw 2000").await.unwrap();
    assert!(passed, "{}", report.to_text());
    let e2e = report.e2e_latency.clone().expect("probes measured");
    assert_eq!(report.probes_unanswered, 0);
    assert!(e2e.count >= 900 && e2e.p50_ms > 0.0, "{e2e:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(json["mode"], "raw");
    assert!(json["drain_per_s"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}
