//! Usage parsers on real provider wire bodies from `tests/fixtures/`, fed whole, split at every
//! byte, byte by byte, and cut short at every byte. Reads fixtures only; no network, no ledger.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use meter::usage::{parser_for, BodyKind, Endpoint, ParsedUsage, Usage};

/// What one fixture must parse to.
struct Case {
    fixture: &'static str,
    endpoint: Endpoint,
    body: BodyKind,
    usage: Option<Usage>,
    model: Option<&'static str>,
    request_id: Option<&'static str>,
}

const fn usage(input: u64, cache_read: u64, output: u64, reasoning: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        cache_read_tokens: cache_read,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        output_tokens: output,
        reasoning_tokens: reasoning,
    })
}

/// One row per fixture file. OpenAI buckets: input = prompt - cached, cache_read = cached,
/// output = completion (reasoning included), reasoning = reasoning.
const CASES: &[Case] = &[
    Case {
        fixture: "openai/chat_plain.json",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Json,
        usage: usage(24, 0, 8, 0),
        model: Some("gpt-4o-mini-2024-07-18"),
        request_id: Some("chatcmpl-CDv2kJ4mWz8Qh1fRrYt0aNbXsLpUe"),
    },
    Case {
        // prompt 2181 of which 1920 cached; completion 715 of which 576 reasoning.
        fixture: "openai/chat_cached_reasoning.json",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Json,
        usage: usage(261, 1920, 715, 576),
        model: Some("o4-mini-2025-04-16"),
        request_id: Some("chatcmpl-CE1u0c7ZqG3yTnKx9pWvA2mHdLsRf"),
    },
    Case {
        fixture: "openai/chat_tool_calls.json",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Json,
        usage: usage(96, 0, 58, 0),
        model: Some("gpt-4.1-2025-04-14"),
        request_id: Some("chatcmpl-CE2bQk5Yw1TzVhR8nXcJ4fGmPaDsL"),
    },
    Case {
        // n=2: one usage for both choices.
        fixture: "openai/chat_n2.json",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Json,
        usage: usage(19, 0, 41, 0),
        model: Some("gpt-4o-2024-08-06"),
        request_id: Some("chatcmpl-CE3nT9dWq4KyLb0sHxFv7cRjMgAzP"),
    },
    Case {
        fixture: "openai/chat_error.json",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Json,
        usage: None,
        model: None,
        request_id: None,
    },
    Case {
        // Without `stream_options.include_usage` OpenAI reports no usage at all.
        fixture: "openai/chat_stream_no_usage.sse",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Sse,
        usage: None,
        model: Some("gpt-4o-mini-2024-07-18"),
        request_id: Some("chatcmpl-CE4aH2pLx7RwNz5cVbK9tYqJmFsDg"),
    },
    Case {
        fixture: "openai/chat_stream_include_usage.sse",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Sse,
        usage: usage(31, 0, 12, 0),
        model: Some("gpt-4o-2024-08-06"),
        request_id: Some("chatcmpl-CE4fW8sNq1KdTx3jZmH6vBpRyLcGa"),
    },
    Case {
        // prompt 3408 of which 3072 cached; completion 402 of which 384 reasoning.
        fixture: "openai/chat_stream_cached_reasoning.sse",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Sse,
        usage: usage(336, 3072, 402, 384),
        model: Some("gpt-5-2025-08-07"),
        request_id: Some("chatcmpl-CE5Jr4yTc8PwLm0xQkN2sVbHgZdFe"),
    },
    Case {
        fixture: "openai/chat_stream_tool_calls.sse",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Sse,
        usage: usage(84, 0, 18, 0),
        model: Some("gpt-4.1-mini-2025-04-14"),
        request_id: Some("chatcmpl-CE5xY0gMb3RqWt7nLzK5cHjVsPfAo"),
    },
    Case {
        // `\r\n` line ends and `: keep-alive` comments; prompt 1291 of which 1152 cached.
        fixture: "openai/chat_stream_crlf_keepalive.sse",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Sse,
        usage: usage(139, 1152, 7, 0),
        model: Some("gpt-4o-mini-2024-07-18"),
        request_id: Some("chatcmpl-CE6Bv5nRk9TzQw2hXmL8pFcYjGsDa"),
    },
    Case {
        // Fails mid-way with a `data: {"error": ...}` event and no usage.
        fixture: "openai/chat_stream_error.sse",
        endpoint: Endpoint::ChatCompletions,
        body: BodyKind::Sse,
        usage: None,
        model: Some("gpt-4o-2024-08-06"),
        request_id: Some("chatcmpl-CE6Pk1sWm6YtRx9bNcQ3vHzLgJdFu"),
    },
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn parse(case: &Case, chunks: &[&[u8]]) -> ParsedUsage {
    let mut parser = parser_for(&meter::usage::ParseContext {
        flavor: meter::usage::Flavor::OpenAi,
        endpoint: case.endpoint,
        body: case.body,
    })
    .unwrap();
    for chunk in chunks {
        parser.feed(chunk);
    }
    parser.finish()
}

/// Where the bytes of the last usage report end: a stream cut at or after this offset has
/// delivered it whole and must still report it.
fn usage_event_end(body: &[u8]) -> Option<usize> {
    let needle = b"\"usage\":{";
    let start = body
        .windows(needle.len())
        .rposition(|window| window == needle)?;
    let line_end = body[start..]
        .iter()
        .position(|byte| matches!(byte, b'\r' | b'\n'))?;
    Some(start + line_end)
}

fn check(case: &Case) {
    let name = case.fixture;
    let body = std::fs::read(fixtures_dir().join(name)).unwrap();
    let expected = ParsedUsage {
        usage: case.usage,
        model: case.model.map(str::to_owned),
        request_id: case.request_id.map(str::to_owned),
        ..ParsedUsage::default()
    };

    assert_eq!(parse(case, &[&body]), expected, "{name}: whole body");
    for split in 0..=body.len() {
        let (head, tail) = body.split_at(split);
        assert_eq!(
            parse(case, &[head, tail]),
            expected,
            "{name}: split at {split}"
        );
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(parse(case, &bytes), expected, "{name}: single bytes");

    // A body cut short may lose the report, but never reads a wrong one; a stream cut after
    // its usage event still reports it.
    let complete_from = match case.body {
        BodyKind::Sse if case.usage.is_some() => usage_event_end(&body),
        _ => None,
    };
    for cut in 0..body.len() {
        let parsed = parse(case, &[&body[..cut]]);
        let context = format!("{name}: cut at {cut}");
        match complete_from {
            Some(end) if cut >= end => assert_eq!(parsed.usage, expected.usage, "{context}"),
            _ => assert!(
                parsed.usage.is_none() || parsed.usage == expected.usage,
                "{context}: {parsed:?}"
            ),
        }
        assert!(
            parsed.model.is_none() || parsed.model == expected.model,
            "{context}"
        );
        assert!(
            parsed.request_id.is_none() || parsed.request_id == expected.request_id,
            "{context}"
        );
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

/// A fixture added to a provider's directory without a row here would silently go untested.
#[test]
fn every_fixture_has_a_case() {
    let root = fixtures_dir();
    let mut providers: Vec<&str> = CASES
        .iter()
        .filter_map(|case| case.fixture.split('/').next())
        .collect();
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
