//! The contracts (`docs/schemas/creditflow.schema.json`, named by `docs/asyncapi.yaml`) hold
//! for what creditflow really writes: every output of replaying the sample log and 300 of the
//! model test's generated logs validates against its type's schema (no field missing, none
//! unknown: a renamed field fails), every state view against `state.account`, every input the
//! engine accepted from the sample log against its input schema, and the AsyncAPI document
//! names every schema it uses and every subject. The service's replies are validated in
//! `tests/service_nats.rs` through `common::schemas`.

mod common;
mod model;

use std::path::Path;

use common::schemas::{self, Contracts};
use creditflow::engine::{Engine, Envelope};
use serde_json::Value;

fn replay(engine: &mut Engine, lines: &[Vec<u8>]) -> Vec<(usize, String)> {
    let mut outputs = Vec::new();
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        engine.apply(
            &Envelope {
                payload: line,
                seq: index as u64 + 1,
                subject: "creditflow.in",
                received: None,
            },
            &mut out,
        );
        outputs.extend(out.drain(..).map(|o| (index, o.to_json())));
    }
    outputs
}

fn check_outputs(contracts: &Contracts, outputs: &[(usize, String)], log: &str) -> usize {
    for (index, text) in outputs {
        let value: Value = serde_json::from_str(text).expect("an output is JSON");
        let kind = value["type"].as_str().expect("an output has a type");
        if let Err(errors) = contracts.check(&format!("output.{kind}"), &value) {
            panic!("{log}, message {index}: output does not match output.{kind}: {errors}\n{text}");
        }
        contracts
            .check("output", &value)
            .unwrap_or_else(|e| panic!("{log}: not an output: {e}\n{text}"));
    }
    outputs.len()
}

