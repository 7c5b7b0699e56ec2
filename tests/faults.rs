//! The fault suite (issue 8): what a network, a disk or a hostile peer can do to meter, one test
//! per fault. Each asserts what the client sees AND what the ledger and /metrics say, so that
//! nothing a fault does makes meter lose a record or break a call it could have passed on.
//!
//! Every party runs on 127.0.0.1; every load is bounded in count and time. Timeouts here are
//! upper bounds of correctness with wide margins (the machine is small and shared), never
//! performance targets.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------------
// Wire bodies

const CHAT_JSON: &str = r#"{"id":"chatcmpl-faults","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":1024}}}"#;

/// An OpenAI stream chunk carrying `content`.
fn chunk(content: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-stream1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

const USAGE_CHUNK: &str = "data: {\"id\":\"chatcmpl-stream1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29}}\n\n";

const DONE: &str = "data: [DONE]\n\n";

fn chat_request(stream: bool) -> String {
    format!(
        r#"{{"model":"gpt-4o","stream":{stream},"messages":[{{"role":"user","content":"secret prompt text"}}]}}"#
    )
}

/// A streaming request that asks for usage itself: meter forwards it and its answer untouched.
const STREAM_WITH_USAGE: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"secret prompt text"}]}"#;

const ANTHROPIC_REQUEST: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"secret prompt text"}]}"#;

/// The start of an Anthropic stream: `message_start` reports the input (25) before any text.
const ANTHROPIC_HEAD: [&str; 3] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_faults\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"The refund is computed in floats, so the total drifts\"}}\n\n",
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// A sample's value in Prometheus text (the first line starting with `series` then a space).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(metrics: SocketAddr) -> String {
    let (status, _, body) = send(
        Request::get(format!("http://{metrics}/metrics"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec()).unwrap()
}

/// Waits (at most `limit`) until the metric `series` satisfies `want`; returns its value.
async fn wait_metric(
    metrics: SocketAddr,
    series: &str,
    limit: Duration,
    want: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let value = sample(&scrape(metrics).await, series);
        if let Some(v) = value.filter(|v| want(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never got there (last {value:?})"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (at most `limit`) for `done`, polling; panics naming `what`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn row_count(db: &Path) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM usage", [], |r| r.get::<_, i64>(0))
        .unwrap() as usize
}

/// Waits until the ledger holds `rows` rows and meter has nothing pending.
async fn all_records_land(what: &str, metrics: SocketAddr, db: &Path, rows: usize) {
    wait_until(what, Duration::from_secs(20), || row_count(db) == rows).await;
    wait_metric(
        metrics,
        "meter_ledger_pending_records",
        Duration::from_secs(10),
        |v| v == 0.0,
    )
    .await;
}

/// The real binary on a config file routing `openai` (and `anthropic`) to `upstream`, with
/// `server` lines in its `[server]` table; the ledger at `db`.
fn bin_meter(dir: &Path, db: &Path, upstream: &str, server: &str) -> BinMeter {
    let config = dir.join("meter.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\n{server}\n\n[[provider]]\nname = \"openai\"\nupstream = \"{upstream}\"\n\n\
             [[provider]]\nname = \"anthropic\"\nupstream = \"{upstream}\"\n"
        ),
    )
    .unwrap();
    BinMeter::start(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
    )
}

/// A process's peak and current resident memory in kB (`VmHWM`, `VmRSS`).
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn ready(metrics: SocketAddr) -> u16 {
    send(
        Request::get(format!("http://{metrics}/readyz"))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .0
}

/// Reads a request (headers, then a `content-length` body) off a raw connection.
async fn read_request(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut piece).await.unwrap();
        assert!(n > 0, "the connection closed before a whole request");
        buf.extend_from_slice(&piece[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut piece).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&piece[..n]);
    }
}

