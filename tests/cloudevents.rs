//! CloudEvents 1.0 (structured JSON) on the usage subjects (SEMANTICS §2.3): OpenMeter's
//! quickstart event, mapped by a catalog entry, is charged exactly like the equivalent native
//! event; one that does not map is a dead letter naming why, and nothing else changes.

mod common;

use std::sync::Arc;

use common::schemas::Contracts;

use creditflow::engine::{Engine, Envelope};
use creditflow::wire::output::Output;

const CATALOG: &str = r#"
default_plan = "payg"
[currency]
code = "USD"
scale = 2
[rules]
future_max = "3650d"
backdate_max = "3650d"
[[credit_types]]
name = "credit"
scale = 4
[[meters]]
name = "api_ms"
  [[meters.versions]]
  effective_from = "2020-01-01T00:00:00Z"
  model = "unit"
  rate = "0.01"
    [[meters.versions.dimensions]]
    match = { method = "POST" }
    multiplier = "3"
[[meters]]
name = "api_call"
  [[meters.versions]]
  effective_from = "2020-01-01T00:00:00Z"
  model = "unit"
  rate = "0.5"
[[plans]]
name = "payg"
period = "month"
  [plans.policy]
  kind = "reject"

# OpenMeter's quickstart meter: the request duration, by method and path.
[[cloudevents]]
type = "api-calls"
meter = "api_ms"
account = "subject"
quantity = "data.duration_ms"
dims = { method = "data.method", path = "data.path" }

# Counting events: each one is one call, the account read from the data.
[[cloudevents]]
type = "com.example.call"
meter = "api_call"
account = "data.customer.id"
quantity = "1"
"#;

/// OpenMeter's quickstart event (openmeterio/openmeter, quickstart/README.md), verbatim but the
/// subject (creditflow accounts are `[A-Za-z0-9_-]`, which `customer-1` already is).
const OPENMETER_EVENT: &str = r#"
{
  "specversion" : "1.0",
  "type": "api-calls",
  "id": "00001",
  "time": "2023-01-01T00:00:00.001Z",
  "source": "service-0",
  "subject": "customer-1",
  "data": {
    "duration_ms": "1",
    "method": "GET",
    "path": "/hello"
  }
}
"#;

const NATIVE_EVENT: &str = r#"{"id":"00001","account":"customer-1","meter":"api_ms","quantity":"1","ts":"2023-01-01T00:00:00.001Z","dims":{"method":"GET","path":"/hello"}}"#;

const GRANT: &str = r#"{"type":"grant","id":"g1","account":"customer-1","ts":"2023-01-01T00:00:00Z","amount":"100"}"#;

struct Run {
    engine: Engine,
    outputs: Vec<Output>,
    seq: u64,
}

impl Run {
    fn new() -> Run {
        let catalog = creditflow::catalog::load::from_str(CATALOG).expect("test catalog");
        Run {
            engine: Engine::new(Arc::new(catalog), 1),
            outputs: Vec::new(),
            seq: 0,
        }
    }

    fn apply(&mut self, subject: &str, payload: &str) -> Vec<serde_json::Value> {
        let start = self.outputs.len();
        self.seq += 1;
        let envelope = Envelope {
            payload: payload.as_bytes(),
            seq: self.seq,
            subject,
            received: None,
        };
        self.engine.apply(&envelope, &mut self.outputs);
        self.engine.check_invariants().expect("invariants");
        self.outputs[start..]
            .iter()
            .map(|o| serde_json::from_str(&o.to_json()).expect("output json"))
            .collect()
    }

    fn usage(&mut self, payload: &str) -> Vec<serde_json::Value> {
        self.apply("creditflow.in.0.usage", payload)
    }

    fn state(&self) -> Vec<String> {
        self.engine.state_view()
    }

    fn balance(&self) -> String {
        let view: serde_json::Value =
            serde_json::from_str(&self.state()[0]).expect("state view json");
        view["balances"][0]["balance"].as_str().unwrap().to_string()
    }
}

fn dead(outputs: &[serde_json::Value]) -> (String, String) {
    assert_eq!(outputs.len(), 1, "one dead letter: {outputs:?}");
    assert_eq!(outputs[0]["type"], "dead_letter", "{outputs:?}");
    (
        outputs[0]["reason"].as_str().unwrap().to_string(),
        outputs[0]["detail"].as_str().unwrap().to_string(),
    )
}

