//! Chat-completions usage parsers (OpenAI's format and the providers that copy it) on real wire
//! bodies from `tests/fixtures/`, fed whole, split at every byte, byte by byte, and cut short at
//! every byte. Reads fixtures only; no network, no ledger.
#![allow(clippy::unwrap_used)]

mod support;

use meter::usage::openai::{ChatCompletionJson, ChatCompletionStream};
use meter::usage::{Flavor, ParsedUsage, Quantities, Usage, UsageParser};
use support::parsing::{check_fixture, fixture_bytes, run, usage_event_end};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    Json,
    Sse,
}

/// What one fixture must parse to.
struct Case {
    fixture: &'static str,
    flavor: Flavor,
    body: Body,
    usage: Option<Usage>,
    model: Option<&'static str>,
    request_id: Option<&'static str>,
    cost_nanos: Option<i64>,
    upstream_provider: Option<&'static str>,
    audio_in: u64,
    audio_out: u64,
    web_search_calls: u64,
    /// The whole generated text, where the case checks it.
    text: Option<&'static str>,
}

const CASE: Case = Case {
    fixture: "",
    flavor: Flavor::OpenAi,
    body: Body::Json,
    usage: None,
    model: None,
    request_id: None,
    cost_nanos: None,
    upstream_provider: None,
    audio_in: 0,
    audio_out: 0,
    web_search_calls: 0,
    text: None,
};

const fn usage(
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
    reasoning: u64,
) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        cache_write_1h_tokens: 0,
        output_tokens: output,
        reasoning_tokens: reasoning,
    })
}

