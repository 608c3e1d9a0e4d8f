//! Input messages: JSON decoding and validation into typed [`Message`]s.
//!
//! Owns: the wire form of usage events and commands (SEMANTICS §2) and the verdict on bad input
//! (§2.1 checks 1–4): every refusal is a [`DeadLetter`] with a reason and a detail.
//!
//! Must never: panic on any byte sequence, allocate on the usage fast path beyond what JSON
//! escapes force, or look at engine state (checks that need the account's clock or the price
//! live in the engine).
//!
//! Invariants: a decoded [`Message`] has every field checked against the catalog: ids and
//! account ids well-formed, meters/plans/credit types resolved, amounts exact and within the
//! precision limits, timestamps in range. Two decodes of the same bytes give the same result.

use std::borrow::Cow;

use serde::Deserialize;

use crate::catalog::{Catalog, CreditTypeId, MeterId, PlanId, Policy, PolicySpec};
use crate::decimal::{Credits, Dec, Price, Quantity};
use crate::time::{Instant, Span};
use crate::wire::cloudevent;
use crate::wire::outline::{self, Entry, Outline};

/// Why a message was dead-lettered (SEMANTICS §2.1). The name is the wire form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    PayloadTooLarge,
    MalformedJson,
    UnknownType,
    InvalidField,
    /// A required field is absent (or `null`).
    MissingField,
    BadAccount,
    BadId,
    BadQuantity,
    BadTimestamp,
    UnknownMeter,
    UnknownPlan,
    UnknownCreditType,
    TsTooFarAhead,
    TsTooOld,
    NoPriceInForce,
    NoRateForDims,
    CostOverflow,
    AccountLimit,
    /// The message's subject names a partition that is not the account's, or none.
    WrongPartition,
    /// The message's subject does not carry its type (SEMANTICS §2.2).
    NotAllowedOnSubject,
    /// A CloudEvent whose `type` no catalog `[[cloudevents]]` entry maps (SEMANTICS §2.3).
    UnmappedCloudevent,
}

impl DeadReason {
    /// Every reason, in declaration order.
    pub const ALL: [DeadReason; 21] = [
        DeadReason::PayloadTooLarge,
        DeadReason::MalformedJson,
        DeadReason::UnknownType,
        DeadReason::InvalidField,
        DeadReason::MissingField,
        DeadReason::BadAccount,
        DeadReason::BadId,
        DeadReason::BadQuantity,
        DeadReason::BadTimestamp,
        DeadReason::UnknownMeter,
        DeadReason::UnknownPlan,
        DeadReason::UnknownCreditType,
        DeadReason::TsTooFarAhead,
        DeadReason::TsTooOld,
        DeadReason::NoPriceInForce,
        DeadReason::NoRateForDims,
        DeadReason::CostOverflow,
        DeadReason::AccountLimit,
        DeadReason::WrongPartition,
        DeadReason::NotAllowedOnSubject,
        DeadReason::UnmappedCloudevent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DeadReason::PayloadTooLarge => "payload_too_large",
            DeadReason::MalformedJson => "malformed_json",
            DeadReason::UnknownType => "unknown_type",
            DeadReason::InvalidField => "invalid_field",
            DeadReason::MissingField => "missing_field",
            DeadReason::BadAccount => "bad_account",
            DeadReason::BadId => "bad_id",
            DeadReason::BadQuantity => "bad_quantity",
            DeadReason::BadTimestamp => "bad_timestamp",
            DeadReason::UnknownMeter => "unknown_meter",
            DeadReason::UnknownPlan => "unknown_plan",
            DeadReason::UnknownCreditType => "unknown_credit_type",
            DeadReason::TsTooFarAhead => "ts_too_far_ahead",
            DeadReason::TsTooOld => "ts_too_old",
            DeadReason::NoPriceInForce => "no_price_in_force",
            DeadReason::NoRateForDims => "no_rate_for_dims",
            DeadReason::CostOverflow => "cost_overflow",
            DeadReason::AccountLimit => "account_limit",
            DeadReason::WrongPartition => "wrong_partition",
            DeadReason::NotAllowedOnSubject => "not_allowed_on_subject",
            DeadReason::UnmappedCloudevent => "unmapped_cloudevent",
        }
    }
}

