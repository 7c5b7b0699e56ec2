//! Read and maintenance queries on the ledger for the CLI (`prices check`, `reprice`), reports,
//! budgets and the metrics' start. Written once over [`Db`], in SQL both backends understand
//! (conditions are summed as `CASE WHEN ... THEN 1 ELSE 0 END`, which PostgreSQL needs). They
//! open their own connection; the serving process's writer is unaffected beyond the locks.

use chrono::{DateTime, NaiveDate, Utc};

use super::db::{Db, DbError, Row};
use crate::args;

use super::format_ts;
use crate::pricing::{price_call, ProviderPricing, RateTable};
use crate::usage::{Quantities, Usage};

/// Models with usage but no cost in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpricedModel {
    pub provider: String,
    pub model: Option<String>,
    pub calls: u64,
    pub tokens: u64,
    pub first_ts: String,
    pub last_ts: String,
}

/// Every (provider, model) with calls recorded unpriced (usage known, cost not), most calls first.
pub fn unpriced_models(db: &mut Db) -> Result<Vec<UnpricedModel>, DbError> {
    let rows = db.query(
        "SELECT provider, model, count(*),
                sum(input_tokens + cache_read_tokens + cache_write_tokens + output_tokens),
                min(ts), max(ts)
         FROM usage
         WHERE cost_nanos IS NULL AND usage_status != 'missing'
         GROUP BY provider, model
         ORDER BY count(*) DESC, provider, model",
        &[],
    )?;
    rows.iter()
        .map(|row| {
            Ok(UnpricedModel {
                provider: row.get(0)?,
                model: row.get(1)?,
                calls: row.get::<i64>(2)?.max(0) as u64,
                tokens: row.get::<Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
                first_ts: row.get(4)?,
                last_ts: row.get(5)?,
            })
        })
        .collect()
}

/// What `reprice` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepriceReport {
    pub rows: u64,
    pub changed: u64,
    pub cost_before_nanos: i64,
    pub cost_after_nanos: i64,
    pub unpriced_before: u64,
    pub unpriced_after: u64,
}

/// Rows a batch reads and rewrites in one transaction: short enough that a running meter's
/// writer waits at most a moment for the lock.
const REPRICE_BATCH: i64 = 20_000;

