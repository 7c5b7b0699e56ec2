//! `meter report` on ledgers seeded with known rows: periods and their boundaries, time zones,
//! grouping, previous-period change, forecast, and every format.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// (ts, agent, provider, model, status, input, cache_read, output, cost_nanos, usage_status, latency_ms)
type Seed<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    &'a str,
    i64,
);

fn seed(db: &Path, rows: &[Seed]) {
    let conn =
        meter::ledger::writer::open_connection(db, std::time::Duration::from_secs(5)).unwrap();
    for (
        ts,
        agent,
        provider,
        model,
        status,
        input,
        cache_read,
        output,
        cost,
        usage_status,
        latency,
    ) in rows
    {
        let route = if *provider == "openrouter" {
            "router"
        } else {
            "direct"
        };
        conn.execute(
            "INSERT INTO usage (ts, agent, provider, route, model, endpoint, status, input_tokens,
                cache_read_tokens, output_tokens, cost_nanos, cost_usd, usage_status, latency_ms, ttft_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'chat.completions', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            rusqlite::params![ts, agent, provider, route, model, status, input, cache_read, output, cost,
                cost.map(|c| c as f64 / 1e9), usage_status, latency, latency / 4],
        )
        .unwrap();
    }
}

fn report(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meter"))
        .current_dir(dir)
        .env_remove("METER_CONFIG")
        .env("NO_COLOR", "1")
        .arg("report")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let (code, out, err) = report(dir, &all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

const OCTOBER: &[Seed] = &[
    // The last millisecond of October belongs to October; midnight to November.
    (
        "2026-10-31T23:59:59.999Z",
        "coder",
        "openai",
        Some("gpt-4o"),
        200,
        1000,
        0,
        100,
        Some(3_500_000),
        "reported",
        800,
    ),
    (
        "2026-11-01T00:00:00.000Z",
        "coder",
        "openai",
        Some("gpt-4o"),
        200,
        1000,
        0,
        100,
        Some(3_500_000),
        "reported",
        900,
    ),
    (
        "2026-10-01T00:00:00.000Z",
        "coder",
        "anthropic",
        Some("claude-sonnet-4-5"),
        200,
        200,
        1800,
        50,
        Some(2_000_000),
        "reported",
        1500,
    ),
    (
        "2026-10-15T12:00:00.000Z",
        "triage",
        "openrouter",
        Some("anthropic/claude-sonnet-4"),
        200,
        100,
        0,
        10,
        Some(12_000_000),
        "reported",
        2100,
    ),
    (
        "2026-10-15T12:00:01.000Z",
        "triage",
        "openai",
        Some("gpt-9"),
        200,
        100,
        0,
        10,
        None,
        "reported",
        300,
    ),
    (
        "2026-10-15T12:00:02.000Z",
        "triage",
        "openai",
        Some("gpt-4o"),
        429,
        0,
        0,
        0,
        Some(0),
        "reported",
        50,
    ),
    (
        "2026-10-16T08:00:00.000Z",
        "coder",
        "anthropic",
        Some("claude-sonnet-4-5"),
        200,
        300,
        0,
        40,
        Some(1_500_000),
        "estimated",
        1200,
    ),
    (
        "2026-09-30T23:59:59.999Z",
        "coder",
        "openai",
        Some("gpt-4o"),
        200,
        1000,
        0,
        100,
        Some(10_000_000),
        "reported",
        700,
    ),
];

#[test]
fn a_month_groups_totals_and_compares_with_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("meter.db"), OCTOBER);
    let report = json(dir.path(), &["--month", "2026-10"]);
    // The contract's shape.
    assert_eq!(
        report["period"],
        serde_json::json!({"kind": "month", "label": "2026-10", "start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"})
    );
    assert_eq!(report["currency"], "USD");
    let totals = &report["totals"];
    for key in [
        "requests",
        "errors",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
        "unpriced_requests",
        "estimated_requests",
    ] {
        assert!(totals.get(key).is_some(), "totals.{key} missing");
    }
    assert_eq!(totals["requests"], 6);
    assert_eq!(totals["errors"], 1);
    assert_eq!(totals["input_tokens"], 1700);
    assert_eq!(totals["cache_read_tokens"], 1800);
    assert_eq!(totals["unpriced_requests"], 1);
    assert_eq!(totals["estimated_requests"], 1);
    // 3.5m + 2m + 12m + 0 + 1.5m nano-dollars, exactly.
    assert_eq!(totals["cost_usd"].as_f64(), Some(0.019));
    assert_eq!(
        report["previous"],
        serde_json::json!({"label": "2026-09", "cost_usd": 0.01, "requests": 1})
    );
    assert_eq!(
        report["forecast_usd"],
        Value::Null,
        "a closed period has no forecast"
    );
    // Groups by agent, provider, model; sorted by cost.
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 5);
    assert_eq!(
        (groups[0]["agent"].as_str(), groups[0]["model"].as_str()),
        (Some("triage"), Some("anthropic/claude-sonnet-4"))
    );
    let costs: Vec<f64> = groups
        .iter()
        .map(|g| g["cost_usd"].as_f64().unwrap())
        .collect();
    assert!(costs.windows(2).all(|w| w[0] >= w[1]), "{costs:?}");
    let claude = groups
        .iter()
        .find(|g| g["model"] == "claude-sonnet-4-5")
        .unwrap();
    assert_eq!(claude["requests"], 2);
    assert_eq!(claude["latency_p50_ms"], 1200.0);
    assert_eq!(claude["latency_p95_ms"], 1500.0);
    assert!(claude.get("ttfb_p50_ms").is_some());
    // --by route
    let by_route = json(dir.path(), &["--month", "2026-10", "--by", "route"]);
    let routes: Vec<&str> = by_route["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, vec!["router", "direct"]);
    assert!(by_route["groups"][0].get("agent").is_none());
}

