//! The closing report of a run: text for people, JSON for scripts, and an SVG percentile plot.
//!
//! Owns: [`Report`] (what a run states, with the command that produced it), its text form, and
//! [`percentile_svg`] (latency against percentile on a log scale, drawn by hand).
//!
//! Must never: print a figure without saying how it was measured (open loop from the scheduled
//! time, or service time at `max` rate).

use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::{rate, Latency, Percentiles};
use crate::query::{QueryResult, QuerySecond, ServiceProcessing};
use crate::run::{RunResult, Second};
use crate::svg::Frame;
use crate::workload::Counts;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub command: String,
    pub nats_server: String,
    pub cores: usize,
    pub seed: u64,
    pub run_id: String,
    pub partitions: u32,
    pub connections: usize,
    pub window: usize,
    pub rate: String,
    pub accounts: u32,
    pub zipf: f64,
    pub counts: Counts,
    pub sent: u64,
    pub acked: u64,
    pub stored: u64,
    pub broker_duplicates: u64,
    pub publish_errors: u64,
    pub first_publish_error: Option<String>,
    pub publish_elapsed_s: f64,
    /// Messages (probes included) over the schedule's span; `None` at `max` rate.
    pub offered_per_s: Option<f64>,
    /// Acks per second over the publishing time.
    pub publish_per_s: f64,
    pub ack_latency_basis: String,
    pub ack_latency: Percentiles,
    pub e2e_latency: Option<Percentiles>,
    pub probes_sent: u64,
    pub probes_answered: u64,
    pub probes_unanswered: u64,
    /// `raw`: the bare consumer reading while the workload was published.
    pub consumed: Option<u64>,
    pub consume_concurrent_per_s: Option<f64>,
    /// `raw`: reading the whole stored workload back afterwards (the consume ceiling).
    pub drain_messages: Option<u64>,
    pub drain_per_s: Option<f64>,
    pub ratios: Vec<Ratio>,
    pub verify: Option<String>,
    pub verify_passed: Option<bool>,
    pub timeline: Vec<Second>,
    #[serde(skip)]
    pub e2e_histogram: Option<Latency>,
    #[serde(skip)]
    pub ack_histogram: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub name: String,
    pub value: f64,
}

impl Report {
    /// Fills the measured part from a run.
    pub fn from_run(mut self, result: &RunResult, max_rate: bool) -> Report {
        self.counts = result.counts.clone();
        self.sent = result.publish.sent;
        self.acked = result.publish.acked;
        self.stored = result.stored();
        self.broker_duplicates = result.publish.broker_duplicates;
        self.publish_errors = result.publish.errors;
        self.first_publish_error = result.publish.first_error.clone();
        self.publish_elapsed_s = result.publish_elapsed as f64 / 1e9;
        self.offered_per_s = (!max_rate && result.schedule_span > 0)
            .then(|| rate(result.publish.sent.saturating_sub(1), result.schedule_span));
        self.publish_per_s = result.publish_rate();
        self.ack_latency_basis = if max_rate {
            "service time: from handing the message to the publisher to its ack (max rate, no schedule)"
        } else {
            "open loop: from the message's scheduled time to its ack (corrected for coordinated omission)"
        }
        .to_string();
        self.ack_latency = result.publish.ack_latency.percentiles();
        self.ack_histogram = result.publish.ack_latency.clone();
        if let Some(book) = &result.probes {
            self.e2e_latency = Some(book.latency.percentiles());
            self.e2e_histogram = Some(book.latency.clone());
            self.probes_sent = book.sent_count();
            self.probes_answered = book.answered_count();
            self.probes_unanswered = book.unanswered;
        }
        if let Some(consume) = &result.consume {
            self.consumed = Some(consume.consumed);
            let elapsed = consume
                .last_at
                .saturating_sub(consume.first_at.unwrap_or(0));
            self.consume_concurrent_per_s = Some(rate(consume.consumed.saturating_sub(1), elapsed));
        }
        self.timeline = result.timeline.clone();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "loadgen {} — {}", self.mode, self.command);
        let _ = writeln!(
            t,
            "  nats-server {} · {} cores · {} partitions · {} connection(s) · window {} · rate {} · seed {} · run {}",
            self.nats_server,
            self.cores,
            self.partitions,
            self.connections,
            self.window,
            self.rate,
            self.seed,
            self.run_id
        );
        let c = &self.counts;
        let _ = writeln!(
            t,
            "  workload: {} usage ({} late), {} opening grants, {} top-ups, {} duplicates ({} past the broker window), {} malformed, {} probes; {} accounts, zipf {}",
            c.usage + c.late_usage,
            c.late_usage,
            c.opening_grants,
            c.topups,
            c.duplicates + c.late_duplicates,
            c.late_duplicates,
            c.malformed,
            c.probes,
            self.accounts,
            self.zipf
        );
        let _ = writeln!(
            t,
            "  published {} (acked {}, stored {}, broker duplicates {}, errors {}) in {:.2} s",
            self.sent,
            self.acked,
            self.stored,
            self.broker_duplicates,
            self.publish_errors,
            self.publish_elapsed_s
        );
        if let Some(err) = &self.first_publish_error {
            let _ = writeln!(t, "  first publish error: {err}");
        }
        match self.offered_per_s {
            Some(offered) => {
                let _ = writeln!(
                    t,
                    "  rate: offered {:.0}/s, achieved (acked) {:.0}/s",
                    offered, self.publish_per_s
                );
            }
            None => {
                let _ = writeln!(t, "  rate: achieved (acked) {:.0}/s", self.publish_per_s);
            }
        }
        if let (Some(consumed), Some(per_s)) = (self.consumed, self.consume_concurrent_per_s) {
            let _ = writeln!(t, "  consumed while publishing: {consumed} at {per_s:.0}/s");
        }
        if let (Some(n), Some(per_s)) = (self.drain_messages, self.drain_per_s) {
            let _ = writeln!(t, "  consumed afterwards (drain): {n} at {per_s:.0}/s");
        }
        let _ = writeln!(t, "  publish-ack latency ({}):", self.ack_latency_basis);
        let _ = writeln!(t, "    {}", percentiles_line(&self.ack_latency));
        if let Some(e2e) = &self.e2e_latency {
            let _ = writeln!(
                t,
                "  end-to-end latency (probe due → its result seen; open loop, {} probes, {} unanswered):",
                self.probes_sent, self.probes_unanswered
            );
            let _ = writeln!(t, "    {}", percentiles_line(e2e));
        }
        for ratio in &self.ratios {
            let _ = writeln!(t, "  {}: {:.3}", ratio.name, ratio.value);
        }
        if let Some(verify) = &self.verify {
            let _ = writeln!(t, "  verify: {verify}");
        }
        t
    }
}

