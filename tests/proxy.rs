//! End-to-end: a client, meter (in process, ports 0, temp SQLite) and a fake OpenAI-format
//! provider on loopback. Bytes must arrive unchanged, streams unbuffered, one row per call.
//! What faults do (resets, stalls, hang-ups, garbage, limits) is in tests/faults.rs.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;

const CHAT_JSON: &str = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there!", "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"#;

/// A content chunk as OpenAI sends it without `stream_options.include_usage`.
fn chunk(content: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-stream1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    )
}

/// The same chunk when usage was asked for: OpenAI then adds `"usage":null` to every chunk.
fn chunk_with_null_usage(content: &str) -> String {
    chunk(content).replace("]}\n\n", "],\"usage\":null}\n\n")
}

/// Whether a request asked for stream usage, as a real provider reads it.
fn wants_usage(received: &Received) -> bool {
    serde_json::from_slice::<serde_json::Value>(&received.body)
        .map(|v| v["stream_options"]["include_usage"] == true)
        .unwrap_or(false)
}

/// What OpenAI streams for `contents`: usage only when asked for, the second piece gated.
fn openai_stream(received: &Received, contents: &[&str], gate_second: bool) -> FakeResponse {
    let usage = wants_usage(received);
    let mut pieces = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        let text = if usage {
            chunk_with_null_usage(content)
        } else {
            chunk(content)
        };
        pieces.push(if i == 1 && gate_second {
            Piece::gated(text)
        } else {
            Piece::now(text)
        });
    }
    if usage {
        pieces.push(Piece::after(Duration::from_millis(5), USAGE_CHUNK));
    }
    pieces.push(Piece::now(DONE));
    FakeResponse::sse(pieces)
}

const USAGE_CHUNK: &str = "data: {\"id\":\"chatcmpl-stream1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n";

const DONE: &str = "data: [DONE]\n\n";

fn chat_request(stream: bool) -> String {
    format!(
        r#"{{"model":"gpt-4o","stream":{stream},"messages":[{{"role":"user","content":"secret prompt text"}}]}}"#
    )
}

