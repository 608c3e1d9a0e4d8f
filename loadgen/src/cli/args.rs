//! The flags: the clap argument structs of every subcommand but `sweep` (whose flags are
//! `crate::sweep::SweepArgs`, which flattens some of these), and [`WorkloadArgs`] turned into a
//! rate shape and a [`WorkloadSpec`].
//!
//! Owns: each flag's name, default and help text, and the checks on the workload flags (ranges
//! of the fractions, accounts, partitions, zipf) made before anything is sent.
//!
//! Must never: connect to anything or read a file (the command loads the catalog and hands it
//! to `spec`).
//!
//! Invariants: a spec comes out of [`WorkloadArgs::spec`] only when the workload flags pass
//! their checks; with `--run-id` and `--base-ts` given, the same flags give the same spec.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use creditflow::catalog::Catalog;
use creditflow::time::Instant;

use crate::nats::INPUT_STREAM;
use crate::query::{self, Endpoint};
use crate::schedule::{parse_duration, RateShape};
use crate::workload::{self, Limit, WorkloadSpec};

use super::{fresh_run_id, now_ms};

/// What to generate.
#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// The catalog the meter mix and prices come from.
    #[arg(long, default_value = "config/catalog.toml")]
    pub catalog: PathBuf,
    /// Partition count of the processor (subjects `creditflow.in.<p>`).
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// Seed of every random choice: the same seed (and run id and base time) gives the same
    /// messages.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Part of every message id (default: the start time in base 36), so runs do not collide.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Event time of the run's start (RFC 3339); default: now.
    #[arg(long)]
    pub base_ts: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u32,
    #[arg(long, default_value = "lg")]
    pub account_prefix: String,
    /// Zipf exponent of account popularity (hot accounts); 0 = uniform.
    #[arg(long, default_value_t = 0.0)]
    pub zipf: f64,
    /// Meter mix, `name=weight,…` (default: every meter of the catalog, weight 1).
    #[arg(long)]
    pub meters: Option<String>,
    /// Usage quantities are whole numbers from 1 to this.
    #[arg(long, default_value_t = 100)]
    pub quantity_max: u32,
    /// Credits of each opening grant and top-up.
    #[arg(long, default_value = "100")]
    pub grant_amount: String,
    /// Fraction of messages that are top-up grants (accounts run out and recover).
    #[arg(long, default_value_t = 0.01)]
    pub topup_fraction: f64,
    /// Fraction re-sent with the same id and Nats-Msg-Id (the broker's window drops them).
    #[arg(long, default_value_t = 0.01)]
    pub dup_fraction: f64,
    /// Fraction re-sent with the same id but a Nats-Msg-Id the broker has not seen, as a
    /// duplicate outside its window looks (the engine must drop them).
    #[arg(long, default_value_t = 0.002)]
    pub dup_late_fraction: f64,
    #[arg(long, default_value_t = 0.001)]
    pub malformed_fraction: f64,
    /// Fraction of usage events whose ts is before their send time (up to --late-max).
    #[arg(long, default_value_t = 0.01)]
    pub late_fraction: f64,
    #[arg(long, default_value = "1h")]
    pub late_max: String,
    /// Offered rate: messages per second, or `max`.
    #[arg(long, default_value = "10000", conflicts_with_all = ["ramp", "steps", "burst"])]
    pub rate: String,
    /// Linear ramp FROM:TO messages per second over the run's duration (or FROM:TO:OVER).
    #[arg(long)]
    pub ramp: Option<String>,
    /// Steps RATExDURATION,… (e.g. 10000x5s,20000x5s).
    #[arg(long)]
    pub steps: Option<String>,
    /// Bursts BASE:PEAK:EVERY:LENGTH (e.g. 10000:50000:5s:500ms).
    #[arg(long)]
    pub burst: Option<String>,
    /// How long to offer load.
    #[arg(long, default_value = "10s", conflicts_with = "events")]
    pub duration: String,
    /// How many workload messages to send (instead of --duration).
    #[arg(long)]
    pub events: Option<u64>,
    /// One end-to-end latency probe every this long; 0 = no probes.
    #[arg(long, default_value = "1ms")]
    pub probe_interval: String,
}

