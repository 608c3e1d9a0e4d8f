//! The dashboard in a real browser: Debian's chromium, headless, driven by Playwright
//! (`tests/browser/dashboard.mjs`; `scripts/test` installs chromium and the npm package when
//! missing) against the real binary on a real `nats-server`. The balances the page shows equal
//! the service's answer, the chart drew every charge, the page logged no error; the
//! screenshots are kept in `target/dashboard-screenshots/` (`processor/`, `demo/`). The same
//! pages served by `creditflow demo --serve`, with no NATS, pass the same checks.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
    text.split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string()
}

#[test]
fn the_dashboard_shows_the_service_balances_and_draws_the_chart() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` (scripts/test does)"
    );
    let server = creditflow::testkit::NatsServer::start();
    let url = server.url();
    let partitions = 4;
    let setup = Setup::with_metrics(&url, partitions, 2, "", true);
    let _processor = KillOnDrop(setup.start(&[]));
    wait_until("metrics port", Duration::from_secs(60), || {
        setup.metrics_port().is_some()
    });
    let port = setup.metrics_port().expect("port");
    wait_until("the API answers", Duration::from_secs(60), || {
        readyz(port).is_some_and(|(status, _)| status == 200)
    });
    let rt = runtime();
    let lines = creditflow::sample::scenario(7, 12, 2000);
    rt.block_on(publish(&url, &lines, partitions));
    wait_caught_up(&url, &setup, Duration::from_secs(120));
    let accounts: Vec<String> = (1..=12).map(|i| format!("acct_{i:02}")).collect();
    // Requests to the NATS service, answered and refused, for the overview's service table.
    rt.block_on(async {
        let client = async_nats::connect(&url).await.expect("connect");
        for account in &accounts[..3] {
            let body = serde_json::json!({ "account": account }).to_string();
            service_request(&client, "creditflow.svc.query.balance", body)
                .await
                .expect("a balance");
        }
        let unknown = serde_json::json!({ "account": "nobody_here" }).to_string();
        let refused = service_request(&client, "creditflow.svc.query.balance", unknown).await;
        assert_eq!(refused.map_err(|(code, _)| code), Err(404));
        let malformed =
            service_request(&client, "creditflow.svc.query.authorize", "{".into()).await;
        assert_eq!(malformed.map_err(|(code, _)| code), Err(400));
    });
    let seen = check_dashboard(port, &accounts, "processor");
    // In the order of the metrics' text, which is no contract: compared sorted.
    let mut shown = seen["service"].as_array().expect("rows").clone();
    shown.sort_by_key(|row| row[0].as_str().map(String::from));
    assert_eq!(
        Value::Array(shown),
        serde_json::json!([
            [
                "authorize",
                "1",
                "0",
                "400×1",
                service_mean_ms(port, "authorize")
            ],
            [
                "balance",
                "4",
                "3",
                "404×1",
                service_mean_ms(port, "balance")
            ]
        ]),
        "the service's requests shown"
    );
}

/// The mean time in the processor of `endpoint`'s requests, in ms to three decimals, from
/// the processor's metrics (as the overview computes it).
fn service_mean_ms(port: u16, endpoint: &str) -> String {
    let metrics = get(port, "/metrics");
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{endpoint=\"{endpoint}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{prefix} in the metrics"))
            .parse()
            .expect("a number")
    };
    let sum = value("creditflow_service_request_duration_seconds_sum");
    let count = value("creditflow_service_request_duration_seconds_count");
    format!("{:.3}", sum / count * 1000.0)
}

/// `creditflow demo --serve` serves the same dashboard and API with no NATS: after its
/// workload (kept running), the page shows the API's balances and draws every charge.
#[test]
fn the_demo_serves_the_dashboard_without_nats() {
    use std::io::BufRead;
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` (scripts/test does)"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditflow"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "demo",
            "--serve",
            "127.0.0.1:0",
            "--accounts",
            "20",
            "--messages",
            "20000",
            "--rate",
            "0",
            "--keep-running",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the demo");
    let stderr = child.stderr.take().expect("stderr");
    let mut demo = KillOnDrop(child);
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut port = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let line = seen
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the demo says where it serves and when its workload is done");
        if let Some(at) = line.find("http://127.0.0.1:") {
            let rest = &line[at + "http://127.0.0.1:".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            port = digits.parse::<u16>().ok();
        }
        if line.contains("workload done") {
            break;
        }
    }
    let port = port.expect("the demo's port");
    assert!(get(port, "/readyz").starts_with("ready"));
    let accounts: Vec<String> = (0..20).map(|i| format!("demo_{i:06}")).collect();
    let seen = check_dashboard(port, &accounts, "demo");
    assert_eq!(
        seen["service"],
        serde_json::json!([]),
        "no NATS service in the demo"
    );
    // Ctrl-C (SIGINT) ends it cleanly, with its report.
    let pid = demo.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let status = demo.0.wait().expect("wait");
    assert!(status.success(), "the demo exits 0 after Ctrl-C: {status}");
}

