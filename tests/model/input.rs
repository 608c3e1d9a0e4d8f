//! Reading one input message: the checks of SEMANTICS §2.1 steps 1–4 that depend only on the
//! message and the catalog. Steps 5–9 need account state and live in `mod.rs`.
//!
//! Order of step 4 (DECISIONS.md M5): unknown keys first (the alphabetically first unknown key
//! is named), then the fields in the order of the §2 table; the first failure wins.

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::catalog::{Fallback, ModelCatalog, Policy, TopupAmount, TopupRule};
use super::json::{obj, J};
use super::time::{format_span, parse_span, parse_ts};

/// A dead letter's reason and the field its detail names (if any).
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: Option<String>,
}

fn refuse<T>(reason: &'static str, field: &str) -> Result<T, Refusal> {
    Err(Refusal {
        reason,
        detail: Some(field.to_string()),
    })
}

#[derive(Clone, Debug)]
pub struct GrantInput {
    pub amount: Decimal,
    pub grant_id: String,
    pub credit_type: String,
    pub priority: i64,
    pub effective_at: i64,
    pub expires_at: Option<i64>,
    pub scope: Option<Vec<String>>,
    pub source: String,
    pub cost_basis: Decimal,
}

#[derive(Clone, Debug)]
pub enum Body {
    Usage {
        meter: String,
        quantity: Decimal,
    },
    Grant(GrantInput),
    VoidGrant {
        grant_id: String,
    },
    SetPlan {
        plan: String,
    },
    SetPolicy {
        policy: Option<(Policy, J)>,
    },
    Adjust {
        credit_type: String,
        amount: Decimal,
    },
    Reverse {
        event_id: String,
        event_ts: Option<i64>,
    },
    Reserve {
        meter: String,
        quantity: Decimal,
        /// Decimal places of the requested quantity (normalized), for `quantity_reserved`.
        quantity_scale: u32,
        ttl_ms: i64,
        hold_id: String,
    },
    Commit {
        hold_id: String,
        quantity: Decimal,
    },
    Release {
        hold_id: String,
    },
}

impl Body {
    /// The `command` field of `command.result` (`None` for usage).
    pub fn command_name(&self) -> Option<&'static str> {
        Some(match self {
            Body::Usage { .. } => return None,
            Body::Grant(_) => "grant",
            Body::VoidGrant { .. } => "void_grant",
            Body::SetPlan { .. } => "set_plan",
            Body::SetPolicy { .. } => "set_policy",
            Body::Adjust { .. } => "adjust",
            Body::Reverse { .. } => "reverse",
            Body::Reserve { .. } => "reserve",
            Body::Commit { .. } => "commit",
            Body::Release { .. } => "release",
        })
    }
}

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one message at a time: clarity over size
pub enum Message {
    Tick {
        ts: i64,
    },
    Account {
        id: String,
        account: String,
        ts: i64,
        body: Body,
    },
}

/// What a dead letter can still read from a message: its account and its `ts`.
pub fn readable_account_and_ts(payload: &[u8]) -> (Option<String>, Option<i64>) {
    let Ok(Value::Object(map)) = value_at_any_depth(payload) else {
        return (None, None);
    };
    let account = map.get("account").and_then(account_value);
    let ts = map.get("ts").and_then(Value::as_str).and_then(parse_ts);
    (account, ts)
}