#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Publishing connections (partition p always uses connection p % connections).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Publishes without an ack per connection.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Create the input/output streams when missing (normally the processor creates them).
    #[arg(long)]
    pub create_streams: bool,
    /// After the last publish, how long to wait for answers.
    #[arg(long, default_value = "10s")]
    pub drain_timeout: String,
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Latency-percentile plot (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No live line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// At the end, compare the processor's outputs with the engine's replay of the stream.
    #[arg(long)]
    pub verify: bool,
    #[arg(long, default_value = "30s")]
    pub fence_timeout: String,
    #[arg(long, default_value_t = 20)]
    pub diff_max: usize,
    /// First measure the broker's ceiling in this run (`raw --rate max` with this many events
    /// on the scratch stream), and state the run's figures as ratios of it.
    #[arg(long)]
    pub raw_ceiling: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct RawArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The scratch stream (deleted and created afresh; subjects loadgen.raw.in.>).
    #[arg(long, default_value = "LOADGEN_RAW")]
    pub stream: String,
    /// Keep the scratch stream afterwards.
    #[arg(long)]
    pub keep_stream: bool,
}

#[derive(Args, Debug, Clone)]
pub struct FillArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DrainArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// Give up after this long.
    #[arg(long, default_value = "300s")]
    pub timeout: String,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The stream to read (the processor's input stream by default).
    #[arg(long, default_value = INPUT_STREAM)]
    pub stream: String,
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[arg(long, default_value = "config/catalog.toml")]
    pub catalog: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    #[arg(long, default_value = "30s")]
    pub fence_timeout: String,
    #[arg(long, default_value_t = 20)]
    pub diff_max: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Postgres,
    Redis,
}

#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    pub store: StoreKind,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Concurrent connections (each account always on the same one).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    pub postgres: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis: String,
    #[arg(long)]
    pub report_json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct QueryArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// What to ask: the service's balance or authorize query, or the echo responder.
    #[arg(long, value_enum, default_value_t = Endpoint::Balance)]
    pub endpoint: Endpoint,
    /// The service's endpoints are `<prefix>.query.<name>`.
    #[arg(long, default_value = "creditflow.svc")]
    pub subject_prefix: String,
    /// The echo responder's subject (`--endpoint echo`).
    #[arg(long, default_value = query::ECHO_SUBJECT)]
    pub echo_subject: String,
    /// `--endpoint echo`: use a responder already running (`loadgen echo-responder`) instead of
    /// starting one in this process.
    #[arg(long)]
    pub echo_external: bool,
    /// Size of the in-process echo's reply (0: the request's payload).
    #[arg(long, default_value_t = query::ECHO_REPLY_BYTES)]
    pub reply_bytes: usize,
    /// Requests per second (a fixed schedule; also ramp:…, steps:…, burst:… as for `run`), or
    /// `max`: a closed loop with --concurrency requests in flight per connection.
    #[arg(long, default_value = "1000")]
    pub rate: String,
    /// How long to offer requests.
    #[arg(long, default_value = "10s", conflicts_with = "requests")]
    pub duration: String,
    /// How many requests to send (instead of --duration).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Accounts asked about: `<account-prefix>_<i>`, i below this, as the workload names them.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u32,
    #[arg(long, default_value = "lg")]
    pub account_prefix: String,
    /// Zipf exponent of account popularity; 0 = uniform.
    #[arg(long, default_value_t = 0.0)]
    pub zipf: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The catalog authorize's meters come from.
    #[arg(long, default_value = "config/catalog.toml")]
    pub catalog: PathBuf,
    /// Authorize's meter mix, `name=weight,…` (default: every meter of the catalog).
    #[arg(long)]
    pub meters: Option<String>,
    /// Authorize's quantities are whole numbers from 1 to this.
    #[arg(long, default_value_t = 100)]
    pub quantity_max: u32,
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Requests in flight per connection at most; a request that waits for room still counts
    /// from its scheduled time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// A request unanswered after this long is an error (recorded when it timed out).
    #[arg(long, default_value = "2s")]
    pub timeout: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct EchoResponderArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[arg(long, default_value = query::ECHO_SUBJECT)]
    pub subject: String,
    /// Size of every reply (0: the request's payload).
    #[arg(long, default_value_t = query::ECHO_REPLY_BYTES)]
    pub reply_bytes: usize,
    /// Stop after this long (default: at SIGINT or SIGTERM).
    #[arg(long)]
    pub duration: Option<String>,
}

