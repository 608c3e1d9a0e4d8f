//! Rate shapes and the open-loop schedule: when the n-th message of a run is due.
//!
//! Owns: [`RateShape`] (constant, ramp, steps, bursts, or as fast as possible), the pure
//! function from slot number to scheduled offset ([`Schedule`]), and [`Pacer`], which tells the
//! publishing loop which slots are due at a given instant.
//!
//! Must never: look at the system under test. The schedule is fixed before the run starts, so
//! a slow broker or processor cannot slow the generator down (open loop); latencies are then
//! measured from a message's *scheduled* time, which is what corrects them for coordinated
//! omission (a stalled system shows up as the queueing it caused, not as one slow sample).
//!
//! Invariants: scheduled offsets are non-decreasing in the slot number; the same shape gives the
//! same offsets on every run and machine (plain f64 arithmetic, no clock).

use std::time::Duration;

/// Nanoseconds since the start of a run.
pub type Nanos = u64;

/// How many messages per second are offered over time.
#[derive(Clone, Debug, PartialEq)]
pub enum RateShape {
    /// As fast as the publishing window allows: every slot is due at offset 0. Used by `fill`
    /// and the raw ceiling; latencies are then service times, not open-loop latencies.
    Max,
    /// `rate` messages per second throughout.
    Constant { rate: f64 },
    /// Linear from `from` to `to` messages per second over `over`, then `to`.
    Ramp { from: f64, to: f64, over: Duration },
    /// Each step's rate for its duration, in order; the last rate continues after the last step.
    Steps { steps: Vec<(f64, Duration)> },
    /// `base` messages per second, except for `length` at the start of every `every`, where it is
    /// `peak`.
    Burst {
        base: f64,
        peak: f64,
        every: Duration,
        length: Duration,
    },
}

/// Rates below this are refused: a schedule must make progress (one message per 1000 s).
pub const RATE_MIN_PER_SECOND: f64 = 0.001;
/// Rates above this are refused; use `max` instead (one message per nanosecond).
pub const RATE_MAX_PER_SECOND: f64 = 1e9;

impl RateShape {
    /// Parses the CLI forms: `max`, `20000`, `ramp:1000:50000:10s`, `steps:10000x5s,20000x5s`,
    /// `burst:10000:50000:5s:500ms`.
    pub fn parse(text: &str) -> Result<RateShape, String> {
        let text = text.trim();
        if text == "max" {
            return Ok(RateShape::Max);
        }
        let shape = if let Some(rest) = text.strip_prefix("ramp:") {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() != 3 {
                return Err(format!("ramp is ramp:FROM:TO:OVER, got {text:?}"));
            }
            RateShape::Ramp {
                from: parse_rate(parts[0])?,
                to: parse_rate(parts[1])?,
                over: parse_duration(parts[2])?,
            }
        } else if let Some(rest) = text.strip_prefix("steps:") {
            let mut steps = Vec::new();
            for step in rest.split(',') {
                let (rate, length) = step
                    .split_once('x')
                    .ok_or_else(|| format!("a step is RATExDURATION, got {step:?}"))?;
                steps.push((parse_rate(rate)?, parse_duration(length)?));
            }
            if steps.is_empty() {
                return Err("steps: needs at least one RATExDURATION".into());
            }
            RateShape::Steps { steps }
        } else if let Some(rest) = text.strip_prefix("burst:") {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() != 4 {
                return Err(format!(
                    "burst is burst:BASE:PEAK:EVERY:LENGTH, got {text:?}"
                ));
            }
            let every = parse_duration(parts[2])?;
            let length = parse_duration(parts[3])?;
            if length >= every {
                return Err("a burst must be shorter than its period".into());
            }
            RateShape::Burst {
                base: parse_rate(parts[0])?,
                peak: parse_rate(parts[1])?,
                every,
                length,
            }
        } else {
            RateShape::Constant {
                rate: parse_rate(text)?,
            }
        };
        Ok(shape)
    }

