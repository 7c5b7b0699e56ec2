//! `meter review`: the quarterly routing review (SPEC §7).

use anyhow::Context as _;
use chrono::Utc;

use super::report::{period_of, Format};
use super::{print, Cli, Failure};
use crate::ledger::query;
use crate::review::{review, WhatIf};

#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// The quarter to review, YYYY-Qn [default: the current one]
    #[arg(long, value_name = "YYYY-Qn", num_args = 0..=1, default_missing_value = "")]
    pub quarter: Option<String>,
    /// Reprice an agent's measured usage on another model or provider:
    /// agent=A,model=M or agent=A,provider=P
    #[arg(long, value_name = "agent=A,model=M")]
    pub what_if: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub fn run(cli: &Cli, args: &ReviewArgs) -> Result<(), Failure> {
    let config = cli.load_config()?;
    let what_if = args
        .what_if
        .as_deref()
        .map(WhatIf::parse)
        .transpose()
        .map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
    let now = Utc::now();
    let quarter = Some(args.quarter.as_deref().unwrap_or(""));
    let period = period_of(None, None, quarter, None, config.timezone, now)?;
    let table = config.rate_table()?;
    let mut conn = super::open_ledger(&config)?;
    let thresholds = &config.review;
    let groups = query::review_groups(
        &mut conn,
        &period,
        thresholds.local_max_output_tokens,
        (thresholds.local_min_call_usd * 1e9).round() as i64,
    )
    .with_context(|| format!("reading {}", super::ledger_name(&config)))
    .map_err(Failure::Runtime)?;
    let today = now.with_timezone(&config.timezone).date_naive();
    let result = review(&config, &table, period, &groups, today, what_if.as_ref());
    let text = match args.format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&result.to_json())
                .context("encoding the review")
                .map_err(Failure::Runtime)?;
            text.push('\n');
            text
        }
        Format::Csv => result.to_csv(),
        Format::Markdown => result.to_text(true),
        Format::Table => result.to_text(false),
    };
    print(&text)
}
