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
//! Hot path: this runs once per event, millions of times a second. The common case (unit model,
//! no dimension rules, no windows, no increment, no minimum) takes [`price_unit`]: one `i128`
//! multiplication and one division by a power of ten, done in `u64` when the numbers fit, with
//! no allocation and no normalizing loop. Everything else takes the general path, which follows
//! §13 literally with `Dec`. Both give identical results (tested against each other).
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
    if let PriceModel::Unit { rate } = &version.model {
        if version.dimensions.is_empty()
            && version.windows.is_empty()
            && version.increment.is_none()
            && version.minimum.is_none()
        {
            return price_unit(version, request.quantity, *rate, scale, meter.rounding);
        }
    }
    price_general(version, request, scale, meter.rounding)
}

/// The common case: `quantity × rate`, rounded. Same result as the general path, faster.
fn price_unit(
    version: &PriceVersion,
    quantity: Quantity,
    rate: Dec,
    scale: u8,
    rounding: Rounding,
) -> Result<Priced, PriceError> {
    let product = quantity
        .0
        .checked_mul(rate.mantissa())
        .ok_or(PriceError::CostOverflow)?;
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
            model: "unit",
            rate: Some(rate),
            dimension_rule: None,
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
    let quantity = request.quantity.to_dec();
    // 1. A started block is billed.
    let billed = match version.increment {
        Some(increment) => quantity.ceil_to_multiple(increment).ok_or(OVERFLOW)?,
        None => quantity,
    };
    let billed_quantity: Quantity = billed.to_fixed().ok_or(OVERFLOW)?;
    // 2. First dimension rule whose pairs all equal the event's dims.
    let rule_index = version
        .dimensions
        .iter()
        .position(|rule| dims_match(rule, request.dims));
    if rule_index.is_none() && version.dimension_required {
        return Err(PriceError::NoRateForDims);
    }
    let rule = rule_index.map(|i| &version.dimensions[i]);
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
    if let (Ok(small), true) = (u64::try_from(value), shift <= 19) {
        // 10^19 < 2^64, so the divisor fits.
        let divisor = 10u64.pow(shift);
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
    let factor = pow10(u32::from(Credits::SCALE - scale)).ok_or(PriceError::CostOverflow)?;
    mantissa
        .checked_mul(factor)
        .map(Fixed)
        .ok_or(PriceError::CostOverflow)
}
