//! The NATS service (src/service/) against a real `nats-server` and the real binary: balances
//! equal the replay oracle's state view of the same log, authorize writes nothing and is right
//! about the charge that follows, commands through the service are the commands in the log,
//! a retried command is applied once, min_seq reads one's own writes, every bad request gets a
//! typed error, the micro protocol's verbs answer, the CLI prints exactly the reply, and
//! SIGKILL with commands in flight loses or doubles none.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use creditflow::engine::partition_of;
use serde_json::{json, Value};

const PREFIX: &str = "creditflow.svc";

/// A processor with its service, on a server of its own.
struct Deployment {
    server: creditflow::testkit::NatsServer,
    setup: Setup,
    processor: KillOnDrop,
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
}

impl Deployment {
    fn start(partitions: u32, shards: usize, extra: &str) -> Deployment {
        let server = creditflow::testkit::NatsServer::start();
        let setup = Setup::with_metrics(&server.url(), partitions, shards, extra, true);
        let processor = KillOnDrop(setup.start(&[]));
        let runtime = runtime();
        let client = runtime
            .block_on(async_nats::connect(server.url()))
            .expect("connect");
        let deployment = Deployment {
            server,
            setup,
            processor,
            runtime,
            client,
        };
        deployment.wait_ready();
        deployment
    }

    /// Until the service answers (a 404 for an account nobody has is an answer).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.query("balance", json!({"account": "nobody_at_all"})) {
                Err((404, _)) => return,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "the service did not become ready: {other:?}\n{}",
                        self.setup.log()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn query(&self, endpoint: &str, body: Value) -> Result<String, (u16, String)> {
        self.runtime.block_on(call(
            &self.client,
            &format!("{PREFIX}.query.{endpoint}"),
            body.to_string(),
        ))
    }

    fn command(&self, endpoint: &str, body: Value) -> Result<String, (u16, String)> {
        self.runtime.block_on(call(
            &self.client,
            &format!("{PREFIX}.command.{endpoint}"),
            body.to_string(),
        ))
    }

    fn last_input_seq(&self) -> u64 {
        self.runtime.block_on(async {
            let js = async_nats::jetstream::new(self.client.clone());
            let mut stream = js.get_stream("CREDITFLOW_IN").await.expect("input stream");
            stream.info().await.expect("info").state.last_sequence
        })
    }

    fn stop(mut self) {
        let status = terminate(&mut self.processor);
        assert!(
            status.success(),
            "exit {status}; log:\n{}",
            self.setup.log()
        );
    }
}

/// One request: the reply's body (checked against its schema), or the error code and status of a `Nats-Service-Error`
/// reply (code 0 for a request that got no reply at all).
async fn call(
    client: &async_nats::Client,
    subject: &str,
    body: String,
) -> Result<String, (u16, String)> {
    let body = service_request(client, subject, body).await?;
    // Every reply the service tests get is held to its contract (docs/schemas).
    if let Some(schema) = common::schemas::reply_schema(subject) {
        let value: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("a reply on {subject} is not JSON ({e}): {body}"));
        if let Err(errors) = common::schemas::Contracts::shared().check(&schema, &value) {
            panic!("the reply on {subject} does not match {schema}: {errors}\n{body}");
        }
    }
    Ok(body)
}

/// The state view part of a balance reply (everything before `available`), closed.
fn view_of(balance: &str) -> String {
    let at = balance
        .find(",\"available\":[")
        .unwrap_or_else(|| panic!("not a balance reply: {balance}"));
    format!("{}}}", &balance[..at])
}

fn as_of(reply: &str) -> u64 {
    serde_json::from_str::<Value>(reply).expect("json")["as_of_seq"]
        .as_u64()
        .expect("as_of_seq")
}

fn account_of_view(line: &str) -> String {
    serde_json::from_str::<Value>(line).expect("view")["account"]
        .as_str()
        .expect("account")
        .to_string()
}

fn now() -> creditflow::time::Instant {
    creditflow::pipeline::ticks::wall_clock()
}

