//! Latency against offered load: the broker alone and the processor at the same rates, from a
//! ceiling measured first in the same run, as one table and one SVG.
//!
//! Owns: the sweep (`raw --rate max` for the ceiling, then at each level a `raw` run and a
//! `run` at that fraction of it, alternating so drift in the machine touches both alike), the
//! [`Sweep`] it produces, its Markdown table and [`load_svg`].
//!
//! Must never: compare figures from different runs: every point's baseline is measured minutes
//! apart at most, on the same server, with the same workload flags and seed.
//!
//! The offered rate of a level includes the probes (one every `--probe-interval`), so the
//! workload's own rate is the level's rate less the probe rate.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use serde::Serialize;

use crate::cli::{self, NatsArgs, OutputArgs, RawArgs, RunArgs, WorkloadArgs};
use crate::measure::Percentiles;
use crate::schedule::parse_duration;
use crate::svg::Frame;

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Offered loads, as percentages of the raw publish ceiling.
    #[arg(long, default_value = "10,25,50,75,90", value_delimiter = ',')]
    pub levels: Vec<f64>,
    /// Workload messages of the ceiling measurement (`raw --rate max`).
    #[arg(long, default_value_t = 300_000)]
    pub ceiling_events: u64,
    /// Compare the processor's outputs with the engine's replay after each processor run.
    #[arg(long)]
    pub verify: bool,
    /// Where sweep.json, sweep.md and sweep.svg (and each run's report) are written.
    #[arg(long)]
    pub out: PathBuf,
    /// No live lines.
    #[arg(long)]
    pub quiet: bool,
}

/// One level of the sweep: the same offered rate through the broker alone and the processor.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub percent: f64,
    /// Messages per second offered, probes included.
    pub offered_per_s: f64,
    pub broker: Side,
    pub processor: Side,
}

#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// Acks per second achieved over the publishing time.
    pub achieved_per_s: f64,
    /// Probe due → probe seen (the broker alone: read back by a bare consumer; the processor:
    /// its command.result seen), open loop.
    pub e2e: Percentiles,
    pub probes_unanswered: u64,
    pub verify_passed: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    pub command: String,
    pub nats_server: String,
    pub cores: usize,
    pub ceiling_per_s: f64,
    pub duration: String,
    pub points: Vec<Point>,
}