#[tokio::test]
async fn non_streaming_call_is_byte_identical_and_recorded() {
    let upstream = FakeProvider::start(|_| {
        FakeResponse::json(200, CHAT_JSON)
            .header("x-request-id", "req_123")
            .header("openai-processing-ms", "310")
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;

    let request = Request::post(meter.url("/openai/v1/chat/completions?trace=1"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test-key")
        .header("x-meter-agent", "coder")
        .header("x-meter-tags", "team=search")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from(chat_request(false))))
        .unwrap();
    let (status, headers, body) = send(request).await;
    assert_eq!(status, 200);
    assert_eq!(body, CHAT_JSON.as_bytes());
    assert_eq!(headers["x-request-id"], "req_123");
    assert_eq!(headers["openai-processing-ms"], "310");

    // What the provider got: the same method, path, query, body and headers, minus meter's own.
    let got = &upstream.requests()[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.uri, "/v1/chat/completions?trace=1");
    assert_eq!(got.body, chat_request(false).as_bytes());
    assert_eq!(got.headers["authorization"], "Bearer sk-test-key");
    assert_eq!(got.headers["x-custom"], "kept");
    assert_eq!(got.headers["host"], upstream.addr.to_string());
    assert!(!got.headers.contains_key("x-meter-agent"));
    assert!(!got.headers.contains_key("x-meter-tags"));

    let metrics = meter.metrics_when(|m| m.contains("} 0.0019725")).await;
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.agent, "coder");
    assert_eq!(row.provider, "openai");
    assert_eq!(row.route, "direct");
    assert_eq!(row.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(row.endpoint, "chat.completions");
    assert!(!row.streaming);
    assert_eq!(row.status, 200);
    assert_eq!(
        (row.input_tokens, row.cache_read_tokens, row.output_tokens),
        (93, 1024, 46)
    );
    assert_eq!(row.usage_status, "reported");
    // Priced by the built-in gpt-4o entry: 93 × $2.50 + 1024 × $1.25 + 46 × $10 per 1M.
    assert_eq!(row.cost_nanos, Some(1_972_500));
    assert_eq!(row.cost_usd, Some(0.0019725));
    assert_eq!(row.cost_source.as_deref(), Some("rate_table"));
    assert!(
        row.price_id
            .as_deref()
            .is_some_and(|id| id.starts_with("builtin:openai/gpt-4o")),
        "{:?}",
        row.price_id
    );
    assert_eq!(
        row.request_id.as_deref(),
        Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG")
    );
    assert_eq!(row.tags.as_deref(), Some(r#"{"team":"search"}"#));
    assert_eq!(
        row.key_fingerprint.as_deref(),
        Some(&meter::proxy::router::fingerprint(b"sk-test-key")[..])
    );
    assert!(
        row.ts.ends_with('Z') && row.ts.len() == "2026-11-25T00:00:00.000Z".len(),
        "{}",
        row.ts
    );

    // The ledger and /metrics agree.
    let labels = r#"agent="coder",model="gpt-4o-2024-08-06",provider="openai",route="direct""#;
    assert!(
        metrics.contains(&format!(
            "meter_requests_total{{{labels},status=\"2xx\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("meter_tokens_total{{{labels},type=\"input\"}} 93")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "meter_tokens_total{{{labels},type=\"cache_read\"}} 1024"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "meter_tokens_total{{{labels},type=\"output\"}} 46"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("meter_cost_usd_total{{{labels}}} 0.0019725")),
        "{metrics}"
    );

    // Neither the prompt nor the key reached the ledger file.
    let file = std::fs::read(&meter.db).unwrap();
    for secret in [&b"secret prompt text"[..], b"sk-test-key"] {
        assert!(!file.windows(secret.len()).any(|w| w == secret));
    }
}

#[tokio::test]
async fn stream_reaches_the_client_event_by_event_without_the_usage_meter_asked_for() {
    // The client did not ask for usage: meter asks, reads it, and hides what it added. The
    // second event is withheld until the test has seen the first one through meter.
    let upstream =
        FakeProvider::start(|received| openai_stream(received, &["Hel", "lo"], true)).await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let request = Request::post(meter.url("/agent/streamer/openai/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_request(true))))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event must arrive while upstream withholds the second")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, chunk("Hel").as_bytes());
    upstream.release(1);
    let mut all = first.to_vec();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            all.extend_from_slice(&data);
        }
    }
    // Exactly what the provider sends a client that did not ask for usage.
    let expected = [chunk("Hel"), chunk("lo"), DONE.to_string()].concat();
    assert_eq!(String::from_utf8(all).unwrap(), expected);
    let sent: serde_json::Value = serde_json::from_slice(&upstream.requests()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["messages"][0]["content"], "secret prompt text");

    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.agent, "streamer");
    assert!(row.streaming);
    assert_eq!(row.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!((row.input_tokens, row.output_tokens), (19, 10));
    assert_eq!(row.usage_status, "reported");
    assert!(row.ttft_ms.is_some());
    assert_eq!(row.error, None);
}

#[tokio::test]
async fn a_burst_is_passed_on_without_waiting_for_what_comes_next() {
    // Two events back to back, then the provider holds the rest: meter may join a burst into
    // one write, but must hand over all it has without waiting for more from the network.
    let upstream = FakeProvider::start(|received| {
        let usage = wants_usage(received);
        let text = |content: &str| {
            if usage {
                chunk_with_null_usage(content)
            } else {
                chunk(content)
            }
        };
        FakeResponse::sse(vec![
            Piece::now(text("Hel")),
            Piece::now(text("lo")),
            Piece::gated(text("!")),
            Piece::now(DONE),
        ])
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let request = Request::post(meter.url("/openai/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_request(true))))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let mut body = response.into_body();
    let burst = [chunk("Hel"), chunk("lo")].concat();
    let mut seen = Vec::new();
    while seen.len() < burst.len() {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("both events of the burst must arrive while upstream withholds the third")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    assert_eq!(String::from_utf8(seen.clone()).unwrap(), burst);
    upstream.release(1);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            seen.extend_from_slice(&data);
        }
    }
    let expected = [chunk("Hel"), chunk("lo"), chunk("!"), DONE.to_string()].concat();
    assert_eq!(String::from_utf8(seen).unwrap(), expected);
    meter.stop().await;
    assert_eq!(rows(&meter.db).len(), 1);
}

#[tokio::test]
async fn a_client_that_asks_for_usage_gets_it_and_its_request_untouched() {
    let upstream =
        FakeProvider::start(|received| openai_stream(received, &["Hi", "!"], false)).await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let asked = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, body) = send(post_json(&meter.url("/openai/v1/chat/completions"), asked)).await;
    assert_eq!(status, 200);
    let expected = [
        chunk_with_null_usage("Hi"),
        chunk_with_null_usage("!"),
        USAGE_CHUNK.to_string(),
        DONE.to_string(),
    ]
    .concat();
    assert_eq!(String::from_utf8(body.to_vec()).unwrap(), expected);
    assert_eq!(upstream.requests()[0].body, asked.as_bytes());
    meter.stop().await;
    assert_eq!(rows(&meter.db)[0].usage_status, "reported");
}

#[tokio::test]
async fn stream_without_usage_is_estimated_never_zero() {
    // Injection turned off: the provider sends no usage, meter counts the tokens itself.
    let upstream = FakeProvider::start(|received| {
        openai_stream(
            received,
            &["Hello there, how are you today?", " Fine."],
            false,
        )
    })
    .await;
    let mut meter = Meter::start(
        &upstream.url(),
        &format!(
            "[[provider]]\nname = \"plain\"\nupstream = \"{}\"\ninject_stream_usage = false\n",
            upstream.url()
        ),
    )
    .await;
    let (status, _, body) = send(post_json(
        &meter.url("/plain/v1/chat/completions"),
        &chat_request(true),
    ))
    .await;
    assert_eq!(status, 200);
    let expected = [
        chunk("Hello there, how are you today?"),
        chunk(" Fine."),
        DONE.to_string(),
    ]
    .concat();
    assert_eq!(String::from_utf8(body.to_vec()).unwrap(), expected);
    assert_eq!(upstream.requests()[0].body, chat_request(true).as_bytes());
    meter.stop().await;
    let row = &rows(&meter.db)[0];
    assert_eq!(row.usage_status, "estimated");
    assert_eq!(row.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    // "secret prompt text" plus the per-message overhead; the two deltas' text.
    assert!((5..=12).contains(&row.input_tokens), "{row:?}");
    assert!((7..=12).contains(&row.output_tokens), "{row:?}");
    assert!(row.streaming);
}

#[tokio::test]
async fn unknown_prefix_is_404_with_the_known_prefixes() {
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, "{}")).await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let (status, headers, body) =
        send(post_json(&meter.url("/nosuch/v1/chat/completions"), "{}")).await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/json");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "unknown_provider");
    let prefixes = error["error"]["known_prefixes"].as_array().unwrap();
    for name in [
        "openai",
        "anthropic",
        "gemini",
        "openrouter",
        "mistral",
        "xai",
        "deepseek",
        "groq",
        "ollama",
        "vllm",
    ] {
        assert!(
            prefixes.iter().any(|p| p == name),
            "{name} missing from {prefixes:?}"
        );
    }
    assert!(upstream.requests().is_empty());
    meter.stop().await;
    assert!(rows(&meter.db).is_empty());
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_recorded() {
    // Port 1 on loopback: nothing listens there, and no test binds it.
    let mut meter = Meter::start("http://127.0.0.1:1", "").await;
    let (status, _, body) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        &chat_request(false),
    ))
    .await;
    assert_eq!(status, 502);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "upstream_unreachable");
    meter.stop().await;
    let row = &rows(&meter.db)[0];
    assert_eq!(row.status, 502);
    assert_eq!(row.error.as_deref(), Some("upstream_unreachable"));
    assert_eq!(row.model.as_deref(), Some("gpt-4o"));
    assert_eq!(row.usage_status, "reported");
    assert_eq!(row.input_tokens + row.output_tokens, 0);
}

#[tokio::test]
async fn upstream_errors_pass_through_and_are_recorded() {
    let rate_limited = r#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    let upstream = FakeProvider::start(move |received| {
        if received.uri.contains("overloaded") {
            FakeResponse::json(
                503,
                r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            )
        } else {
            FakeResponse::json(429, rate_limited).header("retry-after", "20")
        }
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let (status, headers, body) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        &chat_request(false),
    ))
    .await;
    assert_eq!((status, body.as_ref()), (429, rate_limited.as_bytes()));
    assert_eq!(headers["retry-after"], "20");
    let (status, _, _) = send(post_json(
        &meter.url("/openai/v1/chat/completions?overloaded"),
        &chat_request(false),
    ))
    .await;
    assert_eq!(status, 503);
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(
        rows.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 503]
    );
    for row in &rows {
        assert_eq!(row.model.as_deref(), Some("gpt-4o"));
        assert_eq!(row.usage_status, "reported");
        assert_eq!(row.error, None);
    }
}