/// Every account's balance equals the oracle's state view, read through the service, also
/// while the log is still being applied and partitions are snapshotted (the questions asked
/// meanwhile are all answered).
#[test]
fn balances_equal_the_replay_oracle() {
    let d = Deployment::start(
        4,
        2,
        "[snapshot]\ninterval_events = 500\ninterval = \"100ms\"\n",
    );
    let lines = creditflow::sample::scenario(5, 30, 4000);
    let accounts: Vec<String> = (1..=30).map(|i| format!("acct_{i:02}")).collect();
    // Ask about random accounts all along the publishing.
    let asking = {
        let client = d.client.clone();
        let accounts = accounts.clone();
        d.runtime.spawn(async move {
            let mut answered = 0u64;
            let mut unknown = 0u64;
            let started = Instant::now();
            let mut n = 0usize;
            while started.elapsed() < Duration::from_secs(4) {
                n += 1;
                let account = &accounts[n * 7 % accounts.len()];
                match call(
                    &client,
                    &format!("{PREFIX}.query.balance"),
                    json!({"account": account}).to_string(),
                )
                .await
                {
                    Ok(_) => answered += 1,
                    Err((404, _)) => unknown += 1,
                    Err(other) => panic!("a balance during ingest: {other:?}"),
                }
            }
            (answered, unknown)
        })
    };
    d.runtime.block_on(publish(&d.url(), &lines, 4));
    let (answered, _) = d.runtime.block_on(asking).expect("asking task");
    assert!(answered > 100, "{answered} answered during ingest");
    let last = d.last_input_seq();
    let (engine, outputs) = d.runtime.block_on(oracle(&d.url(), 4));
    let views = engine.state_view();
    assert_eq!(views.len(), 30);
    // The alert states the oracle's outputs imply: per (account, credit type, threshold), low
    // now or not, how often it went low and recovered.
    let mut alert_states: std::collections::BTreeMap<(String, String, String), (bool, u64, u64)> =
        Default::default();
    for output in &outputs {
        let value: Value = serde_json::from_str(&output.to_json()).expect("output json");
        let kind = value["type"].as_str().unwrap_or_default();
        let threshold = match kind {
            "balance.depleted" => "depleted",
            "balance.low" | "balance.runway_low" | "balance.recovered" => {
                value["threshold"].as_str().expect("threshold")
            }
            _ => continue,
        };
        let key = (
            value["account"].as_str().expect("account").to_string(),
            value["credit_type"]
                .as_str()
                .expect("credit type")
                .to_string(),
            threshold.to_string(),
        );
        let state = alert_states.entry(key).or_default();
        if kind == "balance.recovered" {
            *state = (false, state.1, state.2 + 1);
        } else {
            *state = (true, state.1 + 1, state.2);
        }
    }
    assert!(
        alert_states.values().any(|s| s.2 > 0),
        "a log with alerts and recoveries"
    );
    for view in &views {
        let account = account_of_view(view);
        let reply = d
            .query("balance", json!({"account": account, "min_seq": last}))
            .unwrap_or_else(|e| panic!("balance of {account}: {e:?}"));
        assert_eq!(&view_of(&reply), view, "{account}");
        assert!(as_of(&reply) >= last);
        let reply_value: Value = serde_json::from_str(&reply).expect("reply json");
        let shown: Vec<(String, String, bool, u64, u64)> = reply_value["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|a| {
                (
                    a["credit_type"].as_str().expect("credit type").to_string(),
                    a["alert"].as_str().expect("alert").to_string(),
                    a["below"].as_bool().expect("below"),
                    a["lows"].as_u64().expect("lows"),
                    a["recoveries"].as_u64().expect("recoveries"),
                )
            })
            .collect();
        let mut expected: Vec<(String, String, bool, u64, u64)> = alert_states
            .iter()
            .filter(|((a, _, _), _)| *a == account)
            .map(|((_, t, n), (below, lows, recoveries))| {
                (t.clone(), n.clone(), *below, *lows, *recoveries)
            })
            .collect();
        let mut shown_sorted = shown.clone();
        shown_sorted.sort();
        expected.sort();
        assert_eq!(shown_sorted, expected, "{account}'s alert states");
        // The CLI prints exactly the service's reply.
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_creditflow"))
            .args(["balance", &account, "--json"])
            .env("NATS_URL", d.url())
            .output()
            .expect("creditflow balance");
        assert!(
            cli.status.success(),
            "{}",
            String::from_utf8_lossy(&cli.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&cli.stdout).trim_end(), reply);
    }
    d.stop();
}

