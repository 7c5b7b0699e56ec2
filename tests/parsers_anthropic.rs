//! The Anthropic Messages usage parsers on real wire bodies from `tests/fixtures/anthropic/`,
//! fed whole, split at every byte, byte by byte, and cut short at every byte. Reads fixtures
//! only; no network, no ledger.
#![allow(clippy::unwrap_used)]

mod support;

use meter::usage::anthropic::{MessagesJson, MessagesStream};
use meter::usage::{ParsedUsage, Quantities, Usage, UsageParser};
use support::parsing::{check_fixture, fixture_bytes};

#[derive(Clone, Copy)]
enum Body {
    Json,
    Sse,
}

impl Body {
    fn parser(self) -> Box<dyn UsageParser> {
        match self {
            Body::Json => Box::new(MessagesJson::default()),
            Body::Sse => Box::new(MessagesStream::default()),
        }
    }
}

/// What one fixture must parse to.
struct Case {
    fixture: &'static str,
    body: Body,
    usage: Option<Usage>,
    partial: Option<Usage>,
    model: Option<&'static str>,
    request_id: Option<&'static str>,
    web_search_calls: u64,
}

/// Buckets in SPEC §4 order: input, cache read, cache write, of which 1 hour, output, of which
/// reasoning.
const fn usage(
    input: u64,
    cache_read: u64,
    cache_write: u64,
    cache_write_1h: u64,
    output: u64,
    reasoning: u64,
) -> Usage {
    Usage {
        input_tokens: input,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        cache_write_1h_tokens: cache_write_1h,
        output_tokens: output,
        reasoning_tokens: reasoning,
    }
}

/// One row per fixture file. Anthropic buckets: input = `input_tokens` (caches excluded),
/// cache read = `cache_read_input_tokens`, cache write = `cache_creation_input_tokens`, of which
/// 1 hour = `cache_creation.ephemeral_1h_input_tokens`, output = `output_tokens` (thinking
/// included), reasoning = `output_tokens_details.thinking_tokens` where sent; streams take the
/// latest cumulative figures, never a sum of events; `usage.iterations` raise each bucket to the
/// sum over all iterations.
const CASES: &[Case] = &[
    Case {
        fixture: "anthropic/messages_plain.json",
        body: Body::Json,
        usage: Some(usage(21, 0, 0, 0, 44, 0)),
        partial: None,
        model: Some("claude-sonnet-4-5-20250929"),
        request_id: Some("msg_01XFDUDYJgAACzvnptvVoYEL"),
        web_search_calls: 0,
    },
    Case {
        // 2248 written (148 for 5 minutes, 2100 for 1 hour), 18300 read.
        fixture: "anthropic/messages_cache.json",
        body: Body::Json,
        usage: Some(usage(14, 18300, 2248, 2100, 391, 0)),
        partial: None,
        model: Some("claude-opus-4-1-20250805"),
        request_id: Some("msg_01Hq7ZkTgVtW4pB3cN8rYdLm"),
        web_search_calls: 0,
    },
    Case {
        fixture: "anthropic/messages_tool_use.json",
        body: Body::Json,
        usage: Some(usage(512, 0, 0, 0, 94, 0)),
        partial: None,
        model: Some("claude-sonnet-4-5-20250929"),
        request_id: Some("msg_01Aq9w938a90dw8q4fD3pGxK"),
        web_search_calls: 0,
    },
    Case {
        // Thinking is inside output_tokens; this (older) response does not split it out.
        fixture: "anthropic/messages_thinking.json",
        body: Body::Json,
        usage: Some(usage(48, 0, 0, 0, 287, 0)),
        partial: None,
        model: Some("claude-sonnet-4-5-20250929"),
        request_id: Some("msg_01Ta5Hp3hQ1xWmYv8sKc2JzN"),
        web_search_calls: 0,
    },
    Case {
        // One web search billed per call; web_fetch_requests (0 here) is never a quantity.
        fixture: "anthropic/messages_web_search.json",
        body: Body::Json,
        usage: Some(usage(6039, 0, 0, 0, 931, 0)),
        partial: None,
        model: Some("claude-opus-4-1-20250805"),
        request_id: Some("msg_01GnVw8dY3s5Kq2LZx7tRbPe"),
        web_search_calls: 1,
    },
    Case {
        // Top level 2311 in / 1000 out leaves out the compaction iteration (160112 in, 3412
        // out); the billed total is the sum over iterations.
        fixture: "anthropic/messages_compaction.json",
        body: Body::Json,
        usage: Some(usage(162_423, 20480, 210, 0, 4412, 0)),
        partial: None,
        model: Some("claude-opus-4-6"),
        request_id: Some("msg_01Kc8mPq2VvXz7RtYb4NwLhJ"),
        web_search_calls: 0,
    },
    Case {
        fixture: "anthropic/messages_error.json",
        body: Body::Json,
        usage: None,
        partial: None,
        model: None,
        request_id: None,
        web_search_calls: 0,
    },
    Case {
        // Older behaviour: message_delta carries output_tokens only; input from message_start.
        fixture: "anthropic/stream_plain.sse",
        body: Body::Sse,
        usage: Some(usage(19, 0, 0, 0, 38, 0)),
        partial: None,
        model: Some("claude-3-5-haiku-20241022"),
        request_id: Some("msg_01Qx2bNf7RrYw3kT9hVdLs4P"),
        web_search_calls: 0,
    },
    Case {
        // message_start says 3 output tokens; the final message_delta 612, of which 498 thinking.
        fixture: "anthropic/stream_thinking.sse",
        body: Body::Sse,
        usage: Some(usage(46, 0, 0, 0, 612, 498)),
        partial: None,
        model: Some("claude-opus-4-6"),
        request_id: Some("msg_01EmRz6bGk3Ypq8WvX2cTnHa"),
        web_search_calls: 0,
    },
    Case {
        fixture: "anthropic/stream_tool_use.sse",
        body: Body::Sse,
        usage: Some(usage(12, 4096, 0, 0, 89, 0)),
        partial: None,
        model: Some("claude-sonnet-4-5-20250929"),
        request_id: Some("msg_014p7gG3wDgGV9EUtLvnow3U"),
        web_search_calls: 0,
    },
    Case {
        // message_start input 2679, final cumulative message_delta input 10682: not 13361.
        fixture: "anthropic/stream_web_search_cumulative.sse",
        body: Body::Sse,
        usage: Some(usage(10682, 0, 0, 0, 510, 0)),
        partial: None,
        model: Some("claude-opus-4-1-20250805"),
        request_id: Some("msg_01GdkqV4ZhPnW2sRt8Lx5mYc"),
        web_search_calls: 1,
    },
    Case {
        // overloaded_error mid-stream: no report, message_start's counts as a floor.
        fixture: "anthropic/stream_ping_error.sse",
        body: Body::Sse,
        usage: None,
        partial: Some(usage(1243, 0, 0, 0, 1, 0)),
        model: Some("claude-sonnet-4-5-20250929"),
        request_id: Some("msg_01VbH5cXe2Lr9qTz4NwJmK7s"),
        web_search_calls: 0,
    },
    Case {
        fixture: "anthropic/stream_cut_before_delta.sse",
        body: Body::Sse,
        usage: None,
        partial: Some(usage(8, 13919, 421, 421, 2, 0)),
        model: Some("claude-sonnet-4-5-20250929"),
        request_id: Some("msg_01NhT4wQz8Rk2VpLc6YbXs3E"),
        web_search_calls: 0,
    },
    Case {
        // Top level 412 in / 531 out is the executor's first input and its outputs; the
        // advisor (823 in, 1612 out) and the second executor turn (1348 in, 412 read) are
        // only in iterations.
        fixture: "anthropic/stream_advisor_iterations.sse",
        body: Body::Sse,
        usage: Some(usage(2583, 412, 0, 0, 2143, 0)),
        partial: None,
        model: Some("claude-sonnet-4-6"),
        request_id: Some("msg_01AdvKq7Tm3ZpR9xWc2LbN5h"),
        web_search_calls: 0,
    },
];

