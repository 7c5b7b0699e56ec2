//! `meter report`: a period's usage and spend from the ledger (SPEC §7).

use std::io::IsTerminal;

use anyhow::Context as _;
use chrono::{NaiveDate, Utc};

use super::{print, Cli, Failure};
use crate::ledger::query;
use crate::report::{GroupBy, Period, PeriodKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
    Markdown,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("period").args(["week", "month", "quarter", "since"]).multiple(false)))]
pub struct ReportArgs {
    /// An ISO week, YYYY-Www [default: the current one]
    #[arg(long, value_name = "YYYY-Www", num_args = 0..=1, default_missing_value = "")]
    pub week: Option<String>,
    /// A month, YYYY-MM [default: the current one]
    #[arg(long, value_name = "YYYY-MM", num_args = 0..=1, default_missing_value = "")]
    pub month: Option<String>,
    /// A quarter, YYYY-Qn [default: the current one]
    #[arg(long, value_name = "YYYY-Qn", num_args = 0..=1, default_missing_value = "")]
    pub quarter: Option<String>,
    /// First day of a custom range (with --until)
    #[arg(long, value_name = "YYYY-MM-DD", requires = "until")]
    pub since: Option<NaiveDate>,
    /// Last day of a custom range, included
    #[arg(long, value_name = "YYYY-MM-DD", requires = "since")]
    pub until: Option<NaiveDate>,
    /// Group by any of agent, provider, model, route
    #[arg(long, value_name = "COLUMNS", default_value = "agent,provider,model")]
    pub by: String,
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// The period the flags name, in `tz`; the current month when none is given.
pub fn period_of(
    week: Option<&str>,
    month: Option<&str>,
    quarter: Option<&str>,
    range: Option<(NaiveDate, NaiveDate)>,
    tz: chrono_tz::Tz,
    now: chrono::DateTime<Utc>,
) -> Result<Period, Failure> {
    let pick = |kind: PeriodKind, value: &str, form: &str| {
        let period = if value.is_empty() {
            Period::current(kind, now, tz)
        } else {
            Period::parse(kind, value, tz)
        };
        period.ok_or_else(|| {
            Failure::Usage(anyhow::anyhow!(
                "--{}: {value:?} is not a {} ({form})",
                kind.as_str(),
                kind.as_str()
            ))
        })
    };
    match (week, month, quarter, range) {
        (Some(w), _, _, _) => pick(PeriodKind::Week, w, "YYYY-Www, e.g. 2026-W48"),
        (_, Some(m), _, _) => pick(PeriodKind::Month, m, "YYYY-MM, e.g. 2026-11"),
        (_, _, Some(q), _) => pick(PeriodKind::Quarter, q, "YYYY-Qn, e.g. 2026-Q4"),
        (_, _, _, Some((since, until))) => Period::custom(since, until, tz).ok_or_else(|| {
            Failure::Usage(anyhow::anyhow!("--since {since} is after --until {until}"))
        }),
        _ => pick(PeriodKind::Month, "", ""),
    }
}

pub fn run(cli: &Cli, args: &ReportArgs) -> Result<(), Failure> {
    let config = cli.load_config()?;
    let by = GroupBy::parse_list(&args.by).map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
    let now = Utc::now();
    let tz = config.timezone;
    let period = period_of(
        args.week.as_deref(),
        args.month.as_deref(),
        args.quarter.as_deref(),
        args.since.zip(args.until),
        tz,
        now,
    )?;
    let mut conn = super::open_ledger(&config)?;
    let report = query::build_report(&mut conn, &period, &by, tz, now)
        .with_context(|| format!("reading {}", super::ledger_name(&config)))
        .map_err(Failure::Runtime)?;
    let text = match args.format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&report.to_json())
                .context("encoding the report")
                .map_err(Failure::Runtime)?;
            text.push('\n');
            text
        }
        Format::Csv => report.to_csv(),
        Format::Markdown => report.to_text(true, false),
        Format::Table => {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            report.to_text(false, colour)
        }
    };
    print(&text)
}
