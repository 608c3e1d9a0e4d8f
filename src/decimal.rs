//! Exact decimal arithmetic for every money path.
//!
//! Owns: [`Dec`], an exact decimal (an `i128` mantissa and a base-10 scale) used while pricing,
//! the fixed-point [`Fixed`] types the engine keeps balances in ([`Credits`], [`Price`],
//! [`Quantity`] at 9 decimals, [`Revenue`] at 18), and the four named [`Rounding`] rules.
//!
//! Must never: use a float, round implicitly, or saturate. Every operation is exact or returns
//! `None` (overflow, or a result that needs more than 38 digits); the caller turns `None` into a
//! dead letter or a rejected command. Rounding happens only through [`Dec::round`], which takes
//! the rule by name, so no code can round "by default".
//!
//! Invariants: a `Fixed<S>` value `v` means `v.0 / 10^S`. `Dec` keeps `scale <= 38`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest scale a [`Dec`] may carry: an `i128` holds 38 full decimal digits.
pub const SCALE_MAX: u8 = 38;

const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// 10^exponent, or `None` when it does not fit an `i128`.
pub fn pow10(exponent: u32) -> Option<i128> {
    POW10.get(exponent as usize).copied()
}

/// A rounding rule, named as in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Ties to the even neighbour (banker's rounding). Unbiased over many events.
    #[default]
    HalfEven,
    /// Ties away from zero ("commercial" rounding).
    HalfUp,
    /// Away from zero: any remainder rounds up in magnitude.
    Up,
    /// Toward zero: the remainder is dropped.
    Down,
}

impl Rounding {
    pub const ALL: [Rounding; 4] = [
        Rounding::HalfEven,
        Rounding::HalfUp,
        Rounding::Up,
        Rounding::Down,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rounding::HalfEven => "half_even",
            Rounding::HalfUp => "half_up",
            Rounding::Up => "up",
            Rounding::Down => "down",
        }
    }

    pub fn parse(name: &str) -> Option<Rounding> {
        Rounding::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Divides `value` by `10^shift` with the given rule. Exact: the only loss is the named rounding.
fn div_pow10_rounded(value: i128, shift: u32, rule: Rounding) -> i128 {
    if shift == 0 {
        return value;
    }
    // 10^39 exceeds i128; any |value| < 10^38.something divided by it is below one half.
    let Some(divisor) = pow10(shift) else {
        return match rule {
            Rounding::Up if value != 0 => value.signum(),
            _ => 0,
        };
    };
    let quotient = value / divisor;
    let remainder = value % divisor;
    if remainder == 0 {
        return quotient;
    }
    let away = value.signum();
    let twice = remainder.unsigned_abs() * 2;
    let divisor_abs = divisor.unsigned_abs();
    let round_away = match rule {
        Rounding::Down => false,
        Rounding::Up => true,
        Rounding::HalfUp => twice >= divisor_abs,
        Rounding::HalfEven => match twice.cmp(&divisor_abs) {
            Ordering::Less => false,
            Ordering::Greater => true,
            Ordering::Equal => quotient % 2 != 0,
        },
    };
    if round_away {
        quotient + away
    } else {
        quotient
    }
}

/// An exact decimal: `mantissa / 10^scale`.
///
/// Equality and ordering compare values, so `1.50 == 1.5`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dec {
    mantissa: i128,
    scale: u8,
}

impl Dec {
    pub const ZERO: Dec = Dec {
        mantissa: 0,
        scale: 0,
    };
    pub const ONE: Dec = Dec {
        mantissa: 1,
        scale: 0,
    };

    /// `None` when `scale` exceeds [`SCALE_MAX`].
    pub fn new(mantissa: i128, scale: u8) -> Option<Dec> {
        (scale <= SCALE_MAX).then_some(Dec { mantissa, scale })
    }

    pub fn from_int(value: i128) -> Dec {
        Dec {
            mantissa: value,
            scale: 0,
        }
    }

    pub fn mantissa(self) -> i128 {
        self.mantissa
    }

    pub fn scale(self) -> u8 {
        self.scale
    }

    pub fn is_zero(self) -> bool {
        self.mantissa == 0
    }

    pub fn is_negative(self) -> bool {
        self.mantissa < 0
    }