/// Streams a chat completion, reads its first chunk ("Hel") and hangs up.
async fn read_first_chunk_and_hang_up(meter: &Meter) {
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
}

#[tokio::test]
async fn gzip_response_is_forwarded_compressed_and_metered() {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(CHAT_JSON.as_bytes()).unwrap();
    let gzipped = Bytes::from(encoder.finish().unwrap());
    let served = gzipped.clone();
    let upstream = FakeProvider::start(move |received| {
        assert_eq!(received.headers["accept-encoding"], "gzip, br");
        let mut response =
            FakeResponse::json(200, served.clone()).header("content-encoding", "gzip");
        // Split the compressed body so the decoder sees it in pieces.
        let (a, b) = served.split_at(served.len() / 2);
        response.pieces = vec![
            Piece::now(Bytes::copy_from_slice(a)),
            Piece::now(Bytes::copy_from_slice(b)),
        ];
        response
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let request = Request::post(meter.url("/openai/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip, br")
        .body(Full::new(Bytes::from(chat_request(false))))
        .unwrap();
    let (status, headers, body) = send(request).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(
        body, gzipped,
        "the client gets the compressed bytes as sent"
    );
    meter.stop().await;
    let row = &rows(&meter.db)[0];
    assert_eq!(row.usage_status, "reported");
    assert_eq!(
        (row.input_tokens, row.cache_read_tokens, row.output_tokens),
        (93, 1024, 46)
    );
}

#[tokio::test]
async fn attribution_by_key_fingerprint_path_and_default() {
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let known = meter::proxy::router::fingerprint(b"sk-coder");
    let mut meter = Meter::start(
        &upstream.url(),
        &format!("[[agent]]\nname = \"coder\"\nkeys = [\"{known}\"]\nroutes = [\"direct\"]\n"),
    )
    .await;
    let url = meter.url("/openai/v1/chat/completions");
    let with_key = |key: &str| {
        Request::post(url.as_str())
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::from(chat_request(false))))
            .unwrap()
    };
    send(with_key("sk-coder")).await;
    send(with_key("sk-someone-else")).await;
    send(
        Request::post(meter.url("/agent/ci/openai/v1/chat/completions"))
            .body(Full::new(Bytes::from(chat_request(false))))
            .unwrap(),
    )
    .await;
    // coder may not use the router route: 403, recorded, not forwarded.
    let before = upstream.requests().len();
    let (status, _, _) = send(
        Request::post(meter.url("/openrouter/v1/chat/completions"))
            .header("authorization", "Bearer sk-coder")
            .body(Full::new(Bytes::from(chat_request(false))))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(upstream.requests().len(), before);
    // Hostile agent header: refused with a clear 400, nothing forwarded or recorded.
    let (status, _, body) = send(
        Request::post(url.as_str())
            .header("x-meter-agent", "a".repeat(10_000))
            .body(Full::new(Bytes::from(chat_request(false))))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    meter.stop().await;
    let rows = rows(&meter.db);
    let agents: Vec<(&str, i64)> = rows.iter().map(|r| (r.agent.as_str(), r.status)).collect();
    assert_eq!(
        agents,
        vec![
            ("coder", 200),
            ("default", 200),
            ("ci", 200),
            ("coder", 403)
        ]
    );
    assert_eq!(rows[0].key_fingerprint.as_deref(), Some(known.as_str()));
    assert_eq!(rows[3].route, "router");
    assert_eq!(rows[3].error.as_deref(), Some("route_refused"));
    // Recorded as blocked by the route policy; the calls let through are not.
    let conn = rusqlite::Connection::open(&meter.db).unwrap();
    let blocked: Vec<Option<String>> = conn
        .prepare("SELECT blocked_by FROM usage ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        blocked,
        [None, None, None, Some("route_policy".to_string())]
    );
}

#[tokio::test]
async fn https_upstream_speaks_http2_over_one_pooled_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let upstream = FakeProvider::start_tls(
        |received| {
            if received.body.windows(13).any(|w| w == b"\"stream\":true") {
                FakeResponse::sse(vec![
                    Piece::now(chunk("Hi")),
                    Piece::now(USAGE_CHUNK),
                    Piece::now(DONE),
                ])
            } else {
                FakeResponse::json(200, CHAT_JSON)
            }
        },
        &ca,
    )
    .await;
    let mut meter = Meter::start(&upstream.url(), &format!("[upstream]\nca_file = {ca:?}\n")).await;
    for stream in [false, true, false] {
        let (status, _, body) = send(post_json(
            &meter.url("/openai/v1/chat/completions"),
            &chat_request(stream),
        ))
        .await;
        assert_eq!(status, 200);
        let expected = if stream {
            [chunk("Hi"), DONE.into()].concat()
        } else {
            CHAT_JSON.into()
        };
        assert_eq!(body, expected.as_bytes());
    }
    assert_eq!(
        *upstream.connections.lock().unwrap(),
        vec!["h2".to_string()]
    );
    // The upstream saw HTTP/2 with the right authority and no hop-by-hop headers.
    for got in upstream.requests() {
        assert_eq!(
            got.uri,
            format!("https://{}/v1/chat/completions", upstream.addr)
        );
        assert!(!got.headers.contains_key("connection"));
        assert!(
            !got.headers.contains_key("host"),
            "HTTP/2 carries the authority, not Host"
        );
    }
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|r| r.usage_status == "reported" && r.status == 200));
    assert_eq!(rows[1].output_tokens, 10);
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = FakeProvider::start_tls(
        |_| FakeResponse::json(200, CHAT_JSON),
        &dir.path().join("ca.pem"),
    )
    .await;
    // No ca_file: the test CA is not trusted, so meter must not talk to this upstream.
    let mut meter = Meter::start(&upstream.url(), "").await;
    let (status, _, _) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        &chat_request(false),
    ))
    .await;
    assert_eq!(status, 502);
    assert!(upstream.requests().is_empty());
    meter.stop().await;
    assert_eq!(
        rows(&meter.db)[0].error.as_deref(),
        Some("upstream_unreachable")
    );
}