/// A refused message: the reason, a human detail, and what could be read of it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub reason: DeadReason,
    pub detail: String,
    /// The account, when the message had a well-formed one.
    pub account: Option<String>,
    /// The message's `ts`, when it had a valid one.
    pub ts: Option<Instant>,
}

impl DeadLetter {
    pub(crate) fn new(reason: DeadReason, detail: impl Into<String>) -> DeadLetter {
        DeadLetter {
            reason,
            detail: detail.into(),
            account: None,
            ts: None,
        }
    }
}

/// Largest id length in bytes (event ids, command ids, grant ids, hold ids).
pub const ID_LENGTH_MAX: usize = 128;
/// Largest account id length in characters.
pub const ACCOUNT_LENGTH_MAX: usize = 64;
/// Largest number of dims on one event.
pub const DIMS_MAX: usize = 16;
/// Largest dim key length in bytes.
pub const DIM_KEY_LENGTH_MAX: usize = 64;
/// Largest dim value length in bytes.
pub const DIM_VALUE_LENGTH_MAX: usize = 256;
/// Largest number of significant digits in an amount or quantity.
pub const DIGITS_MAX: u32 = 18;
/// Largest number of decimal places in an amount or quantity.
pub const DECIMALS_MAX: u8 = 9;
/// Largest `reason` text on a command, in bytes.
pub const REASON_LENGTH_MAX: usize = 1024;

/// Where a grant's credits came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Purchase,
    Allowance,
    Promotion,
    Rollover,
    Topup,
    Adjustment,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Purchase => "purchase",
            Source::Allowance => "allowance",
            Source::Promotion => "promotion",
            Source::Rollover => "rollover",
            Source::Topup => "topup",
            Source::Adjustment => "adjustment",
        }
    }

    fn parse(name: &str) -> Option<Source> {
        [
            Source::Purchase,
            Source::Allowance,
            Source::Promotion,
            Source::Rollover,
            Source::Topup,
            Source::Adjustment,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// A usage event: `quantity` units of `meter` used by `account` at `ts`.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage<'a> {
    pub id: Cow<'a, str>,
    pub account: Cow<'a, str>,
    pub meter: MeterId,
    pub quantity: Quantity,
    pub ts: Instant,
    /// Sorted by key, keys unique. Borrowed when the caller already holds them.
    pub dims: Cow<'a, [(String, String)]>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GrantCommand {
    pub grant_id: String,
    pub credit_type: CreditTypeId,
    pub amount: Credits,
    pub priority: i32,
    pub effective_at: Instant,
    pub expires_at: Option<Instant>,
    /// Sorted, unique.
    pub scope: Option<Vec<MeterId>>,
    pub source: Source,
    pub cost_basis: Price,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReserveCommand {
    pub hold_id: String,
    pub meter: MeterId,
    pub quantity: Quantity,
    pub ttl: Span,
    pub dims: Vec<(String, String)>,
}

/// What a command asks for (SEMANTICS §2 table).
#[derive(Clone, Debug, PartialEq)]
pub enum CommandKind {
    Grant(GrantCommand),
    VoidGrant {
        grant_id: String,
        reason: String,
    },
    SetPlan {
        plan: PlanId,
    },
    /// `None` clears the override. The text is the spec as canonical JSON (absent keys left
    /// out), which is what the state view shows.
    SetPolicy(Option<Box<(String, Policy)>>),
    Adjust {
        credit_type: CreditTypeId,
        amount: Credits,
        reason: String,
    },
    Reverse {
        event_id: String,
        /// The reversed event's `ts`, when the caller knows it: tells an event whose
        /// reversal window has passed from an unknown one (SEMANTICS §9).
        event_ts: Option<Instant>,
        reason: String,
    },
    Reserve(ReserveCommand),
    Commit {
        hold_id: String,
        quantity: Quantity,
    },
    Release {
        hold_id: String,
    },
}

impl CommandKind {
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::Grant(_) => "grant",
            CommandKind::VoidGrant { .. } => "void_grant",
            CommandKind::SetPlan { .. } => "set_plan",
            CommandKind::SetPolicy(_) => "set_policy",
            CommandKind::Adjust { .. } => "adjust",
            CommandKind::Reverse { .. } => "reverse",
            CommandKind::Reserve(_) => "reserve",
            CommandKind::Commit { .. } => "commit",
            CommandKind::Release { .. } => "release",
        }
    }
}

