//! The state view of an account (SEMANTICS §16): what `replay --json` prints and what the model
//! test compares. Read-only; field order is part of the format.

use std::fmt::Write as _;

use crate::catalog::Catalog;
use crate::engine::account::Account;
use crate::wire::output::{push_json_string, PlainText};

/// One account as compact JSON.
pub fn account_json(catalog: &Catalog, account: &Account) -> String {
    // Room for the common account (about 450 bytes, 330 per grant and 250 per credit type), and
    // for what the balance reply adds (about 150 per credit type, and per alert crossed),
    // without growing.
    let mut out =
        String::with_capacity(512 + 384 * account.grants.len() + 512 * account.types.len());
    out.push_str("{\"account\":");
    push_json_string(&mut out, &account.id);
    out.push_str(",\"plan\":");
    push_json_string(&mut out, &catalog.plan(account.plan).name);
    out.push_str(",\"policy_override\":");
    match account.policy_override() {
        // Already canonical JSON text (an object): written as is, not as a string.
        Some(over) => out.push_str(&over.0),
        None => out.push_str("null"),
    }
    quoted(&mut out, ",\"clock\":", account.clock);
    quoted(&mut out, ",\"period_start\":", account.period_start);
    quoted(&mut out, ",\"period_end\":", account.period_end);
    out.push_str(",\"balances\":[");
    for (index, t) in account.types.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let l = t.ledger();
        out.push_str("{\"credit_type\":");
        push_json_string(&mut out, &catalog.credit_type(t.credit_type).name);
        quoted(&mut out, ",\"balance\":", account.balance(t.credit_type));
        quoted(&mut out, ",\"held\":", account.held(t.credit_type));
        quoted(&mut out, ",\"debt\":", t.debt());
        quoted(&mut out, ",\"ledger\":{\"granted\":", l.granted);
        quoted(&mut out, ",\"consumed\":", l.consumed);
        quoted(&mut out, ",\"expired\":", l.expired);
        quoted(&mut out, ",\"voided\":", l.voided);
        quoted(&mut out, ",\"adjusted\":", l.adjusted);
        quoted(&mut out, ",\"settled\":", l.settled);
        quoted(&mut out, ",\"returned\":", l.returned);
        let runway = account.runway(catalog, t);
        quoted(
            &mut out,
            "},\"runway\":{\"window\":",
            catalog.rules.runway_window,
        );
        quoted(&mut out, ",\"burned\":", runway.burned);
        match runway.runs_out_at {
            Some(at) => quoted(&mut out, ",\"runs_out_at\":", at),
            None => out.push_str(",\"runs_out_at\":null"),
        }
        out.push_str("}}");
    }
    out.push_str("],\"grants\":[");
    for (index, g) in account.grants.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str("{\"grant_id\":");
        push_json_string(&mut out, &g.id);
        out.push_str(",\"credit_type\":");
        push_json_string(&mut out, &catalog.credit_type(g.credit_type).name);
        out.push_str(",\"source\":\"");
        out.push_str(g.source.name());
        out.push_str("\",\"status\":\"");
        out.push_str(g.status.name());
        out.push('"');
        quoted(&mut out, ",\"amount\":", g.amount);
        quoted(&mut out, ",\"remaining\":", g.remaining);
        quoted(&mut out, ",\"held\":", g.held());
        let _ = write!(out, ",\"priority\":{}", g.priority);
        quoted(&mut out, ",\"effective_at\":", g.effective_at);
        match g.expires_at() {
            Some(at) => quoted(&mut out, ",\"expires_at\":", at),
            None => out.push_str(",\"expires_at\":null"),
        }
        quoted(&mut out, ",\"cost_basis\":", g.cost_basis);
        out.push_str(",\"scope\":");
        match g.scope() {
            None => out.push_str("null"),
            Some(meters) => {
                out.push('[');
                for (i, meter) in meters.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_json_string(&mut out, &catalog.meter(*meter).name);
                }
                out.push(']');
            }
        }
        out.push('}');
    }
    out.push_str("],\"holds\":[");
    for (index, h) in account.holds().iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str("{\"hold_id\":");
        push_json_string(&mut out, &h.id);
        out.push_str(",\"meter\":");
        push_json_string(&mut out, &catalog.meter(h.meter).name);
        quoted(&mut out, ",\"credits_held\":", h.credits());
        quoted(&mut out, ",\"expires_at\":", h.expires_at);
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// Appends `key` (JSON text up to the value: `,"name":`) and `value` as a JSON string.
fn quoted(out: &mut String, key: &str, value: impl PlainText) {
    out.push_str(key);
    value.push_quoted(out);
}
