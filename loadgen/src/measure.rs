//! Latency measurement: HDR histograms, the open-loop probe book, and rate counters.
//!
//! Owns: [`Latency`] (a histogram in microseconds with the two honest ways to record: from a
//! message's *scheduled* time, for open-loop senders, and `record_correct` for closed-loop
//! ones), [`ProbeBook`] (which probe was due when, which were answered), [`Percentiles`].
//!
//! Must never: measure an open-loop latency from the time a message was actually sent. A sender
//! that stalls would then record one slow message instead of the thousand that queued behind the
//! stall (coordinated omission). Every latency here is `observed − scheduled`.
//!
//! Invariants: a probe's latency is recorded once (a re-emitted result is ignored); a probe never
//! answered is recorded at the end as `end − scheduled` and counted, so a lost result makes the
//! tail worse, never better.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::schedule::Nanos;

/// Largest latency recorded: one hour. Larger values are clamped to it (and counted).
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits, 1 µs .. 1 h.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
    /// Values above [`LATENCY_MAX_US`], clamped.
    pub clamped: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("valid histogram bounds"),
            clamped: 0,
        }
    }

    fn micros(&mut self, ns: u64) -> u64 {
        let us = ns.div_ceil(1000).max(1);
        if us > LATENCY_MAX_US {
            self.clamped += 1;
            LATENCY_MAX_US
        } else {
            us
        }
    }

    /// Open loop: the latency of a message due at `scheduled` and seen at `observed` (both run
    /// offsets). A message seen "before" it was due (clock skew between tasks) counts as 1 µs.
    pub fn record_scheduled(&mut self, scheduled: Nanos, observed: Nanos) {
        let us = self.micros(observed.saturating_sub(scheduled));
        self.histogram.record(us).expect("value within bounds");
    }

    /// Closed loop: a service time measured by a sender that waits for each answer before the
    /// next request, which should have sent one request every `expected_interval`. HdrHistogram
    /// back-fills the requests a long stall kept from being sent (`record_correct`).
    pub fn record_closed_loop(&mut self, service: Nanos, expected_interval: Nanos) {
        let us = self.micros(service);
        let interval = expected_interval.div_ceil(1000).max(1);
        self.histogram
            .record_correct(us, interval)
            .expect("value within bounds");
    }

    pub fn add(&mut self, other: &Latency) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds");
        self.clamped += other.clamped;
    }

    pub fn reset(&mut self) {
        self.histogram.reset();
        self.clamped = 0;
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.histogram.max() as f64 / 1000.0
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            count: self.count(),
            p50_ms: self.quantile_ms(0.50),
            p90_ms: self.quantile_ms(0.90),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            p9999_ms: self.quantile_ms(0.9999),
            max_ms: self.max_ms(),
        }
    }

    /// Points of the percentile curve: (quantile, latency ms), from p0 to the maximum, at
    /// `ticks_per_half` points per halving of the remaining tail (HdrHistogram's iteration).
    pub fn curve(&self, ticks_per_half: u32) -> Vec<(f64, f64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        self.histogram
            .iter_quantiles(ticks_per_half)
            .map(|v| {
                (
                    v.quantile_iterated_to(),
                    v.value_iterated_to() as f64 / 1000.0,
                )
            })
            .collect()
    }
}

/// Summary of a latency histogram.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
}

/// The probes of a run: probe `n` is due at `n × interval`; answered once.
#[derive(Clone, Debug)]
pub struct ProbeBook {
    interval: Nanos,
    /// Probes published so far (numbers below this were sent).
    sent: u64,
    answered: Vec<bool>,
    answered_count: u64,
    /// Lowest probe number not yet answered.
    oldest_open: u64,
    pub latency: Latency,
    /// Same values as `latency`, reset by the live line every second.
    pub interval_latency: Latency,
    pub duplicates: u64,
    pub unknown: u64,
    pub unanswered: u64,
}

impl ProbeBook {
    pub fn new(interval: Nanos) -> ProbeBook {
        assert!(interval > 0);
        ProbeBook {
            interval,
            sent: 0,
            answered: Vec::new(),
            answered_count: 0,
            oldest_open: 0,
            latency: Latency::new(),
            interval_latency: Latency::new(),
            duplicates: 0,
            unknown: 0,
            unanswered: 0,
        }
    }

    pub fn scheduled(&self, n: u64) -> Nanos {
        n * self.interval
    }

    /// Probe `n` was handed to the publisher.
    pub fn sent(&mut self, n: u64) {
        if n >= self.sent {
            self.sent = n + 1;
            self.answered.resize(self.sent as usize, false);
        }
    }

    pub fn sent_count(&self) -> u64 {
        self.sent
    }

    pub fn answered_count(&self) -> u64 {
        self.answered_count
    }

    /// The result of probe `n` was seen at `observed`.
    pub fn answered(&mut self, n: u64, observed: Nanos) {
        if n >= self.sent {
            // A result of a probe this run never sent (another run's, or a bug).
            self.unknown += 1;
            return;
        }
        let slot = &mut self.answered[n as usize];
        if *slot {
            self.duplicates += 1;
            return;
        }
        *slot = true;
        self.answered_count += 1;
        let scheduled = self.scheduled(n);
        self.latency.record_scheduled(scheduled, observed);
        self.interval_latency.record_scheduled(scheduled, observed);
        while self.oldest_open < self.sent && self.answered[self.oldest_open as usize] {
            self.oldest_open += 1;
        }
    }

    /// How long the oldest unanswered probe has been due at `now`: how far behind the
    /// processor is (0 when every sent probe is answered).
    pub fn lag(&self, now: Nanos) -> Nanos {
        if self.oldest_open >= self.sent {
            return 0;
        }
        now.saturating_sub(self.scheduled(self.oldest_open))
    }

    pub fn all_answered(&self) -> bool {
        self.answered_count == self.sent
    }

    /// Ends the run at `end`: every probe still unanswered is recorded as `end − scheduled`.
    pub fn close(&mut self, end: Nanos) {
        for n in self.oldest_open..self.sent {
            if !self.answered[n as usize] {
                self.unanswered += 1;
                let scheduled = self.scheduled(n);
                self.latency.record_scheduled(scheduled, end);
            }
        }
        self.oldest_open = self.sent;
    }
}

/// Messages per second between two counts `elapsed` ns apart.
pub fn rate(count: u64, elapsed: Nanos) -> f64 {
    if elapsed == 0 {
        return 0.0;
    }
    count as f64 * 1e9 / elapsed as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_and_unknown_results_are_not_recorded_twice() {
        let mut book = ProbeBook::new(1_000_000);
        book.sent(0);
        book.sent(1);
        book.answered(0, 2_000_000);
        book.answered(0, 3_000_000);
        book.answered(7, 3_000_000);
        assert_eq!(book.latency.count(), 1);
        assert_eq!(book.duplicates, 1);
        assert_eq!(book.unknown, 1);
        assert_eq!(book.lag(5_000_000), 4_000_000);
        book.close(10_000_000);
        assert_eq!(book.unanswered, 1);
        assert_eq!(book.latency.count(), 2);
        // 3 significant digits: 9 ms is kept within 0.1%.
        assert!((book.latency.max_ms() - 9.0).abs() < 0.01);
    }
}