/// authorize changes nothing and writes nothing; an allowed authorize is followed by the same
/// usage being charged (the credits it said), a refused one by a rejection.
#[test]
fn authorize_writes_nothing_and_predicts_the_charge() {
    let d = Deployment::start(2, 1, "");
    let setup_lines = [
        json!({"type":"grant","id":"g1","account":"auth_a","ts":now().to_string(),"amount":"10"}),
        json!({"type":"grant","id":"g1","account":"auth_b","ts":now().to_string(),"amount":"0.5"}),
    ];
    for body in &setup_lines {
        let mut body = body.clone();
        body.as_object_mut().unwrap().remove("type");
        d.command("grant", body).expect("grant");
    }
    let mut allowed = 0;
    let mut refused = 0;
    for (i, (account, quantity)) in [
        ("auth_a", "100"),
        ("auth_b", "1000"),
        ("auth_a", "5000"),
        ("auth_b", "10"),
        ("auth_a", "6000"),
        ("never_seen", "1"),
    ]
    .iter()
    .enumerate()
    {
        let before = d.last_input_seq();
        let reply = d
            .query(
                "authorize",
                json!({"account": account, "meter": "api_call", "quantity": quantity}),
            )
            .expect("authorize");
        assert_eq!(d.last_input_seq(), before, "authorize wrote to the log");
        let answer: Value = serde_json::from_str(&reply).unwrap();
        // Now the same usage, at the same time, published as a producer would.
        let ts = answer["ts"].as_str().unwrap();
        let line = json!({"id": format!("e{i}"), "account": account, "meter": "api_call",
                          "quantity": quantity, "ts": ts})
        .to_string();
        let before_balance = d.query("balance", json!({"account": account}));
        d.runtime.block_on(publish(&d.url(), &[line], 2));
        let seq = d.last_input_seq();
        let after = d
            .query("balance", json!({"account": account, "min_seq": seq}))
            .expect("balance after");
        let balance = |reply: &str| -> String {
            let v: Value = serde_json::from_str(reply).unwrap();
            v["balances"][0]["balance"]
                .as_str()
                .unwrap_or("0")
                .to_string()
        };
        let consumed = |reply: &str| -> String {
            let v: Value = serde_json::from_str(reply).unwrap();
            v["balances"][0]["ledger"]["consumed"]
                .as_str()
                .unwrap_or("0")
                .to_string()
        };
        if answer["allowed"] == Value::Bool(true) {
            allowed += 1;
            let before_consumed = before_balance.as_deref().map_or("0".to_string(), consumed);
            let charged: f64 =
                consumed(&after).parse::<f64>().unwrap() - before_consumed.parse::<f64>().unwrap();
            // Decimal strings compared as text where exact; the difference only as a check.
            let credits: f64 = answer["credits"].as_str().unwrap().parse().unwrap();
            assert!(
                (charged - credits).abs() < 1e-9,
                "{account} {quantity}: {answer} vs {after}"
            );
        } else {
            refused += 1;
            let before = before_balance.as_deref().map_or("0".to_string(), &balance);
            assert_eq!(
                before,
                balance(&after),
                "{account} {quantity} was refused but charged"
            );
        }
    }
    assert!(
        allowed >= 3 && refused >= 2,
        "{allowed} allowed, {refused} refused"
    );
    // The rejections are in the output stream, one per refused usage.
    let outputs = d.runtime.block_on(outputs(&d.url()));
    let rejected = outputs
        .iter()
        .filter(|(id, _)| id.starts_with("rejected:"))
        .count();
    assert_eq!(rejected, refused);
    d.stop();
}

