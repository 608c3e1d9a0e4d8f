//! Hand-computed scenarios for the engine's rules (SEMANTICS.md), each checked exactly: burn
//! order, the three policies, debt repayment, rollover, alerts with hysteresis, holds,
//! corrections, dedupe windows, dead letters, invoice versions and the revenue identity.

use std::sync::Arc;

use creditflow::engine::{Engine, Envelope};
use creditflow::wire::output::Output;

const CATALOG: &str = r#"
default_plan = "basic"
[currency]
code = "USD"
scale = 2
rounding = "half_up"
[rules]
flush_interval = "1h"
dedupe_window = "1h"
future_max = "5m"
[[credit_types]]
name = "credit"
scale = 2
[[meters]]
name = "call"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
[[meters]]
name = "gpu"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.5"
[[plans]]
name = "basic"
period = "day"
  [plans.policy]
  kind = "reject"
  [[plans.alerts]]
  name = "low"
  amount = "5"
[[plans]]
name = "soft"
period = "day"
  [plans.policy]
  kind = "overage"
  overage_limit = "10"
  overage_price = "0.1"
[[plans]]
name = "auto"
period = "day"
  [plans.policy]
  kind = "auto_topup"
  threshold = "5"
  amount = "20"
  price = "0.05"
  max_per_period = 2
  cooldown = "1h"
  fallback = "reject"
[[plans]]
name = "allow"
period = "day"
expiring_lead = "1h"
  [[plans.allowances]]
  amount = "100"
  rollover_cap = "30"
  [plans.policy]
  kind = "reject"
"#;

struct Run {
    engine: Engine,
    outputs: Vec<Output>,
    seq: u64,
}

impl Run {
    fn new() -> Run {
        Run::with_catalog(CATALOG)
    }

    fn with_catalog(text: &str) -> Run {
        let catalog = creditflow::catalog::load::from_str(text).expect("test catalog");
        Run {
            engine: Engine::new(Arc::new(catalog), 1),
            outputs: Vec::new(),
            seq: 0,
        }
    }

    /// Applies messages; returns the JSON of the outputs they produced.
    fn apply(&mut self, lines: &[&str]) -> Vec<String> {
        self.apply_on("creditflow.in", lines)
    }

    /// Applies messages as arriving on `subject`.
    fn apply_on(&mut self, subject: &str, lines: &[&str]) -> Vec<String> {
        let start = self.outputs.len();
        for line in lines {
            self.seq += 1;
            let envelope = Envelope {
                payload: line.as_bytes(),
                seq: self.seq,
                subject,
                received: None,
            };
            self.engine.apply(&envelope, &mut self.outputs);
            self.engine
                .check_invariants()
                .expect("invariants after every step");
        }
        self.outputs[start..].iter().map(Output::to_json).collect()
    }

    fn state(&self, account: &str) -> serde_json::Value {
        let line = self
            .engine
            .state_view()
            .into_iter()
            .find(|l| l.contains(&format!("\"account\":\"{account}\"")))
            .expect("account exists");
        serde_json::from_str(&line).expect("state json")
    }