#[test]
fn the_table_is_for_people() {
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("meter.db"), OCTOBER);
    let (code, out, err) = report(dir.path(), &["--month", "2026-10"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("AGENT") && out.contains("COST") && out.contains("TOTAL"),
        "{out}"
    );
    // Cents for amounts of a cent and more; sub-cent amounts keep their digits.
    assert!(
        out.lines()
            .any(|l| l.starts_with("TOTAL") && l.ends_with("$0.02")),
        "{out}"
    );
    assert!(
        out.contains("$0.0035"),
        "sub-cent amounts keep their digits: {out}"
    );
    assert!(
        out.contains("Previous month 2026-09: $0.01 over 1 calls; change +$0.009 (+90.0%)"),
        "{out}"
    );
    assert!(
        out.contains("Warning: 1 calls unpriced") && out.contains("openai/gpt-9 (1)"),
        "{out}"
    );
    assert!(
        out.contains("Warning: 1 calls with estimated usage")
            && out.contains("anthropic/claude-sonnet-4-5 (1)"),
        "{out}"
    );
    assert!(out.contains("Cache hits:"), "{out}");
    assert!(!out.contains('\x1b'), "no colour in a pipe");
    // The first data row is the most expensive group, and columns line up.
    let lines: Vec<&str> = out.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("AGENT")).unwrap();
    assert!(lines[header + 1].starts_with("triage"), "{out}");
    let cost_end = lines[header].len();
    assert_eq!(
        lines[header + 1].len(),
        cost_end,
        "right-aligned costs end under the header"
    );
    // An empty period says so.
    let (code, out, _) = report(dir.path(), &["--month", "2025-01"]);
    assert_eq!(code, 0);
    assert!(out.contains("No calls recorded in 2025-01"), "{out}");
}

#[test]
fn csv_parses_back_and_markdown_renders() {
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("meter.db"), OCTOBER);
    let (code, csv, _) = report(dir.path(), &["--month", "2026-10", "--format", "csv"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..4], &["agent", "provider", "model", "requests"]);
    assert_eq!(lines.len(), 6);
    let cost_col = header.iter().position(|h| *h == "cost_usd").unwrap();
    let total: f64 = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(cost_col).unwrap().parse::<f64>().unwrap())
        .sum();
    assert!((total - 0.019).abs() < 1e-12);
    let (code, md, _) = report(dir.path(), &["--month", "2026-10", "--format", "markdown"]);
    assert_eq!(code, 0);
    assert!(md.starts_with("## meter report: month 2026-10"), "{md}");
    assert!(md.contains("| agent |") || md.contains("| AGENT |"), "{md}");
    assert!(md.contains("| --- | --- | --- | ---: |"), "{md}");
    assert!(md.contains("**TOTAL**"), "{md}");
}