/// Recomputes the stored cost of every row from `since` (inclusive) to `until` (exclusive),
/// with today's rate table: the same pricing function the writer uses. With `dry_run`, only
/// reports what would change.
pub fn reprice(
    db: &mut Db,
    table: &RateTable,
    provider_pricing: &dyn Fn(&str) -> ProviderPricing,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<RepriceReport, DbError> {
    let since = format_ts(&since);
    let until = until
        .map(|u| format_ts(&u))
        .unwrap_or_else(|| "9999".to_string());
    let mut report = RepriceReport::default();
    let mut after_id = 0i64;
    loop {
        let last = db.transaction(|tx| {
        let mut changes = Vec::new();
        let mut last = None;
        {
            let rows = tx.query(
                "SELECT id, ts, provider, model, usage_status, input_tokens, cache_read_tokens,
                        cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens,
                        images, image_size, image_quality, audio_input_tokens, audio_output_tokens,
                        audio_seconds, web_search_calls, reported_cost_nanos, cost_nanos,
                        cost_source, price_id, table_cost_nanos
                 FROM usage WHERE id > ?1 AND ts >= ?2 AND ts < ?3 ORDER BY id LIMIT ?4",
                &args![after_id, since.as_str(), until.as_str(), REPRICE_BATCH],
            )?;
            for row in &rows {
                let id: i64 = row.get(0)?;
                last = Some(id);
                let ts: String = row.get(1)?;
                let date = DateTime::parse_from_rfc3339(&ts)
                    .map(|t| t.with_timezone(&Utc).date_naive())
                    .unwrap_or_else(|_| {
                        ts.get(..10)
                            .and_then(|d| d.parse::<NaiveDate>().ok())
                            .unwrap_or_default()
                    });
                let provider: String = row.get(2)?;
                let model: Option<String> = row.get(3)?;
                let status: String = row.get(4)?;
                let n = |i: usize| -> Result<u64, DbError> {
                    Ok(row.get::<Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
                };
                let usage = Usage {
                    input_tokens: n(5)?,
                    cache_read_tokens: n(6)?,
                    cache_write_tokens: n(7)?,
                    cache_write_1h_tokens: n(8)?,
                    output_tokens: n(9)?,
                    reasoning_tokens: n(10)?,
                };
                let quantities = Quantities {
                    images: n(11)?,
                    image_size: row.get(12)?,
                    image_quality: row.get(13)?,
                    audio_input_tokens: n(14)?,
                    audio_output_tokens: n(15)?,
                    audio_millis: row
                        .get::<Option<f64>>(16)?
                        .map_or(0, |s| (s * 1000.0).round().max(0.0) as u64),
                    web_search_calls: n(17)?,
                };
                let before: (Option<i64>, Option<String>, Option<String>, Option<i64>) =
                    (row.get(19)?, row.get(20)?, row.get(21)?, row.get(22)?);
                // A cost meter did not compute from the table (reported by the provider, or
                // written by hand into the ledger) is kept as the call's reported cost.
                let reported: Option<i64> =
                    row.get::<Option<i64>>(18)?
                        .or(match before.1.as_deref() {
                            None | Some("provider_reported") => before.0,
                            Some(_) => None,
                        });
                let priced = price_call(
                    table,
                    &provider,
                    provider_pricing(&provider),
                    model.as_deref(),
                    date,
                    (status != "missing").then_some(&usage),
                    &quantities,
                    reported,
                );
                report.rows += 1;
                report.cost_before_nanos += before.0.unwrap_or(0);
                report.cost_after_nanos += priced.cost_nanos.unwrap_or(0);
                let needs_price = status != "missing";
                report.unpriced_before += u64::from(before.0.is_none() && needs_price);
                report.unpriced_after += u64::from(priced.unpriced);
                let after = (
                    priced.cost_nanos,
                    priced.cost_source.map(str::to_string),
                    priced.price_id,
                    priced.table_cost_nanos,
                );
                if after != before {
                    report.changed += 1;
                    changes.push((id, after));
                }
            }
        }
        if !dry_run {
            for (id, (cost, source, price_id, table_cost)) in changes {
                let usd = cost.map(|n| n as f64 / 1e9);
                tx.execute(
                    "UPDATE usage SET cost_nanos = ?2, cost_usd = ?3, cost_source = ?4, price_id = ?5,
                        table_cost_nanos = ?6
                     WHERE id = ?1",
                    &args![id, cost, usd, source, price_id, table_cost],
                )?;
            }
        }
        Ok(last)
        })?;
        match last {
            Some(id) => after_id = id,
            None => break,
        }
    }
    Ok(report)
}

/// The ledger's first call, if any (`reprice` without `--since` starts there).
pub fn first_ts(db: &mut Db) -> Result<Option<String>, DbError> {
    match db.query_opt("SELECT min(ts) FROM usage", &[])? {
        Some(row) => row.get(0),
        None => Ok(None),
    }
}

/// Where report figures are read from: the hourly rollup when the period is made of whole UTC
/// hours (any time zone with a whole-hour offset), else the rows themselves.
enum Source {
    Rollup { from: String, to: String },
    Rows { from: String, to: String },
}

impl Source {
    /// Like `of`, but reads the rows when the rollup disagrees with them on the number of
    /// calls (an `INSERT OR REPLACE` by hand skips the delete trigger).
    fn checked(db: &mut Db, period: &crate::report::Period) -> Result<Source, DbError> {
        let source = Source::of(period);
        if let Source::Rollup { from, to } = &source {
            let rolled: i64 = db
                .query_one(
                    "SELECT coalesce(sum(requests), 0) FROM usage_hourly WHERE hour >= ?1 AND hour < ?2",
                    &args![from.as_str(), to.as_str()],
                )?
                .get(0)?;
            let counted: i64 = db
                .query_one(
                    "SELECT count(*) FROM usage WHERE ts >= ?1 AND ts < ?2",
                    &args![format_ts(&period.start), format_ts(&period.end)],
                )?
                .get(0)?;
            if rolled != counted {
                tracing::warn!(
                    rollup = rolled,
                    rows = counted,
                    "the hourly rollup disagrees with the ledger rows; reading the rows"
                );
                return Ok(Source::Rows {
                    from: format_ts(&period.start),
                    to: format_ts(&period.end),
                });
            }
        }
        Ok(source)
    }

    fn of(period: &crate::report::Period) -> Source {
        use chrono::Timelike;
        let whole_hour =
            |t: &DateTime<Utc>| t.minute() == 0 && t.second() == 0 && t.nanosecond() == 0;
        if whole_hour(&period.start) && whole_hour(&period.end) {
            Source::Rollup {
                from: period.start.format("%Y-%m-%dT%H").to_string(),
                to: period.end.format("%Y-%m-%dT%H").to_string(),
            }
        } else {
            Source::Rows {
                from: format_ts(&period.start),
                to: format_ts(&period.end),
            }
        }
    }

    fn bounds(&self) -> (&str, &str) {
        match self {
            Source::Rollup { from, to } | Source::Rows { from, to } => (from, to),
        }
    }

    /// `FROM ... WHERE` over the period.
    fn scope(&self) -> &'static str {
        match self {
            Source::Rollup { .. } => "FROM usage_hourly WHERE hour >= ?1 AND hour < ?2",
            Source::Rows { .. } => "FROM usage WHERE ts >= ?1 AND ts < ?2",
        }
    }

    /// The sums behind `report::Figures`, in the order `figures_from_row` reads them.
    fn figures(&self) -> &'static str {
        match self {
            Source::Rollup { .. } => "sum(requests), sum(errors), sum(input_tokens), sum(cache_read_tokens),
                sum(cache_write_tokens), sum(cache_write_1h_tokens), sum(output_tokens),
                sum(reasoning_tokens), sum(cost_nanos), sum(unpriced_requests),
                sum(estimated_requests), sum(missing_requests)",
            Source::Rows { .. } => "count(*), sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END),
                sum(input_tokens), sum(cache_read_tokens),
                sum(cache_write_tokens), sum(cache_write_1h_tokens), sum(output_tokens), sum(reasoning_tokens),
                sum(cost_nanos), sum(CASE WHEN cost_nanos IS NULL AND usage_status != 'missing' THEN 1 ELSE 0 END),
                sum(CASE WHEN usage_status = 'estimated' THEN 1 ELSE 0 END),
                sum(CASE WHEN usage_status = 'missing' THEN 1 ELSE 0 END)",
        }
    }

    /// A group column; a model the ledger does not know reads as `(unknown)`.
    fn key(&self, by: crate::report::GroupBy) -> &'static str {
        match (self, by) {
            (Source::Rollup { .. }, crate::report::GroupBy::Model) => "model",
            (Source::Rows { .. }, crate::report::GroupBy::Model) => {
                "coalesce(nullif(model, ''), '(unknown)')"
            }
            (_, other) => other.column(),
        }
    }
}

