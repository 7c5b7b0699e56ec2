//! End to end, one streaming and one non-streaming call per provider wire format: a fake
//! provider serves a real fixture body (in pieces), meter forwards it, the client must get the
//! same bytes, and the ledger row must carry the provider's usage in meter's buckets.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use support::*;

/// One call: (provider prefix, path after it, request body, fixture served, content type),
/// and the expected (input, cache_read, cache_write, output, reasoning, usage_status, model).
struct Call {
    provider: &'static str,
    path: &'static str,
    request: &'static str,
    fixture: &'static str,
    content_type: &'static str,
    expected: (i64, i64, i64, i64, i64, &'static str, &'static str),
}

const PROVIDERS: &[&str] = &[
    "anthropic",
    "gemini",
    "openrouter",
    "mistral",
    "xai",
    "deepseek",
    "groq",
    "ollama",
    "vllm",
];

/// The body the fake provider serves next, and its content type.
type Served = (Vec<u8>, &'static str);

async fn check(calls: &[Call]) {
    let served: std::sync::Arc<std::sync::Mutex<Option<Served>>> = Default::default();
    let current = served.clone();
    let upstream = FakeProvider::start(move |_| {
        let (body, content_type) = current.lock().unwrap().clone().unwrap();
        // Serve the body in three pieces, splitting wherever the thirds fall.
        let third = body.len() / 3;
        let pieces = [&body[..third], &body[third..2 * third], &body[2 * third..]]
            .iter()
            .map(|piece| Piece::now(Bytes::copy_from_slice(piece)))
            .collect();
        FakeResponse {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            pieces,
            head_delay: std::time::Duration::ZERO,
            reset_after: false,
        }
    })
    .await;
    let providers: String = PROVIDERS
        .iter()
        .map(|name| {
            format!(
                "[[provider]]\nname = \"{name}\"\nupstream = \"{}\"\n\n",
                upstream.url()
            )
        })
        .collect();
    let mut meter = Meter::start(&upstream.url(), &providers).await;
    for call in calls {
        let body = fixture(call.fixture);
        *served.lock().unwrap() = Some((body.clone(), call.content_type));
        let url = meter.url(&format!("/{}{}", call.provider, call.path));
        let (status, _, got) = send(post_json(&url, call.request)).await;
        assert_eq!(status, 200, "{}", call.fixture);
        assert_eq!(
            got, body,
            "{}: the client must get the provider's bytes",
            call.fixture
        );
    }
    meter.stop().await;
    let rows = rows(&meter.db);
    assert_eq!(rows.len(), calls.len());
    for (call, row) in calls.iter().zip(rows) {
        let got = (
            row.input_tokens,
            row.cache_read_tokens,
            row.cache_write_tokens,
            row.output_tokens,
            row.reasoning_tokens,
            row.usage_status.as_str(),
            row.model.as_deref().unwrap_or(""),
        );
        assert_eq!(got, call.expected, "{}", call.fixture);
        assert_eq!(row.provider, call.provider);
    }
}

#[tokio::test]
async fn anthropic_messages() {
    check(&[
        Call {
            provider: "anthropic",
            path: "/v1/messages",
            request: r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"hi"}]}"#,
            fixture: "anthropic/messages_cache.json",
            content_type: "application/json",
            expected: (14, 18300, 2248, 391, 0, "reported", "claude-opus-4-1-20250805"),
        },
        Call {
            provider: "anthropic",
            path: "/v1/messages",
            request: r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            fixture: "anthropic/stream_web_search_cumulative.sse",
            content_type: "text/event-stream; charset=utf-8",
            expected: (10682, 0, 0, 510, 0, "reported", "claude-opus-4-1-20250805"),
        },
    ])
    .await;
}

#[tokio::test]
async fn gemini_generate_content() {
    check(&[
        Call {
            provider: "gemini",
            path: "/v1beta/models/gemini-2.5-pro:generateContent",
            request: r#"{"contents":[{"role":"user","parts":[{"text":"riddle"}]}]}"#,
            fixture: "gemini/generate_content_thinking.json",
            content_type: "application/json; charset=UTF-8",
            expected: (31, 0, 0, 974, 900, "reported", "gemini-2.5-pro"),
        },
        Call {
            provider: "gemini",
            path: "/v1beta/models/gemini-2.5-flash-lite:streamGenerateContent",
            request: r#"{"contents":[{"role":"user","parts":[{"text":"vec"}]}]}"#,
            fixture: "gemini/stream_json_array.json",
            content_type: "application/json; charset=UTF-8",
            expected: (14, 0, 0, 45, 0, "reported", "gemini-2.5-flash-lite"),
        },
        Call {
            provider: "gemini",
            path: "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            request: r#"{"contents":[{"role":"user","parts":[{"text":"cat names"}]}]}"#,
            fixture: "gemini/stream_running_usage.sse",
            content_type: "text/event-stream",
            expected: (10, 0, 0, 27, 0, "reported", "gemini-2.0-flash"),
        },
    ])
    .await;
}

#[tokio::test]
async fn openai_responses_embeddings_and_images() {
    check(&[
        Call {
            provider: "openai",
            path: "/v1/responses",
            request: r#"{"model":"gpt-5-mini","stream":true,"input":"hi"}"#,
            fixture: "openai_responses/responses_stream_completed.sse",
            content_type: "text/event-stream; charset=utf-8",
            expected: (115, 1408, 0, 612, 448, "reported", "gpt-5-mini-2025-08-07"),
        },
        Call {
            provider: "openai",
            path: "/v1/embeddings",
            request: r#"{"model":"text-embedding-3-small","input":"hi"}"#,
            fixture: "openai_responses/embeddings_float.json",
            content_type: "application/json",
            expected: (17, 0, 0, 0, 0, "reported", "text-embedding-3-small"),
        },
        Call {
            provider: "openai",
            path: "/v1/images/generations",
            request: r#"{"model":"gpt-image-1","prompt":"a cat","size":"1024x1024","quality":"low"}"#,
            fixture: "openai_responses/images_gpt_image_1.json",
            content_type: "application/json",
            expected: (21, 0, 0, 2112, 0, "reported", "gpt-image-1"),
        },
    ])
    .await;
}
