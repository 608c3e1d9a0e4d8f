//! Loading the catalog: TOML text in, a validated [`Catalog`] out, or every error at once.
//!
//! Owns: the catalog's TOML format (documented key by key in `config/catalog.toml`), its
//! validation, the compilation of policies (shared with the wire `set_policy` command through
//! [`compile_policy`]), and the price-version fingerprints that snapshots record
//! ([`fingerprint_version`], [`Catalog::fingerprints_in_force`], [`Catalog::check_history`]).
//!
//! Must never: stop at the first error, guess a value it could not read, accept a TOML float
//! (a float cannot hold `0.01` exactly), or read any file but the one it is given.
//!
//! How it reports: the text is parsed by `toml` into a plain table and walked by hand, because
//! serde's `deny_unknown_fields` stops at the first problem and an operator fixing a catalog
//! wants the whole list. Every [`CatalogError`] names its key as a path from the document root:
//! table keys joined by `.`, array entries by their **0-based position** in the file, e.g.
//! `meters[2].versions[0].tiers[1].up_to` or `plans[1].policy.threshold`. Positions (not names)
//! are used so that an entry whose name is missing or duplicated still has an exact address.
//! Syntax errors and unreadable files have an empty key and say where in their message.
//!
//! Invariants: a `Catalog` comes out of here only when the error list is empty; it then holds
//! every invariant listed in `catalog/mod.rs`. Rates, multipliers, minimums and increments are
//! stored normalized (no trailing zeros), which keeps pricing's fast path short.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;
use std::path::Path;

use toml::{Table, Value};

use super::{
    AlertRule, Allowance, Catalog, CreditType, CreditTypeId, Currency, DimensionRule, Fallback,
    Meter, MeterId, Overage, Plan, PlanId, Policy, PolicySpec, PriceModel, PriceVersion, Rules,
    Threshold, Tier, TimeWindow, TopupAmount, TopupRule, VersionFingerprint,
};
use crate::decimal::{pow10, Credits, Dec, Price, Rounding};
use crate::time::{Instant, PeriodRule, Span, Zone};

/// Longest name of a credit type, meter, plan, window or alert, in bytes (`[a-z0-9_]`). Names
/// end up inside output ids, so they are kept short and free of separators.
pub const NAME_BYTES_MAX: usize = 64;
/// Most decimal places any amount, rate or multiplier may have: `Fixed<9>` holds no more.
pub const DECIMAL_PLACES_MAX: u8 = 9;
/// Largest credit type or currency scale (decimal places kept after rounding).
pub const SCALE_MAX: u8 = 9;
/// Largest `anchor_day` of a monthly plan: every month has a 28th.
pub const ANCHOR_DAY_MAX: i64 = 28;
/// Most credit types, meters, plans, versions per meter, tiers, dimension rules or windows per
/// version: ids and explain indexes are `u16`.
pub const ENTRIES_MAX: usize = u16::MAX as usize;
/// The credit type a meter, allowance, alert or top-up uses when it names none.
pub const DEFAULT_CREDIT_TYPE: &str = "credit";
/// Priority of an allowance grant when the catalog gives none (burns before purchases).
pub const ALLOWANCE_PRIORITY_DEFAULT: i32 = 10;
/// Priority of a top-up grant when the rule gives none: the same as a purchased `grant`.
pub const TOPUP_PRIORITY_DEFAULT: i32 = 100;

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_MS: i64 = 86_400_000;

/// One problem in a catalog, at one key.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogError {
    /// Path of the offending key (see the module docs); empty for syntax and file errors.
    pub key: String,
    pub message: String,
}

impl CatalogError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> CatalogError {
        CatalogError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a catalog, in the order the walk meets them: section by section
/// (currency, rules, credit types, meters, plans, default plan), entries top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogErrors(pub Vec<CatalogError>);

impl fmt::Display for CatalogErrors {
    /// One error per line: `key: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_char('\n')?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CatalogErrors {}

/// Reads and validates the catalog file at `path`.
pub fn from_path(path: &Path) -> Result<Catalog, CatalogErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        CatalogErrors(vec![CatalogError::new(
            "",
            format!("cannot read catalog {}: {error}", path.display()),
        )])
    })?;
    from_str(&text)
}

/// Parses and validates a catalog. On failure every error found is returned, not just the first.
pub fn from_str(text: &str) -> Result<Catalog, CatalogErrors> {
    let table = text
        .parse::<Table>()
        .map_err(|error| CatalogErrors(vec![syntax_error(text, &error)]))?;
    let mut loader = Loader::default();
    let catalog = loader.catalog(&table);
    match catalog {
        Some(catalog) if loader.errors.is_empty() => Ok(catalog),
        _ => {
            assert!(
                !loader.errors.is_empty(),
                "the loader refused a catalog without saying why"
            );
            Err(CatalogErrors(loader.errors))
        }
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> CatalogError {
    let message = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(
                "TOML syntax error at line {line}, column {column}: {}",
                error.message().trim_end()
            )
        }
        None => format!("TOML syntax error: {}", error.message().trim_end()),
    };
    CatalogError::new("", message)
}

/// Checks a policy (from a plan's `[plans.policy]` or a `set_policy` command) against the
/// catalog and compiles it. `key` prefixes every error's key, e.g. `"policy"` gives
/// `policy.threshold`.
pub fn compile_policy(
    catalog: &Catalog,
    spec: &PolicySpec,
    key: &str,
) -> Result<Policy, Vec<CatalogError>> {
    let lookup = |name: &str| {
        catalog
            .credit_type_id(name)
            .map(|id| (id, Some(catalog.credit_type(id).scale)))
    };
    compile_policy_with(&lookup, spec, key)
}

/// Resolves a credit type name to its id and scale (`None` when the scale itself was invalid,
/// so no "does not fit the scale" error is piled on top).
type CreditTypeLookup<'a> = &'a dyn Fn(&str) -> Option<(CreditTypeId, Option<u8>)>;