    /// The offered rate (messages per second) at `offset`; `None` for `Max`.
    pub fn rate_at(&self, offset: Nanos) -> Option<f64> {
        let t = offset as f64 / 1e9;
        Some(match self {
            RateShape::Max => return None,
            RateShape::Constant { rate } => *rate,
            RateShape::Ramp { from, to, over } => {
                let over = over.as_secs_f64();
                if t >= over {
                    *to
                } else {
                    from + (to - from) * t / over
                }
            }
            RateShape::Steps { steps } => {
                let mut start = 0.0;
                for (rate, length) in steps {
                    start += length.as_secs_f64();
                    if t < start {
                        return Some(*rate);
                    }
                }
                steps.last().map_or(0.0, |s| s.0)
            }
            RateShape::Burst {
                base,
                peak,
                every,
                length,
            } => {
                let phase = offset % every.as_nanos() as u64;
                if phase < length.as_nanos() as u64 {
                    *peak
                } else {
                    *base
                }
            }
        })
    }

    pub fn is_max(&self) -> bool {
        matches!(self, RateShape::Max)
    }

    /// Piece `index` of the rate function: a segment with a linear rate. The last piece of a
    /// shape lasts forever (`length` = `None`).
    fn segment(&self, index: usize) -> Segment {
        match self {
            RateShape::Max => Segment::forever(0.0),
            RateShape::Constant { rate } => Segment::forever(*rate),
            RateShape::Ramp { from, to, over } => {
                if index == 0 && !over.is_zero() {
                    Segment {
                        length: Some(over.as_secs_f64()),
                        from: *from,
                        to: *to,
                    }
                } else {
                    Segment::forever(*to)
                }
            }
            RateShape::Steps { steps } => {
                let (rate, length) = steps[index.min(steps.len() - 1)];
                if index + 1 >= steps.len() {
                    Segment::forever(rate)
                } else {
                    Segment {
                        length: Some(length.as_secs_f64()),
                        from: rate,
                        to: rate,
                    }
                }
            }
            RateShape::Burst {
                base,
                peak,
                every,
                length,
            } => {
                let (rate, span) = if index % 2 == 0 {
                    (*peak, length.as_secs_f64())
                } else {
                    (*base, (*every - *length).as_secs_f64())
                };
                Segment {
                    length: Some(span),
                    from: rate,
                    to: rate,
                }
            }
        }
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("not a rate (messages per second): {text:?}"))?;
    if !(RATE_MIN_PER_SECOND..=RATE_MAX_PER_SECOND).contains(&rate) {
        return Err(format!(
            "rate {rate} outside {RATE_MIN_PER_SECOND}..={RATE_MAX_PER_SECOND} per second"
        ));
    }
    Ok(rate)
}

/// Parses `500ms`, `10s`, `2m`, `1h` (one number and one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration (e.g. 500ms, 10s, 2m): {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown duration unit in {text:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("not a duration: {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    /// Seconds; `None` = forever.
    length: Option<f64>,
    /// Rate at the segment's start and end (messages per second), linear in between.
    from: f64,
    to: f64,
}

impl Segment {
    fn forever(rate: f64) -> Segment {
        Segment {
            length: None,
            from: rate,
            to: rate,
        }
    }

    /// Messages offered over the whole segment (infinite for the last one).
    fn count(&self) -> f64 {
        match self.length {
            None => f64::INFINITY,
            Some(length) => (self.from + self.to) / 2.0 * length,
        }
    }

    /// Time into the segment at which `k` messages have been offered: solves
    /// `from·t + (to − from)·t²/(2·length) = k` for t.
    fn time_of(&self, k: f64) -> f64 {
        let slope = match self.length {
            Some(length) if length > 0.0 => (self.to - self.from) / length,
            _ => 0.0,
        };
        if slope.abs() < 1e-12 {
            k / self.from
        } else {
            (-self.from + (self.from * self.from + 2.0 * slope * k).sqrt()) / slope
        }
    }
}

/// The scheduled offset of every slot of a run, computed incrementally (slots are asked in
/// order) so a long run costs O(1) per slot.
#[derive(Clone, Debug)]
pub struct Schedule {
    shape: RateShape,
    segment_index: usize,
    segment: Segment,
    /// Offset (seconds) and slot count at the start of the current segment.
    segment_start: f64,
    segment_first_slot: f64,
    next_slot: u64,
}

impl Schedule {
    pub fn new(shape: RateShape) -> Schedule {
        let segment = shape.segment(0);
        Schedule {
            shape,
            segment_index: 0,
            segment,
            segment_start: 0.0,
            segment_first_slot: 0.0,
            next_slot: 0,
        }
    }

    pub fn shape(&self) -> &RateShape {
        &self.shape
    }