#[test]
fn openmeters_example_is_charged_like_the_native_event() {
    let mut cloud = Run::new();
    let mut native = Run::new();
    cloud.apply("creditflow.in.0.cmd", GRANT);
    native.apply("creditflow.in.0.cmd", GRANT);
    let from_cloud = cloud.usage(OPENMETER_EVENT);
    let from_native = native.usage(NATIVE_EVENT);
    assert_eq!(from_cloud, from_native, "the same outputs, byte for byte");
    assert_eq!(cloud.state(), native.state(), "the same state");
    assert_eq!(cloud.balance(), "99.99", "1 ms at 0.01");

    // A retry of the same CloudEvent (same id) is a duplicate, like a native retry.
    let again = cloud.usage(OPENMETER_EVENT);
    assert_eq!(again, native.usage(NATIVE_EVENT));
    assert_eq!(cloud.state(), native.state());

    // A POST of 40 ms: the dimension rule's multiplier, from the mapped dims.
    let post = OPENMETER_EVENT
        .replace("00001", "00002")
        .replace("\"GET\"", "\"POST\"")
        .replace("\"duration_ms\": \"1\"", "\"duration_ms\": 40");
    cloud.usage(&post);
    assert_eq!(cloud.balance(), "98.79", "40 ms × 0.01 × 3 = 1.2 more");
}

#[test]
fn a_counting_mapping_reads_the_account_from_the_data() {
    let mut cloud = Run::new();
    let mut native = Run::new();
    let grant = GRANT.replace("customer-1", "acme");
    cloud.apply("creditflow.in.0.cmd", &grant);
    native.apply("creditflow.in.0.cmd", &grant);
    let event = r#"{"specversion":"1.0","type":"com.example.call","id":"c-1","source":"//gw/eu","time":"2023-01-01T00:00:01Z","datacontenttype":"application/json","data":{"customer":{"id":"acme"},"bytes":123},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
    let from_cloud = cloud.usage(event);
    let from_native = native.usage(
        r#"{"id":"c-1","account":"acme","meter":"api_call","quantity":"1","ts":"2023-01-01T00:00:01Z"}"#,
    );
    assert_eq!(from_cloud, from_native);
    assert_eq!(cloud.state(), native.state());
}

#[test]
fn a_cloudevent_that_does_not_map_is_a_dead_letter_with_the_reason() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            OPENMETER_EVENT.replace("\"api-calls\"", "\"page-views\""),
            "unmapped_cloudevent",
            "type \"page-views\" (source \"service-0\"): no [[cloudevents]] entry",
        ),
        (
            OPENMETER_EVENT.replace("\"1.0\"", "\"0.3\""),
            "invalid_field",
            "specversion: \"0.3\" is not \"1.0\"",
        ),
        (
            OPENMETER_EVENT.replace("\"id\": \"00001\",", ""),
            "missing_field",
            "id: required",
        ),
        (
            OPENMETER_EVENT.replace("\"source\": \"service-0\",", ""),
            "missing_field",
            "source: required",
        ),
        (
            OPENMETER_EVENT.replace("\"subject\": \"customer-1\",", ""),
            "missing_field",
            "subject: required (the catalog's [[cloudevents]] entry for type \"api-calls\"",
        ),
        (
            OPENMETER_EVENT.replace("\"time\": \"2023-01-01T00:00:00.001Z\",", ""),
            "missing_field",
            "time: required",
        ),
        (
            OPENMETER_EVENT.replace("\"duration_ms\": \"1\",", ""),
            "missing_field",
            "data.duration_ms: required",
        ),
        (
            OPENMETER_EVENT.replace("\"duration_ms\": \"1\"", "\"duration_ms\": [1]"),
            "bad_quantity",
            "data.duration_ms: must be a number",
        ),
        (
            OPENMETER_EVENT.replace("\"duration_ms\": \"1\"", "\"duration_ms\": \"-1\""),
            "bad_quantity",
            "quantity: must be >= 0",
        ),
        (
            OPENMETER_EVENT.replace("\"subject\": \"customer-1\"", "\"subject\": \"a b\""),
            "bad_account",
            "",
        ),
        (
            OPENMETER_EVENT.replace("\"method\": \"GET\"", "\"method\": {\"verb\": \"GET\"}"),
            "invalid_field",
            "data.method: dimension \"method\" must be a string",
        ),
        (
            OPENMETER_EVENT.replace(
                "\"source\"",
                "\"datacontenttype\": \"application/xml\", \"source\"",
            ),
            "invalid_field",
            "datacontenttype: \"application/xml\": only JSON data is read",
        ),
        (
            OPENMETER_EVENT.replace("\"data\": {", "\"data_base64\": \"AAAA\", \"data\": {"),
            "invalid_field",
            "data_base64: binary data is not read",
        ),
        (
            OPENMETER_EVENT.replace(
                "\"id\": \"00001\",",
                "\"id\": \"00001\", \"id\": \"00009\",",
            ),
            "invalid_field",
            "id: repeated",
        ),
        (
            OPENMETER_EVENT.replace("\"data\": {", "\"data\": 5, \"x\": {"),
            "invalid_field",
            "data: must be an object",
        ),
        (
            OPENMETER_EVENT.replace("\"time\": \"2023-01-01T00:00:00.001Z\"", "\"time\": 5"),
            "invalid_field",
            "time: must be a string",
        ),
    ];
    for (payload, reason, detail) in cases {
        let mut run = Run::new();
        run.apply("creditflow.in.0.cmd", GRANT);
        let before = run.state();
        let outputs = run.usage(&payload);
        let (got_reason, got_detail) = dead(&outputs);
        assert_eq!(got_reason, reason, "{payload}: {got_detail}");
        assert!(
            got_detail.contains(detail),
            "{payload}: detail {got_detail:?} should contain {detail:?}"
        );
        assert_eq!(run.state(), before, "nothing else changes: {payload}");
    }
}