#[test]
fn weeks_quarters_ranges_and_time_zones() {
    let dir = tempfile::tempdir().unwrap();
    seed(
        &dir.path().join("meter.db"),
        &[
            // ISO week 1 of 2026 runs from Monday 2025-12-29.
            (
                "2025-12-28T23:59:59.999Z",
                "a",
                "openai",
                Some("gpt-4o"),
                200,
                1,
                0,
                1,
                Some(1),
                "reported",
                10,
            ),
            (
                "2025-12-29T00:00:00.000Z",
                "a",
                "openai",
                Some("gpt-4o"),
                200,
                1,
                0,
                1,
                Some(10),
                "reported",
                10,
            ),
            (
                "2026-01-04T23:59:59.999Z",
                "a",
                "openai",
                Some("gpt-4o"),
                200,
                1,
                0,
                1,
                Some(100),
                "reported",
                10,
            ),
            // 23:30 UTC on 2026-03-31 is already April 1st in Paris (UTC+2 after the DST change).
            (
                "2026-03-31T23:30:00.000Z",
                "a",
                "openai",
                Some("gpt-4o"),
                200,
                1,
                0,
                1,
                Some(1000),
                "reported",
                10,
            ),
        ],
    );
    let week = json(dir.path(), &["--week", "2026-W01"]);
    assert_eq!(week["totals"]["requests"], 2);
    assert_eq!(week["previous"]["label"], "2025-W52");
    let quarter = json(dir.path(), &["--quarter", "2026-Q1"]);
    assert_eq!(quarter["totals"]["requests"], 2);
    let range = json(
        dir.path(),
        &["--since", "2025-12-28", "--until", "2025-12-29"],
    );
    assert_eq!(range["totals"]["requests"], 2);
    assert_eq!(range["period"]["kind"], "custom");
    std::fs::write(
        dir.path().join("meter.toml"),
        "timezone = \"Europe/Paris\"\n",
    )
    .unwrap();
    let march = json(dir.path(), &["--month", "2026-03"]);
    assert_eq!(march["period"]["start"], "2026-02-28T23:00:00Z");
    assert_eq!(march["period"]["end"], "2026-03-31T22:00:00Z");
    assert_eq!(march["totals"]["requests"], 0);
    let april = json(dir.path(), &["--month", "2026-04"]);
    assert_eq!(april["totals"]["requests"], 1);
    // Bad periods are usage errors.
    let (code, _, err) = report(dir.path(), &["--week", "2026-W60"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = report(dir.path(), &["--week", "--month"]);
    assert_eq!(code, 2);
}

#[test]
fn an_open_period_has_a_forecast() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now();
    let ts =
        (now - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    seed(
        &dir.path().join("meter.db"),
        &[(
            ts.as_str(),
            "a",
            "openai",
            Some("gpt-4o"),
            200,
            1,
            0,
            1,
            Some(1_000_000_000),
            "reported",
            10,
        )],
    );
    let month = json(dir.path(), &["--month"]);
    let forecast = month["forecast_usd"].as_f64().unwrap();
    assert!(forecast >= 1.0, "{forecast}");
    assert_eq!(month["totals"]["requests"], 1);
}

#[test]
fn half_hour_time_zones_read_the_rows_themselves() {
    // India is UTC+5:30: its month does not start on a whole UTC hour, so the report reads the
    // rows rather than the hourly rollup, and must still cut at local midnight.
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("meter.db"), OCTOBER);
    std::fs::write(
        dir.path().join("meter.toml"),
        "timezone = \"Asia/Kolkata\"\n",
    )
    .unwrap();
    let october = json(dir.path(), &["--month", "2026-10"]);
    assert_eq!(october["period"]["start"], "2026-09-30T18:30:00Z");
    assert_eq!(october["totals"]["requests"], 6);
    assert_eq!(october["totals"]["cost_usd"].as_f64(), Some(0.0255));
    let groups = october["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["latency_p50_ms"].is_number()));
}
