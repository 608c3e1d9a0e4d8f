//! `creditflow run` and `creditflow export`: the processor, and a dump of a stream for replay.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;

use crate::config::{Config, LogFormat};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The config file (TOML); every key has a default, see config/creditflow.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start from the input stream's first message with empty state, when no valid snapshot
    /// exists (a new deployment on an existing stream, or every snapshot lost).
    #[arg(long)]
    pub rebuild: bool,
    /// Accept a change of this catalog setting (its TOML key as the refusal names it, e.g.
    /// `rules.grants_per_account_max`) since the snapshots, knowingly: messages after the
    /// snapshots are then applied under the new value. Repeatable.
    #[arg(long = "accept-catalog-change", value_name = "KEY")]
    pub accept_catalog_change: Vec<String>,
    /// Print the effective configuration (file + environment over the defaults) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Loads the config and the catalog, reporting every error of either at once.
pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<(Config, crate::catalog::Catalog)> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = crate::config::load(path, &env)
        .map_err(|errors| anyhow::anyhow!("the configuration is invalid:\n{errors}"))?;
    let catalog = crate::catalog::load::from_path(&config.engine.catalog).map_err(|errors| {
        anyhow::anyhow!(
            "catalog {} is invalid:\n{errors}",
            config.engine.catalog.display()
        )
    })?;
    config.check_catalog(&catalog).map_err(|errors| {
        anyhow::anyhow!("the configuration does not fit the catalog:\n{errors}")
    })?;
    Ok((config, catalog))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal; files and log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (inside the
/// runtime), not when it is first polled: a signal that arrives while the processor is still
/// starting then stops it gracefully once it runs, instead of killing it outright.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, interrupt) {
                (Some(mut term), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Opts this process out of transparent huge pages (`engine.huge_pages = false`): mimalloc
/// asks for them, and each 2 MiB page is zeroed whole when first touched, which made growing
/// state (a drain from empty) cost the shards a quarter to a third of their time. Affects
/// faults from now on; a failure is logged and changes nothing else.
fn opt_out_of_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
        let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if result != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not opt out of transparent huge pages; continuing with them"
            );
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (config, catalog) = load(args.config.as_deref())?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    init_logging(&config);
    if !config.engine.huge_pages {
        opt_out_of_huge_pages();
    }
    // The async side is I/O only (NATS, metrics, ticks); the shards and the emitter have
    // threads of their own, so two workers are plenty.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("creditflow-io")
        .build()
        .context("starting the async runtime")?;
    tracing::info!(
        partitions = config.engine.partitions,
        shards = config.shard_count(),
        input = %config.input.stream,
        output = %config.output.stream,
        "starting"
    );
    let shutdown = {
        let _inside = runtime.enter();
        shutdown_signal()
    };
    let summary = match runtime.block_on(crate::processor::run(
        config,
        Arc::new(catalog),
        crate::processor::RunOptions {
            rebuild: args.rebuild,
            accept_catalog_changes: args.accept_catalog_change.clone(),
        },
        shutdown,
    )) {
        Ok(summary) => summary,
        Err(error) => {
            // Threads may still be running (a lost lease stops the processor without draining
            // it): exit without waiting for them.
            runtime.shutdown_background();
            return Err(error.into());
        }
    };
    tracing::info!(?summary, "stopped");
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The config file (for the NATS connection and stream names).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which stream: the input (default) or the output stream.
    #[arg(long, value_parser = ["input", "output"], default_value = "input")]
    pub stream: String,
}

/// Writes every message of a stream as an envelope line (`replay --envelope` reads them).
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let (config, _) = load(args.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = crate::processor::connect_plain(&config, &config.nats.name).await?;
        let context = async_nats::jetstream::new(client);
        let name = if args.stream == "input" {
            &config.input.stream
        } else {
            &config.output.stream
        };
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        for line in export_stream(&context, name).await? {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        Ok(())
    })
}

/// Every message of `stream`, in order, as envelope JSON lines.
pub async fn export_stream(
    context: &async_nats::jetstream::Context,
    stream: &str,
) -> anyhow::Result<Vec<String>> {
    let mut handle = context
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream}"))?;
    let last = handle.info().await?.state.last_sequence;
    let mut lines = Vec::new();
    if last == 0 {
        return Ok(lines);
    }
    let consumer = handle
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .context("timed out reading the stream")?
    {
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let seq = info.stream_sequence;
        let received =
            crate::time::Instant((info.published.unix_timestamp_nanos() / 1_000_000) as i64);
        let mut line = serde_json::Map::new();
        line.insert("seq".into(), seq.into());
        line.insert("subject".into(), message.subject.to_string().into());
        line.insert("received".into(), received.to_string().into());
        match std::str::from_utf8(&message.payload) {
            Ok(text) => line.insert("payload".into(), text.into()),
            Err(_) => line.insert(
                "payload_base64".into(),
                crate::wire::output::base64(&message.payload).into(),
            ),
        };
        lines.push(serde_json::Value::Object(line).to_string());
        if seq >= last {
            break;
        }
    }
    Ok(lines)
}