/// Commands through the service are the commands in the log: the state they make equals the
/// oracle's replay of the input stream, and a replay of the same commands as a plain log.
#[test]
fn commands_through_the_service_are_the_log() {
    let d = Deployment::start(3, 2, "");
    let ts =
        |minutes_ago: i64| creditflow::time::Instant(now().0 - minutes_ago * 60_000).to_string();
    let commands: Vec<(&str, Value)> = vec![
        (
            "grant",
            json!({"account":"c_1","id":"g1","amount":"100","cost_basis":"0.01","ts":ts(30)}),
        ),
        (
            "grant",
            json!({"account":"c_1","id":"g2","amount":"5","expires_at":"2099-01-01T00:00:00Z","ts":ts(29)}),
        ),
        (
            "set_plan",
            json!({"account":"c_2","id":"p1","plan":"pro","ts":ts(28)}),
        ),
        (
            "set_policy",
            json!({"account":"c_2","id":"pol","policy":{"kind":"overage","overage_limit":"50","overage_price":"0.02"},"ts":ts(27)}),
        ),
        (
            "adjust",
            json!({"account":"c_1","id":"a1","amount":"-3","reason":"correction","ts":ts(26)}),
        ),
        (
            "reserve",
            json!({"account":"c_1","id":"r1","meter":"api_call","quantity":"100","ttl":"1h","hold_id":"h1","ts":ts(25)}),
        ),
        (
            "commit",
            json!({"account":"c_1","id":"k1","hold_id":"h1","quantity":"40","ts":ts(24)}),
        ),
        (
            "reserve",
            json!({"account":"c_3","id":"r2","meter":"api_call","quantity":"10","ttl":"1h","ts":ts(23)}),
        ),
        (
            "release",
            json!({"account":"c_3","id":"rel","hold_id":"r2","ts":ts(22)}),
        ),
        (
            "void_grant",
            json!({"account":"c_1","id":"v1","grant_id":"g2","ts":ts(21)}),
        ),
        (
            "reverse",
            json!({"account":"c_1","id":"rv","event_id":"k1","ts":ts(20)}),
        ),
        (
            "void_grant",
            json!({"account":"c_1","id":"v2","grant_id":"nope","ts":ts(19)}),
        ),
    ];
    let mut plain = Vec::new();
    for (endpoint, body) in &commands {
        let reply = d
            .command(endpoint, body.clone())
            .unwrap_or_else(|e| panic!("{endpoint}: {e:?}"));
        let reply: Value = serde_json::from_str(&reply).unwrap();
        let result = &reply["result"];
        assert_eq!(result["type"], "command.result", "{reply}");
        assert_eq!(result["command"], *endpoint);
        assert_eq!(result["command_id"], body["id"]);
        assert_eq!(reply["duplicate"], false);
        assert_eq!(reply["balance"]["account"], body["account"]);
        let expected_status = if body["id"] == "v2" {
            "rejected"
        } else {
            "applied"
        };
        assert_eq!(result["status"], expected_status, "{reply}");
        let mut line = body.as_object().unwrap().clone();
        line.insert("type".into(), Value::String(endpoint.to_string()));
        plain.push(Value::Object(line).to_string());
    }
    let last = d.last_input_seq();
    let (engine, _) = d.runtime.block_on(oracle(&d.url(), 3));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("commands.jsonl");
    std::fs::write(&file, plain.join("\n")).unwrap();
    let log = creditflow::cli::replay::read_log(&file, false).unwrap();
    let (direct, _) = creditflow::cli::replay::run_log(catalog(), 1, &log, None);
    assert_eq!(
        engine.state_view(),
        direct.state_view(),
        "service vs a plain log of the same commands"
    );
    for view in engine.state_view() {
        let account = account_of_view(&view);
        let reply = d
            .query("balance", json!({"account": account, "min_seq": last}))
            .unwrap();
        assert_eq!(view_of(&reply), view);
    }
    d.stop();
}

/// A command retried with the same id is applied once and answered with the same result;
/// min_seq gives read-your-writes.
#[test]
fn a_retry_is_applied_once_and_min_seq_reads_your_writes() {
    let d = Deployment::start(2, 2, "");
    let grant = json!({"account":"r_1","id":"once","amount":"7"});
    let first: Value = serde_json::from_str(&d.command("grant", grant.clone()).unwrap()).unwrap();
    // The same id again, even with another amount: the first grant's result, applied once.
    let again = json!({"account":"r_1","id":"once","amount":"9"});
    let second: Value = serde_json::from_str(&d.command("grant", again).unwrap()).unwrap();
    assert_eq!(first["result"], second["result"]);
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["balance"]["balances"][0]["balance"], "7");
    assert_eq!(second["balance"]["grants"].as_array().unwrap().len(), 1);
    // Read your writes: a usage published directly, then a balance at its sequence.
    let client = d.client.clone();
    for i in 0..30 {
        let line = json!({"id": format!("u{i}"), "account": "r_1", "meter": "api_call",
                          "quantity": "10", "ts": now().to_string()})
        .to_string();
        let partition = partition_of("r_1", 2);
        let seq = d.runtime.block_on(async {
            let js = async_nats::jetstream::new(client.clone());
            js.publish(format!("creditflow.in.{partition}.usage"), line.into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        });
        let reply = d
            .query("balance", json!({"account": "r_1", "min_seq": seq}))
            .unwrap();
        assert!(as_of(&reply) >= seq);
        let v: Value = serde_json::from_str(&reply).unwrap();
        let consumed: f64 = v["balances"][0]["ledger"]["consumed"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (consumed - 0.015 * f64::from(i + 1)).abs() < 1e-9,
            "after u{i}: {reply}"
        );
    }
    // The statement lists those charges, newest first, with the grant that paid them.
    let statement: Value = serde_json::from_str(
        &d.query("statement", json!({"account":"r_1","limit":5}))
            .unwrap(),
    )
    .unwrap();
    let charges = statement["charges"].as_array().unwrap();
    assert_eq!(charges.len(), 5);
    assert_eq!(charges[0]["event_id"], "u29");
    assert_eq!(charges[0]["draws"][0]["grant_id"], "once");
    // The usage query shows the period's api_call so far.
    let usage: Value =
        serde_json::from_str(&d.query("usage", json!({"account":"r_1"})).unwrap()).unwrap();
    assert_eq!(usage["meters"][0]["meter"], "api_call");
    assert_eq!(usage["meters"][0]["quantity"], "300");
    d.stop();
}

