//! The subcommands: `run`, `raw`, `fill`, `drain`, `verify`, `baseline postgres|redis`,
//! `query`, `echo-responder`, `sweep`.
//!
//! Owns: the flags (clap), turning them into a [`WorkloadSpec`] and options, and what each
//! subcommand prints and writes (`--report-json`, `--plot`).
//!
//! Must never: do measurement work itself; that lives in `run`, `verify`, `baseline` and
//! `query`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use creditflow::catalog::Catalog;
use creditflow::time::Instant;
use futures::StreamExt;

use crate::baseline::{self, BaselineResult};
use crate::measure::rate;
use crate::nats::{self, INPUT_PREFIX, INPUT_STREAM, OUTPUT_PREFIX, OUTPUT_STREAM};
use crate::query::{self, Bodies, Endpoint, QueryLimit, QueryOptions};
use crate::report::{percentile_svg, QueryReport, Ratio, Report};
use crate::run::{self, Observe, RunOptions};
use crate::schedule::{parse_duration, RateShape};
use crate::verify::{self, VerifyOptions};
use crate::workload::{self, Limit, WorkloadSpec};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for creditflow: open-loop workloads on NATS JetStream, end-to-end \
             latency probes, the broker's raw ceiling, verification against the engine, and \
             PostgreSQL/Redis baselines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Publish the workload to the processor's input stream; measure publish acks and
    /// end-to-end latency through probes; live line; closing report (`--verify` at the end).
    Run(RunArgs),
    /// The broker's ceiling with no processor: the same workload to a scratch stream, read back
    /// by a bare pull consumer while publishing, then drained again from the start.
    Raw(RawArgs),
    /// Publish the workload to the input stream as fast as possible (for drain benchmarks).
    Fill(FillArgs),
    /// Measure how fast the processor drains the input stream: start this, then the processor.
    Drain(DrainArgs),
    /// Read the input stream from its first message with a bare consumer that does nothing:
    /// the broker's delivery ceiling for that very stream, to compare a drain with.
    Consume(ConsumeArgs),
    /// Compare the processor's outputs with the engine replaying the input stream.
    Verify(VerifyArgs),
    /// The same debits done without creditflow: PostgreSQL transactions or Redis Lua.
    Baseline(BaselineArgs),
    /// Request load against the service (balance, authorize) or the echo responder: open loop
    /// from a fixed schedule (latency from each request's scheduled time), or closed loop at
    /// `--rate max` (service time).
    Query(QueryArgs),
    /// Answer every request on a subject with a fixed body, doing nothing else: the broker's
    /// request-reply floor that `query --endpoint echo --echo-external` loads.
    EchoResponder(EchoResponderArgs),
    /// Latency against offered load: the raw ceiling first, then at each level (default 10, 25,
    /// 50, 75, 90% of it) the broker alone and the processor at that rate; a table and an SVG.
    Sweep(crate::sweep::SweepArgs),
}

/// What to generate.
#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// The catalog the meter mix and prices come from.
    #[arg(long, default_value = "config/catalog.toml")]
    pub catalog: PathBuf,
    /// Partition count of the processor (subjects creditflow.in.<p>).
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// A fresh run id: the wall clock in base 36 (milliseconds).
pub fn fresh_run_id() -> String {
    base36(now_ms() as u64)
}

pub fn load_catalog(path: &std::path::Path) -> anyhow::Result<Arc<Catalog>> {
    creditflow::catalog::load::from_path(path)
        .map(Arc::new)
        .map_err(|errors| anyhow::anyhow!("catalog {}: {errors}", path.display()))
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

    fn rate_text(&self) -> String {
        self.ramp
            .as_ref()
            .map(|r| format!("ramp {r}"))
            .or_else(|| self.steps.as_ref().map(|s| format!("steps {s}")))
            .or_else(|| self.burst.as_ref().map(|b| format!("burst {b}")))
            .unwrap_or_else(|| self.rate.clone())
    }
}