/// Whether the peer has closed `stream` (EOF or reset), waiting at most `wait` for a sign.
async fn closed_by_peer(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Whatever meter says before closing (an error response) is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Upstream resets the connection mid-stream

/// An upstream speaking raw HTTP/1.1: it answers one request with `pieces` as chunks of an
/// event stream, then waits for `cut` and drops the connection without the last chunk: with an
/// RST (SO_LINGER 0) when `reset`, else with a plain FIN.
async fn cutting_upstream(pieces: Vec<&'static str>, cut: Arc<Notify>, reset: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for piece in pieces {
            let framed = format!("{:x}\r\n{piece}\r\n", piece.len());
            stream.write_all(framed.as_bytes()).await.unwrap();
        }
        stream.flush().await.unwrap();
        cut.notified().await;
        if reset {
            stream.set_zero_linger().unwrap();
        }
        drop(stream);
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn upstream_reset_mid_stream_forwards_what_came_then_fails_and_records_partial_usage() {
    // "anthropic" resets its connection mid-stream (RST); "cutoff", the same API, closes it
    // (FIN) without ending the chunked body. Both are a truncated answer.
    let (reset, close) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let resetting = cutting_upstream(ANTHROPIC_HEAD.to_vec(), reset.clone(), true).await;
    let closing = cutting_upstream(ANTHROPIC_HEAD.to_vec(), close.clone(), false).await;
    let mut meter = Meter::start(
        &resetting,
        &format!(
            "[[provider]]\nname = \"anthropic\"\nupstream = \"{resetting}\"\n\n\
             [[provider]]\nname = \"cutoff\"\nupstream = \"{closing}\"\nkind = \"anthropic\"\n"
        ),
    )
    .await;
    for (provider, cut) in [("anthropic", &reset), ("cutoff", &close)] {
        let response = client()
            .request(post_json(
                &meter.url(&format!("/{provider}/v1/messages")),
                ANTHROPIC_REQUEST,
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let expected = ANTHROPIC_HEAD.concat();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("the events sent before the cut must reach the client")
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(
            got,
            expected.as_bytes(),
            "{provider}: every byte before the cut"
        );
        // Now the upstream cuts the connection: the client must see an error, not a clean end
        // (a clean end would pass a truncated answer off as complete).
        cut.notify_one();
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the cut must reach the client");
        assert!(
            rest.is_err(),
            "{provider}: the client must see the stream fail"
        );
    }

    let text = meter
        .metrics_when(|m| m.contains("meter_usage_unread_total{provider=\"cutoff\""))
        .await;
    for provider in ["anthropic", "cutoff"] {
        let series = format!(
            "meter_usage_unread_total{{provider=\"{provider}\",usage_status=\"estimated\"}} 1"
        );
        assert!(text.contains(&series), "{series}: {text}");
    }
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row.status, 200);
        assert_eq!(row.error.as_deref(), Some("upstream_reset"), "{row:?}");
        assert_eq!(row.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert!(row.streaming);
        assert_eq!(row.usage_status, "estimated");
        // The input message_start reported is kept as reported; the output is counted from
        // the text that streamed before the cut (a dozen tokens), never zero.
        assert_eq!(row.input_tokens, 25, "{row:?}");
        assert!((5..=30).contains(&row.output_tokens), "{row:?}");
    }
    assert!(rows[0].cost_nanos.is_some_and(|c| c > 0), "{:?}", rows[0]);
}

// ---------------------------------------------------------------------------------------------
// 2. Upstream stalls: before the headers, and inside the body

#[test]
fn default_timeouts_fit_slow_reasoning_models() {
    // Reasoning models (o1/o3, extended thinking) can think for many minutes before the first
    // byte of a non-streaming answer, or between two events of a stream. meter's defaults
    // must outlast the SDKs' own 10-minute timeouts, so that the client decides.
    let config = meter::config::Config::from_toml("", "defaults").unwrap();
    for provider in &config.providers {
        assert!(
            provider.response_timeout >= Duration::from_secs(600),
            "{}: response timeout {:?}",
            provider.name,
            provider.response_timeout
        );
        assert!(
            provider.idle_timeout >= Duration::from_secs(600),
            "{}: idle timeout {:?}",
            provider.name,
            provider.idle_timeout
        );
    }
    // [upstream] sets every provider's; a provider's own keys win over it.
    let config = meter::config::Config::from_toml(
        "[upstream]\nresponse_timeout_secs = 5\nidle_timeout_secs = 6\n\n\
         [[provider]]\nname = \"openai\"\nresponse_timeout_secs = 1800\nidle_timeout_secs = 1200\n",
        "override",
    )
    .unwrap();
    let find = |name: &str| {
        config
            .providers
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .clone()
    };
    let openai = find("openai");
    let anthropic = find("anthropic");
    assert_eq!(
        (openai.response_timeout, openai.idle_timeout),
        (Duration::from_secs(1800), Duration::from_secs(1200))
    );
    assert_eq!(
        (anthropic.response_timeout, anthropic.idle_timeout),
        (Duration::from_secs(5), Duration::from_secs(6))
    );
    // `meter init` writes both keys, with their defaults.
    let init = meter::config::render_default_config();
    assert!(init.contains("response_timeout_secs = 900"), "{init}");
    assert!(init.contains("idle_timeout_secs = 900"), "{init}");
}

#[tokio::test]
async fn upstream_stalling_before_headers_is_504_in_the_providers_format_unless_its_timeout_allows()
{
    // Every answer takes 2 s to start. [upstream] allows 1 s; the provider "patient" (same
    // wire format) overrides it with 30 s.
    let upstream = FakeProvider::start(|received| {
        let mut response = if received.uri.contains("generateContent") {
            FakeResponse::json(200, r#"{"candidates":[],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2,"totalTokenCount":5},"modelVersion":"gemini-2.5-pro"}"#)
        } else {
            FakeResponse::json(200, r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#)
        };
        response.head_delay = Duration::from_secs(2);
        response
    })
    .await;
    let url = upstream.url();
    let mut meter = Meter::start(
        &url,
        &format!(
            "[upstream]\nresponse_timeout_secs = 1\n\n\
             [[provider]]\nname = \"anthropic\"\nupstream = \"{url}\"\n\n\
             [[provider]]\nname = \"gemini\"\nupstream = \"{url}\"\n\n\
             [[provider]]\nname = \"patient\"\nupstream = \"{url}\"\nkind = \"anthropic\"\nresponse_timeout_secs = 30\n"
        ),
    )
    .await;
    let request = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"secret prompt text"}]}"#;
    let (status, headers, body) =
        send(post_json(&meter.url("/anthropic/v1/messages"), request)).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json");
    // Anthropic's error shape, so the SDK raises its own timeout error.
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "timeout_error");
    assert_eq!(error["error"]["meter_code"], "upstream_timeout");
    // Gemini's shape.
    let (status, _, body) = send(post_json(
        &meter.url("/gemini/v1beta/models/gemini-2.5-pro:generateContent"),
        r#"{"contents":[{"parts":[{"text":"secret prompt text"}]}]}"#,
    ))
    .await;
    assert_eq!(status, 504);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["status"], "DEADLINE_EXCEEDED");
    assert_eq!(error["error"]["details"][0]["reason"], "upstream_timeout");
    // The provider's own timeout wins over [upstream]'s: the same slow answer passes.
    let (status, _, body) = send(post_json(&meter.url("/patient/v1/messages"), request)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body.starts_with(b"{\"id\":\"msg_1\""));

    assert_eq!(
        upstream.requests().len(),
        3,
        "every call reached the provider"
    );
    meter.stop().await;
    let rows = rows(&meter.db);
    let summary: Vec<(&str, i64, Option<&str>, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.provider.as_str(),
                r.status,
                r.error.as_deref(),
                r.usage_status.as_str(),
            )
        })
        .collect();
    // The timed-out calls reached the provider, which may have billed them: missing, not 0.
    assert_eq!(
        summary,
        vec![
            ("anthropic", 504, Some("upstream_timeout"), "missing"),
            ("gemini", 504, Some("upstream_timeout"), "missing"),
            ("patient", 200, None, "reported"),
        ]
    );
    assert_eq!(rows[0].model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(rows[1].model.as_deref(), Some("gemini-2.5-pro"));
    assert_eq!((rows[2].input_tokens, rows[2].output_tokens), (12, 3));
}

