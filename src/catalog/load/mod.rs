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
//! Files: this one holds the entry points, the errors and the walk's shared helpers;
//! `values.rs` reads single values, `sections.rs` the root, currency, rules, credit types and
//! meters, `prices.rs` price versions, `plans.rs` plans, `cloudevents.rs` the CloudEvent mappings; `policy.rs` compiles policies and
//! `fingerprint.rs` fingerprints versions; `tests.rs`.
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
#[allow(unused_imports)]
use super::{CatalogOrder, SettingFingerprint};
use crate::decimal::{pow10, Credits, Dec, Price, Rounding};
use crate::time::{Instant, PeriodRule, Span, Zone};

/// Longest name of a credit type, meter, plan, window or alert, in bytes (`[a-z0-9_]`). Names
/// end up inside output ids, so they are kept short and free of separators.
pub const NAME_BYTES_MAX: usize = 64;
/// Most decimal places any amount, rate or multiplier may have: `Fixed<9>` holds no more.
pub const DECIMAL_PLACES_MAX: u8 = 9;
/// Largest catalog file [`from_path`] reads: 16 MiB. The shipped example is 12 KB; a catalog at
/// the entry limits with short names stays well under it. A larger file (or a device) is
/// refused after reading at most this much.
pub const CATALOG_BYTES_MAX: u64 = 16 << 20;
/// Largest `rules.payload_max`: 1 MiB, the NATS server's default `max_payload`. A default
/// server refuses larger messages before they reach the stream, and a usage event or command is
/// well under a kilobyte; the bound keeps a typo (an extra digit or three) from letting any
/// message through.
pub const PAYLOAD_BYTES_MAX: i64 = 1 << 20;
/// Largest credit type or currency scale (decimal places kept after rounding).
pub const SCALE_MAX: u8 = 9;
/// Largest `anchor_day` of a monthly plan: every month has a 28th.
pub const ANCHOR_DAY_MAX: i64 = 28;
/// Most credit types, meters, plans, versions per meter, tiers, dimension rules or windows per
/// version: ids and explain indexes are `u16`.
pub const ENTRIES_MAX: usize = u16::MAX as usize;
/// Shortest and longest `rules.runway_window`: a minute keeps the rate meaningful, 31 days
/// keeps its arithmetic within `i128` for any balance.
pub const RUNWAY_WINDOW_MIN: Span = Span(60_000);
pub const RUNWAY_WINDOW_MAX: Span = Span(31 * 86_400_000);
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

/// Reads and validates the catalog file at `path`: at most [`CATALOG_BYTES_MAX`] bytes of UTF-8.
pub fn from_path(path: &Path) -> Result<Catalog, CatalogErrors> {
    let fail = |message: String| CatalogErrors(vec![CatalogError::new("", message)]);
    let bytes = read_bounded(path, CATALOG_BYTES_MAX)
        .map_err(|error| fail(format!("cannot read catalog {}: {error}", path.display())))?
        .ok_or_else(|| {
            fail(format!(
                "catalog {} is larger than {CATALOG_BYTES_MAX} bytes (16 MiB), the most a catalog \
                 may be",
                path.display()
            ))
        })?;
    let text = String::from_utf8(bytes).map_err(|error| {
        fail(format!(
            "catalog {} is not UTF-8 (byte {})",
            path.display(),
            error.utf8_error().valid_up_to()
        ))
    })?;
    from_str(&text)
}

/// The contents of the file at `path` when it holds at most `limit` bytes, `None` when it holds
/// more. Reads at most `limit + 1` bytes, whatever the file is (a device such as `/dev/zero`
/// never ends).
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
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

mod cloudevents;
mod fingerprint;
mod plans;
mod policy;
mod prices;
mod sections;
mod values;

pub use cloudevents::CLOUDEVENT_TYPE_BYTES_MAX;
pub use fingerprint::fingerprint_version;
pub use policy::compile_policy;
use policy::{check_amount, compile_policy_with, unknown_credit_type};

#[cfg(test)]
mod tests;
