//! Every message the direct reader hands over (`fast.rs`), read by serde: CloudEvents first
//! (mapped by `super::cloudevent` into a usage event's fields), then `Raw`, every field any
//! message may carry, whose `type` and fields are matched against the types' field tables
//! before the checks (`check.rs`).
//!
//! Owns: `Raw` and the serde readers of its fields (`NumberText`, `TypeField`, `dims`,
//! `policy`), the fields each message type accepts ([`fields_of`]), the dead letter for what
//! serde refuses (malformed JSON, an unknown `type`, or the field at fault and why, found by
//! reading the message again as an outline), and filling a dead letter's account and `ts`
//! from what is readable of the message (`with_readable`).
//!
//! Must never: let a number pass through a float (amounts and quantities stay text), leave
//! serde's position in a detail (the detail names the field instead), or outline a message
//! that decodes, except one whose bytes contain `specversion` (to tell a CloudEvent).
//!
//! Invariants: `Raw`'s fields are the union of the types' field tables; a refusal keeps
//! SEMANTICS' order of checks (malformed JSON, then an unknown `type`, then the field); a
//! repeated key counts with its last value, as serde_json's map keeps it.

use std::borrow::Cow;

use serde::Deserialize;

use super::check::{account_is_valid, Checker};
use super::{fast, truncate, DeadLetter, DeadReason, Message, DIMS_MAX};
use crate::catalog::{Catalog, PolicySpec};
use crate::wire::cloudevent;
use crate::wire::outline::{self, Entry, Outline};

/// A JSON number or string, kept as text so nothing passes through a float.
#[derive(Debug)]
pub(super) struct NumberText<'a>(pub(super) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for NumberText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NumberText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal number or a string holding one")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(NumberText(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NumberText(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(NumberText(Cow::Owned(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NumberText(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(NumberText(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Err(E::custom("a fractional number must be written as a string"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                // serde_json's arbitrary_precision hands numbers over as a one-entry map.
                let key: Option<Cow<'de, str>> = map.next_key()?;
                if key.as_deref() != Some("$serde_json::private::Number") {
                    return Err(serde::de::Error::invalid_type(
                        serde::de::Unexpected::Map,
                        &self,
                    ));
                }
                let text: String = map.next_value()?;
                Ok(NumberText(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `type` as written: absent (a usage event), `null` (which names no type), or a name.
#[derive(Default)]
enum TypeField<'a> {
    #[default]
    Absent,
    Null,
    Name(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for TypeField<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TypeField<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message type name")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(TypeField::Null)
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(TypeField::Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TypeField::Name(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Every field any message may carry. Which ones a type accepts is checked after parsing, so
/// that an unknown field gets a precise detail. Strings borrow from the payload when unescaped.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: TypeField<'a>,
    #[serde(borrow)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) account: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) meter: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) quantity: Option<NumberText<'a>>,
    #[serde(borrow)]
    pub(super) ts: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "dims_object")]
    pub(super) dims: Option<Vec<(String, String)>>,
    #[serde(borrow)]
    pub(super) amount: Option<NumberText<'a>>,
    pub(super) grant_id: Option<String>,
    pub(super) credit_type: Option<String>,
    pub(super) priority: Option<i64>,
    pub(super) effective_at: Option<String>,
    pub(super) expires_at: Option<String>,
    pub(super) scope: Option<Vec<String>>,
    pub(super) source: Option<String>,
    #[serde(borrow)]
    pub(super) cost_basis: Option<NumberText<'a>>,
    pub(super) reason: Option<String>,
    pub(super) plan: Option<String>,
    // `Some(None)` is an explicit `null` (clear the override); `None` is a missing field.
    #[serde(default, deserialize_with = "explicit_null")]
    pub(super) policy: Option<Option<PolicySpec>>,
    pub(super) event_id: Option<String>,
    pub(super) event_ts: Option<String>,
    pub(super) ttl: Option<String>,
    pub(super) hold_id: Option<String>,
}

/// `dims` is a JSON object of strings; repeated keys are kept here and refused by the checker.
fn dims_object<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<(String, String)>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<Vec<(String, String)>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of string values")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if pairs.len() >= DIMS_MAX * 4 {
                    return Err(serde::de::Error::custom("dims: far too many entries"));
                }
                pairs.push((key, value));
            }
            Ok(Some(pairs))
        }
    }
    deserializer.deserialize_any(Visitor)
}

fn explicit_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<PolicySpec>>, D::Error> {
    Ok(Some(Option::deserialize(deserializer)?))
}