/// One row per fixture file; the comment says where the numbers come from.
const CASES: &[Case] = &[
    // --- OpenAI: input = prompt - cached, output = completion (reasoning included).
    Case {
        fixture: "openai/chat_plain.json",
        usage: usage(24, 0, 0, 8, 0),
        model: Some("gpt-4o-mini-2024-07-18"),
        request_id: Some("chatcmpl-CDv2kJ4mWz8Qh1fRrYt0aNbXsLpUe"),
        ..CASE
    },
    Case {
        // prompt 2181 of which 1920 cached; completion 715 of which 576 reasoning.
        fixture: "openai/chat_cached_reasoning.json",
        usage: usage(261, 1920, 0, 715, 576),
        model: Some("o4-mini-2025-04-16"),
        request_id: Some("chatcmpl-CE1u0c7ZqG3yTnKx9pWvA2mHdLsRf"),
        ..CASE
    },
    Case {
        fixture: "openai/chat_tool_calls.json",
        usage: usage(96, 0, 0, 58, 0),
        model: Some("gpt-4.1-2025-04-14"),
        request_id: Some("chatcmpl-CE2bQk5Yw1TzVhR8nXcJ4fGmPaDsL"),
        ..CASE
    },
    Case {
        // n=2: one usage for both choices.
        fixture: "openai/chat_n2.json",
        usage: usage(19, 0, 0, 41, 0),
        model: Some("gpt-4o-2024-08-06"),
        request_id: Some("chatcmpl-CE3nT9dWq4KyLb0sHxFv7cRjMgAzP"),
        ..CASE
    },
    Case {
        // Audio in and out stay inside input and output and are also counted apart.
        fixture: "openai/chat_audio.json",
        usage: usage(46, 0, 0, 187, 0),
        model: Some("gpt-4o-audio-preview-2024-12-17"),
        request_id: Some("chatcmpl-CF1aQz7rN2vKp8YtLmW4sXbHdGe3J"),
        audio_in: 31,
        audio_out: 176,
        text: Some(""),
        ..CASE
    },
    Case {
        fixture: "openai/chat_error.json",
        ..CASE
    },
    Case {
        // Without `stream_options.include_usage` OpenAI reports no usage at all.
        fixture: "openai/chat_stream_no_usage.sse",
        body: Body::Sse,
        model: Some("gpt-4o-mini-2024-07-18"),
        request_id: Some("chatcmpl-CE4aH2pLx7RwNz5cVbK9tYqJmFsDg"),
        ..CASE
    },
    Case {
        fixture: "openai/chat_stream_include_usage.sse",
        body: Body::Sse,
        usage: usage(31, 0, 0, 12, 0),
        model: Some("gpt-4o-2024-08-06"),
        request_id: Some("chatcmpl-CE4fW8sNq1KdTx3jZmH6vBpRyLcGa"),
        ..CASE
    },
    Case {
        // prompt 3408 of which 3072 cached; completion 402 of which 384 reasoning.
        fixture: "openai/chat_stream_cached_reasoning.sse",
        body: Body::Sse,
        usage: usage(336, 3072, 0, 402, 384),
        model: Some("gpt-5-2025-08-07"),
        request_id: Some("chatcmpl-CE5Jr4yTc8PwLm0xQkN2sVbHgZdFe"),
        ..CASE
    },
    Case {
        fixture: "openai/chat_stream_tool_calls.sse",
        body: Body::Sse,
        usage: usage(84, 0, 0, 18, 0),
        model: Some("gpt-4.1-mini-2025-04-14"),
        request_id: Some("chatcmpl-CE5xY0gMb3RqWt7nLzK5cHjVsPfAo"),
        ..CASE
    },
    Case {
        // `\r\n` line ends and `: keep-alive` comments; prompt 1291 of which 1152 cached.
        fixture: "openai/chat_stream_crlf_keepalive.sse",
        body: Body::Sse,
        usage: usage(139, 1152, 0, 7, 0),
        model: Some("gpt-4o-mini-2024-07-18"),
        request_id: Some("chatcmpl-CE6Bv5nRk9TzQw2hXmL8pFcYjGsDa"),
        ..CASE
    },
    Case {
        // Fails mid-way with a `data: {"error": ...}` event and no usage.
        fixture: "openai/chat_stream_error.sse",
        body: Body::Sse,
        model: Some("gpt-4o-2024-08-06"),
        request_id: Some("chatcmpl-CE6Pk1sWm6YtRx9bNcQ3vHzLgJdFu"),
        ..CASE
    },
    // --- Azure OpenAI: OpenAI's buckets; content-filter chunks and fields are ignored.
    Case {
        fixture: "azure/chat_filters.json",
        flavor: Flavor::Azure,
        usage: usage(19, 0, 0, 85, 64),
        model: Some("o4-mini-2025-04-16"),
        request_id: Some("chatcmpl-CWQ7iKx3TbN0fL2wPq9RmYs5VdHcE"),
        text: Some("Olá! Como posso ajudar?"),
        ..CASE
    },
    Case {
        // Opens with an id-less `prompt_filter_results` chunk; prompt 1350 of which 1152 cached.
        fixture: "azure/chat_stream_filters.sse",
        flavor: Flavor::Azure,
        body: Body::Sse,
        usage: usage(198, 1152, 0, 42, 0),
        model: Some("gpt-4o-2024-11-20"),
        request_id: Some("chatcmpl-CWQ9tYk2Lm8NpR4vXz6QbH1sDfGaJ"),
        text: Some("The invoice total is €1,240.00."),
        ..CASE
    },
    // --- OpenRouter: prompt_tokens include cache reads and writes; `cost` is reported.
    Case {
        // Whitespace keep-alives before the JSON; prompt 5240 = 120 + 3072 read + 2048 written;
        // cost $0.0121416.
        fixture: "openrouter/chat_cost.json",
        flavor: Flavor::OpenRouter,
        usage: usage(120, 3072, 2048, 212, 0),
        model: Some("anthropic/claude-sonnet-4"),
        request_id: Some("gen-1757700412-Hq3kT9vXbN2mLp8RwZc4"),
        cost_nanos: Some(12_141_600),
        upstream_provider: Some("Anthropic"),
        ..CASE
    },
    Case {
        // BYOK: OpenRouter's fee ($0.000024175) plus the upstream's bill ($0.0004835).
        fixture: "openrouter/chat_byok.json",
        flavor: Flavor::OpenRouter,
        usage: usage(820, 0, 0, 95, 0),
        model: Some("google/gemini-2.5-flash"),
        request_id: Some("gen-1757702990-P4sWq8LmZx1cVb7NtRy2"),
        cost_nanos: Some(507_675),
        upstream_provider: Some("Google AI Studio"),
        ..CASE
    },
    Case {
        // `: OPENROUTER PROCESSING` comments; reasoning deltas; prompt 1024 of which 896
        // cached; completion 380 of which 256 reasoning; cost $0.0008144.
        fixture: "openrouter/chat_stream_cost.sse",
        flavor: Flavor::OpenRouter,
        body: Body::Sse,
        usage: usage(128, 896, 0, 380, 256),
        model: Some("openai/gpt-5-mini-2025-08-07"),
        request_id: Some("gen-1757701850-Zk2Nv7RbQp4XwLm9TcYd"),
        cost_nanos: Some(814_400),
        upstream_provider: Some("OpenAI"),
        text: Some("**Checking the arithmetic**\n\nThe user wants 17 times 23.17 × 23 = 391."),
        ..CASE
    },
    // --- Mistral: cached tokens are part of prompt_tokens, under any of their names.
    Case {
        fixture: "mistral/chat_cached.json",
        flavor: Flavor::Mistral,
        usage: usage(5, 1008, 0, 30, 0),
        model: Some("mistral-large-latest"),
        request_id: Some("3f1a9c0e7b2d4e8fa6c5b4d3e2f1a0b9"),
        ..CASE
    },
    Case {
        fixture: "mistral/chat_num_cached.json",
        flavor: Flavor::Mistral,
        usage: usage(33, 768, 0, 2, 0),
        model: Some("mistral-medium-2508"),
        request_id: Some("8b7e2d4c1f0a49e3b5c6d7e8f9a0b1c2"),
        text: Some("Yes."),
        ..CASE
    },
    Case {
        // Usage arrives unasked in the last chunk, beside the last delta.
        fixture: "mistral/chat_stream.sse",
        flavor: Flavor::Mistral,
        body: Body::Sse,
        usage: usage(34, 0, 0, 27, 0),
        model: Some("mistral-small-latest"),
        request_id: Some("f798ebd5c41a45d88bb079635121cade"),
        text: Some(
            "Rust prevents data races at compile time: a value can have either one mutable \
             reference or many shared ones, never both.",
        ),
        ..CASE
    },
    // --- xAI: completion_tokens leave reasoning out, so output = completion + reasoning.
    Case {
        // prompt 330 of which 283 cached; 11 completion + 319 reasoning (total 660).
        fixture: "xai/chat_reasoning.json",
        flavor: Flavor::Xai,
        usage: usage(47, 283, 0, 330, 319),
        model: Some("grok-3-mini-high"),
        request_id: Some("0e8b2650-9b58-7a68-0546-5d76ffade4c2_us-east-1"),
        ..CASE
    },
    Case {
        // Live Search: 7 sources; cost_in_usd_ticks 1826800000 = $0.18268.
        fixture: "xai/chat_live_search.json",
        flavor: Flavor::Xai,
        usage: usage(1850, 0, 0, 142, 0),
        model: Some("grok-3"),
        request_id: Some("5c1e9a42-3b7d-4e0f-8a26-d9b3c7e1f054_us-east-1"),
        cost_nanos: Some(182_680_000),
        web_search_calls: 7,
        ..CASE
    },
    Case {
        // prompt 332 of which 311 cached; 13 completion + 120 reasoning (total 465).
        fixture: "xai/chat_stream_reasoning.sse",
        flavor: Flavor::Xai,
        body: Body::Sse,
        usage: usage(21, 311, 0, 133, 120),
        model: Some("grok-3-mini-high"),
        request_id: Some("0f6cda06-71ff-e409-d9c4-b87c3f622342_us-east-1"),
        text: Some(
            "The user wants the weather; the tool said 40 C. No further calls are needed.\
             The weather in Florence, Italy, is currently 40°C.",
        ),
        ..CASE
    },
    // --- DeepSeek: hit + miss = prompt; reasoning inside completion.
    Case {
        fixture: "deepseek/chat_cache_hit.json",
        flavor: Flavor::DeepSeek,
        usage: usage(64, 1472, 0, 64, 0),
        model: Some("deepseek-chat"),
        request_id: Some("b2c8f1e4-7a3d-4f6b-9e21-5c8d0a7f3e19"),
        ..CASE
    },
    Case {
        fixture: "deepseek/chat_reasoner_stream.sse",
        flavor: Flavor::DeepSeek,
        body: Body::Sse,
        usage: usage(18, 0, 0, 142, 118),
        model: Some("deepseek-reasoner"),
        request_id: Some("0e9642e9-9af6-4eb1-9c13-8c90d6b13ef3"),
        text: Some("好的，用户问9.11和9.8哪个大。比较小数部分：0.8大于0.11。9.8 更大。"),
        ..CASE
    },
    // --- Groq: `x_groq.usage`, and with include_usage `usage` too, counted once.
    Case {
        fixture: "groq/chat_cached.json",
        flavor: Flavor::Groq,
        usage: usage(128, 1280, 0, 236, 174),
        model: Some("openai/gpt-oss-20b"),
        request_id: Some("chatcmpl-a79f596a-cdc3-4b0b-9e02-0cd4dda5506e"),
        ..CASE
    },
    Case {
        fixture: "groq/chat_stream_x_groq.sse",
        flavor: Flavor::Groq,
        body: Body::Sse,
        usage: usage(45, 0, 0, 10, 0),
        model: Some("llama-3.3-70b-versatile"),
        request_id: Some("chatcmpl-6b1d3f2a-9c8e-4a7b-b5d4-3e2f1a0c9b8d"),
        text: Some("Hello! How can I help you today?"),
        ..CASE
    },
    Case {
        // The same report three times (x_groq.usage, usage, last chunk); prompt 2113 of which
        // 1536 cached.
        fixture: "groq/chat_stream_include_usage.sse",
        flavor: Flavor::Groq,
        body: Body::Sse,
        usage: usage(577, 1536, 0, 9, 0),
        model: Some("moonshotai/kimi-k2-instruct-0905"),
        request_id: Some("chatcmpl-217967f6-a17e-43ab-a156-6b28ea4e8338"),
        ..CASE
    },
    // --- vLLM: OpenAI's shape; running usage in every chunk, the final one decides.
    Case {
        fixture: "vllm/chat_prefix_cached.json",
        flavor: Flavor::Vllm,
        usage: usage(163, 1024, 0, 213, 0),
        model: Some("Qwen/Qwen3-8B"),
        request_id: Some("chatcmpl-4d2e8f6a1b3c4e5f9a7b8c6d0e1f2a3b"),
        ..CASE
    },
    Case {
        fixture: "vllm/chat_stream_continuous.sse",
        flavor: Flavor::Vllm,
        body: Body::Sse,
        usage: usage(28, 0, 0, 8, 0),
        model: Some("Qwen/Qwen2.5-7B-Instruct"),
        request_id: Some("chatcmpl-9f2c4b1e8d7a4c3b9e6f5a2d1c0b8e7f"),
        text: Some("Paris is the capital of France."),
        ..CASE
    },
];