    /// The same value with trailing fractional zeros removed.
    pub fn normalized(self) -> Dec {
        let mut scale = self.scale;
        // Most values fit 64 bits, where dividing by the constant 10 is a multiplication; an
        // i128 division is a library call ten times slower, once per stripped digit.
        if let Ok(mut small) = i64::try_from(self.mantissa) {
            while scale > 0 && small % 10 == 0 && small != 0 {
                small /= 10;
                scale -= 1;
            }
            if small == 0 {
                scale = 0;
            }
            return Dec {
                mantissa: i128::from(small),
                scale,
            };
        }
        let mut mantissa = self.mantissa;
        while scale > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        if mantissa == 0 {
            scale = 0;
        }
        Dec { mantissa, scale }
    }

    /// Number of digits in the normalized mantissa (0 has one digit).
    pub fn digits(self) -> u32 {
        let m = self.normalized().mantissa.unsigned_abs();
        if m == 0 {
            1
        } else {
            m.ilog10() + 1
        }
    }

    /// The same value at a larger scale, exactly; `None` on overflow or a smaller `scale`.
    pub fn rescale_up(self, scale: u8) -> Option<Dec> {
        if scale < self.scale || scale > SCALE_MAX {
            return None;
        }
        let factor = pow10(u32::from(scale - self.scale))?;
        Some(Dec {
            mantissa: self.mantissa.checked_mul(factor)?,
            scale,
        })
    }

    /// Both operands at one common scale, using the smallest scale that holds both exactly.
    fn aligned(self, other: Dec) -> Option<(i128, i128, u8)> {
        // Fast path: scale the coarser one up (one multiplication). Normalizing first costs an
        // i128 division per trailing zero, so it is only the fallback when scaling overflows.
        let scale = self.scale.max(other.scale);
        if let (Some(a), Some(b)) = (self.rescale_up(scale), other.rescale_up(scale)) {
            return Some((a.mantissa, b.mantissa, scale));
        }
        let a = self.normalized();
        let b = other.normalized();
        let scale = a.scale.max(b.scale);
        Some((
            a.rescale_up(scale)?.mantissa,
            b.rescale_up(scale)?.mantissa,
            scale,
        ))
    }

    pub fn checked_add(self, other: Dec) -> Option<Dec> {
        let (a, b, scale) = self.aligned(other)?;
        Some(Dec {
            mantissa: a.checked_add(b)?,
            scale,
        })
    }

    pub fn checked_sub(self, other: Dec) -> Option<Dec> {
        self.checked_add(other.checked_neg()?)
    }

    pub fn checked_neg(self) -> Option<Dec> {
        Some(Dec {
            mantissa: self.mantissa.checked_neg()?,
            scale: self.scale,
        })
    }

    pub fn checked_mul(self, other: Dec) -> Option<Dec> {
        let a = self.normalized();
        let b = other.normalized();
        let scale = a.scale.checked_add(b.scale)?;
        if scale > SCALE_MAX {
            return None;
        }
        Some(Dec {
            mantissa: a.mantissa.checked_mul(b.mantissa)?,
            scale,
        })
    }

    /// The smallest multiple of `step` that is `>= self` (for non-negative values), exactly.
    /// `None` when `step <= 0` or on overflow.
    pub fn ceil_to_multiple(self, step: Dec) -> Option<Dec> {
        if step.mantissa <= 0 {
            return None;
        }
        let (value, step_m, scale) = self.aligned(step)?;
        let blocks = value.div_euclid(step_m) + i128::from(value.rem_euclid(step_m) != 0);
        Some(Dec {
            mantissa: blocks.checked_mul(step_m)?,
            scale,
        })
    }

    /// Rounds to `scale` decimals with the named rule. This is the only place rounding happens.
    pub fn round(self, scale: u8, rule: Rounding) -> Option<Dec> {
        if scale >= self.scale {
            return self.rescale_up(scale);
        }
        Some(Dec {
            mantissa: div_pow10_rounded(self.mantissa, u32::from(self.scale - scale), rule),
            scale,
        })
    }

    pub fn max(self, other: Dec) -> Dec {
        if other > self {
            other
        } else {
            self
        }
    }

    pub fn min(self, other: Dec) -> Dec {
        if other < self {
            other
        } else {
            self
        }
    }

