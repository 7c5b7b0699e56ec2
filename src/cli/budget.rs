//! `meter budget status` and `meter alert test` (SPEC §8).

use anyhow::Context as _;
use serde_json::json;

use super::report::Format;
use super::{print, Cli, Failure};
use crate::alert::{self, email, outbox};
use crate::budget::{current_period, forecast, spend_in};
use crate::clock::Clock;
use crate::config::{Config, Unpriced};
use crate::ledger::query;
use crate::money::format_usd;

#[derive(Debug, clap::Subcommand)]
pub enum BudgetCommand {
    /// Each budget: period, spend, limit, forecast, thresholds crossed
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, clap::Subcommand)]
pub enum AlertCommand {
    /// Send one test email through the configured SMTP server
    Test(TestArgs),
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Recipient (repeatable) [default: every address in [[budget]] notify and
    /// [report.weekly] to]
    #[arg(long, value_name = "ADDRESS")]
    pub to: Vec<String>,
}

pub fn run_budget(cli: &Cli, command: &BudgetCommand) -> Result<(), Failure> {
    match command {
        BudgetCommand::Status(args) => status(cli, args),
    }
}

pub fn run_alert(cli: &Cli, command: &AlertCommand) -> Result<(), Failure> {
    match command {
        AlertCommand::Test(args) => test(cli, args),
    }
}

/// One budget's figures now, read from the ledger (every meter writing to it).
struct Status {
    json: serde_json::Value,
    row: Vec<String>,
}

fn status(cli: &Cli, args: &StatusArgs) -> Result<(), Failure> {
    let config = cli.load_config()?;
    let clock = Clock::from_env().map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
    let now = clock.now();
    if config.budgets.is_empty() {
        return match args.format {
            Format::Json => print(&format!(
                "{}\n",
                json!({"timezone": config.timezone.name(), "budgets": []})
            )),
            _ => print("no budgets configured (add [[budget]] entries to meter.toml)\n"),
        };
    }
    let mut conn = super::open_ledger(&config)?;
    let statuses = read_statuses(&config, &mut conn, now)
        .with_context(|| format!("reading {}", super::ledger_name(&config)))
        .map_err(Failure::Runtime)?;
    let text = match args.format {
        Format::Json => {
            let value = json!({
                "timezone": config.timezone.name(),
                "generated_at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "budgets": statuses.iter().map(|s| s.json.clone()).collect::<Vec<_>>(),
            });
            let mut text = serde_json::to_string_pretty(&value)
                .context("encoding the status")
                .map_err(Failure::Runtime)?;
            text.push('\n');
            text
        }
        Format::Csv => {
            let mut text = HEADER.join(",");
            text.push('\n');
            for status in &statuses {
                let cells: Vec<String> = status
                    .row
                    .iter()
                    .map(|c| crate::report::csv_cell(c))
                    .collect();
                text.push_str(&cells.join(","));
                text.push('\n');
            }
            text
        }
        Format::Table | Format::Markdown => render_table(
            &statuses.iter().map(|s| s.row.clone()).collect::<Vec<_>>(),
            args.format == Format::Markdown,
        ),
    };
    print(&text)
}

const HEADER: [&str; 9] = [
    "budget", "period", "scope", "spend", "limit", "used", "forecast", "enforce", "alerts",
];

fn read_statuses(
    config: &Config,
    conn: &mut crate::ledger::db::Db,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<Status>> {
    let tz = config.timezone;
    let mut statuses = Vec::new();
    let mut read: Vec<(crate::report::Period, Vec<query::ScopeRow>)> = Vec::new();
    for budget in &config.budgets {
        let period = current_period(budget.period, now, tz);
        let index = match read.iter().position(|(p, _)| *p == period) {
            Some(i) => i,
            None => {
                read.push((period.clone(), query::scope_sums(conn, &period, true)?));
                read.len() - 1
            }
        };
        let rows = &read[index].1;
        let figures = spend_in(budget, rows);
        let (spend, unpriced) = (figures.nanos, figures.unpriced);
        let forecast = forecast(spend, &period, now, budget.forecast_min_elapsed);
        let claimed = outbox::claimed(conn, &budget.name, &period.label)?;
        let alert_of = |kind: &str, detail: &str| {
            claimed
                .iter()
                .find(|c| c.kind == kind && c.detail == detail)
        };
        let used = spend as f64 / budget.limit_nanos as f64;
        let thresholds: Vec<serde_json::Value> = budget
            .alert_at
            .iter()
            .map(|f| {
                let detail = alert::format_fraction(*f);
                let claim = alert_of("threshold", &detail);
                json!({
                    "at": f,
                    "crossed": spend >= alert::threshold_nanos(budget.limit_nanos, *f),
                    "alert": claim.map(|c| c.status.clone()),
                    "alert_sent_at": claim.and_then(|c| c.sent_at.clone()),
                    "alert_attempts": claim.map(|c| c.attempts),
                    "alert_error": claim.and_then(|c| c.last_error.clone()),
                })
            })
            .collect();
        let forecast_claim = alert_of("forecast", "");
        let (top_agents, top_models) = alert::top_spenders(budget, rows, 5);
        let spenders = |list: &[email::Spender]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|s| json!({"name": s.name, "cost_usd": s.cost_nanos as f64 / 1e9, "requests": s.requests}))
                .collect()
        };
        let state = if spend >= budget.limit_nanos {
            "over"
        } else if forecast.is_some_and(|f| f > budget.limit_nanos) {
            "forecast_over"
        } else {
            "ok"
        };
        let scope = &budget.scope;
        let json = json!({
            "name": budget.name,
            "period": period.to_json(),
            "scope": {
                "agent": scope.agent,
                "provider": scope.provider,
                "model": scope.model,
                "route": scope.route.map(|r| r.as_str()),
            },
            "limit_usd": budget.limit_nanos as f64 / 1e9,
            "spend_usd": spend as f64 / 1e9,
            "remaining_usd": (budget.limit_nanos - spend).max(0) as f64 / 1e9,
            "used_fraction": used,
            "elapsed_fraction": period.elapsed_fraction(now),
            "forecast_usd": forecast.map(|f| f as f64 / 1e9),
            "state": state,
            "enforce": budget.enforce,
            "unpriced": match budget.unpriced { Unpriced::Allow => "allow", Unpriced::Block => "block" },
            "unpriced_calls": unpriced,
            "unread_calls": figures.unread,
            "thresholds": thresholds,
            "forecast_alert": budget.forecast_alert.then(|| json!({
                "alert": forecast_claim.map(|c| c.status.clone()),
                "alert_sent_at": forecast_claim.and_then(|c| c.sent_at.clone()),
            })),
            "notify": budget.notify,
            "top_agents": spenders(&top_agents),
            "top_models": spenders(&top_models),
        });
        let alerts: Vec<String> = budget
            .alert_at
            .iter()
            .filter(|f| spend >= alert::threshold_nanos(budget.limit_nanos, **f))
            .map(|f| {
                let detail = alert::format_fraction(*f);
                let state = alert_of("threshold", &detail)
                    .map(|c| c.status.clone())
                    .unwrap_or_else(|| "due".to_string());
                format!("{}% {state}", alert::format_fraction(f * 100.0))
            })
            .chain(forecast_claim.map(|c| format!("forecast {}", c.status)))
            .collect();
        let row = vec![
            budget.name.clone(),
            format!("{} {}", budget.period.as_str(), period.label),
            scope.describe(),
            format_usd(spend),
            format_usd(budget.limit_nanos),
            format!("{:.1}%", used * 100.0),
            forecast.map(format_usd).unwrap_or_else(|| "-".to_string()),
            if budget.enforce { "yes" } else { "no" }.to_string(),
            if alerts.is_empty() {
                "-".to_string()
            } else {
                alerts.join(", ")
            },
        ];
        statuses.push(Status { json, row });
    }
    Ok(statuses)
}

