//! Budgets, alerts and the weekly email (issue 6), end to end: meter in this process on a
//! shifted clock, a fake provider speaking OpenAI, Anthropic and Gemini, a real SMTP server
//! (aiosmtpd) reading what arrives, and the SQLite ledger.
#![allow(clippy::unwrap_used)]

#[path = "support/smtp.rs"]
mod smtp;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meter::clock::Clock;
use serde_json::Value;
use smtp::{free_port, SmtpMode, SmtpServer};
use support::{
    call_at, post_json, send, wait_for, FakeProvider, FakeResponse, Instance, Piece, Received,
};

/// Every test model costs $2.00 per call: 1,000 output tokens at $2,000 per 1M, input free
/// (so a call's worst case, `max_tokens` = 1,000 at the output price, is exactly its cost).
const PRICES: &str = r#"
[[price]]
provider = "*"
model = "test-*"
effective = "2020-01-01"
input = 0.0
output = 2000.0
"#;

const CALL_NANOS: i64 = 2_000_000_000;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Answers like each provider, with 1,000 prompt and 1,000 completion tokens.
fn provider_answer(request: &Received) -> FakeResponse {
    let path = request.uri.as_str();
    if path.contains("/messages") {
        FakeResponse::json(
            200,
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"test-model","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":1000,"output_tokens":1000}}"#,
        )
    } else if path.contains(":generateContent") {
        FakeResponse::json(
            200,
            r#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":1000,"candidatesTokenCount":1000,"totalTokenCount":2000},"modelVersion":"test-model"}"#,
        )
    } else if request.body.windows(11).any(|w| w == b"\"stream\":tr") {
        // A stream held open until the test releases it: the call stays in flight.
        FakeResponse::sse(vec![
            Piece::now("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"test-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n"),
            Piece::gated("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"test-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":1000,\"total_tokens\":2000}}\n\ndata: [DONE]\n\n"),
        ])
    } else {
        // The response names the model asked for.
        let asked: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let model = asked["model"].as_str().unwrap_or("test-model").to_string();
        FakeResponse::json(
            200,
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1000,"completion_tokens":1000,"total_tokens":2000}}}}"#
            ),
        )
    }
}

const CHAT: &str =
    r#"{"model":"test-model","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;

/// Meter on `clock` with the test prices and `extra`.
async fn start(db: &Path, upstream: &str, extra: &str, clock: Clock) -> Instance {
    Instance::start(db, upstream, &format!("{PRICES}\n{extra}"), clock).await
}

fn smtp_toml(port: u16) -> String {
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"meter@example.com\"\ntimeout_secs = 5\nretry_min_secs = 1\nretry_max_secs = 2\n"
    )
}

fn db_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("meter.db")
}

/// Messages whose subject contains `needle`.
fn with_subject(server: &SmtpServer, needle: &str) -> Vec<Value> {
    server
        .messages()
        .into_iter()
        .filter(|m| m["subject"].as_str().unwrap_or("").contains(needle))
        .collect()
}