#[tokio::test]
async fn upstream_stalling_mid_body_is_cut_after_its_providers_idle_timeout() {
    // Both streams send one event, then nothing until the test releases the rest. "stall"
    // allows 1 s of silence; "openai" keeps the generous default.
    let upstream = FakeProvider::start(|_| {
        FakeResponse::sse(vec![
            Piece::now(chunk("Hel")),
            Piece::gated(chunk("lo")),
            Piece::now(USAGE_CHUNK),
            Piece::now(DONE),
        ])
    })
    .await;
    let mut meter = Meter::start(
        &upstream.url(),
        &format!(
            "[[provider]]\nname = \"stall\"\nupstream = \"{}\"\nidle_timeout_secs = 1\n",
            upstream.url()
        ),
    )
    .await;
    let open = |path: &str| {
        let url = meter.url(path);
        async move {
            let response = client()
                .request(post_json(&url, STREAM_WITH_USAGE))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(first, chunk("Hel").as_bytes());
            body
        }
    };
    let patient = open("/openai/v1/chat/completions").await;
    let stalled = open("/stall/v1/chat/completions").await;
    let started = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(15), stalled.collect())
        .await
        .expect("a silent upstream must be cut");
    assert!(
        cut.is_err(),
        "the client must see the stream cut, not a clean end"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut before its idle timeout"
    );
    // The other stream is still open (its timeout is minutes): let it finish.
    upstream.release(2);
    let rest = tokio::time::timeout(Duration::from_secs(15), patient.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(
        rest,
        [chunk("lo"), USAGE_CHUNK.to_string(), DONE.to_string()]
            .concat()
            .as_bytes()
    );
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 2);
    let stall = rows.iter().find(|r| r.provider == "stall").unwrap();
    assert_eq!(stall.error.as_deref(), Some("upstream_idle_timeout"));
    assert_eq!(stall.status, 200);
    assert_eq!(stall.usage_status, "estimated");
    assert!(
        stall.output_tokens > 0 && stall.input_tokens > 0,
        "{stall:?}"
    );
    let done = rows.iter().find(|r| r.provider == "openai").unwrap();
    assert_eq!(done.error, None);
    assert_eq!(
        (
            done.usage_status.as_str(),
            done.input_tokens,
            done.output_tokens
        ),
        ("reported", 19, 10)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The client disconnects

#[tokio::test]
async fn client_disconnecting_mid_stream_releases_the_upstream_and_records_the_call() {
    let upstream = FakeProvider::start(|_| {
        FakeResponse::sse(vec![
            Piece::now(chunk("Hel")),
            Piece::gated(chunk("lo")),
            Piece::now(DONE),
        ])
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    {
        let response = client()
            .request(post_json(
                &meter.url("/openai/v1/chat/completions"),
                &chat_request(true),
            ))
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, chunk("Hel").as_bytes());
        // The client goes away mid-stream (its connection closes with it).
    }
    // The record is made as soon as meter sees the client gone, with the stream still open
    // upstream.
    wait_until(
        "no row for a client that left",
        Duration::from_secs(10),
        || row_count(&meter.db) == 1,
    )
    .await;
    upstream.release(1);
    // meter closed its upstream stream too, so the provider stops generating (and billing):
    // the provider's next write fails.
    wait_until(
        "the upstream stream was never released",
        Duration::from_secs(10),
        || upstream.aborted.load(Ordering::SeqCst) > 0,
    )
    .await;
    // The client's connection is gone from meter's books too.
    wait_metric(
        meter.metrics,
        "meter_client_connections",
        Duration::from_secs(10),
        |v| v == 0.0,
    )
    .await;
    // And meter serves the next call as usual.
    upstream.release(1);
    let (status, _, _) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        STREAM_WITH_USAGE,
    ))
    .await;
    assert_eq!(status, 200);
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 2);
    let gone = &rows[0];
    assert_eq!(
        (gone.status, gone.error.as_deref()),
        (200, Some("client_gone"))
    );
    assert_eq!(gone.usage_status, "estimated");
    assert!(gone.input_tokens > 0 && gone.output_tokens > 0, "{gone:?}");
    assert_eq!(gone.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
}