/// A command on one account.
#[derive(Clone, Debug, PartialEq)]
pub struct Command<'a> {
    pub id: Cow<'a, str>,
    pub account: Cow<'a, str>,
    pub ts: Instant,
    pub kind: CommandKind,
}

/// One decoded input message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message<'a> {
    Usage(Usage<'a>),
    Command(Command<'a>),
    Tick { id: Cow<'a, str>, ts: Instant },
}

impl Message<'_> {
    pub fn account(&self) -> Option<&str> {
        match self {
            Message::Usage(u) => Some(&u.account),
            Message::Command(c) => Some(&c.account),
            Message::Tick { .. } => None,
        }
    }

    pub fn ts(&self) -> Instant {
        match self {
            Message::Usage(u) => u.ts,
            Message::Command(c) => c.ts,
            Message::Tick { ts, .. } => *ts,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Message::Usage(u) => &u.id,
            Message::Command(c) => &c.id,
            Message::Tick { id, .. } => id,
        }
    }

    /// The message's `type` as written on the wire (`usage` for a usage event).
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Usage(_) => "usage",
            Message::Command(c) => c.kind.name(),
            Message::Tick { .. } => "tick",
        }
    }
}

/// A JSON number or string, kept as text so nothing passes through a float.
#[derive(Debug)]
struct NumberText<'a>(Cow<'a, str>);

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
struct Raw<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: TypeField<'a>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    account: Option<Cow<'a, str>>,
    #[serde(borrow)]
    meter: Option<Cow<'a, str>>,
    #[serde(borrow)]
    quantity: Option<NumberText<'a>>,
    #[serde(borrow)]
    ts: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "dims_object")]
    dims: Option<Vec<(String, String)>>,
    #[serde(borrow)]
    amount: Option<NumberText<'a>>,
    grant_id: Option<String>,
    credit_type: Option<String>,
    priority: Option<i64>,
    effective_at: Option<String>,
    expires_at: Option<String>,
    scope: Option<Vec<String>>,
    source: Option<String>,
    #[serde(borrow)]
    cost_basis: Option<NumberText<'a>>,
    reason: Option<String>,
    plan: Option<String>,
    // `Some(None)` is an explicit `null` (clear the override); `None` is a missing field.
    #[serde(default, deserialize_with = "explicit_null")]
    policy: Option<Option<PolicySpec>>,
    event_id: Option<String>,
    event_ts: Option<String>,
    ttl: Option<String>,
    hold_id: Option<String>,
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

/// A direct reader for the common usage event, beside serde (SEMANTICS §2.1 is unchanged).
///
/// [`usage`] reads a JSON object whose keys are only usage fields, each at most once, with
/// `type` absent or `"usage"`, every value a string without escapes or control characters
/// (`dims` an object of such strings), and nothing after it but whitespace. It returns exactly
/// the fields serde would have read into `Raw`; for anything else (escapes, numbers, `null`,
/// unknown or repeated keys, other types, malformed JSON) it returns `None` and the message
/// goes through serde, so every refusal and its detail come from one place. A test compares
/// the two readers on generated and mutated payloads.
mod fast {
    use std::borrow::Cow;

    use super::{NumberText, DIMS_MAX};

