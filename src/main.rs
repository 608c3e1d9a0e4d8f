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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => creditflow::cli::replay::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("creditflow: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
