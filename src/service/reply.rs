//! The service's replies: JSON objects with their fields in a fixed order, amounts as exact
//! decimal strings (as every output, SEMANTICS §14).
//!
//! Owns: the text of every reply (README "The service" lists them; `docs/SEMANTICS.md` §17
//! says what each field means).
//!
//! Must never: round an amount other than as the outputs do (money once, to the currency), or
//! write a float.

use crate::catalog::pricing::Priced;
use crate::catalog::Catalog;
use crate::engine::account::Account;
use crate::engine::query::{Authorization, PeriodUsage, StatementEntry};
use crate::engine::Partition;
use crate::time::Instant;
use crate::wire::output::{push_json_string, PlainText};

/// A JSON object written field by field, in order.
pub struct Object(String, usize);

impl Object {
    pub fn new() -> Object {
        Object::after(String::new())
    }

    /// An object written at the end of `text` (which [`Object::finish`] gives back with the
    /// object appended): no string of its own to copy.
    pub fn after(mut text: String) -> Object {
        text.push('{');
        let start = text.len();
        Object(text, start)
    }

    fn key(&mut self, name: &str) {
        if self.0.len() > self.1 {
            self.0.push(',');
        }
        push_json_string(&mut self.0, name);
        self.0.push(':');
    }

    pub fn string(mut self, name: &str, value: &str) -> Object {
        self.key(name);
        push_json_string(&mut self.0, value);
        self
    }

    /// An amount or an instant as a JSON string (its text never needs escaping).
    pub fn text(mut self, name: &str, value: impl PlainText) -> Object {
        self.key(name);
        value.push_quoted(&mut self.0);
        self
    }

    pub fn optional_text(self, name: &str, value: Option<impl PlainText>) -> Object {
        match value {
            Some(value) => self.text(name, value),
            None => self.raw(name, "null"),
        }
    }

    pub fn number(mut self, name: &str, value: impl Into<i128>) -> Object {
        self.key(name);
        let _ = std::fmt::Write::write_fmt(&mut self.0, format_args!("{}", value.into()));
        self
    }

    pub fn boolean(self, name: &str, value: bool) -> Object {
        self.raw(name, if value { "true" } else { "false" })
    }

    /// Already JSON text.
    pub fn raw(mut self, name: &str, json: &str) -> Object {
        self.key(name);
        self.0.push_str(json);
        self
    }