/// A CloudEvent published on a usage subject (the sample catalog maps
/// `com.example.llm.completion`) is charged like the native event with the same fields; one
/// of a type nothing maps changes nothing.
#[test]
fn a_cloudevent_on_a_usage_subject_is_charged_like_the_native_event() {
    let d = Deployment::start(2, 2, "");
    for account in ["ce_cloud", "ce_native"] {
        d.command(
            "grant",
            json!({"account": account, "id": "g", "amount": "50"}),
        )
        .unwrap();
    }
    let ts = now().to_string();
    let cloud = json!({"specversion": "1.0", "type": "com.example.llm.completion", "id": "c1",
        "source": "//llm-gateway/eu", "time": ts, "datacontenttype": "application/json",
        "data": {"customer_id": "ce_cloud", "model": "large", "region": "eu",
                 "usage": {"prompt_tokens": 700, "total_tokens": 1234}}});
    let native = json!({"id": "c1", "account": "ce_native", "meter": "llm_token",
        "quantity": "1234", "ts": ts, "dims": {"model": "large", "region": "eu"}});
    let unmapped = json!({"specversion": "1.0", "type": "com.example.page.view", "id": "c2",
        "source": "//web", "subject": "ce_cloud", "time": ts});
    let client = d.client.clone();
    let publish = |account: &str, body: &Value| {
        let subject = format!("creditflow.in.{}.usage", partition_of(account, 2));
        d.runtime.block_on(async {
            let js = async_nats::jetstream::new(client.clone());
            js.publish(subject, body.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        })
    };
    let balance = |account: &str, seq: u64| -> Value {
        let reply = d
            .query("balance", json!({"account": account, "min_seq": seq}))
            .unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let cloud_seq = publish("ce_cloud", &cloud);
    let native_seq = publish("ce_native", &native);
    let from_cloud = balance("ce_cloud", cloud_seq);
    let from_native = balance("ce_native", native_seq);
    // 1234 tokens × 0.00003 × 1.2 (the large/eu rule) = 0.044424 credits.
    assert_eq!(from_native["balances"][0]["ledger"]["consumed"], "0.044424");
    assert_eq!(from_cloud["balances"], from_native["balances"]);
    let unmapped_seq = publish("ce_cloud", &unmapped);
    let after = balance("ce_cloud", unmapped_seq);
    assert_eq!(after["balances"], from_cloud["balances"], "nothing changes");
    d.stop();
}

/// Every kind of bad request gets a typed error with its code and a status naming the field;
/// the micro protocol's verbs answer.
#[test]
fn bad_requests_get_typed_errors_and_the_verbs_answer() {
    let d = Deployment::start(2, 1, "[service]\nwait_max = \"1s\"\n");
    d.command("grant", json!({"account":"b_1","id":"g","amount":"1"}))
        .unwrap();
    let raw = |endpoint: &str, body: &str| {
        d.runtime.block_on(call(
            &d.client,
            &format!("{PREFIX}.query.{endpoint}"),
            body.to_string(),
        ))
    };
    type Case<'a> = (Result<String, (u16, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (raw("balance", "{"), 400, "malformed_json"),
        (raw("balance", "[]"), 400, "malformed_json"),
        (raw("balance", "{}"), 400, "account"),
        (raw("balance", r#"{"account":"a b"}"#), 400, "bad_account"),
        (
            raw("balance", r#"{"account":"b_1","colour":"red"}"#),
            400,
            "colour",
        ),
        (
            raw("balance", r#"{"account":"b_1","min_seq":-1}"#),
            400,
            "min_seq",
        ),
        (
            raw("balance", r#"{"account":"nobody"}"#),
            404,
            "unknown_account",
        ),
        (
            raw(
                "authorize",
                r#"{"account":"b_1","meter":"nope","quantity":"1"}"#,
            ),
            400,
            "unknown_meter",
        ),
        (
            raw(
                "authorize",
                r#"{"account":"b_1","meter":"api_call","quantity":"-1"}"#,
            ),
            400,
            "bad_quantity",
        ),
        (
            raw("authorize", r#"{"account":"b_1","meter":"api_call"}"#),
            400,
            "quantity",
        ),
        (
            raw(
                "authorize",
                r#"{"account":"b_1","meter":"llm_token","quantity":"5"}"#,
            ),
            400,
            "no_rate_for_dims",
        ),
        (
            raw(
                "authorize",
                r#"{"account":"b_1","meter":"api_call","quantity":"1","ts":"2999-01-01T00:00:00Z"}"#,
            ),
            400,
            "ts_too_far_ahead",
        ),
        (
            raw("usage", r#"{"account":"b_1","period":99}"#),
            404,
            "period_not_in_memory",
        ),
        (
            raw(
                "price",
                r#"{"meter":"api_call","quantity":"1","account":"b_1","plan":"pro"}"#,
            ),
            400,
            "plan",
        ),
        (
            raw(
                "price",
                r#"{"meter":"api_call","quantity":"1","plan":"nope"}"#,
            ),
            400,
            "unknown_plan",
        ),
        (
            raw("statement", r#"{"account":"b_1","limit":100000}"#),
            400,
            "limit",
        ),
        (
            raw("balance", r#"{"account":"b_1","min_seq":999999999}"#),
            503,
            "not_caught_up",
        ),
        (
            d.command("grant", json!({"account":"b_1","id":"g2"})),
            400,
            "amount",
        ),
        (
            d.command(
                "grant",
                json!({"account":"b_1","id":"g3","amount":"1","type":"grant"}),
            ),
            400,
            "type",
        ),
        (
            d.command("adjust", json!({"account":"b_1","id":"x","amount":"1"})),
            400,
            "reason",
        ),
        (
            d.command("set_plan", json!({"account":"b_1","id":"x","plan":"nope"})),
            400,
            "unknown_plan",
        ),
    ];
    for (index, (result, code, word)) in cases.into_iter().enumerate() {
        match result {
            Err((got, status)) => {
                assert_eq!(got, code, "case {index}: {status}");
                assert!(
                    status.contains(word),
                    "case {index}: {status:?} lacks {word:?}"
                );
            }
            Ok(reply) => panic!("case {index} was answered: {reply}"),
        }
    }
    // A command the engine refuses is answered with its result, not an error.
    let reply: Value = serde_json::from_str(
        &d.command(
            "release",
            json!({"account":"b_1","id":"rl","hold_id":"none"}),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(reply["result"]["status"], "rejected");
    assert_eq!(reply["result"]["reason"], "unknown_hold");
    // A command dead-lettered by the engine (its ts before the account's backdate window).
    let old = creditflow::time::Instant(now().0 - 400 * 86_400_000).to_string();
    match d.command(
        "grant",
        json!({"account":"b_1","id":"old","amount":"1","ts":old}),
    ) {
        Err((422, status)) => assert!(status.contains("ts_too_old"), "{status}"),
        other => panic!("an old grant: {other:?}"),
    }
    // $SRV.PING / INFO / STATS.
    let verb = |subject: &str| -> Value {
        let reply = d
            .runtime
            .block_on(call(&d.client, subject, String::new()))
            .unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let ping = verb("$SRV.PING.creditflow");
    assert_eq!(ping["name"], "creditflow");
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    let info = verb("$SRV.INFO.creditflow");
    let mut names: Vec<String> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["subject"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 14, "{names:?}");
    assert!(names.contains(&"balance=creditflow.svc.query.balance".to_string()));
    assert!(names.contains(&"grant=creditflow.svc.command.grant".to_string()));
    let stats = verb("$SRV.STATS.creditflow");
    let balance_stats = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "balance")
        .unwrap()
        .clone();
    assert!(balance_stats["num_requests"].as_u64().unwrap() >= 8);
    assert!(balance_stats["num_errors"].as_u64().unwrap() >= 7);
    // The processor's metrics count the same requests, by outcome, with their times: every
    // balance request the micro protocol counted (STATS counts a reply once it is sent; the
    // metrics right after), the 400s and 404s apart.
    let port = d.setup.metrics_port().expect("metrics port");
    let metrics = common::metrics_text(port).expect("metrics");
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    let balance = |outcome: &str| {
        value(&format!(
            "creditflow_service_requests_total{{endpoint=\"balance\",outcome=\"{outcome}\"}} "
        ))
    };
    assert!(balance("400") >= 6, "{metrics}");
    assert!(balance("404") >= 1, "{metrics}");
    let answered = balance("ok") + balance("400") + balance("404") + balance("503");
    assert!(
        answered >= balance_stats["num_requests"].as_u64().unwrap(),
        "{metrics}"
    );
    assert_eq!(
        value("creditflow_service_request_duration_seconds_count{endpoint=\"balance\"} "),
        answered,
        "{metrics}"
    );
    assert!(value("creditflow_service_requests_total{endpoint=\"grant\",outcome=\"ok\"} ") >= 1);
    assert!(value("creditflow_service_requests_total{endpoint=\"grant\",outcome=\"422\"} ") >= 1);
    d.stop();
}

/// SIGKILL of the processor with commands in flight: each is applied once or its caller gets
/// an error, and retrying them all after the restart applies each exactly once.
#[test]
fn sigkill_with_commands_in_flight_applies_each_once() {
    let mut d = Deployment::start(
        4,
        2,
        "[snapshot]\ninterval_events = 50\ninterval = \"50ms\"\n",
    );
    const COMMANDS: usize = 300;
    let body = |n: usize| json!({"account": format!("k_{}", n % 7), "id": format!("grant-{n}"), "amount": "1"});
    let in_flight = {
        let client = d.client.clone();
        d.runtime.spawn(async move {
            let mut tasks = Vec::new();
            for n in 0..COMMANDS {
                let client = client.clone();
                let body = body(n).to_string();
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(n as u64 * 3)).await;
                    call(&client, &format!("{PREFIX}.command.grant"), body).await
                }));
            }
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            results
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    d.processor.kill().expect("SIGKILL");
    let _ = d.processor.wait();
    let first = d.runtime.block_on(in_flight).unwrap();
    let answered = first.iter().filter(|r| r.is_ok()).count();
    assert!(
        answered > 10 && answered < COMMANDS,
        "{answered} answered before the kill"
    );
    d.processor = KillOnDrop(d.setup.start(&[]));
    d.wait_ready();
    // Retry every command, as each caller would (same id).
    for (n, before_kill) in first.iter().enumerate() {
        let reply = d
            .command("grant", body(n))
            .unwrap_or_else(|e| panic!("retry of grant-{n}: {e:?}"));
        let reply: Value = serde_json::from_str(&reply).unwrap();
        if !reply["result"].is_null() {
            assert_eq!(reply["result"]["status"], "applied", "{reply}");
        }
        if before_kill.is_ok() {
            assert_eq!(
                reply["duplicate"], true,
                "grant-{n} was answered before the kill"
            );
        }
    }
    let last = d.last_input_seq();
    let mut grants: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0.0;
    for k in 0..7 {
        let account = format!("k_{k}");
        let reply = d
            .query("balance", json!({"account": account, "min_seq": last}))
            .unwrap();
        let v: Value = serde_json::from_str(&reply).unwrap();
        for g in v["grants"].as_array().unwrap() {
            *grants
                .entry(g["grant_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        total += v["balances"][0]["balance"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
    }
    assert_eq!(grants.len(), COMMANDS, "every grant once");
    assert!(grants.values().all(|&n| n == 1));
    assert_eq!(total, COMMANDS as f64);
    // And the output stream holds exactly the oracle's outputs, each once.
    let url = d.url();
    let (_, expected) = d.runtime.block_on(oracle(&url, 4));
    wait_until("every output", Duration::from_secs(60), || {
        d.runtime.block_on(stream_len(&url, "CREDITFLOW_OUT")) >= expected.len() as u64
    });
    let actual = d.runtime.block_on(outputs(&url));
    assert_outputs_match(&actual, &expected);
    d.stop();
}
