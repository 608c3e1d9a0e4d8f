//! The catalog loader on any TOML text (`catalog::load::from_str`): never a panic, and a
//! catalog it accepts prices usage without one: one event of each of its first meters is
//! applied to an engine (with a grant in each of its first credit types), at a small and a
//! large quantity, with its dims if it has any.
#![no_main]

use std::sync::Arc;

use creditflow::engine::{Engine, Envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(catalog) = creditflow::catalog::load::from_str(text) else {
        return;
    };
    let meters: Vec<String> = catalog
        .meters
        .iter()
        .take(4)
        .map(|m| m.name.clone())
        .collect();
    let credit_types: Vec<String> = catalog
        .credit_types
        .iter()
        .take(2)
        .map(|c| c.name.clone())
        .collect();
    let mut engine = Engine::new(Arc::new(catalog), 1);
    let mut messages = Vec::new();
    for (index, credit_type) in credit_types.iter().enumerate() {
        messages.push(format!(
            r#"{{"type":"grant","id":"g{index}","account":"a","ts":"2026-09-01T00:00:00Z","amount":"1000","credit_type":"{credit_type}"}}"#
        ));
    }
    for (index, meter) in meters.iter().enumerate() {
        for (quantity, dims) in [
            ("1", "{}"),
            ("123456789.5", r#"{"model":"large","region":"eu"}"#),
        ] {
            messages.push(format!(
                r#"{{"id":"u{index}-{quantity}","account":"a","meter":"{meter}","quantity":"{quantity}","ts":"2026-09-15T12:00:00Z","dims":{dims}}}"#
            ));
        }
    }
    messages.push(r#"{"type":"tick","id":"t","ts":"2027-03-01T00:00:00Z"}"#.to_string());
    let mut out = Vec::new();
    for (seq, message) in messages.iter().enumerate() {
        let envelope = Envelope {
            payload: message.as_bytes(),
            seq: seq as u64 + 1,
            subject: "creditflow.in",
            received: None,
        };
        engine.apply(&envelope, &mut out);
    }
    engine.check_invariants().expect("invariants hold");
});
