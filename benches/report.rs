//! `meter report --month` wall time over big ledgers, and the ledger's size per million rows.
//! Builds ledgers of REPORT_ROWS rows (comma-separated, default "1000000") spread over a month
//! and 200 agent/provider/model groups, then times the release binary. Run:
//! `cargo bench --bench report` (`REPORT_ROWS=1000000,10000000` for the 10M figure).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

fn build(path: &std::path::Path, rows: u64) -> Duration {
    let mut conn = meter::ledger::writer::open_connection(path, Duration::from_secs(5)).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let started = Instant::now();
    let models = [
        "gpt-4o-2024-08-06",
        "gpt-4o-mini",
        "claude-sonnet-4-5-20250929",
        "gemini-2.5-flash",
        "llama3.2",
    ];
    let providers = ["openai", "openai", "anthropic", "gemini", "ollama"];
    let mut done = 0u64;
    while done < rows {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO usage (ts, agent, provider, route, model, endpoint, streaming, status,
                        input_tokens, cache_read_tokens, output_tokens, reasoning_tokens, cost_nanos,
                        cost_usd, cost_source, price_id, usage_status, latency_ms, ttft_ms,
                        key_fingerprint, request_id)
                     VALUES (?1, ?2, ?3, 'direct', ?4, 'chat.completions', 1, 200, ?5, ?6, ?7, 0, ?8,
                        ?9, 'rate_table', 'builtin:x', 'reported', ?10, ?11, '3f9a1c0b2d4e', ?12)",
                )
                .unwrap();
            for i in done..(done + 100_000).min(rows) {
                let second = i * 2_592_000 / rows.max(1);
                let ts = format!(
                    "2026-11-{:02}T{:02}:{:02}:{:02}.000Z",
                    1 + second / 86_400,
                    second % 86_400 / 3600,
                    second % 3600 / 60,
                    second % 60
                );
                let m = (i % 5) as usize;
                let cost = (i % 10_000) as i64 * 1_000;
                insert
                    .execute(rusqlite::params![
                        ts,
                        format!("agent-{}", i % 40),
                        providers[m],
                        models[m],
                        (i % 3000) as i64,
                        (i % 5000) as i64,
                        (i % 800) as i64,
                        cost,
                        cost as f64 / 1e9,
                        (200 + i % 5000) as i64,
                        (50 + i % 900) as i64,
                        format!("chatcmpl-{i:020}")
                    ])
                    .unwrap();
            }
            done = (done + 100_000).min(rows);
        }
        tx.commit().unwrap();
    }
    started.elapsed()
}

fn main() {
    let counts: Vec<u64> = std::env::var("REPORT_ROWS")
        .unwrap_or_else(|_| "1000000".to_string())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    for rows in counts {
        let temp = tempfile::tempdir().unwrap();
        // REPORT_KEEP_DIR keeps the ledger for inspection (it must not hold one already).
        let kept = std::env::var("REPORT_KEEP_DIR")
            .ok()
            .map(std::path::PathBuf::from);
        let dir = kept.as_deref().unwrap_or(temp.path());
        let _ = std::fs::create_dir_all(dir);
        let db = dir.join("meter.db");
        let built = build(&db, rows);
        let size = std::fs::metadata(&db).unwrap().len()
            + std::fs::metadata(dir.join("meter.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
        let mut times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_meter"))
                .current_dir(dir)
                .env_remove("METER_CONFIG")
                .args(["report", "--month", "2026-11", "--format", "json"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "{rows} rows: meter report --month {:.2} s (median of 3; min {:.2} s); ledger {:.0} MiB = {:.0} MiB per million rows; built in {:.0} s",
            times[1].as_secs_f64(),
            times[0].as_secs_f64(),
            size as f64 / 1048576.0,
            size as f64 / 1048576.0 / (rows as f64 / 1e6),
            built.as_secs_f64()
        );
    }
}
