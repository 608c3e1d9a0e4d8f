//! The `loadgen` binary: parses the command line and runs one subcommand (`loadgen::cli`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = loadgen::cli::Cli::parse();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let passed = runtime.block_on(loadgen::cli::execute(cli, &command_line))?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}