/// The given fields of each row of the array `rows`, as an array per row (what a page's
/// table shows, column by column).
fn columns(rows: &Value, fields: &[&str]) -> Value {
    let rows = rows.as_array().expect("an array of rows");
    Value::Array(
        rows.iter()
            .map(|row| Value::Array(fields.iter().map(|f| row[*f].clone()).collect()))
            .collect(),
    )
}

/// Opens the overview and the page of the account (of `accounts`) with the most recent
/// charges; checks what the page shows against the API's answers; keeps the screenshots in
/// `target/dashboard-screenshots/<name>/`.
fn check_dashboard(port: u16, accounts: &[String], name: &str) -> Value {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    // The account with the most recent charges, among those with alert states if any has.
    let alerted = |a: &str| -> usize {
        let text = get(port, &format!("/api/v1/accounts/{a}/balance"));
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["alerts"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let (account, statement) = accounts
        .iter()
        .cloned()
        .filter_map(|a| {
            let text = get(port, &format!("/api/v1/accounts/{a}/statement?limit=100"));
            let v: Value = serde_json::from_str(&text).ok()?;
            Some((a, v))
        })
        .max_by_key(|(a, v)| (alerted(a) > 0, v["charges"].as_array().map_or(0, Vec::len)))
        .expect("an account");
    let charges = statement["charges"].as_array().expect("charges").len();
    assert!(charges > 0, "the account has charges");
    let balance: Value =
        serde_json::from_str(&get(port, &format!("/api/v1/accounts/{account}/balance")))
            .expect("balance");
    let totals: Value = serde_json::from_str(&get(port, "/api/v1/totals")).expect("totals");

    let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/dashboard-screenshots")
        .join(name);
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let output = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(&account)
        .arg(&shots)
        .output()
        .expect("node");
    assert!(
        output.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(
        output
            .stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .expect("the page's report"),
    )
    .expect("report json");
    assert_eq!(seen["errors"], serde_json::json!([]), "page errors");
    assert_eq!(seen["accounts"], totals["accounts"].to_string());
    let types = &totals["credit_types"];
    assert_eq!(
        seen["creditTypes"],
        columns(types, &["credit_type", "balance"])
    );
    assert_eq!(
        seen["revenue"],
        columns(types, &["recognized", "deferred"]),
        "revenue shown"
    );
    let expected_top = columns(
        &totals["top_consumers"],
        &["credit_type", "account", "consumed"],
    );
    assert_ne!(expected_top, serde_json::json!([]), "someone consumed");
    assert_eq!(seen["topConsumers"], expected_top, "top consumers shown");
    let alerts: u64 = totals["alerts_last_hour"]
        .as_object()
        .expect("alerts")
        .values()
        .map(|v| v.as_u64().expect("count"))
        .sum();
    assert_eq!(
        seen["alerts"],
        alerts.to_string(),
        "alerts of the last hour shown"
    );
    assert_eq!(
        seen["balances"],
        columns(&balance["balances"], &["credit_type", "balance"]),
        "{account}"
    );
    let expected_runways: Vec<Value> = balance["balances"]
        .as_array()
        .expect("balances")
        .iter()
        .map(|b| match &b["runway"]["runs_out_at"] {
            Value::Null => Value::from("not at this rate"),
            at => at.clone(),
        })
        .collect();
    assert_eq!(
        seen["runways"],
        Value::Array(expected_runways),
        "runway shown"
    );
    assert_eq!(seen["chartPoints"], charges, "every charge on the chart");
    assert_eq!(
        seen["polyline"],
        serde_json::json!([charges]),
        "one line through them"
    );
    assert_eq!(seen["charges"], charges);
    let usage: Value =
        serde_json::from_str(&get(port, &format!("/api/v1/accounts/{account}/usage")))
            .expect("usage");
    let expected_lines = columns(&usage["lines"], &["kind", "money"]);
    assert_ne!(
        expected_lines,
        serde_json::json!([]),
        "{account} has invoice lines"
    );
    let expected_alerts: Vec<Value> = balance["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| serde_json::json!([a["alert"], a["lows"].to_string()]))
        .collect();
    if name == "processor" {
        assert!(!expected_alerts.is_empty(), "{account} has alert states");
    }
    assert_eq!(
        seen["accountAlerts"],
        Value::Array(expected_alerts),
        "alert states shown"
    );
    assert_eq!(seen["lines"], expected_lines, "invoice lines shown");
    assert_eq!(
        seen["grants"],
        balance["grants"].as_array().map_or(0, Vec::len).max(1),
        "grants listed (an empty list shows one 'none' line)"
    );
    for shot in ["overview.png", "account.png"] {
        assert!(
            std::fs::metadata(shots.join(shot)).is_ok_and(|m| m.len() > 10_000),
            "{shot} kept"
        );
    }
    seen
}