/// The closing report of `loadgen query`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueryReport {
    pub mode: String,
    pub command: String,
    pub nats_server: String,
    pub cores: usize,
    /// `balance`, `authorize` or `echo`.
    pub endpoint: String,
    pub subject: String,
    pub seed: u64,
    pub accounts: u32,
    pub connections: usize,
    /// Requests in flight per connection at most (closed loop: exactly).
    pub concurrency: usize,
    pub rate: String,
    pub timeout_ms: f64,
    pub closed_loop: bool,
    pub requests: u64,
    pub ok: u64,
    /// Replies 404 (unknown account): answers, counted apart.
    pub not_found: u64,
    /// Every other outcome (error replies, timeouts, no responders, client failures).
    pub errors: u64,
    /// Every outcome other than ok, by code (`"404"`, `"503"`, `"timeout"`, …).
    pub by_code: std::collections::BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// Requests over the schedule's span; `None` in a closed loop.
    pub offered_per_s: Option<f64>,
    /// Answers (ok and 404) per second, from the start to the last outcome.
    pub achieved_per_s: f64,
    pub ok_per_s: f64,
    pub latency_basis: String,
    pub latency: Percentiles,
    /// From the actual send to the outcome.
    pub service_time: Percentiles,
    /// From the scheduled time to the actual send (open loop): the loader's own lateness,
    /// waits for room under the concurrency bound included.
    pub send_delay: Option<Percentiles>,
    pub request_bytes_mean: f64,
    pub reply_bytes_mean: f64,
    /// The service's own mean time per request over the run, from its `$SRV.STATS` read before
    /// and after (from a request's delivery to the service until its reply was handed to the
    /// service's connection; the rest of the round trip is the broker's and the network's).
    /// `None` for the echo, or when no STATS reply came.
    pub service_processing: Option<ServiceProcessing>,
    pub timeline: Vec<QuerySecond>,
    #[serde(skip)]
    pub latency_histogram: Latency,
    #[serde(skip)]
    pub service_histogram: Latency,
}

