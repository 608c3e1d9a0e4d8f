//! The `creditflow` binary: parses the command line and runs one subcommand.

use clap::{Parser, Subcommand};
use creditflow::cli::service::{self, ServiceCommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "creditflow",
    version,
    about = "Credit-based pricing stream processor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the processor: consume the input stream, emit outputs, snapshot, recover.
    Run(creditflow::cli::run::RunArgs),
    /// Print every message of the input (or output) stream as envelope JSON lines.
    Export(creditflow::cli::run::ExportArgs),
    /// Apply a JSONL log offline and print the final state and every output.
    Replay(creditflow::cli::replay::ReplayArgs),
    /// The finance report over outputs, per month and credit type: revenue roll-forward
    /// (identity checked), credits consumed and expired, allowances, top-ups, overage, usage.
    Report(creditflow::cli::report::ReportArgs),
    /// Reprice a log under a candidate catalog; compare credits and revenue per account and meter.
    Simulate(creditflow::cli::simulate::SimulateArgs),
    /// Run the pipeline against an in-process log fed by a built-in generator (no NATS needed).
    Demo {
        /// The catalog (TOML).
        #[arg(long, default_value = "config/catalog.toml")]
        catalog: std::path::PathBuf,
        /// Accounts in the generated workload.
        #[arg(long, default_value_t = 10_000)]
        accounts: usize,
        /// Stop after this many messages.
        #[arg(long)]
        messages: Option<u64>,
        /// Stop after this many seconds (default 10 when --messages is not given).
        #[arg(long)]
        seconds: Option<f64>,
        /// Partitions, 1..=4096.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=i64::from(creditflow::config::PARTITIONS_MAX)))]
        partitions: u32,
        /// Shard threads (default: one per available core).
        #[arg(long)]
        shards: Option<usize>,
        #[arg(long, default_value_t = 1024)]
        batch_size_max: usize,
        #[arg(long, default_value_t = 64)]
        queue_batches_max: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Print the closing report as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Serve the dashboard, the HTTP read API (/api/v1/) and /metrics at this address while
        /// the demo runs (e.g. 127.0.0.1:8080); with neither --messages nor --seconds the demo
        /// then runs until Ctrl-C.
        #[arg(long, value_name = "ADDRESS")]
        serve: Option<std::net::SocketAddr>,
        /// Bearer token for /api/ (required when --serve is not a loopback address).
        #[arg(long, requires = "serve")]
        token: Option<String>,
        /// With --serve: messages per second, so balances burn down at a watchable pace (0: as
        /// fast as the shards go).
        #[arg(long, default_value_t = 2000, requires = "serve")]
        rate: u64,
        /// With --serve: keep serving after the workload ends, until Ctrl-C.
        #[arg(long, requires = "serve")]
        keep_running: bool,
    },
    /// Publish usage events (or commands) into the input stream, as a producer does: JSON lines
    /// from a file or standard input, or one `--usage ACCOUNT METER QUANTITY`.
    Publish(creditflow::cli::publish::PublishArgs),
    /// An account's balance: its state, what it can spend now, and the input sequence it
    /// reflects (the running processor's service).
    Balance(service::BalanceArgs),
    /// May the account use this much of a meter now? The price, what is available and the
    /// most it could use; nothing is written or changed.
    Authorize(service::AuthorizeArgs),
    /// The open period's usage per meter and its invoice lines so far.
    Usage(service::UsageArgs),
    /// A dry-run price of an event, for an account or for a new account on a plan.
    Price(service::PriceArgs),
    /// An account's recent charges and the grants that paid each.
    Statement(service::StatementArgs),
    /// Grant credits (a command: written to the input log, answered once applied).
    Grant(service::GrantArgs),
    /// A signed correction of credits, with a reason.
    Adjust(service::AdjustArgs),
    /// Remove what remains of a grant.
    VoidGrant(service::VoidGrantArgs),
    /// Undo a charged usage event.
    Reverse(service::ReverseArgs),
    /// Move the account to another plan.
    SetPlan(service::SetPlanArgs),
    /// Override the account's policy (or clear the override).
    SetPolicy(service::SetPolicyArgs),
    /// Reserve credits for a long-running use.
    Reserve(service::ReserveArgs),
    /// Charge what a hold was used for and release the rest.
    Commit(service::CommitArgs),
    /// Release a hold.
    Release(service::ReleaseArgs),
    /// Print a sample log for config/catalog.toml (seeded, every feature exercised).
    Sample {
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long, default_value_t = 36)]
        accounts: usize,
        #[arg(long, default_value_t = 5000)]
        messages: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => creditflow::cli::run::run(args),
        Command::Export(args) => creditflow::cli::run::export(args),
        Command::Replay(args) => creditflow::cli::replay::run(args),
        Command::Simulate(args) => creditflow::cli::simulate::run(args),
        Command::Report(args) => creditflow::cli::report::run(args),
        Command::Demo {
            catalog,
            accounts,
            messages,
            seconds,
            partitions,
            shards,
            batch_size_max,
            queue_batches_max,
            seed,
            json,
            serve,
            token,
            rate,
            keep_running,
        } => run_demo(
            &catalog,
            creditflow::demo::DemoSettings {
                accounts,
                messages,
                duration: match (messages, seconds) {
                    (_, Some(seconds)) => {
                        Some(std::time::Duration::from_secs_f64(seconds.max(0.0)))
                    }
                    (None, None) if serve.is_none() => Some(std::time::Duration::from_secs(10)),
                    _ => None,
                },
                partitions,
                shards: shards
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                batch_size_max,
                queue_batches_max,
                seed,
                progress: !json,
                serve: serve.map(|listen| creditflow::demo::DemoServe {
                    listen,
                    token,
                    rate,
                    keep_running,
                }),
            },
            json,
        ),
        Command::Sample {
            seed,
            accounts,
            messages,
        } => print_sample(seed, accounts, messages),
        Command::Publish(a) => creditflow::cli::publish::run(a),
        Command::Balance(a) => service::run(ServiceCommand::Balance(a)),
        Command::Authorize(a) => service::run(ServiceCommand::Authorize(a)),
        Command::Usage(a) => service::run(ServiceCommand::Usage(a)),
        Command::Price(a) => service::run(ServiceCommand::Price(a)),
        Command::Statement(a) => service::run(ServiceCommand::Statement(a)),
        Command::Grant(a) => service::run(ServiceCommand::Grant(a)),
        Command::Adjust(a) => service::run(ServiceCommand::Adjust(a)),
        Command::VoidGrant(a) => service::run(ServiceCommand::VoidGrant(a)),
        Command::Reverse(a) => service::run(ServiceCommand::Reverse(a)),
        Command::SetPlan(a) => service::run(ServiceCommand::SetPlan(a)),
        Command::SetPolicy(a) => service::run(ServiceCommand::SetPolicy(a)),
        Command::Reserve(a) => service::run(ServiceCommand::Reserve(a)),
        Command::Commit(a) => service::run(ServiceCommand::Commit(a)),
        Command::Release(a) => service::run(ServiceCommand::Release(a)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("creditflow: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_sample(seed: u64, accounts: usize, messages: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in creditflow::sample::scenario(seed, accounts, messages) {
        writeln!(out, "{line}")?;
    }
    Ok(out.flush()?)
}

fn run_demo(
    catalog: &std::path::Path,
    settings: creditflow::demo::DemoSettings,
    json: bool,
) -> anyhow::Result<()> {
    let catalog = creditflow::catalog::load::from_path(catalog)
        .map_err(|errors| anyhow::anyhow!("catalog {} is invalid:\n{errors}", catalog.display()))?;
    if !json {
        eprintln!(
            "creditflow demo: {} accounts, {} partitions on {} shards, generating messages in process (no NATS)...",
            settings.accounts, settings.partitions, settings.shards
        );
    }
    let report = creditflow::demo::run(std::sync::Arc::new(catalog), &settings)?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