/// A JSON text as a value, however deeply nested: depth is no syntax error (§2.1 check 2), so
/// the model lifts serde_json's limit of 128 levels. Message payloads are small enough
/// (`payload_max`) for the recursion.
fn value_at_any_depth(payload: &[u8]) -> serde_json::Result<Value> {
    use serde::Deserialize;
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    deserializer.disable_recursion_limit();
    let value = Value::deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Steps 2–4 of §2.1 (step 1, the size, is checked by the caller).
pub fn parse(payload: &[u8], catalog: &ModelCatalog) -> Result<Message, Refusal> {
    let value: Value = value_at_any_depth(payload).map_err(|_| Refusal {
        reason: "malformed_json",
        detail: None,
    })?;
    let Value::Object(map) = value else {
        return Err(Refusal {
            reason: "malformed_json",
            detail: None,
        });
    };
    let kind = match map.get("type") {
        None => "usage",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(Refusal {
                reason: "unknown_type",
                detail: None,
            })
        }
    };
    let fields: &[&str] = match kind {
        "usage" => &["id", "account", "meter", "quantity", "ts", "dims"],
        "grant" => &[
            "id",
            "account",
            "ts",
            "amount",
            "grant_id",
            "credit_type",
            "priority",
            "effective_at",
            "expires_at",
            "scope",
            "source",
            "cost_basis",
        ],
        "void_grant" => &["id", "account", "ts", "grant_id", "reason"],
        "set_plan" => &["id", "account", "ts", "plan"],
        "set_policy" => &["id", "account", "ts", "policy"],
        "adjust" => &["id", "account", "ts", "credit_type", "amount", "reason"],
        "reverse" => &["id", "account", "ts", "event_id", "event_ts", "reason"],
        "reserve" => &[
            "id", "account", "ts", "meter", "quantity", "ttl", "hold_id", "dims",
        ],
        "commit" => &["id", "account", "ts", "hold_id", "quantity"],
        "release" => &["id", "account", "ts", "hold_id"],
        "tick" => &["id", "ts"],
        _ => {
            return Err(Refusal {
                reason: "unknown_type",
                detail: None,
            })
        }
    };
    // BTreeMap order: the alphabetically first unknown key is reported.
    if let Some(key) = map
        .keys()
        .find(|k| k.as_str() != "type" && !fields.contains(&k.as_str()))
    {
        return refuse("invalid_field", key);
    }
    let reader = Reader { map: &map, catalog };
    let id = reader.id()?;
    if kind == "tick" {
        let ts = reader.ts("ts")?;
        return Ok(Message::Tick { ts });
    }
    let account = reader.account()?;
    let (ts, body) = match kind {
        "usage" => {
            let meter = reader.meter("meter")?;
            let quantity = reader.quantity(false)?;
            let ts = reader.ts("ts")?;
            reader.dims()?;
            (ts, Body::Usage { meter, quantity })
        }
        _ => {
            // Every command has `ts` third in the table.
            let ts = reader.ts("ts")?;
            (ts, reader.command_body(kind, &id, ts)?)
        }
    };
    Ok(Message::Account {
        id,
        account,
        ts,
        body,
    })
}

fn account_value(value: &Value) -> Option<String> {
    let text = value.as_str()?;
    let ok = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| text.to_string())
}

/// 1–128 bytes of printable ASCII (`!`..`~`): the rule for `id` and for other ids.
fn id_value(value: &Value) -> Option<String> {
    let text = value.as_str()?;
    let ok = (1..=128).contains(&text.len()) && text.bytes().all(|b| (b'!'..=b'~').contains(&b));
    ok.then(|| text.to_string())
}

/// Plain-notation decimal from a string or a JSON number's text: at most 18 significant digits
/// and 9 decimal places (both counted on the normalized value).
pub fn amount_value(value: &Value) -> Option<Decimal> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    parse_amount_text(&text)
}

pub fn parse_amount_text(text: &str) -> Option<Decimal> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.unwrap_or("").trim_end_matches('0');
    let significant = if int.is_empty() {
        frac.trim_start_matches('0').len()
    } else {
        int.len() + frac.len()
    };
    if frac.len() > 9 || significant > 18 {
        return None;
    }
    let normalized = format!(
        "{}{}{}{}",
        if negative { "-" } else { "" },
        if int.is_empty() { "0" } else { int },
        if frac.is_empty() { "" } else { "." },
        frac
    );
    normalized.parse().ok()
}

/// Number of decimal places of a normalized decimal.
pub fn scale_of(value: Decimal) -> u32 {
    value.normalize().scale()
}

struct Reader<'a> {
    map: &'a Map<String, Value>,
    catalog: &'a ModelCatalog,
}

