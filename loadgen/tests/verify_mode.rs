//! Verify mode against a fake processor: a task that reads the input stream, replays each
//! message through `creditflow::engine::Engine` and publishes the outputs as the wire contract
//! says. `run --verify` passes; a corrupted balance and a dropped output each fail it, with a
//! diff that names the output.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;
use common::{catalog, fake_processor, CATALOG, PARTITIONS};
use creditflow::testkit::NatsServer;
use loadgen::cli::{Cli, Command};
use loadgen::nats::{INPUT_PREFIX, INPUT_STREAM, OUTPUT_PREFIX, OUTPUT_STREAM};
use loadgen::verify::{Difference, VerifyOptions};

fn verify_options(fence: &str) -> VerifyOptions {
    VerifyOptions {
        partitions: PARTITIONS,
        input_stream: INPUT_STREAM.into(),
        input_prefix: INPUT_PREFIX.into(),
        output_stream: OUTPUT_STREAM.into(),
        output_prefix: OUTPUT_PREFIX.into(),
        fence_id: fence.into(),
        fence_timeout: Duration::from_secs(60),
        diff_max: 10,
        expect_run: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_against_the_engine_and_catches_a_wrong_balance_and_a_lost_output() {
    let server = NatsServer::start();
    let url = server.url();
    let argv = [
        "loadgen",
        "run",
        "--quiet",
        "--verify",
        "--create-streams",
        "--nats-url",
        &url,
        "--catalog",
        CATALOG,
        "--partitions",
        "4",
        "--seed",
        "9",
        "--run-id",
        "vt",
        "--accounts",
        "200",
        "--zipf",
        "1.1",
        "--grant-amount",
        "5",
        "--rate",
        "1500",
        "--duration",
        "2s",
        "--probe-interval",
        "5ms",
        "--connections",
        "2",
        "--drain-timeout",
        "60s",
        "--fence-timeout",
        "60s",
        "--raw-ceiling",
        "3000",
    ];
    let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not a run")
    };
    // The streams exist before the fake processor starts reading.
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    common::create_processor_streams(&js).await;
    let processor = tokio::spawn(fake_processor(url.clone()));

    let (report, passed) = loadgen::cli::run_command(args, "run --verify")
        .await
        .unwrap();
    assert!(passed, "{}", report.to_text());
    assert_eq!(report.verify_passed, Some(true), "{}", report.to_text());
    assert_eq!(report.probes_unanswered, 0);
    let ratio = &report.ratios[0];
    assert!(ratio.name.starts_with("achieved / raw publish ceiling") && ratio.value > 0.0);
    let summary = report.verify.clone().unwrap();
    let expected: u64 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" outputs expected"))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(expected > 1000, "{summary}");
    assert!(report.e2e_latency.as_ref().unwrap().count >= 390);
    assert!(report.counts.malformed + report.counts.late_duplicates > 0);

    // The processor writes ticks into the input stream itself (one per partition subject);
    // verify replays what is in the stream, so they must not make a difference.
    let tick_ts = creditflow::time::Instant(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            + 240_000,
    );
    for p in 0..PARTITIONS {
        js.publish(
            format!("{INPUT_PREFIX}.{p}.tick"),
            format!(r#"{{"type":"tick","id":"tick-1","ts":"{tick_ts}"}}"#).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    // Corrupt one balance: the same output id again with another balance (a new Nats-Msg-Id,
    // so the broker stores it).
    let mut corrupted = None;
    loadgen::nats::read_stream(&js, OUTPUT_STREAM, u64::MAX, |m| {
        let text = String::from_utf8(m.payload.to_vec()).unwrap();
        if corrupted.is_none() && text.contains("\"balance\":\"") {
            corrupted = Some((m.subject.clone(), text));
        }
    })
    .await
    .unwrap();
    let (subject, text) = corrupted.expect("a balance output (hot accounts on 5 credits)");
    let id = loadgen::run::output_id(text.as_bytes())
        .unwrap()
        .to_string();
    let at = text.find("\"balance\":\"").unwrap() + 11;
    let wrong = format!(
        "{}-12345.5{}",
        &text[..at],
        &text[at + text[at..].find('"').unwrap()..]
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{id}-corrupt").as_str(),
    );
    js.publish_with_headers(subject, headers, wrong.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();

    let outcome = loadgen::verify::verify(&client, catalog(), &verify_options("c1"))
        .await
        .unwrap();
    assert!(!outcome.passed());
    assert_eq!(outcome.differences.len(), 1, "{}", outcome.render());
    assert_eq!(
        outcome.differences[0],
        Difference::Different {
            id: id.clone(),
            expected: text.clone(),
            actual: wrong.clone()
        }
    );
    let rendered = outcome.render();
    assert!(rendered.contains("FAILED") && rendered.contains(&id) && rendered.contains("-12345.5"));
    assert!(rendered.contains("oracle balance of"), "{rendered}");

    // Lose one output: delete a command result of a grant from the output stream.
    let mut lost = None;
    loadgen::nats::read_stream(&js, OUTPUT_STREAM, u64::MAX, |m| {
        let text = String::from_utf8(m.payload.to_vec()).unwrap();
        if lost.is_none() && text.contains("\"command\":\"grant\"") {
            lost = Some((m.sequence, text));
        }
    })
    .await
    .unwrap();
    let (sequence, lost_text) = lost.expect("a grant's result");
    let lost_id = loadgen::run::output_id(lost_text.as_bytes())
        .unwrap()
        .to_string();
    let stream = js.get_stream(OUTPUT_STREAM).await.unwrap();
    assert!(stream.delete_message(sequence).await.unwrap());

    let outcome = loadgen::verify::verify(&client, catalog(), &verify_options("c2"))
        .await
        .unwrap();
    assert!(!outcome.passed());
    assert!(
        outcome.differences.contains(&Difference::Missing {
            id: lost_id,
            expected: lost_text
        }),
        "{}",
        outcome.render()
    );
    assert_eq!(outcome.differences.len(), 2, "{}", outcome.render());
    processor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_then_drain_times_a_processor_started_after_the_fences() {
    let server = NatsServer::start();
    let url = server.url();
    let argv = [
        "loadgen",
        "fill",
        "--quiet",
        "--create-streams",
        "--nats-url",
        &url,
        "--catalog",
        CATALOG,
        "--partitions",
        "4",
        "--events",
        "3000",
        "--accounts",
        "100",
    ];
    let Command::Fill(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not a fill")
    };
    let (report, passed) = loadgen::cli::fill_command(args, "fill").await.unwrap();
    assert!(passed && report.acked == report.sent && report.sent >= 3000);
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    loadgen::nats::ensure_stream(
        &js,
        OUTPUT_STREAM,
        "creditflow.out.>",
        true,
        Duration::from_secs(120),
    )
    .await
    .unwrap();

    let mut processor = None;
    let drained = loadgen::cli::drain(&client, PARTITIONS, Duration::from_secs(60), |messages| {
        assert_eq!(messages, report.stored);
        processor = Some(tokio::spawn(fake_processor(url.clone())));
    })
    .await
    .unwrap();
    assert_eq!(drained.messages, report.stored);
    // At least every fence's result (how many other outputs depends on the time-of-day prices).
    assert!(
        drained.outputs_seen >= u64::from(PARTITIONS) && drained.per_s() > 0.0,
        "{drained:?}"
    );
    processor.unwrap().abort();
}