    /// What a usage event carries, as read (not yet checked).
    pub(super) struct UsageFields<'a> {
        pub id: Option<Cow<'a, str>>,
        pub account: Option<Cow<'a, str>>,
        pub ts: Option<Cow<'a, str>>,
        pub meter: Option<Cow<'a, str>>,
        pub quantity: Option<NumberText<'a>>,
        pub dims: Option<Vec<(String, String)>>,
    }

    struct Reader<'a> {
        /// The whole payload, checked to be UTF-8 once; strings are slices of it between
        /// quotes (always char boundaries).
        text: &'a str,
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        fn skip_whitespace(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
                self.at += 1;
            }
        }

        /// The next non-whitespace byte, consumed.
        fn next(&mut self) -> Option<u8> {
            self.skip_whitespace();
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            Some(byte)
        }

        /// A string without escapes or control characters, the opening quote already read.
        fn string_body(&mut self) -> Option<&'a str> {
            let start = self.at;
            loop {
                match *self.bytes.get(self.at)? {
                    b'"' => break,
                    b'\\' | 0..=0x1F => return None,
                    _ => self.at += 1,
                }
            }
            let text = self.text.get(start..self.at)?;
            self.at += 1;
            Some(text)
        }

        fn string(&mut self) -> Option<&'a str> {
            match self.next()? {
                b'"' => self.string_body(),
                _ => None,
            }
        }

        fn dims(&mut self) -> Option<Vec<(String, String)>> {
            if self.next()? != b'{' {
                return None;
            }
            let mut pairs = Vec::new();
            let mut byte = self.next()?;
            if byte == b'}' {
                return Some(pairs);
            }
            loop {
                if byte != b'"' || pairs.len() >= DIMS_MAX * 4 {
                    return None;
                }
                let key = self.string_body()?;
                if self.next()? != b':' {
                    return None;
                }
                let value = self.string()?;
                pairs.push((key.to_string(), value.to_string()));
                match self.next()? {
                    b',' => byte = self.next()?,
                    b'}' => return Some(pairs),
                    _ => return None,
                }
            }
        }
    }

    pub(super) fn usage(payload: &[u8]) -> Option<UsageFields<'_>> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut reader = Reader {
            text,
            bytes: payload,
            at: 0,
        };
        let mut fields = UsageFields {
            id: None,
            account: None,
            ts: None,
            meter: None,
            quantity: None,
            dims: None,
        };
        let mut typed = false;
        if reader.next()? != b'{' {
            return None;
        }
        let mut byte = reader.next()?;
        if byte != b'}' {
            loop {
                if byte != b'"' {
                    return None;
                }
                let key = reader.string_body()?;
                if reader.next()? != b':' {
                    return None;
                }
                // A repeated key is refused by serde: leave it to serde.
                fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
                    match slot {
                        Some(_) => None,
                        None => {
                            *slot = Some(value);
                            Some(())
                        }
                    }
                }
                match key {
                    "id" => set(&mut fields.id, Cow::Borrowed(reader.string()?))?,
                    "account" => set(&mut fields.account, Cow::Borrowed(reader.string()?))?,
                    "ts" => set(&mut fields.ts, Cow::Borrowed(reader.string()?))?,
                    "meter" => set(&mut fields.meter, Cow::Borrowed(reader.string()?))?,
                    "quantity" => set(
                        &mut fields.quantity,
                        NumberText(Cow::Borrowed(reader.string()?)),
                    )?,
                    "dims" => set(&mut fields.dims, reader.dims()?)?,
                    "type" if !typed && reader.string()? == "usage" => typed = true,
                    _ => return None,
                }
                match reader.next()? {
                    b',' => byte = reader.next()?,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        reader.skip_whitespace();
        (reader.at == payload.len()).then_some(fields)
    }
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

/// Decodes and validates one message. `Err` is the dead letter for it.
pub fn decode<'a>(payload: &'a [u8], catalog: &Catalog) -> Result<Message<'a>, DeadLetter> {
    decode_checked(payload, catalog).map_err(|dead| with_readable(dead, payload))
}

/// A dead letter carries the message's account and `ts` whenever they are readable
/// (well-formed), whichever check failed (SEMANTICS §14): the checks stop at the first failure,
/// which may come before the account or `ts` is read. An oversized payload is not read at all.
fn with_readable(mut dead: DeadLetter, payload: &[u8]) -> DeadLetter {
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

/// [`decode`] with serde reading every message, the direct usage reader left out: the same
/// result for every payload (the direct reader's agreement test and the fuzz target
/// `input_decode` check it). Not for production use: it is only slower.
#[doc(hidden)]
pub fn decode_without_direct_reader<'a>(
    payload: &'a [u8],
    catalog: &Catalog,
) -> Result<Message<'a>, DeadLetter> {
    let checked = if payload.len() > catalog.rules.payload_max {
        decode_checked(payload, catalog)
    } else {
        decode_serde(payload, catalog)
    };
    checked.map_err(|dead| with_readable(dead, payload))
}