/// Latency percentiles read at most about this many calls per distribution: larger periods
/// are sampled uniformly by row id (evaluated on the `ts` index, so skipped rows are never read).
const LATENCY_SAMPLE: u64 = 50_000;

fn figures_from_row(row: &Row, first: usize) -> Result<crate::report::Figures, DbError> {
    let n = |i: usize| -> Result<u64, DbError> {
        Ok(row.get::<Option<i64>>(first + i)?.unwrap_or(0).max(0) as u64)
    };
    Ok(crate::report::Figures {
        requests: n(0)?,
        errors: n(1)?,
        input_tokens: n(2)?,
        cache_read_tokens: n(3)?,
        cache_write_tokens: n(4)?,
        cache_write_1h_tokens: n(5)?,
        output_tokens: n(6)?,
        reasoning_tokens: n(7)?,
        cost_nanos: row.get::<Option<i64>>(first + 8)?.unwrap_or(0),
        unpriced_requests: n(9)?,
        estimated_requests: n(10)?,
        missing_requests: n(11)?,
    })
}

fn row_keys(row: &Row, count: usize) -> Result<Vec<String>, DbError> {
    (0..count)
        .map(|i| Ok(row.get::<Option<String>>(i)?.unwrap_or_default()))
        .collect()
}

/// The groups of a report period: sums per group, and latency and time-to-first-byte
/// distributions.
pub fn report_groups(
    db: &mut Db,
    period: &crate::report::Period,
    by: &[crate::report::GroupBy],
) -> Result<Vec<crate::report::Group>, DbError> {
    let source = Source::checked(db, period)?;
    let (from, to) = source.bounds();
    let keys: Vec<&str> = by.iter().map(|b| source.key(*b)).collect();
    let select_keys = keys.iter().map(|k| format!("{k}, ")).collect::<String>();
    let group_keys = if keys.is_empty() {
        String::new()
    } else {
        format!("GROUP BY {}", keys.join(", "))
    };
    let sql = format!(
        "SELECT {select_keys}{} {} {group_keys}",
        source.figures(),
        source.scope()
    );
    let mut groups: Vec<crate::report::Group> = db
        .query(&sql, &args![from, to])?
        .iter()
        .map(|row| {
            Ok(crate::report::Group {
                keys: row_keys(row, keys.len())?,
                figures: figures_from_row(row, keys.len())?,
                latency: Vec::new(),
                ttfb: Vec::new(),
            })
        })
        .collect::<Result<_, DbError>>()?;
    groups.retain(|g| g.figures.requests > 0);
    let index: std::collections::HashMap<Vec<String>, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.keys.clone(), i))
        .collect();
    // Percentiles come from the rows (the rollup keeps no latencies), sampled on big periods.
    let total: u64 = groups.iter().map(|g| g.figures.requests).sum();
    let every = total.div_ceil(LATENCY_SAMPLE).max(1) as i64;
    let raw_keys: Vec<&str> = by
        .iter()
        .map(|b| {
            Source::Rows {
                from: String::new(),
                to: String::new(),
            }
            .key(*b)
        })
        .collect();
    let raw_select = raw_keys
        .iter()
        .map(|k| format!("{k}, "))
        .collect::<String>();
    for (kind, column) in [(0u8, "latency_ms"), (1, "ttft_ms")] {
        let bucket = super::schema::LATENCY_BUCKET.replace("{c}", column);
        let sql = format!(
            "SELECT {raw_select}{bucket} AS bucket, count(*) FROM usage
             WHERE ts >= ?1 AND ts < ?2 AND {column} IS NOT NULL AND id % ?3 = 0
             GROUP BY {raw_select}bucket"
        );
        let rows = db.query(
            &sql,
            &args![format_ts(&period.start), format_ts(&period.end), every],
        )?;
        for row in &rows {
            let key = row_keys(row, keys.len())?;
            let value: i64 = row.get(keys.len())?;
            let count: i64 = row.get(keys.len() + 1)?;
            if let (Some(&i), true) = (index.get(&key), count > 0) {
                let target = if kind == 0 {
                    &mut groups[i].latency
                } else {
                    &mut groups[i].ttfb
                };
                target.push((value, count as u64));
            }
        }
    }
    Ok(groups)
}

