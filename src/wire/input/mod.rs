//! Input messages: JSON decoding and validation into typed [`Message`]s.
//!
//! Owns: the wire form of usage events and commands (SEMANTICS §2) and the verdict on bad input
//! (§2.1 checks 1–4): every refusal is a [`DeadLetter`] with a reason and a detail.
//!
//! Layout: this file holds the types, the limits and [`decode`], which checks the size and
//! then reads the message with the direct reader when it has the common usage shape
//! (`fast.rs`), else with serde (`serde_path.rs`: every type, CloudEvents, and the dead letter
//! for what serde refuses); both readers hand their fields to the same checks (`check.rs`).
//! The unit tests are in `tests.rs`.
//!
//! Must never: panic on any byte sequence, allocate on the usage fast path beyond what JSON
//! escapes force, or look at engine state (checks that need the account's clock or the price
//! live in the engine).
//!
//! Invariants: a decoded [`Message`] has every field checked against the catalog: ids and
//! account ids well-formed, meters/plans/credit types resolved, amounts exact and within the
//! precision limits, timestamps in range. Two decodes of the same bytes give the same result.

mod check;
mod fast;
mod serde_path;
#[cfg(test)]
mod tests;

pub(crate) use check::invalid;
pub use check::{account_is_valid, id_is_valid};
pub use serde_path::fields_of;

use std::borrow::Cow;

use crate::catalog::{Catalog, CreditTypeId, MeterId, PlanId, Policy};
use crate::decimal::{Credits, Price, Quantity};
use crate::time::{Instant, Span};
use check::Checker;
use serde_path::{decode_serde, with_readable};

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

/// Decodes and validates one message. `Err` is the dead letter for it.
pub fn decode<'a>(payload: &'a [u8], catalog: &Catalog) -> Result<Message<'a>, DeadLetter> {
    decode_checked(payload, catalog).map_err(|dead| with_readable(dead, payload))
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
