//! `meter prices list | check | import` and `meter reprice`, as a user runs them, on a ledger a
//! real meter wrote.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn meter(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meter"))
        .current_dir(cwd)
        .env_remove("METER_CONFIG")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The real LiteLLM price file, from the shared test data beside the repository.
fn litellm_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/litellm-model-prices-2025-08-31.json")
}

#[test]
fn list_shows_the_table_in_force_with_sources() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = meter(dir.path(), &["prices", "list"]);
    assert_eq!(code, 0, "{err}");
    let gpt4o = out
        .lines()
        .find(|l| l.starts_with("openai") && l.split_whitespace().nth(1) == Some("gpt-4o*"))
        .unwrap();
    assert!(
        gpt4o.contains("$2.5") && gpt4o.contains("$10") && gpt4o.contains("https://"),
        "{gpt4o}"
    );
    // Only the price in force: the 2024 $5 entry for gpt-4o is history, not listed.
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("openai") && l.split_whitespace().nth(1) == Some("gpt-4o*"))
            .count(),
        1
    );
    let (code, anthropic, _) = meter(dir.path(), &["prices", "list", "--provider", "anthropic"]);
    assert_eq!(code, 0);
    assert!(
        anthropic
            .lines()
            .skip(1)
            .filter(|l| l.contains('$'))
            .all(|l| l.starts_with("anthropic") || l.starts_with('*')),
        "{anthropic}"
    );
}

#[test]
fn import_merges_litellm_into_the_prices_file_and_reports_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let file = litellm_file();
    let (code, out, err) = meter(
        dir.path(),
        &[
            "prices",
            "import",
            file.to_str().unwrap(),
            "--effective",
            "2025-09-01",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with("prices.toml: ") && first.contains("added") && first.contains("skipped"),
        "{out}"
    );
    let added: usize = first
        .split(": ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(added > 300, "{first}");
    assert!(out.contains("provider not one of meter's"), "{out}");
    // The file loads back as a price layer, and its entries price calls.
    let text = std::fs::read_to_string(dir.path().join("prices.toml")).unwrap();
    let entries = meter::pricing::parse_price_file(&text, meter::pricing::Layer::File).unwrap();
    assert_eq!(entries.len(), added);
    let (code, list, _) = meter(dir.path(), &["prices", "list", "--provider", "groq"]);
    assert_eq!(code, 0);
    assert!(list.contains("prices_file"), "{list}");
    // Importing the same file again changes nothing.
    let (code, again, _) = meter(
        dir.path(),
        &[
            "prices",
            "import",
            file.to_str().unwrap(),
            "--effective",
            "2025-09-01",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        again.starts_with(&format!(
            "prices.toml: 0 added, 0 changed, {added} unchanged"
        )),
        "{again}"
    );
    // A bad file is a clear usage error.
    std::fs::write(dir.path().join("bad.json"), "[1,2]").unwrap();
    let (code, _, err) = meter(dir.path(), &["prices", "import", "bad.json"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.json") && err.lines().count() == 1,
        "{err}"
    );
}

#[tokio::test]
async fn unknown_models_are_unpriced_then_check_and_reprice_fix_them() {
    let upstream = FakeProvider::start(|_| {
        FakeResponse::json(
            200,
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"acme-large-1","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}"#,
        )
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    for _ in 0..3 {
        let (status, _, _) = send(post_json(
            &meter.url("/openai/v1/chat/completions"),
            r#"{"model":"acme-large-1","messages":[]}"#,
        ))
        .await;
        assert_eq!(status, 200);
    }
    let metrics = meter
        .metrics_when(|m| {
            m.contains(r#"meter_unpriced_requests_total{model="acme-large-1",provider="openai"} 3"#)
        })
        .await;
    assert!(
        metrics
            .contains(r#"meter_unpriced_requests_total{model="acme-large-1",provider="openai"} 3"#),
        "{metrics}"
    );
    meter.stop().await;
    let rows = rows(&meter.db);
    assert!(rows
        .iter()
        .all(|r| r.cost_nanos.is_none() && r.cost_usd.is_none() && r.usage_status == "reported"));

    let dir = meter.db.parent().unwrap().to_path_buf();
    let db = meter.db.to_str().unwrap().to_string();
    let (code, out, err) = self::meter(&dir, &["--db", &db, "prices", "check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("acme-large-1") && out.contains("no price"),
        "{out}"
    );

    // Add a price in the prices_file beside the (default) config, then reprice.
    std::fs::write(
        dir.join("prices.toml"),
        "[[price]]\nprovider = \"openai\"\nmodel = \"acme-large-*\"\neffective = \"2020-01-01\"\ninput = 1.0\noutput = 2.0\n",
    )
    .unwrap();
    let (_, out, _) = self::meter(&dir, &["--db", &db, "prices", "check"]);
    assert!(out.contains("meter reprice --since"), "{out}");
    let (code, out, err) = self::meter(
        &dir,
        &["--db", &db, "reprice", "--since", "2020-01-01", "--dry-run"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would change 3"), "{out}");
    assert!(
        rows_cost(&meter.db).iter().all(Option::is_none),
        "a dry run writes nothing"
    );
    let (code, out, _) = self::meter(&dir, &["--db", &db, "reprice", "--since", "2020-01-01"]);
    assert_eq!(code, 0);
    // 1000 × $1 + 500 × $2 per 1M = $0.002 a call.
    assert!(
        out.contains("changed 3") && out.contains("after $0.006"),
        "{out}"
    );
    assert_eq!(rows_cost(&meter.db), vec![Some(2_000_000); 3]);
    let (_, out, _) = self::meter(&dir, &["--db", &db, "prices", "check"]);
    assert!(out.contains("every call"), "{out}");
}

fn rows_cost(db: &Path) -> Vec<Option<i64>> {
    rows(db).into_iter().map(|r| r.cost_nanos).collect()
}

#[test]
fn reprice_keeps_costs_it_cannot_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meter.db");
    let conn =
        meter::ledger::writer::open_connection(&db, std::time::Duration::from_secs(5)).unwrap();
    // History imported by hand: a cost for a model meter has no price for.
    conn.execute(
        "INSERT INTO usage (ts, agent, provider, route, model, status, input_tokens, output_tokens, cost_usd, usage_status)
         VALUES ('2026-10-01T00:00:00.000Z', 'a', 'openai', 'direct', 'legacy-model', 200, 10, 10, 2.0, 'reported')",
        [],
    )
    .unwrap();
    drop(conn);
    let db = db.to_str().unwrap();
    let (code, out, err) = meter(
        dir.path(),
        &[
            "--db",
            db,
            "reprice",
            "--since",
            "2026-10-01",
            "--until",
            "2026-10-01",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cost before $2.00 -> after $2.00"), "{out}");
    assert_eq!(rows(Path::new(db))[0].cost_nanos, Some(2_000_000_000));
}
