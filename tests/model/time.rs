//! Event time for the model: instants are `i64` milliseconds since the Unix epoch (UTC),
//! durations are `i64` milliseconds. Calendar work goes through `jiff`, never the wall clock.

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::catalog::Period;

/// 1970-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, the accepted range.
pub const TS_MIN: i64 = 0;
pub const TS_MAX: i64 = 253_402_300_799_999;

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

/// RFC 3339 with an offset, `T` separator, truncated toward the past to whole milliseconds,
/// within 1970..=9999. `None` when any of that fails.
pub fn parse_ts(text: &str) -> Option<i64> {
    if text.len() < 20 || text.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let ts: Timestamp = text.parse().ok()?;
    let ms = ts.as_nanosecond().div_euclid(1_000_000);
    let ms = i64::try_from(ms).ok()?;
    (TS_MIN..=TS_MAX).contains(&ms).then_some(ms)
}

/// `2026-11-24T10:00:00.000Z`: UTC, exactly three fractional digits.
pub fn format_ts(ms: i64) -> String {
    let ts = Timestamp::from_millisecond(ms).expect("model instants are in range");
    let z = ts.to_zoned_datetime(TimeZone::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        z.year(),
        z.month(),
        z.day(),
        z.hour(),
        z.minute(),
        z.second(),
        z.millisecond()
    )
}

/// `"0"`, `"250ms"`, `"90s"`, `"1h30m"`, `"35d"`, `"2w"`: whole numbers with units.
pub fn parse_span(text: &str) -> Option<i64> {
    if text == "0" {
        return Some(0);
    }
    if text.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let number: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let factor = match &rest[..letters] {
            "ms" => 1,
            "s" => 1_000,
            "m" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            "w" => 7 * DAY,
            _ => return None,
        };
        rest = &rest[letters..];
        total = total.checked_add(number.checked_mul(factor)?)?;
    }
    Some(total)
}

/// The canonical text of a duration: the largest unit that divides it exactly.
pub fn format_span(ms: i64) -> String {
    if ms == 0 {
        return "0".to_string();
    }
    for (unit, factor) in [("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1_000)] {
        if ms % factor == 0 {
            return format!("{}{unit}", ms / factor);
        }
    }
    format!("{ms}ms")
}

fn midnight_utc(date: jiff::civil::Date) -> i64 {
    date.to_zoned_datetime(TimeZone::UTC)
        .expect("UTC midnight always exists")
        .timestamp()
        .as_millisecond()
}

/// The period `[start, end)` of a plan that contains `at` (UTC calendar).
pub fn period_containing(period: Period, at: i64) -> (i64, i64) {
    let date = Timestamp::from_millisecond(at)
        .expect("model instants are in range")
        .to_zoned_datetime(TimeZone::UTC)
        .date();
    match period {
        Period::Day => {
            let start = midnight_utc(date);
            (start, start + DAY)
        }
        Period::Month { anchor_day } => {
            let mut anchor = jiff::civil::date(date.year(), date.month(), anchor_day as i8);
            if midnight_utc(anchor) > at {
                anchor = anchor
                    .checked_sub(jiff::Span::new().months(1))
                    .expect("date in range");
            }
            let next = anchor
                .checked_add(jiff::Span::new().months(1))
                .expect("date in range");
            (midnight_utc(anchor), midnight_utc(next))
        }
    }
}
