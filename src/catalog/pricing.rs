//! Pricing one event: SEMANTICS.md §13, step by step, exactly.
//!
//! Owns: [`price`], which turns a meter, a quantity, dims, an event time and the period's
//! cumulative billed quantity into a cost in credits, the billed quantity, and an explanation
//! of how the cost came about (for the dry-run query and for tests).
//!
//! Must never: round more than once (step 7 is the only rounding), use a float, saturate, or
//! panic on a value an event can carry. Any arithmetic that does not fit exactly is
//! [`PriceError::CostOverflow`], a verdict the engine dead-letters, the same on every replay.
//!
//! Hot path: this runs once per event, millions of times a second. The common case, a price
//! that is one rate times the quantity (no windows, increment or minimum; a unit rate, possibly
//! replaced by a matched dimension rule, or a volume tier's rate; no multiplier), takes a fast
//! path (`price_one_rate`, then `price_unit`): one multiplication and one division by a power
//! of ten, each a single `u64` instruction when the numbers fit (they do for any realistic
//! event), with no allocation and no normalizing loop. Everything else takes the general path
//! (`price_general`), which follows §13 literally with `Dec`. Both give identical results: every
//! golden row runs both, and proptests compare them on random prices, dimension rules and
//! tiers.
//!
//! Invariants: `cost` is ≥ 0, has at most the credit type's scale, and is ≤
//! [`EVENT_COST_MAX_CREDITS`]; `billed_quantity` ≥ `quantity`.

use super::{Catalog, DimensionRule, MeterId, PriceModel, PriceVersion, Tier, TimeWindow};
use crate::decimal::{pow10, Credits, Dec, Fixed, Quantity, Rounding};
use crate::time::Instant;

/// Largest cost of one event, in whole credits; above it the event is dead-lettered
/// (`cost_overflow`, SEMANTICS §2.1) rather than charged, because no real event costs that much
/// and balances must stay far from `i128`'s limit.
pub const EVENT_COST_MAX_CREDITS: i128 = 1_000_000_000_000_000;

/// One event to price.
#[derive(Clone, Copy, Debug)]
pub struct PriceRequest<'a> {
    pub meter: MeterId,
    /// ≥ 0 (checked by the decoder; a negative quantity here is a programmer error).
    pub quantity: Quantity,
    pub dims: &'a [(String, String)],
    pub ts: Instant,
    /// The period's cumulative billed quantity of this meter before this event.
    pub cumulative: Quantity,
}

/// The price of one event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Priced {
    /// Rounded once, to the credit type's scale, with the meter's rounding rule.
    pub cost: Credits,
    /// The quantity after increments (step 1): what the cumulative quantity advances by.
    pub billed_quantity: Quantity,
    pub explain: PriceExplain,
}

/// How a price came about.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriceExplain {
    /// `effective_from` of the version used.
    pub version_from: Instant,
    /// `unit`, `graduated` or `volume`.
    pub model: &'static str,
    /// The unit rate used (unit: after window / dimension replacement; volume: the tier's rate);
    /// `None` for graduated, where several rates may apply.
    pub rate: Option<Dec>,
    /// Index of the dimension rule that matched.
    pub dimension_rule: Option<u16>,
    /// Index of the time window that matched.
    pub window: Option<u16>,
    /// Product of the dimension rule's and the window's multipliers (1 when none).
    pub multiplier: Dec,
    /// True when the minimum charge raised the cost.
    pub minimum_applied: bool,
    /// The exact cost before the single rounding (after the minimum).
    pub unrounded: Dec,
}

/// Why an event cannot be priced. Each is a dead-letter reason (SEMANTICS §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PriceError {
    #[error("the event is before the meter's first price version")]
    NoPriceInForce,
    #[error("the price version requires a dimension match and none matched")]
    NoRateForDims,
    #[error("the cost does not fit exactly or exceeds 10^15 credits")]
    CostOverflow,
}

impl PriceError {
    /// The dead-letter reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PriceError::NoPriceInForce => "no_price_in_force",
            PriceError::NoRateForDims => "no_rate_for_dims",
            PriceError::CostOverflow => "cost_overflow",
        }
    }
}

/// Prices one event (SEMANTICS §13).
pub fn price(catalog: &Catalog, request: &PriceRequest) -> Result<Priced, PriceError> {
    assert!(
        request.quantity.0 >= 0 && request.cumulative.0 >= 0,
        "pricing needs quantity >= 0 and cumulative >= 0; the decoder must have refused this"
    );
    let meter = catalog.meter(request.meter);
    let version = meter
        .version_at(request.ts)
        .ok_or(PriceError::NoPriceInForce)?;
    let scale = catalog.credit_type(meter.credit_type).scale;
    if version.windows.is_empty() && version.increment.is_none() && version.minimum.is_none() {
        if let Some(priced) = price_one_rate(version, request, scale, meter.rounding) {
            return priced;
        }
    }
    price_general(version, request, scale, meter.rounding)
}

/// The largest quantity an event may carry has 18 significant digits (SEMANTICS §2).
const QUANTITY_UNITS_MAX: i128 = 999_999_999_999_999_999;