fn make(case: &Case) -> Box<dyn UsageParser> {
    match case.body {
        Body::Json => Box::new(ChatCompletionJson::new(case.flavor)),
        Body::Sse => Box::new(ChatCompletionStream::new(case.flavor)),
    }
}

fn expected(case: &Case) -> ParsedUsage {
    ParsedUsage {
        usage: case.usage,
        model: case.model.map(str::to_owned),
        request_id: case.request_id.map(str::to_owned),
        reported_cost_nanos: case.cost_nanos,
        upstream_provider: case.upstream_provider.map(str::to_owned),
        quantities: Quantities {
            audio_input_tokens: case.audio_in,
            audio_output_tokens: case.audio_out,
            web_search_calls: case.web_search_calls,
            ..Quantities::default()
        },
        ..ParsedUsage::default()
    }
}

fn parse(case: &Case, chunks: &[&[u8]]) -> ParsedUsage {
    run(&|| make(case), chunks)
}

fn check(case: &Case) {
    let name = case.fixture;
    check_fixture(name, &|| make(case), &expected(case));

    let body = fixture_bytes(name);
    // The text does not depend on how the body was split.
    let whole = parse(case, &[&body]).output_text;
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        parse(case, &bytes).output_text,
        whole,
        "{name}: text by bytes"
    );
    if let Some(text) = case.text {
        assert_eq!(whole.text, text, "{name}: text");
    }

    // A stream cut after its usage event still reports it.
    if case.body == Body::Sse && case.usage.is_some() {
        let end = usage_event_end(&body).unwrap();
        for cut in end..body.len() {
            assert_eq!(
                parse(case, &[&body[..cut]]).usage,
                case.usage,
                "{name}: cut at {cut}"
            );
        }
    }
}