#[test]
fn the_sample_logs_outputs_state_and_inputs_match_their_schemas() {
    let contracts = Contracts::load();
    let catalog = common::catalog();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sample-events.jsonl"),
    )
    .unwrap();
    let lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    let mut engine = Engine::new(catalog.clone(), 1);
    let outputs = replay(&mut engine, &lines);
    let checked = check_outputs(&contracts, &outputs, "sample log");
    assert!(checked > 6_000, "{checked}");
    // Every output type of the contract occurs, so none of their schemas goes unexercised.
    let kinds: std::collections::BTreeSet<&str> = outputs
        .iter()
        .filter_map(|(_, t)| t.split('"').nth(3))
        .collect();
    assert!(kinds.len() >= 12, "{kinds:?}");

    for view in engine.state_view() {
        let value: Value = serde_json::from_str(&view).unwrap();
        contracts
            .check("state.account", &value)
            .unwrap_or_else(|e| panic!("state view: {e}\n{view}"));
    }

    // Inputs the engine took (not dead-lettered) are valid inputs by the schema.
    let dead: std::collections::HashSet<usize> = outputs
        .iter()
        .filter(|(_, t)| t.starts_with(r#"{"type":"dead_letter""#))
        .map(|(index, _)| *index)
        .collect();
    let mut inputs = 0;
    for (index, line) in text.lines().enumerate() {
        if dead.contains(&index) {
            continue;
        }
        let value: Value = serde_json::from_str(line).unwrap();
        let name = match value["type"].as_str() {
            None | Some("usage") => "input.usage".to_string(),
            Some(kind) => format!("input.{kind}"),
        };
        contracts.check(&name, &value).unwrap_or_else(|e| {
            panic!("sample line {}: not a valid {name}: {e}\n{line}", index + 1)
        });
        inputs += 1;
    }
    assert!(inputs > 1_000, "{inputs}");
}

#[test]
fn the_model_logs_outputs_match_their_schemas() {
    let contracts = Contracts::load();
    let model_catalog = model::ModelCatalog::standard();
    let catalog = std::sync::Arc::new(
        creditflow::catalog::load::from_str(&model_catalog.to_toml()).expect("model catalog"),
    );
    let mut checked = 0;
    for seed in 0..300u64 {
        let log = model::gen::scenario(seed, 200, &model_catalog);
        let mut engine = Engine::new(catalog.clone(), 1);
        let outputs = replay(&mut engine, &log);
        checked += check_outputs(&contracts, &outputs, &format!("model seed {seed}"));
        for view in engine.state_view() {
            let value: Value = serde_json::from_str(&view).unwrap();
            contracts
                .check("state.account", &value)
                .unwrap_or_else(|e| panic!("model seed {seed}: state view: {e}\n{view}"));
        }
    }
    assert!(checked > 10_000, "{checked}");
}

/// A renamed field in an output fails validation (the schema is closed), as does a missing one.
#[test]
fn a_renamed_or_missing_field_fails() {
    let contracts = Contracts::load();
    let line = r#"{"type":"invoice.line","id":"line:a:1:usage:api_call:credit:v1","account":"a","seq":3,"ts":"2026-09-01T01:00:00.000Z","line_id":"line:a:1:usage:api_call:credit","version":1,"final":false,"period_start":"2026-09-01T00:00:00.000Z","period_end":"2026-10-01T00:00:00.000Z","kind":"usage","meter":"api_call","credit_type":"credit","quantity":"2","credits":"0.003","money":"0","currency":"USD"}"#;
    let value: Value = serde_json::from_str(line).unwrap();
    contracts.check("output.invoice.line", &value).unwrap();
    let renamed: Value = serde_json::from_str(&line.replace("\"credits\"", "\"credit\"")).unwrap();
    assert!(contracts.check("output.invoice.line", &renamed).is_err());
    let mut missing = value.clone();
    missing.as_object_mut().unwrap().remove("money");
    assert!(contracts.check("output.invoice.line", &missing).is_err());
    let float: Value = serde_json::from_str(&line.replace("\"0.003\"", "0.003")).unwrap();
    assert!(
        contracts.check("output.invoice.line", &float).is_err(),
        "amounts are strings"
    );
}

/// The AsyncAPI document references only schemas that exist, every message schema of the
/// contract is referenced, and it names the subjects the code uses.
#[test]
fn the_asyncapi_document_names_every_schema_and_subject() {
    let contracts = Contracts::load();
    let asyncapi =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/asyncapi.yaml"))
            .unwrap();
    assert!(asyncapi.starts_with("asyncapi: 3.0.0"), "AsyncAPI 3.0");
    let referenced = schemas::asyncapi_refs(&asyncapi);
    for name in &referenced {
        assert!(
            contracts.has(name),
            "docs/asyncapi.yaml references a missing schema {name}"
        );
    }
    for name in contracts.message_names() {
        assert!(
            referenced.contains(&name),
            "docs/asyncapi.yaml does not reference {name}"
        );
    }
    for subject in [
        "creditflow.in.{partition}.usage",
        "creditflow.in.{partition}.cmd",
        "creditflow.in.{partition}.tick",
        "creditflow.out.{partition}.{type}",
        "creditflow.svc.query.balance",
        "creditflow.svc.query.authorize",
        "creditflow.svc.query.usage",
        "creditflow.svc.query.price",
        "creditflow.svc.query.statement",
        "creditflow.svc.command.{command}",
        "$SRV.PING",
    ] {
        assert!(
            asyncapi.contains(subject),
            "docs/asyncapi.yaml does not name {subject}"
        );
    }
    // The service's subjects as the code builds them.
    assert_eq!(
        creditflow::service::query_subject("creditflow.svc", "balance"),
        "creditflow.svc.query.balance"
    );
    assert_eq!(
        creditflow::service::command_subject("creditflow.svc", "grant"),
        "creditflow.svc.command.grant"
    );
}

/// The AsyncAPI initiative's own parser accepts the document, its references resolved into the
/// schema file, with no error and no warning (tests/browser/asyncapi.mjs).
#[test]
fn the_asyncapi_parser_accepts_the_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/@asyncapi/parser")
            .exists(),
        "run `npm ci --prefix tests/browser` (scripts/test does)"
    );
    let output = std::process::Command::new("node")
        .arg(root.join("tests/browser/asyncapi.mjs"))
        .arg(root.join("docs/asyncapi.yaml"))
        .current_dir(root.join("tests/browser"))
        .output()
        .expect("node");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("parsed: "), "{printed}");
}