    /// Converts to a fixed-point value; `None` if it needs more than `S` decimals or overflows.
    pub fn to_fixed<const S: u8>(self) -> Option<Fixed<S>> {
        let n = self.normalized();
        if n.scale > S {
            return None;
        }
        Some(Fixed(n.rescale_up(S)?.mantissa))
    }

    /// Converts to `rust_decimal` for display or interchange; `None` if it does not fit 96 bits.
    pub fn to_rust_decimal(self) -> Option<rust_decimal::Decimal> {
        let n = self.normalized();
        rust_decimal::Decimal::try_from_i128_with_scale(n.mantissa, u32::from(n.scale)).ok()
    }

    pub fn from_rust_decimal(value: rust_decimal::Decimal) -> Dec {
        Dec {
            mantissa: value.mantissa(),
            // rust_decimal's scale is at most 28.
            scale: value.scale() as u8,
        }
    }
}

impl PartialEq for Dec {
    fn eq(&self, other: &Dec) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Dec {}

impl PartialOrd for Dec {
    fn partial_cmp(&self, other: &Dec) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dec {
    fn cmp(&self, other: &Dec) -> Ordering {
        if let Some((a, b, _)) = self.aligned(*other) {
            return a.cmp(&b);
        }
        // Alignment overflowed: one side has a huge integer part. Compare integer parts first,
        // then the fractional parts scaled to 38 digits (which always fits below 10^38).
        let split = |d: Dec| {
            let n = d.normalized();
            let divisor = POW10[n.scale as usize];
            (n.mantissa / divisor, n.mantissa % divisor, n.scale)
        };
        let (ai, af, ascale) = split(*self);
        let (bi, bf, bscale) = split(*other);
        ai.cmp(&bi).then_with(|| {
            let af = af * POW10[(SCALE_MAX - ascale) as usize];
            let bf = bf * POW10[(SCALE_MAX - bscale) as usize];
            af.cmp(&bf)
        })
    }
}

impl std::hash::Hash for Dec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let n = self.normalized();
        n.mantissa.hash(state);
        n.scale.hash(state);
    }
}

/// Why a decimal string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecParseError {
    #[error("empty number")]
    Empty,
    #[error("not a plain decimal number (digits, one optional '.', optional leading '-')")]
    Syntax,
    #[error("more than 38 digits")]
    TooLong,
}

impl FromStr for Dec {
    type Err = DecParseError;

    /// Plain decimal notation only: `-12.340`. No exponent, no `+`, no spaces, no `.5` or `5.`.
    fn from_str(text: &str) -> Result<Dec, DecParseError> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(DecParseError::Empty);
        }
        let (negative, digits) = match bytes[0] {
            b'-' => (true, &bytes[1..]),
            _ => (false, bytes),
        };
        if digits.is_empty() {
            return Err(DecParseError::Syntax);
        }
        let mut mantissa: i128 = 0;
        let mut scale: u32 = 0;
        let mut seen_point = false;
        let mut digits_before_point = 0usize;
        let mut significant = 0u32;
        for (index, &byte) in digits.iter().enumerate() {
            match byte {
                b'0'..=b'9' => {
                    if seen_point {
                        scale += 1;
                    } else {
                        digits_before_point += 1;
                    }
                    if mantissa != 0 || byte != b'0' {
                        significant += 1;
                    }
                    if significant > 38 || scale > u32::from(SCALE_MAX) {
                        return Err(DecParseError::TooLong);
                    }
                    mantissa = mantissa * 10 + i128::from(byte - b'0');
                }
                b'.' if !seen_point && index > 0 && index + 1 < digits.len() => seen_point = true,
                _ => return Err(DecParseError::Syntax),
            }
        }
        if digits_before_point == 0 {
            return Err(DecParseError::Syntax);
        }
        Ok(Dec {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: scale as u8,
        })
    }
}

impl fmt::Display for Dec {
    /// Normalized plain notation: `12.5`, `-0.001`, `0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.normalized();
        write_scaled(f, n.mantissa, n.scale)
    }
}