/// The totals of a period (for the previous-period comparison).
pub fn period_figures(
    db: &mut Db,
    period: &crate::report::Period,
) -> Result<crate::report::Figures, DbError> {
    let source = Source::checked(db, period)?;
    let (from, to) = source.bounds();
    let sql = format!("SELECT {} {}", source.figures(), source.scope());
    figures_from_row(&db.query_one(&sql, &args![from, to])?, 0)
}

/// The models behind unpriced, estimated and unreadable usage in a period, most calls first.
pub fn flagged_models(
    db: &mut Db,
    period: &crate::report::Period,
) -> Result<crate::report::Flagged, DbError> {
    let source = Source::checked(db, period)?;
    let (from, to) = source.bounds();
    let counts = match source {
        Source::Rollup { .. } => {
            "sum(unpriced_requests), sum(estimated_requests), sum(missing_requests)"
        }
        Source::Rows { .. } => {
            "sum(CASE WHEN cost_nanos IS NULL AND usage_status != 'missing' THEN 1 ELSE 0 END),
            sum(CASE WHEN usage_status = 'estimated' THEN 1 ELSE 0 END),
            sum(CASE WHEN usage_status = 'missing' THEN 1 ELSE 0 END)"
        }
    };
    let sql = format!(
        "SELECT provider || '/' || {}, {counts} {} GROUP BY 1",
        source.key(crate::report::GroupBy::Model),
        source.scope()
    );
    let mut flagged = crate::report::Flagged::default();
    for row in db.query(&sql, &args![from, to])? {
        let name: String = row.get(0)?;
        for (i, list) in [
            &mut flagged.unpriced,
            &mut flagged.estimated,
            &mut flagged.missing,
        ]
        .into_iter()
        .enumerate()
        {
            let count = row.get::<Option<i64>>(i + 1)?.unwrap_or(0);
            if count > 0 {
                list.push((name.clone(), count as u64));
            }
        }
    }
    for list in [
        &mut flagged.unpriced,
        &mut flagged.estimated,
        &mut flagged.missing,
    ] {
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    }
    Ok(flagged)
}

