//! Records/s into a shared PostgreSQL ledger from three meters' ledger writers (issue 10's
//! "records/s into PostgreSQL from three meters"). A throwaway PostgreSQL server on loopback
//! (tests/support/postgres.rs: Debian's `postgresql` package, as `.ci/run` installs it, fsync
//! off as in the tests), then three writers, each opened as `meter serve` opens its own (a
//! connection pool, a record-key prefix, a writer thread), each fed records as fast as one
//! thread makes them; the clock stops when every writer has committed its last record. The
//! proxy is not in the loop (its cost per call is the overhead bench's subject): this is what
//! the ledger path sustains. `cargo bench --bench fleet` (release build); `-- --quick` for a
//! smoke run; BENCH_RECORDS records per meter (default 100,000).
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/postgres.rs"]
mod postgres_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use meter::ledger::LedgerRecord;

const METERS: usize = 3;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let per_meter: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10_000 } else { 100_000 })
        .min(1_000_000);
    let pg = postgres_server::Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let config = meter::config::Config::from_toml(
        &format!(
            "[store]\nurl = {:?}\n\n[[provider]]\nname = \"openai\"\n",
            pg.url()
        ),
        "bench.toml",
    )
    .unwrap();
    // Three writers, opened (schema migrated once) before the clock starts.
    let mut writers = Vec::new();
    for i in 0..METERS {
        let mut store = config.store.clone();
        store.journal = dir.path().join(format!("journal-{i}.db"));
        let metrics = Arc::new(meter::metrics::Metrics::new().unwrap());
        let pricer = Arc::new(meter::ledger::writer::Pricer::new(
            &config,
            config.rate_table().unwrap(),
        ));
        let budgets = Arc::new(meter::budget::Budgets::new(
            &config.budgets,
            config.timezone,
            meter::clock::Clock::system(),
        ));
        writers.push(meter::ledger::writer::open(&store, metrics, pricer, budgets).unwrap());
    }
    let started = Instant::now();
    let feeders: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(meter, (recorder, writer))| {
            std::thread::spawn(move || {
                for i in 0..per_meter {
                    let mut record = LedgerRecord::new(
                        chrono::Utc::now(),
                        ["alpha", "beta", "gamma", "delta"][i % 4],
                        "openai",
                        "direct",
                    );
                    record.model = Some("gpt-4o-mini-2024-07-18".to_string());
                    record.endpoint = "chat.completions";
                    record.usage.input_tokens = 19;
                    record.usage.output_tokens = 10;
                    record.latency_ms = 3;
                    record.request_id = Some(format!("req_{meter}_{i}"));
                    recorder.record(record);
                }
                drop(recorder);
                writer.join()
            })
        })
        .collect();
    let lost: u64 = feeders.into_iter().map(|f| f.join().unwrap()).sum();
    let elapsed = started.elapsed();
    let mut client = pg.client();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM usage", &[])
        .unwrap()
        .get(0);
    let rollup: i64 = client
        .query_one("SELECT sum(requests)::bigint FROM usage_hourly", &[])
        .unwrap()
        .get(0);
    let total = METERS * per_meter;
    assert_eq!(
        rows as usize, total,
        "rows in PostgreSQL ({lost} reported lost)"
    );
    assert_eq!(rollup as usize, total, "the rollup");
    println!(
        "PostgreSQL ingest, {METERS} meters' writers on one ledger (loopback, fsync off): {total} records in {:.2} s, {:.0} records/s ({} per meter, 0 lost, 0 duplicated)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        per_meter
    );
    assert!(elapsed < Duration::from_secs(600));
}
