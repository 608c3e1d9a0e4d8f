//! The `creditflow` binary: parses the command line and runs one subcommand.

use clap::{Parser, Subcommand};

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
    /// Apply a JSONL log offline and print the final state and every output.
    Replay(creditflow::cli::replay::ReplayArgs),
    /// Reprice a log under a candidate catalog; compare credits and revenue per account and meter.
    Simulate(creditflow::cli::simulate::SimulateArgs),
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
        Command::Replay(args) => creditflow::cli::replay::run(args),
        Command::Simulate(args) => creditflow::cli::simulate::run(args),
        Command::Sample {
            seed,
            accounts,
            messages,
        } => print_sample(seed, accounts, messages),
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