/// Field names per message type, in the order their presence is checked.
const USAGE_FIELDS: &[&str] = &["type", "id", "account", "meter", "quantity", "ts", "dims"];
const GRANT_FIELDS: &[&str] = &[
    "type",
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
];
const VOID_FIELDS: &[&str] = &["type", "id", "account", "ts", "grant_id", "reason"];
const SET_PLAN_FIELDS: &[&str] = &["type", "id", "account", "ts", "plan"];
const SET_POLICY_FIELDS: &[&str] = &["type", "id", "account", "ts", "policy"];
const ADJUST_FIELDS: &[&str] = &[
    "type",
    "id",
    "account",
    "ts",
    "credit_type",
    "amount",
    "reason",
];
const REVERSE_FIELDS: &[&str] = &[
    "type", "id", "account", "ts", "event_id", "event_ts", "reason",
];
const RESERVE_FIELDS: &[&str] = &[
    "type", "id", "account", "ts", "meter", "quantity", "ttl", "hold_id", "dims",
];
const COMMIT_FIELDS: &[&str] = &["type", "id", "account", "ts", "hold_id", "quantity"];
const RELEASE_FIELDS: &[&str] = &["type", "id", "account", "ts", "hold_id"];
const TICK_FIELDS: &[&str] = &["type", "id", "ts"];

const MESSAGE_TYPES: &[(&str, &[&str])] = &[
    ("usage", USAGE_FIELDS),
    ("grant", GRANT_FIELDS),
    ("void_grant", VOID_FIELDS),
    ("set_plan", SET_PLAN_FIELDS),
    ("set_policy", SET_POLICY_FIELDS),
    ("adjust", ADJUST_FIELDS),
    ("reverse", REVERSE_FIELDS),
    ("reserve", RESERVE_FIELDS),
    ("commit", COMMIT_FIELDS),
    ("release", RELEASE_FIELDS),
    ("tick", TICK_FIELDS),
];

/// The fields a message of type `kind` may carry (`type` included), or `None` for no such
/// type.
pub fn fields_of(kind: &str) -> Option<&'static [&'static str]> {
    MESSAGE_TYPES
        .iter()
        .find(|(name, _)| *name == kind)
        .map(|(_, fields)| *fields)
}

impl Raw<'_> {
    /// Names of the fields present, in declaration order.
    fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("type", !matches!(self.kind, TypeField::Absent)),
            ("id", self.id.is_some()),
            ("account", self.account.is_some()),
            ("meter", self.meter.is_some()),
            ("quantity", self.quantity.is_some()),
            ("ts", self.ts.is_some()),
            ("dims", self.dims.is_some()),
            ("amount", self.amount.is_some()),
            ("grant_id", self.grant_id.is_some()),
            ("credit_type", self.credit_type.is_some()),
            ("priority", self.priority.is_some()),
            ("effective_at", self.effective_at.is_some()),
            ("expires_at", self.expires_at.is_some()),
            ("scope", self.scope.is_some()),
            ("source", self.source.is_some()),
            ("cost_basis", self.cost_basis.is_some()),
            ("reason", self.reason.is_some()),
            ("plan", self.plan.is_some()),
            ("policy", self.policy.is_some()),
            ("event_id", self.event_id.is_some()),
            ("event_ts", self.event_ts.is_some()),
            ("ttl", self.ttl.is_some()),
            ("hold_id", self.hold_id.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
    }
}

/// A dead letter carries the message's account and `ts` whenever they are readable
/// (well-formed), whichever check failed (SEMANTICS §14): the checks stop at the first failure,
/// which may come before the account or `ts` is read. An oversized payload is not read at all.
pub(super) fn with_readable(mut dead: DeadLetter, payload: &[u8]) -> DeadLetter {
    if dead.reason == DeadReason::PayloadTooLarge || (dead.account.is_some() && dead.ts.is_some()) {
        return dead;
    }
    if let Ok(Outline::Object(entries)) = outline::read(payload) {
        fill_readable(&mut dead, &entries);
    }
    dead
}

/// The account and `ts` of a message's top-level entries, where the dead letter lacks them and
/// they are well-formed. A repeated key counts with its last value, as serde_json's map keeps it.
fn fill_readable(dead: &mut DeadLetter, entries: &[Entry<'_>]) {
    let last = |key: &str| {
        entries
            .iter()
            .rev()
            .find(|entry| entry.key == key)
            .and_then(|entry| entry.string.as_deref())
    };
    if dead.account.is_none() {
        if let Some(account) = last("account").filter(|a| account_is_valid(a)) {
            dead.account = Some(account.to_string());
        }
    }
    if dead.ts.is_none() {
        dead.ts = last("ts").and_then(|ts| ts.parse().ok());
    }
}

/// Any message, read by serde (the size limit already checked).
pub(super) fn decode_serde<'a>(
    payload: &'a [u8],
    catalog: &Catalog,
) -> Result<Message<'a>, DeadLetter> {
    if let Some(checked) = decode_cloudevent(payload, catalog) {
        return checked;
    }
    let raw: Raw<'a> = match serde_json::from_slice(payload) {
        Ok(raw) => raw,
        Err(error) => return Err(classify_parse_error(payload, &error)),
    };
    let written = match &raw.kind {
        TypeField::Absent => "usage",
        TypeField::Name(name) => name.as_ref(),
        TypeField::Null => return Err(unknown_type("null")),
    };
    let Some(&(kind, allowed)) = MESSAGE_TYPES.iter().find(|(name, _)| *name == written) else {
        return Err(unknown_type(&format!("{:?}", truncate(written, 64))));
    };
    if let Some(field) = raw.present().find(|field| !allowed.contains(field)) {
        return Err(not_a_field(field, kind));
    }
    Checker::run(catalog, |checker| checker.message(kind, raw))
}