fn decode_checked<'a>(payload: &'a [u8], catalog: &Catalog) -> Result<Message<'a>, DeadLetter> {
    if payload.len() > catalog.rules.payload_max {
        return Err(DeadLetter::new(
            DeadReason::PayloadTooLarge,
            format!(
                "{} bytes, limit {}",
                payload.len(),
                catalog.rules.payload_max
            ),
        ));
    }
    if let Some(fields) = fast::usage(payload) {
        return Checker::run(catalog, |checker| checker.usage(fields));
    }
    decode_serde(payload, catalog)
}

/// Any message, read by serde (the size limit already checked).
fn decode_serde<'a>(payload: &'a [u8], catalog: &Catalog) -> Result<Message<'a>, DeadLetter> {
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

pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub fn account_is_valid(account: &str) -> bool {
    !account.is_empty()
        && account.len() <= ACCOUNT_LENGTH_MAX
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn id_is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= ID_LENGTH_MAX && id.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// Validates fields of one message in a fixed order, remembering the account and ts it has
/// read so a dead letter can carry them.
struct Checker<'c> {
    catalog: &'c Catalog,
    account: Option<String>,
    ts: Option<Instant>,
}

type Checked<T> = Result<T, DeadLetter>;

/// A required field absent or `null` (SEMANTICS §2.1: `missing_field`, whichever the field).
fn missing(field: &str) -> DeadLetter {
    DeadLetter::new(DeadReason::MissingField, format!("{field}: required"))
}

pub(crate) fn invalid(field: &str, what: impl std::fmt::Display) -> DeadLetter {
    DeadLetter::new(DeadReason::InvalidField, format!("{field}: {what}"))
}

impl<'c> Checker<'c> {
    /// Runs `check` with a fresh checker; a dead letter carries the account and `ts` it read.
    fn run<T>(catalog: &'c Catalog, check: impl FnOnce(&mut Self) -> Checked<T>) -> Checked<T> {
        let mut checker = Checker {
            catalog,
            account: None,
            ts: None,
        };
        check(&mut checker).map_err(|mut dead| {
            dead.account = checker.account.take();
            dead.ts = checker.ts;
            dead
        })
    }

