//! The shipped Grafana dashboard (`config/grafana/creditflow.json`) uses only metrics the
//! processor exports: a real processor against a real nats-server is scraped, and every
//! `creditflow_*` name in every panel's query must be among the names it serves (every series
//! exists from the start, so a fresh processor serves them all). A metric renamed in the code,
//! or misspelt in the dashboard, fails here.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use creditflow::testkit::NatsServer;
use serde_json::Value;

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/creditflow.json");
    let text = std::fs::read_to_string(&path).expect("config/grafana/creditflow.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every `creditflow_*` name in the dashboard's queries (panels' targets and variables).
fn names_used(dashboard: &Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(
                target["expr"]
                    .as_str()
                    .expect("a target's expr")
                    .to_string(),
            );
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["definition"].as_str() {
            exprs.push(query.to_string());
        }
    }
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("creditflow_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_uses_is_exported() {
    let dashboard = dashboard();
    let used = names_used(&dashboard);
    // What the dashboard must show (rates, lag, apply latency, snapshot age and size, outputs,
    // dead letters by reason).
    for needed in [
        "creditflow_messages_applied_total",
        "creditflow_consumer_lag_messages",
        "creditflow_apply_batch_duration_seconds_bucket",
        "creditflow_snapshot_age_seconds",
        "creditflow_snapshot_size_bytes",
        "creditflow_outputs_published_total",
        "creditflow_dead_letter_reasons_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    // Panels are laid out and distinct.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{panel}");
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
    }

    let server = NatsServer::start();
    let setup = Setup::with_metrics(&server.url(), 2, 1, "", true);
    let _processor = KillOnDrop(setup.start(&[]));
    let text = metrics_once(&setup, "creditflow_messages_applied_total");
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|line| line.starts_with("creditflow_"))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics the processor does not export: {missing:?}\nexported: {exported:?}"
    );
}