#[test]
fn fixtures_parse_in_every_chunking() {
    // Each case is quadratic in its body length; run them side by side.
    std::thread::scope(|scope| {
        for case in CASES {
            scope.spawn(|| check(case));
        }
    });
}

/// A stream with running totals (vLLM `continuous_usage_stats`) that is cut before it ends has
/// only a partial report, never a final one.
#[test]
fn running_usage_of_a_cut_stream_is_partial() {
    let case = CASES
        .iter()
        .find(|case| case.fixture == "vllm/chat_stream_continuous.sse")
        .unwrap();
    let body = fixture_bytes(case.fixture);
    let needle = b" capital";
    let cut = body
        .windows(needle.len())
        .position(|window| window == needle)
        .unwrap();
    let parsed = parse(case, &[&body[..cut]]);
    assert_eq!(parsed.usage, None);
    assert_eq!(parsed.partial, usage(28, 0, 0, 3, 0));
}

/// A fixture added to a provider's directory without a row here would silently go untested.
#[test]
fn every_fixture_has_a_case() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut providers: Vec<&str> = CASES
        .iter()
        .filter_map(|case| case.fixture.split('/').next())
        .collect();
    providers.sort_unstable();
    providers.dedup();
    for provider in providers {
        for entry in std::fs::read_dir(root.join(provider)).unwrap() {
            let file_name = entry.unwrap().file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.ends_with(".json") || file_name.ends_with(".sse") {
                let fixture = format!("{provider}/{file_name}");
                assert!(
                    CASES.iter().any(|case| case.fixture == fixture),
                    "fixture {fixture} has no case in tests/parsers.rs"
                );
            }
        }
    }
}
