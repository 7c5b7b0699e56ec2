//! Read and maintenance queries on the ledger for the CLI (`prices check`, `reprice`). They
//! open their own connection; the serving process's writer is unaffected beyond SQLite's locks.

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{params, Connection, OptionalExtension};

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
pub fn unpriced_models(conn: &Connection) -> rusqlite::Result<Vec<UnpricedModel>> {
    let mut statement = conn.prepare(
        "SELECT provider, model, count(*),
                sum(input_tokens + cache_read_tokens + cache_write_tokens + output_tokens),
                min(ts), max(ts)
         FROM usage
         WHERE cost_nanos IS NULL AND usage_status != 'missing'
         GROUP BY provider, model
         ORDER BY count(*) DESC, provider, model",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(UnpricedModel {
            provider: row.get(0)?,
            model: row.get(1)?,
            calls: row.get::<_, i64>(2)?.max(0) as u64,
            tokens: row.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
            first_ts: row.get(4)?,
            last_ts: row.get(5)?,
        })
    })?;
    rows.collect()
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
    conn: &mut Connection,
    table: &RateTable,
    provider_pricing: &dyn Fn(&str) -> ProviderPricing,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    dry_run: bool,
) -> rusqlite::Result<RepriceReport> {
    let since = format_ts(&since);
    let until = until
        .map(|u| format_ts(&u))
        .unwrap_or_else(|| "9999".to_string());
    let mut report = RepriceReport::default();
    let mut after_id = 0i64;
    loop {
        let tx = conn.transaction()?;
        let mut changes = Vec::new();
        let mut last = None;
        {
            let mut select = tx.prepare_cached(
                "SELECT id, ts, provider, model, usage_status, input_tokens, cache_read_tokens,
                        cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens,
                        images, image_size, image_quality, audio_input_tokens, audio_output_tokens,
                        audio_seconds, web_search_calls, reported_cost_nanos, cost_nanos,
                        cost_source, price_id, table_cost_nanos
                 FROM usage WHERE id > ?1 AND ts >= ?2 AND ts < ?3 ORDER BY id LIMIT ?4",
            )?;
            let mut rows = select.query(params![after_id, since, until, REPRICE_BATCH])?;
            while let Some(row) = rows.next()? {
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
                let n = |i: usize| -> rusqlite::Result<u64> {
                    Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
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
                        .get::<_, Option<f64>>(16)?
                        .map_or(0, |s| (s * 1000.0).round().max(0.0) as u64),
                    web_search_calls: n(17)?,
                };
                let before: (Option<i64>, Option<String>, Option<String>, Option<i64>) =
                    (row.get(19)?, row.get(20)?, row.get(21)?, row.get(22)?);
                // A cost meter did not compute from the table (reported by the provider, or
                // written by hand into the ledger) is kept as the call's reported cost.
                let reported: Option<i64> =
                    row.get::<_, Option<i64>>(18)?
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
            let mut update = tx.prepare_cached(
                "UPDATE usage SET cost_nanos = ?2, cost_usd = ?3, cost_source = ?4, price_id = ?5,
                        table_cost_nanos = ?6
                 WHERE id = ?1",
            )?;
            for (id, (cost, source, price_id, table_cost)) in &changes {
                let usd = cost.map(|n| n as f64 / 1e9);
                update.execute(params![id, cost, usd, source, price_id, table_cost])?;
            }
        }
        tx.commit()?;
        match last {
            Some(id) => after_id = id,
            None => break,
        }
    }
    Ok(report)
}

/// The ledger's first call, if any (`reprice` without `--since` starts there).
pub fn first_ts(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT min(ts) FROM usage", [], |row| row.get(0))
        .optional()
        .map(Option::flatten)
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
    fn checked(conn: &Connection, period: &crate::report::Period) -> rusqlite::Result<Source> {
        let source = Source::of(period);
        if let Source::Rollup { from, to } = &source {
            let rolled: i64 = conn.query_row(
                "SELECT coalesce(sum(requests), 0) FROM usage_hourly WHERE hour >= ?1 AND hour < ?2",
                params![from, to],
                |row| row.get(0),
            )?;
            let counted: i64 = conn.query_row(
                "SELECT count(*) FROM usage WHERE ts >= ?1 AND ts < ?2",
                params![format_ts(&period.start), format_ts(&period.end)],
                |row| row.get(0),
            )?;
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
            Source::Rows { .. } => "count(*), sum(status >= 400), sum(input_tokens), sum(cache_read_tokens),
                sum(cache_write_tokens), sum(cache_write_1h_tokens), sum(output_tokens), sum(reasoning_tokens),
                sum(cost_nanos), sum(cost_nanos IS NULL AND usage_status != 'missing'),
                sum(usage_status = 'estimated'), sum(usage_status = 'missing')",
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

fn figures_from_row(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<crate::report::Figures> {
    let n = |i: usize| -> rusqlite::Result<u64> {
        Ok(row.get::<_, Option<i64>>(first + i)?.unwrap_or(0).max(0) as u64)
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
        cost_nanos: row.get::<_, Option<i64>>(first + 8)?.unwrap_or(0),
        unpriced_requests: n(9)?,
        estimated_requests: n(10)?,
        missing_requests: n(11)?,
    })
}

fn row_keys(row: &rusqlite::Row<'_>, count: usize) -> rusqlite::Result<Vec<String>> {
    (0..count)
        .map(|i| Ok(row.get::<_, Option<String>>(i)?.unwrap_or_default()))
        .collect()
}

/// The groups of a report period: sums per group, and latency and time-to-first-byte
/// distributions.
pub fn report_groups(
    conn: &Connection,
    period: &crate::report::Period,
    by: &[crate::report::GroupBy],
) -> rusqlite::Result<Vec<crate::report::Group>> {
    let source = Source::checked(conn, period)?;
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
    let mut statement = conn.prepare(&sql)?;
    let mut groups: Vec<crate::report::Group> = statement
        .query_map(params![from, to], |row| {
            Ok(crate::report::Group {
                keys: row_keys(row, keys.len())?,
                figures: figures_from_row(row, keys.len())?,
                latency: Vec::new(),
                ttfb: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
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
        let mut statement = conn.prepare(&sql)?;
        let mut rows = statement.query(params![
            format_ts(&period.start),
            format_ts(&period.end),
            every
        ])?;
        while let Some(row) = rows.next()? {
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
    conn: &Connection,
    period: &crate::report::Period,
) -> rusqlite::Result<crate::report::Figures> {
    let source = Source::checked(conn, period)?;
    let (from, to) = source.bounds();
    let sql = format!("SELECT {} {}", source.figures(), source.scope());
    conn.query_row(&sql, params![from, to], |row| figures_from_row(row, 0))
}

/// The models behind unpriced, estimated and unreadable usage in a period, most calls first.
pub fn flagged_models(
    conn: &Connection,
    period: &crate::report::Period,
) -> rusqlite::Result<crate::report::Flagged> {
    let source = Source::checked(conn, period)?;
    let (from, to) = source.bounds();
    let counts = match source {
        Source::Rollup { .. } => "sum(unpriced_requests), sum(estimated_requests), sum(missing_requests)",
        Source::Rows { .. } => "sum(cost_nanos IS NULL AND usage_status != 'missing'), sum(usage_status = 'estimated'), sum(usage_status = 'missing')",
    };
    let sql = format!(
        "SELECT provider || '/' || {}, {counts} {} GROUP BY 1",
        source.key(crate::report::GroupBy::Model),
        source.scope()
    );
    let mut statement = conn.prepare(&sql)?;
    let mut flagged = crate::report::Flagged::default();
    let mut rows = statement.query(params![from, to])?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        for (i, list) in [
            &mut flagged.unpriced,
            &mut flagged.estimated,
            &mut flagged.missing,
        ]
        .into_iter()
        .enumerate()
        {
            let count = row.get::<_, Option<i64>>(i + 1)?.unwrap_or(0);
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
    conn: &Connection,
    period: &crate::report::Period,
    short_output_tokens: u64,
    short_min_cost_nanos: i64,
) -> rusqlite::Result<Vec<crate::review::ReviewGroup>> {
    let mut statement = conn.prepare(
        "SELECT agent, provider, coalesce(nullif(model, ''), '(unknown)'), route, count(*),
                sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
                sum(cache_write_1h_tokens), sum(output_tokens), sum(reasoning_tokens),
                sum(cost_nanos), sum(CASE WHEN cost_nanos IS NOT NULL THEN table_cost_nanos END),
                sum(CASE WHEN table_cost_nanos IS NOT NULL THEN cost_nanos END),
                sum(cost_nanos IS NULL AND usage_status != 'missing'),
                sum(usage_status = 'missing'), sum(usage_status = 'estimated'),
                sum(output_tokens <= ?3 AND cost_nanos >= ?4),
                sum(CASE WHEN output_tokens <= ?3 AND cost_nanos >= ?4 THEN cost_nanos ELSE 0 END)
         FROM usage WHERE ts >= ?1 AND ts < ?2 AND status < 400
         GROUP BY 1, 2, 3, 4",
    )?;
    let rows = statement.query_map(
        params![
            format_ts(&period.start),
            format_ts(&period.end),
            i64::try_from(short_output_tokens).unwrap_or(i64::MAX),
            short_min_cost_nanos
        ],
        |row| {
            let n = |i: usize| -> rusqlite::Result<u64> {
                Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
            };
            let money = |i: usize| -> rusqlite::Result<i64> {
                Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0))
            };
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
        },
    )?;
    rows.collect()
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
    conn: &Connection,
    period: &crate::report::Period,
    checked: bool,
) -> rusqlite::Result<Vec<ScopeRow>> {
    let source = if checked {
        Source::checked(conn, period)?
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
            "count(*), sum(coalesce(cost_nanos, 0)), sum(cost_nanos IS NULL AND usage_status != 'missing'),
             sum(usage_status = 'missing')"
        }
    };
    let sql = format!(
        "SELECT agent, provider, {model}, route, {sums} {} GROUP BY 1, 2, 3, 4",
        source.scope()
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement
        .query_map(params![from, to], |row| {
            Ok(ScopeRow {
                agent: row.get(0)?,
                provider: row.get(1)?,
                model: row.get(2)?,
                route: row.get(3)?,
                requests: row.get::<_, Option<i64>>(4)?.unwrap_or(0),
                cost_nanos: row.get::<_, Option<i64>>(5)?.unwrap_or(0),
                unpriced: row.get::<_, Option<i64>>(6)?.unwrap_or(0),
                missing: row.get::<_, Option<i64>>(7)?.unwrap_or(0),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows.into_iter().filter(|r| r.requests != 0).collect())
}

/// A whole report (SPEC §7): the period's groups, the previous period's totals, the flagged
/// models, the forecast.
pub fn build_report(
    conn: &Connection,
    period: &crate::report::Period,
    by: &[crate::report::GroupBy],
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> rusqlite::Result<crate::report::Report> {
    let groups = report_groups(conn, period, by)?;
    let previous = match period.previous(tz) {
        Some(previous) => {
            let figures = period_figures(conn, &previous)?;
            Some((previous, figures))
        }
        None => None,
    };
    let flagged = flagged_models(conn, period)?;
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
pub fn seed_totals(conn: &Connection) -> rusqlite::Result<Vec<SeedRow>> {
    type Key = (String, String, String, String);
    // The rollup says `(unknown)` where the metrics say `unknown`.
    const MODEL: &str =
        "CASE WHEN coalesce(model, '') IN ('(unknown)', '') THEN 'unknown' ELSE model END";
    let n = |row: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<u64> {
        Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
    };
    let key = |row: &rusqlite::Row<'_>| -> rusqlite::Result<Key> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    };
    let mut rows: std::collections::BTreeMap<Key, (SeedRow, u64)> = Default::default();
    let mut statement = conn.prepare(&format!(
        "SELECT agent, provider, {MODEL}, route, sum(requests), sum(input_tokens),
            sum(cache_read_tokens), sum(cache_write_tokens), sum(output_tokens),
            sum(reasoning_tokens), sum(cost_nanos), sum(unpriced_requests),
            sum(estimated_requests), sum(missing_requests)
         FROM usage_hourly GROUP BY 1, 2, 3, 4"
    ))?;
    let mut query = statement.query([])?;
    while let Some(row) = query.next()? {
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
            cost_nanos: row.get::<_, Option<i64>>(10)?.unwrap_or(0),
            unpriced: n(row, 11)?,
            estimated: n(row, 12)?,
            missing: n(row, 13)?,
        };
        rows.insert(key, (seed, n(row, 4)?));
    }
    let mut failed = conn.prepare(&format!(
        "SELECT agent, provider, {MODEL}, route, status / 100, count(*)
         FROM usage WHERE status >= 300 GROUP BY 1, 2, 3, 4, 5"
    ))?;
    let mut query = failed.query([])?;
    while let Some(row) = query.next()? {
        let class = match row.get::<_, i64>(4)? {
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
        let mut conn = Connection::open_in_memory().unwrap();
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
                params![model, status, cost],
            )
            .unwrap();
        }
        let rows = seed_totals(&conn).unwrap();
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
