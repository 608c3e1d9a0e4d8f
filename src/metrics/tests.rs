use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::*;

#[test]
fn the_alert_window_counts_the_last_sixty_minutes_only() {
    let mut window = AlertWindow::default();
    assert_eq!(window.last_hour(1_000), [0; 4]);
    window.record(0, 1_000);
    window.record(0, 1_000);
    window.record(3, 1_030);
    window.record(1, 1_059);
    assert_eq!(window.last_hour(1_059), [2, 1, 0, 1]);
    // Minute 1,000 leaves the window at 1,060; its bucket is reused at 1,060.
    assert_eq!(window.last_hour(1_060), [0, 1, 0, 1]);
    window.record(2, 1_060);
    assert_eq!(window.last_hour(1_060), [0, 1, 1, 1]);
    assert_eq!(window.last_hour(1_200), [0; 4]);
}
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn line_of<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|line| line.starts_with(prefix))
}

#[test]
fn recorded_values_are_rendered_under_their_names() {
    let metrics = Metrics::new(4, 2);
    metrics.messages_applied(3, 10);
    metrics.messages_applied(3, 5);
    metrics.dead_letters(0, 2);
    metrics.dead_letter_reason("not_allowed_on_subject");
    metrics.dead_letter_reason("not_allowed_on_subject");
    metrics.duplicates(1, 1);
    metrics.outputs_published(7);
    metrics.publish_retries(2);
    metrics.nats_reconnects();
    metrics.consumer_recreated("stall");
    metrics.ticks_published();
    metrics.snapshot_failed("write", 1);
    metrics.snapshot_failed("write", 2);
    metrics.snapshot_written("delta");
    metrics.snapshot_written("delta");
    metrics.set_consumer_lag(42);
    metrics.set_queue_depth(1, 3);
    metrics.set_publish_in_flight(9);
    metrics.set_snapshot_age_seconds(2, 1.5);
    metrics.set_snapshot_size_bytes(2, 4096);
    metrics.set_accounts(0, 100);
    metrics.set_dedupe_entries(0, 250);
    metrics.observe_apply_batch(0, 0.002, 512);
    metrics.observe_apply_batch(0, 0.004, 256);
    metrics.observe_snapshot_write(0.25);
    metrics.observe_snapshot_pause(0.01);
    metrics.service_request("balance", None, 0.000_2);
    metrics.service_request("balance", Some(404), 0.000_3);
    metrics.service_request("grant", Some(409), 0.002);
    let text = metrics.render();
    for expected in [
        "creditflow_service_requests_total{endpoint=\"balance\",outcome=\"ok\"} 1",
        "creditflow_service_requests_total{endpoint=\"balance\",outcome=\"404\"} 1",
        "creditflow_service_requests_total{endpoint=\"grant\",outcome=\"other\"} 1",
        "creditflow_service_requests_total{endpoint=\"release\",outcome=\"503\"} 0",
        "creditflow_service_request_duration_seconds_count{endpoint=\"balance\"} 2",
        "creditflow_service_request_duration_seconds_count{endpoint=\"authorize\"} 0",
        "creditflow_messages_applied_total{partition=\"3\"} 15",
        "creditflow_messages_applied_total{partition=\"0\"} 0",
        "creditflow_dead_letters_total{partition=\"0\"} 2",
        "creditflow_duplicates_total{partition=\"1\"} 1",
        "creditflow_outputs_published_total 7",
        "creditflow_publish_retries_total 2",
        "creditflow_nats_reconnects_total 1",
        "creditflow_consumer_recreated_total{reason=\"stall\"} 1",
        "creditflow_consumer_recreated_total{reason=\"error\"} 0",
        "creditflow_ticks_published_total 1",
        "creditflow_snapshot_failures_total{stage=\"write\"} 2",
        "creditflow_snapshot_failures_total{stage=\"encode\"} 0",
        "creditflow_snapshot_failures_total{stage=\"fold\"} 0",
        "creditflow_snapshots_written_total{kind=\"delta\"} 2",
        "creditflow_snapshots_written_total{kind=\"full\"} 0",
        "creditflow_snapshot_consecutive_failures 0",
        "creditflow_consumer_lag_messages 42",
        "creditflow_queue_depth_batches{shard=\"1\"} 3",
        "creditflow_publish_in_flight_messages 9",
        "creditflow_snapshot_age_seconds{partition=\"2\"} 1.5",
        "creditflow_snapshot_size_bytes{partition=\"2\"} 4096",
        "creditflow_accounts{partition=\"0\"} 100",
        "creditflow_dedupe_entries{partition=\"0\"} 250",
        "creditflow_dead_letter_reasons_total{reason=\"not_allowed_on_subject\"} 2",
        "creditflow_dead_letter_reasons_total{reason=\"malformed_json\"} 0",
        "creditflow_apply_batch_duration_seconds_count{shard=\"0\"} 2",
        "creditflow_apply_batch_size_messages_sum{shard=\"0\"} 768",
        "creditflow_apply_batch_size_messages_count{shard=\"1\"} 0",
        "creditflow_snapshot_write_duration_seconds_count 1",
        "creditflow_snapshot_pause_duration_seconds_sum 0.01",
        "# TYPE creditflow_messages_applied_total counter",
        "# TYPE creditflow_apply_batch_duration_seconds histogram",
    ] {
        assert!(
            line_of(&text, expected).is_some(),
            "missing {expected:?} in\n{text}"
        );
    }
    assert!(!text.contains("# EOF"), "0.0.4 has no EOF marker");
    assert!(metrics.render_openmetrics().ends_with("# EOF\n"));
    // Every series exists from the start: 4 partitions of messages_applied.
    let series = text
        .lines()
        .filter(|line| line.starts_with("creditflow_messages_applied_total{"))
        .count();
    assert_eq!(series, 4);
}