#[test]
fn fixtures_in_every_chunking() {
    for case in CASES {
        let expected = ParsedUsage {
            usage: case.usage,
            partial: case.partial,
            model: case.model.map(str::to_owned),
            request_id: case.request_id.map(str::to_owned),
            quantities: Quantities {
                web_search_calls: case.web_search_calls,
                ..Quantities::default()
            },
            ..ParsedUsage::default()
        };
        let body = case.body;
        check_fixture(case.fixture, &|| body.parser(), &expected);
    }
}

#[test]
fn every_fixture_has_a_case() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/anthropic");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = format!("anthropic/{}", entry.unwrap().file_name().to_string_lossy());
        assert!(
            CASES.iter().any(|case| case.fixture == name),
            "{name} has no expected values"
        );
    }
}

/// The generated text kept for the estimator, fed whole and byte by byte.
fn check_text(fixture: &str, body: Body, expected: &str) {
    let bytes = fixture_bytes(fixture);
    let mut whole = body.parser();
    whole.feed(&bytes);
    assert_eq!(
        whole.finish().output_text.text,
        expected,
        "{fixture}: whole"
    );
    let mut single = body.parser();
    for byte in bytes.chunks(1) {
        single.feed(byte);
    }
    assert_eq!(
        single.finish().output_text.text,
        expected,
        "{fixture}: single bytes"
    );
}

#[test]
fn output_text() {
    check_text(
        "anthropic/messages_tool_use.json",
        Body::Json,
        "I'll check the current weather in San Francisco for you.\
         {\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}",
    );
    check_text(
        "anthropic/stream_plain.sse",
        Body::Sse,
        "Hello! I'm Claude, an AI assistant made by Anthropic. How can I help you today? I can \
         answer questions, help with writing, analysis, coding, and much more.",
    );
    check_text(
        "anthropic/stream_tool_use.sse",
        Body::Sse,
        "Okay, let's check the weather for San Francisco, CA:\
         {\"location\": \"San Francisco, CA\", \"unit\": \"fahrenheit\"}",
    );
    check_text(
        "anthropic/stream_thinking.sse",
        Body::Sse,
        "The user asks for the GCD of 1071 and 462. I'll use the Euclidean algorithm.\n\n\
         1071 = 2 × 462 + 147\n462 = 3 × 147 + 21\n147 = 7 × 21 + 0\n\
         The remainder is 0, so GCD(1071, 462) = 21.\
         The greatest common divisor of 1071 and 462 is **21**. Each step divides the previous \
         divisor by the remainder until the remainder is zero.",
    );
    // Search results and citations are not generated text; the search query is.
    check_text(
        "anthropic/stream_web_search_cumulative.sse",
        Body::Sse,
        "I'll check the current weather in New York City for you.\
         {\"query\": \"weather NYC today\"}\
         Here's the current weather information for New York City:\n\n# Weather in New York \
         City\n\nPartly sunny with a high around 64°F and a light breeze from the west.",
    );
    // Text cut by an error is still kept for the estimator.
    check_text(
        "anthropic/stream_ping_error.sse",
        Body::Sse,
        "Here is a summary of the three reports:\n\n1. **Q1 revenue** grew 12% year over year, \
         driven mainly by",
    );
    check_text("anthropic/messages_error.json", Body::Json, "");
}
