//! The service's commands: `loadgen query` (request load against the service's endpoints, or
//! the echo responder, open or closed loop) and `loadgen echo-responder` (the broker's
//! request-reply floor, served until a signal).
//!
//! Owns: checking the query flags, choosing the subject, starting an in-process echo responder
//! when `--endpoint echo` has no external one, and the query report's text, JSON and plot.
//!
//! Must never: measure anything itself (that is `crate::query`), or leave an in-process
//! responder running after the load ends, whether it succeeded or not.

use std::sync::Arc;

use anyhow::{bail, Context as _};

use crate::nats;
use crate::query::{self, Bodies, Endpoint, QueryLimit, QueryOptions};
use crate::report::{percentile_svg, QueryReport};
use crate::schedule::RateShape;
use crate::workload;

use super::{duration_flag, load_catalog, server_version, EchoResponderArgs, QueryArgs};

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
