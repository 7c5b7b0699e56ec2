//! `meter review` on a seeded ledger: every finding triggered, and held back where the data
//! does not call for it; `--what-if`; formats.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// (ts, agent, provider, model, route, output tokens, cost nanos, table cost nanos, usage status)
type Call<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    Option<i64>,
    Option<i64>,
    &'a str,
);

fn seed(db: &Path, calls: &[Call], times: usize) {
    let conn =
        meter::ledger::writer::open_connection(db, std::time::Duration::from_secs(5)).unwrap();
    for _ in 0..times {
        for (ts, agent, provider, model, route, output, cost, table_cost, status) in calls {
            conn.execute(
                "INSERT INTO usage (ts, agent, provider, route, model, status, input_tokens, output_tokens,
                    cost_nanos, table_cost_nanos, usage_status, latency_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 200, 1000, ?6, ?7, ?8, ?9, 500)",
                rusqlite::params![ts, agent, provider, route, model, output, cost, table_cost, status],
            )
            .unwrap();
        }
    }
}

fn review(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_meter"))
        .current_dir(dir)
        .env_remove("METER_CONFIG")
        .args(["review", "--quarter", "2026-Q4", "--format", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kinds(review: &Value) -> Vec<String> {
    review["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

fn finding<'a>(review: &'a Value, kind: &str) -> Option<&'a Value> {
    review["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind)
}

const CONFIG: &str = r#"
[review]
min_savings_usd = 0.05
rare_provider_max_calls = 5
local_max_output_tokens = 100
local_min_call_usd = 0.001

[[agent]]
name = "triage"
data_class = "regulated"

[[agent]]
name = "coder"
data_class = "confidential"

[[price]]
provider = "openai"
model = "acme-*"
effective = "2026-10-01"
input = 1.0
output = 1.0

[[price]]
provider = "openai"
model = "acme-*"
effective = "2026-11-15"
input = 2.0
output = 2.0
"#;

#[test]
fn every_finding_with_its_dollars() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meter.toml"), CONFIG).unwrap();
    let db = dir.path().join("meter.db");
    // triage on the router: $0.02 a call where direct keys cost $0.01 (10 calls: $0.10 markup).
    seed(
        &db,
        &[(
            "2026-10-10T10:00:00.000Z",
            "triage",
            "openrouter",
            "anthropic/claude-sonnet-4",
            "router",
            500,
            Some(20_000_000),
            Some(10_000_000),
            "reported",
        )],
        10,
    );
    // coder on openai: short answers at $0.002 each (local candidates) and long ones.
    seed(
        &db,
        &[(
            "2026-10-11T10:00:00.000Z",
            "coder",
            "openai",
            "gpt-4o",
            "direct",
            50,
            Some(2_000_000),
            Some(2_000_000),
            "reported",
        )],
        6,
    );
    seed(
        &db,
        &[(
            "2026-10-11T11:00:00.000Z",
            "coder",
            "openai",
            "gpt-4o",
            "direct",
            900,
            Some(9_000_000),
            Some(9_000_000),
            "reported",
        )],
        2,
    );
    // mistral used three times: a rare provider.
    seed(
        &db,
        &[(
            "2026-10-12T10:00:00.000Z",
            "coder",
            "mistral",
            "mistral-large-latest",
            "direct",
            500,
            Some(3_000_000),
            Some(3_000_000),
            "reported",
        )],
        3,
    );
    // acme: priced at $1/$1 when used in October; its price doubled on 2026-11-15.
    seed(
        &db,
        &[(
            "2026-10-13T10:00:00.000Z",
            "coder",
            "openai",
            "acme-large",
            "direct",
            1000,
            Some(2_000),
            Some(2_000),
            "reported",
        )],
        6,
    );
    // An unpriced model.
    seed(
        &db,
        &[(
            "2026-10-14T10:00:00.000Z",
            "coder",
            "openai",
            "gpt-9",
            "direct",
            500,
            None,
            None,
            "reported",
        )],
        6,
    );

    let review = review(dir.path(), &[]);
    assert_eq!(review["period"]["label"], "2026-Q4");
    let kinds = kinds(&review);
    for kind in [
        "direct_key_saves",
        "rare_provider",
        "local_candidate",
        "unread_or_unpriced",
        "price_move",
        "todays_prices",
        "sensitive_via_router",
    ] {
        assert!(
            kinds.contains(&kind.to_string()),
            "{kind} missing from {kinds:?}"
        );
    }
    let saves = finding(&review, "direct_key_saves").unwrap();
    assert_eq!(saves["agents"], serde_json::json!(["triage"]));
    assert_eq!(saves["usd"].as_f64(), Some(0.1));
    let local = finding(&review, "local_candidate").unwrap();
    assert_eq!(
        local["usd"].as_f64(),
        Some(0.012),
        "six short answers at $0.002"
    );
    let rare = finding(&review, "rare_provider").unwrap();
    assert!(
        rare["summary"].as_str().unwrap().starts_with("mistral:"),
        "{rare}"
    );
    let sensitive = finding(&review, "sensitive_via_router").unwrap();
    assert_eq!(
        sensitive["agents"],
        serde_json::json!(["triage"]),
        "coder never used the router"
    );
    assert_eq!(sensitive["usd"].as_f64(), Some(0.2));
    let moved = finding(&review, "price_move").unwrap();
    assert_eq!(moved["models"], serde_json::json!(["openai/acme-large"]));
    // Sorted by money at stake.
    let usd: Vec<f64> = review["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["usd"].as_f64().unwrap())
        .collect();
    assert!(usd.windows(2).all(|w| w[0] >= w[1]), "{usd:?}");
}

#[test]
fn findings_hold_back_when_the_data_does_not_call_for_them() {
    let dir = tempfile::tempdir().unwrap();
    // Defaults: $10 of savings before a direct key is worth it, 100 calls for a rare provider.
    std::fs::write(
        dir.path().join("meter.toml"),
        "[[agent]]\nname = \"triage\"\ndata_class = \"public\"\n",
    )
    .unwrap();
    let db = dir.path().join("meter.db");
    seed(
        &db,
        &[(
            "2026-10-10T10:00:00.000Z",
            "triage",
            "openrouter",
            "anthropic/claude-sonnet-4",
            "router",
            500,
            Some(10_000_000),
            Some(10_000_000),
            "reported",
        )],
        3,
    );
    seed(
        &db,
        &[(
            "2026-10-11T10:00:00.000Z",
            "triage",
            "openai",
            "gpt-4o",
            "direct",
            900,
            Some(9_000_000),
            Some(9_000_000),
            "reported",
        )],
        120,
    );
    let review = review(dir.path(), &[]);
    let kinds = kinds(&review);
    for kind in [
        "direct_key_saves",
        "rare_provider",
        "local_candidate",
        "unread_or_unpriced",
        "sensitive_via_router",
        "price_move",
    ] {
        assert!(
            !kinds.contains(&kind.to_string()),
            "{kind} should not be in {kinds:?}"
        );
    }
    // The router cost no more than direct keys: said plainly, with nothing at stake.
    assert_eq!(
        finding(&review, "router_markup").unwrap()["usd"].as_f64(),
        Some(0.0)
    );
}

#[test]
fn what_if_reprices_an_agents_usage_on_another_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meter.toml"), CONFIG).unwrap();
    seed(
        &dir.path().join("meter.db"),
        &[(
            "2026-10-11T10:00:00.000Z",
            "coder",
            "openai",
            "acme-large",
            "direct",
            1000,
            Some(2_000),
            Some(2_000),
            "reported",
        )],
        10,
    );
    let review = review(dir.path(), &["--what-if", "agent=coder,model=acme-small"]);
    let what_if = &review["what_if"];
    assert_eq!(what_if["calls"], 10);
    assert_eq!(what_if["cost_usd"].as_f64(), Some(0.00002));
    // 10 × (1000 in + 1000 out) = 20,000 tokens at today's acme price ($2 per 1M) = $0.04.
    assert_eq!(what_if["would_cost_usd"].as_f64(), Some(0.04));
    let out = Command::new(env!("CARGO_BIN_EXE_meter"))
        .current_dir(dir.path())
        .env_remove("METER_CONFIG")
        .args(["review", "--quarter", "2026-Q4", "--what-if", "agent=coder"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a what-if needs a target");
    let table = Command::new(env!("CARGO_BIN_EXE_meter"))
        .current_dir(dir.path())
        .env_remove("METER_CONFIG")
        .args([
            "review",
            "--quarter",
            "2026-Q4",
            "--what-if",
            "agent=coder,model=acme-small",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("What if coder used acme-small") && text.contains("$0.04"),
        "{text}"
    );
}

#[tokio::test]
async fn a_configured_router_markup_is_the_markup_paid_and_tiers_apply_per_call() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("meter.toml"),
        "[[provider]]\nname = \"openrouter\"\nmarkup = 0.05\n\n[review]\nmin_savings_usd = 0.0001\n",
    )
    .unwrap();
    let db = dir.path().join("meter.db");
    // Priced by meter itself, so the table's figure is the direct-key price and the cost adds
    // the router's 5%: price the rows as the writer does.
    let config = meter::config::Config::from_toml(
        &std::fs::read_to_string(dir.path().join("meter.toml")).unwrap(),
        "meter.toml",
    )
    .unwrap();
    let table = config.rate_table().unwrap();
    let date = chrono::NaiveDate::from_ymd_opt(2026, 10, 10).unwrap();
    let usage = meter::usage::Usage {
        input_tokens: 100_000,
        output_tokens: 1_000,
        ..Default::default()
    };
    let routed = meter::pricing::price_call(
        &table,
        "openrouter",
        config.provider_pricing("openrouter"),
        Some("anthropic/claude-sonnet-4.5"),
        date,
        Some(&usage),
        &Default::default(),
        None,
    );
    assert!(routed.cost_nanos.unwrap() > routed.table_cost_nanos.unwrap());
    seed(
        &db,
        &[(
            "2026-10-10T10:00:00.000Z",
            "triage",
            "openrouter",
            "anthropic/claude-sonnet-4.5",
            "router",
            1000,
            routed.cost_nanos,
            routed.table_cost_nanos,
            "reported",
        )],
        4,
    );
    // Gemini 2.5 Pro: ten 50k-token prompts are each under the 200k tier, whatever their sum.
    let gemini = meter::pricing::price_call(
        &table,
        "gemini",
        config.provider_pricing("gemini"),
        Some("gemini-2.5-pro"),
        date,
        Some(&usage),
        &Default::default(),
        None,
    );
    let conn =
        meter::ledger::writer::open_connection(&db, std::time::Duration::from_secs(5)).unwrap();
    for _ in 0..10 {
        conn.execute(
            "INSERT INTO usage (ts, agent, provider, route, model, status, input_tokens, output_tokens, cost_nanos, usage_status)
             VALUES ('2026-10-12T10:00:00.000Z', 'coder', 'gemini', 'direct', 'gemini-2.5-pro', 200, 100000, 1000, ?1, 'reported')",
            [gemini.cost_nanos],
        )
        .unwrap();
    }
    let review = review(dir.path(), &[]);
    let saves = finding(&review, "direct_key_saves").expect("the router's markup is visible");
    let markup = saves["usd"].as_f64().unwrap();
    let expected =
        4.0 * (routed.cost_nanos.unwrap() - routed.table_cost_nanos.unwrap()) as f64 / 1e9;
    assert!((markup - expected).abs() < 1e-9, "{markup} vs {expected}");
    let moved: Vec<&Value> = review["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "todays_prices" || f["kind"] == "price_move")
        .collect();
    assert!(
        moved
            .iter()
            .all(|f| !f["summary"].as_str().unwrap().contains("gemini")),
        "{moved:?}"
    );
    let what_if = review_what_if(dir.path(), "agent=coder,model=gemini-2.5-pro");
    assert_eq!(
        what_if["would_cost_usd"].as_f64(),
        what_if["cost_usd"].as_f64(),
        "same model, same price, per call"
    );
}

fn review_what_if(dir: &Path, what_if: &str) -> Value {
    review(dir, &["--what-if", what_if])["what_if"].clone()
}
