//! Event time: instants, durations, and the calendar rules that periods and pricing windows use.
//!
//! Owns: [`Instant`] (milliseconds since the Unix epoch, UTC), [`Span`] (a duration in
//! milliseconds), their text forms, and calendar helpers over named time zones.
//!
//! Must never: read the wall clock. Time is data: it comes from the log (`ts` fields and
//! `tick` commands). The time-zone database is the one bundled into the binary by `jiff`
//! (feature `tzdb-bundle-always`), so a replay on another machine sees the same rules.
//!
//! Invariants: instants are whole milliseconds; a finer `ts` is truncated toward the past, the
//! same way on every replay.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A point in event time: milliseconds since 1970-01-01T00:00:00Z.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Instant(pub i64);

/// A length of event time in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub i64);

/// Earliest instant accepted anywhere: 1970-01-01.
pub const INSTANT_MIN: Instant = Instant(0);
/// Latest instant accepted anywhere: 9999-12-31T23:59:59.999Z.
pub const INSTANT_MAX: Instant = Instant(253_402_300_799_999);

impl Instant {
    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, span: Span) -> Instant {
        Instant(self.0.saturating_add(span.0))
    }

    pub fn saturating_sub(self, span: Span) -> Instant {
        Instant(self.0.saturating_sub(span.0))
    }

    fn to_jiff(self) -> jiff::Timestamp {
        // Every Instant the engine builds lies within INSTANT_MIN..=INSTANT_MAX, which jiff covers.
        jiff::Timestamp::from_millisecond(self.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    fn from_jiff(ts: jiff::Timestamp) -> Instant {
        Instant(ts.as_millisecond())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    #[error("not an RFC 3339 timestamp with an offset (e.g. 2026-11-24T10:00:00.123Z)")]
    Syntax,
    #[error("outside 1970-01-01 .. 9999-12-31")]
    Range,
}

impl FromStr for Instant {
    type Err = TimeParseError;
    fn from_str(text: &str) -> Result<Instant, TimeParseError> {
        // RFC 3339 requires a date, a time and an offset; jiff's Timestamp parser requires the
        // offset too, so "2026-11-24" or a naive local time is refused.
        if text.len() < 20 || text.as_bytes().get(10) != Some(&b'T') {
            return Err(TimeParseError::Syntax);
        }
        if let Some(instant) = parse_utc_millis(text.as_bytes()) {
            return Ok(instant);
        }
        parse_general(text)
    }
}

/// Any RFC 3339 timestamp with an offset, through jiff.
fn parse_general(text: &str) -> Result<Instant, TimeParseError> {
    let ts: jiff::Timestamp = text.parse().map_err(|_| TimeParseError::Syntax)?;
    let instant = Instant(ts.as_millisecond());
    if instant < INSTANT_MIN || instant > INSTANT_MAX {
        return Err(TimeParseError::Range);
    }
    Ok(instant)
}

/// The common form, `YYYY-MM-DDTHH:MM:SS[.f{1,3}]Z` in 1970..=9998, read directly; `None` for
/// anything else (other offsets, finer fractions, leap seconds, invalid dates), which goes to
/// jiff's parser. Gives exactly what jiff would: a test compares the two.
fn parse_utc_millis(text: &[u8]) -> Option<Instant> {
    fn digits(text: &[u8], from: usize, count: usize) -> Option<i64> {
        let mut value = 0i64;
        for &byte in text.get(from..from + count)? {
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(byte - b'0');
        }
        Some(value)
    }
    let millis = match text.len() {
        20 => 0,
        22..=24 if text[19] == b'.' => {
            let count = text.len() - 21;
            digits(text, 20, count)? * [100, 10, 1][count - 1]
        }
        _ => return None,
    };
    if text[4] != b'-'
        || text[7] != b'-'
        || text[13] != b':'
        || text[16] != b':'
        || text[text.len() - 1] != b'Z'
    {
        return None;
    }
    let (year, month, day) = (
        digits(text, 0, 4)?,
        digits(text, 5, 2)?,
        digits(text, 8, 2)?,
    );
    let (hour, minute, second) = (
        digits(text, 11, 2)?,
        digits(text, 14, 2)?,
        digits(text, 17, 2)?,
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    // Year 9999 goes to jiff, whose range ends within it (it refuses 9999-12-31).
    if !(1970..9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days from 1970-01-01 to the date (the days-from-civil algorithm, proleptic Gregorian).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(Instant(
        ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis,
    ))
}

impl fmt::Display for Instant {
    /// RFC 3339 in UTC with exactly three fractional digits: `2026-11-24T10:00:00.123Z`.
    /// Within `INSTANT_MIN..=INSTANT_MAX` (every instant the engine builds) written directly
    /// (replies and outputs print several per message); jiff's text otherwise, which it equals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self < INSTANT_MIN || *self > INSTANT_MAX {
            return write!(f, "{:.3}", self.to_jiff());
        }
        f.write_str(rfc3339_millis(self.0, &mut [0u8; 24]))
    }
}

impl Instant {
    /// Appends the text [`Display`](fmt::Display) writes, without the formatting machinery
    /// (replies and outputs write several instants each).
    pub fn push_to(self, out: &mut String) {
        if self < INSTANT_MIN || self > INSTANT_MAX {
            let _ = fmt::Write::write_fmt(out, format_args!("{self}"));
            return;
        }
        out.push_str(rfc3339_millis(self.0, &mut [0u8; 24]));
    }
}

/// `millis` (within `0..=INSTANT_MAX`) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, written into `buf`.
fn rfc3339_millis(millis: i64, buf: &mut [u8; 24]) -> &str {
    const DAY: i64 = 86_400_000;
    let (days, of_day) = (millis / DAY, millis % DAY);
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant, "chrono-Compatible
    // Low-Level Date Algorithms", civil_from_days), for non-negative days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute) = (of_day / 3_600_000, of_day / 60_000 % 60);
    let (second, milli) = (of_day / 1000 % 60, of_day % 1000);
    let mut put = |at: usize, value: i64, digits: usize| {
        let mut value = value;
        for i in (at..at + digits).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, hour, 2);
    put(14, minute, 2);
    put(17, second, 2);
    put(20, milli, 3);
    for (at, byte) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        buf[at] = byte;
    }
    // Only ASCII digits and separators were written.
    std::str::from_utf8(buf).unwrap_or_default()
}

impl Span {
    pub const ZERO: Span = Span(0);

    pub fn from_secs(secs: i64) -> Span {
        Span(secs * 1000)
    }

    pub fn millis(self) -> i64 {
        self.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a duration: write whole numbers with units ms, s, m, h, d or w, e.g. \"90s\", \"1h30m\", \"35d\"")]
pub struct SpanParseError;

impl FromStr for Span {
    type Err = SpanParseError;
    /// `"0"`, `"250ms"`, `"90s"`, `"1h30m"`, `"35d"`, `"2w"`. A day is 24 hours.
    fn from_str(text: &str) -> Result<Span, SpanParseError> {
        if text == "0" {
            return Ok(Span::ZERO);
        }
        let bytes = text.as_bytes();
        let mut index = 0;
        let mut total: i64 = 0;
        if bytes.is_empty() {
            return Err(SpanParseError);
        }
        while index < bytes.len() {
            let start = index;
            while index < bytes.len() && bytes[index].is_ascii_digit() {
                index += 1;
            }
            if start == index || index - start > 12 {
                return Err(SpanParseError);
            }
            let number: i64 = text[start..index].parse().map_err(|_| SpanParseError)?;
            let unit_start = index;
            while index < bytes.len() && bytes[index].is_ascii_alphabetic() {
                index += 1;
            }
            let factor = match &text[unit_start..index] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 604_800_000,
                _ => return Err(SpanParseError),
            };
            total = number
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .ok_or(SpanParseError)?;
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    /// The largest units that divide exactly: `35d`, `90s`, `1500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return f.write_str("0");
        }
        for (unit, factor) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms % factor == 0 {
                return write!(f, "{}{unit}", ms / factor);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(Span(i64::deserialize(deserializer)?))
        }
    }
}

