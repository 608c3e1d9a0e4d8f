//! The catalog: credit types, meters with versioned prices, plans, and the engine's rules.
//!
//! Owns: the compiled, validated catalog the engine prices and decides with, its TOML loader
//! ([`load`]), the pricing function ([`pricing`]) and the catalog fingerprint that snapshots
//! record.
//!
//! Must never: do I/O beyond reading the one file it is given, or accept a catalog with any
//! error. Loading validates everything and reports every error at once, each with its TOML key.
//!
//! Invariants (established by `load`, relied on by the engine without re-checking):
//! - names are unique per kind; ids (`MeterId`, `PlanId`, `CreditTypeId`) index the vectors;
//! - each meter has at least one version, sorted by `effective_from`, all distinct;
//! - tiers are ordered by strictly increasing `up_to`, the last one unbounded;
//! - every rate, multiplier, minimum and price is ≥ 0, with at most 9 decimal places;
//! - credit type scales are ≤ 9; allowance, rollover and top-up amounts fit that scale.

pub mod load;
pub mod pricing;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::decimal::{Credits, Dec, Price, Rounding};
use crate::time::{Instant, PeriodRule, Span, Zone};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CreditTypeId(pub u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeterId(pub u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlanId(pub u16);

/// The whole catalog, compiled. Shared read-only by every shard (`Arc<Catalog>`).
#[derive(Clone, Debug)]
pub struct Catalog {
    pub currency: Currency,
    pub credit_types: Vec<CreditType>,
    pub meters: Vec<Meter>,
    pub plans: Vec<Plan>,
    pub default_plan: PlanId,
    pub rules: Rules,
    /// How CloudEvents on the usage subjects become usage events, one entry per CloudEvent
    /// `type` (`[[cloudevents]]`; SEMANTICS §2.3). Empty: a CloudEvent is a dead letter.
    pub cloudevents: Vec<CloudEventMapping>,
    pub(crate) credit_type_index: HashMap<String, CreditTypeId>,
    pub(crate) meter_index: HashMap<String, MeterId>,
    pub(crate) plan_index: HashMap<String, PlanId>,
}

impl Catalog {
    pub fn credit_type_id(&self, name: &str) -> Option<CreditTypeId> {
        self.credit_type_index.get(name).copied()
    }

    pub fn meter_id(&self, name: &str) -> Option<MeterId> {
        self.meter_index.get(name).copied()
    }

    pub fn plan_id(&self, name: &str) -> Option<PlanId> {
        self.plan_index.get(name).copied()
    }

    pub fn credit_type(&self, id: CreditTypeId) -> &CreditType {
        &self.credit_types[id.0 as usize]
    }

    pub fn meter(&self, id: MeterId) -> &Meter {
        &self.meters[id.0 as usize]
    }

    pub fn plan(&self, id: PlanId) -> &Plan {
        &self.plans[id.0 as usize]
    }

    /// The mapping for CloudEvents of `event_type`, if the catalog has one.
    pub fn cloudevent(&self, event_type: &str) -> Option<&CloudEventMapping> {
        self.cloudevents.iter().find(|m| m.event_type == event_type)
    }
}

/// How a CloudEvent of one `type` becomes a usage event (SEMANTICS §2.3).
#[derive(Clone, Debug, PartialEq)]
pub struct CloudEventMapping {
    /// The CloudEvent `type` this entry takes (unique in the catalog).
    pub event_type: String,
    pub meter: MeterId,
    /// Where the account is read.
    pub account: EventField,
    pub quantity: EventQuantity,
    /// Dimension name → where its value is read; sorted by name, names unique.
    pub dims: Vec<(String, EventField)>,
}

/// A place in a CloudEvent: one of its attributes, or a value inside its `data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventField {
    Subject,
    Source,
    /// `data.<a>.<b>`: the object keys to follow from `data` (never empty).
    Data(Vec<String>),
}

impl EventField {
    /// The field as the catalog writes it (`subject`, `data.tokens`).
    pub fn path(&self) -> String {
        match self {
            EventField::Subject => "subject".into(),
            EventField::Source => "source".into(),
            EventField::Data(keys) => format!("data.{}", keys.join(".")),
        }
    }
}

/// A CloudEvent's quantity: read from the event, or the same for every event (`"1"`: count).
#[derive(Clone, Debug, PartialEq)]
pub enum EventQuantity {
    Field(EventField),
    /// The decimal as written in the catalog (checked like an event's quantity when applied).
    Constant(String),
}

/// The money that invoice lines are billed in.
#[derive(Clone, Debug, PartialEq)]
pub struct Currency {
    /// ISO 4217 code, e.g. `USD`.
    pub code: String,
    /// Decimal places of money on invoice lines (0–9).
    pub scale: u8,
    /// Rule for the single rounding of each invoice line's money.
    pub rounding: Rounding,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CreditType {
    pub name: String,
    /// Decimal places each event's cost is rounded to (0–9).
    pub scale: u8,
}

#[derive(Clone, Debug)]
pub struct Meter {
    pub name: String,
    pub credit_type: CreditTypeId,
    /// The rounding rule of each event's cost.
    pub rounding: Rounding,
    /// Sorted by `effective_from`, strictly increasing, never empty.
    pub versions: Vec<PriceVersion>,
}

impl Meter {
    /// The version in force at `ts`: the latest with `effective_from <= ts`.
    pub fn version_at(&self, ts: Instant) -> Option<&PriceVersion> {
        let index = self.versions.partition_point(|v| v.effective_from <= ts);
        index.checked_sub(1).map(|i| &self.versions[i])
    }
}

#[derive(Clone, Debug)]
pub struct PriceVersion {
    pub effective_from: Instant,
    pub model: PriceModel,
    /// Bill in blocks: the quantity is rounded up to a multiple of this (> 0).
    pub increment: Option<Dec>,
    /// Minimum charge per event with quantity > 0, in credits.
    pub minimum: Option<Dec>,
    /// First match wins.
    pub dimensions: Vec<DimensionRule>,
    /// When true, an event that matches no dimension rule is dead-lettered (`no_rate_for_dims`).
    pub dimension_required: bool,
    /// First match wins. Evaluated in `time_zone`.
    pub windows: Vec<TimeWindow>,
    pub time_zone: Zone,
    /// Stable hash of this version's canonical form (see `load::fingerprint_version`).
    pub fingerprint: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PriceModel {
    /// Every unit at `rate` credits.
    Unit { rate: Dec },
    /// Each unit at the rate of the tier its cumulative position falls in.
    Graduated { tiers: Vec<Tier> },
    /// All units of the event at the rate of the tier the cumulative quantity reaches.
    Volume { tiers: Vec<Tier> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    /// Upper bound (inclusive) of cumulative quantity; `None` for the last, unbounded tier.
    pub up_to: Option<Dec>,
    pub rate: Dec,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DimensionRule {
    /// Every pair must equal the event's dim of that key.
    pub matches: Vec<(String, String)>,
    /// Replaces the unit rate (unit model only).
    pub rate: Option<Dec>,
    pub multiplier: Option<Dec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TimeWindow {
    pub name: String,
    /// Bit `d` set = weekday `d` (0 = Monday … 6 = Sunday).
    pub days: u8,
    /// Local time of day, milliseconds since midnight; the window is `[from, to)`.
    pub from_ms: i64,
    /// `to_ms` may be 86_400_000 (end of day). `from_ms < to_ms`.
    pub to_ms: i64,
    /// Replaces the unit rate (unit model only).
    pub rate: Option<Dec>,
    pub multiplier: Option<Dec>,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub period: PeriodRule,
    pub time_zone: Zone,
    /// Money charged per period on the `allowance` invoice line.
    pub price: Price,
    pub allowances: Vec<Allowance>,
    pub policy: Policy,
    pub alerts: Vec<AlertRule>,
    /// `grant.expiring` fires this long before a grant's expiry; `None` disables it.
    pub expiring_lead: Option<Span>,
    /// `balance.runway_low` fires when a credit type's balance would run out within this at
    /// its burn rate (SEMANTICS §10.5); `None` disables it.
    pub runway_alert: Option<Span>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Allowance {
    pub credit_type: CreditTypeId,
    pub amount: Credits,
    pub priority: i32,
    /// `None`: all meters of the credit type.
    pub scope: Option<Vec<MeterId>>,
    /// Zero disables rollover.
    pub rollover_cap: Credits,
}

/// A policy as written, before validation: the `[plans.policy]` table of the catalog and the
/// `policy` object of the wire `set_policy` command have exactly these keys. Which keys a
/// `kind` admits, and their defaults, are checked by [`load::compile_policy`], the one place
/// both paths go through, so a policy means the same thing wherever it is written.
///
/// Amounts are `Fixed<9>` (not `Dec`), so precision is checked as the spec is read. Absent keys
/// are skipped when serialized: the engine keeps a spec only as its JSON text (the state view's
/// `policy_override`), never in a binary snapshot, where skipped fields would not decode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// `reject`, `overage` or `auto_topup`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Credits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Credits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Credits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_period: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// `reject` or `overage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overage_limit: Option<Credits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overage_price: Option<Price>,
}

/// One price version as a snapshot records it, so that a restart can prove the catalog did not
/// change a price already in force (SPEC §4). See `Catalog::fingerprints_in_force`.
/// One catalog setting that decides what applied messages produced, as a snapshot records it:
/// its TOML key (`rules.flush_interval`, `plans.pro.policy`) and xxh3-64 of its value's
/// canonical text ([`Catalog::setting_fingerprints`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingFingerprint {
    pub key: String,
    pub fingerprint: u64,
}

/// The names of the catalog's credit types, meters and plans in catalog order: the state
/// refers to each by its index, so a snapshot records the order and a restart accepts only
/// additions at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogOrder {
    pub credit_types: Vec<String>,
    pub meters: Vec<String>,
    pub plans: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFingerprint {
    pub meter: String,
    pub effective_from: Instant,
    pub fingerprint: u64,
}

/// What happens when credits run out. Also the `policy` object of `set_policy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Policy {
    Reject,
    Overage(Overage),
    AutoTopup(TopupRule),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overage {
    /// Largest debt allowed, in credits.
    pub limit: Credits,
    /// Money per overage credit.
    pub price: Price,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopupRule {
    pub credit_type: CreditTypeId,
    pub threshold: Credits,
    pub amount: TopupAmount,
    /// Money per credit bought; the top-up grant's cost basis.
    pub price: Price,
    pub max_per_period: u32,
    pub cooldown: Span,
    pub priority: i32,
    /// What applies when no top-up can happen (cap reached, cooldown) or it is not enough.
    pub fallback: Fallback,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum TopupAmount {
    Fixed(Credits),
    /// Top up to this balance.
    Target(Credits),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fallback {
    Reject,
    Overage(Overage),
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    pub credit_type: CreditTypeId,
    pub name: String,
    pub threshold: Threshold,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Amount(Credits),
    /// Percent (0–100) of this period's allowance plus top-ups and purchases.
    Percent(Dec),
}

/// Limits and windows that decide verdicts. They are part of the catalog (not the operational
/// config) because changing them changes history: same catalog + same log = same state.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub payload_max: usize,
    pub future_max: Span,
    pub backdate_max: Span,
    pub dedupe_window: Span,
    pub dedupe_entries_max: usize,
    /// How long a charged event stays reversible (SEMANTICS §9): at least `dedupe_window`.
    pub reversal_window: Span,
    /// Charge records kept per partition past `dedupe_window` for reversals; beyond, the
    /// oldest are forgotten early.
    pub reversal_entries_max: usize,
    pub flush_interval: Span,
    /// The window of event time a burn rate is measured over (SEMANTICS §5.6).
    pub runway_window: Span,
    pub grants_per_account_max: usize,
    pub holds_per_account_max: usize,
    pub accounts_per_partition_max: usize,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            payload_max: 16_384,
            future_max: Span(5 * 60_000),
            backdate_max: Span(35 * 86_400_000),
            dedupe_window: Span(86_400_000),
            dedupe_entries_max: 2_000_000,
            reversal_window: Span(35 * 86_400_000),
            reversal_entries_max: 1_000_000,
            flush_interval: Span(3_600_000),
            runway_window: Span(3_600_000),
            grants_per_account_max: 1_000,
            holds_per_account_max: 64,
            accounts_per_partition_max: 10_000_000,
        }
    }
}
