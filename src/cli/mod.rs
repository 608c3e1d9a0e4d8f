//! Command-line subcommands of the `creditflow` binary. Each module owns one subcommand's
//! arguments and printing; the work itself lives in the library modules they call.
pub mod publish;
pub mod replay;
pub mod report;
pub mod run;
pub mod service;
pub mod simulate;