#[tokio::test]
async fn plain_upstream_connections_are_pooled_and_http2_clients_are_served() {
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    for _ in 0..3 {
        let (status, _, _) = send(post_json(
            &meter.url("/openai/v1/chat/completions"),
            &chat_request(false),
        ))
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        upstream.connections.lock().unwrap().len(),
        1,
        "one upstream connection, reused"
    );
    // A client speaking HTTP/2 with prior knowledge (h2c) to meter.
    let h2 = h2_client();
    let response = h2
        .request(post_json(
            &meter.url("/openai/v1/chat/completions"),
            &chat_request(false),
        ))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, CHAT_JSON.as_bytes());
    meter.stop().await;
    assert_eq!(rows(&meter.db).len(), 4);
}

#[tokio::test]
async fn drain_on_disconnect_reads_on_to_the_providers_usage() {
    let upstream =
        FakeProvider::start(|received| openai_stream(received, &["Hel", "lo"], true)).await;
    let mut meter = Meter::start(
        &upstream.url(),
        "[upstream]\ndrain_on_disconnect = true\ndrain_on_disconnect_secs = 10\n",
    )
    .await;
    read_first_chunk_and_hang_up(&meter).await; // the provider goes on
    upstream.release(1);
    // The row lands once meter has read on to the usage (shutdown would cut the reading).
    wait_for("no row after the drain", || !rows(&meter.db).is_empty()).await;
    meter.stop().await;
    let row = &rows(&meter.db)[0];
    assert_eq!(row.error.as_deref(), Some("client_gone"));
    assert_eq!(
        row.usage_status, "reported",
        "meter read on to the usage chunk"
    );
    assert_eq!((row.input_tokens, row.output_tokens), (19, 10));
}

#[tokio::test]
async fn a_provider_that_rejects_stream_options_gets_the_clients_request_as_sent() {
    let upstream = FakeProvider::start(|received| {
        if received.body.windows(14).any(|w| w == b"stream_options") {
            FakeResponse::json(
                400,
                r#"{"error":{"message":"Unrecognized request argument supplied: stream_options"}}"#,
            )
        } else {
            openai_stream(received, &["Hi", " there"], false)
        }
    })
    .await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let (status, _, body) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        &chat_request(true),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body.to_vec()).unwrap(),
        [chunk("Hi"), chunk(" there"), DONE.to_string()].concat()
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].body,
        chat_request(true).as_bytes(),
        "the retry is the client's own body"
    );
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].status, rows[0].usage_status.as_str()),
        (200, "estimated")
    );
}