#[test]
fn a_cloudevent_on_the_command_subject_is_not_allowed_there() {
    let mut run = Run::new();
    run.apply("creditflow.in.0.cmd", GRANT);
    let outputs = run.apply("creditflow.in.0.cmd", OPENMETER_EVENT);
    assert_eq!(dead(&outputs).0, "not_allowed_on_subject");
}

#[test]
fn a_native_message_that_mentions_specversion_is_read_as_native() {
    let mut run = Run::new();
    run.apply("creditflow.in.0.cmd", GRANT);
    let adjust = r#"{"type":"adjust","id":"a1","account":"customer-1","ts":"2023-01-01T00:00:02Z","credit_type":"credit","amount":"1","reason":"specversion"}"#;
    let outputs = run.apply("creditflow.in.0.cmd", adjust);
    assert!(
        outputs
            .iter()
            .any(|o| o["type"] == "command.result" && o["status"] == "applied"),
        "{outputs:?}"
    );
}

#[test]
fn the_catalog_names_every_bad_mapping() {
    let bad = CATALOG.replace(
        "[[cloudevents]]\ntype = \"com.example.call\"",
        "[[cloudevents]]\ntype = \"api-calls\"\nmeter = \"nope\"\naccount = \"data.\"\nquantity = \"lots\"\ndims = { x = 5, y = \"time\" }\ncolour = \"red\"\n[[cloudevents]]\ntype = \"com.example.call\"",
    );
    let errors = creditflow::catalog::load::from_str(&bad)
        .expect_err("refused")
        .to_string();
    for expected in [
        "cloudevents[1].colour: unknown key",
        "cloudevents[1].type: type \"api-calls\" is already mapped by cloudevents[0]",
        "cloudevents[1].meter: no meter named \"nope\"",
        "cloudevents[1].account: \"data.\" is not a CloudEvent field",
        "cloudevents[1].quantity: \"lots\" is neither a data field",
        "cloudevents[1].dims.x: expected a string",
        "cloudevents[1].dims.y: \"time\" is not a CloudEvent field",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}

#[test]
fn the_contract_describes_the_cloudevents_creditflow_reads() {
    let contracts = Contracts::shared();
    let event: serde_json::Value = serde_json::from_str(OPENMETER_EVENT).unwrap();
    contracts
        .check("input.cloudevent", &event)
        .expect("OpenMeter's example matches input.cloudevent");
    let mut without_time = event.clone();
    without_time.as_object_mut().unwrap().remove("time");
    assert!(contracts.check("input.cloudevent", &without_time).is_err());
    let mut binary = event.clone();
    binary["data_base64"] = "AAAA".into();
    assert!(contracts.check("input.cloudevent", &binary).is_err());
}