fn duration_flag(text: &str, flag: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn report_base(
    mode: &str,
    command_line: &str,
    workload: &WorkloadArgs,
    spec: &WorkloadSpec,
    nats: &NatsArgs,
    server: &str,
) -> Report {
    Report {
        mode: mode.to_string(),
        command: command_line.to_string(),
        nats_server: server.to_string(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seed: spec.seed,
        run_id: spec.run_id.clone(),
        partitions: spec.partitions,
        connections: nats.connections,
        window: nats.window,
        rate: workload.rate_text(),
        accounts: spec.accounts,
        zipf: spec.zipf,
        ..Default::default()
    }
}

async fn server_version(url: &str) -> anyhow::Result<String> {
    let client = nats::connect(url).await?;
    Ok(client.server_info().version)
}

fn write_outputs(report: &Report, output: &OutputArgs) -> anyhow::Result<()> {
    print!("{}", report.to_text());
    if let Some(path) = &output.report_json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  report: {}", path.display());
    }
    if let Some(path) = &output.plot {
        let mut series = vec![("publish → ack", &report.ack_histogram)];
        if let Some(e2e) = &report.e2e_histogram {
            series.insert(0, ("end to end (probe due → result seen)", e2e));
        }
        let title = format!(
            "loadgen {} · {} · {}",
            report.mode, report.rate, report.run_id
        );
        std::fs::write(path, percentile_svg(&title, &series))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  plot: {}", path.display());
    }
    Ok(())
}

/// Runs one subcommand; `Ok(false)` when it ran but failed its check (exit status 1).
pub async fn execute(cli: Cli, command_line: &str) -> anyhow::Result<bool> {
    match cli.command {
        Command::Run(args) => run_command(args, command_line).await.map(|r| r.1),
        Command::Raw(args) => raw_command(args, command_line).await.map(|r| r.1),
        Command::Fill(args) => fill_command(args, command_line).await.map(|r| r.1),
        Command::Drain(args) => drain_command(args).await,
        Command::Consume(args) => consume_command(args).await,
        Command::Verify(args) => verify_command(args).await,
        Command::Baseline(args) => baseline_command(args, command_line).await.map(|_| true),
        Command::Query(args) => query_command(args, command_line).await.map(|r| r.1),
        Command::EchoResponder(args) => echo_responder_command(args).await,
        Command::Sweep(args) => crate::sweep::sweep_command(args, command_line)
            .await
            .map(|r| r.1),
    }
}

/// `loadgen query`: the report, and whether every request was answered (ok or 404).
pub async fn query_command(
    args: QueryArgs,
    command_line: &str,
) -> anyhow::Result<(QueryReport, bool)> {
    let rate = RateShape::parse(&args.rate).map_err(|e| anyhow::anyhow!("--rate: {e}"))?;
    let limit = match args.requests {
        Some(n) => QueryLimit::Requests(n),
        None => {
            QueryLimit::Duration(duration_flag(&args.duration, "--duration")?.as_nanos() as u64)
        }
    };
    if args.accounts == 0 || args.accounts > workload::ACCOUNTS_MAX {
        bail!("--accounts must be 1..={}", workload::ACCOUNTS_MAX);
    }
    if !(args.zipf >= 0.0 && args.zipf.is_finite()) {
        bail!("--zipf must be >= 0");
    }
    if args.connections == 0 || args.concurrency == 0 {
        bail!("--connections and --concurrency must be > 0");
    }
    let timeout = duration_flag(&args.timeout, "--timeout")?;
    if timeout.is_zero() {
        bail!("--timeout must be > 0");
    }
    let meters = if args.endpoint == Endpoint::Authorize {
        let catalog = load_catalog(&args.catalog)?;
        match &args.meters {
            Some(mix) => workload::parse_mix(&catalog, mix).map_err(|e| anyhow::anyhow!(e))?,
            None => workload::catalog_mix(&catalog),
        }
    } else {
        Vec::new()
    };
    let subject = match args.endpoint {
        Endpoint::Echo => args.echo_subject.clone(),
        endpoint => creditflow::service::query_subject(&args.subject_prefix, endpoint.name()),
    };
    let server = server_version(&args.nats_url).await?;
    let responder = if args.endpoint == Endpoint::Echo && !args.echo_external {
        let client = nats::connect(&args.nats_url).await?;
        Some(query::echo_responder(client, &subject, args.reply_bytes).await?)
    } else {
        None
    };
    let options = QueryOptions {
        nats_url: args.nats_url.clone(),
        subject: subject.clone(),
        bodies: Bodies {
            seed: args.seed,
            accounts: args.accounts,
            account_prefix: args.account_prefix.clone(),
            zipf: (args.zipf > 0.0)
                .then(|| Arc::new(workload::Zipf::new(args.accounts, args.zipf))),
            meters,
            quantity_max: args.quantity_max,
        },
        rate,
        limit,
        connections: args.connections,
        concurrency: args.concurrency,
        timeout,
        live: !args.output.quiet,
        stats_endpoint: (args.endpoint != Endpoint::Echo).then(|| args.endpoint.name().to_string()),
    };
    let result = query::execute(options).await;
    if let Some(responder) = responder {
        responder.stop();
    }
    let result = result?;
    let report = QueryReport {
        mode: "query".into(),
        command: command_line.to_string(),
        nats_server: server,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        endpoint: args.endpoint.name().into(),
        subject,
        seed: args.seed,
        accounts: args.accounts,
        connections: args.connections,
        concurrency: args.concurrency,
        rate: args.rate.clone(),
        timeout_ms: timeout.as_secs_f64() * 1e3,
        ..Default::default()
    }
    .from_result(&result);
    print!("{}", report.to_text());
    if let Some(path) = &args.output.report_json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  report: {}", path.display());
    }
    if let Some(path) = &args.output.plot {
        let mut series = vec![("latency", &report.latency_histogram)];
        if !report.closed_loop {
            series[0].0 = "from the scheduled time (open loop)";
            series.push(("from the actual send", &report.service_histogram));
        }
        let title = format!("loadgen query {} · rate {}", report.endpoint, report.rate);
        std::fs::write(path, percentile_svg(&title, &series))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  plot: {}", path.display());
    }
    let passed = report.errors == 0 && report.requests > 0;
    Ok((report, passed))
}

