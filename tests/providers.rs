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

/// Built-in providers, plus two added in config the way users add Azure and Vertex AI.
const PROVIDERS: &[&str] = &[
    "azure",
    "vertex",
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
        assert_eq!(
            status,
            200,
            "{}: {}",
            call.fixture,
            String::from_utf8_lossy(&got)
        );
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

const STREAM_WITH_USAGE: &str = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
const PLAIN: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn chat(provider: &'static str, fixture: &'static str, expected: Expected) -> Call {
    let stream = fixture.ends_with(".sse");
    Call {
        provider,
        path: "/v1/chat/completions",
        request: if stream { STREAM_WITH_USAGE } else { PLAIN },
        fixture,
        content_type: if stream {
            "text/event-stream"
        } else {
            "application/json"
        },
        expected,
    }
}

type Expected = (i64, i64, i64, i64, i64, &'static str, &'static str);

#[tokio::test]
async fn openai_compatible_providers() {
    check(&[
        chat(
            "openrouter",
            "openrouter/chat_cost.json",
            (
                120,
                3072,
                2048,
                212,
                0,
                "reported",
                "anthropic/claude-sonnet-4",
            ),
        ),
        chat(
            "openrouter",
            "openrouter/chat_stream_cost.sse",
            (
                128,
                896,
                0,
                380,
                256,
                "reported",
                "openai/gpt-5-mini-2025-08-07",
            ),
        ),
        chat(
            "mistral",
            "mistral/chat_cached.json",
            (5, 1008, 0, 30, 0, "reported", "mistral-large-latest"),
        ),
        chat(
            "mistral",
            "mistral/chat_stream.sse",
            (34, 0, 0, 27, 0, "reported", "mistral-small-latest"),
        ),
        chat(
            "xai",
            "xai/chat_reasoning.json",
            (47, 283, 0, 330, 319, "reported", "grok-3-mini-high"),
        ),
        chat(
            "xai",
            "xai/chat_stream_reasoning.sse",
            (21, 311, 0, 133, 120, "reported", "grok-3-mini-high"),
        ),
        chat(
            "deepseek",
            "deepseek/chat_cache_hit.json",
            (64, 1472, 0, 64, 0, "reported", "deepseek-chat"),
        ),
        chat(
            "deepseek",
            "deepseek/chat_reasoner_stream.sse",
            (18, 0, 0, 142, 118, "reported", "deepseek-reasoner"),
        ),
        chat(
            "groq",
            "groq/chat_cached.json",
            (128, 1280, 0, 236, 174, "reported", "openai/gpt-oss-20b"),
        ),
        chat(
            "groq",
            "groq/chat_stream_x_groq.sse",
            (45, 0, 0, 10, 0, "reported", "llama-3.3-70b-versatile"),
        ),
        chat(
            "vllm",
            "vllm/chat_prefix_cached.json",
            (163, 1024, 0, 213, 0, "reported", "Qwen/Qwen3-8B"),
        ),
        chat(
            "vllm",
            "vllm/chat_stream_continuous.sse",
            (28, 0, 0, 8, 0, "reported", "Qwen/Qwen2.5-7B-Instruct"),
        ),
        chat(
            "ollama",
            "openai/chat_plain.json",
            (24, 0, 0, 8, 0, "reported", "gpt-4o-mini-2024-07-18"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn azure_and_vertex_paths() {
    check(&[
        Call {
            provider: "azure",
            path: "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
            request: STREAM_WITH_USAGE,
            fixture: "azure/chat_stream_filters.sse",
            content_type: "text/event-stream",
            expected: (198, 1152, 0, 42, 0, "reported", "gpt-4o-2024-11-20"),
        },
        Call {
            provider: "vertex",
            path: "/v1/projects/acme/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            request: r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
            fixture: "gemini/vertex_stream.sse",
            content_type: "text/event-stream",
            expected: (4, 0, 0, 37, 28, "reported", "gemini-2.5-flash"),
        },
    ])
    .await;
}

#[tokio::test]
async fn ollama_native_api() {
    check(&[
        Call {
            provider: "ollama",
            path: "/api/chat",
            request: r#"{"model":"llama3.2","messages":[{"role":"user","content":"why is the sky blue"}]}"#,
            fixture: "ollama/chat_stream.ndjson",
            content_type: "application/x-ndjson",
            expected: (31, 0, 0, 10, 0, "reported", "llama3.2"),
        },
        Call {
            provider: "ollama",
            path: "/api/generate",
            request: r#"{"model":"llama3.2","prompt":"why is the sky blue","stream":false}"#,
            fixture: "ollama/generate.json",
            content_type: "application/json; charset=utf-8",
            expected: (26, 0, 0, 290, 0, "reported", "llama3.2"),
        },
    ])
    .await;
}

#[tokio::test]
async fn openrouter_cost_and_upstream_are_kept_and_cost_is_asked_for() {
    let body = fixture("openrouter/chat_cost.json");
    let served = body.clone();
    let upstream = FakeProvider::start(move |_| FakeResponse::json(200, served.clone())).await;
    let mut meter = Meter::start(
        &upstream.url(),
        &format!(
            "[[provider]]\nname = \"openrouter\"\nupstream = \"{}\"\n",
            upstream.url()
        ),
    )
    .await;
    let request = PLAIN.replace("\"m\"", "\"anthropic/claude-sonnet-4\"");
    let (status, _, got) = send(post_json(
        &meter.url("/openrouter/v1/chat/completions"),
        &request,
    ))
    .await;
    assert_eq!((status, got), (200, Bytes::from(body)));
    let sent: serde_json::Value = serde_json::from_slice(&upstream.requests()[0].body).unwrap();
    assert_eq!(
        sent["usage"]["include"], true,
        "meter asks OpenRouter for the cost"
    );
    assert_eq!(sent["messages"][0]["content"], "hi");
    meter.stop().await;
    let row = &rows(&meter.db)[0];
    assert_eq!(row.route, "router");
    assert_eq!(row.reported_cost_nanos, Some(12_141_600));
    assert_eq!(
        (row.cost_nanos, row.cost_source.as_deref()),
        (Some(12_141_600), Some("provider_reported"))
    );
    // The table's figure for the same call is kept beside it: Anthropic's own Sonnet 4 price,
    // 120 × $3 + 3072 × $0.30 + 2048 × $3.75 + 212 × $15 per 1M, which is what OpenRouter
    // charged here (no markup on this call).
    assert_eq!(row.table_cost_nanos, Some(12_141_600), "{row:?}");
    assert!(row
        .price_id
        .as_deref()
        .is_some_and(|id| id.starts_with("builtin:anthropic/claude-sonnet-4")));
    assert_eq!(
        row.tags.as_deref(),
        Some(r#"{"upstream_provider":"Anthropic"}"#)
    );
}