/// Writes `mantissa / 10^scale` in plain notation, the fraction's trailing zeros dropped. The
/// digits are made in a stack buffer, least significant first, with 64-bit arithmetic while the
/// rest fits (dividing a `u128` is a library call, and formatting one through `fmt` divides by
/// 10^19 chunks): the output JSON and the service's replies write several amounts each.
fn write_scaled(f: &mut impl fmt::Write, mantissa: i128, scale: u8) -> fmt::Result {
    // Most amounts a reply or an output writes are zero or fit 64 bits.
    if mantissa == 0 {
        return f.write_str("0");
    }
    if let (Ok(abs), true) = (u64::try_from(mantissa.unsigned_abs()), scale <= 19) {
        return write_scaled_u64(f, mantissa < 0, abs, scale);
    }
    // At most 39 digits, or a scale of 38 and a leading "0"; a point and a sign.
    let mut buf = [0u8; 48];
    let mut at = buf.len();
    let mut rest = mantissa.unsigned_abs();
    fn digit(rest: &mut u128) -> u8 {
        match u64::try_from(*rest) {
            Ok(small) => {
                *rest = u128::from(small / 10);
                (small % 10) as u8
            }
            Err(_) => {
                let d = (*rest % 10) as u8;
                *rest /= 10;
                d
            }
        }
    }
    let mut fraction = false;
    for _ in 0..scale {
        let d = digit(&mut rest);
        if d == 0 && !fraction {
            continue;
        }
        fraction = true;
        at -= 1;
        buf[at] = b'0' + d;
    }
    if fraction {
        at -= 1;
        buf[at] = b'.';
    }
    loop {
        at -= 1;
        buf[at] = b'0' + digit(&mut rest);
        if rest == 0 {
            break;
        }
    }
    if mantissa < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    // Only ASCII digits, '.' and '-' were written.
    f.write_str(std::str::from_utf8(&buf[at..]).map_err(|_| fmt::Error)?)
}

/// [`write_scaled`] of a non-zero mantissa whose magnitude fits 64 bits, with a scale of at most
/// 19: the fraction's trailing zeros are dropped first, so each digit is written once.
fn write_scaled_u64(f: &mut impl fmt::Write, negative: bool, abs: u64, scale: u8) -> fmt::Result {
    // At most 20 digits, or a scale of 19 and a leading "0"; a point and a sign.
    let mut buf = [0u8; 24];
    let mut at = buf.len();
    let (mut rest, mut fraction) = (abs, scale);
    while fraction > 0 && rest % 10 == 0 {
        rest /= 10;
        fraction -= 1;
    }
    if fraction > 0 {
        for _ in 0..fraction {
            at -= 1;
            buf[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        at -= 1;
        buf[at] = b'.';
    }
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        buf[at] = b'-';
    }
    // Only ASCII digits, '.' and '-' were written.
    f.write_str(std::str::from_utf8(&buf[at..]).map_err(|_| fmt::Error)?)
}

impl Dec {
    /// Appends the text [`Display`](fmt::Display) writes, without the formatting machinery
    /// (replies and outputs write many amounts each).
    pub fn push_to(&self, out: &mut String) {
        let n = self.normalized();
        let _ = write_scaled(out, n.mantissa, n.scale);
    }
}

impl Serialize for Dec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Dec, D::Error> {
        deserializer.deserialize_any(DecVisitor)
    }
}

/// Accepts a decimal string, a JSON integer, or (with serde_json's `arbitrary_precision`) a JSON
/// number in plain notation. Floats are refused: they cannot be converted exactly.
struct DecVisitor;

const ARBITRARY_PRECISION_TOKEN: &str = "$serde_json::private::Number";

