//! The command line: clap definitions and one function per subcommand.

pub mod budget;
pub mod ca;
pub mod init;
pub mod ledger;
pub mod prices;
pub mod report;
pub mod review;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, ConfigSource};

#[derive(Debug, Parser)]
#[command(
    name = "meter",
    version,
    about = "Usage-metering and spend-monitoring sidecar for AI agents",
    long_about = "Usage-metering and spend-monitoring sidecar for AI agents.\n\nPoint an agent's base URL at meter (e.g. OPENAI_BASE_URL=http://127.0.0.1:8787/openai/v1); meter forwards every call untouched, reads the token usage from the response and records one row per call in a SQLite ledger."
)]
pub struct Cli {
    /// Configuration file [default: ./meter.toml when it exists, else built-in defaults]
    #[arg(long, global = true, env = "METER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// SQLite ledger file; overrides `store.path`
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, the metrics endpoint and the ledger writer
    Serve(serve::ServeArgs),
    /// Write a commented meter.toml with every key at its default
    Init(init::InitArgs),
    /// The rate table: list it, check the ledger for unpriced models, import LiteLLM prices
    Prices {
        #[command(subcommand)]
        command: prices::PricesCommand,
    },
    /// Recompute stored costs with today's rate table (after adding or changing a price)
    Reprice(prices::RepriceArgs),
    /// A period's usage and spend: per agent, provider, model or route
    Report(report::ReportArgs),
    /// The quarterly routing review: direct, router or local, with the dollars behind each
    Review(review::ReviewArgs),
    /// Budgets: their spend, limit, forecast and the alerts sent this period
    Budget {
        #[command(subcommand)]
        command: budget::BudgetCommand,
    },
    /// Email alerts: send a test email
    Alert {
        #[command(subcommand)]
        command: budget::AlertCommand,
    },
    /// The ledger itself: copy a SQLite ledger into a shared PostgreSQL one
    Ledger {
        #[command(subcommand)]
        command: ledger::LedgerCommand,
    },
    /// The local CA of forward-proxy mode: create it, print its certificate's path
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
}

/// A failure, classified for the exit status: 2 for usage or configuration, 1 for runtime.
#[derive(Debug)]
pub enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(err: ConfigError) -> Self {
        Failure::Usage(err.into())
    }
}

impl Cli {
    /// Loads the configuration the global flags point at, with `--db` applied.
    pub fn load_config(&self) -> Result<Config, Failure> {
        let source = ConfigSource::resolve(self.config.as_deref());
        let mut config = Config::load(&source)?;
        if let Some(db) = &self.db {
            config.store.path = db.clone();
        }
        Ok(config)
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Serve(args) => serve::run(&cli, args),
        Command::Init(args) => init::run(args),
        Command::Prices { command } => prices::run(&cli, command),
        Command::Reprice(args) => prices::reprice(&cli, args),
        Command::Report(args) => report::run(&cli, args),
        Command::Review(args) => review::run(&cli, args),
        Command::Budget { command } => budget::run_budget(&cli, command),
        Command::Alert { command } => budget::run_alert(&cli, command),
        Command::Ledger { command } => ledger::run(&cli, command),
        Command::Ca { command } => ca::run(&cli, command),
    }
}

/// Opens the ledger a reading command works on: it must exist (only `meter serve` creates one).
pub fn open_ledger(config: &Config) -> Result<crate::ledger::db::Db, Failure> {
    if config.store.url.is_some() {
        return crate::ledger::writer::store(&config.store)
            .and_then(|store| store.open())
            .map_err(|e| Failure::Runtime(e.into()));
    }
    if !config.store.path.exists() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "no ledger at {} (store.path): meter serve creates it with the first call",
            config.store.path.display()
        )));
    }
    crate::ledger::writer::open_connection(&config.store.path, config.store.busy_timeout)
        .map(crate::ledger::db::Db::Sqlite)
        .map_err(|e| Failure::Runtime(e.into()))
}

/// Where the ledger is, for messages: the PostgreSQL URL (password hidden) or the file.
pub fn ledger_name(config: &Config) -> String {
    match &config.store.url {
        Some(url) => crate::ledger::db::redact_url(url),
        None => config.store.path.display().to_string(),
    }
}

/// Writes command output to stdout; a closed pipe (`meter prices list | head`) is not an error.
pub fn print(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(Failure::Runtime(err.into())),
    }
}
