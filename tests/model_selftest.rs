//! Hand-computed scenarios for the reference model (`tests/model/`): every expected number
//! below was worked out from SEMANTICS.md, not read off the
//! model. A few outputs are asserted as full JSON strings to pin the wire format.

mod model;

use model::time::{format_ts, parse_ts, period_containing};
use model::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A small catalog for hand computation: one credit type at 2 decimals, daily UTC plans.
/// - `basic`: free, no allowance, `reject`, no alerts;
/// - `pro`: price 10, allowance 100 (priority 10, rollover cap 30), `reject`, alert `low` at 50,
///   expiry warnings 3 h ahead;
/// - `over`: `overage` up to 20 credits at 0.5 money per credit;
/// - `auto`: auto top-up of 50 at 0.02 below 10, at most 2 per period, cooldown 1 h, falling back
///   to overage up to 5 at 0.1.
fn catalog(default_plan: &str) -> ModelCatalog {
    let from = parse_ts("2020-01-01T00:00:00Z").unwrap();
    let version = |rate: &str, increment: Option<&str>, minimum: Option<&str>| PriceVersion {
        effective_from_ms: from,
        rate: dec(rate),
        increment: increment.map(dec),
        minimum: minimum.map(dec),
    };
    let plan = |name: &str, price: &str, policy: Policy| Plan {
        name: name.into(),
        period: Period::Day,
        price: dec(price),
        allowances: vec![],
        policy,
        alerts: vec![],
        expiring_lead_ms: None,
        runway_alert_ms: None,
    };
    let mut pro = plan("pro", "10", Policy::Reject);
    pro.allowances = vec![Allowance {
        credit_type: "credit".into(),
        amount: dec("100"),
        priority: 10,
        scope: None,
        rollover_cap: dec("30"),
    }];
    pro.alerts = vec![Alert {
        credit_type: "credit".into(),
        name: "low".into(),
        threshold: Threshold::Amount(dec("50")),
    }];
    pro.expiring_lead_ms = Some(3 * 3_600_000);
    ModelCatalog {
        default_plan: default_plan.into(),
        currency: Currency {
            code: "USD".into(),
            scale: 2,
            rounding: Rounding::HalfUp,
        },
        // A day of future_max lets hand-written logs skip ticks between messages of one account.
        rules: Rules {
            payload_max: 4_096,
            future_max_ms: 86_400_000,
            grants_per_account_max: 6,
            holds_per_account_max: 2,
            ..Rules::default()
        },
        credit_types: vec![CreditType {
            name: "credit".into(),
            scale: 2,
        }],
        meters: vec![
            Meter {
                name: "api_call".into(),
                credit_type: "credit".into(),
                rounding: Rounding::HalfEven,
                versions: vec![version("1", None, None)],
            },
            Meter {
                name: "gpu_second".into(),
                credit_type: "credit".into(),
                rounding: Rounding::Up,
                versions: vec![version("0.01", Some("60"), Some("0.5"))],
            },
            Meter {
                name: "late".into(),
                credit_type: "credit".into(),
                rounding: Rounding::HalfEven,
                versions: vec![PriceVersion {
                    effective_from_ms: parse_ts("2026-12-01T00:00:00Z").unwrap(),
                    ..version("1", None, None)
                }],
            },
        ],
        plans: vec![
            plan("basic", "0", Policy::Reject),
            pro,
            plan(
                "over",
                "0",
                Policy::Overage {
                    limit: dec("20"),
                    price: dec("0.5"),
                },
            ),
            plan(
                "auto",
                "0",
                Policy::AutoTopup(TopupRule {
                    credit_type: "credit".into(),
                    threshold: dec("10"),
                    amount: TopupAmount::Fixed(dec("50")),
                    price: dec("0.02"),
                    max_per_period: 2,
                    cooldown_ms: 3_600_000,
                    priority: 50,
                    fallback: Fallback::Overage {
                        limit: dec("5"),
                        price: dec("0.1"),
                    },
                }),
            ),
        ],
    }
}

/// Drives a model, numbering inputs 1, 2, … and checking the invariants after every one.
struct Run {
    model: Model,
    seq: u64,
}

impl Run {
    fn new(default_plan: &str) -> Run {
        Run::with(catalog(default_plan))
    }

    fn with(catalog: ModelCatalog) -> Run {
        Run {
            model: Model::new(catalog),
            seq: 0,
        }
    }

    fn raw(&mut self, payload: &[u8]) -> Vec<String> {
        self.seq += 1;
        let out = self.model.apply(payload, self.seq);
        if let Err(problem) = self.model.check_invariants() {
            panic!("after input {}: {problem}", self.seq);
        }
        out
    }

    fn send(&mut self, message: Value) -> Vec<String> {
        self.raw(message.to_string().as_bytes())
    }

    fn state(&self, account: &str) -> Value {
        self.model
            .state()
            .iter()
            .map(|s| serde_json::from_str::<Value>(s).unwrap())
            .find(|s| s["account"] == account)
            .unwrap_or_else(|| panic!("no account {account}"))
    }

    fn balance(&self, account: &str) -> Value {
        self.state(account)["balances"][0].clone()
    }
}

fn ts(hms: &str) -> String {
    format!("2026-11-24T{hms}Z")
}

fn usage(id: &str, account: &str, at: &str, meter: &str, quantity: &str) -> Value {
    json!({"id": id, "account": account, "ts": at, "meter": meter, "quantity": quantity})
}

fn grant(id: &str, account: &str, at: &str, amount: &str) -> Value {
    json!({"type": "grant", "id": id, "account": account, "ts": at, "amount": amount})
}

fn with(mut message: Value, key: &str, value: Value) -> Value {
    message[key] = value;
    message
}

fn tick(id: &str, at: &str) -> Value {
    json!({"type": "tick", "id": id, "ts": at})
}

fn parsed(outputs: &[String]) -> Vec<Value> {
    outputs
        .iter()
        .map(|o| serde_json::from_str(o).unwrap())
        .collect()
}