/// A CloudEvent (a top-level `specversion` key) mapped and checked as a usage event; `None`
/// for any other message. Only payloads that contain the word are outlined, so commands pay
/// one byte search.
fn decode_cloudevent<'a>(
    payload: &'a [u8],
    catalog: &Catalog,
) -> Option<Result<Message<'a>, DeadLetter>> {
    const KEY: &[u8] = b"specversion";
    if !payload.windows(KEY.len()).any(|window| window == KEY) {
        return None;
    }
    let Ok(Outline::Object(entries)) = outline::read(payload) else {
        return None;
    };
    if !cloudevent::is_cloudevent(&entries) {
        return None;
    }
    let mapped = match cloudevent::read(payload, &entries, catalog) {
        Ok(mapped) => mapped,
        Err(dead) => return Some(Err(dead)),
    };
    let fields = fast::UsageFields {
        id: Some(Cow::Owned(mapped.id)),
        account: Some(Cow::Owned(mapped.account)),
        ts: Some(Cow::Owned(mapped.ts)),
        meter: Some(Cow::Owned(mapped.meter)),
        quantity: Some(NumberText(Cow::Owned(mapped.quantity))),
        dims: Some(mapped.dims),
    };
    Some(Checker::run(catalog, |checker| checker.usage(fields)))
}

fn unknown_type(written: &str) -> DeadLetter {
    DeadLetter::new(
        DeadReason::UnknownType,
        format!("type {written} is not a known message type"),
    )
}

fn not_a_field(field: &str, kind: &str) -> DeadLetter {
    DeadLetter::new(
        DeadReason::InvalidField,
        format!("{}: not a field of a {kind} message", truncate(field, 64)),
    )
}

/// serde_json's message without its position: the dead letter names the field instead.
fn error_text(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_string(),
        None => text,
    }
}

/// A parse error: syntax (malformed JSON) or data (a field of the wrong JSON type, an unknown
/// or repeated field). For data errors the message is read again as an outline (any depth), to
/// keep SEMANTICS' order of checks (malformed JSON, then an unknown `type`, then the field) and
/// to name the field at fault. Only refused input takes this path.
fn classify_parse_error(payload: &[u8], error: &serde_json::Error) -> DeadLetter {
    use serde_json::error::Category;
    // serde's syntax verdict stands, except its depth limit, which is no syntax error: the
    // outline reads any depth.
    let depth_limit = error.to_string().starts_with("recursion limit exceeded");
    if matches!(
        error.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) && !depth_limit
    {
        return DeadLetter::new(DeadReason::MalformedJson, error.to_string());
    }
    let entries = match outline::read(payload) {
        Ok(Outline::Object(entries)) => entries,
        Ok(Outline::Other(_)) => {
            return DeadLetter::new(DeadReason::MalformedJson, "not a JSON object")
        }
        Err(syntax) => return DeadLetter::new(DeadReason::MalformedJson, syntax.to_string()),
    };
    let mut dead = field_error(&entries, error);
    fill_readable(&mut dead, &entries);
    dead
}

/// The dead letter for a well-formed object serde refused: an unknown `type`, else the first
/// field (in the order written) that is not one of its type's, repeated, or of the wrong JSON
/// type (the field read alone by serde gives what it expected).
fn field_error(entries: &[Entry<'_>], error: &serde_json::Error) -> DeadLetter {
    let written = entries.iter().rev().find(|entry| entry.key == "type");
    let kind = match written {
        None => "usage",
        Some(entry) => match entry.string.as_deref() {
            Some(name) if fields_of(name).is_some() => name,
            Some(name) => return unknown_type(&format!("{:?}", truncate(name, 64))),
            None => return unknown_type(truncate(entry.text, 64)),
        },
    };
    let Some(&(kind, allowed)) = MESSAGE_TYPES.iter().find(|(name, _)| *name == kind) else {
        return unknown_type(kind);
    };
    for (index, entry) in entries.iter().enumerate() {
        if !allowed.contains(&entry.key.as_ref()) {
            return not_a_field(&entry.key, kind);
        }
        if entries[..index]
            .iter()
            .any(|earlier| earlier.key == entry.key)
        {
            return DeadLetter::new(DeadReason::InvalidField, format!("{}: repeated", entry.key));
        }
    }
    for entry in entries {
        // The key is one of the type's fields, so it needs no escaping.
        let alone = format!("{{\"{}\":{}}}", entry.key, entry.text);
        if let Err(error) = serde_json::from_str::<Raw<'_>>(&alone) {
            return DeadLetter::new(
                DeadReason::InvalidField,
                format!("{}: {}", entry.key, error_text(&error)),
            );
        }
    }
    // Every field reads alone: serde's own message, without its position.
    DeadLetter::new(DeadReason::InvalidField, error_text(error))
}