impl Reader<'_> {
    /// The field's value; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A string field: absent or `null` is `missing_field`, another JSON type
    /// `invalid_field` (SEMANTICS §2.1 check 4).
    fn string(&self, key: &str) -> Result<&str, Refusal> {
        match self.get(key) {
            None => refuse("missing_field", key),
            Some(Value::String(text)) => Ok(text),
            Some(_) => refuse("invalid_field", key),
        }
    }

    fn id(&self) -> Result<String, Refusal> {
        match id_value(&Value::String(self.string("id")?.to_string())) {
            Some(id) => Ok(id),
            None => refuse("bad_id", "id"),
        }
    }

    fn account(&self) -> Result<String, Refusal> {
        match account_value(&Value::String(self.string("account")?.to_string())) {
            Some(account) => Ok(account),
            None => refuse("bad_account", "account"),
        }
    }

    fn ts(&self, key: &str) -> Result<i64, Refusal> {
        match parse_ts(self.string(key)?) {
            Some(ts) => Ok(ts),
            None => refuse("bad_timestamp", key),
        }
    }

    fn optional_ts(&self, key: &str) -> Result<Option<i64>, Refusal> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.ts(key).map(Some),
        }
    }

    /// `positive`: zero is refused too.
    fn quantity(&self, positive: bool) -> Result<Decimal, Refusal> {
        let value = match self.get("quantity") {
            None => return refuse("missing_field", "quantity"),
            Some(value @ (Value::String(_) | Value::Number(_))) => value,
            Some(_) => return refuse("invalid_field", "quantity"),
        };
        match amount_value(value) {
            Some(q) if q > Decimal::ZERO || (!positive && q.is_zero()) => Ok(q),
            _ => refuse("bad_quantity", "quantity"),
        }
    }

    fn meter(&self, key: &str) -> Result<String, Refusal> {
        let name = self.string(key)?;
        match self.catalog.meter(name) {
            Some(_) => Ok(name.to_string()),
            None => refuse("unknown_meter", key),
        }
    }

    fn credit_type(&self, key: &str) -> Result<String, Refusal> {
        match self.get(key) {
            None => self.known_credit_type("credit", key),
            Some(Value::String(name)) => self.known_credit_type(name, key),
            Some(_) => refuse("invalid_field", key),
        }
    }

    fn known_credit_type(&self, name: &str, key: &str) -> Result<String, Refusal> {
        match self.catalog.credit_type(name) {
            Some(_) => Ok(name.to_string()),
            None => refuse("unknown_credit_type", key),
        }
    }

    fn other_id(&self, key: &str, default: Option<&str>) -> Result<String, Refusal> {
        match (self.get(key), default) {
            (None, Some(default)) => Ok(default.to_string()),
            (Some(value), _) => match id_value(value) {
                Some(id) => Ok(id),
                None => refuse("invalid_field", key),
            },
            (None, None) => refuse("missing_field", key),
        }
    }

    fn amount(&self, key: &str, rule: fn(Decimal) -> bool) -> Result<Decimal, Refusal> {
        if self.get(key).is_none() {
            return refuse("missing_field", key);
        }
        match self.get(key).and_then(amount_value) {
            Some(a) if rule(a) => Ok(a),
            _ => refuse("invalid_field", key),
        }
    }

    /// An amount of credits has at most its credit type's `scale` decimal places (§2).
    fn fits_scale(&self, key: &str, amount: Decimal, credit_type: &str) -> Result<(), Refusal> {
        let scale = self.catalog.credit_type(credit_type).map_or(0, |c| c.scale);
        if scale_of(amount) > scale {
            return refuse("invalid_field", key);
        }
        Ok(())
    }

    fn dims(&self) -> Result<(), Refusal> {
        match self.get("dims") {
            None => Ok(()),
            Some(Value::Object(m)) if m.values().all(Value::is_string) => Ok(()),
            Some(_) => refuse("invalid_field", "dims"),
        }
    }

    fn reason_text(&self, required: bool) -> Result<(), Refusal> {
        match self.get("reason") {
            None if !required => Ok(()),
            None => refuse("missing_field", "reason"),
            Some(Value::String(text)) if !(required && text.trim().is_empty()) => Ok(()),
            _ => refuse("invalid_field", "reason"),
        }
    }

    fn command_body(&self, kind: &str, id: &str, ts: i64) -> Result<Body, Refusal> {
        Ok(match kind {
            "grant" => Body::Grant(self.grant(id, ts)?),
            "void_grant" => {
                let grant_id = self.other_id("grant_id", None)?;
                self.reason_text(false)?;
                Body::VoidGrant { grant_id }
            }
            "set_plan" => match self.get("plan") {
                Some(Value::String(name)) if self.catalog.plan(name).is_some() => {
                    Body::SetPlan { plan: name.clone() }
                }
                Some(Value::String(_)) => return refuse("unknown_plan", "plan"),
                None => return refuse("missing_field", "plan"),
                _ => return refuse("invalid_field", "plan"),
            },
            "set_policy" => {
                if !self.map.contains_key("policy") {
                    return refuse("missing_field", "policy");
                }
                match self.get("policy") {
                    None => Body::SetPolicy { policy: None },
                    Some(value) => Body::SetPolicy {
                        policy: Some(parse_policy(value, self.catalog)?),
                    },
                }
            }
            "adjust" => {
                let credit_type = self.credit_type("credit_type")?;
                let amount = self.amount("amount", |a| !a.is_zero())?;
                self.fits_scale("amount", amount, &credit_type)?;
                self.reason_text(true)?;
                Body::Adjust {
                    credit_type,
                    amount,
                }
            }
            "reverse" => {
                let event_id = self.other_id("event_id", None)?;
                let event_ts = self.optional_ts("event_ts")?;
                self.reason_text(false)?;
                Body::Reverse { event_id, event_ts }
            }
            "reserve" => {
                let meter = self.meter("meter")?;
                let quantity = self.quantity(true)?;
                if self.get("ttl").is_none() {
                    return refuse("missing_field", "ttl");
                }
                let ttl_ms = match self.get("ttl").and_then(Value::as_str).and_then(parse_span) {
                    Some(ms) if ms > 0 => ms,
                    _ => return refuse("invalid_field", "ttl"),
                };
                let hold_id = self.other_id("hold_id", Some(id))?;
                self.dims()?;
                Body::Reserve {
                    meter,
                    quantity,
                    quantity_scale: scale_of(quantity),
                    ttl_ms,
                    hold_id,
                }
            }
            "commit" => {
                let hold_id = self.other_id("hold_id", None)?;
                let quantity = self.quantity(false)?;
                Body::Commit { hold_id, quantity }
            }
            "release" => Body::Release {
                hold_id: self.other_id("hold_id", None)?,
            },
            _ => unreachable!("kinds are checked above"),
        })
    }

    fn grant(&self, id: &str, ts: i64) -> Result<GrantInput, Refusal> {
        let amount = self.amount("amount", |a| a > Decimal::ZERO)?;
        let grant_id = self.other_id("grant_id", Some(id))?;
        let credit_type = self.credit_type("credit_type")?;
        self.fits_scale("amount", amount, &credit_type)?;
        let priority = match self.get("priority") {
            None => 100,
            Some(v) => match integer(v).filter(|p| i32::try_from(*p).is_ok()) {
                Some(p) => p,
                None => return refuse("invalid_field", "priority"),
            },
        };
        let effective_at = self.optional_ts("effective_at")?.unwrap_or(ts);
        let expires_at = self.optional_ts("expires_at")?;
        if expires_at.is_some_and(|e| e <= effective_at) {
            return refuse("bad_timestamp", "expires_at");
        }
        let scope = match self.get("scope") {
            None => None,
            Some(Value::Array(items)) if !items.is_empty() => {
                let mut names = Vec::new();
                for item in items {
                    let Value::String(name) = item else {
                        return refuse("invalid_field", "scope");
                    };
                    let Some(meter) = self.catalog.meter(name) else {
                        return refuse("unknown_meter", "scope");
                    };
                    if meter.credit_type != credit_type {
                        return refuse("invalid_field", "scope");
                    }
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
                // A scope is a set: shown in catalog order.
                names.sort_by_key(|n| self.catalog.meter_index(n));
                Some(names)
            }
            Some(_) => return refuse("invalid_field", "scope"),
        };
        let source = match self.get("source") {
            None => "purchase".to_string(),
            Some(Value::String(s))
                if [
                    "purchase",
                    "allowance",
                    "promotion",
                    "rollover",
                    "topup",
                    "adjustment",
                ]
                .contains(&s.as_str()) =>
            {
                s.clone()
            }
            Some(_) => return refuse("invalid_field", "source"),
        };
        let cost_basis = match self.get("cost_basis") {
            None => Decimal::ZERO,
            Some(_) => self.amount("cost_basis", |c| c >= Decimal::ZERO)?,
        };
        Ok(GrantInput {
            amount,
            grant_id,
            credit_type,
            priority,
            effective_at,
            expires_at,
            scope,
            source,
            cost_basis,
        })
    }
}

