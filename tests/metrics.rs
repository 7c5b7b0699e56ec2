//! `/metrics` across restarts and under many label values: counters continue from the ledger,
//! and the agent and model labels are capped.
#![allow(clippy::unwrap_used)]

mod support;

use chrono::{DateTime, Utc};
use meter::clock::Clock;
use support::{FakeProvider, FakeResponse, Instance, Received};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// OpenAI chat answers naming the model asked for; `fail-` models get a 500.
fn answer(request: &Received) -> FakeResponse {
    let asked: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    let model = asked["model"].as_str().unwrap().to_string();
    if model.starts_with("fail-") {
        return FakeResponse::json(500, r#"{"error":{"message":"boom","type":"server_error"}}"#);
    }
    FakeResponse::json(
        200,
        format!(
            r#"{{"id":"c","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150}}}}"#
        ),
    )
}

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

const PRICE: &str = "[[price]]\nprovider = \"*\"\nmodel = \"m-*\"\neffective = \"2020-01-01\"\ninput = 10.0\noutput = 20.0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_continue_from_the_ledger_after_a_restart() {
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meter.db");
    let clock = Clock::starting_at(at("2026-11-25T12:00:00Z"));
    let mut meter = Instance::start(&db, &upstream.url(), PRICE, clock).await;
    for model in ["m-1", "m-1", "fail-1"] {
        meter
            .call("/openai/v1/chat/completions", "coder", &chat(model))
            .await;
    }
    let ok = "meter_requests_total{agent=\"coder\",model=\"m-1\",provider=\"openai\",route=\"direct\",status=\"2xx\"}";
    let failed = "meter_requests_total{agent=\"coder\",model=\"fail-1\",provider=\"openai\",route=\"direct\",status=\"5xx\"}";
    let cost =
        "meter_cost_usd_total{agent=\"coder\",model=\"m-1\",provider=\"openai\",route=\"direct\"}";
    let output = "meter_tokens_total{agent=\"coder\",model=\"m-1\",provider=\"openai\",route=\"direct\",type=\"output\"}";
    meter.wait_sample(ok, |v| v == 2.0).await;
    let before = (
        meter.sample(failed).await,
        meter.sample(cost).await,
        meter.sample(output).await,
    );
    // 2 calls x (100 x $10 + 50 x $20) per 1M = $0.004.
    assert_eq!(before, (Some(1.0), Some(0.004), Some(100.0)));
    meter.stop().await;

    let mut again = Instance::start(&db, &upstream.url(), PRICE, clock).await;
    let after = (
        again.sample(ok).await,
        again.sample(failed).await,
        again.sample(cost).await,
        again.sample(output).await,
    );
    assert_eq!(after, (Some(2.0), Some(1.0), Some(0.004), Some(100.0)));
    again
        .call("/openai/v1/chat/completions", "coder", &chat("m-1"))
        .await;
    again.wait_sample(ok, |v| v == 3.0).await;
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_model_labels_are_capped() {
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meter.db");
    let clock = Clock::starting_at(at("2026-11-25T12:00:00Z"));
    let extra = format!("{PRICE}\n[metrics]\nmax_agents = 2\nmax_models = 3\n");
    let mut meter = Instance::start(&db, &upstream.url(), &extra, clock).await;
    for i in 0..5 {
        meter
            .call(
                "/openai/v1/chat/completions",
                &format!("agent-{i}"),
                &chat(&format!("m-{i}")),
            )
            .await;
    }
    meter
        .wait_sample("meter_label_overflow_total{label=\"agent\"}", |v| v == 3.0)
        .await;
    let text = meter.metrics_text().await;
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("meter_requests_total{"))
        .collect();
    // agent-0/m-0, agent-1/m-1, other/m-2 (the third model fits), other/other (twice).
    assert_eq!(requests.len(), 4, "{requests:#?}");
    assert!(text.contains("meter_requests_total{agent=\"other\",model=\"other\",provider=\"openai\",route=\"direct\",status=\"2xx\"} 2"), "{text}");
    assert!(
        text.contains("meter_label_overflow_total{label=\"model\"} 2"),
        "{text}"
    );
    // The ledger keeps every name: only the metrics fold them.
    meter.stop().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let agents: i64 = conn
        .query_row("SELECT count(DISTINCT agent) FROM usage", [], |r| r.get(0))
        .unwrap();
    assert_eq!(agents, 5);
}