#[tokio::test]
async fn client_disconnecting_before_the_response_headers_still_yields_a_row() {
    let upstream = FakeProvider::start(|_| {
        let mut response = FakeResponse::json(200, CHAT_JSON);
        response.head_delay = Duration::from_secs(3);
        response
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let url = meter.url("/openai/v1/chat/completions");
    let request = tokio::spawn(async move {
        client()
            .request(post_json(&url, &chat_request(false)))
            .await
    });
    // Once the provider has the call, the client gives up before the response headers.
    wait_for("the call never reached the provider", || {
        !upstream.requests().is_empty()
    })
    .await;
    request.abort();
    // The row lands once meter notices the client is gone.
    wait_for("no row for a call the provider received", || {
        !rows(&meter.db).is_empty()
    })
    .await;
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 1);
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(
        (rows[0].status, rows[0].error.as_deref()),
        (499, Some("client_gone"))
    );
    assert_eq!(
        rows[0].usage_status, "missing",
        "its usage is unknown, not zero"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The upstream sends garbage: invalid UTF-8, invalid JSON, a decompression bomb, a huge body

#[tokio::test]
async fn upstream_invalid_utf8_and_invalid_json_pass_through_untouched_and_are_recorded() {
    // A stream with an event of invalid UTF-8 and one of broken JSON between good ones, then
    // the usage report; and non-streaming bodies that are not JSON, or JSON of the wrong shape.
    let bad_utf8: &'static [u8] =
        b"data: {\"id\":\"chatcmpl-stream1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xff\xfe\xc3\x28\"}}]}\n\n";
    let bad_json: &'static [u8] =
        b"data: {\"id\":\"chatcmpl-stream1\",\"choices\":[{\"delta\":\n\n";
    let stream_pieces = vec![
        Piece::now(chunk("Hel")),
        Piece::now(Bytes::from_static(bad_utf8)),
        Piece::now(Bytes::from_static(bad_json)),
        Piece::now(Bytes::from_static(b"\xff\xff\xff\n\n")),
        Piece::now(chunk("lo")),
        Piece::now(USAGE_CHUNK),
        Piece::now(DONE),
    ];
    let stream_bytes: Vec<u8> = stream_pieces
        .iter()
        .flat_map(|p| p.bytes.to_vec())
        .collect();
    let bodies: Vec<&'static [u8]> = vec![
        b"{\"id\": \"chatcmpl-x\", \"usage\": {\"prompt_tokens\": 5, \xff\xfe truncated",
        b"{\"id\":\"chatcmpl-x\",\"model\":7,\"usage\":{\"prompt_tokens\":\"many\",\"completion_tokens\":-3}}",
        b"[1, 2, 3]",
        b"\xff\xd8\xff\xe0 not json at all",
        b"",
    ];
    let served = bodies.clone();
    let upstream = FakeProvider::start(move |received| {
        if let Some(index) = received.uri.strip_prefix("/v1/chat/completions?body=") {
            FakeResponse::json(
                200,
                Bytes::from_static(served[index.parse::<usize>().unwrap()]),
            )
        } else {
            FakeResponse::sse(stream_pieces.clone())
        }
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let (status, _, body) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        STREAM_WITH_USAGE,
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body, stream_bytes,
        "the stream reaches the client byte for byte"
    );
    for (index, expected) in bodies.iter().enumerate() {
        let (status, _, body) = send(post_json(
            &meter.url(&format!("/openai/v1/chat/completions?body={index}")),
            &chat_request(false),
        ))
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            body.as_ref(),
            *expected,
            "body {index} reaches the client as sent"
        );
    }
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 1 + bodies.len());
    // The stream's garbage events are skipped; its usage report is still read.
    assert_eq!(
        (
            rows[0].usage_status.as_str(),
            rows[0].input_tokens,
            rows[0].output_tokens
        ),
        ("reported", 19, 10),
        "{:?}",
        rows[0]
    );
    // Bodies meter cannot read are recorded with their usage unknown, never as a reported 0.
    for row in &rows[1..] {
        assert_eq!(row.status, 200);
        assert_ne!(row.usage_status, "reported", "{row:?}");
        assert_eq!(row.model.as_deref(), Some("gpt-4o"), "{row:?}");
        assert_eq!(row.output_tokens, 0, "{row:?}");
    }
}

/// A gzip body that inflates to `members` MiB of zeros: one member of 1 MiB of zeros, repeated
/// (RFC 1952 allows members to follow one another; decoders read them as one stream).
fn gzip_bomb(members: usize) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0u8; 1 << 20]).unwrap();
    let member = encoder.finish().unwrap();
    Bytes::from(member.repeat(members))
}