/// A named IANA time zone from the bundled database.
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    tz: jiff::tz::TimeZone,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name == other.name
    }
}

impl Zone {
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".to_string(),
            tz: jiff::tz::TimeZone::UTC,
        }
    }

    /// `None` for a name the bundled database does not know.
    pub fn named(name: &str) -> Option<Zone> {
        let tz = jiff::tz::db().get(name).ok()?;
        Some(Zone {
            name: name.to_string(),
            tz,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Local weekday (0 = Monday … 6 = Sunday) and milliseconds since local midnight.
    pub fn weekday_and_time_of_day(&self, at: Instant) -> (u8, i64) {
        let zoned = at.to_jiff().to_zoned_datetime(self.tz.clone());
        let weekday = zoned.weekday().to_monday_zero_offset() as u8;
        let time = zoned.time();
        let ms = i64::from(time.hour()) * 3_600_000
            + i64::from(time.minute()) * 60_000
            + i64::from(time.second()) * 1_000
            + i64::from(time.millisecond());
        (weekday, ms)
    }

    /// The local midnight that starts `date`; for a date whose midnight does not exist (a DST
    /// gap at 00:00), jiff's compatible disambiguation takes the first valid instant after.
    fn start_of_day(&self, date: jiff::civil::Date) -> Instant {
        let zoned = date
            .to_zoned_datetime(self.tz.clone())
            .unwrap_or_else(|_| jiff::Timestamp::UNIX_EPOCH.to_zoned_datetime(self.tz.clone()));
        Instant::from_jiff(zoned.timestamp())
    }

    fn local_date(&self, at: Instant) -> jiff::civil::Date {
        at.to_jiff().to_zoned_datetime(self.tz.clone()).date()
    }
}

/// How a plan cuts time into billing periods.
#[derive(Clone, Debug, PartialEq)]
pub enum PeriodRule {
    /// Calendar months starting on `anchor_day` (1–28) at local midnight.
    Month { anchor_day: u8 },
    /// Weeks starting on `anchor_weekday` (0 = Monday) at local midnight.
    Week { anchor_weekday: u8 },
    /// Local calendar days.
    Day,
}

impl PeriodRule {
    /// The period containing `at`, as `[start, end)` in event time.
    pub fn period_containing(&self, zone: &Zone, at: Instant) -> (Instant, Instant) {
        let date = zone.local_date(at);
        let start_date = match *self {
            PeriodRule::Month { anchor_day } => {
                let anchor = jiff::civil::date(date.year(), date.month(), anchor_day as i8);
                let anchor = if zone.start_of_day(anchor) > at {
                    anchor
                        .checked_sub(jiff::Span::new().months(1))
                        .unwrap_or(anchor)
                } else {
                    anchor
                };
                // A DST gap can push a local midnight a little later; the period is still the
                // one whose start is not after `at`.
                anchor
            }
            PeriodRule::Week { anchor_weekday } => {
                let weekday = date.weekday().to_monday_zero_offset() as i64;
                let back = (weekday - i64::from(anchor_weekday)).rem_euclid(7);
                date.checked_sub(jiff::Span::new().days(back))
                    .unwrap_or(date)
            }
            PeriodRule::Day => date,
        };
        let start_date = if zone.start_of_day(start_date) > at {
            // Only possible for Week/Day when a DST shift moves midnight past `at`: step back.
            self.previous_start(start_date)
        } else {
            start_date
        };
        let end_date = self.next_start(start_date);
        (zone.start_of_day(start_date), zone.start_of_day(end_date))
    }

    /// The end of the period that starts at or contains `start`.
    pub fn period_end_after(&self, zone: &Zone, start: Instant) -> Instant {
        self.period_containing(zone, start).1
    }

    fn next_start(&self, start: jiff::civil::Date) -> jiff::civil::Date {
        let step = match self {
            PeriodRule::Month { .. } => jiff::Span::new().months(1),
            PeriodRule::Week { .. } => jiff::Span::new().days(7),
            PeriodRule::Day => jiff::Span::new().days(1),
        };
        start.checked_add(step).unwrap_or(start)
    }

    fn previous_start(&self, start: jiff::civil::Date) -> jiff::civil::Date {
        let step = match self {
            PeriodRule::Month { .. } => jiff::Span::new().months(1),
            PeriodRule::Week { .. } => jiff::Span::new().days(7),
            PeriodRule::Day => jiff::Span::new().days(1),
        };
        start.checked_sub(step).unwrap_or(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The direct text of an instant is jiff's, over the accepted range that jiff
        /// represents (it ends a day before `INSTANT_MAX`).
        #[test]
        fn instants_print_as_jiff_prints_them(
            millis in 0i64..=253_402_207_199_999i64
        ) {
            let instant = Instant(millis);
            proptest::prop_assert_eq!(instant.to_string(), format!("{:.3}", instant.to_jiff()));
        }
    }

    #[test]
    fn instants_at_the_edges_print_as_jiff_prints_them() {
        for millis in [
            0,
            1,
            999,
            86_399_999,
            86_400_000,
            951_782_400_000,     // 2000-02-29
            4_107_542_400_000,   // 2100-03-01
            253_402_207_199_999, // near the end of what jiff represents
            INSTANT_MAX.0 + 1,
            -1,
        ] {
            let instant = Instant(millis);
            assert_eq!(
                instant.to_string(),
                format!("{:.3}", instant.to_jiff()),
                "{millis}"
            );
        }
        // Past what jiff represents (it printed the Unix epoch there): the instant itself.
        assert_eq!(INSTANT_MAX.to_string(), "9999-12-31T23:59:59.999Z");
    }

    fn at(text: &str) -> Instant {
        text.parse().unwrap()
    }

    #[test]
    fn the_direct_reading_of_utc_timestamps_agrees_with_jiff() {
        let mut rng = crate::sample::Rng::new(3);
        let mut direct = 0;
        for _ in 0..200_000 {
            let year = match rng.below(10) {
                0 => 1960 + rng.below(20),
                1 => 9990 + rng.below(10),
                _ => 1970 + rng.below(140),
            };
            let fraction = match rng.below(5) {
                0 => String::new(),
                n => format!(".{:0width$}", rng.below(10_000), width = n as usize)
                    [..n as usize + 1]
                    .to_string(),
            };
            let offset = ["Z", "Z", "Z", "z", "+00:00", "-01:30"][rng.below(6) as usize];
            let text = format!(
                "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}{offset}",
                rng.below(14),
                rng.below(33),
                rng.below(25),
                rng.below(61),
                rng.below(61)
            );
            if let Some(instant) = parse_utc_millis(text.as_bytes()) {
                direct += 1;
                assert_eq!(parse_general(&text), Ok(instant), "{text}");
            }
            // Whichever way it is read, the public parser agrees with jiff.
            assert_eq!(text.parse::<Instant>(), parse_general(&text), "{text}");
        }
        assert!(direct > 50_000, "only {direct} read directly");
        for (text, millis) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T23:59:59.999Z", 951_868_799_999),
            ("9998-12-31T23:59:59.999Z", 253_370_764_799_999),
            ("2026-11-24T10:00:00.1Z", 1_795_514_400_100),
        ] {
            assert_eq!(
                parse_utc_millis(text.as_bytes()),
                Some(Instant(millis)),
                "{text}"
            );
        }
        for text in [
            "2026-02-29T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:00:60Z",
        ] {
            assert_eq!(parse_utc_millis(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn instants_parse_strictly_and_print_canonically() {
        assert_eq!(at("1970-01-01T00:00:00Z"), Instant(0));
        assert_eq!(
            at("2026-11-24T10:00:00.123Z").to_string(),
            "2026-11-24T10:00:00.123Z"
        );
        assert_eq!(at("2026-11-24T11:00:00+01:00"), at("2026-11-24T10:00:00Z"));
        // Sub-millisecond digits are truncated toward the past.
        assert_eq!(
            at("2026-11-24T10:00:00.1239Z"),
            at("2026-11-24T10:00:00.123Z")
        );
        for bad in [
            "2026-11-24",
            "2026-11-24T10:00:00",
            "yesterday",
            "1969-12-31T23:59:59Z",
            "",
        ] {
            assert!(bad.parse::<Instant>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spans_parse_and_print() {
        assert_eq!("90s".parse::<Span>().unwrap(), Span(90_000));
        assert_eq!("1h30m".parse::<Span>().unwrap(), Span(5_400_000));
        assert_eq!("35d".parse::<Span>().unwrap(), Span(35 * 86_400_000));
        assert_eq!("250ms".parse::<Span>().unwrap(), Span(250));
        assert_eq!(Span(35 * 86_400_000).to_string(), "35d");
        assert_eq!(Span(1_500).to_string(), "1500ms");
        for bad in ["", "5", "h", "5x", "-5s", "1.5h", "99999999999999s"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn monthly_periods_follow_the_anchor_in_the_zone() {
        let utc = Zone::utc();
        let rule = PeriodRule::Month { anchor_day: 1 };
        assert_eq!(
            rule.period_containing(&utc, at("2026-11-24T10:00:00Z")),
            (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))
        );
        let rule = PeriodRule::Month { anchor_day: 15 };
        assert_eq!(
            rule.period_containing(&utc, at("2026-11-10T00:00:00Z")),
            (at("2026-10-15T00:00:00Z"), at("2026-11-15T00:00:00Z"))
        );
        // The boundary instant belongs to the new period.
        assert_eq!(
            rule.period_containing(&utc, at("2026-11-15T00:00:00Z")).0,
            at("2026-11-15T00:00:00Z")
        );
        let paris = Zone::named("Europe/Paris").unwrap();
        let rule = PeriodRule::Month { anchor_day: 1 };
        assert_eq!(
            rule.period_containing(&paris, at("2026-11-30T23:30:00Z")),
            (at("2026-11-30T23:00:00Z"), at("2026-12-31T23:00:00Z"))
        );
    }

    #[test]
    fn weekly_and_daily_periods() {
        let utc = Zone::utc();
        // 2026-11-24 is a Tuesday.
        let (start, end) = PeriodRule::Week { anchor_weekday: 0 }
            .period_containing(&utc, at("2026-11-24T10:00:00Z"));
        assert_eq!(
            (start, end),
            (at("2026-11-23T00:00:00Z"), at("2026-11-30T00:00:00Z"))
        );
        let (start, end) = PeriodRule::Day.period_containing(&utc, at("2026-11-24T10:00:00Z"));
        assert_eq!(
            (start, end),
            (at("2026-11-24T00:00:00Z"), at("2026-11-25T00:00:00Z"))
        );
    }

    #[test]
    fn weekday_and_time_of_day_in_zone() {
        let tokyo = Zone::named("Asia/Tokyo").unwrap();
        // 2026-11-24T20:30Z is Wednesday 05:30 in Tokyo.
        assert_eq!(
            tokyo.weekday_and_time_of_day(at("2026-11-24T20:30:00Z")),
            (2, 5 * 3_600_000 + 30 * 60_000)
        );
        assert!(Zone::named("Mars/Olympus").is_none());
    }
}