impl WorkloadArgs {
    pub fn rate_shape(&self, duration: Option<Duration>) -> anyhow::Result<RateShape> {
        let shape = if let Some(ramp) = &self.ramp {
            let parts: Vec<&str> = ramp.split(':').collect();
            let text = match (parts.len(), duration) {
                (3, _) => format!("ramp:{ramp}"),
                (2, Some(d)) => format!("ramp:{ramp}:{}ms", d.as_millis()),
                _ => bail!("--ramp is FROM:TO (with --duration) or FROM:TO:OVER"),
            };
            RateShape::parse(&text)
        } else if let Some(steps) = &self.steps {
            RateShape::parse(&format!("steps:{steps}"))
        } else if let Some(burst) = &self.burst {
            RateShape::parse(&format!("burst:{burst}"))
        } else {
            RateShape::parse(&self.rate)
        };
        shape.map_err(|e| anyhow::anyhow!(e))
    }

    /// The workload these flags describe, for messages on `<subject_prefix>.<p>`.
    pub fn spec(&self, catalog: &Catalog, subject_prefix: &str) -> anyhow::Result<WorkloadSpec> {
        let duration = parse_duration(&self.duration).map_err(|e| anyhow::anyhow!(e))?;
        let limit = match self.events {
            Some(n) => Limit::Events(n),
            None => Limit::Duration(duration.as_nanos() as u64),
        };
        let rate = self.rate_shape(self.events.is_none().then_some(duration))?;
        let meters = match &self.meters {
            Some(mix) => workload::parse_mix(catalog, mix).map_err(|e| anyhow::anyhow!(e))?,
            None => workload::catalog_mix(catalog),
        };
        let base_ts = match &self.base_ts {
            Some(text) => text
                .parse::<Instant>()
                .map_err(|e| anyhow::anyhow!("--base-ts: {e}"))?,
            None => Instant(now_ms()),
        };
        let probe_interval =
            parse_duration(&self.probe_interval).map_err(|e| anyhow::anyhow!(e))?;
        let late_max = parse_duration(&self.late_max).map_err(|e| anyhow::anyhow!(e))?;
        for (name, value) in [
            ("--topup-fraction", self.topup_fraction),
            ("--dup-fraction", self.dup_fraction),
            ("--dup-late-fraction", self.dup_late_fraction),
            ("--malformed-fraction", self.malformed_fraction),
            ("--late-fraction", self.late_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                bail!("{name} must be between 0 and 1");
            }
        }
        if self.topup_fraction
            + self.dup_fraction
            + self.dup_late_fraction
            + self.malformed_fraction
            > 1.0
        {
            bail!(
                "the fractions of top-ups, duplicates and malformed messages add up to more than 1"
            );
        }
        if self.accounts == 0 || self.accounts > workload::ACCOUNTS_MAX {
            bail!("--accounts must be 1..={}", workload::ACCOUNTS_MAX);
        }
        if self.partitions == 0 {
            bail!("--partitions must be > 0");
        }
        if !(self.zipf >= 0.0 && self.zipf.is_finite()) {
            bail!("--zipf must be >= 0");
        }
        if self.quantity_max == 0 {
            bail!("--quantity-max must be > 0");
        }
        Ok(WorkloadSpec {
            seed: self.seed,
            run_id: self.run_id.clone().unwrap_or_else(fresh_run_id),
            base_ts,
            partitions: self.partitions,
            subject_prefix: subject_prefix.to_string(),
            accounts: self.accounts,
            account_prefix: self.account_prefix.clone(),
            zipf: self.zipf,
            meters,
            quantity_max: self.quantity_max,
            grant_amount: self.grant_amount.clone(),
            topup_fraction: self.topup_fraction,
            dup_fraction: self.dup_fraction,
            dup_late_fraction: self.dup_late_fraction,
            malformed_fraction: self.malformed_fraction,
            late_fraction: self.late_fraction,
            late_max_ms: late_max.as_millis() as i64,
            rate,
            limit,
            probe_interval: (!probe_interval.is_zero()).then_some(probe_interval.as_nanos() as u64),
        })
    }

    pub(super) fn rate_text(&self) -> String {
        self.ramp
            .as_ref()
            .map(|r| format!("ramp {r}"))
            .or_else(|| self.steps.as_ref().map(|s| format!("steps {s}")))
            .or_else(|| self.burst.as_ref().map(|b| format!("burst {b}")))
            .unwrap_or_else(|| self.rate.clone())
    }
}