impl QueryReport {
    /// Fills the measured part from a query run.
    pub fn from_result(mut self, result: &QueryResult) -> QueryReport {
        let s = &result.stats;
        self.closed_loop = result.closed_loop;
        self.requests = s.requests;
        self.ok = s.ok;
        self.not_found = s.not_found;
        self.errors = s.errors;
        self.by_code = s.by_code.clone();
        self.first_error = s.first_error.clone();
        self.elapsed_s = result.elapsed as f64 / 1e9;
        self.offered_per_s = result.offered_per_s();
        self.achieved_per_s = result.answered_per_s();
        self.ok_per_s = result.ok_per_s();
        self.latency_basis = if result.closed_loop {
            format!(
                "service time (closed loop, --rate max: {} requests in flight per connection, \
                 each sent when one is answered; from its send to its reply)",
                self.concurrency
            )
        } else {
            "open loop: from each request's scheduled time to its reply (corrected for \
             coordinated omission)"
                .to_string()
        };
        self.latency = s.latency.percentiles();
        self.service_time = s.service_time.percentiles();
        self.send_delay = (!result.closed_loop).then(|| s.send_delay.percentiles());
        self.request_bytes_mean = s.request_bytes as f64 / s.completed.max(1) as f64;
        self.reply_bytes_mean = s.reply_bytes as f64 / s.ok.max(1) as f64;
        self.service_processing = result.service_processing;
        self.timeline = result.timeline.clone();
        self.latency_histogram = s.latency.clone();
        self.service_histogram = s.service_time.clone();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "loadgen query {} — {}", self.endpoint, self.command);
        let _ = writeln!(
            t,
            "  nats-server {} · {} cores · {} · {} connection(s) · concurrency {} · rate {} · timeout {:.0} ms · {} accounts · seed {}",
            self.nats_server,
            self.cores,
            self.subject,
            self.connections,
            self.concurrency,
            self.rate,
            self.timeout_ms,
            self.accounts,
            self.seed
        );
        let codes: Vec<String> = self
            .by_code
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        let _ = writeln!(
            t,
            "  requests {}: ok {}, unknown account (404) {}, errors {}{} in {:.2} s",
            self.requests,
            self.ok,
            self.not_found,
            self.errors,
            if codes.is_empty() {
                String::new()
            } else {
                format!(" (by code: {})", codes.join(", "))
            },
            self.elapsed_s
        );
        if let Some(error) = &self.first_error {
            let _ = writeln!(t, "  first error: {error}");
        }
        match self.offered_per_s {
            Some(offered) => {
                let _ = writeln!(
                    t,
                    "  rate: offered {offered:.0}/s, achieved {:.0}/s answered ({:.0}/s ok)",
                    self.achieved_per_s, self.ok_per_s
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "  rate: achieved {:.0}/s answered ({:.0}/s ok)",
                    self.achieved_per_s, self.ok_per_s
                );
            }
        }
        let _ = writeln!(t, "  latency — {}:", self.latency_basis);
        let _ = writeln!(t, "    {}", percentiles_line(&self.latency));
        if let Some(delay) = &self.send_delay {
            let _ = writeln!(t, "  service time (from the actual send to the reply):");
            let _ = writeln!(t, "    {}", percentiles_line(&self.service_time));
            let _ = writeln!(
                t,
                "  send delay (scheduled → sent: the loader's lateness and waits under --concurrency):"
            );
            let _ = writeln!(t, "    {}", percentiles_line(delay));
        }
        let _ = writeln!(
            t,
            "  sizes: request {:.0} B, ok reply {:.0} B (means)",
            self.request_bytes_mean, self.reply_bytes_mean
        );
        if let Some(own) = &self.service_processing {
            let _ = writeln!(
                t,
                "  the service's own time ($SRV.STATS): {:.3} ms mean over {} requests",
                own.mean_ms, own.requests
            );
        }
        t
    }
}

pub fn percentiles_line(p: &Percentiles) -> String {
    format!(
        "n {} · p50 {:.3} · p90 {:.3} · p99 {:.3} · p99.9 {:.3} · p99.99 {:.3} · max {:.3} ms",
        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.p9999_ms, p.max_ms
    )
}

/// An SVG of latency (ms, linear) against percentile (log scale of 1/(1−q), 0% to 99.999%),
/// one curve per series, with a legend.
pub fn percentile_svg(title: &str, series: &[(&str, &Latency)]) -> String {
    const DECADES: f64 = 5.0; // up to 99.999%
    const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let frame = Frame::chart(520.0);
    let plot_w = frame.plot_width();
    let plot_h = frame.plot_height();
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, latency)| (*name, latency.curve(5)))
        .collect();
    let highest = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.001);
    // Five gridlines at a round step (1, 2 or 5 × 10^k ms).
    let raw_step = highest * 1.05 / 5.0;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * magnitude);
    let lines = (highest * 1.05 / step).ceil().max(1.0) as u32;
    let y_max = step * f64::from(lines);
    let x_of = |q: f64| {
        let decades = (1.0 / (1.0 - q.min(0.999_999_9))).log10().min(DECADES);
        frame.left + decades / DECADES * plot_w
    };
    let y_of = |ms: f64| frame.top + plot_h - ms / y_max * plot_h;
    let mut svg = frame.open(title, 16);
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        frame.x_grid(&mut svg, frame.left + i as f64 / DECADES * plot_w, label);
    }
    for i in 0..=lines {
        let ms = step * f64::from(i);
        frame.y_grid(&mut svg, y_of(ms), &format_ms(ms));
    }
    frame.axes(
        &mut svg,
        "percentile (log scale of 1/(1−q))",
        "latency (ms)",
    );
    for (index, (name, curve)) in curves.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let points: Vec<(f64, f64)> = curve.iter().map(|(q, ms)| (x_of(*q), y_of(*ms))).collect();
        frame.curve(&mut svg, colour, "", &points);
        frame.legend(&mut svg, index, colour, "", name);
    }
    Frame::close(&mut svg);
    svg
}

fn format_ms(ms: f64) -> String {
    if ms == 0.0 {
        "0".to_string()
    } else if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    }
}