/// Per (agent, provider, model, route) sums of a period for `meter review`, read from the rows
/// (the review needs the rate table's figure and short-answer counts the rollup does not keep).
pub fn review_groups(
    db: &mut Db,
    period: &crate::report::Period,
    short_output_tokens: u64,
    short_min_cost_nanos: i64,
) -> Result<Vec<crate::review::ReviewGroup>, DbError> {
    let rows = db.query(
        "SELECT agent, provider, coalesce(nullif(model, ''), '(unknown)'), route, count(*),
                sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
                sum(cache_write_1h_tokens), sum(output_tokens), sum(reasoning_tokens),
                sum(cost_nanos), sum(CASE WHEN cost_nanos IS NOT NULL THEN table_cost_nanos END),
                sum(CASE WHEN table_cost_nanos IS NOT NULL THEN cost_nanos END),
                sum(CASE WHEN cost_nanos IS NULL AND usage_status != 'missing' THEN 1 ELSE 0 END),
                sum(CASE WHEN usage_status = 'missing' THEN 1 ELSE 0 END),
                sum(CASE WHEN usage_status = 'estimated' THEN 1 ELSE 0 END),
                sum(CASE WHEN output_tokens <= ?3 AND cost_nanos >= ?4 THEN 1 ELSE 0 END),
                sum(CASE WHEN output_tokens <= ?3 AND cost_nanos >= ?4 THEN cost_nanos ELSE 0 END)
         FROM usage WHERE ts >= ?1 AND ts < ?2 AND status < 400
         GROUP BY 1, 2, 3, 4",
        &args![
            format_ts(&period.start),
            format_ts(&period.end),
            i64::try_from(short_output_tokens).unwrap_or(i64::MAX),
            short_min_cost_nanos
        ],
    )?;
    rows.iter()
        .map(|row| {
            let n = |i: usize| -> Result<u64, DbError> {
                Ok(row.get::<Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
            };
            let money =
                |i: usize| -> Result<i64, DbError> { Ok(row.get::<Option<i64>>(i)?.unwrap_or(0)) };
            Ok(crate::review::ReviewGroup {
                agent: row.get(0)?,
                provider: row.get(1)?,
                model: row.get(2)?,
                route: row.get(3)?,
                calls: n(4)?,
                usage: Usage {
                    input_tokens: n(5)?,
                    cache_read_tokens: n(6)?,
                    cache_write_tokens: n(7)?,
                    cache_write_1h_tokens: n(8)?,
                    output_tokens: n(9)?,
                    reasoning_tokens: n(10)?,
                },
                cost_nanos: money(11)?,
                table_cost_nanos: money(12)?,
                compared_cost_nanos: money(13)?,
                unpriced: n(14)?,
                missing: n(15)?,
                estimated: n(16)?,
                short_calls: n(17)?,
                short_cost_nanos: money(18)?,
            })
        })
        .collect()
}

/// A period's calls summed per agent, provider, model and route: what budgets are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRow {
    pub agent: String,
    pub provider: String,
    /// `(unknown)` for calls without a model.
    pub model: String,
    pub route: String,
    pub requests: i64,
    pub cost_nanos: i64,
    /// Calls that needed a price and found none (not counted in `cost_nanos`).
    pub unpriced: i64,
    /// Calls whose usage could not be read (`usage_status = 'missing'`).
    pub missing: i64,
}

