//! Burn rate and runway per credit type (SEMANTICS §5.6): the credits consumed in the window of
//! event time of the account's last consumption and in the window before it, and from them the
//! instant the balance runs out at that rate.
//!
//! Event time only: windows are `[k·W, (k+1)·W)` of the Unix epoch in milliseconds, `W` the
//! catalog's `rules.runway_window`, and consumption is counted at the account's clock (which
//! only moves forward), so the figures are a function of the log like every other state.

use super::*;
use crate::time::{Span, INSTANT_MAX};

/// What a burn rate says at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runway {
    /// Credits consumed in the trailing window `[t − W, t]`, estimated from the two counted
    /// windows (the earlier one weighted by its overlap), floored to 10^-9: the burn rate per `W`.
    pub burned: Credits,
    /// When the remaining credits are gone at that rate; `t` itself when none remain; `None`
    /// when nothing burns (or the instant is past 9999).
    pub runs_out_at: Option<Instant>,
}

/// The burn counters live in the `TypeState` as three fields (20 bytes of its 128, the layout
/// the memory budget counts on): `burn_window`, the index `k` of the window `[k·W, (k+1)·W)`
/// that `burn_current` counts (0 with nothing counted), and `burn_previous`, the window
/// `k − 1`. Counts are in units of 10^-9 credit and saturate at `u64::MAX`
/// (18,446,744,073.709551615 credits in one window).
impl TypeState {
    /// Counts `credits` consumed at `at` (the account clock).
    pub fn record_burn(&mut self, window: Span, at: Instant, credits: Credits) {
        if !credits.is_positive() {
            return;
        }
        let units = u64::try_from(credits.0).unwrap_or(u64::MAX);
        let index = u32::try_from(at.0.div_euclid(window.0.max(1))).unwrap_or(u32::MAX);
        if index <= self.burn_window {
            self.burn_current = self.burn_current.saturating_add(units);
        } else if index == self.burn_window + 1 {
            self.burn_previous = self.burn_current;
            self.burn_current = units;
            self.burn_window = index;
        } else {
            self.burn_previous = 0;
            self.burn_current = units;
            self.burn_window = index;
        }
    }

    /// The burn rate and runway at `at` (≥ the last consumption) with `remaining` credits.
    pub fn runway(&self, window: Span, at: Instant, remaining: Credits) -> Runway {
        let w = i128::from(window.0.max(1));
        let start = i128::from(self.burn_window) * w;
        let t = i128::from(at.0).max(start);
        let (current, previous) = (
            i128::from(self.burn_current),
            i128::from(self.burn_previous),
        );
        // Credits × ms over the trailing window, then per W.
        let weighted = if t < start + w {
            current * w + previous * (start + w - t)
        } else if t < start + 2 * w {
            current * (start + 2 * w - t)
        } else {
            0
        };
        let burned = weighted / w;
        let runs_out_at = if !remaining.is_positive() {
            Some(Instant(at.0))
        } else if burned == 0 {
            None
        } else {
            // remaining ≤ 10^24 units in practice and W ≤ 31 d: no overflow; if it ever
            // did, there is no figure rather than a wrong one.
            remaining
                .0
                .checked_mul(w)
                .map(|scaled| scaled / burned)
                .and_then(|ms| i64::try_from(ms).ok())
                .and_then(|ms| at.0.checked_add(ms))
                .filter(|&end| end <= INSTANT_MAX.0)
                .map(Instant)
        };
        Runway {
            burned: Fixed(burned),
            runs_out_at,
        }
    }
}

impl Account {
    /// The runway of one of its credit types at the account's clock: what remains is the
    /// balance less what holds keep (§5.6).
    pub fn runway(&self, catalog: &Catalog, state: &TypeState) -> Runway {
        let remaining = self.balance(state.credit_type) - self.held(state.credit_type);
        state.runway(catalog.rules.runway_window, self.clock, remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Span = Span(3_600_000);

    fn credits(text: &str) -> Credits {
        text.parse().unwrap()
    }

    #[test]
    fn the_rate_is_the_trailing_window_and_the_runway_follows() {
        let mut burn = TypeState::new(CreditTypeId(0));
        let t0 = Instant(100 * HOUR.0); // the start of window 100
        burn.record_burn(HOUR, t0, credits("6"));
        burn.record_burn(HOUR, Instant(t0.0 + 1_800_000), credits("4"));
        // Half-way through window 100: 10 burned in it, nothing before.
        let at = Instant(t0.0 + 1_800_000);
        let r = burn.runway(HOUR, at, credits("20"));
        assert_eq!(r.burned, credits("10"));
        assert_eq!(r.runs_out_at, Some(Instant(at.0 + 2 * HOUR.0)));
        // A quarter into window 101 with 2 more: 2 + 10 × 3/4 = 9.5 per hour.
        burn.record_burn(HOUR, Instant(t0.0 + HOUR.0 + 900_000), credits("2"));
        let at = Instant(t0.0 + HOUR.0 + 900_000);
        let r = burn.runway(HOUR, at, credits("19"));
        assert_eq!(r.burned, credits("9.5"));
        assert_eq!(r.runs_out_at, Some(Instant(at.0 + 2 * HOUR.0)));
        // Two windows later nothing burns: no runway figure; none remaining: now.
        let later = Instant(t0.0 + 3 * HOUR.0);
        assert_eq!(burn.runway(HOUR, later, credits("19")).runs_out_at, None);
        assert_eq!(
            burn.runway(HOUR, later, Credits::ZERO).runs_out_at,
            Some(later)
        );
        // A gap of more than a window forgets the older one.
        burn.record_burn(HOUR, later, credits("1"));
        assert_eq!(burn.burn_previous, 0);
        assert_eq!(burn.burn_current, 1_000_000_000);
    }

    #[test]
    fn counts_saturate_and_far_runways_have_no_instant() {
        let mut burn = TypeState::new(CreditTypeId(0));
        burn.record_burn(HOUR, Instant(HOUR.0), Fixed(i128::MAX / 2));
        assert_eq!(burn.burn_current, u64::MAX);
        let mut slow = TypeState::new(CreditTypeId(0));
        slow.record_burn(HOUR, Instant(HOUR.0), Fixed(1));
        let r = slow.runway(HOUR, Instant(HOUR.0), credits("1000000000000"));
        assert_eq!(r.runs_out_at, None, "past 9999");
    }
}
