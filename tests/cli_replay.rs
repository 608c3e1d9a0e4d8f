//! `creditflow replay` on a real file, through the real binary: the dead letters a producer
//! reads for refused fields (SEMANTICS §2.1 check 4), the same on every replay of the same
//! bytes.

use std::process::Command;

use serde_json::Value;

/// Replays `lines` with the example catalog and returns the dead letters printed.
fn dead_letters(lines: &[String]) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").expect("write the log");
    let catalog = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_creditflow"))
        .args(["replay", "--json", "--print", "outputs", "--catalog"])
        .arg(&catalog)
        .arg("--events")
        .arg(&events)
        .output()
        .expect("run creditflow replay");
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON line"))
        .filter(|output| output["type"] == "dead_letter")
        .collect()
}

#[test]
fn a_refused_field_is_named_and_missing_is_told_from_invalid() {
    let usage = |id: &str, fields: &str| {
        format!(
            r#"{{"id":"{id}","account":"acct_01","ts":"2026-09-01T00:00:00Z","meter":"api_call"{fields}}}"#
        )
    };
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let lines = vec![
        usage("e1", ""),
        usage("e2", r#","quantity":true"#),
        usage("e3", r#","quantity":null"#),
        r#"{"id":"e4","account":"acct_01","ts":"2026-09-01T00:00:00Z","meter":5,"quantity":"1"}"#
            .to_string(),
        usage("e5", &format!(r#","quantity":"1","nested":{deep}"#)),
        usage("e6", r#","quantity":"-1""#),
        usage("e7", r#","quantity":"1""#),
    ];
    let dead = dead_letters(&lines);
    let got: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d["reason"].as_str().unwrap(), d["detail"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("missing_field", "quantity: required"),
            (
                "invalid_field",
                "quantity: invalid type: boolean `true`, expected a decimal number or a string holding one"
            ),
            ("missing_field", "quantity: required"),
            ("invalid_field", "meter: invalid type: integer `5`, expected a string"),
            ("invalid_field", "nested: not a field of a usage message"),
            ("bad_quantity", "quantity: must be >= 0"),
        ]
    );
    // Whatever failed, the account and ts are read when well-formed, at any depth.
    for letter in &dead {
        assert_eq!(letter["account"], "acct_01", "{letter}");
        assert_eq!(letter["ts"], "2026-09-01T00:00:00.000Z", "{letter}");
    }
    // The same bytes, the same dead letters.
    assert_eq!(dead_letters(&lines), dead);
}
