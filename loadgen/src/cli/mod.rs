//! The subcommands: `run`, `raw`, `fill`, `drain`, `verify`, `baseline postgres|redis`,
//! `query`, `echo-responder`, `sweep`.
//!
//! Owns: the flags (clap), turning them into a [`WorkloadSpec`] and options, and what each
//! subcommand prints and writes (`--report-json`, `--plot`).
//!
//! Must never: do measurement work itself; that lives in `run`, `verify`, `baseline` and
//! `query`.
//!
//! Layout: this file holds [`Cli`], [`Command`], [`execute`] and the helpers the subcommands
//! share (the catalog, run ids, duration flags, the report's common fields, the server's
//! version, writing the report and the plot); `args.rs` the clap argument structs and
//! [`WorkloadArgs`]'s conversion into a spec; `stream.rs` the commands on the processor's
//! streams and the broker's (`run`, `raw`, `fill`, `drain`, `consume`, `verify`, and the raw
//! ceiling `run` and `sweep` measure first); `service.rs` the request load (`query`) and the
//! echo responder; `stores.rs` the PostgreSQL and Redis baselines. `sweep` is `crate::sweep`.
//! Every public item is re-exported here, at the path it had when this was one file.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use creditflow::catalog::Catalog;

use crate::nats;
use crate::report::{percentile_svg, Report};
use crate::schedule::parse_duration;
use crate::workload::WorkloadSpec;

mod args;
mod service;
mod stores;
mod stream;

pub use args::{
    BaselineArgs, ConsumeArgs, DrainArgs, EchoResponderArgs, FillArgs, NatsArgs, OutputArgs,
    QueryArgs, RawArgs, RunArgs, StoreKind, VerifyArgs, WorkloadArgs,
};
pub use service::{echo_responder_command, query_command};
pub use stores::baseline_command;
pub use stream::{
    consume_command, drain, drain_command, fill_command, raw_ceiling, raw_command, run_command,
    verify_command, Drained,
};

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