#[test]
#[should_panic(expected = "partition 4 out of range")]
fn a_partition_out_of_range_is_a_programmer_error() {
    Metrics::new(4, 1).messages_applied(4, 1);
}

#[test]
#[should_panic(expected = "unknown consumer recreation reason")]
fn an_unknown_recreation_reason_is_a_programmer_error() {
    Metrics::new(1, 1).consumer_recreated("boredom");
}

#[test]
fn a_problem_holds_readiness_off_until_cleared() {
    let health = Health::new();
    health.set_ready(true, "caught up");
    assert!(health.is_ready());
    health.set_problem("snapshots", Some("3 snapshots failed in a row".into()));
    health.set_ready(true, "caught up");
    assert!(!health.is_ready());
    assert_eq!(
        health.readiness(),
        (false, "3 snapshots failed in a row".to_string())
    );
    health.set_problem("ticks", Some("ticks failing".into()));
    health.set_problem("snapshots", None);
    assert_eq!(health.readiness(), (false, "ticks failing".to_string()));
    health.set_problem("ticks", None);
    assert_eq!(health.readiness(), (true, "caught up".to_string()));
    assert!(health.is_ready());
    health.set_ready(false, "stopping");
    assert_eq!(health.readiness(), (false, "stopping".to_string()));
}

#[test]
fn metrics_and_health_are_shareable() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Metrics>();
    shareable::<Health>();
    let health = Health::new();
    assert!(health.is_live());
    assert_eq!(health.readiness(), (false, "starting".to_string()));
    health.clone().set_ready(true, "");
    assert!(health.readiness().0);
}

/// One HTTP/1.1 request over a plain TCP stream: (status, headers and body as text).
async fn get(address: SocketAddr, method: &str, path: &str, accept: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    (status, response)
}

#[tokio::test]
async fn the_server_answers_metrics_health_and_readiness() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let metrics = Metrics::new(2, 1);
    let health = Health::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_listener(
        listener,
        metrics.clone(),
        health.clone(),
        None,
        async move {
            let _ = stopped.await;
        },
    ));

    metrics.messages_applied(1, 3);
    let (status, response) = get(address, "GET", "/metrics", "*/*").await;
    assert_eq!(status, 200, "{response}");
    assert!(
        response.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{response}"
    );
    assert!(
        response.contains("creditflow_messages_applied_total{partition=\"1\"} 3"),
        "{response}"
    );
    let (status, response) = get(address, "GET", "/metrics", "application/openmetrics-text").await;
    assert_eq!(status, 200);
    assert!(
        response.contains("content-type: application/openmetrics-text"),
        "{response}"
    );
    assert!(response.ends_with("# EOF\n"), "{response}");

    let (status, response) = get(address, "GET", "/healthz", "*/*").await;
    assert_eq!((status, response.ends_with("\r\n\r\nok\n")), (200, true));
    health.set_live(false);
    assert_eq!(get(address, "GET", "/healthz", "*/*").await.0, 503);

    let (status, response) = get(address, "GET", "/readyz", "*/*").await;
    assert_eq!(status, 503);
    assert!(response.ends_with("not ready: starting\n"), "{response}");
    health.set_ready(false, "restoring snapshots");
    let (_, response) = get(address, "GET", "/readyz", "*/*").await;
    assert!(
        response.ends_with("not ready: restoring snapshots\n"),
        "{response}"
    );
    health.set_ready(true, "");
    let (status, response) = get(address, "GET", "/readyz", "*/*").await;
    assert_eq!((status, response.ends_with("ready\n")), (200, true));

    assert_eq!(get(address, "GET", "/nope", "*/*").await.0, 404);
    assert_eq!(get(address, "POST", "/metrics", "*/*").await.0, 404);

    stop.send(()).expect("the server is running");
    let result = server.await.expect("the server task did not panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn serve_reports_an_address_it_cannot_bind() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = taken.local_addr().expect("address");
    let result = serve(address, Metrics::new(1, 1), Health::new(), async {}).await;
    assert!(result.is_err(), "binding a taken port must fail");
}