    fn message<'a>(&mut self, kind: &str, mut raw: Raw<'a>) -> Checked<Message<'a>> {
        if kind == "tick" {
            let id = self.id(raw.id)?;
            let ts = self.ts(raw.ts)?;
            return Ok(Message::Tick { id, ts });
        }
        if kind == "usage" {
            return self.usage(fast::UsageFields {
                id: raw.id,
                account: raw.account,
                ts: raw.ts,
                meter: raw.meter,
                quantity: raw.quantity,
                dims: raw.dims,
            });
        }
        let id = self.id(raw.id.take())?;
        let account = self.account(raw.account.take())?;
        let ts = self.ts(raw.ts.take())?;
        let kind = match kind {
            "grant" => self.grant(&id, ts, raw)?,
            "void_grant" => CommandKind::VoidGrant {
                grant_id: self.other_id("grant_id", raw.grant_id)?,
                reason: self.reason(raw.reason, false)?,
            },
            "set_plan" => {
                let name = raw.plan.ok_or_else(|| missing("plan"))?;
                let plan = self.catalog.plan_id(&name).ok_or_else(|| {
                    DeadLetter::new(
                        DeadReason::UnknownPlan,
                        format!("plan: {:?} is not in the catalog", truncate(&name, 64)),
                    )
                })?;
                CommandKind::SetPlan { plan }
            }
            "set_policy" => {
                let spec = raw.policy.ok_or_else(|| missing("policy"))?;
                match spec {
                    None => CommandKind::SetPolicy(None),
                    Some(spec) => {
                        let policy =
                            crate::catalog::load::compile_policy(self.catalog, &spec, "policy")
                                .map_err(|errors| {
                                    let text: Vec<String> = errors
                                        .iter()
                                        .map(|e| format!("{}: {}", e.key, e.message))
                                        .collect();
                                    DeadLetter::new(DeadReason::InvalidField, text.join("; "))
                                })?;
                        CommandKind::SetPolicy(Some(Box::new((
                            serde_json::to_string(&spec).unwrap_or_default(),
                            policy,
                        ))))
                    }
                }
            }
            "adjust" => {
                let credit_type = self.credit_type(raw.credit_type)?;
                let amount = self.amount("amount", raw.amount, credit_type)?;
                if amount.is_zero() {
                    return Err(invalid("amount", "must not be 0"));
                }
                CommandKind::Adjust {
                    credit_type,
                    amount,
                    reason: self.reason(raw.reason, true)?,
                }
            }
            "reverse" => CommandKind::Reverse {
                event_id: self.other_id("event_id", raw.event_id)?,
                event_ts: self.instant("event_ts", raw.event_ts)?,
                reason: self.reason(raw.reason, false)?,
            },
            "reserve" => {
                let meter = self.meter(raw.meter.as_deref())?;
                let quantity = self.quantity(raw.quantity, true)?;
                let ttl_text = raw.ttl.ok_or_else(|| missing("ttl"))?;
                let ttl: Span = ttl_text.parse().map_err(|e| invalid("ttl", e))?;
                if ttl.millis() <= 0 {
                    return Err(invalid("ttl", "must be > 0"));
                }
                let hold_id = match raw.hold_id {
                    Some(hold) => self.other_id("hold_id", Some(hold))?,
                    None => id.to_string(),
                };
                CommandKind::Reserve(ReserveCommand {
                    hold_id,
                    meter,
                    quantity,
                    ttl,
                    dims: self.dims(raw.dims)?,
                })
            }
            "commit" => CommandKind::Commit {
                hold_id: self.other_id("hold_id", raw.hold_id)?,
                quantity: self.quantity(raw.quantity, false)?,
            },
            "release" => CommandKind::Release {
                hold_id: self.other_id("hold_id", raw.hold_id)?,
            },
            other => unreachable!("message type {other} is listed in MESSAGE_TYPES"),
        };
        Ok(Message::Command(Command {
            id,
            account,
            ts,
            kind,
        }))
    }

    /// A usage event's fields, checked in SEMANTICS' order.
    fn usage<'a>(&mut self, fields: fast::UsageFields<'a>) -> Checked<Message<'a>> {
        let id = self.id(fields.id)?;
        let account = self.account(fields.account)?;
        let ts = self.ts(fields.ts)?;
        let meter = self.meter(fields.meter.as_deref())?;
        let quantity = self.quantity(fields.quantity, false)?;
        let dims = self.dims(fields.dims)?;
        Ok(Message::Usage(Usage {
            id,
            account,
            meter,
            quantity,
            ts,
            dims: dims.into(),
        }))
    }

    fn id<'a>(&mut self, id: Option<Cow<'a, str>>) -> Checked<Cow<'a, str>> {
        let id = id.ok_or_else(|| missing("id"))?;
        if !id_is_valid(&id) {
            return Err(DeadLetter::new(
                DeadReason::BadId,
                "id: must be 1-128 bytes of printable ASCII",
            ));
        }
        Ok(id)
    }

    fn other_id(&mut self, field: &str, id: Option<String>) -> Checked<String> {
        let id = id.ok_or_else(|| missing(field))?;
        if !id_is_valid(&id) {
            return Err(invalid(field, "must be 1-128 bytes of printable ASCII"));
        }
        Ok(id)
    }

    fn account<'a>(&mut self, account: Option<Cow<'a, str>>) -> Checked<Cow<'a, str>> {
        let account = account.ok_or_else(|| missing("account"))?;
        if !account_is_valid(&account) {
            return Err(DeadLetter::new(
                DeadReason::BadAccount,
                "account: must be 1-64 characters of A-Z a-z 0-9 _ -",
            ));
        }
        self.account = Some(account.to_string());
        Ok(account)
    }

    fn ts(&mut self, ts: Option<Cow<'_, str>>) -> Checked<Instant> {
        let text = ts.ok_or_else(|| missing("ts"))?;
        let ts = text
            .parse()
            .map_err(|e| DeadLetter::new(DeadReason::BadTimestamp, format!("ts: {e}")))?;
        self.ts = Some(ts);
        Ok(ts)
    }

    fn instant(&self, field: &str, text: Option<String>) -> Checked<Option<Instant>> {
        text.map(|text| {
            text.parse()
                .map_err(|e| DeadLetter::new(DeadReason::BadTimestamp, format!("{field}: {e}")))
        })
        .transpose()
    }

    fn meter(&self, name: Option<&str>) -> Checked<MeterId> {
        let name = name.ok_or_else(|| missing("meter"))?;
        self.catalog.meter_id(name).ok_or_else(|| {
            DeadLetter::new(
                DeadReason::UnknownMeter,
                format!("meter: {:?} is not in the catalog", truncate(name, 64)),
            )
        })
    }

    fn credit_type(&self, name: Option<String>) -> Checked<CreditTypeId> {
        let name = name.as_deref().unwrap_or("credit");
        self.catalog.credit_type_id(name).ok_or_else(|| {
            DeadLetter::new(
                DeadReason::UnknownCreditType,
                format!(
                    "credit_type: {:?} is not in the catalog",
                    truncate(name, 64)
                ),
            )
        })
    }

    /// Parses a decimal within the precision limits (18 significant digits, 9 decimals).
    fn decimal(field: &str, text: &NumberText<'_>) -> Result<Dec, String> {
        let value: Dec = text.0.parse().map_err(|e| format!("{field}: {e}"))?;
        let value = value.normalized();
        if value.digits() > DIGITS_MAX {
            return Err(format!(
                "{field}: more than {DIGITS_MAX} significant digits"
            ));
        }
        if value.scale() > DECIMALS_MAX {
            return Err(format!("{field}: more than {DECIMALS_MAX} decimal places"));
        }
        Ok(value)
    }

    fn quantity(&self, text: Option<NumberText<'_>>, positive: bool) -> Checked<Quantity> {
        let text = text.ok_or_else(|| missing("quantity"))?;
        let value = Self::decimal("quantity", &text)
            .map_err(|detail| DeadLetter::new(DeadReason::BadQuantity, detail))?;
        if value.is_negative() || (positive && value.is_zero()) {
            let rule = if positive { "> 0" } else { ">= 0" };
            return Err(DeadLetter::new(
                DeadReason::BadQuantity,
                format!("quantity: must be {rule}"),
            ));
        }
        value
            .to_fixed()
            .ok_or_else(|| DeadLetter::new(DeadReason::BadQuantity, "quantity: out of range"))
    }

    /// A credit amount of `credit_type`: within its scale. Sign is checked by the caller.
    fn amount(
        &self,
        field: &str,
        text: Option<NumberText<'_>>,
        credit_type: CreditTypeId,
    ) -> Checked<Credits> {
        let text = text.ok_or_else(|| missing(field))?;
        let value = Self::decimal(field, &text)
            .map_err(|d| DeadLetter::new(DeadReason::InvalidField, d))?;
        let credit = self.catalog.credit_type(credit_type);
        if value.scale() > credit.scale {
            return Err(invalid(
                field,
                format!(
                    "more decimal places than credit type {} allows ({})",
                    credit.name, credit.scale
                ),
            ));
        }
        value
            .to_fixed()
            .ok_or_else(|| invalid(field, "out of range"))
    }

    fn reason(&self, reason: Option<String>, required: bool) -> Checked<String> {
        match reason {
            None if required => Err(missing("reason")),
            None => Ok(String::new()),
            Some(text) if required && text.trim().is_empty() => {
                Err(invalid("reason", "must not be empty"))
            }
            Some(text) if text.len() > REASON_LENGTH_MAX => Err(invalid(
                "reason",
                format!("longer than {REASON_LENGTH_MAX} bytes"),
            )),
            Some(text) => Ok(text),
        }
    }

    fn dims(&self, dims: Option<Vec<(String, String)>>) -> Checked<Vec<(String, String)>> {
        let Some(mut dims) = dims else {
            return Ok(Vec::new());
        };
        if dims.len() > DIMS_MAX {
            return Err(invalid("dims", format!("more than {DIMS_MAX} entries")));
        }
        dims.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in dims.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(invalid(
                    "dims",
                    format!("key {:?} repeated", truncate(&pair[0].0, 64)),
                ));
            }
        }
        for (key, value) in &dims {
            if key.is_empty() || key.len() > DIM_KEY_LENGTH_MAX {
                return Err(invalid(
                    "dims",
                    format!("keys must be 1-{DIM_KEY_LENGTH_MAX} bytes"),
                ));
            }
            if value.len() > DIM_VALUE_LENGTH_MAX {
                return Err(invalid(
                    "dims",
                    format!("values must be at most {DIM_VALUE_LENGTH_MAX} bytes"),
                ));
            }
        }
        Ok(dims)
    }

    fn grant(&mut self, id: &str, ts: Instant, raw: Raw<'_>) -> Checked<CommandKind> {
        let credit_type = self.credit_type(raw.credit_type)?;
        let amount = self.amount("amount", raw.amount, credit_type)?;
        if !amount.is_positive() {
            return Err(invalid("amount", "must be > 0"));
        }
        let grant_id = match raw.grant_id {
            Some(grant_id) => self.other_id("grant_id", Some(grant_id))?,
            None => id.to_string(),
        };
        let priority = match raw.priority {
            None => 100,
            Some(p) => i32::try_from(p).map_err(|_| invalid("priority", "out of range"))?,
        };
        let effective_at = self
            .instant("effective_at", raw.effective_at)?
            .unwrap_or(ts);
        let expires_at = self.instant("expires_at", raw.expires_at)?;
        if let Some(expires_at) = expires_at {
            if expires_at <= effective_at {
                // The rule of the field `expires_at`: its specific reason (SEMANTICS §2.1).
                return Err(DeadLetter::new(
                    DeadReason::BadTimestamp,
                    "expires_at: must be after effective_at",
                ));
            }
        }
        let scope = match raw.scope {
            None => None,
            Some(names) => {
                if names.is_empty() {
                    return Err(invalid("scope", "must list at least one meter"));
                }
                let mut meters = Vec::with_capacity(names.len());
                for name in &names {
                    let meter = self.meter(Some(name))?;
                    if self.catalog.meter(meter).credit_type != credit_type {
                        return Err(invalid(
                            "scope",
                            format!("meter {name} is not priced in the grant's credit type"),
                        ));
                    }
                    meters.push(meter);
                }
                meters.sort();
                meters.dedup();
                Some(meters)
            }
        };
        let source = match raw.source {
            None => Source::Purchase,
            Some(name) => Source::parse(&name).ok_or_else(|| {
                invalid(
                    "source",
                    "must be purchase, allowance, promotion, rollover, topup or adjustment",
                )
            })?,
        };
        let cost_basis = match raw.cost_basis {
            None => Price::ZERO,
            Some(text) => {
                let value = Self::decimal("cost_basis", &text)
                    .map_err(|d| DeadLetter::new(DeadReason::InvalidField, d))?;
                if value.is_negative() {
                    return Err(invalid("cost_basis", "must be >= 0"));
                }
                value
                    .to_fixed()
                    .ok_or_else(|| invalid("cost_basis", "out of range"))?
            }
        };
        Ok(CommandKind::Grant(GrantCommand {
            grant_id,
            credit_type,
            amount,
            priority,
            effective_at,
            expires_at,
            scope,
            source,
            cost_basis,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    payload[at] = [b'"', b'\\', b',', b':', b'}', b'{', 0xFF, 0x01, b' ']
                        [rng.below(9) as usize];
                }
                2 => payload
                    .extend_from_slice([&b"x"[..], b"{}", b",", b"\0"][rng.below(4) as usize]),
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
}
