//! `meter prices list | check | import FILE` and `meter reprice`: the rate table and the ledger
//! costs that depend on it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{NaiveDate, TimeZone, Utc};

use super::{print, Cli, Failure};
use crate::config::Config;
use crate::ledger::query;
use crate::money::{format_rate, format_usd, group_thousands};
use crate::pricing::{litellm, Layer, PriceFile, RateEntry};

#[derive(Debug, clap::Subcommand)]
pub enum PricesCommand {
    /// The rate table in force today: every model's price and where it comes from
    List {
        /// Only this provider's entries (and `*` ones)
        #[arg(long)]
        provider: Option<String>,
        /// Also list entries no longer in force and entries shadowed by a higher layer
        #[arg(long)]
        all: bool,
    },
    /// Models in the ledger that have no price, with their calls and tokens
    Check,
    /// Merge a LiteLLM model_prices_and_context_window.json into the prices_file
    Import {
        /// The LiteLLM price file
        file: PathBuf,
        /// Date the imported prices take effect [default: today]
        #[arg(long, value_name = "YYYY-MM-DD")]
        effective: Option<NaiveDate>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RepriceArgs {
    /// First day to reprice (UTC)
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub since: NaiveDate,
    /// Last day to reprice (UTC), included [default: no end]
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub until: Option<NaiveDate>,
    /// Show what would change without writing it
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cli: &Cli, command: &PricesCommand) -> Result<(), Failure> {
    let config = cli.load_config()?;
    match command {
        PricesCommand::List { provider, all } => list(&config, provider.as_deref(), *all),
        PricesCommand::Check => check(&config),
        PricesCommand::Import { file, effective } => import(&config, file, *effective),
    }
}

fn list(config: &Config, provider: Option<&str>, all: bool) -> Result<(), Failure> {
    let table = config.rate_table()?;
    let today = Utc::now().date_naive();
    // In force: per (provider, model pattern), the highest layer, then the latest date.
    let mut in_force: BTreeMap<(String, String), &RateEntry> = BTreeMap::new();
    let mut shown = Vec::new();
    for entry in table.entries() {
        let entry_provider = entry.provider.as_deref().unwrap_or("*");
        if provider
            .is_some_and(|p| !p.eq_ignore_ascii_case(entry_provider) && entry_provider != "*")
        {
            continue;
        }
        if all {
            shown.push(entry);
            continue;
        }
        if entry.effective > today {
            continue;
        }
        let key = (entry_provider.to_string(), entry.model.as_str().to_string());
        let better = match in_force.get(&key) {
            None => true,
            Some(current) => {
                (entry.layer, std::cmp::Reverse(entry.effective))
                    < (current.layer, std::cmp::Reverse(current.effective))
            }
        };
        if better {
            in_force.insert(key, entry);
        }
    }
    if !all {
        shown = in_force.into_values().collect();
    }
    let rate = |r: Option<i128>| r.map(format_rate).unwrap_or_else(|| "-".to_string());
    let mut rows = vec![[
        "PROVIDER",
        "MODEL",
        "INPUT",
        "OUTPUT",
        "CACHE READ",
        "CACHE WRITE",
        "WRITE 1H",
        "EFFECTIVE",
        "LAYER",
        "SOURCE",
    ]
    .map(str::to_string)];
    for entry in &shown {
        let units = if entry.per_image.is_empty() && entry.per_audio_second.is_none() {
            String::new()
        } else {
            " (per unit)".to_string()
        };
        rows.push([
            entry.provider.clone().unwrap_or_else(|| "*".into()),
            format!(
                "{}{}",
                entry.model.as_str(),
                if entry.tiers.is_empty() {
                    ""
                } else {
                    " (tiered)"
                }
            ),
            format!("{}{units}", rate(Some(entry.rates.input))),
            rate(Some(entry.rates.output)),
            rate(entry.rates.cache_read),
            rate(entry.rates.cache_write),
            rate(entry.rates.cache_write_1h),
            entry.effective.to_string(),
            entry.layer.as_str().to_string(),
            entry.source.clone().unwrap_or_default(),
        ]);
    }
    let mut out = format_table(&rows);
    out.push_str(&format!(
        "{} entries; USD per 1M tokens; `-` falls back to the provider's documented cache price\n",
        shown.len()
    ));
    print(&out)
}

fn check(config: &Config) -> Result<(), Failure> {
    let mut conn = super::open_ledger(config)?;
    let unpriced = query::unpriced_models(&mut conn)
        .with_context(|| format!("reading {}", super::ledger_name(config)))
        .map_err(Failure::Runtime)?;
    if unpriced.is_empty() {
        return print("every call in the ledger with known usage is priced\n");
    }
    let table = config.rate_table()?;
    let today = Utc::now().date_naive();
    let mut rows = vec![[
        "PROVIDER", "MODEL", "CALLS", "TOKENS", "FIRST", "LAST", "NOW",
    ]
    .map(str::to_string)];
    let mut fixable = None::<String>;
    for model in &unpriced {
        let name = model.model.clone().unwrap_or_else(|| "(unknown)".into());
        let now_priced = model
            .model
            .as_deref()
            .and_then(|m| table.lookup(&model.provider, m, today))
            .map(|e| e.id.clone());
        if now_priced.is_some() {
            let first = model.first_ts.get(..10).unwrap_or("").to_string();
            fixable = Some(fixable.map_or(first.clone(), |f: String| f.min(first)));
        }
        rows.push([
            model.provider.clone(),
            name,
            group_thousands(model.calls),
            group_thousands(model.tokens),
            model.first_ts.get(..10).unwrap_or("").to_string(),
            model.last_ts.get(..10).unwrap_or("").to_string(),
            now_priced.map_or("no price".to_string(), |id| format!("priced by {id}")),
        ]);
    }
    let mut out = format_table(&rows);
    out.push_str(&format!("{} models without a price\n", unpriced.len()));
    if let Some(since) = fixable {
        out.push_str(&format!(
            "some now have a price: run `meter reprice --since {since}` to cost their calls\n"
        ));
    }
    print(&out)
}

fn import(config: &Config, file: &PathBuf, effective: Option<NaiveDate>) -> Result<(), Failure> {
    let effective = effective.unwrap_or_else(|| Utc::now().date_naive());
    let json = std::fs::read(file)
        .with_context(|| format!("reading {}", file.display()))
        .map_err(Failure::Runtime)?;
    let imported = litellm::parse(&json, effective)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("{}: {e}", file.display())))?;
    let target = &config.prices_file;
    let mut existing = if target.is_file() {
        let text = std::fs::read_to_string(target)
            .with_context(|| format!("reading {}", target.display()))
            .map_err(Failure::Runtime)?;
        // Refuse to rewrite a file meter cannot read back.
        crate::pricing::parse_price_file(&text, Layer::File)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("{}: {e}", target.display())))?;
        toml::from_str::<PriceFile>(&text)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("{}: {e}", target.display())))?
            .price
    } else {
        Vec::new()
    };
    let skipped = imported.skipped.len();
    let report = litellm::merge(&mut existing, imported.prices);
    let mut text = format!(
        "# meter prices_file: [[price]] entries (USD per 1M tokens) over the built-in table.\n# Last merged from {} by `meter prices import`, effective {effective}.\n\n",
        file.display()
    );
    text.push_str(
        &toml::to_string(&PriceFile { price: existing })
            .context("encoding the prices file")
            .map_err(Failure::Runtime)?,
    );
    // Write beside the target and rename, so a crash never leaves half a file.
    let partial = target.with_extension("toml.partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, target))
        .with_context(|| format!("writing {}", target.display()))
        .map_err(Failure::Runtime)?;
    let mut out = format!(
        "{}: {} added, {} changed, {} unchanged, {} skipped\n",
        target.display(),
        report.added.len(),
        report.changed.len(),
        report.unchanged.len(),
        skipped
    );
    for name in &report.changed {
        out.push_str(&format!("  changed {name} (new price from {effective})\n"));
    }
    for name in report.added.iter().take(20) {
        out.push_str(&format!("  added {name}\n"));
    }
    if report.added.len() > 20 {
        out.push_str(&format!(
            "  ... and {} more added\n",
            report.added.len() - 20
        ));
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (_, reason) in &imported.skipped {
        let kind = if reason.starts_with("provider") {
            "provider not one of meter's".to_string()
        } else if reason.starts_with("duplicate") {
            "another LiteLLM key names the same model".to_string()
        } else if reason.starts_with("not billed by token") {
            "not billed by token (images, audio by the second, ...)".to_string()
        } else if reason.starts_with("invalid") {
            "invalid prices".to_string()
        } else {
            reason.clone()
        };
        *reasons.entry(kind).or_default() += 1;
    }
    for (reason, count) in reasons {
        out.push_str(&format!("  skipped {count}: {reason}\n"));
    }
    print(&out)
}

pub fn reprice(cli: &Cli, args: &RepriceArgs) -> Result<(), Failure> {
    let config = cli.load_config()?;
    let table = config.rate_table()?;
    let mut conn = super::open_ledger(&config)?;
    let day =
        |date: NaiveDate| Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default());
    let started = std::time::Instant::now();
    let report = query::reprice(
        &mut conn,
        &table,
        &|name| config.provider_pricing(name),
        day(args.since),
        args.until.and_then(|u| u.succ_opt()).map(day),
        args.dry_run,
    )
    .with_context(|| format!("repricing {}", super::ledger_name(&config)))
    .map_err(Failure::Runtime)?;
    let verb = if args.dry_run {
        "would change"
    } else {
        "changed"
    };
    print(&format!(
        "{} rows from {}{}: {verb} {}\ncost before {} -> after {} ({} unpriced before, {} after) in {:.1}s\n",
        group_thousands(report.rows),
        args.since,
        args.until.map(|u| format!(" to {u}")).unwrap_or_default(),
        group_thousands(report.changed),
        format_usd(report.cost_before_nanos),
        format_usd(report.cost_after_nanos),
        group_thousands(report.unpriced_before),
        group_thousands(report.unpriced_after),
        started.elapsed().as_secs_f64(),
    ))
}

/// Left-aligned columns separated by two spaces.
pub fn format_table<const N: usize>(rows: &[[String; N]]) -> String {
    format_rows(rows.iter().map(|r| r.as_slice()))
}

fn format_rows<'a>(rows: impl Iterator<Item = &'a [String]> + Clone) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows.clone() {
        for (i, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            if widths.len() <= i {
                widths.push(width);
            } else {
                widths[i] = widths[i].max(width);
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