/// `type`, or `type/reason` when the output has a non-null reason.
fn kinds(outputs: &[String]) -> Vec<String> {
    parsed(outputs)
        .iter()
        .map(|o| match o.get("reason").and_then(Value::as_str) {
            Some(reason) => format!("{}/{reason}", o["type"].as_str().unwrap()),
            None => o["type"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn grant_ids(state: &Value) -> Vec<String> {
    state["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["grant_id"].as_str().unwrap().to_string())
        .collect()
}

fn remaining(state: &Value) -> Vec<String> {
    state["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["remaining"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Burn order, policies
// ---------------------------------------------------------------------------------------------

#[test]
fn burn_order_across_grants() {
    let mut run = Run::new("basic");
    let t = ts("10:00:00");
    run.send(with(
        grant("g1", "a", &t, "10"),
        "cost_basis",
        json!("0.01"),
    ));
    run.send(with(
        grant("g2", "a", &t, "10"),
        "expires_at",
        json!("2026-11-24T20:00:00Z"),
    ));
    run.send(with(grant("g3", "a", &t, "10"), "priority", json!(50)));
    run.send(grant("g4", "a", &t, "10"));
    // Same priority, expiry, basis and grant time as g4: the id decides, by bytes ("g10" < "g4").
    run.send(grant("g10", "a", &t, "10"));
    let state = run.state("a");
    assert_eq!(grant_ids(&state), ["g3", "g2", "g10", "g4", "g1"]);
    let out = run.send(usage("u1", "a", &ts("10:01:00"), "api_call", "25"));
    assert!(out.is_empty(), "{out:?}");
    let state = run.state("a");
    assert_eq!(remaining(&state), ["0", "0", "5", "10", "10"]);
    let balance = &state["balances"][0];
    assert_eq!(balance["balance"], "25");
    assert_eq!(balance["ledger"]["granted"], "50");
    assert_eq!(balance["ledger"]["consumed"], "25");
}

#[test]
fn reject_policy_refuses_the_whole_charge() {
    let mut run = Run::new("basic");
    let out = run.send(grant("r-g", "r", &ts("10:00:00"), "5"));
    assert_eq!(
        out,
        [
            r#"{"type":"command.result","id":"result:r:r-g:1","account":"r","seq":1,"ts":"2026-11-24T10:00:00.000Z","command":"grant","command_id":"r-g","status":"applied","reason":null,"grant_id":"r-g"}"#
        ]
    );
    let out = run.send(usage("r-u", "r", &ts("10:01:00"), "api_call", "7"));
    assert_eq!(
        out,
        [
            r#"{"type":"usage.rejected","id":"rejected:r:r-u:2","account":"r","seq":2,"ts":"2026-11-24T10:01:00.000Z","event_id":"r-u","meter":"api_call","quantity":"7","credit_type":"credit","needed":"7","available":"5","reason":"insufficient_credits"}"#
        ]
    );
    assert_eq!(run.balance("r")["balance"], "5");
    assert_eq!(run.balance("r")["ledger"]["consumed"], "0");
    // A retried rejected event is a duplicate, not a second attempt.
    run.send(grant("r-g2", "r", &ts("10:02:00"), "10"));
    assert!(run
        .send(usage("r-u", "r", &ts("10:01:00"), "api_call", "7"))
        .is_empty());
    assert_eq!(run.balance("r")["balance"], "15");
}

#[test]
fn overage_policy_goes_into_debt_up_to_the_limit() {
    let mut run = Run::new("over");
    run.send(grant("og", "o", &ts("10:00:00"), "5"));
    let out = run.send(usage("o1", "o", &ts("10:01:00"), "api_call", "15"));
    assert_eq!(kinds(&out), ["balance.depleted"]);
    assert_eq!(run.balance("o")["debt"], "10");
    let out = run.send(usage("o2", "o", &ts("10:02:00"), "api_call", "12"));
    let rejected = &parsed(&out)[0];
    assert_eq!(rejected["reason"], "overage_limit");
    assert_eq!(rejected["needed"], "12");
    // S + limit − debt = 0 + 20 − 10.
    assert_eq!(rejected["available"], "10");
    assert!(run
        .send(usage("o3", "o", &ts("10:03:00"), "api_call", "10"))
        .is_empty());
    let balance = run.balance("o");
    assert_eq!(balance["balance"], "-20");
    assert_eq!(balance["debt"], "20");
    assert_eq!(balance["ledger"]["consumed"], "25");
}

#[test]
fn auto_topup_cooldown_cap_and_fallback() {
    let mut run = Run::new("auto");
    // Nothing to spend: top up first (topup-u1), then pay 3.
    let out = run.send(usage("u1", "t", &ts("10:00:00"), "api_call", "3"));
    assert_eq!(
        out,
        [
            r#"{"type":"topup.granted","id":"topup:t:topup-u1:1","account":"t","seq":1,"ts":"2026-11-24T10:00:00.000Z","grant_id":"topup-u1","credit_type":"credit","credits":"50","price":"0.02","money":"1"}"#
        ]
    );
    // Balance 47 → 2: below the threshold, but the cooldown (until 11:00) forbids a top-up.
    assert!(run
        .send(usage("u2", "t", &ts("10:10:00"), "api_call", "45"))
        .is_empty());
    // 6 > 2 spendable, still cooling down: the overage fallback takes 4 into debt (limit 5).
    let out = run.send(usage("u3", "t", &ts("10:20:00"), "api_call", "6"));
    assert_eq!(kinds(&out), ["balance.depleted"]);
    assert_eq!(run.balance("t")["debt"], "4");
    // After the cooldown: the 11:00 flush (lines in §11 order), then the second top-up pays
    // the debt of 4 first (alerts right after it: recovered), then 1 is charged.
    let out = run.send(usage("u4", "t", &ts("11:05:00"), "api_call", "1"));
    assert_eq!(
        kinds(&out),
        [
            "invoice.line",
            "invoice.line",
            "invoice.line",
            "topup.granted",
            "balance.recovered"
        ]
    );
    let lines = parsed(&out);
    assert_eq!(lines[0]["kind"], "usage");
    assert_eq!(lines[0]["quantity"], "54");
    assert_eq!(lines[1]["kind"], "overage");
    assert_eq!(lines[1]["credits"], "4");
    assert_eq!(lines[1]["money"], "0.4");
    assert_eq!(lines[2]["kind"], "topup");
    assert_eq!(lines[2]["credits"], "50");
    assert_eq!(lines[2]["money"], "1");
    assert_eq!(lines[3]["grant_id"], "topup-u4");
    assert_eq!(run.balance("t")["balance"], "45");
    assert_eq!(run.balance("t")["debt"], "0");
    // 45 → 1; the cap (2 per period) is reached, so no top-up after paying.
    let out = run.send(usage("u5", "t", &ts("12:10:00"), "api_call", "44"));
    let lines = parsed(&out);
    let flushed: Vec<(&str, i64)> = lines
        .iter()
        .map(|l| (l["kind"].as_str().unwrap(), l["version"].as_i64().unwrap()))
        .collect();
    assert_eq!(flushed, [("usage", 2), ("overage_repaid", 1), ("topup", 2)]);
    assert_eq!(lines[1]["credits"], "-4");
    assert_eq!(lines[1]["money"], "-0.4");
    // Cap reached: fall back to overage (1 drawn, 2 into debt), then beyond the limit
    // (available = S + max(0, limit − debt) = 0 + 5 − 2).
    let out = run.send(usage("u6", "t", &ts("12:20:00"), "api_call", "3"));
    assert_eq!(parsed(&out)[0]["id"], "alert:t:credit:depleted:low:2");
    let out = run.send(usage("u7", "t", &ts("12:30:00"), "api_call", "4"));
    let rejected = &parsed(&out)[0];
    assert_eq!(rejected["reason"], "overage_limit");
    assert_eq!(rejected["available"], "3");
    let balance = run.balance("t");
    assert_eq!(balance["balance"], "-2");
    assert_eq!(balance["ledger"]["granted"], "100");
    assert_eq!(balance["ledger"]["consumed"], "102");
}

#[test]
fn two_topups_in_one_input_without_cooldown() {
    let mut run = Run::new("auto");
    let policy = json!({"kind": "auto_topup", "credit_type": "credit", "threshold": "10",
        "amount": 20, "price": "0.010", "max_per_period": 5, "cooldown": "0", "priority": 60,
        "fallback": "reject"});
    run.send(
        json!({"type": "set_policy", "id": "p", "account": "tt", "ts": ts("10:00:00"),
        "policy": policy}),
    );
    assert_eq!(
        run.state("tt")["policy_override"].to_string(),
        r#"{"amount":"20","cooldown":"0","credit_type":"credit","fallback":"reject","kind":"auto_topup","max_per_period":5,"price":"0.01","priority":60,"threshold":"10"}"#
    );
    let state_text = run.model.state()[0].clone();
    assert!(state_text.contains(r#""policy_override":{"kind":"auto_topup","credit_type":"credit","threshold":"10","amount":"20","price":"0.01","max_per_period":5,"cooldown":"0","priority":60,"fallback":"reject"}"#), "{state_text}");
    // 15 > 0: top up 20 and pay; 5 < 10 and a top-up is still allowed: top up again.
    let out = run.send(usage("tt-u", "tt", &ts("10:01:00"), "api_call", "15"));
    let ids: Vec<String> = parsed(&out)
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    // Grant serials 1 and 2 (the account has no allowance).
    assert_eq!(ids, ["topup:tt:topup-tt-u:1", "topup:tt:topup-tt-u-2:2"]);
    assert_eq!(run.balance("tt")["balance"], "25");
    // Rejected under the reject fallback once the top-up cannot cover the charge.
    let out = run.send(usage("tt-big", "tt", &ts("10:02:00"), "api_call", "100"));
    assert_eq!(
        kinds(&out),
        ["topup.granted", "usage.rejected/insufficient_credits"]
    );
    assert_eq!(parsed(&out)[1]["available"], "45");
}

#[test]
fn debt_is_repaid_by_the_next_grants() {
    let mut run = Run::new("over");
    run.send(usage("d-u1", "d", &ts("10:00:00"), "api_call", "8"));
    let out = run.send(with(
        grant("d-g1", "d", &ts("10:10:00"), "5"),
        "cost_basis",
        json!("0.1"),
    ));
    assert_eq!(kinds(&out), ["command.result"]);
    assert_eq!(run.balance("d")["debt"], "3");
    let out = run.send(grant("d-g2", "d", &ts("10:20:00"), "10"));
    // The result is the command's last output (§9), after its alerts.
    assert_eq!(kinds(&out), ["balance.recovered", "command.result"]);
    let state = run.state("d");
    assert_eq!(grant_ids(&state), ["d-g2", "d-g1"]);
    assert_eq!(remaining(&state), ["7", "0"]);
    assert_eq!(state["grants"][1]["amount"], "5");
    let out = run.send(tick("t1", &ts("11:00:00")));
    let lines = parsed(&out);
    let summary: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap(),
                l["credits"].as_str().unwrap(),
                l["money"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("usage", "8", "0"),
            ("overage", "8", "4"),
            ("overage_repaid", "-8", "-4")
        ]
    );
    let out = run.send(tick("t2", "2026-11-25T00:00:00Z"));
    let revenue = out.iter().find(|o| o.contains("revenue.period")).unwrap();
    assert_eq!(
        revenue,
        r#"{"type":"revenue.period","id":"revenue:d:1:credit","account":"d","seq":5,"ts":"2026-11-25T00:00:00.000Z","period_start":"2026-11-24T00:00:00.000Z","period_end":"2026-11-25T00:00:00.000Z","credit_type":"credit","opening_deferred":"0","granted":"0.5","recognized":"0.5","breakage":"0","removed":"0","closing_deferred":"0","lots":[{"grant_id":"d-g2","cost_basis":"0","recognized_credits":"3","recognized":"0","breakage_credits":"0","breakage":"0"},{"grant_id":"d-g1","cost_basis":"0.1","recognized_credits":"5","recognized":"0.5","breakage_credits":"0","breakage":"0"}]}"#
    );
    // The emptied paid grant is pruned at the close.
    assert_eq!(grant_ids(&run.state("d")), ["d-g2"]);
}

#[test]
fn debt_left_at_period_end_is_settled() {
    let mut run = Run::new("over");
    run.send(usage("s-u", "s", &ts("10:00:00"), "api_call", "6"));
    run.send(tick("t", "2026-11-25T00:00:00Z"));
    let balance = run.balance("s");
    assert_eq!(balance["debt"], "0");
    assert_eq!(balance["balance"], "0");
    assert_eq!(balance["ledger"]["settled"], "6");
}

// ---------------------------------------------------------------------------------------------
// Expiry, rollover, alerts
// ---------------------------------------------------------------------------------------------

#[test]
fn expiry_books_breakage() {
    let mut run = Run::new("basic");
    let g = with(
        grant("e-g", "e", &ts("10:00:00"), "10"),
        "expires_at",
        json!("2026-11-24T12:00:00Z"),
    );
    run.send(with(g, "cost_basis", json!("0.02")));
    run.send(usage("e-u", "e", &ts("10:30:00"), "api_call", "4"));
    let out = run.send(tick("t", &ts("12:00:00")));
    assert_eq!(
        kinds(&out),
        ["invoice.line", "grant.expired", "balance.depleted"]
    );
    assert_eq!(
        out[1],
        r#"{"type":"grant.expired","id":"expired:e:e-g:1","account":"e","seq":3,"ts":"2026-11-24T12:00:00.000Z","grant_id":"e-g","credit_type":"credit","credits":"6","breakage":"0.12"}"#
    );
    let state = run.state("e");
    assert_eq!(state["grants"][0]["status"], "expired");
    assert_eq!(state["balances"][0]["ledger"]["expired"], "6");
    assert_eq!(state["clock"], "2026-11-24T12:00:00.000Z");
}

#[test]
fn allowance_rolls_over_up_to_the_cap_at_the_day_boundary() {
    let mut run = Run::new("pro");
    let day1 = 1_795_478_400_000i64;
    let day2 = 1_795_564_800_000i64;
    let day3 = 1_795_651_200_000i64;
    let out = run.send(usage("ro-u", "ro", &ts("10:00:00"), "api_call", "60"));
    assert_eq!(kinds(&out), ["balance.low"]);
    let out = run.send(tick("t1", "2026-11-25T00:00:00Z"));
    // The 11:00 flush (usage, allowance, plan fee, in §11 order), the warning at 21:00, the
    // expiry at midnight, then the close: every line final. No revenue.period: every figure is
    // 0 (cost basis 0).
    assert_eq!(
        kinds(&out),
        [
            "invoice.line",
            "invoice.line",
            "invoice.line",
            "grant.expiring",
            "grant.expired",
            "invoice.line",
            "invoice.line",
            "invoice.line",
            "balance.recovered"
        ]
    );
    let o = parsed(&out);
    let first = format!("allowance-{day1}-1");
    assert_eq!(o[0]["kind"], "usage");
    assert_eq!(o[1]["kind"], "allowance");
    assert_eq!(o[2]["kind"], "plan_fee");
    assert_eq!(o[3]["ts"], "2026-11-24T21:00:00.000Z");
    assert_eq!(o[3]["grant_id"], first.as_str());
    assert_eq!(o[3]["id"], format!("expiring:ro:{first}:1"));
    assert_eq!(o[3]["remaining"], "40");
    // 40 remaining: 30 roll over, 10 expire.
    assert_eq!(o[4]["credits"], "10");
    assert_eq!(o[6]["final"], true);
    assert_eq!(o[6]["kind"], "allowance");
    assert_eq!(o[6]["credits"], "100");
    assert_eq!(o[6]["money"], "0");
    assert_eq!(o[7]["kind"], "plan_fee");
    assert_eq!(o[7]["credits"], "0");
    assert_eq!(o[7]["money"], "10");
    assert_eq!(o[7]["id"], "line:ro:1:plan_fee:-:credit:v2");
    assert_eq!(o[8]["balance"], "130");
    let state = run.state("ro");
    assert_eq!(
        grant_ids(&state),
        [format!("allowance-{day2}-1"), format!("rollover-{first}")]
    );
    let rollover = &state["grants"][1];
    assert_eq!(rollover["source"], "rollover");
    assert_eq!(rollover["amount"], "30");
    assert_eq!(rollover["priority"], 10);
    assert_eq!(rollover["expires_at"], "2026-11-26T00:00:00.000Z");
    assert_eq!(state["period_start"], "2026-11-25T00:00:00.000Z");
    // Next boundary: the allowance rolls 30 again, the rollover grant itself does not.
    let out = run.send(tick("t2", "2026-11-26T00:00:00Z"));
    let expired: Vec<(String, String)> = parsed(&out)
        .iter()
        .filter(|o| o["type"] == "grant.expired")
        .map(|o| {
            (
                o["grant_id"].as_str().unwrap().to_string(),
                o["credits"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        expired,
        [
            (format!("allowance-{day2}-1"), "70".to_string()),
            (format!("rollover-{first}"), "30".to_string())
        ]
    );
    let state = run.state("ro");
    assert_eq!(
        grant_ids(&state),
        [
            format!("allowance-{day3}-1"),
            format!("rollover-allowance-{day2}-1")
        ]
    );
    assert_eq!(state["balances"][0]["ledger"]["expired"], "110");
    assert_eq!(state["balances"][0]["balance"], "130");
}

#[test]
fn alerts_fire_once_per_crossing() {
    let mut run = Run::new("pro");
    let out = run.send(usage("al-u1", "al", &ts("10:00:00"), "api_call", "60"));
    assert_eq!(parsed(&out)[0]["id"], "alert:al:credit:low:low:1");
    let out = run.send(grant("al-g", "al", &ts("10:05:00"), "20"));
    assert_eq!(
        out[0],
        r#"{"type":"balance.recovered","id":"alert:al:credit:low:recovered:1","account":"al","seq":2,"ts":"2026-11-24T10:05:00.000Z","credit_type":"credit","threshold":"low","balance":"60"}"#
    );
    let out = run.send(usage("al-u2", "al", &ts("10:10:00"), "api_call", "15"));
    assert_eq!(
        out,
        [
            r#"{"type":"balance.low","id":"alert:al:credit:low:low:2","account":"al","seq":3,"ts":"2026-11-24T10:10:00.000Z","credit_type":"credit","threshold":"low","threshold_amount":"50","balance":"45"}"#
        ]
    );
    // Still below: no second low; at 0 the built-in depleted threshold fires.
    let out = run.send(usage("al-u3", "al", &ts("10:15:00"), "api_call", "45"));
    assert_eq!(
        out,
        [
            r#"{"type":"balance.depleted","id":"alert:al:credit:depleted:low:1","account":"al","seq":4,"ts":"2026-11-24T10:15:00.000Z","credit_type":"credit","balance":"0"}"#
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Holds
// ---------------------------------------------------------------------------------------------

fn reserve(id: &str, account: &str, at: &str, meter: &str, quantity: &str, ttl: &str) -> Value {
    json!({"type": "reserve", "id": id, "account": account, "ts": at, "meter": meter,
        "quantity": quantity, "ttl": ttl})
}

fn hold_command(kind: &str, id: &str, account: &str, at: &str, hold: &str) -> Value {
    json!({"type": kind, "id": id, "account": account, "ts": at, "hold_id": hold})
}

#[test]
fn holds_reserve_commit_release_and_expire() {
    let mut run = Run::new("basic");
    run.send(grant("h-g", "h", &ts("10:00:00"), "100"));
    // 100 s in blocks of 60 → 120 s × 0.01 = 1.2 (above the 0.5 minimum).
    let out = run.send(with(
        reserve("h-r1", "h", &ts("10:01:00"), "gpu_second", "100", "15m"),
        "hold_id",
        json!("h1"),
    ));
    assert_eq!(
        out,
        [
            r#"{"type":"command.result","id":"result:h:h-r1:2","account":"h","seq":2,"ts":"2026-11-24T10:01:00.000Z","command":"reserve","command_id":"h-r1","status":"applied","reason":null,"credits_requested":"1.2","credits_reserved":"1.2","quantity_reserved":"100"}"#
        ]
    );
    let state = run.state("h");
    assert_eq!(
        state["holds"].to_string(),
        r#"[{"credits_held":"1.2","expires_at":"2026-11-24T10:16:00.000Z","hold_id":"h1","meter":"gpu_second"}]"#
    );
    assert_eq!(state["balances"][0]["held"], "1.2");
    assert_eq!(state["balances"][0]["balance"], "100");
    let commit = with(
        hold_command("commit", "h-c1", "h", &ts("10:05:00"), "h1"),
        "quantity",
        json!("130"),
    );
    let out = run.send(commit);
    let result = &parsed(&out)[0];
    assert_eq!(result["credits_charged"], "1.8");
    assert_eq!(result["credits_unpaid"], "0");
    assert_eq!(run.balance("h")["balance"], "98.2");
    assert_eq!(run.balance("h")["held"], "0");
    // Release.
    run.send(reserve(
        "h2",
        "h",
        &ts("10:06:00"),
        "gpu_second",
        "10",
        "15m",
    ));
    let out = run.send(hold_command("release", "h-x2", "h", &ts("10:07:00"), "h2"));
    assert_eq!(parsed(&out)[0]["credits_released"], "0.6");
    let out = run.send(hold_command("release", "h-x3", "h", &ts("10:07:30"), "h2"));
    assert_eq!(kinds(&out), ["command.result/unknown_hold"]);
    // A rejection keeps the command's fields, amounts "0" (§14).
    assert_eq!(parsed(&out)[0]["credits_released"], "0");
    // Limit of 2 open holds; an open id is refused first.
    run.send(reserve(
        "h3",
        "h",
        &ts("10:08:00"),
        "gpu_second",
        "60",
        "15m",
    ));
    run.send(reserve(
        "h4",
        "h",
        &ts("10:09:00"),
        "gpu_second",
        "60",
        "1h",
    ));
    let out = run.send(reserve(
        "h5",
        "h",
        &ts("10:10:00"),
        "gpu_second",
        "60",
        "1h",
    ));
    assert_eq!(kinds(&out), ["command.result/hold_limit"]);
    let again = with(
        reserve("h6", "h", &ts("10:10:00"), "gpu_second", "60", "1h"),
        "hold_id",
        json!("h3"),
    );
    assert_eq!(kinds(&run.send(again)), ["command.result/hold_exists"]);
    // TTL. Hold serials share the numbering with grants: h-g 1, h1 2, h2 3, h3 4.
    let out = run.send(tick("t", &ts("10:23:00")));
    assert_eq!(
        out,
        [
            r#"{"type":"hold.expired","id":"hold:h:h3:4:expired","account":"h","seq":11,"ts":"2026-11-24T10:23:00.000Z","hold_id":"h3","credits_released":"0.6"}"#
        ]
    );
    assert_eq!(run.balance("h")["held"], "0.6");
}

#[test]
fn partial_reserve_and_commit_beyond_the_reservation() {
    let mut run = Run::new("basic");
    run.send(grant("hp-g", "hp", &ts("10:00:00"), "1"));
    // Asked 1000 s → 1020 s → 10.2 credits; 1 available. Largest whole quantity costing ≤ 1:
    // 60 s (0.6); 61 s would bill 120 s (1.2).
    let out = run.send(reserve(
        "hp-r",
        "hp",
        &ts("10:01:00"),
        "gpu_second",
        "1000",
        "1h",
    ));
    let result = &parsed(&out)[0];
    assert_eq!(result["credits_requested"], "10.2");
    assert_eq!(result["credits_reserved"], "1");
    assert_eq!(result["quantity_reserved"], "60");
    // Under reject a commit is never refused: what cannot be paid is reported unpaid.
    let commit = with(
        hold_command("commit", "hp-c", "hp", &ts("10:05:00"), "hp-r"),
        "quantity",
        json!("200"),
    );
    let out = run.send(commit);
    assert_eq!(kinds(&out), ["balance.depleted", "command.result"]);
    assert_eq!(parsed(&out)[1]["credits_charged"], "1");
    assert_eq!(parsed(&out)[1]["credits_unpaid"], "1.4");
    let balance = run.balance("hp");
    assert_eq!(balance["balance"], "0");
    assert_eq!(balance["ledger"]["consumed"], "1");
    // An empty account still gets an applied reserve of 0.
    let out = run.send(reserve(
        "hp-r2",
        "hp",
        &ts("10:06:00"),
        "api_call",
        "3",
        "1h",
    ));
    assert_eq!(parsed(&out)[0]["status"], "applied");
    assert_eq!(parsed(&out)[0]["credits_reserved"], "0");
    assert_eq!(parsed(&out)[0]["quantity_reserved"], "0");
}

#[test]
fn a_voided_grant_takes_its_held_credits_with_it() {
    let mut run = Run::new("basic");
    run.send(grant("hv-g", "hv", &ts("10:00:00"), "10"));
    run.send(reserve(
        "hv-r",
        "hv",
        &ts("10:01:00"),
        "api_call",
        "4",
        "1h",
    ));
    let void = json!({"type": "void_grant", "id": "hv-v", "account": "hv", "ts": ts("10:02:00"),
        "grant_id": "hv-g"});
    let out = run.send(void);
    assert_eq!(kinds(&out), ["balance.depleted", "command.result"]);
    let state = run.state("hv");
    assert_eq!(state["holds"][0]["credits_held"], "0");
    assert_eq!(state["grants"][0]["status"], "voided");
    assert_eq!(state["balances"][0]["ledger"]["voided"], "10");
    let commit = with(
        hold_command("commit", "hv-c", "hv", &ts("10:03:00"), "hv-r"),
        "quantity",
        json!("4"),
    );
    let out = run.send(commit);
    assert_eq!(parsed(&out)[0]["credits_charged"], "0");
    assert_eq!(parsed(&out)[0]["credits_unpaid"], "4");
}

// ---------------------------------------------------------------------------------------------
// Corrections
// ---------------------------------------------------------------------------------------------

fn reverse(id: &str, account: &str, at: &str, event: &str) -> Value {
    json!({"type": "reverse", "id": id, "account": account, "ts": at, "event_id": event})
}

#[test]
fn reverse_to_live_and_to_expired_grants() {
    let mut run = Run::new("basic");
    let a = with(
        grant("rv-gA", "rv", &ts("10:00:00"), "10"),
        "expires_at",
        json!("2026-11-24T12:00:00Z"),
    );
    run.send(with(a, "cost_basis", json!("0.1")));
    run.send(with(
        grant("rv-gB", "rv", &ts("10:00:00"), "10"),
        "priority",
        json!(200),
    ));
    run.send(usage("rv-u1", "rv", &ts("10:05:00"), "api_call", "15"));
    assert_eq!(remaining(&run.state("rv")), ["0", "5"]);
    let out = run.send(reverse("rv-x1", "rv", &ts("10:30:00"), "rv-u1"));
    assert_eq!(
        out,
        [
            r#"{"type":"command.result","id":"result:rv:rv-x1:4","account":"rv","seq":4,"ts":"2026-11-24T10:30:00.000Z","command":"reverse","command_id":"rv-x1","status":"applied","reason":null}"#
        ]
    );
    let state = run.state("rv");
    assert_eq!(remaining(&state), ["10", "10"]);
    assert_eq!(state["balances"][0]["ledger"]["returned"], "15");
    assert_eq!(state["balances"][0]["ledger"]["consumed"], "15");
    let out = run.send(reverse("rv-x2", "rv", &ts("10:31:00"), "rv-u1"));
    assert_eq!(kinds(&out), ["command.result/already_reversed"]);
    let out = run.send(reverse("rv-x3", "rv", &ts("10:32:00"), "nope"));
    assert_eq!(kinds(&out), ["command.result/unknown_event"]);
    // The id of a command is no usage event (§9).
    let out = run.send(reverse("rv-x3b", "rv", &ts("10:33:00"), "rv-gB"));
    assert_eq!(kinds(&out), ["command.result/unknown_event"]);
    run.send(usage("rv-u2", "rv", &ts("10:40:00"), "api_call", "8"));
    let out = run.send(tick("t1", &ts("12:00:00")));
    assert!(kinds(&out).contains(&"grant.expired".to_string()));
    // rv-gA has expired: the 8 credits come back as a new grant with its cost basis.
    run.send(reverse("rv-x4", "rv", &ts("12:10:00"), "rv-u2"));
    let state = run.state("rv");
    assert_eq!(grant_ids(&state), ["rv-gA", "reversal-rv-u2-1", "rv-gB"]);
    let back = &state["grants"][1];
    assert_eq!(
        back.to_string(),
        r#"{"amount":"8","cost_basis":"0.1","credit_type":"credit","effective_at":"2026-11-24T12:10:00.000Z","expires_at":null,"grant_id":"reversal-rv-u2-1","held":"0","priority":100,"remaining":"8","scope":null,"source":"adjustment","status":"live"}"#
    );
    assert_eq!(state["balances"][0]["ledger"]["returned"], "23");
    // A rejected usage event cannot be reversed.
    let out = run.send(usage("rv-u3", "rv", &ts("12:20:00"), "api_call", "100"));
    assert_eq!(kinds(&out), ["usage.rejected/insufficient_credits"]);
    let out = run.send(reverse("rv-x5", "rv", &ts("12:21:00"), "rv-u3"));
    assert_eq!(kinds(&out), ["command.result/not_charged"]);
    // An event of a closed period is reversed on a reversal line of the current period.
    run.send(usage("rv-u4", "rv", &ts("23:00:00"), "api_call", "3"));
    let out = run.send(tick("t2", "2026-11-25T00:00:00Z"));
    let revenue = parsed(&out)
        .into_iter()
        .find(|o| o["type"] == "revenue.period")
        .unwrap();
    // granted 1 (rv-gA); recognized 1 − 1 + 0.8 (rv-gA's lot: 8 credits) − 0.8 (the reversal
    // grant's value, on its own lot, §12) + 0.3 (rv-u4 drew 3 from the reversal grant: its lot
    // −8 + 3 = −5 credits); breakage 0.2; closing 5 × 0.1. rv-gB's lot nets to 0: not listed.
    assert_eq!(revenue["granted"], "1");
    assert_eq!(revenue["recognized"], "0.3");
    assert_eq!(revenue["breakage"], "0.2");
    assert_eq!(revenue["closing_deferred"], "0.5");
    assert_eq!(
        revenue["lots"].to_string(),
        r#"[{"breakage":"0.2","breakage_credits":"2","cost_basis":"0.1","grant_id":"rv-gA","recognized":"0.8","recognized_credits":"8"},{"breakage":"0","breakage_credits":"0","cost_basis":"0.1","grant_id":"reversal-rv-u2-1","recognized":"-0.5","recognized_credits":"-5"}]"#
    );
    run.send(reverse("rv-x6", "rv", "2026-11-25T00:10:00Z", "rv-u4"));
    let out = run.send(tick("t3", "2026-11-25T01:00:00Z"));
    let line = parsed(&out)
        .into_iter()
        .find(|o| o["kind"] == "reversal")
        .unwrap();
    assert_eq!(line["line_id"], "line:rv:2:reversal:api_call:credit");
    assert_eq!(line["quantity"], "-3");
    assert_eq!(line["credits"], "-3");
    assert_eq!(line["money"], "0");
    assert_eq!(run.balance("rv")["balance"], "18");
}

#[test]
fn reverse_cancels_its_own_debt_first() {
    let mut run = Run::new("over");
    run.send(grant("rd-g", "rd", &ts("10:00:00"), "2"));
    run.send(usage("rd-u", "rd", &ts("10:01:00"), "api_call", "5"));
    assert_eq!(run.balance("rd")["debt"], "3");
    run.send(reverse("rd-x", "rd", &ts("10:02:00"), "rd-u"));
    let balance = run.balance("rd");
    assert_eq!(balance["debt"], "0");
    assert_eq!(balance["balance"], "2");
    assert_eq!(balance["ledger"]["returned"], "5");
    let out = run.send(tick("t", &ts("11:00:00")));
    let summary: Vec<(String, String, String)> = parsed(&out)
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["credits"].as_str().unwrap().to_string(),
                l["money"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [("usage", "0", "0"), ("overage", "0", "0")]
        .map(|(k, c, m)| (k.to_string(), c.to_string(), m.to_string()));
    assert_eq!(summary, expected);
}

#[test]
fn void_removes_what_remains() {
    let mut run = Run::new("basic");
    run.send(with(
        grant("v-g", "v", &ts("10:00:00"), "10"),
        "cost_basis",
        json!("0.2"),
    ));
    run.send(usage("v-u", "v", &ts("10:01:00"), "api_call", "3"));
    let void = |id: &str| {
        json!({"type": "void_grant", "id": id, "account": "v", "ts": ts("10:02:00"),
            "grant_id": "v-g", "reason": "fraud"})
    };
    let out = run.send(void("v-c1"));
    assert_eq!(kinds(&out), ["balance.depleted", "command.result"]);
    let out = run.send(void("v-c2"));
    assert_eq!(kinds(&out), ["command.result/unknown_grant"]);
    assert_eq!(run.balance("v")["ledger"]["voided"], "7");
    let out = run.send(tick("t", "2026-11-25T00:00:00Z"));
    let revenue = parsed(&out)
        .into_iter()
        .find(|o| o["type"] == "revenue.period")
        .unwrap();
    assert_eq!(revenue["granted"], "2");
    assert_eq!(revenue["recognized"], "0.6");
    assert_eq!(revenue["removed"], "1.4");
    assert_eq!(revenue["closing_deferred"], "0");
}

fn adjust(id: &str, account: &str, at: &str, amount: &str) -> Value {
    json!({"type": "adjust", "id": id, "account": account, "ts": at, "amount": amount,
        "reason": "goodwill"})
}

#[test]
fn adjust_up_pays_debt_and_adjust_down_never_creates_it() {
    let mut run = Run::new("over");
    run.send(usage("adj-u", "ad", &ts("10:00:00"), "api_call", "4"));
    let out = run.send(adjust("adj-a1", "ad", &ts("10:01:00"), "10"));
    assert_eq!(
        out[1],
        r#"{"type":"command.result","id":"result:ad:adj-a1:2","account":"ad","seq":2,"ts":"2026-11-24T10:01:00.000Z","command":"adjust","command_id":"adj-a1","status":"applied","reason":null,"applied":"10"}"#
    );
    assert_eq!(kinds(&out)[0], "balance.recovered");
    let state = run.state("ad");
    assert_eq!(grant_ids(&state), ["adj-a1"]);
    assert_eq!(state["grants"][0]["source"], "adjustment");
    assert_eq!(remaining(&state), ["6"]);
    let out = run.send(adjust("adj-a2", "ad", &ts("10:02:00"), "-8"));
    assert_eq!(parsed(&out)[1]["applied"], "-6");
    assert_eq!(kinds(&out)[0], "balance.depleted");
    let balance = run.balance("ad");
    assert_eq!(balance["balance"], "0");
    assert_eq!(balance["debt"], "0");
    assert_eq!(balance["ledger"]["adjusted"], "4");
    let out = run.send(tick("t", &ts("11:00:00")));
    let adjustment = parsed(&out)
        .into_iter()
        .find(|o| o["kind"] == "adjustment")
        .unwrap();
    assert_eq!(adjustment["credits"], "4");
    let repaid = parsed(&out)
        .into_iter()
        .find(|o| o["kind"] == "overage_repaid")
        .unwrap();
    assert_eq!(repaid["credits"], "-4");
    assert_eq!(repaid["money"], "-2");
}

// ---------------------------------------------------------------------------------------------
// Duplicates, dead letters
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicates_change_nothing_not_even_the_clock() {
    let mut run = Run::new("basic");
    let g = grant("dup-g", "du", &ts("10:00:00"), "10");
    run.send(g.clone());
    let u = usage("dup-u", "du", &ts("10:01:00"), "api_call", "3");
    run.send(u.clone());
    assert!(run.send(u.clone()).is_empty());
    assert!(run.send(g).is_empty());
    assert_eq!(run.balance("du")["balance"], "7");
    let later = usage("dup-u", "du", &ts("10:03:00"), "api_call", "3");
    assert!(run.send(later).is_empty());
    // §6 step 1: the duplicate is recognised before the clock would advance.
    assert_eq!(run.state("du")["clock"], "2026-11-24T10:01:00.000Z");
    // After the window (tick clock past ts + 24 h) the id is forgotten: a new charge.
    run.send(tick("t", "2026-11-25T10:03:01Z"));
    let again = usage("dup-u", "du", "2026-11-25T10:03:01Z", "api_call", "3");
    assert!(run.send(again).is_empty());
    assert_eq!(run.balance("du")["balance"], "4");
}

fn dead(run: &mut Run, payload: &[u8]) -> (String, Value) {
    let out = run.raw(payload);
    assert_eq!(out.len(), 1, "{out:?}");
    let o = parsed(&out).remove(0);
    assert_eq!(o["type"], "dead_letter", "{o}");
    (
        o["reason"].as_str().unwrap().to_string(),
        o["detail"].clone(),
    )
}

#[test]
fn dead_letters_exact_format() {
    let mut run = Run::new("basic");
    assert_eq!(
        run.raw(b"not json"),
        [
            r#"{"type":"dead_letter","id":"dead:1","account":null,"seq":1,"ts":null,"reason":"malformed_json","detail":null,"subject":"creditflow.in","payload":"not json"}"#
        ]
    );
    assert_eq!(
        run.raw(&[0x7b, 0xff, 0x7d]),
        [
            r#"{"type":"dead_letter","id":"dead:2","account":null,"seq":2,"ts":null,"reason":"malformed_json","detail":null,"subject":"creditflow.in","payload":null,"payload_base64":"e/99"}"#
        ]
    );
    let text = r#"{"id":"x1","account":"a","meter":"api_call","quantity":"-1","ts":"2026-11-24T10:00:00Z"}"#;
    assert_eq!(
        run.raw(text.as_bytes()),
        [
            r#"{"type":"dead_letter","id":"dead:3","account":"a","seq":3,"ts":"2026-11-24T10:00:00.000Z","reason":"bad_quantity","detail":"quantity","subject":"creditflow.in","payload":"{\"id\":\"x1\",\"account\":\"a\",\"meter\":\"api_call\",\"quantity\":\"-1\",\"ts\":\"2026-11-24T10:00:00Z\"}"}"#
        ]
    );
    assert!(
        run.model.state().is_empty(),
        "dead letters create no account"
    );
}

#[test]
fn dead_letter_reasons() {
    let mut run = Run::new("basic");
    let t = ts("10:00:00");
    let u = |key: &str, value: Value| with(usage("x", "a", &t, "api_call", "1"), key, value);
    let g = |key: &str, value: Value| with(grant("x", "a", &t, "5"), key, value);
    let without = |key: &str| {
        let mut m = usage("x", "a", &t, "api_call", "1");
        m.as_object_mut().unwrap().remove(key);
        m
    };
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (json!([1]), "malformed_json", None),
        (u("type", json!("bogus")), "unknown_type", None),
        (u("type", json!(7)), "unknown_type", None),
        (u("qty", json!("1")), "invalid_field", Some("qty")),
        (without("meter"), "missing_field", Some("meter")),
        (u("meter", json!(5)), "invalid_field", Some("meter")),
        (without("quantity"), "missing_field", Some("quantity")),
        (
            u("quantity", Value::Null),
            "missing_field",
            Some("quantity"),
        ),
        (without("id"), "missing_field", Some("id")),
        (u("id", json!(7)), "invalid_field", Some("id")),
        (without("ts"), "missing_field", Some("ts")),
        (u("ts", json!(5)), "invalid_field", Some("ts")),
        (u("account", json!(["a"])), "invalid_field", Some("account")),
        (
            u("nested", {
                let mut deep = json!(1);
                for _ in 0..200 {
                    deep = json!([deep]);
                }
                deep
            }),
            "invalid_field",
            Some("nested"),
        ),
        (u("type", Value::Null), "unknown_type", None),
        (u("meter", json!("nope")), "unknown_meter", None),
        (u("account", json!("a b")), "bad_account", Some("account")),
        (without("account"), "missing_field", Some("account")),
        (u("id", json!("")), "bad_id", Some("id")),
        (u("id", json!("a b")), "bad_id", Some("id")),
        (u("id", json!("x".repeat(129))), "bad_id", Some("id")),
        (
            u("quantity", json!("1e3")),
            "bad_quantity",
            Some("quantity"),
        ),
        (u("quantity", json!("0.0000000001")), "bad_quantity", None),
        (
            u("quantity", json!("1234567890123456789")),
            "bad_quantity",
            None,
        ),
        (u("quantity", json!(".5")), "bad_quantity", None),
        (
            u("quantity", json!(true)),
            "invalid_field",
            Some("quantity"),
        ),
        (u("ts", json!("2026-11-24")), "bad_timestamp", Some("ts")),
        (
            u("ts", json!("1969-12-31T23:59:59Z")),
            "bad_timestamp",
            None,
        ),
        (
            u("ts", json!("2026-11-24 10:00:00Z")),
            "bad_timestamp",
            None,
        ),
        (
            u("dims", json!({"region": 5})),
            "invalid_field",
            Some("dims"),
        ),
        (g("amount", json!("0")), "invalid_field", Some("amount")),
        (
            g("expires_at", json!("2026-11-24T09:00:00Z")),
            "bad_timestamp",
            Some("expires_at"),
        ),
        (g("scope", json!(["nope"])), "unknown_meter", Some("scope")),
        (g("scope", json!([])), "invalid_field", Some("scope")),
        (g("credit_type", json!("gold")), "unknown_credit_type", None),
        (
            g("priority", json!("high")),
            "invalid_field",
            Some("priority"),
        ),
        (g("source", json!("gift")), "invalid_field", Some("source")),
        (g("cost_basis", json!("-0.1")), "invalid_field", None),
        (adjust("x", "a", &t, "0"), "invalid_field", Some("amount")),
        (
            with(adjust("x", "a", &t, "5"), "reason", json!("")),
            "invalid_field",
            Some("reason"),
        ),
        (
            reserve("x", "a", &t, "api_call", "0", "5m"),
            "bad_quantity",
            None,
        ),
        (
            reserve("x", "a", &t, "api_call", "1", "5x"),
            "invalid_field",
            Some("ttl"),
        ),
        (
            json!({"type": "set_plan", "id": "x", "account": "a", "ts": t, "plan": "gold"}),
            "unknown_plan",
            Some("plan"),
        ),
        (
            json!({"type": "set_policy", "id": "x", "account": "a", "ts": t,
                "policy": {"kind": "maybe"}}),
            "invalid_field",
            Some("policy"),
        ),
        (
            json!({"type": "set_policy", "id": "x", "account": "a", "ts": t}),
            "missing_field",
            Some("policy"),
        ),
        (
            json!({"type": "tick", "id": "x", "ts": t, "account": "a"}),
            "invalid_field",
            Some("account"),
        ),
        (u("meter", json!("late")), "no_price_in_force", None),
        (
            u("quantity", json!("999999999999999999")),
            "cost_overflow",
            None,
        ),
        (
            u("dims", json!({"pad": "x".repeat(5_000)})),
            "payload_too_large",
            None,
        ),
    ];
    for (message, reason, detail) in cases {
        let (got, got_detail) = dead(&mut run, message.to_string().as_bytes());
        assert_eq!(got, reason, "{message}");
        if let Some(detail) = detail {
            assert_eq!(got_detail, detail, "{message}");
        }
    }
    assert!(run.model.state().is_empty());
    // Plain-notation numbers with trailing zeros and JSON numbers are fine.
    let out = run.send(u("quantity", json!("1.5000000000000")));
    assert_eq!(parsed(&out)[0]["quantity"], "1.5");
    let out = run.raw(
        br#"{"id":"n1","account":"a","meter":"api_call","quantity":2.50,"ts":"2026-11-24T10:00:00Z"}"#,
    );
    assert_eq!(parsed(&out)[0]["quantity"], "2.5");
}

#[test]
fn timestamp_window_follows_the_receive_time_and_the_account_clock() {
    let mut five_minutes = catalog("basic");
    five_minutes.rules.future_max_ms = 5 * 60_000;
    let mut run = Run::with(five_minutes.clone());
    // No receive time (a plain log): nothing is too far ahead.
    let out = run.send(grant("w-g", "w", "2030-01-01T00:00:00Z", "1"));
    assert_eq!(kinds(&out), ["command.result"]);
    // The future bound is judged against the instant the stream received the message.
    let mut run = Run::with(five_minutes);
    let received = parse_ts(&ts("10:00:00"));
    let at = |run: &mut Run, message: Value| {
        run.seq += 1;
        let text = message.to_string();
        run.model
            .apply_envelope(text.as_bytes(), run.seq, "creditflow.in", received)
    };
    let out = at(&mut run, usage("w1", "w", &ts("10:05:01"), "api_call", "1"));
    assert_eq!(kinds(&out), ["dead_letter/ts_too_far_ahead"]);
    // Exactly future_max ahead is accepted; ticks are bounded too.
    let out = at(&mut run, grant("w2", "w", &ts("10:05:00"), "1"));
    assert_eq!(kinds(&out), ["command.result"]);
    let out = at(&mut run, tick("t1", &ts("10:05:01")));
    assert_eq!(kinds(&out), ["dead_letter/ts_too_far_ahead"]);
    // Too old: more than backdate_max (35 d) before the account's clock (10:05).
    let (reason, _) = dead(
        &mut run,
        usage("w3", "w", "2026-10-20T10:04:59Z", "api_call", "1")
            .to_string()
            .as_bytes(),
    );
    assert_eq!(reason, "ts_too_old");
    let out = run.send(usage("w4", "w", "2026-10-20T10:05:00Z", "api_call", "1"));
    assert_eq!(kinds(&out), ["usage.rejected/insufficient_credits"]);
}

// ---------------------------------------------------------------------------------------------
// Invoice lines, plans, revenue
// ---------------------------------------------------------------------------------------------

#[test]
fn invoice_lines_flush_by_version_and_finalize_at_period_close() {
    let mut run = Run::new("pro");
    assert!(run
        .send(usage("f-u1", "f", &ts("10:00:00"), "api_call", "5"))
        .is_empty());
    // The 11:00 flush: usage, allowance and plan fee lines, in §11's order.
    let out = run.send(tick("t1", &ts("11:30:00")));
    assert_eq!(
        out,
        [
            r#"{"type":"invoice.line","id":"line:f:1:usage:api_call:credit:v1","account":"f","seq":2,"ts":"2026-11-24T11:00:00.000Z","line_id":"line:f:1:usage:api_call:credit","version":1,"final":false,"period_start":"2026-11-24T00:00:00.000Z","period_end":"2026-11-25T00:00:00.000Z","kind":"usage","meter":"api_call","credit_type":"credit","quantity":"5","credits":"5","money":"0","currency":"USD"}"#,
            r#"{"type":"invoice.line","id":"line:f:1:allowance:-:credit:v1","account":"f","seq":2,"ts":"2026-11-24T11:00:00.000Z","line_id":"line:f:1:allowance:-:credit","version":1,"final":false,"period_start":"2026-11-24T00:00:00.000Z","period_end":"2026-11-25T00:00:00.000Z","kind":"allowance","meter":"-","credit_type":"credit","quantity":null,"credits":"100","money":"0","currency":"USD"}"#,
            r#"{"type":"invoice.line","id":"line:f:1:plan_fee:-:credit:v1","account":"f","seq":2,"ts":"2026-11-24T11:00:00.000Z","line_id":"line:f:1:plan_fee:-:credit","version":1,"final":false,"period_start":"2026-11-24T00:00:00.000Z","period_end":"2026-11-25T00:00:00.000Z","kind":"plan_fee","meter":"-","credit_type":"credit","quantity":null,"credits":"0","money":"10","currency":"USD"}"#,
        ]
    );
    run.send(usage("f-u2", "f", &ts("11:40:00"), "api_call", "2"));
    let out = run.send(tick("t2", &ts("12:00:00")));
    assert_eq!(parsed(&out)[0]["id"], "line:f:1:usage:api_call:credit:v2");
    assert_eq!(parsed(&out)[0]["quantity"], "7");
    // Changed exactly at a boundary (after its flush): waits for the next one.
    run.send(usage("f-u3", "f", &ts("12:00:00"), "api_call", "1"));
    assert!(run.send(tick("t3", &ts("12:59:59"))).is_empty());
    let out = run.send(tick("t4", &ts("13:00:00")));
    assert_eq!(parsed(&out)[0]["version"], 3);
    // 92 remaining at the expiry: 30 roll over, 62 expire, and the close grants the new
    // allowance at the same instant: alerts are evaluated once after both (§10.5), on 130, so
    // the momentary 30 (below 50) raises nothing (it raised balance.low and
    // balance.recovered with the same timestamp). Every line is final; no revenue.period
    // (every figure is 0 at cost basis 0).
    let out = run.send(tick("t5", "2026-11-25T00:00:00Z"));
    assert_eq!(
        kinds(&out),
        [
            "grant.expiring",
            "grant.expired",
            "invoice.line",
            "invoice.line",
            "invoice.line",
        ]
    );
    let o = parsed(&out);
    assert_eq!(o[1]["credits"], "62");
    assert_eq!(o[2]["version"], 4);
    assert_eq!(o[2]["final"], true);
    assert_eq!(o[2]["quantity"], "8");
    assert_eq!(
        out[3],
        r#"{"type":"invoice.line","id":"line:f:1:allowance:-:credit:v2","account":"f","seq":8,"ts":"2026-11-25T00:00:00.000Z","line_id":"line:f:1:allowance:-:credit","version":2,"final":true,"period_start":"2026-11-24T00:00:00.000Z","period_end":"2026-11-25T00:00:00.000Z","kind":"allowance","meter":"-","credit_type":"credit","quantity":null,"credits":"100","money":"0","currency":"USD"}"#
    );
    assert_eq!(o[4]["kind"], "plan_fee");
    assert_eq!(o[4]["money"], "10");
    assert_eq!(run.balance("f")["balance"], "130");
}

#[test]
fn line_money_is_rounded_once_at_emission() {
    let mut run = Run::new("over");
    // 0.01 credit into debt at 0.5 → 0.005 money → 0.01 (half_up at 2 places).
    run.send(usage("m-u", "m", &ts("10:00:00"), "api_call", "0.01"));
    let out = run.send(tick("t", &ts("11:00:00")));
    let overage = &parsed(&out)[1];
    assert_eq!(overage["kind"], "overage");
    assert_eq!(overage["credits"], "0.01");
    assert_eq!(overage["money"], "0.01");
    // Cost itself is rounded once with the meter's rule: 0.005 → 0 under half_even at 2 places.
    run.send(usage("m-u2", "m", &ts("11:10:00"), "api_call", "0.005"));
    let out = run.send(tick("t2", &ts("12:00:00")));
    let usage_line = &parsed(&out)[0];
    assert_eq!(usage_line["quantity"], "0.015");
    assert_eq!(usage_line["credits"], "0.01");
}

#[test]
fn set_plan_closes_the_period_at_the_switch() {
    let mut run = Run::new("basic");
    run.send(grant("sp-g", "sp", &ts("10:00:00"), "10"));
    run.send(usage("sp-u", "sp", &ts("10:05:00"), "api_call", "1"));
    let switch = json!({"type": "set_plan", "id": "sp-p", "account": "sp",
        "ts": ts("10:30:00"), "plan": "pro"});
    let out = run.send(switch);
    // The usage line, final; no revenue.period (cost basis 0: every figure is 0).
    assert_eq!(kinds(&out), ["invoice.line", "command.result"]);
    let o = parsed(&out);
    assert_eq!(o[0]["final"], true);
    assert_eq!(o[0]["period_end"], "2026-11-24T10:30:00.000Z");
    let state = run.state("sp");
    assert_eq!(state["plan"], "pro");
    assert_eq!(state["period_start"], "2026-11-24T10:30:00.000Z");
    assert_eq!(state["period_end"], "2026-11-25T00:00:00.000Z");
    assert_eq!(grant_ids(&state), ["allowance-1795516200000-1", "sp-g"]);
    assert_eq!(state["balances"][0]["balance"], "109");
    let same = json!({"type": "set_plan", "id": "sp-p2", "account": "sp",
        "ts": ts("10:31:00"), "plan": "pro"});
    assert_eq!(kinds(&run.send(same)), ["command.result"]);
    // An account created by a set_plan starts on that plan: nothing to close.
    let first = json!({"type": "set_plan", "id": "sz-p", "account": "sz",
        "ts": "2026-11-24T00:00:00Z", "plan": "pro"});
    assert_eq!(kinds(&run.send(first)), ["command.result"]);
    let state = run.state("sz");
    assert_eq!(state["plan"], "pro");
    assert_eq!(state["period_start"], "2026-11-24T00:00:00.000Z");
    assert_eq!(state["balances"][0]["balance"], "100");
}

#[test]
fn backdated_usage_is_priced_at_its_ts_and_booked_now() {
    let mut run = Run::new("basic");
    run.send(grant("bd-g", "bd", &ts("23:00:00"), "10"));
    let e = with(
        grant("bd-e", "bd", &ts("23:00:00"), "5"),
        "expires_at",
        json!("2026-11-25T00:05:00Z"),
    );
    run.send(e);
    run.send(tick("t", "2026-11-25T00:10:00Z"));
    // 23:30 is before bd-e's expiry, but an expired grant stays expired.
    let out = run.send(usage("bd-u", "bd", &ts("23:30:00"), "api_call", "12"));
    assert_eq!(parsed(&out)[0]["available"], "10");
    run.send(usage("bd-u2", "bd", &ts("23:40:00"), "api_call", "2"));
    let out = run.send(tick("t2", "2026-11-25T01:00:00Z"));
    assert_eq!(
        parsed(&out)[0]["line_id"],
        "line:bd:2:usage:api_call:credit"
    );
}

#[test]
fn revenue_identity_over_two_periods() {
    let mut run = Run::new("basic");
    let t = ts("10:00:00");
    let rg1 = with(
        grant("rg1", "rv", &t, "20"),
        "expires_at",
        json!("2026-11-24T15:00:00Z"),
    );
    run.send(with(rg1, "cost_basis", json!("0.05")));
    let rg2 = with(grant("rg2", "rv", &t, "10"), "priority", json!(200));
    run.send(with(rg2, "cost_basis", json!("0.02")));
    run.send(with(
        grant("rg3", "rv", &t, "10"),
        "cost_basis",
        json!("0.1"),
    ));
    run.send(usage("rg-u1", "rv", &ts("10:30:00"), "api_call", "12"));
    run.send(
        json!({"type": "void_grant", "id": "rg-v", "account": "rv", "ts": ts("11:00:00"),
        "grant_id": "rg2"}),
    );
    run.send(tick("t1", &ts("15:00:00")));
    run.send(usage("rg-u2", "rv", &ts("16:00:00"), "api_call", "2"));
    let out = run.send(tick("t2", "2026-11-25T00:00:00Z"));
    let revenue = parsed(&out)
        .into_iter()
        .find(|o| o["type"] == "revenue.period")
        .unwrap();
    let d = |key: &str| dec(revenue[key].as_str().unwrap());
    assert_eq!(d("granted"), dec("2.2"));
    assert_eq!(d("recognized"), dec("0.8"));
    assert_eq!(d("breakage"), dec("0.4"));
    assert_eq!(d("removed"), dec("0.2"));
    assert_eq!(d("closing_deferred"), dec("0.8"));
    assert_eq!(
        d("opening_deferred") + d("granted") - d("recognized") - d("breakage") - d("removed"),
        d("closing_deferred")
    );
    let lots: Vec<&str> = revenue["lots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["grant_id"].as_str().unwrap())
        .collect();
    assert_eq!(lots, ["rg1", "rg3"]);
    assert_eq!(revenue["lots"][0]["recognized"], "0.6");
    assert_eq!(revenue["lots"][0]["breakage"], "0.4");
    let out = run.send(tick("t3", "2026-11-26T00:00:00Z"));
    let next = parsed(&out)
        .into_iter()
        .find(|o| o["type"] == "revenue.period")
        .unwrap();
    assert_eq!(next["opening_deferred"], "0.8");
    assert_eq!(next["closing_deferred"], "0.8");
    assert_eq!(next["lots"], json!([]));
}

#[test]
fn grant_limit_and_reused_grant_ids() {
    let mut run = Run::new("basic");
    for i in 0..6 {
        let out = run.send(grant(&format!("gl{i}"), "gl", &ts("10:00:00"), "1"));
        assert_eq!(kinds(&out), ["command.result"]);
    }
    let out = run.send(grant("gl6", "gl", &ts("10:01:00"), "1"));
    assert_eq!(kinds(&out), ["command.result/grant_limit"]);
    // A rejection keeps the command's fields: the grant id asked for (§14).
    assert_eq!(parsed(&out)[0]["grant_id"], "gl6");
    let out = run.send(with(
        grant("gl7", "gl", &ts("10:01:00"), "1"),
        "grant_id",
        json!("gl0"),
    ));
    assert_eq!(kinds(&out), ["command.result/grant_exists"]);
}

// ---------------------------------------------------------------------------------------------
// Catalog, time, generator
// ---------------------------------------------------------------------------------------------

#[test]
fn catalog_renders_as_toml() {
    let text = ModelCatalog::standard().to_toml();
    let value: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value["default_plan"].as_str(), Some("payg"));
    assert_eq!(value["rules"]["future_max"].as_str(), Some("5m"));
    assert_eq!(value["rules"]["backdate_max"].as_str(), Some("35d"));
    assert_eq!(
        value["rules"]["holds_per_account_max"].as_integer(),
        Some(4)
    );
    assert_eq!(value["credit_types"][1]["scale"].as_integer(), Some(2));
    let gpu = &value["meters"][1];
    assert_eq!(gpu["rounding"].as_str(), Some("up"));
    assert_eq!(gpu["versions"][0]["increment"].as_str(), Some("60"));
    assert_eq!(gpu["versions"][0]["model"].as_str(), Some("unit"));
    assert_eq!(
        value["meters"][2]["versions"][1]["effective_from"].as_str(),
        Some("2026-11-25T12:00:00.000Z")
    );
    let pro = &value["plans"][1];
    assert_eq!(pro["expiring_lead"].as_str(), Some("3h"));
    assert_eq!(pro["allowances"][0]["rollover_cap"].as_str(), Some("50"));
    assert_eq!(pro["policy"]["kind"].as_str(), Some("auto_topup"));
    assert_eq!(pro["policy"]["cooldown"].as_str(), Some("1h"));
    assert_eq!(pro["policy"]["overage_price"].as_str(), Some("0.02"));
    assert_eq!(pro["alerts"][1]["percent"].as_str(), Some("10"));
    let team = &value["plans"][2];
    assert_eq!(team["period"].as_str(), Some("month"));
    assert_eq!(team["anchor_day"].as_integer(), Some(1));
    assert_eq!(
        team["allowances"][0]["scope"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(value["plans"][3]["policy"]["target"].as_str(), Some("40"));
}

#[test]
fn time_helpers() {
    let at = |t: &str| parse_ts(t).unwrap();
    assert_eq!(
        format_ts(at("2026-11-24T11:00:00.1239+01:00")),
        "2026-11-24T10:00:00.123Z"
    );
    assert_eq!(parse_ts("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_ts("1969-12-31T23:59:59.9999Z"), None);
    let month = Period::Month { anchor_day: 15 };
    assert_eq!(
        period_containing(month, at("2026-11-10T00:00:00Z")),
        (at("2026-10-15T00:00:00Z"), at("2026-11-15T00:00:00Z"))
    );
    assert_eq!(
        period_containing(month, at("2026-11-15T00:00:00Z")).0,
        at("2026-11-15T00:00:00Z")
    );
    assert_eq!(
        period_containing(Period::Day, at("2026-11-24T23:59:59.999Z")).1,
        at("2026-11-25T00:00:00Z")
    );
    assert_eq!(model::time::parse_span("1h30m"), Some(5_400_000));
    assert_eq!(model::time::parse_span("5x"), None);
    assert_eq!(model::time::format_span(90_000), "90s");
    assert_eq!(
        model::input::parse_amount_text("00012.3400"),
        Some(dec("12.34"))
    );
    assert_eq!(model::input::parse_amount_text("-0"), Some(Decimal::ZERO));
    assert_eq!(model::input::parse_amount_text("5."), None);
}

#[test]
fn generator_is_deterministic_and_covers_every_message_kind() {
    let catalog = ModelCatalog::standard();
    let log = gen::scenario(7, 400, &catalog);
    assert_eq!(log.len(), 400);
    assert_eq!(log, gen::scenario(7, 400, &catalog));
    assert_ne!(log, gen::scenario(8, 400, &catalog));
    let mut kinds = std::collections::BTreeSet::new();
    for message in gen::scenario(1, 3_000, &catalog) {
        let kind = match serde_json::from_slice::<Value>(&message) {
            Ok(Value::Object(map)) => match map.get("type") {
                Some(Value::String(t)) => t.clone(),
                Some(_) => "bad type".into(),
                None => "usage".into(),
            },
            _ => "not an object".into(),
        };
        kinds.insert(kind);
    }
    for expected in [
        "usage",
        "grant",
        "void_grant",
        "set_plan",
        "set_policy",
        "adjust",
        "reverse",
        "reserve",
        "commit",
        "release",
        "tick",
        "bogus",
        "bad type",
        "not an object",
    ] {
        assert!(kinds.contains(expected), "no {expected} in {kinds:?}");
    }
}

/// Runs generated logs through the model: invariants after every input, well-formed outputs
/// (common fields first, `seq` of their input), and every output type of §14 seen.
#[test]
fn generated_logs_keep_the_invariants_and_cover_every_output() {
    let catalog = ModelCatalog::standard();
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..6u64 {
        let mut model = Model::new(catalog.clone());
        for (i, message) in gen::scenario(seed, 1_200, &catalog).iter().enumerate() {
            let seq = i as u64 + 1;
            for output in model.apply(message, seq) {
                assert!(output.starts_with(r#"{"type":""#), "{output}");
                let o: Value = serde_json::from_str(&output).unwrap();
                assert_eq!(o["seq"], seq);
                let prefix = format!(
                    r#"{{"type":{},"id":{},"account":{},"seq":{seq},"ts":"#,
                    o["type"], o["id"], o["account"]
                );
                assert!(output.starts_with(&prefix), "{output}");
                seen.insert(o["type"].as_str().unwrap().to_string());
            }
            if let Err(problem) = model.check_invariants() {
                panic!("seed {seed}, input {seq}: {problem}");
            }
        }
        for state in model.state() {
            assert!(state.starts_with(r#"{"account":""#));
        }
    }
    for expected in [
        "usage.rejected",
        "balance.low",
        "balance.depleted",
        "balance.recovered",
        "grant.expiring",
        "grant.expired",
        "topup.granted",
        "invoice.line",
        "revenue.period",
        "hold.expired",
        "command.result",
        "dead_letter",
    ] {
        assert!(seen.contains(expected), "never saw {expected}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(6))]

    /// Any generated log: invariants hold after every input, and replaying the same log gives
    /// the same outputs and state (the model itself is deterministic).
    #[test]
    fn model_is_deterministic_and_keeps_invariants(
        (seed, log) in gen::scenarios(ModelCatalog::standard(), 100..400)
    ) {
        let mut first = Model::new(ModelCatalog::standard());
        let mut second = Model::new(ModelCatalog::standard());
        for (i, message) in log.iter().enumerate() {
            let a = first.apply(message, i as u64 + 1);
            let b = second.apply(message, i as u64 + 1);
            proptest::prop_assert_eq!(a, b, "seed {}", seed);
            if let Err(problem) = first.check_invariants() {
                return Err(proptest::test_runner::TestCaseError::fail(
                    format!("seed {seed}, input {}: {problem}", i + 1),
                ));
            }
        }
        proptest::prop_assert_eq!(first.state(), second.state());
    }
}

#[test]
fn percent_alerts_follow_allowance_and_purchases() {
    let mut with_percent = catalog("pro");
    with_percent.plans[1].alerts.push(Alert {
        credit_type: "credit".into(),
        name: "tenth".into(),
        threshold: Threshold::Percent(dec("10")),
    });
    let mut run = Run::with(with_percent);
    // 10 % of the allowance (100) is 10: both thresholds are crossed, in plan order.
    let out = run.send(usage("pc-u1", "pc", &ts("10:00:00"), "api_call", "91"));
    let o = parsed(&out);
    assert_eq!(o.len(), 2);
    assert_eq!(o[0]["id"], "alert:pc:credit:low:low:1");
    assert_eq!(o[1]["id"], "alert:pc:credit:tenth:low:1");
    assert_eq!(o[1]["threshold_amount"], "10");
    // A purchase of 100 doubles the base: the threshold is now 20.
    let out = run.send(grant("pc-g", "pc", &ts("10:01:00"), "100"));
    assert_eq!(
        kinds(&out),
        ["balance.recovered", "balance.recovered", "command.result"]
    );
    let out = run.send(usage("pc-u2", "pc", &ts("10:02:00"), "api_call", "95"));
    let o = parsed(&out);
    assert_eq!(o[1]["id"], "alert:pc:credit:tenth:low:2");
    assert_eq!(o[1]["threshold_amount"], "20");
    assert_eq!(o[1]["balance"], "14");
}

#[test]
fn commit_tops_up_before_paying() {
    let mut run = Run::new("auto");
    let out = run.send(reserve(
        "ct-r",
        "ct",
        &ts("10:00:00"),
        "api_call",
        "10",
        "1h",
    ));
    assert_eq!(parsed(&out)[0]["credits_reserved"], "0");
    let commit = with(
        hold_command("commit", "ct-c", "ct", &ts("10:01:00"), "ct-r"),
        "quantity",
        json!("10"),
    );
    let out = run.send(commit);
    assert_eq!(kinds(&out), ["topup.granted", "command.result"]);
    assert_eq!(parsed(&out)[0]["grant_id"], "topup-ct-c");
    assert_eq!(parsed(&out)[1]["credits_charged"], "10");
    assert_eq!(run.balance("ct")["balance"], "40");
}

#[test]
fn monthly_plan_periods_through_the_model() {
    let catalog = ModelCatalog::standard();
    let mut run = Run::with(catalog);
    let switch = json!({"type": "set_plan", "id": "m-p", "account": "m",
        "ts": ts("10:00:00"), "plan": "team"});
    run.send(switch);
    // Created by the set_plan: on `team` from the start, in its month containing 10:00 (§4).
    let state = run.state("m");
    assert_eq!(state["period_start"], "2026-11-01T00:00:00.000Z");
    assert_eq!(state["period_end"], "2026-12-01T00:00:00.000Z");
    // Two credit types in catalog order; the team allowance covers both.
    let types: Vec<&str> = state["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["credit_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["credit", "storage_credit"]);
    assert_eq!(state["grants"][0]["scope"], json!(["api_call", "export"]));
}

#[test]
fn a_lowered_overage_limit_does_not_refuse_a_fully_paid_event() {
    let mut run = Run::new("over");
    run.send(with(
        grant("ol-g", "ol", &ts("10:00:00"), "5"),
        "scope",
        json!(["gpu_second"]),
    ));
    run.send(usage("ol-u1", "ol", &ts("10:01:00"), "api_call", "15"));
    assert_eq!(run.balance("ol")["debt"], "15");
    run.send(
        json!({"type": "set_policy", "id": "ol-p", "account": "ol", "ts": ts("10:02:00"),
        "policy": {"kind": "overage", "overage_limit": "10", "overage_price": "0.5"}}),
    );
    // Paid in full from the scoped grant (60 s × 0.01 = 0.6): no shortfall, no refusal (§7).
    let out = run.send(usage("ol-u2", "ol", &ts("10:03:00"), "gpu_second", "1"));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(remaining(&run.state("ol")), ["4.4"]);
    // Any shortfall now breaks the limit: available = S + max(0, limit − debt) = 0 + 0.
    let out = run.send(usage("ol-u3", "ol", &ts("10:04:00"), "api_call", "1"));
    assert_eq!(parsed(&out)[0]["reason"], "overage_limit");
    assert_eq!(parsed(&out)[0]["available"], "0");
}

#[test]
fn a_transition_already_due_runs_at_the_account_clock() {
    // §10.6: a backdated grant whose expiry has already passed expires right after the message,
    // at the account's clock, and says so in its `ts`.
    let mut run = Run::new("basic");
    run.send(grant("od-g0", "od", &ts("11:00:00"), "1"));
    let late = with(
        grant("od-g1", "od", &ts("10:00:00"), "5"),
        "expires_at",
        json!("2026-11-24T10:30:00Z"),
    );
    let out = run.send(late);
    assert_eq!(kinds(&out), ["command.result", "grant.expired"]);
    let o = parsed(&out);
    assert_eq!(o[0]["ts"], "2026-11-24T10:00:00.000Z");
    assert_eq!(
        out[1],
        r#"{"type":"grant.expired","id":"expired:od:od-g1:2","account":"od","seq":2,"ts":"2026-11-24T11:00:00.000Z","grant_id":"od-g1","credit_type":"credit","credits":"5","breakage":"0"}"#
    );
    assert_eq!(run.balance("od")["balance"], "1");
}

#[test]
fn the_topup_cooldown_runs_across_periods() {
    // §7: the per-period count resets at midnight, the cooldown (1 h) does not.
    let mut run = Run::new("auto");
    let out = run.send(usage("cd-u1", "cd", &ts("23:30:00"), "api_call", "3"));
    assert_eq!(kinds(&out), ["topup.granted"]);
    // 47 → 2: below the threshold, cooling down.
    assert!(run
        .send(usage("cd-u2", "cd", &ts("23:40:00"), "api_call", "45"))
        .is_empty());
    // 00:10 the next day: 6 > 2 spendable, still cooling down until 00:30: the overage
    // fallback takes 4 into debt (limit 5).
    let out = run.send(usage(
        "cd-u3",
        "cd",
        "2026-11-25T00:10:00Z",
        "api_call",
        "6",
    ));
    assert!(
        !kinds(&out).contains(&"topup.granted".to_string()),
        "{out:?}"
    );
    assert_eq!(kinds(&out).last().unwrap(), "balance.depleted");
    assert_eq!(run.balance("cd")["debt"], "4");
    // 00:31: allowed again; the top-up repays the debt, then 1 is charged: 50 − 4 − 1.
    let out = run.send(usage(
        "cd-u4",
        "cd",
        "2026-11-25T00:31:00Z",
        "api_call",
        "1",
    ));
    assert_eq!(kinds(&out), ["topup.granted", "balance.recovered"]);
    assert_eq!(run.balance("cd")["balance"], "45");
}