    pub fn array(self, name: &str, items: impl IntoIterator<Item = String>) -> Object {
        let items: Vec<String> = items.into_iter().collect();
        self.raw(name, &format!("[{}]", items.join(",")))
    }

    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

impl Default for Object {
    fn default() -> Object {
        Object::new()
    }
}

/// The balance reply: the account's state view (SEMANTICS §16, exactly as `replay --json`
/// prints it) with `available` (per credit type, now), `alerts` (the thresholds crossed) and
/// `as_of_seq` added at the end.
pub fn balance(
    catalog: &Catalog,
    partition: &Partition,
    account: &Account,
    as_of_seq: u64,
) -> String {
    let mut view = crate::engine::view::account_json(catalog, account);
    view.pop();
    view.push_str(",\"available\":[");
    for (index, a) in partition.available_of(catalog, account).iter().enumerate() {
        if index > 0 {
            view.push(',');
        }
        view = Object::after(view)
            .string("credit_type", &catalog.credit_type(a.credit_type).name)
            .text("available", a.total())
            .text("spendable", a.spendable)
            .text("overage_room", a.overage_room)
            .finish();
    }
    // Every threshold the account has crossed (SEMANTICS §10.5): below now or not, and how
    // often it went low and recovered. One never crossed has no state and is not listed.
    view.push_str("],\"alerts\":[");
    let crossed = account
        .types
        .iter()
        .flat_map(|t| t.alert_states().iter().map(move |a| (t.credit_type, a)));
    for (index, (credit_type, a)) in crossed.enumerate() {
        if index > 0 {
            view.push(',');
        }
        view = Object::after(view)
            .string("credit_type", &catalog.credit_type(credit_type).name)
            .string("alert", &a.name)
            .raw("below", if a.below { "true" } else { "false" })
            .number("lows", a.lows)
            .number("recoveries", a.recoveries)
            .finish();
    }
    let _ = std::fmt::Write::write_fmt(&mut view, format_args!("],\"as_of_seq\":{as_of_seq}}}"));
    view
}

/// How a price came about (the `price` object of `authorize` and `price` replies).
pub fn price(priced: &Priced) -> String {
    let x = &priced.explain;
    Object::new()
        .string("model", x.model)
        .text("version_from", x.version_from)
        .optional_text("rate", x.rate)
        .text("multiplier", x.multiplier)
        .raw(
            "dimension_rule",
            &x.dimension_rule
                .map_or_else(|| "null".into(), |i| (i + 1).to_string()),
        )
        .raw(
            "window",
            &x.window
                .map_or_else(|| "null".into(), |i| (i + 1).to_string()),
        )
        .boolean("minimum_applied", x.minimum_applied)
        .text("billed_quantity", priced.billed_quantity)
        .text("unrounded", x.unrounded)
        .text("cost", priced.cost)
        .finish()
}

#[allow(clippy::too_many_arguments)]
pub fn authorization(
    catalog: &Catalog,
    account: &str,
    meter: &str,
    quantity: impl PlainText,
    answer: &Authorization,
    as_of_seq: u64,
) -> String {
    Object::new()
        .string("account", account)
        .string("meter", meter)
        .text("quantity", quantity)
        .text("ts", answer.ts)
        .boolean("allowed", answer.allowed)
        .raw(
            "reason",
            &answer
                .reason
                .map_or_else(|| "null".into(), |r| format!("\"{r}\"")),
        )
        .text("credits", answer.priced.cost)
        .string("credit_type", &catalog.credit_type(answer.credit_type).name)
        .text("available", answer.available)
        .optional_text("max_quantity", answer.max_quantity)
        .raw("price", &price(&answer.priced))
        .array(
            "draws",
            answer.draws.iter().map(|(grant, credits)| {
                Object::new()
                    .string("grant_id", grant)
                    .text("credits", credits)
                    .finish()
            }),
        )
        .text("overage", answer.overage)
        .text("topup", answer.topup)
        .number("as_of_seq", as_of_seq)
        .finish()
}

pub fn usage(catalog: &Catalog, account: &Account, usage: &PeriodUsage, as_of_seq: u64) -> String {
    let meter_name = |m: Option<crate::catalog::MeterId>| {
        m.map_or_else(|| "-".to_string(), |m| catalog.meter(m).name.clone())
    };
    let meters = usage
        .lines
        .iter()
        .filter(|l| l.kind == crate::engine::account::LineKind::Usage)
        .map(|l| {
            Object::new()
                .string("meter", &meter_name(l.meter))
                .string("credit_type", &catalog.credit_type(l.credit_type).name)
                .text("quantity", l.quantity)
                .text("credits", l.credits)
                .finish()
        });
    let lines = usage.lines.iter().map(|l| {
        let credit_type = &catalog.credit_type(l.credit_type).name;
        let meter = meter_name(l.meter);
        let line_id = format!(
            "line:{}:{}:{}:{meter}:{credit_type}",
            account.id,
            usage.period_number,
            l.kind.name()
        );
        Object::new()
            .string("line_id", &line_id)
            .string("kind", l.kind.name())
            .string("meter", &meter)
            .string("credit_type", credit_type)
            .optional_text("quantity", l.kind.has_quantity().then_some(l.quantity))
            .text("credits", l.credits)
            .text(
                "money",
                l.money
                    .round_money(catalog.currency.scale, catalog.currency.rounding),
            )
            .string("currency", &catalog.currency.code)
            .number("version", l.version)
            .boolean("unflushed", l.dirty)
            .finish()
    });
    Object::new()
        .string("account", &account.id)
        .number("period_number", usage.period_number)
        .text("period_start", usage.period_start)
        .text("period_end", usage.period_end)
        .array("meters", meters)
        .array("lines", lines)
        .number("as_of_seq", as_of_seq)
        .finish()
}

#[allow(clippy::too_many_arguments)]
pub fn price_reply(
    catalog: &Catalog,
    meter: crate::catalog::MeterId,
    quantity: impl PlainText,
    ts: Instant,
    account: Option<&str>,
    plan: Option<&str>,
    priced: &Priced,
    as_of_seq: Option<u64>,
) -> String {
    let object = Object::new()
        .string("meter", &catalog.meter(meter).name)
        .text("quantity", quantity)
        .text("ts", ts)
        .raw(
            "account",
            &account.map_or_else(|| "null".into(), |a| format!("\"{a}\"")),
        )
        .raw(
            "plan",
            &plan.map_or_else(|| "null".into(), |p| serde_json::Value::from(p).to_string()),
        )
        .string(
            "credit_type",
            &catalog.credit_type(catalog.meter(meter).credit_type).name,
        )
        .text("credits", priced.cost)
        .raw("price", &price(priced));
    match as_of_seq {
        Some(seq) => object.number("as_of_seq", seq).finish(),
        None => object.raw("as_of_seq", "null").finish(),
    }
}

pub fn statement(
    catalog: &Catalog,
    account: &str,
    entries: &[StatementEntry],
    as_of_seq: u64,
) -> String {
    let entries = entries.iter().map(|e| {
        Object::new()
            .number("seq", e.seq)
            .text("ts", e.ts)
            .string("event_id", &e.event_id)
            .string("kind", e.kind)
            .string("meter", &catalog.meter(e.meter).name)
            .string("credit_type", &catalog.credit_type(e.credit_type).name)
            .text("quantity", e.quantity)
            .text("credits", e.credits)
            .text("overage", e.overage)
            .raw(
                "reversed",
                match e.reversed {
                    Some(true) => "true",
                    Some(false) => "false",
                    None => "null",
                },
            )
            .array(
                "draws",
                e.draws.iter().map(|(grant, credits, basis)| {
                    Object::new()
                        .string("grant_id", grant)
                        .text("credits", credits)
                        .text("cost_basis", basis)
                        .finish()
                }),
            )
            .finish()
    });
    Object::new()
        .string("account", account)
        .array("charges", entries)
        .number("as_of_seq", as_of_seq)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_instants_are_written_as_strings() {
        let json = Object::new()
            .text("amount", crate::decimal::Dec::new(-1250, 3).unwrap())
            .text("credits", crate::decimal::Fixed::<9>(7_000_000_000))
            .optional_text("none", None::<crate::decimal::Credits>)
            .text("at", Instant(1_000))
            .string("odd", "a \"quoted\"\\ line\n")
            .number("n", -42i64)
            .finish();
        assert_eq!(
            json,
            r#"{"amount":"-1.25","credits":"7","none":null,"at":"1970-01-01T00:00:01.000Z","odd":"a \"quoted\"\\ line\n","n":-42}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["odd"], "a \"quoted\"\\ line\n");
    }
}