impl Sweep {
    /// The table for docs/PERFORMANCE.md: one row per level.
    pub fn to_markdown(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "Raw publish ceiling {:.0} msg/s (nats-server {}, {} cores); {} per point; \
             latency = probe due → seen, open loop, ms.",
            self.ceiling_per_s, self.nats_server, self.cores, self.duration
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| load | offered msg/s | broker p50 | broker p99 | processor p50 | processor p99 | p50 ratio | p99 ratio |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|---|---|");
        for p in &self.points {
            let _ = writeln!(
                t,
                "| {:.0}% | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}× | {:.1}× |{}",
                p.percent,
                p.offered_per_s,
                p.broker.e2e.p50_ms,
                p.broker.e2e.p99_ms,
                p.processor.e2e.p50_ms,
                p.processor.e2e.p99_ms,
                ratio(p.processor.e2e.p50_ms, p.broker.e2e.p50_ms),
                ratio(p.processor.e2e.p99_ms, p.broker.e2e.p99_ms),
                match p.processor.verify_passed {
                    Some(false) => " verify FAILED",
                    _ => "",
                }
            );
        }
        t
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(1e-9)
}

/// Runs the sweep against a server where a processor consumes the input stream.
pub async fn sweep_command(args: SweepArgs, command_line: &str) -> anyhow::Result<(Sweep, bool)> {
    if args.levels.is_empty() || args.levels.iter().any(|l| !(*l > 0.0 && *l <= 100.0)) {
        bail!("--levels must be percentages in (0, 100]");
    }
    if args.workload.ramp.is_some()
        || args.workload.steps.is_some()
        || args.workload.burst.is_some()
    {
        bail!("a sweep sets the rate of each level itself: no --ramp, --steps or --burst");
    }
    let probe_interval =
        parse_duration(&args.workload.probe_interval).map_err(|e| anyhow::anyhow!(e))?;
    if probe_interval.is_zero() {
        bail!("a sweep measures latency through probes: --probe-interval must be > 0");
    }
    let probe_per_s = 1.0 / probe_interval.as_secs_f64();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let ceiling = cli::raw_ceiling(
        &args.workload,
        &args.nats,
        args.ceiling_events,
        command_line,
    )
    .await?;
    let ceiling_per_s = ceiling.publish_per_s;
    if !args.quiet {
        println!("sweep: raw publish ceiling {ceiling_per_s:.0} msg/s");
    }
    let mut points = Vec::new();
    let mut passed = true;
    for &percent in &args.levels {
        let offered = ceiling_per_s * percent / 100.0;
        let workload_rate = (offered - probe_per_s).floor();
        if workload_rate < 1.0 {
            bail!(
                "{percent}% of the ceiling ({offered:.0}/s) leaves no room beside the probes \
                 ({probe_per_s:.0}/s)"
            );
        }
        let mut workload = args.workload.clone();
        workload.rate = format!("{workload_rate}");
        workload.events = None;
        let label = format!("{percent}");
        let output = |name: &str| OutputArgs {
            report_json: Some(args.out.join(format!("{name}-{label}.json"))),
            plot: None,
            quiet: args.quiet,
        };
        let (broker, broker_ok) = cli::raw_command(
            RawArgs {
                workload: workload.clone(),
                nats: args.nats.clone(),
                output: output("raw"),
                stream: "LOADGEN_RAW".into(),
                keep_stream: false,
            },
            &format!("{command_line} (broker alone at {percent}%)"),
        )
        .await?;
        let (processor, processor_ok) = cli::run_command(
            RunArgs {
                workload,
                nats: args.nats.clone(),
                output: output("run"),
                verify: args.verify,
                fence_timeout: "30s".into(),
                diff_max: 20,
                raw_ceiling: None,
            },
            &format!("{command_line} (processor at {percent}%)"),
        )
        .await?;
        passed &= broker_ok && processor_ok;
        let side = |report: &crate::report::Report| Side {
            achieved_per_s: report.publish_per_s,
            e2e: report.e2e_latency.clone().unwrap_or_default(),
            probes_unanswered: report.probes_unanswered,
            verify_passed: report.verify_passed,
        };
        points.push(Point {
            percent,
            offered_per_s: offered,
            broker: side(&broker),
            processor: side(&processor),
        });
    }
    let sweep = Sweep {
        command: command_line.to_string(),
        nats_server: ceiling.nats_server.clone(),
        cores: ceiling.cores,
        ceiling_per_s,
        duration: args.workload.duration.clone(),
        points,
    };
    let write = |name: &str, text: String| {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("sweep.json", serde_json::to_string_pretty(&sweep)?)?;
    write("sweep.md", sweep.to_markdown())?;
    write("sweep.svg", load_svg(&sweep))?;
    print!("{}", sweep.to_markdown());
    println!("  sweep: {}", args.out.display());
    Ok((sweep, passed))
}

/// Latency (ms, log scale) against offered load (% of the ceiling): p50 and p99 of the broker
/// alone and of the processor, four curves with a legend.
pub fn load_svg(sweep: &Sweep) -> String {
    let frame = Frame::chart(540.0);
    let plot_w = frame.plot_width();
    let plot_h = frame.plot_height();
    type Pick = fn(&Point) -> f64;
    let series: [(&str, &str, &str, Pick); 4] = [
        ("broker alone p50", "#1f77b4", "", |p| p.broker.e2e.p50_ms),
        ("broker alone p99", "#1f77b4", "6,4", |p| {
            p.broker.e2e.p99_ms
        }),
        ("processor p50", "#d62728", "", |p| p.processor.e2e.p50_ms),
        ("processor p99", "#d62728", "6,4", |p| {
            p.processor.e2e.p99_ms
        }),
    ];
    let values: Vec<f64> = sweep
        .points
        .iter()
        .flat_map(|p| series.iter().map(move |s| (s.3)(p)))
        .filter(|v| *v > 0.0)
        .collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0f64, f64::max);
    let (decade_low, decade_high) = if values.is_empty() {
        (-1, 1)
    } else {
        let lo = low.log10().floor() as i32;
        (lo, (high.log10().ceil() as i32).max(lo + 1))
    };
    let x_of = |percent: f64| frame.left + percent / 100.0 * plot_w;
    let y_of = |ms: f64| {
        let l = ms.max(10f64.powi(decade_low)).log10();
        frame.top + plot_h
            - (l - f64::from(decade_low)) / f64::from(decade_high - decade_low) * plot_h
    };
    let title = format!(
        "end-to-end latency against offered load · ceiling {:.0} msg/s · nats-server {} · {} cores",
        sweep.ceiling_per_s, sweep.nats_server, sweep.cores
    );
    let mut svg = frame.open(&title, 15);
    for percent in (0..=100).step_by(10) {
        frame.x_grid(&mut svg, x_of(f64::from(percent)), &format!("{percent}%"));
    }
    for decade in decade_low..=decade_high {
        let ms = 10f64.powi(decade);
        let label = if decade >= 0 {
            format!("{ms:.0}")
        } else {
            format!("{ms:.*}", (-decade) as usize)
        };
        frame.y_grid(&mut svg, y_of(ms), &label);
    }
    frame.axes(
        &mut svg,
        "offered load (% of the raw publish ceiling measured first in the same run)",
        "probe due → seen (ms, log scale)",
    );
    for (index, (name, colour, dash, pick)) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = sweep
            .points
            .iter()
            .filter(|p| pick(p) > 0.0)
            .map(|p| (x_of(p.percent), y_of(pick(p))))
            .collect();
        frame.curve(&mut svg, colour, dash, &points);
        for (x, y) in &points {
            let _ = write!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
            );
        }
        frame.legend(&mut svg, index, colour, dash, name);
    }
    Frame::close(&mut svg);
    svg
}
