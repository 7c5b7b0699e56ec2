//! The `meter` binary: parses the command line, sets up logging, runs, maps the result to an
//! exit status (0 ok, 1 runtime failure, 2 bad usage or configuration).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use meter::cli::{self, Cli, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("METER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(err)) => {
            eprintln!("meter: {err:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("meter: {err:#}");
            ExitCode::from(1)
        }
    }
}
