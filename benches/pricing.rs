//! Pricing cost: the rate-table lookup and cost of one call (criterion), and `reprice` over a
//! ledger of one million rows (timed once). Run: `cargo bench --bench pricing`
//! (env REPRICE_ROWS to change the row count).
#![allow(clippy::unwrap_used)]

use chrono::{NaiveDate, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use meter::pricing::{price_call, ProviderPricing, RateTable};
use meter::usage::{Flavor, Quantities, Usage};

fn usage() -> Usage {
    Usage {
        input_tokens: 1200,
        cache_read_tokens: 3000,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        output_tokens: 450,
        reasoning_tokens: 120,
    }
}

fn lookup(c: &mut Criterion) {
    let table = RateTable::builtin().unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
    let provider = ProviderPricing {
        flavor: Flavor::OpenAi,
        markup: 0.0,
        local: false,
    };
    let mut group = c.benchmark_group("price_call");
    for (name, provider_name, model) in [
        ("exact_snapshot", "openai", "gpt-4o-2024-08-06"),
        ("anthropic_dated", "anthropic", "claude-sonnet-4-5-20250929"),
        ("router_id", "openrouter", "anthropic/claude-sonnet-4.5"),
        ("unknown", "openai", "no-such-model"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                price_call(
                    &table,
                    provider_name,
                    provider,
                    Some(model),
                    date,
                    Some(&usage()),
                    &Quantities::default(),
                    None,
                )
            })
        });
    }
    group.finish();
}

fn reprice_million_rows() {
    let rows: i64 = std::env::var("REPRICE_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reprice.db");
    let mut conn =
        meter::ledger::writer::open_connection(&path, std::time::Duration::from_secs(5)).unwrap();
    let started = std::time::Instant::now();
    {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO usage (ts, agent, provider, route, model, endpoint, status, input_tokens, cache_read_tokens, output_tokens, usage_status) VALUES (?1, 'a', ?2, 'direct', ?3, 'chat.completions', 200, ?4, ?5, ?6, 'reported')")
                .unwrap();
            let models = [
                ("openai", "gpt-4o-2024-08-06"),
                ("anthropic", "claude-sonnet-4-5-20250929"),
                ("gemini", "gemini-2.5-flash"),
                ("openai", "gpt-4o-mini"),
            ];
            for i in 0..rows {
                let (provider, model) = models[(i % 4) as usize];
                let ts = format!("2026-11-{:02}T12:00:00.000Z", 1 + i % 24);
                insert
                    .execute(rusqlite::params![
                        ts,
                        provider,
                        model,
                        100 + i % 1000,
                        i % 5000,
                        50 + i % 700
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let filled = started.elapsed();
    let table = RateTable::builtin().unwrap();
    let since = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let pricing = |name: &str| ProviderPricing {
        flavor: Flavor::detect(name, ""),
        markup: 0.0,
        local: false,
    };
    let started = std::time::Instant::now();
    let mut db = meter::ledger::db::Db::Sqlite(conn);
    let report =
        meter::ledger::query::reprice(&mut db, &table, &pricing, since, None, false).unwrap();
    let took = started.elapsed();
    println!(
        "reprice: {} rows ({} changed) in {:.2} s = {:.0} rows/s (ledger filled in {:.1} s); total after {}",
        report.rows,
        report.changed,
        took.as_secs_f64(),
        report.rows as f64 / took.as_secs_f64(),
        filled.as_secs_f64(),
        meter::money::format_usd(report.cost_after_nanos)
    );
}

fn benches(c: &mut Criterion) {
    lookup(c);
    reprice_million_rows();
}

criterion_group!(group, benches);
criterion_main!(group);