impl<'de> serde::de::Visitor<'de> for DecVisitor {
    type Value = Dec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal number as a string or an integer")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Dec, E> {
        value.parse().map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Dec, E> {
        Ok(Dec::from_int(i128::from(value)))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Dec, E> {
        Ok(Dec::from_int(i128::from(value)))
    }

    fn visit_i128<E: serde::de::Error>(self, value: i128) -> Result<Dec, E> {
        Ok(Dec::from_int(value))
    }

    fn visit_f64<E: serde::de::Error>(self, _value: f64) -> Result<Dec, E> {
        Err(E::custom(
            "a fractional number must be written as a string, e.g. \"1.5\"",
        ))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Dec, A::Error> {
        let key: Option<String> = map.next_key()?;
        if key.as_deref() != Some(ARBITRARY_PRECISION_TOKEN) {
            return Err(serde::de::Error::custom("expected a number"));
        }
        let text: String = map.next_value()?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A fixed-point decimal: `self.0 / 10^S`. Hot-path money lives in these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fixed<const S: u8>(pub i128);

/// Credits of any credit type, in units of 10^-9 credit.
pub type Credits = Fixed<9>;
/// Money per credit (cost basis, overage price, top-up price) or per period, at 10^-9.
pub type Price = Fixed<9>;
/// A metered quantity, at 10^-9 of the meter's unit.
pub type Quantity = Fixed<9>;
/// Money from credits × price: exact at 10^-18, never rounded inside the engine.
pub type Revenue = Fixed<18>;

impl<const S: u8> Fixed<S> {
    pub const ZERO: Fixed<S> = Fixed(0);
    pub const SCALE: u8 = S;

    pub fn to_dec(self) -> Dec {
        Dec {
            mantissa: self.0,
            scale: S,
        }
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Fixed)
    }

    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Fixed)
    }

    pub fn min(self, other: Self) -> Self {
        Fixed(self.0.min(other.0))
    }

    pub fn max(self, other: Self) -> Self {
        Fixed(self.0.max(other.0))
    }

    pub fn abs(self) -> Self {
        Fixed(self.0.abs())
    }
}

impl Credits {
    /// Credits × price per credit, exact at 18 decimals. `None` on overflow.
    pub fn times_price(self, price: Price) -> Option<Revenue> {
        self.0.checked_mul(price.0).map(Fixed)
    }
}

impl Revenue {
    /// Rounds exact revenue to a currency's scale with the named rule.
    pub fn round_money(self, scale: u8, rule: Rounding) -> Dec {
        // Scales are at most 18 here, so rounding cannot overflow.
        self.to_dec().round(scale, rule).unwrap_or(Dec::ZERO)
    }
}

// Arithmetic that cannot overflow in practice is still checked: engine limits keep every
// amount below 10^20 credits (10^29 units), far under i128's 1.7 × 10^38. Overflow here means
// an engine limit is broken, which is a programmer error, so it panics loudly.
impl<const S: u8> std::ops::Add for Fixed<S> {
    type Output = Fixed<S>;
    fn add(self, other: Self) -> Self {
        Fixed(
            self.0
                .checked_add(other.0)
                .expect("fixed-point add overflow: an engine amount limit is broken"),
        )
    }
}

impl<const S: u8> std::ops::Sub for Fixed<S> {
    type Output = Fixed<S>;
    fn sub(self, other: Self) -> Self {
        Fixed(
            self.0
                .checked_sub(other.0)
                .expect("fixed-point sub overflow: an engine amount limit is broken"),
        )
    }
}

impl<const S: u8> std::ops::AddAssign for Fixed<S> {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}

impl<const S: u8> std::ops::SubAssign for Fixed<S> {
    fn sub_assign(&mut self, other: Self) {
        *self = *self - other;
    }
}

impl<const S: u8> std::ops::Neg for Fixed<S> {
    type Output = Fixed<S>;
    fn neg(self) -> Self {
        Fixed(-self.0)
    }
}

impl<const S: u8> fmt::Display for Fixed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_scaled(f, self.0, S)
    }
}

impl<const S: u8> Fixed<S> {
    /// Appends the text [`Display`](fmt::Display) writes, without the formatting machinery
    /// (replies and outputs write many amounts each).
    pub fn push_to(self, out: &mut String) {
        let _ = write_scaled(out, self.0, S);
    }
}

impl<const S: u8> FromStr for Fixed<S> {
    type Err = FixedParseError;
    fn from_str(text: &str) -> Result<Self, FixedParseError> {
        let dec: Dec = text.parse().map_err(FixedParseError::Syntax)?;
        dec.to_fixed().ok_or(FixedParseError::Precision(S))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FixedParseError {
    #[error("{0}")]
    Syntax(DecParseError),
    #[error("more than {0} decimal places, or too large")]
    Precision(u8),
}

impl<const S: u8> Serialize for Fixed<S> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_i128(self.0)
        }
    }
}