/// Serves the bomb (compressed, in 64 KiB frames) to `?bomb` calls, a plain answer to others;
/// returns meter's peak memory before and after one bomb.
async fn bomb_through_meter(bomb: &Bytes, server: &str) -> (u64, u64) {
    let served = bomb.clone();
    let upstream = FakeProvider::start(move |received| {
        if !received.uri.ends_with("?bomb") {
            return FakeResponse::json(200, CHAT_JSON);
        }
        let mut response =
            FakeResponse::json(200, served.clone()).header("content-encoding", "gzip");
        response.pieces = served
            .chunks(64 << 10)
            .map(|c| Piece::now(Bytes::copy_from_slice(c)))
            .collect();
        response
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let mut meter = bin_meter(dir.path(), &db, &upstream.url(), server);
    let pid = meter.child.id();
    let url = format!("http://{}/openai/v1/chat/completions", meter.proxy);
    // A normal call first: the baseline.
    let (status, _, _) = send(post_json(&url, &chat_request(false))).await;
    assert_eq!(status, 200);
    wait_until("no row for the first call", Duration::from_secs(20), || {
        row_count(&db) == 1
    })
    .await;
    let (before, _) = memory_kb(pid);
    let request = Request::post(format!("{url}?bomb"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::from(chat_request(false))))
        .unwrap();
    let (status, headers, body) = send(request).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert!(
        body == *bomb,
        "the client gets the compressed bytes as sent"
    );
    wait_until("no row for the bomb", Duration::from_secs(20), || {
        row_count(&db) == 2
    })
    .await;
    let (peak, _) = memory_kb(pid);
    meter.signal("TERM");
    assert_eq!(meter.wait(Duration::from_secs(30)), Some(0));
    let rows = rows(&db);
    assert_eq!(rows.len(), 2);
    let row = &rows[1];
    assert_eq!(row.status, 200);
    assert_eq!(row.error, None);
    assert_eq!(
        row.usage_status, "missing",
        "unread, never a reported 0: {row:?}"
    );
    (before, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bomb_is_forwarded_compressed_and_its_parsing_is_capped() {
    // 1 GiB of zeros, about 1 MB compressed. meter must pass the compressed bytes on untouched
    // and stop decompressing its own copy at server.max_parse_body_bytes: its memory follows
    // the cap, not the bomb.
    let bomb = gzip_bomb(1024);
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    const MIB: u64 = 1024; // in kB
    for (cap_mib, server) in [
        (64, String::new()), // the default
        (4, format!("max_parse_body_bytes = {}", 4 << 20)),
    ] {
        let (before, peak) = bomb_through_meter(&bomb, &server).await;
        eprintln!(
            "decompression bomb, parse cap {cap_mib} MiB: meter VmHWM {before} kB before, {peak} kB after (+{} MiB)",
            peak.saturating_sub(before) / MIB
        );
        // The decoded copy (up to the cap) and the JSON parser's copy of it, with the slack
        // of growing buffers: under three times the cap, where inflating it all takes 1 GiB.
        assert!(
            peak < before + (3 * cap_mib + 8) * MIB,
            "cap {cap_mib} MiB: meter's peak memory grew from {before} kB to {peak} kB"
        );
    }
}

#[tokio::test]
async fn huge_streamed_body_is_forwarded_whole_with_bounded_memory() {
    // 200 MiB of stream events, then the usage report: meter forwards them as they come and
    // holds none of them, so its peak memory stays far below the body's size.
    const TOTAL: usize = 200 << 20;
    let event = chunk(&"x".repeat(16_000));
    let block = Bytes::from(event.repeat((64 << 10) / event.len() + 1));
    let blocks = TOTAL / block.len() + 1;
    let mut pieces: Vec<Piece> = (0..blocks).map(|_| Piece::now(block.clone())).collect();
    pieces.push(Piece::now(USAGE_CHUNK));
    pieces.push(Piece::now(DONE));
    let length = block.len() * blocks + USAGE_CHUNK.len() + DONE.len();
    let upstream = FakeProvider::start(move |_| FakeResponse::sse(pieces.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    // The default parse cap (64 MiB) is far below the stream: an event stream is read event by
    // event, so the cap bounds one piece, not the stream, and the usage at its end is read.
    let mut meter = bin_meter(dir.path(), &db, &upstream.url(), "");
    let pid = meter.child.id();
    let url = format!("http://{}/openai/v1/chat/completions", meter.proxy);
    let (status, _, _) = send(post_json(&url, &chat_request(false))).await;
    assert_eq!(status, 200);
    let (before, _) = memory_kb(pid);
    let response = client()
        .request(post_json(&url, STREAM_WITH_USAGE))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut received, mut tail) = (0usize, Vec::new());
    let started = Instant::now();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("the stream stalled")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
            tail.extend_from_slice(&data);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 4096);
            }
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(received, length, "every byte forwarded");
    assert!(tail.ends_with([USAGE_CHUNK, DONE].concat().as_bytes()));
    wait_until(
        "no row for the huge stream",
        Duration::from_secs(20),
        || row_count(&db) == 2,
    )
    .await;
    let (peak, rss) = memory_kb(pid);
    eprintln!(
        "huge body: {} MiB in {elapsed:?}; meter VmHWM {before} kB before, {peak} kB after (VmRSS {rss} kB)",
        length >> 20
    );
    assert!(
        peak < before + 64 * 1024,
        "meter's peak memory grew from {before} kB to {peak} kB for a {} MiB stream",
        length >> 20
    );
    meter.signal("TERM");
    assert_eq!(meter.wait(Duration::from_secs(30)), Some(0));
    let rows = rows(&db);
    let row = &rows[1];
    assert_eq!(
        (
            row.usage_status.as_str(),
            row.input_tokens,
            row.output_tokens
        ),
        ("reported", 19, 10),
        "{row:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A request body over the limit

#[tokio::test]
async fn request_body_over_the_limit_is_413_and_never_forwarded() {
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let mut meter = Meter::start_with(&upstream.url(), "max_request_body_bytes = 1000", "").await;
    let big = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5000)
    );
    // Declared too large (Content-Length): refused before a byte of the body is read.
    let (status, headers, body) = send(post_json(&meter.url("/anthropic/v1/messages"), &big)).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["type"], "error", "Anthropic's error shape: {error}");
    assert_eq!(error["error"]["type"], "request_too_large");
    assert_eq!(error["error"]["meter_code"], "request_too_large");
    // Chunked, no length announced: refused once the limit is passed.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = big
        .as_bytes()
        .chunks(700)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let streamed = Request::post(meter.url("/openai/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(StreamBody::new(ready_stream(chunks)))
        .unwrap();
    let chunked_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = chunked_client.request(streamed).await.unwrap();
    assert_eq!(response.status(), 413);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        error["error"]["code"], "request_too_large",
        "OpenAI's shape"
    );

    // A client that sends all of a large body before it reads the answer (Python's
    // http.client, httpx) must get the 413 too, not a connection reset mid-upload.
    for chunked in [false, true] {
        let mut stream = TcpStream::connect(meter.proxy).await.unwrap();
        let upload = vec![b'x'; 8 << 20];
        let head = if chunked {
            "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: meter\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
        } else {
            format!(
                "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: meter\r\ncontent-length: {}\r\n\r\n",
                upload.len()
            )
        };
        stream.write_all(head.as_bytes()).await.unwrap();
        let sent = async {
            if chunked {
                for piece in upload.chunks(64 << 10) {
                    let framed =
                        [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
                    stream.write_all(&framed).await?;
                }
                stream.write_all(b"0\r\n\r\n").await
            } else {
                stream.write_all(&upload).await
            }
        };
        tokio::time::timeout(Duration::from_secs(30), sent)
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("the upload was cut (chunked: {chunked}): {err}"));
        let mut answer = vec![0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 413", "chunked: {chunked}");
    }

    assert!(upstream.requests().is_empty(), "nothing was forwarded");
    assert!(
        upstream.connections.lock().unwrap().is_empty(),
        "meter did not even connect upstream"
    );
    // A call within the limit still passes.
    let (status, _, _) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        &chat_request(false),
    ))
    .await;
    assert_eq!(status, 200);
    meter.stop().await;
    // Calls meter answers itself after routing are recorded (ARCHITECTURE, invariants).
    let rows = rows(&meter.db);
    let summary: Vec<(&str, i64, Option<&str>)> = rows
        .iter()
        .map(|r| (r.provider.as_str(), r.status, r.error.as_deref()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("anthropic", 413, Some("request_too_large")),
            ("openai", 413, Some("request_too_large")),
            ("openai", 413, Some("request_too_large")),
            ("openai", 413, Some("request_too_large")),
            ("openai", 200, None),
        ]
    );
    // Never sent, so nothing billed: zero tokens, and that is known.
    for row in &rows[..4] {
        assert_eq!(row.usage_status, "reported");
        assert_eq!(row.input_tokens + row.output_tokens, 0);
    }
}

/// A `Stream` over ready frames, for a request body with no length announced.
fn ready_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

// ---------------------------------------------------------------------------------------------
// 6. The ledger locked by another process

/// A python3 process holding `BEGIN EXCLUSIVE` on `db` until a line arrives on its stdin.
fn lock_ledger(db: &Path) -> std::process::Child {
    use std::io::BufRead;
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
                  c.execute('BEGIN EXCLUSIVE')\n\
                  print('locked', flush=True)\n\
                  sys.stdin.readline()\n\
                  c.execute('COMMIT')\n\
                  print('released', flush=True)\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, db.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (with its sqlite3 module) is needed to lock the ledger from outside");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked", "python3 could not lock the ledger");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_locked_by_another_process_delays_records_never_traffic() {
    const CALLS: usize = 20;
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    // A short busy timeout, so the writer meets the lock as errors and retries them.
    let mut meter = Meter::start_at(&db, &upstream.url(), "", "busy_timeout_ms = 100", "").await;
    let url = meter.url("/openai/v1/chat/completions");
    assert_eq!(send(post_json(&url, &chat_request(false))).await.0, 200);
    wait_until(
        "the first row never landed",
        Duration::from_secs(10),
        || row_count(&db) == 1,
    )
    .await;

    let mut locker = lock_ledger(&db);
    let locked_at = Instant::now();
    // Traffic flows with its usual answers while the lock is held (it is released only when
    // this test says so, after these calls).
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send(post_json(&url, &chat_request(false))).await })
        })
        .collect();
    for call in calls {
        let (status, _, body) = call.await.unwrap();
        assert_eq!((status, body.as_ref()), (200, CHAT_JSON.as_bytes()));
    }
    // The records wait, counted; the writer keeps meeting the lock.
    wait_metric(
        meter.metrics,
        "meter_ledger_write_errors_total",
        Duration::from_secs(10),
        |v| v >= 1.0,
    )
    .await;
    let pending = wait_metric(
        meter.metrics,
        "meter_ledger_pending_records",
        Duration::from_secs(10),
        |v| v == CALLS as f64,
    )
    .await;
    assert_eq!(row_count(&db), 1, "nothing can be written under the lock");
    // Hold the lock for 3 s in all, then let go.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(locked_at.elapsed())).await;
    assert!(
        locker.try_wait().unwrap().is_none(),
        "the lock holder died early"
    );
    writeln!(locker.stdin.as_mut().unwrap()).unwrap();
    assert!(locker.wait().unwrap().success());
    // Every record lands (the writer's back-off is at most 5 s).
    all_records_land(
        "the records never landed after the lock was released",
        meter.metrics,
        &db,
        1 + CALLS,
    )
    .await;
    eprintln!("ledger lock: {pending} records waited, all written after the release");
    meter.finish().await.unwrap();
    assert_eq!(row_count(&db), 1 + CALLS);
}