/// The largest quantity with at most `decimals` decimal places (≤ 9) whose price is at most
/// `budget`, for an event like `request` (its meter, dims, `ts` and cumulative quantity; its own
/// quantity is ignored): the most of the meter that `budget` credits pay for in one event.
/// `Ok(None)` when even the largest quantity an event may carry costs at most `budget` (a free
/// meter, say). The errors that do not depend on the quantity (`no_price_in_force`,
/// `no_rate_for_dims`) are returned as [`price`] returns them.
///
/// Exact by construction: every candidate is priced by [`price`] itself. A price that rises
/// with the quantity (unit, graduated) is searched by bisection; a volume price can fall when
/// a larger quantity reaches a cheaper tier, so it is searched tier by tier (the quantities
/// whose cumulative total lands in one tier form an interval, within which the price rises),
/// and the largest affordable quantity of any tier wins.
pub fn max_quantity(
    catalog: &Catalog,
    request: &PriceRequest,
    decimals: u8,
    budget: Credits,
) -> Result<Option<Quantity>, PriceError> {
    assert!(decimals <= Quantity::SCALE, "at most 9 decimals");
    let meter = catalog.meter(request.meter);
    let version = meter
        .version_at(request.ts)
        .ok_or(PriceError::NoPriceInForce)?;
    matched_rule(version, request.dims)?;
    let step = pow10(u32::from(Quantity::SCALE - decimals)).expect("10^9 fits");
    let quantity = |units: i128| Fixed(units * step);
    // The cost of an event of `units`; `None` when it has none (an overflow).
    let cost = |units: i128| {
        price(
            catalog,
            &PriceRequest {
                quantity: quantity(units),
                ..*request
            },
        )
        .ok()
        .map(|priced| priced.cost)
    };
    // The largest `units` in `low..=high` for which `holds` (true up to some point, then
    // false) is true; `low` must hold.
    let last_true = |mut low: i128, mut high: i128, holds: &dyn Fn(i128) -> bool| {
        while low < high {
            let middle = low + (high - low + 1) / 2;
            if holds(middle) {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        low
    };
    let segments: Vec<(i128, i128)> = match &version.model {
        PriceModel::Volume { tiers } => {
            // The tier an event of `units` reaches; it never falls as `units` grows.
            let tier_of = |units: i128| -> usize {
                let billed = match version.increment {
                    Some(increment) => quantity(units).to_dec().ceil_to_multiple(increment),
                    None => Some(quantity(units).to_dec()),
                };
                let reached = billed.and_then(|b| b.checked_add(request.cumulative.to_dec()));
                match reached {
                    Some(reached) => tiers
                        .iter()
                        .position(|t| t.up_to.is_none_or(|up_to| reached <= up_to))
                        .unwrap_or(tiers.len() - 1),
                    None => tiers.len() - 1,
                }
            };
            // Where a tier ends, worked out from its bound (the most units whose billed
            // quantity stays within it), then checked by `tier_of` itself, and searched for
            // when the check fails.
            let tier_end = |tier: usize| -> Option<i128> {
                let up_to = tiers[tier].up_to?.to_fixed::<{ Quantity::SCALE }>()?;
                let mut room = up_to.0.checked_sub(request.cumulative.0)?;
                if let Some(increment) = version.increment {
                    let increment = increment.to_fixed::<{ Quantity::SCALE }>()?.0;
                    room -= room.rem_euclid(increment.max(1));
                }
                Some(room.div_euclid(step))
            };
            let mut segments = Vec::new();
            let mut low = 0;
            while low <= QUANTITY_UNITS_MAX {
                let tier = tier_of(low);
                let same = |u: i128| tier_of(u) == tier;
                let high = match tier_end(tier) {
                    // The last tier has no end: every larger quantity reaches it too.
                    _ if tier + 1 == tiers.len() => QUANTITY_UNITS_MAX,
                    Some(end)
                        if (low..QUANTITY_UNITS_MAX).contains(&end)
                            && same(end)
                            && !same(end + 1) =>
                    {
                        end
                    }
                    _ => last_true(low, QUANTITY_UNITS_MAX, &same),
                };
                segments.push((low, high));
                low = high + 1;
            }
            segments
        }
        PriceModel::Unit { .. } | PriceModel::Graduated { .. } => vec![(0, QUANTITY_UNITS_MAX)],
    };
    let best = segments
        .into_iter()
        .filter_map(|(low, high)| {
            let at_low = cost(low).filter(|&c| c <= budget)?;
            Some(last_affordable(low, at_low, high, budget, &cost))
        })
        .max()
        // A quantity of 0 costs nothing (no minimum applies to it), so the first segment holds.
        .unwrap_or(0);
    Ok((best < QUANTITY_UNITS_MAX).then(|| quantity(best)))
}

/// The largest `units` in `low..=high` whose cost is at most `budget`, where the cost never
/// falls as `units` grows and `low` costs `at_low` (at most `budget`). An interpolation search:
/// the next candidate is where the budget falls on the line between the costs at the two ends
/// known so far, so a price that is linear in stretches (unit, graduated and volume prices) is
/// found in a few steps where bisecting `0..10^18` takes sixty. A step that does not halve the
/// interval is followed by a bisection, so it never takes more than about twice bisection's
/// steps (a cost that jumps: increments, a minimum). Exact: the floating point only picks the
/// next candidate; every candidate is priced.
fn last_affordable(
    low: i128,
    at_low: Credits,
    high: i128,
    budget: Credits,
    cost: &dyn Fn(i128) -> Option<Credits>,
) -> i128 {
    // `low` is affordable; `high + 1` is treated as not (`above` holds its cost when known).
    let (mut low, mut at_low) = (low, at_low);
    let (mut high, mut above): (i128, Option<Credits>) = (high + 1, None);
    // How far each end's cost is from the budget, as the interpolation weighs it: halved on
    // the side that stayed put twice in a row (the Illinois rule: a convex cost, such as
    // rising graduated tiers, otherwise moves only one end, a step at a time).
    let (mut left, mut right) = (0.0f64, 0.0f64);
    let mut moved_low = None;
    let mut bisect = true;
    while high - low > 1 {
        let width = high - low;
        let guess = if !bisect && above.is_some() && left + right > 0.0 {
            low + (left / (left + right) * width as f64) as i128
        } else {
            low + width / 2
        }
        .clamp(low + 1, high - 1);
        let affordable = match cost(guess) {
            Some(c) if c <= budget => {
                (low, at_low) = (guess, c);
                true
            }
            c => {
                (high, above) = (guess, c);
                false
            }
        };
        let (kept_left, kept_right) = (left, right);
        left = (budget.0 - at_low.0) as f64;
        right = above.map_or(0.0, |above| (above.0 - budget.0) as f64);
        if moved_low == Some(true) && affordable && kept_right > 0.0 {
            right = kept_right / 2.0;
        } else if moved_low == Some(false) && !affordable && kept_left > 0.0 {
            left = kept_left / 2.0;
        }
        moved_low = Some(affordable);
        // Interpolate while it pays: a step that left more than half bisects next.
        bisect = !bisect && (high - low) * 2 > width;
    }
    low
}

/// The fast path for a version without windows, increment or minimum whose price is one rate
/// times the quantity: a unit rate (the base rate or a matched dimension rule's), or a volume
/// tier's rate, with no multiplier. `None` when the price needs the general path (graduated
/// tiers, a multiplier). Same result as [`price_general`], every error included, in the same
/// order: `no_rate_for_dims` before any overflow.
fn price_one_rate(
    version: &PriceVersion,
    request: &PriceRequest,
    scale: u8,
    rounding: Rounding,
) -> Option<Result<Priced, PriceError>> {
    let rule_index = match matched_rule(version, request.dims) {
        Ok(index) => index,
        Err(error) => return Some(Err(error)),
    };
    let rule = rule_index.map(|i| &version.dimensions[i]);
    if rule.is_some_and(|r| r.multiplier.is_some()) {
        return None;
    }
    let (model, rate) = match &version.model {
        PriceModel::Unit { rate } => ("unit", rule.and_then(|r| r.rate).unwrap_or(*rate)),
        PriceModel::Volume { tiers } => {
            let reached = match request
                .cumulative
                .to_dec()
                .checked_add(request.quantity.to_dec())
            {
                Some(reached) => reached,
                None => return Some(Err(PriceError::CostOverflow)),
            };
            ("volume", volume_rate(tiers, reached))
        }
        PriceModel::Graduated { .. } => return None,
    };
    Some(price_unit(
        version,
        request.quantity,
        rate,
        scale,
        rounding,
        model,
        rule_index,
    ))
}

/// `quantity × rate`, rounded: one multiplication and one division. Same result as the
/// general path, faster.
fn price_unit(
    version: &PriceVersion,
    quantity: Quantity,
    rate: Dec,
    scale: u8,
    rounding: Rounding,
    model: &'static str,
    rule_index: Option<usize>,
) -> Result<Priced, PriceError> {
    let product = multiply(quantity.0, rate.mantissa())?;
    let product_scale = Quantity::SCALE
        .checked_add(rate.scale())
        .ok_or(PriceError::CostOverflow)?;
    let unrounded = Dec::new(product, product_scale).ok_or(PriceError::CostOverflow)?;
    let rounded = round_to_scale(product, product_scale, scale, rounding)?;
    Ok(Priced {
        cost: credits_at_scale(rounded, scale)?,
        billed_quantity: quantity,
        explain: PriceExplain {
            version_from: version.effective_from,
            model,
            rate: Some(rate),
            dimension_rule: rule_index.map(|i| i as u16),
            window: None,
            multiplier: Dec::ONE,
            minimum_applied: false,
            unrounded,
        },
    })
}

/// §13 literally.
fn price_general(
    version: &PriceVersion,
    request: &PriceRequest,
    scale: u8,
    rounding: Rounding,
) -> Result<Priced, PriceError> {
    const OVERFLOW: PriceError = PriceError::CostOverflow;
    // 2. First dimension rule whose pairs all equal the event's dims. Done before step 1, which
    // it does not depend on, because `no_rate_for_dims` takes precedence over `cost_overflow`
    // (SEMANTICS §2.1) and step 1 can overflow.
    let rule_index = matched_rule(version, request.dims)?;
    let rule = rule_index.map(|i| &version.dimensions[i]);
    // 1. A started block is billed.
    let quantity = request.quantity.to_dec();
    let billed = match version.increment {
        Some(increment) => quantity.ceil_to_multiple(increment).ok_or(OVERFLOW)?,
        None => quantity,
    };
    let billed_quantity: Quantity = billed.to_fixed().ok_or(OVERFLOW)?;
    // 3. First window containing the event's local weekday and time of day.
    let window_index = if version.windows.is_empty() {
        None
    } else {
        let (weekday, time_of_day) = version.time_zone.weekday_and_time_of_day(request.ts);
        version
            .windows
            .iter()
            .position(|w| window_contains(w, weekday, time_of_day))
    };
    let window = window_index.map(|i| &version.windows[i]);
    // 4. Base cost.
    let cumulative = request.cumulative.to_dec();
    let (model, rate, base) = match &version.model {
        PriceModel::Unit { rate } => {
            let rate = window
                .and_then(|w| w.rate)
                .or_else(|| rule.and_then(|r| r.rate))
                .unwrap_or(*rate);
            (
                "unit",
                Some(rate),
                billed.checked_mul(rate).ok_or(OVERFLOW)?,
            )
        }
        PriceModel::Graduated { tiers } => (
            "graduated",
            None,
            graduated(tiers, cumulative, billed).ok_or(OVERFLOW)?,
        ),
        PriceModel::Volume { tiers } => {
            let reached = cumulative.checked_add(billed).ok_or(OVERFLOW)?;
            let rate = volume_rate(tiers, reached);
            (
                "volume",
                Some(rate),
                billed.checked_mul(rate).ok_or(OVERFLOW)?,
            )
        }
    };
    // 5. Multipliers.
    let multiplier = rule
        .and_then(|r| r.multiplier)
        .unwrap_or(Dec::ONE)
        .checked_mul(window.and_then(|w| w.multiplier).unwrap_or(Dec::ONE))
        .ok_or(OVERFLOW)?;
    let mut cost = base.checked_mul(multiplier).ok_or(OVERFLOW)?;
    // 6. Minimum charge, only for an event that used something.
    let mut minimum_applied = false;
    if let Some(minimum) = version.minimum {
        if request.quantity.is_positive() && cost < minimum {
            cost = minimum;
            minimum_applied = true;
        }
    }
    // 7. The one rounding.
    let rounded = round_to_scale(cost.mantissa(), cost.scale(), scale, rounding)?;
    Ok(Priced {
        cost: credits_at_scale(rounded, scale)?,
        billed_quantity,
        explain: PriceExplain {
            version_from: version.effective_from,
            model,
            rate,
            dimension_rule: rule_index.map(|i| i as u16),
            window: window_index.map(|i| i as u16),
            multiplier,
            minimum_applied,
            unrounded: cost,
        },
    })
}

/// Step 2: the index of the first dimension rule whose pairs all equal the event's dims;
/// `no_rate_for_dims` when none matched and the version requires one.
fn matched_rule(
    version: &PriceVersion,
    dims: &[(String, String)],
) -> Result<Option<usize>, PriceError> {
    let index = version
        .dimensions
        .iter()
        .position(|rule| dims_match(rule, dims));
    if index.is_none() && version.dimension_required {
        return Err(PriceError::NoRateForDims);
    }
    Ok(index)
}

fn dims_match(rule: &DimensionRule, dims: &[(String, String)]) -> bool {
    rule.matches
        .iter()
        .all(|(key, value)| dims.iter().any(|(k, v)| k == key && v == value))
}

fn window_contains(window: &TimeWindow, weekday: u8, time_of_day: i64) -> bool {
    window.days & (1 << weekday) != 0 && window.from_ms <= time_of_day && time_of_day < window.to_ms
}

/// Each unit at its tier's rate: the quantity positions `[cumulative, cumulative + billed)`
/// split over tiers `(previous up_to, up_to]`. For a continuous quantity the measure of the
/// overlap does not depend on which ends are open.
fn graduated(tiers: &[Tier], cumulative: Dec, billed: Dec) -> Option<Dec> {
    let end = cumulative.checked_add(billed)?;
    let mut lower = Dec::ZERO;
    let mut total = Dec::ZERO;
    for tier in tiers {
        let from = cumulative.max(lower);
        let to = match tier.up_to {
            Some(up_to) => end.min(up_to),
            None => end,
        };
        if to > from {
            total = total.checked_add(to.checked_sub(from)?.checked_mul(tier.rate)?)?;
        }
        match tier.up_to {
            Some(up_to) if up_to < end => lower = up_to,
            _ => break,
        }
    }
    Some(total)
}

/// The rate of the tier containing `reached`: the first whose `up_to` is ≥ it.
fn volume_rate(tiers: &[Tier], reached: Dec) -> Dec {
    let tier = tiers
        .iter()
        .find(|t| t.up_to.is_none_or(|up_to| reached <= up_to))
        .or(tiers.last())
        .expect("the loader guarantees at least one tier, the last unbounded");
    tier.rate
}

/// `a × b` exactly. Two values that fit `u64` (every realistic quantity and rate) multiply in
/// one widening instruction; an overflow-checked `i128` multiplication is a slow library call.
fn multiply(a: i128, b: i128) -> Result<i128, PriceError> {
    if let (Ok(a), Ok(b)) = (u64::try_from(a), u64::try_from(b)) {
        return i128::try_from(u128::from(a) * u128::from(b)).map_err(|_| PriceError::CostOverflow);
    }
    a.checked_mul(b).ok_or(PriceError::CostOverflow)
}

/// 10^0 ..= 10^19: every power of ten that fits a `u64`.
const POW10_U64: [u64; 20] = {
    let mut table = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// `value / 10^from_scale` rounded to `to_scale` decimals with `rule`; returns the mantissa at
/// `to_scale`. Identical to [`Dec::round`] (tested), but a value that fits `u64` is divided in
/// `u64`, several times faster than an `i128` division.
fn round_to_scale(
    value: i128,
    from_scale: u8,
    to_scale: u8,
    rule: Rounding,
) -> Result<i128, PriceError> {
    if from_scale <= to_scale {
        let factor = pow10(u32::from(to_scale - from_scale)).ok_or(PriceError::CostOverflow)?;
        return value.checked_mul(factor).ok_or(PriceError::CostOverflow);
    }
    let shift = u32::from(from_scale - to_scale);
    if let (Ok(small), Some(&divisor)) = (u64::try_from(value), POW10_U64.get(shift as usize)) {
        let quotient = small / divisor;
        let remainder = small % divisor;
        // Comparing remainder with divisor − remainder avoids 2 × remainder overflowing.
        let rest = divisor - remainder;
        let up = remainder != 0
            && match rule {
                Rounding::Down => false,
                Rounding::Up => true,
                Rounding::HalfUp => remainder >= rest,
                Rounding::HalfEven => remainder > rest || (remainder == rest && quotient % 2 == 1),
            };
        return Ok(i128::from(quotient) + i128::from(up));
    }
    Dec::new(value, from_scale)
        .and_then(|d| d.round(to_scale, rule))
        .map(Dec::mantissa)
        .ok_or(PriceError::CostOverflow)
}

/// A rounded cost (mantissa at `scale`) as `Credits`, refusing more than
/// [`EVENT_COST_MAX_CREDITS`].
fn credits_at_scale(mantissa: i128, scale: u8) -> Result<Credits, PriceError> {
    let limit = pow10(15 + u32::from(scale)).ok_or(PriceError::CostOverflow)?;
    debug_assert_eq!(pow10(15), Some(EVENT_COST_MAX_CREDITS));
    if mantissa > limit {
        return Err(PriceError::CostOverflow);
    }
    // mantissa ≤ 10^(15 + scale), so mantissa × 10^(9 − scale) ≤ 10^24: no overflow possible.
    let factor = POW10_U64[usize::from(Credits::SCALE - scale)];
    Ok(Fixed(mantissa * i128::from(factor)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::load;
    use proptest::prelude::*;

    /// Every rule of §13 gets a meter of its own, so each golden row tests one thing.
    const CATALOG: &str = r#"
default_plan = "p"
[currency]
code = "USD"
[[plans]]
name = "p"
[[credit_types]]
name = "credit"
scale = 6
[[credit_types]]
name = "whole"
scale = 0

[[meters]]
name = "unit"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.002"

[[meters]]
name = "versioned"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
  [[meters.versions]]
  effective_from = "2026-07-01T00:00:00Z"
  model = "unit"
  rate = "2"

[[meters]]
name = "dims"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.01"
    [[meters.versions.dimensions]]
    match = { model = "large", region = "eu" }
    rate = "0.05"
    multiplier = "2"
    [[meters.versions.dimensions]]
    match = { model = "large" }
    rate = "0.05"
    [[meters.versions.dimensions]]
    match = { region = "eu" }
    multiplier = "2"

[[meters]]
name = "dims_required"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
  dimension_required = true
    [[meters.versions.dimensions]]
    match = { model = "small" }
    rate = "0.1"

[[meters]]
name = "graduated"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "graduated"
    [[meters.versions.tiers]]
    up_to = "100"
    rate = "1"
    [[meters.versions.tiers]]
    up_to = "1000"
    rate = "0.5"
    [[meters.versions.tiers]]
    rate = "0.1"

[[meters]]
name = "volume"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "volume"
    [[meters.versions.tiers]]
    up_to = "100"
    rate = "1"
    [[meters.versions.tiers]]
    up_to = "1000"
    rate = "0.5"
    [[meters.versions.tiers]]
    rate = "0.1"

[[meters]]
name = "windows"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
  time_zone = "Europe/Paris"
    [[meters.versions.windows]]
    name = "peak"
    days = ["mon", "tue", "wed", "thu", "fri"]
    from = "09:00"
    to = "18:00"
    multiplier = "2"
    [[meters.versions.windows]]
    name = "weekend"
    days = ["sat", "sun"]
    from = "00:00"
    to = "24:00"
    multiplier = "0.5"
    [[meters.versions.windows]]
    name = "night"
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    from = "00:00"
    to = "06:00"
    rate = "0.25"

[[meters]]
name = "combo"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
    [[meters.versions.dimensions]]
    match = { tier = "gold" }
    rate = "0.8"
    multiplier = "1.1"
    [[meters.versions.windows]]
    name = "happy_hour"
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    from = "12:00"
    to = "13:00"
    rate = "0.4"
    multiplier = "0.5"

[[meters]]
name = "minimum"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.001"
  minimum = "0.05"

[[meters]]
name = "free"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0"

[[meters]]
name = "increment"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.01"
  increment = "60"

[[meters]]
name = "half_even"
credit_type = "whole"
rounding = "half_even"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.5"

[[meters]]
name = "half_up"
credit_type = "whole"
rounding = "half_up"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.5"

[[meters]]
name = "up"
credit_type = "whole"
rounding = "up"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.5"

[[meters]]
name = "down"
credit_type = "whole"
rounding = "down"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "0.5"

[[meters]]
name = "graduated_whole"
credit_type = "whole"
rounding = "half_even"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "graduated"
    [[meters.versions.tiers]]
    up_to = "1"
    rate = "0.5"
    [[meters.versions.tiers]]
    rate = "1.5"

[[meters]]
name = "expensive"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1000000"

[[meters]]
name = "huge_increment"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "1"
  increment = "999999999999999999999999999999"
  dimension_required = true
    [[meters.versions.dimensions]]
    match = { model = "small" }
    multiplier = "1"

[[meters]]
name = "huge_rate"
  [[meters.versions]]
  effective_from = "2026-01-01T00:00:00Z"
  model = "unit"
  rate = "99999999999999999999.999999999"
"#;

    const MONDAY_NOON: &str = "2026-01-05T12:00:00Z";

    fn catalog() -> Catalog {
        match load::from_str(CATALOG) {
            Ok(catalog) => catalog,
            Err(errors) => panic!("test catalog:\n{errors}"),
        }
    }

    fn q(text: &str) -> Quantity {
        text.parse().unwrap()
    }

    fn d(text: &str) -> Dec {
        text.parse().unwrap()
    }

    fn ts(text: &str) -> Instant {
        text.parse().unwrap()
    }

    fn dims(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Prices through [`price`], and when the fast path was eligible also through the general
    /// path, asserting both agree, so every golden row checks both.
    fn price_at(
        catalog: &Catalog,
        meter: &str,
        quantity: &str,
        dim_pairs: &[(&str, &str)],
        at: &str,
        cumulative: &str,
    ) -> Result<Priced, PriceError> {
        let dims = dims(dim_pairs);
        let request = PriceRequest {
            meter: catalog
                .meter_id(meter)
                .unwrap_or_else(|| panic!("meter {meter}")),
            quantity: q(quantity),
            dims: &dims,
            ts: ts(at),
            cumulative: q(cumulative),
        };
        let result = price(catalog, &request);
        let m = catalog.meter(request.meter);
        if let Some(version) = m.version_at(request.ts) {
            let scale = catalog.credit_type(m.credit_type).scale;
            let general = price_general(version, &request, scale, m.rounding);
            assert_eq!(
                result, general,
                "fast and general paths disagree for {meter} {quantity}"
            );
        }
        result
    }

    fn cost(
        meter: &str,
        quantity: &str,
        dim_pairs: &[(&str, &str)],
        at: &str,
        cumulative: &str,
    ) -> String {
        match price_at(&catalog(), meter, quantity, dim_pairs, at, cumulative) {
            Ok(priced) => priced.cost.to_string(),
            Err(error) => error.reason().to_string(),
        }
    }

    #[test]
    fn unit_golden() {
        for (quantity, want) in [
            ("0", "0"),
            ("1", "0.002"),
            ("3", "0.006"),
            ("0.5", "0.001"),
            ("0.0001", "0"),         // 0.0000002 rounds half_even to 0 at scale 6
            ("0.00025", "0"),        // 0.0000005: a tie, to even (0)
            ("0.00075", "0.000002"), // 0.0000015: a tie, to even (2)
            ("1000000000", "2000000"),
        ] {
            assert_eq!(
                cost("unit", quantity, &[], MONDAY_NOON, "0"),
                want,
                "unit × {quantity}"
            );
        }
        let priced = price_at(&catalog(), "unit", "3", &[], MONDAY_NOON, "0").unwrap();
        assert_eq!(priced.billed_quantity, q("3"));
        assert_eq!(priced.explain.model, "unit");
        assert_eq!(priced.explain.rate, Some(d("0.002")));
        assert_eq!(priced.explain.multiplier, Dec::ONE);
        assert_eq!(priced.explain.unrounded, d("0.006"));
        assert_eq!(priced.explain.version_from, ts("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn dimensions_golden() {
        type Row<'a> = (&'a [(&'a str, &'a str)], &'a str, Option<u16>, &'a str);
        let rows: &[Row] = &[
            // dims, cost of 10 units, rule, multiplier
            (&[], "0.1", None, "1"),
            (&[("model", "small")], "0.1", None, "1"),
            (&[("model", "large")], "0.5", Some(1), "1"),
            (&[("model", "large"), ("region", "eu")], "1", Some(0), "2"),
            (
                &[("region", "eu"), ("model", "large"), ("extra", "x")],
                "1",
                Some(0),
                "2",
            ),
            (&[("region", "eu")], "0.2", Some(2), "2"),
            (&[("region", "us"), ("model", "large")], "0.5", Some(1), "1"),
            (&[("Model", "large")], "0.1", None, "1"),
        ];
        let catalog = catalog();
        for (dim_pairs, want, rule, multiplier) in rows {
            let priced = price_at(&catalog, "dims", "10", dim_pairs, MONDAY_NOON, "0").unwrap();
            assert_eq!(priced.cost.to_string(), *want, "{dim_pairs:?}");
            assert_eq!(priced.explain.dimension_rule, *rule, "{dim_pairs:?}");
            assert_eq!(priced.explain.multiplier, d(multiplier), "{dim_pairs:?}");
        }
    }

    #[test]
    fn dimension_required_miss_is_no_rate_for_dims() {
        assert_eq!(
            cost(
                "dims_required",
                "10",
                &[("model", "small")],
                MONDAY_NOON,
                "0"
            ),
            "1"
        );
        for miss in [&[][..], &[("model", "large")][..], &[("size", "small")][..]] {
            assert_eq!(
                cost("dims_required", "10", miss, MONDAY_NOON, "0"),
                "no_rate_for_dims",
                "{miss:?}"
            );
        }
        // Even a zero quantity needs its dims: the verdict does not depend on the amount.
        assert_eq!(
            cost("dims_required", "0", &[], MONDAY_NOON, "0"),
            "no_rate_for_dims"
        );
    }

    #[test]
    fn graduated_golden() {
        // Tiers: (0, 100] at 1, (100, 1000] at 0.5, beyond at 0.1.
        for (quantity, cumulative, want) in [
            ("0", "0", "0"),
            ("10", "0", "10"),
            ("100", "0", "100"),
            ("101", "0", "100.5"),
            ("20", "90", "15"),    // 10 at 1 + 10 at 0.5
            ("1", "100", "0.5"),   // position 100 is the 101st unit: tier 2
            ("1", "99.5", "0.75"), // half a unit in each tier
            ("100", "950", "30"),  // 50 at 0.5 + 50 at 0.1
            ("2000", "0", "650"),  // 100 + 450 + 100
            ("10", "5000", "1"),   // all in the last tier
        ] {
            assert_eq!(
                cost("graduated", quantity, &[], MONDAY_NOON, cumulative),
                want,
                "{quantity} after {cumulative}"
            );
        }
        let priced = price_at(&catalog(), "graduated", "20", &[], MONDAY_NOON, "90").unwrap();
        assert_eq!(priced.explain.model, "graduated");
        assert_eq!(priced.explain.rate, None);
    }

    #[test]
    fn volume_golden() {
        // Tiers: (0, 100] at 1, (100, 1000] at 0.5, beyond at 0.1. The tier containing
        // cumulative + quantity prices every unit of the event.
        for (quantity, cumulative, want, rate) in [
            ("0", "0", "0", "1"),
            ("10", "0", "10", "1"),
            ("10", "90", "10", "1"), // reaches 100: still tier 1 (up_to is inclusive)
            ("11", "90", "5.5", "0.5"), // reaches 101: tier 2 for all 11 units
            ("0.5", "999.5", "0.25", "0.5"), // reaches exactly 1000: tier 2
            ("1", "999.5", "0.1", "0.1"), // reaches 1000.5: tier 3
            ("5000", "0", "500", "0.1"), // one big event: all at the last tier
        ] {
            let priced =
                price_at(&catalog(), "volume", quantity, &[], MONDAY_NOON, cumulative).unwrap();
            assert_eq!(
                priced.cost.to_string(),
                want,
                "{quantity} after {cumulative}"
            );
            assert_eq!(
                priced.explain.rate,
                Some(d(rate)),
                "{quantity} after {cumulative}"
            );
            assert_eq!(priced.explain.model, "volume");
        }
    }

    #[test]
    fn windows_golden() {
        // Europe/Paris: CET (UTC+1) in January. 2026-01-05 is a Monday.
        let rows: &[(&str, &str, Option<u16>)] = &[
            // ts (UTC), cost of 10 units at base rate 1, window
            ("2026-01-05T07:59:59.999Z", "10", None), // Mon 08:59:59.999 local
            ("2026-01-05T08:00:00Z", "20", Some(0)),  // Mon 09:00 local: from is inside
            ("2026-01-05T16:59:59.999Z", "20", Some(0)), // Mon 17:59:59.999
            ("2026-01-05T17:00:00Z", "10", None),     // Mon 18:00: to is outside
            ("2026-01-05T04:59:59.999Z", "2.5", Some(2)), // Mon 05:59:59.999: night rate 0.25
            ("2026-01-05T05:00:00Z", "10", None),     // Mon 06:00
            // The weekday is the local one: Friday 23:30 UTC is already Saturday in Paris.
            ("2026-01-09T22:59:59.999Z", "10", None), // Fri 23:59:59.999 local
            ("2026-01-09T23:00:00Z", "5", Some(1)),   // Sat 00:00 local: weekend, listed
            // before night, wins
            ("2026-01-11T22:59:59.999Z", "5", Some(1)), // Sun 23:59:59.999: to = 24:00
            ("2026-01-11T23:00:00Z", "2.5", Some(2)),   // Mon 00:00: night
            ("2026-01-10T12:00:00Z", "5", Some(1)),     // Sat 13:00: weekend, not peak
        ];
        let catalog = catalog();
        for (at, want, window) in rows {
            let priced = price_at(&catalog, "windows", "10", &[], at, "0").unwrap();
            assert_eq!(priced.cost.to_string(), *want, "{at}");
            assert_eq!(priced.explain.window, *window, "{at}");
        }
    }

    #[test]
    fn windows_follow_daylight_saving_time() {
        // Paris moves from UTC+1 to UTC+2 on Sunday 2026-03-29. The same UTC time of day
        // falls in or out of the 09:00-18:00 peak depending on the side of the change.
        for (at, want) in [
            ("2026-03-27T07:30:00Z", "10"), // Fri 08:30 CET: before peak
            ("2026-03-30T07:30:00Z", "20"), // Mon 09:30 CEST: peak
            ("2026-03-27T16:30:00Z", "20"), // Fri 17:30 CET: peak
            ("2026-03-30T16:30:00Z", "10"), // Mon 18:30 CEST: after peak
            ("2026-03-30T07:00:00Z", "20"), // Mon 09:00 CEST exactly
            ("2026-03-30T06:59:59.999Z", "10"),
        ] {
            assert_eq!(cost("windows", "10", &[], at, "0"), want, "{at}");
        }
    }

    #[test]
    fn window_rate_beats_dimension_rate_and_multipliers_combine() {
        let catalog = catalog();
        let gold = &[("tier", "gold")][..];
        // In the happy hour: the window's rate 0.4, multipliers 1.1 × 0.5.
        let priced = price_at(&catalog, "combo", "10", gold, "2026-01-05T12:30:00Z", "0").unwrap();
        assert_eq!(priced.cost.to_string(), "2.2");
        assert_eq!(priced.explain.rate, Some(d("0.4")));
        assert_eq!(priced.explain.multiplier, d("0.55"));
        assert_eq!(
            (priced.explain.dimension_rule, priced.explain.window),
            (Some(0), Some(0))
        );
        // Outside it: the rule's rate 0.8 × 1.1.
        let priced = price_at(&catalog, "combo", "10", gold, "2026-01-05T13:00:00Z", "0").unwrap();
        assert_eq!(priced.cost.to_string(), "8.8");
        assert_eq!(priced.explain.rate, Some(d("0.8")));
        // No rule: the window alone.
        let priced = price_at(&catalog, "combo", "10", &[], "2026-01-05T12:00:00Z", "0").unwrap();
        assert_eq!(priced.cost.to_string(), "2");
    }

    #[test]
    fn minimum_golden() {
        for (quantity, want, applied) in [
            ("10", "0.05", true),  // 0.01 raised to the minimum
            ("50", "0.05", false), // exactly the minimum
            ("100", "0.1", false),
            ("0", "0", false), // nothing used: no minimum
            ("0.000000001", "0.05", true),
        ] {
            let priced = price_at(&catalog(), "minimum", quantity, &[], MONDAY_NOON, "0").unwrap();
            assert_eq!(priced.cost.to_string(), want, "{quantity}");
            assert_eq!(priced.explain.minimum_applied, applied, "{quantity}");
        }
    }

    #[test]
    fn increment_bills_started_blocks() {
        for (quantity, billed, want) in [
            ("0", "0", "0"),
            ("0.5", "60", "0.6"),
            ("1", "60", "0.6"),
            ("60", "60", "0.6"),
            ("60.000000001", "120", "1.2"),
            ("61", "120", "1.2"),
        ] {
            let priced =
                price_at(&catalog(), "increment", quantity, &[], MONDAY_NOON, "0").unwrap();
            assert_eq!(priced.billed_quantity, q(billed), "{quantity}");
            assert_eq!(priced.cost.to_string(), want, "{quantity}");
        }
    }

    /// Each rule at and around midpoints, through the fast path (unit) and the general path
    /// (graduated), at scale 0.
    #[test]
    fn rounding_golden() {
        let table: &[(&str, [&str; 4])] = &[
            // quantity (× 0.5), [half_even, half_up, up, down]
            ("1", ["0", "1", "1", "0"]),   // 0.5
            ("3", ["2", "2", "2", "1"]),   // 1.5
            ("5", ["2", "3", "3", "2"]),   // 2.5
            ("0.2", ["0", "0", "1", "0"]), // 0.1
            ("1.8", ["1", "1", "1", "0"]), // 0.9
            ("4", ["2", "2", "2", "2"]),   // 2: exact
        ];
        for (quantity, expected) in table {
            for (meter, want) in ["half_even", "half_up", "up", "down"].iter().zip(expected) {
                assert_eq!(
                    cost(meter, quantity, &[], MONDAY_NOON, "0"),
                    *want,
                    "{meter} {quantity}"
                );
            }
        }
        // General path: 1 unit at 0.5 then 1 at 1.5 = 2; 0.5 + 0.5 × 1.5 = 1.25 → 1; 1 → 0.5 → 0.
        for (quantity, want) in [("2", "2"), ("1.5", "1"), ("1", "0"), ("3", "4")] {
            assert_eq!(
                cost("graduated_whole", quantity, &[], MONDAY_NOON, "0"),
                want,
                "{quantity}"
            );
        }
    }

    #[test]
    fn rounding_happens_once_after_the_minimum_and_multipliers() {
        // 3 × 0.5 = 1.5 would round to 2 (half_even); rounding 0.5 first per unit would give 0.
        assert_eq!(cost("half_even", "3", &[], MONDAY_NOON, "0"), "2");
        let priced = price_at(
            &catalog(),
            "dims",
            "0.00001",
            &[("region", "eu")],
            MONDAY_NOON,
            "0",
        )
        .unwrap();
        // 0.00001 × 0.01 × 2 = 0.0000002 → 0 at scale 6; unrounded keeps the exact value.
        assert_eq!(priced.explain.unrounded, d("0.0000002"));
        assert_eq!(priced.cost, Credits::ZERO);
    }

    #[test]
    fn versions_by_effective_from() {
        for (at, want) in [
            ("2025-12-31T23:59:59.999Z", "no_price_in_force"),
            ("2026-01-01T00:00:00Z", "10"),
            ("2026-06-30T23:59:59.999Z", "10"),
            ("2026-07-01T00:00:00Z", "20"), // exactly at the boundary: the new version
            ("2030-01-01T00:00:00Z", "20"),
        ] {
            assert_eq!(cost("versioned", "10", &[], at, "0"), want, "{at}");
        }
        let priced = price_at(
            &catalog(),
            "versioned",
            "1",
            &[],
            "2026-07-01T00:00:00Z",
            "0",
        )
        .unwrap();
        assert_eq!(priced.explain.version_from, ts("2026-07-01T00:00:00Z"));
        // The general path answers the same for the window/dims meters before their start.
        assert_eq!(
            cost("windows", "1", &[], "2025-06-01T00:00:00Z", "0"),
            "no_price_in_force"
        );
    }

    #[test]
    fn cost_overflow() {
        // 10^15 credits exactly is allowed; one unit more is not.
        assert_eq!(
            cost("expensive", "1000000000", &[], MONDAY_NOON, "0"),
            "1000000000000000"
        );
        assert_eq!(
            cost("expensive", "1000000000.000001", &[], MONDAY_NOON, "0"),
            "cost_overflow"
        );
        // Not representable in 38 digits at all.
        assert_eq!(
            cost("huge_rate", "1000000000", &[], MONDAY_NOON, "0"),
            "cost_overflow"
        );
        assert_eq!(cost("huge_rate", "0", &[], MONDAY_NOON, "0"), "0");
        // The billed quantity itself does not fit; but a dims miss is the verdict that wins.
        let small = &[("model", "small")][..];
        assert_eq!(
            cost("huge_increment", "1", small, MONDAY_NOON, "0"),
            "cost_overflow"
        );
        assert_eq!(
            cost("huge_increment", "1", &[], MONDAY_NOON, "0"),
            "no_rate_for_dims"
        );
        assert_eq!(PriceError::CostOverflow.reason(), "cost_overflow");
        assert_eq!(PriceError::NoPriceInForce.reason(), "no_price_in_force");
        assert_eq!(PriceError::NoRateForDims.reason(), "no_rate_for_dims");
    }

    #[test]
    fn shipped_catalog_prices_a_gpu_job() {
        let catalog = load::from_path(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml"),
        )
        .unwrap();
        // Monday 10:00 in Paris (peak × 1.5), 61 s billed as 120 s, starting 10 s before the
        // end of the first tier: 10 × 0.01 + 110 × 0.008 = 0.98, × 1.5 = 1.47 compute credits.
        let priced = price_at(
            &catalog,
            "gpu_second",
            "61",
            &[],
            "2026-11-23T09:00:00Z",
            "3590",
        )
        .unwrap();
        assert_eq!(priced.cost.to_string(), "1.47");
        assert_eq!(priced.billed_quantity, q("120"));
        assert_eq!(priced.explain.window, Some(0));
        // A short job on a Saturday: 60 × 0.01 × 0.8 = 0.48, raised to the minimum 0.6.
        let priced = price_at(
            &catalog,
            "gpu_second",
            "1",
            &[],
            "2026-11-28T09:00:00Z",
            "0",
        )
        .unwrap();
        assert_eq!(priced.cost.to_string(), "0.6");
        assert!(priced.explain.minimum_applied);
        // llm_token: large in the EU, 1000 tokens: 1000 × 0.00003 × 1.2 = 0.036.
        let eu = &[("model", "large"), ("region", "eu")][..];
        assert_eq!(
            price_at(&catalog, "llm_token", "1000", eu, MONDAY_NOON, "0")
                .unwrap()
                .cost
                .to_string(),
            "0.036"
        );
        // storage rounds up: 1 GB-hour at 0.0001 is 0.0001; 0.001 GB-hour is 0.0000001 → 0.000001.
        assert_eq!(
            price_at(&catalog, "storage_gb_hour", "0.001", &[], MONDAY_NOON, "0")
                .unwrap()
                .cost
                .to_string(),
            "0.000001"
        );
    }

    fn max_q(meter: &str, cumulative: &str, decimals: u8, budget: &str) -> String {
        let catalog = catalog();
        let request = PriceRequest {
            meter: catalog.meter_id(meter).unwrap(),
            quantity: Quantity::ZERO,
            dims: &[],
            ts: ts(MONDAY_NOON),
            cumulative: q(cumulative),
        };
        match max_quantity(&catalog, &request, decimals, budget.parse().unwrap()) {
            Ok(Some(quantity)) => quantity.to_string(),
            Ok(None) => "unlimited".into(),
            Err(error) => error.reason().into(),
        }
    }

    #[test]
    fn max_quantity_golden() {
        // 0.002 per unit, 6 decimals of credit, half_even.
        assert_eq!(max_q("unit", "0", 0, "1"), "500");
        assert_eq!(max_q("unit", "0", 3, "1"), "500");
        assert_eq!(max_q("unit", "0", 0, "0.000001"), "0");
        // 0.0007 costs 0.0000014, which rounds to 0.000001; 0.0008 rounds to 0.000002.
        assert_eq!(max_q("unit", "0", 4, "0.000001"), "0.0007");
        // Volume: (0, 100] at 1, (100, 1000] at 0.5, beyond at 0.1. A larger event can be
        // cheaper: 60 credits buy 60 units in the first tier but 120 in the second.
        assert_eq!(max_q("volume", "0", 0, "50"), "50");
        assert_eq!(max_q("volume", "0", 0, "60"), "120");
        assert_eq!(max_q("volume", "0", 0, "150"), "1500");
        // After 950 units this period, 25 credits buy 50 more at 0.5, or 250 at 0.1.
        assert_eq!(max_q("volume", "950", 0, "25"), "250");
        // A minimum charge: nothing above 0 for less than the minimum.
        assert_eq!(max_q("minimum", "0", 0, "0.04"), "0");
        assert_eq!(max_q("minimum", "0", 0, "0.05"), "50");
        // Started blocks of 60 at 0.01: 1 credit pays 100 units = 2 blocks (120): 1.2 > 1,
        // so 60 units (one block, 0.6 credits).
        assert_eq!(max_q("increment", "0", 0, "1"), "60");
        assert_eq!(max_q("free", "0", 0, "0"), "unlimited");
        assert_eq!(max_q("dims", "0", 0, "1"), "100");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// `max_quantity` finds what trying every quantity finds, on volume tiers whose rates
        /// rise or fall (so the price is not monotonic), with or without a minimum.
        #[test]
        fn max_quantity_matches_brute_force(
            bounds in proptest::collection::vec(1u32..300, 1..3),
            rates in proptest::collection::vec(1u32..40, 3),
            cumulative in 0u32..700,
            budget in 0u32..2000,
            minimum in proptest::option::of(1u32..30),
            graduated in any::<bool>(),
        ) {
            // Rates in tenths of a credit per unit, at least 0.1: 2000 credits buy at most
            // 20,000 units, so trying 0..=21,000 finds the maximum.
            let mut tiers = String::new();
            let mut up_to = 0;
            for (i, bound) in bounds.iter().enumerate() {
                up_to += bound;
                tiers.push_str(&format!(
                    "    [[meters.versions.tiers]]\n    up_to = \"{up_to}\"\n    rate = \"{}.{}\"\n",
                    rates[i] / 10, rates[i] % 10
                ));
            }
            let last = rates[2];
            tiers.push_str(&format!("    [[meters.versions.tiers]]\n    rate = \"{}.{}\"\n", last / 10, last % 10));
            let minimum = minimum.map_or(String::new(), |m| format!("  minimum = \"{m}\"\n"));
            let toml = format!(
                "default_plan = \"p\"\n[currency]\ncode = \"USD\"\n[[plans]]\nname = \"p\"\n[[credit_types]]\nname = \"credit\"\nscale = 2\n[[meters]]\nname = \"m\"\n  [[meters.versions]]\n  effective_from = \"2026-01-01T00:00:00Z\"\n  model = \"{}\"\n{minimum}{tiers}",
                if graduated { "graduated" } else { "volume" }
            );
            let catalog = load::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
            let request = PriceRequest {
                meter: catalog.meter_id("m").unwrap(),
                quantity: Quantity::ZERO,
                dims: &[],
                ts: ts(MONDAY_NOON),
                cumulative: Fixed(i128::from(cumulative) * 1_000_000_000),
            };
            let budget = Fixed(i128::from(budget) * 1_000_000_000);
            let found = max_quantity(&catalog, &request, 0, budget).unwrap();
            let brute = (0..=21_000i128)
                .filter(|&units| {
                    price(&catalog, &PriceRequest { quantity: Fixed(units * 1_000_000_000), ..request })
                        .is_ok_and(|p| p.cost <= budget)
                })
                .max()
                .unwrap();
            prop_assert_eq!(found, Some(Fixed(brute * 1_000_000_000)));
        }
    }

    fn rule_strategy() -> impl Strategy<Value = Rounding> {
        prop_oneof![
            Just(Rounding::HalfEven),
            Just(Rounding::HalfUp),
            Just(Rounding::Up),
            Just(Rounding::Down),
        ]
    }

    proptest! {
        /// The interpolation search finds what bisection finds, for costs that rise linearly,
        /// in steps (increments), with a jump (a minimum) and with no cost past a point (an
        /// overflow), and never prices more than twice as many candidates as bisection would.
        #[test]
        fn last_affordable_matches_bisection(
            rate in prop_oneof![1i128..10, 1i128..1_000_000_000, 1i128..1_000_000_000_000_000],
            per in prop_oneof![Just(1i128), 1i128..1_000_000],
            block in prop_oneof![Just(1i128), 1i128..10_000],
            jump in prop_oneof![Just(0i128), 0i128..1_000_000_000_000],
            overflow in prop_oneof![Just(i128::MAX), 1i128..1_000_000_000_000_000_000],
            budget in prop_oneof![0i128..1_000_000, 0i128..1_000_000_000_000_000_000_000],
            low in prop_oneof![Just(0i128), 0i128..1000],
            high in prop_oneof![Just(QUANTITY_UNITS_MAX), 1000i128..=QUANTITY_UNITS_MAX],
        ) {
            // Blocks of `block` units started, each costing rate/per; `jump` once any is used.
            let cost = |units: i128| -> Option<Credits> {
                if units >= overflow {
                    return None;
                }
                let blocks = (units + block - 1) / block;
                let charge = blocks.checked_mul(rate)? / per;
                Some(Fixed(if units > 0 { charge.checked_add(jump)? } else { 0 }))
            };
            let budget = Fixed(budget);
            let affordable = |units: i128| cost(units).is_some_and(|c| c <= budget);
            prop_assume!(affordable(low));
            let (mut a, mut b) = (low, high);
            let mut bisections = 0;
            while a < b {
                let middle = a + (b - a + 1) / 2;
                bisections += 1;
                if affordable(middle) { a = middle } else { b = middle - 1 }
            }
            let priced = std::cell::Cell::new(0);
            let counting = |units: i128| {
                priced.set(priced.get() + 1);
                cost(units)
            };
            let found = last_affordable(low, cost(low).unwrap(), high, budget, &counting);
            prop_assert_eq!(found, a);
            prop_assert!(priced.get() <= 2 * bisections + 2, "{} candidates against {} bisections", priced.get(), bisections);
        }

        /// The u64 shortcut rounds exactly like `Dec::round`.
        #[test]
        fn round_to_scale_matches_dec_round(
            value in prop_oneof![0i128..1_000_000_000_000, 0i128..=i128::from(u64::MAX), any::<i128>()],
            from_scale in 0u8..=38,
            to_scale in 0u8..=9,
            rule in rule_strategy(),
        ) {
            let expected = Dec::new(value, from_scale).unwrap().round(to_scale, rule).map(Dec::mantissa);
            prop_assert_eq!(round_to_scale(value, from_scale, to_scale, rule).ok(), expected);
        }

        /// The u64 shortcut multiplies exactly like `i128::checked_mul`.
        #[test]
        fn multiply_matches_checked_mul(
            a in prop_oneof![0i128..=i128::from(u64::MAX), any::<i128>()],
            b in prop_oneof![0i128..=i128::from(u64::MAX), any::<i128>()],
        ) {
            prop_assert_eq!(multiply(a, b).ok(), a.checked_mul(b));
        }

        /// The fast path and §13 taken literally agree on every plain unit price.
        #[test]
        fn fast_path_matches_general_path(
            quantity in prop_oneof![0i128..1_000_000_000_000, 0i128..1_000_000_000_000_000_000_000_000],
            rate_mantissa in prop_oneof![0i128..1_000_000, 0i128..1_000_000_000_000_000_000],
            rate_scale in 0u8..=9,
            scale in 0u8..=9,
            rule in rule_strategy(),
        ) {
            let rate = Dec::new(rate_mantissa, rate_scale).unwrap().normalized();
            let version = PriceVersion {
                effective_from: Instant(0),
                model: PriceModel::Unit { rate },
                increment: None,
                minimum: None,
                dimensions: Vec::new(),
                dimension_required: false,
                windows: Vec::new(),
                time_zone: crate::time::Zone::utc(),
                fingerprint: 0,
            };
            let request = PriceRequest {
                meter: MeterId(0),
                quantity: Fixed(quantity),
                dims: &[],
                ts: Instant(0),
                cumulative: Quantity::ZERO,
            };
            let fast = price_unit(&version, request.quantity, rate, scale, rule, "unit", None);
            let general = price_general(&version, &request, scale, rule);
            prop_assert_eq!(fast, general);
        }

        /// The one-rate fast path agrees with §13 taken literally for unit rates replaced by
        /// dimension rules and for volume tiers, errors included (`no_rate_for_dims` when a
        /// required rule does not match), and steps aside when a rule has a multiplier.
        #[test]
        fn one_rate_path_matches_general_path(
            quantity in prop_oneof![0i128..1_000_000_000_000, 0i128..1_000_000_000_000_000_000_000_000],
            cumulative in prop_oneof![0i128..10_000_000_000_000, 0i128..1_000_000_000_000_000_000_000_000],
            base_rate in (0i128..1_000_000_000, 0u8..=9),
            volume in any::<bool>(),
            bounds in proptest::collection::vec((1i128..100_000, 0u8..=9), 0..3),
            tier_rates in proptest::collection::vec((0i128..1_000_000, 0u8..=9), 3),
            rules in proptest::collection::vec(
                (0u8..3, proptest::option::of((0i128..1_000_000, 0u8..=9)), proptest::option::weighted(0.2, 1i128..30)),
                0..3,
            ),
            required in any::<bool>(),
            event_value in 0u8..4,
            scale in 0u8..=9,
            rule in rule_strategy(),
        ) {
            let dec = |(mantissa, scale): (i128, u8)| Dec::new(mantissa, scale).unwrap();
            let model = if volume {
                let mut up_to = Dec::ZERO;
                let mut tiers = Vec::new();
                for (i, bound) in bounds.iter().enumerate() {
                    up_to = up_to.checked_add(dec(*bound)).unwrap();
                    tiers.push(Tier { up_to: Some(up_to), rate: dec(tier_rates[i]) });
                }
                tiers.push(Tier { up_to: None, rate: dec(tier_rates[2]) });
                PriceModel::Volume { tiers }
            } else {
                PriceModel::Unit { rate: dec(base_rate) }
            };
            let dimensions = rules
                .iter()
                .map(|(value, rate, multiplier)| DimensionRule {
                    matches: vec![("k".to_string(), format!("v{value}"))],
                    // The loader allows a replacement rate only for the unit model.
                    rate: rate.filter(|_| !volume).map(dec),
                    multiplier: multiplier.map(|m| Dec::new(m, 1).unwrap()),
                })
                .collect();
            let version = PriceVersion {
                effective_from: Instant(0),
                model,
                increment: None,
                minimum: None,
                dimensions,
                dimension_required: required,
                windows: Vec::new(),
                time_zone: crate::time::Zone::utc(),
                fingerprint: 0,
            };
            let event_dims = match event_value {
                3 => Vec::new(),
                value => vec![("k".to_string(), format!("v{value}"))],
            };
            let request = PriceRequest {
                meter: MeterId(0),
                quantity: Fixed(quantity),
                dims: &event_dims,
                ts: Instant(0),
                cumulative: Fixed(cumulative),
            };
            let general = price_general(&version, &request, scale, rule);
            match price_one_rate(&version, &request, scale, rule) {
                Some(fast) => prop_assert_eq!(fast, general),
                None => {
                    let matched = version.dimensions.iter().find(|r| dims_match(r, request.dims));
                    prop_assert!(matched.is_some_and(|r| r.multiplier.is_some()));
                }
            }
        }
    }
}