fn render_table(rows: &[Vec<String>], markdown: bool) -> String {
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    // Money and percentages read right-aligned.
    let right = |i: usize| (3..=6).contains(&i);
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if right(i) {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        if markdown {
            format!("| {} |\n", padded.join(" | "))
        } else {
            format!("{}\n", padded.join("  ").trim_end())
        }
    };
    let mut out = line(HEADER.iter().map(|h| h.to_uppercase()).collect());
    if markdown {
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if right(i) {
                    format!("{}:", "-".repeat((*w).max(2) - 1))
                } else {
                    "-".repeat((*w).max(1))
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
    }
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn test(cli: &Cli, args: &TestArgs) -> Result<(), Failure> {
    let config = cli.load_config()?;
    let mut to: Vec<String> = if args.to.is_empty() {
        config
            .budgets
            .iter()
            .flat_map(|b| b.notify.iter().cloned())
            .chain(config.weekly.iter().flat_map(|w| w.to.iter().cloned()))
            .collect()
    } else {
        args.to.clone()
    };
    let mut seen = std::collections::HashSet::new();
    to.retain(|address| seen.insert(address.clone()));
    if to.is_empty() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "no recipients: pass --to ADDRESS, or set notify in a [[budget]] or to in [report.weekly]"
        )));
    }
    let smtp = &config.smtp;
    let server = format!("{}:{} (tls = {})", smtp.host, smtp.port, smtp.tls.as_str());
    let mailer = crate::mail::Mailer::new(smtp).map_err(|e| Failure::Usage(e.into()))?;
    let rendered = email::test_email(chrono::Utc::now(), &server);
    let message = crate::mail::Email {
        to: to.clone(),
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .map_err(Failure::Runtime)?;
    runtime
        .block_on(mailer.send(&message))
        .map_err(|e| Failure::Runtime(e.into()))?;
    print(&format!(
        "sent a test email to {} through {server}\n",
        to.join(", ")
    ))
}