// ---------------------------------------------------------------------------------------------
// 7. The disk full

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("cannot run mount(8)");
        assert!(
            out.status.success(),
            "the disk-full test needs a small tmpfs and could not mount one (run as root, or with \
             CAP_SYS_ADMIN): mount -t tmpfs -o size={size} tmpfs {}: {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte with `filler`.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut size = 1 << 20;
        let block = vec![0u8; size];
        while size > 0 {
            match file.write(&block[..size]) {
                Ok(0) => size /= 2,
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(28) => size /= 2, // ENOSPC
                Err(err) => panic!("filling the tmpfs: {err}"),
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            // Something still holds it open: detach it now, it goes when released.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_keeps_traffic_flowing_and_the_records_are_written_once_space_returns() {
    const CALLS: usize = 20;
    let tmpfs = Tmpfs::mount("4m");
    let db = tmpfs.path().join("ledger.db");
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let mut meter = Meter::start_at(&db, &upstream.url(), "", "", "").await;
    let url = meter.url("/openai/v1/chat/completions");
    assert_eq!(send(post_json(&url, &chat_request(false))).await.0, 200);
    wait_until(
        "the first row never landed",
        Duration::from_secs(10),
        || row_count(&db) == 1,
    )
    .await;

    let filler = tmpfs.fill();
    for _ in 0..CALLS {
        let (status, _, body) = send(post_json(&url, &chat_request(false))).await;
        assert_eq!((status, body.as_ref()), (200, CHAT_JSON.as_bytes()));
    }
    let errors = wait_metric(
        meter.metrics,
        "meter_ledger_write_errors_total",
        Duration::from_secs(10),
        |v| v >= 1.0,
    )
    .await;
    wait_metric(
        meter.metrics,
        "meter_ledger_pending_records",
        Duration::from_secs(10),
        |v| v == CALLS as f64,
    )
    .await;
    assert_eq!(row_count(&db), 1, "nothing fits on a full disk");
    // The writer keeps retrying while the disk stays full.
    wait_metric(
        meter.metrics,
        "meter_ledger_write_errors_total",
        Duration::from_secs(10),
        |v| v > errors,
    )
    .await;

    std::fs::remove_file(&filler).unwrap();
    all_records_land(
        "the records were not written once space returned",
        meter.metrics,
        &db,
        1 + CALLS,
    )
    .await;
    meter.finish().await.unwrap();
    let rows = rows(&db);
    assert_eq!(rows.len(), 1 + CALLS);
    assert!(rows
        .iter()
        .all(|r| r.status == 200 && r.usage_status == "reported"));
    drop(tmpfs);
}

// ---------------------------------------------------------------------------------------------
// 8. kill -9 under load, then a restart on the same ledger

/// The bound, stated: the writer group-commits, one transaction per `store.commit_interval_ms`
/// (100 ms by default) while records keep coming, and a committed transaction survives the
/// process (WAL with synchronous=NORMAL loses nothing to a process crash; only a power loss can
/// drop the last commits). So `kill -9` loses at most the records queued after the last commit
/// began: the calls that ended in the last commit interval, plus the batch being written. Older
/// calls are never lost: the lost calls are the tail of the completed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_at_most_the_last_commit() {
    const CLIENTS: usize = 16;
    const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
    // Calls finish in about the order their records are queued, give or take scheduling.
    const REORDER: Duration = Duration::from_millis(250);
    let next = Arc::new(AtomicU64::new(0));
    let counter = next.clone();
    let upstream = FakeProvider::start(move |_| {
        let id = counter.fetch_add(1, Ordering::SeqCst);
        FakeResponse::json(
            200,
            CHAT_JSON.replace("chatcmpl-faults", &format!("call-{id}")),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let mut meter = bin_meter(dir.path(), &db, &upstream.url(), "");
    let url = format!("http://{}/openai/v1/chat/completions", meter.proxy);

    // Each client calls in a loop and notes every call whose whole answer it got, and when.
    let completed: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, completed, stop) = (url.clone(), completed.clone(), stop.clone());
            tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(response) = client.request(post_json(&url, &chat_request(false))).await
                    else {
                        return;
                    };
                    let Ok(body) = response.into_body().collect().await else {
                        return;
                    };
                    let at = Instant::now();
                    let json: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
                    let id = json["id"].as_str().unwrap().to_string();
                    completed.lock().unwrap().push((id, at));
                }
            })
        })
        .collect();
    // Under load for a while (at least 2 s and a few hundred calls), then SIGKILL mid-flight.
    let loaded = Instant::now();
    let deadline = loaded + Duration::from_secs(30);
    while completed.lock().unwrap().len() < 400 || loaded.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    meter.signal("KILL");
    meter.wait(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .unwrap()
            .unwrap();
    }
    drop(meter);

    // Restart on the same ledger: it opens, serves, and shuts down cleanly.
    let mut meter = bin_meter(dir.path(), &db, &upstream.url(), "");
    assert_eq!(ready(meter.metrics).await, 200);
    let url = format!("http://{}/openai/v1/chat/completions", meter.proxy);
    let (status, _, _) = send(post_json(&url, &chat_request(false))).await;
    assert_eq!(status, 200);
    meter.signal("TERM");
    assert_eq!(meter.wait(Duration::from_secs(30)), Some(0));

    let recorded: HashSet<String> = rows(&db).into_iter().filter_map(|r| r.request_id).collect();
    let completed = completed.lock().unwrap().clone();
    let lost: Vec<&(String, Instant)> = completed
        .iter()
        .filter(|(id, _)| !recorded.contains(id))
        .collect();
    // The last completed call that has its row: everything before it (bar reordering) does.
    let last_kept = completed
        .iter()
        .filter(|(id, _)| recorded.contains(id))
        .map(|(_, at)| *at)
        .max()
        .unwrap();
    let in_window = |window: Duration| {
        completed
            .iter()
            .filter(|(_, at)| killed_at.saturating_duration_since(*at) <= window)
            .count()
    };
    let oldest_lost = lost
        .iter()
        .map(|(_, at)| killed_at.saturating_duration_since(*at))
        .max()
        .unwrap_or_default();
    eprintln!(
        "kill -9: {} calls completed, {} rows, {} completed calls without a row (all completed \
         within {oldest_lost:?} of the kill); last kept call {:?} before the kill; calls completed \
         in the last 10 ms / 100 ms / 1 s before it: {} / {} / {}",
        completed.len(),
        recorded.len(),
        lost.len(),
        killed_at.saturating_duration_since(last_kept),
        in_window(Duration::from_millis(10)),
        in_window(Duration::from_millis(100)),
        in_window(Duration::from_secs(1)),
    );
    let bound = in_window(COMMIT_INTERVAL + REORDER);
    assert!(
        lost.len() <= bound,
        "{} completed calls lost: more than the {bound} that completed in the last commit \
         interval (plus {REORDER:?} of scheduling)",
        lost.len()
    );
    for (id, at) in &lost {
        assert!(
            *at + REORDER >= last_kept,
            "{id} completed {:?} before the last recorded call but has no row: only the tail \
             after the last commit may be lost",
            last_kept.saturating_duration_since(*at)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. SIGTERM with 100 streams in flight

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_100_streams_in_flight_drains_every_stream_and_record() {
    const STREAMS: usize = 100;
    let usage = "data: {\"id\":\"chatcmpl-t\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n";
    let first = "data: {\"id\":\"chatcmpl-t\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}],\"usage\":null}\n\n";
    let upstream = FakeProvider::start(move |_| {
        FakeResponse::sse(vec![
            Piece::now(first),
            Piece::gated(usage),
            Piece::now(DONE),
        ])
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let mut meter = bin_meter(dir.path(), &db, &upstream.url(), "drain_timeout_secs = 60");
    let url = format!("http://{}/openai/v1/chat/completions", meter.proxy);

    // 100 streams, each on its own connection, each past its first event.
    let opened: Vec<_> = (0..STREAMS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let response = client()
                    .request(post_json(&url, STREAM_WITH_USAGE))
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let mut body = response.into_body();
                let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
                assert_eq!(frame, Bytes::from(first));
                body
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for stream in opened {
        bodies.push(
            tokio::time::timeout(Duration::from_secs(30), stream)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        sample(&scrape(meter.metrics).await, "meter_client_connections"),
        Some(STREAMS as f64)
    );
    meter.signal("TERM");
    // Shutdown has begun once /readyz turns 503; the streams are still open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(meter.metrics).await != 503 {
        assert!(Instant::now() < deadline, "meter never began shutting down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New connections are refused while the old streams drain.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(meter.proxy).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "meter kept accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        meter.child.try_wait().unwrap().is_none(),
        "exited with streams in flight"
    );
    upstream.release(STREAMS);
    let finished: Vec<_> = bodies
        .into_iter()
        .map(|body| tokio::spawn(async move { body.collect().await.map(|b| b.to_bytes()) }))
        .collect();
    for body in finished {
        let rest = tokio::time::timeout(Duration::from_secs(30), body)
            .await
            .unwrap()
            .unwrap()
            .expect("a stream was cut during the drain");
        assert_eq!(rest, [usage, DONE].concat().as_bytes());
    }
    assert_eq!(meter.wait(Duration::from_secs(30)), Some(0));
    let rows = rows(&db);
    assert_eq!(rows.len(), STREAMS);
    for row in rows {
        assert_eq!(
            (
                row.status,
                row.input_tokens,
                row.output_tokens,
                row.usage_status.as_str()
            ),
            (200, 7, 3, "reported")
        );
        assert_eq!(row.error, None);
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Slowloris clients on the proxy port

/// Sends `bytes` one at a time, `every` apart, until meter closes the connection; returns how
/// long that took, or `None` if the connection is still open after 20 s (or every byte).
async fn trickle(proxy: SocketAddr, bytes: &[u8], every: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    for byte in bytes {
        if started.elapsed() > Duration::from_secs(20) {
            return None;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        if closed_by_peer(&mut stream, every).await {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_closed_after_the_header_read_timeout() {
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let meter = Meter::start_at(&db, &upstream.url(), "header_read_timeout_secs = 2", "", "").await;
    let proxy = meter.proxy;
    let request = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: meter\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        chat_request(false).len(),
        chat_request(false)
    );
    // HTTP/1.1 headers at one byte a second; HTTP/2's preface the same way; a client that
    // connects and says nothing. Each would hold its connection for minutes.
    let slow_h1 = tokio::spawn({
        let request = request.clone();
        async move { trickle(proxy, request.as_bytes(), Duration::from_secs(1)).await }
    });
    let slow_h2 = tokio::spawn(async move {
        trickle(
            proxy,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            Duration::from_secs(1),
        )
        .await
    });
    let silent = tokio::spawn(async move {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let started = Instant::now();
        closed_by_peer(&mut stream, Duration::from_secs(20))
            .await
            .then(|| started.elapsed())
    });
    // Meanwhile a normal client is served as usual.
    let (status, _, _) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        &chat_request(false),
    ))
    .await;
    assert_eq!(status, 200);
    for (what, task) in [
        ("HTTP/1.1", slow_h1),
        ("HTTP/2", slow_h2),
        ("silent", silent),
    ] {
        let closed = task.await.unwrap();
        eprintln!("slowloris {what}: closed after {closed:?}");
        let closed = closed.unwrap_or_else(|| panic!("{what} slow client was never cut off"));
        // 2 s of header time, with a wide margin for a busy machine; well short of the ~200 s
        // the slow request would take, or forever for the silent one.
        assert!(closed < Duration::from_secs(15), "{what}: {closed:?}");
        assert!(
            closed >= Duration::from_millis(1500),
            "{what}: cut early, {closed:?}"
        );
    }
    // Idle keep-alive connections are closed too, HTTP/2 ones included: a client holding one
    // sees it go, and the connection count returns to zero.
    let h2 = h2_client();
    let response = h2
        .request(post_json(
            &meter.url("/openai/v1/chat/completions"),
            &chat_request(false),
        ))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    response.into_body().collect().await.unwrap();
    wait_metric(
        meter.metrics,
        "meter_client_connections",
        Duration::from_secs(15),
        |v| v == 0.0,
    )
    .await;
    let timeouts = sample(&scrape(meter.metrics).await, "meter_client_timeouts_total").unwrap();
    assert!(timeouts >= 4.0, "{timeouts}");
    drop(h2);
    assert_eq!(
        upstream.requests().len(),
        2,
        "nothing of the slow clients reached the provider"
    );
    let mut meter = meter;
    meter.finish().await.unwrap();
    assert_eq!(row_count(&db), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_starve_clients_nor_pass_the_connection_cap() {
    const IDLE: usize = 2000;
    const CAP: usize = 20;
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let dir = tempfile::tempdir().unwrap();

    // 2,000 idle connections under the default cap: a normal client is still served at once.
    let db = dir.path().join("many.db");
    let mut meter = Meter::start_at(&db, &upstream.url(), "", "", "").await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(meter.proxy).await.unwrap());
    }
    wait_metric(
        meter.metrics,
        "meter_client_connections",
        Duration::from_secs(30),
        |v| v == IDLE as f64,
    )
    .await;
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(10),
        send(post_json(
            &meter.url("/openai/v1/chat/completions"),
            &chat_request(false),
        )),
    )
    .await
    .expect("meter stopped answering with 2,000 idle connections open");
    assert_eq!((status, body.as_ref()), (200, CHAT_JSON.as_bytes()));
    drop(idle);
    wait_metric(
        meter.metrics,
        "meter_client_connections",
        Duration::from_secs(30),
        |v| v == 0.0,
    )
    .await;
    meter.finish().await.unwrap();

    // A cap of 20: 20 silent connections take every place, so the next client waits (its
    // connection is not even accepted) until the header read timeout frees them, then is served.
    let db = dir.path().join("capped.db");
    let mut meter = Meter::start_at(
        &db,
        &upstream.url(),
        &format!("max_connections = {CAP}\nheader_read_timeout_secs = 3"),
        "",
        "",
    )
    .await;
    let mut idle = Vec::with_capacity(CAP + 5);
    for _ in 0..CAP + 5 {
        idle.push(TcpStream::connect(meter.proxy).await.unwrap());
    }
    let filled = Instant::now();
    wait_metric(
        meter.metrics,
        "meter_client_connections",
        Duration::from_secs(10),
        |v| v == CAP as f64,
    )
    .await;
    let url = meter.url("/openai/v1/models");
    let probe = tokio::time::timeout(
        Duration::from_millis(1000),
        send(Request::get(url.as_str()).body(Full::default()).unwrap()),
    )
    .await;
    assert!(
        probe.is_err() || filled.elapsed() >= Duration::from_secs(3),
        "a client was served past the connection cap"
    );
    assert_eq!(
        sample(&scrape(meter.metrics).await, "meter_client_connections"),
        Some(CAP as f64),
        "more connections open than the cap"
    );
    // The silent connections are closed after 3 s; the waiting ones (the 5 extra silent ones,
    // then the client) get their turn.
    let started = Instant::now();
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(30),
        send(post_json(
            &meter.url("/openai/v1/chat/completions"),
            &chat_request(false),
        )),
    )
    .await
    .expect("the waiting client was never served");
    assert_eq!(status, 200);
    eprintln!(
        "connection cap: the client waited {:?} for a place",
        started.elapsed()
    );
    for stream in &mut idle[..CAP] {
        assert!(
            closed_by_peer(stream, Duration::from_secs(15)).await,
            "a silent connection holding a place was never closed"
        );
    }
    let timeouts = sample(&scrape(meter.metrics).await, "meter_client_timeouts_total").unwrap();
    assert!(timeouts >= CAP as f64, "{timeouts}");
    drop(idle);
    meter.finish().await.unwrap();
}