/// A JSON integer (no fraction, no exponent).
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// A `set_policy` object: the catalog's plan-policy keys, every key required (DECISIONS.md M3).
/// Returns the policy and its canonical JSON form (the state view's `policy_override`).
pub fn parse_policy(value: &Value, catalog: &ModelCatalog) -> Result<(Policy, J), Refusal> {
    let bad = || refuse("invalid_field", "policy");
    let Value::Object(map) = value else {
        return bad();
    };
    let allowed: &[&str] = match map.get("kind").and_then(Value::as_str) {
        Some("reject") => &["kind"],
        Some("overage") => &["kind", "overage_limit", "overage_price"],
        Some("auto_topup") => &[
            "kind",
            "credit_type",
            "threshold",
            "amount",
            "target",
            "price",
            "max_per_period",
            "cooldown",
            "priority",
            "fallback",
            "overage_limit",
            "overage_price",
        ],
        _ => return bad(),
    };
    if map.keys().any(|k| !allowed.contains(&k.as_str())) {
        return bad();
    }
    let non_negative = |key: &str| -> Result<Decimal, Refusal> {
        match map.get(key).and_then(amount_value) {
            Some(a) if a >= Decimal::ZERO => Ok(a),
            _ => refuse("invalid_field", "policy"),
        }
    };
    let positive = |key: &str| -> Result<Decimal, Refusal> {
        match map.get(key).and_then(amount_value) {
            Some(a) if a > Decimal::ZERO => Ok(a),
            _ => refuse("invalid_field", "policy"),
        }
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    match kind {
        "reject" => Ok((Policy::Reject, J::Obj(obj(vec![("kind", J::s("reject"))])))),
        "overage" => {
            let limit = non_negative("overage_limit")?;
            let price = non_negative("overage_price")?;
            let canonical = obj(vec![
                ("kind", J::s("overage")),
                ("overage_limit", J::d(limit)),
                ("overage_price", J::d(price)),
            ]);
            Ok((Policy::Overage { limit, price }, J::Obj(canonical)))
        }
        _ => {
            let credit_type = match map.get("credit_type") {
                Some(Value::String(name)) if catalog.credit_type(name).is_some() => name.clone(),
                Some(Value::String(_)) => return refuse("unknown_credit_type", "policy"),
                _ => return bad(),
            };
            // Credit amounts of the rule fit its credit type's scale (§2).
            let scale = catalog.credit_type(&credit_type).map_or(0, |c| c.scale);
            let fits = |a: Decimal| -> Result<Decimal, Refusal> {
                if scale_of(a) > scale {
                    return refuse("invalid_field", "policy");
                }
                Ok(a)
            };
            let threshold = fits(non_negative("threshold")?)?;
            let amount = match (map.contains_key("amount"), map.contains_key("target")) {
                (true, false) => TopupAmount::Fixed(fits(positive("amount")?)?),
                (false, true) => TopupAmount::Target(fits(positive("target")?)?),
                _ => return bad(),
            };
            let price = non_negative("price")?;
            let max_per_period = match map.get("max_per_period").and_then(integer) {
                Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => n as u64,
                _ => return bad(),
            };
            let cooldown_ms = match map
                .get("cooldown")
                .and_then(Value::as_str)
                .and_then(parse_span)
            {
                Some(ms) => ms,
                None => return bad(),
            };
            let priority = match map
                .get("priority")
                .and_then(integer)
                .filter(|p| i32::try_from(*p).is_ok())
            {
                Some(p) => p,
                None => return bad(),
            };
            let fallback = match map.get("fallback").and_then(Value::as_str) {
                Some("reject") => {
                    if map.contains_key("overage_limit") || map.contains_key("overage_price") {
                        return bad();
                    }
                    Fallback::Reject
                }
                Some("overage") => Fallback::Overage {
                    limit: fits(non_negative("overage_limit")?)?,
                    price: non_negative("overage_price")?,
                },
                _ => return bad(),
            };
            let mut canonical = obj(vec![
                ("kind", J::s("auto_topup")),
                ("credit_type", J::s(credit_type.clone())),
                ("threshold", J::d(threshold)),
            ]);
            match &amount {
                TopupAmount::Fixed(a) => canonical.push(("amount".into(), J::d(*a))),
                TopupAmount::Target(t) => canonical.push(("target".into(), J::d(*t))),
            }
            canonical.extend(obj(vec![
                ("price", J::d(price)),
                ("max_per_period", J::Int(max_per_period as i64)),
                ("cooldown", J::s(format_span(cooldown_ms))),
                ("priority", J::Int(priority)),
            ]));
            match &fallback {
                Fallback::Reject => canonical.push(("fallback".into(), J::s("reject"))),
                Fallback::Overage { limit, price } => canonical.extend(obj(vec![
                    ("fallback", J::s("overage")),
                    ("overage_limit", J::d(*limit)),
                    ("overage_price", J::d(*price)),
                ])),
            }
            let rule = TopupRule {
                credit_type,
                threshold,
                amount,
                price,
                max_per_period,
                cooldown_ms,
                priority,
                fallback,
            };
            Ok((Policy::AutoTopup(rule), J::Obj(canonical)))
        }
    }
}
