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
                let reported: Option<i64> = row.get(18)?;
                let before: (Option<i64>, Option<String>, Option<String>, Option<i64>) =
                    (row.get(19)?, row.get(20)?, row.get(21)?, row.get(22)?);
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
