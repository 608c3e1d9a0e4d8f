//! The commands on the streams: `run` (the workload to the processor, with probes and an
//! optional `--verify`), `raw` (the broker alone: a scratch stream, read back while publishing
//! and drained again), its quiet form [`raw_ceiling`], `fill`, `drain` (fence every partition,
//! time the processor from its first output to the last fence's result), `consume` (a bare
//! consumer over a stream, the input stream by default) and `verify`.
//!
//! Owns: building each command's run options from its flags, the drain's fences, and whether
//! each command passed.
//!
//! Must never: delete a stream other than `raw`'s scratch stream (`--stream`), or count a run
//! whose publishes failed as passed.
//!
//! Invariants: `run`, `raw` and `fill` print and write their report through `write_outputs`;
//! `drain` publishes one fence per partition and returns only when every fence's result has
//! been seen (else it fails at its timeout).

use std::time::Duration;

use anyhow::{bail, Context as _};
use creditflow::time::Instant;
use futures::StreamExt;

use crate::measure::rate;
use crate::nats::{self, INPUT_PREFIX, INPUT_STREAM, OUTPUT_PREFIX, OUTPUT_STREAM};
use crate::report::{Ratio, Report};
use crate::run::{self, Observe, RunOptions};
use crate::schedule::RateShape;
use crate::verify::{self, VerifyOptions};
use crate::workload;

use super::{
    duration_flag, fresh_run_id, load_catalog, now_ms, report_base, server_version, write_outputs,
    ConsumeArgs, DrainArgs, FillArgs, NatsArgs, OutputArgs, RawArgs, RunArgs, VerifyArgs,
    WorkloadArgs,
};

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
