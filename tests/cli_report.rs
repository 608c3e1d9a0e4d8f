//! `creditflow report` through the binary, on the sample log's outputs (from `replay`), against
//! sums computed here independently from the same outputs: revenue totals from the
//! `revenue.period` records, credits consumed from their lots, usage from the latest version of
//! every usage line, top-up money from the `topup.granted` outputs (a different output than the
//! report reads), and the identity on every row. The export envelope form reads the same.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

fn creditflow(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_creditflow"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("creditflow");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn d(value: &Value) -> Decimal {
    Decimal::from_str(value.as_str().expect("a decimal string")).expect("a decimal")
}

#[test]
fn the_report_equals_sums_of_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, outputs, err) = creditflow(&[
        "replay",
        "--events",
        "config/sample-events.jsonl",
        "--json",
        "--print",
        "outputs",
    ]);
    assert!(ok, "{err}");
    let file = dir.path().join("outputs.jsonl");
    std::fs::write(&file, &outputs).unwrap();
    let (ok, report, err) = creditflow(&["report", file.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 2, "{report}");

    // Independent sums, per credit type.
    let outputs: Vec<Value> = outputs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut expected: BTreeMap<(String, &str), Decimal> = BTreeMap::new();
    let mut add = |ct: &str, field: &'static str, v: Decimal| {
        *expected.entry((ct.to_string(), field)).or_default() += v;
    };
    let mut latest: BTreeMap<String, &Value> = BTreeMap::new();
    for o in &outputs {
        let ct = o["credit_type"].as_str().unwrap_or("");
        match o["type"].as_str().unwrap() {
            "revenue.period" => {
                for f in ["granted", "recognized", "breakage", "removed"] {
                    add(ct, f, d(&o[f]));
                }
                for lot in o["lots"].as_array().unwrap() {
                    add(ct, "consumed", d(&lot["recognized_credits"]));
                }
            }
            "topup.granted" => add(ct, "topup_money", d(&o["money"])),
            "invoice.line" => {
                let id = o["line_id"].as_str().unwrap().to_string();
                let newer = latest
                    .get(&id)
                    .is_none_or(|l| l["version"].as_u64() < o["version"].as_u64());
                if newer {
                    latest.insert(id, o);
                }
            }
            _ => {}
        }
    }
    let mut usage: BTreeMap<String, Decimal> = BTreeMap::new();
    for line in latest.values() {
        if matches!(line["kind"].as_str(), Some("usage") | Some("reversal")) {
            *usage
                .entry(line["meter"].as_str().unwrap().to_string())
                .or_default() += d(&line["credits"]);
        }
    }

    let mut reported: BTreeMap<(String, &str), Decimal> = BTreeMap::new();
    let mut reported_usage: BTreeMap<String, Decimal> = BTreeMap::new();
    for row in &rows {
        let ct = row["credit_type"].as_str().unwrap().to_string();
        assert_eq!(row["identity_holds"], true, "{row}");
        let opening = d(&row["opening_deferred"]);
        let closing = d(&row["closing_deferred"]);
        assert_eq!(
            opening + d(&row["granted"])
                - d(&row["recognized"])
                - d(&row["breakage"])
                - d(&row["removed"]),
            closing,
            "{row}"
        );
        for f in [
            "granted",
            "recognized",
            "breakage",
            "removed",
            "topup_money",
        ] {
            *reported.entry((ct.clone(), f)).or_default() += d(&row[f]);
        }
        *reported.entry((ct.clone(), "consumed")).or_default() +=
            d(&row["consumed_purchased"]) + d(&row["consumed_free"]);
        for u in row["usage"].as_array().unwrap() {
            *reported_usage
                .entry(u["meter"].as_str().unwrap().to_string())
                .or_default() += d(&u["credits"]);
        }
    }
    for (key, value) in &expected {
        assert_eq!(
            reported.get(key).copied().unwrap_or_default(),
            *value,
            "{key:?}"
        );
    }
    assert_eq!(reported_usage, usage);
    assert!(expected
        .get(&("credit".into(), "recognized"))
        .is_some_and(|v| !v.is_zero()));

    // The same outputs as export envelopes give the same report; the table and CSV print.
    let envelopes: String = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            serde_json::json!({"seq": i + 1, "subject": "creditflow.out.0.x", "payload": o.to_string()})
                .to_string()
                + "\n"
        })
        .collect();
    let enveloped = dir.path().join("envelopes.jsonl");
    std::fs::write(&enveloped, envelopes).unwrap();
    let (ok, again, err) = creditflow(&["report", enveloped.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    assert_eq!(again, report);
    let (ok, table, _) = creditflow(&["report", file.to_str().unwrap()]);
    assert!(
        ok && table.contains("identity") && table.contains("holds"),
        "{table}"
    );
    let (ok, csv, _) = creditflow(&["report", file.to_str().unwrap(), "--csv"]);
    assert!(
        ok && csv.starts_with("month,credit_type,closed,opening_deferred"),
        "{csv}"
    );

    // Not outputs: a clear error.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"seq\":1}\n").unwrap();
    let (ok, _, err) = creditflow(&["report", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("line 1"), "{err}");
    assert!(Path::new(&file).exists());
}