    /// The scheduled offset of the next slot (slot 0 is due at offset 0).
    pub fn next_offset(&mut self) -> Nanos {
        let slot = self.next_slot;
        self.next_slot += 1;
        if self.shape.is_max() {
            return 0;
        }
        let k = slot as f64;
        // Skip whole segments that end before slot k (a zero-rate segment holds no slot).
        while k - self.segment_first_slot >= self.segment.count() {
            self.segment_first_slot += self.segment.count();
            self.segment_start += self.segment.length.unwrap_or(0.0);
            self.segment_index += 1;
            self.segment = self.shape.segment(self.segment_index);
        }
        let seconds = self.segment_start + self.segment.time_of(k - self.segment_first_slot);
        (seconds * 1e9).round() as Nanos
    }
}

/// Tells an open-loop sender which slots are due. It never skips a slot: after a stall, every
/// overdue slot is due at once (and keeps its scheduled time, so its latency includes the stall).
#[derive(Clone, Debug)]
pub struct Pacer {
    schedule: Schedule,
    /// The next slot's offset, computed ahead.
    upcoming: Nanos,
}

impl Pacer {
    pub fn new(shape: RateShape) -> Pacer {
        let mut schedule = Schedule::new(shape);
        let upcoming = schedule.next_offset();
        Pacer { schedule, upcoming }
    }

    /// The offset of the next slot not yet taken.
    pub fn upcoming(&self) -> Nanos {
        self.upcoming
    }

    /// Takes the next slot if it is due at `now`; returns its scheduled offset.
    pub fn take_due(&mut self, now: Nanos) -> Option<Nanos> {
        if self.upcoming > now {
            return None;
        }
        let due = self.upcoming;
        self.upcoming = self.schedule.next_offset();
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(shape: RateShape, n: usize) -> Vec<Nanos> {
        let mut s = Schedule::new(shape);
        (0..n).map(|_| s.next_offset()).collect()
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let o = offsets(RateShape::Constant { rate: 1000.0 }, 5);
        assert_eq!(o, vec![0, 1_000_000, 2_000_000, 3_000_000, 4_000_000]);
    }

    #[test]
    fn steps_change_rate_at_the_boundary() {
        let shape = RateShape::parse("steps:10x1s,100x1s").unwrap();
        let o = offsets(shape, 20);
        assert_eq!(o[9], 900_000_000);
        assert_eq!(o[10], 1_000_000_000);
        assert_eq!(o[11], 1_010_000_000);
        // After the last step its rate continues.
        assert_eq!(o[19], 1_090_000_000);
    }

    #[test]
    fn ramp_offers_the_integral_of_its_rate() {
        // 0 → 2000/s over 1 s offers 1000 messages in the first second.
        let shape = RateShape::parse("ramp:0.001:2000:1s").unwrap();
        let o = offsets(shape, 1001);
        assert!(
            o[999] < 1_000_000_000 && o[1000] >= 999_000_000,
            "{}",
            o[1000]
        );
        assert!(o.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn bursts_alternate_peak_and_base() {
        let shape = RateShape::parse("burst:10:1000:1s:100ms").unwrap();
        let o = offsets(shape, 110);
        // 100 messages in the first 100 ms at the peak, then 9 at the base over 900 ms.
        assert_eq!(o[99], 99_000_000);
        assert_eq!(o[100], 100_000_000);
        assert_eq!(o[101], 200_000_000);
        assert_eq!(o[109], 1_000_000_000);
    }

    #[test]
    fn pacer_releases_overdue_slots_without_skipping() {
        let mut pacer = Pacer::new(RateShape::Constant { rate: 1000.0 });
        assert_eq!(pacer.take_due(0), Some(0));
        assert_eq!(pacer.take_due(0), None);
        // A 10 ms stall: ten slots are overdue and each keeps its own scheduled time.
        let due: Vec<Nanos> = std::iter::from_fn(|| pacer.take_due(10_000_000)).collect();
        assert_eq!(due.len(), 10);
        assert_eq!(due[0], 1_000_000);
        assert_eq!(due[9], 10_000_000);
    }

    #[test]
    fn parse_rejects_nonsense() {
        assert!(RateShape::parse("fast").is_err());
        assert!(RateShape::parse("0").is_err());
        assert!(RateShape::parse("burst:1:2:1s:2s").is_err());
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }
}
