use super::*;
use crate::wire::outline;

/// The direct usage reader and serde agree, message or dead letter, on generated payloads:
/// well-formed usage events in any key order and spacing, and the shapes the direct reader
/// must hand over (escapes, numbers, null, repeated and unknown keys, other types, broken
/// JSON, invalid UTF-8, truncations and flipped bytes).
#[test]
fn the_direct_usage_reader_agrees_with_serde() {
    let catalog =
        crate::catalog::load::from_path(std::path::Path::new("config/catalog.toml")).unwrap();
    let mut rng = crate::sample::Rng::new(17);
    let mut direct = 0;
    let cases = 100_000;
    for case in 0..cases {
        // The first option (well-formed) two times in three, else any.
        let mut pick = |options: &[&str]| match rng.below(3) {
            0 => options[rng.below(options.len() as u64) as usize].to_string(),
            _ => options[0].to_string(),
        };
        let mut fields: Vec<(String, String)> = vec![
            (
                "id".into(),
                pick(&[
                    r#""e1""#,
                    r#""e\"1""#,
                    r#""e\u0031""#,
                    r#""""#,
                    "7",
                    "null",
                    r#""é""#,
                ]),
            ),
            (
                "account".into(),
                pick(&[
                    r#""acct_1""#,
                    r#""acct 1""#,
                    r#""a\\b""#,
                    "[]",
                    r#""acct-2""#,
                ]),
            ),
            (
                "meter".into(),
                pick(&[
                    r#""api_call""#,
                    r#""llm_token""#,
                    r#""nope""#,
                    "{}",
                    r#""api_call ""#,
                ]),
            ),
            (
                "quantity".into(),
                pick(&[
                    r#""3""#,
                    r#""12.5""#,
                    "3",
                    "1.5",
                    r#""-1""#,
                    r#""1e3""#,
                    "null",
                    r#""""#,
                ]),
            ),
            (
                "ts".into(),
                pick(&[
                    r#""2026-09-01T00:00:00.000Z""#,
                    r#""2026-09-01T00:00:00+01:00""#,
                    r#""2026-02-30T00:00:00Z""#,
                    r#""yesterday""#,
                    "0",
                ]),
            ),
            (
                "dims".into(),
                pick(&[
                    "{}",
                    r#"{"model":"small","region":"us"}"#,
                    r#"{"model":"small","model":"large"}"#,
                    r#"{"model":1}"#,
                    "null",
                    r#"["model"]"#,
                    r#"{"model":"sm\u0061ll"}"#,
                    r#"{ "region" : "eu" , "model":"large" }"#,
                ]),
            ),
            (
                "type".into(),
                pick(&[r#""usage""#, r#""grant""#, r#""tick""#, "5", r#""Usage""#]),
            ),
            ("unknown".into(), pick(&[r#""x""#, "1"])),
            ("amount".into(), pick(&[r#""5""#])),
        ];
        // Which fields appear: usually the usage fields; sometimes others, or repeats.
        fields.retain(|(key, _)| match key.as_str() {
            "unknown" | "amount" => rng.below(20) == 0,
            "type" | "dims" => rng.below(2) == 0,
            _ => rng.below(25) != 0,
        });
        if rng.below(20) == 0 && !fields.is_empty() {
            let repeat = fields[rng.below(fields.len() as u64) as usize].clone();
            fields.push(repeat);
        }
        for i in (1..fields.len()).rev() {
            fields.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let space = |rng: &mut crate::sample::Rng| {
            [" ", "", "", "", "\n", "\t", "\r\n "][rng.below(7) as usize].to_string()
        };
        let mut text = space(&mut rng) + "{";
        for (index, (key, value)) in fields.iter().enumerate() {
            if index > 0 {
                text += &(space(&mut rng) + ",");
            }
            text += &format!(
                "{}\"{key}\"{}:{}{value}",
                space(&mut rng),
                space(&mut rng),
                space(&mut rng)
            );
        }
        text += &(space(&mut rng) + "}" + &space(&mut rng));
        let mut payload = text.into_bytes();
        match rng.below(12) {
            0 => payload.truncate(rng.below(payload.len() as u64) as usize),
            1 => {
                let at = rng.below(payload.len() as u64) as usize;
                payload[at] =
                    [b'"', b'\\', b',', b':', b'}', b'{', 0xFF, 0x01, b' '][rng.below(9) as usize];
            }
            2 => payload.extend_from_slice([&b"x"[..], b"{}", b",", b"\0"][rng.below(4) as usize]),
            _ => {}
        }
        if fast::usage(&payload).is_some() {
            direct += 1;
        }
        // The outline's syntax is serde_json's, on the same payloads.
        assert_eq!(
            outline::read(&payload).is_ok(),
            serde_json::from_slice::<serde_json::Value>(&payload).is_ok(),
            "case {case}: {}",
            String::from_utf8_lossy(&payload)
        );
        let expected = decode_without_direct_reader(&payload, &catalog);
        assert_eq!(
            decode(&payload, &catalog),
            expected,
            "case {case}: {}",
            String::from_utf8_lossy(&payload)
        );
    }
    assert!(direct > cases / 5, "only {direct} of {cases} read directly");
}

fn example_catalog() -> Catalog {
    crate::catalog::load::from_path(std::path::Path::new("config/catalog.toml")).unwrap()
}

/// Every refusal of check 4 names its field: `missing_field` for one absent or `null`,
/// `invalid_field` for one unknown, repeated or of the wrong JSON type (with what was
/// expected), the field's own reason for a value of the right type that fails its rule.
#[test]
fn a_refused_field_is_named_with_what_was_expected() {
    let catalog = example_catalog();
    const TS: &str = r#""ts":"2026-09-01T00:00:00Z""#;
    let usage = |fields: &str| format!(r#"{{"id":"e1","account":"a1",{TS}{fields}}}"#);
    let command = |kind: &str, fields: &str| {
        format!(r#"{{"type":"{kind}","id":"c1","account":"a1",{TS}{fields}}}"#)
    };
    let deep = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let cases: Vec<(String, DeadReason, &str)> = vec![
        (usage(r#","meter":"api_call""#), DeadReason::MissingField, "quantity: required"),
        (
            usage(r#","meter":"api_call","quantity":null"#),
            DeadReason::MissingField,
            "quantity: required",
        ),
        (
            usage(r#","meter":"api_call","quantity":true"#),
            DeadReason::InvalidField,
            "quantity: invalid type: boolean `true`, expected a decimal number or a string holding one",
        ),
        (
            usage(r#","meter":"api_call","quantity":{"a":1}"#),
            DeadReason::InvalidField,
            "quantity: invalid type: map, expected a decimal number or a string holding one",
        ),
        (
            usage(r#","meter":"api_call","quantity":"lots""#),
            DeadReason::BadQuantity,
            "quantity:",
        ),
        (
            usage(r#","meter":5,"quantity":"1""#),
            DeadReason::InvalidField,
            "meter: invalid type: integer `5`, expected a string",
        ),
        (usage(r#","quantity":"1""#), DeadReason::MissingField, "meter: required"),
        (
            r#"{"id":7,"account":"a1","meter":"api_call","quantity":"1","ts":"2026-09-01T00:00:00Z"}"#.into(),
            DeadReason::InvalidField,
            "id: invalid type: integer `7`, expected a string",
        ),
        (
            r#"{"account":"a1","meter":"api_call","quantity":"1","ts":"2026-09-01T00:00:00Z"}"#.into(),
            DeadReason::MissingField,
            "id: required",
        ),
        (
            r#"{"id":"e1","meter":"api_call","quantity":"1","ts":"2026-09-01T00:00:00Z"}"#.into(),
            DeadReason::MissingField,
            "account: required",
        ),
        (
            r#"{"id":"e1","account":"a1","meter":"api_call","quantity":"1"}"#.into(),
            DeadReason::MissingField,
            "ts: required",
        ),
        (
            r#"{"id":"e1","account":"a1","meter":"api_call","quantity":"1","ts":5}"#.into(),
            DeadReason::InvalidField,
            "ts: invalid type: integer `5`, expected a string",
        ),
        (
            usage(r#","meter":"api_call","quantity":"1","dims":{"model":5}"#),
            DeadReason::InvalidField,
            "dims: invalid type: integer `5`, expected a string",
        ),
        (
            usage(r#","meter":"api_call","quantity":"1","colour":"red""#),
            DeadReason::InvalidField,
            "colour: not a field of a usage message",
        ),
        (
            usage(r#","meter":"api_call","quantity":"1","amount":"1""#),
            DeadReason::InvalidField,
            "amount: not a field of a usage message",
        ),
        (
            usage(r#","meter":"api_call","quantity":"1","id":"e2""#),
            DeadReason::InvalidField,
            "id: repeated",
        ),
        // An unknown field nested past serde_json's 128 levels is still an unknown field.
        (
            usage(&format!(r#","meter":"api_call","quantity":"1","x":{}"#, deep(500))),
            DeadReason::InvalidField,
            "x: not a field of a usage message",
        ),
        (
            usage(&format!(r#","meter":"api_call","quantity":"1","dims":{}"#, deep(500))),
            DeadReason::InvalidField,
            "dims: invalid type: sequence, expected an object of string values",
        ),
        (
            format!(r#"{{"type":"bogus","x":{}}}"#, deep(500)),
            DeadReason::UnknownType,
            r#"type "bogus" is not"#,
        ),
        (
            usage(&format!(r#","meter":"api_call","x":{}"#, "[".repeat(500))),
            DeadReason::MalformedJson,
            "expected a value at byte",
        ),
        (
            usage(r#","meter":"api_call","quantity":"1","type":null"#),
            DeadReason::UnknownType,
            "type null is not",
        ),
        (
            usage(r#","meter":"api_call","quantity":"1","type":null,"x":1"#),
            DeadReason::UnknownType,
            "type null is not",
        ),
        (command("grant", ""), DeadReason::MissingField, "amount: required"),
        (
            command("grant", r#","amount":true"#),
            DeadReason::InvalidField,
            "amount: invalid type: boolean `true`",
        ),
        (
            command("grant", r#","amount":"5","priority":"high""#),
            DeadReason::InvalidField,
            r#"priority: invalid type: string "high", expected i64"#,
        ),
        (
            command("grant", r#","amount":"5","scope":[1]"#),
            DeadReason::InvalidField,
            "scope: invalid type: integer `1`, expected a string",
        ),
        (command("void_grant", ""), DeadReason::MissingField, "grant_id: required"),
        (command("set_plan", ""), DeadReason::MissingField, "plan: required"),
        (command("set_policy", ""), DeadReason::MissingField, "policy: required"),
        (
            command("set_policy", r#","policy":{"kind":"reject","bogus":1}"#),
            DeadReason::InvalidField,
            "policy: unknown field `bogus`",
        ),
        (
            command("adjust", r#","amount":"5""#),
            DeadReason::MissingField,
            "reason: required",
        ),
        (
            command("reserve", r#","meter":"api_call","quantity":"1""#),
            DeadReason::MissingField,
            "ttl: required",
        ),
        (
            command("commit", r#","quantity":"1""#),
            DeadReason::MissingField,
            "hold_id: required",
        ),
        (
            r#"{"type":"tick","id":"t1"}"#.into(),
            DeadReason::MissingField,
            "ts: required",
        ),
    ];
    for (payload, reason, detail) in &cases {
        let dead = decode(payload.as_bytes(), &catalog).expect_err(payload);
        assert_eq!(dead.reason, *reason, "{payload}: {}", dead.detail);
        assert!(
            dead.detail.starts_with(detail),
            "{payload}: {:?} does not start with {detail:?}",
            dead.detail
        );
        assert!(!dead.detail.contains(" at line "), "{}", dead.detail);
        let well_formed = *reason != DeadReason::MalformedJson;
        // What can be read of the message is on its dead letter, at any depth.
        if well_formed && payload.contains(r#""account":"a1""#) {
            assert_eq!(dead.account.as_deref(), Some("a1"), "{payload}");
        }
        // The same bytes, the same verdict.
        assert_eq!(decode(payload.as_bytes(), &catalog), Err(dead));
    }
}
