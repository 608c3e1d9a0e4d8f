//! The HTTP read API (src/http_api.rs) against a real `nats-server` and the real binary: every
//! answer is byte for byte the NATS service's answer to the same request, errors carry the
//! service's codes and reasons, the totals equal the oracle's state summed, and the token
//! guards the API (and is required on a public address).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};

const PREFIX: &str = "creditflow.svc";

/// One HTTP/1.1 request to the processor's metrics server: status and body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The NATS service's reply to one query: the body, or the error code and status.
fn service(
    client: &async_nats::Client,
    endpoint: &str,
    body: &str,
) -> Result<String, (u16, String)> {
    runtime().block_on(service_request(
        client,
        &format!("{PREFIX}.query.{endpoint}"),
        body.to_string(),
    ))
}

fn wait_http_ready(setup: &Setup, token: Option<&str>) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(port) = setup.metrics_port() {
            let (status, body) = http(port, "GET", "/api/v1/accounts/nobody/balance", token, "");
            if status == 404 && body.contains("unknown_account") {
                return port;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the API did not become ready:\n{}",
            setup.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reason_of(body: &str) -> (u64, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (
        v["error"]["code"].as_u64().expect("code"),
        v["error"]["reason"].as_str().expect("reason").to_string(),
    )
}

/// Every read endpoint over HTTP answers exactly what the NATS service answers; errors keep
/// the service's codes and reasons; the totals are the oracle's state summed.
#[test]
fn http_answers_equal_the_service_byte_for_byte() {
    let server = creditflow::testkit::NatsServer::start();
    let url = server.url();
    let partitions = 4;
    let setup = Setup::with_metrics(&url, partitions, 2, "", true);
    let _processor = KillOnDrop(setup.start(&[]));
    let port = wait_http_ready(&setup, None);
    let lines = creditflow::sample::scenario(11, 20, 3000);
    let rt = runtime();
    rt.block_on(publish(&url, &lines, partitions));
    wait_caught_up(&url, &setup, Duration::from_secs(120));
    let client = rt.block_on(async_nats::connect(&url)).expect("connect");
    let last = rt.block_on(stream_len(&url, "CREDITFLOW_IN"));
    let (engine, oracle_outputs) = rt.block_on(oracle(&url, partitions));
    let views = engine.state_view();
    assert_eq!(views.len(), 20);
    let ts = creditflow::pipeline::ticks::wall_clock().to_string();

    for view in &views {
        let account = serde_json::from_str::<Value>(view).expect("view")["account"]
            .as_str()
            .expect("account")
            .to_string();
        let get = |endpoint: &str, query: &str| {
            http(
                port,
                "GET",
                &format!("/api/v1/accounts/{account}/{endpoint}{query}"),
                None,
                "",
            )
        };
        let cases = [
            (
                "balance",
                format!("?min_seq={last}"),
                json!({"account": account, "min_seq": last}),
            ),
            ("usage", String::new(), json!({"account": account})),
            (
                "statement",
                "?limit=5".to_string(),
                json!({"account": account, "limit": 5}),
            ),
        ];
        for (endpoint, query, request) in cases {
            let (status, body) = get(endpoint, &query);
            let expected = service(&client, endpoint, &request.to_string())
                .unwrap_or_else(|e| panic!("{endpoint} of {account}: {e:?}"));
            assert_eq!((status, body), (200, expected), "{endpoint} of {account}");
        }
        let (_, balance) = get("balance", "");
        assert!(
            balance.starts_with(&view[..view.len() - 1]),
            "the state view: {balance}"
        );
        for endpoint in ["price", "authorize"] {
            let request =
                json!({"account": account, "meter": "api_call", "quantity": "3", "ts": ts})
                    .to_string();
            let (status, body) = http(port, "POST", &format!("/api/v1/{endpoint}"), None, &request);
            let expected = service(&client, endpoint, &request).expect(endpoint);
            assert_eq!((status, body), (200, expected), "{endpoint} of {account}");
        }
    }

    // Errors: the service's code and reason, as JSON.
    let errors = [
        (
            "GET",
            "/api/v1/accounts/nobody/balance",
            "",
            404,
            "unknown_account",
        ),
        (
            "GET",
            "/api/v1/accounts/acct_01/balance?min_seq=x",
            "",
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/api/v1/accounts/acct_01/balance?limit=3",
            "",
            400,
            "unknown_field",
        ),
        (
            "GET",
            "/api/v1/accounts/acct_01/statement?limit=100000",
            "",
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/api/v1/accounts/acct_01/balance?min_seq=999999999",
            "",
            503,
            "not_caught_up",
        ),
        (
            "GET",
            "/api/v1/accounts/acct_01/usage?period=99",
            "",
            404,
            "period_not_in_memory",
        ),
        (
            "POST",
            "/api/v1/price",
            r#"{"meter":"nope","quantity":"1","account":"acct_01"}"#,
            400,
            "unknown_meter",
        ),
        ("POST", "/api/v1/price", "not json", 400, "malformed_json"),
        (
            "POST",
            "/api/v1/accounts/acct_01/balance",
            "",
            405,
            "method_not_allowed",
        ),
        ("GET", "/api/v1/price", "", 405, "method_not_allowed"),
        ("GET", "/api/v1/nothing", "", 404, "not_found"),
        ("GET", "/api/v2/totals", "", 404, "not_found"),
    ];
    for (method, path, body, code, reason) in errors {
        let (status, text) = http(port, method, path, None, body);
        assert_eq!(status, code, "{method} {path}: {text}");
        assert_eq!(
            reason_of(&text),
            (u64::from(code), reason.to_string()),
            "{method} {path}"
        );
    }

    // Totals: the oracle's balances and ledgers summed per credit type.
    let (status, totals) = http(port, "GET", "/api/v1/totals", None, "");
    assert_eq!(status, 200, "{totals}");
    let totals: Value = serde_json::from_str(&totals).expect("totals json");
    if let Err(problem) = common::schemas::Contracts::shared().check("reply.totals", &totals) {
        panic!("the totals do not match their schema: {problem}\n{totals}");
    }
    assert_eq!(totals["accounts"], 20);
    assert_eq!(totals["partitions"], partitions);
    assert!(totals["as_of_seq"].as_u64().expect("as_of_seq") >= last);
    let mut expected: std::collections::BTreeMap<String, (u64, Decimal, Decimal)> =
        Default::default();
    for view in &views {
        let view: Value = serde_json::from_str(view).expect("view");
        for b in view["balances"].as_array().expect("balances") {
            let entry = expected
                .entry(b["credit_type"].as_str().expect("type").to_string())
                .or_default();
            entry.0 += 1;
            entry.1 += b["balance"]
                .as_str()
                .expect("balance")
                .parse::<Decimal>()
                .expect("dec");
            entry.2 += b["ledger"]["consumed"]
                .as_str()
                .expect("consumed")
                .parse::<Decimal>()
                .expect("dec");
        }
    }
    for t in totals["credit_types"].as_array().expect("credit types") {
        let name = t["credit_type"].as_str().expect("name");
        let (accounts, balance, consumed) = expected.get(name).copied().unwrap_or_default();
        assert_eq!(t["accounts"], accounts, "{name}");
        let dec = |field: &str| {
            t[field]
                .as_str()
                .expect(field)
                .parse::<Decimal>()
                .expect("dec")
        };
        assert_eq!(dec("balance"), balance, "{name} balance");
        assert_eq!(dec("consumed"), consumed, "{name} consumed");
    }
    assert!(
        expected.values().any(|(_, b, _)| !b.is_zero()),
        "a test with balances"
    );
    // Deferred revenue: the live grants' remaining credits at their cost basis (exact: 10^-9
    // credits times 10^-9 money per credit), summed from the oracle's views.
    let mut deferred: std::collections::BTreeMap<String, Decimal> = Default::default();
    // The top consumers: per credit type the five largest lifetime consumed, ties by account.
    let mut consumers: std::collections::BTreeMap<String, Vec<(Decimal, String)>> =
        Default::default();
    for view in &views {
        let view: Value = serde_json::from_str(view).expect("view");
        let account = view["account"].as_str().expect("account").to_string();
        for g in view["grants"].as_array().expect("grants") {
            if g["status"] == "live" {
                let dec = |f: &str| g[f].as_str().expect(f).parse::<Decimal>().expect("dec");
                *deferred
                    .entry(g["credit_type"].as_str().expect("type").to_string())
                    .or_default() += dec("remaining") * dec("cost_basis");
            }
        }
        for b in view["balances"].as_array().expect("balances") {
            let consumed: Decimal = b["ledger"]["consumed"]
                .as_str()
                .expect("consumed")
                .parse()
                .expect("dec");
            if consumed > Decimal::ZERO {
                consumers
                    .entry(b["credit_type"].as_str().expect("type").to_string())
                    .or_default()
                    .push((consumed, account.clone()));
            }
        }
    }
    for t in totals["credit_types"].as_array().expect("credit types") {
        let name = t["credit_type"].as_str().expect("name");
        let shown: Decimal = t["deferred"]
            .as_str()
            .expect("deferred")
            .parse()
            .expect("dec");
        assert_eq!(
            shown,
            deferred.get(name).copied().unwrap_or_default(),
            "{name} deferred"
        );
        // The revenue roll-forward of the open periods, summed: its identity holds.
        let money = |f: &str| t[f].as_str().expect(f).parse::<Decimal>().expect("dec");
        assert_eq!(
            money("opening_deferred") + money("granted_value")
                - money("recognized")
                - money("breakage")
                - money("removed"),
            shown,
            "{name} revenue identity"
        );
    }
    assert!(
        deferred.values().any(|d| !d.is_zero()),
        "a test with deferred revenue"
    );
    let mut expected_top = Vec::new();
    for credit_type in totals["credit_types"].as_array().expect("types") {
        let name = credit_type["credit_type"].as_str().expect("name");
        let mut list = consumers.remove(name).unwrap_or_default();
        list.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (consumed, account) in list.into_iter().take(5) {
            expected_top.push((name.to_string(), account, consumed));
        }
    }
    let shown_top: Vec<(String, String, Decimal)> = totals["top_consumers"]
        .as_array()
        .expect("top consumers")
        .iter()
        .map(|t| {
            (
                t["credit_type"].as_str().expect("type").to_string(),
                t["account"].as_str().expect("account").to_string(),
                t["consumed"]
                    .as_str()
                    .expect("consumed")
                    .parse()
                    .expect("dec"),
            )
        })
        .collect();
    assert_eq!(shown_top, expected_top, "top consumers");
    // Alerts of the last hour: at least those the replayed log produced (the processor's own
    // ticks may add more after the oracle read the stream), and none of another type.
    let alerts = totals["alerts_last_hour"].as_object().expect("alerts");
    let mut produced = 0;
    for kind in creditflow::metrics::ALERT_TYPES {
        let expected = oracle_outputs
            .iter()
            .filter(|o| o.body.type_name() == kind)
            .count() as u64;
        produced += expected;
        assert!(
            alerts[kind].as_u64().expect(kind) >= expected,
            "{kind}: {alerts:?}"
        );
    }
    assert_eq!(alerts.len(), creditflow::metrics::ALERT_TYPES.len());
    assert!(produced > 0, "a log with alerts");
}

/// With a token configured the API answers only requests that carry it (metrics stay open);
/// a public listen address with the API on and no token is refused at start, naming the key;
/// the token is never printed.
#[test]
fn a_token_guards_the_api_and_a_public_address_needs_one() {
    let server = creditflow::testkit::NatsServer::start();
    let url = server.url();
    let setup = Setup::with_metrics(&url, 2, 1, "[metrics]\ntoken = \"t0ken-42\"\n", true);
    let _processor = KillOnDrop(setup.start(&[]));
    let port = wait_http_ready(&setup, Some("t0ken-42"));
    for token in [None, Some("t0ken-4"), Some("t0ken-42x"), Some("")] {
        let (status, body) = http(port, "GET", "/api/v1/totals", token, "");
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(reason_of(&body).1, "unauthorized");
    }
    let (status, _) = http(port, "GET", "/api/v1/totals", Some("t0ken-42"), "");
    assert_eq!(status, 200);
    let (status, metrics) = http(port, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "metrics need no token");
    assert!(metrics.contains("creditflow_messages_applied_total"));
    assert!(!setup.log().contains("t0ken-42"), "the token is not logged");

    // A public address with the API on and no token: refused before anything starts.
    let public = Setup::with_metrics(&url, 2, 1, "[metrics]\nlisten = \"0.0.0.0:0\"\n", false);
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_creditflow"))
        .args(["run", "--config"])
        .arg(&public.config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("metrics.token: required"), "{stderr}");
    // With the token from the environment it is accepted, and printed only redacted.
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_creditflow"))
        .args(["run", "--print-config", "--config"])
        .arg(&public.config)
        .env("CREDITFLOW_METRICS_TOKEN", "env-s3cret")
        .output()
        .expect("print-config");
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(stdout.contains("token = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains("env-s3cret"), "{stdout}");
}