/// `loadgen echo-responder`: serves until SIGINT/SIGTERM (or --duration).
pub async fn echo_responder_command(args: EchoResponderArgs) -> anyhow::Result<bool> {
    let client = nats::connect(&args.nats_url).await?;
    let responder = query::echo_responder(client, &args.subject, args.reply_bytes).await?;
    eprintln!(
        "loadgen echo-responder: answering {} with {} bytes",
        args.subject,
        if args.reply_bytes == 0 {
            "the request's".to_string()
        } else {
            args.reply_bytes.to_string()
        }
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stop_after = match &args.duration {
        Some(text) => Some(duration_flag(text, "--duration")?),
        None => None,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        _ = async {
            match stop_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        } => {}
    }
    eprintln!(
        "loadgen echo-responder: {} requests answered",
        responder.stop()
    );
    Ok(true)
}

/// The broker's ceilings measured now with the same workload flags (`raw --rate max`, quiet,
/// no files): its report.
pub async fn raw_ceiling(
    workload: &WorkloadArgs,
    nats: &NatsArgs,
    events: u64,
    command_line: &str,
) -> anyhow::Result<Report> {
    let mut workload = workload.clone();
    workload.rate = "max".into();
    workload.ramp = None;
    workload.steps = None;
    workload.burst = None;
    workload.events = Some(events);
    let args = RawArgs {
        workload,
        nats: nats.clone(),
        output: OutputArgs {
            report_json: None,
            plot: None,
            quiet: true,
        },
        stream: "LOADGEN_RAW".into(),
        keep_stream: false,
    };
    let (report, passed) =
        raw_command(args, &format!("{command_line} (raw ceiling first)")).await?;
    if !passed {
        bail!("measuring the raw ceiling failed");
    }
    Ok(report)
}

pub async fn run_command(args: RunArgs, command_line: &str) -> anyhow::Result<(Report, bool)> {
    let ceiling = match args.raw_ceiling {
        Some(events) => Some(raw_ceiling(&args.workload, &args.nats, events, command_line).await?),
        None => None,
    };
    let catalog = load_catalog(&args.workload.catalog)?;
    let spec = args.workload.spec(&catalog, INPUT_PREFIX)?;
    let server = server_version(&args.nats.nats_url).await?;
    if args.nats.create_streams {
        let js = nats::jetstream(nats::connect(&args.nats.nats_url).await?, 16);
        nats::ensure_stream(
            &js,
            OUTPUT_STREAM,
            &format!("{OUTPUT_PREFIX}.>"),
            true,
            Duration::from_secs(120),
        )
        .await?;
    }
    let options = RunOptions {
        workload: spec.clone(),
        nats_url: args.nats.nats_url.clone(),
        connections: args.nats.connections,
        window: args.nats.window,
        stream: INPUT_STREAM.to_string(),
        create_stream: args.nats.create_streams,
        duplicate_window: Duration::from_secs(120),
        observe: Observe::ProcessorResults {
            output_prefix: OUTPUT_PREFIX.to_string(),
        },
        drain_timeout: duration_flag(&args.nats.drain_timeout, "--drain-timeout")?,
        live: !args.output.quiet,
    };
    let result = run::execute(options).await?;
    let mut report = report_base(
        "run",
        command_line,
        &args.workload,
        &spec,
        &args.nats,
        &server,
    )
    .from_run(&result, spec.rate.is_max());
    if let Some(ceiling) = &ceiling {
        report.ratios.push(Ratio {
            name: format!(
                "achieved / raw publish ceiling ({:.0}/s, same run)",
                ceiling.publish_per_s
            ),
            value: report.publish_per_s / ceiling.publish_per_s.max(1e-9),
        });
    }
    let mut passed = result.publish.errors == 0;
    if report.probes_sent > 0 && report.probes_answered == 0 {
        eprintln!(
            "loadgen: no probe was answered: is the processor running and reading {INPUT_STREAM}?"
        );
        passed = false;
    }
    if args.verify {
        let client = nats::connect(&args.nats.nats_url).await?;
        let outcome = verify::verify(
            &client,
            catalog.clone(),
            &VerifyOptions {
                partitions: spec.partitions,
                input_stream: INPUT_STREAM.to_string(),
                input_prefix: INPUT_PREFIX.to_string(),
                output_stream: OUTPUT_STREAM.to_string(),
                output_prefix: OUTPUT_PREFIX.to_string(),
                fence_id: format!("{}v", spec.run_id),
                fence_timeout: duration_flag(&args.fence_timeout, "--fence-timeout")?,
                diff_max: args.diff_max,
                expect_run: Some((spec.run_id.clone(), result.stored())),
            },
        )
        .await?;
        if !outcome.passed() {
            eprint!("{}", outcome.render());
            passed = false;
        }
        report.verify = Some(outcome.summary());
        report.verify_passed = Some(outcome.passed());
    }
    write_outputs(&report, &args.output)?;
    Ok((report, passed))
}

pub async fn raw_command(args: RawArgs, command_line: &str) -> anyhow::Result<(Report, bool)> {
    let catalog = load_catalog(&args.workload.catalog)?;
    let spec = args.workload.spec(&catalog, "loadgen.raw.in")?;
    let server = server_version(&args.nats.nats_url).await?;
    let js = nats::jetstream(nats::connect(&args.nats.nats_url).await?, 16);
    // A scratch stream: whatever an earlier run left is removed first.
    let _ = js.delete_stream(&args.stream).await;
    let options = RunOptions {
        workload: spec.clone(),
        nats_url: args.nats.nats_url.clone(),
        connections: args.nats.connections,
        window: args.nats.window,
        stream: args.stream.clone(),
        create_stream: true,
        duplicate_window: Duration::from_secs(120),
        observe: Observe::StreamReader,
        drain_timeout: duration_flag(&args.nats.drain_timeout, "--drain-timeout")?,
        live: !args.output.quiet,
    };
    let result = run::execute(options).await?;
    let mut report = report_base(
        "raw",
        command_line,
        &args.workload,
        &spec,
        &args.nats,
        &server,
    )
    .from_run(&result, spec.rate.is_max());

    // The consume ceiling: read everything stored back from the start, nothing else running.
    let stored = result.stored();
    let consumer = nats::reader(&js, &args.stream, 1).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(nats::READ_BATCH)
        .messages()
        .await
        .context("starting the drain reader")?;
    let started = std::time::Instant::now();
    let mut drained = 0u64;
    while drained < stored {
        match tokio::time::timeout(nats::READ_IDLE_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(_))) => drained += 1,
            Ok(Some(Err(e))) => bail!("draining {}: {e}", args.stream),
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    drop(messages);
    report.drain_messages = Some(drained);
    report.drain_per_s = Some(rate(drained, elapsed.as_nanos() as u64));
    if let Some(consumed) = report.consume_concurrent_per_s {
        report.ratios.push(Ratio {
            name: "consume while publishing / publish".into(),
            value: consumed / report.publish_per_s.max(1e-9),
        });
    }
    if !args.keep_stream {
        js.delete_stream(&args.stream)
            .await
            .context("deleting the scratch stream")?;
    }
    let passed = result.publish.errors == 0 && report.consumed.unwrap_or(0) >= stored;
    if report.consumed.unwrap_or(0) < stored {
        eprintln!(
            "loadgen: the reader saw {} of {stored} stored messages within --drain-timeout",
            report.consumed.unwrap_or(0)
        );
    }
    write_outputs(&report, &args.output)?;
    Ok((report, passed))
}

pub async fn fill_command(args: FillArgs, command_line: &str) -> anyhow::Result<(Report, bool)> {
    let catalog = load_catalog(&args.workload.catalog)?;
    let mut spec = args.workload.spec(&catalog, INPUT_PREFIX)?;
    spec.rate = RateShape::Max;
    spec.probe_interval = None;
    let server = server_version(&args.nats.nats_url).await?;
    let options = RunOptions {
        workload: spec.clone(),
        nats_url: args.nats.nats_url.clone(),
        connections: args.nats.connections,
        window: args.nats.window,
        stream: INPUT_STREAM.to_string(),
        create_stream: args.nats.create_streams,
        duplicate_window: Duration::from_secs(120),
        observe: Observe::Nothing,
        drain_timeout: Duration::ZERO,
        live: !args.output.quiet,
    };
    let result = run::execute(options).await?;
    let report = report_base(
        "fill",
        command_line,
        &args.workload,
        &spec,
        &args.nats,
        &server,
    )
    .from_run(&result, true);
    write_outputs(&report, &args.output)?;
    Ok((report, result.publish.errors == 0))
}

/// What `drain` measured.
#[derive(Clone, Debug)]
pub struct Drained {
    /// Messages in the input stream when the fences were published.
    pub messages: u64,
    /// From the first output seen to the last fence's result.
    pub elapsed: Duration,
    pub outputs_seen: u64,
}

impl Drained {
    pub fn per_s(&self) -> f64 {
        rate(self.messages, self.elapsed.as_nanos() as u64)
    }
}

/// Fences every partition at the end of the input stream, calls `ready` (start the processor
/// then), and times the processor from its first output to the last fence's result.
pub async fn drain(
    client: &async_nats::Client,
    partitions: u32,
    timeout: Duration,
    ready: impl FnOnce(u64),
) -> anyhow::Result<Drained> {
    let js = nats::jetstream(client.clone(), 64);
    let mut outputs = client
        .subscribe(format!("{OUTPUT_PREFIX}.>"))
        .await
        .context("subscribing to outputs")?;
    client.flush().await?;
    let mut input = js.get_stream(INPUT_STREAM).await?;
    let messages = input.info().await?.state.messages;
    let fence = fresh_run_id();
    let accounts = workload::probe_accounts(partitions);
    let mut waiting = std::collections::HashSet::new();
    for p in 0..partitions {
        let id = format!("fence-{fence}d-{p}");
        let account = &accounts[p as usize];
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        js.publish_with_headers(
            creditflow::wire::subject::subject(
                INPUT_PREFIX,
                p,
                creditflow::wire::subject::SubjectKind::Command,
            ),
            headers,
            workload::release_payload(&id, account, Instant(now_ms())),
        )
        .await?
        .await?;
        waiting.insert(format!("result:{account}:{id}"));
    }
    ready(messages);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first: Option<std::time::Instant> = None;
    let mut outputs_seen = 0u64;
    while !waiting.is_empty() {
        let message = match tokio::time::timeout_at(deadline, outputs.next()).await {
            Ok(Some(message)) => message,
            _ => bail!("timed out with {} partitions not drained", waiting.len()),
        };
        first.get_or_insert_with(std::time::Instant::now);
        outputs_seen += 1;
        if let Some(id) = run::output_id(&message.payload) {
            waiting.remove(run::result_key(id));
        }
    }
    Ok(Drained {
        messages,
        elapsed: first.map_or(Duration::ZERO, |f| f.elapsed()),
        outputs_seen,
    })
}

pub async fn drain_command(args: DrainArgs) -> anyhow::Result<bool> {
    let client = nats::connect(&args.nats_url).await?;
    let timeout = duration_flag(&args.timeout, "--timeout")?;
    let partitions = args.partitions;
    let drained = drain(&client, partitions, timeout, |messages| {
        eprintln!(
            "loadgen drain: {messages} messages in {INPUT_STREAM}; fenced {partitions} partitions; start the processor now"
        )
    })
    .await?;
    println!(
        "drain: {} input messages in {:.3} s (first output to last fence) = {:.0} messages/s; {} outputs seen",
        drained.messages,
        drained.elapsed.as_secs_f64(),
        drained.per_s(),
        drained.outputs_seen
    );
    Ok(true)
}

pub async fn consume_command(args: ConsumeArgs) -> anyhow::Result<bool> {
    let client = nats::connect(&args.nats_url).await?;
    let js = nats::jetstream(client, 1);
    let last = nats::last_sequence(&js, &args.stream).await?;
    let started = std::time::Instant::now();
    let mut bytes = 0u64;
    let count = nats::read_stream(&js, &args.stream, last, |stored| {
        bytes += stored.payload.len() as u64;
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "consume: {count} messages ({bytes} payload bytes) of {} read by a bare consumer in {elapsed:.3} s = {:.0} messages/s",
        args.stream,
        count as f64 / elapsed.max(1e-9)
    );
    Ok(count == last)
}

pub async fn verify_command(args: VerifyArgs) -> anyhow::Result<bool> {
    let catalog = load_catalog(&args.catalog)?;
    let client = nats::connect(&args.nats_url).await?;
    let outcome = verify::verify(
        &client,
        catalog,
        &VerifyOptions {
            partitions: args.partitions,
            input_stream: INPUT_STREAM.to_string(),
            input_prefix: INPUT_PREFIX.to_string(),
            output_stream: OUTPUT_STREAM.to_string(),
            output_prefix: OUTPUT_PREFIX.to_string(),
            fence_id: fresh_run_id(),
            fence_timeout: duration_flag(&args.fence_timeout, "--fence-timeout")?,
            diff_max: args.diff_max,
            expect_run: None,
        },
    )
    .await?;
    print!("{}", outcome.render());
    Ok(outcome.passed())
}

pub async fn baseline_command(
    args: BaselineArgs,
    command_line: &str,
) -> anyhow::Result<BaselineResult> {
    let catalog = load_catalog(&args.workload.catalog)?;
    let spec = args.workload.spec(&catalog, INPUT_PREFIX)?;
    let plan = baseline::plan(&catalog, spec.clone());
    let connections = args.connections.max(1);
    let result = match args.store {
        StoreKind::Postgres => {
            baseline::PostgresStore::prepare(&args.postgres).await?;
            let mut stores = Vec::new();
            for _ in 0..connections {
                stores.push(baseline::PostgresStore::connect(&args.postgres).await?);
            }
            let (result, stores) = baseline::drive("postgres", stores, &plan).await?;
            drop(stores);
            baseline::PostgresStore::cleanup(&args.postgres).await?;
            result
        }
        StoreKind::Redis => {
            let namespace = format!("loadgen:{}", spec.run_id);
            let mut stores = Vec::new();
            for _ in 0..connections {
                stores.push(baseline::RedisStore::connect(&args.redis, &namespace).await?);
            }
            let (result, mut stores) = baseline::drive("redis", stores, &plan).await?;
            stores[0].cleanup(&plan).await?;
            result
        }
    };
    println!("loadgen baseline {:?} — {command_line}", args.store);
    println!(
        "  {} operations ({} applied, {} rejected, {} duplicates; {} malformed refused before the store) over {} connections in {:.2} s",
        result.operations,
        result.applied,
        result.rejected,
        result.duplicates,
        result.refused_before_store,
        result.connections,
        result.elapsed_s
    );
    println!("  rate: {:.0} events/s", result.per_s);
    println!(
        "  per event (closed loop, each connection waits for its answer): {}",
        crate::report::percentiles_line(&result.latency)
    );
    if let Some(path) = &args.report_json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(result)
}
