//! The state view of an account (SEMANTICS §16): what `replay --json` prints and what the model
//! test compares. Read-only; field order is part of the format.

use std::fmt::Write as _;

use crate::catalog::Catalog;
use crate::engine::account::Account;
use crate::wire::output::push_json_string;

/// One account as compact JSON.
pub fn account_json(catalog: &Catalog, account: &Account) -> String {
    let mut out = String::with_capacity(512);
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
    let _ = write!(
        out,
        ",\"clock\":\"{}\",\"period_start\":\"{}\",\"period_end\":\"{}\"",
        account.clock, account.period_start, account.period_end
    );
    out.push_str(",\"balances\":[");
    for (index, t) in account.types.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let l = t.ledger();
        out.push_str("{\"credit_type\":");
        push_json_string(&mut out, &catalog.credit_type(t.credit_type).name);
        let _ = write!(
            out,
            ",\"balance\":\"{}\",\"held\":\"{}\",\"debt\":\"{}\",\"ledger\":{{\"granted\":\"{}\",\"consumed\":\"{}\",\"expired\":\"{}\",\"voided\":\"{}\",\"adjusted\":\"{}\",\"settled\":\"{}\",\"returned\":\"{}\"}}",
            account.balance(t.credit_type),
            account.held(t.credit_type),
            t.debt(),
            l.granted,
            l.consumed,
            l.expired,
            l.voided,
            l.adjusted,
            l.settled,
            l.returned
        );
        let runway = account.runway(catalog, t);
        let _ = write!(
            out,
            ",\"runway\":{{\"window\":\"{}\",\"burned\":\"{}\",\"runs_out_at\":",
            catalog.rules.runway_window, runway.burned
        );
        match runway.runs_out_at {
            Some(at) => {
                let _ = write!(out, "\"{at}\"}}}}");
            }
            None => out.push_str("null}}"),
        }
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
        let _ = write!(
            out,
            ",\"source\":\"{}\",\"status\":\"{}\",\"amount\":\"{}\",\"remaining\":\"{}\",\"held\":\"{}\",\"priority\":{},\"effective_at\":\"{}\",\"expires_at\":",
            g.source.name(),
            g.status.name(),
            g.amount,
            g.remaining,
            g.held(),
            g.priority,
            g.effective_at
        );
        match g.expires_at() {
            Some(at) => {
                let _ = write!(out, "\"{at}\"");
            }
            None => out.push_str("null"),
        }
        let _ = write!(out, ",\"cost_basis\":\"{}\",\"scope\":", g.cost_basis);
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
        let _ = write!(
            out,
            ",\"credits_held\":\"{}\",\"expires_at\":\"{}\"}}",
            h.credits(),
            h.expires_at
        );
    }
    out.push_str("]}");
    out
}