impl<'de, const S: u8> Deserialize<'de> for Fixed<S> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let dec = Dec::deserialize(deserializer)?;
            dec.to_fixed().ok_or_else(|| {
                serde::de::Error::custom(format!("more than {S} decimal places, or too large"))
            })
        } else {
            Ok(Fixed(i128::deserialize(deserializer)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Dec {
        text.parse().unwrap()
    }

    /// The digit loop against the formatting it replaced (`fmt` of the integer and the
    /// fraction), over both sides of 64 bits, every scale and the extremes.
    #[test]
    fn write_scaled_matches_fmt() {
        fn plain(mantissa: i128, scale: u8) -> String {
            let mut f = String::new();
            if mantissa < 0 {
                f.push('-');
            }
            let abs = mantissa.unsigned_abs();
            if scale == 0 {
                return format!("{f}{abs}");
            }
            let divisor = POW10[scale as usize].unsigned_abs();
            let int = abs / divisor;
            let mut frac = abs % divisor;
            let mut width = scale as usize;
            while width > 0 && frac % 10 == 0 {
                frac /= 10;
                width -= 1;
            }
            if width == 0 {
                format!("{f}{int}")
            } else {
                format!("{f}{int}.{frac:0width$}")
            }
        }
        let mut rng = crate::sample::Rng::new(11);
        let mut cases: Vec<i128> = vec![
            0,
            1,
            -1,
            10,
            -100,
            5,
            -5,
            i128::from(u64::MAX),
            i128::from(u64::MAX) + 1,
            -i128::from(u64::MAX) - 1,
            i128::MAX,
            i128::MIN + 1,
            i128::MIN,
            123_456_789_000,
        ];
        for _ in 0..2000 {
            let bits = rng.below(127) as u32;
            let value = (i128::from(rng.next_u64()) << 64 | i128::from(rng.next_u64())) >> bits;
            cases.push(value);
            cases.push(value / 1000 * 1000);
        }
        for &mantissa in &cases {
            for scale in 0..=SCALE_MAX {
                let mut ours = String::new();
                write_scaled(&mut ours, mantissa, scale).unwrap();
                assert_eq!(ours, plain(mantissa, scale), "{mantissa} scale {scale}");
            }
        }
    }

    #[test]
    fn parse_and_display_round_trip() {
        for (input, shown) in [
            ("0", "0"),
            ("-0", "0"),
            ("1.50", "1.5"),
            ("-12.340", "-12.34"),
            ("0.000000001", "0.000000001"),
            ("123456789012345678", "123456789012345678"),
        ] {
            assert_eq!(d(input).to_string(), shown, "{input}");
        }
    }

    #[test]
    fn parse_refuses_non_plain_notation() {
        for bad in [
            "", "-", "1e3", "+1", ".5", "5.", "1.2.3", " 1", "1 ", "0x10", "NaN",
        ] {
            assert!(bad.parse::<Dec>().is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            "1".repeat(39).parse::<Dec>(),
            Err(DecParseError::TooLong),
            "39 digits"
        );
    }

    #[test]
    fn equality_is_by_value() {
        assert_eq!(d("1.50"), d("1.5"));
        assert!(d("0.1") < d("0.10000000001"));
        assert!(d("-2") < d("-1.999"));
        assert_eq!(d("2.5").digits(), 2);
        assert_eq!(d("1000").digits(), 4);
    }

    /// Golden table: every rule at and around midpoints, both signs.
    #[test]
    fn rounding_golden_table() {
        let table: &[(&str, u8, [&str; 4])] = &[
            // value, scale, [half_even, half_up, up, down]
            ("2.5", 0, ["2", "3", "3", "2"]),
            ("3.5", 0, ["4", "4", "4", "3"]),
            ("-2.5", 0, ["-2", "-3", "-3", "-2"]),
            ("-3.5", 0, ["-4", "-4", "-4", "-3"]),
            ("2.4999", 0, ["2", "2", "3", "2"]),
            ("2.5001", 0, ["3", "3", "3", "2"]),
            ("0.125", 2, ["0.12", "0.13", "0.13", "0.12"]),
            ("0.135", 2, ["0.14", "0.14", "0.14", "0.13"]),
            ("-0.125", 2, ["-0.12", "-0.13", "-0.13", "-0.12"]),
            ("0.001", 2, ["0", "0", "0.01", "0"]),
            ("-0.001", 2, ["0", "0", "-0.01", "0"]),
            ("7", 2, ["7", "7", "7", "7"]),
            ("0.0000000005", 9, ["0", "0.000000001", "0.000000001", "0"]),
            (
                "0.0000000015",
                9,
                ["0.000000002", "0.000000002", "0.000000002", "0.000000001"],
            ),
        ];
        for (value, scale, expected) in table {
            for (rule, want) in Rounding::ALL.iter().zip(expected) {
                let got = d(value).round(*scale, *rule).unwrap();
                assert_eq!(got, d(want), "{value} to {scale} dp, {}", rule.name());
            }
        }
    }

    #[test]
    fn multiplication_is_exact_or_none() {
        assert_eq!(d("0.1").checked_mul(d("0.2")).unwrap(), d("0.02"));
        assert_eq!(
            d("123456789012345678").checked_mul(d("0.000001")).unwrap(),
            d("123456789012.345678")
        );
        let huge = d(&"9".repeat(20));
        assert!(huge.checked_mul(huge).is_none());
    }

    #[test]
    fn ceil_to_multiple_bills_started_blocks() {
        assert_eq!(d("61").ceil_to_multiple(d("60")).unwrap(), d("120"));
        assert_eq!(d("60").ceil_to_multiple(d("60")).unwrap(), d("60"));
        assert_eq!(d("0").ceil_to_multiple(d("60")).unwrap(), d("0"));
        assert_eq!(d("0.26").ceil_to_multiple(d("0.25")).unwrap(), d("0.5"));
        assert!(d("1").ceil_to_multiple(d("0")).is_none());
    }

    #[test]
    fn fixed_conversions_refuse_lost_precision() {
        assert_eq!(
            d("1.5").to_fixed::<9>(),
            Some(Credits::from_str("1.5").unwrap())
        );
        assert_eq!(d("0.0000000001").to_fixed::<9>(), None);
        assert_eq!(Credits::from_str("2.000000000").unwrap().to_string(), "2");
        let revenue = Credits::from_str("3")
            .unwrap()
            .times_price("0.333".parse().unwrap());
        assert_eq!(revenue.unwrap().to_string(), "0.999");
    }

    #[test]
    fn json_reads_strings_and_numbers_exactly() {
        assert_eq!(serde_json::from_str::<Dec>("\"1.25\"").unwrap(), d("1.25"));
        assert_eq!(serde_json::from_str::<Dec>("7").unwrap(), d("7"));
        // With arbitrary_precision the number's text reaches us, so no float is involved.
        assert_eq!(serde_json::from_str::<Dec>("0.1").unwrap(), d("0.1"));
        assert!(serde_json::from_str::<Dec>("1e3").is_err());
        let fixed: Credits = serde_json::from_str("\"0.5\"").unwrap();
        assert_eq!(serde_json::to_string(&fixed).unwrap(), "\"0.5\"");
    }

    #[test]
    fn ordering_survives_alignment_overflow() {
        let big = d("12345678901234567890123456789012345678");
        let small = d("0.00000000000000000000000000000000000001");
        assert!(small < big);
        assert!(big.checked_neg().unwrap() < small);
    }

    /// The 64-bit fast path strips exactly what the plain i128 loop strips.
    #[test]
    fn normalized_matches_the_plain_loop() {
        fn plain(value: Dec) -> (i128, u8) {
            let (mut mantissa, mut scale) = (value.mantissa, value.scale);
            while scale > 0 && mantissa % 10 == 0 {
                mantissa /= 10;
                scale -= 1;
            }
            if mantissa == 0 {
                scale = 0;
            }
            (mantissa, scale)
        }
        let mut rng = crate::sample::Rng::new(3);
        let mut cases: Vec<i128> = vec![
            0,
            1,
            -1,
            10,
            -10,
            i128::from(i64::MAX),
            i128::from(i64::MIN),
            i128::from(i64::MIN) + 8,
            i128::from(i64::MAX) + 3,
            i128::MAX,
            i128::MIN,
            3_000_000_000,
            -120_000_000_000_000_000,
        ];
        for _ in 0..20_000 {
            let digits = rng.below(38) as u32;
            let trailing = rng.below(12) as u32;
            let base = (rng.next_u64() as i128) % 10i128.pow(digits.min(18));
            let value = base.saturating_mul(10i128.pow(trailing));
            cases.push(if rng.below(2) == 0 { value } else { -value });
        }
        for mantissa in cases {
            for scale in [0u8, 1, 5, 9, 18, 28] {
                let value = Dec { mantissa, scale };
                let n = value.normalized();
                assert_eq!(
                    (n.mantissa, n.scale),
                    plain(value),
                    "{mantissa} scale {scale}"
                );
            }
        }
    }
}