async fn settle(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_threshold_crossed_by_concurrent_calls_on_two_meters_emails_once_ever() {
    let smtp = SmtpServer::start(SmtpMode::Plain);
    let upstream = FakeProvider::start(provider_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let budget = format!(
        "{}\n[[budget]]\nname = \"team-monthly\"\nperiod = \"month\"\nlimit_usd = 20.0\nagent = \"coder\"\nalert_at = [0.5]\nnotify = [\"ops@example.com\", \"lead@example.com\"]\n",
        smtp_toml(smtp.port())
    );
    let clock = Clock::starting_at(at("2026-11-25T12:00:00Z"));
    // Two meters on one ledger, as on two agent hosts sharing it.
    let mut first = start(&db, &upstream.url(), &budget, clock).await;
    let mut second = start(&db, &upstream.url(), &budget, clock).await;
    // 8 calls of $2 on each meter at once: $32 against a $10 threshold.
    let mut calls = Vec::new();
    for i in 0..16 {
        let target = if i % 2 == 0 { &first } else { &second };
        calls.push(tokio::spawn(call_at(
            target.url("/openai/v1/chat/completions"),
            "coder".to_string(),
            CHAT.to_string(),
        )));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().0, 200);
    }
    let messages = smtp.wait_for_messages(1, Duration::from_secs(20));
    // Both meters see the crossing; give the loser every chance to send a second email.
    settle(4).await;
    let messages_after = smtp.messages();
    assert_eq!(messages_after.len(), 1, "{messages_after:#?}");
    let message = &messages[0];
    let subject = message["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[meter] team-monthly 2026-11"),
        "{subject}"
    );
    assert!(subject.contains("50%"), "{subject}");
    let mut rcpt: Vec<&str> = message["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    rcpt.sort();
    assert_eq!(rcpt, ["lead@example.com", "ops@example.com"]);
    let text = message["text"].as_str().unwrap();
    for needle in [
        "team-monthly",
        "agent=coder",
        "$20.00",
        "coder",
        "openai/test-model",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(message["html"].as_str().unwrap().contains("team-monthly"));
    // Each meter counts its own sends; together, one.
    let sent = first
        .sample("meter_alerts_sent_total{kind=\"threshold\"}")
        .await
        .unwrap()
        + second
            .sample("meter_alerts_sent_total{kind=\"threshold\"}")
            .await
            .unwrap();
    assert_eq!(sent, 1.0);
    // The gauges: the second meter sees the first one's spend through the ledger.
    let spend = second
        .wait_sample("meter_budget_spend_usd{budget=\"team-monthly\"}", |v| {
            (v - 32.0).abs() < 1e-9
        })
        .await;
    assert_eq!(spend, 32.0);
    assert_eq!(
        second
            .sample("meter_budget_limit_usd{budget=\"team-monthly\"}")
            .await,
        Some(20.0)
    );
    first.stop().await;
    second.stop().await;

    // A restart (later the same month) sends nothing more.
    let mut again = start(
        &db,
        &upstream.url(),
        &budget,
        Clock::starting_at(at("2026-11-26T08:00:00Z")),
    )
    .await;
    again
        .wait_sample("meter_budget_spend_usd{budget=\"team-monthly\"}", |v| {
            v == 32.0
        })
        .await;
    settle(3).await;
    assert_eq!(smtp.messages().len(), 1);
    again.stop().await;

    // A new month is a new period: crossing it again alerts again, once.
    let mut december = start(
        &db,
        &upstream.url(),
        &budget,
        Clock::starting_at(at("2026-12-01T00:00:10Z")),
    )
    .await;
    for _ in 0..5 {
        let (status, _, _) = december
            .call("/openai/v1/chat/completions", "coder", CHAT)
            .await;
        assert_eq!(status, 200);
    }
    let messages = smtp.wait_for_messages(2, Duration::from_secs(20));
    assert!(messages[1]["subject"]
        .as_str()
        .unwrap()
        .starts_with("[meter] team-monthly 2026-12"));
    december.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_waits_out_an_smtp_outage_and_arrives_once() {
    let port = free_port();
    let upstream = FakeProvider::start(provider_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let budget = format!(
        "{}\n[[budget]]\nname = \"daily\"\nperiod = \"day\"\nlimit_usd = 4.0\nalert_at = [1.0]\nnotify = [\"ops@example.com\"]\n",
        smtp_toml(port)
    );
    let clock = Clock::starting_at(at("2026-11-25T12:00:00Z"));
    let mut meter = start(&db_in(&dir), &upstream.url(), &budget, clock).await;
    for _ in 0..2 {
        let (status, _, _) = meter
            .call("/openai/v1/chat/completions", "coder", CHAT)
            .await;
        assert_eq!(status, 200);
    }
    // Nobody listens: the attempt fails, is counted, and is retried.
    meter
        .wait_sample("meter_alert_failures_total{kind=\"threshold\"}", |v| {
            v >= 2.0
        })
        .await;
    assert_eq!(
        meter
            .sample("meter_alerts_sent_total{kind=\"threshold\"}")
            .await,
        Some(0.0)
    );
    let smtp = SmtpServer::start_on(port, SmtpMode::Plain, None);
    let messages = smtp.wait_for_messages(1, Duration::from_secs(20));
    assert!(messages[0]["subject"]
        .as_str()
        .unwrap()
        .contains("[meter] daily 2026-11-25"));
    settle(3).await;
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(
        meter
            .sample("meter_alerts_sent_total{kind=\"threshold\"}")
            .await,
        Some(1.0)
    );
    meter.stop().await;
    // The ledger says so too.
    let conn = rusqlite::Connection::open(db_in(&dir)).unwrap();
    let (status, attempts): (String, i64) = conn
        .query_row(
            "SELECT status, attempts FROM alert_outbox WHERE subject_key = 'daily'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "sent");
    assert!(attempts >= 3, "{attempts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forecast_over_the_limit_warns_once_but_not_before_enough_of_the_period() {
    let smtp = SmtpServer::start(SmtpMode::Plain);
    let upstream = FakeProvider::start(provider_answer).await;
    let dir = tempfile::tempdir().unwrap();
    // Noon: half the day gone. $6 spent forecasts $12 against $10.
    let budgets = format!(
        "{}\n\
         [[budget]]\nname = \"forecasting\"\nperiod = \"day\"\nlimit_usd = 10.0\nalert_at = [0.9]\nforecast_alert = true\nforecast_min_elapsed = 0.25\nnotify = [\"ops@example.com\"]\n\n\
         [[budget]]\nname = \"patient\"\nperiod = \"day\"\nlimit_usd = 10.0\nalert_at = [0.9]\nforecast_alert = true\nforecast_min_elapsed = 0.75\nnotify = [\"ops@example.com\"]\n",
        smtp_toml(smtp.port())
    );
    let clock = Clock::starting_at(at("2026-11-25T12:00:00Z"));
    let mut meter = start(&db_in(&dir), &upstream.url(), &budgets, clock).await;
    for _ in 0..3 {
        let (status, _, _) = meter
            .call("/openai/v1/chat/completions", "coder", CHAT)
            .await;
        assert_eq!(status, 200);
    }
    let messages = smtp.wait_for_messages(1, Duration::from_secs(20));
    let subject = messages[0]["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[meter] forecasting 2026-11-25"),
        "{subject}"
    );
    assert!(subject.contains("forecast"), "{subject}");
    let forecast = meter
        .wait_sample("meter_budget_forecast_usd{budget=\"forecasting\"}", |v| {
            v > 11.0
        })
        .await;
    assert!((11.5..12.5).contains(&forecast), "{forecast}");
    // A fourth call keeps the forecast over the limit: no second warning. "patient" has not
    // seen enough of its day to forecast at all.
    meter
        .call("/openai/v1/chat/completions", "coder", CHAT)
        .await;
    settle(3).await;
    assert_eq!(smtp.messages().len(), 1, "{:#?}", smtp.messages());
    assert!(meter
        .metrics_text()
        .await
        .lines()
        .all(|l| !l.starts_with("meter_budget_forecast_usd{budget=\"patient\"}")));
    meter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_budget_answers_429_in_each_providers_format_and_spares_other_scopes() {
    let upstream = FakeProvider::start(provider_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let budgets = "[[budget]]\nname = \"capped\"\nperiod = \"month\"\nlimit_usd = 3.0\nagent = \"capped\"\nenforce = true\n\n\
                   [[budget]]\nname = \"strict\"\nperiod = \"month\"\nlimit_usd = 100.0\nagent = \"strict\"\nenforce = true\nunpriced = \"block\"\n\n\
                   [[budget]]\nname = \"open\"\nperiod = \"month\"\nlimit_usd = 100.0\nagent = \"open\"\nenforce = true\n";
    let clock = Clock::starting_at(at("2026-11-25T12:00:00Z"));
    let mut meter = start(&db, &upstream.url(), budgets, clock).await;
    // $0 + $2 < $3, then $2 + $2: the second call is let through (the budget is not yet spent),
    // the third is not.
    for _ in 0..2 {
        let (status, _, _) = meter
            .call("/openai/v1/chat/completions", "capped", CHAT)
            .await;
        assert_eq!(status, 200);
    }
    let forwarded = upstream.requests().len();
    let (status, headers, body) = meter
        .call("/openai/v1/chat/completions", "capped", CHAT)
        .await;
    assert_eq!(status, 429);
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"capped\"") && message.contains("$4.00") && message.contains("$3.00"),
        "{message}"
    );
    let anthropic =
        r#"{"model":"test-model","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, body) = meter
        .call("/anthropic/v1/messages", "capped", anthropic)
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("capped"));
    let gemini = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":1000}}"#;
    let (status, _, body) = meter
        .call(
            "/gemini/v1beta/models/test-model:generateContent",
            "capped",
            gemini,
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], 429);
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(body["error"]["details"][0]["reason"], "budget_exceeded");
    assert_eq!(
        upstream.requests().len(),
        forwarded,
        "a refused call is never forwarded"
    );
    // Another agent's calls pass, in every format.
    for (path, body) in [
        ("/openai/v1/chat/completions", CHAT),
        ("/anthropic/v1/messages", anthropic),
        ("/gemini/v1beta/models/test-model:generateContent", gemini),
    ] {
        let (status, _, _) = meter.call(path, "free", body).await;
        assert_eq!(status, 200, "{path}");
    }
    // A free local model is never stopped by a money budget.
    let local = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, _) = meter
        .call("/ollama/v1/chat/completions", "capped", local)
        .await;
    assert_eq!(status, 200);
    // unpriced = "block": a model without a price cannot be kept within a budget.
    let unknown =
        r#"{"model":"mystery-1","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, body) = meter
        .call("/openai/v1/chat/completions", "strict", unknown)
        .await;
    assert_eq!(status, 429);
    assert!(body["error"]["message"].as_str().unwrap().contains("price"));
    let (status, _, _) = meter
        .call("/openai/v1/chat/completions", "open", unknown)
        .await;
    assert_eq!(
        status, 200,
        "unpriced = \"allow\" (the default) lets it through while the budget is not spent"
    );
    let (status, _, _) = meter
        .call("/openai/v1/chat/completions", "capped", unknown)
        .await;
    assert_eq!(status, 429, "once spent, no paid call in scope passes");
    meter.stop().await;

    let conn = rusqlite::Connection::open(&db).unwrap();
    let blocked: Vec<(String, String, i64, String)> = conn
        .prepare("SELECT agent, provider, status, blocked_by FROM usage WHERE blocked_by IS NOT NULL ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        blocked,
        vec![
            ("capped".into(), "openai".into(), 429, "capped".into()),
            ("capped".into(), "anthropic".into(), 429, "capped".into()),
            ("capped".into(), "gemini".into(), 429, "capped".into()),
            ("strict".into(), "openai".into(), 429, "strict".into()),
            ("capped".into(), "openai".into(), 429, "capped".into()),
        ]
    );
    // Blocked calls cost nothing.
    let spent: i64 = conn
        .query_row(
            "SELECT sum(cost_nanos) FROM usage WHERE agent = 'capped'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(spent, 2 * CALL_NANOS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_in_flight_cannot_spend_past_the_limit() {
    let upstream = FakeProvider::start(provider_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let budget =
        "[[budget]]\nname = \"burst\"\nperiod = \"month\"\nlimit_usd = 10.0\nenforce = true\n";
    let clock = Clock::starting_at(at("2026-11-25T12:00:00Z"));
    let mut meter = start(&db, &upstream.url(), budget, clock).await;
    let stream = r#"{"model":"test-model","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    // 12 streams at once, each held open by the provider: $2 worst case each against $10.
    let mut calls = Vec::new();
    for _ in 0..12 {
        let url = meter.url("/openai/v1/chat/completions");
        calls.push(tokio::spawn(async move {
            let mut request = post_json(&url, stream);
            request
                .headers_mut()
                .insert("x-meter-agent", "burst".parse().unwrap());
            send(request).await.0
        }));
    }
    wait_for("the admitted streams to reach the provider", || {
        upstream.requests().len() >= 5
    })
    .await;
    settle(1).await;
    // Five reservations fill the budget: the rest were refused while the five were in flight.
    assert_eq!(upstream.requests().len(), 5);
    upstream.release(5);
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        7,
        "{statuses:?}"
    );
    meter.stop().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let spent: i64 = conn
        .query_row("SELECT sum(cost_nanos) FROM usage", [], |r| r.get(0))
        .unwrap();
    assert_eq!(spent, 5 * CALL_NANOS, "at most the limit");
}

/// Seeds the ledger with one $2 call by `agent` at `ts`.
fn seed(db: &Path, ts: &str, agent: &str, cost_nanos: i64) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    meter::ledger::schema::migrate(&mut conn).unwrap();
    conn.execute(
        "INSERT INTO usage (ts, agent, provider, route, model, endpoint, status, input_tokens, output_tokens, cost_nanos, cost_usd, usage_status, latency_ms)
         VALUES (?1, ?2, 'openai', 'direct', 'test-model', 'chat.completions', 200, 1000, 1000, ?3, ?4, 'reported', 900)",
        rusqlite::params![ts, agent, cost_nanos, cost_nanos as f64 / 1e9],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_weekly_email_goes_out_at_its_time_and_once_after_downtime() {
    let smtp = SmtpServer::start(SmtpMode::Plain);
    let upstream = FakeProvider::start(provider_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    // Week 47 (16-22 Nov) and the week before.
    seed(&db, "2026-11-10T10:00:00.000Z", "coder", CALL_NANOS);
    seed(&db, "2026-11-18T10:00:00.000Z", "coder", 3 * CALL_NANOS);
    seed(&db, "2026-11-19T10:00:00.000Z", "writer", CALL_NANOS);
    let weekly = format!(
        "{}\n[report.weekly]\nto = [\"team@example.com\"]\nweekday = \"mon\"\nat = \"09:00\"\n",
        smtp_toml(smtp.port())
    );
    // Three seconds before Monday 09:00. The slot before (Monday 16 Nov) passed while meter
    // was down, but the next one is minutes away: no catch-up of week 46 just before week 47.
    let mut meter = start(
        &db,
        &upstream.url(),
        &weekly,
        Clock::starting_at(at("2026-11-23T08:59:57Z")),
    )
    .await;
    // At 09:00 the week-47 report goes out.
    let messages = smtp.wait_for_messages(1, Duration::from_secs(20));
    let subject = messages[0]["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[meter] weekly report 2026-W47"),
        "{subject}"
    );
    assert!(subject.contains("$8.00"), "{subject}");
    let text = messages[0]["text"].as_str().unwrap();
    for needle in [
        "coder",
        "writer",
        "2026-W46",
        "meter report --week 2026-W47",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert_eq!(messages[0]["rcpt_tos"][0], "team@example.com");
    settle(2).await;
    assert_eq!(smtp.messages().len(), 1);
    meter.stop().await;

    // Restarted the same day: nothing again.
    let mut again = start(
        &db,
        &upstream.url(),
        &weekly,
        Clock::starting_at(at("2026-11-23T10:00:00Z")),
    )
    .await;
    settle(3).await;
    assert_eq!(smtp.messages().len(), 1);
    again.stop().await;

    // Down over the next Monday's slot: sent once when meter comes back, then never again.
    for now in ["2026-11-30T12:00:00Z", "2026-11-30T12:05:00Z"] {
        let mut later = start(&db, &upstream.url(), &weekly, Clock::starting_at(at(now))).await;
        settle(3).await;
        later.stop().await;
    }
    let weekly48 = with_subject(&smtp, "2026-W48");
    assert_eq!(weekly48.len(), 1, "{:#?}", smtp.messages());
    assert_eq!(smtp.messages().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_install_does_not_catch_up_a_report_for_before_it_existed() {
    let smtp = SmtpServer::start(SmtpMode::Plain);
    let upstream = FakeProvider::start(provider_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let weekly = format!(
        "{}\n[report.weekly]\nto = [\"team@example.com\"]\n",
        smtp_toml(smtp.port())
    );
    let mut meter = start(
        &db_in(&dir),
        &upstream.url(),
        &weekly,
        Clock::starting_at(at("2026-11-25T12:00:00Z")),
    )
    .await;
    settle(3).await;
    assert!(smtp.messages().is_empty(), "{:#?}", smtp.messages());
    meter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_status_and_alert_test_from_the_command_line() {
    let smtp = SmtpServer::start(SmtpMode::Plain);
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let now = Utc::now();
    let ts = meter::ledger::format_ts(&now);
    seed(&db, &ts, "coder", 3 * CALL_NANOS);
    seed(&db, &ts, "writer", CALL_NANOS);
    let config = dir.path().join("meter.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[store]\npath = {db:?}\n\n[[budget]]\nname = \"team\"\nperiod = \"month\"\nlimit_usd = 10.0\nnotify = [\"ops@example.com\"]\n\n[[budget]]\nname = \"coder-day\"\nperiod = \"day\"\nlimit_usd = 5.0\nagent = \"coder\"\nenforce = true\nalert_at = [0.5, 1.0]\n",
            smtp_toml(smtp.port())
        ),
    )
    .unwrap();
    let meter = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_meter"))
            .env_remove("METER_NOW")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let output = meter(&["budget", "status", "--format", "json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    let team = &status["budgets"][0];
    assert_eq!(team["name"], "team");
    assert_eq!(team["period"]["kind"], "month");
    assert_eq!(team["spend_usd"], 8.0);
    assert_eq!(team["limit_usd"], 10.0);
    assert_eq!(team["thresholds"][1]["at"], 0.8);
    assert_eq!(team["thresholds"][1]["crossed"], true);
    assert_eq!(team["thresholds"][2]["crossed"], false);
    assert_eq!(team["top_agents"][0]["name"], "coder");
    let coder = &status["budgets"][1];
    assert_eq!(coder["spend_usd"], 6.0);
    assert_eq!(coder["state"], "over");
    assert_eq!(coder["enforce"], true);
    let output = meter(&["budget", "status"]);
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.starts_with("BUDGET"), "{table}");
    assert!(
        table.contains("coder-day") && table.contains("$6.00") && table.contains("120.0%"),
        "{table}"
    );

    let output = meter(&["alert", "test"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let messages = smtp.wait_for_messages(1, Duration::from_secs(10));
    assert_eq!(messages[0]["subject"], "[meter] test email");
    assert_eq!(messages[0]["rcpt_tos"][0], "ops@example.com");
    let output = meter(&["alert", "test", "--to", "someone@example.org"]);
    assert!(output.status.success());
    let messages = smtp.wait_for_messages(2, Duration::from_secs(10));
    assert_eq!(messages[1]["rcpt_tos"][0], "someone@example.org");
    // A server that is down: exit 1 with one clear line.
    let mut smtp = smtp;
    smtp.stop();
    let output = meter(&["alert", "test"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", smtp.port())),
        "{stderr}"
    );
}