fn compile_policy_with(
    lookup: CreditTypeLookup<'_>,
    spec: &PolicySpec,
    key: &str,
) -> Result<Policy, Vec<CatalogError>> {
    let mut errors = Vec::new();
    let kind = spec.kind.as_str();
    let overage_fallback = spec.fallback.as_deref() == Some("overage");
    let allowed: &[&str] = match kind {
        "reject" => &[],
        "overage" => &["overage_limit", "overage_price"],
        "auto_topup" if overage_fallback => &[
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
        "auto_topup" => &[
            "credit_type",
            "threshold",
            "amount",
            "target",
            "price",
            "max_per_period",
            "cooldown",
            "priority",
            "fallback",
        ],
        _ => {
            errors.push(CatalogError::new(
                at(key, "kind"),
                format!("unknown policy kind {kind:?} (reject, overage or auto_topup)"),
            ));
            return Err(errors);
        }
    };
    let present = [
        ("credit_type", spec.credit_type.is_some()),
        ("threshold", spec.threshold.is_some()),
        ("amount", spec.amount.is_some()),
        ("target", spec.target.is_some()),
        ("price", spec.price.is_some()),
        ("max_per_period", spec.max_per_period.is_some()),
        ("cooldown", spec.cooldown.is_some()),
        ("priority", spec.priority.is_some()),
        ("fallback", spec.fallback.is_some()),
        ("overage_limit", spec.overage_limit.is_some()),
        ("overage_price", spec.overage_price.is_some()),
    ];
    for (name, is_present) in present {
        if is_present && !allowed.contains(&name) {
            let message = if kind == "auto_topup" {
                "only with fallback = \"overage\"".to_string()
            } else {
                format!("not a key of a policy of kind {kind:?}")
            };
            errors.push(CatalogError::new(at(key, name), message));
        }
    }
    let policy = match kind {
        "reject" => Some(Policy::Reject),
        "overage" => compile_overage(&mut errors, key, spec, None).map(Policy::Overage),
        _ => compile_topup(&mut errors, lookup, key, spec).map(Policy::AutoTopup),
    };
    match policy {
        Some(policy) if errors.is_empty() => Ok(policy),
        _ => Err(errors),
    }
}

fn compile_overage(
    errors: &mut Vec<CatalogError>,
    key: &str,
    spec: &PolicySpec,
    scale: Option<u8>,
) -> Option<Overage> {
    let limit = required_amount(
        errors,
        key,
        "overage_limit",
        spec.overage_limit,
        scale,
        false,
    );
    let price = required_amount(
        errors,
        key,
        "overage_price",
        spec.overage_price,
        None,
        false,
    );
    Some(Overage {
        limit: limit?,
        price: price?,
    })
}

/// A required amount that must be ≥ 0 (or > 0 when `positive`) and, given a credit type scale,
/// fit it.
fn required_amount(
    errors: &mut Vec<CatalogError>,
    key: &str,
    name: &str,
    value: Option<Credits>,
    scale: Option<u8>,
    positive: bool,
) -> Option<Credits> {
    let Some(value) = value else {
        errors.push(CatalogError::new(at(key, name), "missing required key"));
        return None;
    };
    check_amount(errors, &at(key, name), value, scale, positive)
}

fn check_amount(
    errors: &mut Vec<CatalogError>,
    key: &str,
    value: Credits,
    scale: Option<u8>,
    positive: bool,
) -> Option<Credits> {
    let before = errors.len();
    if positive && !value.is_positive() {
        errors.push(CatalogError::new(key, "must be > 0"));
    } else if value.is_negative() {
        errors.push(CatalogError::new(key, "must be >= 0"));
    }
    if let Some(scale) = scale {
        if !fits_scale(value, scale) {
            errors.push(CatalogError::new(
                key,
                format!("has more decimal places than its credit type's scale ({scale})"),
            ));
        }
    }
    (errors.len() == before).then_some(value)
}

fn compile_topup(
    errors: &mut Vec<CatalogError>,
    lookup: CreditTypeLookup<'_>,
    key: &str,
    spec: &PolicySpec,
) -> Option<TopupRule> {
    let type_name = spec.credit_type.as_deref().unwrap_or(DEFAULT_CREDIT_TYPE);
    let credit_type = lookup(type_name);
    if credit_type.is_none() {
        errors.push(unknown_credit_type(
            &at(key, "credit_type"),
            type_name,
            spec.credit_type.is_none(),
        ));
    }
    let scale = credit_type.and_then(|(_, scale)| scale);
    let threshold = required_amount(errors, key, "threshold", spec.threshold, scale, false);
    let amount = match (spec.amount, spec.target) {
        (Some(amount), None) => {
            check_amount(errors, &at(key, "amount"), amount, scale, true).map(TopupAmount::Fixed)
        }
        (None, Some(target)) => {
            let target = check_amount(errors, &at(key, "target"), target, scale, true);
            if let (Some(target), Some(threshold)) = (target, threshold) {
                if target <= threshold {
                    // A top-up to a target at or below the threshold leaves the balance below
                    // it, so every following event would top up again until the cap.
                    errors.push(CatalogError::new(
                        at(key, "target"),
                        "must be above threshold",
                    ));
                }
            }
            target.map(TopupAmount::Target)
        }
        (Some(_), Some(_)) => {
            errors.push(CatalogError::new(
                at(key, "target"),
                "give exactly one of amount and target, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(CatalogError::new(
                at(key, "amount"),
                "missing required key (give exactly one of amount and target)",
            ));
            None
        }
    };
    let price = required_amount(errors, key, "price", spec.price, None, false);
    let max_per_period = match spec.max_per_period {
        None => {
            errors.push(CatalogError::new(
                at(key, "max_per_period"),
                "missing required key (the cap on automatic purchases per period)",
            ));
            None
        }
        Some(0) => {
            errors.push(CatalogError::new(
                at(key, "max_per_period"),
                "must be >= 1 (use the fallback policy itself to never top up)",
            ));
            None
        }
        Some(count) => Some(count),
    };
    let cooldown = spec.cooldown.unwrap_or(Span::ZERO);
    if cooldown < Span::ZERO {
        errors.push(CatalogError::new(at(key, "cooldown"), "must be >= 0"));
    }
    let fallback = match spec.fallback.as_deref() {
        None | Some("reject") => Some(Fallback::Reject),
        Some("overage") => compile_overage(errors, key, spec, scale).map(Fallback::Overage),
        Some(other) => {
            errors.push(CatalogError::new(
                at(key, "fallback"),
                format!("unknown fallback {other:?} (reject or overage)"),
            ));
            None
        }
    };
    Some(TopupRule {
        credit_type: credit_type?.0,
        threshold: threshold?,
        amount: amount?,
        price: price?,
        max_per_period: max_per_period?,
        cooldown,
        priority: spec.priority.unwrap_or(TOPUP_PRIORITY_DEFAULT),
        fallback: fallback?,
    })
}

fn unknown_credit_type(key: &str, name: &str, defaulted: bool) -> CatalogError {
    let message = if defaulted {
        format!("no credit type named {name:?} (the default): name one with credit_type")
    } else {
        format!("unknown credit type {name:?}")
    };
    CatalogError::new(key, message)
}

/// True when `value` has no more decimal places than `scale`.
fn fits_scale(value: Credits, scale: u8) -> bool {
    let unit = pow10(u32::from(Credits::SCALE.saturating_sub(scale))).unwrap_or(1);
    value.0 % unit == 0
}

// ---------------------------------------------------------------------------------------------
// Fingerprints

/// xxh3-64 of a canonical text of `version` together with what else decides its prices: the
/// meter's name, its credit type's name and scale, and its rounding rule. Equal prices give equal
/// fingerprints whatever the TOML spelling (`"0.010"` and `"0.01"`, key order, comments).
pub fn fingerprint_version(
    meter_name: &str,
    credit_type: &CreditType,
    rounding: Rounding,
    version: &PriceVersion,
) -> u64 {
    let text = canonical_version(meter_name, credit_type, rounding, version);
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

fn canonical_version(
    meter_name: &str,
    credit_type: &CreditType,
    rounding: Rounding,
    version: &PriceVersion,
) -> String {
    fn option(value: Option<Dec>) -> String {
        value.map_or_else(|| "none".to_string(), |v| v.to_string())
    }
    fn tiers(out: &mut String, tiers: &[Tier]) {
        for tier in tiers {
            let _ = write!(out, "(up_to={},rate={})", option(tier.up_to), tier.rate);
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = write!(
        out,
        "v1;meter={meter_name:?};credit_type={:?};scale={};rounding={};effective_from={};",
        credit_type.name,
        credit_type.scale,
        rounding.name(),
        version.effective_from.millis()
    );
    match &version.model {
        PriceModel::Unit { rate } => {
            let _ = write!(out, "model=unit;rate={rate};");
        }
        PriceModel::Graduated { tiers: list } => {
            out.push_str("model=graduated;tiers=");
            tiers(&mut out, list);
            out.push(';');
        }
        PriceModel::Volume { tiers: list } => {
            out.push_str("model=volume;tiers=");
            tiers(&mut out, list);
            out.push(';');
        }
    }
    let _ = write!(
        out,
        "increment={};minimum={};time_zone={:?};dimension_required={};dimensions=",
        option(version.increment),
        option(version.minimum),
        version.time_zone.name(),
        version.dimension_required
    );
    for rule in &version.dimensions {
        out.push_str("(match=");
        for (k, v) in &rule.matches {
            let _ = write!(out, "{k:?}={v:?},");
        }
        let _ = write!(
            out,
            ";rate={};multiplier={})",
            option(rule.rate),
            option(rule.multiplier)
        );
    }
    out.push_str(";windows=");
    for window in &version.windows {
        let _ = write!(
            out,
            "(name={:?};days={};from={};to={};rate={};multiplier={})",
            window.name,
            window.days,
            window.from_ms,
            window.to_ms,
            option(window.rate),
            option(window.multiplier)
        );
    }
    out
}

impl Catalog {
    /// Every price version in force at `clock` (`effective_from <= clock`), in catalog order. A
    /// snapshot records this list so that a restart can check it with [`Catalog::check_history`].
    pub fn fingerprints_in_force(&self, clock: Instant) -> Vec<VersionFingerprint> {
        self.meters
            .iter()
            .flat_map(|meter| {
                meter
                    .versions
                    .iter()
                    .take_while(move |v| v.effective_from <= clock)
                    .map(|v| VersionFingerprint {
                        meter: meter.name.clone(),
                        effective_from: v.effective_from,
                        fingerprint: v.fingerprint,
                    })
            })
            .collect()
    }

    /// Checks that this catalog prices the past exactly as the one a snapshot was taken with.
    /// Reports every recorded version that is missing or changed, and every version inserted
    /// before the latest recorded version of its meter. Versions added after the latest recorded
    /// one of their meter are accepted (they are the future); so are new meters. To also refuse
    /// versions added between the last recorded one and the snapshot's clock, use
    /// [`Catalog::check_history_at`].
    pub fn check_history(&self, recorded: &[VersionFingerprint]) -> Result<(), Vec<String>> {
        self.check_history_inner(recorded, None)
    }

    /// [`Catalog::check_history`], and also refuses any version (of any meter, new or not) with
    /// `effective_from <= clock` that the snapshot did not record: it would reprice events the
    /// snapshot already accounted for.
    pub fn check_history_at(
        &self,
        recorded: &[VersionFingerprint],
        clock: Instant,
    ) -> Result<(), Vec<String>> {
        self.check_history_inner(recorded, Some(clock))
    }

    fn check_history_inner(
        &self,
        recorded: &[VersionFingerprint],
        clock: Option<Instant>,
    ) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut latest: HashMap<&str, Instant> = HashMap::new();
        let mut seen: HashSet<(&str, Instant)> = HashSet::new();
        for entry in recorded {
            seen.insert((entry.meter.as_str(), entry.effective_from));
            let last = latest
                .entry(entry.meter.as_str())
                .or_insert(entry.effective_from);
            *last = (*last).max(entry.effective_from);
            let Some(meter) = self.meter_id(&entry.meter).map(|id| self.meter(id)) else {
                problems.push(format!(
                    "meter {:?}: no longer in the catalog, but its version effective from {} was \
                     in force",
                    entry.meter, entry.effective_from
                ));
                continue;
            };
            match meter
                .versions
                .iter()
                .find(|v| v.effective_from == entry.effective_from)
            {
                None => problems.push(format!(
                    "meter {:?}: the version effective from {} is missing, but it was in force",
                    entry.meter, entry.effective_from
                )),
                Some(version) if version.fingerprint != entry.fingerprint => {
                    problems.push(format!(
                        "meter {:?}: the version effective from {} changed (fingerprint {:016x} \
                         recorded, {:016x} now)",
                        entry.meter, entry.effective_from, entry.fingerprint, version.fingerprint
                    ))
                }
                Some(_) => {}
            }
        }
        for meter in &self.meters {
            let horizon = match (latest.get(meter.name.as_str()), clock) {
                (Some(&last), Some(clock)) => Some(last.max(clock)),
                (Some(&last), None) => Some(last),
                (None, clock) => clock,
            };
            let Some(horizon) = horizon else { continue };
            for version in &meter.versions {
                if version.effective_from <= horizon
                    && !seen.contains(&(meter.name.as_str(), version.effective_from))
                {
                    problems.push(format!(
                        "meter {:?}: a version effective from {} was added, but that time is \
                         already history",
                        meter.name, version.effective_from
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The walk

/// Marks a value whose error has already been recorded, so callers neither report it again nor
/// pile a "missing key" on top.
struct Reported;

/// `Ok(None)`: absent. `Ok(Some)`: present and well-typed. `Err`: present and reported.
type Got<T> = Result<Option<T>, Reported>;

fn at(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn item(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `HH:MM` to milliseconds since midnight; `24:00` only when `end` is true.
fn parse_time_of_day(text: &str, end: bool) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 5 || bytes[2] != b':' {
        return None;
    }
    let digits = [bytes[0], bytes[1], bytes[3], bytes[4]];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hours = i64::from(digits[0] - b'0') * 10 + i64::from(digits[1] - b'0');
    let minutes = i64::from(digits[2] - b'0') * 10 + i64::from(digits[3] - b'0');
    let valid = (hours < 24 && minutes < 60) || (end && hours == 24 && minutes == 0);
    valid.then_some(hours * 3_600_000 + minutes * 60_000)
}

fn weekday_index(name: &str) -> Option<u8> {
    WEEKDAYS.iter().position(|d| *d == name).map(|i| i as u8)
}

struct CreditTypeDraft {
    name: String,
    /// `None` when the scale was invalid (the error is recorded).
    scale: Option<u8>,
}

struct MeterDraft {
    credit_type: Option<CreditTypeId>,
    /// `None` when the meter had an error.
    meter: Option<Meter>,
}

#[derive(Default)]
struct Loader {
    errors: Vec<CatalogError>,
    credit_types: Vec<CreditTypeDraft>,
    credit_type_index: HashMap<String, CreditTypeId>,
    meters: Vec<MeterDraft>,
    meter_index: HashMap<String, MeterId>,
    plans: Vec<Option<Plan>>,
    plan_index: HashMap<String, PlanId>,
}

impl Loader {
    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(CatalogError::new(key, message));
    }

    fn wrong_type(&mut self, key: &str, expected: &str, found: &Value) -> Reported {
        self.error(
            key,
            format!("expected {expected}, found {}", type_name(found)),
        );
        Reported
    }

    /// Reports every key of `table` not in `allowed`.
    fn keys(&mut self, table: &Table, key: &str, allowed: &[&str]) {
        for name in table.keys() {
            if !allowed.contains(&name.as_str()) {
                self.error(
                    at(key, name),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    fn required<T>(&mut self, key: &str, name: &str, got: Got<T>) -> Option<T> {
        match got {
            Ok(Some(value)) => Some(value),
            Ok(None) => {
                self.error(at(key, name), "missing required key");
                None
            }
            Err(Reported) => None,
        }
    }

    fn string<'t>(&mut self, table: &'t Table, key: &str, name: &str) -> Got<&'t str> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.wrong_type(&at(key, name), "a string", other)),
        }
    }

    fn integer(&mut self, table: &Table, key: &str, name: &str) -> Got<i64> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Integer(value)) => Ok(Some(*value)),
            Some(other) => Err(self.wrong_type(&at(key, name), "an integer", other)),
        }
    }

    /// An integer in `min..=max`.
    fn integer_in(&mut self, table: &Table, key: &str, name: &str, min: i64, max: i64) -> Got<i64> {
        match self.integer(table, key, name)? {
            Some(value) if value < min || value > max => {
                self.error(at(key, name), format!("must be between {min} and {max}"));
                Err(Reported)
            }
            other => Ok(other),
        }
    }

    fn boolean(&mut self, table: &Table, key: &str, name: &str) -> Got<bool> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Boolean(value)) => Ok(Some(*value)),
            Some(other) => Err(self.wrong_type(&at(key, name), "a boolean", other)),
        }
    }

    fn table<'t>(&mut self, table: &'t Table, key: &str, name: &str) -> Got<&'t Table> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Table(inner)) => Ok(Some(inner)),
            Some(other) => Err(self.wrong_type(&at(key, name), "a table", other)),
        }
    }

    fn array<'t>(&mut self, table: &'t Table, key: &str, name: &str) -> Got<&'t [Value]> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Array(values)) => Ok(Some(values)),
            Some(other) => Err(self.wrong_type(&at(key, name), "an array", other)),
        }
    }

    /// An array of tables (`[[name]]`), each with its key; entries that are not tables are
    /// reported and skipped.
    fn tables<'t>(
        &mut self,
        table: &'t Table,
        key: &str,
        name: &str,
    ) -> Got<Vec<(String, &'t Table)>> {
        let Some(values) = self.array(table, key, name)? else {
            return Ok(None);
        };
        let base = at(key, name);
        if values.len() > ENTRIES_MAX {
            self.error(&base, format!("more than {ENTRIES_MAX} entries"));
            return Err(Reported);
        }
        let mut out = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let entry_key = item(&base, index);
            match value {
                Value::Table(inner) => out.push((entry_key, inner)),
                other => {
                    self.wrong_type(&entry_key, "a table", other);
                }
            }
        }
        Ok(Some(out))
    }

    /// A decimal written as a string (`"0.01"`) or an integer, with at most 9 decimal places.
    /// Returned normalized.
    fn decimal_value(&mut self, key: &str, value: &Value) -> Result<Dec, Reported> {
        let dec = match value {
            Value::String(text) => match text.parse::<Dec>() {
                Ok(dec) => dec,
                Err(error) => {
                    self.error(key, format!("not a decimal number ({error}): {text:?}"));
                    return Err(Reported);
                }
            },
            Value::Integer(value) => Dec::from_int(i128::from(*value)),
            Value::Float(_) => {
                self.error(
                    key,
                    "a TOML float is inexact: write the number as a string, e.g. \"0.01\"",
                );
                return Err(Reported);
            }
            other => {
                return Err(self.wrong_type(
                    key,
                    "a decimal string (e.g. \"0.01\") or an integer",
                    other,
                ))
            }
        };
        let dec = dec.normalized();
        if dec.scale() > DECIMAL_PLACES_MAX {
            self.error(
                key,
                format!("more than {DECIMAL_PLACES_MAX} decimal places"),
            );
            return Err(Reported);
        }
        Ok(dec)
    }

    fn decimal(&mut self, table: &Table, key: &str, name: &str) -> Got<Dec> {
        match table.get(name) {
            None => Ok(None),
            Some(value) => self.decimal_value(&at(key, name), value).map(Some),
        }
    }

    /// A decimal that must be ≥ 0 (or > 0 when `positive`).
    fn decimal_sign(&mut self, table: &Table, key: &str, name: &str, positive: bool) -> Got<Dec> {
        match self.decimal(table, key, name)? {
            Some(value) if positive && value <= Dec::ZERO => {
                self.error(at(key, name), "must be > 0");
                Err(Reported)
            }
            Some(value) if value < Dec::ZERO => {
                self.error(at(key, name), "must be >= 0");
                Err(Reported)
            }
            other => Ok(other),
        }
    }

    /// A decimal as `Fixed<9>` credits or money (sign unchecked).
    fn fixed(&mut self, table: &Table, key: &str, name: &str) -> Got<Credits> {
        match self.decimal(table, key, name)? {
            None => Ok(None),
            Some(value) => match value.to_fixed::<9>() {
                Some(fixed) => Ok(Some(fixed)),
                None => {
                    self.error(at(key, name), "too large");
                    Err(Reported)
                }
            },
        }
    }

    /// An amount of credits of a credit type: ≥ 0 (or > 0), fitting the type's scale.
    fn credits(
        &mut self,
        table: &Table,
        key: &str,
        name: &str,
        scale: Option<u8>,
        positive: bool,
    ) -> Got<Credits> {
        match self.fixed(table, key, name)? {
            None => Ok(None),
            Some(value) => {
                let mut errors = Vec::new();
                let checked = check_amount(&mut errors, &at(key, name), value, scale, positive);
                self.errors.append(&mut errors);
                checked.map(Some).ok_or(Reported)
            }
        }
    }

    fn span(&mut self, table: &Table, key: &str, name: &str) -> Got<Span> {
        match self.string(table, key, name)? {
            None => Ok(None),
            Some(text) => match text.parse::<Span>() {
                Ok(span) => Ok(Some(span)),
                Err(error) => {
                    self.error(at(key, name), format!("{error}; found {text:?}"));
                    Err(Reported)
                }
            },
        }
    }

    /// An RFC 3339 timestamp with an offset, as a string or a TOML offset datetime.
    fn instant(&mut self, table: &Table, key: &str, name: &str) -> Got<Instant> {
        let text = match table.get(name) {
            None => return Ok(None),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Datetime(datetime)) => datetime.to_string(),
            Some(other) => {
                return Err(self.wrong_type(&at(key, name), "an RFC 3339 timestamp", other))
            }
        };
        match text.parse::<Instant>() {
            Ok(instant) => Ok(Some(instant)),
            Err(error) => {
                self.error(at(key, name), format!("{error}; found {text:?}"));
                Err(Reported)
            }
        }
    }

    fn zone(&mut self, table: &Table, key: &str) -> Option<Zone> {
        match self.string(table, key, "time_zone") {
            Ok(None) => Some(Zone::utc()),
            Ok(Some(name)) => {
                let zone = Zone::named(name);
                if zone.is_none() {
                    self.error(
                        at(key, "time_zone"),
                        format!("unknown time zone {name:?} (an IANA name like \"Europe/Paris\")"),
                    );
                }
                zone
            }
            Err(Reported) => None,
        }
    }

    fn rounding(&mut self, table: &Table, key: &str, default: Rounding) -> Option<Rounding> {
        match self.string(table, key, "rounding") {
            Ok(None) => Some(default),
            Ok(Some(name)) => {
                let rule = Rounding::parse(name);
                if rule.is_none() {
                    self.error(
                        at(key, "rounding"),
                        format!("unknown rounding {name:?} (half_even, half_up, up or down)"),
                    );
                }
                rule
            }
            Err(Reported) => None,
        }
    }

    /// A required `name` key holding a valid name.
    fn name(&mut self, table: &Table, key: &str) -> Option<String> {
        let got = self.string(table, key, "name");
        let name = self.required(key, "name", got)?;
        if !valid_name(name) {
            self.error(
                at(key, "name"),
                format!("{name:?} is not a name: 1 to {NAME_BYTES_MAX} of a-z, 0-9, _"),
            );
            return None;
        }
        Some(name.to_string())
    }

    /// The `credit_type` key (default `credit`), resolved. Returns the id and its scale.
    fn credit_type_ref(&mut self, table: &Table, key: &str) -> Option<(CreditTypeId, Option<u8>)> {
        let (name, defaulted) = match self.string(table, key, "credit_type") {
            Ok(None) => (DEFAULT_CREDIT_TYPE, true),
            Ok(Some(name)) => (name, false),
            Err(Reported) => return None,
        };
        match self.credit_type_index.get(name) {
            Some(&id) => Some((id, self.credit_types[id.0 as usize].scale)),
            None => {
                let error = unknown_credit_type(&at(key, "credit_type"), name, defaulted);
                self.errors.push(error);
                None
            }
        }
    }

    // -- the document --------------------------------------------------------------------------

    fn catalog(&mut self, root: &Table) -> Option<Catalog> {
        self.keys(
            root,
            "",
            &[
                "default_plan",
                "currency",
                "rules",
                "credit_types",
                "meters",
                "plans",
            ],
        );
        let currency = match self.table(root, "", "currency") {
            Ok(Some(table)) => self.currency(table, "currency"),
            Ok(None) => {
                self.error("currency", "missing required table");
                None
            }
            Err(Reported) => None,
        };
        let rules = match self.table(root, "", "rules") {
            Ok(Some(table)) => self.rules(table, "rules"),
            Ok(None) => Some(Rules::default()),
            Err(Reported) => None,
        };
        match self.tables(root, "", "credit_types") {
            Ok(Some(entries)) if entries.is_empty() => {
                self.error("credit_types", "at least one credit type is required")
            }
            Ok(Some(entries)) => {
                for (key, table) in entries {
                    self.credit_type(table, &key);
                }
            }
            Ok(None) => self.error(
                "credit_types",
                "missing required key (at least one credit type)",
            ),
            Err(Reported) => {}
        }
        match self.tables(root, "", "meters") {
            Ok(Some(entries)) => {
                for (key, table) in entries {
                    self.meter(table, &key);
                }
            }
            Ok(None) => {}
            Err(Reported) => {}
        }
        match self.tables(root, "", "plans") {
            Ok(Some(entries)) => {
                for (key, table) in entries {
                    self.plan(table, &key);
                }
            }
            Ok(None) => {}
            Err(Reported) => {}
        }
        let default_plan = match self.string(root, "", "default_plan") {
            Ok(Some(name)) => {
                let id = self.plan_index.get(name).copied();
                if id.is_none() {
                    self.error("default_plan", format!("no plan named {name:?}"));
                }
                id
            }
            Ok(None) => {
                self.error(
                    "default_plan",
                    "missing required key (the plan new accounts start on)",
                );
                None
            }
            Err(Reported) => None,
        };
        if !self.errors.is_empty() {
            return None;
        }
        let credit_types = self
            .credit_types
            .iter()
            .map(|draft| {
                Some(CreditType {
                    name: draft.name.clone(),
                    scale: draft.scale?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let meters = self
            .meters
            .iter_mut()
            .map(|draft| draft.meter.take())
            .collect::<Option<Vec<_>>>()?;
        let plans = self
            .plans
            .iter_mut()
            .map(Option::take)
            .collect::<Option<Vec<_>>>()?;
        Some(Catalog {
            currency: currency?,
            credit_types,
            meters,
            plans,
            default_plan: default_plan?,
            rules: rules?,
            credit_type_index: std::mem::take(&mut self.credit_type_index),
            meter_index: std::mem::take(&mut self.meter_index),
            plan_index: std::mem::take(&mut self.plan_index),
        })
    }

    fn currency(&mut self, table: &Table, key: &str) -> Option<Currency> {
        self.keys(table, key, &["code", "scale", "rounding"]);
        let got = self.string(table, key, "code");
        let code = self.required(key, "code", got);
        if let Some(code) = code {
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                self.error(
                    at(key, "code"),
                    format!(
                        "{code:?} is not an ISO 4217 code (three capital letters, e.g. \"USD\")"
                    ),
                );
            }
        }
        let scale = self.integer_in(table, key, "scale", 0, i64::from(SCALE_MAX));
        let rounding = self.rounding(table, key, Rounding::HalfUp);
        Some(Currency {
            code: code?.to_string(),
            scale: scale.ok()?.map_or(2, |s| s as u8),
            rounding: rounding?,
        })
    }

    fn rules(&mut self, table: &Table, key: &str) -> Option<Rules> {
        self.keys(
            table,
            key,
            &[
                "payload_max",
                "future_max",
                "backdate_max",
                "dedupe_window",
                "dedupe_entries_max",
                "flush_interval",
                "grants_per_account_max",
                "holds_per_account_max",
                "accounts_per_partition_max",
            ],
        );
        let defaults = Rules::default();
        let before = self.errors.len();
        let count = |loader: &mut Loader, name: &str, default: usize| -> usize {
            match loader.integer_in(table, key, name, 1, i64::MAX) {
                Ok(Some(value)) => usize::try_from(value).unwrap_or(usize::MAX),
                _ => default,
            }
        };
        let payload_max = count(self, "payload_max", defaults.payload_max);
        let dedupe_entries_max = count(self, "dedupe_entries_max", defaults.dedupe_entries_max);
        let grants_per_account_max = count(
            self,
            "grants_per_account_max",
            defaults.grants_per_account_max,
        );
        let holds_per_account_max = count(
            self,
            "holds_per_account_max",
            defaults.holds_per_account_max,
        );
        let accounts_per_partition_max = count(
            self,
            "accounts_per_partition_max",
            defaults.accounts_per_partition_max,
        );
        // `future_max` and `backdate_max` may be 0 (no clock skew, no backdating tolerated); a
        // zero dedupe window would forget ids at once and a zero flush interval has no
        // multiples, so those two must be positive.
        let duration = |loader: &mut Loader, name: &str, default: Span, positive: bool| match loader
            .span(table, key, name)
        {
            Ok(Some(span)) if positive && span <= Span::ZERO => {
                loader.error(at(key, name), "must be > 0");
                default
            }
            Ok(Some(span)) => span,
            _ => default,
        };
        let future_max = duration(self, "future_max", defaults.future_max, false);
        let backdate_max = duration(self, "backdate_max", defaults.backdate_max, false);
        let dedupe_window = duration(self, "dedupe_window", defaults.dedupe_window, true);
        let flush_interval = duration(self, "flush_interval", defaults.flush_interval, true);
        (self.errors.len() == before).then_some(Rules {
            payload_max,
            future_max,
            backdate_max,
            dedupe_window,
            dedupe_entries_max,
            flush_interval,
            grants_per_account_max,
            holds_per_account_max,
            accounts_per_partition_max,
        })
    }

    fn credit_type(&mut self, table: &Table, key: &str) {
        self.keys(table, key, &["name", "scale"]);
        let name = self.name(table, key);
        let got = self.integer_in(table, key, "scale", 0, i64::from(SCALE_MAX));
        let scale = self.required(key, "scale", got).map(|s| s as u8);
        let Some(name) = name else { return };
        if self.credit_type_index.contains_key(&name) {
            self.error(at(key, "name"), format!("duplicate credit type {name:?}"));
            return;
        }
        let id = CreditTypeId(self.credit_types.len() as u16);
        self.credit_type_index.insert(name.clone(), id);
        self.credit_types.push(CreditTypeDraft { name, scale });
    }

    fn meter(&mut self, table: &Table, key: &str) {
        let before = self.errors.len();
        self.keys(table, key, &["name", "credit_type", "rounding", "versions"]);
        let name = self.name(table, key);
        let credit_type = self.credit_type_ref(table, key);
        let rounding = self.rounding(table, key, Rounding::HalfEven);
        let mut versions = Vec::new();
        let mut previous: Option<(Instant, String)> = None;
        match self.tables(table, key, "versions") {
            Ok(Some(entries)) if entries.is_empty() => self.error(
                at(key, "versions"),
                "at least one price version is required",
            ),
            Ok(Some(entries)) => {
                for (version_key, version_table) in entries {
                    let (from, version) = self.version(version_table, &version_key);
                    if let Some(from) = from {
                        if let Some((last, last_key)) = &previous {
                            if from <= *last {
                                self.error(
                                    at(&version_key, "effective_from"),
                                    format!(
                                        "must be after {last_key}.effective_from ({last}): \
                                         versions are listed oldest first, all distinct"
                                    ),
                                );
                            }
                        }
                        previous = Some((from, version_key.clone()));
                    }
                    versions.extend(version);
                }
            }
            Ok(None) => self.error(
                at(key, "versions"),
                "missing required key (at least one price version)",
            ),
            Err(Reported) => {}
        }
        let Some(name) = name else { return };
        if self.meter_index.contains_key(&name) {
            self.error(at(key, "name"), format!("duplicate meter {name:?}"));
            return;
        }
        let id = MeterId(self.meters.len() as u16);
        self.meter_index.insert(name.clone(), id);
        let credit_type_id = credit_type.map(|(id, _)| id);
        let meter = match (credit_type_id, rounding) {
            (Some(credit_type), Some(rounding)) if self.errors.len() == before => {
                let draft = &self.credit_types[credit_type.0 as usize];
                let scale = draft.scale;
                let type_name = draft.name.clone();
                scale.map(|scale| {
                    let described = CreditType {
                        name: type_name,
                        scale,
                    };
                    for version in &mut versions {
                        version.fingerprint =
                            fingerprint_version(&name, &described, rounding, version);
                    }
                    Meter {
                        name: name.clone(),
                        credit_type,
                        rounding,
                        versions,
                    }
                })
            }
            _ => None,
        };
        self.meters.push(MeterDraft {
            credit_type: credit_type_id,
            meter,
        });
    }

    /// One price version. Returns its `effective_from` even when something else is wrong, so the
    /// ordering of versions is still checked.
    fn version(&mut self, table: &Table, key: &str) -> (Option<Instant>, Option<PriceVersion>) {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &[
                "effective_from",
                "model",
                "rate",
                "increment",
                "minimum",
                "time_zone",
                "dimension_required",
                "tiers",
                "dimensions",
                "windows",
            ],
        );
        let got = self.instant(table, key, "effective_from");
        let effective_from = self.required(key, "effective_from", got);
        let got = self.string(table, key, "model");
        let model_name = self.required(key, "model", got);
        let unit = match model_name {
            Some("unit") => Some(true),
            Some("graduated" | "volume") => Some(false),
            Some(other) => {
                self.error(
                    at(key, "model"),
                    format!("unknown model {other:?} (unit, graduated or volume)"),
                );
                None
            }
            None => None,
        };
        let rate = self.decimal_sign(table, key, "rate", false);
        let rate = match (unit, rate) {
            (Some(true), got) => self.required(key, "rate", got),
            (Some(false), Ok(Some(_))) => {
                self.error(
                    at(key, "rate"),
                    "only the unit model has a version rate (graduated and volume use tiers)",
                );
                None
            }
            _ => None,
        };
        let tiers = match (unit, self.tables(table, key, "tiers")) {
            (Some(true), Ok(Some(_))) => {
                self.error(
                    at(key, "tiers"),
                    "tiers belong to the graduated and volume models, not unit",
                );
                None
            }
            (Some(false), Ok(None)) => {
                self.error(at(key, "tiers"), "missing required key (at least one tier)");
                None
            }
            (_, Ok(Some(entries))) => self.tiers(&entries, &at(key, "tiers")),
            _ => None,
        };
        let increment = self
            .decimal_sign(table, key, "increment", true)
            .ok()
            .flatten();
        let minimum = self
            .decimal_sign(table, key, "minimum", false)
            .ok()
            .flatten();
        let time_zone = self.zone(table, key);
        let dimension_required = self
            .boolean(table, key, "dimension_required")
            .ok()
            .flatten()
            .unwrap_or(false);
        let mut dimensions = Vec::new();
        if let Ok(Some(entries)) = self.tables(table, key, "dimensions") {
            for (rule_key, rule_table) in entries {
                if let Some(rule) = self.dimension_rule(rule_table, &rule_key, unit) {
                    if let Some(index) = dimensions
                        .iter()
                        .position(|r: &DimensionRule| r.matches == rule.matches)
                    {
                        self.error(
                            at(&rule_key, "match"),
                            format!(
                                "same match as {}[{index}], which always wins: this rule could \
                                 never apply",
                                at(key, "dimensions")
                            ),
                        );
                    }
                    dimensions.push(rule);
                }
            }
        }
        let no_rules = match table.get("dimensions") {
            None => true,
            Some(Value::Array(rules)) => rules.is_empty(),
            Some(_) => false, // a wrong type, already reported
        };
        if dimension_required && no_rules {
            self.error(
                at(key, "dimension_required"),
                "is true but there are no dimensions rules: every event would be refused",
            );
        }
        let mut windows = Vec::new();
        if let Ok(Some(entries)) = self.tables(table, key, "windows") {
            for (window_key, window_table) in entries {
                if let Some(window) = self.window(window_table, &window_key, unit) {
                    if windows.iter().any(|w: &TimeWindow| w.name == window.name) {
                        self.error(
                            at(&window_key, "name"),
                            format!("duplicate window name {:?} in this version", window.name),
                        );
                    }
                    windows.push(window);
                }
            }
        }
        if self.errors.len() != before {
            return (effective_from, None);
        }
        let model = match (model_name, rate, tiers) {
            (Some("unit"), Some(rate), _) => PriceModel::Unit { rate },
            (Some("graduated"), _, Some(tiers)) => PriceModel::Graduated { tiers },
            (Some("volume"), _, Some(tiers)) => PriceModel::Volume { tiers },
            _ => return (effective_from, None),
        };
        let version = effective_from
            .zip(time_zone)
            .map(|(effective_from, time_zone)| PriceVersion {
                effective_from,
                model,
                increment,
                minimum,
                dimensions,
                dimension_required,
                windows,
                time_zone,
                // Set by `meter` once the meter's name, credit type and rounding are known.
                fingerprint: 0,
            });
        (effective_from, version)
    }

    fn tiers(&mut self, entries: &[(String, &Table)], key: &str) -> Option<Vec<Tier>> {
        let before = self.errors.len();
        if entries.is_empty() {
            self.error(key, "at least one tier is required");
            return None;
        }
        let mut tiers = Vec::with_capacity(entries.len());
        let mut previous: Option<Dec> = None;
        for (index, (tier_key, table)) in entries.iter().enumerate() {
            let last = index + 1 == entries.len();
            self.keys(table, tier_key, &["up_to", "rate"]);
            let got = self.decimal_sign(table, tier_key, "rate", false);
            let rate = self.required(tier_key, "rate", got);
            let up_to = match self.decimal_sign(table, tier_key, "up_to", true) {
                Ok(Some(up_to)) if last => {
                    self.error(
                        at(tier_key, "up_to"),
                        format!("the last tier is unbounded: remove up_to (it was {up_to})"),
                    );
                    None
                }
                Ok(Some(up_to)) => {
                    if let Some(previous) = previous {
                        if up_to <= previous {
                            self.error(
                                at(tier_key, "up_to"),
                                format!("must be above the previous tier's up_to ({previous})"),
                            );
                        }
                    }
                    previous = Some(up_to);
                    Some(up_to)
                }
                Ok(None) if !last => {
                    self.error(
                        at(tier_key, "up_to"),
                        "missing required key (only the last tier is unbounded)",
                    );
                    None
                }
                _ => None,
            };
            if let Some(rate) = rate {
                tiers.push(Tier { up_to, rate });
            }
        }
        (self.errors.len() == before).then_some(tiers)
    }

    /// `rate` and `multiplier` shared by dimension rules and windows. `unit` is the version's
    /// model when known: a replacement rate only makes sense for the unit model.
    fn rate_and_multiplier(
        &mut self,
        table: &Table,
        key: &str,
        unit: Option<bool>,
    ) -> (Option<Dec>, Option<Dec>) {
        let rate = self.decimal_sign(table, key, "rate", false).ok().flatten();
        if rate.is_some() && unit == Some(false) {
            self.error(
                at(key, "rate"),
                "a replacement rate needs the unit model (use multiplier with tiers)",
            );
        }
        let multiplier = self.decimal_sign(table, key, "multiplier", false);
        if rate.is_none() && matches!(multiplier, Ok(None)) && table.get("rate").is_none() {
            self.error(key, "needs rate or multiplier (or both)");
        }
        (rate, multiplier.ok().flatten())
    }

    fn dimension_rule(
        &mut self,
        table: &Table,
        key: &str,
        unit: Option<bool>,
    ) -> Option<DimensionRule> {
        let before = self.errors.len();
        self.keys(table, key, &["match", "rate", "multiplier"]);
        let got = self.table(table, key, "match");
        let matches = self.required(key, "match", got).map(|pairs| {
            if pairs.is_empty() {
                self.error(at(key, "match"), "must name at least one dim");
            }
            let mut out = Vec::with_capacity(pairs.len());
            for (dim, value) in pairs {
                match value {
                    // A `toml::Table` iterates in key order, so `matches` is sorted by dim name.
                    Value::String(text) => out.push((dim.clone(), text.clone())),
                    other => {
                        self.wrong_type(&at(&at(key, "match"), dim), "a string", other);
                    }
                }
            }
            out
        });
        let (rate, multiplier) = self.rate_and_multiplier(table, key, unit);
        if self.errors.len() != before {
            return None;
        }
        Some(DimensionRule {
            matches: matches?,
            rate,
            multiplier,
        })
    }

    fn window(&mut self, table: &Table, key: &str, unit: Option<bool>) -> Option<TimeWindow> {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &["name", "days", "from", "to", "rate", "multiplier"],
        );
        let name = self.name(table, key);
        let got = self.array(table, key, "days");
        let days = self.required(key, "days", got).map(|values| {
            let days_key = at(key, "days");
            if values.is_empty() {
                self.error(&days_key, "must name at least one day (mon .. sun)");
            }
            let mut mask = 0u8;
            for (index, value) in values.iter().enumerate() {
                let day_key = item(&days_key, index);
                match value {
                    Value::String(text) => match weekday_index(text) {
                        Some(day) if mask & (1 << day) != 0 => {
                            self.error(day_key, format!("{text:?} is listed twice"));
                        }
                        Some(day) => mask |= 1 << day,
                        None => self.error(
                            day_key,
                            format!("{text:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                        ),
                    },
                    other => {
                        self.wrong_type(&day_key, "a day name", other);
                    }
                }
            }
            mask
        });
        let time = |loader: &mut Loader, name: &str, end: bool| {
            let got = loader.string(table, key, name);
            let text = loader.required(key, name, got)?;
            let ms = parse_time_of_day(text, end);
            if ms.is_none() {
                let range = if end {
                    "00:00 to 24:00"
                } else {
                    "00:00 to 23:59"
                };
                loader.error(
                    at(key, name),
                    format!("{text:?} is not a local time HH:MM ({range})"),
                );
            }
            ms
        };
        let from_ms = time(self, "from", false);
        let to_ms = time(self, "to", true);
        if let (Some(from), Some(to)) = (from_ms, to_ms) {
            if from >= to {
                self.error(
                    at(key, "to"),
                    "must be after from (a window is [from, to) within one day; split one that \
                     crosses midnight in two)",
                );
            }
        }
        let (rate, multiplier) = self.rate_and_multiplier(table, key, unit);
        if self.errors.len() != before {
            return None;
        }
        debug_assert!(to_ms.unwrap_or(0) <= DAY_MS);
        Some(TimeWindow {
            name: name?,
            days: days?,
            from_ms: from_ms?,
            to_ms: to_ms?,
            rate,
            multiplier,
        })
    }

    fn plan(&mut self, table: &Table, key: &str) {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &[
                "name",
                "period",
                "anchor_day",
                "anchor_weekday",
                "time_zone",
                "price",
                "expiring_lead",
                "allowances",
                "policy",
                "alerts",
            ],
        );
        let name = self.name(table, key);
        let period_name = match self.string(table, key, "period") {
            Ok(name) => Some(name.unwrap_or("month")),
            Err(Reported) => None,
        };
        let anchor_day = self.integer_in(table, key, "anchor_day", 1, ANCHOR_DAY_MAX);
        let anchor_weekday = match self.string(table, key, "anchor_weekday") {
            Ok(Some(text)) => match weekday_index(text) {
                Some(day) => Ok(Some(day)),
                None => {
                    self.error(
                        at(key, "anchor_weekday"),
                        format!("{text:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                    );
                    Err(Reported)
                }
            },
            Ok(None) => Ok(None),
            Err(Reported) => Err(Reported),
        };
        let period = match period_name {
            Some(period @ ("month" | "week" | "day")) => {
                if period != "month" && table.contains_key("anchor_day") {
                    self.error(at(key, "anchor_day"), "only for period = \"month\"");
                }
                if period != "week" && table.contains_key("anchor_weekday") {
                    self.error(at(key, "anchor_weekday"), "only for period = \"week\"");
                }
                match period {
                    "month" => anchor_day.ok().map(|day| PeriodRule::Month {
                        anchor_day: day.map_or(1, |d| d as u8),
                    }),
                    "week" => anchor_weekday.ok().map(|day| PeriodRule::Week {
                        anchor_weekday: day.unwrap_or(0),
                    }),
                    _ => Some(PeriodRule::Day),
                }
            }
            Some(other) => {
                self.error(
                    at(key, "period"),
                    format!("unknown period {other:?} (month, week or day)"),
                );
                None
            }
            None => None,
        };
        let time_zone = self.zone(table, key);
        let price = self.credits(table, key, "price", None, false);
        let expiring_lead = match self.span(table, key, "expiring_lead") {
            Ok(Some(span)) if span <= Span::ZERO => {
                self.error(at(key, "expiring_lead"), "must be > 0 (omit it to disable)");
                None
            }
            Ok(span) => span,
            Err(Reported) => None,
        };
        let mut allowances = Vec::new();
        let mut allowance_types = Vec::new();
        if let Ok(Some(entries)) = self.tables(table, key, "allowances") {
            for (allowance_key, allowance_table) in entries {
                let (credit_type, allowance) = self.allowance(allowance_table, &allowance_key);
                if let Some(credit_type) = credit_type {
                    if allowance_types.contains(&credit_type) {
                        // Allowance and rollover grant ids carry the credit type (SEMANTICS
                        // §5.3), so two entries of one type would collide.
                        self.error(
                            at(&allowance_key, "credit_type"),
                            "a plan has at most one allowance per credit type",
                        );
                    }
                    allowance_types.push(credit_type);
                }
                allowances.extend(allowance);
            }
        }
        let policy = match self.table(table, key, "policy") {
            Ok(None) => Some(Policy::Reject),
            Ok(Some(policy_table)) => self.policy(policy_table, &at(key, "policy")),
            Err(Reported) => None,
        };
        let mut alerts = Vec::new();
        let mut alert_names: Vec<(CreditTypeId, String)> = Vec::new();
        if let Ok(Some(entries)) = self.tables(table, key, "alerts") {
            for (alert_key, alert_table) in entries {
                let (identity, alert) = self.alert(alert_table, &alert_key);
                if let Some(identity) = identity {
                    if alert_names.contains(&identity) {
                        self.error(
                            at(&alert_key, "name"),
                            format!(
                                "duplicate alert {:?} for this credit type in this plan",
                                identity.1
                            ),
                        );
                    }
                    alert_names.push(identity);
                }
                alerts.extend(alert);
            }
        }
        let Some(name) = name else { return };
        if self.plan_index.contains_key(&name) {
            self.error(at(key, "name"), format!("duplicate plan {name:?}"));
            return;
        }
        self.plan_index
            .insert(name.clone(), PlanId(self.plans.len() as u16));
        let plan = (|| {
            if self.errors.len() != before {
                return None;
            }
            Some(Plan {
                name,
                period: period?,
                time_zone: time_zone?,
                price: price.ok()?.unwrap_or(Price::ZERO),
                allowances,
                policy: policy?,
                alerts,
                expiring_lead,
            })
        })();
        self.plans.push(plan);
    }

    /// One allowance, and its credit type even when something else is wrong (so duplicates are
    /// still found).
    fn allowance(&mut self, table: &Table, key: &str) -> (Option<CreditTypeId>, Option<Allowance>) {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &["credit_type", "amount", "priority", "scope", "rollover_cap"],
        );
        let credit_type = self.credit_type_ref(table, key);
        let scale = credit_type.and_then(|(_, scale)| scale);
        let got = self.credits(table, key, "amount", scale, true);
        let amount = self.required(key, "amount", got);
        let priority = self
            .integer_in(
                table,
                key,
                "priority",
                i64::from(i32::MIN),
                i64::from(i32::MAX),
            )
            .ok()
            .flatten()
            .map_or(ALLOWANCE_PRIORITY_DEFAULT, |p| p as i32);
        let rollover_cap = self
            .credits(table, key, "rollover_cap", scale, false)
            .ok()
            .flatten()
            .unwrap_or(Credits::ZERO);
        let scope = match self.array(table, key, "scope") {
            Ok(Some(values)) => Some(self.scope(values, &at(key, "scope"), credit_type)),
            _ => None,
        };
        let credit_type = credit_type.map(|(id, _)| id);
        if self.errors.len() != before {
            return (credit_type, None);
        }
        let allowance = credit_type
            .zip(amount)
            .map(|(credit_type, amount)| Allowance {
                credit_type,
                amount,
                priority,
                scope,
                rollover_cap,
            });
        (credit_type, allowance)
    }

    /// A non-empty list of distinct meters, all priced in `credit_type`.
    fn scope(
        &mut self,
        values: &[Value],
        key: &str,
        credit_type: Option<(CreditTypeId, Option<u8>)>,
    ) -> Vec<MeterId> {
        if values.is_empty() {
            self.error(
                key,
                "must name at least one meter (omit scope for all meters)",
            );
        }
        let mut meters = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let meter_key = item(key, index);
            let Value::String(name) = value else {
                self.wrong_type(&meter_key, "a meter name", value);
                continue;
            };
            let Some(&id) = self.meter_index.get(name) else {
                self.error(meter_key, format!("unknown meter {name:?}"));
                continue;
            };
            if meters.contains(&id) {
                self.error(meter_key, format!("{name:?} is listed twice"));
                continue;
            }
            let meter_type = self.meters[id.0 as usize].credit_type;
            if let (Some((expected, _)), Some(actual)) = (credit_type, meter_type) {
                if expected != actual {
                    let expected_name = &self.credit_types[expected.0 as usize].name;
                    let actual_name = &self.credit_types[actual.0 as usize].name;
                    let message = format!(
                        "meter {name:?} is priced in {actual_name:?}, not {expected_name:?}"
                    );
                    self.error(meter_key, message);
                    continue;
                }
            }
            meters.push(id);
        }
        meters
    }

    /// Reads `[plans.policy]` into a [`PolicySpec`] (types only), then checks it with the same
    /// code as the wire `set_policy` command.
    fn policy(&mut self, table: &Table, key: &str) -> Option<Policy> {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &[
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
        );
        let got = self.string(table, key, "kind");
        let kind = self.required(key, "kind", got);
        let spec = PolicySpec {
            kind: kind.unwrap_or_default().to_string(),
            credit_type: self
                .string(table, key, "credit_type")
                .ok()
                .flatten()
                .map(str::to_string),
            threshold: self.fixed(table, key, "threshold").ok().flatten(),
            amount: self.fixed(table, key, "amount").ok().flatten(),
            target: self.fixed(table, key, "target").ok().flatten(),
            price: self.fixed(table, key, "price").ok().flatten(),
            max_per_period: self
                .integer_in(table, key, "max_per_period", 0, i64::from(u32::MAX))
                .ok()
                .flatten()
                .map(|n| n as u32),
            cooldown: self.span(table, key, "cooldown").ok().flatten(),
            priority: self
                .integer_in(
                    table,
                    key,
                    "priority",
                    i64::from(i32::MIN),
                    i64::from(i32::MAX),
                )
                .ok()
                .flatten()
                .map(|p| p as i32),
            fallback: self
                .string(table, key, "fallback")
                .ok()
                .flatten()
                .map(str::to_string),
            overage_limit: self.fixed(table, key, "overage_limit").ok().flatten(),
            overage_price: self.fixed(table, key, "overage_price").ok().flatten(),
        };
        kind?;
        // Keys already reported (wrong type, unknown) are not reported again as "missing".
        let reported: HashSet<String> = self.errors[before..]
            .iter()
            .map(|e| e.key.clone())
            .collect();
        let lookup = |name: &str| {
            self.credit_type_index
                .get(name)
                .map(|&id| (id, self.credit_types[id.0 as usize].scale))
        };
        match compile_policy_with(&lookup, &spec, key) {
            Ok(policy) => Some(policy),
            Err(errors) => {
                self.errors
                    .extend(errors.into_iter().filter(|e| !reported.contains(&e.key)));
                None
            }
        }
    }

    /// One alert rule, and its (credit type, name) even when something else is wrong (so
    /// duplicates are still found).
    fn alert(
        &mut self,
        table: &Table,
        key: &str,
    ) -> (Option<(CreditTypeId, String)>, Option<AlertRule>) {
        let before = self.errors.len();
        self.keys(table, key, &["credit_type", "name", "amount", "percent"]);
        let credit_type = self.credit_type_ref(table, key);
        let name = self.name(table, key);
        if name.as_deref() == Some("depleted") {
            self.error(
                at(key, "name"),
                "\"depleted\" is the built-in alert at balance <= 0; choose another name",
            );
        }
        let scale = credit_type.and_then(|(_, scale)| scale);
        let amount = self.credits(table, key, "amount", scale, false);
        let percent = match self.decimal_sign(table, key, "percent", true) {
            Ok(Some(percent)) if percent > Dec::from_int(100) => {
                self.error(at(key, "percent"), "must be at most 100");
                Err(Reported)
            }
            other => other,
        };
        let threshold = match (amount, percent) {
            (Ok(Some(amount)), Ok(None)) => Some(Threshold::Amount(amount)),
            (Ok(None), Ok(Some(percent))) => Some(Threshold::Percent(percent)),
            (Ok(Some(_)), Ok(Some(_))) => {
                self.error(at(key, "percent"), "give exactly one of amount and percent");
                None
            }
            (Ok(None), Ok(None)) => {
                self.error(
                    at(key, "amount"),
                    "missing required key (give exactly one of amount and percent)",
                );
                None
            }
            _ => None,
        };
        let identity = credit_type.map(|(id, _)| id).zip(name);
        if self.errors.len() != before {
            return (identity, None);
        }
        let alert = identity
            .clone()
            .zip(threshold)
            .map(|((credit_type, name), threshold)| AlertRule {
                credit_type,
                name,
                threshold,
            });
        (identity, alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = r#"
default_plan = "payg"
[currency]
code = "USD"
[[credit_types]]
name = "credit"
scale = 6
[[plans]]
name = "payg"
"#;

    fn shipped_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml")
    }

    fn shipped() -> Catalog {
        match from_path(&shipped_path()) {
            Ok(catalog) => catalog,
            Err(errors) => panic!("the shipped catalog must load:\n{errors}"),
        }
    }

    fn errors_of(text: &str) -> Vec<CatalogError> {
        match from_str(text) {
            Ok(_) => panic!("expected errors, the catalog loaded:\n{text}"),
            Err(CatalogErrors(errors)) => errors,
        }
    }

    /// The keys of `errors`, sorted (the walk's own order is not part of the contract).
    fn keys_of(errors: &[CatalogError]) -> Vec<&str> {
        let mut keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        keys.sort_unstable();
        keys
    }

    fn sorted(mut keys: Vec<&str>) -> Vec<&str> {
        keys.sort_unstable();
        keys
    }

    fn d(text: &str) -> Dec {
        text.parse().unwrap()
    }

    fn c(text: &str) -> Credits {
        text.parse().unwrap()
    }

    fn at_time(text: &str) -> Instant {
        text.parse().unwrap()
    }

    #[test]
    fn shipped_catalog_loads_with_every_feature() {
        let catalog = shipped();
        assert_eq!(catalog.currency.code, "USD");
        assert_eq!(catalog.currency.scale, 2);
        assert_eq!(
            catalog.rules,
            Rules::default(),
            "[rules] spells out the defaults"
        );
        let names: Vec<_> = catalog
            .credit_types
            .iter()
            .map(|t| (t.name.as_str(), t.scale))
            .collect();
        assert_eq!(names, [("credit", 6), ("compute_credit", 4)]);
        let meter = |name: &str| catalog.meter(catalog.meter_id(name).unwrap());

        let api = meter("api_call");
        assert_eq!(api.versions.len(), 2);
        assert_eq!(
            api.versions[1].model,
            PriceModel::Unit { rate: d("0.0015") }
        );
        assert_eq!(
            api.versions[1].effective_from,
            at_time("2026-07-01T00:00:00Z")
        );

        let llm = meter("llm_token");
        assert!(llm.versions[0].dimension_required);
        assert_eq!(llm.versions[0].dimensions.len(), 4);
        assert_eq!(
            llm.versions[0].dimensions[0].matches,
            [
                ("model".to_string(), "large".to_string()),
                ("region".to_string(), "eu".to_string())
            ]
        );

        let gpu = meter("gpu_second");
        assert_eq!(catalog.credit_type(gpu.credit_type).name, "compute_credit");
        let v = &gpu.versions[0];
        assert_eq!(v.increment, Some(d("60")));
        assert_eq!(v.minimum, Some(d("0.6")));
        assert_eq!(v.time_zone.name(), "Europe/Paris");
        assert_eq!(v.windows[0].days, 0b0001_1111);
        assert_eq!(v.windows[0].from_ms, 9 * 3_600_000);
        assert_eq!(v.windows[1].to_ms, DAY_MS);
        let PriceModel::Graduated { tiers } = &v.model else {
            panic!("gpu is graduated")
        };
        assert_eq!(tiers.len(), 3);
        assert_eq!(tiers[2].up_to, None);

        assert!(matches!(
            meter("storage_gb_hour").versions[0].model,
            PriceModel::Volume { .. }
        ));
        assert_eq!(meter("storage_gb_hour").rounding, Rounding::Up);
        assert_eq!(meter("export").rounding, Rounding::HalfUp);

        let plan = |name: &str| catalog.plan(catalog.plan_id(name).unwrap());
        assert_eq!(catalog.default_plan, catalog.plan_id("payg").unwrap());
        assert_eq!(plan("payg").policy, Policy::Reject);
        let starter = plan("starter");
        assert_eq!(starter.allowances[0].rollover_cap, c("5000"));
        assert_eq!(starter.expiring_lead, Some(Span(3 * DAY_MS)));
        assert_eq!(starter.alerts[1].threshold, Threshold::Percent(d("25")));
        assert_eq!(
            starter.policy,
            Policy::Overage(Overage {
                limit: c("500"),
                price: c("0.012")
            })
        );
        let pro = plan("pro");
        assert_eq!(pro.period, PeriodRule::Month { anchor_day: 15 });
        assert_eq!(
            pro.allowances[1].scope,
            Some(vec![catalog.meter_id("gpu_second").unwrap()])
        );
        let Policy::AutoTopup(rule) = &pro.policy else {
            panic!("pro tops up")
        };
        assert_eq!(rule.amount, TopupAmount::Fixed(c("1000")));
        assert_eq!(rule.cooldown, Span(3_600_000));
        assert_eq!(
            rule.fallback,
            Fallback::Overage(Overage {
                limit: c("500"),
                price: c("0.012")
            })
        );
        let weekly = plan("team_weekly");
        assert_eq!(weekly.period, PeriodRule::Week { anchor_weekday: 0 });
        let Policy::AutoTopup(rule) = &weekly.policy else {
            panic!("weekly tops up")
        };
        assert_eq!(rule.amount, TopupAmount::Target(c("2000")));
        assert_eq!(rule.fallback, Fallback::Reject);
        assert_eq!(rule.priority, TOPUP_PRIORITY_DEFAULT);
        assert_eq!(plan("daily_test").period, PeriodRule::Day);
    }

    #[test]
    fn minimal_catalog_takes_every_default() {
        let catalog = from_str(HEADER).unwrap();
        assert_eq!(catalog.currency.rounding, Rounding::HalfUp);
        assert_eq!(catalog.currency.scale, 2);
        let plan = &catalog.plans[0];
        assert_eq!(plan.period, PeriodRule::Month { anchor_day: 1 });
        assert_eq!(plan.time_zone.name(), "UTC");
        assert_eq!(plan.price, Price::ZERO);
        assert_eq!(plan.policy, Policy::Reject);
        assert_eq!(plan.expiring_lead, None);
        assert!(catalog.meters.is_empty());
    }

    /// One catalog, many different mistakes: all of them come back, each at its key.
    #[test]
    fn every_mistake_is_reported_at_once() {
        let text = r#"
default_plan = "nope"
colour = "blue"
[currency]
code = "usd"
scale = 12
[rules]
future_max = "5 minutes"
flush_interval = "0"
[[credit_types]]
name = "credit"
scale = 6
[[credit_types]]
name = "credit"
scale = 2
[[meters]]
name = "api_call"
credit_type = "gold"
rounding = "bankers"
  [[meters.versions]]
  effective_from = "2026-02-01T00:00:00Z"
  model = "unit"
  rate = 0.002
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "-1"
[[meters]]
name = "gpu"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "graduated"
  time_zone = "Mars/Olympus"
    [[meters.versions.tiers]]
    up_to = "100"
    rate = "0.0000000001"
    [[meters.versions.tiers]]
    up_to = "50"
    rate = "1"
    [[meters.versions.tiers]]
    rate = "0.5"
    [[meters.versions.dimensions]]
    match = { model = "large" }
    rate = "2"
    [[meters.versions.windows]]
    name = "peak"
    days = ["mon", "mon"]
    from = "18:00"
    to = "09:00"
    multiplier = "2"
[[plans]]
name = "pro"
period = "fortnight"
anchor_day = 2
  [[plans.allowances]]
  amount = "10.1234567"
  scope = ["missing_meter"]
  [plans.policy]
  kind = "overage"
  overage_limit = "10"
  threshold = "5"
  [[plans.alerts]]
  name = "depleted"
  amount = "1"
  percent = "5"
"#;
        let errors = errors_of(text);
        let listing = CatalogErrors(errors.clone()).to_string();
        let expected = [
            "colour",
            "currency.code",
            "currency.scale",
            "rules.flush_interval",
            "rules.future_max",
            "credit_types[1].name",
            "meters[0].credit_type",
            "meters[0].rounding",
            "meters[0].versions[0].rate",
            "meters[0].versions[1].effective_from",
            "meters[0].versions[1].rate",
            "meters[1].versions[0].time_zone",
            "meters[1].versions[0].tiers[0].rate",
            "meters[1].versions[0].tiers[1].up_to",
            "meters[1].versions[0].dimensions[0].rate",
            "meters[1].versions[0].windows[0].days[1]",
            "meters[1].versions[0].windows[0].to",
            "plans[0].period",
            "plans[0].allowances[0].amount",
            "plans[0].allowances[0].scope[0]",
            "plans[0].policy.overage_price",
            "plans[0].policy.threshold",
            "plans[0].alerts[0].name",
            "plans[0].alerts[0].percent",
            "default_plan",
        ];
        let mut got = keys_of(&errors);
        let mut want = expected.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "all errors:\n{listing}");
        assert_eq!(errors.len(), 25, "{listing}");
        // One line per error, `key: message`.
        assert_eq!(listing.lines().count(), 25);
        assert!(
            listing.contains("rules.flush_interval: must be > 0"),
            "{listing}"
        );
        assert!(
            listing.contains("meters[0].versions[0].rate: a TOML float is inexact"),
            "{listing}"
        );
        assert!(
            listing.contains("unknown time zone \"Mars/Olympus\""),
            "{listing}"
        );
        assert!(
            listing.contains("default_plan: no plan named \"nope\""),
            "{listing}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        let text = format!(
            r#"{HEADER}
tagline = "x"
[[meters]]
name = "m"
colour = "red"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
  rates = "2"
    [[meters.versions.windows]]
    name = "w"
    days = ["mon"]
    from = "00:00"
    to = "01:00"
    multiplier = "2"
    multipler = "3"
[[plans]]
name = "p2"
  [plans.policy]
  kind = "reject"
  treshold = "1"
"#
        );
        let errors = errors_of(&text);
        let mut keys = keys_of(&errors);
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "meters[0].colour",
                "meters[0].versions[0].rates",
                "meters[0].versions[0].windows[0].multipler",
                "plans[0].tagline",
                "plans[1].policy.treshold",
            ],
            "{errors:?}"
        );
        assert!(errors[0]
            .message
            .starts_with("unknown key (expected one of:"));
    }

    #[test]
    fn floats_are_refused_everywhere_integers_and_strings_accepted() {
        let text = format!(
            r#"{HEADER}
  [[plans.allowances]]
  amount = 100.5
  rollover_cap = 10
[[meters]]
name = "m"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = 1e-3
  minimum = 2
"#
        );
        let errors = errors_of(&text);
        assert_eq!(
            keys_of(&errors),
            [
                "meters[0].versions[0].rate",
                "plans[0].allowances[0].amount"
            ]
        );
        for error in &errors {
            assert!(error.message.contains("TOML float is inexact"), "{error}");
        }
        let fixed = text
            .replace("amount = 100.5", "amount = \"100.5\"")
            .replace("rate = 1e-3", "rate = \"0.001\"");
        let catalog = from_str(&fixed).unwrap();
        assert_eq!(catalog.plans[0].allowances[0].rollover_cap, c("10"));
        assert_eq!(catalog.meters[0].versions[0].minimum, Some(d("2")));
    }

    #[test]
    fn amounts_respect_nine_places_and_the_credit_type_scale() {
        let text = format!(
            r#"{HEADER}
  [[plans.allowances]]
  amount = "1.0000001"
  rollover_cap = "1.000000000"
[[meters]]
name = "m"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.0000000001"
  increment = "0"
"#
        );
        let errors = errors_of(&text);
        let listing = CatalogErrors(errors.clone()).to_string();
        assert_eq!(
            keys_of(&errors),
            sorted(vec![
                "meters[0].versions[0].increment",
                "meters[0].versions[0].rate",
                "plans[0].allowances[0].amount",
            ]),
            "{listing}"
        );
        assert!(listing.contains("more than 9 decimal places"), "{listing}");
        assert!(listing.contains("credit type's scale (6)"), "{listing}");
        assert!(listing.contains("increment: must be > 0"), "{listing}");
    }

    #[test]
    fn model_specific_keys_and_tier_order() {
        let text = format!(
            r#"{HEADER}
[[meters]]
name = "unit_with_tiers"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
    [[meters.versions.tiers]]
    rate = "1"
[[meters]]
name = "volume_with_rate"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "volume"
  rate = "1"
    [[meters.versions.tiers]]
    up_to = "10"
    rate = "1"
    [[meters.versions.tiers]]
    rate = "1"
    [[meters.versions.windows]]
    name = "w"
    days = ["sun"]
    from = "00:00"
    to = "24:00"
    rate = "3"
[[meters]]
name = "graduated_bad_tiers"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "graduated"
  dimension_required = true
    [[meters.versions.tiers]]
    rate = "1"
    [[meters.versions.tiers]]
    up_to = "5"
    rate = "1"
[[meters]]
name = "required_but_empty"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
  dimension_required = true
  dimensions = []
[[meters]]
name = "no_tiers"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "tiered"
"#
        );
        let errors = errors_of(&text);
        let listing = CatalogErrors(errors.clone()).to_string();
        assert_eq!(
            keys_of(&errors),
            sorted(vec![
                "meters[0].versions[0].rate",
                "meters[0].versions[0].tiers",
                "meters[1].versions[0].rate",
                "meters[1].versions[0].windows[0].rate",
                "meters[2].versions[0].tiers[0].up_to",
                "meters[2].versions[0].tiers[1].up_to",
                "meters[2].versions[0].dimension_required",
                "meters[3].versions[0].dimension_required",
                "meters[4].versions[0].model",
            ]),
            "{listing}"
        );
    }

    #[test]
    fn cross_references_are_checked() {
        let text = r#"
default_plan = "payg"
[currency]
code = "EUR"
[[credit_types]]
name = "token"
scale = 0
[[credit_types]]
name = "compute"
scale = 2
[[meters]]
name = "a"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
[[meters]]
name = "b"
credit_type = "compute"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
[[plans]]
name = "payg"
  [[plans.allowances]]
  credit_type = "token"
  amount = "5"
  scope = ["b", "b", "zzz"]
  [[plans.allowances]]
  credit_type = "token"
  amount = "5"
  [[plans.alerts]]
  name = "low"
  amount = "1"
"#;
        let errors = errors_of(text);
        let listing = CatalogErrors(errors.clone()).to_string();
        assert_eq!(
            keys_of(&errors),
            sorted(vec![
                // No credit type "credit" exists, so the default does not resolve.
                "meters[0].credit_type",
                "plans[0].allowances[0].scope[0]",
                "plans[0].allowances[0].scope[1]",
                "plans[0].allowances[0].scope[2]",
                "plans[0].allowances[1].credit_type",
                "plans[0].alerts[0].credit_type",
            ]),
            "{listing}"
        );
        assert!(
            listing.contains("(the default): name one with credit_type"),
            "{listing}"
        );
        assert!(
            listing.contains("is priced in \"compute\", not \"token\""),
            "{listing}"
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let errors = errors_of("default_plan = \"payg\"\n[currency\ncode = \"USD\"\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "");
        assert!(
            errors[0].message.contains("line 2"),
            "{}",
            errors[0].message
        );
        let missing = from_path(Path::new("/nonexistent/catalog.toml")).unwrap_err();
        assert!(
            missing.to_string().starts_with("cannot read catalog"),
            "{missing}"
        );
    }

    #[test]
    fn wrong_types_and_missing_keys_are_named() {
        let text = r#"
default_plan = 3
[currency]
scale = "2"
[[credit_types]]
name = "credit"
[[meters]]
name = "Bad-Name"
versions = "soon"
"#;
        let errors = errors_of(text);
        let listing = CatalogErrors(errors.clone()).to_string();
        assert_eq!(
            keys_of(&errors),
            sorted(vec![
                "currency.code",
                "currency.scale",
                "credit_types[0].scale",
                "meters[0].name",
                "meters[0].versions",
                "default_plan",
            ]),
            "{listing}"
        );
        assert!(
            listing.contains("default_plan: expected a string, found an integer"),
            "{listing}"
        );
        assert!(
            listing.contains("currency.code: missing required key"),
            "{listing}"
        );
    }

    fn policy_errors(catalog: &Catalog, json: &str) -> Vec<String> {
        let spec: PolicySpec = serde_json::from_str(json).expect("valid PolicySpec JSON");
        match compile_policy(catalog, &spec, "policy") {
            Ok(policy) => panic!("expected errors, compiled {policy:?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn policies_compile_the_same_from_json() {
        let catalog = shipped();
        let spec: PolicySpec = serde_json::from_str(
            r#"{"kind":"auto_topup","credit_type":"compute_credit","threshold":"10","target":50,
                "price":"0.02","max_per_period":2,"cooldown":"30m","fallback":"overage",
                "overage_limit":"5","overage_price":"0.03"}"#,
        )
        .unwrap();
        let Policy::AutoTopup(rule) = compile_policy(&catalog, &spec, "policy").unwrap() else {
            panic!("auto_topup")
        };
        assert_eq!(
            rule.credit_type,
            catalog.credit_type_id("compute_credit").unwrap()
        );
        assert_eq!(rule.amount, TopupAmount::Target(c("50")));
        assert_eq!(rule.cooldown, Span(30 * 60_000));
        assert_eq!(
            rule.fallback,
            Fallback::Overage(Overage {
                limit: c("5"),
                price: c("0.03")
            })
        );
        let spec = PolicySpec {
            kind: "reject".into(),
            ..PolicySpec::default()
        };
        assert_eq!(
            compile_policy(&catalog, &spec, "policy"),
            Ok(Policy::Reject)
        );
    }

    #[test]
    fn policy_compile_errors() {
        let catalog = shipped();
        let cases: &[(&str, &[&str])] = &[
            (
                r#"{"kind":"refund"}"#,
                &["policy.kind: unknown policy kind \"refund\""],
            ),
            (
                r#"{"kind":"reject","threshold":"1","overage_limit":"2"}"#,
                &[
                    "policy.threshold: not a key of a policy of kind \"reject\"",
                    "policy.overage_limit: not a key of a policy of kind \"reject\"",
                ],
            ),
            (
                r#"{"kind":"overage","overage_limit":"-1"}"#,
                &[
                    "policy.overage_limit: must be >= 0",
                    "policy.overage_price: missing required key",
                ],
            ),
            (
                r#"{"kind":"auto_topup","credit_type":"gold","threshold":"1","amount":"5",
                    "target":"9","price":"0.01","max_per_period":0,"overage_limit":"3"}"#,
                &[
                    "policy.overage_limit: only with fallback = \"overage\"",
                    "policy.credit_type: unknown credit type \"gold\"",
                    "policy.target: give exactly one of amount and target, not both",
                    "policy.max_per_period: must be >= 1",
                ],
            ),
            (
                r#"{"kind":"auto_topup","credit_type":"compute_credit","threshold":"0.00001",
                    "target":"0","max_per_period":1,"fallback":"overage"}"#,
                &[
                    "policy.threshold: has more decimal places than its credit type's scale (4)",
                    "policy.target: must be > 0",
                    "policy.price: missing required key",
                    "policy.overage_limit: missing required key",
                    "policy.overage_price: missing required key",
                ],
            ),
            (
                r#"{"kind":"auto_topup","threshold":"100","target":"100","price":"1",
                    "max_per_period":1,"fallback":"maybe"}"#,
                &[
                    "policy.target: must be above threshold",
                    "policy.fallback: unknown fallback \"maybe\"",
                ],
            ),
        ];
        for (json, expected) in cases {
            let got = policy_errors(&catalog, json);
            assert_eq!(got.len(), expected.len(), "{json}: {got:#?}");
            for (got, want) in got.iter().zip(expected.iter()) {
                assert!(got.starts_with(want), "{json}:\n got  {got}\n want {want}");
            }
        }
    }

    #[test]
    fn plan_policy_errors_carry_the_plan_path() {
        let text = format!(
            r#"{HEADER}
  [plans.policy]
  kind = "auto_topup"
  threshold = 1.5
  amount = "10"
  price = "0.01"
  max_per_period = 2
  cooldown = "soon"
"#
        );
        let errors = errors_of(&text);
        // The float is reported once, as a float, not again as "missing".
        assert_eq!(
            keys_of(&errors),
            sorted(vec![
                "plans[0].policy.cooldown",
                "plans[0].policy.threshold"
            ]),
            "{errors:?}"
        );
    }

    #[test]
    fn windows_and_periods_are_validated() {
        let text = format!(
            r#"{HEADER}
period = "week"
anchor_day = 3
anchor_weekday = "funday"
expiring_lead = "0"
[[meters]]
name = "m"
  [[meters.versions]]
  effective_from = "2026-01-01"
  model = "unit"
  rate = "1"
    [[meters.versions.windows]]
    name = "a"
    days = []
    from = "9:00"
    to = "24:01"
    [[meters.versions.windows]]
    name = "a"
    days = ["sat"]
    from = "00:00"
    to = "24:00"
    multiplier = "-1"
"#
        );
        let errors = errors_of(&text);
        let listing = CatalogErrors(errors.clone()).to_string();
        assert_eq!(
            keys_of(&errors),
            sorted(vec![
                "meters[0].versions[0].effective_from",
                "meters[0].versions[0].windows[0].days",
                "meters[0].versions[0].windows[0].from",
                "meters[0].versions[0].windows[0].to",
                "meters[0].versions[0].windows[0]",
                "meters[0].versions[0].windows[1].multiplier",
                "plans[0].anchor_weekday",
                "plans[0].anchor_day",
                "plans[0].expiring_lead",
            ]),
            "{listing}"
        );
    }

    #[test]
    fn fingerprints_are_stable_and_follow_prices() {
        let text = std::fs::read_to_string(shipped_path()).unwrap();
        let clock = at_time("2026-12-01T00:00:00Z");
        let a = from_str(&text).unwrap().fingerprints_in_force(clock);
        let b = from_str(&text).unwrap().fingerprints_in_force(clock);
        assert_eq!(a, b);
        assert_eq!(a.len(), 6, "every version in force at the clock: {a:?}");
        // The spelling of a number and comments do not matter; the value does.
        let respelled = text.replace("rate = \"0.0015\"", "rate = \"0.00150\" # same price");
        assert_eq!(
            from_str(&respelled).unwrap().fingerprints_in_force(clock),
            a
        );
        let changed = text.replace("rate = \"0.0015\"", "rate = \"0.0016\"");
        let c = from_str(&changed).unwrap().fingerprints_in_force(clock);
        let differing: Vec<_> = a
            .iter()
            .zip(&c)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x)
            .collect();
        assert_eq!(differing.len(), 1);
        assert_eq!(differing[0].meter, "api_call");
        assert_eq!(differing[0].effective_from, at_time("2026-07-01T00:00:00Z"));
        // Rounding and the credit type's scale decide prices too.
        let rounding = text.replace("rounding = \"up\"", "rounding = \"down\"");
        assert_ne!(from_str(&rounding).unwrap().fingerprints_in_force(clock), a);
        let scale = text
            .replace("scale = 4", "scale = 3")
            .replace("\"500.5\"", "\"500\"");
        assert_ne!(from_str(&scale).unwrap().fingerprints_in_force(clock), a);
        // Before July only the first api_call version is in force.
        let early = from_str(&text)
            .unwrap()
            .fingerprints_in_force(at_time("2026-06-30T23:59:59.999Z"));
        assert_eq!(early.len(), 5);
    }

    #[test]
    fn check_history_refuses_rewritten_history_and_accepts_the_future() {
        let text = std::fs::read_to_string(shipped_path()).unwrap();
        let clock = at_time("2026-03-01T00:00:00Z");
        let recorded = from_str(&text).unwrap().fingerprints_in_force(clock);
        assert_eq!(from_str(&text).unwrap().check_history(&recorded), Ok(()));

        // The July api_call price was not yet in force: changing it is fine.
        let future_change = text.replace("rate = \"0.0015\"", "rate = \"0.0016\"");
        assert_eq!(
            from_str(&future_change).unwrap().check_history(&recorded),
            Ok(())
        );

        // A new version after the snapshot's clock is the future: accepted.
        let added = format!(
            "{text}\n[[meters.versions]]\neffective_from = \"2027-01-01T00:00:00Z\"\nmodel = \"unit\"\nrate = \"0.6\"\n"
        );
        let added = from_str(&added).unwrap();
        assert_eq!(
            added.meters[4].versions.len(),
            2,
            "the version went to `export`"
        );
        assert_eq!(added.check_history(&recorded), Ok(()));
        assert_eq!(added.check_history_at(&recorded, clock), Ok(()));

        // Changing a price in force is refused, naming the meter.
        let changed = text.replace("rate = \"0.002\"", "rate = \"0.003\"");
        let problems = from_str(&changed)
            .unwrap()
            .check_history(&recorded)
            .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"api_call\"") && problems[0].contains("changed"),
            "{problems:?}"
        );

        // Removing a meter whose price was in force is refused.
        let start = text.find("[[meters]]\nname = \"export\"").unwrap();
        let end = text.find("# Plans:").unwrap();
        let removed = format!("{}{}", &text[..start], &text[end..]);
        let problems = from_str(&removed)
            .unwrap()
            .check_history(&recorded)
            .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"export\": no longer in the catalog"),
            "{problems:?}"
        );

        // Moving a version's start is a missing version plus an inserted one.
        let moved = text.replacen("2026-01-01T00:00:00Z", "2025-12-01T00:00:00Z", 1);
        let problems = from_str(&moved)
            .unwrap()
            .check_history(&recorded)
            .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("is missing"), "{problems:?}");
        assert!(problems[1].contains("was added"), "{problems:?}");

        // A version added between the last recorded one and the clock: only the clock knows.
        let sneaked = format!(
            "{text}\n[[meters.versions]]\neffective_from = \"2026-02-01T00:00:00Z\"\nmodel = \"unit\"\nrate = \"0.6\"\n"
        );
        let sneaked = from_str(&sneaked).unwrap();
        assert_eq!(sneaked.check_history(&recorded), Ok(()));
        let problems = sneaked.check_history_at(&recorded, clock).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"export\"") && problems[0].contains("2026-02-01"),
            "{problems:?}"
        );
    }

    #[test]
    fn names_times_and_days_parse_strictly() {
        assert!(valid_name("gpu_second_2"));
        for bad in ["", "GPU", "a-b", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(parse_time_of_day("00:00", false), Some(0));
        assert_eq!(parse_time_of_day("23:59", false), Some(86_340_000));
        assert_eq!(parse_time_of_day("24:00", true), Some(DAY_MS));
        for bad in ["24:00", "9:00", "12:60", "25:00", "12-00", "12:00:00"] {
            assert_eq!(parse_time_of_day(bad, false), None, "{bad:?}");
        }
        assert_eq!(parse_time_of_day("24:01", true), None);
        assert_eq!(weekday_index("sun"), Some(6));
        assert_eq!(weekday_index("Sun"), None);
    }
}