    fn balance(&self, account: &str) -> String {
        self.state(account)["balances"][0]["balance"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn remaining(&self, account: &str) -> Vec<(String, String)> {
        self.state(account)["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["grant_id"].as_str().unwrap().to_string(),
                    g["remaining"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn grant(id: &str, account: &str, ts: &str, amount: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"grant","id":"{id}","account":"{account}","ts":"{ts}","amount":"{amount}"{extra}}}"#
    )
}

fn usage(id: &str, account: &str, ts: &str, meter: &str, quantity: &str) -> String {
    format!(
        r#"{{"id":"{id}","account":"{account}","meter":"{meter}","quantity":"{quantity}","ts":"{ts}"}}"#
    )
}

fn types(outputs: &[String]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| {
            serde_json::from_str::<serde_json::Value>(o).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn find(outputs: &[String], kind: &str) -> Vec<serde_json::Value> {
    outputs
        .iter()
        .map(|o| serde_json::from_str::<serde_json::Value>(o).unwrap())
        .filter(|o| o["type"] == kind)
        .collect()
}

const T0: &str = "2026-11-24T10:00:00Z";
const T1: &str = "2026-11-24T10:01:00Z";
const T2: &str = "2026-11-24T10:02:00Z";

#[test]
fn burn_order_is_priority_then_expiry_then_cost_then_time_then_id() {
    let mut run = Run::new();
    run.apply(&[
        &grant("a", "acct", T0, "10", r#","cost_basis":"0.02""#),
        &grant(
            "b",
            "acct",
            T0,
            "10",
            r#","cost_basis":"0.01","expires_at":"2026-11-24T20:00:00Z""#,
        ),
        &grant("c", "acct", T0, "10", r#","priority":50"#),
        &grant("d", "acct", T0, "10", r#","cost_basis":"0.01""#),
        &grant("e", "acct", T0, "10", r#","cost_basis":"0.01""#),
    ]);
    let order: Vec<String> = run
        .remaining("acct")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(order, ["c", "b", "d", "e", "a"]);
    run.apply(&[&usage("u1", "acct", T1, "call", "25")]);
    assert_eq!(
        run.remaining("acct"),
        [("c", "0"), ("b", "0"), ("d", "5"), ("e", "10"), ("a", "10")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(run.balance("acct"), "25");
}

#[test]
fn reject_policy_charges_nothing_when_short() {
    let mut run = Run::new();
    run.apply(&[&grant("g", "acct", T0, "3", "")]);
    let out = run.apply(&[&usage("u1", "acct", T1, "call", "4")]);
    let rejected = find(&out, "usage.rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["needed"], "4");
    assert_eq!(rejected[0]["available"], "3");
    assert_eq!(rejected[0]["reason"], "insufficient_credits");
    assert_eq!(rejected[0]["id"], "rejected:acct:u1:2");
    assert_eq!(run.balance("acct"), "3");
    // A retry with the same id is a duplicate, not a second attempt.
    let out = run.apply(&[&usage("u1", "acct", T1, "call", "1")]);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(run.balance("acct"), "3");
}

#[test]
fn overage_creates_debt_up_to_the_limit_and_the_next_grant_repays_it() {
    let mut run = Run::new();
    run.apply(&[
        r#"{"type":"set_plan","id":"p","account":"acct","ts":"2026-11-24T10:00:00Z","plan":"soft"}"#,
        &grant("g", "acct", T0, "5", r#","cost_basis":"0.1""#),
    ]);
    run.apply(&[&usage("u1", "acct", T1, "call", "12")]);
    let state = run.state("acct");
    assert_eq!(state["balances"][0]["debt"], "7");
    assert_eq!(state["balances"][0]["balance"], "-7");
    // 7 + 4 > 10: rejected, and the available figure includes the room left (3).
    let out = run.apply(&[&usage("u2", "acct", T1, "call", "4")]);
    let rejected = find(&out, "usage.rejected");
    assert_eq!(rejected[0]["reason"], "overage_limit");
    assert_eq!(rejected[0]["available"], "3");
    // A grant of 10 repays the 7 first.
    run.apply(&[&grant("g2", "acct", T2, "10", r#","cost_basis":"0.2""#)]);
    let state = run.state("acct");
    assert_eq!(state["balances"][0]["debt"], "0");
    assert_eq!(state["balances"][0]["balance"], "3");
    assert_eq!(
        run.remaining("acct")[1],
        ("g2".to_string(), "3".to_string())
    );
    // At period end the lines show 7 overage credits, repaid, and the revenue identity holds.
    let out = run.apply(&[r#"{"type":"tick","id":"t","ts":"2026-11-25T00:00:00Z"}"#]);
    let lines: Vec<_> = find(&out, "invoice.line")
        .into_iter()
        .filter(|l| l["final"] == true)
        .collect();
    let overage = lines
        .iter()
        .find(|l| l["kind"] == "overage")
        .expect("overage line");
    assert_eq!(
        (overage["credits"].as_str(), overage["money"].as_str()),
        (Some("7"), Some("0.7"))
    );
    let repaid = lines
        .iter()
        .find(|l| l["kind"] == "overage_repaid")
        .expect("repaid line");
    assert_eq!(
        (repaid["credits"].as_str(), repaid["money"].as_str()),
        (Some("-7"), Some("-0.7"))
    );
    let revenue = &find(&out, "revenue.period")[0];
    // granted 5×0.1 + 10×0.2 = 2.5; recognised 5×0.1 + 7×0.2 = 1.9; closing 3×0.2 = 0.6.
    assert_eq!(revenue["granted"], "2.5");
    assert_eq!(revenue["recognized"], "1.9");
    assert_eq!(revenue["closing_deferred"], "0.6");
}

#[test]
fn auto_topup_respects_cooldown_cap_and_fallback() {
    let mut run = Run::new();
    run.apply(&[
        r#"{"type":"set_plan","id":"p","account":"acct","ts":"2026-11-24T10:00:00Z","plan":"auto"}"#,
        &grant("g", "acct", T0, "10", ""),
    ]);
    // 10 - 6 = 4 < 5: one top-up of 20 after paying.
    let out = run.apply(&[&usage("u1", "acct", T1, "call", "6")]);
    assert_eq!(find(&out, "topup.granted").len(), 1);
    assert_eq!(find(&out, "topup.granted")[0]["grant_id"], "topup-u1");
    assert_eq!(find(&out, "topup.granted")[0]["money"], "1");
    assert_eq!(run.balance("acct"), "24");
    // Within the cooldown: 24 - 22 = 2 < 5 but no top-up; a further 3 is rejected (fallback).
    let out = run.apply(&[&usage("u2", "acct", "2026-11-24T10:30:00Z", "call", "22")]);
    assert!(find(&out, "topup.granted").is_empty());
    let out = run.apply(&[&usage("u3", "acct", "2026-11-24T10:40:00Z", "call", "3")]);
    assert_eq!(find(&out, "usage.rejected").len(), 1);
    // After the cooldown, a charge larger than the balance tops up first, then pays.
    let out = run.apply(&[&usage("u4", "acct", "2026-11-24T11:10:00Z", "call", "3")]);
    // (The 11:00 invoice flush comes first: time passed before the event.)
    let kinds: Vec<String> = types(&out)
        .into_iter()
        .filter(|t| t != "invoice.line")
        .collect();
    assert_eq!(kinds[0], "topup.granted");
    assert_eq!(run.balance("acct"), "19");
    // The cap (2 per period) is reached: nothing more today.
    let out = run.apply(&[&usage("u5", "acct", "2026-11-24T13:00:00Z", "call", "18")]);
    assert!(find(&out, "topup.granted").is_empty());
    assert_eq!(run.balance("acct"), "1");
}

#[test]
fn allowance_rolls_over_up_to_the_cap_and_warns_before_expiry() {
    let mut run = Run::new();
    run.apply(&[r#"{"type":"set_plan","id":"p","account":"acct","ts":"2026-11-24T10:00:00Z","plan":"allow"}"#]);
    run.apply(&[&usage("u1", "acct", T1, "call", "40")]);
    let out = run.apply(&[r#"{"type":"tick","id":"t1","ts":"2026-11-24T23:30:00Z"}"#]);
    let warning = &find(&out, "grant.expiring")[0];
    assert_eq!(warning["remaining"], "60");
    assert_eq!(warning["ts"], "2026-11-24T23:00:00.000Z");
    let out = run.apply(&[r#"{"type":"tick","id":"t2","ts":"2026-11-25T00:00:00Z"}"#]);
    // 60 left: 30 rolls over, 30 expires.
    assert_eq!(find(&out, "grant.expired")[0]["credits"], "30");
    assert_eq!(run.balance("acct"), "130");
    let grants: Vec<String> = run
        .remaining("acct")
        .into_iter()
        .map(|(id, r)| format!("{id}={r}"))
        .collect();
    assert!(
        grants
            .iter()
            .any(|g| g.starts_with("rollover-allowance-") && g.ends_with("=30")),
        "{grants:?}"
    );
}

#[test]
fn alerts_fire_once_per_crossing_with_counted_ids() {
    let mut run = Run::new();
    let mut all = Vec::new();
    all.extend(run.apply(&[&grant("g", "acct", T0, "10", "")]));
    all.extend(run.apply(&[&usage("u1", "acct", T1, "call", "6")])); // 4: low
    all.extend(run.apply(&[&usage("u2", "acct", T1, "call", "1")])); // 3: still low, no alert
    all.extend(run.apply(&[&grant("g2", "acct", T1, "10", "")])); // 13: recovered
    all.extend(run.apply(&[&usage("u3", "acct", T2, "call", "13")])); // 0: low again and depleted
    let ids: Vec<String> = all
        .iter()
        .map(|o| serde_json::from_str::<serde_json::Value>(o).unwrap())
        .filter(|o| o["type"].as_str().unwrap().starts_with("balance."))
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "alert:acct:credit:low:low:1",
            "alert:acct:credit:low:recovered:1",
            "alert:acct:credit:low:low:2",
            "alert:acct:credit:depleted:low:1",
        ]
    );
}

#[test]
fn holds_reserve_partially_commit_from_held_credits_and_expire() {
    let mut run = Run::new();
    run.apply(&[&grant("g", "acct", T0, "10", "")]);
    // 30 gpu at 0.5 = 15 requested, 10 available: 10 reserved, 20 units affordable.
    let out = run.apply(&[r#"{"type":"reserve","id":"h1","account":"acct","ts":"2026-11-24T10:01:00Z","meter":"gpu","quantity":"30","ttl":"10m"}"#]);
    let result = &find(&out, "command.result")[0];
    assert_eq!(
        (
            &result["credits_requested"],
            &result["credits_reserved"],
            &result["quantity_reserved"]
        ),
        (
            &serde_json::json!("15"),
            &serde_json::json!("10"),
            &serde_json::json!("20")
        )
    );
    // Held credits are not spendable by other usage.
    let out = run.apply(&[&usage("u1", "acct", T1, "call", "1")]);
    assert_eq!(find(&out, "usage.rejected")[0]["available"], "0");
    // Commit 12 units = 6 credits; the other 4 come back.
    let out = run.apply(&[r#"{"type":"commit","id":"c1","account":"acct","ts":"2026-11-24T10:05:00Z","hold_id":"h1","quantity":"12"}"#]);
    let result = &find(&out, "command.result")[0];
    assert_eq!(
        (&result["credits_charged"], &result["credits_unpaid"]),
        (&serde_json::json!("6"), &serde_json::json!("0"))
    );
    assert_eq!(run.balance("acct"), "4");
    // A hold left open is released by its ttl.
    run.apply(&[r#"{"type":"reserve","id":"h2","account":"acct","ts":"2026-11-24T10:06:00Z","meter":"gpu","quantity":"2","ttl":"5m"}"#]);
    let out = run.apply(&[r#"{"type":"tick","id":"t","ts":"2026-11-24T10:20:00Z"}"#]);
    let expired = &find(&out, "hold.expired")[0];
    assert_eq!(
        (&expired["hold_id"], &expired["credits_released"]),
        (&serde_json::json!("h2"), &serde_json::json!("1"))
    );
    assert_eq!(run.state("acct")["holds"].as_array().unwrap().len(), 0);
}

#[test]
fn commit_under_reject_reports_what_it_could_not_charge() {
    let mut run = Run::new();
    run.apply(&[&grant("g", "acct", T0, "4", "")]);
    run.apply(&[r#"{"type":"reserve","id":"h","account":"acct","ts":"2026-11-24T10:01:00Z","meter":"gpu","quantity":"4","ttl":"10m"}"#]);
    let out = run.apply(&[r#"{"type":"commit","id":"c","account":"acct","ts":"2026-11-24T10:02:00Z","hold_id":"h","quantity":"10"}"#]);
    let result = &find(&out, "command.result")[0];
    assert_eq!(
        (&result["credits_charged"], &result["credits_unpaid"]),
        (&serde_json::json!("4"), &serde_json::json!("1"))
    );
    assert_eq!(run.balance("acct"), "0");
}

#[test]
fn reverse_returns_credits_to_live_grants_or_to_a_new_grant() {
    let mut run = Run::new();
    run.apply(&[
        &grant(
            "short",
            "acct",
            T0,
            "5",
            r#","priority":1,"expires_at":"2026-11-24T10:30:00Z","cost_basis":"0.1""#,
        ),
        &grant("long", "acct", T0, "10", ""),
    ]);
    run.apply(&[&usage("u1", "acct", T1, "call", "8")]); // 5 from short, 3 from long
    run.apply(&[r#"{"type":"tick","id":"t","ts":"2026-11-24T10:45:00Z"}"#]); // short expires empty
                                                                             // (Inside the 1h dedupe window; a charge stays reversible for reversal_window, 35d here.)
    let out = run.apply(&[r#"{"type":"reverse","id":"r1","account":"acct","ts":"2026-11-24T10:50:00Z","event_id":"u1"}"#]);
    assert_eq!(find(&out, "command.result")[0]["status"], "applied");
    let grants = run.remaining("acct");
    assert!(grants.contains(&("long".into(), "10".into())), "{grants:?}");
    assert!(
        grants.contains(&("reversal-u1-1".into(), "5".into())),
        "{grants:?}"
    );
    assert_eq!(run.balance("acct"), "15");
    let ledger = &run.state("acct")["balances"][0]["ledger"];
    assert_eq!(
        (&ledger["consumed"], &ledger["returned"]),
        (&serde_json::json!("8"), &serde_json::json!("8"))
    );
    // Twice is refused, and so is an unknown or a rejected event.
    let out = run.apply(&[r#"{"type":"reverse","id":"r2","account":"acct","ts":"2026-11-24T10:51:00Z","event_id":"u1"}"#]);
    assert_eq!(
        find(&out, "command.result")[0]["reason"],
        "already_reversed"
    );
    let out = run.apply(&[r#"{"type":"reverse","id":"r3","account":"acct","ts":"2026-11-24T10:51:00Z","event_id":"nope"}"#]);
    assert_eq!(find(&out, "command.result")[0]["reason"], "unknown_event");
}

#[test]
fn void_and_adjust_change_the_ledger_as_recorded_corrections() {
    let mut run = Run::new();
    run.apply(&[
        &grant("g", "acct", T0, "10", r#","cost_basis":"0.5""#),
        &grant("h", "acct", T0, "4", ""),
    ]);
    let out = run.apply(&[r#"{"type":"void_grant","id":"v","account":"acct","ts":"2026-11-24T10:01:00Z","grant_id":"g","reason":"chargeback"}"#]);
    assert_eq!(find(&out, "command.result")[0]["status"], "applied");
    run.apply(&[r#"{"type":"adjust","id":"a1","account":"acct","ts":"2026-11-24T10:02:00Z","amount":"2.5","reason":"goodwill"}"#]);
    let out = run.apply(&[r#"{"type":"adjust","id":"a2","account":"acct","ts":"2026-11-24T10:02:00Z","amount":"-100","reason":"correction"}"#]);
    // A negative adjustment never creates debt: it removes what is spendable (4 + 2.5).
    assert_eq!(find(&out, "command.result")[0]["applied"], "-6.5");
    let ledger = &run.state("acct")["balances"][0]["ledger"];
    assert_eq!(
        (&ledger["voided"], &ledger["adjusted"]),
        (&serde_json::json!("10"), &serde_json::json!("-4"))
    );
    assert_eq!(run.balance("acct"), "0");
}

#[test]
fn duplicates_inside_the_window_are_ignored_and_applied_again_after_it() {
    let mut run = Run::new();
    run.apply(&[&grant("g", "acct", T0, "10", "")]);
    run.apply(&[
        &usage("u", "acct", T1, "call", "1"),
        &usage("u", "acct", T1, "call", "1"),
    ]);
    assert_eq!(run.balance("acct"), "9");
    assert_eq!(run.engine.stats().duplicates, 1);
    // The window (1h) is judged by the tick clock against the event's ts.
    run.apply(&[r#"{"type":"tick","id":"t","ts":"2026-11-24T11:01:01Z"}"#]);
    run.apply(&[&usage("u", "acct", "2026-11-24T11:01:30Z", "call", "1")]);
    assert_eq!(run.balance("acct"), "8");
}

#[test]
fn bad_input_is_dead_lettered_with_its_reason_and_changes_nothing() {
    let mut run = Run::new();
    run.apply(&[&grant("g", "acct", T0, "10", "")]);
    let before = run.engine.state_view();
    let cases = [
        ("{not json", "malformed_json"),
        ("[1,2]", "malformed_json"),
        (
            r#"{"type":"refund","id":"x","account":"acct","ts":"2026-11-24T10:00:00Z"}"#,
            "unknown_type",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"call","quantity":"1","ts":"2026-11-24T10:00:00Z","colour":"red"}"#,
            "invalid_field",
        ),
        (
            r#"{"id":"x","account":"a c","meter":"call","quantity":"1","ts":"2026-11-24T10:00:00Z"}"#,
            "bad_account",
        ),
        (
            r#"{"id":"","account":"acct","meter":"call","quantity":"1","ts":"2026-11-24T10:00:00Z"}"#,
            "bad_id",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"call","quantity":"-1","ts":"2026-11-24T10:00:00Z"}"#,
            "bad_quantity",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"call","quantity":"1234567890123456789","ts":"2026-11-24T10:00:00Z"}"#,
            "bad_quantity",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"call","quantity":"1","ts":"yesterday"}"#,
            "bad_timestamp",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"call","ts":"2026-11-24T10:00:00Z"}"#,
            "missing_field",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"call","quantity":true,"ts":"2026-11-24T10:00:00Z"}"#,
            "invalid_field",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"fly","quantity":"1","ts":"2026-11-24T10:00:00Z"}"#,
            "unknown_meter",
        ),
        (
            r#"{"type":"set_plan","id":"x","account":"acct","ts":"2026-11-24T10:00:00Z","plan":"gold"}"#,
            "unknown_plan",
        ),
        (
            r#"{"type":"grant","id":"x","account":"acct","ts":"2026-11-24T10:00:00Z","amount":"1","credit_type":"gems"}"#,
            "unknown_credit_type",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"call","quantity":"1","ts":"2026-09-01T10:00:00Z"}"#,
            "ts_too_old",
        ),
        (
            r#"{"id":"x","account":"acct","meter":"call","quantity":"1","ts":"2025-11-24T10:00:00Z"}"#,
            "ts_too_old",
        ),
    ];
    for (payload, reason) in cases {
        let out = run.apply(&[payload]);
        assert_eq!(out.len(), 1, "{payload}: {out:?}");
        let dead = &find(&out, "dead_letter")[0];
        assert_eq!(dead["reason"], reason, "{payload}");
        assert_eq!(dead["payload"], payload);
        assert_eq!(run.engine.state_view(), before, "{payload} changed state");
    }
    // Every byte sequence gets a verdict, never a panic.
    for bytes in [&b"\xff\xfe"[..], b"", b"{}", b"null", b"{\"id\":1}"] {
        let out = Run::new().apply(&[std::str::from_utf8(bytes).unwrap_or("\u{fffd}")]);
        assert_eq!(find(&out, "dead_letter").len(), 1);
    }
}

#[test]
fn invoice_lines_are_flushed_cumulatively_and_finalized_at_period_close() {
    let mut run = Run::new();
    run.apply(&[&grant("g", "acct", T0, "100", "")]);
    run.apply(&[
        &usage("u1", "acct", T1, "call", "2"),
        &usage("u2", "acct", T2, "call", "3"),
    ]);
    let out = run.apply(&[r#"{"type":"tick","id":"t1","ts":"2026-11-24T11:00:00Z"}"#]);
    let line = &find(&out, "invoice.line")[0];
    assert_eq!(
        (&line["version"], &line["final"], &line["credits"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(false),
            &serde_json::json!("5")
        )
    );
    assert_eq!(line["id"], "line:acct:1:usage:call:credit:v1");
    // Unchanged lines are not re-emitted at the next boundary.
    let out = run.apply(&[r#"{"type":"tick","id":"t2","ts":"2026-11-24T12:00:00Z"}"#]);
    assert!(find(&out, "invoice.line").is_empty());
    run.apply(&[&usage("u3", "acct", "2026-11-24T12:30:00Z", "call", "1")]);
    let out = run.apply(&[r#"{"type":"tick","id":"t3","ts":"2026-11-25T00:00:00Z"}"#]);
    let lines = find(&out, "invoice.line");
    assert_eq!(lines.len(), 2, "the 13:00 flush and the close");
    // The flush at 13:00 happened on the way (v2); the close emits v3, final.
    let finals: Vec<_> = lines.iter().filter(|l| l["final"] == true).collect();
    assert_eq!(finals[0]["version"], 3);
    assert_eq!(finals[0]["credits"], "6");
}

#[test]
fn dead_letters_carry_the_account_and_ts_whenever_they_are_readable() {
    // SEMANTICS §14: `account` / `ts` are null only when unreadable, whichever check failed.
    // The checks stop at the first failure, so a bad `type` or `id` used to hide both.
    let mut run = Run::new();
    let cases = [
        (
            r#"{"type":5,"id":"x","account":"acct","ts":"2026-11-24T10:00:00Z"}"#,
            "unknown_type",
            "acct",
            "2026-11-24T10:00:00.000Z",
        ),
        (
            r#"{"id":"","account":"acct","meter":"call","quantity":"1","ts":"2026-11-24T10:00:00Z"}"#,
            "bad_id",
            "acct",
            "2026-11-24T10:00:00.000Z",
        ),
        (
            r#"{"id":"x","account":"a c","meter":"call","quantity":"1","ts":"2026-11-24T10:00:00Z"}"#,
            "bad_account",
            "",
            "2026-11-24T10:00:00.000Z",
        ),
    ];
    for (payload, reason, account, ts) in cases {
        let out = run.apply(&[payload]);
        let dead = &find(&out, "dead_letter")[0];
        assert_eq!(dead["reason"], reason, "{payload}");
        assert_eq!(dead["account"].as_str().unwrap_or(""), account, "{payload}");
        assert_eq!(dead["ts"], ts, "{payload}");
    }
    // An oversized payload is not read: neither is reported.
    let pad = "x".repeat(20_000);
    let big = format!(
        r#"{{"id":"x","account":"acct","meter":"call","quantity":"1","ts":"2026-11-24T10:00:00Z","dims":{{"p":"{pad}"}}}}"#
    );
    let out = run.apply(&[&big]);
    let dead = &find(&out, "dead_letter")[0];
    assert_eq!(dead["reason"], "payload_too_large");
    assert!(dead["account"].is_null() && dead["ts"].is_null());
}

#[test]
fn state_view_shows_the_policy_override_as_an_object() {
    // SEMANTICS §16: `policy_override` is the `set_policy` object (normalized), not a string
    // holding its JSON text.
    let mut run = Run::new();
    run.apply(&[
        r#"{"type":"set_policy","id":"p","account":"acct","ts":"2026-11-24T10:00:00Z","policy":{"kind":"overage","overage_limit":"12.50","overage_price":0.1}}"#,
    ]);
    let state = run.state("acct");
    assert_eq!(
        state["policy_override"],
        serde_json::json!({"kind": "overage", "overage_limit": "12.5", "overage_price": "0.1"})
    );
    run.apply(&[
        r#"{"type":"set_policy","id":"p2","account":"acct","ts":"2026-11-24T10:00:01Z","policy":null}"#,
    ]);
    assert!(run.state("acct")["policy_override"].is_null());
}

#[test]
fn an_expiry_not_after_the_effective_time_is_a_bad_timestamp() {
    // SEMANTICS §2.1 check 4: `bad_timestamp` covers `ts`, `effective_at` and `expires_at`
    // failing their rules, and "`expires_at` must be after `effective_at`" is one of them.
    let mut run = Run::new();
    for extra in [
        r#","expires_at":"2020-01-01T00:00:00Z""#,
        r#","expires_at":"2026-11-24T10:00:00Z""#,
        r#","effective_at":"2026-11-24T11:00:00Z","expires_at":"2026-11-24T10:30:00Z""#,
    ] {
        let out = run.apply(&[&grant("g", "acct", T0, "10", extra)]);
        let dead = &find(&out, "dead_letter")[0];
        assert_eq!(dead["reason"], "bad_timestamp", "{extra}");
    }
}

#[test]
fn a_tick_moves_only_the_clocks_of_accounts_with_something_due() {
    // SEMANTICS §3 and §16: a tick advances the accounts with a transition due at or before it;
    // the others keep their own clock. A flush that a message had already run left a stale
    // timer entry behind, and the next tick moved that account's clock with nothing due.
    let mut run = Run::new();
    run.apply(&[
        &grant("g", "acct", T0, "100", ""),
        // Booked at 10:00: the flush is due at 11:00 (a timer entry for 11:00).
        &usage("u1", "acct", "2026-11-24T10:30:00Z", "call", "1"),
        // Runs the 11:00 flush itself and books again: the next flush is due at 12:00.
        &usage("u2", "acct", "2026-11-24T11:30:00Z", "call", "1"),
    ]);
    assert_eq!(run.state("acct")["clock"], "2026-11-24T11:30:00.000Z");
    let out = run.apply(&[r#"{"type":"tick","id":"t1","ts":"2026-11-24T11:45:00Z"}"#]);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(run.state("acct")["clock"], "2026-11-24T11:30:00.000Z");
    // At 12:00 the flush is due: the tick advances the account.
    let out = run.apply(&[r#"{"type":"tick","id":"t2","ts":"2026-11-24T12:05:00Z"}"#]);
    assert_eq!(types(&out), ["invoice.line"]);
    assert_eq!(run.state("acct")["clock"], "2026-11-24T12:05:00.000Z");
}

#[test]
fn a_backdated_commit_still_draws_what_its_hold_reserved() {
    // SEMANTICS §8: a commit draws the grants its hold drew from first, up to what each held.
    // Credits reserved at 10:01 from a grant effective at 10:00 stay the commit's even when the
    // commit is backdated to 09:00. They were drawn, but not counted as available, so the whole
    // charge was reported unpaid (and under overage, put into debt).
    let mut run = Run::new();
    run.apply(&[
        &grant("g", "acct", T0, "10", ""),
        r#"{"type":"reserve","id":"r","account":"acct","ts":"2026-11-24T10:01:00Z","meter":"call","quantity":"4","ttl":"1h","hold_id":"h"}"#,
    ]);
    let out = run.apply(&[
        r#"{"type":"commit","id":"c","account":"acct","ts":"2026-11-24T09:00:00Z","hold_id":"h","quantity":"6"}"#,
    ]);
    let result = &find(&out, "command.result")[0];
    assert_eq!(result["status"], "applied");
    assert_eq!(result["credits_charged"], "4");
    assert_eq!(result["credits_unpaid"], "2");
    assert_eq!(run.balance("acct"), "6");
}

#[test]
fn reversing_an_event_cancels_its_own_overage_before_returning_its_credits() {
    // SEMANTICS §9. An event drew 5 credits from a grant that has since expired and put 3 into
    // debt. Its reversal must cancel that debt and return the 5 as a new grant. Returning the 5
    // first let the new grant repay the event's own debt: an `overage_repaid` line of −3
    // credits (−0.30 money) on top of the overage line falling by 3 (−0.30): the customer was
    // credited 0.30 never billed, and the repayment was recognised as revenue.
    let mut run = Run::new();
    run.apply(&[
        r#"{"type":"set_plan","id":"p","account":"acct","ts":"2026-11-24T10:00:00Z","plan":"soft"}"#,
        &grant(
            "g",
            "acct",
            T0,
            "5",
            r#","expires_at":"2026-11-24T10:30:00Z","cost_basis":"0.02""#,
        ),
        &usage("u", "acct", T1, "call", "8"),
        r#"{"type":"tick","id":"t1","ts":"2026-11-24T10:31:00Z"}"#,
    ]);
    assert_eq!(run.state("acct")["balances"][0]["debt"], "3");
    let out = run.apply(&[
        r#"{"type":"reverse","id":"rv","account":"acct","ts":"2026-11-24T10:40:00Z","event_id":"u"}"#,
        r#"{"type":"tick","id":"t2","ts":"2026-11-24T11:05:00Z"}"#,
    ]);
    let lines = find(&out, "invoice.line");
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["usage", "overage"], "{out:?}");
    assert_eq!(lines[1]["credits"], "0");
    assert_eq!(lines[1]["money"], "0");
    let state = run.state("acct");
    assert_eq!(state["balances"][0]["debt"], "0");
    assert_eq!(state["balances"][0]["balance"], "5");
    // The expired grant stays in state (empty) until the period closes.
    assert_eq!(
        run.remaining("acct"),
        [
            ("g".to_string(), "0".to_string()),
            ("reversal-u-1".to_string(), "5".to_string())
        ]
    );
}

#[test]
fn an_imported_rollover_grant_counts_as_granted_revenue() {
    // SEMANTICS §12: only the rollover grants the engine makes move deferred value (from the
    // expiring allowance); a `grant` command with source `rollover` (an operator's import)
    // brings new deferred value and counts as granted. Leaving it out broke the revenue
    // identity (a debug-build panic; wrong revenue.period figures in release).
    let mut run = Run::new();
    run.apply(&[&grant(
        "g",
        "acct",
        T0,
        "20",
        r#","source":"rollover","cost_basis":"0.02""#,
    )]);
    run.engine.check_invariants().expect("revenue identity");
    let out = run.apply(&[r#"{"type":"tick","id":"t","ts":"2026-11-25T00:00:00Z"}"#]);
    let revenue = &find(&out, "revenue.period")[0];
    assert_eq!(revenue["granted"], "0.4");
    assert_eq!(revenue["closing_deferred"], "0.4");
}

#[test]
fn a_subject_carries_only_its_kind_of_message() {
    // One partition: every account's subjects are creditflow.in.0.<kind>.
    let mut run = Run::new();
    let g = grant("g1", "a", "2026-11-24T10:00:00Z", "1000000", "");
    let u = usage("e1", "a", "2026-11-24T10:01:00Z", "call", "3");
    let tick = r#"{"type":"tick","id":"t1","ts":"2026-11-24T10:02:00Z"}"#;
    // A producer's grant on a usage subject, its tick too: dead letters, nothing else.
    for (line, subject) in [
        (g.as_str(), "creditflow.in.0.usage"),
        (tick, "creditflow.in.0.usage"),
        (u.as_str(), "creditflow.in.0.cmd"),
        (u.as_str(), "creditflow.in.0.tick"),
        (g.as_str(), "creditflow.in.0"),
        (g.as_str(), "creditflow.in.0.admin"),
    ] {
        let out = run.apply_on(subject, &[line]);
        assert_eq!(types(&out), ["dead_letter"], "{line} on {subject}");
        let dead = &find(&out, "dead_letter")[0];
        assert_eq!(
            dead["reason"], "not_allowed_on_subject",
            "{line} on {subject}"
        );
        assert_eq!(dead["subject"], subject);
        assert_eq!(dead["payload"], line);
    }
    assert!(run.engine.state_view().is_empty(), "no account was created");
    // A subject naming a partition the deployment does not have.
    let out = run.apply_on("creditflow.in.99.usage", &[u.as_str()]);
    let dead = &find(&out, "dead_letter")[0];
    assert_eq!(dead["reason"], "wrong_partition");
    assert_eq!(dead["subject"], "creditflow.in.99.usage");
    // Each on its own kind of subject is applied.
    let out = run.apply_on("creditflow.in.0.cmd", &[g.as_str()]);
    assert_eq!(types(&out), ["command.result"]);
    let out = run.apply_on("creditflow.in.0.usage", &[u.as_str()]);
    assert!(find(&out, "dead_letter").is_empty(), "{out:?}");
    assert_eq!(run.balance("a"), "999997");
    let out = run.apply_on("creditflow.in.0.tick", &[tick]);
    assert!(find(&out, "dead_letter").is_empty(), "{out:?}");
}

/// The last emitted version of each invoice line in `out`, as (kind, credits, money).
fn last_lines(out: &[String]) -> Vec<(String, String, String)> {
    let mut last: Vec<(String, String, String, String)> = Vec::new();
    for line in find(out, "invoice.line") {
        let id = line["line_id"].as_str().unwrap_or_default().to_string();
        let row = (
            id.clone(),
            line["kind"].as_str().unwrap_or_default().to_string(),
            line["credits"].as_str().unwrap_or_default().to_string(),
            line["money"].as_str().unwrap_or_default().to_string(),
        );
        match last.iter_mut().find(|l| l.0 == id) {
            Some(existing) => *existing = row,
            None => last.push(row),
        }
    }
    last.into_iter().map(|(_, k, c, m)| (k, c, m)).collect()
}

#[test]
fn reversing_an_event_whose_overage_a_grant_repaid_compensates_once() {
    // SEMANTICS §9. 3 credits go into overage (0.30 at 0.1 a credit); a grant of 10 repays the
    // debt (`overage_repaid` −3, −0.30) and keeps 7. Reversing the event must leave the
    // account as if it had never been charged: 10 credits, and an invoice whose usage,
    // overage and overage_repaid lines are all back to 0. Before, the overage line fell to 0,
    // the 3 credits came back too, and `overage_repaid` stayed at −0.30: the period netted
    // −0.30, the customer compensated twice.
    let mut run = Run::new();
    run.apply(&[
        r#"{"type":"set_plan","id":"p","account":"acct","ts":"2026-11-24T10:00:00Z","plan":"soft"}"#,
        &usage("u", "acct", "2026-11-24T10:05:00Z", "call", "3"),
    ]);
    assert_eq!(run.state("acct")["balances"][0]["debt"], "3");
    run.apply(&[&grant(
        "g",
        "acct",
        "2026-11-24T10:10:00Z",
        "10",
        r#","cost_basis":"0.02""#,
    )]);
    assert_eq!(run.balance("acct"), "7");
    run.apply(&[
        r#"{"type":"reverse","id":"rv","account":"acct","ts":"2026-11-24T10:20:00Z","event_id":"u"}"#,
    ]);
    run.engine
        .check_invariants()
        .expect("ledger and revenue identities");
    assert_eq!(run.balance("acct"), "10");
    let out = run.apply(&[r#"{"type":"tick","id":"t","ts":"2026-11-25T00:00:30Z"}"#]);
    let lines = last_lines(&out);
    let money = |kind: &str| {
        lines
            .iter()
            .find(|l| l.0 == kind)
            .map(|l| (l.1.clone(), l.2.clone()))
    };
    assert_eq!(money("usage"), Some(("0".into(), "0".into())), "{lines:?}");
    assert_eq!(
        money("overage"),
        Some(("0".into(), "0".into())),
        "{lines:?}"
    );
    assert_eq!(
        money("overage_repaid"),
        Some(("0".into(), "0".into())),
        "{lines:?}"
    );
    let total: creditflow::decimal::Revenue = lines
        .iter()
        .map(|l| l.2.parse::<creditflow::decimal::Revenue>().expect("money"))
        .fold(creditflow::decimal::Revenue::ZERO, |a, b| a + b);
    assert!(total.is_zero(), "the period nets {total}: {lines:?}");
}

/// The credits and money of the `reversal` line among the last invoice lines of `out`.
fn reversal_line(out: &[String]) -> (String, String) {
    let lines = last_lines(out);
    let reversal = lines
        .iter()
        .find(|l| l.0 == "reversal")
        .unwrap_or_else(|| panic!("a reversal line in {lines:?}"));
    (reversal.1.clone(), reversal.2.clone())
}

#[test]
fn reversing_a_closed_periods_event_credits_only_the_overage_that_was_invoiced() {
    // SEMANTICS §9. In the day of 11-24, 3 credits go into overage (0.30) and a grant of 2
    // repays 2 of them (−0.20); the close settles the last 1 (the day's invoice nets 0.10).
    // Reversed the next day: of its overage, the 1 invoiced is credited as money (a reversal
    // line of −0.10) and the 2 the grant repaid come back as credits: as if never charged
    // (the grant would still hold its 2 credits, the closed invoice would be 0).
    let mut run = Run::new();
    run.apply(&[
        r#"{"type":"set_plan","id":"p","account":"acct","ts":"2026-11-24T23:00:00Z","plan":"soft"}"#,
        &usage("u", "acct", "2026-11-24T23:30:00Z", "call", "3"),
        &grant("g", "acct", "2026-11-24T23:40:00Z", "2", r#","cost_basis":"0.02""#),
        r#"{"type":"tick","id":"t1","ts":"2026-11-25T00:00:30Z"}"#,
    ]);
    assert_eq!(run.balance("acct"), "0");
    run.apply(&[
        r#"{"type":"reverse","id":"rv","account":"acct","ts":"2026-11-25T00:10:00Z","event_id":"u"}"#,
    ]);
    run.engine
        .check_invariants()
        .expect("ledger and revenue identities");
    assert_eq!(run.balance("acct"), "2");
    let out = run.apply(&[r#"{"type":"tick","id":"t2","ts":"2026-11-26T00:00:30Z"}"#]);
    assert_eq!(reversal_line(&out), ("-3".into(), "-0.1".into()));
}

#[test]
fn a_dispute_after_the_dedupe_window_is_reversed_until_the_reversal_window_passes() {
    // SEMANTICS §9. dedupe_window 1h, reversal_window 35d (the default). On 11-24 the account
    // holds a grant of 10 (no expiry) and spends 3 (u1) and 2 (u2): balance 5.
    let mut run = Run::new();
    run.apply(&[
        &grant("g", "acct", T0, "10", r#","cost_basis":"0.02""#),
        &usage("u1", "acct", T1, "call", "3"),
        &usage("u2", "acct", T2, "call", "2"),
    ]);
    assert_eq!(run.balance("acct"), "5");
    // Ten days on, far past the dedupe window (the ids are forgotten: u1 again would be a new
    // event), u1 is disputed and reversed: its 3 credits go back to the grant that paid them.
    run.apply(&[r#"{"type":"tick","id":"t1","ts":"2026-12-04T10:00:00Z"}"#]);
    let out = run.apply(&[r#"{"type":"reverse","id":"r1","account":"acct","ts":"2026-12-04T10:05:00Z","event_id":"u1"}"#]);
    let result = &find(&out, "command.result")[0];
    assert_eq!(
        (&result["status"], &result["reason"]),
        (&serde_json::json!("applied"), &serde_json::Value::Null),
        "{out:?}"
    );
    assert_eq!(run.balance("acct"), "8");
    let grants = run.remaining("acct");
    assert!(grants.contains(&("g".into(), "8".into())), "{grants:?}");
    // The event was charged in a closed period: a reversal line credits it on this one's
    // invoice (3 credits, no money: it was paid from a grant).
    let out = run.apply(&[r#"{"type":"tick","id":"t2","ts":"2026-12-05T00:00:30Z"}"#]);
    assert_eq!(reversal_line(&out), ("-3".into(), "0".into()));
    // Once is all.
    let out = run.apply(&[r#"{"type":"reverse","id":"r2","account":"acct","ts":"2026-12-05T00:01:00Z","event_id":"u1"}"#]);
    assert_eq!(
        find(&out, "command.result")[0]["reason"],
        "already_reversed"
    );
    // 35 days after u2 the window has passed: without its ts that is indistinguishable from a
    // made-up id; with `event_ts` the refusal says so.
    run.apply(&[r#"{"type":"tick","id":"t3","ts":"2026-12-30T10:03:00Z"}"#]);
    let out = run.apply(&[
        r#"{"type":"reverse","id":"r3","account":"acct","ts":"2026-12-30T10:05:00Z","event_id":"u2"}"#,
        r#"{"type":"reverse","id":"r4","account":"acct","ts":"2026-12-30T10:05:00Z","event_id":"u2","event_ts":"2026-11-24T10:02:00Z"}"#,
        r#"{"type":"reverse","id":"r5","account":"acct","ts":"2026-12-30T10:05:00Z","event_id":"nope","event_ts":"2026-12-29T10:00:00Z"}"#,
    ]);
    let reasons: Vec<_> = find(&out, "command.result")
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        reasons,
        ["unknown_event", "reversal_window_passed", "unknown_event"],
        "{out:?}"
    );
    assert_eq!(run.balance("acct"), "8");
}

#[test]
fn alerts_judge_the_state_an_input_leaves_not_the_steps_inside_it() {
    // SEMANTICS §10.5. Plan `auto`: top up 20 when the balance falls under 5 (cooldown 1h).
    let mut run = Run::new();
    run.apply(&[
        r#"{"type":"set_plan","id":"p","account":"acct","ts":"2026-11-24T10:00:00Z","plan":"auto"}"#,
        &grant("g", "acct", "2026-11-24T10:00:00Z", "5", ""),
    ]);
    // 5 of 5 spent: the balance touches 0 and the top-up after the charge lifts it to 20, in
    // the same input: nothing to alert (it raised balance.depleted, then balance.recovered).
    let out = run.apply(&[&usage("u1", "acct", "2026-11-24T10:05:00Z", "call", "5")]);
    assert_eq!(types(&out), ["topup.granted"], "{out:?}");
    assert_eq!(run.balance("acct"), "20");
    // 20 spent inside the cooldown: no top-up, depleted at 0.
    let out = run.apply(&[&usage("u2", "acct", "2026-11-24T10:10:00Z", "call", "20")]);
    assert_eq!(types(&out), ["balance.depleted"], "{out:?}");
    // After the cooldown, 4 more: topped up to 20 before paying, then charged 4. The recovery
    // states the balance the input left (16), not the 20 between the top-up and the charge.
    let out = run.apply(&[&usage("u3", "acct", "2026-11-24T11:15:00Z", "call", "4")]);
    let alerts: Vec<String> = types(&out)
        .into_iter()
        .filter(|t| t != "invoice.line") // the 11:00 flush
        .collect();
    assert_eq!(alerts, ["topup.granted", "balance.recovered"], "{out:?}");
    assert_eq!(find(&out, "balance.recovered")[0]["balance"], "16");
    assert_eq!(run.balance("acct"), "16");
}

#[test]
fn many_grants_keep_ids_unique_and_burn_order_exact() {
    // 80 grants (past the size where their ids are looked up in a set, and where a charge's
    // claims and draws are searched through an index): priorities scrambled, so burn order is
    // by priority, not by arrival.
    let mut run = Run::new();
    let priority_of = |i: usize| (i * 37) % 80; // a permutation of 0..80
    let grants: Vec<String> = (0..80)
        .map(|i| {
            grant(
                &format!("g{i:02}"),
                "acct",
                T0,
                "1",
                &format!(r#","priority":{}"#, priority_of(i)),
            )
        })
        .collect();
    let refs: Vec<&str> = grants.iter().map(String::as_str).collect();
    run.apply(&refs);
    let result_of = |out: &[String]| {
        let result = find(out, "command.result").remove(0);
        (
            result["status"].as_str().unwrap().to_string(),
            result["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    // A command id of its own, the grant's id repeated (the same command id would be a
    // duplicate message, dropped before the grant is looked at).
    let again = |id: &str, ts: &str| {
        grant(
            &format!("again-{id}"),
            "acct",
            ts,
            "1",
            &format!(r#","grant_id":"{id}""#),
        )
    };
    for id in ["g05", "g79", "g00"] {
        let out = run.apply(&[&again(id, T1)]);
        assert_eq!(
            result_of(&out),
            ("rejected".to_string(), "grant_exists".to_string()),
            "{id}"
        );
    }
    let out = run.apply(&[&grant("g80", "acct", T1, "1", r#","priority":80"#)]);
    assert_eq!(result_of(&out).0, "applied");
    // 30 calls at 1 credit draw the 30 lowest priorities, one credit each.
    run.apply(&[&usage("u1", "acct", T1, "call", "30")]);
    // A hold on the next 20 (claims on 20 grants), committed in full: exactly those drawn.
    run.apply(&[
        r#"{"type":"reserve","id":"r","account":"acct","ts":"2026-11-24T10:02:00Z","meter":"call","quantity":"20","ttl":"1h","hold_id":"h"}"#,
        r#"{"type":"commit","id":"c","account":"acct","ts":"2026-11-24T10:03:00Z","hold_id":"h","quantity":"20"}"#,
    ]);
    let remaining: std::collections::BTreeMap<String, String> =
        run.remaining("acct").into_iter().collect();
    for i in 0..80 {
        let expected = if priority_of(i) < 50 { "0" } else { "1" };
        assert_eq!(remaining[&format!("g{i:02}")], expected, "g{i:02}");
    }
    assert_eq!(run.balance("acct"), "31");
    // The period closes (plan basic: daily): the 50 empty grants leave the account, and their
    // ids may be granted again; the others still may not.
    run.apply(&[r#"{"type":"tick","id":"t","ts":"2026-11-25T00:00:01Z"}"#]);
    let empty = (0..80).find(|&i| priority_of(i) < 50).unwrap();
    let kept = (0..80).find(|&i| priority_of(i) >= 50).unwrap();
    let out = run.apply(&[&again(&format!("g{empty:02}"), "2026-11-25T00:01:00Z")]);
    assert_eq!(result_of(&out).0, "applied");
    let out = run.apply(&[&again(&format!("g{kept:02}"), "2026-11-25T00:01:00Z")]);
    assert_eq!(
        result_of(&out),
        ("rejected".to_string(), "grant_exists".to_string())
    );
}

/// SEMANTICS §5.6 and §10.5, by hand: a 1 h window, a plan alerting when the balance would run
/// out within 2 h at its burn rate.
#[test]
fn runway_follows_the_burn_rate_and_alerts_once_per_crossing() {
    let catalog = CATALOG.replace(
        "[[plans]]\nname = \"soft\"",
        "[[plans]]\nname = \"runway\"\nperiod = \"day\"\nrunway_alert = \"2h\"\n  [plans.policy]\n  kind = \"reject\"\n[[plans]]\nname = \"soft\"",
    );
    let mut run = Run::with_catalog(&catalog);
    let set_plan =
        r#"{"type":"set_plan","id":"p","account":"r","ts":"2026-11-24T10:00:00Z","plan":"runway"}"#;
    run.apply(&[
        set_plan,
        &grant("g1", "r", "2026-11-24T10:00:00Z", "100", ""),
    ]);
    // 10 calls at 10:00: 10 burned in the window, 90 left: 9 h of runway.
    let out = run.apply(&[&usage("u1", "r", "2026-11-24T10:00:00Z", "call", "10")]);
    assert!(find(&out, "balance.runway_low").is_empty());
    let runway = &run.state("r")["balances"][0]["runway"];
    assert_eq!(runway["window"], "1h");
    assert_eq!(runway["burned"], "10");
    assert_eq!(runway["runs_out_at"], "2026-11-24T19:00:00.000Z");
    // 40 more at 10:30: 50 per hour, 50 left: out at 11:30, within 2 h.
    let out = run.apply(&[&usage("u2", "r", "2026-11-24T10:30:00Z", "call", "40")]);
    let low = find(&out, "balance.runway_low");
    assert_eq!(low.len(), 1, "{out:?}");
    assert_eq!(low[0]["id"], "alert:r:credit:runway:low:1");
    assert_eq!(low[0]["ts"], "2026-11-24T10:30:00.000Z");
    assert_eq!(low[0]["threshold"], "runway");
    assert_eq!(low[0]["runway_alert"], "2h");
    assert_eq!(low[0]["burned"], "50");
    assert_eq!(low[0]["runs_out_at"], "2026-11-24T11:30:00.000Z");
    assert_eq!(low[0]["balance"], "50");
    // 1 at 11:15 (the next window): 1 + 50 × 45/60 = 38.5 per hour, 49 left: still low,
    // nothing new.
    let out = run.apply(&[&usage("u3", "r", "2026-11-24T11:15:00Z", "call", "1")]);
    assert!(find(&out, "balance.runway_low").is_empty());
    assert_eq!(run.state("r")["balances"][0]["runway"]["burned"], "38.5");
    // 200 granted at 11:20: 1 + 50 × 40/60 = 34.333333333 per hour (floored), 249 left:
    // 249 / 34.333333333 h = 26,108,737 ms, past 2 h: recovered.
    let out = run.apply(&[&grant("g2", "r", "2026-11-24T11:20:00Z", "200", "")]);
    let recovered = find(&out, "balance.recovered");
    assert_eq!(recovered.len(), 1, "{out:?}");
    assert_eq!(recovered[0]["threshold"], "runway");
    assert_eq!(recovered[0]["id"], "alert:r:credit:runway:recovered:1");
    let runway = &run.state("r")["balances"][0]["runway"];
    assert_eq!(runway["burned"], "34.333333333");
    assert_eq!(runway["runs_out_at"], "2026-11-24T18:35:08.737Z");
    // Two windows without usage: nothing burns, no runway figure.
    run.apply(&[r#"{"type":"tick","id":"t","ts":"2026-11-24T13:00:00Z"}"#]);
    assert_eq!(
        run.state("r")["balances"][0]["runway"]["runs_out_at"],
        serde_json::Value::Null
    );
}

#[test]
fn runway_settings_are_checked_all_at_once() {
    let bad = CATALOG
        .replace("future_max = \"5m\"", "future_max = \"5m\"\nrunway_window = \"30s\"")
        .replace(
            "[[plans]]\nname = \"soft\"\nperiod = \"day\"",
            "[[plans]]\nname = \"soft\"\nperiod = \"day\"\nrunway_alert = \"0s\"\n  [[plans.alerts]]\n  name = \"runway\"\n  amount = \"1\"",
        );
    let errors = creditflow::catalog::load::from_str(&bad)
        .expect_err("refused")
        .to_string();
    for expected in [
        "rules.runway_window: must be between 1m and 31d",
        "plans[1].runway_alert: must be > 0 (omit it to disable)",
        "plans[1].alerts[0].name: \"runway\" is the built-in alert",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}