/// The sums of a period per agent, provider, model and route, from the hourly rollup when the
/// period is made of whole UTC hours, else from the rows. `checked` first compares the rollup
/// with the rows (as reports do); the budget snapshots every few seconds skip that count.
pub fn scope_sums(
    db: &mut Db,
    period: &crate::report::Period,
    checked: bool,
) -> Result<Vec<ScopeRow>, DbError> {
    let source = if checked {
        Source::checked(db, period)?
    } else {
        Source::of(period)
    };
    let (from, to) = source.bounds();
    let model = source.key(crate::report::GroupBy::Model);
    let sums = match source {
        Source::Rollup { .. } => {
            "sum(requests), sum(cost_nanos), sum(unpriced_requests), sum(missing_requests)"
        }
        Source::Rows { .. } => {
            "count(*), sum(coalesce(cost_nanos, 0)),
             sum(CASE WHEN cost_nanos IS NULL AND usage_status != 'missing' THEN 1 ELSE 0 END),
             sum(CASE WHEN usage_status = 'missing' THEN 1 ELSE 0 END)"
        }
    };
    let sql = format!(
        "SELECT agent, provider, {model}, route, {sums} {} GROUP BY 1, 2, 3, 4",
        source.scope()
    );
    let rows = db
        .query(&sql, &args![from, to])?
        .iter()
        .map(|row| {
            Ok(ScopeRow {
                agent: row.get(0)?,
                provider: row.get(1)?,
                model: row.get(2)?,
                route: row.get(3)?,
                requests: row.get::<Option<i64>>(4)?.unwrap_or(0),
                cost_nanos: row.get::<Option<i64>>(5)?.unwrap_or(0),
                unpriced: row.get::<Option<i64>>(6)?.unwrap_or(0),
                missing: row.get::<Option<i64>>(7)?.unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok(rows.into_iter().filter(|r| r.requests != 0).collect())
}

/// A whole report (SPEC §7): the period's groups, the previous period's totals, the flagged
/// models, the forecast.
pub fn build_report(
    db: &mut Db,
    period: &crate::report::Period,
    by: &[crate::report::GroupBy],
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Result<crate::report::Report, DbError> {
    let groups = report_groups(db, period, by)?;
    let previous = match period.previous(tz) {
        Some(previous) => {
            let figures = period_figures(db, &previous)?;
            Some((previous, figures))
        }
        None => None,
    };
    let flagged = flagged_models(db, period)?;
    Ok(crate::report::Report::new(
        period.clone(),
        by.to_vec(),
        groups,
        previous,
        flagged,
        now,
        tz.name().to_string(),
    ))
}

/// The ledger's all-time totals per agent, provider, model and route: what the counters on
/// `/metrics` start from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedRow {
    pub agent: String,
    pub provider: String,
    /// `unknown` for calls without a model (as the metrics name them).
    pub model: String,
    pub route: String,
    /// Calls per HTTP status class (`2xx`, `3xx`, `4xx`, `5xx`).
    pub requests: Vec<(&'static str, u64)>,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_nanos: i64,
    pub unpriced: u64,
    pub estimated: u64,
    pub missing: u64,
}

/// All-time totals from the hourly rollup, with the non-2xx calls split by status class from
/// the rows (an index keeps that to the failed calls).
pub fn seed_totals(db: &mut Db) -> Result<Vec<SeedRow>, DbError> {
    type Key = (String, String, String, String);
    // The rollup says `(unknown)` where the metrics say `unknown`.
    const MODEL: &str =
        "CASE WHEN coalesce(model, '') IN ('(unknown)', '') THEN 'unknown' ELSE model END";
    let n = |row: &Row, i: usize| -> Result<u64, DbError> {
        Ok(row.get::<Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
    };
    let key = |row: &Row| -> Result<Key, DbError> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    };
    let mut rows: std::collections::BTreeMap<Key, (SeedRow, u64)> = Default::default();
    let totals = db.query(
        &format!(
            "SELECT agent, provider, {MODEL}, route, sum(requests), sum(input_tokens),
            sum(cache_read_tokens), sum(cache_write_tokens), sum(output_tokens),
            sum(reasoning_tokens), sum(cost_nanos), sum(unpriced_requests),
            sum(estimated_requests), sum(missing_requests)
         FROM usage_hourly GROUP BY 1, 2, 3, 4"
        ),
        &[],
    )?;
    for row in &totals {
        let key = key(row)?;
        let seed = SeedRow {
            agent: key.0.clone(),
            provider: key.1.clone(),
            model: key.2.clone(),
            route: key.3.clone(),
            requests: Vec::new(),
            input_tokens: n(row, 5)?,
            cache_read_tokens: n(row, 6)?,
            cache_write_tokens: n(row, 7)?,
            output_tokens: n(row, 8)?,
            reasoning_tokens: n(row, 9)?,
            cost_nanos: row.get::<Option<i64>>(10)?.unwrap_or(0),
            unpriced: n(row, 11)?,
            estimated: n(row, 12)?,
            missing: n(row, 13)?,
        };
        rows.insert(key, (seed, n(row, 4)?));
    }
    let failed = db.query(
        &format!(
            "SELECT agent, provider, {MODEL}, route, status / 100, count(*)
         FROM usage WHERE status >= 300 GROUP BY 1, 2, 3, 4, 5"
        ),
        &[],
    )?;
    for row in &failed {
        let class = match row.get::<i64>(4)? {
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        let count = n(row, 5)?;
        if let Some((seed, _)) = rows.get_mut(&key(row)?) {
            seed.requests.push((class, count));
        }
    }
    Ok(rows
        .into_values()
        .map(|(mut seed, total)| {
            let failed: u64 = seed.requests.iter().map(|(_, c)| *c).sum();
            seed.requests.push(("2xx", total.saturating_sub(failed)));
            seed
        })
        .collect())
}

#[cfg(test)]
mod seed_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seed_totals_split_status_classes_and_name_unknown_models() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::ledger::schema::migrate(&mut conn).unwrap();
        for (model, status, cost) in [
            (Some("m"), 200, Some(5)),
            (Some("m"), 200, Some(7)),
            (Some("m"), 502, None),
            (None, 429, None),
            (None, 200, None),
        ] {
            conn.execute(
                "INSERT INTO usage (ts, agent, provider, route, model, status, cost_nanos, output_tokens)
                 VALUES ('2026-11-01T10:00:00.000Z', 'a', 'openai', 'direct', ?1, ?2, ?3, 10)",
                rusqlite::params![model, status, cost],
            )
            .unwrap();
        }
        let rows = seed_totals(&mut Db::Sqlite(conn)).unwrap();
        let find = |model: &str| rows.iter().find(|r| r.model == model).unwrap();
        let m = find("m");
        let mut classes = m.requests.clone();
        classes.sort();
        assert_eq!(classes, [("2xx", 2), ("5xx", 1)]);
        assert_eq!(m.cost_nanos, 12);
        assert_eq!(m.output_tokens, 30);
        let unknown = find("unknown");
        let mut classes = unknown.requests.clone();
        classes.sort();
        assert_eq!(classes, [("2xx", 1), ("4xx", 1)]);
    }
}
