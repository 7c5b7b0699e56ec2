//! Ollama's native API parser (`/api/chat`, `/api/generate`) on real NDJSON and JSON bodies from
//! `tests/fixtures/ollama/`, fed whole, split at every byte, byte by byte, and cut short at every
//! byte. Reads fixtures only; no network, no ledger.
#![allow(clippy::unwrap_used)]

mod support;

use meter::usage::ollama::OllamaParser;
use meter::usage::{ParsedUsage, Usage, UsageParser};
use support::parsing::{check_fixture, fixture_bytes};

/// What one fixture must parse to.
struct Case {
    fixture: &'static str,
    usage: Option<Usage>,
    model: Option<&'static str>,
    text: &'static str,
}

const fn usage(input: u64, cache_read: u64, output: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        cache_read_tokens: cache_read,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        output_tokens: output,
        reasoning_tokens: 0,
    })
}

/// input = prompt_eval_count, output = eval_count (thinking included), from the `done` object.
const CASES: &[Case] = &[
    Case {
        fixture: "ollama/chat_stream.ndjson",
        usage: usage(31, 0, 10),
        model: Some("llama3.2"),
        text: "The sky is blue because of Rayleigh scattering.",
    },
    Case {
        // `"stream": false`: one object.
        fixture: "ollama/chat.json",
        usage: usage(33, 0, 17),
        model: Some("llama3.2"),
        text: "Rust's ownership rules let the compiler free memory without a garbage collector.",
    },
    Case {
        // Tool-call arguments are a JSON object, kept as its text.
        fixture: "ollama/chat_tool_call.json",
        usage: usage(182, 0, 24),
        model: Some("qwen3:8b"),
        text: "{\"city\":\"Florence\",\"unit\":\"celsius\"}",
    },
    Case {
        // `message.thinking` then `message.content`; eval_count covers both.
        fixture: "ollama/chat_thinking_stream.ndjson",
        usage: usage(19, 0, 83),
        model: Some("qwen3:8b"),
        text:
            "Okay, the user asks for 17 times 23. 17*20=340, 17*3=51, total 391.17 × 23 = **391**",
    },
    Case {
        // `/api/generate`, not streamed, with its `context` array.
        fixture: "ollama/generate.json",
        usage: usage(26, 0, 290),
        model: Some("llama3.2"),
        text: "The sky is blue because of Rayleigh scattering: air molecules scatter short blue \
               wavelengths of sunlight far more than long red ones.",
    },
    Case {
        // The prompt was served from Ollama's cache: `prompt_eval_count` is left out (0).
        fixture: "ollama/generate_stream_cached.ndjson",
        usage: usage(0, 0, 6),
        model: Some("llama3.2"),
        text: " Blue light scatters most.",
    },
    Case {
        // The stream ends with `{"error": ...}` and no `done` object.
        fixture: "ollama/error.ndjson",
        usage: None,
        model: Some("llama3.2"),
        text: "Once upon a",
    },
];

fn make() -> Box<dyn UsageParser> {
    Box::new(OllamaParser::default())
}

fn parse(chunks: &[&[u8]]) -> ParsedUsage {
    let mut parser = make();
    for chunk in chunks {
        parser.feed(chunk);
    }
    parser.finish()
}

fn check(case: &Case) {
    let name = case.fixture;
    let expected = ParsedUsage {
        usage: case.usage,
        model: case.model.map(str::to_owned),
        ..ParsedUsage::default()
    };
    check_fixture(name, &make, &expected);

    let body = fixture_bytes(name);
    let whole = parse(&[&body]).output_text;
    assert_eq!(whole.text, case.text, "{name}: text");
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(parse(&bytes).output_text, whole, "{name}: text by bytes");

    // A stream cut right after its `done` object (even before the line end) still reports it.
    if case.usage.is_some() {
        let needle = b"\"done\":true";
        let at = body
            .windows(needle.len())
            .rposition(|window| window == needle)
            .unwrap();
        let object_end = body[at..].iter().rposition(|&byte| byte == b'}').unwrap() + at + 1;
        for cut in object_end..=body.len() {
            assert_eq!(
                parse(&[&body[..cut]]).usage,
                case.usage,
                "{name}: cut at {cut}"
            );
        }
    }
}

#[test]
fn fixtures_parse_in_every_chunking() {
    std::thread::scope(|scope| {
        for case in CASES {
            scope.spawn(|| check(case));
        }
    });
}

/// A fixture added to the directory without a row here would silently go untested.
#[test]
fn every_fixture_has_a_case() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ollama");
    for entry in std::fs::read_dir(dir).unwrap() {
        let fixture = format!("ollama/{}", entry.unwrap().file_name().to_string_lossy());
        assert!(
            CASES.iter().any(|case| case.fixture == fixture),
            "fixture {fixture} has no case in tests/parsers_ollama.rs"
        );
    }
}
